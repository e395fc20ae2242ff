//! The spec zoo: small `.model` files under `tests/zoo/` that between them
//! use every layer, loss, metric, optimizer, schedule, data source and
//! setting of the language, each with every optional argument and choice.
//!
//! Every spec is checked (`modelc check` exits 0), gradchecked (symbolic
//! gradients against finite differences in f64, worst relative error
//! ≤ 1e-6, for every finetune stage's trainable set) and run on the compiled
//! CPU executor beside the f64 reference interpreter: one training step gives
//! the same loss, parameters and optimizer state (normwise ≤ 1e-4 per
//! tensor), [`STEPS`] steps (batches of the entry's size, 37 and 1) the same
//! loss curve (relative ≤ 1e-3), and
//! evaluation the same loss, accuracy, predictions and declared metrics.
//! Dropout is active in every training step, with the trainer's per-step
//! seeds, so the two executors must draw the same masks; one test reads the
//! masks back and compares them element by element.
//!
//! The specs whose data the trainer loads (csv, spirals, xor) also train
//! in-process through `modelc train` on both executors: exit 0, the same
//! per-epoch losses and learning rates, a loss that falls, the schedules and
//! early stopping as documented.
//!
//! `the_zoo_table` prints the figures as a markdown table; `coverage` reads
//! the catalogue from the checker (its signatures and the lists in its
//! diagnostics) and fails when a name is used by no zoo spec, so a new layer
//! or setting needs a zoo entry.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use miette::Diagnostic;
use modelc::exec::{Batch, Compiled, Executor, Interpreter};
use modelc::metrics::Confusion;
use modelc::train::dropout_seed;
use modelc_compiler::check::args::Ty;
use modelc_compiler::check::layers::{self, Metric};
use modelc_compiler::check::types::DType;
use modelc_compiler::check::{ModelInfo, Op as CheckOp};
use modelc_compiler::gradcheck::{random_inputs, Rng};
use modelc_compiler::ir::lower::{self, Mode};
use modelc_compiler::ir::Role;
use modelc_compiler::step::StepConfig;
use modelc_compiler::{FsLoader, Located, Program, Sources};
use serde_json::Value;

// ------------------------------------------------------------------- the zoo

/// One zoo spec: `tests/zoo/{spec}.model`.
struct Entry {
    spec: &'static str,
    covers: &'static str,
    /// The batch of the step comparison.
    batch: usize,
}

const ZOO: &[Entry] = &[
    Entry {
        spec: "conv_options",
        covers: "conv2d: stride, padding (int, pair, same, valid), rectangular kernel, no bias; maxpool with stride over tied zeros, avgpool, layernorm and softmax(axis 1) on maps, dropout on maps, concat(axis 1); sgd momentum, weight_decay, step(epochs); mnist(classes)",
        batch: 3,
    },
    Entry {
        spec: "bce_probs",
        covers: "binary_cross_entropy on probabilities, sigmoid, binary accuracy; rmsprop (every argument, momentum), weight_decay, exponential; xor (f32 target)",
        batch: 4,
    },
    Entry {
        spec: "bce_logits",
        covers: "binary_cross_entropy(from_logits), dense(bias: false), gelu; rmsprop defaults, constant; csv(header: false, scale: none)",
        batch: 5,
    },
    Entry {
        spec: "label_smoothing",
        covers: "cross_entropy(label_smoothing), gelu, dropout; adam (every argument), cosine(warmup, min_lr), validation, early_stop(val_loss, min_delta); spirals",
        batch: 5,
    },
    Entry {
        spec: "mse_regression",
        covers: "mse, weighted sum of losses, `*` `-` `+`, constants, negation, [N, 8]·[N, 1] broadcast; sgd momentum, clip_grad_norm, step(steps); csv(scale: minmax, test)",
        batch: 5,
    },
    Entry {
        spec: "sgd_nesterov",
        covers: "sgd nesterov, weight_decay; add of three, concat of three (axis -1), relu; xor (class target)",
        batch: 4,
    },
    Entry {
        spec: "adamw_clip",
        covers: "adamw (every argument), clip_grad_norm (active), layernorm(eps) on flat features, cosine(); spirals (4 classes)",
        batch: 5,
    },
    Entry {
        spec: "attention_tiny",
        covers: "embed, positions, repeat … as, attention causal and not (1 feature per head), layernorm, gelu, dropout on sequences, softmax(axis 1), per-token cross_entropy(label_smoothing) and f1; adam(); text",
        batch: 2,
    },
    Entry {
        spec: "metrics",
        covers: "accuracy, precision/recall/f1 × macro/micro/weighted, named metrics; plain sgd; spirals",
        batch: 6,
    },
    Entry {
        spec: "schedules",
        covers: "multistep(at: epochs and steps, gamma), linear(warmup, end), onecycle(pct, div, final_div), plateau(on, factor, patience, min_delta, min_lr); a stage each; trained through the CLI",
        batch: 4,
    },
    Entry {
        spec: "finetune",
        covers: "import, finetune: weights, target, replace, lora(rank, alpha), stages with train/unfreeze/freeze/lr_scale, stage optimizer/schedule/weight_decay/batch, clip, early_stop(val_accuracy); every stage checked",
        batch: 5,
    },
    Entry {
        spec: "finetune_attention",
        covers: "lora on attention (in- and out-projection adapters) and dense layers of a transformer, through a group (`blocks`) that also holds layernorms; stages train/unfreeze",
        batch: 2,
    },
    Entry {
        spec: "text_bytes",
        covers: "text(vocab: bytes, test), class[256] per token, a residual around causal attention",
        batch: 3,
    },
    Entry {
        spec: "dropout_mask",
        covers: "two dropouts (two salts), masks read back and compared; mnist",
        batch: 2,
    },
    Entry {
        spec: "edge_shapes",
        covers: "conv stride > kernel, padding > kernel/2, 1×1 maxpool with stride, avgpool not tiling, softmax(axis 2), concat(axis 2) and of three, dropout(0) and (0.9), repeat without `as`; mnist read as 16×7×7",
        batch: 3,
    },
    Entry {
        spec: "csv_classes",
        covers: "csv class names, scale: standard, test file with reordered columns; adam, weight_decay",
        batch: 5,
    },
];

/// Steps of the loss-curve comparison.
const STEPS: usize = 6;

/// The batch of each step: the entry's, then an odd one above 32 (the big
/// loops split between threads; a second layout of the compiled program),
/// and a single sample.
fn batch_of(step: u64, n: usize) -> usize {
    match step {
        3 => 37,
        4 => 1,
        _ => n,
    }
}

