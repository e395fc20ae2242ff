//! Cranelift lowering of elementwise kernels — the first piece of the CPU
//! backend.
//!
//! A kernel becomes one function `fn(args: *const *mut f32, n, start, end:
//! i64)`: `args` holds the kernel's reads, then its writes; the loop runs over
//! elements `start..end` of the `n` elements of the kernel's shape (so the
//! executor can split a big loop between threads). Operands of that shape are loaded at the
//! loop index; scalar operands are loaded once before the loop; other
//! broadcast operands are read at an offset computed from the loop index.
//!
//! Lowered today: neg, sqrt, 1/x, exp, ln and tanh (inline polynomials), add, sub,
//! mul, div, max, min, greater, equal, constants, stop-gradient, and expand
//! of operands read from other kernels — scalar code, one element per iteration. Not yet (the kernel
//! is reported as not lowered, never silently skipped): erf, dropout
//! masks, f32x4. A kernel ending in a sum or max reduction first fills the
//! output with the identity, then accumulates into it at the offset of each
//! loop index (any reduced axes).

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use crate::ir::{BinaryOp as B, Dim, Graph, NodeId, Op, Shape, UnaryOp as U};
use crate::passes::fusion::{Kernel, KernelKind};

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

/// For an operand of shape `s` read in a loop over `shape`: per loop axis
/// (size, elements of the loop inside that axis, the operand's stride); the
/// batch's size is `None` (known at run time). Broadcast axes have stride 0.
fn broadcast_plan(s: &Shape, shape: &Shape) -> Vec<(Option<u64>, Option<u64>, u64)> {
    let r = shape.rank();
    let off = r - s.rank();
    let mut plan = Vec::new();
    let mut stride = 1u64;
    let mut strides = vec![0u64; r];
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
    for (d, stride) in strides.iter().enumerate() {
        let size = match shape.0[d] {
            Dim::Fixed(n) => Some(n),
            Dim::Batch => None,
        };
        let inner: u64 = shape.0[d + 1..].iter().map(|x| if let Dim::Fixed(n) = x { *n } else { 1 }).product();
        // The batch is always the leading axis, so `inner` never contains it.
        plan.push((size, Some(inner), *stride));
    }
    plan
}

