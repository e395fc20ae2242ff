//! Parameter initialization, as PyTorch initializes the same layers, so a
//! fresh modelc model starts where a fresh PyTorch model would (in
//! distribution; the random streams differ).
//!
//! - dense, conv2d (nn.Linear, nn.Conv2d): weight and bias uniform in
//!   ±1/√fan_in (kaiming_uniform with a = √5); LoRA adapters as PEFT's: A
//!   like the weight, B zeros;
//! - embed (nn.Embedding): N(0, 1);
//! - layernorm: weight 1, bias 0;
//! - attention (nn.MultiheadAttention): in_proj_weight xavier-uniform,
//!   in_proj_bias 0, out_proj.weight ±1/√d, out_proj.bias 0;
//! - positions: N(0, 0.02) (as GPT-2's learned positions).

use modelc_compiler::check::layers::Layer;
use modelc_compiler::check::{ModelInfo, Op};

use crate::checkpoint::Tensors;
use crate::data::Rng;

/// Every parameter of `model`, initialized; a parameter of a kind this
/// module has no rule for is an error that names it (never zeros).
pub fn init(model: &ModelInfo, seed: u64) -> Result<Tensors, String> {
    let mut rng = Rng::new(seed);
    let mut out = Tensors::new();
    for p in &model.params {
        let shape: Vec<usize> = p.shape.iter().map(|d| *d as usize).collect();
        let n: usize = shape.iter().product();
        let suffix = p.name.rsplit_once(&format!("{}.", p.layer)).map(|(_, s)| s).unwrap_or("");
        let layer = match &model.nodes[p.node].op {
            Op::Layer { layer } => Some(layer),
            _ => None,
        };
        let mut uniform =
            |bound: f64| -> Vec<f32> { (0..n).map(|_| ((rng.uniform(0.0, 1.0) * 2.0 - 1.0) * bound) as f32).collect() };
        let data = match (layer, suffix) {
            // LoRA's B starts at zero: the adapted layer starts as loaded.
            (Some(Layer::Dense { .. }), "lora_B") => vec![0.0; n],
            (Some(Layer::Attention { .. }), "in_proj.lora_B" | "out_proj.lora_B") => vec![0.0; n],
            // A as PEFT's: kaiming-uniform over its fan-in.
            (Some(Layer::Attention { .. }), "in_proj.lora_A" | "out_proj.lora_A") => {
                uniform(1.0 / (p.shape[1] as f64).sqrt())
            }
            (Some(Layer::Dense { .. } | Layer::Conv2d { .. }), _) => uniform(1.0 / fan_in(model, p).sqrt()),
            (Some(Layer::Layernorm { .. }), "weight") => vec![1.0; n],
            (Some(Layer::Layernorm { .. }), _) => vec![0.0; n],
            (Some(Layer::Embed { .. }), _) => (0..n).map(|_| rng.normal() as f32).collect(),
            (Some(Layer::Positions { .. }), _) => (0..n).map(|_| (rng.normal() * 0.02) as f32).collect(),
            (Some(Layer::Attention { .. }), "in_proj_weight") => {
                let (fan_out, fan_in) = (p.shape[0] as f64, p.shape[1] as f64);
                uniform((6.0 / (fan_in + fan_out)).sqrt())
            }
            (Some(Layer::Attention { .. }), "out_proj.weight") => uniform(1.0 / (p.shape[1] as f64).sqrt()),
            (Some(Layer::Attention { .. }), "in_proj_bias" | "out_proj.bias") => vec![0.0; n],
            (layer, _) => {
                let kind = layer.map_or("a non-layer node", |l| l.name());
                return Err(format!(
                    "parameter `{}` (of {kind}) has no initialization rule: a compiler bug; please report it",
                    p.name
                ));
            }
        };
        out.insert(p.name.clone(), (shape, data));
    }
    Ok(out)
}

/// The fan-in of a dense or conv layer: its weight's elements per output.
fn fan_in(model: &ModelInfo, p: &modelc_compiler::check::ParamInfo) -> f64 {
    model
        .params
        .iter()
        .find(|q| q.node == p.node && q.shape.len() >= 2)
        .map(|w| w.shape[1..].iter().product::<u64>() as f64)
        .unwrap_or(1.0)
        .max(1.0)
}
