//! Model statistics: per-layer output shapes, parameter counts (trainable and
//! frozen), forward FLOPs and activation bytes per sample, and totals with the
//! memory of parameters plus optimizer state. All sizes assume f32 storage.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::check::layers;
use crate::check::train::Optimizer;
use crate::check::{ModelInfo, Op};

const F32_BYTES: u64 = 4;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The layer path (`fc1`, `hidden.2`), or the input's name.
    pub layer: String,
    pub op: String,
    pub output: String,
    pub trainable: u64,
    pub frozen: u64,
    pub flops: u64,
    pub activation_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Totals {
    pub params: u64,
    pub trainable: u64,
    pub frozen: u64,
    pub param_bytes: u64,
    /// Optimizer state for the trainable parameters (`None` without an optimizer).
    pub optimizer_state_bytes: Option<u64>,
    pub flops_per_sample: u64,
    pub activation_bytes_per_sample: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    /// The finetune stage whose frozen set is shown, if any.
    pub stage: Option<String>,
    pub optimizer: Option<String>,
    pub rows: Vec<Row>,
    /// Every parameter: name and shape, PyTorch layout.
    pub params: Vec<ParamRow>,
    pub totals: Totals,
    /// For a finetune: every stage's learning rate per layer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageRates>,
}

/// One finetune stage: each parameterised layer's effective learning rate
/// at the stage's start (the optimizer's rate times the layer's
/// `lr_scale`; schedules scale it from there), `None` when it is frozen.
#[derive(Clone, Debug, Serialize)]
pub struct StageRates {
    pub stage: String,
    pub epochs: u64,
    pub optimizer: Option<String>,
    pub layers: Vec<(String, Option<f64>)>,
}

/// The learning rates of every stage of `f`, layer by layer.
pub fn stage_rates(f: &crate::check::train::FinetuneInfo) -> Vec<StageRates> {
    let mut layers: Vec<&str> = Vec::new();
    for p in &f.model.params {
        if !layers.contains(&p.layer.as_str()) {
            layers.push(&p.layer);
        }
    }
    f.stages
        .iter()
        .map(|st| {
            let lr = st.optimizer.as_ref().map(|o| o.lr());
            let rates = layers
                .iter()
                .map(|layer| {
                    let params: Vec<&crate::check::ParamInfo> =
                        f.model.params.iter().filter(|p| p.layer == *layer).collect();
                    let trains = params.iter().any(|p| st.trains(&p.name));
                    let scale = params.iter().find_map(|p| st.lr_scale.get(&p.name)).copied().unwrap_or(1.0);
                    (layer.to_string(), lr.filter(|_| trains).map(|lr| lr * scale))
                })
                .collect();
            StageRates {
                stage: st.stage_name().to_string(),
                epochs: st.epochs,
                optimizer: st.optimizer.as_ref().map(|o| o.name().to_string()),
                layers: rates,
            }
        })
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct ParamRow {
    pub name: String,
    pub shape: Vec<u64>,
    pub trainable: bool,
}

/// Summarizes `model`. `trainable` is the set of trainable parameter names
/// (all when `None`); `optimizer` sizes the optimizer state.
pub fn summarize(
    model: &ModelInfo,
    trainable: Option<&BTreeSet<String>>,
    optimizer: Option<&Optimizer>,
    stage: Option<&str>,
) -> Summary {
    let is_trainable = |name: &str| trainable.is_none_or(|t| t.contains(name));
    let mut rows = Vec::new();
    for (i, node) in model.nodes.iter().enumerate() {
        let (op, flops) = match &node.op {
            Op::Input { name } => {
                rows.push(Row {
                    layer: name.clone(),
                    op: "input".into(),
                    output: node.ty.to_string(),
                    trainable: 0,
                    frozen: 0,
                    flops: 0,
                    activation_bytes: node.ty.shape.sample_elements().saturating_mul(F32_BYTES),
                });
                continue;
            }
            Op::Layer { layer } => {
                let inputs: Vec<_> = node.inputs.iter().map(|n| model.nodes[*n].ty.clone()).collect();
                (layer.name().to_string(), layers::flops(layer, &inputs, &node.ty))
            }
            Op::Binary { op } if node.ty.shape.rank() > 0 => {
                let name = match *op {
                    "+" => "add",
                    "-" => "sub",
                    _ => "mul",
                };
                (name.to_string(), node.ty.shape.sample_elements())
            }
            _ => continue,
        };
        let (mut t, mut f) = (0u64, 0u64);
        for p in model.params.iter().filter(|p| p.node == i) {
            if is_trainable(&p.name) {
                t = t.saturating_add(p.elements());
            } else {
                f = f.saturating_add(p.elements());
            }
        }
        // A tensor without a batch (learned positions) is shared by all samples.
        let per_sample =
            if node.ty.shape.has_batch() { node.ty.shape.sample_elements().saturating_mul(F32_BYTES) } else { 0 };
        rows.push(Row {
            layer: node.path.clone(),
            op,
            output: node.ty.shape.to_string(),
            trainable: t,
            frozen: f,
            flops,
            activation_bytes: per_sample,
        });
    }
    let sum = |f: fn(&Row) -> u64| rows.iter().fold(0u64, |a, r| a.saturating_add(f(r)));
    let trainable_total = sum(|r| r.trainable);
    let frozen_total = sum(|r| r.frozen);
    let params = trainable_total.saturating_add(frozen_total);
    let state = optimizer.map(|o| {
        let tensors = o.state_per_param();
        trainable_total.saturating_mul(tensors * F32_BYTES)
    });
    let totals = Totals {
        params,
        trainable: trainable_total,
        frozen: frozen_total,
        param_bytes: params.saturating_mul(F32_BYTES),
        optimizer_state_bytes: state,
        flops_per_sample: sum(|r| r.flops),
        activation_bytes_per_sample: sum(|r| r.activation_bytes),
    };
    Summary {
        model: model.name.clone(),
        stage: stage.map(String::from),
        optimizer: optimizer.map(|o| o.name().to_string()),
        rows,
        params: model
            .params
            .iter()
            .map(|p| ParamRow { name: p.name.clone(), shape: p.shape.clone(), trainable: is_trainable(&p.name) })
            .collect(),
        totals,
        stages: Vec::new(),
    }
}
