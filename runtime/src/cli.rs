//! The `modelc` command line: `check`, `summary`, `graph`, `train`, `eval`,
//! `predict`, `emit` and `gradcheck`. Every command writes to the given
//! streams and returns an exit code, so tests run it in-process (training's
//! progress bar, drawn only on a terminal, goes to stderr directly). Every
//! option has `--help` text (a test holds it).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use modelc_compiler::check::train::{FinetuneInfo, TrainInfo};
use modelc_compiler::check::ModelInfo;
use modelc_compiler::ir::lower::{self, Mode};
use modelc_compiler::ir::{print, verify, Graph};
use modelc_compiler::step::{self, StepConfig};
use modelc_compiler::summary::{summarize, Summary};
use modelc_compiler::{Program, Sources};

use crate::render;

#[derive(Parser)]
#[command(name = "modelc", version, about = "A compiler for declarative neural-network specs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check .model files: names, arguments, shapes, settings. Exits 1 on any error.
    Check {
        /// The files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show each layer's output shape, parameters, FLOPs and activation memory.
    Summary {
        /// The .model file.
        file: PathBuf,
        /// Only this model or finetune (default: all in the file).
        #[arg(long)]
        model: Option<String>,
        /// For a finetune: the stage whose frozen set is shown (default: the first).
        #[arg(long)]
        stage: Option<String>,
        /// An aligned table, or JSON for tools.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a model's computation graph.
    Graph {
        /// The .model file.
        file: PathBuf,
        /// The model or finetune (default: the only one in the file).
        #[arg(long)]
        model: Option<String>,
        /// forward: the model, loss and metrics; train: the whole training
        /// step (forward, gradients, optimizer update); optimized: the
        /// training step after the optimization passes; kernels: its fused
        /// kernels and memory plan (for --batch).
        #[arg(long, value_enum, default_value_t = Stage::Forward)]
        stage: Stage,
        /// Text (the canonical form the snapshots use), Graphviz dot, Mermaid, or YAML.
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
        /// The batch size the memory plan is made for (kernels stage).
        #[arg(long, default_value_t = 64)]
        batch: u64,
    },
    /// Train a model as its train block says (CPU).
    Train {
        /// The .model file.
        file: PathBuf,
        /// The model to train when the file holds several.
        #[arg(long)]
        model: Option<String>,
        /// Epochs to train (replaces the train block's `epochs`; at least 1).
        #[arg(long)]
        epochs: Option<u64>,
        /// Samples per step (replaces the train block's `batch`; at least 1).
        #[arg(long)]
        batch: Option<u64>,
        /// Seed of initialization, shuffling, dropout and the validation split (replaces `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Train on the first N training samples only (at least 1).
        #[arg(long)]
        limit: Option<usize>,
        /// Evaluate on the first N test samples only (at least 1).
        #[arg(long)]
        test_limit: Option<usize>,
        /// Output folder for the log and checkpoints (default runs/MODEL); one run at a time holds it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A YAML run file with any of: epochs, batch, seed, limit, test_limit, data, out.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Override one setting, by the same rules as the run file: --set epochs=1 --set data=/path/to/mnist.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue from the resume point (last.state.safetensors) in the output folder.
        #[arg(long)]
        resume: bool,
        /// Where the model runs: compiled native code on the CPU, an NVIDIA GPU (CUDA), or the f64 reference interpreter (slow; for checking).
        #[arg(long = "device", visible_alias = "executor", value_enum, default_value_t = ExecutorKind::Cpu)]
        executor: ExecutorKind,
    },
    /// Evaluate a checkpoint: on the train block's test data, or on the whole of --data.
    Eval {
        /// The .model file.
        file: PathBuf,
        /// The model when the file holds several.
        #[arg(long)]
        model: Option<String>,
        /// The checkpoint (safetensors, PyTorch names and layouts).
        #[arg(long)]
        weights: PathBuf,
        /// Evaluate on the first N samples only.
        #[arg(long)]
        limit: Option<usize>,
        /// Test data to evaluate on, all of it: an MNIST folder (its test split) or a labelled CSV file, read with the checkpoint's preprocessing.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where the model runs: compiled native code on the CPU, an NVIDIA GPU (CUDA), or the f64 reference interpreter (slow; for checking).
        #[arg(long = "device", visible_alias = "executor", value_enum, default_value_t = ExecutorKind::Cpu)]
        executor: ExecutorKind,
    },
    /// Predict the class of every sample of an IDX image file or a CSV file.
    Predict {
        /// The .model file.
        file: PathBuf,
        /// The model when the file holds several.
        #[arg(long)]
        model: Option<String>,
        /// The checkpoint (safetensors, PyTorch names and layouts).
        #[arg(long)]
        weights: PathBuf,
        /// IDX images (.gz or not), or CSV (.csv, any case): columns by name when it has a header (a label column is ignored), with the checkpoint's scaling.
        #[arg(long)]
        input: PathBuf,
        /// Predict the first N samples only.
        #[arg(long)]
        limit: Option<usize>,
        /// Where the model runs: compiled native code on the CPU, an NVIDIA GPU (CUDA), or the f64 reference interpreter (slow; for checking).
        #[arg(long = "device", visible_alias = "executor", value_enum, default_value_t = ExecutorKind::Cpu)]
        executor: ExecutorKind,
    },
    /// Print generated code: the CLIF of every kernel the CPU backend lowers.
    Emit {
        /// The .model file.
        file: PathBuf,
        /// The model when the file holds several.
        #[arg(long)]
        model: Option<String>,
        /// What to print: Cranelift IR (the CPU backend), or PTX (NVIDIA GPUs; elementwise kernels today).
        #[arg(long, value_enum, default_value_t = Target::Clif)]
        target: Target,
        /// For PTX: the compute capability the module targets (80: A100, 90: H100).
        #[arg(long, default_value_t = 80)]
        sm: u32,
    },
    /// Print the learning rate of every parameter group at every step of a run (CSV), across stages; draw it (SVG).
    Schedule {
        /// The .model file.
        file: PathBuf,
        /// The train block or finetune (default: the last in the file).
        #[arg(long)]
        model: Option<String>,
        /// Steps per epoch (default: from the data, as `train` would load it).
        #[arg(long)]
        steps_per_epoch: Option<u64>,
        /// Train on the first N samples only, as `train --limit` (for the step count).
        #[arg(long)]
        limit: Option<usize>,
        /// Also draw the rates into this SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Write a finetune's checkpoint as plain weights: LoRA adapters merged into the layers they adapt.
    Export {
        /// The .model file.
        file: PathBuf,
        /// The finetune (default: the last block in the file).
        #[arg(long)]
        model: Option<String>,
        /// The checkpoint to export (with its adapters).
        #[arg(long)]
        weights: PathBuf,
        /// Fold every adapter into its layer: W + (alpha/rank)·B·A; the adapters are dropped.
        #[arg(long)]
        merge: bool,
        /// Where to write (default: beside the checkpoint, NAME.merged.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate text with a trained sequence model (a text source's), token by token on compiled code with a key/value cache.
    Sample {
        /// The .model file.
        file: PathBuf,
        /// The model or finetune (default: the only one in the file).
        #[arg(long)]
        model: Option<String>,
        /// The checkpoint to generate with.
        #[arg(long)]
        weights: PathBuf,
        /// The text to continue (default: a newline).
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// How many tokens to generate.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// Softmax temperature; 0 picks the most likely token every time (greedy).
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Draw among the K most likely tokens only.
        #[arg(long)]
        top_k: Option<usize>,
        /// The seed of the draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Run the whole window for every token instead of one position with the cache (slower; the cache's reference).
        #[arg(long)]
        no_cache: bool,
    },
    /// Draw a run's curves (loss and metrics per epoch; stages marked) from its log, as SVG.
    Plot {
        /// The run's log.jsonl.
        log: PathBuf,
        /// The SVG file to write (default: curves.svg beside the log).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the symbolic gradients against central finite differences (f64).
    Gradcheck {
        /// The .model file.
        file: PathBuf,
        /// The model when the file holds several.
        #[arg(long)]
        model: Option<String>,
        /// Samples per batch.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Elements checked per parameter.
        #[arg(long, default_value_t = 4)]
        samples: usize,
        /// Seed of the random inputs and parameters.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stage {
    Forward,
    Train,
    Optimized,
    Kernels,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExecutorKind {
    /// Native code: Cranelift kernels and gemm, f32.
    Cpu,
    /// An NVIDIA GPU: PTX kernels and cuBLAS, f32.
    Cuda,
    /// The f64 reference interpreter.
    Interp,
}

/// Says, when a stage asks for `precision bf16` and runs anywhere but on
/// a GPU, that it runs f32.
fn precision_note(kind: ExecutorKind, cfg: &modelc_compiler::step::StepConfig, out: &mut dyn Write) {
    if cfg.bf16 && kind != ExecutorKind::Cuda {
        let _ = writeln!(out, "note: `precision bf16` applies on a GPU (--device cuda); this run is f32 throughout");
    }
}

fn executor(
    kind: ExecutorKind,
    model: &ModelInfo,
    cfg: &modelc_compiler::step::StepConfig,
    init: &crate::checkpoint::Tensors,
) -> Result<Box<dyn crate::exec::Executor>> {
    Ok(match kind {
        ExecutorKind::Cpu => Box::new(crate::exec::Compiled::new(model, cfg, init)?),
        ExecutorKind::Cuda => Box::new(crate::exec::Cuda::new(model, cfg, init)?),
        ExecutorKind::Interp => Box::new(crate::exec::Interpreter::new(model, cfg, init)?),
    })
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Clif,
    Ptx,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
    Mermaid,
    Yaml,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Width diagnostics wrap at.
const WIDTH: usize = 100;

/// Runs the CLI with `args` (program name first). Returns the exit code.
pub fn run(args: impl IntoIterator<Item = OsString>, out: &mut dyn Write, err: &mut dyn Write, color: bool) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let text = if color { e.render().ansi().to_string() } else { e.render().to_string() };
            let stream: &mut dyn Write = if e.use_stderr() { err } else { out };
            let _ = write!(stream, "{text}");
            return e.exit_code();
        }
    };
    let result = match cli.command {
        Command::Check { files } => check(&files, out, err, color),
        Command::Summary { file, model, stage, format } => {
            summary(&file, model.as_deref(), stage.as_deref(), format, out, err, color)
        }
        Command::Graph { file, model, stage, format, batch } => {
            graph(&file, model.as_deref(), stage, format, batch, out, err, color)
        }
        Command::Train {
            file,
            model,
            epochs,
            batch,
            seed,
            limit,
            test_limit,
            out: dir,
            run,
            set,
            resume,
            executor,
        } => {
            let text = |v: Option<u64>| v.map(|v| v.to_string());
            let flags = RunFile::from_flags(&[
                ("epochs", text(epochs)),
                ("batch", text(batch)),
                ("seed", text(seed)),
                ("limit", limit.map(|v| v.to_string())),
                ("test_limit", test_limit.map(|v| v.to_string())),
                ("out", dir.map(|d| d.to_string_lossy().into_owned())),
            ]);
            flags.and_then(|flags| {
                train(&file, model.as_deref(), flags, run.as_deref(), &set, resume, executor, out, err, color)
            })
        }
        Command::Eval { file, model, weights, limit, data, executor } => {
            eval(&file, model.as_deref(), &weights, limit, data, executor, out, err, color)
        }
        Command::Predict { file, model, weights, input, limit, executor } => {
            predict(&file, model.as_deref(), &weights, &input, limit, executor, out, err, color)
        }
        Command::Emit { file, model, target: Target::Clif, .. } => emit(&file, model.as_deref(), out, err, color),
        Command::Emit { file, model, target: Target::Ptx, sm } => {
            emit_ptx(&file, model.as_deref(), sm, out, err, color)
        }
        Command::Schedule { file, model, steps_per_epoch, limit, svg } => {
            schedule(&file, model.as_deref(), steps_per_epoch, limit, svg.as_deref(), out, err, color)
        }
        Command::Plot { log, out: svg } => plot(&log, svg.as_deref(), out),
        Command::Sample { file, model, weights, prompt, tokens, temperature, top_k, seed, no_cache } => {
            let opts = crate::sample::Options { tokens, temperature, top_k, seed };
            sample(&file, model.as_deref(), &weights, &prompt, &opts, !no_cache, out, err, color)
        }
        Command::Export { file, model, weights, merge, out: to } => {
            export(&file, model.as_deref(), &weights, merge, to.as_deref(), out, err, color)
        }
        Command::Gradcheck { file, model, batch, samples, seed } => {
            gradcheck(&file, model.as_deref(), batch, samples, seed, out, err, color)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            1
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// Loads and checks `path`; renders the diagnostics to `err` when there are any.
fn load(path: &std::path::Path, err: &mut dyn Write, color: bool) -> Result<Option<(Sources, Program)>> {
    let (sources, program, errors) = modelc_compiler::check_path(path)?;
    if errors.is_empty() {
        return Ok(Some((sources, program)));
    }
    let text = render::diagnostics(&sources, &errors, color, WIDTH);
    let _ = write!(err, "{text}");
    let n = errors.len();
    let _ = writeln!(err, "{}: {n} error{}", path.display(), if n == 1 { "" } else { "s" });
    Ok(None)
}

fn check(files: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write, color: bool) -> Result<i32> {
    let mut failed = 0;
    for path in files {
        match load(path, err, color) {
            Ok(Some((_, program))) => match fits(&program) {
                Ok(()) => {
                    let _ = writeln!(out, "ok    {}: {}", path.display(), one_line(&program));
                }
                Err(e) => {
                    let _ = writeln!(err, "error: {}: {e}", path.display());
                    failed += 1;
                }
            },
            Ok(None) => failed += 1,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                failed += 1;
            }
        }
    }
    if files.len() > 1 {
        let _ = writeln!(out, "{} file(s) checked, {} failed", files.len(), failed);
    }
    Ok(i32::from(failed > 0))
}

/// Whether every train block of the root file fits this machine's memory
/// at its batch size.
fn fits(p: &Program) -> Result<()> {
    let root = modelc_compiler::FileId(0);
    let limit = crate::resources::available();
    for t in p.trains.iter().filter(|t| t.file == root) {
        if let (Some(m), Some(cfg)) = (p.model(&t.model), StepConfig::from_train(t)) {
            crate::resources::check_fits(m, &cfg, t.batch, limit)?;
        }
    }
    Ok(())
}

/// What a valid file holds, in one line.
fn one_line(p: &Program) -> String {
    let root = modelc_compiler::FileId(0);
    let mut parts = Vec::new();
    for m in p.models.iter().filter(|m| m.file == root) {
        parts.push(format!("model {} ({} parameters)", m.name, render::thousands(m.param_count())));
    }
    for t in p.trains.iter().filter(|t| t.file == root) {
        parts.push(format!("train {} ({})", t.model, train_line(t)));
    }
    for f in p.finetunes.iter().filter(|f| f.file == root) {
        let stages: Vec<String> = f.stages.iter().map(|s| format!("{} {}ep", s.stage_name(), s.epochs)).collect();
        parts.push(format!("finetune {} from {} ({} stages: {})", f.name, f.base, f.stages.len(), stages.join(", ")));
    }
    if parts.is_empty() {
        "nothing defined".into()
    } else {
        parts.join("; ")
    }
}

fn train_line(t: &TrainInfo) -> String {
    let opt = t.optimizer.as_ref().map(|o| format!("{} lr {}", o.name(), o.lr())).unwrap_or_default();
    let data = t.data.as_ref().map(|d| d.name()).unwrap_or("?");
    format!("{data}, {opt}, batch {}, {} epochs", t.batch, t.epochs)
}

fn summary(
    path: &std::path::Path,
    only: Option<&str>,
    stage: Option<&str>,
    format: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    let Some((_, program)) = load(path, err, color)? else {
        return Ok(1);
    };
    let root = modelc_compiler::FileId(0);
    let mut summaries: Vec<Summary> = Vec::new();
    let mut names = Vec::new();
    for m in program.models.iter().filter(|m| m.file == root) {
        names.push(m.name.clone());
        if only.is_some_and(|o| o != m.name) {
            continue;
        }
        let opt = program.trains.iter().find(|t| t.model == m.name).and_then(|t| t.optimizer.as_ref());
        summaries.push(summarize(m, None, opt, None));
    }
    for f in program.finetunes.iter().filter(|f| f.file == root) {
        names.push(f.name.clone());
        if only.is_some_and(|o| o != f.name) {
            continue;
        }
        summaries.push(finetune_summary(f, stage)?);
    }
    if summaries.is_empty() {
        return Err(match only {
            Some(o) => {
                format!("{} has no model or finetune named `{o}` (it has: {})", path.display(), names.join(", "))
            }
            None => format!("{} defines no model or finetune", path.display()),
        });
    }
    match format {
        Format::Json => {
            let json = if summaries.len() == 1 {
                serde_json::to_string_pretty(&summaries[0])
            } else {
                serde_json::to_string_pretty(&summaries)
            };
            let _ = writeln!(out, "{}", json.map_err(|e| e.to_string())?);
        }
        Format::Table => {
            for (i, s) in summaries.iter().enumerate() {
                if i > 0 {
                    let _ = writeln!(out);
                }
                let _ = write!(out, "{}", table(s));
            }
        }
    }
    Ok(0)
}

fn finetune_summary(f: &FinetuneInfo, stage: Option<&str>) -> Result<Summary> {
    let st = match stage {
        Some(name) => f.stages.iter().find(|s| s.stage_name() == name).ok_or_else(|| {
            let names: Vec<&str> = f.stages.iter().map(|s| s.stage_name()).collect();
            format!("finetune `{}` has no stage `{name}` (it has: {})", f.name, names.join(", "))
        })?,
        None => f.stages.first().ok_or_else(|| format!("finetune `{}` has no stages", f.name))?,
    };
    let mut s = summarize(&f.model, st.trainable.as_ref(), st.optimizer.as_ref(), st.stage.as_deref());
    s.model = format!("{} (from {})", f.name, f.base);
    s.stages = modelc_compiler::summary::stage_rates(f);
    Ok(s)
}

/// The summary as an aligned text table with totals.
fn table(s: &Summary) -> String {
    let header = ["layer", "op", "output", "trainable", "frozen", "FLOPs", "activations"];
    let mut cells: Vec<[String; 7]> = vec![header.map(String::from)];
    for r in &s.rows {
        cells.push([
            r.layer.clone(),
            r.op.clone(),
            r.output.clone(),
            render::thousands(r.trainable),
            render::thousands(r.frozen),
            render::thousands(r.flops),
            render::bytes(r.activation_bytes),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let title = match &s.stage {
        Some(st) => format!("{} — stage `{st}`", s.model),
        None => s.model.clone(),
    };
    out.push_str(&format!("{title}\n"));
    for (i, row) in cells.iter().enumerate() {
        let mut line = String::new();
        for (k, c) in row.iter().enumerate() {
            let pad = widths[k] - c.chars().count();
            if k >= 3 {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(pad));
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"─".repeat(total));
            out.push('\n');
        }
    }
    let t = &s.totals;
    out.push_str(&format!(
        "parameters        {} ({} trainable, {} frozen), {}\n",
        render::thousands(t.params),
        render::thousands(t.trainable),
        render::thousands(t.frozen),
        render::bytes(t.param_bytes)
    ));
    match (&s.optimizer, t.optimizer_state_bytes) {
        (Some(o), Some(b)) => out.push_str(&format!(
            "optimizer state   {} ({o}); with parameters {}\n",
            render::bytes(b),
            render::bytes(b + t.param_bytes)
        )),
        _ => out.push_str("optimizer state   unknown (no train block for this model)\n"),
    }
    out.push_str(&format!(
        "per sample        {} FLOPs forward ({}), {} of activations\n",
        render::thousands(t.flops_per_sample),
        render::si(t.flops_per_sample),
        render::bytes(t.activation_bytes_per_sample)
    ));
    if !s.stages.is_empty() {
        out.push_str(&stages_table(&s.stages));
    }
    out
}

/// A finetune's stages side by side: each layer's learning rate at the
/// stage's start, or `frozen`.
fn stages_table(stages: &[modelc_compiler::summary::StageRates]) -> String {
    let mut cells: Vec<Vec<String>> =
        vec![std::iter::once("layer".to_string())
            .chain(stages.iter().map(|s| {
                format!("{} ({} ep, {})", s.stage, s.epochs, s.optimizer.as_deref().unwrap_or("no optimizer"))
            }))
            .collect()];
    for (i, (layer, _)) in stages[0].layers.iter().enumerate() {
        let mut row = vec![layer.clone()];
        for s in stages {
            row.push(s.layers[i].1.map_or("frozen".to_string(), |lr| format!("{lr:.1e}")));
        }
        cells.push(row);
    }
    let widths: Vec<usize> =
        (0..cells[0].len()).map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out =
        String::from("\nlearning rate at the start of each stage (optimizer rate × lr_scale; schedules scale it)\n");
    for (i, row) in cells.iter().enumerate() {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"─".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    out
}

/// The model to compile: a model or finetune of the root file, by name or the
/// only one, with how it trains (its train block, or a finetune's first stage)
/// when the file says.
fn select(program: &Program, only: Option<&str>) -> Result<(ModelInfo, Option<StepConfig>)> {
    let root = modelc_compiler::FileId(0);
    let mut found: Vec<(String, ModelInfo, Option<StepConfig>)> = Vec::new();
    for m in program.models.iter().filter(|m| m.file == root) {
        let cfg = program.trains.iter().find(|t| t.model == m.name).and_then(StepConfig::from_train);
        found.push((m.name.clone(), m.clone(), cfg));
    }
    for f in program.finetunes.iter().filter(|f| f.file == root) {
        let cfg = f.stages.first().and_then(StepConfig::from_train);
        found.push((f.name.clone(), f.model.clone(), cfg));
    }
    let names: Vec<String> = found.iter().map(|f| f.0.clone()).collect();
    let pick = match only {
        Some(o) => found
            .into_iter()
            .find(|f| f.0 == o)
            .ok_or_else(|| format!("no model or finetune named `{o}` (the file has: {})", names.join(", ")))?,
        None if found.len() == 1 => found.remove(0),
        None if found.is_empty() => return Err("the file defines no model or finetune".into()),
        None => return Err(format!("the file has several models; choose one with --model ({})", names.join(", "))),
    };
    Ok((pick.1, pick.2))
}

/// The graph of a stage: the forward graph, or the whole training step
/// (forward, gradients, optimizer update), raw or optimized.
fn build_graph(name_for_errors: &str, model: &ModelInfo, cfg: Option<&StepConfig>, stage: Stage) -> Result<Graph> {
    if stage == Stage::Forward {
        return lower::forward(model, Mode::Train).map_err(|e| e.to_string());
    }
    let cfg = cfg.ok_or_else(|| {
        format!("`{name_for_errors}` has no train block with an optimizer, which the training step needs")
    })?;
    if matches!(stage, Stage::Optimized | Stage::Kernels) {
        return Ok(modelc_compiler::pipeline::train_step(model, cfg)?.into_graph());
    }
    step::training_step(model, cfg).map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn graph(
    path: &std::path::Path,
    only: Option<&str>,
    stage: Stage,
    format: GraphFormat,
    batch: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let (model, cfg) = select(&program, only)?;
    let g = verify::verify(build_graph(&model.name, &model, cfg.as_ref(), stage)?)?;
    if stage == Stage::Kernels {
        let kernels = modelc_compiler::kernel::fusion::fuse(&g);
        let plan = modelc_compiler::kernel::memory::plan(&g, &kernels, batch);
        let text = match format {
            GraphFormat::Text => modelc_compiler::kernel::fusion::text(&g, &kernels, &plan),
            GraphFormat::Yaml => serde_yaml::to_string(&plan).map_err(|e| e.to_string())?,
            _ => return Err("the kernels stage prints as text or yaml".into()),
        };
        let _ = write!(out, "{text}");
        return Ok(0);
    }
    let text = match format {
        GraphFormat::Text => print::text(&g),
        GraphFormat::Dot => print::dot(&g),
        GraphFormat::Mermaid => print::mermaid(&g),
        GraphFormat::Yaml => print::yaml(&g),
    };
    let _ = write!(out, "{text}");
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn gradcheck(
    path: &std::path::Path,
    only: Option<&str>,
    batch: usize,
    samples: usize,
    seed: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let (model, cfg) = select(&program, only)?;
    let trainable = cfg.and_then(|c| c.trainable);
    let reports = modelc_compiler::gradcheck::check(&model, trainable.as_ref(), batch.max(1), samples.max(1), seed)?;
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(9).max(9);
    let _ = writeln!(
        out,
        "{:<width$}  {:>9}  {:>7}  {:>12}  {:>12}",
        "parameter", "elements", "checked", "worst rel.", "worst abs."
    );
    let mut worst: f64 = 0.0;
    for r in &reports {
        worst = worst.max(r.worst_relative_error);
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>7}  {:>12.3e}  {:>12.3e}",
            r.name, r.elements, r.checked, r.worst_relative_error, r.worst_absolute_error
        );
    }
    let _ = writeln!(
        out,
        "worst relative error {worst:.3e} over {} parameter tensors (batch {batch}, seed {seed}, f64, five-point central differences, better of h = 1e-3 and 1e-5)",
        reports.len()
    );
    Ok(i32::from(worst > 1e-6))
}

/// Settings a run may override, from a run file, `--set` or flags. Every
/// value passes one validator ([`RunFile::set`]) whatever its origin, by the
/// rule the spec's own setting has (`run_setting`).
#[derive(Clone, Debug, Default)]
struct RunFile {
    epochs: Option<u64>,
    batch: Option<u64>,
    seed: Option<u64>,
    limit: Option<usize>,
    test_limit: Option<usize>,
    data: Option<PathBuf>,
    out: Option<PathBuf>,
}

impl RunFile {
    /// `self` with every setting `over` gives replaced.
    fn then(self, over: RunFile) -> RunFile {
        RunFile {
            epochs: over.epochs.or(self.epochs),
            batch: over.batch.or(self.batch),
            seed: over.seed.or(self.seed),
            limit: over.limit.or(self.limit),
            test_limit: over.test_limit.or(self.test_limit),
            data: over.data.or(self.data),
            out: over.out.or(self.out),
        }
    }

    /// Sets `key` from its text, by the rule of `run_setting`; the error
    /// says what fits.
    fn set(&mut self, key: &str, text: &str) -> std::result::Result<(), String> {
        use modelc_compiler::check::args::Ty;
        use modelc_compiler::check::train::{run_setting, RUN_SETTINGS};
        let ty = run_setting(key).ok_or_else(|| {
            let hint = modelc_compiler::diag::closest(key, RUN_SETTINGS.iter().copied())
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            format!("unknown setting `{key}` ({hint}the settings are {})", RUN_SETTINGS.join(", "))
        })?;
        if matches!(ty, Ty::Str) {
            if text.is_empty() {
                return Err(format!("`{key}` takes a path, and the value is empty"));
            }
            let p = Some(PathBuf::from(text));
            match key {
                "data" => self.data = p,
                _ => self.out = p,
            }
            return Ok(());
        }
        let v: i64 = text.parse().map_err(|_| format!("`{key}` takes a whole number, not `{text}`"))?;
        ty.check_int(v).map_err(|range| format!("`{key}` must be {range}, not {v}"))?;
        let (u, z) = (Some(v as u64), Some(v as usize));
        match key {
            "epochs" => self.epochs = u,
            "batch" => self.batch = u,
            "seed" => self.seed = u,
            "limit" => self.limit = z,
            _ => self.test_limit = z,
        }
        Ok(())
    }

    /// The command-line flags, through the same validator.
    fn from_flags(pairs: &[(&str, Option<String>)]) -> Result<RunFile> {
        let mut r = RunFile::default();
        for (k, v) in pairs {
            if let Some(v) = v {
                r.set(k, v).map_err(|e| format!("--{}: {e}", k.replace('_', "-")))?;
            }
        }
        Ok(r)
    }

    /// A YAML run file: a mapping of settings.
    fn read(path: &std::path::Path) -> Result<RunFile> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read run file {}: {e}", path.display()))?;
        let at = |e: String| format!("run file {}: {e}", path.display());
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| at(e.to_string()))?;
        let mut r = RunFile::default();
        let map = match yaml {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => return Ok(r),
            _ => return Err(at("expected a mapping of settings, such as `epochs: 3`".into())),
        };
        for (k, v) in map {
            let key = k.as_str().ok_or_else(|| at(format!("a setting's name must be text, not {k:?}")))?;
            let text = match v {
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::String(s) => s,
                other => return Err(at(format!("`{key}`: expected a number or a path, found {other:?}"))),
            };
            r.set(key, &text).map_err(at)?;
        }
        Ok(r)
    }
}

/// `--set key=value` pairs, each key once.
fn parse_sets(sets: &[String]) -> Result<RunFile> {
    let mut r = RunFile::default();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for s in sets {
        let (k, v) = s.split_once('=').ok_or_else(|| format!("--set {s}: expected KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        if let Some((_, first)) = seen.iter().find(|(key, _)| *key == k) {
            return Err(format!("--set {k} is given twice ({k}={first} and {k}={v}); give it once"));
        }
        seen.push((k, v));
        r.set(k, v).map_err(|e| format!("--set {s}: {e}"))?;
    }
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
fn train(
    path: &std::path::Path,
    only: Option<&str>,
    flags: RunFile,
    run: Option<&std::path::Path>,
    sets: &[String],
    resume: bool,
    kind: ExecutorKind,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let (job, why) = pick_job(&program, only, path)?;
    let from_file = match run {
        Some(r) => RunFile::read(r)?,
        None => RunFile::default(),
    };
    let settings = from_file.then(parse_sets(sets)?).then(flags);
    let name = match job {
        Job::Train(t) => t.model.clone(),
        Job::Finetune(f) => f.name.clone(),
    };
    let _ = writeln!(out, "training `{name}` ({why})");
    let mut opts = crate::train::Options {
        epochs: settings.epochs,
        batch: settings.batch,
        seed: settings.seed,
        limit: settings.limit,
        test_limit: settings.test_limit,
        data: settings.data,
        out: settings.out.unwrap_or_else(|| crate::train::default_out(&name)),
        progress: true,
        resume,
        preprocess: None,
        stage: None,
    };
    match job {
        Job::Train(info) => {
            let model = program.model(&info.model).ok_or("the train block's model is missing")?;
            let cfg = StepConfig::from_train(info).ok_or("the train block has no optimizer")?;
            // Memory first: nothing is allocated for a run that cannot fit.
            let limit = crate::resources::available();
            crate::resources::check_fits(model, &cfg, opts.batch.unwrap_or(info.batch), limit)?;
            let data_source = info.data.as_ref().ok_or("the train block has no data")?;
            let data = crate::train::load(data_source, model, info, &opts)?;
            let init = crate::init::init(model, opts.seed.unwrap_or(info.seed))?;
            precision_note(kind, &cfg, out);
            let mut exec = executor(kind, model, &cfg, &init)?;
            let outcome = crate::train::run(exec.as_mut(), model, info, &data, &opts, out)?;
            report(out, &outcome);
        }
        Job::Finetune(f) => {
            if opts.epochs.is_some() {
                return Err(format!(
                    "finetune `{}` gives epochs per stage; change them in the spec, not with --epochs",
                    f.name
                ));
            }
            let model = &f.model;
            let stages: Vec<(TrainInfo, StepConfig)> = f
                .stages
                .iter()
                .map(|st| {
                    let cfg =
                        StepConfig::from_train(st).ok_or(format!("stage `{}` has no optimizer", st.stage_name()))?;
                    Ok((st.clone(), cfg))
                })
                .collect::<Result<_>>()?;
            let limit = crate::resources::available();
            for (info, cfg) in &stages {
                crate::resources::check_fits(model, cfg, opts.batch.unwrap_or(info.batch), limit)?;
            }
            let data_source = f.settings.data.as_ref().ok_or("the finetune has no data")?;
            let data = crate::train::load(data_source, model, &f.settings, &opts)?;
            let mut params = finetune_weights(f, opts.seed.unwrap_or(f.settings.seed), out)?;
            let mut state = crate::checkpoint::Tensors::new();
            let (mut epoch, mut step, mut optimizer_steps) = (0, 0, 0);
            let mut previous: Option<&str> = None;
            let mut last = None;
            for (st, cfg) in &stages {
                // The stage switch: its own step compiled, state carried.
                let switch = std::time::Instant::now();
                precision_note(kind, cfg, out);
                let mut exec = executor(kind, model, cfg, &params)?;
                // Optimizer state goes on for what goes on training with the
                // same optimizer (same names and shapes); the rest starts at 0.
                let fresh = exec.state();
                let same_optimizer = previous == Some(cfg.optimizer.name());
                let carried: crate::checkpoint::Tensors = state
                    .into_iter()
                    .filter(|(n, (s, _))| same_optimizer && fresh.get(n).is_some_and(|(fs, _)| fs == s))
                    .collect();
                let kept = carried.len();
                exec.set_parameters(&carried);
                let _ = writeln!(
                    out,
                    "stage `{}`: {} epochs, training {} of {} parameter tensors ({} optimizer state tensors carried; step compiled in {:.1} ms)",
                    st.stage_name(),
                    st.epochs,
                    model.params.iter().filter(|p| st.trains(&p.name)).count(),
                    model.params.len(),
                    kept,
                    1e3 * switch.elapsed().as_secs_f64()
                );
                opts.stage = Some(crate::train::StageRun {
                    name: st.stage_name().to_string(),
                    first_epoch: epoch,
                    first_step: step,
                    optimizer_steps: if kept > 0 { optimizer_steps } else { 0 },
                });
                let outcome = crate::train::run(exec.as_mut(), model, st, &data, &opts, out)?;
                params = exec.parameters();
                state = exec.state();
                step = outcome.step;
                optimizer_steps = outcome.optimizer_steps;
                previous = Some(cfg.optimizer.name());
                epoch += st.epochs;
                last = Some(outcome);
            }
            if let Some(outcome) = last {
                report(out, &outcome);
            }
        }
    }
    Ok(0)
}

fn report(out: &mut dyn Write, outcome: &crate::train::Outcome) {
    let _ = writeln!(out, "log: {}", outcome.log.display());
    let _ = writeln!(out, "checkpoint: {}", outcome.last.display());
    if let Some(b) = &outcome.best {
        let _ = writeln!(out, "best checkpoint: {}", b.display());
    }
}

/// What `modelc train` runs: a train block, or a finetune's stages.
enum Job<'p> {
    Train(&'p TrainInfo),
    Finetune(&'p FinetuneInfo),
}

/// The block `train` runs: the one `--model` names (a train block's model
/// or a finetune), else the last declared in the file itself (imports do
/// not count). Returns it and why it was chosen, for the first line.
fn pick_job<'p>(program: &'p Program, only: Option<&str>, path: &std::path::Path) -> Result<(Job<'p>, String)> {
    let root = modelc_compiler::FileId(0);
    let mut jobs: Vec<(usize, String, Job<'p>)> = Vec::new();
    for t in program.trains.iter().filter(|t| t.file == root) {
        jobs.push((t.span.start, t.model.clone(), Job::Train(t)));
    }
    for f in program.finetunes.iter().filter(|f| f.file == root) {
        jobs.push((f.span.start, f.name.clone(), Job::Finetune(f)));
    }
    jobs.sort_by_key(|j| j.0);
    let names: Vec<String> = jobs.iter().map(|j| j.1.clone()).collect();
    match only {
        Some(o) => {
            let i = jobs.iter().position(|j| j.1 == o).ok_or_else(|| {
                let has = if names.is_empty() { "none".to_string() } else { names.join(", ") };
                format!("{} has no train block or finetune named `{o}` (it has: {has})", path.display())
            })?;
            Ok((jobs.swap_remove(i).2, "chosen with --model".into()))
        }
        None => {
            let n = jobs.len();
            let job = jobs.pop().ok_or_else(|| {
                format!("{} has no train block or finetune of its own (imported ones are not run)", path.display())
            })?;
            let why = if n == 1 {
                format!("the one block in {}", path.display())
            } else {
                format!(
                    "the last of {n} blocks in {}; choose another with --model: {}",
                    path.display(),
                    names.join(", ")
                )
            };
            Ok((job.2, why))
        }
    }
}

/// The finetune's starting parameters: its `weights` file by name, the
/// replaced layers freshly initialized; reports what came from where.
fn finetune_weights(f: &FinetuneInfo, seed: u64, out: &mut dyn Write) -> Result<crate::checkpoint::Tensors> {
    let path = std::path::Path::new(&f.weights);
    let loaded = crate::checkpoint::load(path).map_err(|e| {
        format!(
            "{e}\n  (finetune `{}` starts from these weights: train `{}` first, or change `weights`)",
            f.name, f.base
        )
    })?;
    let (loaded, renamed) = crate::checkpoint::rename(path, loaded, &f.renames)?;
    let in_file: Vec<String> = loaded.keys().cloned().collect();
    let expected: Vec<(String, Vec<usize>)> =
        f.model.params.iter().map(|p| (p.name.clone(), p.shape.iter().map(|d| *d as usize).collect())).collect();
    let fresh_layer =
        |n: &str| f.lora.iter().any(|l| l == n) || f.replaced.iter().any(|r| n == r || n.starts_with(&format!("{r}.")));
    if !expected.iter().any(|(n, _)| !fresh_layer(n) && loaded.contains_key(n)) {
        let mut has: Vec<&str> = in_file.iter().map(String::as_str).take(12).collect();
        if in_file.len() > has.len() {
            has.push("…");
        }
        let example = expected.iter().find(|(n, _)| !fresh_layer(n)).map_or("conv1.weight", |(n, _)| n.as_str());
        return Err(format!(
            "{}: none of the tensors `{}` loads is in the file (it has: {}); if the file names them otherwise, add `map \"FROM.*\" -> \"TO.*\"` lines (the model's names are like `{example}`)",
            path.display(),
            f.name,
            has.join(", ")
        ));
    }
    let fresh_names: Vec<String> = f.replaced.iter().chain(&f.lora).cloned().collect();
    let kept = crate::checkpoint::validate(path, loaded, &expected, &fresh_names).map_err(|e| e.to_string())?;
    let mut params = crate::init::init(&f.model, seed)?;
    let fresh: Vec<String> = params.keys().filter(|k| !kept.contains_key(*k)).cloned().collect();
    let unused: Vec<&String> = in_file.iter().filter(|k| !kept.contains_key(*k)).collect();
    params.extend(kept.clone());
    let _ = writeln!(
        out,
        "weights from {}: {} tensors loaded{}; newly initialized (replaced layers, LoRA adapters): {}; in the file but not used: {}",
        path.display(),
        kept.len(),
        if renamed > 0 { format!(" ({renamed} renamed by `map`)") } else { String::new() },
        if fresh.is_empty() { "none".to_string() } else { fresh.join(", ") },
        if unused.is_empty() {
            "none".to_string()
        } else {
            unused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        }
    );
    Ok(params)
}

/// The stages of a job as the trainer runs them: (name, settings, config).
fn job_stages(job: &Job) -> Result<Vec<(Option<String>, TrainInfo, StepConfig)>> {
    match job {
        Job::Train(t) => {
            let cfg = StepConfig::from_train(t).ok_or("the train block has no optimizer")?;
            Ok(vec![(None, (*t).clone(), cfg)])
        }
        Job::Finetune(f) => f
            .stages
            .iter()
            .map(|st| {
                let cfg = StepConfig::from_train(st).ok_or(format!("stage `{}` has no optimizer", st.stage_name()))?;
                Ok((st.stage.clone(), st.clone(), cfg))
            })
            .collect(),
    }
}

#[allow(clippy::too_many_arguments)]
fn schedule(
    path: &std::path::Path,
    only: Option<&str>,
    steps_per_epoch: Option<u64>,
    limit: Option<usize>,
    svg: Option<&std::path::Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    use crate::schedule::{lr_at, Progress};
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let (job, _) = pick_job(&program, only, path)?;
    let (model, settings) = match &job {
        Job::Train(t) => (program.model(&t.model).ok_or("the train block's model is missing")?, *t),
        Job::Finetune(f) => (&f.model, &f.settings),
    };
    let samples = match steps_per_epoch {
        Some(_) => 0,
        None => {
            let source = settings.data.as_ref().ok_or("the block has no data")?;
            let opts = crate::train::Options { limit, ..Default::default() };
            crate::train::load(source, model, settings, &opts)?.train.len as u64
        }
    };
    let _ = writeln!(out, "step,epoch,stage,group,scale,lr");
    let mut panels_series: Vec<crate::plot::Series> = Vec::new();
    let mut markers = Vec::new();
    let (mut step0, mut epoch0) = (0u64, 0u64);
    let mut plateau = false;
    for (name, info, cfg) in job_stages(&job)? {
        let per = steps_per_epoch.unwrap_or_else(|| samples.div_ceil(info.batch.max(1))).max(1);
        let total = per * info.epochs;
        let lr = cfg.optimizer.lr();
        plateau |= matches!(info.schedule, modelc_compiler::check::train::Schedule::Plateau { .. });
        // Parameter groups: the trainable parameters by their rate's scale,
        // named by their layers.
        let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for p in model.params.iter().filter(|p| cfg.trainable.as_ref().is_none_or(|t| t.contains(&p.name))) {
            let scale = cfg.lr_scale.get(&p.name).copied().unwrap_or(1.0);
            let layers = groups.entry(format!("{scale}")).or_default();
            if !layers.contains(&p.layer) {
                layers.push(p.layer.clone());
            }
        }
        let stage = name.clone().unwrap_or_default();
        if let Some(n) = &name {
            markers.push(crate::plot::Marker { x: step0 as f64, label: format!("stage {n}") });
        }
        for (scale, layers) in &groups {
            let scale: f64 = scale.parse().unwrap_or(1.0);
            let group = layers.join(" ");
            let key = format!("{group} (×{scale})");
            let idx = match panels_series.iter().position(|s| s.name == key) {
                Some(i) => i,
                None => {
                    panels_series.push(crate::plot::Series { name: key.clone(), points: vec![] });
                    panels_series.len() - 1
                }
            };
            for t in 0..total {
                let rate =
                    scale * lr_at(&info.schedule, lr, Progress { step: t, steps_per_epoch: per, total_steps: total });
                let _ = writeln!(out, "{},{},{stage},{group},{scale},{rate:e}", step0 + t + 1, epoch0 + t / per + 1);
                panels_series[idx].points.push(((step0 + t + 1) as f64, rate));
            }
        }
        step0 += total;
        epoch0 += info.epochs;
    }
    if plateau {
        let _ = writeln!(
            err,
            "note: a plateau schedule cuts the rate when its metric stalls; shown is the rate before any cut"
        );
    }
    if let Some(svg) = svg {
        let panel = crate::plot::Panel {
            title: "learning rate per parameter group".into(),
            x_label: "step".into(),
            series: panels_series,
            markers,
            log_y: true,
        };
        crate::plot::svg(svg, &[panel])?;
        let _ = writeln!(err, "drawn: {}", svg.display());
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn export(
    path: &std::path::Path,
    only: Option<&str>,
    weights: &std::path::Path,
    merge: bool,
    to: Option<&std::path::Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    if !merge {
        return Err("export writes merged weights: say --merge".into());
    }
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let (job, _) = pick_job(&program, only, path)?;
    let Job::Finetune(f) = job else {
        return Err("export --merge takes a finetune with `lora` adapters; a train block has none".into());
    };
    if f.lora.is_empty() {
        return Err(format!("finetune `{}` has no `lora` adapters to merge", f.name));
    }
    let expected: Vec<(String, Vec<usize>)> =
        f.model.params.iter().map(|p| (p.name.clone(), p.shape.iter().map(|d| *d as usize).collect())).collect();
    let loaded = crate::checkpoint::load(weights).map_err(|e| e.to_string())?;
    let mut t = crate::checkpoint::validate(weights, loaded, &expected, &[]).map_err(|e| e.to_string())?;
    let merged = merge_lora(&f.model, &mut t)?;
    let target = to.map(std::path::Path::to_path_buf).unwrap_or_else(|| {
        let stem = weights.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        weights.with_file_name(format!("{stem}.merged.safetensors"))
    });
    // The source's metadata (vocabulary, CSV preprocessing) travels on.
    let mut meta = crate::checkpoint::metadata(weights).map_err(|e| e.to_string())?;
    meta.insert("model".to_string(), f.model.name.clone());
    crate::checkpoint::save(&target, &t, meta).map_err(|e| e.to_string())?;
    let _ = writeln!(out, "merged {merged} adapted layers into {} ({} tensors)", target.display(), t.len());
    Ok(0)
}

/// Folds every LoRA adapter of `model` into the weight it adapts,
/// `W + (alpha/rank)·B·A` (a dense layer's `weight`; an attention's
/// `in_proj_weight` and `out_proj.weight`), and drops the adapters. Returns
/// how many layers.
pub fn merge_lora(model: &ModelInfo, t: &mut crate::checkpoint::Tensors) -> Result<usize> {
    use modelc_compiler::check::layers::Layer;
    let mut merged = 0;
    for (i, node) in model.nodes.iter().enumerate() {
        let (l, pairs): (_, &[(&str, &str)]) = match &node.op {
            modelc_compiler::check::Op::Layer { layer: Layer::Dense { lora: Some(l), .. } } => (l, &[("weight", "")]),
            modelc_compiler::check::Op::Layer { layer: Layer::Attention { lora: Some(l), .. } } => {
                (l, &[("in_proj_weight", "in_proj."), ("out_proj.weight", "out_proj.")])
            }
            _ => continue,
        };
        let layer = model
            .params
            .iter()
            .find(|p| p.node == i)
            .map(|p| p.layer.clone())
            .ok_or("an adapted layer without parameters")?;
        for (weight, prefix) in pairs {
            let (a, b) = (format!("{layer}.{prefix}lora_A"), format!("{layer}.{prefix}lora_B"));
            let (Some((_, av)), Some((_, bv))) = (t.remove(&a), t.remove(&b)) else {
                return Err(format!("the checkpoint lacks `{a}` or `{b}`"));
            };
            let w =
                t.get_mut(&format!("{layer}.{weight}")).ok_or(format!("the checkpoint lacks `{layer}.{weight}`"))?;
            let (out_dim, in_dim, r) = (w.0[0], w.0[1], l.rank as usize);
            if av.len() != r * in_dim || bv.len() != out_dim * r {
                return Err(format!("`{a}` or `{b}` does not fit `{layer}.{weight}` {:?} at rank {r}", w.0));
            }
            let k = l.alpha / l.rank.max(1) as f64;
            for o in 0..out_dim {
                for j in 0..in_dim {
                    let s: f64 = (0..r).map(|q| bv[o * r + q] as f64 * av[q * in_dim + j] as f64).sum();
                    w.1[o * in_dim + j] = (w.1[o * in_dim + j] as f64 + k * s) as f32;
                }
            }
        }
        merged += 1;
    }
    Ok(merged)
}

#[allow(clippy::too_many_arguments)]
fn sample(
    path: &std::path::Path,
    only: Option<&str>,
    weights: &std::path::Path,
    prompt: &str,
    opts: &crate::sample::Options,
    cache: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    use modelc_compiler::check::train::DataSource;
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let (model, _) = select(&program, only)?;
    if !opts.temperature.is_finite() || opts.temperature < 0.0 {
        return Err(format!("--temperature {} must be 0 (greedy) or above", opts.temperature));
    }
    if opts.top_k == Some(0) {
        return Err("--top-k 0 leaves no token to draw".into());
    }
    // The vocabulary: the checkpoint's, else the spec's text source's.
    let spec_vocab = program.trains.iter().chain(program.finetunes.iter().map(|f| &f.settings)).find_map(|t| {
        match (&t.data, t.model == model.name) {
            (Some(DataSource::Text { vocab, .. }), true) => Some(crate::data::text::Vocab::from_name(vocab)),
            _ => None,
        }
    });
    let vocab = match (crate::train::vocab_of(weights)?, spec_vocab) {
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => {
            return Err(format!(
            "neither {} nor the spec says how tokens map to text: sampling needs a model trained on a `text` source",
            weights.display()
        ))
        }
    };
    let classes = model.nodes.iter().find_map(|n| match (&n.op, n.ty.dtype) {
        (modelc_compiler::check::Op::Target { .. }, modelc_compiler::check::types::DType::Class { classes }) => {
            Some(classes)
        }
        _ => None,
    });
    if classes.is_some_and(|c| c as usize != vocab.size()) {
        return Err(format!(
            "the model predicts {} classes, the `{}` vocabulary has {}",
            classes.unwrap_or(0),
            vocab.name(),
            vocab.size()
        ));
    }
    let expected: Vec<(String, Vec<usize>)> =
        model.params.iter().map(|p| (p.name.clone(), p.shape.iter().map(|d| *d as usize).collect())).collect();
    let loaded = crate::checkpoint::load(weights).map_err(|e| e.to_string())?;
    let tensors = crate::checkpoint::validate(weights, loaded, &expected, &[]).map_err(|e| e.to_string())?;
    let ids = vocab.encode(prompt.as_bytes(), std::path::Path::new("the prompt")).map_err(|e| match e {
        crate::data::DataError::Csv { line, column, .. } => format!(
            "the prompt:{line}:{column}: a character the model's `{}` vocabulary lacks (it has newline and printable ASCII)",
            vocab.name()
        ),
        other => other.to_string(),
    })?;
    let started = std::time::Instant::now();
    let mut engine = if cache {
        crate::sample::Engine::cached(&model, &tensors)?
    } else {
        crate::sample::Engine::window(&model, &tensors)?
    };
    let compiled = started.elapsed();
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    let started = std::time::Instant::now();
    // Raw bytes as they come (a `bytes` model's UTF-8 characters span
    // several tokens).
    let generated = crate::sample::generate(&mut engine, &ids, opts, |tok| {
        let _ = out.write_all(&[vocab.decode(tok)]);
        let _ = out.flush();
    })?;
    let secs = started.elapsed().as_secs_f64();
    let _ = writeln!(out);
    let _ = writeln!(
        err,
        "{} tokens in {:.2} s ({:.0} tokens/s; {}, compiled in {:.0} ms)",
        generated.len(),
        secs,
        generated.len() as f64 / secs.max(1e-9),
        if cache {
            format!("key/value cache of {} KiB", crate::sample::cache_bytes(&engine) / 1024)
        } else {
            "whole window per token, no cache".to_string()
        },
        compiled.as_secs_f64() * 1e3
    );
    Ok(0)
}

fn plot(log: &std::path::Path, svg: Option<&std::path::Path>, out: &mut dyn Write) -> Result<i32> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("cannot read {}: {e}", log.display()))?;
    let panels = crate::plot::log_panels(&text, log)?;
    let target = svg.map(std::path::Path::to_path_buf).unwrap_or_else(|| log.with_file_name("curves.svg"));
    crate::plot::svg(&target, &panels)?;
    let _ = writeln!(out, "drawn: {}", target.display());
    Ok(0)
}

/// What `eval` and `predict` start from: the model, its train block, an
/// executor holding the checkpoint's weights, and the preprocessing the
/// checkpoint carries.
struct Loaded {
    model: ModelInfo,
    info: modelc_compiler::check::TrainInfo,
    exec: Box<dyn crate::exec::Executor>,
    preprocess: Option<crate::data::csv::Preprocess>,
}

fn with_weights(
    program: &Program,
    only: Option<&str>,
    weights: &std::path::Path,
    kind: ExecutorKind,
) -> Result<Loaded> {
    let (model, cfg) = select(program, only)?;
    let info = program
        .trains
        .iter()
        .find(|t| t.model == model.name)
        .ok_or_else(|| format!("`{}` has no train block to take the data from", model.name))?
        .clone();
    let cfg = cfg.ok_or("the train block has no optimizer")?;
    crate::resources::check_fits(&model, &cfg, info.batch, crate::resources::available())?;
    let expected: Vec<(String, Vec<usize>)> =
        model.params.iter().map(|p| (p.name.clone(), p.shape.iter().map(|d| *d as usize).collect())).collect();
    let loaded = crate::checkpoint::load(weights).map_err(|e| e.to_string())?;
    let tensors = crate::checkpoint::validate(weights, loaded, &expected, &[]).map_err(|e| e.to_string())?;
    let preprocess = crate::train::preprocess_of(weights)?;
    let exec = executor(kind, &model, &cfg, &tensors)?;
    Ok(Loaded { model, info, exec, preprocess })
}

#[allow(clippy::too_many_arguments)]
fn eval(
    path: &std::path::Path,
    only: Option<&str>,
    weights: &std::path::Path,
    limit: Option<usize>,
    data: Option<PathBuf>,
    kind: ExecutorKind,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let Loaded { model, info, mut exec, preprocess } = with_weights(&program, only, weights, kind)?;
    let source = info.data.as_ref().ok_or("the train block has no data")?;
    let is_csv = matches!(source, modelc_compiler::check::train::DataSource::Csv { .. });
    if is_csv && preprocess.is_none() {
        return Err(format!(
            "{} carries no preprocessing record (columns, classes, scaling), which a model trained on CSV data needs; it was written by an older modelc: train again",
            weights.display()
        ));
    }
    if let modelc_compiler::check::train::DataSource::Text { vocab, .. } = source {
        if let Some(v) = crate::train::vocab_of(weights)? {
            if v.name() != vocab {
                return Err(format!(
                    "{} was trained on `vocab: {}` text, the spec reads `vocab: {vocab}`",
                    weights.display(),
                    v.name()
                ));
            }
        }
    }
    let (name, mut set) = match &data {
        // A file named on the command line is test data, all of it.
        Some(file) => ("test", crate::train::load_test_file(source, &model, file, preprocess.as_ref())?),
        None => {
            let opts = crate::train::Options { preprocess: preprocess.clone(), ..Default::default() };
            let sets = crate::train::load(source, &model, &info, &opts)?;
            match (sets.test, sets.val) {
                (Some(t), _) => ("test", t),
                (None, Some(v)) => ("validation", v),
                (None, None) => ("training", sets.train),
            }
        }
    };
    if let Some(n) = limit.filter(|n| *n < set.len) {
        set = set.slice(&(0..n).collect::<Vec<_>>());
    }
    let batch = info.batch.max(1) as usize;
    let e = crate::train::evaluate(exec.as_mut(), &set, batch)?;
    if !e.loss.is_finite() {
        return Err(format!(
            "the loss on the {name} data is {}: the checkpoint's weights give non-finite outputs",
            e.loss
        ));
    }
    let _ = writeln!(out, "{} on {} {name} samples: loss {:.4}", model.name, set.len, e.loss);
    if crate::train::bits_per_character(&model, &info) {
        let _ = writeln!(out, "bits/char  {:.4}", e.loss / std::f64::consts::LN_2);
    }
    if let Some(a) = e.accuracy {
        let _ = writeln!(out, "accuracy   {:.2}%", 100.0 * a);
    }
    if let Some(c) = &e.confusion {
        use modelc_compiler::check::layers::Average;
        let _ = writeln!(
            out,
            "precision  {:.2}%  recall {:.2}%  f1 {:.2}%  (macro averages over the classes present)",
            100.0 * c.precision(Average::Macro),
            100.0 * c.recall(Average::Macro),
            100.0 * c.f1(Average::Macro)
        );
        if c.classes <= 20 {
            let _ = writeln!(out, "confusion matrix (rows: labels, columns: predictions)");
            let class = |k: usize| preprocess.as_ref().map_or(k.to_string(), |p| p.class_name(k));
            for l in 0..c.classes {
                let row: Vec<String> = (0..c.classes).map(|p| format!("{:>6}", c.counts[l * c.classes + p])).collect();
                let _ = writeln!(out, "{:>4} {}", class(l), row.join(""));
            }
        }
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn predict(
    path: &std::path::Path,
    only: Option<&str>,
    weights: &std::path::Path,
    input: &std::path::Path,
    limit: Option<usize>,
    kind: ExecutorKind,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let Loaded { model, info, mut exec, preprocess } = with_weights(&program, only, weights, kind)?;
    let want = model.nodes[model.inputs[0]].ty.shape.sample_elements() as usize;
    let mut set = if crate::data::csv::is_csv(input) {
        let p = preprocess.as_ref().ok_or_else(|| {
            format!(
                "{} carries no preprocessing record (columns, scaling), so it cannot read CSV input: models trained on CSV data carry one; for image models give an IDX file",
                weights.display()
            )
        })?;
        let text = crate::data::csv::read(input).map_err(|e| e.to_string())?;
        crate::data::csv::read_features(input, &text, p).map_err(|e| e.to_string())?
    } else {
        crate::data::mnist::read_images(input, Some(want)).map_err(|e| e.to_string())?
    };
    if set.width != want {
        return Err(format!("{}: samples have {} values, the model's input takes {want}", input.display(), set.width));
    }
    if let Some(n) = limit.filter(|n| *n < set.len) {
        set = set.slice(&(0..n).collect::<Vec<_>>());
    }
    // Labels are not known: evaluate against class 0 and keep the predictions.
    let classes = match model.nodes[model.targets[0]].ty.dtype {
        modelc_compiler::check::types::DType::Class { classes } => classes as u32,
        _ => return Err("predict needs a model with a class target".into()),
    };
    set.labels = crate::data::Labels::Classes { values: vec![0; set.len], classes };
    let batch = info.batch.max(1) as usize;
    let order: Vec<usize> = (0..set.len).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut index = 0;
    for idx in crate::data::batches(&order, batch) {
        set.gather(idx, &mut x, &mut y);
        let s = exec.evaluate(&crate::exec::Batch { n: idx.len(), features: &x, labels: &y })?;
        for p in &s.predictions {
            let name = preprocess.as_ref().map_or_else(|| p.to_string(), |pre| pre.class_name(*p as usize));
            let _ = writeln!(out, "{index}\t{name}");
            index += 1;
        }
    }
    Ok(0)
}

fn emit(
    path: &std::path::Path,
    only: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let (model, cfg) = select(&program, only)?;
    let g = verify::verify(build_graph(&model.name, &model, cfg.as_ref(), Stage::Optimized)?)?;
    let kernels = modelc_compiler::kernel::fusion::fuse(&g);
    let mut jit = modelc_compiler::backend::cpu::clif::Jit::new()?;
    let (mut lowered, mut gemms, mut copies) = (0, 0, 0);
    use modelc_compiler::kernel::fusion::KernelKind;
    for (k, kernel) in kernels.iter().enumerate() {
        let ops: Vec<String> =
            kernel.nodes.iter().map(|n| modelc_compiler::ir::print::op_text(&g.node(*n).op)).collect();
        match kernel.kind {
            KernelKind::Elementwise => {
                let text = jit.clif(&g, kernel).map_err(|why| format!("kernel {k} cannot be lowered: {why}"))?;
                lowered += 1;
                let _ = writeln!(out, "; kernel {k}: {}\n{text}", ops.join(", "));
            }
            KernelKind::Gemm => {
                gemms += 1;
                let _ = writeln!(
                    out,
                    "; kernel {k}: {} — a call of the gemm crate (transposes as strides)\n",
                    ops.join(", ")
                );
            }
            KernelKind::Copy => {
                copies += 1;
                let _ = writeln!(out, "; kernel {k}: {} — a copy loop of the executor\n", ops[0]);
            }
        }
    }
    let _ = writeln!(
        out,
        "; {} kernels: {lowered} Cranelift functions, {gemms} gemm calls, {copies} copy loops",
        kernels.len()
    );
    Ok(0)
}

/// `modelc emit --target ptx`: the PTX module of the optimized training
/// step's elementwise kernels, then a line per kernel not rendered and why.
fn emit_ptx(
    path: &std::path::Path,
    only: Option<&str>,
    sm: u32,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<i32> {
    if !(50..=120).contains(&sm) {
        return Err(format!("--sm {sm} is not a compute capability (80 for A100, 90 for H100)"));
    }
    if !(70..=90).contains(&sm) {
        return Err(format!(
            "--sm {sm}: modelc's PTX (ISA {}) targets sm_70 to sm_90; for a later GPU emit sm_90, which its driver compiles",
            modelc_compiler::backend::ptx::PTX_VERSION
        ));
    }
    let Some((_, program)) = load(path, err, color)? else { return Ok(1) };
    let (model, cfg) = select(&program, only)?;
    let g = verify::verify(build_graph(&model.name, &model, cfg.as_ref(), Stage::Optimized)?)?;
    let kernels = modelc_compiler::kernel::fusion::fuse(&g);
    let (text, each) = modelc_compiler::backend::ptx::module(&g, &kernels, sm);
    let _ = write!(out, "{text}");
    let rendered = each.iter().filter(|r| r.is_ok()).count();
    for (k, r) in each.iter().enumerate() {
        if let Err(why) = r {
            let ops: Vec<String> =
                kernels[k].nodes.iter().map(|n| modelc_compiler::ir::print::op_text(&g.node(*n).op)).collect();
            // ptxas reads ASCII only: matmul[abᵀ] becomes matmul[ab^T].
            let ops = ops.join(", ").replace('ᵀ', "^T").replace(|c: char| !c.is_ascii(), "?");
            let _ = writeln!(out, "// kernel {k} ({ops}): {why}");
        }
    }
    let _ = writeln!(out, "// {} kernels: {rendered} rendered to PTX", kernels.len());
    Ok(0)
}

/// The clap description of the command line (for `--help` checks).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
