//! modelc's compiler: semantic checking of `.model` programs (names, arguments,
//! shapes, sections), model statistics, the graph IR and lowering, autodiff,
//! the training step, optimization passes, the kernel stage (fusion and
//! memory planning), the f64 reference
//! interpreter, gradient checks, and the Cranelift/gemm CPU backend.
//!
//! Library code returns diagnostics as values ([`diag::Located`]); only the
//! binary renders them.

pub mod autodiff;
pub mod backend;
pub mod check;
pub mod diag;
pub mod gradcheck;
pub mod interp;
pub mod ir;
pub mod kernel;
pub mod passes;
pub mod pipeline;
pub mod rng;
pub mod source;
pub mod step;
pub mod summary;

pub use check::{check, Program};
pub use diag::{CheckError, Error, Located};
pub use source::{FileId, FsLoader, Loader, Sources};

/// Loads `path` and its imports from disk and checks them all.
pub fn check_path(path: &std::path::Path) -> Result<(Sources, Program, Vec<Located>), String> {
    let text = FsLoader.load(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(check_text(&path.to_string_lossy(), text, &FsLoader))
}

/// Checks `text` as the file `name`, reading imports through `loader`.
pub fn check_text(name: &str, text: String, loader: &dyn Loader) -> (Sources, Program, Vec<Located>) {
    let (sources, mut errors) = Sources::load(name, text, loader);
    let (program, check_errors) = check::check(&sources);
    errors.extend(check_errors);
    errors.sort_by_key(|e| (e.file, e.offset()));
    errors.dedup();
    (sources, program, errors)
}
