//! The `.model` language front end: the pest grammar, the AST with spans, and
//! syntax errors.
//!
//! This crate knows nothing of layers, shapes or graphs. [`parse`] never fails
//! and never panics: it returns the AST of everything that parsed together with
//! every syntax error it found.

pub mod ast;
mod error;
mod parse;

pub use error::SyntaxError;
pub use parse::parse;
