//! The one driver from a checked model to the graphs a backend compiles:
//! build (the training step, or the evaluation forward graph), run the
//! optimization passes, verify. Every executor, `modelc graph`/`emit`, the
//! memory estimate and the sampler go through here, so they compile the
//! same graph; the result is a [`VerifiedGraph`], which the backends
//! require.

use crate::check::ModelInfo;
use crate::ir::lower::{self, Mode};
use crate::ir::verify::{verify, VerifiedGraph};
use crate::ir::Graph;
use crate::passes;
use crate::step::{training_step, StepConfig};

/// `g` after the optimization passes, verified.
pub fn optimized(mut g: Graph) -> Result<VerifiedGraph, String> {
    passes::optimize(&mut g);
    verify(g)
}

/// The optimized training step of `model` under `cfg`.
pub fn train_step(model: &ModelInfo, cfg: &StepConfig) -> Result<VerifiedGraph, String> {
    optimized(training_step(model, cfg).map_err(|e| e.to_string())?)
}

/// The optimized evaluation graph of `model` (loss, metrics, predictions;
/// dropout off).
pub fn eval(model: &ModelInfo) -> Result<VerifiedGraph, String> {
    optimized(lower::forward(model, Mode::Eval).map_err(|e| e.to_string())?)
}
