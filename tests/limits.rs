//! What must never pass silently: sizes that overflow, runs that cannot fit
//! the machine's memory, parameters without an initialization rule, ops
//! without a derivative rule, and a toolchain older than the dependencies
//! need.

use modelc_compiler::autodiff;
use modelc_compiler::ir::lower::Builder;
use modelc_compiler::ir::{Dim, Graph, Op, Role, Shape, Ty};

use crate::modelc;

fn spec(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("modelc-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(name);
    std::fs::write(&p, body).expect("spec");
    p
}

const MEM: &str = "model mem {
  input  image: f32[784]
  target label: class[10]
  hidden = image |> dense(400000000) |> relu
  logits = hidden |> dense(10)
  loss   cross_entropy(logits, label)
}
train mem {
  data      mnist(\"data/mnist\")
  batch     64
  epochs    1
  optimizer adam(lr: 1e-3)
}
";

/// Before: `dense(4294967296)` checked clean, then overflowed or aborted on
/// allocation. A tensor over 2^40 elements is a check error; one that fits
/// the language but not this machine is refused by `check` and `train`
/// before anything is allocated, with the figures and the tensor.
#[test]
fn a_model_too_large_for_the_machine_is_refused_before_it_allocates() {
    let p = spec("mem.model", MEM);
    let path = p.to_string_lossy().into_owned();
    for cmd in ["check", "train"] {
        let started = std::time::Instant::now();
        let (code, _, err) = modelc(&[cmd, &path]);
        assert_eq!(code, 1, "{cmd}");
        assert!(err.contains("needs 7.1 TiB of memory and this machine has"), "{cmd}: {err}");
        assert!(err.contains("the largest tensor is `hidden.weight` (1.1 TiB)"), "{cmd}: {err}");
        assert!(started.elapsed().as_secs_f64() < 5.0, "{cmd} refused before loading data");
    }
    // Two layers of 2^32 units: 2^64 elements overflowed every size before.
    let huge = MEM.replace("dense(400000000)", "dense(4294967296) |> dense(4294967296)");
    let (code, _, err) = modelc(&["check", &spec("huge.model", &huge).to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("E0405") && err.contains("would hold 4294967296 × 784 elements"), "{err}");
}

/// The estimate's figures are the model's own: parameters, Adam's two
/// moments, and arenas no larger than the values they plan.
#[test]
fn the_memory_estimate_counts_what_the_run_holds() {
    let (_, program, _) = crate::check_spec(std::path::Path::new("specs/mnist_mlp.model"));
    let info = &program.trains[0];
    let model = program.model(&info.model).expect("model");
    let cfg = modelc_compiler::step::StepConfig::from_train(info).expect("optimizer");
    let e = modelc::resources::estimate(model, &cfg, 64).expect("estimate");
    assert_eq!(e.parameters, 101_770 * 4);
    assert_eq!(e.optimizer_state, 2 * 101_770 * 4, "Adam's exp_avg and exp_avg_sq");
    assert!(e.batch_buffers >= 64 * 785 * 4, "features and labels: {}", e.batch_buffers);
    assert!(e.step_arena > 64 * 128 * 4 && e.step_arena < 8 << 20, "step arena {}", e.step_arena);
    assert_eq!(e.largest.0, "`hidden.weight`");
    let err = modelc::resources::check_fits(model, &cfg, 64, Some(1 << 20)).expect_err("1 MiB is too little");
    assert!(err.contains("needs 2.") && err.contains("1.0 MiB available"), "{err}");
}

/// Before: a parameter of a kind `init` had no rule for got zeros silently.
#[test]
fn a_parameter_without_an_initialization_rule_is_an_error() {
    let (_, program, _) = crate::check_spec(std::path::Path::new("specs/char_gpt.model"));
    let mut model = program.models[0].clone();
    assert!(modelc::init::init(&model, 1).is_ok(), "every parameter of char_gpt has a rule");
    let p = model.params.iter_mut().find(|p| p.name.ends_with("in_proj_bias")).expect("an attention bias");
    p.name = p.name.replace("in_proj_bias", "gate_bias");
    let name = p.name.clone();
    let err = modelc::init::init(&model, 1).expect_err("no rule for it");
    assert!(err.contains(&format!("parameter `{name}` (of attention) has no initialization rule")), "{err}");
}

/// Before: `MaxPoolGrad` had no derivative and autodiff gave no gradient
/// through it, silently.
#[test]
fn differentiating_a_gradient_op_is_an_error_not_a_zero() {
    let mut b = Builder { g: Graph::new() };
    let image = Shape(vec![Dim::Batch, Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(4)]);
    let x = b.g.input("x", Role::Param, Ty::f32(image));
    let y = b.op(Op::MaxPool { size: (2, 2), stride: (2, 2) }, &[x]).expect("typed");
    let dy = b.g.input("dy", Role::Data, Ty::f32(b.g.ty(y).shape.clone()));
    let dx = b.op(Op::MaxPoolGrad { size: (2, 2), stride: (2, 2) }, &[x, y, dy]).expect("typed");
    let s = b.sum_all(dx).expect("typed");
    let err = autodiff::grad(b.g, s, &[x]).expect_err("no second derivative");
    assert!(err.to_string().contains("max_pool_grad") && err.to_string().contains("no derivative rule"), "{err}");
}

/// `rust-version` was 1.85 while cranelift 0.135 needs 1.95: the declared
/// minimum must be at least every dependency's.
#[test]
fn the_declared_rust_version_covers_every_dependency() {
    let out = std::process::Command::new(env!("CARGO"))
        // This platform's dependencies: the ones CI has downloaded.
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform"])
        .arg(host_target())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let version = |v: &str| -> (u64, u64) {
        let mut it = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let packages = meta["packages"].as_array().expect("packages");
    let ours = packages.iter().find(|p| p["name"] == "modelc").expect("modelc");
    let declared = version(ours["rust_version"].as_str().expect("modelc declares rust-version"));
    let (worst, needs) = packages
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), version(p["rust_version"].as_str()?))))
        .max_by_key(|(_, v)| *v)
        .expect("some dependency declares one");
    assert!(declared >= needs, "rust-version {declared:?}, but {worst} needs {needs:?}");
}

/// The target triple of the toolchain running the tests (`rustc -vV`).
fn host_target() -> String {
    let out = std::process::Command::new("rustc").arg("-vV").output().expect("rustc runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix("host: ")).expect("a host line").to_string()
}
