//! Checks one model body: resolves names, unrolls `repeat`, binds every call's
//! arguments, infers every shape, and names every parameter. The result is a
//! [`ModelInfo`]: a list of typed nodes in definition order (so already
//! topologically sorted) that later stages lower to the graph IR.

use std::collections::{BTreeMap, HashMap, HashSet};

use modelc_grammar::ast::{self, Arg, BinOp, Call, Expr, ExprKind, Span, Stmt, TypeExpr};

use super::args::{self, constant, Value};
use super::layers::{self, Inputs, Kind, Layer, Loss, Metric};
use super::types::{DType, Dim, Shape, TensorType};
use crate::diag::{did_you_mean, CheckError, Error, Located};
use crate::source::FileId;

/// The most iterations one `repeat` may have.
const MAX_REPEAT: u64 = 1024;
/// The most nodes one model may unroll to.
const MAX_NODES: usize = 100_000;

/// What a node computes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    Input { name: String },
    Target { name: String, per_token: bool },
    Const { value: f64 },
    Neg,
    Binary { op: &'static str },
    Layer { layer: Layer },
    Loss { loss: Loss },
    Metric { metric: Metric },
}

/// One value of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub ty: TensorType,
    /// The file and span of the expression that made it.
    pub file: FileId,
    pub span: Span,
    /// The layer path that owns it: `fc1`, `hidden.2`, `blocks.0.x` (for
    /// parameterless layers, the binding's path).
    pub path: String,
}

/// One trainable tensor: `fc1.weight` with PyTorch's layout.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<u64>,
    /// The layer path the parameter belongs to (`fc1`).
    pub layer: String,
    /// The node that uses it.
    #[serde(skip)]
    pub node: usize,
}

impl ParamInfo {
    pub fn elements(&self) -> u64 {
        super::types::product(&self.shape)
    }
}

/// A checked model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub file: FileId,
    pub span: Span,
    pub nodes: Vec<Node>,
    pub params: Vec<ParamInfo>,
    pub inputs: Vec<usize>,
    pub targets: Vec<usize>,
    pub loss: Option<usize>,
    /// (name, node)
    pub metrics: Vec<(String, usize)>,
    /// Every binding with its span and node, top level only (for finetuning).
    pub bindings: BTreeMap<String, (usize, Span)>,
    /// True when checking the model reported errors (its data are partial).
    pub has_errors: bool,
}

impl ModelInfo {
    pub fn param_count(&self) -> u64 {
        self.params.iter().fold(0u64, |a, p| a.saturating_add(p.elements()))
    }
}

/// Changes a finetune makes to its base model.
#[derive(Default)]
pub struct Overrides<'a> {
    pub file: Option<FileId>,
    /// binding name → new expression (in the finetune's file)
    pub replace: HashMap<String, &'a Expr>,
    /// target name → new type (in the finetune's file)
    pub targets: HashMap<String, &'a TypeExpr>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EntryKind {
    Input,
    Target,
    Value,
}

#[derive(Clone, Debug)]
struct Entry {
    /// `None` when the definition was broken (already reported).
    node: Option<usize>,
    kind: EntryKind,
}

struct Scope {
    names: HashMap<String, Entry>,
    in_repeat: bool,
}

/// Where an expression is evaluated: losses and targets are only allowed in
/// loss and metric declarations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Layer,
    Loss,
    Metric,
}

/// Naming state for the binding being evaluated.
struct BindNaming {
    scope: String,
    layer_calls: usize,
    param_layers: usize,
    next: usize,
}

pub struct ModelChecker<'a> {
    file: FileId,
    stmt_file: FileId,
    errors: Vec<Located>,
    nodes: Vec<Node>,
    params: Vec<ParamInfo>,
    scopes: Vec<Scope>,
    /// First definition of every name anywhere in the body (top level).
    defs: HashMap<String, Span>,
    /// Names first defined inside repeat bodies.
    loop_defs: HashMap<String, Span>,
    prefix: String,
    used_scopes: HashSet<String>,
    naming: Option<BindNaming>,
    repeats: usize,
    inputs: Vec<usize>,
    targets: Vec<usize>,
    loss: Option<(usize, Span)>,
    metrics: Vec<(String, usize, Span)>,
    bindings: BTreeMap<String, (usize, Span)>,
    overrides: Overrides<'a>,
    /// A statement that did not parse began with `loss`: do not also say the
    /// model has no loss.
    broken_loss: bool,
    broken_input: bool,
    broken_any: bool,
    too_big: bool,
    /// Statements checked so far, `repeat` bodies counted once per iteration.
    work: usize,
    /// (prediction, target) pairs already reported as mismatched.
    reported: HashSet<(usize, usize)>,
    /// Per-token targets whose label shape a prediction has set.
    token_shapes: std::collections::HashMap<usize, Shape>,
}

impl<'a> ModelChecker<'a> {
    pub fn new(file: FileId, overrides: Overrides<'a>) -> Self {
        ModelChecker {
            file,
            stmt_file: file,
            errors: Vec::new(),
            nodes: Vec::new(),
            params: Vec::new(),
            scopes: vec![Scope { names: HashMap::new(), in_repeat: false }],
            defs: HashMap::new(),
            loop_defs: HashMap::new(),
            prefix: String::new(),
            used_scopes: HashSet::new(),
            naming: None,
            repeats: 0,
            inputs: Vec::new(),
            targets: Vec::new(),
            loss: None,
            metrics: Vec::new(),
            bindings: BTreeMap::new(),
            overrides,
            broken_loss: false,
            broken_input: false,
            broken_any: false,
            too_big: false,
            work: 0,
            reported: HashSet::new(),
            token_shapes: std::collections::HashMap::new(),
        }
    }

