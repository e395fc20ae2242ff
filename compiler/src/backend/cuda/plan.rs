//! A CUDA step as data: the launches of a fused graph at one batch size,
//! with every operand an address relative to a buffer (the arena, an
//! input's, a constant's, a `size_of` value's). Building it needs no CUDA,
//! so the tests run it in an emulator (`tests/cuda.rs`): PTX entries by the
//! PTX emulator, cuBLAS calls by a reference of cuBLAS's own contract.
//!
//! - An elementwise or data-movement kernel is one launch of its PTX entry
//!   ([`super::super::ptx::module`]), after its fills: a reduction's output
//!   filled with the identity, the zero-filled outputs that col2im and
//!   scatter-add add into.
//! - A gemm kernel is cuBLAS `sgemm` calls, column-major: a row-major
//!   product C = A·B with contiguous rows is computed as Cᵀ = Bᵀ·Aᵀ (the
//!   operands swapped, nothing copied), one with contiguous columns as it
//!   stands; transposed operands become `T` flags. The kernel stage's calls
//!   ([`crate::kernel::layout::GemmDims`]) become one strided-batched call
//!   when their offsets step evenly, else one call over pointer arrays; a
//!   batch summed into one output computes its products side by side in
//!   scratch in one such call and adds them in order (the PTX entry
//!   `SUM_MATS`); one with a strided output runs them in order, the first
//!   with β = 0 and the rest with β = 1.
//! - Feedback outputs not written in place are copied back last.

use crate::gradcheck::concrete;
use crate::ir::{Graph, NodeId, Op};
use crate::kernel::fusion::{Kernel, KernelKind};
use crate::kernel::layout::{self, Feedback, GemmDims, Place};
use crate::kernel::{loops, memory};

/// The buffer an address is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mem {
    /// The step's arena.
    Arena,
    /// The buffer of this input node.
    Input(NodeId),
    /// The one float of this constant node.
    Const(NodeId),
    /// The i-th `size_of` value of the plan ([`Plan::sizes`]).
    Size(usize),
    /// Scratch for the products of a gemm kernel that sums them
    /// ([`Plan::scratch_floats`]).
    Scratch,
    /// Nothing (a value computed inside a kernel, never read).
    Null,
}

/// A float's address: a buffer and an offset in floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    pub mem: Mem,
    pub offset: usize,
}

impl Addr {
    pub fn plus(self, floats: usize) -> Addr {
        Addr { mem: self.mem, offset: self.offset + floats }
    }
}

/// One cuBLAS `sgemm` (column-major; `count` > 1: strided batched, or
/// batched over pointer arrays when `list` is not empty):
/// C = op(A)·op(B) + β·C, op(A) m×k, op(B) k×n, C m×n.
#[derive(Clone, Debug, PartialEq)]
pub struct Blas {
    pub ta: bool,
    pub tb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub a: Addr,
    pub lda: i32,
    pub stride_a: i64,
    pub b: Addr,
    pub ldb: i32,
    pub stride_b: i64,
    pub c: Addr,
    pub ldc: i32,
    pub stride_c: i64,
    pub count: i32,
    pub beta: f32,
    /// Per product, the offsets of A, B and C from `a`, `b` and `c` (a
    /// batch whose offsets do not step evenly: attention's heads written
    /// into a permuted output); the strides are then unused.
    pub list: Vec<(usize, usize, usize)>,
}

/// One step of the plan, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Launch {
    /// Kernel `kernel`'s PTX entry: operand addresses (reads, then writes)
    /// and its count (an elementwise loop's length, a copy kernel's batch);
    /// `threads` is how many threads the work has (the grid's size).
    Entry { kernel: usize, entry: String, args: Vec<Addr>, count: u64, threads: u64 },
    /// `len` floats at `at` set to `value` (the next entry accumulates there).
    Fill { at: Addr, len: usize, value: f32 },
    /// Kernel `kernel`'s matmul as cuBLAS calls, in order.
    Gemm { kernel: usize, calls: Vec<Blas> },
    /// A feedback output copied into its input after the step.
    CopyBack { from: Addr, to: Addr, len: usize },
    /// Kernel `kernel`'s `count` products of `len` floats at `from`, one
    /// after another, summed in order into `to` (overwritten; the PTX entry
    /// [`super::super::ptx::SUM_MATS`]).
    SumMats { kernel: usize, from: Addr, to: Addr, count: usize, len: usize },
}

/// The launches of a step at one batch size.
#[derive(Clone, Debug)]
pub struct Plan {
    pub batch: usize,
    pub launches: Vec<Launch>,
    /// The `size_of` values at this batch size ([`Mem::Size`]).
    pub sizes: Vec<f32>,
    pub arena_bytes: u64,
    /// Floats of [`Mem::Scratch`] the plan uses.
    pub scratch_floats: usize,
    /// Named outputs: address and element count.
    pub outputs: Vec<(String, Addr, usize)>,
}

