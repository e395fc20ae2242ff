//! The trainer: loads the data a train block names, runs epochs of seeded
//! shuffled batches through an [`Executor`], evaluates, logs every epoch as a
//! JSON line, writes checkpoints atomically, stops early when told, and stops
//! with a clear error (keeping the last good checkpoint) when the loss stops
//! being finite.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use modelc_compiler::check::train::{DataSource, TrainInfo, TEXT_CLASSES};
use modelc_compiler::check::types::DType;
use modelc_compiler::check::ModelInfo;
use serde::Serialize;

use crate::checkpoint;
use crate::data::{self, csv, mnist, synthetic, Dataset};
use crate::exec::{Batch, Executor};
use crate::metrics::Confusion;
use crate::schedule::{lr_at, Progress};

/// What a run may override of the train block.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub epochs: Option<u64>,
    pub batch: Option<u64>,
    pub seed: Option<u64>,
    /// Train on the first `limit` training samples only.
    pub limit: Option<usize>,
    /// Evaluate on the first `test_limit` test samples only.
    pub test_limit: Option<usize>,
    /// Replaces the data path of the spec (MNIST folder, CSV file).
    pub data: Option<PathBuf>,
    /// Where logs and checkpoints go.
    pub out: PathBuf,
    /// Draw a progress bar (only on a terminal).
    pub progress: bool,
    /// Continue from `last.safetensors` and `last.state.safetensors` in `out`.
    pub resume: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochLog {
    pub epoch: u64,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// Macro-averaged precision, recall and F1 on the validation and test
    /// sets (classification targets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_prf: Option<Prf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_prf: Option<Prf>,
    pub seconds: f64,
    pub samples_per_second: f64,
}

/// Macro-averaged precision, recall and F1.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

fn prf(e: &Evaluation) -> Option<Prf> {
    use modelc_compiler::check::layers::Average;
    e.confusion.as_ref().map(|c| Prf {
        precision: c.precision(Average::Macro),
        recall: c.recall(Average::Macro),
        f1: c.f1(Average::Macro),
    })
}

pub struct Outcome {
    pub epochs: Vec<EpochLog>,
    /// The loss of every step, in order.
    pub losses: Vec<f64>,
    pub last: PathBuf,
    pub best: Option<PathBuf>,
    pub log: PathBuf,
}

/// The datasets of a run: training, validation (held out of training) and test.
pub struct Data {
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub test: Option<Dataset>,
}

/// Loads what `source` names, for `model`'s target.
pub fn load(source: &DataSource, model: &ModelInfo, info: &TrainInfo, opts: &Options) -> Result<Data, String> {
    let path_of = |p: &str| opts.data.clone().unwrap_or_else(|| PathBuf::from(p));
    let target = &model.nodes[model.targets[0]].ty;
    let (train, test) = match source {
        DataSource::Mnist { path, classes } => {
            let dir = path_of(path);
            let hint = |e: data::DataError| {
                format!("{e}\n  (the path is relative to the working folder; override it with --set data=PATH)")
            };
            (
                mnist::load(&dir, mnist::Split::Train, *classes).map_err(hint)?,
                Some(mnist::load(&dir, mnist::Split::Test, *classes).map_err(hint)?),
            )
        }
        DataSource::Xor => {
            let classes = matches!(target.dtype, DType::Class { .. });
            (synthetic::xor(classes), Some(synthetic::xor(classes)))
        }
        DataSource::Spirals { samples, classes, noise } => (
            synthetic::spirals(*samples as usize, *classes as u32, *noise, info.seed),
            Some(synthetic::spirals((*samples as usize / 4).max(1), *classes as u32, *noise, info.seed ^ 1)),
        ),
        DataSource::Csv { path, label, header, scale } => {
            let scale = match scale.as_str() {
                "standard" => csv::Scale::Standard,
                "minmax" => csv::Scale::MinMax,
                _ => csv::Scale::None,
            };
            let kind = match target.dtype {
                DType::Class { classes } => csv::Target::Classes(classes as u32),
                _ => csv::Target::Value,
            };
            let d = csv::load(&path_of(path), label, *header, scale, kind).map_err(|e| e.to_string())?;
            let want = model.nodes[model.inputs[0]].ty.shape.sample_elements() as usize;
            if d.width != want {
                return Err(format!("{path}: rows have {} features, the model's input takes {want}", d.width));
            }
            (d, None)
        }
        DataSource::Text { .. } => {
            return Err(format!(
                "the text data source ({TEXT_CLASSES}-character windows) is checked but not yet loaded by the trainer"
            ))
        }
    };
    let train = match opts.limit {
        Some(n) if n < train.len => train.slice(&(0..n).collect::<Vec<_>>()),
        _ => train,
    };
    let test = test.map(|t| match opts.test_limit {
        Some(n) if n < t.len => t.slice(&(0..n).collect::<Vec<_>>()),
        _ => t,
    });
    let (train, val) = if info.validation > 0.0 {
        let (tr, va) = data::validation_split(train.len, info.validation, info.seed);
        (train.slice(&tr), Some(train.slice(&va)))
    } else {
        (train, None)
    };
    Ok(Data { train, val, test })
}

