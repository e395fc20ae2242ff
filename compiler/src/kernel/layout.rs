//! Where values live when a fused graph runs: the backend-neutral half of a
//! backend's layout. A backend (the CPU's `Program`, a CUDA device next)
//! resolves these decisions to its own pointers.
//!
//! - [`feedback`]: each `new.X` output is written straight into input `X`
//!   when that is safe (its writer is an elementwise kernel, not a
//!   reduction, that runs no earlier than the last reader of `X`, and the
//!   shapes agree), else copied back after the step.
//! - [`places`]: per value, at a batch size: an input's buffer, a
//!   constant's, a `size_of` value, a view of its operand (reshape,
//!   stop-gradient), the feedback input it is written into, an arena offset
//!   from the memory plan, or nowhere (computed inside a kernel).
//! - [`gemm_dims`]: a matmul kernel as gemm calls: m, n, k, the operands'
//!   and the output's (row, column) strides, and each call's element
//!   offsets (a batch over one shared matrix folded into one call);
//!   [`gemm_dims_summed`] and [`gemm_dims_permuted`] for a gemm kernel that
//!   also sums the batch or permutes the product.

use std::collections::HashMap;

use crate::gradcheck::concrete;
use crate::ir::{Graph, NodeId, Op};
use crate::kernel::fusion::{Kernel, KernelKind};
use crate::kernel::memory;

/// How feedback outputs reach their inputs.
#[derive(Clone, Debug, Default)]
pub struct Feedback {
    /// Output values written straight into an input: value → input node.
    pub in_place: HashMap<NodeId, NodeId>,
    /// (output value, input node) copied back after each run.
    pub copy_back: Vec<(NodeId, NodeId)>,
}

/// The operand a view (reshape, stop-gradient) reads through to.
pub fn view_root(g: &Graph, mut id: NodeId) -> NodeId {
    while let Some(x) = viewed(g, id) {
        id = x;
    }
    id
}

/// The operand whose memory a view is (reshape and stop-gradient: their
/// operand; with_grad: its value, the second operand); None for a non-view.
pub fn viewed(g: &Graph, id: NodeId) -> Option<NodeId> {
    match g.node(id).op {
        Op::Reshape { .. } | Op::StopGradient => Some(g.inputs(id)[0]),
        Op::WithGrad => Some(g.inputs(id)[1]),
        _ => None,
    }
}

/// Decides, for every (output value, input node) pair of `new.X` feedback,
/// whether it is written in place or copied back (see the module docs).
pub fn feedback(g: &Graph, kernels: &[Kernel], pairs: &[(NodeId, NodeId)]) -> Feedback {
    // Which kernel writes a value, and the last kernel reading each value
    // (through views).
    let mut writer: HashMap<NodeId, usize> = HashMap::new();
    let mut last_read: HashMap<NodeId, usize> = HashMap::new();
    for (k, kernel) in kernels.iter().enumerate() {
        for w in &kernel.writes {
            writer.insert(*w, k);
        }
        for r in &kernel.reads {
            last_read.insert(view_root(g, *r), k);
        }
    }
    let mut fb = Feedback::default();
    for (v, xin) in pairs {
        let ok = writer.get(v).is_some_and(|k| {
            kernels[*k].kind == KernelKind::Elementwise
                && !matches!(g.node(*v).op, Op::Reduce { .. })
                && last_read.get(xin).is_none_or(|r| r <= k)
                && g.ty(*v).shape == g.ty(*xin).shape
        }) && !fb.in_place.contains_key(v);
        if ok {
            fb.in_place.insert(*v, *xin);
        } else if view_root(g, *v) != *xin {
            fb.copy_back.push((*v, *xin));
        }
    }
    fb
}

/// Where a value lives at a batch size.
#[derive(Clone, Debug, PartialEq)]
pub enum Place {
    /// The buffer of an input (this node).
    Input(NodeId),
    /// The buffer of a constant (this node).
    Const(NodeId),
    /// A `size_of` value: one float.
    Size(f32),
    /// The same memory as this operand.
    View(NodeId),
    /// Written straight into this input's buffer (feedback in place).
    Into(NodeId),
    /// Bytes from the arena's start.
    Arena(u64),
    /// Computed inside a kernel, never stored.
    Unstored,
}

