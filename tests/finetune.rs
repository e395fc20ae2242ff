//! Fine-tuning runs: a finetune block's stages train one after another from
//! its `weights` (replaced layers fresh), frozen parameters stay as loaded,
//! optimizer state and the run folder's guarantees carry across stages.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::modelc;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("modelc-ft-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).expect("dir");
    d
}

const SMALL: &[&str] = &["--limit", "300", "--test-limit", "100"];

/// A base LeNet-5 trained briefly, and the example finetune pointed at it.
fn setup(d: &Path) -> PathBuf {
    let base = d.join("base").to_string_lossy().into_owned();
    let args = [&["train", "specs/lenet5.model", "--epochs", "1", "--out", &base][..], SMALL].concat();
    let (code, _, err) = modelc(&args);
    assert_eq!(code, 0, "{err}");
    std::fs::copy("specs/lenet5.model", d.join("lenet5.model")).expect("base spec");
    let weights = d.join("base/last.safetensors");
    let text = std::fs::read_to_string("specs/lenet5_finetune.model")
        .expect("spec")
        .replace("runs/lenet5_lower/best.safetensors", &weights.to_string_lossy());
    let spec = d.join("ft.model");
    std::fs::write(&spec, text).expect("spec");
    spec
}

#[test]
fn a_finetune_trains_its_stages_from_its_weights() {
    let d = dir("stages");
    let spec = setup(&d);
    let out = d.join("run");
    let (spec_s, out_s) = (spec.to_string_lossy().into_owned(), out.to_string_lossy().into_owned());
    let args = [&["train", &spec_s, "--out", &out_s][..], SMALL].concat();
    let (code, text, err) = modelc(&args);
    assert_eq!(code, 0, "{err}");
    let first = text.lines().next().expect("a first line");
    assert!(first.starts_with("training `lenet5_upper` (the one block in"), "{first}");
    assert!(
        text.contains("8 tensors loaded; newly initialized (replaced layers, LoRA adapters): logits.bias, logits.weight; in the file but not used: logits.bias, logits.weight"),
        "{text}"
    );
    assert!(
        text.contains("stage `head`: 2 epochs, training 2 of 10")
            && text.contains("stage `all`: 3 epochs, training 8 of 10"),
        "{text}"
    );
    let log = std::fs::read_to_string(out.join("log.jsonl")).expect("log");
    let stages: Vec<(u64, String)> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (v["epoch"].as_u64().expect("epoch"), v["stage"].as_str().expect("stage").to_string())
        })
        .collect();
    let want: Vec<(u64, String)> = [(1, "head"), (2, "head"), (3, "all"), (4, "all"), (5, "all")]
        .iter()
        .map(|(e, s)| (*e, s.to_string()))
        .collect();
    assert_eq!(stages, want);
    let base = modelc::checkpoint::load(&d.join("base/last.safetensors")).expect("base");
    let tuned = modelc::checkpoint::load(&out.join("last.safetensors")).expect("tuned");
    assert_eq!(tuned["conv1.weight"], base["conv1.weight"], "conv1 is frozen in every stage");
    assert_ne!(tuned["conv2.weight"], base["conv2.weight"], "conv2 trains in stage `all`");
    assert_eq!(tuned["logits.weight"].0, [5, 84], "the replaced 5-way head");
    std::fs::remove_dir_all(&d).ok();
}

/// A crash at the end of the first stage or inside the second, then
/// `--resume`: the same weights as the uninterrupted run, bit for bit.
#[test]
fn a_finetune_resumes_across_its_stages_exactly() {
    let d = dir("resume");
    let spec = setup(&d);
    let run = |out: &Path, crash: Option<&str>, resume: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_modelc"));
        c.args(["train", &spec.to_string_lossy(), "--out", &out.to_string_lossy()]).args(SMALL);
        if resume {
            c.arg("--resume");
        }
        if let Some(at) = crash {
            c.env("MODELC_CRASH_AT", at);
        }
        c.output().expect("runs")
    };
    let whole = d.join("whole");
    assert!(run(&whole, None, false).status.success());
    let want = modelc::checkpoint::load(&whole.join("last.safetensors")).expect("weights");
    for at in ["after-state:2", "after-log:3", "after-state:4"] {
        let out = d.join(at.replace(':', "-"));
        assert!(!run(&out, Some(at), false).status.success(), "{at}: crashed");
        let st = run(&out, None, true);
        assert!(st.status.success(), "{at}: {}", String::from_utf8_lossy(&st.stderr));
        let got = modelc::checkpoint::load(&out.join("last.safetensors")).expect("weights");
        assert_eq!(got, want, "{at}: resumed weights differ from the uninterrupted run");
        let log = std::fs::read_to_string(out.join("log.jsonl")).expect("log");
        assert_eq!(log.lines().count(), 5, "{at}: each epoch once");
    }
    std::fs::remove_dir_all(&d).ok();
}

