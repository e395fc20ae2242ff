//! The Cranelift backend against the reference interpreter: every kernel it
//! lowers computes, in f32, what the interpreter computes in f64.

use std::path::Path;

use modelc_compiler::backend::cpu::clif::Jit;
use modelc_compiler::gradcheck::{concrete, random_inputs, Rng};
use modelc_compiler::interp;
use modelc_compiler::ir::Op;
use modelc_compiler::kernel::fusion;
use modelc_compiler::kernel::loops::unsupported;
use modelc_compiler::step::StepConfig;

use crate::check_spec;

#[test]
fn lowered_kernels_match_the_interpreter() {
    let mut lowered_total = 0;
    for spec in ["specs/xor.model", "specs/mnist_mlp.model", "specs/lenet5.model"] {
        let (_, program, errors) = check_spec(Path::new(spec));
        assert!(errors.is_empty());
        let model = &program.models[0];
        let cfg = StepConfig::from_train(&program.trains[0]).expect("optimizer");
        let g = modelc_compiler::pipeline::train_step(model, &cfg).expect("builds");
        let kernels = fusion::fuse(&g);
        let inputs = random_inputs(&g, 3, &mut Rng::new(1));
        let values = interp::run(&g, &inputs).expect("runs");
        let mut jit = Jit::new().expect("a JIT for this machine");
        let mut lowered = 0;
        for k in &kernels {
            if unsupported(&g, k).is_some() {
                continue;
            }
            let f = jit.compile(&g, k).expect("compiles");
            let mut bufs: Vec<Vec<f32>> =
                k.reads.iter().map(|r| values[r].data.iter().map(|v| *v as f32).collect()).collect();
            for w in &k.writes {
                bufs.push(vec![0.0; concrete(&g.ty(*w).shape, 3).iter().product()]);
            }
            let shape = modelc_compiler::kernel::loops::loop_shape(&g, k).expect("a loop");
            let n = concrete(&shape, 3).iter().product::<usize>() as i64;
            if let Some((r, v)) = modelc_compiler::kernel::loops::reduction_identity(&g, k) {
                let j = k.reads.len() + k.writes.iter().position(|w| *w == r).expect("the reduction is written");
                bufs[j].fill(v);
            }
            let ptrs: Vec<*mut f32> = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
            // SAFETY: one pointer per read and write, each to a buffer of the
            // kernel's element count (or one element for scalar reads).
            unsafe { f(ptrs.as_ptr(), n, 0, n) };
            for (j, w) in k.writes.iter().enumerate() {
                let got = &bufs[k.reads.len() + j];
                for (a, b) in got.iter().zip(&values[w].data) {
                    let err = (*a as f64 - b).abs();
                    assert!(
                        err <= 1e-5 * b.abs() + 1e-6,
                        "{spec}: kernel writing {:?}: {a} vs {b}",
                        g.node(*w).op.name()
                    );
                }
            }
            lowered += 1;
        }
        assert!(lowered > 0, "{spec}: no kernel lowered");
        let reductions = kernels
            .iter()
            .filter(|k| {
                unsupported(&g, k).is_none() && k.nodes.iter().any(|n| matches!(g.node(*n).op, Op::Reduce { .. }))
            })
            .count();
        assert!(reductions > 0, "{spec}: no reduction kernel lowered");
        lowered_total += lowered;
    }
    assert!(lowered_total >= 20, "only {lowered_total} kernels lowered");
}