/// What evaluating a dataset gave.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: Option<f64>,
    /// Labels against predictions, for class targets.
    pub confusion: Option<Confusion>,
}

/// Mean loss and accuracy of `exec` over `d` (and the confusion matrix for
/// class labels), in batches of `batch`.
pub fn evaluate(exec: &mut dyn Executor, d: &Dataset, batch: usize) -> Result<Evaluation, String> {
    let order: Vec<usize> = (0..d.len).collect();
    let (mut loss, mut acc, mut seen) = (0.0, 0.0, 0usize);
    let mut has_acc = false;
    let mut confusion = match &d.labels {
        data::Labels::Classes { classes, .. } => Some(Confusion::new(*classes as usize)),
        data::Labels::Values { .. } => None,
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for idx in data::batches(&order, batch) {
        d.gather(idx, &mut x, &mut y);
        let s = exec.evaluate(&Batch { n: idx.len(), features: &x, labels: &y })?;
        loss += s.loss * idx.len() as f64;
        if let Some(a) = s.accuracy {
            acc += a * idx.len() as f64;
            has_acc = true;
        }
        if let Some(c) = confusion.as_mut() {
            if s.predictions.len() == y.len() {
                c.add(&y, &s.predictions);
            }
        }
        seen += idx.len();
    }
    let n = seen.max(1) as f64;
    let confusion = confusion.filter(|c| c.total() > 0);
    Ok(Evaluation { loss: loss / n, accuracy: has_acc.then_some(acc / n), confusion })
}

/// The dropout seed of a step: new masks every step, the same for the same
/// run seed. 24 bits, so that it is exact in the f32 the compiled code reads.
pub fn dropout_seed(seed: u64, step: u64) -> u64 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xBF58_476D_1CE4_E5B9)) >> 40
}

