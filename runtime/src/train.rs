//! The trainer: loads the data a train block names, runs epochs of seeded
//! shuffled batches through an [`Executor`], evaluates, logs every epoch as a
//! JSON line, writes checkpoints atomically, stops early when told, and stops
//! with a clear error (keeping the last good checkpoint) when the loss stops
//! being finite.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use modelc_compiler::check::layers::Metric;
use modelc_compiler::check::train::{DataSource, Schedule, TrainInfo};
use modelc_compiler::check::types::DType;
use modelc_compiler::check::{ModelInfo, Op as CheckOp};
use serde::Serialize;

use crate::checkpoint;
use crate::data::{self, csv, mnist, synthetic, text, Dataset};
use crate::exec::{Batch, Executor};
use crate::metrics::Confusion;
use crate::rundir;
use crate::schedule::{lr_at, Plateau, Progress};

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
    /// Continue from the resume point (`last.state.safetensors`) in `out`.
    pub resume: bool,
    /// Preprocessing to apply instead of fitting it on the training samples
    /// (`eval` applies the checkpoint's).
    pub preprocess: Option<csv::Preprocess>,
    /// For one stage of a finetune: where it starts in the whole run.
    pub stage: Option<StageRun>,
}

/// Where a stage starts in a run of several: its name, the run's epoch
/// (global, 0-based) and step before it. Epochs and steps count on across
/// stages; the schedule counts from the stage's start.
#[derive(Clone, Debug, Default)]
pub struct StageRun {
    pub name: String,
    pub first_epoch: u64,
    pub first_step: u64,
    /// Optimizer steps the carried optimizer state has already taken (its
    /// bias corrections go on from there, as torch's per-parameter step);
    /// 0 when the stage starts its optimizer afresh.
    pub optimizer_steps: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochLog {
    pub epoch: u64,
    /// The finetune stage the epoch belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
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
    /// Every declared precision, recall or F1 metric on the validation and
    /// test sets: `val_NAME`, `test_NAME`.
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// Bits per character (the cross-entropy in base 2) of a `text`
    /// model: `train_bpc`, `val_bpc`, `test_bpc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_bpc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_bpc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_bpc: Option<f64>,
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
    /// The run's step count at the end.
    pub step: u64,
    /// The optimizer's own step count at the end (see [`StageRun`]).
    pub optimizer_steps: u64,
    pub epochs: Vec<EpochLog>,
    /// The loss of every step, in order.
    pub losses: Vec<f64>,
    pub last: PathBuf,
    pub best: Option<PathBuf>,
    pub log: PathBuf,
}

/// The datasets of a run: training, validation (held out of training) and
/// test, and the preprocessing fitted on the training samples (CSV).
pub struct Data {
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub test: Option<Dataset>,
    pub preprocess: Option<csv::Preprocess>,
    /// The `text` source's vocabulary.
    pub vocab: Option<text::Vocab>,
}

/// The checkpoint metadata that carries `p`.
pub fn preprocess_metadata(p: Option<&csv::Preprocess>) -> BTreeMap<String, String> {
    p.map(|p| BTreeMap::from([(csv::METADATA_KEY.to_string(), p.to_json())])).unwrap_or_default()
}

/// The checkpoint metadata of what the data carries: the CSV
/// preprocessing or the text vocabulary.
pub fn data_metadata(d: &Data) -> BTreeMap<String, String> {
    let mut m = preprocess_metadata(d.preprocess.as_ref());
    if let Some(v) = d.vocab {
        m.insert(text::METADATA_KEY.into(), v.to_json());
    }
    m
}

/// The text vocabulary a checkpoint carries, if any.
pub fn vocab_of(weights: &Path) -> Result<Option<text::Vocab>, String> {
    let meta = checkpoint::metadata(weights).map_err(|e| e.to_string())?;
    meta.get(text::METADATA_KEY)
        .map(|t| text::Vocab::from_json(t).map_err(|e| format!("{}: {e}", weights.display())))
        .transpose()
}

/// The preprocessing a checkpoint carries, if any.
pub fn preprocess_of(weights: &Path) -> Result<Option<csv::Preprocess>, String> {
    let meta = checkpoint::metadata(weights).map_err(|e| e.to_string())?;
    meta.get(csv::METADATA_KEY)
        .map(|t| csv::Preprocess::from_json(t).map_err(|e| format!("{}: {e}", weights.display())))
        .transpose()
}

/// The width check every source passes through: the file named, both widths.
fn fits(path: &Path, d: &Dataset, model: &ModelInfo) -> Result<(), String> {
    let want = model.nodes[model.inputs[0]].ty.shape.sample_elements() as usize;
    if d.width != want {
        return Err(format!(
            "{}: samples have {} values, but the model's input `{}` takes {want}",
            path.display(),
            d.width,
            model.nodes[model.inputs[0]].path
        ));
    }
    Ok(())
}

/// What a CSV source's settings say, as the loader takes them.
fn csv_target(model: &ModelInfo) -> csv::Target {
    match model.nodes[model.targets[0]].ty.dtype {
        DType::Class { classes } => csv::Target::Classes(classes as u32),
        _ => csv::Target::Value,
    }
}

/// Loads what `source` names, for `model`'s target. `opts.data` replaces
/// the training data's path.
pub fn load(source: &DataSource, model: &ModelInfo, info: &TrainInfo, opts: &Options) -> Result<Data, String> {
    let path_of = |p: &str| opts.data.clone().unwrap_or_else(|| PathBuf::from(p));
    let target = &model.nodes[model.targets[0]].ty;
    // CSV: (feature columns, class names, scale, label, header, test file).
    let mut csv_setup = None;
    let mut vocab = None;
    let (train, test) = match source {
        DataSource::Mnist { path, classes } => {
            let dir = path_of(path);
            let hint = |e: data::DataError| {
                format!("{e}\n  (the path is relative to the working folder; override it with --set data=PATH)")
            };
            let width = Some(model_width(model));
            let train = mnist::load_sized(&dir, mnist::Split::Train, *classes, width).map_err(hint)?;
            let test = mnist::load_sized(&dir, mnist::Split::Test, *classes, width).map_err(hint)?;
            (train, Some(test))
        }
        DataSource::Xor => {
            let classes = matches!(target.dtype, DType::Class { .. });
            (synthetic::xor(classes), Some(synthetic::xor(classes)))
        }
        DataSource::Spirals { samples, classes, noise } => (
            synthetic::spirals(*samples as usize, *classes as u32, *noise, info.seed),
            Some(synthetic::spirals((*samples as usize / 4).max(1), *classes as u32, *noise, info.seed ^ 1)),
        ),
        DataSource::Csv { path, label, header, scale, test } => {
            let file = path_of(path);
            let text = csv::read(&file).map_err(|e| e.to_string())?;
            let l =
                csv::read_labelled(&file, &text, label, *header, csv_target(model), None).map_err(|e| e.to_string())?;
            fits(&file, &l.data, model)?;
            let scale = csv::Scale::from_name(scale);
            csv_setup = Some((l.columns, l.classes, scale, label.clone(), *header, test.as_ref().map(PathBuf::from)));
            (l.data, None)
        }
        DataSource::Text { path, context, vocab: v, test } => {
            let file = path_of(path);
            let v = text::Vocab::from_name(v);
            vocab = Some(v);
            let tokens = text::read(&file, v).map_err(|e| match e {
                data::DataError::Io { .. } => {
                    format!("{e}\n  (the path is relative to the working folder; override it with --set data=PATH)")
                }
                other => other.to_string(),
            })?;
            let all = text::windows(&file, &tokens, *context as usize, v).map_err(|e| e.to_string())?;
            if all.len < 2 {
                return Err(format!(
                    "{}: {} symbols make one window of {context}: too few to hold out a test set",
                    file.display(),
                    tokens.len()
                ));
            }
            // A seeded held-out set of windows (apart from validation's).
            let (train, held) = data::validation_split(all.len, *test, info.seed ^ 0x7E57);
            (all.slice(&train), Some(all.slice(&held)))
        }
    };
    let train = match opts.limit {
        Some(n) if n < train.len => train.slice(&(0..n).collect::<Vec<_>>()),
        _ => train,
    };
    let (mut train, mut val) = if info.validation > 0.0 {
        if train.len < 2 {
            return Err(format!(
                "`validation {}` needs at least 2 training samples to hold some out, and there {}",
                info.validation,
                if train.len == 1 { "is 1".to_string() } else { format!("are {}", train.len) }
            ));
        }
        let (tr, va) = data::validation_split(train.len, info.validation, info.seed);
        (train.slice(&tr), Some(train.slice(&va)))
    } else {
        (train, None)
    };
    if train.len == 0 {
        return Err("there are no training samples".into());
    }
    // CSV: statistics from the training samples alone, applied to every set.
    let mut test = test;
    let mut preprocess = None;
    if let Some((columns, classes, scale, label, header, test_file)) = csv_setup {
        let p = match &opts.preprocess {
            Some(p) => p.clone(),
            None => csv::Preprocess::fit(&train, columns, &label, scale, classes),
        };
        if let Some(file) = test_file {
            let text = csv::read(&file).map_err(|e| e.to_string())?;
            let l = csv::read_labelled(&file, &text, &label, header, csv_target(model), Some(&p))
                .map_err(|e| e.to_string())?;
            test = Some(l.data);
        }
        for d in std::iter::once(&mut train).chain(val.as_mut()).chain(test.as_mut()) {
            p.apply(d);
        }
        preprocess = Some(p);
    }
    finish(Data { train, val, test, preprocess, vocab }, opts)
}

fn model_width(model: &ModelInfo) -> usize {
    model.nodes[model.inputs[0]].ty.shape.sample_elements() as usize
}

/// Applies the test limit.
fn finish(mut d: Data, opts: &Options) -> Result<Data, String> {
    d.test = d.test.map(|t| match opts.test_limit {
        Some(n) if n < t.len => t.slice(&(0..n).collect::<Vec<_>>()),
        _ => t,
    });
    Ok(d)
}

/// Loads a file to evaluate on, whole, as test data: an MNIST folder's test
/// split, a text file's windows, or a labelled CSV file read with the checkpoint's preprocessing
/// (`p`; without one, the spec's settings and no scaling of its own).
pub fn load_test_file(
    source: &DataSource,
    model: &ModelInfo,
    file: &Path,
    p: Option<&csv::Preprocess>,
) -> Result<Dataset, String> {
    match source {
        DataSource::Mnist { classes, .. } => {
            mnist::load_sized(file, mnist::Split::Test, *classes, Some(model_width(model))).map_err(|e| e.to_string())
        }
        DataSource::Csv { label, header, scale, .. } => {
            let p = p.ok_or_else(|| {
                format!(
                    "the checkpoint carries no preprocessing record (the csv source scales `{scale}`): it was written by an older modelc; train again"
                )
            })?;
            let text = csv::read(file).map_err(|e| e.to_string())?;
            let mut d = csv::read_labelled(file, &text, label, *header, csv_target(model), Some(p))
                .map_err(|e| e.to_string())?
                .data;
            p.apply(&mut d);
            Ok(d)
        }
        DataSource::Text { context, vocab, .. } => {
            let v = text::Vocab::from_name(vocab);
            let tokens = text::read(file, v).map_err(|e| e.to_string())?;
            text::windows(file, &tokens, *context as usize, v).map_err(|e| e.to_string())
        }
        other => Err(format!("--data replaces a file or folder; the `{}` source has none", other.name())),
    }
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
    use modelc_compiler::kernel::consts::{SPLITMIX_GAMMA, SPLITMIX_M1};
    (seed.wrapping_mul(SPLITMIX_GAMMA) ^ step.wrapping_mul(SPLITMIX_M1)) >> 40
}

/// A step loss this many times above the run's first step loss (or above 1,
/// when the first was smaller) is taken as divergence: the run stops before
/// the loss overflows, with the same message a non-finite loss gets.
pub const DIVERGENCE_FACTOR: f64 = 1e4;

/// Where a run stands, saved in the resume point's metadata.
#[derive(Clone, Debug, Default)]
struct RunState {
    epoch: u64,
    step: u64,
    /// The first step loss of the run: the divergence reference.
    first_loss: Option<f64>,
    /// Early stopping: the best score so far and its epoch (0-based).
    best: Option<(f64, u64)>,
    /// The finetune stage that wrote it.
    stage: Option<String>,
    /// Reduce-on-plateau's state.
    plateau: Plateau,
    /// The stage's [`StageRun::optimizer_steps`].
    optimizer_base: u64,
}

impl RunState {
    fn metadata(&self, model: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([
            ("format".to_string(), "modelc-resume-1".to_string()),
            ("model".to_string(), model.to_string()),
            ("epoch".to_string(), self.epoch.to_string()),
            ("step".to_string(), self.step.to_string()),
        ]);
        if let Some(l) = self.first_loss {
            m.insert("first_loss".into(), format!("{l:e}"));
        }
        if let Some((score, epoch)) = self.best {
            m.insert("best_score".into(), format!("{score:e}"));
            m.insert("best_epoch".into(), epoch.to_string());
        }
        if let Some(s) = &self.stage {
            m.insert("stage".into(), s.clone());
        }
        if self.optimizer_base > 0 {
            m.insert("optimizer_base".into(), self.optimizer_base.to_string());
        }
        if self.plateau != Plateau::default() {
            m.insert("plateau_factor".into(), format!("{:e}", self.plateau.factor));
            m.insert("plateau_bad_epochs".into(), self.plateau.bad_epochs.to_string());
            if let Some(b) = self.plateau.best {
                m.insert("plateau_best".into(), format!("{b:e}"));
            }
        }
        m
    }