fn spec_path(spec: &str) -> String {
    format!("tests/zoo/{spec}.model")
}

// ------------------------------------------------------------------- helpers

/// Checks a spec by its path relative to the project root.
fn check_spec(rel: &str) -> (Sources, Program, Vec<Located>) {
    let text = std::fs::read_to_string(rel).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"));
    modelc_compiler::check_text(rel, text, &FsLoader)
}

/// Runs the CLI in-process; returns (exit code, stdout, stderr).
fn modelc(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("modelc").chain(args.iter().copied()).map(Into::into);
    let code = modelc::cli::run(argv, &mut out, &mut err, false);
    (code, String::from_utf8(out).expect("utf-8 stdout"), String::from_utf8(err).expect("utf-8 stderr"))
}

/// How a spec trains: a train block's one configuration, or one per
/// finetune stage. (label, configuration, learning rate)
type Configs = Vec<(String, StepConfig, f64)>;

fn model_and_configs(spec: &str) -> Result<(ModelInfo, Configs), String> {
    let (_, program, errors) = check_spec(&spec_path(spec));
    if !errors.is_empty() {
        return Err(format!("{} check errors: {errors:?}", errors.len()));
    }
    if let Some(f) = program.finetunes.first() {
        let mut configs = Vec::new();
        for stage in &f.stages {
            let cfg = StepConfig::from_train(stage).ok_or("a stage without an optimizer")?;
            let lr = cfg.optimizer.lr();
            configs.push((format!("stage {}", stage.stage_name()), cfg, lr));
        }
        return Ok((f.model.clone(), configs));
    }
    let m = program.models.first().ok_or("no model")?.clone();
    let t = program.trains.iter().find(|t| t.model == m.name).ok_or("no train block")?;
    let cfg = StepConfig::from_train(t).ok_or("no optimizer")?;
    let lr = cfg.optimizer.lr();
    Ok((m, vec![("train".into(), cfg, lr)]))
}

/// A random batch of `n` samples as the trainer feeds it (f32).
fn batch(model: &ModelInfo, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let g = lower::forward(model, Mode::Eval).expect("lowers");
    let inputs = random_inputs(&g, n, &mut Rng::new(seed));
    let take = |role: Role| {
        let (name, _) = g.inputs_of(role).into_iter().next().expect("one input of the role");
        inputs[&name].data.iter().map(|v| *v as f32).collect::<Vec<f32>>()
    };
    (take(Role::Data), take(Role::Target))
}

/// max |a − b| / max |b| over a tensor.
fn normwise(a: &[f32], b: &[f32]) -> f64 {
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// `e ≤ tol`, false for NaN.
fn within(e: f64, tol: f64) -> bool {
    e <= tol
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-3)
}

/// The number of classes of the model's target (0 for a real target).
fn classes(model: &ModelInfo) -> usize {
    match model.nodes[model.targets[0]].ty.dtype {
        DType::Class { classes } => classes as usize,
        _ => 0,
    }
}

/// The declared metrics other than accuracy: (name, metric).
fn class_metrics(model: &ModelInfo) -> Vec<(String, Metric)> {
    model
        .metrics
        .iter()
        .filter_map(|(name, n)| match &model.nodes[*n].op {
            CheckOp::Metric { metric } if !matches!(metric, Metric::Accuracy) => Some((name.clone(), metric.clone())),
            _ => None,
        })
        .collect()
}

fn metric_value(c: &Confusion, m: &Metric) -> f64 {
    match m {
        Metric::Accuracy => c.accuracy(),
        Metric::Precision { average } => c.precision(*average),
        Metric::Recall { average } => c.recall(*average),
        Metric::F1 { average } => c.f1(*average),
    }
}

// ------------------------------------------------------------ the two checks

/// The worst relative error of the gradcheck over every configuration's
/// trainable set.
fn gradcheck(model: &ModelInfo, configs: &Configs) -> Result<f64, String> {
    let mut worst = 0f64;
    for (label, cfg, _) in configs {
        let reports = modelc_compiler::gradcheck::check(model, cfg.trainable.as_ref(), 3, 12, 1)?;
        if reports.is_empty() {
            return Err(format!("{label}: no parameter checked"));
        }
        if let Some(t) = &cfg.trainable {
            let checked: BTreeSet<String> = reports.iter().map(|r| r.name.clone()).collect();
            if &checked != t {
                return Err(format!("{label}: checked {checked:?}, trainable {t:?}"));
            }
        }
        for r in &reports {
            if !within(r.worst_relative_error, 1e-6) {
                return Err(format!(
                    "{label}: `{}` gradient off by {:e} (relative), {:e} (absolute)",
                    r.name, r.worst_relative_error, r.worst_absolute_error
                ));
            }
            worst = worst.max(r.worst_relative_error);
        }
    }
    Ok(worst)
}

