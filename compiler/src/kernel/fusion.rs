//! Fusion: partitions an optimized graph into kernels, the units a backend
//! compiles and the executor calls in order.
//!
//! - `gemm`: one matmul (a call to a tuned GEMM, transposes as strides),
//!   and a permute of its product (written by strides) or the sum over its
//!   leading axes when that is its only use
//!   ([`joins_batch_sum`]: a weight's gradient over a batch of sequences or
//!   images is computed by the gemm kernel, without an N-fold temporary and
//!   a reduction).
//! - `elementwise`: a maximal chain of elementwise ops computing values of one
//!   shape, optionally ending in one reduction: one loop, no intermediate
//!   buffers. A node joins its operand's kernel when it computes values of the
//!   same shape (a reduction: of its operand's shape), the kernel has not ended
//!   in a reduction, and its other operands are ready before the kernel runs.
//!   A fused value that other kernels use is also written out. A node with
//!   no fused operand may also join the latest kernel if it loops over the
//!   node's shape (horizontal fusion).
//! - `copy`: data movement (permute, slice, pad, concat, im2col, col2im,
//!   gather, scatter-add, one-hot, argmax) and max pooling, one op each.
//! - Views cost nothing and are not kernels: inputs, scalar constants, batch
//!   sizes (`size_of`), reshapes and stop-gradients (which alias their
//!   operand's buffer), `with_grad` (which aliases its value, the second
//!   operand; its first operand is for autodiff and is not written for it).
//!
//! Does not change the graph; does not fuse across a matmul (the GEMM's
//! epilogue fusion is a backend matter).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::ir::{Graph, NodeId, Op};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelKind {
    Gemm,
    Elementwise,
    Copy,
}

#[derive(Clone, Debug)]
pub struct Kernel {
    pub kind: KernelKind,
    /// The nodes it computes, operands first.
    pub nodes: Vec<NodeId>,
    /// Values it reads that other kernels (or the caller) produce.
    pub reads: Vec<NodeId>,
    /// Values it writes that are used after it (materialized in buffers).
    pub writes: Vec<NodeId>,
}

/// How a node is computed.
pub fn class(op: &Op) -> Option<KernelKind> {
    match op {
        Op::Input { .. }
        | Op::Const { .. }
        | Op::SizeOf { .. }
        | Op::Reshape { .. }
        | Op::StopGradient
        | Op::WithGrad => None,
        Op::MatMul { .. } => Some(KernelKind::Gemm),
        Op::Unary { .. }
        | Op::Binary { .. }
        | Op::Expand
        | Op::DropoutMask { .. }
        | Op::CausalMask { .. }
        | Op::Reduce { .. } => Some(KernelKind::Elementwise),
        Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. }
        | Op::Im2Col { .. }
        | Op::Col2Im { .. }
        | Op::MaxPool { .. }
        | Op::MaxPoolGrad { .. }
        | Op::Gather
        | Op::ScatterAdd { .. }
        | Op::OneHot { .. }
        | Op::ArgMax { .. } => Some(KernelKind::Copy),
    }
}

/// Whether `reduce` (the only use of matmul `mm`) sums exactly the
/// matmul's leading axes, every one of them in both operands (not
/// broadcast): the gemm kernel computes the sum itself, writing only the
/// [m, n] result. When Aₙ is stored [k, m] and Bₙ [k, n] (`matmul[aᵀb]`),
/// Σₙ Aₙᵀ·Bₙ is one gemm over the stacked [N·k, m] and [N·k, n] (the batch
/// joins the contraction); otherwise the per-matrix products accumulate
/// into the result ([`super::layout::gemm_dims_summed`]).
pub fn joins_batch_sum(g: &Graph, mm: NodeId, reduce: NodeId) -> bool {
    let (Op::MatMul { .. }, Op::Reduce { op: crate::ir::ReduceOp::Sum, axes }) = (&g.node(mm).op, &g.node(reduce).op)
    else {
        return false;
    };
    let out = &g.ty(mm).shape.0;
    let lead = out.len().saturating_sub(2);
    let ins = g.inputs(mm);
    lead > 0
        && g.inputs(reduce) == [mm]
        && *axes == (0..lead).collect::<Vec<_>>()
        && ins.iter().all(|x| g.ty(*x).shape.0.len() == out.len() && g.ty(*x).shape.0[..lead] == out[..lead])
}

