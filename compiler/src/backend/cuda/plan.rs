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
//!   ([`crate::kernel::layout::GemmDims`]) whose offsets step evenly become
//!   one strided-batched call; a batch summed into one output runs its
//!   products in order, the first with β = 0 and the rest with β = 1.
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

/// One cuBLAS `sgemm` (column-major; `count` > 1: strided batched):
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
}

/// The launches of a step at one batch size.
#[derive(Clone, Debug)]
pub struct Plan {
    pub batch: usize,
    pub launches: Vec<Launch>,
    /// The `size_of` values at this batch size ([`Mem::Size`]).
    pub sizes: Vec<f32>,
    pub arena_bytes: u64,
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
                let calls = blas(&d, addr[&ins[0]], addr[&ins[1]], addr[&out])
                    .map_err(|why| format!("kernel {i} (a matmul) cannot run on CUDA: {why}"))?;
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
    Ok(Plan { batch, launches, sizes, arena_bytes: mem.arena_bytes, outputs })
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
        })
    };
    if d.sum {
        // Every product into the one output, in order.
        return each.iter().enumerate().map(|(i, e)| one(*e, (0, 0, 0), 1, if i == 0 { 0.0 } else { 1.0 })).collect();
    }
    // Runs of calls whose offsets step evenly: one strided-batched call each.
    let mut calls = Vec::new();
    let mut i = 0;
    while i < each.len() {
        let step = |j: usize| {
            let (p, q) = (each[j], each[j + 1]);
            (q.0 as i64 - p.0 as i64, q.1 as i64 - p.1 as i64, q.2 as i64 - p.2 as i64)
        };
        let mut end = i + 1;
        if end < each.len() && {
            let s = step(i);
            s.0 >= 0 && s.1 >= 0 && s.2 > 0
        } {
            let s = step(i);
            while end < each.len() && step(end - 1) == s {
                end += 1;
            }
            calls.push(one(each[i], s, end - i, 0.0)?);
        } else {
            calls.push(one(each[i], (0, 0, 0), 1, 0.0)?);
        }
        i = end;
    }
    Ok(calls)
}