/// One configuration on both executors: (worst tensor after one step,
/// worst loss over `steps` steps).
fn compare(model: &ModelInfo, cfg: &StepConfig, lr: f64, n: usize, steps: usize) -> Result<(f64, f64), String> {
    let init = modelc::init::init(model, 3)?;
    let mut reference = Interpreter::new(model, cfg, &init)?;
    let mut compiled = Compiled::new(model, cfg, &init)?;
    let mut worst = 0f64;
    let mut worst_loss = 0f64;
    for step in 1..=steps as u64 {
        let size = batch_of(step, n);
        let (x, y) = batch(model, size, step);
        let b = Batch { n: size, features: &x, labels: &y };
        // The trainer's dropout seed: new masks every step.
        let seed = dropout_seed(21, step);
        let want = reference.train_step(&b, lr, step, seed)?;
        let got = compiled.train_step(&b, lr, step, seed)?;
        let e = relative(got.loss, want.loss);
        if !within(e, 1e-3) {
            return Err(format!(
                "loss at step {step} is {}, the interpreter's {} (relative {e:e})",
                got.loss, want.loss
            ));
        }
        worst_loss = worst_loss.max(e);
        // A training step returns no predictions (it allocates nothing);
        // evaluation's are compared below.
        if !got.predictions.is_empty() || !want.predictions.is_empty() {
            return Err(format!("step {step}: a training step returned predictions"));
        }
        if step > 1 {
            continue;
        }
        if !within((got.loss - want.loss).abs(), 1e-4 * want.loss.abs().max(1e-3)) {
            return Err(format!("loss {} vs {}", got.loss, want.loss));
        }
        if let (Some(a), Some(b)) = (got.accuracy, want.accuracy) {
            if (a - b).abs() >= 1e-6 {
                return Err(format!("accuracy {a} vs {b}"));
            }
        }
        let (pa, pb) = (compiled.parameters(), reference.parameters());
        let (sa, sb) = (compiled.state(), reference.state());
        if pa.len() != pb.len() || sa.len() != sb.len() {
            return Err(format!("{}+{} tensors vs {}+{}", pa.len(), sa.len(), pb.len(), sb.len()));
        }
        for (name, (shape, a)) in pa.iter().chain(&sa) {
            let (s, b) = pb.get(name).or_else(|| sb.get(name)).ok_or_else(|| format!("`{name}` only compiled"))?;
            if shape != s {
                return Err(format!("`{name}`: shape {shape:?} vs {s:?}"));
            }
            // As in tests/compiled.rs: Adam's update of an element has the
            // relative error of its own gradient, so elements below 1e-3 of
            // the tensor's largest first moment are left out of the
            // parameter check (the moments themselves are all checked).
            let (a, b): (Vec<f32>, Vec<f32>) = match sb.get(&format!("{name}.exp_avg")) {
                Some((_, m)) => {
                    let top = m.iter().fold(0f32, |t, x| t.max(x.abs()));
                    a.iter().zip(b).zip(m).filter(|(_, m)| m.abs() > 1e-3 * top).map(|(ab, _)| ab).unzip()
                }
                None => (a.clone(), b.clone()),
            };
            let e = normwise(&a, &b);
            if !within(e, 1e-4) {
                return Err(format!("`{name}` after one step differs by {e:e} (normwise)"));
            }
            worst = worst.max(e);
        }
        // Frozen parameters stay as they were, on both.
        if let Some(t) = &cfg.trainable {
            for (name, (_, v)) in &init {
                if !t.contains(name) && (pa[name].1 != *v || pb[name].1 != *v) {
                    return Err(format!("frozen `{name}` moved"));
                }
            }
        }
    }
    // Evaluation (no dropout, no update): the same loss, accuracy,
    // predictions and declared metrics.
    let m = n + 2;
    let (x, y) = batch(model, m, 99);
    let b = Batch { n: m, features: &x, labels: &y };
    let (got, want) = (compiled.evaluate(&b)?, reference.evaluate(&b)?);
    if !within((got.loss - want.loss).abs(), 1e-4 * want.loss.abs().max(1e-3)) {
        return Err(format!("eval loss {} vs {}", got.loss, want.loss));
    }
    if got.accuracy.is_some() != want.accuracy.is_some()
        || got.accuracy.zip(want.accuracy).is_some_and(|(a, b)| (a - b).abs() >= 1e-6)
    {
        return Err(format!("eval accuracy {:?} vs {:?}", got.accuracy, want.accuracy));
    }
    if got.predictions != want.predictions {
        return Err("eval predictions differ".into());
    }
    let k = classes(model);
    if k > 0 {
        if got.predictions.len() != y.len() {
            return Err(format!("{} predictions for {} labels", got.predictions.len(), y.len()));
        }
        let confusion = |p: &[f32]| {
            let mut c = Confusion::new(k);
            c.add(&y, p);
            c
        };
        let (cg, cw) = (confusion(&got.predictions), confusion(&want.predictions));
        for (name, metric) in class_metrics(model) {
            let (a, b) = (metric_value(&cg, &metric), metric_value(&cw, &metric));
            if !(a.is_finite() && (0.0..=1.0).contains(&a) && a == b) {
                return Err(format!("metric `{name}`: {a} vs {b}"));
            }
        }
    }
    Ok((worst, worst_loss))
}

// ------------------------------------------------------------------ the rows

struct Row {
    spec: &'static str,
    covers: &'static str,
    checked: Result<(), String>,
    grad: Result<f64, String>,
    /// (worst tensor after one step, worst loss over the steps)
    step: Result<(f64, f64), String>,
}

fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        Err(format!("panicked: {msg}"))
    })
}

fn measure(e: &Entry) -> Row {
    let path = spec_path(e.spec);
    let checked = guarded(|| {
        let (code, _, err) = modelc(&["check", &path]);
        if code == 0 {
            Ok(())
        } else {
            Err(format!("modelc check exits {code}: {err}"))
        }
    });
    let setup = guarded(|| model_and_configs(e.spec));
    let (grad, step) = match setup {
        Err(msg) => (Err(msg.clone()), Err(msg)),
        Ok((model, configs)) => {
            let grad = guarded(|| gradcheck(&model, &configs));
            let step = guarded(|| {
                let (mut worst, mut worst_loss) = (0f64, 0f64);
                for (label, cfg, lr) in &configs {
                    let (t, l) = compare(&model, cfg, *lr, e.batch, STEPS).map_err(|m| format!("{label}: {m}"))?;
                    worst = worst.max(t);
                    worst_loss = worst_loss.max(l);
                }
                Ok((worst, worst_loss))
            });
            (grad, step)
        }
    };
    Row { spec: e.spec, covers: e.covers, checked, grad, step }
}

/// Every zoo row, measured once (two at a time) for all the tests.
fn rows() -> &'static [Row] {
    static ROWS: OnceLock<Vec<Row>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<Option<Row>>> = Mutex::new((0..ZOO.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(e) = ZOO.get(i) else { break };
                    let row = measure(e);
                    done.lock().expect("rows")[i] = Some(row);
                });
            }
        });
        done.into_inner().expect("rows").into_iter().map(|r| r.expect("every row measured")).collect()
    })
}

/// Asserts a zoo spec's row: checked, gradchecked, compiled as interpreted.
fn zoo(spec: &str) {
    let row = rows().iter().find(|r| r.spec == spec).unwrap_or_else(|| panic!("no zoo entry `{spec}`"));
    if let Err(e) = &row.checked {
        panic!("{spec}: {e}");
    }
    let grad = row.grad.as_ref().unwrap_or_else(|e| panic!("{spec}: gradcheck: {e}"));
    let (tensor, loss) = row.step.as_ref().unwrap_or_else(|e| panic!("{spec}: compiled vs interpreter: {e}"));
    assert!(*grad <= 1e-6, "{spec}: gradcheck {grad:e}");
    assert!(*tensor <= 1e-4, "{spec}: tensor {tensor:e}");
    assert!(*loss <= 1e-3, "{spec}: loss {loss:e}");
    println!("{spec}: gradcheck {grad:.1e}, tensor {tensor:.1e}, loss {loss:.1e}");
}

#[test]
fn conv_options() {
    zoo("conv_options");
}

#[test]
fn bce_probs() {
    zoo("bce_probs");
}

#[test]
fn bce_logits() {
    zoo("bce_logits");
}

#[test]
fn label_smoothing() {
    zoo("label_smoothing");
}

