//! The compiled CPU executor against the reference interpreter: for every
//! spec, one training step gives the same loss, parameters and optimizer
//! state (normwise relative error ≤ 1e-4 per tensor, f32 against f64), and
//! ten steps follow the same loss curve (relative error ≤ 1e-3).

use std::path::Path;

use modelc::exec::{Batch, Compiled, Executor, Interpreter};
use modelc_compiler::check::ModelInfo;
use modelc_compiler::gradcheck::{random_inputs, Rng};
use modelc_compiler::ir::lower::{self, Mode};
use modelc_compiler::ir::Role;
use modelc_compiler::step::StepConfig;

use crate::check_spec;

pub(crate) fn model_and_config(spec: &str) -> (ModelInfo, StepConfig, f64) {
    let (_, program, errors) = check_spec(Path::new(spec));
    assert!(errors.is_empty(), "{errors:?}");
    match program.finetunes.first() {
        Some(f) => {
            let stage = &f.stages[0];
            let lr = stage.optimizer.as_ref().map_or(1e-3, |o| o.lr());
            (f.model.clone(), StepConfig::from_train(stage).expect("optimizer"), lr)
        }
        None => {
            let m = program.models[0].clone();
            let t = program.trains.iter().find(|t| t.model == m.name).expect("train block");
            let lr = t.optimizer.as_ref().expect("optimizer").lr();
            (m, StepConfig::from_train(t).expect("optimizer"), lr)
        }
    }
}

/// A random batch of `n` samples as the trainer feeds it (f32).
pub(crate) fn batch(model: &ModelInfo, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let g = lower::forward(model, Mode::Eval).expect("lowers");
    let inputs = random_inputs(&g, n, &mut Rng::new(seed));
    let take = |role: Role| {
        let (name, _) = g.inputs_of(role).into_iter().next().expect("one input of the role");
        inputs[&name].data.iter().map(|v| *v as f32).collect::<Vec<f32>>()
    };
    (take(Role::Data), take(Role::Target))
}

