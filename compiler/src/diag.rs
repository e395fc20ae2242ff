//! User-facing errors of the checker: one variant per mistake, each with a
//! code, a labelled span and, where one is clear, a help line.
//!
//! Codes: E01xx syntax (in the grammar crate), E02xx names, E03xx arguments
//! and settings, E04xx shapes and types, E05xx sections (model, train,
//! finetune). Internal invariant failures are not here: they are compiler bugs
//! and say so.

use miette::{Diagnostic, SourceSpan};
use modelc_grammar::SyntaxError;
use thiserror::Error;

use crate::source::FileId;

#[derive(Clone, Debug, Error, Diagnostic, PartialEq)]
pub enum CheckError {
    // ------------------------------------------------------------ names
    #[error("`{name}` is not defined")]
    #[diagnostic(code(E0200))]
    Undefined {
        name: String,
        #[label("not defined")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{what} `{name}` is defined twice")]
    #[diagnostic(code(E0201), help("rename one of them"))]
    Duplicate {
        what: &'static str,
        name: String,
        #[label("defined again here")]
        span: SourceSpan,
        #[label("first defined here")]
        first: Option<SourceSpan>,
    },

    #[error("`{name}` is used before it is defined")]
    #[diagnostic(code(E0202), help("move the definition of `{name}` above this line"))]
    UsedBeforeDefinition {
        name: String,
        #[label("used here")]
        span: SourceSpan,
        #[label("defined later, here")]
        def: SourceSpan,
    },

    #[error("`{name}` is defined only inside a `repeat` block")]
    #[diagnostic(
        code(E0203),
        help("names first bound inside `repeat` are local to one iteration; bind `{name}` before the block to carry it out")
    )]
    LoopLocal {
        name: String,
        #[label("not visible here")]
        span: SourceSpan,
        #[label("bound inside the block")]
        def: SourceSpan,
    },

    #[error("unknown {kind} `{name}`")]
    #[diagnostic(code(E0204))]
    Unknown {
        kind: &'static str,
        name: String,
        #[label("unknown {kind}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{name}` is {actual}, not {expected}")]
    #[diagnostic(code(E0205))]
    WrongKind {
        name: String,
        actual: String,
        expected: &'static str,
        #[label("used as {expected}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("cannot import \"{path}\": {reason}")]
    #[diagnostic(code(E0206))]
    Import {
        path: String,
        reason: String,
        #[label("imported here")]
        span: SourceSpan,
    },

    #[error("model `{model}` has no layer named `{name}`")]
    #[diagnostic(code(E0207))]
    NoSuchLayer {
        name: String,
        model: String,
        #[label("not a layer of `{model}`")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{name}` has no parameters to {action}")]
    #[diagnostic(code(E0208))]
    NoParameters {
        name: String,
        action: &'static str,
        #[label("no trainable parameters in `{name}`")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{name}` is {kind}: LoRA adapts dense and attention layers")]
    #[diagnostic(code(E0209))]
    NotAdaptable {
        name: String,
        kind: String,
        #[label("{kind}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    // ------------------------------------------------------------ arguments
    #[error("{callee} has no argument `{name}`")]
    #[diagnostic(code(E0300))]
    UnknownArgument {
        callee: String,
        name: String,
        #[label("unknown argument")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("argument `{name}` of {callee} expects {expected}, found {found}")]
    #[diagnostic(code(E0301))]
    WrongType {
        callee: String,
        name: String,
        expected: String,
        found: String,
        #[label("expected {expected}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{callee} needs argument `{name}`")]
    #[diagnostic(code(E0302))]
    MissingArgument {
        callee: String,
        name: String,
        #[label("`{name}` missing")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("argument `{name}` of {callee} is out of range: {value} is not {range}")]
    #[diagnostic(code(E0303))]
    OutOfRange {
        callee: String,
        name: String,
        value: String,
        range: String,
        #[label("must be {range}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{callee} takes at most {max} positional argument(s)")]
    #[diagnostic(code(E0304))]
    TooManyArguments {
        callee: String,
        max: usize,
        #[label("extra argument")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("argument `{name}` is given twice")]
    #[diagnostic(code(E0305), help("remove one of them"))]
    DuplicateArgument {
        name: String,
        #[label("given again here")]
        span: SourceSpan,
        #[label("first given here")]
        first: SourceSpan,
    },

    #[error("{callee} takes {expected}, found {found}")]
    #[diagnostic(code(E0306))]
    InputCount {
        callee: String,
        expected: String,
        found: usize,
        #[label("here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("setting `{key}` is given twice")]
    #[diagnostic(code(E0307), help("remove one of them"))]
    DuplicateSetting {
        key: String,
        #[label("given again here")]
        span: SourceSpan,
        #[label("first given here")]
        first: SourceSpan,
    },

    #[error("{block} is missing `{key}`")]
    #[diagnostic(code(E0308))]
    MissingSetting {
        block: String,
        key: &'static str,
        #[label("no `{key}` here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{key}` is not allowed in {block}")]
    #[diagnostic(code(E0309))]
    SettingNotAllowed {
        key: String,
        block: String,
        #[label("not allowed here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{message}")]
    #[diagnostic(code(E0310))]
    Conflict {
        message: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[label("conflicts with this")]
        other: Option<SourceSpan>,
        #[help]
        help: Option<String>,
    },

    #[error("`map \"{from}\" -> \"{to}\"`: each side takes at most one `*`, and both the same number")]
    #[diagnostic(
        code(E0311),
        help("e.g. `map \"features.0.*\" -> \"conv1.*\"` or `map \"fc.weight\" -> \"logits.weight\"`")
    )]
    BadMap {
        from: String,
        to: String,
        #[label("this rename")]
        span: SourceSpan,
    },

    // ------------------------------------------------------------ shapes and types
    #[error("shape mismatch in `{op}`: {left} and {right} do not broadcast")]
    #[diagnostic(code(E0400))]
    ShapeMismatch {
        op: String,
        left: String,
        right: String,
        #[label("{left}")]
        left_span: SourceSpan,
        #[label("{right}")]
        right_span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{layer} expects {expected}, but its input is {found}")]
    #[diagnostic(code(E0401))]
    BadInputShape {
        layer: String,
        expected: String,
        found: String,
        #[label("input is {found}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{layer} expects {expected} input, but its input is {found}")]
    #[diagnostic(code(E0402))]
    DTypeMismatch {
        layer: String,
        expected: &'static str,
        found: String,
        #[label("{found} input")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{func}: {reason}")]
    #[diagnostic(code(E0403))]
    TargetMismatch {
        func: String,
        reason: String,
        #[label("prediction is {prediction}")]
        span: SourceSpan,
        prediction: String,
        #[label("declared here")]
        target: Option<SourceSpan>,
        #[help]
        help: Option<String>,
    },

    #[error("the loss must be a scalar built from loss functions, but this is {found}")]
    #[diagnostic(
        code(E0404),
        help("use a loss function, e.g. `loss cross_entropy(logits, label)` or `loss mse(pred, y)`")
    )]
    NotALoss {
        found: String,
        #[label("not a loss")]
        span: SourceSpan,
    },

    #[error("`{name}` would hold {elements} elements ({bytes}): more than any machine's memory")]
    #[diagnostic(code(E0405), help("tensors are limited to 2^40 elements (4 TiB of f32); use smaller layers"))]
    TooLarge {
        /// The parameter or the layer's output, by name.
        name: String,
        elements: String,
        bytes: String,
        #[label("{name}")]
        span: SourceSpan,
    },

    // ------------------------------------------------------------ sections
    #[error("model `{model}` has no {what}")]
    #[diagnostic(code(E0500))]
    ModelMissing {
        model: String,
        what: &'static str,
        #[label("in this model")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{what} is declared twice")]
    #[diagnostic(code(E0501))]
    DeclaredTwice {
        what: String,
        #[label("declared again here")]
        span: SourceSpan,
        #[label("first declared here")]
        first: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("data source {source_name} does not fit model `{model}`: {reason}")]
    #[diagnostic(code(E0502))]
    DataMismatch {
        source_name: String,
        model: String,
        reason: String,
        #[label("this data")]
        span: SourceSpan,
        #[label("declared here")]
        decl: Option<SourceSpan>,
        #[help]
        help: Option<String>,
    },

    #[error("nothing is trainable in stage `{stage}`")]
    #[diagnostic(code(E0503), help("name the layers to train with `train` or `unfreeze`"))]
    NothingTrainable {
        stage: String,
        #[label("every parameter is frozen here")]
        span: SourceSpan,
    },
}

/// One diagnostic of either kind, located in a file.
#[derive(Clone, Debug, Error, Diagnostic, PartialEq)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Syntax(#[from] SyntaxError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Check(#[from] CheckError),
}

/// A diagnostic and the file it points into.
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub file: FileId,
    pub error: Error,
}

impl Located {
    /// The error code, e.g. `E0200`.
    pub fn code(&self) -> String {
        self.error.code().map(|c| c.to_string()).unwrap_or_default()
    }

    /// Byte offset of the primary label.
    pub fn offset(&self) -> usize {
        self.error.labels().and_then(|mut l| l.next()).map(|l| l.offset()).unwrap_or(0)
    }
}

/// "did you mean `x`?" for the candidate closest to `name`, if any is close.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate closest to `name` by edit distance, if close enough to be a
/// likely typo (case is ignored).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= limit || (c.len() >= 4 && lower.starts_with(&c.to_ascii_lowercase())))
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c)
}
