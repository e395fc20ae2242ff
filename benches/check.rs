//! How long `modelc check` takes per spec: in-process (parse + check) and as a
//! whole process (start, read, check, print), release build.
//!
//! Run: `cargo bench --bench check`. The goal is under 50 ms per file.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut specs: Vec<_> = std::fs::read_dir("specs")
        .expect("run from the project root")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "model"))
        .collect();
    specs.sort();
    let exe = env!("CARGO_BIN_EXE_modelc");
    println!("{:<32} {:>14} {:>14}", "spec", "in-process", "whole process");
    for spec in &specs {
        let inproc: Vec<Duration> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let (_, _, errors) = modelc_compiler::check_path(Path::new(spec)).expect("readable");
                assert!(errors.is_empty());
                t.elapsed()
            })
            .collect();
        let process: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                let status = Command::new(exe).arg("check").arg(spec).output().expect("runs").status;
                assert!(status.success());
                t.elapsed()
            })
            .collect();
        println!(
            "{:<32} {:>11.3} ms {:>11.3} ms",
            spec.display(),
            median(inproc).as_secs_f64() * 1e3,
            median(process).as_secs_f64() * 1e3
        );
    }
}