#[test]
fn mse_regression() {
    zoo("mse_regression");
}

#[test]
fn sgd_nesterov() {
    zoo("sgd_nesterov");
}

#[test]
fn adamw_clip() {
    zoo("adamw_clip");
}

#[test]
fn attention_tiny() {
    zoo("attention_tiny");
}

#[test]
fn metrics() {
    zoo("metrics");
}

#[test]
fn finetune() {
    zoo("finetune");
}

#[test]
fn finetune_attention() {
    zoo("finetune_attention");
}

#[test]
fn text_bytes() {
    zoo("text_bytes");
}

#[test]
fn dropout_mask() {
    zoo("dropout_mask");
}

#[test]
fn edge_shapes() {
    zoo("edge_shapes");
}

#[test]
fn csv_classes() {
    zoo("csv_classes");
}

/// Every entry has a test above and a file, every file an entry.
#[test]
fn schedules() {
    zoo("schedules");
}

/// The schedules spec trained for real (after its base): each stage's rate
/// follows its schedule counted from the stage's own first step, and the
/// plateau schedule halves the rate when the validation loss stalls.
#[test]
fn schedules_follow_their_stages() {
    use modelc::schedule::{lr_at, Progress};
    let dir = out_dir("schedules");
    std::fs::create_dir_all(&dir).expect("dir");
    let base = dir.join("base");
    let (code, _, err) = modelc(&["train", &spec_path("metrics"), "--out", &base.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(spec_path("schedules")).expect("spec");
    let text = text.replace("runs/metrics/last.safetensors", &base.join("last.safetensors").to_string_lossy()).replace(
        "import \"metrics.model\"",
        &format!("import \"{}\"", std::fs::canonicalize(spec_path("metrics")).expect("path").display()),
    );
    let spec = dir.join("schedules.model");
    std::fs::write(&spec, text).expect("spec");
    let out = dir.join("run");
    let (code, stdout, err) = modelc(&["train", &spec.to_string_lossy(), "--out", &out.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let log: Vec<Value> = std::fs::read_to_string(out.join("log.jsonl"))
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let (_, program, errors) = modelc_compiler::check_text(&spec.to_string_lossy(), text_of(&spec), &FsLoader);
    assert!(errors.is_empty(), "{errors:?}");
    let f = &program.finetunes[0];
    // 120 samples, a quarter held out: 90 train, batch 10 → 9 steps an epoch.
    let per = 9u64;
    let mut epoch = 0usize;
    for st in &f.stages {
        let total = per * st.epochs;
        let base_lr = st.optimizer.as_ref().expect("optimizer").lr();
        for e in 0..st.epochs {
            let line = &log[epoch];
            assert_eq!(line["stage"].as_str(), st.stage.as_deref());
            // The logged rate is the epoch's last step's.
            let local = (e + 1) * per - 1;
            let want = lr_at(&st.schedule, base_lr, Progress { step: local, steps_per_epoch: per, total_steps: total });
            let got = num(line, "lr").expect("lr");
            if st.stage_name() != "calm" {
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                    "{} epoch {e}: lr {got} vs {want}",
                    st.stage_name()
                );
            } else {
                // Plateau: the base rate times 1, ½, ¼ … never below min_lr.
                let k = (base_lr / got).log2();
                assert!((k - k.round()).abs() < 1e-9 && got >= 1e-3 - 1e-15, "calm epoch {e}: lr {got}");
            }
            epoch += 1;
        }
    }
    assert_eq!(epoch, log.len());
    let calm: Vec<f64> = log.iter().filter(|l| l["stage"] == "calm").map(|l| num(l, "lr").expect("lr")).collect();
    assert!(calm.last() < calm.first(), "min_delta 0.5 is never met: the plateau halves the rate ({calm:?})\n{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

fn text_of(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).expect("spec")
}

#[test]
fn every_zoo_file_is_an_entry() {
    let mut files: Vec<String> = std::fs::read_dir("tests/zoo")
        .expect("tests/zoo")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "model").then(|| p.file_stem().map(|s| s.to_string_lossy().into_owned()))?
        })
        .collect();
    files.sort();
    let mut entries: Vec<String> = ZOO.iter().map(|e| e.spec.to_string()).collect();
    entries.sort();
    assert_eq!(files, entries);
    let this = std::fs::read_to_string("tests/zoo.rs").expect("tests/zoo.rs");
    for e in ZOO {
        assert!(this.contains(&format!("fn {}() {{\n    zoo(\"{}\");", e.spec, e.spec)), "no test for `{}`", e.spec);
    }
}

/// The zoo's table: every spec with its worst errors.
#[test]
fn the_zoo_table() {
    let fig = |r: &Result<f64, String>| match r {
        Ok(v) => format!("{v:.1e}"),
        Err(e) => format!("FAIL: {}", e.lines().next().unwrap_or("")),
    };
    let mut table = format!(
        "| spec | what it covers | worst gradcheck (rel.) | worst compiled vs interp (tensor, 1 step) | worst loss over {STEPS} steps (relative) |\n| --- | --- | --- | --- | --- |\n"
    );
    let mut failed = Vec::new();
    for r in rows() {
        let grad = r.checked.clone().and(r.grad.clone());
        let tensor = r.step.as_ref().map(|s| s.0).map_err(Clone::clone);
        let loss = r.step.as_ref().map(|s| s.1).map_err(Clone::clone);
        if grad.is_err() || tensor.is_err() {
            failed.push(r.spec);
        }
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.spec,
            r.covers,
            fig(&grad),
            fig(&tensor),
            fig(&loss)
        ));
    }
    println!("\n{table}");
    assert_eq!(rows().len(), ZOO.len());
    // A failing entry is a known bug: its own test is ignored (and says
    // why). An ignored entry that passes has had its bug fixed.
    let ignored: Vec<&str> = ZOO.iter().map(|e| e.spec).filter(|s| ignored(s)).collect();
    assert_eq!(failed, ignored, "failing entries vs ignored tests");
}

/// Whether the zoo test of `spec` is marked `#[ignore]`.
fn ignored(spec: &str) -> bool {
    let this = std::fs::read_to_string("tests/zoo.rs").expect("tests/zoo.rs");
    let lines: Vec<&str> = this.lines().collect();
    let at = lines.iter().position(|l| *l == format!("fn {spec}() {{")).unwrap_or_else(|| panic!("no test for {spec}"));
    lines[..at].iter().rev().take_while(|l| l.starts_with("#[")).any(|l| l.starts_with("#[ignore"))
}

// ---------------------------------------------------------------- dropout

