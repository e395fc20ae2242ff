//! Symbolic reverse-mode differentiation as a graph-to-graph pass.
//!
//! [`grad`] adds to a graph the nodes computing d(loss)/d(w) for each `w` of
//! `wrt`. Only nodes on a path from some `w` to the loss get adjoints, so a
//! frozen parameter (absent from `wrt`) gets no gradient nodes at all. An
//! adjoint reaching a node along several uses is summed; an adjoint flowing
//! into a broadcast operand is summed back to the operand's shape.
//!
//! Every rule is in [`rule`], one arm per op, with the maths beside it.
//! Tie rules: `max(a, b)` and `min(a, b)` send the gradient to `a` only where
//! `a` wins strictly (so relu'(0) = 0, as in PyTorch); a max-reduction and
//! max pooling share it equally among tied maxima.

use std::collections::{HashMap, HashSet};

use crate::ir::lower::Builder;
use crate::ir::{BinaryOp as B, Graph, NodeId, Op, ReduceOp, Shape, TypeError, UnaryOp as U};

type R<T> = Result<T, TypeError>;

/// Adds gradient nodes of the scalar `loss` with respect to each of `wrt`.
/// Returns one gradient node per `wrt` entry, in order.
pub fn grad(g: Graph, loss: NodeId, wrt: &[NodeId]) -> R<(Graph, Vec<NodeId>)> {
    let order = g.topo_order();
    // Nodes that depend on some `wrt`…
    let mut from_wrt: HashSet<NodeId> = wrt.iter().copied().collect();
    for id in &order {
        if g.inputs(*id).iter().any(|i| from_wrt.contains(i)) {
            from_wrt.insert(*id);
        }
    }
    // …and that the loss depends on.
    let mut to_loss: HashSet<NodeId> = HashSet::from([loss]);
    for id in order.iter().rev() {
        if to_loss.contains(id) {
            to_loss.extend(g.inputs(*id));
        }
    }
    let active: HashSet<NodeId> = from_wrt.intersection(&to_loss).copied().collect();

    let mut b = Builder { g };
    let mut adj: HashMap<NodeId, NodeId> = HashMap::new();
    let one = b.c(1.0)?;
    adj.insert(loss, one);
    for id in order.iter().rev() {
        if !active.contains(id) {
            continue;
        }
        let Some(dy) = adj.get(id).copied() else { continue };
        let ins = b.g.inputs(*id);
        let op = b.g.node(*id).op.clone();
        for (k, dx) in rule(&mut b, &op, *id, &ins, dy)? {
            let x = ins[k];
            if !active.contains(&x) {
                continue;
            }
            let dx = sum_to(&mut b, dx, x)?;
            let total = match adj.get(&x) {
                Some(prev) => b.add(*prev, dx)?,
                None => dx,
            };
            adj.insert(x, total);
        }
    }
    let mut grads = Vec::with_capacity(wrt.len());
    for w in wrt {
        let gw = match adj.get(w) {
            Some(g) => *g,
            // The loss does not depend on w: its gradient is zero.
            None => {
                let zero = b.c(0.0)?;
                b.op(Op::Expand, &[zero, *w])?
            }
        };
        grads.push(gw);
    }
    Ok((b.g, grads))
}

/// Sums `dx` over the axes along which `x` was broadcast, giving x's shape.
fn sum_to(b: &mut Builder, dx: NodeId, x: NodeId) -> R<NodeId> {
    let (gs, ts) = (b.g.ty(dx).shape.clone(), b.g.ty(x).shape.clone());
    if gs == ts {
        return Ok(dx);
    }
    let lead = gs.rank().saturating_sub(ts.rank());
    let axes: Vec<usize> = (0..gs.rank())
        .filter(|i| *i < lead || (ts.0[*i - lead] != gs.0[*i] && ts.0[*i - lead] == crate::ir::Dim::Fixed(1)))
        .collect();
    let s = if axes.is_empty() { dx } else { b.reduce(ReduceOp::Sum, dx, axes)? };
    b.reshape(s, ts)
}

