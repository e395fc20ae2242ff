//! The catalogue of built-in functions — layers, losses and metrics — with
//! their signatures, shape rules, parameters (PyTorch's names and layouts) and
//! forward FLOPs.
//!
//! FLOPs count a multiply and an add separately (a multiply-accumulate is 2),
//! bias adds and elementwise activations 1 per element, softmax 3 per element
//! (exp, sum, divide) and layernorm 5 per element. Gathers, reshapes and
//! concatenations count 0.

use serde::Serialize;

use super::args::{opt, req, Bound, Default as D, Param, Ty};
use super::types::{DType, Dim, Shape, TensorType};

/// Low-rank adapters of a dense layer (LoRA, Hu et al. 2021):
/// `y = x Wᵀ + b + (alpha / rank) · x Aᵀ Bᵀ`, with `B` starting at zero so
/// that the adapted layer starts as the pretrained one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Lora {
    pub rank: u64,
    pub alpha: f64,
}

/// A layer with its arguments resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Layer {
    /// `lora`: low-rank adapters added by a finetune (`lora` setting).
    Dense {
        units: u64,
        bias: bool,
        lora: Option<Lora>,
    },
    Conv2d {
        filters: u64,
        kernel: (u64, u64),
        stride: (u64, u64),
        padding: (u64, u64),
        bias: bool,
    },
    Maxpool {
        size: (u64, u64),
        stride: (u64, u64),
    },
    Avgpool {
        size: (u64, u64),
        stride: (u64, u64),
    },
    Flatten,
    Dropout {
        rate: f64,
    },
    Relu,
    Sigmoid,
    Tanh,
    Gelu,
    Softmax {
        axis: usize,
    },
    Layernorm {
        eps: f64,
    },
    Embed {
        vocab: u64,
        dim: u64,
    },
    Positions {
        length: u64,
        dim: u64,
    },
    /// `lora`: adapters on the in- and out-projections (`lora` setting).
    Attention {
        heads: u64,
        causal: bool,
        lora: Option<Lora>,
    },
    Concat {
        axis: usize,
    },
    Add,
}

impl Layer {
    pub fn name(&self) -> &'static str {
        match self {
            Layer::Dense { .. } => "dense",
            Layer::Conv2d { .. } => "conv2d",
            Layer::Maxpool { .. } => "maxpool",
            Layer::Avgpool { .. } => "avgpool",
            Layer::Flatten => "flatten",
            Layer::Dropout { .. } => "dropout",
            Layer::Relu => "relu",
            Layer::Sigmoid => "sigmoid",
            Layer::Tanh => "tanh",
            Layer::Gelu => "gelu",
            Layer::Softmax { .. } => "softmax",
            Layer::Layernorm { .. } => "layernorm",
            Layer::Embed { .. } => "embed",
            Layer::Positions { .. } => "positions",
            Layer::Attention { .. } => "attention",
            Layer::Concat { .. } => "concat",
            Layer::Add => "add",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "loss", rename_all = "snake_case")]
pub enum Loss {
    CrossEntropy { label_smoothing: f64 },
    BinaryCrossEntropy { from_logits: bool },
    Mse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Average {
    Macro,
    Micro,
    Weighted,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "metric", rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    Precision { average: Average },
    Recall { average: Average },
    F1 { average: Average },
}

impl Metric {
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Precision { .. } => "precision",
            Metric::Recall { .. } => "recall",
            Metric::F1 { .. } => "f1",
        }
    }
}

/// What kind of function a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Layer,
    Loss,
    Metric,
}

/// How many tensor inputs a function takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inputs {
    None,
    One,
    /// Prediction and target (losses, metrics).
    Two,
    /// Two or more.
    Many,
}

impl Inputs {
    pub fn describe(self) -> &'static str {
        match self {
            Inputs::None => "no tensor inputs",
            Inputs::One => "one tensor input",
            Inputs::Two => "two tensor inputs",
            Inputs::Many => "two or more tensor inputs",
        }
    }

    pub fn accepts(self, n: usize) -> bool {
        match self {
            Inputs::None => n == 0,
            Inputs::One => n == 1,
            Inputs::Two => n == 2,
            Inputs::Many => n >= 2,
        }
    }
}