/// The columns of a dense weight `[out, in]` that did not move in a plain
/// SGD step at batch 1: the inputs the dropout before it dropped.
fn unmoved_columns(before: &[f32], after: &[f32], cols: usize) -> Vec<usize> {
    let rows = before.len() / cols;
    (0..cols).filter(|c| (0..rows).all(|r| before[r * cols + c] == after[r * cols + c])).collect()
}

#[test]
fn dropout_masks_are_the_same_in_both_executors() {
    let (model, configs) = model_and_configs("dropout_mask").expect("spec");
    let (_, cfg, lr) = &configs[0];
    let init = modelc::init::init(&model, 3).expect("init");
    // The dense layer after each dropout, by its input width: dropout(0.5)
    // on the 784 inputs (the first dropout, salt 1), dropout(0.25) on the 32
    // hidden units (salt 2).
    let after = |width: usize| {
        init.iter().find(|(_, (s, _))| s.len() == 2 && s[1] == width).map(|(k, _)| k.clone()).expect("a dense weight")
    };
    let layers = [(after(784), 784usize, 0.5, 1u64), (after(32), 32, 0.25, 2)];
    let (x, y) = batch(&model, 1, 7);
    let b = Batch { n: 1, features: &x, labels: &y };
    let mut seen = Vec::new();
    for step in 1..=3u64 {
        let seed = dropout_seed(13, step);
        let mut reference = Interpreter::new(&model, cfg, &init).expect("interpreter");
        let mut compiled = Compiled::new(&model, cfg, &init).expect("compiles");
        reference.train_step(&b, *lr, step, seed).expect("step");
        compiled.train_step(&b, *lr, step, seed).expect("step");
        let (pr, pc) = (reference.parameters(), compiled.parameters());
        let mut counts = Vec::new();
        for (name, width, rate, salt) in &layers {
            let want = unmoved_columns(&init[name].1, &pr[name].1, *width);
            let got = unmoved_columns(&init[name].1, &pc[name].1, *width);
            assert_eq!(
                got, want,
                "seed {seed}: the compiled step dropped other inputs of `{name}` than the interpreter"
            );
            // The mask is the documented counter-based hash of (seed, salt,
            // element index).
            let hash: Vec<usize> = (0..*width)
                .filter(|i| modelc_compiler::interp::dropout_uniform(seed, *salt, *i as u64) < *rate)
                .collect();
            assert_eq!(got, hash, "seed {seed}: `{name}`'s dropped inputs are not the hash's");
            let expect = rate * *width as f64;
            let sd = (expect * (1.0 - rate)).sqrt();
            assert!((got.len() as f64 - expect).abs() <= 4.0 * sd, "seed {seed}: {} of {width} dropped", got.len());
            counts.push(got.len());
            seen.push(got);
        }
        println!(
            "seed {seed}: {} of 784 and {} of 32 dropped, the same elements on both executors",
            counts[0], counts[1]
        );
    }
    assert!(seen[0] != seen[2] && seen[2] != seen[4], "every step draws new masks");
    // Evaluation drops nothing: the same loss on both, and twice the same.
    let mut compiled = Compiled::new(&model, cfg, &init).expect("compiles");
    let mut reference = Interpreter::new(&model, cfg, &init).expect("interpreter");
    let (a, a2, r) = (
        compiled.evaluate(&b).expect("eval").loss,
        compiled.evaluate(&b).expect("eval").loss,
        reference.evaluate(&b).expect("eval").loss,
    );
    assert_eq!(a, a2);
    assert!(relative(a, r) <= 1e-5, "eval {a} vs {r}");
}

// ---------------------------------------------------------------- options

/// The parameter updates of one interpreter step (new − old), by name.
fn update(model: &ModelInfo, cfg: &StepConfig, lr: f64, n: usize) -> BTreeMap<String, Vec<f64>> {
    let init = modelc::init::init(model, 3).expect("init");
    let mut reference = Interpreter::new(model, cfg, &init).expect("interpreter");
    let (x, y) = batch(model, n, 5);
    reference.train_step(&Batch { n, features: &x, labels: &y }, lr, 1, 1).expect("step");
    reference
        .parameters()
        .into_iter()
        .map(|(k, (_, v))| {
            let d = v.iter().zip(&init[&k].1).map(|(a, b)| *a as f64 - *b as f64).collect();
            (k, d)
        })
        .collect()
}

fn norm(u: &BTreeMap<String, Vec<f64>>) -> f64 {
    u.values().flatten().map(|v| v * v).sum::<f64>().sqrt()
}

/// The first step of SGD shows what each option does to the gradient.
/// (Updates are differences of f32 parameters, so they are compared to
/// f32 rounding: 1e-6 absolute, or 1e-4 relative.)
#[test]
fn options_do_what_the_language_says() {
    use modelc_compiler::check::train::Optimizer;
    let (model, configs) = model_and_configs("mse_regression").expect("spec");
    let mut plain = configs[0].1.clone();
    plain.optimizer = Optimizer::Sgd { lr: 0.1, momentum: 0.0, nesterov: false };
    plain.clip_grad_norm = None;
    plain.weight_decay = 0.0;
    let base = update(&model, &plain, 0.1, 5);
    let g = norm(&base) / 0.1;
    assert!(g > 0.0);
    // clip_grad_norm: the update of the clipped gradient has norm lr·max_norm.
    let mut clipped = plain.clone();
    clipped.clip_grad_norm = Some(0.5 * g);
    let c = norm(&update(&model, &clipped, 0.1, 5)) / 0.1;
    assert!((c - 0.5 * g).abs() <= 1e-4 * g, "clipped to {c}, asked {}", 0.5 * g);
    // Nesterov, first step: d = g + μ·g.
    let mut nesterov = plain.clone();
    nesterov.optimizer = Optimizer::Sgd { lr: 0.1, momentum: 0.9, nesterov: true };
    let nn = norm(&update(&model, &nesterov, 0.1, 5)) / 0.1;
    assert!((nn - 1.9 * g).abs() <= 1e-4 * g, "nesterov {nn} vs {}", 1.9 * g);
    // Coupled weight decay: g + wd·p.
    let mut decayed = plain.clone();
    decayed.weight_decay = 0.5;
    let wd = update(&model, &decayed, 0.1, 5);
    let init = modelc::init::init(&model, 3).expect("init");
    for (name, d) in &wd {
        for ((a, b), p) in d.iter().zip(&base[name]).zip(&init[name].1) {
            let want = b - 0.1 * 0.5 * *p as f64;
            assert!((a - want).abs() <= 1e-6, "{name}: {a} vs {want}");
        }
    }
    // lr_scale and freezing, in the finetune's second stage: `h2` moves a
    // tenth of what it would, `h1` not at all.
    let (ft, stages) = model_and_configs("finetune").expect("spec");
    let upper = &stages[1].1;
    assert_eq!(upper.lr_scale.len(), 2, "h2.weight and h2.bias scaled");
    let mut unscaled = upper.clone();
    unscaled.lr_scale.clear();
    let (s, u) = (update(&ft, upper, 0.05, 5), update(&ft, &unscaled, 0.05, 5));
    for (name, d) in &s {
        let k = upper.lr_scale.get(name).copied().unwrap_or(1.0);
        let trains = upper.trainable.as_ref().expect("a stage's set").contains(name);
        for (a, b) in d.iter().zip(&u[name]) {
            let want = if trains { k * b } else { 0.0 };
            assert!((a - want).abs() <= 1e-4 * (1e-3 + want.abs()), "{name}: {a} vs {want}");
        }
        assert_eq!(d.iter().any(|v| *v != 0.0), trains, "{name} moves iff it trains");
    }
}

