//! Cranelift lowering and JIT of elementwise kernels (optionally ending in
//! one sum or max reduction) for the CPU program ([`super`]).
//!
//! A kernel becomes one function `fn(args: *const *mut f32, n, start, end:
//! i64)`: `args` holds the kernel's reads, then its writes; it computes
//! elements `start..end` of its loop's `n` (multiples of the row length, so
//! the executor can split a big loop between threads). The loop is a nest
//! ([`crate::kernel::loops::LoopNest`]): trailing axes along which every operand is contiguous or
//! constant merge into one inner loop over a row; outer axes are walked by a
//! row index. Scalar operands are loaded once, operands constant along a row
//! once per row.
//!
//! Lowered: neg, sqrt, 1/x, exp, ln, tanh and erf (the last four as inline
//! polynomials), add, sub, mul, div, max, min, greater, equal, constants,
//! stop-gradient, expand of operands read from other kernels, dropout masks,
//! and causal masks (alone in their kernel). Rows run sixteen elements at a
//! time (four f32x4 vectors, one accumulator each for a reduction), then four
//! lanes at a time, then a scalar tail; every operand walked along the row
//! has a pointer the loops advance. Kernels with dropout or causal masks run
//! scalar only. Polynomials use fused multiply-adds (the PTX renderer too). A kernel that cannot be lowered is reported with the reason
//! ([`crate::kernel::loops::unsupported`]), never silently skipped. A kernel ending in a reduction
//! accumulates into its output, which the caller first fills with the
//! identity ([`crate::kernel::loops::reduction_identity`]): in registers, added once per row, when
//! the output is constant along the row; element by element otherwise.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, BlockArg, InstBuilder, MemFlagsData, Type, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use crate::ir::{BinaryOp as B, Graph, NodeId, Op, ReduceOp, UnaryOp as U};
use crate::kernel::consts::*;
use crate::kernel::fusion::Kernel;
use crate::kernel::loops::{is_reduce, is_scalar, loop_nest, unsupported, walked};

/// Whether the kernel runs four lanes at a time (every op has a vector
/// form; dropout and causal masks, which hash the element index, do not).
fn vectorizable(g: &Graph, k: &Kernel) -> bool {
    !k.nodes.iter().any(|n| matches!(g.node(*n).op, Op::DropoutMask { .. } | Op::CausalMask { .. }))
}

/// A float constant of type `ty` (f32 or f32x4).
fn fk(b: &mut FunctionBuilder, ty: Type, v: f32) -> Value {
    let c = b.ins().f32const(v);
    if ty.is_vector() {
        b.ins().splat(ty, c)
    } else {
        c
    }
}

/// An i32 constant of type `ty` (i32 or i32x4).
fn ik(b: &mut FunctionBuilder, ty: Type, v: i32) -> Value {
    let c = b.ins().iconst(types::I32, v as i64);
    if ty.is_vector() {
        b.ins().splat(ty, c)
    } else {
        c
    }
}

/// The integer type of the same shape as float type `ty`.
fn int_of(ty: Type) -> Type {
    if ty.is_vector() {
        types::I32X4
    } else {
        types::I32
    }
}

/// `c ? x : y` for a comparison result `c` (a flag, or a lane mask).
fn sel(b: &mut FunctionBuilder, c: Value, x: Value, y: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    if ty.is_vector() {
        let mask = if b.func.dfg.value_type(c) == ty { c } else { b.ins().bitcast(ty, MemFlagsData::new(), c) };
        b.ins().bitselect(mask, x, y)
    } else {
        b.ins().select(c, x, y)
    }
}

/// 1.0 where the comparison holds, else 0.0.
fn flag(b: &mut FunctionBuilder, ty: Type, c: Value) -> Value {
    let (one, zero) = (fk(b, ty, 1.0), fk(b, ty, 0.0));
    sel(b, c, one, zero)
}

/// `p(x)` by Horner's rule, coefficients from the highest power down.
fn horner(b: &mut FunctionBuilder, x: Value, coefficients: &[f32]) -> Value {
    let ty = b.func.dfg.value_type(x);
    let mut acc = fk(b, ty, coefficients[0]);
    for c in &coefficients[1..] {
        let k = fk(b, ty, *c);
        acc = b.ins().fma(acc, x, k);
    }
    acc
}

/// `x` clamped to `[lo, hi]` by comparisons (two compares and two selects;
/// Cranelift's `fmax`/`fmin` order signed zeros and NaNs at four times the
/// cost). NaN stays NaN. Returns the clamped value and `x < lo`.
fn clamp(b: &mut FunctionBuilder, x: Value, lo: f32, hi: f32) -> (Value, Value) {
    let ty = b.func.dfg.value_type(x);
    let (l, h) = (fk(b, ty, lo), fk(b, ty, hi));
    let under = b.ins().fcmp(FloatCC::LessThan, x, l);
    let y = sel(b, under, l, x);
    let over = b.ins().fcmp(FloatCC::GreaterThan, y, h);
    (sel(b, over, h, y), under)
}

