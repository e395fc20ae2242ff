//! The graph IR, autodiff and the reference interpreter: every derivative
//! rule against finite differences on random shapes (broadcasting, views,
//! ties included), whole-spec gradient checks, frozen parameters, and
//! snapshots of every spec's graphs.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use modelc_compiler::autodiff;
use modelc_compiler::gradcheck::{self, relative_error, Rng};
use modelc_compiler::interp::{self, Tensor};
use modelc_compiler::ir::lower::{self, Builder, Mode};
use modelc_compiler::ir::{
    print, verify, BinaryOp as B, DType, Dim, Graph, NodeId, Op, ReduceOp, Role, Shape, Ty, UnaryOp as U,
};

use crate::{check_spec, relative};

fn fixed(dims: &[u64]) -> Shape {
    Shape(dims.iter().map(|d| Dim::Fixed(*d)).collect())
}

/// Builds `f(inputs)`, takes loss = Σ f(x)·w for a random w, and compares the
/// symbolic gradient of every input with five-point finite differences.
fn check_rule(name: &str, shapes: &[&[u64]], positive: bool, f: impl Fn(&mut Builder, &[NodeId]) -> NodeId) {
    let shapes: Vec<Shape> = shapes.iter().map(|s| fixed(s)).collect();
    check_rule_on(name, &shapes, positive, f)
}

/// As [`check_rule`], for shapes that may hold the batch (run with N = 2).
fn check_rule_on(name: &str, shapes: &[Shape], positive: bool, f: impl Fn(&mut Builder, &[NodeId]) -> NodeId) {
    let mut b = Builder { g: Graph::new() };
    let xs: Vec<NodeId> =
        shapes.iter().enumerate().map(|(i, s)| b.g.input(&format!("x{i}"), Role::Param, Ty::f32(s.clone()))).collect();
    let y = f(&mut b, &xs);
    let wshape = b.g.ty(y).shape.clone();
    let w = b.g.input("w", Role::Data, Ty::f32(wshape));
    let yw = b.mul(y, w).expect("typed");
    let loss = b.sum_all(yw).expect("typed");
    b.g.outputs.push(("loss".into(), loss));
    let fwd = b.g;
    verify::check(&fwd).expect("forward verifies");
    let (with, grads) = autodiff::grad(fwd.clone(), loss, &xs).expect("differentiates");
    verify::check(&with).expect("gradient graph verifies");
    let mut rng = Rng::new(name.len() as u64);
    // Every input gets a random value (indices in range); operands of log,
    // sqrt, 1/x and division are kept positive.
    let mut inputs = gradcheck::random_inputs(&fwd, 2, &mut rng);
    for (i, s) in shapes.iter().enumerate() {
        let dims = gradcheck::concrete(s, 2);
        let n: usize = dims.iter().product();
        let data = (0..n).map(|_| if positive { rng.uniform(0.5, 2.0) } else { rng.uniform(-1.0, 1.0) }).collect();
        inputs.insert(format!("x{i}"), Tensor::new(dims, data));
    }
    let vals = interp::run(&with, &inputs).expect("runs");
    let loss_at = |inp: &HashMap<String, Tensor>| interp::run(&fwd, inp).expect("runs")[&loss].data[0];
    for (i, g) in grads.iter().enumerate() {
        let key = format!("x{i}");
        for k in 0..vals[g].len() {
            let at = |dx: f64| {
                let mut p = inputs.clone();
                p.get_mut(&key).expect("input").data[k] += dx;
                Ok(loss_at(&p))
            };
            let analytic = vals[g].data[k];
            let (err, numeric) = gradcheck::STEPS
                .iter()
                .map(|h| {
                    let n = gradcheck::derivative(at, *h).expect("runs");
                    (relative_error(analytic, n), n)
                })
                .fold((f64::INFINITY, 0.0), |a, b| if b.0 < a.0 { b } else { a });
            assert!(err <= 1e-6, "{name}: d/d{key}[{k}] symbolic {analytic} vs numeric {numeric} (error {err:e})");
        }
    }
}

