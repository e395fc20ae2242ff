//! The trainer end to end (on the reference interpreter): it learns, it is
//! deterministic, it logs and checkpoints, and it stops clearly when the loss
//! diverges.

use std::path::{Path, PathBuf};

use crate::modelc;

fn out_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("modelc-train-{}-{name}", std::process::id()))
}

#[test]
fn xor_is_learned() {
    let out = out_dir("xor");
    let (code, stdout, err) = modelc(&["train", "specs/xor.model", "--out", &out.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let last = stdout.lines().rev().find(|l| l.starts_with("epoch 2000/2000")).expect("final epoch line");
    assert!(last.contains("acc 100.00%"), "{stdout}");
    let log = std::fs::read_to_string(out.join("log.jsonl")).expect("log");
    assert_eq!(log.lines().count(), 2000, "one JSON line per epoch");
    let t = modelc::checkpoint::load(&out.join("last.safetensors")).expect("checkpoint");
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(names, ["hidden.bias", "hidden.weight", "out.bias", "out.weight"]);
    std::fs::remove_dir_all(&out).ok();
}

/// The fast sibling of the full MNIST run: 2,000 training images, 3 epochs.
#[test]
fn mnist_mlp_learns_from_a_subset() {
    let out = out_dir("mlp");
    let args = ["train", "specs/mnist_mlp.model", "--limit", "2000", "--test-limit", "1000", "--epochs", "3"];
    let (code, stdout, err) = modelc(&[&args[..], &["--out", &out.to_string_lossy()]].concat());
    assert_eq!(code, 0, "{err}");
    let line = serde_json::from_str::<serde_json::Value>(
        std::fs::read_to_string(out.join("log.jsonl")).expect("log").lines().last().expect("a line"),
    )
    .expect("json");
    let acc = line["test_accuracy"].as_f64().expect("test accuracy");
    assert!(acc >= 0.80, "test accuracy {acc} after 3 epochs on 2,000 images\n{stdout}");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn the_same_seed_gives_the_same_loss_curve() {
    let (_, program, _) = crate::check_spec(Path::new("specs/mnist_mlp.model"));
    let model = &program.models[0];
    let info = &program.trains[0];
    let cfg = modelc_compiler::step::StepConfig::from_train(info).expect("optimizer");
    let curve = |seed: u64| {
        let opts = modelc::train::Options {
            epochs: Some(1),
            limit: Some(256),
            test_limit: Some(64),
            seed: Some(seed),
            out: out_dir(&format!("det{seed}")),
            ..Default::default()
        };
        let data = modelc::train::load(info.data.as_ref().expect("data"), model, info, &opts).expect("data");
        let mut exec = modelc::exec::Compiled::new(model, &cfg, &modelc::init::init(model, seed).expect("init"))
            .expect("compiles");
        let o = modelc::train::run(&mut exec, model, info, &data, &opts, &mut Vec::new()).expect("trains");
        std::fs::remove_dir_all(&opts.out).ok();
        o.losses
    };
    let (a, b) = (curve(7), curve(7));
    assert_eq!(a.len(), 4);
    assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    assert_ne!(a, curve(8), "another seed, another curve");
}

#[test]
fn divergence_stops_with_the_step_and_tensor() {
    let dir = out_dir("nan");
    std::fs::create_dir_all(&dir).expect("dir");
    let spec = dir.join("lin.model");
    std::fs::write(
        &spec,
        "model lin {\n  input x: f32[2]\n  target y: f32[1]\n  out = x |> dense(1)\n  loss mse(out, y)\n}\ntrain lin {\n  data xor()\n  batch 4\n  epochs 500\n  optimizer sgd(lr: 1000)\n}\n",
    )
    .expect("spec");
    let (code, _, err) = modelc(&["train", &spec.to_string_lossy(), "--out", &dir.join("run").to_string_lossy()]);
    assert_eq!(code, 1);
    // The loss grows past 1e4 times its first value before it overflows.
    assert!(
        err.contains("the loss diverged") && err.contains("at step 2") && err.contains("first non-finite tensor"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_settings_are_checked() {
    let (code, _, err) = modelc(&["train", "specs/xor.model", "--set", "epoch=3"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown setting `epoch` (did you mean `epochs`?"), "{err}");
    let (code, _, err) = modelc(&["train", "specs/mnist_mlp.model", "--set", "data=/nonexistent", "--limit", "10"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/train-images-idx3-ubyte[.gz]") && err.contains("--set data=PATH"), "{err}");
}

/// A trained checkpoint evaluates to what training reported, and predicts.
#[test]
fn eval_and_predict_use_the_checkpoint() {
    let out = out_dir("eval");
    let dir = out.to_string_lossy().into_owned();
    let args =
        ["train", "specs/mnist_mlp.model", "--limit", "512", "--test-limit", "300", "--epochs", "1", "--out", &dir];
    let (code, _, err) = modelc(&args);
    assert_eq!(code, 0, "{err}");
    let log: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("log.jsonl")).expect("log").lines().next().expect("a line"),
    )
    .expect("json");
    let weights = out.join("last.safetensors").to_string_lossy().into_owned();
    let (code, text, err) = modelc(&["eval", "specs/mnist_mlp.model", "--weights", &weights, "--limit", "300"]);
    assert_eq!(code, 0, "{err}");
    let reported = format!("accuracy   {:.2}%", 100.0 * log["test_accuracy"].as_f64().expect("accuracy"));
    assert!(text.contains(&reported), "{text} vs {reported}");
    assert!(text.contains("confusion matrix"), "{text}");
    let (code, text, err) = modelc(&[
        "predict",
        "specs/mnist_mlp.model",
        "--weights",
        &weights,
        "--input",
        "data/mnist/t10k-images-idx3-ubyte.gz",
        "--limit",
        "5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(text.lines().count(), 5);
    assert!(text.lines().all(|l| l.split('\t').nth(1).and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| c < 10)));
    // A checkpoint of another model is refused with the tensor named.
    let (code, _, err) = modelc(&["eval", "specs/lenet5.model", "--weights", &weights]);
    assert_eq!(code, 1);
    assert!(err.contains("the model needs `conv1.weight`"), "{err}");
    std::fs::remove_dir_all(&out).ok();
}

/// Stopping after an epoch and resuming gives the curve an uninterrupted run
/// gives (up to the f32 rounding of the checkpoint; the interpreter is f64).
/// The schedule is made constant: a cosine over `--epochs 1` is another run
/// than over 2, so "stopping after one epoch" is simulated with a schedule
/// that does not depend on the run's length.
#[test]
fn resume_continues_the_same_run() {
    let (_, program, _) = crate::check_spec(Path::new("specs/mnist_mlp.model"));
    let model = &program.models[0];
    let mut info = program.trains[0].clone();
    info.schedule = modelc_compiler::check::train::Schedule::Constant;
    let info = &info;
    let cfg = modelc_compiler::step::StepConfig::from_train(info).expect("optimizer");
    let run = |out: &Path, epochs: u64, resume: bool| {
        let opts = modelc::train::Options {
            epochs: Some(epochs),
            limit: Some(256),
            test_limit: Some(64),
            out: out.to_path_buf(),
            resume,
            ..Default::default()
        };
        let data = modelc::train::load(info.data.as_ref().expect("data"), model, info, &opts).expect("data");
        let mut exec =
            modelc::exec::Interpreter::new(model, &cfg, &modelc::init::init(model, info.seed).expect("init"))
                .expect("compiles");
        modelc::train::run(&mut exec, model, info, &data, &opts, &mut Vec::new())
    };
    let whole = out_dir("whole");
    let split = out_dir("split");
    let all = run(&whole, 2, false).expect("trains").losses;
    let first = run(&split, 1, false).expect("trains").losses;
    let rest = run(&split, 2, true).expect("resumes").losses;
    assert_eq!(first.len() + rest.len(), all.len());
    assert_eq!(first, all[..first.len()], "the first epoch is the same run");
    for (a, b) in rest.iter().zip(&all[first.len()..]) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "resumed loss {a} vs uninterrupted {b}");
    }
    let log = std::fs::read_to_string(split.join("log.jsonl")).expect("log");
    assert_eq!(log.lines().count(), 2, "the log continues");
    let err = run(&out_dir("nothing"), 2, true).err().expect("nothing to resume");
    assert!(err.starts_with("cannot resume: cannot read checkpoint"), "{err}");
    for d in [whole, split, out_dir("nothing")] {
        std::fs::remove_dir_all(d).ok();
    }
}
