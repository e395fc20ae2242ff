//! The optimizers against PyTorch: `tests/fixtures/torch/optim.json` (made
//! by `tests/fixtures/torch/gen_optim.py` with torch.optim) holds five steps
//! of a small MLP under SGD with momentum and Nesterov, Adam, AdamW and
//! RMSprop, with coupled weight decay, gradient clipping and per-layer rates.
//! The compiled executor (f32) follows torch in f32, the interpreter (f64)
//! torch in f64, step by step: loss and every parameter.

use modelc::exec::{Batch, Compiled, Executor, Interpreter};
use modelc_compiler::step::StepConfig;

fn normwise(a: &[f32], b: &[f64]) -> f64 {
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().fold(0f64, |m, y| m.max(y.abs()));
    diff / scale.max(1e-30)
}

#[test]
fn optimizers_follow_torch_optim() {
    let text = std::fs::read_to_string("tests/fixtures/torch/optim.json").expect("fixture");
    let d: serde_json::Value = serde_json::from_str(&text).expect("json");
    let spec = std::fs::read_to_string("tests/fixtures/torch/optim_mlp.model").expect("spec");
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
    };
    let shapes: Vec<(String, Vec<usize>)> = d["params"]
        .as_array()
        .expect("params")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_string(),
                p["shape"].as_array().expect("shape").iter().map(|s| s.as_u64().expect("dim") as usize).collect(),
            )
        })
        .collect();
    let initial: modelc::checkpoint::Tensors = shapes
        .iter()
        .map(|(n, s)| (n.clone(), (s.clone(), floats(&d["initial"][n]).iter().map(|x| *x as f32).collect())))
        .collect();
    let mut worst = (0f64, 0f64);
    for case in d["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        // The case's settings in the train block (lr_scale is a stage's: set
        // on the step's configuration directly).
        let lines: Vec<&str> =
            case["spec"].as_array().expect("spec").iter().map(|l| l.as_str().expect("line")).collect();
        let block: String = lines.iter().filter(|l| !l.starts_with("lr_scale")).map(|l| format!("  {l}\n")).collect();
        let text = spec.replace("  optimizer sgd(lr: 0.1, momentum: 0.9)\n", &block);
        let (_, program, errors) = modelc_compiler::check_text("optim.model", text, &modelc_compiler::FsLoader);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let model = &program.models[0];
        let mut cfg = StepConfig::from_train(&program.trains[0]).expect("optimizer");
        for (k, v) in case["config"]["lr_scale"].as_object().expect("lr_scale") {
            cfg.lr_scale.insert(k.clone(), v.as_f64().expect("scale"));
        }
        let mut compiled = Compiled::new(model, &cfg, &initial).expect("compiles");
        let mut interp = Interpreter::new(model, &cfg, &initial).expect("interpreter");
        for (t, step) in case["steps"].as_array().expect("steps").iter().enumerate() {
            let batch = &d["batches"][t];
            let x: Vec<f32> = floats(&batch["x"]).iter().map(|v| *v as f32).collect();
            let y: Vec<f32> = floats(&batch["y"]).iter().map(|v| *v as f32).collect();
            let b = Batch { n: y.len(), features: &x, labels: &y };
            let lr = step["lr"].as_f64().expect("lr");
            let t1 = t as u64 + 1;
            let (sc, si) =
                (compiled.train_step(&b, lr, t1, 0).expect("step"), interp.train_step(&b, lr, t1, 0).expect("step"));
            let (l32, l64) = (step["f32"]["loss"].as_f64().expect("loss"), step["f64"]["loss"].as_f64().expect("loss"));
            assert!((sc.loss - l32).abs() <= 1e-5 * l32.abs(), "{name} step {t1}: loss {} vs torch {l32}", sc.loss);
            assert!(
                (si.loss - l64).abs() <= 1e-10 * l64.abs(),
                "{name} step {t1}: interpreter loss {} vs torch {l64}",
                si.loss
            );
            let (pc, pi) = (compiled.parameters(), interp.parameters());
            for (p, _) in &shapes {
                let e32 = normwise(&pc[p].1, &floats(&step["f32"]["params"][p]));
                let e64 = normwise(&pi[p].1, &floats(&step["f64"]["params"][p]));
                // The interpreter's parameters come back as f32: compare at
                // f32's resolution.
                assert!(e32 <= 2e-6, "{name} step {t1}: `{p}` differs from torch f32 by {e32:e} (normwise)");
                assert!(e64 <= 1e-7, "{name} step {t1}: interpreter `{p}` differs from torch f64 by {e64:e}");
                worst = (worst.0.max(e32), worst.1.max(e64));
            }
        }
    }
    println!("torch.optim, 12 cases × 5 steps: compiled vs torch f32 worst {:.1e}, interpreter vs torch f64 worst {:.1e} (normwise)", worst.0, worst.1);
}