/// eˣ in f32: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two for
/// exactness, subtracted by fused multiply-adds), eʳ by a degree-6
/// polynomial (Cephes' expf), 2ⁿ built in the exponent bits. n is x·log₂e
/// rounded to nearest by adding and subtracting 1.5·2²³ ([`EXP_ROUND`]), whose
/// bits then hold n as an integer. Inputs are clamped to [−87.3, 88]: below,
/// the result is 0 (f32's subnormals are flushed); above, e⁸⁸ rather than ∞.
/// NaN stays NaN. Scalar or four lanes.
fn exp(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let (x, under) = clamp(b, x, EXP_MIN, EXP_MAX);
    let log2e = fk(b, ty, std::f32::consts::LOG2_E);
    let t = b.ins().fmul(x, log2e);
    let round = fk(b, ty, EXP_ROUND);
    let shifted = b.ins().fadd(t, round);
    let n = b.ins().fsub(shifted, round);
    let (c1, c2) = (fk(b, ty, -LN2_HI), fk(b, ty, -LN2_LO));
    let r = b.ins().fma(n, c1, x);
    let r = b.ins().fma(n, c2, r);
    let p = horner(b, r, &EXP_P);
    let rr = b.ins().fmul(r, r);
    let y = b.ins().fma(p, rr, r);
    let one = fk(b, ty, 1.0);
    let y = b.ins().fadd(y, one);
    // (n + 127) << 23: the bits of `shifted` less those of 1.5·2²³, plus 127.
    let ity = int_of(ty);
    let bits = b.ins().bitcast(ity, MemFlagsData::new(), shifted);
    let bias = ik(b, ity, 127 - EXP_ROUND.to_bits() as i32);
    let biased = b.ins().iadd(bits, bias);
    let bits = b.ins().ishl_imm_u(biased, 23);
    let scale = b.ins().bitcast(ty, MemFlagsData::new(), bits);
    let y = b.ins().fmul(y, scale);
    // Below the clamp eˣ underflows: 0, so that masked scores (−∞) weigh
    // nothing (found by the differential fuzzer, regress_003).
    let zero = fk(b, ty, 0.0);
    sel(b, under, zero, y)
}

/// ln x in f32 (Cephes' logf): x = m·2ᵉ with m in [√½, √2), ln m by a degree-9
/// polynomial in m − 1, plus e·ln2 (split in two). ln 0 = −∞, ln of a
/// negative number or NaN is NaN, ln ∞ = ∞. Subnormal inputs are treated as
/// their normalised neighbours' scale (not exact below 1e−38).
fn log(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let ity = int_of(ty);
    let bits = b.ins().bitcast(ity, MemFlagsData::new(), x);
    let ebits = b.ins().ushr_imm_u(bits, 23);
    let mask = ik(b, ity, 0xff);
    let ebits = b.ins().band(ebits, mask);
    let bias = ik(b, ity, -126);
    let e = b.ins().iadd(ebits, bias);
    let mask = ik(b, ity, 0x807f_ffff_u32 as i32);
    let mbits = b.ins().band(bits, mask);
    let half = ik(b, ity, 0x3f00_0000);
    let mbits = b.ins().bor(mbits, half);
    let m = b.ins().bitcast(ty, MemFlagsData::new(), mbits);
    // m in [0.5, 1): below √½ use 2m − 1 and e − 1, else m − 1.
    let sqrthf = fk(b, ty, std::f32::consts::FRAC_1_SQRT_2);
    let small = b.ins().fcmp(FloatCC::LessThan, m, sqrthf);
    let one = fk(b, ty, 1.0);
    let twice = b.ins().fadd(m, m);
    let a = b.ins().fsub(twice, one);
    let c = b.ins().fsub(m, one);
    let m = sel(b, small, a, c);
    let minus = ik(b, ity, -1);
    let e1 = b.ins().iadd(e, minus);
    let e = sel(b, small, e1, e);
    let ef = b.ins().fcvt_from_sint(ty, e);
    let z = b.ins().fmul(m, m);
    let p = horner(b, m, &LOG_P);
    let y = b.ins().fmul(p, m);
    let y = b.ins().fmul(y, z);
    let q1 = fk(b, ty, LN2_LO);
    let t = b.ins().fmul(ef, q1);
    let y = b.ins().fadd(y, t);
    let half = fk(b, ty, 0.5);
    let hz = b.ins().fmul(z, half);
    let y = b.ins().fsub(y, hz);
    let r = b.ins().fadd(m, y);
    let q2 = fk(b, ty, LN2_HI);
    let t = b.ins().fmul(ef, q2);
    let r = b.ins().fadd(r, t);
    // Special values.
    let zero = fk(b, ty, 0.0);
    let is_zero = b.ins().fcmp(FloatCC::Equal, x, zero);
    let ninf = fk(b, ty, f32::NEG_INFINITY);
    let r = sel(b, is_zero, ninf, r);
    let inf = fk(b, ty, f32::INFINITY);
    let is_inf = b.ins().fcmp(FloatCC::Equal, x, inf);
    let r = sel(b, is_inf, inf, r);
    let bad = b.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
    let nan = fk(b, ty, f32::NAN);
    sel(b, bad, nan, r)
}