/// max |a − b| / max |b| over a tensor.
pub(crate) fn normwise(a: &[f32], b: &[f32]) -> f64 {
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

fn compare(spec: &str, n: usize, steps: usize) {
    compare_on(spec, n, steps, &|model, cfg, init| Ok(Box::new(Compiled::new(model, cfg, init)?)));
}

/// Makes the executor under test.
pub(crate) type Make =
    dyn Fn(&ModelInfo, &StepConfig, &modelc::checkpoint::Tensors) -> Result<Box<dyn Executor>, String>;

/// `steps` training steps of `spec` at batch `n` on the executor `make`
/// builds, against the interpreter: the first step's loss, accuracy,
/// parameters and state to 1e-4 (normwise), the loss curve to 1e-3, and an
/// evaluation batch.
pub(crate) fn compare_on(spec: &str, n: usize, steps: usize, make: &Make) {
    let (model, cfg, lr) = model_and_config(spec);
    let init = modelc::init::init(&model, 3).expect("init");
    let mut reference = Interpreter::new(&model, &cfg, &init).expect("interpreter");
    let mut compiled = make(&model, &cfg, &init).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let mut curve = Vec::new();
    let mut worst = 0f64;
    for step in 1..=steps as u64 {
        let (x, y) = batch(&model, n, step);
        let b = Batch { n, features: &x, labels: &y };
        let want = reference.train_step(&b, lr, step, 11).expect("interpreter step");
        let got = compiled.train_step(&b, lr, step, 11).expect("compiled step");
        curve.push((got.loss, want.loss));
        if step == 1 {
            assert!(
                (got.loss - want.loss).abs() <= 1e-4 * want.loss.abs().max(1e-3),
                "{spec}: loss {} vs {}",
                got.loss,
                want.loss
            );
            if let (Some(a), Some(b)) = (got.accuracy, want.accuracy) {
                assert!((a - b).abs() < 1e-6, "{spec}: accuracy {a} vs {b}");
            }
            let (pa, pb) = (compiled.parameters(), reference.parameters());
            let (sa, sb) = (compiled.state(), reference.state());
            assert_eq!(pa.len(), pb.len());
            assert_eq!(sa.len(), sb.len());
            for (name, (shape, a)) in pa.iter().chain(&sa) {
                let (s, b) = pb.get(name).or_else(|| sb.get(name)).unwrap_or_else(|| panic!("{spec}: {name}"));
                assert_eq!(shape, s, "{spec}: {name}");
                // Adam divides by √v + ε, so an element's update has the
                // relative error of its own gradient. f32 rounding is about
                // 1e-7 of a tensor's largest gradient: an element below 1e-3
                // of that (an attention key bias, zero up to rounding, has no
                // sign at all) cannot meet 1e-4 and is left out of the
                // parameter check. The moments, linear in the gradient, are
                // all checked.
                let (a, b): (Vec<f32>, Vec<f32>) = match sb.get(&format!("{name}.exp_avg")) {
                    Some((_, m)) => {
                        let top = m.iter().fold(0f32, |t, x| t.max(x.abs()));
                        a.iter().zip(b).zip(m).filter(|(_, m)| m.abs() > 1e-3 * top).map(|(ab, _)| ab).unzip()
                    }
                    None => (a.clone(), b.clone()),
                };
                let e = normwise(&a, &b);
                assert!(e <= 1e-4, "{spec}: `{name}` after one step differs by {e:e} (normwise)");
                worst = worst.max(e);
            }
        }
    }
    let mut worst_loss = 0f64;
    for (i, (a, b)) in curve.iter().enumerate() {
        let e = (a - b).abs() / b.abs().max(1e-3);
        assert!(e <= 1e-3, "{spec}: loss at step {} is {a}, the interpreter's {b} (relative {e:e})", i + 1);
        worst_loss = worst_loss.max(e);
    }
    println!(
        "{spec} (batch {n}): worst tensor after one step {worst:.1e} (normwise); worst loss over {steps} steps {worst_loss:.1e} (relative)"
    );
    // Evaluation (no dropout, no update) agrees too.
    let (x, y) = batch(&model, n + 2, 99);
    let b = Batch { n: n + 2, features: &x, labels: &y };
    let (got, want) = (compiled.evaluate(&b).expect("eval"), reference.evaluate(&b).expect("eval"));
    assert!((got.loss - want.loss).abs() <= 1e-4 * want.loss.abs().max(1e-3), "{spec}: eval loss");
    assert_eq!(got.predictions.len(), want.predictions.len(), "{spec}: predictions");
}

#[test]
fn xor_step_matches_the_interpreter() {
    compare("specs/xor.model", 4, 10);
}

#[test]
fn mnist_mlp_step_matches_the_interpreter() {
    compare("specs/mnist_mlp.model", 5, 10);
}

#[test]
fn lenet5_step_matches_the_interpreter() {
    compare("specs/lenet5.model", 3, 10);
}

#[test]
fn lenet5_finetune_step_matches_the_interpreter() {
    compare("specs/lenet5_finetune.model", 3, 10);
}

#[test]
fn char_gpt_step_matches_the_interpreter() {
    compare("specs/char_gpt.model", 1, 10);
}

/// The same inputs give bit-identical results twice (threads included).
#[test]
fn cnn_wide_step_matches_the_interpreter() {
    compare("specs/cnn_wide.model", 2, 2);
}

/// A batch of several sequences: a dense layer's matmul over [N, T, D] runs
/// as one gemm with the batch folded into its rows (`layout::gemm_dims`).
#[test]
fn char_gpt_tiny_step_matches_the_interpreter_at_batch_3() {
    compare("specs/char_gpt_tiny.model", 3, 3);
}

/// At batch 128 the attention's q/k/v slices ([128, 16, 16] each: 32,768
/// elements) and their gradient's concat split between the threads.
#[test]
fn char_gpt_tiny_step_matches_at_batch_128_where_copies_split_between_threads() {
    compare("specs/char_gpt_tiny.model", 128, 1);
}

#[test]
fn compiled_steps_are_deterministic() {
    let (model, cfg, lr) = model_and_config("specs/lenet5.model");
    let init = modelc::init::init(&model, 5).expect("init");
    let run = || {
        let mut c = Compiled::new(&model, &cfg, &init).expect("compiles");
        (1..=5u64)
            .map(|s| {
                let (x, y) = batch(&model, 64, s);
                c.train_step(&Batch { n: 64, features: &x, labels: &y }, lr, s, 1).expect("step").loss.to_bits()
            })
            .collect::<Vec<u64>>()
    };
    assert_eq!(run(), run());
}

/// At batch 64 the big loops (and reductions that keep the batch) are split
/// between threads, and im2col/col2im run per image on both.
#[test]
fn lenet5_step_matches_at_batch_64_where_kernels_split_between_threads() {
    compare("specs/lenet5.model", 64, 2);
}

/// The wide MLP: its forward matmuls (`x·Wᵀ` with fewer rows than columns)
/// are computed transposed and transposed back.
#[test]
fn mlp_large_step_matches_the_interpreter() {
    compare("specs/mlp_large.model", 4, 3);
}

#[test]
fn transposes_are_exact_for_every_edge_case() {
    for (rows, cols) in [(1, 1), (3, 5), (4, 4), (7, 9), (64, 8), (66, 13), (130, 1024)] {
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut dst = vec![f32::NAN; rows * cols];
        // SAFETY: both hold rows·cols floats.
        unsafe { modelc_compiler::backend::cpu::transpose(src.as_ptr(), dst.as_mut_ptr(), rows, cols) };
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows}×{cols} at ({r}, {c})");
            }
        }
    }
}