#[test]
fn clif_is_emitted_for_every_elementwise_kernel_and_the_others_are_named() {
    let (code, out, err) = crate::modelc(&["emit", "specs/mnist_mlp.model", "--target", "clif"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("function u0:0(i64, i64) system_v {") || out.contains("function "), "{out}");
    assert!(out.contains("fadd") || out.contains("fmul"), "{out}");
    assert!(out.contains("a call of the gemm crate"), "{out}");
    assert!(out.contains("; 23 kernels: 16 Cranelift functions, 5 gemm calls, 2 copy loops"), "{out}");
}

/// Runs one unary op through the JIT on `xs`.
fn jit_unary(op: modelc_compiler::ir::UnaryOp, xs: &[f32]) -> Vec<f32> {
    use modelc_compiler::ir::lower::Builder;
    use modelc_compiler::ir::{Dim, Graph, Role, Shape, Ty};
    let mut b = Builder { g: Graph::new() };
    let x = b.g.input("x", Role::Data, Ty::f32(Shape(vec![Dim::Fixed(xs.len() as u64)])));
    let y = b.un(op, x).expect("typed");
    b.g.outputs.push(("y".into(), y));
    let kernels = fusion::fuse(&b.g);
    assert_eq!(kernels.len(), 1);
    // The JIT owns the code: it lives as long as `f` is called.
    let mut jit = Jit::new().expect("jit");
    let f = jit.compile(&b.g, &kernels[0]).expect("compiles");
    let mut input = xs.to_vec();
    let mut out = vec![0.0f32; xs.len()];
    let ptrs = [input.as_mut_ptr(), out.as_mut_ptr()];
    // SAFETY: one read and one write buffer of xs.len() elements each.
    unsafe { f(ptrs.as_ptr(), xs.len() as i64, 0, xs.len() as i64) };
    out
}

/// The inline polynomials' worst error against f64 (the note quotes these).
#[test]
fn exp_log_tanh_and_erf_polynomials_are_accurate() {
    use modelc_compiler::ir::UnaryOp;
    let xs: Vec<f32> = (-8000..=8000).map(|i| i as f32 * 0.01).collect();
    let ys = jit_unary(UnaryOp::Exp, &xs);
    let worst_exp = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| ((*y as f64) - (*x as f64).exp()).abs() / (*x as f64).exp())
        .fold(0.0, f64::max);
    assert!(worst_exp <= 4e-7, "exp: worst relative error {worst_exp:e}");
    // The clamp's edges and beyond (−∞ weighs nothing in a masked softmax),
    // in every lane position and the scalar tail.
    let edges = [f32::NAN, f32::NEG_INFINITY, -1e30, -87.4, f32::INFINITY, 88.0, 1e30, 0.0, -0.0];
    let xs: Vec<f32> = edges.iter().cycle().take(9 * 5).copied().collect();
    for (x, y) in xs.iter().zip(jit_unary(UnaryOp::Exp, &xs)) {
        match *x {
            x if x.is_nan() => assert!(y.is_nan(), "exp(NaN) = {y}"),
            x if x < -87.34 => assert_eq!(y, 0.0, "exp({x})"),
            x if x >= 88.0 => assert_eq!(y, 88f32.exp(), "exp({x}) is e⁸⁸"),
            x => assert_eq!(y, 1.0, "exp({x})"),
        }
    }
    // ln over 1e-30 … 1e30, log-spaced, plus a dense sweep around 1.
    let mut xs: Vec<f32> = (-3000..=3000).map(|i| 10f64.powf(i as f64 / 100.0) as f32).collect();
    xs.extend((1..4000).map(|i| 0.5 + i as f32 * 0.00025));
    let ys = jit_unary(UnaryOp::Log, &xs);
    let worst_log = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| {
            let t = (*x as f64).ln();
            ((*y as f64) - t).abs() / t.abs().max(1.0)
        })
        .fold(0.0, f64::max);
    assert!(worst_log <= 4e-7, "log: worst error {worst_log:e} (relative, absolute below |ln x| = 1)");
    let special = jit_unary(UnaryOp::Log, &[0.0, -1.0, f32::INFINITY, f32::NAN]);
    assert_eq!(special[0], f32::NEG_INFINITY);
    assert!(special[1].is_nan() && special[3].is_nan());
    assert_eq!(special[2], f32::INFINITY);
    let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.005).chain([1e-6, -3e-5, 30.0, -30.0]).collect();
    let ys = jit_unary(UnaryOp::Tanh, &xs);
    let worst_tanh = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| {
            let t = (*x as f64).tanh();
            ((*y as f64) - t).abs() / t.abs().max(1e-30)
        })
        .fold(0.0, f64::max);
    assert!(worst_tanh <= 4e-7, "tanh: worst relative error {worst_tanh:e}");
    assert!(jit_unary(UnaryOp::Tanh, &[f32::NAN])[0].is_nan());
    // erf over [−6, 6]: relative error (erf is odd, ~2x/√π near 0).
    let xs: Vec<f32> = (-6000..=6000).map(|i| i as f32 * 0.001).chain([1e-6, -3e-5, 1e-3]).collect();
    let ys = jit_unary(UnaryOp::Erf, &xs);
    let worst_erf = xs
        .iter()
        .zip(&ys)
        .filter(|(x, _)| **x != 0.0)
        .map(|(x, y)| {
            let t = modelc_compiler::interp::erf(*x as f64);
            ((*y as f64) - t).abs() / t.abs()
        })
        .fold(0.0, f64::max);
    assert!(worst_erf <= 4e-7, "erf: worst relative error {worst_erf:e}");
    assert!(jit_unary(UnaryOp::Erf, &[f32::NAN])[0].is_nan());
    let xs: Vec<f32> = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30].iter().cycle().take(20).copied().collect();
    for (x, y) in xs.iter().zip(jit_unary(UnaryOp::Erf, &xs)) {
        if x.is_nan() {
            assert!(y.is_nan(), "erf(NaN) = {y}");
        } else {
            assert!((y - x.signum()).abs() < 1e-6, "erf({x}) = {y}");
        }
    }
    println!(
        "worst error against f64: exp {worst_exp:.2e} (relative), log {worst_log:.2e}, tanh {worst_tanh:.2e} (relative), erf {worst_erf:.2e} (relative)"
    );
}

