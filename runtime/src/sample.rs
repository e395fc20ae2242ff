//! Text generation (`modelc sample`) on the compiled CPU code.
//!
//! Two engines compute the next token's logits. [`Engine::Cached`] runs the
//! model's one-position decode graph ([`modelc_compiler::ir::decode`]) with
//! a key/value cache per attention layer: a new token costs one position.
//! [`Engine::Window`] runs the evaluation graph on the whole window and
//! reads the last position's row (what a model without a cache does; the
//! reference the cache is tested against). Both follow one policy for long
//! generations: the window holds at most `T` tokens; when it is full it
//! keeps its last `T/2` and the cached engine fills its cache again from
//! them (positions are absolute, so cached keys cannot be shifted).
//!
//! The next token is the arg-max at temperature 0, otherwise a draw from
//! softmax(logits / temperature), restricted to the `top_k` most likely
//! when given, from a seeded generator.

use modelc_compiler::backend::cpu::Program;
use modelc_compiler::check::ModelInfo;
use modelc_compiler::ir::decode::{decode, DecodeInfo};
use modelc_compiler::ir::lower::{self, Mode};
use modelc_compiler::pipeline;
use modelc_compiler::rng::Rng;

use crate::checkpoint::Tensors;

/// How tokens are chosen.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many tokens to generate.
    pub tokens: usize,
    /// 0: greedy (arg-max).
    pub temperature: f64,
    /// Draw among the `k` most likely only.
    pub top_k: Option<usize>,
    pub seed: u64,
}

/// A compiled next-token predictor.
pub enum Engine {
    Cached { program: Program, info: DecodeInfo, filled: usize },
    Window { program: Program, input: String, context: usize, classes: usize },
}

fn load_params(program: &mut Program, weights: &Tensors) -> Result<(), String> {
    for (name, shape) in program.input_shapes() {
        if let Some((_, v)) = weights.get(&name) {
            let buf = program.input_mut(&name, 1)?;
            if buf.len() != v.len() {
                return Err(format!("`{name}` has {} values, the graph's input {shape} takes {}", v.len(), buf.len()));
            }
            buf.copy_from_slice(v);
        }
    }
    Ok(())
}

impl Engine {
    /// The engine with a key/value cache.
    pub fn cached(model: &ModelInfo, weights: &Tensors) -> Result<Engine, String> {
        let (g, info) = decode(model)?;
        let mut program =
            Program::new(pipeline::optimized(g)?).map_err(|e| format!("compiling the decode step: {e}"))?;
        load_params(&mut program, weights)?;
        Ok(Engine::Cached { program, info, filled: 0 })
    }

    /// The engine that runs the whole window for each token.
    pub fn window(model: &ModelInfo, weights: &Tensors) -> Result<Engine, String> {
        // The decode graph is built too: it accepts or refuses the model
        // (one token input, causal layers) as the cached engine does, and
        // names the prediction the loss reads.
        let (_, info) = decode(model)?;
        let (mut g, map) = lower::forward_map(model, Mode::Eval).map_err(|e| e.to_string())?;
        let id = map[info.prediction].ok_or("the prediction is not in the graph")?;
        g.outputs.push(("logits".into(), id));
        let mut program =
            Program::new(pipeline::optimized(g)?).map_err(|e| format!("compiling the evaluation graph: {e}"))?;
        load_params(&mut program, weights)?;
        Ok(Engine::Window {
            program,
            input: info.input,
            context: info.context as usize,
            classes: info.classes as usize,
        })
    }

    /// The window length `T`.
    pub fn context(&self) -> usize {
        match self {
            Engine::Cached { info, .. } => info.context as usize,
            Engine::Window { context, .. } => *context,
        }
    }

    /// The logits of the token after `window` (1 ≤ len ≤ T), whose first
    /// `reuse` tokens the previous call already saw in the same window.
    fn next(&mut self, window: &[u32], reuse: usize) -> Result<Vec<f32>, String> {
        match self {
            Engine::Cached { program, info, filled } => {
                let t = info.context as usize;
                // Positions not in the cache yet (all after a window shift).
                let start = if reuse <= *filled { reuse } else { 0 };
                let mut logits = Vec::new();
                for (p, tok) in window.iter().enumerate().skip(start) {
                    program.input_mut(&info.input, 1)?[0] = *tok as f32;
                    let onehot = program.input_mut("decode.onehot", 1)?;
                    onehot.fill(0.0);
                    onehot[p] = 1.0;
                    let keep = program.input_mut("decode.keep", 1)?;
                    keep.fill(1.0);
                    keep[p] = 0.0;
                    let mask = program.input_mut("decode.mask", 1)?;
                    for (i, m) in mask.iter_mut().enumerate().take(t) {
                        *m = if i <= p { 0.0 } else { -1e9 };
                    }
                    program.run(1)?;
                    logits = program.output("logits", 1).ok_or("the decode graph has no logits")?.to_vec();
                }
                *filled = window.len();
                Ok(logits)
            }
            Engine::Window { program, input, context, classes } => {
                let buf = program.input_mut(input, 1)?;
                buf.fill(0.0);
                for (b, tok) in buf.iter_mut().zip(window) {
                    *b = *tok as f32;
                }
                program.run(1)?;
                let all = program.output("logits", 1).ok_or("the graph has no logits")?;
                let p = window.len() - 1;
                debug_assert_eq!(all.len(), *context * *classes);
                Ok(all[p * *classes..(p + 1) * *classes].to_vec())
            }
        }
    }
}

/// Generates `opts.tokens` tokens after `prompt` (at least one token),
/// calling `emit` with each as it comes.
pub fn generate(
    engine: &mut Engine,
    prompt: &[u32],
    opts: &Options,
    mut emit: impl FnMut(u32),
) -> Result<Vec<u32>, String> {
    if prompt.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    let t = engine.context();
    // After a shift the window holds its last T/2 tokens and the new one
    // (T = 1: just the new one).
    let keep = t / 2;
    let mut window: Vec<u32> = prompt[prompt.len().saturating_sub(t)..].to_vec();
    let mut reuse = 0;
    let mut rng = Rng::new(opts.seed);
    let mut out = Vec::with_capacity(opts.tokens.min(1 << 16));
    for _ in 0..opts.tokens {
        let logits = engine.next(&window, reuse)?;
        let tok = choose(&logits, opts, &mut rng);
        emit(tok);
        out.push(tok);
        reuse = window.len();
        if window.len() == t {
            window.drain(..t - keep);
            reuse = 0;
        }
        window.push(tok);
    }
    Ok(out)
}

/// The next token from `logits` under `opts`.
fn choose(logits: &[f32], opts: &Options, rng: &mut Rng) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, v) in logits.iter().enumerate() {
            if *v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    order.truncate(opts.top_k.unwrap_or(logits.len()).max(1));
    let top = logits[order[0]] as f64;
    let weights: Vec<f64> = order.iter().map(|i| ((logits[*i] as f64 - top) / opts.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.uniform(0.0, total);
    for (i, w) in order.iter().zip(&weights) {
        if u < *w {
            return *i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}

/// The names and sizes of a decode step's caches, for a report.
pub fn cache_bytes(engine: &Engine) -> usize {
    match engine {
        Engine::Cached { info, .. } => info.caches.iter().map(|(_, d)| 4 * info.context as usize * *d as usize).sum(),
        Engine::Window { .. } => 0,
    }
}