/// The plan of `g`'s `kernels` at `batch`. `entries` is, per kernel, its
/// PTX entry's name or why it has none ([`super::super::ptx::module`]); a
/// non-gemm kernel without one is an error naming it.
pub fn plan(
    g: &Graph,
    kernels: &[Kernel],
    entries: &[Result<String, String>],
    feedback: &Feedback,
    batch: usize,
) -> Result<Plan, String> {
    if batch == 0 {
        return Err("a batch of 0 samples".into());
    }
    let mem = memory::plan(g, kernels, batch as u64);
    let mut sizes = Vec::new();
    let mut addr: std::collections::HashMap<NodeId, Addr> = std::collections::HashMap::new();
    for (id, place) in layout::places(g, &mem, feedback) {
        let a = match place {
            Place::Input(x) | Place::Into(x) => Addr { mem: Mem::Input(x), offset: 0 },
            Place::Const(c) => Addr { mem: Mem::Const(c), offset: 0 },
            Place::Size(v) => {
                sizes.push(v);
                Addr { mem: Mem::Size(sizes.len() - 1), offset: 0 }
            }
            Place::View(x) => addr[&x],
            Place::Arena(off) => Addr { mem: Mem::Arena, offset: off as usize / 4 },
            Place::Unstored => Addr { mem: Mem::Null, offset: 0 },
        };
        addr.insert(id, a);
    }
    let elems = |id: NodeId| concrete(&g.ty(id).shape, batch).iter().product::<usize>();
    let mut launches = Vec::new();
    let mut scratch_floats = 0;
    for (i, k) in kernels.iter().enumerate() {
        match k.kind {
            KernelKind::Gemm => {
                let id = k.nodes[0];
                let Op::MatMul { ta, tb } = g.node(id).op else {
                    return Err(format!("kernel {i}: a gemm kernel without a matmul"));
                };
                let out = *k.nodes.last().expect("a matmul");
                let d = match g.node(out).op {
                    _ if out == id => layout::gemm_dims(g, id, ta, tb, batch),
                    Op::Permute { .. } => layout::gemm_dims_permuted(g, id, out, batch),
                    _ => layout::gemm_dims_summed(g, id, batch),
                };
                let ins = g.inputs(id);
                let fail = |why: String| format!("kernel {i} (a matmul) cannot run on CUDA: {why}");
                if d.sum && d.dst == (d.n as isize, 1) {
                    // The products side by side in scratch, in one batched
                    // call, then added in order.
                    let len = d.m * d.n;
                    let mut apart = d.clone();
                    apart.sum = false;
                    for (j, e) in apart.each.iter_mut().enumerate() {
                        e.2 = j * len;
                    }
                    let scratch = Addr { mem: Mem::Scratch, offset: 0 };
                    let calls = blas(&apart, addr[&ins[0]], addr[&ins[1]], scratch).map_err(fail)?;
                    launches.push(Launch::Gemm { kernel: i, calls });
                    let count = apart.each.len();
                    if len >= 1 << 32 || count >= 1 << 32 {
                        return Err(fail(format!(
                            "{count} products of {len} floats: past the summing kernel's 32-bit counts"
                        )));
                    }
                    launches.push(Launch::SumMats { kernel: i, from: scratch, to: addr[&out], count, len });
                    scratch_floats = scratch_floats.max(count * len);
                    continue;
                }
                let calls = blas(&d, addr[&ins[0]], addr[&ins[1]], addr[&out]).map_err(fail)?;
                launches.push(Launch::Gemm { kernel: i, calls });
            }
            KernelKind::Elementwise | KernelKind::Copy => {
                let entry = entries[i].clone().map_err(|why| {
                    let ops: Vec<String> = k.nodes.iter().map(|n| g.node(*n).op.name()).collect();
                    format!("kernel {i} ({}) has no PTX: {why}", ops.join(", "))
                })?;
                if let Some((r, v)) = loops::reduction_identity(g, k) {
                    launches.push(Launch::Fill { at: addr[&r], len: elems(r), value: v });
                }
                let (count, threads) = match k.kind {
                    KernelKind::Copy => {
                        let node = k.nodes[0];
                        if matches!(g.node(node).op, Op::Col2Im { .. } | Op::ScatterAdd { .. }) {
                            launches.push(Launch::Fill { at: addr[&node], len: elems(node), value: 0.0 });
                        }
                        // One thread per output element, or per source
                        // element (col2im, scatter-add): the largest operand.
                        let most = k.reads.iter().chain(&k.writes).map(|v| elems(*v)).max().unwrap_or(1);
                        (batch as u64, most as u64)
                    }
                    _ => {
                        let n = concrete(&loops::loop_shape(g, k).ok_or("a kernel without a loop")?, batch)
                            .iter()
                            .product::<usize>() as u64;
                        (n, n)
                    }
                };
                let args = k.reads.iter().chain(&k.writes).map(|v| addr[v]).collect();
                launches.push(Launch::Entry { kernel: i, entry, args, count, threads });
            }
        }
    }
    for (v, x) in &feedback.copy_back {
        launches.push(Launch::CopyBack { from: addr[v], to: addr[x], len: elems(*x) });
    }
    let outputs = g.outputs.iter().map(|(name, id)| (name.clone(), addr[id], elems(*id))).collect();
    Ok(Plan { batch, launches, sizes, arena_bytes: mem.arena_bytes, scratch_floats, outputs })
}

