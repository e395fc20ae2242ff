//! The compiled CPU program: a graph's kernels as native code, run in order
//! over one arena.
//!
//! [`Program::new`] fuses the graph into kernels and compiles every one:
//! elementwise chains and reductions to Cranelift functions ([`clif`]),
//! matmuls to calls of the `gemm` crate (transposes as strides, never
//! copied), data movement (permute, slice, pad, concat, im2col, col2im,
//! gather, scatter-add, one-hot, argmax) and max pooling with its gradient
//! to the monomorphic loops of
//! [`copy`](self::copy_kernel). A kernel that cannot be compiled is an error
//! that names it: there is no fallback to the interpreter.
//!
//! For each batch size the program meets it makes a [`Layout`] once: the
//! memory plan's arena offsets resolved to pointers and every call's
//! arguments and sizes. Running a step then only calls kernels: no lookup,
//! and no allocation but the `gemm` crate's packing buffers (per call;
//! [`GEMMS_IN_FLIGHT`] marks them). Inputs live outside the arena, in buffers the
//! program owns or in memory bound by the caller ([`Program::bind`]), which
//! is how a training step and an evaluation graph share their parameters.
//!
//! Threads: a step runs in one pool (the CLI's main thread is one of its
//! workers: [`run_kernels_on_this_thread`]); big loops split in two, and a
//! second worker spins through the step (`keeping_a_helper_awake`) so that a split
//! after single-threaded work does not first wait for a sleeping thread.
//!
//! A col2im right after the per-image gemm that makes its only operand (a
//! convolution's input gradient) runs inside that gemm's call, on each
//! image's product while it is in cache (`GemmOut::Col2Im`); the col2im's
//! own call is then empty (`Call::Joined`: the profile shows its time in
//! the gemm's). The kernel list, shared with the PTX renderer, is unchanged.
//!
//! Subnormal floats are flushed to zero while kernels run
//! ([`denormals`]): on x86 cores they cost a microcode assist each, and
//! optimizer state decays into them.
//!
//! Feedback: an output `new.X` is the next value of input `X`. When the
//! kernel that computes it is the last to read `X`, it writes straight into
//! `X`'s buffer; otherwise the value is copied there after the run.

use std::collections::HashMap;

use gemm::{gemm, Parallelism};

pub mod clif;
mod denormals;

use self::clif::{Jit, KernelFn};
use crate::gradcheck::concrete;
use crate::ir::verify::VerifiedGraph;
use crate::ir::{Dim, Graph, NodeId, Op, Shape};
use crate::kernel::fusion::{self, Kernel, KernelKind};
use crate::kernel::layout::{self, Place};
use crate::kernel::{loops, memory};

/// Matmuls `A·Bᵀ` of at least this many multiply-adds with fewer rows than
/// columns are computed transposed (see `Call::Gemm::via`).
const TRANSPOSED_FLOPS: usize = 1 << 20;
/// Loops at least this long are split between the threads.
const PARALLEL_ELEMENTS: usize = 1 << 15;
/// Matmuls of at least this many multiply-adds use every thread.
const PARALLEL_FLOPS: usize = 1 << 18;

/// A raw pointer that may cross threads: every kernel writes disjoint
/// elements, and the program's memory outlives its calls.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
struct P(*mut f32);
// SAFETY: see the type's comment; the program never hands these out.
unsafe impl Send for P {}
unsafe impl Sync for P {}

impl P {
    fn get(self) -> *mut f32 {
        self.0
    }
}

enum Code {
    Clif { f: KernelFn, identity: Option<(NodeId, f32)>, row: usize },
    Gemm,
    Copy,
}

enum Storage {
    Owned(Vec<f32>),
    Bound(P, usize),
}

struct Input {
    node: NodeId,
    shape: Shape,
    storage: Storage,
}

/// The second thread's half of a split reduction (see `Call::Clif`).
struct Partial {
    /// The kernel's arguments with the reduction's output replaced by `scratch`.
    args: Vec<P>,
    out: P,
    scratch: P,
    len: usize,
    max: bool,
}

/// One kernel call with everything resolved for a batch size.
enum Call {
    Clif {
        f: KernelFn,
        /// One pointer per read and write (`P` is a transparent pointer).
        args: Vec<P>,
        n: usize,
        /// Where to split the loop between two threads (a row boundary).
        split: Option<usize>,
        /// A reduction's output, its element count and identity, filled first.
        fill: Option<(P, usize, f32)>,
        /// A reduction over the batch split between the threads: the
        /// second half accumulates into its own copy of the output, added
        /// (or max-combined) in after both halves.
        partial: Option<Partial>,
    },
    Gemm {
        m: usize,
        n: usize,
        k: usize,
        /// (row stride, column stride) of the left and right operands.
        lhs: (isize, isize),
        rhs: (isize, isize),
        /// (row stride, column stride) of the output.
        dst: (isize, isize),
        /// (lhs, rhs, dst) per matrix of the leading dimensions.
        each: Vec<(P, P, P)>,
        /// Where the products go.
        out: GemmOut,
    },
    Copy {
        op: Op,
        src: Vec<(P, Vec<usize>)>,
        dst: (P, Vec<usize>),
    },
    /// Computed by the previous kernel's call (a col2im after its gemm).
    Joined,
}

/// Where a gemm kernel's products go. The call's dimensions may be those of
/// the transposed product ([`layout::GemmDims::transposed`]), chosen when
/// the layout is built: `A·Bᵀ` with fewer rows than columns is slow in the
/// `gemm` crate (it packs the wide operand transposed), `B·Aᵀ` is fast, and
/// so are outputs with contiguous rows.
enum GemmOut {
    /// Each product into its place (by the call's output strides).
    Direct,
    /// The one product (computed transposed) into this scratch, then
    /// transposed into the output.
    ViaScratch(P),
    /// The products summed into the output (a batch sum in the kernel): each
    /// half of them accumulates in order into its own buffer, on its own
    /// thread when the work pays, and the halves are added. Untransposed:
    /// the output and the scratch (m·n); transposed: both halves of the
    /// scratch (2·m·n), added into the output transposed.
    Sum { scratch: P, transposed: bool },
    /// One product whose contraction is long and whose output is small
    /// ([`splits_k`]): each thread computes half of the contraction
    /// single-threaded, the first into the output, the second into this
    /// scratch (m·n, rows contiguous), added after.
    SplitK(P),
    /// One product per image whose only use is the col2im in the next
    /// kernel (a convolution's input gradient): each image's product goes
    /// to its thread's scratch, which stays in cache, and is added into the
    /// image's pixels from there; the product is never stored whole.
    Col2Im(Box<Col2ImAfter>),
}

/// The col2im a gemm kernel runs on each image's product ([`GemmOut::Col2Im`]).
struct Col2ImAfter {
    /// The pixels: the first image's, `per` floats each.
    out: P,
    per: usize,
    /// Two products' room: the first half of the images uses the first.
    scratch: P,
    geo: Windows,
}

/// The geometry of im2col's and col2im's windows over [c, h, w] images.
#[derive(Clone, Copy)]
struct Windows {
    c: usize,
    hw: (usize, usize),
    kernel: (u64, u64),
    stride: (u64, u64),
    padding: (u64, u64),
}

/// Whether a gemm kernel's one product splits its contraction between the
/// threads: when k is at least four times the output's larger side, the
/// `gemm` crate's own split (over the output's rows and columns) leaves the
/// second thread little work that pays: [4096]ᵀ products of char_gpt's
/// weight gradients ran at 200–260 GFLOP/s on two threads, 290–330 split
/// this way (`cargo bench --bench gemm`, the k-split column).
fn splits_k(d: &layout::GemmDims) -> bool {
    d.each.len() == 1 && d.k >= 4 * d.m.max(d.n) && d.m * d.n * d.k >= PARALLEL_FLOPS
}

