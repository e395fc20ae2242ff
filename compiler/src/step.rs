//! The training step as one graph:
//! (params, optimizer state, batch, lr, step) → (new params, new state, loss, metrics).
//!
//! Forward graph, then [`crate::autodiff::grad`] for the trainable parameters,
//! then the optimizer update written in primitives, following PyTorch's
//! `torch.optim` exactly (coupled weight decay for SGD, Adam and RMSprop,
//! decoupled for AdamW; `clip_grad_norm_` before the update). The learning
//! rate is a scalar input `lr` (the runtime evaluates the schedule each step)
//! and `step` is the 1-based step number used by Adam's bias corrections.
//!
//! Inputs: `lr`, `step` (Scalar); each optimizer state tensor `PARAM.STATE`
//! (State: `momentum_buffer`, `exp_avg`, `exp_avg_sq`, `square_avg`, as
//! PyTorch names them). Outputs: `loss`, the metrics, `new.PARAM` for every
//! trainable parameter and `new.PARAM.STATE` for every state tensor. Frozen
//! parameters get no gradient, no state and no update.

use std::collections::{BTreeMap, BTreeSet};

use crate::autodiff;
use crate::check::train::Optimizer;
use crate::check::ModelInfo;
use crate::ir::lower::{self, Builder, Mode};
use crate::ir::{BinaryOp as B, Graph, NodeId, Role, Ty, TypeError, UnaryOp as U};

/// How the step updates the parameters.
#[derive(Clone, Debug)]
pub struct StepConfig {
    pub optimizer: Optimizer,
    /// Coupled L2 penalty (added to the gradient), as `weight_decay` of the
    /// train block. AdamW's own decay is in the optimizer.
    pub weight_decay: f64,
    pub clip_grad_norm: Option<f64>,
    /// Multipliers of the learning rate by parameter name (absent: 1).
    pub lr_scale: BTreeMap<String, f64>,
    /// The trainable parameters (all when `None`).
    pub trainable: Option<BTreeSet<String>>,
    /// Matrix products in bf16 on a GPU (`precision bf16`); the graph is
    /// the same, and the CPU runs f32.
    pub bf16: bool,
}

impl StepConfig {
    /// How a train block or a finetune's stage trains (`None` without an
    /// optimizer).
    pub fn from_train(t: &crate::check::TrainInfo) -> Option<StepConfig> {
        Some(StepConfig {
            optimizer: t.optimizer.clone()?,
            weight_decay: t.weight_decay,
            clip_grad_norm: t.clip_grad_norm,
            lr_scale: t.lr_scale.clone(),
            trainable: t.trainable.clone(),
            bf16: t.precision.as_deref() == Some("bf16"),
        })
    }
}

/// The state tensors the optimizer keeps per parameter, PyTorch's names.
pub fn state_names(opt: &Optimizer) -> Vec<&'static str> {
    match opt {
        Optimizer::Sgd { momentum, .. } if *momentum > 0.0 => vec!["momentum_buffer"],
        Optimizer::Sgd { .. } => vec![],
        Optimizer::Adam { .. } | Optimizer::Adamw { .. } => vec!["exp_avg", "exp_avg_sq"],
        Optimizer::Rmsprop { momentum, .. } if *momentum > 0.0 => vec!["square_avg", "momentum_buffer"],
        Optimizer::Rmsprop { .. } => vec!["square_avg"],
    }
}

type R<T> = Result<T, TypeError>;