/// Trains with `exec`, writing progress to `out`.
pub fn run(
    exec: &mut dyn Executor,
    model: &ModelInfo,
    info: &TrainInfo,
    data: &Data,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<Outcome, String> {
    let epochs = opts.epochs.unwrap_or(info.epochs);
    let batch = opts.batch.unwrap_or(info.batch).max(1) as usize;
    let seed = opts.seed.unwrap_or(info.seed);
    let optimizer = info.optimizer.as_ref().ok_or("the train block has no optimizer")?;
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("cannot create {}: {e}", opts.out.display()))?;
    let log_path = opts.out.join("log.jsonl");
    let last = opts.out.join("last.safetensors");
    let best_path = opts.out.join("best.safetensors");
    let state_path = opts.out.join("last.state.safetensors");
    // Resuming: weights, optimizer state and where training stood.
    let mut first_epoch = 0;
    if opts.resume {
        let expected: Vec<(String, Vec<usize>)> = exec.parameters().into_iter().map(|(k, (s, _))| (k, s)).collect();
        let weights = checkpoint::load(&last).map_err(|e| format!("cannot resume: {e}"))?;
        let weights = checkpoint::validate(&last, weights, &expected, &[]).map_err(|e| e.to_string())?;
        let expected_state: Vec<(String, Vec<usize>)> = exec.state().into_iter().map(|(k, (s, _))| (k, s)).collect();
        let state = checkpoint::load(&state_path).map_err(|e| format!("cannot resume: {e}"))?;
        let state = checkpoint::validate(&state_path, state, &expected_state, &[]).map_err(|e| e.to_string())?;
        let meta = checkpoint::metadata(&state_path).map_err(|e| e.to_string())?;
        first_epoch = meta
            .get("epoch")
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| format!("{}: no epoch in its metadata", state_path.display()))?;
        exec.set_parameters(&weights);
        exec.set_parameters(&state);
        let _ = writeln!(out, "resuming after epoch {first_epoch} from {}", last.display());
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(opts.resume)
        .write(true)
        .truncate(!opts.resume)
        .open(&log_path)
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let n = data.train.len;
    let steps_per_epoch = n.div_ceil(batch) as u64;
    let total_steps = steps_per_epoch * epochs;
    let _ = writeln!(
        out,
        "training {} on {n} samples ({} validation, {} test), batch {batch}, {epochs} epochs, {} — {}",
        model.name,
        data.val.as_ref().map_or(0, |d| d.len),
        data.test.as_ref().map_or(0, |d| d.len),
        optimizer.name(),
        exec.name()
    );
    let mut logs = Vec::new();
    let mut losses = Vec::new();
    let mut step = first_epoch * n.div_ceil(batch) as u64;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut best: Option<(f64, u64)> = None;
    let mut saved_best = None;
    let watch = info.early_stop.as_ref();
    if let Some(es) = watch {
        if !matches!(es.on.as_str(), "loss" | "val_loss" | "accuracy" | "val_accuracy") {
            return Err(format!("early stopping on `{}` is not supported by the trainer yet (loss, val_loss, accuracy and val_accuracy are)", es.on));
        }
    }
    for epoch in first_epoch..epochs {
        let started = Instant::now();
        let order = data::epoch_order(n, seed, epoch);
        let bar = (opts.progress && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(steps_per_epoch);
            b.set_style(
                indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("{}/{epochs}", epoch + 1));
            b
        });
        let (mut sum_loss, mut sum_acc, mut has_acc) = (0.0, 0.0, false);
        let mut lr = 0.0;
        for idx in data::batches(&order, batch) {
            lr = lr_at(&info.schedule, optimizer.lr(), Progress { step, steps_per_epoch, total_steps });
            data.train.gather(idx, &mut x, &mut y);
            let batch = Batch { n: idx.len(), features: &x, labels: &y };
            let s = exec.train_step(&batch, lr, step + 1, dropout_seed(seed, step + 1))?;
            if !s.loss.is_finite() {
                let culprit =
                    exec.first_non_finite().map_or("none yet (only the loss)".to_string(), |t| format!("`{t}`"));
                let kept = if last.exists() {
                    format!("{} is kept as it was", last.display())
                } else {
                    "no checkpoint was written".into()
                };
                return Err(format!(
                    "the loss became {} at step {} (epoch {}); first non-finite tensor: {culprit}; {kept}. Try a smaller learning rate or `clip_grad_norm`.",
                    s.loss,
                    step + 1,
                    epoch + 1
                ));
            }
            losses.push(s.loss);
            sum_loss += s.loss * idx.len() as f64;
            if let Some(a) = s.accuracy {
                sum_acc += a * idx.len() as f64;
                has_acc = true;
            }
            step += 1;
            if let Some(b) = &bar {
                b.inc(1);
                b.set_message(format!("loss {:.4}", s.loss));
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let seconds = started.elapsed().as_secs_f64();
        let val = data.val.as_ref().map(|d| evaluate(exec, d, batch)).transpose()?;
        let test = data.test.as_ref().map(|d| evaluate(exec, d, batch)).transpose()?;
        let (val_prf, test_prf) = (val.as_ref().and_then(prf), test.as_ref().and_then(prf));
        let val = val.map(|v| (v.loss, v.accuracy));
        let test = test.map(|t| (t.loss, t.accuracy));
        let entry = EpochLog {
            epoch: epoch + 1,
            lr,
            train_loss: sum_loss / n.max(1) as f64,
            train_accuracy: has_acc.then_some(sum_acc / n.max(1) as f64),
            val_loss: val.map(|v| v.0),
            val_accuracy: val.and_then(|v| v.1),
            test_loss: test.map(|t| t.0),
            test_accuracy: test.and_then(|t| t.1),
            val_prf,
            test_prf,
            seconds,
            samples_per_second: n as f64 / seconds.max(1e-9),
        };
        // Long runs of tiny epochs (xor) print about twenty lines.
        let every = (epochs / 20).max(1);
        if (epoch + 1) % every == 0 || epoch == 0 || epoch + 1 == epochs {
            let _ = writeln!(out, "{}", epoch_line(&entry, epochs));
        }
        let line = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
        writeln!(log, "{line}").map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
        let meta = BTreeMap::from([
            ("model".to_string(), model.name.clone()),
            ("epoch".to_string(), (epoch + 1).to_string()),
            ("step".to_string(), step.to_string()),
        ]);
        let params = exec.parameters();
        checkpoint::save(&last, &params, meta.clone()).map_err(|e| e.to_string())?;
        checkpoint::save(&state_path, &exec.state(), meta.clone()).map_err(|e| e.to_string())?;
        if let Some(es) = watch {
            let value = watched(&entry, &es.on);
            let lower_is_better = es.on.ends_with("loss");
            let score = if lower_is_better { -value } else { value };
            match best {
                Some((b, _)) if score <= b + es.min_delta => {}
                _ => {
                    best = Some((score, epoch));
                    checkpoint::save(&best_path, &params, meta).map_err(|e| e.to_string())?;
                    saved_best = Some(best_path.clone());
                }
            }
            if let Some((_, at)) = best {
                if epoch - at >= es.patience {
                    let _ = writeln!(out, "early stop: `{}` has not improved for {} epochs", es.on, es.patience);
                    logs.push(entry);
                    break;
                }
            }
        }
        logs.push(entry);
    }
    Ok(Outcome { epochs: logs, losses, last, best: saved_best, log: log_path })
}

fn watched(e: &EpochLog, on: &str) -> f64 {
    let v = match on {
        "loss" => Some(e.train_loss),
        "val_loss" => e.val_loss,
        "accuracy" => e.train_accuracy,
        "val_accuracy" => e.val_accuracy,
        _ => None,
    };
    v.unwrap_or(f64::NAN)
}

fn epoch_line(e: &EpochLog, epochs: u64) -> String {
    let pct = |a: Option<f64>| a.map(|a| format!(" acc {:.2}%", 100.0 * a)).unwrap_or_default();
    let mut s = format!("epoch {}/{epochs}  loss {:.4}{}", e.epoch, e.train_loss, pct(e.train_accuracy));
    if let Some(l) = e.val_loss {
        s.push_str(&format!("  val loss {l:.4}{}", pct(e.val_accuracy)));
    }
    if let Some(l) = e.test_loss {
        s.push_str(&format!("  test loss {l:.4}{}", pct(e.test_accuracy)));
    }
    if let Some(p) = e.test_prf.or(e.val_prf) {
        s.push_str(&format!("  F1 {:.2}%", 100.0 * p.f1));
    }
    s.push_str(&format!("  lr {:.3e}  {:.0} samples/s  {:.1} s", e.lr, e.samples_per_second, e.seconds));
    s
}

/// The default output folder of a run: `runs/MODEL`.
pub fn default_out(model: &str) -> PathBuf {
    Path::new("runs").join(model)
}