/// tanh x in f32 (Cephes' tanhf): an odd polynomial below |x| = 0.625,
/// 1 − 2/(e^{2|x|} + 1) with the sign restored above (which saturates to ±1
/// through `exp`'s clamp). NaN stays NaN.
fn tanh(b: &mut FunctionBuilder, x: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let ax = b.ins().fabs(x);
    // Small |x|: x + x·z·P(z), z = x².
    let z = b.ins().fmul(x, x);
    let p = horner(b, z, &TANH_P);
    let pz = b.ins().fmul(p, z);
    let pzx = b.ins().fmul(pz, x);
    let small = b.ins().fadd(pzx, x);
    // Large |x|: sign(x)·(1 − 2/(e^{2|x|} + 1)).
    let two = fk(b, ty, 2.0);
    let t = b.ins().fmul(ax, two);
    let e = exp(b, t);
    let one = fk(b, ty, 1.0);
    let d = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, d);
    let mag = b.ins().fsub(one, q);
    // Copy the sign bit of x onto the (non-negative) magnitude.
    let signbit = fk(b, ty, -0.0);
    let sign = b.ins().band(x, signbit);
    let large = b.ins().bor(mag, sign);
    let limit = fk(b, ty, TANH_SMALL);
    let is_small = b.ins().fcmp(FloatCC::LessThan, ax, limit);
    let r = sel(b, is_small, small, large);
    // NaN: the comparison is false, so `large` was picked; keep the NaN.
    let is_nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    sel(b, is_nan, x, r)
}

/// erf x in f32 (the rational approximation of Eigen's and XLA's
/// `erf` for f32): x clamped to [−4, 4], then x·P(x²)/Q(x²). NaN stays NaN.
fn erf(b: &mut FunctionBuilder, x: Value) -> Value {
    let (c, _) = clamp(b, x, -ERF_CLAMP, ERF_CLAMP);
    let z = b.ins().fmul(c, c);
    let p = horner(b, z, &ERF_P);
    let p = b.ins().fmul(p, c);
    let q = horner(b, z, &ERF_Q);
    // NaN stays NaN through the clamp and the arithmetic.
    b.ins().fdiv(p, q)
}

/// The dropout mask at element `i`: the interpreter's splitmix64 hash of
/// (seed, salt, i), compared in integers: u < rate ⇔ (z >> 11) < ⌈rate·2⁵³⌉.
fn dropout(b: &mut FunctionBuilder, seed: Value, i: Value, rate: f64, salt: u64) -> Value {
    use cranelift_codegen::ir::condcodes::IntCC;
    let s = b.ins().fcvt_to_uint_sat(types::I64, seed);
    let s = b.ins().imul_imm_s(s, SPLITMIX_GAMMA as i64);
    let s = b.ins().bxor_imm_u(s, salt.wrapping_mul(SPLITMIX_M1) as i64);
    let z = b.ins().bxor(s, i);
    let z = b.ins().iadd_imm_s(z, SPLITMIX_GAMMA as i64);
    let t = b.ins().ushr_imm_u(z, 30);
    let z = b.ins().bxor(z, t);
    let z = b.ins().imul_imm_s(z, SPLITMIX_M1 as i64);
    let t = b.ins().ushr_imm_u(z, 27);
    let z = b.ins().bxor(z, t);
    let z = b.ins().imul_imm_s(z, SPLITMIX_M2 as i64);
    let t = b.ins().ushr_imm_u(z, 31);
    let z = b.ins().bxor(z, t);
    let u = b.ins().ushr_imm_u(z, 11);
    let threshold = dropout_threshold(rate) as i64;
    let dropped = b.ins().icmp_imm_u(IntCC::UnsignedLessThan, u, threshold);
    let keep = b.ins().f32const(dropout_keep(rate) as f32);
    let zero = b.ins().f32const(0.0);
    b.ins().select(dropped, zero, keep)
}