/// Whether `next`, the only use of matmul `mm`, joins `mm`'s gemm kernel:
/// a batch sum ([`joins_batch_sum`]), or a permute of the product, which
/// the gemm writes in place of the product by permuted output strides (the
/// heads of an attention layer back into their sequence's rows).
pub fn joins_gemm(g: &Graph, mm: NodeId, next: NodeId) -> bool {
    match g.node(next).op {
        Op::Reduce { .. } => joins_batch_sum(g, mm, next),
        Op::Permute { .. } => {
            matches!(g.node(mm).op, Op::MatMul { .. }) && g.inputs(next) == [mm] && g.ty(mm).shape.0.len() >= 2
        }
        _ => false,
    }
}

/// Partitions `g` into kernels in execution order.
pub fn fuse(g: &Graph) -> Vec<Kernel> {
    let outputs: HashSet<NodeId> = g.outputs.iter().map(|(_, id)| *id).collect();
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut owner: HashMap<NodeId, usize> = HashMap::new();
    let mut ended: HashSet<usize> = HashSet::new();
    // The last kernel a value needs to have run (through views); None for
    // values needing no kernel (inputs, constants).
    let mut dep: HashMap<NodeId, Option<usize>> = HashMap::new();
    for id in schedule(g) {
        let node = g.node(id);
        let Some(kind) = class(&node.op) else {
            let d = g.inputs(id).iter().filter_map(|x| dep.get(x).copied().flatten()).max();
            dep.insert(id, d);
            continue;
        };
        // A sum over a matmul's batch, or a permute of its product, in its
        // gemm kernel.
        let folded = match g.inputs(id)[..] {
            [x] if !outputs.contains(&x) && g.users(x).len() == 1 => {
                owner.get(&x).copied().filter(|k| kernels[*k].nodes == [x] && joins_gemm(g, x, id))
            }
            _ => None,
        };
        let join = folded.or_else(|| {
            (kind == KernelKind::Elementwise).then(|| {
                g.inputs(id).into_iter().find_map(|x| {
                    let k = *owner.get(&x)?;
                    let ok = kernels[k].kind == KernelKind::Elementwise
                        && !ended.contains(&k)
                        // A reduction consumes the loop over its operand;
                        // any other op must compute values of the loop's shape.
                        && (matches!(node.op, Op::Reduce { .. }) || g.ty(x).shape == node.ty.shape);
                    // Every other operand must be ready before kernel k runs
                    // (or be computed inside it).
                    let ready = g
                        .inputs(id)
                        .iter()
                        .all(|y| owner.get(y) == Some(&k) || dep.get(y).copied().flatten().is_none_or(|d| d < k));
                    (ok && ready).then_some(k)
                })
            })?
        });
        // Horizontal: a node none of whose operands is fused anywhere may
        // join the latest kernel when that kernel loops over the node's shape
        // and the operands are ready (independent chains of one shape, like
        // an optimizer's `β·m` beside the gradient's chain, share a loop).
        let join = join.or_else(|| {
            let k = kernels.len().checked_sub(1)?;
            let last = &kernels[k];
            let ok = kind == KernelKind::Elementwise
                && !matches!(node.op, Op::Reduce { .. } | Op::DropoutMask { .. } | Op::CausalMask { .. })
                && last.kind == KernelKind::Elementwise
                && !ended.contains(&k)
                && !last.nodes.iter().any(|n| matches!(g.node(*n).op, Op::DropoutMask { .. } | Op::CausalMask { .. }))
                && g.ty(last.nodes[0]).shape == node.ty.shape
                && g.inputs(id)
                    .iter()
                    .all(|y| owner.get(y) == Some(&k) || dep.get(y).copied().flatten().is_none_or(|d| d < k));
            ok.then_some(k)
        });
        let k = match join {
            Some(k) => k,
            None => {
                kernels.push(Kernel { kind, nodes: Vec::new(), reads: Vec::new(), writes: Vec::new() });
                kernels.len() - 1
            }
        };
        kernels[k].nodes.push(id);
        owner.insert(id, k);
        dep.insert(id, Some(k));
        if matches!(node.op, Op::Reduce { .. }) {
            ended.insert(k);
        }
    }
    // Reads and writes: values crossing kernel boundaries.
    for (k, kernel) in kernels.iter_mut().enumerate() {
        let inside: HashSet<NodeId> = kernel.nodes.iter().copied().collect();
        for id in &kernel.nodes {
            for x in g.inputs(*id) {
                if !inside.contains(&x) && !kernel.reads.contains(&x) {
                    kernel.reads.push(x);
                }
            }
            // A with_grad's first operand is there for autodiff only:
            // nothing reads it when the step runs.
            let only_for_autodiff =
                |u: &NodeId| matches!(g.node(*u).op, Op::WithGrad) && g.inputs(*u)[1..].iter().all(|x| x != id);
            let used_outside = g
                .users(*id)
                .iter()
                .filter(|u| !only_for_autodiff(u))
                .any(|u| owner.get(u) != Some(&k) || !inside.contains(u));
            if used_outside || outputs.contains(id) {
                kernel.writes.push(*id);
            }
        }
    }
    kernels
}

