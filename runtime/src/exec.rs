//! Executors run a model's training step and evaluation graph. The trainer
//! talks to them through [`Executor`]; there are three: [`Compiled`] (native
//! code from the CPU backend, f32; the default) and [`Interpreter`] (the
//! f64 reference interpreter: slow, exact; `--executor interp`); [`Cuda`]
//! runs both on an NVIDIA GPU (`--device cuda`).

use std::collections::HashMap;

use modelc_compiler::backend::cpu::Program;
use modelc_compiler::check::ModelInfo;
use modelc_compiler::interp::{self, Tensor};
use modelc_compiler::ir::verify::VerifiedGraph;
use modelc_compiler::ir::{Dim, Graph, Role};
use modelc_compiler::pipeline;
use modelc_compiler::step::StepConfig;

use crate::checkpoint::Tensors;

/// What one step or evaluation batch gave.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub loss: f64,
    /// The `accuracy` metric over the batch, when the model declares it.
    pub accuracy: Option<f64>,
    /// Class predictions per sample, for precision, recall and F1
    /// ([`Executor::evaluate`] only: a training step returns none, so that
    /// it allocates nothing).
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
    fn name(&self) -> String;
    /// One training step: updates parameters and optimizer state in place;
    /// returns the loss and the accuracy metric (no predictions).
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
    accuracy: Option<String>,
}

/// The output that holds the model's accuracy metric (`metric.NAME`,
/// whatever the metric is named), if it declares one.
fn accuracy_output(model: &ModelInfo) -> Option<String> {
    use modelc_compiler::check::layers::Metric;
    use modelc_compiler::check::Op as CheckOp;
    model.metrics.iter().find_map(|(name, n)| match &model.nodes[*n].op {
        CheckOp::Metric { metric: Metric::Accuracy } => Some(format!("metric.{name}")),
        _ => None,
    })
}

/// The evaluation graph's output of class predictions, as the interpreter
/// picks it: the loss head's `predictions`, else the first metric head's
/// (by name).
fn predictions_output(eval: &Graph) -> Option<String> {
    let outputs = &eval.outputs;
    outputs.iter().find(|(k, _)| k == "predictions").map(|(k, _)| k.clone()).or_else(|| {
        let mut named: Vec<&String> =
            outputs.iter().map(|(k, _)| k).filter(|k| k.starts_with("predictions.")).collect();
        named.sort();
        named.first().map(|k| k.to_string())
    })
}

/// Whether the trainer feeds input `name` itself each step (the batch and
/// the step's scalars), rather than binding it to a parameter or state.
fn fed_by_the_trainer(name: &str, data: &str, target: &str) -> bool {
    [data, target, "lr", "step", "seed"].contains(&name)
}

fn concrete(dims: &[Dim], n: usize) -> Vec<usize> {
    modelc_compiler::gradcheck::concrete(&modelc_compiler::ir::Shape(dims.to_vec()), n)
}

/// The optimized training step and evaluation graph of `model`, and the
/// evaluation graph's one data and one target input (name and shape).
#[allow(clippy::type_complexity)]
fn graphs(
    model: &ModelInfo,
    cfg: &StepConfig,
) -> Result<(VerifiedGraph, VerifiedGraph, (String, Vec<Dim>), (String, Vec<Dim>)), String> {
    let step = pipeline::train_step(model, cfg)?;
    let eval = pipeline::eval(model)?;
    let role = |r: Role| -> Result<(String, Vec<Dim>), String> {
        let v = eval.inputs_of(r);
        match v.as_slice() {
            [(name, id)] => Ok((name.clone(), eval.ty(*id).shape.0.clone())),
            _ => Err(format!("the trainer needs exactly one {r:?} input, the model has {}", v.len())),
        }
    };
    let (data, target) = (role(Role::Data)?, role(Role::Target)?);
    Ok((step, eval, data, target))
}

impl Interpreter {
    /// Compiles `model`'s training step and evaluation graph; starts from
    /// `init` parameters and zero optimizer state.
    pub fn new(model: &ModelInfo, cfg: &StepConfig, init: &Tensors) -> Result<Interpreter, String> {
        let (step, eval, data, target) = graphs(model, cfg)?;
        let mut values = HashMap::new();
        for (name, (shape, data)) in init {
            values.insert(name.clone(), Tensor::new(shape.clone(), data.iter().map(|v| *v as f64).collect()));
        }
        for (name, id) in step.inputs_of(Role::State) {
            values.insert(name, Tensor::zeros(concrete(&step.ty(id).shape.0, 1)));
        }
        let params = model.params.iter().map(|p| p.name.clone()).collect();
        let (step, eval) = (step.into_graph(), eval.into_graph());
        Ok(Interpreter { step, eval, data, target, values, params, accuracy: accuracy_output(model) })
    }

