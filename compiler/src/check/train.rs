//! Checks `train` and `finetune` blocks: settings, data sources, optimizers,
//! schedules, early stopping, and finetuning stages with their frozen sets.

use std::collections::{BTreeMap, BTreeSet};

use modelc_grammar::ast::{self, Arg, DurationUnit, ExprKind, Setting, Span};
use serde::Serialize;

use super::args::{self, bind, opt, req, Bound, Default as D, Param, Ty, Value};
use super::model::ModelInfo;
use super::types::DType;
use crate::diag::{closest, did_you_mean, CheckError, Error, Located};
use crate::source::FileId;

/// `5 epochs` or `100 steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Duration {
    Epochs(u64),
    Steps(u64),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum DataSource {
    /// MNIST IDX files in `path`, keeping the digits `classes.0..=classes.1`
    /// relabelled from 0.
    Mnist {
        path: String,
        classes: (u64, u64),
    },
    Csv {
        path: String,
        label: String,
        header: bool,
        scale: String,
        /// A held-out test file with the same columns.
        test: Option<String>,
    },
    Xor,
    Spirals {
        samples: u64,
        classes: u64,
        noise: f64,
    },
    /// Character-level text: windows of `context` symbols with next-symbol
    /// targets; `vocab` is `chars` (newline and printable ASCII, 96
    /// classes) or `bytes` (256); `test` is the fraction of windows held out
    /// as the test set.
    Text {
        path: String,
        context: u64,
        vocab: String,
        test: f64,
    },
}

impl DataSource {
    pub fn name(&self) -> &'static str {
        match self {
            DataSource::Mnist { .. } => "mnist",
            DataSource::Csv { .. } => "csv",
            DataSource::Xor => "xor",
            DataSource::Spirals { .. } => "spirals",
            DataSource::Text { .. } => "text",
        }
    }
}

/// The vocabulary of the `text` source: newline and the 95 printable ASCII
/// characters.
pub const TEXT_CLASSES: u64 = 96;

