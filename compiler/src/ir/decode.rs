//! Decoding: one position of a causal sequence model, with a key/value
//! cache, for `modelc sample`.
//!
//! [`decode`] lowers a model whose input is a window of `T` tokens
//! (`i32[T]`) to the graph of *one* new position: every per-position layer
//! (embed, dense, layernorm, activations, dropout as in evaluation, `+ - *`,
//! softmax and concat along features) runs on `[N, 1, …]`; `positions` picks
//! the row of the current position (a one-row table is that row everywhere);
//! each causal attention projects the new position's q, k and v, writes k
//! and v into its cache at the position and attends over the cache,
//! positions after the current one masked out. So a
//! new token costs one position's work (the attention reads the `T` cached
//! rows), not a whole window's.
//!
//! Inputs besides the model's token input (`[N, 1]`) and parameters:
//! `decode.onehot` `[T, 1]` (1 at the current position), `decode.keep`
//! `[T, 1]` (its complement), `decode.mask` `[T]` (0 up to the current
//! position, −1e9 after), and per attention layer `cache.PATH.k` and
//! `cache.PATH.v` `[N, T, d]` (role State). Outputs: `logits` `[N, 1, C]`
//! (the prediction the model's first cross-entropy loss reads) and
//! `new.cache.PATH.k` / `.v`, the caches with this position written, which
//! the CPU program copies back into its inputs after each run (its feedback
//! rule for `new.X` outputs).
//!
//! A model that mixes positions in any other way (a non-causal attention,
//! softmax or concat along time, flatten, pooling, convolutions) has no
//! incremental form: it is an error naming the layer.

use crate::check::layers::{Layer, Loss};
use crate::check::model::{ModelInfo, Op as CheckOp};
use crate::check::types::DType as CheckDType;

use super::lower::{layer_op, Builder, Mode};
use super::{DType, Dim, Graph, NodeId, Op, Role, Shape, Ty};

/// What a decode graph needs to know of its model.
#[derive(Clone, Debug)]
pub struct DecodeInfo {
    /// The window length `T`.
    pub context: u64,
    /// The classes of the next-token prediction.
    pub classes: u64,
    /// The token input's name.
    pub input: String,
    /// The checked model's node the next-token loss reads (the logits).
    pub prediction: usize,
    /// Every cache input: (name, [T, d]).
    pub caches: Vec<(String, u64)>,
}

fn fixed(dims: &[u64]) -> Shape {
    Shape(dims.iter().map(|d| Dim::Fixed(*d)).collect())
}

/// The shape of a `[N, T, …]` node at one position.
fn one_position(shape: &Shape) -> Shape {
    let mut s = shape.clone();
    if s.0.len() >= 2 && s.0[0] == Dim::Batch {
        s.0[1] = Dim::Fixed(1);
    }
    s
}