// ---------------------------------------------------------------- trainer

fn out_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("modelc-zoo-{}-{tag}", std::process::id()))
}

/// One run of `modelc train`: (stdout, the log's lines).
fn train_run(spec: &str, executor: &str) -> (String, Vec<Value>) {
    let out = out_dir(&format!("{spec}-{executor}"));
    let path = spec_path(spec);
    let (code, stdout, err) = modelc(&["train", &path, "--out", &out.to_string_lossy(), "--executor", executor]);
    assert_eq!(code, 0, "{spec} on {executor}: {err}\n{stdout}");
    let log = std::fs::read_to_string(out.join("log.jsonl")).expect("log");
    let lines = log.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert!(out.join("last.safetensors").exists(), "{spec}: a checkpoint");
    std::fs::remove_dir_all(&out).ok();
    (stdout, lines)
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Trains `spec` on both executors: the same epochs, losses and rates, a
/// finite loss that falls by a fifth or more. Returns the compiled run.
fn trains(spec: &str) -> (String, Vec<Value>) {
    let (stdout, cpu) = train_run(spec, "cpu");
    let (_, interp) = train_run(spec, "interp");
    assert_eq!(cpu.len(), interp.len(), "{spec}: epochs run");
    for (e, (a, b)) in cpu.iter().zip(&interp).enumerate() {
        for key in ["train_loss", "val_loss", "test_loss"] {
            match (num(a, key), num(b, key)) {
                (Some(x), Some(y)) => {
                    assert!(x.is_finite(), "{spec}: {key} {x}");
                    assert!(relative(x, y) <= 1e-3, "{spec} epoch {}: {key} {x} vs {y}", e + 1);
                }
                (None, None) => {}
                (x, y) => panic!("{spec} epoch {}: {key} {x:?} vs {y:?}", e + 1),
            }
        }
        assert_eq!(num(a, "lr"), num(b, "lr"), "{spec} epoch {}: lr", e + 1);
    }
    let losses: Vec<f64> = cpu.iter().map(|l| num(l, "train_loss").expect("train_loss")).collect();
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.8 * first, "{spec}: the loss went from {first} to {last}");
    println!("{spec}: {} epochs, train loss {first:.4} → {last:.4} on both executors", losses.len());
    (stdout, cpu)
}

fn lrs(log: &[Value]) -> Vec<f64> {
    log.iter().map(|l| num(l, "lr").expect("lr")).collect()
}

#[test]
fn csv_source_with_class_names_trains() {
    let (stdout, log) = trains("csv_classes");
    assert!(stdout.contains("0 = ant, 1 = bee, 2 = cat"), "{stdout}");
    let last = log.last().expect("a line");
    let acc = num(last, "test_accuracy").expect("a test set");
    assert!(acc >= 0.9, "test accuracy {acc} on well-separated blobs");
    let f1 = last["test_prf"]["f1"].as_f64().expect("test F1");
    assert!((0.9..=1.0).contains(&f1), "test F1 {f1}");
}

#[test]
fn csv_source_without_header_trains() {
    let (_, log) = trains("bce_logits");
    // constant(): the rate of every epoch is the optimizer's.
    assert!(lrs(&log).iter().all(|lr| *lr == 0.01), "{:?}", lrs(&log));
}

#[test]
fn csv_source_with_minmax_and_a_test_file_trains() {
    let (_, log) = trains("mse_regression");
    assert!(log.iter().all(|l| num(l, "test_loss").is_some_and(f64::is_finite)), "a test loss every epoch");
    // step(every: 40 steps, gamma: 0.5), 5 steps an epoch: the rate of the
    // last step of epoch e (0-based) is lr · 0.5^⌊(5e + 4) / 40⌋.
    for (e, lr) in lrs(&log).iter().enumerate() {
        let want = 0.05 * 0.5f64.powi(((5 * e + 4) / 40) as i32);
        assert!((lr - want).abs() <= 1e-12, "epoch {}: lr {lr}, want {want}", e + 1);
    }
}

#[test]
fn spirals_source_trains_with_validation_and_early_stopping() {
    let (stdout, log) = trains("label_smoothing");
    assert!(log.iter().all(|l| num(l, "val_loss").is_some()), "a validation loss every epoch");
    // cosine(warmup: 5 steps, min_lr: 1e-4): never above lr, never below min_lr.
    assert!(lrs(&log).iter().all(|lr| (1e-4..=0.02).contains(lr)), "{:?}", lrs(&log));
    // early_stop patience: 4, on: val_loss, min_delta: 1e-4.
    let val: Vec<f64> = log.iter().map(|l| num(l, "val_loss").expect("val")).collect();
    if val.len() < 12 {
        assert!(stdout.contains("early stop: `val_loss` has not improved for 4 epochs"), "{stdout}");
        let best_before = val[..val.len() - 4].iter().copied().fold(f64::INFINITY, f64::min);
        for v in &val[val.len() - 4..] {
            assert!(*v >= best_before - 1e-4, "val_loss {v} improved on {best_before}");
        }
    } else {
        assert!(!stdout.contains("early stop"), "{stdout}");
    }
}