    fn from_metadata(path: &Path, m: &BTreeMap<String, String>) -> Result<RunState, String> {
        let num = |k: &str| -> Result<u64, String> {
            m.get(k)
                .and_then(|e| e.parse().ok())
                .ok_or_else(|| format!("cannot resume: {}: no `{k}` in its metadata", path.display()))
        };
        let float = |k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok());
        let best = match (float("best_score"), m.get("best_epoch").and_then(|e| e.parse().ok())) {
            (Some(s), Some(e)) => Some((s, e)),
            _ => None,
        };
        let stage = m.get("stage").cloned();
        let plateau = Plateau {
            factor: float("plateau_factor").unwrap_or(1.0),
            best: float("plateau_best"),
            bad_epochs: m.get("plateau_bad_epochs").and_then(|v| v.parse().ok()).unwrap_or(0),
        };
        let optimizer_base = m.get("optimizer_base").and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(RunState {
            epoch: num("epoch")?,
            step: num("step")?,
            first_loss: float("first_loss"),
            best,
            stage,
            plateau,
            optimizer_base,
        })
    }
}

/// Restores a run from its resume point; returns where it stood.
fn resume(exec: &mut dyn Executor, model: &ModelInfo, opts: &Options, out: &mut dyn Write) -> Result<RunState, String> {
    let (last, state_path) = (opts.out.join("last.safetensors"), opts.out.join("last.state.safetensors"));
    let params: Vec<(String, Vec<usize>)> = exec.parameters().into_iter().map(|(k, (s, _))| (k, s)).collect();
    let state: Vec<(String, Vec<usize>)> = exec.state().into_iter().map(|(k, (s, _))| (k, s)).collect();
    let all: Vec<(String, Vec<usize>)> = params.iter().chain(&state).cloned().collect();
    let loaded = checkpoint::load(&state_path).map_err(|e| format!("cannot resume: {e}"))?;
    let meta = checkpoint::metadata(&state_path).map_err(|e| format!("cannot resume: {e}"))?;
    if meta.get("format").map(String::as_str) != Some("modelc-resume-1") {
        return Err(format!(
            "cannot resume: {} was written by an older modelc and holds no weights; start the run again",
            state_path.display()
        ));
    }
    if let Some(m) = meta.get("model").filter(|m| **m != model.name) {
        return Err(format!("cannot resume: {} belongs to model `{m}`, not `{}`", state_path.display(), model.name));
    }
    let mut progress = RunState::from_metadata(&state_path, &meta)?;
    let this_stage = opts.stage.as_ref().map(|s| s.name.clone());
    let tensors = if progress.stage == this_stage {
        checkpoint::validate(&state_path, loaded, &all, &[]).map_err(|e| format!("cannot resume: {e}"))?
    } else {
        // Written at the end of the previous stage: its parameters, and the
        // optimizer state of whatever goes on training with the same
        // optimizer; early stopping and the divergence reference start anew.
        let keep: Vec<String> = state.iter().map(|(n, _)| n.clone()).collect();
        let carried: checkpoint::Tensors = loaded
            .into_iter()
            .filter(|(n, (s, _))| {
                params.iter().any(|(p, _)| p == n)
                    || (keep.contains(n) && state.iter().any(|(k, ks)| k == n && ks == s))
            })
            .collect();
        let present: Vec<(String, Vec<usize>)> = all
            .iter()
            .filter(|(n, _)| carried.contains_key(n) || params.iter().any(|(p, _)| p == n))
            .cloned()
            .collect();
        progress.best = None;
        progress.first_loss = None;
        progress.plateau = Plateau::default();
        progress.optimizer_base = opts.stage.as_ref().map_or(0, |s| s.optimizer_steps);
        checkpoint::validate(&state_path, carried, &present, &[]).map_err(|e| format!("cannot resume: {e}"))?
    };
    exec.set_parameters(&tensors);
    // The weights file lags when a crash came between the two writes (the
    // same metadata, restored best weights included, means the same file).
    if checkpoint::metadata(&last).ok().as_ref() != Some(&meta) {
        checkpoint::save(&last, &exec.parameters(), meta.clone()).map_err(|e| e.to_string())?;
        let _ = writeln!(out, "note: {} was behind the resume point; rewritten from it", last.display());
    }
    let log_path = opts.out.join("log.jsonl");
    let dropped = rundir::truncate_log(&log_path, progress.epoch)?;
    if dropped > 0 {
        let _ =
            writeln!(out, "note: {dropped} line(s) past epoch {} dropped from {}", progress.epoch, log_path.display());
    }
    let _ =
        writeln!(out, "resuming after epoch {} (step {}) from {}", progress.epoch, progress.step, state_path.display());
    Ok(progress)
}