/// The number of symbols of a `text` source's `vocab`.
pub fn text_classes(vocab: &str) -> u64 {
    if vocab == "bytes" {
        256
    } else {
        TEXT_CLASSES
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "optimizer", rename_all = "snake_case")]
pub enum Optimizer {
    Sgd { lr: f64, momentum: f64, nesterov: bool },
    Adam { lr: f64, beta1: f64, beta2: f64, eps: f64 },
    Adamw { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
    Rmsprop { lr: f64, alpha: f64, eps: f64, momentum: f64 },
}

impl Optimizer {
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adam { .. } => "adam",
            Optimizer::Adamw { .. } => "adamw",
            Optimizer::Rmsprop { .. } => "rmsprop",
        }
    }

    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::Adamw { lr, .. }
            | Optimizer::Rmsprop { lr, .. } => *lr,
        }
    }

    /// Optimizer state tensors kept per parameter tensor.
    pub fn state_per_param(&self) -> u64 {
        match self {
            Optimizer::Sgd { momentum, .. } => u64::from(*momentum > 0.0),
            Optimizer::Adam { .. } | Optimizer::Adamw { .. } => 2,
            Optimizer::Rmsprop { momentum, .. } => 1 + u64::from(*momentum > 0.0),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "schedule", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Step {
        every: Duration,
        gamma: f64,
    },
    Exponential {
        gamma: f64,
    },
    Cosine {
        warmup: Duration,
        min_lr: f64,
    },
    /// `lr · gamma^k` after the k-th milestone (MultiStepLR).
    MultiStep {
        at: Vec<Duration>,
        gamma: f64,
    },
    /// Linear from `lr/warmup` up to `lr` over the warm-up, then linear down
    /// to `lr · end` at the last step (LinearLR after a warm-up).
    Linear {
        warmup: Duration,
        end: f64,
    },
    /// One cycle (OneCycleLR, cosine): from `lr/div` up to `lr` over the
    /// first `pct` of the steps, then down to `lr/(div·final_div)`.
    OneCycle {
        pct: f64,
        div: f64,
        final_div: f64,
    },
    /// Multiplies the rate by `factor` when `on` has not improved by more
    /// than `min_delta` for `patience` epochs (ReduceLROnPlateau), never
    /// below `min_lr`. Decided after each epoch's evaluation.
    Plateau {
        on: String,
        factor: f64,
        patience: u64,
        min_delta: f64,
        min_lr: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EarlyStop {
    pub patience: u64,
    pub on: String,
    pub min_delta: f64,
}

/// How one stage of training runs: a train block is one stage in which
/// every parameter trains; each stage of a finetune is one, its own
/// settings over the finetune's (data, seed, validation and early stopping
/// are the finetune's). The trainer, the step builder and `summary` take
/// only this.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainInfo {
    pub model: String,
    /// The stage's name in a finetune; `None` for a train block.
    pub stage: Option<String>,
    /// The parameters that train; `None`: all of them (a train block).
    pub trainable: Option<BTreeSet<String>>,
    /// Multipliers of the learning rate by parameter name (absent: 1).
    pub lr_scale: BTreeMap<String, f64>,
    pub data: Option<DataSource>,
    pub batch: u64,
    pub epochs: u64,
    pub optimizer: Option<Optimizer>,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub clip_grad_norm: Option<f64>,
    /// `precision` ([`PRECISIONS`]); `None`: f32.
    pub precision: Option<String>,
    pub early_stop: Option<EarlyStop>,
    pub seed: u64,
    pub validation: f64,
    #[serde(skip)]
    pub file: FileId,
    #[serde(skip)]
    pub span: Span,
}

impl TrainInfo {
    /// Whether parameter `name` trains in this stage.
    pub fn trains(&self, name: &str) -> bool {
        self.trainable.as_ref().is_none_or(|t| t.contains(name))
    }

    /// The stage's name (empty for a train block).
    pub fn stage_name(&self) -> &str {
        self.stage.as_deref().unwrap_or("")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneInfo {
    pub name: String,
    pub base: String,
    pub weights: String,
    /// The base model with the finetune's targets and replacements applied.
    pub model: ModelInfo,
    /// Layer paths whose parameters start fresh rather than from `weights`.
    pub replaced: Vec<String>,
    /// `map "FROM" -> "TO"` renames of the weights file's tensors, in order.
    pub renames: Vec<(String, String)>,
    /// The LoRA adapters' parameters (`fc1.lora_A`, …): fresh, not loaded.
    pub lora: Vec<String>,
    pub settings: TrainInfo,
    /// The stages in order, each complete (see [`TrainInfo`]).
    pub stages: Vec<TrainInfo>,
    pub file: FileId,
    pub span: Span,
}

// ---------------------------------------------------------------- signatures

type Table = &'static [(&'static str, &'static [Param])];

const OPTIMIZERS: Table = &[
    (
        "sgd",
        &[
            req("lr", Ty::POSITIVE),
            opt("momentum", Ty::UNIT_OPEN, D::Float(0.0)),
            opt("nesterov", Ty::Bool, D::Bool(false)),
        ],
    ),
    (
        "adam",
        &[
            opt("lr", Ty::POSITIVE, D::Float(1e-3)),
            opt("beta1", Ty::UNIT_OPEN, D::Float(0.9)),
            opt("beta2", Ty::UNIT_OPEN, D::Float(0.999)),
            opt("eps", Ty::POSITIVE, D::Float(1e-8)),
        ],
    ),
    (
        "adamw",
        &[
            opt("lr", Ty::POSITIVE, D::Float(1e-3)),
            opt("beta1", Ty::UNIT_OPEN, D::Float(0.9)),
            opt("beta2", Ty::UNIT_OPEN, D::Float(0.999)),
            opt("eps", Ty::POSITIVE, D::Float(1e-8)),
            opt("weight_decay", Ty::NON_NEGATIVE, D::Float(0.01)),
        ],
    ),
    (
        "rmsprop",
        &[
            opt("lr", Ty::POSITIVE, D::Float(1e-2)),
            opt("alpha", Ty::UNIT_OPEN, D::Float(0.99)),
            opt("eps", Ty::POSITIVE, D::Float(1e-8)),
            opt("momentum", Ty::UNIT_OPEN, D::Float(0.0)),
        ],
    ),
];

const SCHEDULES: Table = &[
    ("constant", &[]),
    ("step", &[req("every", Ty::Duration), opt("gamma", Ty::UNIT_HALF_OPEN, D::Float(0.1))]),
    ("exponential", &[req("gamma", Ty::UNIT_HALF_OPEN)]),
    ("cosine", &[opt("warmup", Ty::Duration, D::Absent), opt("min_lr", Ty::NON_NEGATIVE, D::Float(0.0))]),
    ("multistep", &[req("at", Ty::DurationList), opt("gamma", Ty::UNIT_HALF_OPEN, D::Float(0.1))]),
    (
        "linear",
        &[
            opt("warmup", Ty::Duration, D::Absent),
            opt("end", Ty::Float { min: 0.0, max: 1.0, open_min: false, open_max: false }, D::Float(0.0)),
        ],
    ),
    (
        "onecycle",
        &[
            opt("pct", Ty::FRACTION, D::Float(0.3)),
            opt("div", Ty::Float { min: 1.0, max: f64::INFINITY, open_min: false, open_max: true }, D::Float(25.0)),
            opt(
                "final_div",
                Ty::Float { min: 1.0, max: f64::INFINITY, open_min: false, open_max: true },
                D::Float(1e4),
            ),
        ],
    ),
    (
        "plateau",
        &[
            opt("on", Ty::Name, D::Name("val_loss")),
            opt("factor", Ty::FRACTION, D::Float(0.1)),
            opt("patience", Ty::NON_NEGATIVE_INT, D::Int(10)),
            opt("min_delta", Ty::NON_NEGATIVE, D::Float(0.0)),
            opt("min_lr", Ty::NON_NEGATIVE, D::Float(0.0)),
        ],
    ),
];

const SCALES: &[&str] = &["none", "standard", "minmax"];

const SOURCES: Table = &[
    ("mnist", &[req("path", Ty::Str), opt("classes", Ty::Range, D::Absent)]),
    (
        "csv",
        &[
            req("path", Ty::Str),
            req("label", Ty::Str),
            opt("header", Ty::Bool, D::Bool(true)),
            opt("scale", Ty::Choice(SCALES), D::Name("none")),
            opt("test", Ty::Str, D::Absent),
        ],
    ),
    ("xor", &[]),
    (
        "spirals",
        &[
            opt("samples", Ty::Int { min: 4, max: 10_000_000 }, D::Int(1000)),
            opt("classes", Ty::Int { min: 2, max: 64 }, D::Int(3)),
            opt("noise", Ty::NON_NEGATIVE, D::Float(0.1)),
        ],
    ),
    (
        "text",
        &[
            req("path", Ty::Str),
            req("context", Ty::POSITIVE_INT),
            opt("vocab", Ty::Choice(VOCABS), D::Name("chars")),
            opt("test", Ty::FRACTION, D::Float(0.1)),
        ],
    ),
];

/// The `text` source's vocabularies: `chars` (newline and printable ASCII,
/// 96 symbols) and `bytes` (256).
const VOCABS: &[&str] = &["chars", "bytes"];

/// What a step's matrix products multiply in: `f32`, or `bf16` (inputs
/// rounded to bfloat16 on a GPU's tensor cores, f32 accumulation and
/// outputs; everything else stays f32). The CPU runs f32 either way.
pub const PRECISIONS: &[&str] = &["f32", "bf16"];

/// Where a setting may appear.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Train,
    Finetune,
    Stage,
}

impl Block {
    fn describe(self) -> &'static str {
        match self {
            Block::Train => "a train block",
            Block::Finetune => "a finetune block",
            Block::Stage => "a stage",
        }
    }
}

/// Every setting key, its single-value signature (or `None` when it takes a
/// list handled by hand), and where it may appear.
const SETTINGS: &[(&str, Option<Param>, &[Block])] = &[
    ("data", Some(req("source", Ty::Call)), &[Block::Train, Block::Finetune]),
    ("batch", Some(req("size", Ty::POSITIVE_INT)), &[Block::Train, Block::Finetune, Block::Stage]),
    ("epochs", Some(req("count", Ty::POSITIVE_INT)), &[Block::Train, Block::Stage]),
    ("optimizer", Some(req("optimizer", Ty::Call)), &[Block::Train, Block::Finetune, Block::Stage]),
    ("schedule", Some(req("schedule", Ty::Call)), &[Block::Train, Block::Finetune, Block::Stage]),
    ("weight_decay", Some(req("value", Ty::NON_NEGATIVE)), &[Block::Train, Block::Finetune, Block::Stage]),
    ("clip_grad_norm", Some(req("max_norm", Ty::POSITIVE)), &[Block::Train, Block::Finetune, Block::Stage]),
    ("early_stop", None, &[Block::Train, Block::Finetune]),
    ("seed", Some(req("value", Ty::NON_NEGATIVE_INT)), &[Block::Train, Block::Finetune]),
    ("validation", Some(req("fraction", Ty::FRACTION)), &[Block::Train, Block::Finetune]),
    ("precision", Some(req("type", Ty::Choice(PRECISIONS))), &[Block::Train, Block::Finetune, Block::Stage]),
    ("weights", Some(req("path", Ty::Str)), &[Block::Finetune]),
    ("lora", None, &[Block::Finetune]),
    ("train", None, &[Block::Stage]),
    ("freeze", None, &[Block::Stage]),
    ("unfreeze", None, &[Block::Stage]),
    ("lr_scale", None, &[Block::Stage]),
];

/// The settings a run may override (in a run file, with `--set` or a flag)
/// and their types: the spec's own rule where the spec has the setting, so
/// that one rule holds everywhere. `limit` and `test_limit` exist only for
/// runs; `data` and `out` are paths.
pub fn run_setting(key: &str) -> Option<Ty> {
    match key {
        "limit" | "test_limit" => Some(Ty::POSITIVE_INT),
        "data" | "out" => Some(Ty::Str),
        "epochs" | "batch" | "seed" => SETTINGS.iter().find(|s| s.0 == key).and_then(|s| s.1).map(|p| p.ty),
        _ => None,
    }
}

/// The keys [`run_setting`] knows, in the order `--help` lists them.
pub const RUN_SETTINGS: &[&str] = &["epochs", "batch", "seed", "limit", "test_limit", "data", "out"];

const LORA: &[Param] = &[req("rank", Ty::POSITIVE_INT), opt("alpha", Ty::POSITIVE, D::Float(1.0))];

const EARLY_STOP: &[Param] = &[
    req("patience", Ty::POSITIVE_INT),
    opt("on", Ty::Name, D::Name("val_loss")),
    opt("min_delta", Ty::NON_NEGATIVE, D::Float(0.0)),
];

pub struct SettingsChecker<'a> {
    pub file: FileId,
    pub errors: &'a mut Vec<Located>,
}

/// Settings read from one block, before defaults.
#[derive(Default)]
struct Raw<'s> {
    seen: BTreeMap<String, Span>,
    items: Vec<(&'s ast::Ident, &'s [Arg], Span)>,
    stages: Vec<&'s ast::Stage>,
    broken: BTreeSet<String>,
}