    fn feed(&self, batch: &Batch) -> HashMap<String, Tensor> {
        let mut inputs = HashMap::new();
        let x = Tensor::new(concrete(&self.data.1, batch.n), batch.features.iter().map(|v| *v as f64).collect());
        let y = Tensor::new(concrete(&self.target.1, batch.n), batch.labels.iter().map(|v| *v as f64).collect());
        inputs.insert(self.data.0.clone(), x);
        inputs.insert(self.target.0.clone(), y);
        inputs
    }

    fn stats(&self, out: &HashMap<String, Tensor>, predictions: bool) -> Stats {
        let predictions = predictions
            .then(|| {
                out.get("predictions")
                    .or_else(|| {
                        let mut named: Vec<(&String, &Tensor)> =
                            out.iter().filter(|(k, _)| k.starts_with("predictions.")).collect();
                        named.sort_by(|a, b| a.0.cmp(b.0));
                        named.first().map(|(_, t)| *t)
                    })
                    .map(|t| t.data.iter().map(|v| *v as f32).collect())
            })
            .flatten()
            .unwrap_or_default();
        Stats {
            loss: out.get("loss").map(|t| t.data[0]).unwrap_or(f64::NAN),
            accuracy: self.accuracy.as_ref().and_then(|a| out.get(a)).map(|t| t.data[0]),
            predictions,
        }
    }
}