    /// Checks `model`; returns the model (if anything usable came out) and errors.
    pub fn check(mut self, model: &ast::Model) -> (ModelInfo, Vec<Located>) {
        collect_defs(&model.body, false, &mut self.defs, &mut self.loop_defs);
        self.stmts(&model.body);
        if self.inputs.is_empty() && !self.broken_input && !self.too_big {
            self.err(CheckError::ModelMissing {
                model: model.name.name.clone(),
                what: "input",
                span: model.name.span.into(),
                help: Some("declare one, e.g. `input image: f32[784]`".into()),
            });
        }
        if self.loss.is_none() && !self.broken_loss && !self.too_big {
            self.err(CheckError::ModelMissing {
                model: model.name.name.clone(),
                what: "loss",
                span: model.name.span.into(),
                help: Some("declare one, e.g. `loss cross_entropy(logits, label)`".into()),
            });
        }
        let has_errors = !self.errors.is_empty() || self.broken_input || self.broken_loss || self.broken_any;
        let info = ModelInfo {
            has_errors,
            name: model.name.name.clone(),
            file: self.file,
            span: model.span,
            nodes: self.nodes,
            params: self.params,
            inputs: self.inputs,
            targets: self.targets,
            loss: self.loss.map(|l| l.0),
            metrics: self.metrics.into_iter().map(|(n, i, _)| (n, i)).collect(),
            bindings: self.bindings,
        };
        (info, self.errors)
    }

    fn err(&mut self, e: CheckError) {
        self.errors.push(Located { file: self.stmt_file, error: Error::Check(e) });
    }

    // ------------------------------------------------------------ statements

    fn stmts(&mut self, body: &[Stmt]) {
        for s in body {
            if self.too_big {
                return;
            }
            // Unrolled statements count too: nested `repeat`s of statements
            // that make no nodes must not run (or allocate) without bound.
            self.work += 1;
            if self.work > MAX_NODES {
                self.too_big = true;
                self.err(CheckError::OutOfRange {
                    callee: "the model".into(),
                    name: "size".into(),
                    value: format!("more than {MAX_NODES} unrolled statements"),
                    range: format!("at most {MAX_NODES} statements once `repeat` is unrolled"),
                    span: stmt_span(s).into(),
                    help: Some("lower the `repeat` counts".into()),
                });
                return;
            }
            self.stmt(s);
        }
    }