pub struct Sig {
    pub name: &'static str,
    pub kind: Kind,
    pub inputs: Inputs,
    pub params: &'static [Param],
}

const AVERAGES: &[&str] = &["macro", "micro", "weighted"];

pub const SIGS: &[Sig] = &[
    Sig {
        name: "dense",
        kind: Kind::Layer,
        inputs: Inputs::One,
        params: &[req("units", Ty::POSITIVE_INT), opt("bias", Ty::Bool, D::Bool(true))],
    },
    Sig {
        name: "conv2d",
        kind: Kind::Layer,
        inputs: Inputs::One,
        params: &[
            req("filters", Ty::POSITIVE_INT),
            req("kernel", Ty::IntOrPair { min: 1 }),
            opt("stride", Ty::IntOrPair { min: 1 }, D::Int(1)),
            opt("padding", Ty::Padding, D::Int(0)),
            opt("bias", Ty::Bool, D::Bool(true)),
        ],
    },
    Sig {
        name: "maxpool",
        kind: Kind::Layer,
        inputs: Inputs::One,
        params: &[req("size", Ty::IntOrPair { min: 1 }), opt("stride", Ty::IntOrPair { min: 1 }, D::Absent)],
    },
    Sig {
        name: "avgpool",
        kind: Kind::Layer,
        inputs: Inputs::One,
        params: &[req("size", Ty::IntOrPair { min: 1 }), opt("stride", Ty::IntOrPair { min: 1 }, D::Absent)],
    },
    Sig { name: "flatten", kind: Kind::Layer, inputs: Inputs::One, params: &[] },
    Sig { name: "dropout", kind: Kind::Layer, inputs: Inputs::One, params: &[req("rate", Ty::UNIT_OPEN)] },
    Sig { name: "relu", kind: Kind::Layer, inputs: Inputs::One, params: &[] },
    Sig { name: "sigmoid", kind: Kind::Layer, inputs: Inputs::One, params: &[] },
    Sig { name: "tanh", kind: Kind::Layer, inputs: Inputs::One, params: &[] },
    Sig { name: "gelu", kind: Kind::Layer, inputs: Inputs::One, params: &[] },
    Sig {
        name: "softmax",
        kind: Kind::Layer,
        inputs: Inputs::One,
        params: &[opt("axis", Ty::Int { min: -8, max: 8 }, D::Int(-1))],
    },
    Sig {
        name: "layernorm",
        kind: Kind::Layer,
        inputs: Inputs::One,
        params: &[opt("eps", Ty::POSITIVE, D::Float(1e-5))],
    },
    Sig {
        name: "embed",
        kind: Kind::Layer,
        inputs: Inputs::One,
        params: &[req("vocab", Ty::POSITIVE_INT), req("dim", Ty::POSITIVE_INT)],
    },
    Sig {
        name: "positions",
        kind: Kind::Layer,
        inputs: Inputs::None,
        params: &[req("length", Ty::POSITIVE_INT), req("dim", Ty::POSITIVE_INT)],
    },
    Sig {
        name: "attention",
        kind: Kind::Layer,
        inputs: Inputs::One,
        params: &[req("heads", Ty::POSITIVE_INT), opt("causal", Ty::Bool, D::Bool(false))],
    },
    Sig {
        name: "concat",
        kind: Kind::Layer,
        inputs: Inputs::Many,
        params: &[opt("axis", Ty::Int { min: -8, max: 8 }, D::Int(-1))],
    },
    Sig { name: "add", kind: Kind::Layer, inputs: Inputs::Many, params: &[] },
    Sig {
        name: "cross_entropy",
        kind: Kind::Loss,
        inputs: Inputs::Two,
        params: &[opt("label_smoothing", Ty::UNIT_OPEN, D::Float(0.0))],
    },
    Sig {
        name: "binary_cross_entropy",
        kind: Kind::Loss,
        inputs: Inputs::Two,
        params: &[opt("from_logits", Ty::Bool, D::Bool(false))],
    },
    Sig { name: "mse", kind: Kind::Loss, inputs: Inputs::Two, params: &[] },
    Sig { name: "accuracy", kind: Kind::Metric, inputs: Inputs::Two, params: &[] },
    Sig {
        name: "precision",
        kind: Kind::Metric,
        inputs: Inputs::Two,
        params: &[opt("average", Ty::Choice(AVERAGES), D::Name("macro"))],
    },
    Sig {
        name: "recall",
        kind: Kind::Metric,
        inputs: Inputs::Two,
        params: &[opt("average", Ty::Choice(AVERAGES), D::Name("macro"))],
    },
    Sig {
        name: "f1",
        kind: Kind::Metric,
        inputs: Inputs::Two,
        params: &[opt("average", Ty::Choice(AVERAGES), D::Name("macro"))],
    },
];