/// A JIT holding compiled kernels.
pub struct Jit {
    /// Freed when the `Jit` drops: the functions it compiled must not be
    /// called after that (a compiled `Program` owns its `Jit`).
    module: std::mem::ManuallyDrop<JITModule>,
    ctx: Context,
    fctx: FunctionBuilderContext,
    count: usize,
}

impl Drop for Jit {
    fn drop(&mut self) {
        // SAFETY: taken once, here; the code is freed with the `Jit`, and
        // whoever holds its functions holds the `Jit` (found leaking about
        // 170 KiB per compiled model by the differential fuzzer).
        unsafe { std::mem::ManuallyDrop::take(&mut self.module).free_memory() }
    }
}

/// A compiled kernel: `f(args, n, start, end)` computes elements
/// `start..end` of a loop of `n` elements; `start` and `end` must be
/// multiples of the kernel's row length ([`crate::kernel::loops::LoopNest::inner`]). A kernel
/// ending in a reduction accumulates into its output, which the caller first
/// fills with the identity ([`crate::kernel::loops::reduction_identity`]); ranges of it may run on
/// different threads only if they write disjoint outputs.
pub type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64, i64);

/// Per walked operand: its pointer, its offset at the current row, and its
/// stride along the inner loop.
struct Walk {
    ptr: Value,
    row: Value,
    unit: bool,
}

/// What the loop body needs: pointers and per-row offsets of the walked
/// operands, scalars loaded once, values constant along a row.
struct Frame {
    walk: HashMap<NodeId, Walk>,
    scalars: HashMap<NodeId, Value>,
    /// Operands constant along the row (inner stride 0), loaded per row.
    row_scalars: HashMap<NodeId, Value>,
}

const VEC: Type = types::F32X4;

