//! The loop analysis of elementwise kernels, shared by the backends: the
//! shape a kernel's loop runs over ([`loop_shape`]), how it is laid out as a
//! nest ([`loop_nest`]: trailing axes along which every operand is
//! contiguous or constant merged into one inner loop over a row, outer axes
//! walked by a row index), which operands it walks ([`walked`]), the
//! identity a reduction's output starts from ([`reduction_identity`]), and
//! what no backend lowers yet ([`unsupported`], with the reason).

use crate::ir::{Dim, Graph, NodeId, Op, ReduceOp, Shape};
use crate::kernel::fusion::{Kernel, KernelKind};

/// Why a kernel is not lowered (yet).
pub fn unsupported(g: &Graph, k: &Kernel) -> Option<String> {
    if k.kind != KernelKind::Elementwise {
        return Some(format!("{:?} kernels are not lowered to Cranelift", k.kind).to_lowercase());
    }
    let shape = loop_shape(g, k)?;
    for id in &k.nodes {
        let ok = match &g.node(*id).op {
            Op::Unary { .. } | Op::DropoutMask { .. } => true,
            Op::CausalMask { .. } => k.nodes.len() == 1,
            Op::Binary { .. } | Op::Const { .. } | Op::StopGradient => true,
            // A reduction ends its kernel (fusion guarantees it); its output
            // is accumulated, not computed at the loop index.
            Op::Reduce { .. } => {
                if Some(id) != k.nodes.last() {
                    return Some("a reduction in the middle of a kernel".into());
                }
                continue;
            }
            // Expanding a read is reading it at the broadcast offset.
            Op::Expand => k.reads.contains(&g.inputs(*id)[0]),
            other => return Some(format!("`{}` is not lowered yet", other.name())),
        };
        if !ok {
            return Some(format!("`{}` is not lowered yet", g.node(*id).op.name()));
        }
        if g.ty(*id).shape != shape && g.ty(*id).shape.rank() > 0 {
            return Some("values of several shapes in one kernel".into());
        }
    }
    if let Some(w) = k.writes.iter().find(|w| g.ty(**w).shape != shape && !is_reduce(g, **w)) {
        return Some(format!("writes of several shapes ({} and {shape})", g.ty(*w).shape));
    }
    for r in &k.reads {
        let s = &g.ty(*r).shape;
        if s.broadcast(&shape).as_ref() != Some(&shape) {
            return Some(format!("operand of shape {s} does not broadcast to {shape}"));
        }
    }
    None
}

/// Whether `id` is a reduction.
pub fn is_reduce(g: &Graph, id: NodeId) -> bool {
    matches!(g.node(id).op, Op::Reduce { .. })
}

/// The shape the kernel's loop runs over: a reduction's operand, or what the
/// kernel writes.
pub fn loop_shape(g: &Graph, k: &Kernel) -> Option<Shape> {
    match k.nodes.last() {
        Some(r) if is_reduce(g, *r) => Some(g.ty(g.inputs(*r)[0]).shape.clone()),
        _ => k.writes.first().map(|w| g.ty(*w).shape.clone()),
    }
}

/// The element strides of an operand of shape `s` (right-aligned) over the
/// axes of a loop over `shape`: 0 where it is broadcast. The batch, if any,
/// is the leading axis, so every stride is known when compiling.
fn strides_over(s: &Shape, shape: &Shape) -> Vec<u64> {
    let r = shape.rank();
    let off = r - s.rank();
    let mut strides = vec![0u64; r];
    let mut stride = 1u64;
    for d in (0..r).rev() {
        let own = d.checked_sub(off).map(|j| s.0[j]);
        strides[d] = match own {
            Some(Dim::Fixed(1)) | None if shape.0[d] != Dim::Fixed(1) => 0,
            _ => stride,
        };
        if let Some(Dim::Fixed(n)) = own {
            stride *= n;
        }
    }
    strides
}

/// How a kernel's loop is laid out: trailing axes along which every operand
/// is either contiguous or constant are merged into one inner loop; the
/// other (outer) axes are walked by a row index. When every axis merges the
/// kernel is flat: one loop over all `n` elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopNest {
    /// Elements per row of the inner loop (`None`: flat, all `n`).
    pub inner: Option<u64>,
    /// Outer axes: (size or `None` for the batch, the operand strides).
    pub outer: Vec<(Option<u64>, Vec<u64>)>,
    /// Per operand: its stride along the inner loop (0 or 1).
    pub inner_stride: Vec<u64>,
}

fn nest(operands: &[Shape], shape: &Shape) -> LoopNest {
    let r = shape.rank();
    let strides: Vec<Vec<u64>> = operands.iter().map(|s| strides_over(s, shape)).collect();
    let size = |d: usize| match shape.0[d] {
        Dim::Fixed(n) => Some(n),
        Dim::Batch => None,
    };
    if r == 0 {
        return LoopNest { inner: None, outer: Vec::new(), inner_stride: vec![0; operands.len()] };
    }
    // The inner block: axes d.. merged; per operand its innermost stride and
    // the stride one past the block (stride · count).
    let mut d = r - 1;
    let inner_stride: Vec<u64> = strides.iter().map(|s| s[d].min(1)).collect();
    // Merging assumes the innermost stride is 0 or 1 (row-major buffers).
    let mut count = size(d);
    while d > 0 {
        let next = d - 1;
        let ok = size(next) == Some(1)
            || strides.iter().zip(&inner_stride).all(|(s, i)| match count {
                Some(c) => s[next] == i * c,
                None => false,
            });
        if !ok {
            break;
        }
        count = match (count, size(next)) {
            (Some(c), Some(m)) => Some(c * m),
            _ => None,
        };
        d = next;
    }
    let flat = d == 0;
    let outer = (0..if flat { 0 } else { d }).map(|a| (size(a), strides.iter().map(|s| s[a]).collect())).collect();
    LoopNest { inner: if flat { None } else { count }, outer, inner_stride }
}

/// The operands whose offsets the loop walks: reads that are not scalars,
/// the writes, and a reduction's output (strides 0 on its reduced axes).
pub fn walked(g: &Graph, k: &Kernel) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = k.reads.iter().filter(|r| !is_scalar(g, **r)).copied().collect();
    for w in &k.writes {
        if !v.contains(w) {
            v.push(*w);
        }
    }
    v
}

/// The loop nest of an elementwise kernel.
pub fn loop_nest(g: &Graph, k: &Kernel) -> Option<LoopNest> {
    let shape = loop_shape(g, k)?;
    let shapes: Vec<Shape> = walked(g, k).iter().map(|id| g.ty(*id).shape.clone()).collect();
    Some(nest(&shapes, &shape))
}

/// Whether `id` is one value for the whole loop (no batch, one element).
pub fn is_scalar(g: &Graph, id: NodeId) -> bool {
    let s = &g.ty(id).shape;
    !s.has_batch() && s.sample_elements() == 1
}

/// A kernel ending in a reduction: the reduction's node and its identity
/// (0 for sums, −∞ for maxima), which the caller fills its output with
/// before calling the kernel.
pub fn reduction_identity(g: &Graph, k: &Kernel) -> Option<(NodeId, f32)> {
    let r = *k.nodes.last().filter(|r| is_reduce(g, **r))?;
    Some(match g.node(r).op {
        Op::Reduce { op: ReduceOp::Max, .. } => (r, f32::NEG_INFINITY),
        _ => (r, 0.0),
    })
}