/// Permutes large enough to be split between the threads (along the
/// outermost output axis) give the interpreter's values, for every
/// permutation of a rank-4 value: contiguous inner rows and strided ones.
#[test]
fn permutes_split_between_threads_match_the_interpreter() {
    use modelc_compiler::backend::cpu::Program;
    use modelc_compiler::ir::{Graph, Op, Role, Shape, Ty};
    let perms: [[usize; 4]; 5] = [[0, 2, 1, 3], [0, 2, 3, 1], [0, 1, 3, 2], [0, 3, 1, 2], [3, 2, 1, 0]];
    for perm in perms {
        let mut g = Graph::new();
        // [N, 64, 8, 32] at N = 4: 65,536 elements, above the split threshold.
        let x = g.input("x", Role::Data, Ty::f32(Shape::batched(&[64, 8, 32])));
        let y = g.add(Op::Permute { perm: perm.to_vec() }, &[x]).expect("types");
        g.outputs.push(("y".into(), y));
        let inputs = modelc_compiler::gradcheck::random_inputs(&g, 4, &mut modelc_compiler::rng::Rng::new(2));
        let want = modelc_compiler::interp::outputs(&g, &inputs).expect("runs")["y"].data.clone();
        let mut p = Program::new(modelc_compiler::ir::verify::verify(g).expect("verifies")).expect("compiles");
        let buf = p.input_mut("x", 4).expect("input");
        for (b, v) in buf.iter_mut().zip(&inputs["x"].data) {
            *b = *v as f32;
        }
        p.run(4).expect("runs");
        let got = p.output("y", 4).expect("output");
        assert_eq!(got.len(), want.len());
        assert!(got.iter().zip(&want).all(|(a, b)| *a == *b as f32), "permute {perm:?} differs");
    }
}

/// Reductions over the batch large enough to be split between the threads
/// (the second half into its own copy of the output, combined after) give
/// the interpreter's sums and maxima.
#[test]
fn batch_reductions_split_between_threads_match_the_interpreter() {
    use modelc_compiler::backend::cpu::Program;
    use modelc_compiler::ir::{Graph, Op, ReduceOp, Role, Shape, Ty};
    for op in [ReduceOp::Sum, ReduceOp::Max] {
        let mut g = Graph::new();
        // [N, 64, 32] at N = 40: 81,920 elements, reduced over N and 64.
        let x = g.input("x", Role::Data, Ty::f32(Shape::batched(&[64, 32])));
        let y = g.add(Op::Reduce { op, axes: vec![0, 1] }, &[x]).expect("types");
        g.outputs.push(("y".into(), y));
        let inputs = modelc_compiler::gradcheck::random_inputs(&g, 40, &mut modelc_compiler::rng::Rng::new(5));
        let want = modelc_compiler::interp::outputs(&g, &inputs).expect("runs")["y"].data.clone();
        // f32 rounding of a 2,560-term sum: bounded by 1e-6 of Σ|x| (ε·n ≈ 1.5e-4 would be the worst case).
        let mut scale = vec![0.0f64; 32];
        for (i, v) in inputs["x"].data.iter().enumerate() {
            scale[i % 32] += v.abs();
        }
        let mut p = Program::new(modelc_compiler::ir::verify::verify(g).expect("verifies")).expect("compiles");
        for _ in 0..2 {
            // Twice: the private copy is refilled every run.
            let buf = p.input_mut("x", 40).expect("input");
            for (b, v) in buf.iter_mut().zip(&inputs["x"].data) {
                *b = *v as f32;
            }
            p.run(40).expect("runs");
            let got = p.output("y", 40).expect("output");
            assert_eq!(got.len(), 32);
            for ((a, b), s) in got.iter().zip(&want).zip(&scale) {
                let tol = if op == ReduceOp::Max { 0.0 } else { 1e-6 * s };
                assert!((*a as f64 - *b as f32 as f64).abs() <= tol, "{op:?}: {a} vs {b}");
            }
        }
    }
}