/// A program's calls for one batch size.
pub struct Layout {
    calls: Vec<Call>,
    /// Values `size_of` yields at this batch size (pointed to by calls).
    _sizes: Vec<Box<[f32]>>,
    /// Named outputs: pointer and element count.
    outputs: HashMap<String, (P, usize)>,
    /// Feedback values not written in place: (from, to, elements).
    copy_back: Vec<(P, P, usize)>,
    /// Scratch shared by the gemm kernels (they run one at a time): a
    /// product computed transposed, the halves of a batch sum, the second
    /// half of a split contraction (see [`GemmOut`]).
    _scratch: Vec<f32>,
    pub arena_bytes: u64,
}

pub struct Program {
    g: Graph,
    kernels: Vec<Kernel>,
    code: Vec<Code>,
    _jit: Jit,
    inputs: HashMap<String, Input>,
    consts: HashMap<NodeId, Box<[f32]>>,
    /// How every `new.X` output reaches input `X` (decided once: it does
    /// not depend on the batch size).
    feedback: layout::Feedback,
    arena: Vec<f32>,
    layouts: HashMap<usize, Layout>,
    capacity: usize,
    /// Per kernel: time spent, calls and gemm operations, when profiling.
    profile: Option<Vec<Spent>>,
}

/// Elements of `shape` at `batch` (no allocation: called every step).
fn elements(shape: &Shape, batch: usize) -> usize {
    shape.0.iter().map(|d| if let Dim::Fixed(n) = d { *n as usize } else { batch }).product()
}