#[test]
fn unary_rules_match_finite_differences() {
    for (op, positive) in [
        (U::Neg, false),
        (U::Exp, false),
        (U::Log, true),
        (U::Sqrt, true),
        (U::Recip, true),
        (U::Tanh, false),
        (U::Erf, false),
    ] {
        check_rule(&format!("{op:?}"), &[&[3, 4]], positive, |b, x| b.un(op, x[0]).expect("typed"));
    }
}

#[test]
fn binary_rules_match_finite_differences_with_broadcasting() {
    let shapes: [(&[u64], &[u64]); 4] = [(&[3, 4], &[3, 4]), (&[3, 4], &[4]), (&[3, 1], &[1, 4]), (&[2, 3, 4], &[])];
    for op in [B::Add, B::Sub, B::Mul, B::Div, B::Max, B::Min] {
        for (a, c) in shapes {
            check_rule(&format!("{op:?}{a:?}{c:?}"), &[a, c], op == B::Div, |b, x| {
                b.bin(op, x[0], x[1]).expect("typed")
            });
        }
    }
}

#[test]
fn reductions_and_views_match_finite_differences() {
    check_rule("sum", &[&[2, 3, 4]], false, |b, x| b.reduce(ReduceOp::Sum, x[0], vec![0, 2]).expect("typed"));
    check_rule("max", &[&[2, 3, 4]], false, |b, x| b.reduce(ReduceOp::Max, x[0], vec![1]).expect("typed"));
    check_rule("reshape", &[&[2, 3, 4]], false, |b, x| b.reshape(x[0], fixed(&[6, 4])).expect("typed"));
    // A permuted (non-contiguous) view, then reshaped: PyTorch #30303's case.
    check_rule("permute+reshape", &[&[2, 3, 4]], false, |b, x| {
        let p = b.permute(x[0], vec![2, 0, 1]).expect("typed");
        b.reshape(p, fixed(&[4, 6])).expect("typed")
    });
    check_rule("expand", &[&[3, 1]], false, |b, x| {
        let like = b.g.input("like", Role::Scalar, Ty::f32(fixed(&[2, 3, 5])));
        b.op(Op::Expand, &[x[0], like]).expect("typed")
    });
    check_rule("slice", &[&[3, 5]], false, |b, x| {
        b.op(Op::Slice { axis: 1, start: 1, end: 4 }, &[x[0]]).expect("typed")
    });
    check_rule("pad", &[&[3, 5]], false, |b, x| {
        b.op(Op::Pad { axis: 0, before: 2, after: 1 }, &[x[0]]).expect("typed")
    });
    check_rule("concat", &[&[3, 2], &[3, 4]], false, |b, x| {
        b.op(Op::Concat { axis: 1 }, &[x[0], x[1]]).expect("typed")
    });
}

#[test]
fn matmul_rules_match_finite_differences() {
    check_rule("matmul", &[&[3, 4], &[4, 5]], false, |b, x| b.matmul(x[0], x[1]).expect("typed"));
    check_rule("batched matmul", &[&[2, 3, 4], &[2, 4, 5]], false, |b, x| b.matmul(x[0], x[1]).expect("typed"));
    // Leading dimensions broadcast: the gradient of the shared operand sums.
    check_rule("broadcast matmul", &[&[2, 3, 4], &[4, 5]], false, |b, x| b.matmul(x[0], x[1]).expect("typed"));
    check_rule("matmul of transposed", &[&[4, 3], &[5, 4]], false, |b, x| {
        let at = b.permute(x[0], vec![1, 0]).expect("typed");
        let bt = b.permute(x[1], vec![1, 0]).expect("typed");
        b.matmul(at, bt).expect("typed")
    });
}