/// Builds the whole training step for `model`.
pub fn training_step(model: &ModelInfo, cfg: &StepConfig) -> R<Graph> {
    let fwd = lower::forward(model, Mode::Train)?;
    let Some(loss) = fwd.output("loss") else { return Ok(fwd) };
    let params: Vec<(String, NodeId)> = fwd
        .inputs_of(Role::Param)
        .into_iter()
        .filter(|(n, _)| cfg.trainable.as_ref().is_none_or(|t| t.contains(n)))
        .collect();
    let wrt: Vec<NodeId> = params.iter().map(|p| p.1).collect();
    let (g, mut grads) = autodiff::grad(fwd, loss, &wrt)?;
    let mut b = Builder { g };
    let lr = b.g.input("lr", Role::Scalar, Ty::scalar());
    let step = b.g.input("step", Role::Scalar, Ty::scalar());

    // clip_grad_norm_: g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)), ‖g‖ over all.
    if let Some(max_norm) = cfg.clip_grad_norm {
        let mut total: Option<NodeId> = None;
        for g in &grads {
            let sq = b.mul(*g, *g)?;
            let s = b.sum_all(sq)?;
            total = Some(match total {
                Some(t) => b.add(t, s)?,
                None => s,
            });
        }
        if let Some(total) = total {
            let norm = b.un(U::Sqrt, total)?;
            let eps = b.c(1e-6)?;
            let denom = b.add(norm, eps)?;
            let mx = b.c(max_norm)?;
            let coef = b.div(mx, denom)?;
            let one = b.c(1.0)?;
            let clip = b.bin(B::Min, coef, one)?;
            for g in grads.iter_mut() {
                *g = b.mul(*g, clip)?;
            }
        }
    }

    for ((name, p), g) in params.iter().zip(&grads) {
        let scale = cfg.lr_scale.get(name).copied().unwrap_or(1.0);
        let lr_p = if scale == 1.0 { lr } else { b.scale(lr, scale)? };
        let ty = b.g.ty(*p).clone();
        let state = |b: &mut Builder, s: &str| -> NodeId { b.g.input(&format!("{name}.{s}"), Role::State, ty.clone()) };
        let mut outs: Vec<(String, NodeId)> = Vec::new();
        // Coupled weight decay: g ← g + wd·p.
        let decayed = |b: &mut Builder, g: NodeId, wd: f64| -> R<NodeId> {
            if wd == 0.0 {
                return Ok(g);
            }
            let d = b.scale(*p, wd)?;
            b.add(g, d)
        };
        let new_p = match &cfg.optimizer {
            Optimizer::Sgd { momentum, nesterov, .. } => {
                let mut d = decayed(&mut b, *g, cfg.weight_decay)?;
                if *momentum > 0.0 {
                    // buf ← μ·buf + g; d ← g + μ·buf (Nesterov) or buf.
                    let buf = state(&mut b, "momentum_buffer");
                    let mb = b.scale(buf, *momentum)?;
                    let nb = b.add(mb, d)?;
                    outs.push((format!("new.{name}.momentum_buffer"), nb));
                    d = if *nesterov {
                        let m = b.scale(nb, *momentum)?;
                        b.add(d, m)?
                    } else {
                        nb
                    };
                }
                let upd = b.mul(d, lr_p)?;
                b.sub(*p, upd)?
            }
            Optimizer::Adam { beta1, beta2, eps, .. } | Optimizer::Adamw { beta1, beta2, eps, .. } => {
                let (p0, d) = match &cfg.optimizer {
                    // AdamW: p ← p·(1 − lr·wd) before the update.
                    Optimizer::Adamw { weight_decay, .. } => {
                        let k = b.scale(lr_p, *weight_decay)?;
                        let one = b.c(1.0)?;
                        let f = b.sub(one, k)?;
                        (b.mul(*p, f)?, *g)
                    }
                    _ => (*p, decayed(&mut b, *g, cfg.weight_decay)?),
                };
                let m = state(&mut b, "exp_avg");
                let v = state(&mut b, "exp_avg_sq");
                // m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²
                let bm = b.scale(m, *beta1)?;
                let gm = b.scale(d, 1.0 - beta1)?;
                let nm = b.add(bm, gm)?;
                let bv = b.scale(v, *beta2)?;
                let g2 = b.mul(d, d)?;
                let gv = b.scale(g2, 1.0 - beta2)?;
                let nv = b.add(bv, gv)?;
                outs.push((format!("new.{name}.exp_avg"), nm));
                outs.push((format!("new.{name}.exp_avg_sq"), nv));
                // p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)
                let bc1 = bias_correction(&mut b, step, *beta1)?;
                let bc2 = bias_correction(&mut b, step, *beta2)?;
                let sv = b.un(U::Sqrt, nv)?;
                let sb = b.un(U::Sqrt, bc2)?;
                let den = b.div(sv, sb)?;
                let e = b.c(*eps)?;
                let den = b.add(den, e)?;
                let ratio = b.div(nm, den)?;
                let step_size = b.div(lr_p, bc1)?;
                let upd = b.mul(ratio, step_size)?;
                b.sub(p0, upd)?
            }
            Optimizer::Rmsprop { alpha, eps, momentum, .. } => {
                let d = decayed(&mut b, *g, cfg.weight_decay)?;
                // v ← αv + (1−α)g²; u ← g / (√v + ε)
                let v = state(&mut b, "square_avg");
                let av = b.scale(v, *alpha)?;
                let g2 = b.mul(d, d)?;
                let gv = b.scale(g2, 1.0 - alpha)?;
                let nv = b.add(av, gv)?;
                outs.push((format!("new.{name}.square_avg"), nv));
                let sv = b.un(U::Sqrt, nv)?;
                let e = b.c(*eps)?;
                let den = b.add(sv, e)?;
                let mut u = b.div(d, den)?;
                if *momentum > 0.0 {
                    // buf ← μ·buf + u
                    let buf = state(&mut b, "momentum_buffer");
                    let mb = b.scale(buf, *momentum)?;
                    u = b.add(mb, u)?;
                    outs.push((format!("new.{name}.momentum_buffer"), u));
                }
                let upd = b.mul(u, lr_p)?;
                b.sub(*p, upd)?
            }
        };
        b.g.outputs.push((format!("new.{name}"), new_p));
        b.g.outputs.extend(outs);
    }
    Ok(b.g)
}

/// 1 − βᵗ = 1 − exp(t·ln β), with t the `step` input.
fn bias_correction(b: &mut Builder, step: NodeId, beta: f64) -> R<NodeId> {
    let t = b.scale(step, beta.ln())?;
    let e = b.un(U::Exp, t)?;
    let one = b.c(1.0)?;
    b.sub(one, e)
}