/// The adjoint contributions of `y = op(ins)` given `dy`, as (operand index,
/// contribution) pairs; contributions may still be broadcast.
fn rule(b: &mut Builder, op: &Op, y: NodeId, ins: &[NodeId], dy: NodeId) -> R<Vec<(usize, NodeId)>> {
    let x = ins.first().copied().unwrap_or(y);
    Ok(match op {
        // Leaves, constants and index-valued ops carry no gradient.
        Op::Input { .. }
        | Op::Const { .. }
        | Op::CausalMask { .. }
        | Op::ArgMax { .. }
        | Op::SizeOf { .. }
        | Op::OneHot { .. }
        | Op::StopGradient
        | Op::DropoutMask { .. } => vec![],
        // The derivative the forward pass computed: dx = dy·d.
        Op::WithGrad => vec![(0, b.mul(dy, ins[2])?)],
        Op::Unary { op } => {
            let d = match op {
                // d(−x) = −dy
                U::Neg => b.un(U::Neg, dy)?,
                // d(eˣ) = dy·eˣ = dy·y
                U::Exp => b.mul(dy, y)?,
                // d(ln x) = dy / x
                U::Log => b.div(dy, x)?,
                // d(√x) = dy / (2√x) = dy·0.5 / y
                U::Sqrt => {
                    let h = b.scale(dy, 0.5)?;
                    b.div(h, y)?
                }
                // d(1/x) = −dy / x² = −dy·y²
                U::Recip => {
                    let yy = b.mul(y, y)?;
                    let t = b.mul(dy, yy)?;
                    b.un(U::Neg, t)?
                }
                // d(tanh x) = dy·(1 − y²)
                U::Tanh => {
                    let yy = b.mul(y, y)?;
                    let one = b.c(1.0)?;
                    let s = b.sub(one, yy)?;
                    b.mul(dy, s)?
                }
                // d(erf x) = dy·(2/√π)·e^(−x²)
                U::Erf => {
                    let xx = b.mul(x, x)?;
                    let n = b.un(U::Neg, xx)?;
                    let e = b.un(U::Exp, n)?;
                    let k = b.scale(e, 2.0 / std::f64::consts::PI.sqrt())?;
                    b.mul(dy, k)?
                }
            };
            vec![(0, d)]
        }
        Op::Binary { op } => {
            let (a, c) = (ins[0], ins[1]);
            match op {
                // d(a + c) = (dy, dy)
                B::Add => vec![(0, dy), (1, dy)],
                // d(a − c) = (dy, −dy)
                B::Sub => vec![(0, dy), (1, b.un(U::Neg, dy)?)],
                // d(a·c) = (dy·c, dy·a)
                B::Mul => vec![(0, b.mul(dy, c)?), (1, b.mul(dy, a)?)],
                // d(a/c) = (dy/c, −dy·a/c²) = (dy/c, −dy·y/c)
                B::Div => {
                    let da = b.div(dy, c)?;
                    let t = b.mul(dy, y)?;
                    let t = b.div(t, c)?;
                    vec![(0, da), (1, b.un(U::Neg, t)?)]
                }
                // d max(a, c): to a where a > c, else to c.
                // d min(a, c): to a where a < c, else to c.
                B::Max | B::Min => {
                    let m = if *op == B::Max { b.bin(B::Greater, a, c)? } else { b.bin(B::Greater, c, a)? };
                    let da = b.mul(dy, m)?;
                    let one = b.c(1.0)?;
                    let rest = b.sub(one, m)?;
                    let dc = b.mul(dy, rest)?;
                    vec![(0, da), (1, dc)]
                }
                // Comparisons are piecewise constant.
                B::Greater | B::Equal => vec![],
            }
        }
        Op::Reduce { op, axes } => match op {
            // d Σx = dy broadcast back over the summed axes.
            ReduceOp::Sum => vec![(0, b.op(Op::Expand, &[dy, x])?)],
            // d max x = dy at the maxima, shared equally among ties.
            ReduceOp::Max => {
                let mask = b.bin(B::Equal, x, y)?;
                let count = b.reduce(ReduceOp::Sum, mask, axes.clone())?;
                let share = b.div(dy, count)?;
                vec![(0, b.mul(mask, share)?)]
            }
        },
        // Movement ops: the adjoint moves back.
        Op::Reshape { .. } => {
            let s = b.g.ty(x).shape.clone();
            vec![(0, b.reshape(dy, s)?)]
        }
        Op::Permute { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, p) in perm.iter().enumerate() {
                inv[*p] = i;
            }
            vec![(0, b.permute(dy, inv)?)]
        }
        // d expand(x) = Σ over the broadcast axes (done by sum_to).
        Op::Expand => vec![(0, dy)],
        Op::Slice { axis, start, end } => {
            let n = fixed(&b.g.ty(x).shape, *axis);
            vec![(0, b.op(Op::Pad { axis: *axis, before: *start, after: n - end }, &[dy])?)]
        }
        Op::Pad { axis, before, .. } => {
            let n = fixed(&b.g.ty(x).shape, *axis);
            vec![(0, b.op(Op::Slice { axis: *axis, start: *before, end: before + n }, &[dy])?)]
        }
        Op::Concat { axis } => {
            let mut out = Vec::new();
            let mut start = 0;
            for (k, i) in ins.iter().enumerate() {
                let n = fixed(&b.g.ty(*i).shape, *axis);
                out.push((k, b.op(Op::Slice { axis: *axis, start, end: start + n }, &[dy])?));
                start += n;
            }
            out
        }
        // y = A'·C' with A' = Aᵀ if ta, C' = Cᵀ if tb:
        // dA' = dy·C'ᵀ, dC' = A'ᵀ·dy; dA = dA'ᵀ if ta (= C'·dyᵀ), dC = dC'ᵀ if tb (= dyᵀ·A').
        // Transposes are flags, never copies; broadcast leading dims are summed by sum_to.
        Op::MatMul { ta, tb } => {
            let (a, c) = (ins[0], ins[1]);
            let mm = |b: &mut Builder, x, y, ta, tb| b.op(Op::MatMul { ta, tb }, &[x, y]);
            let da = if *ta { mm(b, c, dy, *tb, true)? } else { mm(b, dy, c, false, !tb)? };
            let dc = if *tb { mm(b, dy, a, true, *ta)? } else { mm(b, a, dy, !ta, false)? };
            vec![(0, da), (1, dc)]
        }
        // im2col and col2im are each other's adjoints (both linear).
        Op::Im2Col { kernel, stride, padding } => {
            let s = b.g.ty(x).shape.sample_dims();
            let col =
                Op::Col2Im { kernel: *kernel, stride: *stride, padding: *padding, channels: s[0], image: (s[1], s[2]) };
            vec![(0, b.op(col, &[dy])?)]
        }
        Op::MaxPool { size, stride } => {
            vec![(0, b.op(Op::MaxPoolGrad { size: *size, stride: *stride }, &[x, y, dy])?)]
        }
        // Appears only in gradient graphs; differentiating one again is not
        // supported, and says so rather than giving no gradient.
        Op::MaxPoolGrad { .. } => {
            return Err(TypeError {
                op: "max_pool_grad".into(),
                inputs: String::new(),
                reason: "it has no derivative rule (gradient graphs are not differentiated a second time)".into(),
            })
        }
        Op::Col2Im { kernel, stride, padding, .. } => {
            vec![(0, b.op(Op::Im2Col { kernel: *kernel, stride: *stride, padding: *padding }, &[dy])?)]
        }
        // d gather(T, i) wrt T: scatter-add dy into the rows that were read.
        Op::Gather => {
            let rows = fixed(&b.g.ty(ins[0]).shape, 0);
            vec![(0, b.op(Op::ScatterAdd { rows }, &[ins[1], dy])?)]
        }
        // d scatter_add(i, s) wrt s: gather the adjoint rows back.
        Op::ScatterAdd { .. } => vec![(1, b.op(Op::Gather, &[dy, ins[0]])?)],
    })
}

fn fixed(s: &Shape, axis: usize) -> u64 {
    match s.0.get(axis) {
        Some(crate::ir::Dim::Fixed(n)) => *n,
        _ => 0,
    }
}