#[test]
fn convolution_and_embedding_rules_match_finite_differences() {
    // Im2Col needs a batch; wrap a fixed tensor into [N=1, …] by reshape.
    check_rule_on("im2col", &[Shape::batched(&[2, 5, 4])], false, |b, x| {
        b.op(Op::Im2Col { kernel: (3, 2), stride: (2, 1), padding: (1, 0) }, &[x[0]]).expect("typed")
    });
    check_rule_on("col2im", &[Shape::batched(&[12, 9])], false, |b, x| {
        let op = Op::Col2Im { kernel: (3, 2), stride: (2, 1), padding: (1, 0), channels: 2, image: (5, 4) };
        b.op(op, &[x[0]]).expect("typed")
    });
    // Windows overlap (stride 1 along the width), so the overlap sums are
    // exercised; ties are pinned in `tie_rules_are_the_documented_ones`.
    check_rule_on("maxpool", &[Shape::batched(&[2, 5, 4])], false, |b, x| {
        b.op(Op::MaxPool { size: (2, 2), stride: (2, 1) }, &[x[0]]).expect("typed")
    });
    check_rule_on("scatter_add", &[Shape::batched(&[3, 4])], false, |b, x| {
        let idx = b.g.input("idx", Role::Scalar, Ty { dtype: DType::I32, shape: Shape::batched(&[3]) });
        b.op(Op::ScatterAdd { rows: 5 }, &[idx, x[0]]).expect("typed")
    });
    check_rule_on("mean over a batch", &[Shape::batched(&[3])], false, |b, x| b.mean_all(x[0]).expect("typed"));
    check_rule("softmax", &[&[3, 5]], false, |b, x| b.softmax(x[0], 1).expect("typed"));
    check_rule("log_softmax", &[&[3, 5]], false, |b, x| b.log_softmax(x[0], 1).expect("typed"));
    check_rule("gather", &[&[6, 3]], false, |b, x| {
        let idx = b.g.input("idx", Role::Scalar, Ty { dtype: DType::I32, shape: fixed(&[4]) });
        b.op(Op::Gather, &[x[0], idx]).expect("typed")
    });
}

/// Ties: relu'(0) = 0 as in PyTorch; a max-reduction shares the gradient
/// equally among tied maxima.
#[test]
fn tie_rules_are_the_documented_ones() {
    let mut b = Builder { g: Graph::new() };
    let x = b.g.input("x", Role::Param, Ty::f32(fixed(&[4])));
    let zero = b.c(0.0).expect("typed");
    let r = b.bin(B::Max, x, zero).expect("typed");
    let m = b.reduce(ReduceOp::Max, x, vec![0]).expect("typed");
    let s = b.sum_all(r).expect("typed");
    let ms = b.sum_all(m).expect("typed");
    let loss = b.add(s, ms).expect("typed");
    let (g, grads) = autodiff::grad(b.g, loss, &[x]).expect("differentiates");
    let inputs = HashMap::from([("x".to_string(), Tensor::new(vec![4], vec![0.0, 2.0, -1.0, 2.0]))]);
    let vals = interp::run(&g, &inputs).expect("runs");
    // relu part: 0 at x = 0, 1 where positive; max part: 1/2 to each tied 2.
    assert_eq!(vals[&grads[0]].data, vec![0.0, 1.5, 0.0, 1.5]);

    // Max pooling shares as reduce_max does: a 2×2 window with three tied
    // maxima gives each a third; overlapping windows (stride 1) add.
    let mut b = Builder { g: Graph::new() };
    let x = b.g.input("x", Role::Param, Ty::f32(Shape::batched(&[1, 2, 3])));
    let y = b.op(Op::MaxPool { size: (2, 2), stride: (1, 1) }, &[x]).expect("typed");
    let loss = b.sum_all(y).expect("typed");
    let (g, grads) = autodiff::grad(b.g, loss, &[x]).expect("differentiates");
    let inputs = HashMap::from([("x".to_string(), Tensor::new(vec![1, 1, 2, 3], vec![5.0, 5.0, 1.0, 5.0, 0.0, 2.0]))]);
    let vals = interp::run(&g, &inputs).expect("runs");
    // Window 1 (cols 0–1): three 5s, a third each; window 2 (cols 1–2): one 5.
    let third = 1.0 / 3.0;
    assert_eq!(vals[&grads[0]].data, vec![third, third + 1.0, 0.0, third, 0.0, 0.0]);
}

fn spec_model(path: &str) -> modelc_compiler::check::ModelInfo {
    let (_, program, errors) = check_spec(Path::new(path));
    assert!(errors.is_empty(), "{errors:?}");
    // The file's own model, else its finetune's (not an imported base).
    let root = modelc_compiler::FileId(0);
    program
        .models
        .iter()
        .find(|m| m.file == root)
        .cloned()
        .or_else(|| program.finetunes.first().map(|f| f.model.clone()))
        .expect("a model")
}

