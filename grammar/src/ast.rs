//! The abstract syntax tree of a `.model` file.
//!
//! Every node carries a [`Span`] of byte offsets into its source file. The AST
//! is purely syntactic: names are not resolved and nothing is known of shapes,
//! layers or settings; that is the compiler's job. A piece of source that did
//! not parse appears as an `Error` node, so later stages can tell "missing"
//! from "broken" and avoid reporting follow-on errors.

use std::fmt;

/// A half-open range of byte offsets `[start, end)` into one source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }

    pub fn len(self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(s: Span) -> Self {
        (s.start, s.len()).into()
    }
}

impl From<pest::Span<'_>> for Span {
    fn from(s: pest::Span<'_>) -> Self {
        Span::new(s.start(), s.end())
    }
}

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A whole file: its items in source order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `import "other.model"`
    Import {
        path: String,
        span: Span,
    },
    Model(Model),
    Train(Train),
    Finetune(Finetune),
    /// A top-level piece that did not parse (already reported).
    Error {
        first_word: Option<Ident>,
        span: Span,
    },
}

/// `model NAME { … }`
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub name: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// A statement of a model body.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input NAME: TYPE`
    Input { name: Ident, ty: TypeExpr, span: Span },
    /// `target NAME: TYPE`
    Target { name: Ident, ty: TypeExpr, span: Span },
    /// `NAME = EXPR`
    Bind { name: Ident, value: Expr, span: Span },
    /// `repeat N [as NAME] { … }`
    Repeat { count: u64, count_span: Span, label: Option<Ident>, body: Vec<Stmt>, span: Span },
    /// `loss EXPR`
    Loss { value: Expr, span: Span },
    /// `metric [NAME =] EXPR`
    Metric { name: Option<Ident>, value: Expr, span: Span },
    /// A statement that did not parse (already reported). `defines` is the
    /// name it seemed to define, so uses of that name are not reported again.
    Error { first_word: Option<Ident>, defines: Option<Ident>, span: Span },
}

/// A declared type: `f32[1, 28, 28]`, `i32[128]`, `class[10]`, `class[96] per token`.
#[derive(Clone, Debug, PartialEq)]
pub enum TypeExpr {
    Tensor { dtype: Ident, dims: Vec<(u64, Span)>, span: Span },
    Class { classes: u64, classes_span: Span, per_token: bool, span: Span },
}

impl TypeExpr {
    pub fn span(&self) -> Span {
        match self {
            TypeExpr::Tensor { span, .. } | TypeExpr::Class { span, .. } => *span,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationUnit {
    Epochs,
    Steps,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Name(Ident),
    /// A numeric literal; `is_int` when written without `.` or exponent.
    Number {
        value: f64,
        is_int: bool,
    },
    Str(String),
    List(Vec<Expr>),
    /// `a..b`, inclusive of both ends.
    Range {
        start: u64,
        end: u64,
    },
    /// `5 epochs`, `100 steps`
    Duration {
        value: f64,
        is_int: bool,
        unit: DurationUnit,
    },
    Neg(Box<Expr>),
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Call(Call),
    /// `input |> stage`: the stage is a call (or a bare name, stored as a call
    /// with no arguments) whose first tensor input is `input`.
    Pipe {
        input: Box<Expr>,
        stage: Call,
    },
}

/// `callee(args…)`, or a bare layer name in a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub callee: Ident,
    pub args: Vec<Arg>,
    /// False for a bare name in a pipeline (`|> relu`).
    pub parens: bool,
    pub span: Span,
}

/// A positional (`128`) or keyword (`kernel: 5`) argument.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

/// `train MODEL { settings }`
#[derive(Clone, Debug, PartialEq)]
pub struct Train {
    pub model: Ident,
    pub settings: Vec<Setting>,
    pub span: Span,
}

/// `key args…` inside a train block, a stage or a finetune block, or a stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Item {
        key: Ident,
        args: Vec<Arg>,
        span: Span,
    },
    Stage(Stage),
    /// A setting that did not parse (already reported).
    Error {
        first_word: Option<Ident>,
        span: Span,
    },
}

/// `stage NAME { settings }`
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub name: Ident,
    pub settings: Vec<Setting>,
    pub span: Span,
}

/// `finetune NAME from BASE { … }`
#[derive(Clone, Debug, PartialEq)]
pub struct Finetune {
    pub name: Ident,
    pub base: Ident,
    pub body: Vec<FinetuneStmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FinetuneStmt {
    /// `target NAME: TYPE`: replaces the base model's target.
    Target {
        name: Ident,
        ty: TypeExpr,
        span: Span,
    },
    /// `replace NAME = EXPR`: redefines a binding of the base model.
    Replace {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// `map "FROM" -> "TO"`: tensors of the weights file named by FROM (a
    /// `*` matches any text) are loaded as TO (its `*` gets the same text).
    Map {
        from: String,
        to: String,
        span: Span,
    },
    Setting(Setting),
}
