//! The run folder (`--out`, default `runs/MODEL`) and what it guarantees.
//!
//! A run holds its folder with a lock file (`run.lock`, the owner's process
//! id): a second run into the same folder is refused while the first lives;
//! a lock whose process is gone (killed, crashed) is taken over with a note.
//!
//! At the end of every epoch the trainer writes, in this order:
//! 1. the epoch's line of `log.jsonl` (flushed to disk);
//! 2. `last.state.safetensors`: **the resume point**: parameters, optimizer
//!    state and where training stands (epoch, step, early-stopping state, the
//!    divergence reference), in one file, renamed into place atomically;
//! 3. `last.safetensors`: the parameters alone, for `eval`, `predict` and
//!    PyTorch;
//! 4. `best.safetensors` when early stopping saw a better score.
//!
//! Each file is replaced atomically (see [`crate::checkpoint`]), so a crash
//! at any point leaves each of them whole, old or new. `--resume` reads the
//! resume point only, so it always continues from one consistent epoch: it
//! rewrites `last.safetensors` from it when the crash came between 2 and 3,
//! and drops from the log any line past the resume point (a crash between 1
//! and 2), so that the resumed run's log and weights are those of an
//! uninterrupted run.
//!
//! `MODELC_CRASH_AT=POINT[:EPOCH]` (POINT: `after-log`, `after-state`,
//! `after-weights`) aborts the process at that point of the epoch's writes;
//! the tests use it to hold the guarantees above.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A held run folder; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Takes `dir`'s lock (creating `dir`). Returns the lock and a note when
    /// a stale lock was taken over.
    pub fn acquire(dir: &Path) -> Result<(RunLock, Option<String>), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("run.lock");
        let mut note = None;
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    return Ok((RunLock { path }, note));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid: Option<u32> = text.trim().parse().ok();
                    match pid {
                        Some(pid) if alive(pid) => {
                            return Err(format!(
                                "{} is in use by another modelc run (process {pid}); wait for it, or choose another folder with --out",
                                dir.display()
                            ))
                        }
                        _ => {
                            let who = pid.map_or("an unreadable lock".to_string(), |p| format!("process {p}"));
                            note = Some(format!(
                                "note: {} was locked by {who}, which is no longer running; taking it over",
                                dir.display()
                            ));
                            std::fs::remove_file(&path)
                                .map_err(|e| format!("cannot remove the stale lock {}: {e}", path.display()))?;
                        }
                    }
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
        }
        Err(format!("{}: another run took the lock at the same moment", path.display()))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether process `pid` is running. Where `/proc` does not exist a lock is
/// taken as held (the safe answer): the user removes it by hand.
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.is_dir() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// Keeps the lines of the JSONL log at `path` whose `epoch` is at most
/// `epoch` (a crash between the log line and the checkpoint left one more).
/// Returns how many lines were dropped.
pub fn truncate_log(path: &Path, epoch: u64) -> Result<usize, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut kept = String::new();
    let mut dropped = 0;
    for line in text.lines() {
        let e = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["epoch"].as_u64());
        match e {
            Some(e) if e <= epoch => {
                kept.push_str(line);
                kept.push('\n');
            }
            // A torn last line (a crash while writing it) is dropped too.
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        crate::checkpoint::write_atomic(path, kept.as_bytes())
            .map_err(|e| format!("cannot rewrite {}: {e}", path.display()))?;
    }
    Ok(dropped)
}

/// Aborts the process when `MODELC_CRASH_AT` names `point` (and `epoch`,
/// when it gives one). A test hook for the guarantees of this module.
pub fn crash_point(point: &str, epoch: u64) {
    let Ok(want) = std::env::var("MODELC_CRASH_AT") else { return };
    let (p, e) = match want.split_once(':') {
        Some((p, e)) => (p, e.parse::<u64>().ok()),
        None => (want.as_str(), None),
    };
    if p == point && e.is_none_or(|e| e == epoch) {
        let _ = std::io::stderr().write_all(format!("MODELC_CRASH_AT: aborting {point} of epoch {epoch}\n").as_bytes());
        std::process::abort();
    }
}