impl Program {
    /// Compiles `g` (optimized and verified: `pipeline`). Inputs start as
    /// zeros.
    pub fn new(g: VerifiedGraph) -> Result<Program, String> {
        let g = g.into_graph();
        let kernels = fusion::fuse(&g);
        let mut jit = Jit::new()?;
        let mut code = Vec::with_capacity(kernels.len());
        for (i, k) in kernels.iter().enumerate() {
            code.push(match k.kind {
                KernelKind::Elementwise => {
                    // Named by the kernel's index, as `modelc graph --stage
                    // kernels` and the profile number them.
                    let f = jit.compile_as(&g, k, &format!("kernel{i}")).map_err(|why| {
                        let ops: Vec<String> = k.nodes.iter().map(|n| g.node(*n).op.name()).collect();
                        format!("kernel {i} ({}) cannot be compiled: {why}", ops.join(", "))
                    })?;
                    let identity = loops::reduction_identity(&g, k);
                    let row = loops::loop_nest(&g, k).and_then(|l| l.inner).unwrap_or(1) as usize;
                    Code::Clif { f, identity, row }
                }
                KernelKind::Gemm => match g.node(k.nodes[0]).op {
                    Op::MatMul { .. } => Code::Gemm,
                    _ => return Err(format!("kernel {i}: a gemm kernel without a matmul")),
                },
                KernelKind::Copy => Code::Copy,
            });
        }
        let mut inputs = HashMap::new();
        let mut consts = HashMap::new();
        for id in g.ids() {
            match &g.node(id).op {
                Op::Input { name, .. } => {
                    let shape = g.ty(id).shape.clone();
                    let storage = Storage::Owned(vec![0.0; elements(&shape, 1)]);
                    inputs.insert(name.clone(), Input { node: id, shape, storage });
                }
                Op::Const { value } => {
                    consts.insert(id, vec![*value as f32].into_boxed_slice());
                }
                _ => {}
            }
        }
        let pairs: Vec<(NodeId, NodeId)> = g
            .outputs
            .iter()
            .filter_map(|(name, id)| Some((*id, inputs.get(name.strip_prefix("new.")?)?.node)))
            .collect();
        let feedback = layout::feedback(&g, &kernels, &pairs);
        Ok(Program {
            g,
            kernels,
            code,
            _jit: jit,
            inputs,
            consts,
            feedback,
            arena: Vec::new(),
            layouts: HashMap::new(),
            capacity: 1,
            profile: None,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.g
    }

    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    /// Input names with their shapes.
    pub fn input_shapes(&self) -> Vec<(String, Shape)> {
        let mut v: Vec<(String, Shape)> = self.inputs.iter().map(|(k, i)| (k.clone(), i.shape.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Makes input `name` live in `len` floats at `ptr` (owned by the caller).
    ///
    /// # Safety
    /// `ptr` must stay valid for reads and writes of `len` floats, and must
    /// not be used by anything else while the program runs, for as long as
    /// the program exists.
    pub unsafe fn bind(&mut self, name: &str, ptr: *mut f32, len: usize) -> Result<(), String> {
        let input = self.inputs.get_mut(name).ok_or_else(|| format!("the program has no input `{name}`"))?;
        if input.shape.has_batch() || elements(&input.shape, 1) != len {
            return Err(format!("input `{name}` of shape {} cannot live in {len} floats", input.shape));
        }
        input.storage = Storage::Bound(P(ptr), len);
        self.layouts.clear();
        Ok(())
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.contains_key(name)
    }

    /// Kernels computed by the previous kernel's call at `batch` (a col2im
    /// run on each image's product by the gemm before it).
    pub fn joined_kernels(&self, batch: usize) -> usize {
        self.layouts.get(&batch).map_or(0, |l| l.calls.iter().filter(|c| matches!(c, Call::Joined)).count())
    }

    /// Gemm kernels per run (each a call of the `gemm` crate, which
    /// allocates its packing buffers per call).
    pub fn gemm_calls(&self, batch: usize) -> usize {
        self.layouts
            .get(&batch)
            .map_or(0, |l| l.calls.iter().map(|c| if let Call::Gemm { each, .. } = c { each.len() } else { 0 }).sum())
    }

    /// The buffer of input `name`, sized for `batch` samples.
    pub fn input_mut(&mut self, name: &str, batch: usize) -> Result<&mut [f32], String> {
        self.reserve(batch);
        let input = self.inputs.get_mut(name).ok_or_else(|| format!("the program has no input `{name}`"))?;
        let len = elements(&input.shape, batch);
        Ok(match &mut input.storage {
            Storage::Owned(v) => &mut v[..len],
            // SAFETY: `bind`'s contract.
            Storage::Bound(p, n) => unsafe { std::slice::from_raw_parts_mut(p.0, *n) },
        })
    }

    /// Makes input buffers hold at least `batch` samples.
    fn reserve(&mut self, batch: usize) {
        if batch <= self.capacity {
            return;
        }
        self.capacity = batch;
        for input in self.inputs.values_mut() {
            if let Storage::Owned(v) = &mut input.storage {
                v.resize(elements(&input.shape, batch), 0.0);
            }
        }
        // Buffers moved: every layout's pointers are stale.
        self.layouts.clear();
    }

    fn input_ptr(&mut self, id: NodeId) -> P {
        let Op::Input { name, .. } = &self.g.node(id).op else { unreachable!("input_ptr of an input") };
        match &mut self.inputs.get_mut(name).expect("every input has a buffer").storage {
            Storage::Owned(v) => P(v.as_mut_ptr()),
            Storage::Bound(p, _) => *p,
        }
    }

    /// The layout for `batch`, made on first use.
    pub fn layout(&mut self, batch: usize) -> &Layout {
        self.reserve(batch);
        if !self.layouts.contains_key(&batch) {
            let plan = memory::plan(&self.g, &self.kernels, batch as u64);
            let floats = (plan.arena_bytes / 4) as usize;
            if floats > self.arena.len() {
                self.arena = vec![0.0; floats];
                self.layouts.clear();
            }
            let layout = self.make_layout(batch, &plan);
            self.layouts.insert(batch, layout);
        }
        &self.layouts[&batch]
    }

    fn make_layout(&mut self, batch: usize, plan: &memory::Plan) -> Layout {
        // The kernel stage decides where values live; this resolves it to
        // pointers into this program's buffers.
        let g = &self.g;
        let places = layout::places(g, plan, &self.feedback);
        let arena = P(self.arena.as_mut_ptr());
        let mut sizes: Vec<Box<[f32]>> = Vec::new();
        let mut addr: HashMap<NodeId, P> = HashMap::new();
        let input_ids: Vec<NodeId> = self.inputs.values().map(|i| i.node).collect();
        let mut input_ptrs: HashMap<NodeId, P> = HashMap::new();
        for id in input_ids {
            let p = self.input_ptr(id);
            input_ptrs.insert(id, p);
        }
        let g = &self.g;
        for (id, place) in places {
            let p = match place {
                Place::Input(x) | Place::Into(x) => input_ptrs[&x],
                Place::Const(c) => P(self.consts.get_mut(&c).expect("a constant's buffer").as_mut_ptr()),
                Place::Size(v) => {
                    let mut b = vec![v].into_boxed_slice();
                    let p = P(b.as_mut_ptr());
                    sizes.push(b);
                    p
                }
                Place::View(x) => addr[&x],
                // SAFETY: the plan keeps every buffer inside the arena.
                Place::Arena(off) => P(unsafe { arena.0.add(off as usize / 4) }),
                Place::Unstored => P(std::ptr::null_mut()),
            };
            addr.insert(id, p);
        }
        // Scratch for the matmuls computed transposed: the largest of them.
        let transposed = |id: NodeId| -> Option<usize> {
            let Op::MatMul { ta: false, tb: true } = g.node(id).op else { return None };
            let s = concrete(&g.ty(id).shape, batch);
            let (r, m, n) = (s.len(), s[s.len() - 2], s[s.len() - 1]);
            let k = *concrete(&g.ty(g.inputs(id)[0]).shape, batch).last()?;
            (r == 2 && m < n && m * n * k >= TRANSPOSED_FLOPS).then_some(m * n)
        };
        // ... and for the batch sums computed by a gemm kernel: one product.
        let summed = |k: &Kernel| -> Option<usize> {
            let (first, last) = (k.nodes[0], *k.nodes.last()?);
            (first != last && layout::gemm_dims_summed(g, first, batch).sum)
                .then(|| 2 * concrete(&g.ty(last).shape, batch).iter().product::<usize>())
        };
        // A gemm kernel's calls: with a sum over the batch folded in, the
        // sum's output; with a permute, the permuted product's.
        let dims = |kernel: &Kernel| -> layout::GemmDims {
            let id = kernel.nodes[0];
            let Op::MatMul { ta, tb } = g.node(id).op else { unreachable!("a gemm kernel starts with its matmul") };
            let out = *kernel.nodes.last().expect("a matmul");
            match g.node(out).op {
                _ if out == id => layout::gemm_dims(g, id, ta, tb, batch),
                Op::Permute { .. } => layout::gemm_dims_permuted(g, id, out, batch),
                _ => layout::gemm_dims_summed(g, id, batch),
            }
        };
        // ... and for a product whose contraction is split between the
        // threads: the second half's product.
        let split_k = |kernel: &Kernel| {
            let d = dims(kernel);
            splits_k(&d).then_some(d.m * d.n)
        };
        let scratch_len = self
            .kernels
            .iter()
            .filter(|k| k.kind == KernelKind::Gemm)
            .filter_map(|k| transposed(k.nodes[0]).max(summed(k)).max(split_k(k)))
            .max()
            .unwrap_or(0);
        let mut scratch = vec![0.0f32; scratch_len];
        let scratch_ptr = P(scratch.as_mut_ptr());
        let mut calls = Vec::with_capacity(self.kernels.len());
        for (kernel, code) in self.kernels.iter().zip(&self.code) {
            calls.push(match code {
                Code::Clif { f, identity, row } => {
                    let shape = loops::loop_shape(g, kernel).unwrap_or_else(Shape::scalar);
                    let n = elements(&shape, batch);
                    let args: Vec<P> = kernel.reads.iter().chain(&kernel.writes).map(|v| addr[v]).collect();
                    let half = match identity {
                        // Split between samples when each keeps its own
                        // outputs (the batch axis is not reduced).
                        Some((r, _)) => (g.ty(*r).shape.has_batch() && batch >= 2)
                            .then(|| batch / 2 * (n / batch))
                            .filter(|h| h % row == 0),
                        None => Some((n / row).div_ceil(2) * row),
                    };
                    let mut split = half.filter(|h| n >= PARALLEL_ELEMENTS && *h > 0 && *h < n);
                    let fill = identity.map(|(r, v)| (addr[&r], elements(&g.ty(r).shape, batch), v));
                    // A reduction over the batch (a bias gradient): the
                    // second half sums into a private copy of the output.
                    let mut partial = None;
                    if let (Some((r, _)), None) = (identity, split) {
                        let h = (n / row).div_ceil(2) * row;
                        if n >= PARALLEL_ELEMENTS && h > 0 && h < n {
                            let len = elements(&g.ty(*r).shape, batch);
                            let mut own = vec![0.0f32; len].into_boxed_slice();
                            let scratch = P(own.as_mut_ptr());
                            sizes.push(own);
                            let slot = kernel.reads.len() + kernel.writes.iter().position(|w| w == r).expect("written");
                            let mut args2: Vec<P> = args.clone();
                            args2[slot] = scratch;
                            let max = matches!(g.node(*r).op, Op::Reduce { op: crate::ir::ReduceOp::Max, .. });
                            partial = Some(Partial { args: args2, out: addr[r], scratch, len, max });
                            split = Some(h);
                        }
                    }
                    Call::Clif { f: *f, args, n, split, fill, partial }
                }
                Code::Gemm => {
                    let id = kernel.nodes[0];
                    let ins = g.inputs(id);
                    let out = *kernel.nodes.last().expect("a matmul");
                    let d = dims(kernel);
                    // Computed transposed: A·Bᵀ with fewer rows than columns
                    // (alone and large, or summed over a batch), and a
                    // product written with a column stride (a permute that
                    // moves its last axis), whose transposed rows are then
                    // contiguous.
                    let slow_abt = matches!(g.node(id).op, Op::MatMul { ta: false, tb: true }) && d.m < d.n;
                    let via = transposed(id).filter(|_| out == id).map(|_| scratch_ptr);
                    let flip = via.is_some() || (d.sum && slow_abt) || (!d.sum && d.dst.1 != 1 && d.dst.0 == 1);
                    let (d, a_in, b_in) = if flip { (d.transposed(), ins[1], ins[0]) } else { (d, ins[0], ins[1]) };
                    let (pa, pb, po) = (addr[&a_in], addr[&b_in], addr[&out]);
                    // SAFETY: offsets of matrices inside their tensors.
                    let each = d
                        .each
                        .iter()
                        .map(|(a, b, o)| unsafe { (P(pa.0.add(*a)), P(pb.0.add(*b)), P(po.0.add(*o))) })
                        .collect();
                    let out = match via {
                        Some(t) => GemmOut::ViaScratch(t),
                        None if splits_k(&d) => GemmOut::SplitK(scratch_ptr),
                        None if d.sum => GemmOut::Sum { scratch: scratch_ptr, transposed: flip },
                        None => GemmOut::Direct,
                    };
                    Call::Gemm { m: d.m, n: d.n, k: d.k, lhs: d.lhs, rhs: d.rhs, dst: d.dst, each, out }
                }
                Code::Copy => {
                    let id = kernel.nodes[0];
                    let src = g.inputs(id).iter().map(|x| (addr[x], concrete(&g.ty(*x).shape, batch))).collect();
                    Call::Copy { op: g.node(id).op.clone(), src, dst: (addr[&id], concrete(&g.ty(id).shape, batch)) }
                }
            });
        }
        // A col2im right after the per-image gemm that makes its only
        // operand runs on each image's product as it is made.
        for i in 1..calls.len() {
            let (prev, this) = (&self.kernels[i - 1], &self.kernels[i]);
            let Some(after) = col2im_after(g, prev, this, batch, &addr, &calls[i - 1], &mut sizes) else { continue };
            let Call::Gemm { out, .. } = &mut calls[i - 1] else { unreachable!("checked by col2im_after") };
            *out = GemmOut::Col2Im(Box::new(after));
            calls[i] = Call::Joined;
        }
        let outputs =
            g.outputs.iter().map(|(name, id)| (name.clone(), (addr[id], elements(&g.ty(*id).shape, batch)))).collect();
        let copy_back = self
            .feedback
            .copy_back
            .iter()
            .map(|(v, x)| (addr[v], input_ptrs[x], elements(&g.ty(*x).shape, batch)))
            .collect();
        Layout { calls, _sizes: sizes, outputs, copy_back, _scratch: scratch, arena_bytes: plan.arena_bytes }
    }

    /// Runs the graph on `batch` samples. Inputs must be filled for that
    /// batch (`input_mut`); outputs are read with `output` until the next run.
    pub fn run(&mut self, batch: usize) -> Result<(), String> {
        self.layout(batch);
        let layout = &self.layouts[&batch];
        // The whole step runs on a worker of the pool, so splitting a kernel
        // between the threads is a cheap local fork, not a wake-up from
        // outside the pool.
        pool().install(|| -> Result<(), String> {
            // The pool's own threads flush from their start; this one may
            // be the caller's (see `denormals`).
            let _flushing = denormals::Flushing::start();
            let profile = &mut self.profile;
            keeping_a_helper_awake(|| run_calls(&layout.calls, profile))
        })?;
        for (from, to, n) in &layout.copy_back {
            // SAFETY: both buffers hold n floats and do not overlap (an
            // output in the arena, an input outside it).
            unsafe { std::ptr::copy_nonoverlapping(from.0, to.0, *n) };
        }
        Ok(())
    }

    /// Starts timing every kernel call (a clock read around each).
    pub fn start_profile(&mut self) {
        self.profile = Some(vec![Spent::default(); self.kernels.len()]);
    }

    /// Kernels by time spent since `start_profile`, most first: (kernel
    /// index, kind and ops, total time, calls).
    pub fn profile(&self) -> Vec<(usize, String, std::time::Duration, u64)> {
        let Some(times) = &self.profile else { return Vec::new() };
        let mut rows: Vec<_> = times
            .iter()
            .enumerate()
            .map(|(i, Spent { time: t, calls: n, .. })| {
                let k = &self.kernels[i];
                let ops: Vec<String> = k.nodes.iter().map(|n| self.g.node(*n).op.name()).collect();
                let what = format!("{} {}", format!("{:?}", k.kind).to_lowercase(), ops.join(","));
                (i, what, *t, *n)
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.2));
        rows
    }

    /// The gemm kernels since `start_profile`: floating-point operations
    /// (2·m·n·k per product) and the time they took, for their rate.
    pub fn gemm_profile(&self) -> (f64, std::time::Duration) {
        let Some(times) = &self.profile else { return (0.0, std::time::Duration::ZERO) };
        times
            .iter()
            .zip(&self.kernels)
            .filter(|(_, k)| k.kind == KernelKind::Gemm)
            .fold((0.0, std::time::Duration::ZERO), |(f, t), (s, _)| (f + s.flops, t + s.time))
    }

    /// Output `name` of the last run at `batch`.
    pub fn output(&self, name: &str, batch: usize) -> Option<&[f32]> {
        let (p, n) = self.layouts.get(&batch)?.outputs.get(name)?;
        // SAFETY: the pointer was made for this layout, whose memory lives
        // as long as the program and is not written between runs.
        Some(unsafe { std::slice::from_raw_parts(p.0, *n) })
    }

    /// The value of input `name` (parameters and state after feedback).
    pub fn input(&self, name: &str) -> Option<&[f32]> {
        let input = self.inputs.get(name)?;
        Some(match &input.storage {
            Storage::Owned(v) => &v[..elements(&input.shape, 1).min(v.len())],
            // SAFETY: `bind`'s contract.
            Storage::Bound(p, n) => unsafe { std::slice::from_raw_parts(p.0, *n) },
        })
    }
}

static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();

/// Makes the calling thread one of the kernels' threads (worker 0 of the
/// pool), so that steps run from it start on it directly instead of being
/// handed to a pool thread, which may be asleep, while the caller sleeps
/// until it is done (`modelc train` on MNIST's MLP, whose step takes about
/// 0.2 ms: about 5% more samples/s, four alternating runs each way). For a thread that lives
/// as long as the process and is the only one to run programs (the CLI's
/// main thread, a benchmark's), before anything compiles. Returns false,
/// changing nothing, when the pool already exists.
pub fn run_kernels_on_this_thread() -> bool {
    let mut built = false;
    POOL.get_or_init(|| {
        built = true;
        build_pool(true)
    });
    built
}

/// The threads kernels run on: `RAYON_NUM_THREADS`, or every core.
fn pool() -> &'static rayon::ThreadPool {
    POOL.get_or_init(|| build_pool(false))
}

/// The kernels' pool, with the calling thread as a worker when `here` (and
/// that is possible); one thread if no pool can be built.
fn build_pool(here: bool) -> rayon::ThreadPool {
    let builder = || {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("modelc-{i}"))
            .start_handler(|_| denormals::flush_on_this_thread())
    };
    let adopted = if here { builder().use_current_thread().build().ok() } else { None };
    adopted
        .map_or_else(|| builder().build(), Ok)
        .unwrap_or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool"))
}

/// A kernel's share of a profile: time, calls, and (gemm kernels)
/// floating-point operations.
#[derive(Clone, Copy, Default)]
struct Spent {
    time: std::time::Duration,
    calls: u64,
    flops: f64,
}

/// The calls of a step in order, timing each when profiling.
fn run_calls(calls: &[Call], profile: &mut Option<Vec<Spent>>) -> Result<(), String> {
    match profile {
        None => {
            for (i, call) in calls.iter().enumerate() {
                run_call(call).map_err(|e| format!("kernel {i}: {e}"))?;
            }
        }
        Some(times) => {
            for (i, call) in calls.iter().enumerate() {
                let t = std::time::Instant::now();
                run_call(call).map_err(|e| format!("kernel {i}: {e}"))?;
                times[i].time += t.elapsed();
                times[i].calls += 1;
                if let Call::Gemm { m, n, k, each, .. } = call {
                    times[i].flops += 2.0 * (m * n * k * each.len()) as f64;
                }
            }
        }
    }
    Ok(())
}

/// Runs `work` (on a worker of the pool) while another worker waits for
/// jobs by spinning, not by sleeping. Between two split kernels a step often
/// runs something on one thread (a small kernel, a copy); a rayon worker
/// idle that long falls asleep, and waking it costs about as much as a small
/// kernel's half (measured on a 2-core VM: a join of two 50 µs halves took
/// 86–110 µs after 0.1–2 ms of single-threaded work, 51–58 µs with a helper
/// spinning). The helper runs the jobs it steals (`rayon::yield_now`) and
/// stops when `work` returns or unwinds. One helper: the kernels split in
/// two; the gemm crate's own splits use whichever workers are awake.
fn keeping_a_helper_awake<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    if rayon::current_num_threads() < 2 {
        return work();
    }
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    // The helper is pushed first, so a worker that steals takes it before
    // any job `work` forks (steals take the oldest job): the thread running
    // `work` never finds the helper in its own queue while waiting.
    let (out, ()) = rayon::join(
        || {
            let _done = Done(&done);
            work()
        },
        || {
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        },
    );
    out
}

fn run_call(call: &Call) -> Result<(), String> {
    match call {
        Call::Clif { f, args, n, split, fill, partial } => {
            if let Some((p, m, v)) = fill {
                // SAFETY: the reduction's output holds m floats.
                unsafe { std::slice::from_raw_parts_mut(p.get(), *m) }.fill(*v);
            }
            let n = *n as i64;
            if let (Some(half), Some(part), Some((_, _, v))) = (*split, partial, fill) {
                // SAFETY: the private copy holds `len` floats, as the output.
                let own = unsafe { std::slice::from_raw_parts_mut(part.scratch.get(), part.len) };
                own.fill(*v);
                let (a, b, f, half) =
                    (P(args.as_ptr() as *mut f32), P(part.args.as_ptr() as *mut f32), *f, half as i64);
                // SAFETY: the halves write disjoint elements, and their own
                // copies of the reduction's output.
                rayon::join(
                    move || unsafe { f(a.get() as *const *mut f32, n, 0, half) },
                    move || unsafe { f(b.get() as *const *mut f32, n, half, n) },
                );
                // SAFETY: the output holds `len` floats.
                let out = unsafe { std::slice::from_raw_parts_mut(part.out.get(), part.len) };
                for (o, x) in out.iter_mut().zip(own.iter()) {
                    // As the kernels' combine: a sum, or a larger value or a NaN wins.
                    *o = if !part.max {
                        *o + *x
                    } else if *x > *o || x.is_nan() {
                        *x
                    } else {
                        *o
                    };
                }
            } else if let Some(half) = *split {
                let (a, f, half) = (P(args.as_ptr() as *mut f32), *f, half as i64);
                // SAFETY: the kernel writes only elements of its own range.
                rayon::join(
                    move || unsafe { f(a.get() as *const *mut f32, n, 0, half) },
                    move || unsafe { f(a.get() as *const *mut f32, n, half, n) },
                );
            } else {
                // SAFETY: one pointer per read and write, each to a buffer of
                // its value's size at this batch.
                unsafe { f(args.as_ptr() as *const *mut f32, n, 0, n) };
            }
        }
        Call::Gemm { m, n, k, lhs, rhs, dst, each, out } => {
            let _window = InGemm::enter();
            let (m, n, k) = (*m, *n, *k);
            // c = A·B over `k` of the contraction, or c += A·B when `add`,
            // with output strides `(rs, cs)`.
            let part_into = |a: P, b: P, c: P, (rs, cs): (isize, isize), add: bool, par: Parallelism, k: usize| {
                // SAFETY: the strides describe matrices inside the operands'
                // buffers; the destination (the output or the scratch) does
                // not overlap them (a gemm kernel never writes in place).
                unsafe {
                    gemm(
                        m, n, k, c.0, cs, rs, add, a.0, lhs.1, lhs.0, b.0, rhs.1, rhs.0, 1.0, 1.0, false, false, false,
                        par,
                    )
                }
            };
            let one_into =
                |a: P, b: P, c: P, at: (isize, isize), add: bool, par: Parallelism| part_into(a, b, c, at, add, par, k);
            let one = |a: P, b: P, c: P, par: Parallelism| one_into(a, b, c, *dst, false, par);
            let rows = (n as isize, 1);
            let big = m * n * k >= PARALLEL_FLOPS;
            if let GemmOut::ViaScratch(t) = out {
                let (a, b, c) = each[0];
                one_into(a, b, *t, rows, false, Parallelism::Rayon(rayon::current_num_threads()));
                // SAFETY: the scratch holds the m×n product; the output n×m.
                unsafe { transpose(t.get(), c.get(), m, n) };
            } else if let GemmOut::Col2Im(e) = out {
                let e = &**e;
                by_images(each.len(), e.per, |b0, b1| {
                    // SAFETY: the scratch holds two m×n products; the
                    // halves use their own.
                    let t = if b0 == 0 { e.scratch } else { P(unsafe { e.scratch.0.add(m * n) }) };
                    for (b, (a, bb, _)) in each.iter().enumerate().take(b1).skip(b0) {
                        one_into(*a, *bb, t, rows, false, Parallelism::None);
                        // SAFETY: image b's pixels, written by this half only.
                        unsafe { col2im(t.get(), e.out.get().add(b * e.per), 0..1, &e.geo) };
                    }
                });
            } else if let GemmOut::SplitK(t) = out {
                let (a, b, c) = each[0];
                let h = k / 2;
                // SAFETY: the second half of the contraction starts h
                // columns into A and h rows into B.
                let (a2, b2) = unsafe { (P(a.0.offset(h as isize * lhs.1)), P(b.0.offset(h as isize * rhs.0))) };
                rayon::join(
                    || part_into(a, b, c, *dst, false, Parallelism::None, h),
                    || part_into(a2, b2, *t, rows, false, Parallelism::None, k - h),
                );
                // SAFETY: the scratch holds the m×n second half, rows
                // contiguous; the output's elements are at its strides.
                let s = unsafe { std::slice::from_raw_parts(t.0 as *const f32, m * n) };
                let (rs, cs) = *dst;
                for (i, row) in s.chunks(n).enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        unsafe { *c.0.offset(i as isize * rs + j as isize * cs) += *v };
                    }
                }
            } else if let (GemmOut::Sum { scratch: t, transposed }, true) = (out, each.len() > 1) {
                let half = each.len() / 2;
                let run = |calls: &[(P, P, P)], to: P, at: (isize, isize)| {
                    for (i, (a, b, _)) in calls.iter().enumerate() {
                        one_into(*a, *b, to, at, i > 0, Parallelism::None);
                    }
                };
                let target = each[0].2;
                // SAFETY: the scratch holds 2·m·n floats.
                let (first, second, at) =
                    if *transposed { (*t, P(unsafe { t.0.add(m * n) }), rows) } else { (target, *t, *dst) };
                if m * n * k * each.len() >= PARALLEL_FLOPS {
                    rayon::join(|| run(&each[..half], first, at), || run(&each[half..], second, rows));
                } else {
                    run(&each[..half], first, at);
                    run(&each[half..], second, rows);
                }
                // SAFETY: the output holds m·n floats, the scratch 2·m·n.
                let o = unsafe { std::slice::from_raw_parts_mut(target.0, m * n) };
                let s = unsafe { std::slice::from_raw_parts(t.0 as *const f32, 2 * m * n) };
                if *transposed {
                    // The halves hold the m×n transposed product; the
                    // output is n×m.
                    let (s0, s1) = s.split_at(m * n);
                    for (i, row) in o.chunks_mut(m).enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = s0[j * n + i] + s1[j * n + i];
                        }
                    }
                } else {
                    for (o, s) in o.iter_mut().zip(&s[..m * n]) {
                        *o += *s;
                    }
                }
            } else if each.len() > 1 && m * n * k * each.len() >= PARALLEL_FLOPS {
                use rayon::prelude::*;
                each.par_iter().for_each(|(a, b, c)| one(*a, *b, *c, Parallelism::None));
            } else {
                let par = if big { Parallelism::Rayon(rayon::current_num_threads()) } else { Parallelism::None };
                for (a, b, c) in each {
                    one(*a, *b, *c, par);
                }
            }
        }
        Call::Copy { op, src, dst } => copy_kernel(op, src, dst)?,
        Call::Joined => {}
    }
    Ok(())
}