/// Trains with `exec`, writing progress to `out`. The run folder's lock,
/// files and their guarantees are described in [`crate::rundir`].
pub fn run(
    exec: &mut dyn Executor,
    model: &ModelInfo,
    info: &TrainInfo,
    data: &Data,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<Outcome, String> {
    let stage = opts.stage.clone().unwrap_or_default();
    // Epochs of this run (or stage); they end at global epoch `end`.
    let epochs = opts.epochs.unwrap_or(info.epochs);
    let end = stage.first_epoch + epochs;
    let batch = opts.batch.unwrap_or(info.batch) as usize;
    let seed = opts.seed.unwrap_or(info.seed);
    if batch == 0 || epochs == 0 {
        return Err(format!("batch and epochs must be at least 1 (batch {batch}, epochs {epochs})"));
    }
    let optimizer = info.optimizer.as_ref().ok_or("the train block has no optimizer")?;
    let n = data.train.len;
    if n == 0 {
        return Err("there are no training samples".into());
    }
    let watch = info.early_stop.as_ref();
    let metrics = MetricNames::of(model);
    let bits = bits_per_character(model, info);
    let can = metrics.watchable(data.val.is_some(), data.test.is_some());
    let plateau_on = match &info.schedule {
        Schedule::Plateau { on, .. } => Some(on.as_str()),
        _ => None,
    };
    for (what, on) in [("early stopping", watch.map(|e| e.on.as_str())), ("the plateau schedule", plateau_on)] {
        if let Some(on) = on.filter(|on| !can.iter().any(|c| c == on)) {
            return Err(format!(
                "{what} watches `{on}`, which this run does not compute (it computes: {})",
                can.join(", ")
            ));
        }
    }
    let (_lock, note) = rundir::RunLock::acquire(&opts.out)?;
    if let Some(note) = note {
        let _ = writeln!(out, "{note}");
    }
    let log_path = opts.out.join("log.jsonl");
    let last = opts.out.join("last.safetensors");
    let best_path = opts.out.join("best.safetensors");
    let state_path = opts.out.join("last.state.safetensors");
    let mut progress = if opts.resume {
        resume(exec, model, opts, out)?
    } else {
        RunState {
            epoch: stage.first_epoch,
            step: stage.first_step,
            optimizer_base: stage.optimizer_steps,
            ..Default::default()
        }
    };
    progress.stage = opts.stage.as_ref().map(|s| s.name.clone());
    let first_epoch = progress.epoch.max(stage.first_epoch);
    if let Some(names) = data.preprocess.as_ref().and_then(|p| p.classes.as_ref()) {
        let list: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("{i} = {n}")).collect();
        let _ = writeln!(out, "classes (named in the label column, numbered in sorted order): {}", list.join(", "));
    }
    if first_epoch >= end && opts.stage.is_some() {
        let _ = writeln!(out, "stage `{}` was finished before; going on", stage.name);
        return Ok(Outcome {
            step: progress.step,
            optimizer_steps: 0,
            epochs: vec![],
            losses: vec![],
            last,
            best: None,
            log: log_path,
        });
    }
    if first_epoch >= end {
        return Err(format!(
            "the run in {} has already trained {first_epoch} epochs, and this run asks for {epochs}: nothing to resume (raise --epochs to train on)",
            opts.out.display()
        ));
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(opts.resume || stage.first_epoch > 0)
        .write(true)
        .truncate(!opts.resume && stage.first_epoch == 0)
        .open(&log_path)
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let steps_per_epoch = n.div_ceil(batch) as u64;
    let total_steps = steps_per_epoch * epochs;
    // The step count where this stage began: the schedule counts from it.
    let done_in_stage = first_epoch - stage.first_epoch;
    let stage_start_step =
        progress.step.checked_sub(done_in_stage * steps_per_epoch).filter(|s| opts.stage.is_some() || *s == 0);
    let Some(stage_start_step) = stage_start_step else {
        return Err(format!(
            "cannot resume: {} stands at step {} after epoch {first_epoch}, but this run has {steps_per_epoch} steps an epoch (were the batch size or the data changed?)",
            state_path.display(),
            progress.step
        ));
    };
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
    let mut step = progress.step;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut saved_best = None;
    let diverged = |what: String, step: u64, epoch: u64, exec: &dyn Executor| {
        let culprit = exec.first_non_finite().map_or("none (only the loss)".to_string(), |t| format!("`{t}`"));
        let kept = if last.exists() {
            format!("{} is kept as it was", last.display())
        } else {
            "no checkpoint was written".into()
        };
        format!(
            "{what} at step {step} (epoch {epoch}); first non-finite tensor: {culprit}; {kept}. Try a smaller learning rate or `clip_grad_norm`."
        )
    };
    for epoch in first_epoch..end {
        let started = Instant::now();
        let order = data::epoch_order(n, seed, epoch);
        let bar = (opts.progress && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(steps_per_epoch);
            b.set_style(
                indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("{}/{end}", epoch + 1));
            b
        });
        let (mut sum_loss, mut sum_acc, mut has_acc) = (0.0, 0.0, false);
        let mut lr = 0.0;
        for idx in data::batches(&order, batch) {
            let at = step - stage_start_step;
            lr = lr_at(&info.schedule, optimizer.lr(), Progress { step: at, steps_per_epoch, total_steps })
                * progress.plateau.factor;
            data.train.gather(idx, &mut x, &mut y);
            let batch = Batch { n: idx.len(), features: &x, labels: &y };
            // The optimizer counts its own steps (Adam's bias corrections);
            // dropout masks follow the run's.
            let t = step - stage_start_step + progress.optimizer_base + 1;
            let s = exec.train_step(&batch, lr, t, dropout_seed(seed, step + 1))?;
            if !s.loss.is_finite() {
                return Err(diverged(format!("the loss became {}", s.loss), step + 1, epoch + 1, &*exec));
            }
            let first = *progress.first_loss.get_or_insert(s.loss);
            let limit = DIVERGENCE_FACTOR * first.abs().max(1.0);
            if s.loss.abs() > limit {
                return Err(diverged(
                    format!(
                        "the loss diverged: {:.4e}, more than {DIVERGENCE_FACTOR:e} times the first step's {first:.4e},",
                        s.loss
                    ),
                    step + 1,
                    epoch + 1,
                    &*exec,
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
        for (name, e) in [("validation", &val), ("test", &test)] {
            if let Some(e) = e.as_ref().filter(|e| !e.loss.is_finite()) {
                return Err(diverged(format!("the {name} loss became {}", e.loss), step, epoch + 1, &*exec));
            }
        }
        let (val_prf, test_prf) = (val.as_ref().and_then(prf), test.as_ref().and_then(prf));
        let mut declared = BTreeMap::new();
        for (split, e) in [("val", &val), ("test", &test)] {
            if let Some(c) = e.as_ref().and_then(|e| e.confusion.as_ref()) {
                for (name, m) in &metrics.declared {
                    declared.insert(format!("{split}_{name}"), metric_value(c, m));
                }
            }
        }
        let val = val.map(|v| (v.loss, v.accuracy));
        let test = test.map(|t| (t.loss, t.accuracy));
        let bpc = |l: f64| bits.then(|| l / std::f64::consts::LN_2);
        let entry = EpochLog {
            epoch: epoch + 1,
            stage: opts.stage.as_ref().map(|s| s.name.clone()),
            lr,
            train_loss: sum_loss / n as f64,
            train_accuracy: has_acc.then_some(sum_acc / n as f64),
            val_loss: val.map(|v| v.0),
            val_accuracy: val.and_then(|v| v.1),
            test_loss: test.map(|t| t.0),
            test_accuracy: test.and_then(|t| t.1),
            val_prf,
            test_prf,
            metrics: declared,
            train_bpc: bpc(sum_loss / n as f64),
            val_bpc: val.and_then(|v| bpc(v.0)),
            test_bpc: test.and_then(|t| bpc(t.0)),
            seconds,
            samples_per_second: n as f64 / seconds.max(1e-9),
        };
        // Long runs of tiny epochs (xor) print about twenty lines.
        let every = (epochs / 20).max(1);
        if (epoch + 1) % every == 0 || epoch == stage.first_epoch || epoch + 1 == end {
            let _ = writeln!(out, "{}", epoch_line(&entry, end));
        }
        if let Some(on) = plateau_on {
            let value = metrics.watched(&entry, on);
            if let Some(f) = progress.plateau.observe(&info.schedule, optimizer.lr(), value, on.ends_with("loss")) {
                let _ = writeln!(
                    out,
                    "plateau: `{on}` stopped improving; the learning rate is now {:.3e}",
                    optimizer.lr() * f
                );
            }
        }
        // Early stopping's decision, before the checkpoint that records it.
        let mut improved = false;
        let mut stop = false;
        if let Some(es) = watch {
            let value = metrics.watched(&entry, &es.on);
            let score = if es.on.ends_with("loss") { -value } else { value };
            match progress.best {
                Some((b, _)) if score <= b + es.min_delta => {}
                _ => {
                    progress.best = Some((score, epoch));
                    improved = true;
                }
            }
            if let Some((_, at)) = progress.best {
                stop = epoch - at >= es.patience;
            }
        }
        progress.epoch = epoch + 1;
        progress.step = step;
        let line = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
        writeln!(log, "{line}")
            .and_then(|_| log.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
        rundir::crash_point("after-log", epoch + 1);
        let mut meta = progress.metadata(&model.name);
        meta.extend(data_metadata(data));
        let params = exec.parameters();
        // The best weights before the resume point that records them.
        if improved {
            checkpoint::save(&best_path, &params, meta.clone()).map_err(|e| e.to_string())?;
        }
        let mut resume_point = params.clone();
        resume_point.extend(exec.state());
        checkpoint::save(&state_path, &resume_point, meta.clone()).map_err(|e| e.to_string())?;
        rundir::crash_point("after-state", epoch + 1);
        checkpoint::save(&last, &params, meta).map_err(|e| e.to_string())?;
        rundir::crash_point("after-weights", epoch + 1);
        if best_path.exists() && watch.is_some() {
            saved_best = Some(best_path.clone());
        }
        logs.push(entry);
        if stop {
            let es = watch.map(|e| (e.on.as_str(), e.patience)).unwrap_or_default();
            let _ = writeln!(out, "early stop: `{}` has not improved for {} epochs", es.0, es.1);
            break;
        }
    }
    // Early stopping ends with the best weights (as Keras's
    // `restore_best_weights`); the resume point and `last` are rewritten
    // with them, so a resumed run goes on from the same weights.
    if let (Some(es), Some((_, at))) = (watch, progress.best) {
        if at + 1 < progress.epoch && best_path.exists() && !logs.is_empty() {
            let expected: Vec<(String, Vec<usize>)> = exec.parameters().into_iter().map(|(k, (s, _))| (k, s)).collect();
            let best = checkpoint::load(&best_path).map_err(|e| e.to_string())?;
            let best = checkpoint::validate(&best_path, best, &expected, &[]).map_err(|e| e.to_string())?;
            exec.set_parameters(&best);
            let mut meta = progress.metadata(&model.name);
            meta.extend(data_metadata(data));
            meta.insert("restored_best_epoch".into(), (at + 1).to_string());
            let mut resume_point = best.clone();
            resume_point.extend(exec.state());
            checkpoint::save(&state_path, &resume_point, meta.clone()).map_err(|e| e.to_string())?;
            checkpoint::save(&last, &best, meta).map_err(|e| e.to_string())?;
            let _ = writeln!(out, "early stopping: restored the weights of epoch {} (the best `{}`)", at + 1, es.on);
        }
    }
    let optimizer_steps = step - stage_start_step + progress.optimizer_base;
    Ok(Outcome { step, optimizer_steps, epochs: logs, losses, last, best: saved_best, log: log_path })
}

/// The metrics a model declares, as the trainer reports them: the accuracy
/// (whatever its name) in `*_accuracy`, every other declared metric
/// (precision, recall, F1 with their averages) under `val_NAME` and
/// `test_NAME`, computed from the split's confusion matrix.
struct MetricNames {
    /// The accuracy metric's declared name.
    accuracy: Option<String>,
    declared: Vec<(String, Metric)>,
}

impl MetricNames {
    fn of(model: &ModelInfo) -> MetricNames {
        let mut accuracy = None;
        let mut declared = Vec::new();
        for (name, n) in &model.metrics {
            if let CheckOp::Metric { metric } = &model.nodes[*n].op {
                match metric {
                    Metric::Accuracy => accuracy = accuracy.or(Some(name.clone())),
                    m => declared.push((name.clone(), m.clone())),
                }
            }
        }
        MetricNames { accuracy, declared }
    }

    /// What early stopping may watch in a run with these splits.
    fn watchable(&self, val: bool, test: bool) -> Vec<String> {
        let mut can = vec!["loss".to_string()];
        if let Some(a) = &self.accuracy {
            can.extend(["accuracy".to_string(), a.clone()]);
        }
        for (split, on) in [("val", val), ("test", test)] {
            if !on {
                continue;
            }
            can.push(format!("{split}_loss"));
            if let Some(a) = &self.accuracy {
                can.extend([format!("{split}_accuracy"), format!("{split}_{a}")]);
            }
            can.extend(self.declared.iter().map(|(n, _)| format!("{split}_{n}")));
        }
        can.dedup();
        can
    }

    fn watched(&self, e: &EpochLog, on: &str) -> f64 {
        let acc = self.accuracy.as_deref();
        let is_acc = |name: &str| name == "accuracy" || Some(name) == acc;
        let v = match on.split_once('_') {
            _ if on == "loss" => Some(e.train_loss),
            _ if is_acc(on) => e.train_accuracy,
            Some(("val", "loss")) => e.val_loss,
            Some(("test", "loss")) => e.test_loss,
            Some(("val", m)) if is_acc(m) => e.val_accuracy,
            Some(("test", m)) if is_acc(m) => e.test_accuracy,
            _ => e.metrics.get(on).copied(),
        };
        v.unwrap_or(f64::NAN)
    }
}

fn metric_value(c: &Confusion, m: &Metric) -> f64 {
    match m {
        Metric::Accuracy => c.accuracy(),
        Metric::Precision { average } => c.precision(*average),
        Metric::Recall { average } => c.recall(*average),
        Metric::F1 { average } => c.f1(*average),
    }
}

fn epoch_line(e: &EpochLog, epochs: u64) -> String {
    let pct = |a: Option<f64>| a.map(|a| format!(" acc {:.2}%", 100.0 * a)).unwrap_or_default();
    let bits = |b: Option<f64>| b.map(|b| format!(" ({b:.3} bpc)")).unwrap_or_default();
    let mut s =
        format!("epoch {}/{epochs}  loss {:.4}{}{}", e.epoch, e.train_loss, bits(e.train_bpc), pct(e.train_accuracy));
    if let Some(l) = e.val_loss {
        s.push_str(&format!("  val loss {l:.4}{}{}", bits(e.val_bpc), pct(e.val_accuracy)));
    }
    if let Some(l) = e.test_loss {
        s.push_str(&format!("  test loss {l:.4}{}{}", bits(e.test_bpc), pct(e.test_accuracy)));
    }
    if let Some(p) = e.test_prf.or(e.val_prf) {
        s.push_str(&format!("  F1 {:.2}%", 100.0 * p.f1));
    }
    s.push_str(&format!("  lr {:.3e}  {:.0} samples/s  {:.1} s", e.lr, e.samples_per_second, e.seconds));
    s
}

/// Whether `model`'s loss, read in base 2, is bits per character: a plain
/// cross-entropy (no label smoothing, no other terms) on a `text` source.
pub fn bits_per_character(model: &ModelInfo, info: &TrainInfo) -> bool {
    use modelc_compiler::check::layers::Loss;
    matches!(info.data, Some(DataSource::Text { .. }))
        && model.loss.is_some_and(|l| {
            matches!(model.nodes[l].op, CheckOp::Loss { loss: Loss::CrossEntropy { label_smoothing } } if label_smoothing == 0.0)
        })
}

/// The default output folder of a run: `runs/MODEL`.
pub fn default_out(model: &str) -> PathBuf {
    Path::new("runs").join(model)
}