/// Every value's place at `plan.batch`, in topological order (a view
/// follows its operand).
pub fn places(g: &Graph, plan: &memory::Plan, fb: &Feedback) -> Vec<(NodeId, Place)> {
    let batch = plan.batch as usize;
    g.topo_order()
        .into_iter()
        .map(|id| {
            let place = match &g.node(id).op {
                Op::Input { .. } => Place::Input(id),
                Op::Const { .. } => Place::Const(id),
                Op::SizeOf { axis } => Place::Size(concrete(&g.ty(g.inputs(id)[0]).shape, batch)[*axis] as f32),
                _ => match (viewed(g, id), fb.in_place.get(&id), plan.offsets.get(&id)) {
                    (Some(x), _, _) => Place::View(x),
                    (None, Some(x), _) => Place::Into(*x),
                    (None, None, Some(off)) => Place::Arena(*off),
                    (None, None, None) => Place::Unstored,
                },
            };
            (id, place)
        })
        .collect()
}

/// A matmul kernel as gemm calls at a batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// (row, column) element strides of the stored operands.
    pub lhs: (isize, isize),
    pub rhs: (isize, isize),
    /// Per call: element offsets into a, b and the output.
    pub each: Vec<(usize, usize, usize)>,
    /// The calls' products are summed into one output (a batch sum joined
    /// to the gemm kernel), rather than each written to its own.
    pub sum: bool,
    /// (row, column) element strides of the output: (n, 1), or those of a
    /// permute of the product joined to the gemm kernel.
    pub dst: (isize, isize),
}

impl GemmDims {
    /// The same product computed transposed, Cᵀ = Bᵀ·Aᵀ: m and n swapped,
    /// the operands swapped (each offset pair too; the caller swaps their
    /// base pointers) with their strides swapped, the output's strides
    /// swapped. The `gemm` crate is fast when the output's rows are
    /// contiguous and, for A·Bᵀ, when A has more rows than B.
    pub fn transposed(&self) -> GemmDims {
        GemmDims {
            m: self.n,
            n: self.m,
            k: self.k,
            lhs: (self.rhs.1, self.rhs.0),
            rhs: (self.lhs.1, self.lhs.0),
            each: self.each.iter().map(|(a, b, c)| (*b, *a, *c)).collect(),
            sum: self.sum,
            dst: (self.dst.1, self.dst.0),
        }
    }
}

/// The gemm calls of matmul `id` (`ta`, `tb`: operands read transposed) at
/// `batch`: one per leading index, or one in all when the leading
/// dimensions fold into A's rows.
pub fn gemm_dims(g: &Graph, id: NodeId, ta: bool, tb: bool, batch: usize) -> GemmDims {
    gemm_dims_with(g, id, ta, tb, batch, true)
}

fn gemm_dims_with(g: &Graph, id: NodeId, ta: bool, tb: bool, batch: usize, fold: bool) -> GemmDims {
    let ins = g.inputs(id);
    let (sa, sb) = (concrete(&g.ty(ins[0]).shape, batch), concrete(&g.ty(ins[1]).shape, batch));
    let so = concrete(&g.ty(id).shape, batch);
    let (ra, rb, ro) = (sa.len(), sb.len(), so.len());
    let (m, n) = (so[ro - 2], so[ro - 1]);
    let k = if ta { sa[ra - 2] } else { sa[ra - 1] };
    // Stored [m, k] (or [k, m] when transposed): (row, column) strides.
    let lhs = if ta { (1, m as isize) } else { (k as isize, 1) };
    let rhs = if tb { (1, k as isize) } else { (n as isize, 1) };
    let lead = &so[..ro - 2];
    let count: usize = lead.iter().product();
    // One matrix B for every A (a layer's weight over a batch of
    // sequences), A stored [.., m, k] with all of the output's leading
    // dimensions: the As stack into one [count·m, k] matrix, and the
    // outputs into one [count·m, n]. One call: B is packed once, and the
    // gemm has count times the rows to spread over the threads.
    if fold && count > 1 && !ta && sb[..rb - 2].iter().product::<usize>() == 1 && sa[..ra - 2] == *lead {
        return GemmDims { m: count * m, n, k, lhs, rhs, each: vec![(0, 0, 0)], sum: false, dst: (n as isize, 1) };
    }
    let each = (0..count)
        .map(|i| {
            let oa = lead_offset(i, lead, &sa[..ra - 2]) * m * k;
            let ob = lead_offset(i, lead, &sb[..rb - 2]) * k * n;
            (oa, ob, i * m * n)
        })
        .collect();
    GemmDims { m, n, k, lhs, rhs, each, sum: false, dst: (n as isize, 1) }
}