/// Gemm kernels in flight. The `gemm` crate allocates its packing buffers in
/// every call and cannot be given them; `tests/no_alloc.rs` reads this to
/// tell those allocations from any of the executor's own (kernels run one at
/// a time, so nothing else of a step runs while it is above zero).
pub static GEMMS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Marks a gemm kernel's run in [`GEMMS_IN_FLIGHT`].
struct InGemm;

impl InGemm {
    fn enter() -> InGemm {
        GEMMS_IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InGemm
    }
}

impl Drop for InGemm {
    fn drop(&mut self) {
        GEMMS_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `dst[c·rows + r] = src[r·cols + c]`: a `rows × cols` matrix transposed.
/// Tiles of 64 rows × 8 columns, so that the eight destination rows being
/// written stay in the L1 cache even when `rows` is a power of two (whose
/// rows would otherwise all map to the same cache sets), and 4 × 4 blocks
/// shuffled in SSE registers.
///
/// # Safety
/// `src` and `dst` hold `rows · cols` floats each and do not overlap.
pub unsafe fn transpose(src: *const f32, dst: *mut f32, rows: usize, cols: usize) {
    let (r4, c4) = if cfg!(target_arch = "x86_64") { (rows / 4 * 4, cols / 4 * 4) } else { (0, 0) };
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let mut r0 = 0;
        while r0 < r4 {
            let r1 = (r0 + 64).min(r4);
            let mut c0 = 0;
            while c0 < c4 {
                let c1 = (c0 + 8).min(c4);
                for r in (r0..r1).step_by(4) {
                    for c in (c0..c1).step_by(4) {
                        // SAFETY: r + 3 < rows and c + 3 < cols; SSE2 is
                        // part of every x86_64 processor.
                        let row = |i: usize| _mm_loadu_ps(src.add((r + i) * cols + c));
                        let (a, b, e, d) = (row(0), row(1), row(2), row(3));
                        let (t0, t1) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(e, d));
                        let (t2, t3) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(e, d));
                        _mm_storeu_ps(dst.add(c * rows + r), _mm_movelh_ps(t0, t1));
                        _mm_storeu_ps(dst.add((c + 1) * rows + r), _mm_movehl_ps(t1, t0));
                        _mm_storeu_ps(dst.add((c + 2) * rows + r), _mm_movelh_ps(t2, t3));
                        _mm_storeu_ps(dst.add((c + 3) * rows + r), _mm_movehl_ps(t3, t2));
                    }
                }
                c0 = c1;
            }
            r0 = r1;
        }
    }
    // What the blocks left: columns from c4 in rows below r4, every column
    // from row r4 on.
    for r in 0..rows {
        for c in (if r < r4 { c4 } else { 0 })..cols {
            *dst.add(c * rows + r) = *src.add(r * cols + c);
        }
    }
}