/// Lowers `model` to the graph of one new position (see the module docs).
pub fn decode(model: &ModelInfo) -> Result<(Graph, DecodeInfo), String> {
    let [input] = model.inputs[..] else {
        return Err(format!(
            "sampling needs a model with one token input; `{}` has {}",
            model.name,
            model.inputs.len()
        ));
    };
    let inode = &model.nodes[input];
    let CheckOp::Input { name: input_name } = &inode.op else { unreachable!("inputs are Input nodes") };
    let context = match (inode.ty.dtype, inode.ty.shape.sample_dims().as_slice()) {
        (CheckDType::I32, [t]) => *t,
        _ => {
            return Err(format!("sampling needs a window of tokens (i32[T]) as input; `{input_name}` is {}", inode.ty))
        }
    };
    let ce =
        model.nodes.iter().find(|n| matches!(n.op, CheckOp::Loss { loss: Loss::CrossEntropy { .. } })).ok_or_else(
            || format!("sampling needs a cross-entropy loss on the next token; `{}` has none", model.name),
        )?;
    let pred = ce.inputs[0];
    let classes = match model.nodes[pred].ty.shape.last() {
        Some(c) => c,
        None => return Err("the prediction has no class axis".into()),
    };
    let time = |n: &crate::check::model::Node| n.ty.shape.rank() >= 2 && n.ty.shape.0[0] == Dim::Batch;
    let err = |path: &str, what: &str| {
        format!("`{path}` ({what}) mixes positions: sampling token by token needs every layer to see only the current and earlier positions (causal attention, per-position layers)")
    };

    let mut b = Builder { g: Graph::new() };
    let tmax = context;
    let onehot = b.g.input("decode.onehot", Role::Scalar, Ty::f32(fixed(&[tmax, 1])));
    let keep = b.g.input("decode.keep", Role::Scalar, Ty::f32(fixed(&[tmax, 1])));
    let mask = b.g.input("decode.mask", Role::Scalar, Ty::f32(fixed(&[tmax])));
    let mut caches = Vec::new();
    let mut map: Vec<Option<NodeId>> = vec![None; model.nodes.len()];
    let mut dropouts = 0u64;
    for (i, node) in model.nodes.iter().enumerate() {
        let ins: Vec<NodeId> = node.inputs.iter().filter_map(|k| map[*k]).collect();
        if ins.len() != node.inputs.len() && !matches!(node.op, CheckOp::Loss { .. } | CheckOp::Metric { .. }) {
            // Fed by something decoding leaves out (a target): not needed.
            continue;
        }
        let out = match &node.op {
            CheckOp::Input { name } => {
                b.g.input(name, Role::Data, Ty { dtype: DType::I32, shape: Shape::batched(&[1]) })
            }
            CheckOp::Target { .. } | CheckOp::Loss { .. } | CheckOp::Metric { .. } => continue,
            CheckOp::Const { value } => b.c(*value).map_err(|e| e.to_string())?,
            CheckOp::Neg => b.un(super::UnaryOp::Neg, ins[0]).map_err(|e| e.to_string())?,
            CheckOp::Binary { op } => b.bin(super::lower::binary_op(op), ins[0], ins[1]).map_err(|e| e.to_string())?,
            CheckOp::Layer { layer } => {
                let params: Vec<NodeId> = model
                    .params
                    .iter()
                    .filter(|p| p.node == i)
                    .map(|p| b.g.input(&p.name, Role::Param, Ty::f32(fixed(&p.shape))))
                    .collect();
                let rank = node.ty.shape.rank();
                let y = match layer {
                    // One row for every position: the table itself.
                    Layer::Positions { length: 1, .. } => params[0],
                    Layer::Positions { length, .. } if *length == tmax => {
                        // Row `position` of the table: onehotᵀ · W, [1, d].
                        b.op(Op::MatMul { ta: true, tb: false }, &[onehot, params[0]]).map_err(|e| e.to_string())?
                    }
                    Layer::Positions { length, .. } => {
                        return Err(format!(
                            "`{}`: positions({length}, …) over a window of {tmax} tokens has no row per position to sample with",
                            node.path
                        ))
                    }
                    Layer::Attention { heads, causal: true, lora } => {
                        let d = node.ty.shape.last().unwrap_or(0);
                        let k = format!("cache.{}.k", node.path);
                        let v = format!("cache.{}.v", node.path);
                        let kc = b.g.input(&k, Role::State, Ty::f32(Shape::batched(&[tmax, d])));
                        let vc = b.g.input(&v, Role::State, Ty::f32(Shape::batched(&[tmax, d])));
                        let io = Cache { onehot, keep, mask, k: kc, v: vc };
                        let (y, nk, nv) = attention_step(&mut b, ins[0], &params, *heads, lora.as_ref(), io, tmax)
                            .map_err(|e| e.to_string())?;
                        b.g.outputs.push((format!("new.{k}"), nk));
                        b.g.outputs.push((format!("new.{v}"), nv));
                        caches.push((k, d));
                        caches.push((v, d));
                        y
                    }
                    Layer::Attention { .. } => return Err(err(&node.path, "attention without `causal`")),
                    Layer::Softmax { axis } | Layer::Concat { axis }
                        if time(node) && (*axis == 1 || *axis + 1 != rank) =>
                    {
                        return Err(err(&node.path, &format!("{} along axis {axis}", layer.name())))
                    }
                    Layer::Dense { .. }
                    | Layer::Layernorm { .. }
                    | Layer::Embed { .. }
                    | Layer::Relu
                    | Layer::Sigmoid
                    | Layer::Tanh
                    | Layer::Gelu
                    | Layer::Dropout { .. }
                    | Layer::Softmax { .. }
                    | Layer::Concat { .. }
                    | Layer::Add => {
                        let out_shape = one_position(&node.ty.shape);
                        let mut no_seed = |_: &mut Builder| -> NodeId { unreachable!("no dropout mask in evaluation") };
                        layer_op(&mut b, layer, &ins, &params, out_shape, Mode::Eval, &mut no_seed, &mut dropouts)
                            .map_err(|e| e.to_string())?
                    }
                    other => return Err(err(&node.path, other.name())),
                };
                b.g.set_label(y, &node.path);
                y
            }
        };
        map[i] = Some(out);
    }
    let logits = map[pred].ok_or("the prediction does not depend on the tokens alone")?;
    b.g.outputs.push(("logits".into(), logits));
    let info = DecodeInfo { context, classes, input: input_name.clone(), prediction: pred, caches };
    Ok((b.g, info))
}