impl Jit {
    pub fn new() -> Result<Jit, String> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
        let isa = cranelift_native::builder()
            .map_err(|e| format!("this processor is not supported by Cranelift: {e}"))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| e.to_string())?;
        let module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let ctx = module.make_context();
        Ok(Jit { module: std::mem::ManuallyDrop::new(module), ctx, fctx: FunctionBuilderContext::new(), count: 0 })
    }

    /// Builds the CLIF of `k` into the context; returns its text.
    fn build(&mut self, g: &Graph, k: &Kernel) -> String {
        let target = self.module.target_config();
        let ptr = target.pointer_type();
        self.module.clear_context(&mut self.ctx);
        self.ctx.func.signature.params.push(AbiParam::new(ptr));
        for _ in 0..3 {
            self.ctx.func.signature.params.push(AbiParam::new(types::I64));
        }
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        // `n` (the loop's whole length) is not needed inside: the caller
        // fills reductions' outputs and passes the range.
        let (args, start, end) = (p[0], p[2], p[3]);
        let nest = loop_nest(g, k).expect("a lowered kernel has a loop");
        let walked = walked(g, k);
        let flags = MemFlagsData::trusted();
        // Pointers of every operand; scalars loaded once.
        let slots: Vec<NodeId> = k.reads.iter().chain(&k.writes).copied().collect();
        let mut ptrs: HashMap<NodeId, Value> = HashMap::new();
        let mut scalars: HashMap<NodeId, Value> = HashMap::new();
        for (i, id) in slots.iter().enumerate() {
            let p = b.ins().load(ptr, flags, args, (i * ptr.bytes() as usize) as i32);
            ptrs.insert(*id, p);
            if i < k.reads.len() && is_scalar(g, *id) {
                let v = b.ins().load(types::F32, flags, p, 0);
                scalars.insert(*id, v);
            }
        }
        let reduction = k.nodes.last().copied().filter(|r| is_reduce(g, *r));
        let vector = vectorizable(g, k);
        let zero = b.ins().iconst(types::I64, 0);
        match nest.inner {
            None => {
                // Flat: offsets are the element index itself.
                let mut walk = HashMap::new();
                let mut row_scalars = HashMap::new();
                for (id, s) in walked.iter().zip(&nest.inner_stride) {
                    if *s == 0 && k.reads.contains(id) {
                        // Constant over the whole loop (a shape of ones).
                        let v = b.ins().load(types::F32, flags, ptrs[id], 0);
                        row_scalars.insert(*id, v);
                    }
                    walk.insert(*id, Walk { ptr: ptrs[id], row: zero, unit: *s == 1 });
                }
                let frame = Frame { walk, scalars, row_scalars };
                inner_loops(&mut b, g, k, &frame, reduction, start, end, zero, vector);
                b.ins().return_(&[]);
            }
            Some(row) => {
                // Rows start/row .. end/row; per row, each operand's offset
                // from the outer axes: Σ ((o / below_d) mod size_d)·stride_d.
                let first = b.ins().udiv_imm_u(start, row as i64);
                let last = b.ins().udiv_imm_u(end, row as i64);
                let (head, body, exit) = (b.create_block(), b.create_block(), b.create_block());
                b.append_block_param(head, types::I64);
                b.ins().jump(head, &[first.into()]);
                b.switch_to_block(head);
                let o = b.block_params(head)[0];
                let more = b.ins().icmp(IntCC::SignedLessThan, o, last);
                b.ins().brif(more, body, &[], exit, &[]);
                b.switch_to_block(body);
                let mut offsets = vec![zero; walked.len()];
                let mut below = 1u64;
                for (size, strides) in nest.outer.iter().rev() {
                    let q = if below == 1 { o } else { b.ins().udiv_imm_u(o, below as i64) };
                    let idx = match size {
                        Some(m) => b.ins().urem_imm_u(q, *m as i64),
                        None => q,
                    };
                    for (j, st) in strides.iter().enumerate() {
                        if *st != 0 {
                            let t = b.ins().imul_imm_s(idx, *st as i64);
                            offsets[j] = b.ins().iadd(offsets[j], t);
                        }
                    }
                    below *= size.unwrap_or(1);
                }
                let mut walk = HashMap::new();
                let mut row_scalars = HashMap::new();
                for ((id, s), off) in walked.iter().zip(&nest.inner_stride).zip(&offsets) {
                    if *s == 0 && k.reads.contains(id) {
                        let bytes = b.ins().imul_imm_s(*off, 4);
                        let addr = b.ins().iadd(ptrs[id], bytes);
                        let v = b.ins().load(types::F32, flags, addr, 0);
                        row_scalars.insert(*id, v);
                    }
                    walk.insert(*id, Walk { ptr: ptrs[id], row: *off, unit: *s == 1 });
                }
                let frame = Frame { walk, scalars, row_scalars };
                let base = b.ins().imul_imm_s(o, row as i64);
                let count = b.ins().iconst(types::I64, row as i64);
                inner_loops(&mut b, g, k, &frame, reduction, zero, count, base, vector);
                let next = b.ins().iadd_imm_s(o, 1);
                b.ins().jump(head, &[next.into()]);
                b.switch_to_block(exit);
                b.ins().return_(&[]);
            }
        }
        b.seal_all_blocks();
        b.finalize(target);
        self.ctx.func.display().to_string()
    }

    /// The CLIF text of `k`, or why it is not lowered.
    pub fn clif(&mut self, g: &Graph, k: &Kernel) -> Result<String, String> {
        if let Some(why) = unsupported(g, k) {
            return Err(why);
        }
        Ok(self.build(g, k))
    }

    /// Compiles `k` to machine code, named `kernelN` (N counts the
    /// functions of this `Jit`).
    pub fn compile(&mut self, g: &Graph, k: &Kernel) -> Result<KernelFn, String> {
        let name = format!("kernel{}", self.count + 1);
        self.compile_as(g, k, &name)
    }

    /// Compiles `k` to machine code under the symbol `name` (unique in this
    /// `Jit`), which profilers show: Cranelift's JIT writes
    /// `/tmp/perf-PID.map`. With `MODELC_DISASM` set, the machine code is
    /// printed to stderr as it is compiled.
    pub fn compile_as(&mut self, g: &Graph, k: &Kernel, name: &str) -> Result<KernelFn, String> {
        if let Some(why) = unsupported(g, k) {
            return Err(why);
        }
        self.build(g, k);
        self.count += 1;
        let id =
            self.module.declare_function(name, Linkage::Export, &self.ctx.func.signature).map_err(|e| e.to_string())?;
        self.ctx.set_disasm(std::env::var_os("MODELC_DISASM").is_some());
        self.module.define_function(id, &mut self.ctx).map_err(|e| format!("Cranelift rejected {name}: {e:?}"))?;
        if let Some(v) = self.ctx.compiled_code().and_then(|c| c.vcode.as_ref()) {
            eprintln!("== {name}\n{v}");
        }
        self.module.clear_context(&mut self.ctx);
        self.module.finalize_definitions().map_err(|e| e.to_string())?;
        let code = self.module.get_finalized_function(id);
        // SAFETY: the function was just defined with exactly this signature
        // (pointer, i64, i64, i64) -> () in the platform's default calling convention.
        Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(code) })
    }
}

/// `acc ⊕ x` for a reduction: a sum, or a maximum where a larger value or a
/// NaN wins (as the interpreter).
fn combine(b: &mut FunctionBuilder, op: ReduceOp, acc: Value, x: Value) -> Value {
    match op {
        ReduceOp::Sum => b.ins().fadd(acc, x),
        ReduceOp::Max => {
            // x wins when larger or NaN; a NaN already held stays.
            let larger = b.ins().fcmp(FloatCC::GreaterThan, x, acc);
            let nan = b.ins().fcmp(FloatCC::Unordered, x, x);
            let c = b.ins().bor(larger, nan);
            sel(b, c, x, acc)
        }
    }
}