#[test]
fn spirals_source_trains_with_every_metric() {
    let (_, log) = trains("metrics");
    let last = log.last().expect("a line");
    for key in ["precision", "recall", "f1"] {
        let v = last["test_prf"][key].as_f64().unwrap_or_else(|| panic!("test {key}"));
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
}

#[test]
fn spirals_source_trains_with_adamw_and_clipping() {
    let (_, log) = trains("adamw_clip");
    // cosine() without warm-up: falling every epoch, to near 0 at the end.
    let lr = lrs(&log);
    assert!(lr.windows(2).all(|w| w[1] < w[0]), "{lr:?}");
    assert!(*lr.last().expect("a rate") < 1e-3 * 0.02, "{lr:?}");
}

#[test]
fn xor_source_trains_with_rmsprop() {
    let (_, log) = trains("bce_probs");
    // exponential(gamma: 0.99): lr · 0.99^epoch.
    for (e, lr) in lrs(&log).iter().enumerate() {
        let want = 0.01 * 0.99f64.powi(e as i32);
        assert!((lr - want).abs() <= 1e-15, "epoch {}: lr {lr}, want {want}", e + 1);
    }
    assert_eq!(num(log.last().expect("a line"), "test_accuracy"), Some(1.0), "xor learned");
}

#[test]
fn xor_source_trains_with_nesterov() {
    let (_, log) = trains("sgd_nesterov");
    assert_eq!(num(log.last().expect("a line"), "test_accuracy"), Some(1.0), "xor learned");
}

// ------------------------------------------- metrics the trainer reports

/// Writes `spec` into a fresh folder and trains it; (exit code, stdout,
/// stderr, the log's lines).
fn train_text(tag: &str, spec: &str) -> (i32, String, String, Vec<Value>) {
    let dir = out_dir(tag);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("spec.model");
    std::fs::write(&path, spec).expect("spec");
    let out = dir.join("run");
    let (code, stdout, err) = modelc(&["train", &path.to_string_lossy(), "--out", &out.to_string_lossy()]);
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap_or_default();
    let lines = log.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    std::fs::remove_dir_all(&dir).ok();
    (code, stdout, err, lines)
}

const SPIRALS_MODEL: &str = "model s {
  input  point: f32[2]
  target label: class[3]
  logits = point |> dense(16) |> tanh |> dense(3)
  loss   cross_entropy(logits, label)
  METRIC
}
train s {
  data       spirals(samples: 90, classes: 3)
  batch      10
  epochs     3
  optimizer  sgd(lr: 0.2)
  validation 0.2
  SETTING
}
";

/// A named accuracy (`metric acc = accuracy(…)`) is the same metric as an
/// unnamed one; the trainer reports only a metric named `accuracy`.
#[test]
fn a_named_accuracy_metric_is_reported_by_the_trainer() {
    let spec = SPIRALS_MODEL.replace("METRIC", "metric acc = accuracy(logits, label)").replace("SETTING", "");
    let (code, stdout, err, log) = train_text("named-acc", &spec);
    assert_eq!(code, 0, "{err}");
    let last = log.last().expect("a line");
    for key in ["train_accuracy", "val_accuracy", "test_accuracy"] {
        assert!(num(last, key).is_some(), "no {key} for the named accuracy metric: {last}\n{stdout}");
    }
}

/// The checker accepts `early_stop on:` any declared metric (and `val_` of
/// it); the trainer refuses all but loss and accuracy when the run starts.
#[test]
fn early_stopping_on_a_declared_metric_trains() {
    let spec = SPIRALS_MODEL
        .replace("METRIC", "metric macro_f1 = f1(logits, label, average: macro)")
        .replace("SETTING", "early_stop patience: 2, on: val_macro_f1");
    let (_, _, errors) = modelc_compiler::check_text("es.model", spec.clone(), &FsLoader);
    assert!(errors.is_empty(), "the checker accepts it: {errors:?}");
    let (code, _, err, log) = train_text("es-metric", &spec);
    assert_eq!(code, 0, "{err}");
    assert!(!log.is_empty());
}

/// Declared precision, recall and F1 metrics, with their averages, reach
/// the log under their names. (The log has only macro averages, whatever
/// the spec declares; a micro average equals the accuracy here.)
#[test]
fn declared_metrics_are_reported_by_the_trainer() {
    let spec = SPIRALS_MODEL
        .replace("METRIC", "metric accuracy(logits, label)\n  metric f1_micro = f1(logits, label, average: micro)")
        .replace("SETTING", "");
    let (code, _, err, log) = train_text("declared", &spec);
    assert_eq!(code, 0, "{err}");
    let last = log.last().expect("a line");
    let found =
        last.as_object().expect("an object").iter().find(|(k, _)| k.starts_with("test") && k.ends_with("f1_micro"));
    let (key, value) = found.unwrap_or_else(|| panic!("no test f1_micro in the log: {last}"));
    assert_eq!(key, "test_f1_micro");
    // The accuracy is the compiled metric's f32 mean; the F1 counts in f64.
    let acc = num(last, "test_accuracy").expect("test accuracy");
    assert!((value.as_f64().expect("a number") - acc).abs() < 1e-6, "{key} {value} vs accuracy {acc}");
}

// ---------------------------------------------------------------- coverage

/// The text of every zoo spec without its comments.
fn zoo_texts() -> Vec<(String, String)> {
    ZOO.iter()
        .map(|e| {
            let text = std::fs::read_to_string(spec_path(e.spec)).expect("spec");
            let code = text.lines().map(|l| l.split('#').next().unwrap_or("")).collect::<Vec<_>>().join("\n");
            (e.spec.to_string(), code)
        })
        .collect()
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `word` occurs in `text` as a whole word.
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back().is_none_or(|c| !is_word(c));
        let after = text[i + word.len()..].chars().next().is_none_or(|c| !is_word(c));
        before && after
    })
}

/// The argument lists of every call of `name` in `text`.
fn calls<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(&format!("{name}(")) {
        if text[..i].chars().next_back().is_some_and(is_word) {
            continue;
        }
        let start = i + name.len() + 1;
        let mut depth = 1;
        for (j, c) in text[start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                out.push(&text[start..start + j]);
                break;
            }
        }
    }
    out
}

/// The messages and help lines of checking `text`.
fn diagnostics(text: &str) -> Vec<String> {
    let (_, _, errors) = modelc_compiler::check_text("probe.model", text.to_string(), &FsLoader);
    errors
        .iter()
        .map(|e| format!("{} | {}", e.error, e.error.help().map(|h| h.to_string()).unwrap_or_default()))
        .collect()
}

/// The `quoted` names of the one diagnostic containing `marker`.
fn quoted(diags: &[String], marker: &str) -> Vec<String> {
    let d = diags
        .iter()
        .find(|d| d.contains(marker))
        .unwrap_or_else(|| panic!("no diagnostic with {marker:?}: {diags:#?}"));
    let tail = &d[d.find(marker).expect("marker") + marker.len()..];
    let tail = tail.split(", found").next().unwrap_or(tail);
    tail.split('`').skip(1).step_by(2).map(String::from).collect()
}

