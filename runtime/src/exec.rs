//! Executors run a compiled training step. The trainer talks to them through
//! [`Executor`]; today the one executor is the reference interpreter (f64,
//! slow, exact), which the compiled CPU backend will sit beside.

use std::collections::HashMap;

use modelc_compiler::check::ModelInfo;
use modelc_compiler::interp::{self, Tensor};
use modelc_compiler::ir::lower::{self, Mode};
use modelc_compiler::ir::{Dim, Graph, Role};
use modelc_compiler::passes;
use modelc_compiler::step::{training_step, StepConfig};

use crate::checkpoint::Tensors;

/// What one step or evaluation batch gave.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub loss: f64,
    /// The `accuracy` metric over the batch, when the model declares it.
    pub accuracy: Option<f64>,
    /// Class predictions per sample, for precision, recall and F1.
    pub predictions: Vec<f32>,
}

/// A batch: `n` samples of features and labels, as loaded.
pub struct Batch<'a> {
    pub n: usize,
    pub features: &'a [f32],
    pub labels: &'a [f32],
}

pub trait Executor {
    /// A short name for messages: "reference interpreter (f64)".
    fn name(&self) -> &'static str;
    /// One training step: updates parameters and optimizer state in place.
    fn train_step(&mut self, batch: &Batch, lr: f64, step: u64, seed: u64) -> Result<Stats, String>;
    /// Loss and metrics on a batch, without dropout and without updates.
    fn evaluate(&mut self, batch: &Batch) -> Result<Stats, String>;
    /// The parameters (PyTorch names and layouts), for checkpoints.
    fn parameters(&self) -> Tensors;
    /// Replaces parameters by name (shapes already validated).
    fn set_parameters(&mut self, t: &Tensors);
    /// The optimizer state (`PARAM.exp_avg`, …), for resuming.
    fn state(&self) -> Tensors;
    /// The first parameter or state tensor holding a NaN or infinity.
    fn first_non_finite(&self) -> Option<String>;
}

/// The reference interpreter as an executor.
pub struct Interpreter {
    step: Graph,
    eval: Graph,
    data: (String, Vec<Dim>),
    target: (String, Vec<Dim>),
    values: HashMap<String, Tensor>,
    params: Vec<String>,
}

fn concrete(dims: &[Dim], n: usize) -> Vec<usize> {
    modelc_compiler::gradcheck::concrete(&modelc_compiler::ir::Shape(dims.to_vec()), n)
}

impl Interpreter {
    /// Compiles `model`'s training step and evaluation graph; starts from
    /// `init` parameters and zero optimizer state.
    pub fn new(model: &ModelInfo, cfg: &StepConfig, init: &Tensors) -> Result<Interpreter, String> {
        let mut step = training_step(model, cfg).map_err(|e| e.to_string())?;
        passes::optimize(&mut step);
        let mut eval = lower::forward(model, Mode::Eval).map_err(|e| e.to_string())?;
        passes::optimize(&mut eval);
        let role = |g: &Graph, r: Role| -> Result<(String, Vec<Dim>), String> {
            let v = g.inputs_of(r);
            match v.as_slice() {
                [(name, id)] => Ok((name.clone(), g.ty(*id).shape.0.clone())),
                _ => Err(format!("the trainer needs exactly one {r:?} input, the model has {}", v.len())),
            }
        };
        let data = role(&eval, Role::Data)?;
        let target = role(&eval, Role::Target)?;
        let mut values = HashMap::new();
        for (name, (shape, data)) in init {
            values.insert(name.clone(), Tensor::new(shape.clone(), data.iter().map(|v| *v as f64).collect()));
        }
        for (name, id) in step.inputs_of(Role::State) {
            values.insert(name, Tensor::zeros(concrete(&step.ty(id).shape.0, 1)));
        }
        let params = model.params.iter().map(|p| p.name.clone()).collect();
        Ok(Interpreter { step, eval, data, target, values, params })
    }

    fn feed(&self, batch: &Batch) -> HashMap<String, Tensor> {
        let mut inputs = HashMap::new();
        let x = Tensor::new(concrete(&self.data.1, batch.n), batch.features.iter().map(|v| *v as f64).collect());
        let y = Tensor::new(concrete(&self.target.1, batch.n), batch.labels.iter().map(|v| *v as f64).collect());
        inputs.insert(self.data.0.clone(), x);
        inputs.insert(self.target.0.clone(), y);
        inputs
    }

    fn stats(out: &HashMap<String, Tensor>) -> Stats {
        Stats {
            loss: out.get("loss").map(|t| t.data[0]).unwrap_or(f64::NAN),
            accuracy: out.get("metric.accuracy").map(|t| t.data[0]),
            predictions: out
                .get("predictions")
                .or_else(|| out.iter().find(|(k, _)| k.starts_with("predictions.")).map(|(_, t)| t))
                .map(|t| t.data.iter().map(|v| *v as f32).collect())
                .unwrap_or_default(),
        }
    }
}

impl Executor for Interpreter {
    fn name(&self) -> &'static str {
        "reference interpreter (f64)"
    }

    fn train_step(&mut self, batch: &Batch, lr: f64, step: u64, seed: u64) -> Result<Stats, String> {
        // Parameters and state move into the inputs and back, never copied.
        let mut inputs = std::mem::take(&mut self.values);
        let (data, target) = (self.data.0.clone(), self.target.0.clone());
        inputs.extend(self.feed(batch));
        inputs.insert("lr".into(), Tensor::scalar(lr));
        inputs.insert("step".into(), Tensor::scalar(step as f64));
        inputs.insert("seed".into(), Tensor::scalar(seed as f64));
        let out = interp::outputs(&self.step, &inputs);
        for k in [data.as_str(), target.as_str(), "lr", "step", "seed"] {
            inputs.remove(k);
        }
        self.values = inputs;
        let mut out = out?;
        let updated: Vec<String> = out.keys().filter(|k| k.starts_with("new.")).cloned().collect();
        for name in updated {
            if let Some(t) = out.remove(&name) {
                self.values.insert(name["new.".len()..].to_string(), t);
            }
        }
        Ok(Self::stats(&out))
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<Stats, String> {
        let mut inputs = std::mem::take(&mut self.values);
        inputs.extend(self.feed(batch));
        let out = interp::outputs(&self.eval, &inputs);
        inputs.remove(&self.data.0);
        inputs.remove(&self.target.0);
        self.values = inputs;
        Ok(Self::stats(&out?))
    }

    fn parameters(&self) -> Tensors {
        self.params
            .iter()
            .map(|p| {
                let t = &self.values[p];
                (p.clone(), (t.shape.clone(), t.data.iter().map(|v| *v as f32).collect()))
            })
            .collect()
    }

    fn set_parameters(&mut self, t: &Tensors) {
        for (name, (shape, data)) in t {
            self.values.insert(name.clone(), Tensor::new(shape.clone(), data.iter().map(|v| *v as f64).collect()));
        }
    }

    fn state(&self) -> Tensors {
        self.values
            .iter()
            .filter(|(k, _)| !self.params.contains(k))
            .map(|(k, t)| (k.clone(), (t.shape.clone(), t.data.iter().map(|v| *v as f32).collect())))
            .collect()
    }

    fn first_non_finite(&self) -> Option<String> {
        let mut names: Vec<&String> = self.values.keys().collect();
        names.sort();
        names.into_iter().find(|n| self.values[*n].data.iter().any(|v| !v.is_finite())).cloned()
    }
}