pub fn sig(name: &str) -> Option<&'static Sig> {
    SIGS.iter().find(|s| s.name == name)
}

pub fn names(kind: Kind) -> impl Iterator<Item = &'static str> {
    SIGS.iter().filter(move |s| s.kind == kind).map(|s| s.name)
}

/// The layer `name` with bound arguments (the arguments already checked).
pub fn layer(name: &str, a: &Bound, input_rank: usize) -> Option<Layer> {
    let axis = |a: &Bound| {
        let ax = a.int("axis");
        if ax < 0 {
            (input_rank as i64 + ax).max(0) as usize
        } else {
            ax as usize
        }
    };
    let padding = |a: &Bound| match a.get("padding") {
        Some(super::args::Value::Name(n)) if n == "same" => {
            let (kh, kw) = a.pair("kernel");
            ((kh.saturating_sub(1)) / 2, (kw.saturating_sub(1)) / 2)
        }
        Some(super::args::Value::Name(_)) => (0, 0),
        _ => a.pair("padding"),
    };
    Some(match name {
        "dense" => Layer::Dense { units: a.uint("units"), bias: a.bool("bias"), lora: None },
        "conv2d" => Layer::Conv2d {
            filters: a.uint("filters"),
            kernel: a.pair("kernel"),
            stride: a.pair("stride"),
            padding: padding(a),
            bias: a.bool("bias"),
        },
        "maxpool" | "avgpool" => {
            let size = a.pair("size");
            let stride = if a.get("stride").is_some() { a.pair("stride") } else { size };
            if name == "maxpool" {
                Layer::Maxpool { size, stride }
            } else {
                Layer::Avgpool { size, stride }
            }
        }
        "flatten" => Layer::Flatten,
        "dropout" => Layer::Dropout { rate: a.float("rate") },
        "relu" => Layer::Relu,
        "sigmoid" => Layer::Sigmoid,
        "tanh" => Layer::Tanh,
        "gelu" => Layer::Gelu,
        "softmax" => Layer::Softmax { axis: axis(a) },
        "layernorm" => Layer::Layernorm { eps: a.float("eps") },
        "embed" => Layer::Embed { vocab: a.uint("vocab"), dim: a.uint("dim") },
        "positions" => Layer::Positions { length: a.uint("length"), dim: a.uint("dim") },
        "attention" => Layer::Attention { heads: a.uint("heads"), causal: a.bool("causal"), lora: None },
        "concat" => Layer::Concat { axis: axis(a) },
        "add" => Layer::Add,
        _ => return None,
    })
}

pub fn loss(name: &str, a: &Bound) -> Option<Loss> {
    Some(match name {
        "cross_entropy" => Loss::CrossEntropy { label_smoothing: a.float("label_smoothing") },
        "binary_cross_entropy" => Loss::BinaryCrossEntropy { from_logits: a.bool("from_logits") },
        "mse" => Loss::Mse,
        _ => return None,
    })
}

pub fn metric(name: &str, a: &Bound) -> Option<Metric> {
    let average = match a.name("average") {
        Some("micro") => Average::Micro,
        Some("weighted") => Average::Weighted,
        _ => Average::Macro,
    };
    Some(match name {
        "accuracy" => Metric::Accuracy,
        "precision" => Metric::Precision { average },
        "recall" => Metric::Recall { average },
        "f1" => Metric::F1 { average },
        _ => return None,
    })
}

/// Why a layer cannot take its input: what it expected and a help line.
pub struct ShapeError {
    pub expected: String,
    pub help: Option<String>,
    /// Which input is at fault (index into the inputs).
    pub input: usize,
    /// True when the fault is the dtype rather than the shape.
    pub dtype: bool,
}

fn err(expected: impl Into<String>, help: Option<String>) -> ShapeError {
    ShapeError { expected: expected.into(), help, input: 0, dtype: false }
}

