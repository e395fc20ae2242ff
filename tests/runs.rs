//! Runs that cannot lie: the run folder's guarantees after a crash at any
//! point, its lock, one validator for every run setting, divergence caught
//! early, non-finite evaluations and checkpoints refused, and `--help` text
//! for every option.

use std::path::{Path, PathBuf};
use std::process::Command;

use modelc::exec::{Batch, Executor, Stats};

use crate::modelc;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("modelc-runs-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// The `modelc` binary, as a separate process (it may abort).
fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modelc"))
}

const RUN: &[&str] = &["train", "specs/mnist_mlp.model", "--limit", "640", "--test-limit", "200", "--epochs", "3"];

/// The log's lines without their timings: what must be the same run to run.
fn log_lines(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("log.jsonl")).expect("log");
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
            let o = v.as_object_mut().expect("object");
            o.remove("seconds");
            o.remove("samples_per_second");
            v
        })
        .collect()
}

/// A crash at each point of an epoch's writes (the log line, the resume
/// point, the weights), then `--resume`: the run ends as an uninterrupted
/// one does — the same weights, bit for bit, and the same log, each epoch
/// once. Before the resume point was one file, a crash between the weights
/// and the optimizer state left them an epoch apart, and resume repeated an
/// epoch.
#[test]
fn a_crash_at_any_write_resumes_to_the_uninterrupted_run() {
    let whole = out_dir("whole");
    let st = binary().args(RUN).arg("--out").arg(&whole).output().expect("runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let want_weights = modelc::checkpoint::load(&whole.join("last.safetensors")).expect("weights");
    let want_log = log_lines(&whole);
    assert_eq!(want_log.len(), 3);
    for point in ["after-log", "after-state", "after-weights"] {
        let dir = out_dir(point);
        let st = binary().args(RUN).arg("--out").arg(&dir).env("MODELC_CRASH_AT", format!("{point}:2")).output();
        let st = st.expect("runs");
        assert!(!st.status.success(), "{point}: the injected crash did not happen");
        assert!(dir.join("run.lock").exists(), "{point}: a crash leaves its lock behind");
        let st = binary().args(RUN).arg("--out").arg(&dir).arg("--resume").output().expect("resumes");
        let stdout = String::from_utf8_lossy(&st.stdout);
        assert!(st.status.success(), "{point}: {}", String::from_utf8_lossy(&st.stderr));
        assert!(stdout.contains("no longer running; taking it over"), "{point}: {stdout}");
        let resumed_from = if point == "after-log" { 1 } else { 2 };
        assert!(stdout.contains(&format!("resuming after epoch {resumed_from}")), "{point}: {stdout}");
        let got = modelc::checkpoint::load(&dir.join("last.safetensors")).expect("weights");
        for (name, (shape, values)) in &want_weights {
            let (s, v) = &got[name];
            assert_eq!(s, shape);
            let same = v.iter().zip(values).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{point}: `{name}` differs from the uninterrupted run");
        }
        assert_eq!(log_lines(&dir), want_log, "{point}: the log is the uninterrupted run's");
        assert!(!dir.join("run.lock").exists(), "{point}: a finished run releases its lock");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{point}: temporary files left: {leftovers:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
    std::fs::remove_dir_all(&whole).ok();
}

/// `kill -9` at random moments of a run: every checkpoint on disk loads
/// (whole, never torn), and `--resume` either continues to the weights of
/// the uninterrupted run, bit for bit, or (killed before the first epoch
/// ended) refuses clearly.
#[test]
fn kill_9_at_random_moments_leaves_a_run_that_resumes_exactly() {
    let args = ["train", "specs/mnist_mlp.model", "--limit", "2000", "--test-limit", "200", "--epochs", "4"];
    let whole = out_dir("kill-whole");
    // The uninterrupted run, timed: its whole span, and how long it went on
    // after its first resume point appeared (the window the later rounds
    // kill in: epochs 2-4 with their writes and evaluations).
    let started = std::time::Instant::now();
    let mut child =
        binary().args(args).arg("--out").arg(&whole).stdout(std::process::Stdio::null()).spawn().expect("runs");
    let mut first_state = None;
    let status = loop {
        if first_state.is_none() && whole.join("last.state.safetensors").exists() {
            first_state = Some(started.elapsed());
        }
        if let Some(status) = child.try_wait().expect("polls") {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    };
    assert!(status.success(), "the uninterrupted run failed");
    let span = started.elapsed().as_millis() as u64;
    let after_first = (started.elapsed() - first_state.expect("a resume point was written")).as_millis() as f64;
    let want = modelc::checkpoint::load(&whole.join("last.safetensors")).expect("weights");
    let mut rng = modelc_compiler::rng::Rng::new(7);
    let (mut resumed, mut finished, mut refused) = (0, 0, 0);
    for round in 0..5 {
        let dir = out_dir(&format!("kill-{round}"));
        let mut child = binary()
            .args(args)
            .arg("--out")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starts");
        // Round 0 dies while loading or in the first epoch; the others once
        // the first resume point exists, anywhere in the next epochs (an
        // epoch's writes included).
        let at = if round == 0 {
            (span as f64 * rng.uniform(0.0, 0.3)) as u64
        } else {
            let waited = std::time::Instant::now();
            while !dir.join("last.state.safetensors").exists() && waited.elapsed().as_secs() < 60 {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            (after_first * rng.uniform(0.0, 0.9)) as u64
        };
        std::thread::sleep(std::time::Duration::from_millis(at));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        for f in ["last.safetensors", "last.state.safetensors"] {
            if dir.join(f).exists() {
                modelc::checkpoint::load(&dir.join(f)).unwrap_or_else(|e| panic!("round {round}: {f} is torn: {e}"));
            }
        }
        let st = binary().args(args).arg("--out").arg(&dir).arg("--resume").output().expect("resumes");
        if st.status.success() {
            let got = modelc::checkpoint::load(&dir.join("last.safetensors")).expect("weights");
            assert_eq!(got, want, "round {round} (killed at {at} ms): resumed weights differ");
            resumed += 1;
        } else {
            let err = String::from_utf8_lossy(&st.stderr);
            if err.contains("has already trained 4 epochs, and this run asks for 4") {
                // Killed after its last resume point was written (on a slow
                // machine the random moment can fall past the end): the run
                // is whole, and its weights are the uninterrupted run's.
                let got = modelc::checkpoint::load(&dir.join("last.safetensors")).expect("weights");
                assert_eq!(got, want, "round {round} (killed at {at} ms, after the last epoch): weights differ");
                finished += 1;
            } else {
                assert!(err.contains("cannot resume: cannot read checkpoint"), "round {round}: {err}");
                refused += 1;
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
    println!(
        "kill -9: {resumed} runs resumed to the uninterrupted weights, {finished} killed after their last epoch, \
         {refused} killed before a checkpoint"
    );
    assert!(resumed + finished >= 4, "the rounds killed after the first checkpoint resume or were whole");
    assert!(resumed >= 1, "at least one round was killed mid-run and resumed");
    std::fs::remove_dir_all(&whole).ok();
}

/// A resume point of another kind, or none, is refused with a clear error
/// rather than half-used.
#[test]
fn resume_refuses_what_it_cannot_continue_exactly() {
    let dir = out_dir("refuse");
    let d = dir.to_string_lossy().into_owned();
    let args = ["train", "specs/mnist_mlp.model", "--limit", "128", "--test-limit", "64", "--out", &d];
    let (code, _, err) = modelc(&[&args[..], &["--epochs", "1"]].concat());
    assert_eq!(code, 0, "{err}");
    // The run asked for is already done.
    let (code, _, err) = modelc(&[&args[..], &["--resume", "--epochs", "1"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("has already trained 1 epochs, and this run asks for 1"), "{err}");
    // Another batch size: the step count of the resume point does not fit.
    let more = ["--resume", "--epochs", "2", "--batch", "32"];
    let (code, _, err) = modelc(&[&args[..], &more].concat());
    assert_eq!(code, 1);
    assert!(err.contains("were the batch size or the data changed?"), "{err}");
    // An optimizer-state file of the old kind (no weights in it).
    let state = dir.join("last.state.safetensors");
    let t = modelc::checkpoint::load(&state).expect("state");
    let old: modelc::checkpoint::Tensors = t.into_iter().filter(|(k, _)| k.contains(".exp_avg")).collect();
    let meta = std::collections::BTreeMap::from([("epoch".to_string(), "1".to_string())]);
    modelc::checkpoint::save(&state, &old, meta).expect("save");
    let (code, _, err) = modelc(&[&args[..], &["--resume", "--epochs", "2"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("written by an older modelc and holds no weights"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A second run into a folder a live run holds is refused; before the
/// lock both exited 0 and left one's weights beside the other's state.
#[test]
fn a_run_folder_has_one_writer() {
    let dir = out_dir("lock");
    std::fs::create_dir_all(&dir).expect("dir");
    // This test process is alive: its pid in the lock stands for a live run.
    std::fs::write(dir.join("run.lock"), format!("{}\n", std::process::id())).expect("lock");
    let d = dir.to_string_lossy().into_owned();
    let (code, _, err) = modelc(&["train", "specs/xor.model", "--epochs", "2", "--out", &d]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("is in use by another modelc run (process {})", std::process::id())), "{err}");
    assert!(!dir.join("log.jsonl").exists(), "the refused run wrote nothing");
    // A lock whose process has ended is taken over.
    let mut child = Command::new("true").spawn().expect("a process");
    let dead = child.id();
    child.wait().expect("ended");
    std::fs::write(dir.join("run.lock"), format!("{dead}\n")).expect("lock");
    let (code, out, err) = modelc(&["train", "specs/xor.model", "--epochs", "2", "--out", &d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("locked by process {dead}, which is no longer running")), "{out}");
    assert!(!dir.join("run.lock").exists(), "released at the end");
    std::fs::remove_dir_all(&dir).ok();
}

/// One validator for the spec, a run file, `--set` and flags. Before it,
/// `--set batch=0` trained with batch 1, `--limit 0` reported loss 0 with
/// exit 0, and `--set epochs=0` announced a checkpoint it never wrote.
#[test]
fn degenerate_settings_are_refused_wherever_they_come_from() {
    let dir = out_dir("settings");
    std::fs::create_dir_all(&dir).expect("dir");
    let d = dir.join("run").to_string_lossy().into_owned();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "batch=0"], "--set batch=0: `batch` must be at least 1, not 0"),
        (&["--set", "epochs=0"], "--set epochs=0: `epochs` must be at least 1, not 0"),
        (&["--limit", "0"], "--limit: `limit` must be at least 1, not 0"),
        (&["--batch", "0"], "--batch: `batch` must be at least 1, not 0"),
        (&["--set", "test_limit=-3"], "`test_limit` must be at least 1, not -3"),
        (&["--set", "batch=ten"], "`batch` takes a whole number, not `ten`"),
        (&["--set", "epoch=3"], "unknown setting `epoch` (did you mean `epochs`?"),
        (&["--set", "epochs=2", "--set", "epochs=3"], "--set epochs is given twice (epochs=2 and epochs=3)"),
    ];
    for (extra, want) in cases {
        let args = [&["train", "specs/xor.model", "--out", &d][..], extra].concat();
        let (code, out, err) = modelc(&args);
        assert_eq!(code, 1, "{extra:?} was accepted: {out}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("line 1 column"), "{extra:?}: YAML internals leak: {err}");
    }
    let run = dir.join("run.yaml");
    std::fs::write(&run, "epochs: 2\nbatch: 0\n").expect("run file");
    let (code, _, err) = modelc(&["train", "specs/xor.model", "--out", &d, "--run", &run.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("run.yaml: `batch` must be at least 1, not 0"), "{err}");
    assert!(!Path::new(&d).join("log.jsonl").exists(), "nothing was trained");
    // The spec's own `batch 0` is the checker's error, with the same rule.
    let spec = dir.join("b0.model");
    let text = std::fs::read_to_string("specs/xor.model").expect("spec").replace("batch     4", "batch     0");
    std::fs::write(&spec, text).expect("spec");
    let (code, _, err) = modelc(&["check", &spec.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("at least 1"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// An executor that returns the losses it is given: the trainer's own
/// decisions, without a model.
struct Scripted {
    train: Vec<f64>,
    eval: f64,
    at: usize,
}

impl Executor for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }
    fn train_step(&mut self, _: &Batch, _: f64, _: u64, _: u64) -> Result<Stats, String> {
        let loss = self.train[self.at.min(self.train.len() - 1)];
        self.at += 1;
        Ok(Stats { loss, accuracy: None, predictions: vec![] })
    }
    fn evaluate(&mut self, b: &Batch) -> Result<Stats, String> {
        Ok(Stats { loss: self.eval, accuracy: None, predictions: vec![0.0; b.n] })
    }
    fn parameters(&self) -> modelc::checkpoint::Tensors {
        Default::default()
    }
    fn set_parameters(&mut self, _: &modelc::checkpoint::Tensors) {}
    fn state(&self) -> modelc::checkpoint::Tensors {
        Default::default()
    }
    fn first_non_finite(&self) -> Option<String> {
        None
    }
}

fn scripted_run(train: Vec<f64>, eval: f64, name: &str) -> Result<modelc::train::Outcome, String> {
    let (_, program, _) = crate::check_spec(Path::new("specs/xor.model"));
    let (model, info) = (&program.models[0], &program.trains[0]);
    let opts = modelc::train::Options { epochs: Some(5), out: out_dir(name), ..Default::default() };
    let data = modelc::train::load(info.data.as_ref().expect("data"), model, info, &opts).expect("data");
    let r = modelc::train::run(&mut Scripted { train, eval, at: 0 }, model, info, &data, &opts, &mut Vec::new());
    std::fs::remove_dir_all(&opts.out).ok();
    r
}

/// An executor whose one parameter counts its training steps, and whose
/// evaluations return scripted losses: early stopping's bookkeeping alone.
struct Counting {
    w: f32,
    evals: Vec<f64>,
    at: usize,
}

impl Executor for Counting {
    fn name(&self) -> String {
        "counting".into()
    }
    fn train_step(&mut self, _: &Batch, _: f64, _: u64, _: u64) -> Result<Stats, String> {
        self.w += 1.0;
        Ok(Stats { loss: 1.0, accuracy: None, predictions: vec![] })
    }
    fn evaluate(&mut self, b: &Batch) -> Result<Stats, String> {
        let loss = self.evals[self.at.min(self.evals.len() - 1)];
        self.at += 1;
        Ok(Stats { loss, accuracy: None, predictions: vec![0.0; b.n] })
    }
    fn parameters(&self) -> modelc::checkpoint::Tensors {
        [("w".to_string(), (vec![1], vec![self.w]))].into_iter().collect()
    }
    fn set_parameters(&mut self, t: &modelc::checkpoint::Tensors) {
        if let Some((_, v)) = t.get("w") {
            self.w = v[0];
        }
    }
    fn state(&self) -> modelc::checkpoint::Tensors {
        Default::default()
    }
    fn first_non_finite(&self) -> Option<String> {
        None
    }
}

/// Early stopping ends a run with the best epoch's weights, and the files
/// say so: `last.safetensors` and the resume point hold them.
#[test]
fn early_stopping_restores_the_best_weights() {
    let (_, program, _) = crate::check_spec(Path::new("specs/xor.model"));
    let model = &program.models[0];
    let mut info = program.trains[0].clone();
    info.validation = 0.5;
    info.early_stop =
        Some(modelc_compiler::check::train::EarlyStop { patience: 2, on: "val_loss".into(), min_delta: 0.0 });
    let opts = modelc::train::Options { epochs: Some(10), out: out_dir("restore"), ..Default::default() };
    let data = modelc::train::load(info.data.as_ref().expect("data"), model, &info, &opts).expect("data");
    // Validation then test, each epoch: the validation loss is best at epoch 2.
    let evals = vec![1.0, 9.0, 0.5, 9.0, 0.9, 9.0, 0.95, 9.0, 0.97, 9.0];
    let mut exec = Counting { w: 0.0, evals, at: 0 };
    let mut text = Vec::new();
    let o = modelc::train::run(&mut exec, model, &info, &data, &opts, &mut text).expect("trains");
    let text = String::from_utf8(text).expect("utf-8");
    assert_eq!(o.epochs.len(), 4, "stops after two epochs without improvement: {text}");
    assert!(text.contains("early stopping: restored the weights of epoch 2 (the best `val_loss`)"), "{text}");
    // Two of xor's four samples train, batch 4: one step an epoch.
    assert_eq!(exec.w, 2.0, "the weights after epoch 2");
    for f in ["last.safetensors", "best.safetensors", "last.state.safetensors"] {
        let t = modelc::checkpoint::load(&opts.out.join(f)).expect(f);
        assert_eq!(t["w"].1, [2.0], "{f}");
    }
    std::fs::remove_dir_all(&opts.out).ok();
}

/// A loss of 1e27 is not a result: before this it ended with exit 0.
#[test]
fn a_loss_that_grows_by_orders_of_magnitude_is_divergence() {
    let err = scripted_run(vec![0.7, 0.9, 50.0, 1e27], 0.5, "grow").err().expect("stops");
    assert!(err.contains("the loss diverged: 1.0000e27") && err.contains("at step 4 (epoch 4)"), "{err}");
    let err = scripted_run(vec![0.7, f64::NAN], 0.5, "nan").err().expect("stops");
    assert!(err.contains("the loss became NaN at step 2 (epoch 2)"), "{err}");
    // Ups and downs within four orders of magnitude are training.
    assert!(scripted_run(vec![0.7, 3.0, 400.0, 0.1], 0.5, "noisy").is_ok());
}

/// A NaN validation or test loss stops the run as a NaN training loss
/// does; before, it was logged as `null` and the run went on.
#[test]
fn a_non_finite_evaluation_loss_stops_the_run() {
    let err = scripted_run(vec![0.5], f64::NAN, "nan-eval").err().expect("stops");
    assert!(err.contains("the test loss became NaN") && err.contains("(epoch 1)"), "{err}");
}

/// A checkpoint full of NaN evaluated with exit 0; now it is refused with
/// the tensor named.
#[test]
fn a_checkpoint_with_non_finite_weights_is_refused() {
    let dir = out_dir("nan-ckpt");
    let d = dir.to_string_lossy().into_owned();
    let (code, _, err) = modelc(&["train", "specs/xor.model", "--epochs", "1", "--out", &d]);
    assert_eq!(code, 0, "{err}");
    let path = dir.join("last.safetensors");
    let mut t = modelc::checkpoint::load(&path).expect("weights");
    t.get_mut("hidden.weight").expect("tensor").1[3] = f32::NAN;
    modelc::checkpoint::save(&path, &t, Default::default()).expect("save");
    let (code, _, err) = modelc(&["eval", "specs/xor.model", "--weights", &path.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("tensor `hidden.weight` holds 1 non-finite values (NaN or infinity) of 8"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Every option of every command says what it is for.
#[test]
fn every_option_has_help_text() {
    let cli = modelc::cli::command();
    let mut blank = Vec::new();
    for sub in cli.get_subcommands() {
        if sub.get_about().is_none() {
            blank.push(sub.get_name().to_string());
        }
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && arg.get_help().is_none() {
                blank.push(format!("{} {id}", sub.get_name()));
            }
        }
    }
    assert!(blank.is_empty(), "without help text: {blank:?}");
}

/// An IDX file of 14×14 images failed mid-run with an internal message;
/// now it is refused at load, naming the file and both sizes.
#[test]
fn images_of_the_wrong_size_are_refused_at_load() {
    let dir = out_dir("idx14");
    std::fs::create_dir_all(&dir).expect("dir");
    let idx = |magic: u32, dims: &[u32], body: Vec<u8>| {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(body);
        b
    };
    for split in ["train", "t10k"] {
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), idx(0x803, &[3, 14, 14], vec![7; 3 * 196]))
            .expect("images");
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), idx(0x801, &[3], vec![1, 2, 3]))
            .expect("labels");
    }
    let out = dir.join("run").to_string_lossy().into_owned();
    let data = format!("data={}", dir.display());
    let (code, _, err) = modelc(&["train", "specs/mnist_mlp.model", "--out", &out, "--set", &data]);
    assert_eq!(code, 1);
    assert!(
        err.contains("train-images-idx3-ubyte: images are 14×14, the model expects 784 values per sample"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Records the optimizer step each training step is given.
struct Steps(Vec<u64>);

impl Executor for Steps {
    fn name(&self) -> String {
        "steps".into()
    }
    fn train_step(&mut self, _: &Batch, _: f64, step: u64, _: u64) -> Result<Stats, String> {
        self.0.push(step);
        Ok(Stats { loss: 1.0, accuracy: None, predictions: vec![] })
    }
    fn evaluate(&mut self, b: &Batch) -> Result<Stats, String> {
        Ok(Stats { loss: 1.0, accuracy: None, predictions: vec![0.0; b.n] })
    }
    fn parameters(&self) -> modelc::checkpoint::Tensors {
        Default::default()
    }
    fn set_parameters(&mut self, _: &modelc::checkpoint::Tensors) {}
    fn state(&self) -> modelc::checkpoint::Tensors {
        Default::default()
    }
    fn first_non_finite(&self) -> Option<String> {
        None
    }
}

/// A stage that starts its optimizer afresh counts its steps from 1 (Adam's
/// bias corrections as torch's per-parameter step), one that carries state
/// goes on from where it stood; before, every stage used the run's global
/// step, so a later stage's first Adam updates were ~2-3× torch's.
#[test]
fn a_stage_counts_optimizer_steps_from_its_own_start() {
    let (_, program, _) = crate::check_spec(Path::new("specs/xor.model"));
    let (model, info) = (&program.models[0], &program.trains[0]);
    for (carried, first) in [(0, 1), (7, 8)] {
        let stage =
            modelc::train::StageRun { name: "later".into(), first_epoch: 5, first_step: 50, optimizer_steps: carried };
        let opts = modelc::train::Options {
            epochs: Some(2),
            out: out_dir(&format!("steps-{carried}")),
            stage: Some(stage),
            ..Default::default()
        };
        let data = modelc::train::load(info.data.as_ref().expect("data"), model, info, &opts).expect("data");
        let mut exec = Steps(vec![]);
        let o = modelc::train::run(&mut exec, model, info, &data, &opts, &mut Vec::new()).expect("trains");
        assert_eq!(exec.0, [first, first + 1], "xor: one step an epoch");
        assert_eq!((o.step, o.optimizer_steps), (52, carried + 2));
        std::fs::remove_dir_all(&opts.out).ok();
    }
}