fn is_reduce(g: &Graph, id: NodeId) -> bool {
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

/// The element offset of an operand of shape `s` read (or, for a reduction's
/// output, accumulated) at loop index `i` of a loop over `shape`:
/// Σ (i / inner_d mod size_d)·stride_d.
fn operand_offset(b: &mut FunctionBuilder, i: Value, s: &Shape, shape: &Shape) -> Value {
    let mut elem = b.ins().iconst(types::I64, 0);
    for (size, inner, stride) in broadcast_plan(s, shape) {
        if stride == 0 {
            continue;
        }
        let inner = inner.unwrap_or(1) as i64;
        let q = if inner == 1 { i } else { b.ins().udiv_imm_u(i, inner) };
        let idx = match size {
            Some(n) => b.ins().urem_imm_u(q, n as i64),
            None => q,
        };
        let t = b.ins().imul_imm_s(idx, stride as i64);
        elem = b.ins().iadd(elem, t);
    }
    elem
}

fn is_scalar(g: &Graph, id: NodeId) -> bool {
    let s = &g.ty(id).shape;
    !s.has_batch() && s.sample_elements() == 1
}

/// `p(x)` by Horner's rule, coefficients from the highest power down.
fn horner(b: &mut FunctionBuilder, x: Value, coefficients: &[f32]) -> Value {
    let mut acc = b.ins().f32const(coefficients[0]);
    for c in &coefficients[1..] {
        let m = b.ins().fmul(acc, x);
        let k = b.ins().f32const(*c);
        acc = b.ins().fadd(m, k);
    }
    acc
}

/// eˣ in f32: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two for
/// exactness), eʳ by a degree-6 polynomial (Cephes' expf), 2ⁿ built in the
/// exponent bits. Inputs are clamped to [−87.3, 88]: below, the result is the
/// smallest normal (≈1e−38) rather than 0; above, e⁸⁸ rather than ∞. NaN
/// stays NaN.
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published; f32 rounds them.
fn exp(b: &mut FunctionBuilder, x: Value) -> Value {
    let (lo, hi) = (b.ins().f32const(-87.336_54), b.ins().f32const(88.0));
    let x = b.ins().fmax(x, lo);
    let x = b.ins().fmin(x, hi);
    let log2e = b.ins().f32const(std::f32::consts::LOG2_E);
    let t = b.ins().fmul(x, log2e);
    let n = b.ins().nearest(t);
    let (c1, c2) = (b.ins().f32const(0.693_359_4), b.ins().f32const(-2.121_944_4e-4));
    let a = b.ins().fmul(n, c1);
    let r = b.ins().fsub(x, a);
    let a = b.ins().fmul(n, c2);
    let r = b.ins().fsub(r, a);
    let p =
        horner(b, r, &[1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1]);
    let rr = b.ins().fmul(r, r);
    let y = b.ins().fmul(p, rr);
    let y = b.ins().fadd(y, r);
    let one = b.ins().f32const(1.0);
    let y = b.ins().fadd(y, one);
    let ni = b.ins().fcvt_to_sint_sat(types::I32, n);
    let biased = b.ins().iadd_imm_s(ni, 127);
    let bits = b.ins().ishl_imm_u(biased, 23);
    let scale = b.ins().bitcast(types::F32, MemFlagsData::new(), bits);
    b.ins().fmul(y, scale)
}

/// ln x in f32 (Cephes' logf): x = m·2ᵉ with m in [√½, √2), ln m by a degree-9
/// polynomial in m − 1, plus e·ln2 (split in two). ln 0 = −∞, ln of a
/// negative number or NaN is NaN, ln ∞ = ∞. Subnormal inputs are treated as
/// their normalised neighbours' scale (not exact below 1e−38).
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published; f32 rounds them.
fn log(b: &mut FunctionBuilder, x: Value) -> Value {
    let bits = b.ins().bitcast(types::I32, MemFlagsData::new(), x);
    let ebits = b.ins().ushr_imm_u(bits, 23);
    let ebits = b.ins().band_imm_u(ebits, 0xff);
    let e = b.ins().iadd_imm_s(ebits, -126);
    let mbits = b.ins().band_imm_u(bits, 0x807f_ffff_u32 as i64);
    let mbits = b.ins().bor_imm_u(mbits, 0x3f00_0000);
    let m = b.ins().bitcast(types::F32, MemFlagsData::new(), mbits);
    // m in [0.5, 1): below √½ use 2m − 1 and e − 1, else m − 1.
    let sqrthf = b.ins().f32const(std::f32::consts::FRAC_1_SQRT_2);
    let small = b.ins().fcmp(FloatCC::LessThan, m, sqrthf);
    let one = b.ins().f32const(1.0);
    let twice = b.ins().fadd(m, m);
    let a = b.ins().fsub(twice, one);
    let c = b.ins().fsub(m, one);
    let m = b.ins().select(small, a, c);
    let e1 = b.ins().iadd_imm_s(e, -1);
    let e = b.ins().select(small, e1, e);
    let ef = b.ins().fcvt_from_sint(types::F32, e);
    let z = b.ins().fmul(m, m);
    let p = horner(
        b,
        m,
        &[
            7.037_683_6e-2,
            -1.151_461_0e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_5e-1,
            -2.499_999_4e-1,
            3.333_333_1e-1,
        ],
    );
    let y = b.ins().fmul(p, m);
    let y = b.ins().fmul(y, z);
    let q1 = b.ins().f32const(-2.121_944_4e-4);
    let t = b.ins().fmul(ef, q1);
    let y = b.ins().fadd(y, t);
    let half = b.ins().f32const(0.5);
    let hz = b.ins().fmul(z, half);
    let y = b.ins().fsub(y, hz);
    let r = b.ins().fadd(m, y);
    let q2 = b.ins().f32const(0.693_359_4);
    let t = b.ins().fmul(ef, q2);
    let r = b.ins().fadd(r, t);
    // Special values.
    let zero = b.ins().f32const(0.0);
    let is_zero = b.ins().fcmp(FloatCC::Equal, x, zero);
    let ninf = b.ins().f32const(f32::NEG_INFINITY);
    let r = b.ins().select(is_zero, ninf, r);
    let inf = b.ins().f32const(f32::INFINITY);
    let is_inf = b.ins().fcmp(FloatCC::Equal, x, inf);
    let r = b.ins().select(is_inf, inf, r);
    let bad = b.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
    let nan = b.ins().f32const(f32::NAN);
    b.ins().select(bad, nan, r)
}

/// tanh x in f32 (Cephes' tanhf): an odd polynomial below |x| = 0.625,
/// 1 − 2/(e^{2|x|} + 1) with the sign restored above (which saturates to ±1
/// through `exp`'s clamp). NaN stays NaN.
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published; f32 rounds them.
fn tanh(b: &mut FunctionBuilder, x: Value) -> Value {
    let ax = b.ins().fabs(x);
    // Small |x|: x + x·z·P(z), z = x².
    let z = b.ins().fmul(x, x);
    let p = horner(b, z, &[-5.704_988_7e-3, 2.063_908_9e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328_2e-1]);
    let pz = b.ins().fmul(p, z);
    let pzx = b.ins().fmul(pz, x);
    let small = b.ins().fadd(pzx, x);
    // Large |x|: sign(x)·(1 − 2/(e^{2|x|} + 1)).
    let two = b.ins().f32const(2.0);
    let t = b.ins().fmul(ax, two);
    let e = exp(b, t);
    let one = b.ins().f32const(1.0);
    let d = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, d);
    let mag = b.ins().fsub(one, q);
    let large = b.ins().fcopysign(mag, x);
    let limit = b.ins().f32const(0.625);
    let is_small = b.ins().fcmp(FloatCC::LessThan, ax, limit);
    let r = b.ins().select(is_small, small, large);
    // NaN: the comparison is false, so `large` was picked; keep the NaN.
    let is_nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    b.ins().select(is_nan, x, r)
}