/// The data-movement kernels. Sources and destination never overlap.
fn copy_kernel(op: &Op, src: &[(P, Vec<usize>)], dst: &(P, Vec<usize>)) -> Result<(), String> {
    let len = |s: &[usize]| s.iter().product::<usize>();
    // SAFETY: each pointer addresses its value's elements at this batch.
    let x = |i: usize| unsafe { std::slice::from_raw_parts(src[i].0 .0 as *const f32, len(&src[i].1)) };
    let out = unsafe { std::slice::from_raw_parts_mut(dst.0 .0, len(&dst.1)) };
    let (xs, os): (&[usize], &[usize]) = (src.first().map_or(&[], |s| &s.1[..]), &dst.1);
    match op {
        Op::Permute { perm } => {
            // Fixed-size index arrays: a step allocates nothing.
            const MAX_RANK: usize = 8;
            let r = os.len();
            if r > MAX_RANK || xs.len() != r {
                return Err(format!("permute of rank {r}: the executor handles ranks up to {MAX_RANK}"));
            }
            let mut sx = [1usize; MAX_RANK];
            for i in (0..r.saturating_sub(1)).rev() {
                sx[i] = sx[i + 1] * xs[i + 1];
            }
            // Stride in the source of each output axis.
            let mut st = [0usize; MAX_RANK];
            for (d, p) in perm.iter().enumerate() {
                st[d] = sx[*p];
            }
            let (inner, inner_stride) = (os[r - 1], st[r - 1]);
            let (a, o) = (src[0].0, dst.0);
            let (total, ain) = (out.len(), x(0).len());
            // Split between the threads along the outermost output axis.
            let outer = if r > 1 { os[0] } else { 1 };
            let per = total / outer.max(1);
            by_images(outer, per, |b0, b1| {
                // SAFETY: rows b0..b1 of the output are this call's alone;
                // the source is only read.
                let a = unsafe { std::slice::from_raw_parts(a.get() as *const f32, ain) };
                let out = unsafe { std::slice::from_raw_parts_mut(o.get().add(b0 * per), (b1 - b0) * per) };
                let mut idx = [0usize; MAX_RANK];
                idx[0] = if r > 1 { b0 } else { 0 };
                let mut at = 0;
                while at < out.len() {
                    let base: usize = (0..r - 1).map(|d| idx[d] * st[d]).sum();
                    let row = &mut out[at..at + inner];
                    if inner_stride == 1 {
                        row.copy_from_slice(&a[base..base + inner]);
                    } else {
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = a[base + j * inner_stride];
                        }
                    }
                    at += inner;
                    for d in (0..r - 1).rev() {
                        idx[d] += 1;
                        if idx[d] < os[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
            });
        }
        // Slice, pad and concat: rows of the axes before `axis`, split
        // between the threads.
        Op::Slice { axis, start, .. } => {
            let (outer, inner): (usize, usize) = (xs[..*axis].iter().product(), xs[axis + 1..].iter().product());
            let (nin, nout) = (xs[*axis], os[*axis]);
            let a = x(0);
            by_rows(outer, nout * inner, dst.0, |b0, out| {
                for (r, row) in out.chunks_exact_mut(nout * inner).enumerate() {
                    let from = ((b0 + r) * nin + *start as usize) * inner;
                    row.copy_from_slice(&a[from..from + nout * inner]);
                }
            });
        }
        Op::Pad { axis, before, .. } => {
            let (outer, inner): (usize, usize) = (xs[..*axis].iter().product(), xs[axis + 1..].iter().product());
            let (nin, nout) = (xs[*axis], os[*axis]);
            let (a, to) = (x(0), *before as usize * inner);
            by_rows(outer, nout * inner, dst.0, |b0, out| {
                out.fill(0.0);
                for (r, row) in out.chunks_exact_mut(nout * inner).enumerate() {
                    let from = (b0 + r) * nin * inner;
                    row[to..to + nin * inner].copy_from_slice(&a[from..from + nin * inner]);
                }
            });
        }
        Op::Concat { axis } => {
            let (outer, inner): (usize, usize) = (os[..*axis].iter().product(), os[axis + 1..].iter().product());
            let nout = os[*axis];
            by_rows(outer, nout * inner, dst.0, |b0, out| {
                let mut at = 0;
                for (i, (_, shape)) in src.iter().enumerate() {
                    let (a, w) = (x(i), shape[*axis] * inner);
                    for (r, row) in out.chunks_exact_mut(nout * inner).enumerate() {
                        let o = b0 + r;
                        row[at..at + w].copy_from_slice(&a[o * w..(o + 1) * w]);
                    }
                    at += w;
                }
            });
        }
        Op::Im2Col { kernel, stride, padding } => {
            let (n, c, hw) = (xs[0], xs[1], (xs[2], xs[3]));
            let per = len(os) / n.max(1);
            let (a, o) = (src[0].0, dst.0);
            // Without padding every column element is written exactly once.
            let fill = *padding != (0, 0);
            by_images(n, per, |b0, b1| {
                // SAFETY: images b0..b1 read and write only their own rows
                // of `x` and the columns.
                unsafe {
                    if fill {
                        std::ptr::write_bytes(o.get().add(b0 * per), 0, (b1 - b0) * per);
                    }
                    windows(b0..b1, c, hw, *kernel, *stride, *padding, |image, col, n, step| {
                        let (from, to) = (a.get().add(image), o.get().add(col));
                        if step == 1 {
                            std::ptr::copy_nonoverlapping(from, to, n);
                        } else {
                            for j in 0..n {
                                *to.add(j) = *from.add(j * step);
                            }
                        }
                    });
                }
            });
        }
        Op::Col2Im { kernel, stride, padding, .. } => {
            let (n, c, hw) = (os[0], os[1], (os[2], os[3]));
            let per = len(os) / n.max(1);
            let (a, o) = (src[0].0, dst.0);
            let geo = Windows { c, hw, kernel: *kernel, stride: *stride, padding: *padding };
            by_images(n, per, |b0, b1| {
                // SAFETY: as im2col; images b0..b1 add only into their own pixels.
                unsafe { col2im(a.get(), o.get(), b0..b1, &geo) }
            });
        }
        Op::MaxPool { size, stride } => {
            let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
            let (oh, ow) = (os[2], os[3]);
            let (kh, kw, sh, sw) = (size.0 as usize, size.1 as usize, stride.0 as usize, stride.1 as usize);
            let (a, o) = (src[0].0, dst.0);
            let geo = Pool { w, oh, ow, sh, sw };
            by_images(n, c * h * w, |b0, b1| {
                for p in b0 * c..b1 * c {
                    // SAFETY: every window lies inside its plane (the type
                    // guarantees (oh−1)·sh + kh ≤ h, likewise for w), and
                    // images b0..b1 write only their own outputs.
                    unsafe {
                        let (x, y) = (a.get().add(p * h * w) as *const f32, o.get().add(p * oh * ow));
                        // The common windows with constant sizes, so the
                        // compiler unrolls them; any other as it comes.
                        match (kh, kw) {
                            (2, 2) => pool_plane(x, y, &geo, 2, 2),
                            (3, 3) => pool_plane(x, y, &geo, 3, 3),
                            _ => pool_plane(x, y, &geo, kh, kw),
                        }
                    }
                }
            });
        }
        Op::MaxPoolGrad { size, stride } => {
            let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
            let (oh, ow) = (src[1].1[2], src[1].1[3]);
            let (kh, kw, sh, sw) = (size.0 as usize, size.1 as usize, stride.0 as usize, stride.1 as usize);
            let (a, m, g, o) = (src[0].0, src[1].0, src[2].0, dst.0);
            let geo = Pool { w, oh, ow, sh, sw };
            // Windows that tile the image exactly write every pixel once; any
            // other layout accumulates over a zeroed image.
            let tiles = (kh, kw) == (sh, sw) && oh * sh == h && ow * sw == w;
            by_images(n, c * h * w, |b0, b1| {
                for p in b0 * c..b1 * c {
                    // SAFETY: as the forward pass.
                    unsafe {
                        let x = a.get().add(p * h * w) as *const f32;
                        let dx = o.get().add(p * h * w);
                        let (y, dy) = (m.get().add(p * oh * ow) as *const f32, g.get().add(p * oh * ow) as *const f32);
                        if !tiles {
                            std::ptr::write_bytes(dx, 0, h * w);
                        }
                        match (kh, kw, tiles) {
                            (2, 2, true) => pool_grad_plane(x, y, dy, dx, &geo, 2, 2, true),
                            (3, 3, true) => pool_grad_plane(x, y, dy, dx, &geo, 3, 3, true),
                            _ => pool_grad_plane(x, y, dy, dx, &geo, kh, kw, tiles),
                        }
                    }
                }
            });
        }
        Op::Gather => {
            let (table, idx) = (x(0), x(1));
            let (v, d) = (xs[0], xs[1]);
            for (k, i) in idx.iter().enumerate() {
                let r = *i as usize;
                if *i < 0.0 || r >= v || i.fract() != 0.0 {
                    return Err(format!("gather: index {i} out of range for {v} rows"));
                }
                out[k * d..(k + 1) * d].copy_from_slice(&table[r * d..(r + 1) * d]);
            }
        }
        Op::ScatterAdd { rows } => {
            let (idx, s) = (x(0), x(1));
            let d = *src[1].1.last().unwrap_or(&1);
            out.fill(0.0);
            for (k, i) in idx.iter().enumerate() {
                let r = *i as usize;
                if *i < 0.0 || r as u64 >= *rows || i.fract() != 0.0 {
                    return Err(format!("scatter_add: index {i} out of range for {rows} rows"));
                }
                for j in 0..d {
                    out[r * d + j] += s[k * d + j];
                }
            }
        }
        Op::OneHot { classes } => {
            let k = *classes as usize;
            out.fill(0.0);
            for (i, c) in x(0).iter().enumerate() {
                if *c < 0.0 || *c as usize >= k || c.fract() != 0.0 {
                    return Err(format!("label {c} out of range for {k} classes"));
                }
                out[i * k + *c as usize] = 1.0;
            }
        }
        Op::ArgMax { axis } => {
            let n = xs[*axis];
            let inner: usize = xs[axis + 1..].iter().product();
            let outer: usize = xs[..*axis].iter().product();
            let a = x(0);
            for o in 0..outer {
                for i in 0..inner {
                    let mut best = 0;
                    for k in 1..n {
                        if a[(o * n + k) * inner + i] > a[(o * n + best) * inner + i] {
                            best = k;
                        }
                    }
                    out[o * inner + i] = best as f32;
                }
            }
        }
        other => return Err(format!("`{}` is not a copy kernel", other.name())),
    }
    Ok(())
}

/// A pooling layout: the plane's width, the output's height and width, the
/// strides.
struct Pool {
    w: usize,
    oh: usize,
    ow: usize,
    sh: usize,
    sw: usize,
}

/// Max pooling of one plane `x` into `y` with `kh`×`kw` windows: a larger
/// value or a NaN wins, as `reduce_max`. Inlined, so a call with constant
/// window sizes is unrolled.
///
/// # Safety
/// `x` holds the plane (h·w values), `y` the output (oh·ow), and every
/// window lies inside the plane.
#[inline(always)]
unsafe fn pool_plane(x: *const f32, y: *mut f32, p: &Pool, kh: usize, kw: usize) {
    for r in 0..p.oh {
        for q in 0..p.ow {
            let at = x.add(r * p.sh * p.w + q * p.sw);
            let mut m = f32::NEG_INFINITY;
            for i in 0..kh {
                for j in 0..kw {
                    let v = *at.add(i * p.w + j);
                    if v > m || v.is_nan() {
                        m = v;
                    }
                }
            }
            *y.add(r * p.ow + q) = m;
        }
    }
}

/// The gradient of max pooling for one plane: each window's gradient `dy`
/// shared equally between the pixels of `x` equal to its maximum `y`,
/// written (`tiles`: the windows tile the plane) or added into `dx`.
///
/// # Safety
/// As [`pool_plane`]; `dx` holds the plane's gradient (h·w values).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pool_grad_plane(
    x: *const f32,
    y: *const f32,
    dy: *const f32,
    dx: *mut f32,
    p: &Pool,
    kh: usize,
    kw: usize,
    tiles: bool,
) {
    for r in 0..p.oh {
        for q in 0..p.ow {
            let off = r * p.sh * p.w + q * p.sw;
            let top = *y.add(r * p.ow + q);
            let mut ties = 0u32;
            for i in 0..kh {
                for j in 0..kw {
                    ties += u32::from(*x.add(off + i * p.w + j) == top);
                }
            }
            let share = if ties > 0 { *dy.add(r * p.ow + q) / ties as f32 } else { 0.0 };
            for i in 0..kh {
                for j in 0..kw {
                    let k = off + i * p.w + j;
                    let v = if *x.add(k) == top { share } else { 0.0 };
                    if tiles {
                        *dx.add(k) = v;
                    } else {
                        *dx.add(k) += v;
                    }
                }
            }
        }
    }
}

/// Runs `f(first row, those rows)` over the `outer` rows of `row` elements
/// of the output at `o`, as [`by_images`] splits them.
fn by_rows(outer: usize, row: usize, o: P, f: impl Fn(usize, &mut [f32]) + Sync) {
    by_images(outer, row, |b0, b1| {
        // SAFETY: rows b0..b1 of the output are this call's alone.
        f(b0, unsafe { std::slice::from_raw_parts_mut(o.get().add(b0 * row), (b1 - b0) * row) })
    });
}

/// Runs `f(first, end)` over images `0..n` (`per` elements each), split
/// between two threads when the work is big enough to pay.
fn by_images(n: usize, per: usize, f: impl Fn(usize, usize) + Sync) {
    if n >= 2 && n * per >= PARALLEL_ELEMENTS {
        let half = n / 2;
        rayon::join(|| f(0, half), || f(half, n));
    } else {
        f(0, n);
    }
}

/// col2im of `images`: their pixels in `to` (image 0's first) zeroed, then
/// every column element added into its pixel from `from` (image 0's
/// columns first).
///
/// # Safety
/// `from` holds the images' columns and `to` their pixels; they do not
/// overlap.
unsafe fn col2im(from: *const f32, to: *mut f32, images: std::ops::Range<usize>, geo: &Windows) {
    let Windows { c, hw, kernel, stride, padding } = *geo;
    let per = c * hw.0 * hw.1;
    std::ptr::write_bytes(to.add(images.start * per), 0, images.len() * per);
    windows(images, c, hw, kernel, stride, padding, |image, col, n, step| {
        let (to, from) = (to.add(image), from.add(col));
        for j in 0..n {
            *to.add(j * step) += *from.add(j);
        }
    });
}

/// Whether kernel `this` is a col2im whose only operand is the product of
/// kernel `prev`, computed one image at a time (`call`: one contiguous
/// product per image, into the product's own buffer), with the pixels
/// overlapping neither of the product's operands (the memory plan may give
/// the pixels an operand's room once it is read: the epilogue writes them
/// while later images are still to be read). Then the epilogue, its
/// scratch (two products) kept in `sizes`.
fn col2im_after(
    g: &Graph,
    prev: &Kernel,
    this: &Kernel,
    batch: usize,
    addr: &HashMap<NodeId, P>,
    call: &Call,
    sizes: &mut Vec<Box<[f32]>>,
) -> Option<Col2ImAfter> {
    let ([mm], [c2]) = (&prev.nodes[..], &this.nodes[..]) else { return None };
    let Op::Col2Im { kernel, stride, padding, .. } = g.node(*c2).op else { return None };
    let Call::Gemm { m, n, dst, each, out: GemmOut::Direct, .. } = call else { return None };
    let (m, n) = (*m, *n);
    let whole = |id: NodeId| {
        let p = addr[&id].0 as usize;
        p..p + 4 * elements(&g.ty(id).shape, batch)
    };
    let disjoint = |a: &std::ops::Range<usize>, b: &std::ops::Range<usize>| a.end <= b.start || b.end <= a.start;
    let product = addr[mm].0 as usize;
    let pixels = whole(*c2);
    let so = concrete(&g.ty(*c2).shape, batch);
    let ok = matches!(g.node(*mm).op, Op::MatMul { .. })
        && g.inputs(*c2) == [*mm]
        && g.users(*mm).len() == 1
        && !g.outputs.iter().any(|(_, id)| id == mm)
        && so.len() == 4
        && each.len() == batch
        && *dst == (n as isize, 1)
        && each.iter().enumerate().all(|(b, (_, _, c))| c.0 as usize == product + 4 * b * m * n)
        && g.inputs(*mm).iter().all(|x| disjoint(&whole(*x), &pixels));
    ok.then(|| {
        let mut room = vec![0.0f32; 2 * m * n].into_boxed_slice();
        let scratch = P(room.as_mut_ptr());
        sizes.push(room);
        let geo = Windows { c: so[1], hw: (so[2], so[3]), kernel, stride, padding };
        Col2ImAfter { out: addr[c2], per: so[1] * so[2] * so[3], scratch, geo }
    })
}

/// The loop nest of im2col and col2im, in runs: for every (image, channel,
/// kernel row i, kernel column j, output row y), the output columns x whose
/// input pixel is inside the image: `f(image, col, len, step)` covers `len`
/// contiguous columns from `col` and pixels `step` apart from `image`.
#[allow(clippy::too_many_arguments)]
fn windows(
    images: std::ops::Range<usize>,
    c: usize,
    (h, w): (usize, usize),
    kernel: (u64, u64),
    stride: (u64, u64),
    pad: (u64, u64),
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let (kh, kw, sh, sw) = (kernel.0 as usize, kernel.1 as usize, stride.0 as usize, stride.1 as usize);
    let (ph, pw) = (pad.0 as usize, pad.1 as usize);
    let oh = (h + 2 * ph - kh) / sh + 1;
    let ow = (w + 2 * pw - kw) / sw + 1;
    let rows = c * kh * kw;
    for b in images {
        for ch in 0..c {
            for i in 0..kh {
                for j in 0..kw {
                    let row = (ch * kh + i) * kw + j;
                    // Output columns x with 0 <= x·sw + j − pw < w.
                    let x0 = pw.saturating_sub(j).div_ceil(sw);
                    let x1 = if w + pw > j { ((w + pw - j - 1) / sw + 1).min(ow) } else { 0 };
                    if x0 >= x1 {
                        continue;
                    }
                    for y in 0..oh {
                        let iy = (y * sh + i) as isize - ph as isize;
                        if iy < 0 || iy as usize >= h {
                            continue;
                        }
                        let ix = x0 * sw + j - pw;
                        let image = ((b * c + ch) * h + iy as usize) * w + ix;
                        let col = (b * rows + row) * oh * ow + y * ow + x0;
                        f(image, col, x1 - x0, sw);
                    }
                }
            }
        }
    }
}