impl<'a> SettingsChecker<'a> {
    fn err(&mut self, e: CheckError) {
        self.errors.push(Located { file: self.file, error: Error::Check(e) });
    }

    /// Sorts a block's settings into known keys, reporting unknown, misplaced
    /// and duplicate ones.
    fn collect<'s>(&mut self, settings: &'s [Setting], block: Block) -> Raw<'s> {
        let mut raw = Raw::default();
        for s in settings {
            match s {
                Setting::Item { key, args, span } => {
                    let Some((_, _, places)) = SETTINGS.iter().find(|(k, _, _)| *k == key.name) else {
                        let allowed: Vec<&str> =
                            SETTINGS.iter().filter(|(_, _, p)| p.contains(&block)).map(|(k, _, _)| *k).collect();
                        if let Some(near) = closest(&key.name, allowed.iter().copied()) {
                            raw.broken.insert(near.to_string());
                        }
                        let help = did_you_mean(&key.name, allowed.iter().copied())
                            .or_else(|| Some(format!("{} takes {}", block.describe(), args::one_of(&allowed))));
                        self.err(CheckError::Unknown {
                            kind: "setting",
                            name: key.name.clone(),
                            span: key.span.into(),
                            help,
                        });
                        continue;
                    };
                    if !places.contains(&block) {
                        let help = match (key.name.as_str(), block) {
                            ("train" | "freeze" | "unfreeze" | "lr_scale", _) => {
                                "freezing and per-layer learning rates are set in the stages of a finetune block"
                                    .to_string()
                            }
                            ("epochs", Block::Finetune) => {
                                "a finetune gives epochs in each stage: `stage head { epochs 2 … }`".to_string()
                            }
                            ("weights", _) => "pretrained weights are loaded by a finetune block".to_string(),
                            (k, Block::Stage) => {
                                format!("`{k}` applies to the whole finetune; move it out of the stage")
                            }
                            (k, _) => format!("`{k}` is not a setting of {}", block.describe()),
                        };
                        self.err(CheckError::SettingNotAllowed {
                            key: key.name.clone(),
                            block: block.describe().into(),
                            span: key.span.into(),
                            help: Some(help),
                        });
                        continue;
                    }
                    if let Some(first) = raw.seen.get(&key.name) {
                        let first = *first;
                        self.err(CheckError::DuplicateSetting {
                            key: key.name.clone(),
                            span: key.span.into(),
                            first: first.into(),
                        });
                        continue;
                    }
                    raw.seen.insert(key.name.clone(), key.span);
                    raw.items.push((key, args, *span));
                }
                Setting::Stage(st) => {
                    if block == Block::Finetune {
                        raw.stages.push(st);
                    } else {
                        self.err(CheckError::SettingNotAllowed {
                            key: "stage".into(),
                            block: block.describe().into(),
                            span: st.name.span.into(),
                            help: Some(if block == Block::Stage {
                                "stages do not nest".into()
                            } else {
                                "stages belong in finetune blocks".into()
                            }),
                        });
                    }
                }
                Setting::Error { first_word, .. } => {
                    if let Some(w) = first_word {
                        raw.broken.insert(w.name.clone());
                    }
                }
            }
        }
        raw
    }

    /// Binds a single-value setting.
    fn single(&mut self, key: &ast::Ident, args: &[Arg], span: Span) -> Option<(Value, Span, Bound)> {
        let param = SETTINGS.iter().find(|(k, _, _)| *k == key.name).and_then(|(_, p, _)| *p)?;
        let refs: Vec<&Arg> = args.iter().collect();
        let mut errs = Vec::new();
        let b = bind(&format!("`{}`", key.name), span, &[param], &refs, &mut errs);
        let failed = !errs.is_empty() || b.incomplete;
        for e in errs {
            self.err(e);
        }
        if failed {
            return None;
        }
        let v = b.get(param.name)?.clone();
        let sp = b.span_of(param.name);
        Some((v, sp, b))
    }

    /// Resolves `name(args…)` against a table: optimizers, schedules, sources.
    fn call(&mut self, kind: &'static str, arg: &Arg, table: Table) -> Option<(&'static str, Bound)> {
        let (callee, args, span) = match &arg.value.kind {
            ExprKind::Call(c) => (&c.callee, c.args.iter().collect::<Vec<_>>(), c.span),
            ExprKind::Name(n) => (n, Vec::new(), n.span),
            _ => return None,
        };
        let Some((name, params)) = table.iter().find(|(n, _)| *n == callee.name) else {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            let help = did_you_mean(&callee.name, names.iter().copied())
                .or_else(|| Some(format!("the {kind}s are {}", args::one_of(&names))));
            self.err(CheckError::Unknown { kind, name: callee.name.clone(), span: callee.span.into(), help });
            return None;
        };
        let mut errs = Vec::new();
        let b = bind(name, span, params, &args, &mut errs);
        let failed = !errs.is_empty() || b.incomplete;
        for e in errs {
            self.err(e);
        }
        (!failed).then_some((name, b))
    }

    fn optimizer(&mut self, arg: &Arg) -> Option<Optimizer> {
        let (name, b) = self.call("optimizer", arg, OPTIMIZERS)?;
        let opt = match name {
            "sgd" => Optimizer::Sgd { lr: b.float("lr"), momentum: b.float("momentum"), nesterov: b.bool("nesterov") },
            "adam" => Optimizer::Adam {
                lr: b.float("lr"),
                beta1: b.float("beta1"),
                beta2: b.float("beta2"),
                eps: b.float("eps"),
            },
            "adamw" => Optimizer::Adamw {
                lr: b.float("lr"),
                beta1: b.float("beta1"),
                beta2: b.float("beta2"),
                eps: b.float("eps"),
                weight_decay: b.float("weight_decay"),
            },
            _ => Optimizer::Rmsprop {
                lr: b.float("lr"),
                alpha: b.float("alpha"),
                eps: b.float("eps"),
                momentum: b.float("momentum"),
            },
        };
        if let Optimizer::Sgd { momentum, nesterov: true, .. } = opt {
            if momentum == 0.0 {
                self.err(CheckError::Conflict {
                    message: "Nesterov momentum needs a momentum above 0".into(),
                    span: b.span_of("nesterov").into(),
                    label: "nesterov without momentum".into(),
                    other: None,
                    help: Some("add e.g. `momentum: 0.9`".into()),
                });
                return None;
            }
        }
        Some(opt)
    }

    fn schedule(&mut self, arg: &Arg) -> Option<Schedule> {
        let (name, b) = self.call("schedule", arg, SCHEDULES)?;
        let dur = |b: &Bound, k: &str| match b.get(k) {
            Some(Value::Duration(v, DurationUnit::Steps)) => Duration::Steps(*v as u64),
            Some(Value::Duration(v, DurationUnit::Epochs)) => Duration::Epochs(*v as u64),
            _ => Duration::Steps(0),
        };
        Some(match name {
            "constant" => Schedule::Constant,
            "step" => {
                let every = dur(&b, "every");
                if matches!(every, Duration::Epochs(0) | Duration::Steps(0)) {
                    self.err(CheckError::OutOfRange {
                        callee: "step".into(),
                        name: "every".into(),
                        value: "0".into(),
                        range: "at least 1".into(),
                        span: b.span_of("every").into(),
                        help: None,
                    });
                    return None;
                }
                Schedule::Step { every, gamma: b.float("gamma") }
            }
            "exponential" => Schedule::Exponential { gamma: b.float("gamma") },
            "multistep" => {
                let at: Vec<Duration> = match b.get("at") {
                    Some(Value::List(items)) => items
                        .iter()
                        .filter_map(|v| match v {
                            Value::Duration(x, DurationUnit::Steps) => Some(Duration::Steps(*x as u64)),
                            Value::Duration(x, DurationUnit::Epochs) => Some(Duration::Epochs(*x as u64)),
                            _ => None,
                        })
                        .collect(),
                    _ => vec![],
                };
                Schedule::MultiStep { at, gamma: b.float("gamma") }
            }
            "linear" => Schedule::Linear { warmup: dur(&b, "warmup"), end: b.float("end") },
            "onecycle" => {
                Schedule::OneCycle { pct: b.float("pct"), div: b.float("div"), final_div: b.float("final_div") }
            }
            "plateau" => Schedule::Plateau {
                on: b.name("on").unwrap_or("val_loss").to_string(),
                factor: b.float("factor"),
                patience: b.uint("patience"),
                min_delta: b.float("min_delta"),
                min_lr: b.float("min_lr"),
            },
            _ => Schedule::Cosine { warmup: dur(&b, "warmup"), min_lr: b.float("min_lr") },
        })
    }

    fn data(&mut self, arg: &Arg) -> Option<(DataSource, Span)> {
        let (name, b) = self.call("data source", arg, SOURCES)?;
        let src = match name {
            "mnist" => {
                let classes = match b.get("classes") {
                    Some(Value::Range(a, z)) => (*a, *z),
                    _ => (0, 9),
                };
                if classes.1 > 9 || classes.0 == classes.1 {
                    self.err(CheckError::OutOfRange {
                        callee: "mnist".into(),
                        name: "classes".into(),
                        value: format!("{}..{}", classes.0, classes.1),
                        range: "a range of at least two digits within 0..9".into(),
                        span: b.span_of("classes").into(),
                        help: None,
                    });
                    return None;
                }
                DataSource::Mnist { path: b.name("path").unwrap_or_default().to_string(), classes }
            }
            "csv" => DataSource::Csv {
                path: b.name("path").unwrap_or_default().into(),
                label: b.name("label").unwrap_or_default().into(),
                header: b.bool("header"),
                scale: b.name("scale").unwrap_or("none").into(),
                test: b.name("test").map(String::from),
            },
            "xor" => DataSource::Xor,
            "spirals" => {
                DataSource::Spirals { samples: b.uint("samples"), classes: b.uint("classes"), noise: b.float("noise") }
            }
            _ => DataSource::Text {
                path: b.name("path").unwrap_or_default().into(),
                context: b.uint("context"),
                vocab: b.name("vocab").unwrap_or("chars").into(),
                test: b.float("test"),
            },
        };
        Some((src, arg.span))
    }

    fn early_stop(&mut self, args: &[Arg], span: Span) -> Option<EarlyStop> {
        let refs: Vec<&Arg> = args.iter().collect();
        let mut errs = Vec::new();
        let b = bind("early_stop", span, EARLY_STOP, &refs, &mut errs);
        let failed = !errs.is_empty() || b.incomplete;
        for e in errs {
            self.err(e);
        }
        if failed {
            return None;
        }
        Some(EarlyStop {
            patience: b.uint("patience"),
            on: b.name("on").unwrap_or("val_loss").into(),
            min_delta: b.float("min_delta"),
        })
    }

    /// Reads the shared settings of a train or finetune block.
    fn common(
        &mut self,
        raw: &Raw,
        model: &str,
        file: FileId,
        span: Span,
    ) -> (TrainInfo, BTreeMap<&'static str, Span>) {
        let mut info = TrainInfo {
            model: model.to_string(),
            stage: None,
            trainable: None,
            lr_scale: BTreeMap::new(),
            data: None,
            batch: 0,
            epochs: 0,
            optimizer: None,
            schedule: Schedule::Constant,
            weight_decay: 0.0,
            clip_grad_norm: None,
            precision: None,
            early_stop: None,
            seed: 0,
            validation: 0.0,
            file,
            span,
        };
        let mut spans = BTreeMap::new();
        for (key, args, sp) in &raw.items {
            let first = || args.first();
            match key.name.as_str() {
                "data" | "optimizer" | "schedule" if self.single(key, args, *sp).is_none() => {}
                "data" => {
                    if let Some((d, dsp)) = first().and_then(|a| self.data(a)) {
                        info.data = Some(d);
                        spans.insert("data", dsp);
                    }
                }
                "optimizer" => {
                    info.optimizer = first().and_then(|a| self.optimizer(a));
                    spans.insert("optimizer", *sp);
                }
                "schedule" => {
                    if let Some(s) = first().and_then(|a| self.schedule(a)) {
                        info.schedule = s;
                    }
                }
                "early_stop" => {
                    info.early_stop = self.early_stop(args, *sp);
                    spans.insert("early_stop", *sp);
                }
                "precision" => {
                    if let Some((Value::Name(n) | Value::Str(n), vsp, _)) = self.single(key, args, *sp) {
                        info.precision = Some(n);
                        spans.insert("precision", vsp);
                    }
                }
                "batch" | "epochs" | "seed" | "weight_decay" | "clip_grad_norm" | "validation" | "weights" => {
                    let Some((v, vsp, _)) = self.single(key, args, *sp) else {
                        continue;
                    };
                    let f = v.as_f64().unwrap_or(0.0);
                    match key.name.as_str() {
                        "batch" => info.batch = f as u64,
                        "epochs" => info.epochs = f as u64,
                        "seed" => info.seed = f as u64,
                        "weight_decay" => info.weight_decay = f,
                        "clip_grad_norm" => info.clip_grad_norm = Some(f),
                        "validation" => info.validation = f,
                        _ => {}
                    }
                    let k: &'static str =
                        SETTINGS.iter().find(|(k, _, _)| *k == key.name).map(|(k, _, _)| *k).unwrap_or("");
                    spans.insert(k, vsp);
                }
                _ => {}
            }
        }
        if let (Some(Optimizer::Adamw { .. }), Some(wd)) = (&info.optimizer, spans.get("weight_decay")) {
            let other = spans.get("optimizer").copied();
            self.err(CheckError::Conflict {
                message: "weight decay is given twice: adamw has its own `weight_decay`".into(),
                span: (*wd).into(),
                label: "decay applied a second time".into(),
                other: other.map(Into::into),
                help: Some("set it once, as `adamw(weight_decay: …)`".into()),
            });
        }
        (info, spans)
    }

    fn require(&mut self, raw: &Raw, key: &'static str, block: String, span: Span, help: &str) {
        if !raw.seen.contains_key(key) && !raw.broken.contains(key) {
            self.err(CheckError::MissingSetting { block, key, span: span.into(), help: Some(help.to_string()) });
        }
    }

    /// Checks a `train` block against its model.
    pub fn train(&mut self, t: &ast::Train, model: Option<&ModelInfo>) -> TrainInfo {
        let raw = self.collect(&t.settings, Block::Train);
        let (info, spans) = self.common(&raw, &t.model.name, self.file, t.span);
        let block = format!("train block for `{}`", t.model.name);
        self.require(&raw, "data", block.clone(), t.model.span, "add e.g. `data mnist(\"data/mnist\")`");
        self.require(&raw, "batch", block.clone(), t.model.span, "add e.g. `batch 64`");
        self.require(&raw, "epochs", block.clone(), t.model.span, "add e.g. `epochs 5`");
        self.require(&raw, "optimizer", block, t.model.span, "add e.g. `optimizer adam(lr: 1e-3)`");
        if let Some(m) = model.filter(|m| !m.has_errors) {
            if let (Some(d), Some(sp)) = (&info.data, spans.get("data")) {
                self.data_fits(d, *sp, m);
            }
            self.early_stop_fits(&info, &spans, m);
        }
        info
    }

    fn early_stop_fits(&mut self, info: &TrainInfo, spans: &BTreeMap<&'static str, Span>, m: &ModelInfo) {
        let Some(es) = &info.early_stop else { return };
        let sp = spans.get("early_stop").copied().unwrap_or_default();
        let mut names = vec!["loss".to_string(), "val_loss".to_string()];
        for (n, _) in &m.metrics {
            names.push(n.clone());
            names.push(format!("val_{n}"));
        }
        if !names.contains(&es.on) {
            let help = closest(&es.on, names.iter().map(String::as_str))
                .map(|c| format!("did you mean `{c}`?"))
                .or_else(|| Some(format!("the model reports {}", names.join(", "))));
            self.err(CheckError::Unknown { kind: "quantity to watch", name: es.on.clone(), span: sp.into(), help });
            return;
        }
        if es.on.starts_with("val_") && info.validation == 0.0 {
            self.err(CheckError::Conflict {
                message: format!("early stopping on `{}` needs a validation split", es.on),
                span: sp.into(),
                label: "watches validation data".into(),
                other: None,
                help: Some("add e.g. `validation 0.1` to hold out 10% of the training data".into()),
            });
        }
    }

    /// Does the data source provide what the model declares?
    fn data_fits(&mut self, d: &DataSource, sp: Span, m: &ModelInfo) {
        let mismatch = |this: &mut Self, reason: String, decl: Option<Span>, help: Option<String>| {
            this.err(CheckError::DataMismatch {
                source_name: d.name().into(),
                model: m.name.clone(),
                reason,
                span: sp.into(),
                decl: decl.filter(|_| m.file == this.file).map(Into::into),
                help,
            });
        };
        if m.inputs.len() != 1 || m.targets.len() != 1 {
            let reason = format!(
                "the model has {} input(s) and {} target(s), the data provides one of each",
                m.inputs.len(),
                m.targets.len()
            );
            mismatch(self, reason, None, None);
            return;
        }
        let input = &m.nodes[m.inputs[0]];
        let target = &m.nodes[m.targets[0]];
        let (it, tt) = (&input.ty, &target.ty);
        let classes = match tt.dtype {
            DType::Class { classes } => Some(classes),
            _ => None,
        };
        let per_token = matches!(target.op, super::model::Op::Target { per_token: true, .. });
        match d {
            DataSource::Mnist { classes: (a, z), .. } => {
                if it.dtype != DType::F32 || it.shape.sample_elements() != 784 {
                    mismatch(
                        self,
                        format!("mnist gives 28×28 images, but the input is {it}"),
                        Some(input.span),
                        Some("declare the input as f32[784], f32[28, 28] or f32[1, 28, 28]".into()),
                    );
                    return;
                }
                let n = z - a + 1;
                if classes != Some(n) || per_token {
                    let reason =
                        format!("mnist with digits {a}..{z} gives {n} classes, but the target is {}", type_text(tt));
                    mismatch(self, reason, Some(target.span), Some(format!("declare the target as class[{n}]")));
                }
            }
            DataSource::Csv { .. } => {
                if it.dtype != DType::F32 || it.shape.rank() != 2 {
                    mismatch(
                        self,
                        format!("csv rows are vectors of numbers, but the input is {it}"),
                        Some(input.span),
                        Some("declare the input as f32[features]".into()),
                    );
                }
            }
            DataSource::Xor => {
                if it.dtype != DType::F32 || it.shape.sample_dims() != [2] {
                    mismatch(
                        self,
                        format!("xor gives pairs of numbers, but the input is {it}"),
                        Some(input.span),
                        Some("declare the input as f32[2]".into()),
                    );
                } else if !(classes == Some(2) || (classes.is_none() && tt.shape.sample_dims() == [1])) {
                    mismatch(
                        self,
                        format!("xor gives one 0/1 label, but the target is {}", type_text(tt)),
                        Some(target.span),
                        Some("declare the target as f32[1] or class[2]".into()),
                    );
                }
            }
            DataSource::Spirals { classes: k, .. } => {
                if it.dtype != DType::F32 || it.shape.sample_dims() != [2] {
                    mismatch(
                        self,
                        format!("spirals gives 2-D points, but the input is {it}"),
                        Some(input.span),
                        Some("declare the input as f32[2]".into()),
                    );
                } else if classes != Some(*k) {
                    mismatch(
                        self,
                        format!("spirals gives {k} classes, but the target is {}", type_text(tt)),
                        Some(target.span),
                        Some(format!("declare the target as class[{k}]")),
                    );
                }
            }
            DataSource::Text { context, vocab, .. } => {
                let k = text_classes(vocab);
                if it.dtype != DType::I32 || it.shape.sample_dims() != [*context] {
                    mismatch(
                        self,
                        format!("text gives windows of {context} characters, but the input is {it}"),
                        Some(input.span),
                        Some(format!("declare the input as i32[{context}]")),
                    );
                } else if classes != Some(k) || !per_token {
                    mismatch(
                        self,
                        format!(
                            "text (vocab {vocab}) predicts each next symbol among {k}, but the target is {}",
                            type_text(tt)
                        ),
                        Some(target.span),
                        Some(format!("declare the target as class[{k}] per token")),
                    );
                }
            }
        }
    }

    /// Checks a finetune block; `model` is the base model with the finetune's
    /// overrides applied.
    pub fn finetune(&mut self, f: &ast::Finetune, mut model: ModelInfo, replaced: Vec<String>) -> FinetuneInfo {
        let settings: Vec<Setting> = f
            .body
            .iter()
            .filter_map(|s| match s {
                ast::FinetuneStmt::Setting(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let raw = self.collect(&settings, Block::Finetune);
        let (info, spans) = self.common(&raw, &f.base.name, self.file, f.span);
        let block = format!("finetune `{}`", f.name.name);
        self.require(&raw, "weights", block.clone(), f.name.span, "add e.g. `weights \"runs/base/best.safetensors\"`");
        self.require(&raw, "data", block.clone(), f.name.span, "add e.g. `data mnist(\"data/mnist\")`");
        self.require(&raw, "batch", block.clone(), f.name.span, "add e.g. `batch 64`");
        if !model.has_errors {
            if let (Some(d), Some(sp)) = (&info.data, spans.get("data")) {
                self.data_fits(d, *sp, &model);
            }
            self.early_stop_fits(&info, &spans, &model);
        }
        let weights = raw
            .items
            .iter()
            .find(|(k, _, _)| k.name == "weights")
            .and_then(|(_, a, _)| a.first())
            .and_then(|a| match &a.value.kind {
                ExprKind::Str(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();

        if raw.stages.is_empty() && !raw.broken.contains("stage") {
            self.err(CheckError::MissingSetting {
                block: block.clone(),
                key: "stage",
                span: f.name.span.into(),
                help: Some("add one, e.g. `stage head { epochs 2; train logits }`".into()),
            });
        }
        let (lora_layers, lora) = match raw.items.iter().find(|(k, _, _)| k.name == "lora") {
            Some((k, args, _)) => self.lora(k, args, &mut model),
            None => (Vec::new(), Vec::new()),
        };
        let mut stages = Vec::new();
        let mut trainable: BTreeSet<String> = model.params.iter().map(|p| p.name.clone()).collect();
        let mut stage_names: BTreeMap<String, Span> = BTreeMap::new();
        for st in &raw.stages {
            if let Some(first) = stage_names.get(&st.name.name) {
                let first = *first;
                self.err(CheckError::Duplicate {
                    what: "stage",
                    name: st.name.name.clone(),
                    span: st.name.span.into(),
                    first: Some(first.into()),
                });
                continue;
            }
            stage_names.insert(st.name.name.clone(), st.name.span);
            if let Some(mut s) = self.stage(st, &model, &info, &mut trainable) {
                // A layer with adapters trains through them: its own weights
                // stay as loaded.
                s.trainable.get_or_insert_default().retain(|p| {
                    lora.contains(p) || !model.params.iter().any(|q| q.name == *p && lora_layers.contains(&q.layer))
                });
                stages.push(s);
            }
        }
        let mut renames = Vec::new();
        for stmt in &f.body {
            if let ast::FinetuneStmt::Map { from, to, span } = stmt {
                let stars = |s: &str| s.matches('*').count();
                if stars(from) > 1 || stars(from) != stars(to) {
                    self.err(CheckError::BadMap { from: from.clone(), to: to.clone(), span: (*span).into() });
                    continue;
                }
                renames.push((from.clone(), to.clone()));
            }
        }
        FinetuneInfo {
            name: f.name.name.clone(),
            base: f.base.name.clone(),
            weights,
            model,
            replaced,
            renames,
            lora,
            settings: info,
            stages,
            file: self.file,
            span: f.span,
        }
    }

    /// `lora LAYER, …, rank: R, alpha: A`: adapters on dense layers. Returns
    /// the adapted layers and the adapters' parameter names.
    fn lora(&mut self, key: &ast::Ident, args: &[Arg], model: &mut ModelInfo) -> (Vec<String>, Vec<String>) {
        let (named, layers): (Vec<&Arg>, Vec<&Arg>) = args.iter().partition(|a| a.name.is_some());
        let mut errs = Vec::new();
        let b = bind("lora", key.span, LORA, &named, &mut errs);
        let failed = !errs.is_empty() || b.incomplete;
        for e in errs {
            self.err(e);
        }
        let Some(sel) = self.select(key, &layers.into_iter().cloned().collect::<Vec<_>>(), model, "adapt") else {
            return (vec![], vec![]);
        };
        if failed {
            return (vec![], vec![]);
        }
        let l = super::layers::Lora { rank: b.uint("rank"), alpha: b.float("alpha") };
        // Named layers must be adaptable; inside a named group (`blocks`)
        // the dense and attention layers are adapted and the rest skipped.
        let named: BTreeMap<&str, Span> = args
            .iter()
            .filter(|a| a.name.is_none())
            .filter_map(|a| match &a.value.kind {
                ExprKind::Name(n) => Some((n.name.as_str(), n.span)),
                _ => None,
            })
            .collect();
        let mut candidates: Vec<String> = Vec::new();
        for p in &model.params {
            if sel.contains(&p.name) && !candidates.contains(&p.layer) {
                candidates.push(p.layer.clone());
            }
        }
        let mut adapted: Vec<String> = Vec::new();
        let mut names = Vec::new();
        for layer in &candidates {
            let Some(node) = model.params.iter().find(|p| p.layer == *layer).map(|p| p.node) else { continue };
            // The first parameter of a dense or attention layer is its
            // [out, in] weight.
            let fan_in =
                model.params.iter().find(|p| p.layer == *layer).and_then(|p| p.shape.get(1).copied()).unwrap_or(0);
            let adapters: Vec<(&str, Vec<u64>)> = match &mut model.nodes[node].op {
                super::Op::Layer { layer: super::layers::Layer::Dense { units, lora, .. } } => {
                    *lora = Some(l);
                    vec![("lora_A", vec![l.rank, fan_in]), ("lora_B", vec![*units, l.rank])]
                }
                super::Op::Layer { layer: super::layers::Layer::Attention { lora, .. } } => {
                    *lora = Some(l);
                    let d = fan_in;
                    vec![
                        ("in_proj.lora_A", vec![l.rank, d]),
                        ("in_proj.lora_B", vec![3 * d, l.rank]),
                        ("out_proj.lora_A", vec![l.rank, d]),
                        ("out_proj.lora_B", vec![d, l.rank]),
                    ]
                }
                super::Op::Layer { layer: other } => {
                    if let Some(span) = named.get(layer.as_str()) {
                        self.err(CheckError::NotAdaptable {
                            name: layer.clone(),
                            kind: format!("a {} layer", other.name()),
                            span: (*span).into(),
                            help: Some(format!("adapt the dense layers after it, or train `{layer}` in a stage")),
                        });
                    }
                    continue;
                }
                _ => continue,
            };
            adapted.push(layer.clone());
            for (suffix, shape) in adapters {
                let name = format!("{layer}.{suffix}");
                let at = model.params.iter().rposition(|p| p.node == node).map_or(model.params.len(), |i| i + 1);
                model.params.insert(at, super::ParamInfo { name: name.clone(), shape, layer: layer.clone(), node });
                names.push(name);
            }
        }
        if adapted.is_empty() && !candidates.is_empty() && candidates.iter().all(|c| !named.contains_key(c.as_str())) {
            let groups: Vec<&str> = named.keys().copied().collect();
            self.err(CheckError::NotAdaptable {
                name: groups.join(", "),
                kind: "a group without either".into(),
                span: key.span.into(),
                help: Some(format!("it holds {}", candidates.join(", "))),
            });
        }
        (adapted, names)
    }

    fn stage(
        &mut self,
        st: &ast::Stage,
        model: &ModelInfo,
        parent: &TrainInfo,
        trainable: &mut BTreeSet<String>,
    ) -> Option<TrainInfo> {
        let raw = self.collect(&st.settings, Block::Stage);
        let (own, _) = self.common(&raw, &model.name, self.file, st.span);
        let block = format!("stage `{}`", st.name.name);
        self.require(&raw, "epochs", block.clone(), st.name.span, "add e.g. `epochs 2`");
        if parent.optimizer.is_none() && !raw.seen.contains_key("optimizer") && !raw.broken.contains("optimizer") {
            self.err(CheckError::MissingSetting {
                block,
                key: "optimizer",
                span: st.name.span.into(),
                help: Some("give one in the stage or once for the whole finetune".into()),
            });
        }
        let list = |key: &str| raw.items.iter().find(|(k, _, _)| k.name == key).map(|(k, a, _)| (*k, *a));
        if let (Some((t, _)), Some((other, _))) = (list("train"), list("freeze").or(list("unfreeze"))) {
            self.err(CheckError::Conflict {
                message: format!("`train` lists exactly what trains, so it cannot be combined with `{}`", other.name),
                span: other.span.into(),
                label: "changes the set again".into(),
                other: Some(t.span.into()),
                help: Some("use `train` alone, or `freeze`/`unfreeze` relative to the previous stage".into()),
            });
            return None;
        }
        if let Some((k, args)) = list("train") {
            let sel = self.select(k, args, model, "train")?;
            *trainable = sel;
        }
        if let Some((k, args)) = list("unfreeze") {
            let sel = self.select(k, args, model, "unfreeze")?;
            trainable.extend(sel);
        }
        if let Some((k, args)) = list("freeze") {
            let sel = self.select(k, args, model, "freeze")?;
            trainable.retain(|p| !sel.contains(p));
        }
        if trainable.is_empty() {
            self.err(CheckError::NothingTrainable { stage: st.name.name.clone(), span: st.name.span.into() });
            return None;
        }
        let mut lr_scale = BTreeMap::new();
        if let Some((k, args)) = list("lr_scale") {
            for a in args {
                let Some(name) = &a.name else {
                    self.err(CheckError::WrongType {
                        callee: "`lr_scale`".into(),
                        name: "layers".into(),
                        expected: "`layer: factor` pairs".into(),
                        found: "a value without a layer".into(),
                        span: a.span.into(),
                        help: Some("write e.g. `lr_scale conv2: 0.1`".into()),
                    });
                    continue;
                };
                let factor = match args::constant(&a.value).and_then(|v| v.as_f64()) {
                    Some(x) if x > 0.0 => x,
                    other => {
                        self.err(CheckError::OutOfRange {
                            callee: "`lr_scale`".into(),
                            name: name.name.clone(),
                            value: other.map(args::fmt_num).unwrap_or_else(|| "not a number".into()),
                            range: "greater than 0".into(),
                            span: a.value.span.into(),
                            help: None,
                        });
                        continue;
                    }
                };
                let Some(sel) = self.select(k, std::slice::from_ref(a), model, "scale") else {
                    continue;
                };
                if sel.iter().any(|p| !trainable.contains(p)) {
                    self.err(CheckError::Conflict {
                        message: format!(
                            "`{}` is frozen in stage `{}`, so its learning rate cannot be scaled",
                            name.name, st.name.name
                        ),
                        span: name.span.into(),
                        label: "frozen here".into(),
                        other: None,
                        help: Some(format!("unfreeze it first: `unfreeze {}`", name.name)),
                    });
                    continue;
                }
                for p in sel {
                    lr_scale.insert(p, factor);
                }
            }
        }
        Some(TrainInfo {
            stage: Some(st.name.name.clone()),
            epochs: own.epochs,
            trainable: Some(trainable.clone()),
            lr_scale,
            optimizer: own.optimizer.or_else(|| parent.optimizer.clone()),
            schedule: if raw.seen.contains_key("schedule") { own.schedule } else { parent.schedule.clone() },
            weight_decay: if raw.seen.contains_key("weight_decay") { own.weight_decay } else { parent.weight_decay },
            clip_grad_norm: own.clip_grad_norm.or(parent.clip_grad_norm),
            precision: own.precision.clone().or_else(|| parent.precision.clone()),
            batch: if raw.seen.contains_key("batch") { own.batch } else { parent.batch },
            ..parent.clone()
        })
    }

    /// The parameters named by a list of layer names (`fc1`, `blocks.0`, `blocks`).
    fn select(
        &mut self,
        key: &ast::Ident,
        args: &[Arg],
        model: &ModelInfo,
        action: &'static str,
    ) -> Option<BTreeSet<String>> {
        if args.is_empty() {
            self.err(CheckError::MissingArgument {
                callee: format!("`{}`", key.name),
                name: "layers".into(),
                span: key.span.into(),
                help: Some(format!("name the layers, e.g. `{} fc1, fc2`", key.name)),
            });
            return None;
        }
        let mut out = BTreeSet::new();
        let mut ok = true;
        for a in args {
            let id = match (&a.name, &a.value.kind) {
                (Some(n), _) => n,
                (None, ExprKind::Name(n)) => n,
                _ => {
                    self.err(CheckError::WrongType {
                        callee: format!("`{}`", key.name),
                        name: "layers".into(),
                        expected: "layer names".into(),
                        found: args::constant(&a.value).map(|v| v.describe()).unwrap_or_else(|| "an expression".into()),
                        span: a.span.into(),
                        help: None,
                    });
                    ok = false;
                    continue;
                }
            };
            let prefix = format!("{}.", id.name);
            let sel: Vec<&str> = model
                .params
                .iter()
                .filter(|p| p.layer == id.name || p.name.starts_with(&prefix))
                .map(|p| p.name.as_str())
                .collect();
            if sel.is_empty() {
                ok = false;
                if model.bindings.contains_key(&id.name) {
                    self.err(CheckError::NoParameters {
                        name: id.name.clone(),
                        action,
                        span: id.span.into(),
                        help: Some("only layers with weights (dense, conv2d, layernorm, embed, positions, attention) can be frozen or trained".into()),
                    });
                } else {
                    let mut layers: Vec<&str> = model.params.iter().map(|p| p.layer.as_str()).collect();
                    layers.dedup();
                    let help = did_you_mean(&id.name, layers.iter().copied())
                        .or_else(|| Some(format!("its layers with parameters are {}", args::one_of(&layers))));
                    self.err(CheckError::NoSuchLayer {
                        name: id.name.clone(),
                        model: model.name.clone(),
                        span: id.span.into(),
                        help,
                    });
                }
                continue;
            }
            out.extend(sel.into_iter().map(String::from));
        }
        ok.then_some(out)
    }
}

fn type_text(t: &super::types::TensorType) -> String {
    match t.dtype {
        DType::Class { classes } => format!("class[{classes}]"),
        d => {
            let dims: Vec<String> = t.shape.sample_dims().iter().map(u64::to_string).collect();
            format!("{d}[{}]", dims.join(", "))
        }
    }
}