/// The optional arguments of "NAME takes (a, b: 1, c?)" in the diagnostics.
fn optional_args(diags: &[String], name: &str) -> Vec<String> {
    if diags.iter().any(|d| d.contains(&format!("{name} takes no arguments"))) {
        return Vec::new();
    }
    let marker = format!("{name} takes (");
    let d = diags.iter().find(|d| d.contains(&marker)).unwrap_or_else(|| panic!("no {marker:?}: {diags:#?}"));
    let list = &d[d.find(&marker).expect("marker") + marker.len()..];
    let list = &list[..list.find(')').expect("a closing parenthesis")];
    list.split(", ")
        .filter(|a| a.contains(':') || a.ends_with('?'))
        .map(|a| a.chars().take_while(|c| is_word(*c)).collect())
        .collect()
}

const MODEL: &str =
    "model m {\n  input x: f32[2]\n  target y: class[2]\n  o = x |> dense(2)\n  loss cross_entropy(o, y)\n}\n";

/// A name or form of the language and whether a spec's text uses it.
type Need = (String, Box<dyn Fn(&str) -> bool>);

/// What the zoo must use, read from the checker: (kind, what, a predicate
/// over one spec's text).
fn catalogue() -> Vec<Need> {
    let mut need: Vec<Need> = Vec::new();
    // Layers, losses, metrics: each used, each optional argument given,
    // each choice of a choice argument.
    for sig in layers::SIGS {
        let name = sig.name;
        need.push((format!("{:?} `{name}`", sig.kind).to_lowercase(), Box::new(move |t| has_word(t, name))));
        for p in sig.params.iter().filter(|p| p.default.is_some()) {
            let arg = p.name;
            need.push((
                format!("argument `{arg}` of `{name}`"),
                Box::new(move |t| calls(t, name).iter().any(|a| has_word(a, arg))),
            ));
            let choices: &[&'static str] = match p.ty {
                Ty::Choice(c) => c,
                Ty::Padding => &["same", "valid"],
                _ => &[],
            };
            for c in choices {
                need.push((
                    format!("`{arg}: {c}` of `{name}`"),
                    Box::new(move |t| calls(t, name).iter().any(|a| a.contains(&format!("{arg}: {c}")))),
                ));
            }
        }
    }
    // Optimizers, schedules and data sources from the lists the checker
    // gives for an unknown name; their optional arguments from its help for
    // an unknown argument.
    let probe = |setting: &str, call: &str| {
        let mut text = format!("{MODEL}train m {{\n  batch 1\n  epochs 1\n");
        if setting != "data" {
            text.push_str("  data xor()\n");
        }
        if setting != "optimizer" {
            text.push_str("  optimizer sgd(lr: 1)\n");
        }
        text.push_str(&format!("  {setting} {call}\n}}\n"));
        diagnostics(&text)
    };
    for (setting, kind) in
        [("optimizer", "the optimizers are"), ("schedule", "the schedules are"), ("data", "the data sources are")]
    {
        let names = quoted(&probe(setting, "zzzzqqq()"), kind);
        assert!(names.len() >= 3, "{kind}: {names:?}");
        for name in names {
            let n = name.clone();
            need.push((format!("{setting} `{name}`"), Box::new(move |t| !calls(t, &n).is_empty())));
            for arg in optional_args(&probe(setting, &format!("{name}(zzzzqqq: 1)")), &name) {
                let n = name.clone();
                let a = arg.clone();
                need.push((
                    format!("argument `{arg}` of {setting} `{name}`"),
                    Box::new(move |t| calls(t, &n).iter().any(|c| has_word(c, &a))),
                ));
            }
        }
    }
    // Choice arguments of the settings (csv's `scale`).
    for choice in quoted(&probe("data", "csv(\"p\", label: \"y\", scale: zzzzqqq)"), "expects") {
        need.push((
            format!("csv `scale: {choice}`"),
            Box::new(move |t| calls(t, "csv").iter().any(|a| a.contains(&format!("scale: {choice}")))),
        ));
    }
    for arg in optional_args(&probe("early_stop", "patience: 1, zzzzqqq: 1"), "early_stop") {
        need.push((
            format!("argument `{arg}` of early_stop"),
            Box::new(move |t| {
                t.lines().any(|l| l.trim_start().starts_with("early_stop") && l.contains(&format!("{arg}:")))
            }),
        ));
    }
    // Settings of train blocks, finetune blocks and stages, as indented
    // lines.
    let blocks = [
        (format!("{MODEL}train m {{\n  zzzzqqq 1\n}}\n"), "a train block takes"),
        (format!("{MODEL}finetune f from m {{\n  zzzzqqq 1\n}}\n"), "a finetune block takes"),
        (format!("{MODEL}finetune f from m {{\n  stage s {{\n    zzzzqqq 1\n  }}\n}}\n"), "a stage takes"),
    ];
    let mut settings = BTreeSet::new();
    for (text, marker) in blocks {
        settings.extend(quoted(&diagnostics(&text), marker));
    }
    assert!(settings.len() >= 15, "{settings:?}");
    for key in settings {
        need.push((
            format!("setting `{key}`"),
            Box::new(move |t| t.lines().any(|l| l.starts_with(' ') && l.split_whitespace().next() == Some(&key))),
        ));
    }
    // Statements and forms of the language.
    for (what, needle) in [
        ("import", "import \""),
        ("finetune … from", " from "),
        ("stage", "stage "),
        ("replace", "replace "),
        ("finetune target", "target "),
        ("repeat … as", "repeat 2 as "),
        ("per-token target", "per token"),
        ("i32 input", ": i32["),
        ("named metric", "metric macro_f1 = "),
        ("durations in epochs", " epochs,"),
        ("durations in steps", " steps,"),
        ("class range", "..5"),
        ("negation", "-g"),
        ("product of values", " * "),
        ("difference of values", " - "),
        ("sum of values", " + "),
        ("scaled loss term", "0.5 * mse("),
        ("a flag", ", causal)"),
    ] {
        need.push((what.to_string(), Box::new(move |t| t.contains(needle))));
    }
    need
}

/// Every name of the catalogue is used by some zoo spec.
#[test]
fn coverage() {
    let texts = zoo_texts();
    let need = catalogue();
    let mut missing = Vec::new();
    for (what, used) in &need {
        if !texts.iter().any(|(_, t)| used(t)) {
            missing.push(what.clone());
        }
    }
    assert!(missing.is_empty(), "no zoo spec uses: {missing:#?}");
    println!("the zoo uses all {} names and forms of the catalogue", need.len());
}