#[test]
fn whole_specs_pass_gradcheck() {
    for spec in ["specs/xor.model", "specs/mnist_mlp.model", "specs/lenet5.model"] {
        let m = spec_model(spec);
        for seed in 0..2 {
            let reports = gradcheck::check(&m, None, 2, 3, seed).expect("gradcheck runs");
            for r in &reports {
                assert!(
                    r.worst_relative_error <= 1e-6,
                    "{spec} seed {seed}: {} error {:e}",
                    r.name,
                    r.worst_relative_error
                );
            }
        }
    }
}

/// The transformer in CI: char_gpt's layer kinds at tiny sizes, every
/// parameter's gradient against finite differences.
#[test]
fn char_gpt_tiny_passes_gradcheck() {
    let m = spec_model("specs/char_gpt_tiny.model");
    let reports = gradcheck::check(&m, None, 2, 3, 0).expect("gradcheck runs");
    assert_eq!(reports.len(), m.params.len(), "every parameter checked");
    for r in &reports {
        assert!(r.worst_relative_error <= 1e-6, "{}: {:e}", r.name, r.worst_relative_error);
    }
}

#[test]
#[ignore = "about 3.5 min in a release build: `cargo test --release --test main -- --ignored char_gpt`"]
fn char_gpt_passes_gradcheck() {
    let m = spec_model("specs/char_gpt.model");
    let reports = gradcheck::check(&m, None, 1, 2, 0).expect("gradcheck runs");
    for r in &reports {
        assert!(r.worst_relative_error <= 1e-6, "{}: {:e}", r.name, r.worst_relative_error);
    }
}

/// Fine-tuning relies on this: a frozen parameter gets no gradient node, and
/// nothing upstream of the first trainable layer is differentiated at all.
#[test]
fn frozen_parameters_get_no_gradient_nodes() {
    let (_, program, errors) = check_spec(Path::new("specs/lenet5_finetune.model"));
    assert!(errors.is_empty());
    let f = &program.finetunes[0];
    let head: &BTreeSet<String> = f.stages[0].trainable.as_ref().expect("a stage lists what trains");
    let fwd = lower::forward(&f.model, Mode::Train).expect("lowers");
    let loss = fwd.output("loss").expect("loss");
    let params = fwd.inputs_of(Role::Param);
    let wrt: Vec<NodeId> = params.iter().filter(|(n, _)| head.contains(n)).map(|(_, id)| *id).collect();
    assert_eq!(wrt.len(), 2);
    let (train, _) = autodiff::grad(fwd.clone(), loss, &wrt).expect("differentiates");
    for (name, id) in &params {
        if !head.contains(name) {
            assert_eq!(train.users(*id), fwd.users(*id), "{name} is frozen but gained users in the train graph");
        }
    }
    let count = |g: &Graph, op: &str| g.ids().filter(|id| g.node(*id).op.name() == op).count();
    assert_eq!(count(&train, "col2im"), 0, "no convolution is differentiated when only the head trains");
    assert_eq!(count(&train, "im2col"), count(&fwd, "im2col"));
    // All trainable: now the convolutions get their adjoints.
    let all: Vec<NodeId> = params.iter().map(|(_, id)| *id).collect();
    let (full, _) = autodiff::grad(fwd.clone(), loss, &all).expect("differentiates");
    assert!(count(&full, "col2im") > 0);
}

#[test]
fn graphs_of_every_spec_are_stable_snapshots() {
    insta::glob!("../specs", "*.model", |abs| {
        let m = spec_model(&relative(abs).to_string_lossy());
        let fwd = lower::forward(&m, Mode::Train).expect("lowers");
        verify::check(&fwd).expect("verifies");
        let text = print::text(&fwd);
        assert!(!text.contains("NodeIndex"), "no raw petgraph indices");
        // Printing twice gives the same text.
        assert_eq!(text, print::text(&fwd.clone()));
        insta::assert_snapshot!("forward", text);
    });
}

#[test]
fn graph_formats_render() {
    for format in ["dot", "mermaid", "yaml"] {
        let (code, out, err) = crate::modelc(&["graph", "specs/xor.model", "--format", format]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("matmul"), "{format}: {out}");
    }
    let (_, yaml, _) = crate::modelc(&["graph", "specs/xor.model", "--format", "yaml"]);
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("valid YAML");
    assert!(v["nodes"].as_sequence().is_some_and(|n| n.len() > 10));
}

