//! The integration tests: one binary, one module per concern.

mod backend;
mod checker;
mod checkpoint;
mod cli;
mod compiled;
mod cuda;
mod data;
mod finetune;
mod ir;
mod limits;
mod metrics;
mod optim;
mod passes;
mod props;
mod ptx;
mod runs;
mod sample;
mod specs;
mod tabular;
mod train;

use std::path::Path;

use modelc_compiler::{FsLoader, Located, Program, Sources};

/// Checks a spec by its path relative to the project root, so rendered
/// diagnostics name it the same way on every machine.
pub fn check_spec(rel: &Path) -> (Sources, Program, Vec<Located>) {
    let name = rel.to_string_lossy().replace('\\', "/");
    let text = std::fs::read_to_string(rel).unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
    modelc_compiler::check_text(&name, text, &FsLoader)
}

/// The path of `abs` relative to the project root.
pub fn relative(abs: &Path) -> &Path {
    abs.strip_prefix(env!("CARGO_MANIFEST_DIR")).expect("spec inside the project")
}

/// Runs the CLI in-process; returns (exit code, stdout, stderr).
pub fn modelc(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("modelc").chain(args.iter().copied()).map(Into::into);
    let code = modelc::cli::run(argv, &mut out, &mut err, false);
    (code, String::from_utf8(out).expect("utf-8 stdout"), String::from_utf8(err).expect("utf-8 stderr"))
}
