//! Training throughput of the compiled CPU executor on real MNIST, and time
//! to first step. `benches/vs_pytorch.py` runs this beside PyTorch and prints
//! the ratios; run alone:
//!
//!     cargo bench --bench train_speed                 # all three, JSON lines
//!     cargo bench --bench train_speed -- mnist_mlp    # one
//!     cargo bench --bench train_speed -- --first-step specs/lenet5.model
//!     MODELC_PROFILE=1 cargo bench --bench train_speed -- lenet5   # + time per kernel
//!     cargo bench --bench train_speed -- char_gpt     # 1024 windows of Tiny Shakespeare
//!
//! With `MODELC_PROFILE` (rows: `MODELC_PROFILE_ROWS`, default 25) the
//! report ends with the time by kind of kernel and the gemm kernels' rate in
//! GFLOP/s (2·m·n·k per product), to set beside `cargo bench --bench gemm`'s
//! ceiling (its square 1024 row) measured in the same session.
//!
//! Protocol (the same in the PyTorch script): one warm-up epoch, then three
//! timed epochs, the median reported (the machine is shared and noisy); the
//! shuffle (a permuted copy of the training set) is outside the timer; batches are contiguous slices of it, the last partial batch
//! included; threads: rayon's pool (RAYON_NUM_THREADS, default all cores).

use std::path::Path;
use std::time::Instant;

use modelc::exec::{Batch, Compiled, Executor};
use modelc_compiler::step::StepConfig;

fn setup(spec: &str) -> (modelc_compiler::check::ModelInfo, modelc_compiler::check::TrainInfo, StepConfig) {
    let (_, program, errors) = modelc_compiler::check_path(Path::new(spec)).expect("readable spec");
    assert!(errors.is_empty(), "{spec} does not check");
    let info = program.trains[0].clone();
    let model = program.model(&info.model).expect("model").clone();
    let cfg = StepConfig::from_train(&info).expect("optimizer");
    (model, info, cfg)
}

/// Process start to the end of the first training step, data loading
/// excluded (a batch of zeros of the right shape).
fn first_step(spec: &str) {
    let t0 = Instant::now();
    let (model, info, cfg) = setup(spec);
    let init = modelc::init::init(&model, info.seed).expect("init");
    let mut exec = Compiled::new(&model, &cfg, &init).expect("compiles");
    let compiled = t0.elapsed();
    let b = info.batch as usize;
    let width = model.nodes[model.inputs[0]].ty.shape.sample_elements() as usize;
    let (x, y) = (vec![0.0f32; b * width], vec![0.0f32; b]);
    exec.train_step(&Batch { n: b, features: &x, labels: &y }, 0.01, 1, 0).expect("step");
    println!(
        "{{\"spec\": \"{spec}\", \"compile_s\": {:.4}, \"first_step_s\": {:.4}}}",
        compiled.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

fn throughput(spec: &str) {
    let (model, info, cfg) = setup(spec);
    // char_gpt: the first 1024 training windows (an epoch of 8k takes 30 s).
    let limit = if spec.contains("char_gpt") {
        Some(1024)
    } else if spec.contains("cnn_wide") {
        Some(12800)
    } else {
        None
    };
    let opts = modelc::train::Options { test_limit: Some(0), limit, ..Default::default() };
    let data = modelc::train::load(info.data.as_ref().expect("data"), &model, &info, &opts).expect("MNIST");
    let n = data.train.len;
    let order = modelc::data::epoch_order(n, info.seed, 0);
    let set = data.train.slice(&order);
    let (w, b) = (set.width, info.batch as usize);
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    set.gather(&(0..n).collect::<Vec<_>>(), &mut features, &mut labels);
    // Labels per sample: 1, or one per position (char_gpt).
    let lw = labels.len() / n;
    let lr = info.optimizer.as_ref().expect("optimizer").lr();
    let mut exec =
        Compiled::new(&model, &cfg, &modelc::init::init(&model, info.seed).expect("init")).expect("compiles");
    let epoch = |exec: &mut Compiled, step0: u64| -> (f64, f64) {
        let t = Instant::now();
        let mut loss = 0.0;
        let mut step = step0;
        for start in (0..n).step_by(b) {
            let m = b.min(n - start);
            let batch = Batch {
                n: m,
                features: &features[start * w..(start + m) * w],
                labels: &labels[start * lw..(start + m) * lw],
            };
            step += 1;
            loss = exec.train_step(&batch, lr, step, 0).expect("step").loss;
        }
        (t.elapsed().as_secs_f64(), loss)
    };
    let _ = epoch(&mut exec, 0);
    // Three timed epochs; the median is reported (this machine is shared).
    let mut runs: Vec<(f64, f64)> = (1..=3).map(|e| epoch(&mut exec, e * n.div_ceil(b) as u64)).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (secs, loss) = runs[1];
    if std::env::var_os("MODELC_PROFILE").is_some() {
        exec.start_profile();
        let _ = epoch(&mut exec, 0);
        eprintln!("{spec}: time per kernel over one more epoch\n{}", exec.profile_report());
    }
    println!(
        "{{\"spec\": \"{spec}\", \"batch\": {b}, \"samples\": {n}, \"seconds\": {secs:.4}, \"samples_per_s\": {:.0}, \"last_loss\": {loss:.4}, \"threads\": {}}}",
        n as f64 / secs,
        rayon::current_num_threads()
    );
}

fn main() {
    // As `modelc`'s main: steps run on this thread.
    modelc_compiler::backend::cpu::run_kernels_on_this_thread();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let Some(i) = args.iter().position(|a| a == "--first-step") {
        first_step(args.get(i + 1).map_or("specs/lenet5.model", String::as_str));
        return;
    }
    let all = [
        "specs/mnist_mlp.model",
        "specs/lenet5.model",
        "specs/mlp_large.model",
        "specs/cnn_wide.model",
        "specs/char_gpt.model",
    ];
    for spec in all.iter().filter(|s| args.is_empty() || args.iter().any(|a| s.contains(a.as_str()))) {
        throughput(spec);
    }
}