/// How a stored matrix is read by cuBLAS: (transposed, leading dimension),
/// for element (r, c) of an `rows`×`cols` operand at r·rs + c·cs; None when
/// neither stride is 1.
fn operand(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(bool, i32)> {
    // Column-major as it stands: element (r, c) at r + c·ld.
    let plain = (rs == 1 || rows == 1).then_some((false, cs.max(rows as isize)));
    // Stored transposed: element (r, c) at c + r·ld.
    let flipped = (cs == 1 || cols == 1).then_some((true, rs.max(cols as isize)));
    let (t, ld) = if rs == 1 && cs != 1 { plain } else { flipped.or(plain) }?;
    // A single column or row never reads its leading dimension past the
    // first; cuBLAS still asks for one at least as large as the rows.
    let ld = if t { ld.max(cols as isize) } else { ld.max(rows as isize) };
    Some((t, i32::try_from(ld).ok()?))
}

fn int(v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("a dimension of {v} is beyond cuBLAS's 32-bit sizes"))
}

/// The cuBLAS calls of a gemm kernel's calls `d` over operands at `a`, `b`
/// and output at `c` (see the module docs).
pub fn blas(d: &GemmDims, a: Addr, b: Addr, c: Addr) -> Result<Vec<Blas>, String> {
    let (m, n, k) = (d.m, d.n, d.k);
    // Column-major C' = op(A')·op(B'), M'×N', with (A', B', C') either
    // (B, A, Cᵀ): C's rows contiguous; or (A, B, C): its columns.
    let (crs, ccs) = d.dst;
    let swap = ccs == 1 || (n == 1 && crs != 1);
    let (mm, nn, first, second, ldc) = if swap {
        // op(A')[j, p] = B[p, j]; op(B')[p, i] = A[i, p]; C'[j, i] at j + i·crs.
        let x = operand(n, k, d.rhs.1, d.rhs.0).ok_or("the right operand has no unit stride")?;
        let y = operand(k, m, d.lhs.1, d.lhs.0).ok_or("the left operand has no unit stride")?;
        (n, m, x, y, crs.max(n as isize))
    } else if crs == 1 || m == 1 {
        let x = operand(m, k, d.lhs.0, d.lhs.1).ok_or("the left operand has no unit stride")?;
        let y = operand(k, n, d.rhs.0, d.rhs.1).ok_or("the right operand has no unit stride")?;
        (m, n, x, y, ccs.max(m as isize))
    } else {
        return Err(format!("an output with strides {:?} has no unit stride", d.dst));
    };
    let (pa, pb) = if swap { (b, a) } else { (a, b) };
    // Per call: offsets of A', B', C.
    let each: Vec<(usize, usize, usize)> =
        d.each.iter().map(|(oa, ob, oc)| if swap { (*ob, *oa, *oc) } else { (*oa, *ob, *oc) }).collect();
    let one = |(oa, ob, oc): (usize, usize, usize),
               stride: (i64, i64, i64),
               count: usize,
               beta: f32|
     -> Result<Blas, String> {
        Ok(Blas {
            ta: first.0,
            tb: second.0,
            m: int(mm)?,
            n: int(nn)?,
            k: int(k)?,
            a: pa.plus(oa),
            lda: first.1,
            stride_a: stride.0,
            b: pb.plus(ob),
            ldb: second.1,
            stride_b: stride.1,
            c: c.plus(oc),
            ldc: i32::try_from(ldc).map_err(|_| "an output stride beyond 32 bits")?,
            stride_c: stride.2,
            count: int(count)?,
            beta,
            list: Vec::new(),
        })
    };
    if d.sum {
        // Every product into the one output, in order.
        return each.iter().enumerate().map(|(i, e)| one(*e, (0, 0, 0), 1, if i == 0 { 0.0 } else { 1.0 })).collect();
    }
    // Offsets that step evenly: one strided-batched call; otherwise one
    // call over pointer arrays.
    let even = each.len() > 1 && {
        let s0 = (
            each[1].0 as i64 - each[0].0 as i64,
            each[1].1 as i64 - each[0].1 as i64,
            each[1].2 as i64 - each[0].2 as i64,
        );
        s0.0 >= 0
            && s0.1 >= 0
            && s0.2 > 0
            && each.windows(2).all(|w| {
                (w[1].0 as i64 - w[0].0 as i64, w[1].1 as i64 - w[0].1 as i64, w[1].2 as i64 - w[0].2 as i64) == s0
            })
    };
    if each.len() > 1 && !even {
        let mut call = one((0, 0, 0), (0, 0, 0), each.len(), 0.0)?;
        call.list = each;
        return Ok(vec![call]);
    }
    if each.len() == 1 {
        return Ok(vec![one(each[0], (0, 0, 0), 1, 0.0)?]);
    }
    let (p, q) = (each[0], each[1]);
    let stride = (q.0 as i64 - p.0 as i64, q.1 as i64 - p.1 as i64, q.2 as i64 - p.2 as i64);
    Ok(vec![one(each[0], stride, each.len(), 0.0)?])
}
