//! The command line, run in-process.

use crate::modelc;

#[test]
fn check_accepts_every_valid_spec() {
    let specs = [
        "specs/mnist_mlp.model",
        "specs/lenet5.model",
        "specs/xor.model",
        "specs/lenet5_finetune.model",
        "specs/char_gpt.model",
    ];
    let mut args = vec!["check"];
    args.extend(specs);
    let (code, out, err) = modelc(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok")).count(), specs.len(), "{out}");
    assert!(out.contains("model mnist_mlp (101,770 parameters)"), "{out}");
}

#[test]
fn check_fails_and_renders_every_error() {
    let (code, out, err) = modelc(&["check", "specs/invalid/syntax_two_errors.model", "specs/mnist_mlp.model"]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("E0100").count(), 2, "{err}");
    assert!(err.contains("syntax_two_errors.model: 2 errors"), "{err}");
    assert!(out.contains("ok    specs/mnist_mlp.model"), "{out}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = modelc(&["check", "specs/nope.model"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read specs/nope.model: no such file"), "{err}");
}

#[test]
fn summary_json_has_totals_and_layouts() {
    let (code, out, err) = modelc(&["summary", "specs/mnist_mlp.model", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["totals"]["params"], 101_770);
    assert_eq!(v["totals"]["trainable"], 101_770);
    // Adam keeps two f32 tensors per parameter.
    assert_eq!(v["totals"]["optimizer_state_bytes"], 101_770 * 2 * 4);
    assert_eq!(v["params"][0]["name"], "hidden.weight");
    assert_eq!(v["params"][0]["shape"], serde_json::json!([128, 784]));
    // 2·784·128 + 128 + 128 (relu) + 2·128·10 + 10
    assert_eq!(v["totals"]["flops_per_sample"], 2 * 784 * 128 + 128 + 128 + 2 * 128 * 10 + 10);
}

#[test]
fn summary_of_a_finetune_stage_shows_frozen_parameters() {
    let (code, out, err) = modelc(&["summary", "specs/lenet5_finetune.model", "--stage", "all", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["stage"], "all");
    // conv1 (156) stays frozen; the new 5-way head has 84·5 + 5 = 425.
    assert_eq!(v["totals"]["frozen"], 156);
    assert_eq!(v["totals"]["params"], 44_426 - 850 + 425);
    let (code, _, err) = modelc(&["summary", "specs/lenet5_finetune.model", "--stage", "middle"]);
    assert_eq!(code, 1);
    assert!(err.contains("no stage `middle` (it has: head, all)"), "{err}");
}

#[test]
fn summary_refuses_an_unknown_model() {
    let (code, _, err) = modelc(&["summary", "specs/lenet5.model", "--model", "lenet"]);
    assert_eq!(code, 1);
    assert!(err.contains("no model or finetune named `lenet` (it has: lenet5)"), "{err}");
}

#[test]
fn bad_arguments_get_usage() {
    let (code, _, err) = modelc(&["chek", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand 'chek'"), "{err}");
}

#[test]
fn a_file_that_is_not_text_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("modelc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("binary.model");
    std::fs::write(&path, [0x6d, 0x6f, 0xff, 0xfe, 0x00]).expect("write");
    let (code, _, err) = modelc(&["check", &path.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("the file is not valid UTF-8"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `modelc emit` prints the same code every time (the splats of a kernel's
/// scalars were ordered by a hash map's iteration once).
#[test]
fn emit_is_deterministic() {
    let first = modelc(&["emit", "specs/char_gpt_tiny.model"]);
    assert_eq!(first.0, 0, "{}", first.2);
    assert!(first.1.contains("splat.f32x4"), "the output has splats to order");
    for _ in 0..3 {
        assert_eq!(modelc(&["emit", "specs/char_gpt_tiny.model"]).1, first.1);
    }
}