/// Which block `modelc train FILE` runs: the last declared in the file, or
/// `--model`; the first line says which.
#[test]
fn train_runs_the_last_block_or_the_one_named() {
    let d = dir("pick");
    let spec = setup(&d);
    let mut text = std::fs::read_to_string(&spec).expect("spec");
    text = text.replace("import \"lenet5.model\"", "import \"lenet5.model\"\n\ntrain lenet5 {\n  data mnist(\"data/mnist\")\n  batch 64\n  epochs 1\n  optimizer sgd(lr: 0.01)\n}\n");
    let two = d.join("two.model");
    std::fs::write(&two, text).expect("spec");
    let out = d.join("run").to_string_lossy().into_owned();
    let two_s = two.to_string_lossy().into_owned();
    let args = [&["train", &two_s, "--out", &out, "--model", "lenet5"][..], SMALL].concat();
    let (code, stdout, err) = modelc(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.starts_with("training `lenet5` (chosen with --model)"), "{stdout}");
    let (code, stdout, err) = modelc(&["train", &two_s, "--out", &out, "--limit", "300", "--test-limit", "100"]);
    assert_eq!(code, 0, "{err}");
    let first = stdout.lines().next().expect("a line");
    assert!(
        first.contains("training `lenet5_upper` (the last of 2 blocks in")
            && first.ends_with("choose another with --model: lenet5, lenet5_upper)"),
        "{first}"
    );
    let (code, _, err) = modelc(&["train", &spec.to_string_lossy(), "--model", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("has no train block or finetune named `nope` (it has: lenet5_upper)"), "{err}");
    // A finetune whose weights do not exist says what to do.
    let missing = std::fs::read_to_string(&spec).expect("spec").replace("base/last.safetensors", "nowhere.safetensors");
    let m = d.join("missing.model");
    std::fs::write(&m, missing).expect("spec");
    let (code, _, err) = modelc(&["train", &m.to_string_lossy(), "--out", &out]);
    assert_eq!(code, 1);
    assert!(err.contains("train `lenet5` first, or change `weights`"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// `modelc schedule`: the rate of every parameter group at every step,
/// across stages, each stage's schedule from its own start; and the SVG.
#[test]
fn schedule_prints_every_group_across_stages() {
    let d = dir("schedule");
    let svg = d.join("lr.svg");
    let args = ["schedule", "specs/lenet5_finetune.model", "--steps-per-epoch", "10", "--svg", &svg.to_string_lossy()];
    let (code, out, err) = modelc(&args);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(out.lines().next(), Some("step,epoch,stage,group,scale,lr"));
    // head: 2 epochs × 10 steps, one group; all: 3 × 10, two groups.
    assert_eq!(rows.len(), 20 + 2 * 30);
    let rate = |stage: &str, group: &str, step: &str| -> f64 {
        let r = rows.iter().find(|r| r[2] == stage && r[3] == group && r[0] == step).expect("row");
        r[5].parse().expect("lr")
    };
    assert_eq!(rate("head", "logits", "1"), 0.01);
    // Stage `all` starts at step 21 with a cosine warm-up of 100 steps
    // (longer than the stage: the warm-up is cut to its 30 steps).
    let first = rate("all", "fc1 fc2 logits", "21");
    assert!((first - 1e-4 / 30.0).abs() < 1e-15, "{first}");
    assert!((rate("all", "conv2", "35") - 0.1 * rate("all", "fc1 fc2 logits", "35")).abs() < 1e-18);
    let text = std::fs::read_to_string(&svg).expect("svg");
    assert!(text.starts_with("<svg") && text.contains("stage all") && text.contains("conv2 (×0.1)"), "svg");
    std::fs::remove_dir_all(&d).ok();
}

/// `modelc plot`: the curves of a log, stages marked; a malformed log is a
/// clear error.
#[test]
fn plot_draws_a_log_and_refuses_a_broken_one() {
    let d = dir("plot");
    let log = d.join("log.jsonl");
    std::fs::write(
        &log,
        "{\"epoch\":1,\"stage\":\"head\",\"train_loss\":1.5,\"val_loss\":1.6,\"val_accuracy\":0.4,\"val_macro_f1\":0.3}\n{\"epoch\":2,\"stage\":\"all\",\"train_loss\":1.1,\"val_loss\":1.2,\"val_accuracy\":0.6,\"val_macro_f1\":0.5}\n",
    )
    .expect("log");
    let (code, out, err) = modelc(&["plot", &log.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("curves.svg"), "{out}");
    let svg = std::fs::read_to_string(d.join("curves.svg")).expect("svg");
    for want in ["stage head", "stage all", "train loss", "val accuracy", "val macro f1"] {
        assert!(svg.contains(want), "the plot has no `{want}`");
    }
    std::fs::write(&log, "{\"epoch\":1}\nnot json\n").expect("log");
    let (code, _, err) = modelc(&["plot", &log.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("log.jsonl:2: not a JSON line of a modelc log"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// Optimizer state goes on with the parameters that go on training under
/// the same optimizer: the head's Adam moments carry into stage `all`.
#[test]
fn optimizer_state_carries_into_the_next_stage() {
    let d = dir("carry");
    let spec = setup(&d);
    let text = std::fs::read_to_string(&spec).expect("spec").replace("sgd(lr: 0.01, momentum: 0.9)", "adam(lr: 1e-3)");
    std::fs::write(&spec, text).expect("spec");
    let out = d.join("run").to_string_lossy().into_owned();
    let spec_s = spec.to_string_lossy().into_owned();
    let (code, text, err) = modelc(&[&["train", &spec_s, "--out", &out][..], SMALL].concat());
    assert_eq!(code, 0, "{err}");
    // logits.weight and logits.bias, exp_avg and exp_avg_sq each.
    assert!(
        text.contains("stage `all`: 3 epochs, training 8 of 10 parameter tensors (4 optimizer state tensors carried"),
        "{text}"
    );
    std::fs::remove_dir_all(&d).ok();
}

/// `summary` of a finetune: per layer and stage, whether it trains and its
/// learning rate at the stage's start (rate × lr_scale).
#[test]
fn summary_shows_each_stage_rates() {
    let (code, out, err) = modelc(&["summary", "specs/lenet5_finetune.model", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let stages = v["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 2);
    let rate = |stage: usize, layer: &str| -> Option<f64> {
        let layers = stages[stage]["layers"].as_array().expect("layers");
        let row = layers.iter().find(|r| r[0] == layer).expect("layer");
        row[1].as_f64()
    };
    assert_eq!(rate(0, "conv2"), None, "frozen in `head`");
    assert_eq!(rate(0, "logits"), Some(0.01));
    assert!((rate(1, "conv2").expect("trains in `all`") - 1e-5).abs() < 1e-18, "lr_scale conv2: 0.1 of 1e-4");
    assert_eq!(rate(1, "conv1"), None, "conv1 never unfrozen");
}

/// The base's tensors saved under other names (an `nn.Sequential` layout),
/// loaded through `map` renames.
fn renamed_base(d: &Path) -> PathBuf {
    let base = modelc::checkpoint::load(&d.join("base/last.safetensors")).expect("base");
    let torch = [
        ("conv1", "features.0"),
        ("conv2", "features.3"),
        ("fc1", "classifier.0"),
        ("fc2", "classifier.2"),
        ("logits", "classifier.4"),
    ];
    let renamed: modelc::checkpoint::Tensors = base
        .into_iter()
        .map(|(k, v)| {
            let (layer, rest) = k.split_once('.').expect("layer.kind");
            let to = torch.iter().find(|(a, _)| *a == layer).expect("a layer").1;
            (format!("{to}.{rest}"), v)
        })
        .collect();
    let p = d.join("torch_style.safetensors");
    modelc::checkpoint::save(&p, &renamed, Default::default()).expect("save");
    p
}

/// Runs `train` on the finetune spec with its weights line and `map` lines
/// replaced; returns (code, stdout, stderr with the folder as `DIR`).
fn train_with(d: &Path, spec: &Path, weights: &Path, maps: &str) -> (i32, String, String) {
    let text = std::fs::read_to_string(spec).expect("spec");
    let line = text.lines().find(|l| l.trim_start().starts_with("weights")).expect("weights line").to_string();
    let text = text.replace(&line, &format!("  weights    \"{}\"\n{maps}", weights.display()));
    let p = d.join("mapped.model");
    std::fs::write(&p, text).expect("spec");
    let out = d.join("mapped-run").to_string_lossy().into_owned();
    let p_s = p.to_string_lossy().into_owned();
    let (code, stdout, err) = modelc(&[&["train", &p_s, "--out", &out][..], SMALL].concat());
    let dir = d.to_string_lossy().into_owned();
    (code, stdout.replace(&dir, "DIR"), err.replace(&dir, "DIR"))
}

#[test]
fn weights_load_by_name_through_map_and_the_report_says_what_happened() {
    let d = dir("map");
    let spec = setup(&d);
    let torch = renamed_base(&d);
    let maps = "  map \"features.0.*\" -> \"conv1.*\"\n  map \"features.3.*\" -> \"conv2.*\"\n  map \"classifier.0.*\" -> \"fc1.*\"\n  map \"classifier.2.*\" -> \"fc2.*\"\n  map \"classifier.4.*\" -> \"logits.*\"\n";
    let (code, out, err) = train_with(&d, &spec, &torch, maps);
    assert_eq!(code, 0, "{err}");
    let report = out.lines().find(|l| l.starts_with("weights from")).expect("a report");
    insta::assert_snapshot!("weight_load_report", report);
    // Each way loading can fail, in the user's words.
    let cases: &[(&str, &str)] = &[
        ("unmapped", ""),
        ("map_matches_nothing", "  map \"features.9.*\" -> \"conv1.*\"\n"),
        ("map_collides", "  map \"features.0.*\" -> \"conv1.*\"\n  map \"features.3.*\" -> \"conv1.*\"\n"),
    ];
    for (name, maps) in cases {
        let (code, _, err) = train_with(&d, &spec, &torch, maps);
        assert_eq!(code, 1, "{name}");
        insta::assert_snapshot!(format!("weight_load_error_{name}"), err);
    }
    // A shape that does not fit a tensor that is loaded, not replaced.
    let mut bad = modelc::checkpoint::load(&d.join("base/last.safetensors")).expect("base");
    bad.insert("fc1.bias".into(), (vec![7], vec![0.0; 7]));
    let bad_path = d.join("bad_shape.safetensors");
    modelc::checkpoint::save(&bad_path, &bad, Default::default()).expect("save");
    let (code, _, err) = train_with(&d, &spec, &bad_path, "");
    assert_eq!(code, 1);
    insta::assert_snapshot!("weight_load_error_shape", err);
    // Nothing of the model in the file.
    let none: modelc::checkpoint::Tensors =
        [("logits.weight".to_string(), (vec![5, 84], vec![0.0; 420]))].into_iter().collect();
    let none_path = d.join("only_head.safetensors");
    modelc::checkpoint::save(&none_path, &none, Default::default()).expect("save");
    let (code, _, err) = train_with(&d, &spec, &none_path, "");
    assert_eq!(code, 1);
    insta::assert_snapshot!("weight_load_error_nothing", err);
    std::fs::remove_dir_all(&d).ok();
}

/// `model` with its LoRA adapters taken out (the model a merged export is for).
fn without_adapters(model: &modelc_compiler::check::ModelInfo) -> modelc_compiler::check::ModelInfo {
    use modelc_compiler::check::layers::Layer;
    let mut plain = model.clone();
    for n in &mut plain.nodes {
        if let modelc_compiler::check::Op::Layer { layer: Layer::Dense { lora, .. } | Layer::Attention { lora, .. } } =
            &mut n.op
        {
            *lora = None;
        }
    }
    plain.params.retain(|p| !p.name.contains("lora"));
    plain
}

/// LoRA on attention layers (both projections) and dense layers of a small
/// transformer (`tests/zoo/finetune_attention.model`): with every adapter
/// non-zero, the merged weights give the adapted model's logits.
#[test]
fn lora_on_attention_merges_exactly() {
    let (_, program, errors) =
        modelc_compiler::check_path(Path::new("tests/zoo/finetune_attention.model")).expect("readable");
    assert!(errors.is_empty(), "{errors:?}");
    let adapted = &program.finetunes[0].model;
    let mut weights = modelc::init::init(adapted, 5).expect("init");
    // B starts at zero (the adapted model starts as loaded): give it values.
    let mut rng = modelc_compiler::rng::Rng::new(9);
    let mut adapters = 0;
    for (name, (_, v)) in weights.iter_mut() {
        if name.ends_with("lora_B") {
            assert!(v.iter().all(|x| *x == 0.0), "`{name}` starts at zero");
            v.iter_mut().for_each(|x| *x = rng.uniform(-0.5, 0.5) as f32);
            adapters += 1;
        }
    }
    // 3 attention layers × 2 projections + 5 dense layers.
    assert_eq!(adapters, 11);
    let a = logits(adapted, &weights);
    let mut merged = weights.clone();
    let layers = modelc::cli::merge_lora(adapted, &mut merged).expect("merges");
    assert_eq!(layers, 8);
    assert!(!merged.keys().any(|k| k.contains("lora")), "no adapters left");
    assert_ne!(merged["enc.in_proj_weight"], weights["enc.in_proj_weight"], "the adapter folded in");
    let b = logits(&without_adapters(adapted), &merged);
    let scale = a.iter().fold(0f64, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max) / scale;
    assert!(worst <= 1e-5, "merged logits differ by {worst:e} (relative to the largest)");
    println!("LoRA on attention: merged logits within {worst:.1e} of the adapted model's");
}

/// The logits (the node labelled `logits`) of `model` with `weights` on a
/// fixed batch, by the f64 interpreter.
fn logits(model: &modelc_compiler::check::ModelInfo, weights: &modelc::checkpoint::Tensors) -> Vec<f64> {
    use modelc_compiler::interp::{self, Tensor};
    use modelc_compiler::ir::lower::{self, Mode};
    let mut g = lower::forward(model, Mode::Eval).expect("lowers");
    // `logits`, or the last stage of a `logits = … |> …` pipeline.
    let order = g.topo_order();
    let label = |n: &modelc_compiler::ir::NodeId| g.node(*n).label.clone().unwrap_or_default();
    let id = order
        .iter()
        .find(|n| label(n) == "logits")
        .or_else(|| order.iter().rev().find(|n| label(n).starts_with("logits.")))
        .copied()
        .expect("logits");
    g.outputs.push(("the_logits".into(), id));
    let mut inputs = modelc_compiler::gradcheck::random_inputs(&g, 3, &mut modelc_compiler::rng::Rng::new(4));
    for (name, (shape, v)) in weights {
        inputs.insert(name.clone(), Tensor::new(shape.clone(), v.iter().map(|x| *x as f64).collect()));
    }
    interp::outputs(&g, &inputs).expect("runs")["the_logits"].data.clone()
}

/// LoRA trains the adapters alone (the pretrained weights stay as loaded),
/// `summary` counts them, and the merged export computes the same logits
/// as the adapted model.
#[test]
fn lora_trains_only_the_adapters_and_merges_exactly() {
    let d = dir("lora");
    setup(&d);
    let weights = d.join("base/last.safetensors");
    let text = std::fs::read_to_string("specs/lenet5_lora.model")
        .expect("spec")
        .replace("runs/lenet5_lower/best.safetensors", &weights.to_string_lossy());
    let spec = d.join("lora.model");
    std::fs::write(&spec, text).expect("spec");
    let spec_s = spec.to_string_lossy().into_owned();
    let (code, out, err) = modelc(&["summary", &spec_s, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    // fc1: A [4, 256] + B [120, 4]; fc2: A [4, 120] + B [84, 4]; the head 84·5 + 5.
    assert_eq!(v["totals"]["trainable"], 4 * 256 + 120 * 4 + 4 * 120 + 84 * 4 + 425);
    let run = d.join("run");
    let (code, _, err) = modelc(&[&["train", &spec_s, "--out", &run.to_string_lossy()][..], SMALL].concat());
    assert_eq!(code, 0, "{err}");
    let base = modelc::checkpoint::load(&weights).expect("base");
    let tuned = modelc::checkpoint::load(&run.join("last.safetensors")).expect("tuned");
    for name in ["conv1.weight", "conv2.weight", "fc1.weight", "fc1.bias", "fc2.weight"] {
        assert_eq!(tuned[name], base[name], "`{name}` stays as loaded");
    }
    assert!(tuned["fc1.lora_B"].1.iter().any(|x| *x != 0.0), "the adapters trained");
    let (code, out, err) =
        modelc(&["export", &spec_s, "--weights", &run.join("last.safetensors").to_string_lossy(), "--merge"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("merged 2 adapted layers"), "{out}");
    let merged = modelc::checkpoint::load(&run.join("last.merged.safetensors")).expect("merged");
    assert!(!merged.keys().any(|k| k.contains("lora")), "no adapters left");
    // The adapted model, and the same model without adapters on the merged weights.
    let (_, program, errors) = modelc_compiler::check_path(&spec).expect("readable");
    assert!(errors.is_empty(), "{errors:?}");
    let adapted = program.finetunes[0].model.clone();
    let plain = without_adapters(&adapted);
    let (a, b) = (logits(&adapted, &tuned), logits(&plain, &merged));
    let scale = a.iter().fold(0f64, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max) / scale;
    assert!(worst <= 1e-5, "merged logits differ by {worst:e} (relative to the largest)");
    println!("LoRA: merged export's logits within {worst:.1e} of the adapted model's");
    std::fs::remove_dir_all(&d).ok();
}

/// Weights written by PyTorch (`tests/fixtures/torch/gen_lenet5.py`) give
/// PyTorch's logits on the same batch, loaded by name or through `map`.
#[test]
fn pytorch_weights_give_pytorchs_logits() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/torch/lenet5_logits.json").expect("fixture"))
            .expect("json");
    let floats =
        |k: &str| -> Vec<f64> { fixture[k].as_array().expect(k).iter().map(|v| v.as_f64().expect("number")).collect() };
    let (input, want) = (floats("input"), floats("logits"));
    let (_, program, errors) = modelc_compiler::check_path(Path::new("specs/lenet5.model")).expect("readable");
    assert!(errors.is_empty());
    let model = &program.models[0];
    let logits_on = |weights: &modelc::checkpoint::Tensors| -> Vec<f64> {
        use modelc_compiler::interp::{self, Tensor};
        use modelc_compiler::ir::lower::{self, Mode};
        let mut g = lower::forward(model, Mode::Eval).expect("lowers");
        let id = g.topo_order().into_iter().find(|n| g.node(*n).label.as_deref() == Some("logits")).expect("logits");
        g.outputs.push(("the_logits".into(), id));
        let mut inputs = modelc_compiler::gradcheck::random_inputs(&g, 4, &mut modelc_compiler::rng::Rng::new(1));
        inputs.insert("image".into(), Tensor::new(vec![4, 1, 28, 28], input.clone()));
        for (name, (shape, v)) in weights {
            inputs.insert(name.clone(), Tensor::new(shape.clone(), v.iter().map(|x| *x as f64).collect()));
        }
        interp::outputs(&g, &inputs).expect("runs")["the_logits"].data.clone()
    };
    let expected: Vec<(String, Vec<usize>)> =
        model.params.iter().map(|p| (p.name.clone(), p.shape.iter().map(|d| *d as usize).collect())).collect();
    let direct = Path::new("tests/fixtures/torch/lenet5.safetensors");
    let by_name = modelc::checkpoint::load(direct).expect("loads");
    let by_name = modelc::checkpoint::validate(direct, by_name, &expected, &[]).expect("every name fits");
    let renamed_path = Path::new("tests/fixtures/torch/lenet5_renamed.safetensors");
    let maps: Vec<(String, String)> = std::fs::read_to_string("tests/fixtures/torch/lenet5_renamed.map.txt")
        .expect("map")
        .lines()
        .filter_map(|l| l.split_once(" -> ").map(|(a, b)| (a.trim().to_string(), b.trim().to_string())))
        .collect();
    let (renamed, n) =
        modelc::checkpoint::rename(renamed_path, modelc::checkpoint::load(renamed_path).expect("loads"), &maps)
            .expect("renames");
    assert_eq!(n, 10);
    let renamed = modelc::checkpoint::validate(renamed_path, renamed, &expected, &[]).expect("every name fits");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (how, w) in [("by name", &by_name), ("through map", &renamed)] {
        let got = logits_on(w);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max) / scale;
        assert!(worst <= 1e-5, "{how}: logits differ from PyTorch's by {worst:e} (relative to the largest)");
        println!("PyTorch LeNet-5 {how}: logits within {worst:.1e} of PyTorch's (f32 in torch, f64 here)");
    }
}