/// The output type of `layer` applied to `inputs`, or why it cannot be.
pub fn infer(layer: &Layer, inputs: &[TensorType]) -> Result<TensorType, ShapeError> {
    let f32_out = |shape: Shape| Ok(TensorType::new(DType::F32, shape));
    // Every layer but embed computes on floats.
    if !matches!(layer, Layer::Embed { .. }) {
        if let Some(i) = inputs.iter().position(|t| t.dtype != DType::F32) {
            return Err(ShapeError {
                expected: "f32".into(),
                help: Some(if inputs[i].dtype == DType::I32 {
                    "integer token ids become vectors through `embed(tokens, vocab, dim: …)`".into()
                } else {
                    "class labels can only be used in losses and metrics".into()
                }),
                input: i,
                dtype: true,
            });
        }
    }
    let Some(x) = inputs.first() else {
        return match layer {
            Layer::Positions { length, dim } => f32_out(Shape(vec![Dim::Fixed(*length), Dim::Fixed(*dim)])),
            _ => Err(err("an input", None)),
        };
    };
    let s = &x.shape;
    let dims = &s.0;
    match layer {
        Layer::Dense { units, .. } => {
            if s.has_batch() && s.rank() >= 4 {
                return Err(err(
                    "[N, features] or [N, T, features]",
                    Some(format!("insert `|> flatten` before dense: it turns {s} into [N, {}]", s.sample_elements())),
                ));
            }
            if s.rank() < 1 || (s.has_batch() && s.rank() < 2) {
                return Err(err("[N, features]", None));
            }
            let mut out = dims.clone();
            *out.last_mut().unwrap_or(&mut Dim::Batch) = Dim::Fixed(*units);
            f32_out(Shape(out))
        }
        Layer::Conv2d { filters, kernel, stride, padding, .. } => {
            let (_, h, w) = image_dims(s).ok_or_else(|| image_error(s, "conv2d"))?;
            let oh = window_out(h, kernel.0, stride.0, padding.0);
            let ow = window_out(w, kernel.1, stride.1, padding.1);
            match (oh, ow) {
                (Some(oh), Some(ow)) => f32_out(Shape::batched(&[*filters, oh, ow])),
                _ => Err(err(
                    format!(
                        "an image of at least {}×{} (kernel {}×{}, padding {})",
                        kernel.0.saturating_sub(2 * padding.0),
                        kernel.1.saturating_sub(2 * padding.1),
                        kernel.0,
                        kernel.1,
                        padding.0
                    ),
                    Some(format!(
                        "the {h}×{w} input is smaller than the kernel; use a smaller kernel or `padding: same`"
                    )),
                )),
            }
        }
        Layer::Maxpool { size, stride } | Layer::Avgpool { size, stride } => {
            let name = layer.name();
            let (c, h, w) = image_dims(s).ok_or_else(|| image_error(s, name))?;
            match (window_out(h, size.0, stride.0, 0), window_out(w, size.1, stride.1, 0)) {
                (Some(oh), Some(ow)) => f32_out(Shape::batched(&[c, oh, ow])),
                _ => Err(err(
                    format!("an image of at least {}×{}", size.0, size.1),
                    Some(format!("the {h}×{w} input is smaller than the {}×{} window", size.0, size.1)),
                )),
            }
        }
        Layer::Flatten => {
            if !s.has_batch() || s.rank() < 2 {
                return Err(err("[N, …] with at least one dimension after the batch", None));
            }
            f32_out(Shape::batched(&[s.sample_elements()]))
        }
        Layer::Dropout { .. } | Layer::Relu | Layer::Sigmoid | Layer::Tanh | Layer::Gelu => f32_out(s.clone()),
        Layer::Softmax { axis } | Layer::Concat { axis } if *axis >= s.rank() => Err(err(
            format!("an axis below {} for this input", s.rank()),
            Some(format!("axis counts from 0 (the batch) to {}, or from -1 backwards", s.rank().saturating_sub(1))),
        )),
        Layer::Softmax { axis } | Layer::Concat { axis } if *axis == 0 && s.has_batch() => {
            Err(err("an axis other than the batch", Some("axis 0 is the batch; use -1 for the last dimension".into())))
        }
        Layer::Softmax { .. } => f32_out(s.clone()),
        Layer::Layernorm { .. } => {
            if s.rank() < 1 || (s.has_batch() && s.rank() < 2) {
                return Err(err("[N, …, features]", None));
            }
            f32_out(s.clone())
        }
        Layer::Embed { dim, .. } => {
            if x.dtype != DType::I32 {
                return Err(ShapeError {
                    expected: "i32".into(),
                    help: Some("embed looks up integer token ids; declare the input as i32[…]".into()),
                    input: 0,
                    dtype: true,
                });
            }
            let mut out = dims.clone();
            out.push(Dim::Fixed(*dim));
            f32_out(Shape(out))
        }
        Layer::Positions { .. } => {
            Err(err("no input", Some("positions(length, dim: …) takes no input; add it to an embedding".into())))
        }
        Layer::Attention { heads, .. } => {
            if !(s.has_batch() && s.rank() == 3) {
                return Err(err("[N, T, features]", Some("attention works on sequences: embed tokens first".into())));
            }
            let d = s.last().unwrap_or(0);
            if *heads == 0 || d % heads != 0 {
                let divisors: Vec<String> = (1..=d.min(64)).filter(|k| d % k == 0).map(|k| k.to_string()).collect();
                return Err(err(
                    format!("a feature size divisible by {heads} heads"),
                    Some(format!("{d} features split into {} heads", divisors.join(", "))),
                ));
            }
            f32_out(s.clone())
        }
        Layer::Concat { axis } => {
            let mut out = dims.clone();
            let mut total = 0;
            for (i, t) in inputs.iter().enumerate() {
                let ok = t.shape.rank() == s.rank()
                    && t.shape.0.iter().zip(dims).enumerate().all(|(k, (a, b))| k == *axis || a == b);
                if !ok {
                    return Err(ShapeError {
                        expected: format!("{s} in every dimension but axis {axis}"),
                        help: None,
                        input: i,
                        dtype: false,
                    });
                }
                if let Dim::Fixed(n) = t.shape.0[*axis] {
                    total += n;
                }
            }
            out[*axis] = Dim::Fixed(total);
            f32_out(Shape(out))
        }
        Layer::Add => {
            let mut out = s.clone();
            for (i, t) in inputs.iter().enumerate().skip(1) {
                out = out.broadcast(&t.shape).ok_or(ShapeError {
                    expected: format!("a shape that broadcasts with {out}"),
                    help: None,
                    input: i,
                    dtype: false,
                })?;
            }
            f32_out(out)
        }
    }
}