impl Executor for Interpreter {
    fn name(&self) -> String {
        "reference interpreter (f64)".into()
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
        Ok(self.stats(&out, false))
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<Stats, String> {
        let mut inputs = std::mem::take(&mut self.values);
        inputs.extend(self.feed(batch));
        let out = interp::outputs(&self.eval, &inputs);
        inputs.remove(&self.data.0);
        inputs.remove(&self.target.0);
        self.values = inputs;
        Ok(self.stats(&out?, true))
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

/// The compiled CPU executor: the training step and the evaluation graph as
/// native code ([`modelc_compiler::backend::cpu::Program`]), sharing one copy
/// of the parameters. f32 throughout.
pub struct Compiled {
    step: Program,
    eval: Program,
    data: String,
    target: String,
    /// Parameters and optimizer state. The boxes never move or change size:
    /// both programs point into them.
    tensors: HashMap<String, (Vec<usize>, Box<[f32]>)>,
    params: Vec<String>,
    /// The outputs holding the accuracy metric and the predictions.
    accuracy: Option<String>,
    predictions: Option<String>,
}

impl Compiled {
    /// Compiles `model`'s training step and evaluation graph to native code;
    /// starts from `init` parameters and zero optimizer state.
    pub fn new(model: &ModelInfo, cfg: &StepConfig, init: &Tensors) -> Result<Compiled, String> {
        let (step_graph, eval_graph, (data, _), (target, _)) = graphs(model, cfg)?;
        let mut tensors = HashMap::new();
        for (name, (shape, values)) in init {
            tensors.insert(name.clone(), (shape.clone(), values.clone().into_boxed_slice()));
        }
        for (name, id) in step_graph.inputs_of(Role::State) {
            let shape = concrete(&step_graph.ty(id).shape.0, 1);
            let n = shape.iter().product();
            tensors.insert(name, (shape, vec![0.0; n].into_boxed_slice()));
        }
        let mut step = Program::new(step_graph).map_err(|e| format!("compiling the training step: {e}"))?;
        let mut eval = Program::new(eval_graph).map_err(|e| format!("compiling the evaluation graph: {e}"))?;
        for program in [&mut step, &mut eval] {
            for (name, _) in program.input_shapes() {
                if let Some((_, t)) = tensors.get_mut(&name) {
                    // SAFETY: the box lives in `tensors` as long as the
                    // programs (fields of the same struct, never replaced
                    // or resized) and is touched only between runs.
                    unsafe { program.bind(&name, t.as_mut_ptr(), t.len())? };
                } else if !fed_by_the_trainer(&name, &data, &target) {
                    return Err(format!("the compiled program needs input `{name}`, which the trainer does not have"));
                }
            }
        }
        let params = model.params.iter().map(|p| p.name.clone()).collect();
        let predictions = predictions_output(eval.graph());
        Ok(Compiled { step, eval, data, target, tensors, params, accuracy: accuracy_output(model), predictions })
    }

    /// Calls of the `gemm` crate per training step at `batch` (after a step
    /// at that size).
    pub fn gemm_calls(&self, batch: usize) -> usize {
        self.step.gemm_calls(batch)
    }

    /// Times every kernel of the training step from now on.
    pub fn start_profile(&mut self) {
        self.step.start_profile();
    }

    /// The training step's kernels by time spent, as text.
    pub fn profile_report(&self) -> String {
        let rows = self.step.profile();
        let total: f64 = rows.iter().map(|r| r.2.as_secs_f64()).sum();
        let mut out = format!("{:>6} {:>9} {:>6}  kernel\n", "share", "µs/call", "index");
        for (i, what, t, n) in
            rows.iter().take(std::env::var("MODELC_PROFILE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(25))
        {
            let us = t.as_secs_f64() * 1e6 / (*n).max(1) as f64;
            out.push_str(&format!("{:>5.1}% {us:>9.1} {i:>6}  {what}\n", 100.0 * t.as_secs_f64() / total.max(1e-12)));
        }
        // By kind of kernel, and total time per step.
        let mut kinds: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
        for (_, what, t, _) in &rows {
            *kinds.entry(what.split(' ').next().unwrap_or("")).or_default() += t.as_secs_f64();
        }
        let steps = rows.iter().map(|r| r.3).max().unwrap_or(1).max(1) as f64;
        let by: Vec<String> = kinds.iter().map(|(k, t)| format!("{k} {:.1}%", 100.0 * t / total.max(1e-12))).collect();
        out.push_str(&format!("by kind: {}; {:.2} ms per step\n", by.join(", "), 1e3 * total / steps));
        let (flops, t) = self.step.gemm_profile();
        if flops > 0.0 {
            out.push_str(&format!(
                "gemm kernels: {:.1} GFLOP/s ({:.3} GFLOP per step)\n",
                flops / t.as_secs_f64().max(1e-12) / 1e9,
                flops / steps / 1e9
            ));
        }
        out
    }

    fn feed(program: &mut Program, name: &str, batch: usize, values: &[f32]) -> Result<(), String> {
        let buf = program.input_mut(name, batch)?;
        if buf.len() != values.len() {
            return Err(format!(
                "input `{name}`: {} values for a batch of {batch} that needs {}",
                values.len(),
                buf.len()
            ));
        }
        buf.copy_from_slice(values);
        Ok(())
    }

    /// Loss and accuracy of the last run of `program`; the predictions too
    /// when asked (evaluation), which is the one allocation.
    fn stats(program: &Program, batch: usize, accuracy: Option<&str>, predictions: Option<&str>) -> Stats {
        let out = |name: &str| program.output(name, batch);
        Stats {
            loss: out("loss").map_or(f64::NAN, |t| t[0] as f64),
            accuracy: accuracy.and_then(out).map(|t| t[0] as f64),
            predictions: predictions.and_then(out).map(|p| p.to_vec()).unwrap_or_default(),
        }
    }
}

impl Executor for Compiled {
    fn name(&self) -> String {
        "compiled CPU code (Cranelift + gemm, f32)".into()
    }

    fn train_step(&mut self, batch: &Batch, lr: f64, step: u64, seed: u64) -> Result<Stats, String> {
        let p = &mut self.step;
        Self::feed(p, &self.data, batch.n, batch.features)?;
        Self::feed(p, &self.target, batch.n, batch.labels)?;
        for (name, v) in [("lr", lr), ("step", step as f64), ("seed", seed as f64)] {
            if p.has_input(name) {
                p.input_mut(name, batch.n)?[0] = v as f32;
            }
        }
        p.run(batch.n)?;
        Ok(Self::stats(p, batch.n, self.accuracy.as_deref(), None))
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<Stats, String> {
        let p = &mut self.eval;
        Self::feed(p, &self.data, batch.n, batch.features)?;
        Self::feed(p, &self.target, batch.n, batch.labels)?;
        p.run(batch.n)?;
        Ok(Self::stats(p, batch.n, self.accuracy.as_deref(), self.predictions.as_deref()))
    }

    fn parameters(&self) -> Tensors {
        self.params.iter().map(|p| (p.clone(), (self.tensors[p].0.clone(), self.tensors[p].1.to_vec()))).collect()
    }

    fn set_parameters(&mut self, t: &Tensors) {
        for (name, (_, data)) in t {
            if let Some((_, b)) = self.tensors.get_mut(name) {
                if b.len() == data.len() {
                    b.copy_from_slice(data);
                }
            }
        }
    }

    fn state(&self) -> Tensors {
        self.tensors
            .iter()
            .filter(|(k, _)| !self.params.contains(k))
            .map(|(k, (s, t))| (k.clone(), (s.clone(), t.to_vec())))
            .collect()
    }

    fn first_non_finite(&self) -> Option<String> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        names.into_iter().find(|n| self.tensors[*n].1.iter().any(|v| !v.is_finite())).cloned()
    }
}

/// The CUDA executor: the training step and the evaluation graph as two
/// GPU programs ([`modelc_compiler::backend::cuda::Program`]) sharing the
/// parameters and optimizer state in device memory. f32 throughout, but
/// for the matrix products under `precision bf16`. A step
/// uploads the batch and the step's scalars, queues every kernel, and reads
/// back the loss and the accuracy metric.
pub struct Cuda {
    // The programs go before the buffers they point into.
    step: cuda::Program,
    eval: cuda::Program,
    data: String,
    target: String,
    tensors: HashMap<String, (Vec<usize>, cuda::Buffer)>,
    params: Vec<String>,
    accuracy: Option<String>,
    predictions: Option<String>,
    bf16: bool,
}

use modelc_compiler::backend::cuda;

impl Cuda {
    /// Opens the GPU, compiles `model`'s training step and evaluation graph
    /// for it; starts from `init` parameters and zero optimizer state.
    pub fn new(model: &ModelInfo, cfg: &StepConfig, init: &Tensors) -> Result<Cuda, String> {
        let dev = cuda::Device::open()?;
        let (step_graph, eval_graph, (data, _), (target, _)) = graphs(model, cfg)?;
        let mut tensors = HashMap::new();
        for (name, (shape, values)) in init {
            tensors.insert(name.clone(), (shape.clone(), cuda::Buffer::from(&dev, values)?));
        }
        for (name, id) in step_graph.inputs_of(Role::State) {
            let shape = concrete(&step_graph.ty(id).shape.0, 1);
            let n = shape.iter().product();
            tensors.insert(name, (shape, cuda::Buffer::new(&dev, n)?));
        }
        let mut step = cuda::Program::new(&dev, step_graph).map_err(|e| format!("compiling the training step: {e}"))?;
        let mut eval =
            cuda::Program::new(&dev, eval_graph).map_err(|e| format!("compiling the evaluation graph: {e}"))?;
        for program in [&mut step, &mut eval] {
            for (name, _) in program.input_shapes() {
                if let Some((_, t)) = tensors.get(&name) {
                    // SAFETY: the buffer lives in `tensors` as long as the
                    // programs (fields of the same struct, never replaced).
                    unsafe { program.bind(&name, t.ptr(), t.len())? };
                } else if !fed_by_the_trainer(&name, &data, &target) {
                    return Err(format!("the GPU program needs input `{name}`, which the trainer does not have"));
                }
            }
        }
        let params = model.params.iter().map(|p| p.name.clone()).collect();
        let predictions = predictions_output(eval.graph());
        step.set_bf16(cfg.bf16);
        eval.set_bf16(cfg.bf16);
        if std::env::var_os("MODELC_PROFILE").is_some() {
            step.start_profile()?;
        }
        Ok(Cuda {
            step,
            eval,
            data,
            target,
            tensors,
            params,
            accuracy: accuracy_output(model),
            predictions,
            bf16: cfg.bf16,
        })
    }

    /// Captures steps into CUDA graphs (the default) or launches every
    /// kernel every step.
    pub fn use_graphs(&mut self, on: bool) {
        self.step.use_graphs(on);
        self.eval.use_graphs(on);
    }

    /// Whether training steps at `batch` replay a captured CUDA graph.
    pub fn replays_a_graph(&self, batch: usize) -> bool {
        self.step.replays_a_graph(batch)
    }

    /// The training step's kernels by GPU time (CUDA events around each
    /// launch), as text; empty unless `MODELC_PROFILE` was set when the
    /// executor was made.
    pub fn profile_report(&self) -> String {
        let rows = self.step.profile();
        if rows.is_empty() {
            return String::new();
        }
        let total: f64 = rows.iter().map(|r| r.2).sum();
        let steps = rows.iter().map(|r| r.3).max().unwrap_or(1).max(1) as f64;
        let mut out = format!("{:>6} {:>9} {:>6}  kernel (GPU time, CUDA events)\n", "share", "µs/call", "index");
        let take = std::env::var("MODELC_PROFILE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
        for (i, what, ms, n) in rows.iter().take(take) {
            let what: String = what.chars().take(90).collect();
            out.push_str(&format!(
                "{:>5.1}% {:>9.1} {i:>6}  {what}\n",
                100.0 * ms / total,
                1e3 * ms / (*n).max(1) as f64
            ));
        }
        let mut kinds: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
        for (_, what, ms, _) in &rows {
            *kinds.entry(what.split(' ').next().unwrap_or("")).or_default() += ms;
        }
        let by: Vec<String> = kinds.iter().map(|(k, t)| format!("{k} {:.1}%", 100.0 * t / total)).collect();
        out.push_str(&format!("by kind: {}; {:.3} ms of GPU time per step\n", by.join(", "), total / steps));
        out
    }

    fn stats(
        p: &cuda::Program,
        batch: usize,
        accuracy: Option<&str>,
        predictions: Option<&str>,
    ) -> Result<Stats, String> {
        let first = |name: &str| -> Result<Option<f64>, String> {
            if !p.has_output(name) {
                return Ok(None);
            }
            Ok(p.output(name, batch)?.first().map(|v| *v as f64))
        };
        Ok(Stats {
            loss: first("loss")?.unwrap_or(f64::NAN),
            accuracy: match accuracy {
                Some(a) => first(a)?,
                None => None,
            },
            predictions: match predictions {
                Some(name) => p.output(name, batch)?,
                None => Vec::new(),
            },
        })
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        let report = self.profile_report();
        if !report.is_empty() {
            eprint!("{report}");
        }
    }
}

impl Executor for Cuda {
    fn name(&self) -> String {
        let d = self.step.device();
        let precision = if self.bf16 { "bf16 matrix products (f32 accumulation), f32 elsewhere" } else { "f32" };
        format!("CUDA on {} (sm_{}): PTX kernels + cuBLAS, {precision}", d.name, d.sm)
    }

    fn train_step(&mut self, batch: &Batch, lr: f64, step: u64, seed: u64) -> Result<Stats, String> {
        let p = &mut self.step;
        p.upload(&self.data, batch.n, batch.features)?;
        p.upload(&self.target, batch.n, batch.labels)?;
        for (name, v) in [("lr", lr), ("step", step as f64), ("seed", seed as f64)] {
            if p.has_input(name) {
                p.upload(name, batch.n, &[v as f32])?;
            }
        }
        p.run(batch.n)?;
        Self::stats(p, batch.n, self.accuracy.as_deref(), None)
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<Stats, String> {
        let p = &mut self.eval;
        p.upload(&self.data, batch.n, batch.features)?;
        p.upload(&self.target, batch.n, batch.labels)?;
        p.run(batch.n)?;
        Self::stats(p, batch.n, self.accuracy.as_deref(), self.predictions.as_deref())
    }

    fn parameters(&self) -> Tensors {
        self.params
            .iter()
            .map(|p| {
                let (s, b) = &self.tensors[p];
                // A failed read (the GPU in an error state) gives NaNs, which
                // the trainer's checks report, rather than a panic.
                let v = b.download(b.len()).unwrap_or_else(|_| vec![f32::NAN; b.len()]);
                (p.clone(), (s.clone(), v))
            })
            .collect()
    }

    fn set_parameters(&mut self, t: &Tensors) {
        for (name, (_, data)) in t {
            if let Some((_, b)) = self.tensors.get_mut(name) {
                if b.len() == data.len() {
                    // A failed write shows in the next step's error.
                    let _ = b.upload(data);
                }
            }
        }
    }

    fn state(&self) -> Tensors {
        self.tensors
            .iter()
            .filter(|(k, _)| !self.params.contains(k))
            .map(|(k, (s, b))| {
                (k.clone(), (s.clone(), b.download(b.len()).unwrap_or_else(|_| vec![f32::NAN; b.len()])))
            })
            .collect()
    }

    fn first_non_finite(&self) -> Option<String> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        names
            .into_iter()
            .find(|n| {
                let b = &self.tensors[*n].1;
                b.download(b.len()).map_or(true, |v| v.iter().any(|x| !x.is_finite()))
            })
            .cloned()
    }
}
