//! The training step and the optimization passes: every pass keeps the graph
//! valid, is idempotent, and leaves what the graph computes unchanged (f64
//! interpreter, 1e-12) for every spec.

use std::collections::HashMap;
use std::path::Path;

use modelc_compiler::gradcheck::{random_inputs, Rng};
use modelc_compiler::interp::{self, Tensor};
use modelc_compiler::ir::{verify, Graph};
use modelc_compiler::passes;
use modelc_compiler::step::{training_step, StepConfig};

use crate::check_spec;

/// The training step of a spec, as its train block (or first stage) says.
fn step_graph(spec: &str) -> Graph {
    let (_, program, errors) = check_spec(Path::new(spec));
    assert!(errors.is_empty(), "{errors:?}");
    let (model, cfg) = if let Some(f) = program.finetunes.first() {
        let s = &f.stages[0];
        let cfg = StepConfig {
            optimizer: s.optimizer.clone().expect("optimizer"),
            weight_decay: s.weight_decay,
            clip_grad_norm: s.clip_grad_norm,
            lr_scale: s.lr_scale.clone(),
            trainable: Some(s.trainable.clone()),
        };
        (f.model.clone(), cfg)
    } else {
        let m = program.models[0].clone();
        let t = program.trains.iter().find(|t| t.model == m.name).expect("train block");
        let cfg = StepConfig {
            optimizer: t.optimizer.clone().expect("optimizer"),
            weight_decay: t.weight_decay,
            clip_grad_norm: t.clip_grad_norm,
            lr_scale: Default::default(),
            trainable: None,
        };
        (m, cfg)
    };
    let g = training_step(&model, &cfg).expect("builds");
    verify::verify(&g).expect("verifies");
    g
}

fn outputs(g: &Graph, inputs: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    interp::outputs(g, inputs).expect("runs")
}

fn assert_close(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: different outputs");
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.shape, y.shape, "{what}: {name}");
        for (p, q) in x.data.iter().zip(&y.data) {
            let err = (p - q).abs() / p.abs().max(1.0);
            assert!(err <= 1e-12 || (p.is_nan() && q.is_nan()), "{what}: {name} {p} vs {q}");
        }
    }
}

const FAST: [&str; 4] =
    ["specs/xor.model", "specs/mnist_mlp.model", "specs/lenet5.model", "specs/lenet5_finetune.model"];

#[test]
fn optimized_step_computes_what_the_raw_step_does() {
    for spec in FAST {
        let raw = step_graph(spec);
        let mut opt = raw.clone();
        passes::optimize(&mut opt);
        verify::verify(&opt).expect("optimized graph verifies");
        assert!(opt.len() < raw.len(), "{spec}: optimization removed nothing");
        for seed in 0..2 {
            let inputs = random_inputs(&raw, 3, &mut Rng::new(seed));
            assert_close(&outputs(&raw, &inputs), &outputs(&opt, &inputs), spec);
        }
    }
}

#[test]
fn every_pass_keeps_the_graph_valid_and_is_idempotent() {
    for spec in FAST {
        let raw = step_graph(spec);
        for (name, pass) in passes::PASSES {
            let mut g = raw.clone();
            pass(&mut g);
            verify::verify(&g).unwrap_or_else(|e| panic!("{spec}: after {name}: {e}"));
            assert!(!pass(&mut g), "{spec}: {name} changed the graph a second time");
        }
        let mut g = raw.clone();
        passes::optimize(&mut g);
        for (name, pass) in passes::PASSES {
            assert!(!pass(&mut g), "{spec}: {name} still finds work after optimize");
        }
    }
}

/// One SGD-with-momentum step by hand, against the graph.
#[test]
fn sgd_momentum_step_follows_pytorch() {
    let g = step_graph("specs/lenet5.model");
    let mut inputs = random_inputs(&g, 2, &mut Rng::new(3));
    inputs.insert("lr".into(), Tensor::scalar(0.01));
    let out = outputs(&g, &inputs);
    // Recompute the gradient with the gradcheck machinery: new = p − lr·(μ·buf + g + wd·p).
    let (_, program, _) = check_spec(Path::new("specs/lenet5.model"));
    let model = &program.models[0];
    let fwd = modelc_compiler::ir::lower::forward(model, modelc_compiler::ir::lower::Mode::Train).expect("lowers");
    let loss = fwd.output("loss").expect("loss");
    let p = fwd.inputs_of(modelc_compiler::ir::Role::Param);
    let ids: Vec<_> = p.iter().map(|x| x.1).collect();
    let (with, grads) = modelc_compiler::autodiff::grad(fwd, loss, &ids).expect("grads");
    let vals = interp::run(&with, &inputs).expect("runs");
    for ((name, _), gr) in p.iter().zip(grads) {
        let (param, buf, grad) = (&inputs[name], &inputs[&format!("{name}.momentum_buffer")], &vals[&gr]);
        let new = &out[&format!("new.{name}")];
        let new_buf = &out[&format!("new.{name}.momentum_buffer")];
        for k in 0..param.len() {
            let d = grad.data[k] + 5e-4 * param.data[k];
            let b = 0.9 * buf.data[k] + d;
            assert!((new_buf.data[k] - b).abs() < 1e-12, "{name} buffer");
            assert!((new.data[k] - (param.data[k] - 0.01 * b)).abs() < 1e-12, "{name}");
        }
    }
}

#[test]
fn optimized_step_snapshots() {
    for spec in ["specs/xor.model", "specs/mnist_mlp.model"] {
        let (code, out, err) = crate::modelc(&["graph", spec, "--stage", "optimized"]);
        assert_eq!(code, 0, "{err}");
        let name = Path::new(spec).file_stem().and_then(|s| s.to_str()).unwrap_or("spec").to_string();
        insta::assert_snapshot!(format!("optimized_{name}"), out);
    }
}