/// A maximum over values where a NaN comes first: the NaN wins and stays,
/// as in the interpreter (the compiled max once let a later number replace
/// it), on one thread and split between two.
#[test]
fn reduce_max_keeps_a_nan_as_the_interpreter() {
    use modelc_compiler::backend::cpu::Program;
    use modelc_compiler::ir::{Graph, Op, ReduceOp, Role, Shape, Ty};
    for (batch, axes) in [(3, vec![1]), (40, vec![0, 1])] {
        let mut g = Graph::new();
        let x = g.input("x", Role::Data, Ty::f32(Shape::batched(&[64, 32])));
        let y = g.add(Op::Reduce { op: ReduceOp::Max, axes }, &[x]).expect("types");
        g.outputs.push(("y".into(), y));
        let mut inputs = modelc_compiler::gradcheck::random_inputs(&g, batch, &mut modelc_compiler::rng::Rng::new(6));
        // NaN in the first row of every column, numbers after it.
        for v in inputs.get_mut("x").expect("x").data.iter_mut().take(32) {
            *v = f64::NAN;
        }
        let want = modelc_compiler::interp::outputs(&g, &inputs).expect("runs")["y"].data.clone();
        let mut p = Program::new(modelc_compiler::ir::verify::verify(g).expect("verifies")).expect("compiles");
        let buf = p.input_mut("x", batch).expect("input");
        for (b, v) in buf.iter_mut().zip(&inputs["x"].data) {
            *b = *v as f32;
        }
        p.run(batch).expect("runs");
        let got = p.output("y", batch).expect("output");
        for (a, b) in got.iter().zip(&want) {
            assert!(
                a.is_nan() == b.is_nan() && (a.is_nan() || *a as f64 == *b as f32 as f64),
                "batch {batch}: {a} vs {b}"
            );
        }
        assert!(got.iter().any(|a| a.is_nan()), "the NaNs reached the output");
    }
}

/// Compiled kernels flush subnormal results to zero on every thread of a
/// step (a loop this long is split between two), as XLA's CPU kernels do;
/// the interpreter does not, and the calling thread keeps its own mode.
#[test]
fn kernels_flush_subnormals_and_the_caller_keeps_its_mode() {
    use modelc_compiler::backend::cpu::Program;
    use modelc_compiler::ir::{BinaryOp, Graph, Op, Role, Shape, Ty};
    let batch = 40;
    let mut g = Graph::new();
    let x = g.input("x", Role::Data, Ty::f32(Shape::batched(&[64, 32])));
    let y = g.add(Op::Binary { op: BinaryOp::Mul }, &[x, x]).expect("types");
    g.outputs.push(("y".into(), y));
    let mut inputs = modelc_compiler::gradcheck::random_inputs(&g, batch, &mut modelc_compiler::rng::Rng::new(6));
    for v in inputs.get_mut("x").expect("x").data.iter_mut() {
        *v = 1e-20;
    }
    let want = modelc_compiler::interp::outputs(&g, &inputs).expect("runs")["y"].data.clone();
    assert!(want.iter().all(|v| (*v - 1e-40).abs() < 1e-50), "the interpreter keeps 1e-40");
    let mut p = Program::new(modelc_compiler::ir::verify::verify(g).expect("verifies")).expect("compiles");
    p.input_mut("x", batch).expect("input").fill(1e-20);
    p.run(batch).expect("runs");
    let got = p.output("y", batch).expect("output");
    assert_eq!(got.len(), 64 * 32 * batch);
    assert!(got.iter().all(|v| *v == 0.0), "every element flushed, on both threads");
    let here = std::hint::black_box(1e-20f32) * std::hint::black_box(1e-20f32);
    assert!(here > 0.0, "this thread still makes subnormals after the run");
}

