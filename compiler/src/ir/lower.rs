//! Lowering: a checked model becomes a forward graph of primitives.
//!
//! Composite layers (dense, conv2d, pooling, softmax, layernorm, gelu,
//! attention, dropout) and the losses and metrics are written here in terms of
//! the primitives of [`super::Op`]. Graph inputs: the model's inputs (role
//! Data), its targets (Target), every parameter (Param, named as in PyTorch)
//! and, when training with dropout, the scalar `seed` (Scalar). Outputs:
//! `loss`, and per metric `metric.NAME` (accuracy, a fraction) or
//! `predictions.NAME` (class indices, for precision, recall and F1, which the
//! runtime aggregates over a whole epoch); in evaluation mode also
//! `predictions`, the predicted class of every sample.

use crate::check::layers::{Layer, Lora, Loss, Metric};
use crate::check::model::{ModelInfo, Op as CheckOp};
use crate::check::types::DType as CheckDType;

use super::{BinaryOp as B, DType, Dim, Graph, NodeId, Op, ReduceOp, Role, Shape, Ty, TypeError, UnaryOp as U};

/// Dropout is active only when training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

type R<T> = Result<T, TypeError>;

/// A graph under construction with shorthand for the common ops.
pub struct Builder {
    pub g: Graph,
}

impl Builder {
    pub fn op(&mut self, op: Op, inputs: &[NodeId]) -> R<NodeId> {
        self.g.add(op, inputs)
    }
    pub fn c(&mut self, v: f64) -> R<NodeId> {
        self.op(Op::Const { value: v }, &[])
    }
    pub fn un(&mut self, op: U, x: NodeId) -> R<NodeId> {
        self.op(Op::Unary { op }, &[x])
    }
    pub fn bin(&mut self, op: B, a: NodeId, b: NodeId) -> R<NodeId> {
        self.op(Op::Binary { op }, &[a, b])
    }
    pub fn add(&mut self, a: NodeId, b: NodeId) -> R<NodeId> {
        self.bin(B::Add, a, b)
    }
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> R<NodeId> {
        self.bin(B::Sub, a, b)
    }
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> R<NodeId> {
        self.bin(B::Mul, a, b)
    }
    pub fn div(&mut self, a: NodeId, b: NodeId) -> R<NodeId> {
        self.bin(B::Div, a, b)
    }
    pub fn scale(&mut self, x: NodeId, k: f64) -> R<NodeId> {
        let c = self.c(k)?;
        self.mul(x, c)
    }
    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: Vec<usize>) -> R<NodeId> {
        self.op(Op::Reduce { op, axes }, &[x])
    }
    pub fn reshape(&mut self, x: NodeId, shape: Shape) -> R<NodeId> {
        if self.g.ty(x).shape == shape {
            return Ok(x);
        }
        self.op(Op::Reshape { shape }, &[x])
    }
    pub fn permute(&mut self, x: NodeId, perm: Vec<usize>) -> R<NodeId> {
        self.op(Op::Permute { perm }, &[x])
    }
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> R<NodeId> {
        self.op(Op::MatMul { ta: false, tb: false }, &[a, b])
    }
    pub fn rank(&self, x: NodeId) -> usize {
        self.g.ty(x).shape.rank()
    }
    /// Sum of every element, as a scalar.
    pub fn sum_all(&mut self, x: NodeId) -> R<NodeId> {
        let axes = (0..self.rank(x)).collect();
        let s = self.reduce(ReduceOp::Sum, x, axes)?;
        self.reshape(s, Shape::scalar())
    }
    /// The number of elements of `x`, as a scalar node (the batch is known
    /// only at run time).
    pub fn count(&mut self, x: NodeId) -> R<NodeId> {
        let shape = self.g.ty(x).shape.clone();
        let fixed = shape.sample_elements() as f64;
        match shape.0.iter().position(|d| *d == Dim::Batch) {
            Some(axis) => {
                let n = self.op(Op::SizeOf { axis }, &[x])?;
                self.scale(n, fixed)
            }
            None => self.c(fixed),
        }
    }
    pub fn mean_all(&mut self, x: NodeId) -> R<NodeId> {
        let s = self.sum_all(x)?;
        let n = self.count(x)?;
        self.div(s, n)
    }
    /// x − max(x) along `axis` (the max gradient-free), its exponential, and
    /// the sum of that: the shared start of softmax and log-softmax.
    fn shifted_exp(&mut self, x: NodeId, axis: usize) -> R<(NodeId, NodeId, NodeId)> {
        let m = self.reduce(ReduceOp::Max, x, vec![axis])?;
        let m = self.op(Op::StopGradient, &[m])?;
        let z = self.sub(x, m)?;
        let e = self.un(U::Exp, z)?;
        let s = self.reduce(ReduceOp::Sum, e, vec![axis])?;
        Ok((z, e, s))
    }
    /// Softmax along `axis`.
    pub fn softmax(&mut self, x: NodeId, axis: usize) -> R<NodeId> {
        let (_, e, s) = self.shifted_exp(x, axis)?;
        self.div(e, s)
    }
    /// log(softmax(x)) along `axis`.
    pub fn log_softmax(&mut self, x: NodeId, axis: usize) -> R<NodeId> {
        let (z, _, s) = self.shifted_exp(x, axis)?;
        let lse = self.un(U::Log, s)?;
        self.sub(z, lse)
    }
}