/// Vectors per iteration of the unrolled loop (each with its own
/// accumulator, so a reduction's adds do not wait on one another).
const UNROLL: usize = 4;

/// Where a row's operands are: the current element's address of every
/// operand walked along the row (a pointer that the loops advance), and the
/// row's one address of every operand constant along it.
struct Ptrs {
    at: HashMap<NodeId, Value>,
    fixed: HashMap<NodeId, Value>,
}

impl Ptrs {
    /// The address of operand `id` at the current element, and the bytes to
    /// add for the element `disp` bytes further along the row (zero for an
    /// operand constant along it).
    fn of(&self, id: NodeId, disp: i32) -> (Value, i32) {
        match self.at.get(&id) {
            Some(p) => (*p, disp),
            None => (self.fixed[&id], 0),
        }
    }
}

/// The loops over elements `lo..hi` of a row: sixteen elements at a time
/// (four vectors, four accumulators) while sixteen remain, then four lanes
/// at a time while four remain (when `vector`), then one at a time. `base` is
/// the row's first element index (for ops that hash the index). A reduction
/// whose output is constant along the row accumulates in registers and adds
/// into its output once, after the loops; the accumulators fold in a fixed
/// order ((a0 ⊕ a1) ⊕ (a2 ⊕ a3), then the lanes in order).
///
/// Every operand walked along the row has a pointer that the loops carry and
/// advance (a block parameter): Cranelift recomputes cheap integer
/// arithmetic at its uses (rematerialization), which put the row's offset
/// arithmetic inside the innermost loop when loads indexed from the row's
/// start.
#[allow(clippy::too_many_arguments)]
fn inner_loops(
    b: &mut FunctionBuilder,
    g: &Graph,
    k: &Kernel,
    frame: &Frame,
    reduction: Option<NodeId>,
    lo: Value,
    hi: Value,
    base: Value,
    vector: bool,
) {
    let ptr_ty = b.func.dfg.value_type(frame.walk.values().next().map_or(lo, |w| w.ptr));
    // Operands walked along the row, in node order; their pointers at `lo`.
    let mut units: Vec<NodeId> = frame.walk.iter().filter(|(_, w)| w.unit).map(|(id, _)| *id).collect();
    units.sort();
    let mut fixed = HashMap::new();
    let mut walked: Vec<(&NodeId, &Walk)> = frame.walk.iter().collect();
    walked.sort_by_key(|(id, _)| **id);
    for (id, w) in walked {
        if !w.unit {
            let bytes = b.ins().imul_imm_s(w.row, 4);
            fixed.insert(*id, b.ins().iadd(w.ptr, bytes));
        }
    }
    let starts: Vec<Value> = units
        .iter()
        .map(|id| {
            let w = &frame.walk[id];
            let e = b.ins().iadd(w.row, lo);
            let bytes = b.ins().imul_imm_s(e, 4);
            b.ins().iadd(w.ptr, bytes)
        })
        .collect();
    // A loop header's parameters: j, the pointers, then accumulators.
    let header = |b: &mut FunctionBuilder, accs: &[Type]| {
        let h = b.create_block();
        b.append_block_param(h, types::I64);
        for _ in &units {
            b.append_block_param(h, ptr_ty);
        }
        for t in accs {
            b.append_block_param(h, *t);
        }
        h
    };
    let args = |j: Value, ps: &[Value], accs: &[Value]| -> Vec<BlockArg> {
        std::iter::once(j).chain(ps.iter().copied()).chain(accs.iter().copied()).map(BlockArg::from).collect()
    };
    let split = |b: &FunctionBuilder, h| {
        let v = b.block_params(h).to_vec();
        let (j, rest) = v.split_first().expect("j");
        let (ps, accs) = rest.split_at(units.len());
        (*j, ps.to_vec(), accs.to_vec())
    };
    let advance = |b: &mut FunctionBuilder, ps: &[Value], bytes: i64| -> Vec<Value> {
        ps.iter().map(|p| b.ins().iadd_imm_s(*p, bytes)).collect()
    };
    let ptrs_at =
        |ps: &[Value]| Ptrs { at: units.iter().copied().zip(ps.iter().copied()).collect(), fixed: fixed.clone() };

    let red = reduction.map(|r| {
        let Op::Reduce { op, .. } = g.node(r).op else { unreachable!("a reduction") };
        (r, op, frame.walk[&r].unit)
    });
    // Accumulating in registers: the output is constant along the row.
    let acc_op = red.filter(|(_, _, unit)| !unit).map(|(_, op, _)| op);
    let identity = |b: &mut FunctionBuilder, ty: Type| match acc_op {
        Some(ReduceOp::Max) => fk(b, ty, f32::NEG_INFINITY),
        _ => fk(b, ty, 0.0),
    };
    let tail_head = header(b, &[types::F32]);
    if vector {
        // Splats of scalars, once per row, in node order (so the emitted
        // code does not depend on a hash map's order).
        let mut splats = HashMap::new();
        let mut scalars: Vec<(&NodeId, &Value)> = frame.scalars.iter().chain(&frame.row_scalars).collect();
        scalars.sort_by_key(|(id, _)| **id);
        for (id, v) in scalars {
            splats.insert(*id, b.ins().splat(VEC, *v));
        }
        // Unrolled: UNROLL vectors an iteration, one accumulator each (one
        // in all when nothing accumulates in registers).
        let accs = if acc_op.is_some() { UNROLL } else { 1 };
        let head_u = header(b, &vec![VEC; accs]);
        let (body_u, exit_u) = (b.create_block(), b.create_block());
        let acc0 = identity(b, VEC);
        b.ins().jump(head_u, &args(lo, &starts, &vec![acc0; accs]));
        b.switch_to_block(head_u);
        let (j, ps, acc) = split(b, head_u);
        let step = (4 * UNROLL) as i64;
        let jn = b.ins().iadd_imm_s(j, step);
        let fits = b.ins().icmp(IntCC::SignedLessThanOrEqual, jn, hi);
        b.ins().brif(fits, body_u, &[], exit_u, &[]);
        b.switch_to_block(body_u);
        let at = ptrs_at(&ps);
        let mut acc_next = acc.clone();
        for u in 0..UNROLL {
            let a = acc_next[u % accs];
            let jj = if u == 0 { j } else { b.ins().iadd_imm_s(j, 4 * u as i64) };
            acc_next[u % accs] = element(b, g, k, &at, &splats, jj, (16 * u) as i32, base, VEC, a, red);
        }
        let pn = advance(b, &ps, 4 * step);
        b.ins().jump(head_u, &args(jn, &pn, &acc_next));
        // Leaving: the accumulators folded into one, pairwise.
        b.switch_to_block(exit_u);
        let mut folded = acc.clone();
        if let Some(op) = acc_op {
            while folded.len() > 1 {
                folded = folded.chunks(2).map(|p| combine(b, op, p[0], p[1])).collect();
            }
        }
        // Then four lanes at a time.
        let head = header(b, &[VEC]);
        let body = b.create_block();
        b.ins().jump(head, &args(j, &ps, &folded[..1]));
        b.switch_to_block(head);
        let (j, ps, acc) = split(b, head);
        let j4 = b.ins().iadd_imm_s(j, 4);
        let fits = b.ins().icmp(IntCC::SignedLessThanOrEqual, j4, hi);
        // Leaving: the lanes of the accumulator folded into one.
        let exit_v = b.create_block();
        b.ins().brif(fits, body, &[], exit_v, &[]);
        b.switch_to_block(exit_v);
        let mut s = b.ins().extractlane(acc[0], 0);
        if let Some(op) = acc_op {
            for lane in 1..4 {
                let x = b.ins().extractlane(acc[0], lane);
                s = combine(b, op, s, x);
            }
        }
        b.ins().jump(tail_head, &args(j, &ps, &[s]));
        b.switch_to_block(body);
        let acc = element(b, g, k, &ptrs_at(&ps), &splats, j, 0, base, VEC, acc[0], red);
        let pn = advance(b, &ps, 16);
        b.ins().jump(head, &args(j4, &pn, &[acc]));
    } else {
        let acc0 = identity(b, types::F32);
        b.ins().jump(tail_head, &args(lo, &starts, &[acc0]));
    }
    b.switch_to_block(tail_head);
    let (j, ps, acc) = split(b, tail_head);
    let (body, done) = (b.create_block(), b.create_block());
    b.append_block_param(done, types::F32);
    let more = b.ins().icmp(IntCC::SignedLessThan, j, hi);
    b.ins().brif(more, body, &[], done, &[acc[0].into()]);
    b.switch_to_block(body);
    let mut scalars = frame.scalars.clone();
    scalars.extend(frame.row_scalars.iter().map(|(k, v)| (*k, *v)));
    let acc2 = element(b, g, k, &ptrs_at(&ps), &scalars, j, 0, base, types::F32, acc[0], red);
    let j1 = b.ins().iadd_imm_s(j, 1);
    let pn = advance(b, &ps, 4);
    b.ins().jump(tail_head, &args(j1, &pn, &[acc2]));
    b.switch_to_block(done);
    let acc = b.block_params(done)[0];
    if let (Some((r, op, _)), Some(_)) = (red, acc_op) {
        // out[row] ⊕= acc
        let addr = fixed[&r];
        let old = b.ins().load(types::F32, MemFlagsData::trusted(), addr, 0);
        let v = combine(b, op, old, acc);
        b.ins().store(MemFlagsData::trusted(), v, addr, 0);
    }
}