/// erf x in f32 (the rational approximation of Eigen's and XLA's
/// `erf` for f32): x clamped to [−4, 4], then x·P(x²)/Q(x²). NaN stays NaN.
#[allow(clippy::excessive_precision)]
fn erf(b: &mut FunctionBuilder, x: Value) -> Value {
    let (lo, hi) = (b.ins().f32const(-4.0), b.ins().f32const(4.0));
    let c = b.ins().fmax(x, lo);
    let c = b.ins().fmin(c, hi);
    let z = b.ins().fmul(c, c);
    let p = horner(
        b,
        z,
        &[
            -2.726_142_3e-10,
            2.770_681_4e-08,
            -2.101_024_1e-06,
            -5.692_506_4e-05,
            -7.349_906_3e-04,
            -2.954_600_0e-03,
            -1.609_603_3e-02,
        ],
    );
    let p = b.ins().fmul(p, c);
    let q = horner(b, z, &[-1.456_607_2e-05, -2.133_740_6e-04, -1.682_827_0e-03, -7.373_329_2e-03, -1.426_474_0e-02]);
    let r = b.ins().fdiv(p, q);
    let is_nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    b.ins().select(is_nan, x, r)
}

/// The dropout mask at element `i`: the interpreter's splitmix64 hash of
/// (seed, salt, i), compared in integers: u < rate ⇔ (z >> 11) < ⌈rate·2⁵³⌉.
fn dropout(b: &mut FunctionBuilder, seed: Value, i: Value, rate: f64, salt: u64) -> Value {
    use cranelift_codegen::ir::condcodes::IntCC;
    let s = b.ins().fcvt_to_uint_sat(types::I64, seed);
    let s = b.ins().imul_imm_s(s, 0x9E37_79B9_7F4A_7C15_u64 as i64);
    let s = b.ins().bxor_imm_u(s, salt.wrapping_mul(0xBF58_476D_1CE4_E5B9) as i64);
    let z = b.ins().bxor(s, i);
    let z = b.ins().iadd_imm_s(z, 0x9E37_79B9_7F4A_7C15_u64 as i64);
    let t = b.ins().ushr_imm_u(z, 30);
    let z = b.ins().bxor(z, t);
    let z = b.ins().imul_imm_s(z, 0xBF58_476D_1CE4_E5B9_u64 as i64);
    let t = b.ins().ushr_imm_u(z, 27);
    let z = b.ins().bxor(z, t);
    let z = b.ins().imul_imm_s(z, 0x94D0_49BB_1331_11EB_u64 as i64);
    let t = b.ins().ushr_imm_u(z, 31);
    let z = b.ins().bxor(z, t);
    let u = b.ins().ushr_imm_u(z, 11);
    let threshold = (rate * (1u64 << 53) as f64).ceil() as i64;
    let dropped = b.ins().icmp_imm_u(IntCC::UnsignedLessThan, u, threshold);
    let keep = b.ins().f32const((1.0 / (1.0 - rate)) as f32);
    let zero = b.ins().f32const(0.0);
    b.ins().select(dropped, zero, keep)
}