/// An execution order that computes each value as late as possible: a
/// depth-first post-order from the outputs: operands that cannot fuse
/// first, then elementwise ones, deepest first. A value is
/// then computed just before its first use, so chains that feed one consumer
/// stay together and can fuse, and buffers live shorter.
pub fn schedule(g: &Graph) -> Vec<NodeId> {
    // Height: the longest path from a leaf. Deeper elementwise operands are
    // computed first, so shallow ones (an optimizer's `β·m`) come right
    // before their use and fuse with it.
    let mut height: HashMap<NodeId, usize> = HashMap::new();
    for id in g.topo_order() {
        let h = g.inputs(id).iter().map(|x| height[x] + 1).max().unwrap_or(0);
        height.insert(id, h);
    }
    let mut order = Vec::with_capacity(g.len());
    let mut done: HashSet<NodeId> = HashSet::new();
    let roots: Vec<NodeId> = g.outputs.iter().map(|(_, id)| *id).chain(g.topo_order()).collect();
    for root in roots {
        if done.contains(&root) {
            continue;
        }
        // (node, operands pushed?)
        let mut stack = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if done.contains(&id) {
                continue;
            }
            if expanded {
                done.insert(id);
                order.push(id);
                continue;
            }
            stack.push((id, true));
            // Computed first: operands that cannot share the node's loop
            // (matmuls, copies, views, values of another shape such as an
            // optimizer's scalars); then elementwise ones, deepest first;
            // ties in operand order. Pushed in reverse, so popped in order.
            let reduces = matches!(g.node(id).op, Op::Reduce { .. });
            let mut ins: Vec<(usize, NodeId)> = g.inputs(id).into_iter().enumerate().collect();
            ins.sort_by_key(|(i, x)| {
                let fuses = class(&g.node(*x).op) == Some(KernelKind::Elementwise)
                    && (reduces || g.ty(*x).shape == g.ty(id).shape);
                (fuses, std::cmp::Reverse(height[x]), *i)
            });
            for (_, x) in ins.into_iter().rev() {
                if !done.contains(&x) {
                    stack.push((x, false));
                }
            }
        }
    }
    order
}

/// The kernels and the memory plan as text: each kernel with its nodes (in
/// the canonical numbering), what it reads and writes, and where each
/// written value lives in the arena.
pub fn text(g: &Graph, kernels: &[Kernel], plan: &super::memory::Plan) -> String {
    use std::fmt::Write;
    let (_, num) = crate::ir::print::numbering(g);
    let place: HashMap<usize, &super::memory::Buffer> = plan.buffers.iter().map(|b| (b.value, b)).collect();
    let mut out = String::new();
    for (k, kernel) in kernels.iter().enumerate() {
        let kind = format!("{:?}", kernel.kind).to_lowercase();
        let _ = writeln!(out, "kernel {k} {kind}");
        for id in &kernel.nodes {
            let n = g.node(*id);
            let args: Vec<String> = g.inputs(*id).iter().map(|i| format!("%{}", num[i])).collect();
            let _ =
                writeln!(out, "  %{} = {} {} : {}", num[id], crate::ir::print::op_text(&n.op), args.join(", "), n.ty);
        }
        let reads: Vec<String> = kernel.reads.iter().map(|r| format!("%{}", num[r])).collect();
        let writes: Vec<String> = kernel
            .writes
            .iter()
            .map(|w| match place.get(&num[w]) {
                Some(b) => format!("%{} @{}+{}", num[w], b.offset, b.bytes),
                None => format!("%{} (in place)", num[w]),
            })
            .collect();
        let _ = writeln!(out, "  reads {}", if reads.is_empty() { "nothing".into() } else { reads.join(" ") });
        let _ = writeln!(out, "  writes {}", writes.join(" "));
    }
    let _ = writeln!(
        out,
        "{} kernels; arena {} bytes at batch {} ({} bytes without reuse)",
        kernels.len(),
        plan.arena_bytes,
        plan.batch,
        plan.unplanned_bytes
    );
    out
}