/// The gemm calls of matmul `id` summed over its leading axes
/// ([`super::fusion::joins_batch_sum`]), written to the sum's [m, n]
/// output. `matmul[aᵀb]`: one call, Aᵀ·B with the batch stacked into the
/// contraction. Otherwise one call per matrix, all into the output, summed
/// (`sum`).
pub fn gemm_dims_summed(g: &Graph, id: NodeId, batch: usize) -> GemmDims {
    let Op::MatMul { ta, tb } = g.node(id).op else { unreachable!("a matmul") };
    let ins = g.inputs(id);
    let sa = concrete(&g.ty(ins[0]).shape, batch);
    let so = concrete(&g.ty(id).shape, batch);
    let ro = so.len();
    let (m, n) = (so[ro - 2], so[ro - 1]);
    let count: usize = so[..ro - 2].iter().product();
    if ta && !tb {
        let k = sa[sa.len() - 2];
        return GemmDims {
            m,
            n,
            k: count * k,
            lhs: (1, m as isize),
            rhs: (n as isize, 1),
            each: vec![(0, 0, 0)],
            sum: false,
            dst: (n as isize, 1),
        };
    }
    let mut d = gemm_dims(g, id, ta, tb, batch);
    for e in &mut d.each {
        e.2 = 0;
    }
    d.sum = count > 1;
    d
}

/// The gemm calls of matmul `id` writing straight into `permute`, its
/// only use, joined to the gemm kernel
/// ([`super::fusion::joins_gemm`]): each call's output at the permuted
/// place, with the permuted row and column strides (no copy of the product).
pub fn gemm_dims_permuted(g: &Graph, id: NodeId, permute: NodeId, batch: usize) -> GemmDims {
    let (Op::MatMul { ta, tb }, Op::Permute { perm }) = (&g.node(id).op, &g.node(permute).op) else {
        unreachable!("a matmul and a permute of it")
    };
    let mut d = gemm_dims_with(g, id, *ta, *tb, batch, false);
    let so = concrete(&g.ty(id).shape, batch);
    let sp = concrete(&g.ty(permute).shape, batch);
    let r = so.len();
    // Contiguous strides of the permute's result; the product's axis
    // perm[p] is its axis p.
    let mut stp = vec![1isize; r];
    for a in (0..r.saturating_sub(1)).rev() {
        stp[a] = stp[a + 1] * sp[a + 1] as isize;
    }
    let mut st = vec![0isize; r];
    for (p, a) in perm.iter().enumerate() {
        st[*a] = stp[p];
    }
    for (i, e) in d.each.iter_mut().enumerate() {
        let (mut rest, mut off) = (i, 0isize);
        for a in (0..r - 2).rev() {
            off += (rest % so[a]) as isize * st[a];
            rest /= so[a];
        }
        e.2 = off as usize;
    }
    d.dst = (st[r - 2], st[r - 1]);
    d
}

/// The element offset of the matrix for leading index `i` (over `lead`) in an
/// operand with leading dimensions `own` (right-aligned, broadcast).
fn lead_offset(i: usize, lead: &[usize], own: &[usize]) -> usize {
    let mut rest = i;
    let mut off = 0;
    let mut stride = 1;
    let shift = lead.len() - own.len();
    for d in (0..lead.len()).rev() {
        let idx = rest % lead[d];
        rest /= lead[d];
        if d >= shift {
            let size = own[d - shift];
            if size != 1 {
                off += idx * stride;
            }
            stride *= size;
        }
    }
    off
}