/// The interpreter agrees with a hand computation of the first model.
#[test]
fn interpreter_runs_a_dense_layer_by_hand() {
    let m = spec_model("specs/xor.model");
    let g = lower::forward(&m, Mode::Eval).expect("lowers");
    let mut inputs = HashMap::new();
    inputs.insert("x".into(), Tensor::new(vec![1, 2], vec![1.0, 0.0]));
    inputs.insert("y".into(), Tensor::new(vec![1, 1], vec![1.0]));
    inputs.insert("hidden.weight".into(), Tensor::new(vec![4, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0]));
    inputs.insert("hidden.bias".into(), Tensor::new(vec![4], vec![0.0; 4]));
    inputs.insert("out.weight".into(), Tensor::new(vec![1, 4], vec![1.0, 1.0, 1.0, 1.0]));
    inputs.insert("out.bias".into(), Tensor::new(vec![1], vec![0.0]));
    let out = interp::outputs(&g, &inputs).expect("runs");
    let s = |z: f64| 1.0 / (1.0 + (-z).exp());
    let h: f64 = [1.0, 0.0, 1.0, -1.0].iter().map(|z| s(*z)).sum();
    let p = s(h);
    assert!((out["loss"].data[0] - (p - 1.0).powi(2)).abs() < 1e-15);
    assert_eq!(out["metric.accuracy"].data[0], 1.0);
}

#[test]
fn matmul_with_transpose_flags_matches_finite_differences() {
    for (ta, tb) in [(true, false), (false, true), (true, true)] {
        let a: &[u64] = if ta { &[2, 4, 3] } else { &[2, 3, 4] };
        let c: &[u64] = if tb { &[5, 4] } else { &[4, 5] };
        check_rule(&format!("matmul ta={ta} tb={tb}"), &[a, c], false, |b, x| {
            b.op(Op::MatMul { ta, tb }, &[x[0], x[1]]).expect("typed")
        });
    }
}

/// Random shapes: broadcasting binary ops, matmuls with broadcast leading
/// dimensions, reductions over random axes, random permutations.
#[test]
fn rules_hold_on_random_shapes() {
    let mut rng = Rng::new(42);
    let dim = |rng: &mut Rng| 1 + rng.below(4);
    for case in 0..12 {
        // Two shapes of rank 1..3 that broadcast: each axis of b is a's or 1.
        let rank = 1 + rng.below(3) as usize;
        let a: Vec<u64> = (0..rank).map(|_| dim(&mut rng)).collect();
        let drop = rng.below(rank as u64) as usize;
        let b: Vec<u64> = a.iter().map(|d| if rng.below(3) == 0 { 1 } else { *d }).skip(drop).collect();
        let op = [B::Add, B::Sub, B::Mul, B::Max][case % 4];
        check_rule(&format!("random {op:?} {a:?} {b:?}"), &[&a, &b], false, |bd, x| {
            bd.bin(op, x[0], x[1]).expect("typed")
        });
        // Matmul with broadcast leading dims.
        let (m, k, n, l) = (dim(&mut rng), dim(&mut rng), dim(&mut rng), dim(&mut rng));
        let lead: &[u64] = if case % 2 == 0 { &[] } else { &[l] };
        let ash: Vec<u64> = [&[l][..], &[m, k][..]].concat();
        let bsh: Vec<u64> = [lead, &[k, n][..]].concat();
        check_rule(&format!("random matmul {ash:?} {bsh:?}"), &[&ash, &bsh], false, |bd, x| {
            bd.matmul(x[0], x[1]).expect("typed")
        });
        // A reduction over a random non-empty set of axes, then a random permutation.
        let axes: Vec<usize> = (0..rank).filter(|_| rng.below(2) == 0).collect();
        let axes = if axes.is_empty() { vec![0] } else { axes };
        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let rop = if case % 2 == 0 { ReduceOp::Sum } else { ReduceOp::Max };
        check_rule(&format!("random reduce {a:?} {axes:?} {perm:?}"), &[&a], false, |bd, x| {
            let r = bd.reduce(rop, x[0], axes.clone()).expect("typed");
            bd.permute(r, perm.clone()).expect("typed")
        });
    }
}