/// The IR op of a model's `+ - *`.
pub(crate) fn binary_op(op: &str) -> B {
    match op {
        "+" => B::Add,
        "-" => B::Sub,
        _ => B::Mul,
    }
}

fn shape_of(dims: &[u64]) -> Shape {
    Shape(dims.iter().map(|d| Dim::Fixed(*d)).collect())
}

/// Lowers `model` to its forward graph.
pub fn forward(model: &ModelInfo, mode: Mode) -> R<Graph> {
    forward_map(model, mode).map(|(g, _)| g)
}

/// The forward graph and, per node of the checked model, the graph node
/// that computes it (`None`: a metric, or a loss's target-free part).
pub fn forward_map(model: &ModelInfo, mode: Mode) -> R<(Graph, Vec<Option<NodeId>>)> {
    let mut b = Builder { g: Graph::new() };
    let mut map: Vec<Option<NodeId>> = vec![None; model.nodes.len()];
    let mut seed: Option<NodeId> = None;
    let mut dropouts = 0u64;
    for (i, node) in model.nodes.iter().enumerate() {
        let ins: Vec<NodeId> = node.inputs.iter().filter_map(|k| map[*k]).collect();
        let out = match &node.op {
            CheckOp::Input { name } => {
                let dtype = if node.ty.dtype == CheckDType::I32 { DType::I32 } else { DType::F32 };
                b.g.input(name, Role::Data, Ty { dtype, shape: node.ty.shape.clone() })
            }
            CheckOp::Target { name, .. } => {
                let dtype = if matches!(node.ty.dtype, CheckDType::Class { .. }) { DType::I32 } else { DType::F32 };
                b.g.input(name, Role::Target, Ty { dtype, shape: node.ty.shape.clone() })
            }
            CheckOp::Const { value } => b.c(*value)?,
            CheckOp::Neg => b.un(U::Neg, ins[0])?,
            CheckOp::Binary { op } => b.bin(binary_op(op), ins[0], ins[1])?,
            CheckOp::Layer { layer } => {
                let params: Vec<NodeId> = model
                    .params
                    .iter()
                    .filter(|p| p.node == i)
                    .map(|p| b.g.input(&p.name, Role::Param, Ty::f32(shape_of(&p.shape))))
                    .collect();
                let out_shape = node.ty.shape.clone();
                let mut seed_for = |b: &mut Builder| -> NodeId {
                    *seed.get_or_insert_with(|| b.g.input("seed", Role::Scalar, Ty::scalar()))
                };
                let y = layer_op(&mut b, layer, &ins, &params, out_shape, mode, &mut seed_for, &mut dropouts)?;
                b.g.set_label(y, &node.path);
                y
            }
            CheckOp::Loss { loss } => lower_loss(&mut b, loss, ins[0], ins[1], model, node.inputs[1])?,
            CheckOp::Metric { .. } => continue,
        };
        map[i] = Some(out);
    }
    if let Some(l) = model.loss.and_then(|l| map[l]) {
        b.g.outputs.push(("loss".into(), l));
    }
    for (name, n) in &model.metrics {
        let node = &model.nodes[*n];
        let CheckOp::Metric { metric } = &node.op else { continue };
        let (Some(pred), Some(target)) = (map[node.inputs[0]], map[node.inputs[1]]) else { continue };
        let (key, out) = lower_metric(&mut b, metric, pred, target, name)?;
        b.g.outputs.push((key, out));
    }
    // Evaluation also gives the predicted class of every sample (of the
    // first cross-entropy loss), for confusion matrices and `modelc predict`.
    if mode == Mode::Eval {
        let ce = model.nodes.iter().find(|n| matches!(n.op, CheckOp::Loss { loss: Loss::CrossEntropy { .. } }));
        if let Some(node) = ce {
            if let (Some(pred), Some(target)) = (map[node.inputs[0]], map[node.inputs[1]]) {
                let axis = b.rank(pred) - 1;
                let am = b.op(Op::ArgMax { axis }, &[pred])?;
                let shape = b.g.ty(target).shape.clone();
                let am = b.reshape(am, shape)?;
                b.g.outputs.push(("predictions".into(), am));
            }
        }
    }
    Ok((b.g, map))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_op(
    b: &mut Builder,
    layer: &Layer,
    ins: &[NodeId],
    params: &[NodeId],
    out_shape: Shape,
    mode: Mode,
    seed: &mut dyn FnMut(&mut Builder) -> NodeId,
    dropouts: &mut u64,
) -> R<NodeId> {
    let x = ins.first().copied();
    let x0 = || x.expect("a layer with an input");
    Ok(match layer {
        Layer::Dense { bias, lora, .. } => {
            // y = x Wᵀ + b, with W [units, in] as in nn.Linear.
            let wt = b.permute(params[0], vec![1, 0])?;
            let y = b.matmul(x0(), wt)?;
            let y = if *bias { b.add(y, params[1])? } else { y };
            match lora {
                Some(l) => {
                    let k = usize::from(*bias);
                    adapt(b, x0(), y, l, params[1 + k], params[2 + k])?
                }
                None => y,
            }
        }
        Layer::Conv2d { filters, kernel, stride, padding, bias } => {
            let x = x0();
            let c = match b.g.ty(x).shape.0.get(1) {
                Some(Dim::Fixed(c)) => *c,
                _ => 0,
            };
            let cols = b.op(Op::Im2Col { kernel: *kernel, stride: *stride, padding: *padding }, &[x])?;
            let w = b.reshape(params[0], shape_of(&[*filters, c * kernel.0 * kernel.1]))?;
            let y = b.matmul(w, cols)?;
            // The bias is added in the output's own shape, so that it fuses
            // with what follows (a relu) into one loop.
            let y = b.reshape(y, out_shape)?;
            if *bias {
                let bias = b.reshape(params[1], shape_of(&[*filters, 1, 1]))?;
                b.add(y, bias)?
            } else {
                y
            }
        }
        Layer::Maxpool { size, stride } => b.op(Op::MaxPool { size: *size, stride: *stride }, &[x0()])?,
        Layer::Avgpool { size, stride } => {
            let x = x0();
            let c = match b.g.ty(x).shape.0.get(1) {
                Some(Dim::Fixed(c)) => *c,
                _ => 0,
            };
            let cols = b.op(Op::Im2Col { kernel: *size, stride: *stride, padding: (0, 0) }, &[x])?;
            let l = b.g.ty(cols).shape.last().unwrap_or(0);
            let window = size.0 * size.1;
            let grouped = b.reshape(cols, Shape::batched(&[c, window, l]))?;
            let s = b.reduce(ReduceOp::Sum, grouped, vec![2])?;
            let y = b.scale(s, 1.0 / window as f64)?;
            b.reshape(y, out_shape)?
        }
        Layer::Flatten => b.reshape(x0(), out_shape)?,
        Layer::Dropout { rate } => match mode {
            Mode::Eval => x0(),
            Mode::Train => {
                let s = seed(b);
                *dropouts += 1;
                let mask = b.op(Op::DropoutMask { rate: *rate, salt: *dropouts }, &[x0(), s])?;
                b.mul(x0(), mask)?
            }
        },
        Layer::Relu => {
            let zero = b.c(0.0)?;
            b.bin(B::Max, x0(), zero)?
        }
        Layer::Sigmoid => {
            let n = b.un(U::Neg, x0())?;
            let e = b.un(U::Exp, n)?;
            let one = b.c(1.0)?;
            let d = b.add(one, e)?;
            b.un(U::Recip, d)?
        }
        Layer::Tanh => b.un(U::Tanh, x0())?,
        Layer::Gelu => {
            // PyTorch's exact GELU: x/2 · (1 + erf(x/√2)).
            let x = x0();
            let s = b.scale(x, std::f64::consts::FRAC_1_SQRT_2)?;
            let e = b.un(U::Erf, s)?;
            let one = b.c(1.0)?;
            let e1 = b.add(one, e)?;
            let h = b.scale(x, 0.5)?;
            let y = b.mul(h, e1)?;
            if mode == Mode::Eval {
                y
            } else {
                // Training: the derivative Φ(x) + x·φ(x) computed beside y
                // from x, given to autodiff as one value (`with_grad`): the
                // gradient reads it alone, where autodiff of the composite
                // read ½·x, 1 + erf and the exp term, three tensors of the
                // layer's size written by the forward pass and read back.
                let phi = b.scale(e1, 0.5)?;
                let sq = b.mul(s, s)?;
                let ns = b.un(U::Neg, sq)?;
                let ex = b.un(U::Exp, ns)?;
                let xe = b.mul(x, ex)?;
                let pdf = b.scale(xe, 1.0 / (2.0 * std::f64::consts::PI).sqrt())?;
                let d = b.add(phi, pdf)?;
                b.op(Op::WithGrad, &[x, y, d])?
            }
        }
        Layer::Softmax { axis } => b.softmax(x0(), *axis)?,
        Layer::Layernorm { eps } => {
            let x = x0();
            let axis = b.rank(x) - 1;
            let d = b.g.ty(x).shape.last().unwrap_or(1) as f64;
            let s = b.reduce(ReduceOp::Sum, x, vec![axis])?;
            let mean = b.scale(s, 1.0 / d)?;
            let xc = b.sub(x, mean)?;
            let sq = b.mul(xc, xc)?;
            let ss = b.reduce(ReduceOp::Sum, sq, vec![axis])?;
            let var = b.scale(ss, 1.0 / d)?;
            let e = b.c(*eps)?;
            let ve = b.add(var, e)?;
            let sd = b.un(U::Sqrt, ve)?;
            let inv = b.un(U::Recip, sd)?;
            let n = b.mul(xc, inv)?;
            let w = b.mul(n, params[0])?;
            b.add(w, params[1])?
        }
        Layer::Embed { .. } => b.op(Op::Gather, &[params[0], x0()])?,
        Layer::Positions { .. } => params[0],
        Layer::Attention { heads, causal, lora } => attention(b, x0(), params, *heads, *causal, lora.as_ref())?,
        Layer::Concat { axis } => b.op(Op::Concat { axis: *axis }, ins)?,
        Layer::Add => {
            let mut acc = ins[0];
            for i in &ins[1..] {
                acc = b.add(acc, *i)?;
            }
            acc
        }
    })
}

/// A LoRA adapter's contribution added to a projection's output `y` of
/// input `x`: `y + (alpha / rank) · (x Aᵀ) Bᵀ`, two thin matmuls.
pub(crate) fn adapt(b: &mut Builder, x: NodeId, y: NodeId, l: &Lora, a: NodeId, bm: NodeId) -> R<NodeId> {
    let at = b.permute(a, vec![1, 0])?;
    let bt = b.permute(bm, vec![1, 0])?;
    let low = b.matmul(x, at)?;
    let up = b.matmul(low, bt)?;
    let up = b.scale(up, l.alpha / l.rank.max(1) as f64)?;
    b.add(y, up)
}

/// nn.MultiheadAttention (batch first, self-attention): one in-projection
/// split into q, k, v, scaled dot-product attention per head, out-projection.
/// With `lora`, both projections carry adapters (`p[4..8]`: in_proj A, B,
/// out_proj A, B).
fn attention(b: &mut Builder, x: NodeId, p: &[NodeId], heads: u64, causal: bool, lora: Option<&Lora>) -> R<NodeId> {
    let dims = b.g.ty(x).shape.sample_dims();
    let (t, d) = (dims[0], dims[1]);
    let dh = d / heads;
    let wt = b.permute(p[0], vec![1, 0])?;
    let qkv = b.matmul(x, wt)?;
    let qkv = b.add(qkv, p[1])?;
    let qkv = match lora {
        Some(l) => adapt(b, x, qkv, l, p[4], p[5])?,
        None => qkv,
    };
    let mut split = Vec::new();
    for k in 0..3 {
        let s = b.op(Op::Slice { axis: 2, start: k * d, end: (k + 1) * d }, &[qkv])?;
        let s = b.reshape(s, Shape::batched(&[t, heads, dh]))?;
        split.push(b.permute(s, vec![0, 2, 1, 3])?);
    }
    let kt = b.permute(split[1], vec![0, 1, 3, 2])?;
    let scores = b.matmul(split[0], kt)?;
    let mut scores = b.scale(scores, 1.0 / (dh as f64).sqrt())?;
    if causal {
        let mask = b.op(Op::CausalMask { t }, &[])?;
        scores = b.add(scores, mask)?;
    }
    let probs = b.softmax(scores, 3)?;
    let o = b.matmul(probs, split[2])?;
    let o = b.permute(o, vec![0, 2, 1, 3])?;
    let o = b.reshape(o, Shape::batched(&[t, d]))?;
    let ot = b.permute(p[2], vec![1, 0])?;
    let y = b.matmul(o, ot)?;
    let y = b.add(y, p[3])?;
    match lora {
        Some(l) => adapt(b, o, y, l, p[6], p[7]),
        None => Ok(y),
    }
}

fn lower_loss(
    b: &mut Builder,
    loss: &Loss,
    pred: NodeId,
    target: NodeId,
    model: &ModelInfo,
    target_node: usize,
) -> R<NodeId> {
    Ok(match loss {
        Loss::CrossEntropy { label_smoothing } => {
            let classes = match model.nodes[target_node].ty.dtype {
                CheckDType::Class { classes } => classes,
                _ => 0,
            };
            let axis = b.rank(pred) - 1;
            let logp = b.log_softmax(pred, axis)?;
            let mut oh = b.op(Op::OneHot { classes }, &[target])?;
            if *label_smoothing > 0.0 {
                oh = b.scale(oh, 1.0 - label_smoothing)?;
                let u = b.c(label_smoothing / classes as f64)?;
                oh = b.add(oh, u)?;
            }
            let picked = b.mul(oh, logp)?;
            let total = b.sum_all(picked)?;
            let n = b.count(target)?;
            let mean = b.div(total, n)?;
            b.un(U::Neg, mean)?
        }
        Loss::BinaryCrossEntropy { from_logits } => {
            let one = b.c(1.0)?;
            let per = if *from_logits {
                // max(x, 0) − x·y + log(1 + exp(−|x|))
                let zero = b.c(0.0)?;
                let relu = b.bin(B::Max, pred, zero)?;
                let xy = b.mul(pred, target)?;
                let neg = b.un(U::Neg, pred)?;
                let abs = b.bin(B::Max, pred, neg)?;
                let na = b.un(U::Neg, abs)?;
                let e = b.un(U::Exp, na)?;
                let l1 = b.add(one, e)?;
                let lg = b.un(U::Log, l1)?;
                let a = b.sub(relu, xy)?;
                b.add(a, lg)?
            } else {
                // −(y·log p + (1 − y)·log(1 − p)), logs clamped at −100 as in PyTorch.
                let floor = b.c(-100.0)?;
                let lp = b.un(U::Log, pred)?;
                let lp = b.bin(B::Max, lp, floor)?;
                let q = b.sub(one, pred)?;
                let lq = b.un(U::Log, q)?;
                let lq = b.bin(B::Max, lq, floor)?;
                let yq = b.sub(one, target)?;
                let a = b.mul(target, lp)?;
                let c = b.mul(yq, lq)?;
                let s = b.add(a, c)?;
                b.un(U::Neg, s)?
            };
            b.mean_all(per)?
        }
        Loss::Mse => {
            let d = b.sub(pred, target)?;
            let sq = b.mul(d, d)?;
            b.mean_all(sq)?
        }
    })
}

fn lower_metric(b: &mut Builder, metric: &Metric, pred: NodeId, target: NodeId, name: &str) -> R<(String, NodeId)> {
    let target_ty = b.g.ty(target).clone();
    if target_ty.dtype == DType::F32 {
        // Binary accuracy with threshold 0.5.
        let half = b.c(0.5)?;
        let p = b.bin(B::Greater, pred, half)?;
        let hit = b.bin(B::Equal, p, target)?;
        return Ok((format!("metric.{name}"), b.mean_all(hit)?));
    }
    let axis = b.rank(pred) - 1;
    let am = b.op(Op::ArgMax { axis }, &[pred])?;
    let am = b.reshape(am, target_ty.shape.clone())?;
    match metric {
        Metric::Accuracy => {
            let hit = b.bin(B::Equal, am, target)?;
            Ok((format!("metric.{name}"), b.mean_all(hit)?))
        }
        _ => Ok((format!("predictions.{name}"), am)),
    }
}