/// `[N, C, H, W]` → (C, H, W).
fn image_dims(s: &Shape) -> Option<(u64, u64, u64)> {
    match s.0.as_slice() {
        [Dim::Batch, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)] => Some((*c, *h, *w)),
        _ => None,
    }
}

fn image_error(s: &Shape, layer: &str) -> ShapeError {
    let help = match s.sample_dims().as_slice() {
        [n] => {
            let side = (*n as f64).sqrt().round() as u64;
            if side * side == *n {
                Some(format!(
                    "{layer} needs images: declare the input as f32[1, {side}, {side}] (channels, height, width)"
                ))
            } else {
                Some(format!("{layer} needs images of shape [N, channels, height, width]"))
            }
        }
        [h, w] => Some(format!("add a channel dimension: declare the input as f32[1, {h}, {w}]")),
        _ => None,
    };
    err("[N, channels, height, width]", help)
}

/// Output size of a sliding window, `None` when the window does not fit.
fn window_out(size: u64, k: u64, stride: u64, pad: u64) -> Option<u64> {
    let padded = size + 2 * pad;
    (padded >= k && stride > 0).then(|| (padded - k) / stride + 1)
}

/// Parameters of a layer given its input type: (suffix, shape), PyTorch names.
pub fn params(layer: &Layer, inputs: &[TensorType]) -> Vec<(&'static str, Vec<u64>)> {
    let last = inputs.first().and_then(|t| t.shape.last()).unwrap_or(0);
    match layer {
        Layer::Dense { units, bias, lora } => {
            let mut p = vec![("weight", vec![*units, last])];
            if *bias {
                p.push(("bias", vec![*units]));
            }
            if let Some(l) = lora {
                // As PEFT's: A [rank, in], B [out, rank].
                p.push(("lora_A", vec![l.rank, last]));
                p.push(("lora_B", vec![*units, l.rank]));
            }
            p
        }
        Layer::Conv2d { filters, kernel, bias, .. } => {
            let c = inputs.first().and_then(|t| image_dims(&t.shape)).map(|d| d.0).unwrap_or(0);
            let mut p = vec![("weight", vec![*filters, c, kernel.0, kernel.1])];
            if *bias {
                p.push(("bias", vec![*filters]));
            }
            p
        }
        Layer::Layernorm { .. } => vec![("weight", vec![last]), ("bias", vec![last])],
        Layer::Embed { vocab, dim } => vec![("weight", vec![*vocab, *dim])],
        Layer::Positions { length, dim } => vec![("weight", vec![*length, *dim])],
        Layer::Attention { lora, .. } => {
            let mut p = vec![
                ("in_proj_weight", vec![3 * last, last]),
                ("in_proj_bias", vec![3 * last]),
                ("out_proj.weight", vec![last, last]),
                ("out_proj.bias", vec![last]),
            ];
            if let Some(l) = lora {
                p.push(("in_proj.lora_A", vec![l.rank, last]));
                p.push(("in_proj.lora_B", vec![3 * last, l.rank]));
                p.push(("out_proj.lora_A", vec![l.rank, last]));
                p.push(("out_proj.lora_B", vec![last, l.rank]));
            }
            p
        }
        _ => Vec::new(),
    }
}