/// The decode graph's per-step inputs and one layer's cache.
#[derive(Clone, Copy)]
struct Cache {
    onehot: NodeId,
    keep: NodeId,
    mask: NodeId,
    k: NodeId,
    v: NodeId,
}

/// nn.MultiheadAttention at one position over its cache: returns the
/// output `[N, 1, d]` and the caches with this position's k and v written.
fn attention_step(
    b: &mut Builder,
    x: NodeId,
    p: &[NodeId],
    heads: u64,
    lora: Option<&crate::check::layers::Lora>,
    c: Cache,
    t: u64,
) -> Result<(NodeId, NodeId, NodeId), super::TypeError> {
    let d = b.g.ty(x).shape.last().unwrap_or(0);
    let dh = d / heads.max(1);
    let wt = b.permute(p[0], vec![1, 0])?;
    let qkv = b.matmul(x, wt)?;
    let qkv = b.add(qkv, p[1])?;
    let qkv = match lora {
        Some(l) => super::lower::adapt(b, x, qkv, l, p[4], p[5])?,
        None => qkv,
    };
    let q = b.op(Op::Slice { axis: 2, start: 0, end: d }, &[qkv])?;
    let k = b.op(Op::Slice { axis: 2, start: d, end: 2 * d }, &[qkv])?;
    let v = b.op(Op::Slice { axis: 2, start: 2 * d, end: 3 * d }, &[qkv])?;
    // cache · keep + onehot · new: row `position` replaced.
    let write = |b: &mut Builder, cache: NodeId, new: NodeId| -> Result<NodeId, super::TypeError> {
        let kept = b.mul(cache, c.keep)?;
        let put = b.mul(new, c.onehot)?;
        b.add(kept, put)
    };
    let nk = write(b, c.k, k)?;
    let nv = write(b, c.v, v)?;
    let q = b.reshape(q, Shape::batched(&[1, heads, dh]))?;
    let q = b.permute(q, vec![0, 2, 1, 3])?; // [N, h, 1, dh]
    let kh = b.reshape(nk, Shape::batched(&[t, heads, dh]))?;
    let kt = b.permute(kh, vec![0, 2, 3, 1])?; // [N, h, dh, T]
    let vh = b.reshape(nv, Shape::batched(&[t, heads, dh]))?;
    let vh = b.permute(vh, vec![0, 2, 1, 3])?; // [N, h, T, dh]
    let scores = b.matmul(q, kt)?; // [N, h, 1, T]
    let scores = b.scale(scores, 1.0 / (dh as f64).sqrt())?;
    let scores = b.add(scores, c.mask)?;
    let probs = b.softmax(scores, 3)?;
    let o = b.matmul(probs, vh)?; // [N, h, 1, dh]
    let o = b.permute(o, vec![0, 2, 1, 3])?;
    let o = b.reshape(o, Shape::batched(&[1, d]))?;
    let ot = b.permute(p[2], vec![1, 0])?;
    let y = b.matmul(o, ot)?;
    let y = b.add(y, p[3])?;
    let y = match lora {
        Some(l) => super::lower::adapt(b, o, y, l, p[6], p[7])?,
        None => y,
    };
    Ok((y, nk, nv))
}