/// A JIT holding compiled kernels.
pub struct Jit {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    count: usize,
}

/// A compiled kernel: `f(args, n, start, end)` computes loop indices
/// `start..end` of a loop of `n` elements. A kernel ending in a reduction
/// must be called with the whole range (it first fills its output with the
/// reduction's identity).
pub type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64, i64);

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
        Ok(Jit { module, ctx, fctx: FunctionBuilderContext::new(), count: 0 })
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
        let header = b.create_block();
        let body = b.create_block();
        let exit = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let (args, n, start, end) = (p[0], p[1], p[2], p[3]);
        let shape = loop_shape(g, k).unwrap_or_else(Shape::scalar);
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
        let zero = b.ins().iconst(types::I64, 0);
        // A reduction's output starts at its identity (0 for sums, −∞ for
        // maxima): one loop over its m elements first.
        if let Some(r) = k.nodes.last().filter(|r| is_reduce(g, **r)) {
            let out_shape = g.ty(*r).shape.clone();
            let fixed = |s: &Shape| s.0.iter().map(|d| if let Dim::Fixed(n) = d { *n } else { 1 }).product::<u64>();
            let m = if out_shape.has_batch() {
                let per = b.ins().udiv_imm_u(n, fixed(&shape) as i64);
                b.ins().imul_imm_s(per, fixed(&out_shape) as i64)
            } else {
                b.ins().iconst(types::I64, fixed(&out_shape) as i64)
            };
            let identity = match g.node(*r).op {
                Op::Reduce { op: crate::ir::ReduceOp::Max, .. } => b.ins().f32const(f32::NEG_INFINITY),
                _ => b.ins().f32const(0.0),
            };
            let (init_head, init_body) = (b.create_block(), b.create_block());
            b.append_block_param(init_head, types::I64);
            b.append_block_param(init_body, types::I64);
            b.ins().jump(init_head, &[zero.into()]);
            b.switch_to_block(init_head);
            let j = b.block_params(init_head)[0];
            let more = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, j, m);
            b.ins().brif(more, init_body, &[j.into()], header, &[start.into()]);
            b.switch_to_block(init_body);
            let j = b.block_params(init_body)[0];
            let off = b.ins().imul_imm_s(j, 4);
            let addr = b.ins().iadd(ptrs[r], off);
            b.ins().store(flags, identity, addr, 0);
            let next = b.ins().iadd_imm_s(j, 1);
            b.ins().jump(init_head, &[next.into()]);
        } else {
            b.ins().jump(header, &[start.into()]);
        }
        // header(i): i < n ? body(i) : exit
        b.append_block_param(header, types::I64);
        b.switch_to_block(header);
        let i = b.block_params(header)[0];
        let more = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, i, end);
        b.ins().brif(more, body, &[i.into()], exit, &[]);
        b.append_block_param(body, types::I64);
        b.switch_to_block(body);
        let i = b.block_params(body)[0];
        let offset = b.ins().imul_imm_s(i, 4);
        let mut vals: HashMap<NodeId, Value> = scalars.clone();
        for r in &k.reads {
            if vals.contains_key(r) {
                continue;
            }
            let addr = if g.ty(*r).shape == shape {
                b.ins().iadd(ptrs[r], offset)
            } else {
                // A broadcast operand: read at its own offset.
                let elem = operand_offset(&mut b, i, &g.ty(*r).shape, &shape);
                let bytes = b.ins().imul_imm_s(elem, 4);
                b.ins().iadd(ptrs[r], bytes)
            };
            let v = b.ins().load(types::F32, flags, addr, 0);
            vals.insert(*r, v);
        }
        for id in &k.nodes {
            let ins = g.inputs(*id);
            let arg = |j: usize| vals[&ins[j]];
            let v = match &g.node(*id).op {
                Op::Const { value } => b.ins().f32const(*value as f32),
                Op::CausalMask { t } => {
                    // Element i of [t, t]: −∞ above the diagonal (column > row).
                    let row = b.ins().udiv_imm_u(i, *t as i64);
                    let col = b.ins().urem_imm_u(i, *t as i64);
                    let above = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::UnsignedGreaterThan, col, row);
                    let (ninf, zero) = (b.ins().f32const(f32::NEG_INFINITY), b.ins().f32const(0.0));
                    b.ins().select(above, ninf, zero)
                }
                Op::DropoutMask { rate, salt } => dropout(&mut b, vals[&ins[1]], i, *rate, *salt),
                Op::StopGradient | Op::Expand => arg(0),
                Op::Unary { op } => match op {
                    U::Neg => b.ins().fneg(arg(0)),
                    U::Sqrt => b.ins().sqrt(arg(0)),
                    U::Exp => exp(&mut b, arg(0)),
                    U::Log => log(&mut b, arg(0)),
                    U::Tanh => tanh(&mut b, arg(0)),
                    U::Erf => erf(&mut b, arg(0)),
                    _ => {
                        let one = b.ins().f32const(1.0);
                        b.ins().fdiv(one, arg(0))
                    }
                },
                Op::Binary { op } => {
                    let (x, y) = (arg(0), arg(1));
                    match op {
                        B::Add => b.ins().fadd(x, y),
                        B::Sub => b.ins().fsub(x, y),
                        B::Mul => b.ins().fmul(x, y),
                        B::Div => b.ins().fdiv(x, y),
                        // Ties (and NaN comparisons) pick the second operand, as the IR says.
                        B::Max => {
                            let c = b.ins().fcmp(FloatCC::GreaterThan, x, y);
                            b.ins().select(c, x, y)
                        }
                        B::Min => {
                            let c = b.ins().fcmp(FloatCC::LessThan, x, y);
                            b.ins().select(c, x, y)
                        }
                        B::Greater | B::Equal => {
                            let cc = if *op == B::Greater { FloatCC::GreaterThan } else { FloatCC::Equal };
                            let c = b.ins().fcmp(cc, x, y);
                            let (one, zero) = (b.ins().f32const(1.0), b.ins().f32const(0.0));
                            b.ins().select(c, one, zero)
                        }
                    }
                }
                Op::Reduce { op, .. } => {
                    // out[o(i)] ← out[o(i)] ⊕ x[i]
                    let o = operand_offset(&mut b, i, &g.ty(*id).shape, &shape);
                    let bytes = b.ins().imul_imm_s(o, 4);
                    let addr = b.ins().iadd(ptrs[id], bytes);
                    let acc = b.ins().load(types::F32, flags, addr, 0);
                    let x = arg(0);
                    let v = match op {
                        crate::ir::ReduceOp::Sum => b.ins().fadd(acc, x),
                        // As the interpreter: a larger value or a NaN wins.
                        crate::ir::ReduceOp::Max => {
                            let c = b.ins().fcmp(FloatCC::UnorderedOrGreaterThan, x, acc);
                            b.ins().select(c, x, acc)
                        }
                    };
                    b.ins().store(flags, v, addr, 0);
                    continue;
                }
                _ => b.ins().f32const(f32::NAN),
            };
            vals.insert(*id, v);
        }
        for w in k.writes.iter().filter(|w| !is_reduce(g, **w)) {
            let addr = b.ins().iadd(ptrs[w], offset);
            b.ins().store(flags, vals[w], addr, 0);
        }
        let next = b.ins().iadd_imm_s(i, 1);
        b.ins().jump(header, &[next.into()]);
        b.switch_to_block(exit);
        b.ins().return_(&[]);
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

    /// Compiles `k` to machine code.
    pub fn compile(&mut self, g: &Graph, k: &Kernel) -> Result<KernelFn, String> {
        if let Some(why) = unsupported(g, k) {
            return Err(why);
        }
        self.build(g, k);
        self.count += 1;
        let name = format!("kernel{}", self.count);
        let id = self
            .module
            .declare_function(&name, Linkage::Export, &self.ctx.func.signature)
            .map_err(|e| e.to_string())?;
        self.module.define_function(id, &mut self.ctx).map_err(|e| format!("Cranelift rejected {name}: {e:?}"))?;
        self.module.clear_context(&mut self.ctx);
        self.module.finalize_definitions().map_err(|e| e.to_string())?;
        let code = self.module.get_finalized_function(id);
        // SAFETY: the function was just defined with exactly this signature
        // (pointer, i64, i64, i64) -> () in the platform's default calling convention.
        Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(code) })
    }
}