/// Forward FLOPs per sample (see the module doc for what counts). Saturates
/// rather than overflowing on absurd sizes.
pub fn flops(layer: &Layer, inputs: &[TensorType], out: &TensorType) -> u64 {
    use super::types::product as p;
    let out_elems = out.shape.sample_elements();
    let first = inputs.first();
    match layer {
        Layer::Dense { units, bias, lora } => {
            let fan_in = first.and_then(|t| t.shape.last()).unwrap_or(0);
            let rows = out_elems / (*units).max(1);
            let adapters = lora
                .as_ref()
                .map_or(0, |l| p(&[rows, 2, l.rank, fan_in + *units]).saturating_add(p(&[rows, 2, *units])));
            p(&[rows, 2, fan_in, *units])
                .saturating_add(if *bias { p(&[rows, *units]) } else { 0 })
                .saturating_add(adapters)
        }
        Layer::Conv2d { kernel, bias, .. } => {
            let c = first.and_then(|t| image_dims(&t.shape)).map(|d| d.0).unwrap_or(0);
            p(&[out_elems, 2, c, kernel.0, kernel.1]).saturating_add(if *bias { out_elems } else { 0 })
        }
        Layer::Maxpool { size, .. } | Layer::Avgpool { size, .. } => p(&[out_elems, size.0, size.1]),
        Layer::Dropout { .. } | Layer::Relu | Layer::Sigmoid | Layer::Tanh | Layer::Gelu => out_elems,
        Layer::Softmax { .. } => p(&[3, out_elems]),
        Layer::Layernorm { .. } => p(&[5, out_elems]),
        Layer::Add => p(&[out_elems, (inputs.len() as u64).saturating_sub(1)]),
        Layer::Attention { heads, lora, .. } => {
            let (t, d) = match first.map(|x| x.shape.sample_dims()).as_deref() {
                Some([t, d]) => (*t, *d),
                _ => (0, 0),
            };
            // Adapters: x·Aᵀ·Bᵀ on both projections (3d and d outputs), and their adds.
            let adapters = lora.as_ref().map_or(0, |l| p(&[2, t, l.rank, 6 * d]).saturating_add(p(&[4, t, d])));
            // q, k, v projections with bias; scores; softmax; mixing; output projection with bias.
            [
                p(&[2, t, d, 3, d]),
                p(&[3, t, d]),
                p(&[2, t, t, d]),
                p(&[3, *heads, t, t]),
                p(&[2, t, t, d]),
                p(&[2, t, d, d]),
                p(&[t, d]),
                adapters,
            ]
            .iter()
            .fold(0u64, |a, x| a.saturating_add(*x))
        }
        Layer::Flatten | Layer::Embed { .. } | Layer::Positions { .. } | Layer::Concat { .. } => 0,
    }
}