    fn in_repeat(&self) -> bool {
        self.scopes.last().is_some_and(|s| s.in_repeat)
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Input { name, ty, span } => {
                if self.not_in_repeat("input", *span) {
                    return;
                }
                let t = self.declared_type(ty, false);
                let node = t.map(|t| self.push(Op::Input { name: name.name.clone() }, vec![], t, *span, &name.name));
                if let Some(n) = node {
                    self.inputs.push(n);
                }
                self.define(name, node, EntryKind::Input);
            }
            Stmt::Target { name, ty, span } => {
                if self.not_in_repeat("target", *span) {
                    return;
                }
                let over = self.overrides.targets.get(&name.name).copied();
                let saved = self.stmt_file;
                if over.is_some() {
                    self.stmt_file = self.overrides.file.unwrap_or(self.file);
                }
                let ty = over.unwrap_or(ty);
                let t = self.declared_type(ty, true);
                let per_token = matches!(ty, TypeExpr::Class { per_token: true, .. });
                let node = t.map(|t| {
                    self.push(Op::Target { name: name.name.clone(), per_token }, vec![], t, ty.span(), &name.name)
                });
                self.stmt_file = saved;
                if let Some(n) = node {
                    self.targets.push(n);
                }
                self.define(name, node, EntryKind::Target);
            }
            Stmt::Bind { name, value, span } => {
                let replaced =
                    if self.prefix.is_empty() { self.overrides.replace.get(&name.name).copied() } else { None };
                let saved = self.stmt_file;
                if replaced.is_some() {
                    self.stmt_file = self.overrides.file.unwrap_or(self.file);
                }
                let value = replaced.unwrap_or(value);
                let scope = self.scope_name(&name.name);
                self.naming = Some(BindNaming {
                    scope,
                    layer_calls: count_layers(value, false),
                    param_layers: count_layers(value, true),
                    next: 0,
                });
                let node = self.expr(value, Ctx::Layer);
                self.naming = None;
                self.stmt_file = saved;
                if let (Some(n), true) = (node, self.prefix.is_empty()) {
                    self.bindings.insert(name.name.clone(), (n, *span));
                }
                self.define(name, node, EntryKind::Value);
            }
            Stmt::Repeat { count, count_span, label, body, span: _ } => {
                if *count == 0 || *count > MAX_REPEAT {
                    self.err(CheckError::OutOfRange {
                        callee: "repeat".into(),
                        name: "count".into(),
                        value: count.to_string(),
                        range: format!("between 1 and {MAX_REPEAT}"),
                        span: (*count_span).into(),
                        help: None,
                    });
                    return;
                }
                let label = match label {
                    Some(l) => l.name.clone(),
                    None => format!("repeat{}", self.repeats),
                };
                self.repeats += 1;
                let saved_prefix = self.prefix.clone();
                for i in 0..*count {
                    let before = self.errors.len();
                    self.prefix = format!("{saved_prefix}{label}.{i}.");
                    self.scopes.push(Scope { names: HashMap::new(), in_repeat: true });
                    self.stmts(body);
                    self.scopes.pop();
                    // One report per mistake, not one per iteration.
                    if self.errors.len() > before || self.too_big {
                        break;
                    }
                }
                self.prefix = saved_prefix;
            }
            Stmt::Loss { value, span } => {
                if self.not_in_repeat("loss", *span) {
                    return;
                }
                if let Some((_, first)) = self.loss {
                    self.err(CheckError::DeclaredTwice {
                        what: "the loss".into(),
                        span: (*span).into(),
                        first: first.into(),
                        help: Some("a model has one loss; add terms: `loss mse(a, y) + 0.1 * mse(b, y)`".into()),
                    });
                    return;
                }
                self.naming = Some(BindNaming { scope: "loss".into(), layer_calls: 0, param_layers: 0, next: 0 });
                let node = self.expr(value, Ctx::Loss);
                self.naming = None;
                if let Some(n) = node {
                    let is_loss = self.nodes[n].ty.shape.rank() == 0 && self.contains_loss(n);
                    if !is_loss {
                        let found = format!("a tensor of shape {}", self.nodes[n].ty.shape);
                        self.err(CheckError::NotALoss { found, span: value.span.into() });
                        self.broken_loss = true;
                        return;
                    }
                    self.loss = Some((n, *span));
                } else if self.loss.is_none() {
                    self.broken_loss = true;
                }
            }
            Stmt::Metric { name, value, span } => {
                if self.not_in_repeat("metric", *span) {
                    return;
                }
                let call = match &value.kind {
                    ExprKind::Call(c) => c,
                    _ => {
                        self.err(CheckError::WrongKind {
                            name: snippet(value),
                            actual: "an expression".into(),
                            expected: "a metric",
                            span: value.span.into(),
                            help: Some(format!("use a metric call: {}", names_list(Kind::Metric))),
                        });
                        return;
                    }
                };
                let metric_name = name.as_ref().map(|n| n.name.clone()).unwrap_or_else(|| call.callee.name.clone());
                if let Some((_, _, first)) = self.metrics.iter().find(|m| m.0 == metric_name) {
                    let first = *first;
                    self.err(CheckError::DeclaredTwice {
                        what: format!("metric `{metric_name}`"),
                        span: (*span).into(),
                        first: first.into(),
                        help: Some("name the second one: `metric top = accuracy(…)`".into()),
                    });
                    return;
                }
                self.naming = Some(BindNaming { scope: metric_name.clone(), layer_calls: 0, param_layers: 0, next: 0 });
                let node = self.expr(value, Ctx::Metric);
                self.naming = None;
                if let Some(n) = node {
                    self.metrics.push((metric_name, n, *span));
                }
            }
            Stmt::Error { first_word, defines, .. } => {
                self.broken_any = true;
                match first_word.as_ref().map(|w| w.name.as_str()) {
                    Some("loss") => self.broken_loss = true,
                    Some("input") => self.broken_input = true,
                    _ => {}
                }
                if let Some(name) = defines {
                    let kind = match first_word.as_ref().map(|w| w.name.as_str()) {
                        Some("target") => EntryKind::Target,
                        Some("input") => EntryKind::Input,
                        _ => EntryKind::Value,
                    };
                    if kind == EntryKind::Input {
                        self.broken_input = true;
                    }
                    // Define without a node, so later uses stay quiet.
                    self.scopes.last_mut().map(|s| s.names.insert(name.name.clone(), Entry { node: None, kind }));
                }
            }
        }
    }

    fn not_in_repeat(&mut self, what: &str, span: Span) -> bool {
        if self.in_repeat() {
            self.err(CheckError::SettingNotAllowed {
                key: what.into(),
                block: "a `repeat` block".into(),
                span: span.into(),
                help: Some(format!("declare `{what}` outside the block")),
            });
            return true;
        }
        false
    }

    fn contains_loss(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        matches!(node.op, Op::Loss { .. }) || node.inputs.iter().any(|i| self.contains_loss(*i))
    }

    /// Binds `name` in the innermost scope, or updates a loop-carried name.
    fn define(&mut self, name: &ast::Ident, node: Option<usize>, kind: EntryKind) {
        let depth = self.scopes.len();
        let found = self.scopes.iter().rposition(|s| s.names.contains_key(&name.name));
        match found {
            // Reassigning a name from outside the repeat body: loop-carried.
            Some(i) if i + 1 < depth && self.in_repeat() && kind == EntryKind::Value => {
                let entry = self.scopes[i].names.get_mut(&name.name);
                if let Some(e) = entry {
                    if e.kind == EntryKind::Value {
                        e.node = node;
                        return;
                    }
                }
                let first = self.defs.get(&name.name).copied();
                self.err(CheckError::Duplicate {
                    what: "name",
                    name: name.name.clone(),
                    span: name.span.into(),
                    first: first.map(Into::into),
                });
            }
            Some(_) => {
                let first = self.defs.get(&name.name).or_else(|| self.loop_defs.get(&name.name)).copied();
                let first = first.filter(|f| *f != name.span);
                self.err(CheckError::Duplicate {
                    what: "name",
                    name: name.name.clone(),
                    span: name.span.into(),
                    first: first.map(Into::into),
                });
            }
            None => {
                if let Some(s) = self.scopes.last_mut() {
                    s.names.insert(name.name.clone(), Entry { node, kind });
                }
            }
        }
    }

    fn scope_name(&mut self, name: &str) -> String {
        let base = format!("{}{}", self.prefix, name);
        let mut candidate = base.clone();
        let mut k = 2;
        while !self.used_scopes.insert(candidate.clone()) {
            candidate = format!("{base}_{k}");
            k += 1;
        }
        candidate
    }

    fn declared_type(&mut self, ty: &TypeExpr, target: bool) -> Option<TensorType> {
        match ty {
            TypeExpr::Class { classes, classes_span, per_token, .. } => {
                if !target {
                    self.broken_input = true;
                    self.err(CheckError::WrongKind {
                        name: format!("class[{classes}]"),
                        actual: "a target type".into(),
                        expected: "an input type",
                        span: ty.span().into(),
                        help: Some("inputs are `f32[…]` or `i32[…]`; class labels are declared with `target`".into()),
                    });
                    return None;
                }
                if *classes < 2 {
                    self.err(CheckError::OutOfRange {
                        callee: "class".into(),
                        name: "classes".into(),
                        value: classes.to_string(),
                        range: "at least 2".into(),
                        span: (*classes_span).into(),
                        help: Some("a single output trained with binary_cross_entropy uses `f32[1]`".into()),
                    });
                    return None;
                }
                let shape = if *per_token { Shape(vec![Dim::Batch, Dim::Fixed(0)]) } else { Shape(vec![Dim::Batch]) };
                Some(TensorType::new(DType::Class { classes: *classes }, shape))
            }
            TypeExpr::Tensor { dtype, dims, .. } => {
                let dt = match dtype.name.as_str() {
                    "f32" => DType::F32,
                    "i32" if !target => DType::I32,
                    other => {
                        let allowed: &[&str] = if target { &["f32", "class"] } else { &["f32", "i32"] };
                        let help = did_you_mean(other, allowed.iter().copied()).or_else(|| {
                            Some(if target {
                                "targets are `class[N]` (labels) or `f32[…]` (regression values)".into()
                            } else {
                                "inputs are `f32[…]` or `i32[…]`".into()
                            })
                        });
                        self.err(CheckError::Unknown {
                            kind: "type",
                            name: other.to_string(),
                            span: dtype.span.into(),
                            help,
                        });
                        self.broken_input |= !target;
                        return None;
                    }
                };
                if let Some((_, sp)) = dims.iter().find(|(d, _)| *d == 0) {
                    self.broken_input |= !target;
                    self.err(CheckError::OutOfRange {
                        callee: "the type".into(),
                        name: "dimension".into(),
                        value: "0".into(),
                        range: "at least 1".into(),
                        span: (*sp).into(),
                        help: None,
                    });
                    return None;
                }
                let d: Vec<u64> = dims.iter().map(|(d, _)| *d).collect();
                Some(TensorType::new(dt, Shape::batched(&d)))
            }
        }
    }

    fn push(&mut self, op: Op, inputs: Vec<usize>, ty: TensorType, span: Span, path: &str) -> usize {
        if self.nodes.len() >= MAX_NODES && !self.too_big {
            self.too_big = true;
            self.err(CheckError::OutOfRange {
                callee: "the model".into(),
                name: "size".into(),
                value: format!("more than {MAX_NODES} operations"),
                range: format!("at most {MAX_NODES} operations"),
                span: span.into(),
                help: Some("lower the `repeat` counts".into()),
            });
        }
        self.nodes.push(Node { op, inputs, ty, file: self.stmt_file, span, path: path.to_string() });
        self.nodes.len() - 1
    }

    // ------------------------------------------------------------ expressions

    fn expr(&mut self, e: &Expr, ctx: Ctx) -> Option<usize> {
        if self.too_big {
            return None;
        }
        match &e.kind {
            ExprKind::Name(id) => {
                if id.name.is_empty() {
                    return None; // a piece the parser already reported
                }
                self.lookup(id, ctx, false)
            }
            ExprKind::Number { value, .. } => {
                let t = TensorType::new(DType::F32, Shape::scalar());
                Some(self.push(Op::Const { value: *value }, vec![], t, e.span, "const"))
            }
            ExprKind::Neg(inner) => {
                let x = self.expr(inner, ctx)?;
                let t = self.nodes[x].ty.clone();
                let path = self.nodes[x].path.clone();
                Some(self.push(Op::Neg, vec![x], t, e.span, &path))
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.expr(lhs, ctx);
                let b = self.expr(rhs, ctx);
                let (a, b) = (a?, b?);
                self.binary(*op, a, b, lhs.span, rhs.span, e.span)
            }
            ExprKind::Call(call) => self.call(call, None, ctx),
            ExprKind::Pipe { input, stage } => {
                let x = self.expr(input, ctx);
                // Report problems in the stage even when the input was broken.
                self.call(stage, Some((x, input.span)), ctx)
            }
            ExprKind::Str(_) | ExprKind::List(_) | ExprKind::Range { .. } | ExprKind::Duration { .. } => {
                let found = constant(e).map(|v| v.describe()).unwrap_or_default();
                self.err(CheckError::WrongKind {
                    name: snippet(e),
                    actual: found,
                    expected: "a tensor",
                    span: e.span.into(),
                    help: None,
                });
                None
            }
        }
    }

    fn binary(&mut self, op: BinOp, a: usize, b: usize, sa: Span, sb: Span, span: Span) -> Option<usize> {
        let (ta, tb) = (self.nodes[a].ty.clone(), self.nodes[b].ty.clone());
        for (t, s) in [(&ta, sa), (&tb, sb)] {
            if t.dtype != DType::F32 {
                self.err(CheckError::DTypeMismatch {
                    layer: format!("`{}`", op.symbol()),
                    expected: "f32",
                    found: t.dtype.to_string(),
                    span: s.into(),
                    help: Some("integer token ids become vectors through `embed(tokens, vocab, dim: …)`".into()),
                });
                return None;
            }
        }
        let Some(shape) = ta.shape.broadcast(&tb.shape) else {
            let help = if ta.shape.sample_elements() == tb.shape.sample_elements() {
                Some("the sizes agree but the layouts differ; reshape one side to match".to_string())
            } else {
                None
            };
            self.err(CheckError::ShapeMismatch {
                op: op.symbol().into(),
                left: ta.shape.to_string(),
                right: tb.shape.to_string(),
                left_span: sa.into(),
                right_span: sb.into(),
                help,
            });
            return None;
        };
        let path = self.naming.as_ref().map(|n| n.scope.clone()).unwrap_or_default();
        let t = TensorType::new(DType::F32, shape);
        Some(self.push(Op::Binary { op: op.symbol() }, vec![a, b], t, span, &path))
    }

    fn lookup(&mut self, id: &ast::Ident, ctx: Ctx, as_target: bool) -> Option<usize> {
        let entry = self.scopes.iter().rev().find_map(|s| s.names.get(&id.name)).cloned();
        match entry {
            Some(e) => {
                if e.kind == EntryKind::Target && !as_target {
                    let help = if ctx == Ctx::Layer {
                        "targets can only be used in `loss` and `metric` declarations".to_string()
                    } else {
                        "pass the target as the second argument: `cross_entropy(logits, label)`".to_string()
                    };
                    self.err(CheckError::WrongKind {
                        name: id.name.clone(),
                        actual: "a target".into(),
                        expected: "a layer input",
                        span: id.span.into(),
                        help: Some(help),
                    });
                    return None;
                }
                if as_target && e.kind != EntryKind::Target {
                    let targets: Vec<String> = self.target_names();
                    self.err(CheckError::WrongKind {
                        name: id.name.clone(),
                        actual: if e.kind == EntryKind::Input { "an input".into() } else { "a computed value".into() },
                        expected: "a target",
                        span: id.span.into(),
                        help: Some(match targets.first() {
                            Some(t) => format!("the second argument is the target, e.g. `{t}`"),
                            None => "declare a target, e.g. `target label: class[10]`".into(),
                        }),
                    });
                    return None;
                }
                e.node
            }
            None => {
                self.undefined(id);
                None
            }
        }
    }

    fn target_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .scopes
            .iter()
            .flat_map(|s| s.names.iter())
            .filter(|(_, e)| e.kind == EntryKind::Target)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    fn undefined(&mut self, id: &ast::Ident) {
        if let Some(def) = self.defs.get(&id.name).copied() {
            if def.start > id.span.start {
                self.err(CheckError::UsedBeforeDefinition {
                    name: id.name.clone(),
                    span: id.span.into(),
                    def: def.into(),
                });
                return;
            }
        }
        if let Some(def) = self.loop_defs.get(&id.name).copied() {
            self.err(CheckError::LoopLocal { name: id.name.clone(), span: id.span.into(), def: def.into() });
            return;
        }
        if let Some(sig) = layers::sig(&id.name) {
            let help = match sig.kind {
                Kind::Layer => {
                    format!("`{}` is a layer; apply it with `x |> {}`", id.name, id.name)
                }
                _ => format!("call it: `{}(prediction, target)`", id.name),
            };
            self.err(CheckError::WrongKind {
                name: id.name.clone(),
                actual: "a function".into(),
                expected: "a value",
                span: id.span.into(),
                help: Some(help),
            });
            return;
        }
        let visible: Vec<String> = self.scopes.iter().flat_map(|s| s.names.keys().cloned()).collect();
        let help = if self.inputs.is_empty() && !self.broken_input {
            Some(format!("the model has no input yet; declare it: `input {}: f32[…]`", id.name))
        } else {
            did_you_mean(&id.name, visible.iter().map(String::as_str))
        };
        self.err(CheckError::Undefined { name: id.name.clone(), span: id.span.into(), help });
    }

    fn is_value_name(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.names.contains_key(name))
            || self.defs.contains_key(name)
            || self.loop_defs.contains_key(name)
    }

    fn call(&mut self, call: &Call, piped: Option<(Option<usize>, Span)>, ctx: Ctx) -> Option<usize> {
        let name = call.callee.name.as_str();
        let Some(sig) = layers::sig(name) else {
            if self.is_value_name(name) {
                self.err(CheckError::WrongKind {
                    name: name.to_string(),
                    actual: "a value".into(),
                    expected: "a layer",
                    span: call.callee.span.into(),
                    help: Some(
                        "`|>` feeds a value into a layer; to combine two values use `+`, `*` or `concat(a, b)`".into(),
                    ),
                });
            } else {
                let all = layers::SIGS.iter().map(|s| s.name);
                let help =
                    did_you_mean(name, all).or_else(|| Some(format!("the layers are {}", names_list(Kind::Layer))));
                let kind = match ctx {
                    Ctx::Layer => "layer",
                    Ctx::Loss => "loss or layer",
                    Ctx::Metric => "metric",
                };
                self.err(CheckError::Unknown { kind, name: name.to_string(), span: call.callee.span.into(), help });
            }
            return None;
        };
        match (sig.kind, ctx) {
            (Kind::Loss, Ctx::Loss) | (Kind::Metric, Ctx::Metric) | (Kind::Layer, _) => {}
            (k, _) => {
                let (actual, help) = match k {
                    Kind::Loss => ("a loss", format!("declare it on its own line: `loss {name}(…)`")),
                    Kind::Metric => ("a metric", format!("declare it on its own line: `metric {name}(…)`")),
                    Kind::Layer => ("a layer", String::new()),
                };
                let expected = match ctx {
                    Ctx::Layer => "a layer",
                    Ctx::Loss => "a loss",
                    Ctx::Metric => "a metric",
                };
                self.err(CheckError::WrongKind {
                    name: name.to_string(),
                    actual: actual.into(),
                    expected,
                    span: call.callee.span.into(),
                    help: Some(help),
                });
                return None;
            }
        }
        if ctx == Ctx::Metric
            && sig.kind == Kind::Layer
            && piped.is_none()
            && self.naming.as_ref().is_some_and(|n| n.next == 0 && n.layer_calls == 0)
        {
            // A layer as the whole metric expression: `metric relu(x)`.
            self.err(CheckError::WrongKind {
                name: name.to_string(),
                actual: "a layer".into(),
                expected: "a metric",
                span: call.callee.span.into(),
                help: Some(format!("use a metric call: {}", names_list(Kind::Metric))),
            });
            return None;
        }

        // Split the arguments into tensor inputs and configuration.
        let positional: Vec<&Arg> = call.args.iter().filter(|a| a.name.is_none()).collect();
        let needed = match sig.inputs {
            Inputs::None => 0,
            Inputs::One => 1,
            Inputs::Two => 2,
            Inputs::Many => usize::MAX,
        };
        let bool_params: Vec<&str> =
            sig.params.iter().filter(|p| matches!(p.ty, args::Ty::Bool)).map(|p| p.name).collect();
        let mut tensor_args: Vec<&Arg> = Vec::new();
        let have_piped = usize::from(piped.is_some());
        for a in &positional {
            if tensor_args.len() + have_piped >= needed {
                break;
            }
            let is_tensor = match &a.value.kind {
                ExprKind::Name(n) => !bool_params.contains(&n.name.as_str()) && n.name != "true" && n.name != "false",
                ExprKind::Call(_) | ExprKind::Pipe { .. } | ExprKind::Binary { .. } => true,
                ExprKind::Neg(inner) => constant(inner).is_none(),
                _ => false,
            };
            if !is_tensor {
                break;
            }
            tensor_args.push(a);
        }
        let config: Vec<&Arg> =
            call.args.iter().filter(|a| !tensor_args.iter().any(|t| std::ptr::eq(*t, *a))).collect();
        let n_inputs = tensor_args.len() + have_piped;
        if !sig.inputs.accepts(n_inputs) {
            let help = match (sig.inputs, n_inputs) {
                (Inputs::One, 0) => Some(format!("feed it with `|>`: `x |> {}`", display_call(call))),
                (Inputs::One, _) if piped.is_some() => Some(format!("`|>` already gives {name} its input")),
                (Inputs::None, _) => Some(format!(
                    "{name} makes a tensor from its arguments alone; add it to another: `x + {}`",
                    display_call(call)
                )),
                (Inputs::Two, _) => Some(format!("`{name}(prediction, target)`")),
                (Inputs::Many, _) => Some(format!("`{name}(a, b)`")),
                _ => None,
            };
            self.err(CheckError::InputCount {
                callee: name.to_string(),
                expected: sig.inputs.describe().to_string(),
                found: n_inputs,
                span: call.span.into(),
                help,
            });
            // Still check the configuration for more errors.
            let mut errs = Vec::new();
            args::bind(name, call.span, sig.params, &config, &mut errs);
            for e in errs {
                self.err(e);
            }
            return None;
        }

        // Evaluate the inputs.
        let mut inputs: Vec<(Option<usize>, Span)> = Vec::new();
        if let Some(p) = piped {
            inputs.push(p);
        }
        let is_fn = matches!(sig.kind, Kind::Loss | Kind::Metric);
        for (i, a) in tensor_args.iter().enumerate() {
            let slot = i + have_piped;
            let node = if is_fn && slot == 1 {
                match &a.value.kind {
                    ExprKind::Name(id) => self.lookup(id, ctx, true),
                    _ => {
                        self.err(CheckError::WrongKind {
                            name: snippet(&a.value),
                            actual: "an expression".into(),
                            expected: "a target",
                            span: a.value.span.into(),
                            help: Some("the second argument is the name of a declared target".into()),
                        });
                        None
                    }
                }
            } else {
                let inner_ctx = if is_fn { Ctx::Layer } else { ctx };
                self.expr(&a.value, inner_ctx)
            };
            inputs.push((node, a.value.span));
        }

        let mut errs = Vec::new();
        let bound = args::bind(name, call.span, sig.params, &config, &mut errs);
        let bind_failed = !errs.is_empty() || bound.incomplete;
        for e in errs {
            self.err(e);
        }
        // Index of this call in its binding, for parameter names.
        let index = self.naming.as_mut().map(|n| {
            let i = n.next;
            n.next += 1;
            i
        });
        if bind_failed || inputs.iter().any(|(n, _)| n.is_none()) {
            return None;
        }
        let input_nodes: Vec<usize> = inputs.iter().filter_map(|(n, _)| *n).collect();
        let input_types: Vec<TensorType> = input_nodes.iter().map(|n| self.nodes[*n].ty.clone()).collect();
        match sig.kind {
            Kind::Layer => {
                let rank = input_types.first().map(|t| t.shape.rank()).unwrap_or(0);
                let layer = layers::layer(name, &bound, rank)?;
                if let Layer::Conv2d { stride, .. } = &layer {
                    if matches!(bound.get("padding"), Some(Value::Name(n)) if n == "same") && *stride != (1, 1) {
                        self.err(CheckError::Conflict {
                            message: "`padding: same` needs stride 1".into(),
                            span: bound.span_of("padding").into(),
                            label: "same padding".into(),
                            other: Some(bound.span_of("stride").into()),
                            help: Some("give the padding as a number instead".into()),
                        });
                        return None;
                    }
                }
                let out = match layers::infer(&layer, &input_types) {
                    Ok(t) => t,
                    Err(e) => {
                        let (node, span) =
                            (input_nodes.get(e.input).copied(), inputs.get(e.input).map(|i| i.1).unwrap_or(call.span));
                        let found = node.map(|n| self.nodes[n].ty.clone());
                        let found_s = found
                            .as_ref()
                            .map(|t| if e.dtype { t.dtype.to_string() } else { t.shape.to_string() })
                            .unwrap_or_default();
                        let error = if e.dtype {
                            CheckError::DTypeMismatch {
                                layer: name.to_string(),
                                expected: if e.expected == "i32" { "i32" } else { "f32" },
                                found: found_s,
                                span: span.into(),
                                help: e.help,
                            }
                        } else {
                            CheckError::BadInputShape {
                                layer: call.callee.name.clone(),
                                expected: e.expected,
                                found: found_s,
                                span: call.span.into(),
                                help: e.help,
                            }
                        };
                        self.err(error);
                        return None;
                    }
                };
                let params = layers::params(&layer, &input_types);
                let path = self.layer_path(index.unwrap_or(0), !params.is_empty());
                let too_large = std::iter::once((path.clone(), out.shape.sample_dims()))
                    .chain(params.iter().map(|(suffix, shape)| (format!("{path}.{suffix}"), shape.clone())))
                    .find(|(_, dims)| super::types::bounded_product(dims).is_none());
                if let Some((name, dims)) = too_large {
                    let elements = dims.iter().map(u64::to_string).collect::<Vec<_>>().join(" × ");
                    let bytes = dims.iter().try_fold(4u128, |a, d| a.checked_mul(*d as u128));
                    let bytes = bytes.map_or("more than 2^128 bytes".to_string(), |b| {
                        format!("{:.1} TiB", b as f64 / 1099511627776.0)
                    });
                    self.err(CheckError::TooLarge { name, elements, bytes, span: call.span.into() });
                    return None;
                }
                let node = self.push(Op::Layer { layer }, input_nodes, out, call.span, &path);
                for (suffix, shape) in params {
                    self.params.push(ParamInfo { name: format!("{path}.{suffix}"), shape, layer: path.clone(), node });
                }
                Some(node)
            }
            Kind::Loss => {
                let loss = layers::loss(name, &bound)?;
                self.check_target(name, &input_nodes, &inputs, matches!(loss, Loss::CrossEntropy { .. }))?;
                let t = TensorType::new(DType::F32, Shape::scalar());
                Some(self.push(Op::Loss { loss }, input_nodes, t, call.span, "loss"))
            }
            Kind::Metric => {
                let metric = layers::metric(name, &bound)?;
                let needs_classes = !matches!(metric, Metric::Accuracy);
                self.check_target(name, &input_nodes, &inputs, needs_classes)?;
                let t = TensorType::new(DType::F32, Shape::scalar());
                let path = self.naming.as_ref().map(|n| n.scope.clone()).unwrap_or_default();
                Some(self.push(Op::Metric { metric }, input_nodes, t, call.span, &path))
            }
        }
    }

    /// The path naming a layer: the binding's path when the binding has one
    /// such layer, else `binding.K` with K its position (as nn.Sequential).
    fn layer_path(&self, index: usize, has_params: bool) -> String {
        match &self.naming {
            Some(n) if (has_params && n.param_layers <= 1) || n.layer_calls <= 1 => n.scope.clone(),
            Some(n) => format!("{}.{index}", n.scope),
            None => String::new(),
        }
    }

    /// Checks a loss or metric's prediction against its target.
    fn check_target(
        &mut self,
        func: &str,
        nodes: &[usize],
        inputs: &[(Option<usize>, Span)],
        class_only: bool,
    ) -> Option<()> {
        let (pred, target) = (nodes[0], nodes[1]);
        let pt = self.nodes[pred].ty.clone();
        let tt = self.nodes[target].ty.clone();
        let tspan = self.nodes[target].span;
        let tname = match &self.nodes[target].op {
            Op::Target { name, .. } => name.clone(),
            _ => String::new(),
        };
        let per_token = matches!(self.nodes[target].op, Op::Target { per_token: true, .. });
        let pspan = inputs[0].1;
        let mismatch = |this: &mut Self, reason: String, help: Option<String>| {
            // Report a pair once, not again for every metric that uses it.
            if !this.reported.insert((pred, target)) {
                return None;
            }
            this.err(CheckError::TargetMismatch {
                func: func.to_string(),
                reason,
                span: pspan.into(),
                prediction: pt.shape.to_string(),
                target: Some(tspan.into()),
                help,
            });
            None
        };
        if pt.dtype != DType::F32 {
            return mismatch(self, format!("the prediction must be f32, not {}", pt.dtype), None);
        }
        match tt.dtype {
            DType::Class { classes } => {
                let k = pt.shape.last().unwrap_or(0);
                let ok_rank = if per_token {
                    pt.shape.has_batch() && pt.shape.rank() >= 3
                } else {
                    pt.shape.has_batch() && pt.shape.rank() == 2
                };
                if func == "binary_cross_entropy" || func == "mse" {
                    return mismatch(
                        self,
                        format!("`{tname}` holds class labels, which {func} cannot compare with"),
                        Some("class labels go with `cross_entropy`; regression targets are declared `f32[…]`".into()),
                    );
                }
                if !ok_rank {
                    let help = if !per_token && pt.shape.rank() >= 3 {
                        Some(format!("for one label per position declare `target {tname}: class[{classes}] per token`"))
                    } else if per_token {
                        Some("per-token targets need predictions of shape [N, T, classes]".into())
                    } else {
                        Some(format!("the prediction should be [N, {classes}]: one score per class"))
                    };
                    let expected = if per_token { format!("[N, T, {classes}]") } else { format!("[N, {classes}]") };
                    return mismatch(
                        self,
                        format!("expected a prediction of shape {expected}, found {}", pt.shape),
                        help,
                    );
                }
                if k != classes {
                    return mismatch(
                        self,
                        format!("the prediction has {k} classes but `{tname}` is class[{classes}]"),
                        Some(format!("make the last layer produce {classes} outputs, e.g. `dense({classes})`")),
                    );
                }
                if per_token {
                    // The labels' shape is the prediction's without the class
                    // axis, and every prediction of the target must agree.
                    let mut dims = pt.shape.0.clone();
                    dims.pop();
                    let labels = Shape(dims);
                    if let Some(first) = self.token_shapes.get(&target).filter(|s| **s != labels).cloned() {
                        return mismatch(
                            self,
                            format!(
                                "this prediction has positions {labels}, but an earlier use of `{tname}` has {first}: one label per position needs one length"
                            ),
                            Some("give every per-token prediction of this target the same number of positions".into()),
                        );
                    }
                    self.token_shapes.insert(target, labels.clone());
                    self.nodes[target].ty.shape = labels;
                }
                Some(())
            }
            _ => {
                if class_only {
                    return mismatch(
                        self,
                        format!("`{tname}` is {}, but {func} needs class labels", tt),
                        Some(format!(
                            "declare the target as `class[N]`, or use {}",
                            if func == "cross_entropy" { "mse or binary_cross_entropy" } else { "accuracy" }
                        )),
                    );
                }
                if pt.shape != tt.shape {
                    let help = if pt.shape.sample_elements() == tt.shape.sample_elements() {
                        Some(format!(
                            "the sizes agree but the shapes differ; declare the target as f32{}",
                            shape_decl(&pt.shape)
                        ))
                    } else {
                        Some(format!("the last layer should produce {}", shape_decl(&tt.shape)))
                    };
                    return mismatch(
                        self,
                        format!("the prediction is {} but `{tname}` is {}", pt.shape, tt.shape),
                        help,
                    );
                }
                Some(())
            }
        }
    }
}

