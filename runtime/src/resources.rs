//! Memory a run will need, computed before anything is allocated: the
//! parameters, the optimizer state, the batch buffers, and the planned arenas
//! of the training step and the evaluation graph at the run's batch size. A
//! run that would need more than the machine has available is refused with
//! the figures and the tensor responsible.
//!
//! Sizes cannot overflow here: the checker refuses any tensor above
//! [`modelc_compiler::check::types::MAX_ELEMENTS`] elements.

use modelc_compiler::check::ModelInfo;
use modelc_compiler::ir::lower::{self, Mode};
use modelc_compiler::ir::{Dim, Graph, Role};
use modelc_compiler::step::{training_step, StepConfig};

use crate::render;

/// What a run needs, in bytes.
#[derive(Clone, Debug)]
pub struct Estimate {
    pub parameters: u64,
    pub optimizer_state: u64,
    /// Inputs fed each step (features and labels) and scalars.
    pub batch_buffers: u64,
    pub step_arena: u64,
    pub eval_arena: u64,
    /// The largest single tensor: (what, bytes).
    pub largest: (String, u64),
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.parameters + self.optimizer_state + self.batch_buffers + self.step_arena + self.eval_arena
    }
}

fn bytes_at(g: &Graph, id: modelc_compiler::ir::NodeId, batch: u64) -> u64 {
    g.ty(id).shape.0.iter().map(|d| if let Dim::Fixed(n) = d { *n } else { batch }).product::<u64>() * 4
}

/// The arena of `g`, optimized and fused, at `batch`.
fn arena(g: Graph, batch: u64) -> Result<u64, String> {
    let g = modelc_compiler::pipeline::optimized(g)?;
    let kernels = modelc_compiler::kernel::fusion::fuse(&g);
    Ok(modelc_compiler::kernel::memory::plan(&g, &kernels, batch).arena_bytes)
}

/// What training `model` with `cfg` at `batch` needs (f32, the compiled
/// executor; the interpreter holds f64, twice as much).
pub fn estimate(model: &ModelInfo, cfg: &StepConfig, batch: u64) -> Result<Estimate, String> {
    let step = training_step(model, cfg).map_err(|e| e.to_string())?;
    let mut largest = (String::new(), 0);
    let (mut parameters, mut optimizer_state, mut batch_buffers) = (0, 0, 0);
    for id in step.topo_order() {
        if let modelc_compiler::ir::Op::Input { name, role } = &step.node(id).op {
            let b = bytes_at(&step, id, batch);
            match role {
                Role::Param => parameters += b,
                Role::State => optimizer_state += b,
                _ => batch_buffers += b,
            }
            if b > largest.1 {
                largest = (format!("`{name}`"), b);
            }
        }
    }
    // The largest activation, by the layer that makes it.
    for n in &model.nodes {
        let b = n.ty.shape.sample_elements().saturating_mul(batch).saturating_mul(4);
        if b > largest.1 {
            largest = (format!("the output of `{}` at batch {batch}", n.path), b);
        }
    }
    let eval = lower::forward(model, Mode::Eval).map_err(|e| e.to_string())?;
    Ok(Estimate {
        parameters,
        optimizer_state,
        batch_buffers,
        step_arena: arena(step, batch)?,
        eval_arena: arena(eval, batch)?,
        largest,
    })
}

/// The memory this machine has available now (`MemAvailable`), if known.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a run that needs more than `limit` bytes (the machine's
/// available memory, when known), naming the figures.
pub fn check_fits(model: &ModelInfo, cfg: &StepConfig, batch: u64, limit: Option<u64>) -> Result<Estimate, String> {
    let e = estimate(model, cfg, batch)?;
    if let Some(limit) = limit.filter(|l| e.total() > *l) {
        return Err(format!(
            "`{}` at batch {batch} needs {} of memory and this machine has {} available: parameters {}, optimizer state {}, batch buffers {}, training-step activations {}, evaluation activations {}; the largest tensor is {} ({}). Use smaller layers or a smaller batch.",
            model.name,
            render::bytes(e.total()),
            render::bytes(limit),
            render::bytes(e.parameters),
            render::bytes(e.optimizer_state),
            render::bytes(e.batch_buffers),
            render::bytes(e.step_arena),
            render::bytes(e.eval_arena),
            e.largest.0,
            render::bytes(e.largest.1),
        ));
    }
    Ok(e)
}
