//! Syntax errors. Each carries the span it is about; the caller attaches the
//! source text when rendering.

use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

#[derive(Clone, Debug, Error, Diagnostic, PartialEq)]
pub enum SyntaxError {
    #[error("syntax error: expected {expected}, found {found}")]
    #[diagnostic(code(E0100))]
    Unexpected {
        expected: String,
        found: String,
        #[label("expected {expected} here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unclosed `{{`: this block is never closed")]
    #[diagnostic(code(E0101), help("add the missing `}}` where the block ends"))]
    Unclosed {
        #[label("this `{{` has no matching `}}`")]
        open: SourceSpan,
    },

    #[error("unexpected `}}`: there is no open block to close")]
    #[diagnostic(code(E0102), help("remove it, or look for a `{{` missing above"))]
    StrayBrace {
        #[label("nothing to close")]
        span: SourceSpan,
    },

    #[error("number `{text}` is out of range")]
    #[diagnostic(code(E0103))]
    NumberOutOfRange {
        text: String,
        #[label("too large")]
        span: SourceSpan,
    },
}

impl SyntaxError {
    /// The primary span: where the error is.
    pub fn span(&self) -> SourceSpan {
        match self {
            SyntaxError::Unexpected { span, .. }
            | SyntaxError::StrayBrace { span }
            | SyntaxError::NumberOutOfRange { span, .. } => *span,
            SyntaxError::Unclosed { open, .. } => *open,
        }
    }
}