fn shape_decl(s: &Shape) -> String {
    let dims: Vec<String> = s.sample_dims().iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Input { span, .. }
        | Stmt::Target { span, .. }
        | Stmt::Bind { span, .. }
        | Stmt::Repeat { span, .. }
        | Stmt::Loss { span, .. }
        | Stmt::Metric { span, .. }
        | Stmt::Error { span, .. } => *span,
    }
}

/// Collects where each name is first defined, and which only inside repeats.
fn collect_defs(
    body: &[Stmt],
    in_repeat: bool,
    defs: &mut HashMap<String, Span>,
    loop_defs: &mut HashMap<String, Span>,
) {
    for s in body {
        let name = match s {
            Stmt::Input { name, .. } | Stmt::Target { name, .. } | Stmt::Bind { name, .. } => Some(name),
            Stmt::Repeat { body, .. } => {
                collect_defs(body, true, defs, loop_defs);
                None
            }
            _ => None,
        };
        if let Some(n) = name {
            let map = if in_repeat { &mut *loop_defs } else { &mut *defs };
            map.entry(n.name.clone()).or_insert(n.span);
        }
    }
    if !in_repeat {
        loop_defs.retain(|k, _| !defs.contains_key(k));
    }
}

/// Counts the layer calls (or only those with parameters) in an expression.
fn count_layers(e: &Expr, with_params: bool) -> usize {
    let call_counts = |c: &Call| -> usize {
        let own = match layers::sig(&c.callee.name) {
            Some(s) if s.kind == Kind::Layer => usize::from(
                !with_params
                    || matches!(
                        c.callee.name.as_str(),
                        "dense" | "conv2d" | "layernorm" | "embed" | "positions" | "attention"
                    ),
            ),
            _ => 0,
        };
        own + c.args.iter().map(|a| count_layers(&a.value, with_params)).sum::<usize>()
    };
    match &e.kind {
        ExprKind::Call(c) => call_counts(c),
        ExprKind::Pipe { input, stage } => count_layers(input, with_params) + call_counts(stage),
        ExprKind::Binary { lhs, rhs, .. } => count_layers(lhs, with_params) + count_layers(rhs, with_params),
        ExprKind::Neg(x) => count_layers(x, with_params),
        _ => 0,
    }
}

/// A call as the user would write it: `dense(128, bias: false)`.
fn display_call(c: &Call) -> String {
    if !c.parens {
        return c.callee.name.clone();
    }
    let args: Vec<String> = c
        .args
        .iter()
        .map(|a| {
            let v = show(&a.value);
            match &a.name {
                Some(n) => format!("{}: {v}", n.name),
                None => v,
            }
        })
        .collect();
    format!("{}({})", c.callee.name, args.join(", "))
}

fn show(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Name(n) => n.name.clone(),
        ExprKind::Number { value, .. } => args::fmt_num(*value),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Call(c) => display_call(c),
        ExprKind::Neg(x) => format!("-{}", show(x)),
        _ => "…".into(),
    }
}

fn snippet(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Name(n) => n.name.clone(),
        ExprKind::Call(c) => format!("{}(…)", c.callee.name),
        ExprKind::Number { value, .. } => args::fmt_num(*value),
        _ => "this expression".into(),
    }
}

pub fn names_list(kind: Kind) -> String {
    let v: Vec<&str> = layers::names(kind).collect();
    args::one_of(&v)
}