/// One element (or four lanes) of the kernel at row position `j`: loads,
/// the nodes, stores; returns the register accumulator.
#[allow(clippy::too_many_arguments)]
fn element(
    b: &mut FunctionBuilder,
    g: &Graph,
    k: &Kernel,
    at: &Ptrs,
    constants: &HashMap<NodeId, Value>,
    j: Value,
    disp: i32,
    base: Value,
    ty: Type,
    acc: Value,
    red: Option<(NodeId, ReduceOp, bool)>,
) -> Value {
    let mem = if ty.is_vector() { MemFlagsData::new().with_notrap() } else { MemFlagsData::trusted() };
    let mut vals: HashMap<NodeId, Value> = constants.clone();
    for r in &k.reads {
        if vals.contains_key(r) {
            continue;
        }
        let (addr, off) = at.of(*r, disp);
        let v = b.ins().load(ty, mem, addr, off);
        vals.insert(*r, v);
    }
    let mut acc = acc;
    for id in &k.nodes {
        let ins = g.inputs(*id);
        let arg = |j: usize| vals[&ins[j]];
        let v = match &g.node(*id).op {
            Op::StopGradient | Op::Expand => arg(0),
            Op::CausalMask { t } => {
                // Element i of [t, t]: −∞ above the diagonal (column > row).
                let i = b.ins().iadd(base, j);
                let row = b.ins().udiv_imm_u(i, *t as i64);
                let col = b.ins().urem_imm_u(i, *t as i64);
                let above = b.ins().icmp(IntCC::UnsignedGreaterThan, col, row);
                let (ninf, zero) = (b.ins().f32const(f32::NEG_INFINITY), b.ins().f32const(0.0));
                b.ins().select(above, ninf, zero)
            }
            Op::DropoutMask { rate, salt } => {
                let i = b.ins().iadd(base, j);
                dropout(b, vals[&ins[1]], i, *rate, *salt)
            }
            Op::Unary { op } => match op {
                U::Neg => b.ins().fneg(arg(0)),
                U::Sqrt => b.ins().sqrt(arg(0)),
                U::Exp => exp(b, arg(0)),
                U::Log => log(b, arg(0)),
                U::Tanh => tanh(b, arg(0)),
                U::Erf => erf(b, arg(0)),
                U::Recip => {
                    let one = fk(b, ty, 1.0);
                    b.ins().fdiv(one, arg(0))
                }
            },
            Op::Binary { op } => {
                let (x, y) = (arg(0), arg(1));
                match op {
                    B::Add => b.ins().fadd(x, y),
                    B::Sub => b.ins().fsub(x, y),
                    B::Mul => b.ins().fmul(x, y),
                    // By a value constant over the loop: a multiplication by
                    // its reciprocal (computed once: Cranelift hoists it).
                    B::Div if constants.contains_key(&ins[1]) => {
                        let one = fk(b, ty, 1.0);
                        let r = b.ins().fdiv(one, y);
                        b.ins().fmul(x, r)
                    }
                    B::Div => b.ins().fdiv(x, y),
                    // Ties (and NaN comparisons) pick the second operand, as the IR says.
                    B::Max => {
                        let c = b.ins().fcmp(FloatCC::GreaterThan, x, y);
                        sel(b, c, x, y)
                    }
                    B::Min => {
                        let c = b.ins().fcmp(FloatCC::LessThan, x, y);
                        sel(b, c, x, y)
                    }
                    B::Greater => {
                        let c = b.ins().fcmp(FloatCC::GreaterThan, x, y);
                        flag(b, ty, c)
                    }
                    B::Equal => {
                        let c = b.ins().fcmp(FloatCC::Equal, x, y);
                        flag(b, ty, c)
                    }
                }
            }
            Op::Reduce { .. } => {
                let (r, op, unit) = red.expect("the kernel's reduction");
                if unit {
                    // out[row + j] ⊕= x
                    let (addr, off) = at.of(r, disp);
                    let old = b.ins().load(ty, mem, addr, off);
                    let v = combine(b, op, old, arg(0));
                    b.ins().store(mem, v, addr, off);
                } else {
                    acc = combine(b, op, acc, arg(0));
                }
                continue;
            }
            other => unreachable!("`{}` passed `unsupported`", other.name()),
        };
        vals.insert(*id, v);
    }
    for w in k.writes.iter().filter(|w| !is_reduce(g, **w)) {
        let (addr, off) = at.of(*w, disp);
        b.ins().store(mem, vals[w], addr, off);
    }
    acc
}
