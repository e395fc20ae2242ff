//! Gradient checking: symbolic gradients from [`crate::autodiff`], run in the
//! f64 reference interpreter, against central finite differences of the loss.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::autodiff;
use crate::check::ModelInfo;
use crate::interp::{self, Tensor};
use crate::ir::lower::{self, Mode};
use crate::ir::{DType, Dim, Graph, NodeId, Op, Role};

pub use crate::rng::Rng;

/// The concrete shape of `shape` for a batch of `batch`.
pub fn concrete(shape: &crate::ir::Shape, batch: usize) -> Vec<usize> {
    shape.0.iter().map(|d| if let Dim::Fixed(n) = d { *n as usize } else { batch }).collect()
}

/// Random values for every input of `g`: data in [-1, 1), class labels and
/// token ids in range, regression targets in (0, 1), parameters scaled by
/// their fan-in, layernorm weights near 1.
pub fn random_inputs(g: &Graph, batch: usize, rng: &mut Rng) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for id in g.topo_order() {
        let Op::Input { name, role } = &g.node(id).op else { continue };
        let ty = g.ty(id);
        let shape = concrete(&ty.shape, batch);
        let n: usize = shape.iter().product();
        let data: Vec<f64> = match (role, ty.dtype) {
            (_, DType::I32) => {
                let range = index_range(g, id);
                (0..n).map(|_| rng.below(range) as f64).collect()
            }
            (Role::Target, _) => (0..n).map(|_| rng.uniform(0.05, 0.95)).collect(),
            (Role::Param, _) => {
                let fan_in = *shape.last().unwrap_or(&1) as f64;
                let a = 1.0 / fan_in.sqrt();
                let centre = if shape.len() == 1 && name.ends_with(".weight") { 1.0 } else { 0.0 };
                (0..n).map(|_| centre + rng.uniform(-a, a)).collect()
            }
            (Role::Scalar, _) => vec![1.0; n],
            // Optimizer state: running averages of squares must not be negative.
            (Role::State, _) => (0..n).map(|_| rng.uniform(0.0, 1.0)).collect(),
            _ => (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(),
        };
        out.insert(name.clone(), Tensor::new(shape, data));
    }
    out
}

/// How many distinct values an integer input may take: the rows of the table
/// it indexes, or the classes it is one-hot encoded into.
fn index_range(g: &Graph, id: NodeId) -> u64 {
    for u in g.users(id) {
        match &g.node(u).op {
            Op::OneHot { classes } => return *classes,
            Op::Gather => {
                if let Some(Dim::Fixed(v)) = g.inputs(u).first().map(|t| g.ty(*t).shape.0[0]) {
                    return v;
                }
            }
            _ => {}
        }
    }
    2
}

#[derive(Clone, Debug, Serialize)]
pub struct ParamReport {
    pub name: String,
    pub elements: usize,
    pub checked: usize,
    pub worst_relative_error: f64,
    pub worst_absolute_error: f64,
}

/// Relative error, with gradients smaller than 1e-4 compared on an absolute
/// scale: |a − n| / max(|a|, |n|, 1e-4). Without the floor, a gradient that is
/// exactly zero (the key bias of attention, say) would be judged against the
/// rounding noise of the finite difference (about 1e-12 here).
pub fn relative_error(analytic: f64, numeric: f64) -> f64 {
    (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-4)
}

/// The steps of the finite differences. Each derivative is estimated with
/// both and judged by the better estimate: a large step is spoiled by kinks
/// (relu, max pooling) within reach, a small one by rounding in models whose
/// loss sums many terms (the transformer), and neither problem hits both.
pub const STEPS: [f64; 2] = [1e-3, 1e-5];

/// Five-point central difference of `f` at 0: error O(h⁴) from truncation,
/// about ε·|f|/h from rounding.
pub fn derivative(f: impl Fn(f64) -> Result<f64, String>, h: f64) -> Result<f64, String> {
    Ok((-f(2.0 * h)? + 8.0 * f(h)? - 8.0 * f(-h)? + f(-2.0 * h)?) / (12.0 * h))
}

/// Checks d(loss)/d(param) for the trainable parameters of `model` (all when
/// `trainable` is `None`) on `samples` elements of each, at random inputs.
pub fn check(
    model: &ModelInfo,
    trainable: Option<&BTreeSet<String>>,
    batch: usize,
    samples: usize,
    seed: u64,
) -> Result<Vec<ParamReport>, String> {
    let fwd = lower::forward(model, Mode::Train).map_err(|e| e.to_string())?;
    let loss = fwd.output("loss").ok_or("the model has no loss")?;
    let params: Vec<(String, NodeId)> =
        fwd.inputs_of(Role::Param).into_iter().filter(|(n, _)| trainable.is_none_or(|t| t.contains(n))).collect();
    let wrt: Vec<NodeId> = params.iter().map(|(_, id)| *id).collect();
    let (with_grads, grads) = autodiff::grad(fwd.clone(), loss, &wrt).map_err(|e| e.to_string())?;
    crate::ir::verify::check(&with_grads)?;
    let mut rng = Rng::new(seed);
    let inputs = random_inputs(&fwd, batch, &mut rng);
    let values = interp::run(&with_grads, &inputs)?;
    let loss_at =
        |inputs: &HashMap<String, Tensor>| -> Result<f64, String> { Ok(interp::run(&fwd, inputs)?[&loss].data[0]) };
    let mut reports = Vec::new();
    for ((name, _), g) in params.iter().zip(&grads) {
        let analytic = &values[g];
        let n = analytic.len();
        let picks: Vec<usize> =
            if n <= samples { (0..n).collect() } else { (0..samples).map(|_| rng.below(n as u64) as usize).collect() };
        let mut worst_rel: f64 = 0.0;
        let mut worst_abs: f64 = 0.0;
        for k in &picks {
            let at = |dx: f64| -> Result<f64, String> {
                let mut probe = inputs.clone();
                probe.get_mut(name).ok_or("parameter without a value")?.data[*k] += dx;
                loss_at(&probe)
            };
            let a = analytic.data[*k];
            let mut best = (f64::INFINITY, f64::INFINITY);
            for h in STEPS {
                let numeric = derivative(at, h)?;
                let e = (relative_error(a, numeric), (a - numeric).abs());
                if e.0 < best.0 {
                    best = e;
                }
            }
            worst_rel = worst_rel.max(best.0);
            worst_abs = worst_abs.max(best.1);
        }
        reports.push(ParamReport {
            name: name.clone(),
            elements: n,
            checked: picks.len(),
            worst_relative_error: worst_rel,
            worst_absolute_error: worst_abs,
        });
    }
    Ok(reports)
}
