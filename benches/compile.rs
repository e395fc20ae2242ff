//! Compile time, source to kernels, per spec (release): parse, check, lower,
//! differentiate, add the optimizer update, optimize, fuse into kernels and
//! plan memory (batch 64).
//!
//! Run: `cargo bench --bench compile`. The goal for lenet5 is under 20 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use modelc_compiler::step::StepConfig;

fn compile(path: &Path) -> usize {
    let (_, program, errors) = modelc_compiler::check_path(path).expect("readable");
    assert!(errors.is_empty());
    let (model, cfg) = match program.finetunes.first() {
        Some(f) => (f.model.clone(), StepConfig::from_train(&f.stages[0]).expect("optimizer")),
        None => {
            let t = &program.trains[0];
            (program.model(&t.model).expect("model").clone(), StepConfig::from_train(t).expect("optimizer"))
        }
    };
    let g = modelc_compiler::pipeline::train_step(&model, &cfg).expect("builds");
    let kernels = modelc_compiler::kernel::fusion::fuse(&g);
    let plan = modelc_compiler::kernel::memory::plan(&g, &kernels, 64);
    assert!(plan.arena_bytes > 0);
    g.len()
}

fn main() {
    let mut specs: Vec<_> = std::fs::read_dir("specs")
        .expect("run from the project root")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "model"))
        .collect();
    specs.sort();
    println!("{:<32} {:>8} {:>12} {:>12}", "spec", "nodes", "median", "min");
    for spec in &specs {
        let mut times: Vec<Duration> = Vec::new();
        let mut nodes = 0;
        let runs = if spec.ends_with("char_gpt.model") { 5 } else { 30 };
        for _ in 0..runs {
            let t = Instant::now();
            nodes = compile(spec);
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{:<32} {:>8} {:>9.2} ms {:>9.2} ms",
            spec.display(),
            nodes,
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3
        );
    }
}