/// The profile's gemm figures count 2·m·n·k per product and every run, so
/// the rate `MODELC_PROFILE` prints is that of the work actually done.
#[test]
fn the_profile_counts_each_gemm_products_operations() {
    use modelc_compiler::backend::cpu::Program;
    use modelc_compiler::ir::{Dim, Graph, Op, Role, Shape, Ty};
    let mut g = Graph::new();
    let x = g.input("x", Role::Data, Ty::f32(Shape::batched(&[16])));
    let w = g.input("w", Role::Param, Ty::f32(Shape(vec![Dim::Fixed(8), Dim::Fixed(16)])));
    let y = g.add(Op::MatMul { ta: false, tb: true }, &[x, w]).expect("types");
    g.outputs.push(("y".into(), y));
    let mut p = Program::new(modelc_compiler::ir::verify::verify(g).expect("verifies")).expect("compiles");
    p.start_profile();
    for batch in [5, 5, 3] {
        p.input_mut("x", batch).expect("x").fill(1.0);
        p.run(batch).expect("runs");
    }
    let (flops, time) = p.gemm_profile();
    assert_eq!(flops, (2 * 8 * 16 * (5 + 5 + 3)) as f64);
    assert!(time > std::time::Duration::ZERO);
}

/// A col2im after its per-image gemm runs on each image's product as it is
/// made (batch 1,024: the images split between the threads), unless the
/// memory plan gives its pixels the room of the product's operand (`dy`
/// computed by a kernel, dead after the gemm, four times the pixels' size):
/// writing image b's pixels while the other thread still reads later
/// images' `dy` would corrupt them, so the two kernels then run apart.
#[test]
fn col2im_after_a_gemm_joins_it_unless_its_pixels_share_the_operands_room() {
    use modelc_compiler::backend::cpu::Program;
    use modelc_compiler::ir::{BinaryOp, Dim, Graph, Op, Role, Shape, Ty};
    let batch = 1024;
    for computed in [false, true] {
        let mut g = Graph::new();
        let x = g.input("x", Role::Data, Ty::f32(Shape::batched(&[8, 16])));
        let w = g.input("w", Role::Param, Ty::f32(Shape(vec![Dim::Fixed(8), Dim::Fixed(18)])));
        let dy = if computed { g.add(Op::Binary { op: BinaryOp::Mul }, &[x, x]).expect("types") } else { x };
        let dcol = g.add(Op::MatMul { ta: true, tb: false }, &[w, dy]).expect("types");
        let op = Op::Col2Im { kernel: (3, 3), stride: (1, 1), padding: (1, 1), channels: 2, image: (4, 4) };
        let dx = g.add(op, &[dcol]).expect("types");
        g.outputs.push(("dx".into(), dx));
        let inputs = modelc_compiler::gradcheck::random_inputs(&g, batch, &mut modelc_compiler::rng::Rng::new(9));
        let want = modelc_compiler::interp::outputs(&g, &inputs).expect("runs")["dx"].data.clone();
        let mut p = Program::new(modelc_compiler::ir::verify::verify(g).expect("verifies")).expect("compiles");
        for name in ["x", "w"] {
            let buf = p.input_mut(name, batch).expect("input");
            for (b, v) in buf.iter_mut().zip(&inputs[name].data) {
                *b = *v as f32;
            }
        }
        p.run(batch).expect("runs");
        let got = p.output("dx", batch).expect("output");
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "computed dy {computed}: dx[{i}]: {a} vs {b}");
        }
        assert_eq!(p.joined_kernels(batch), if computed { 0 } else { 1 }, "computed dy {computed}");
    }
}
