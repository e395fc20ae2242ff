//! Argument binding: matches a call's positional and keyword arguments to a
//! signature, fills defaults, and checks each value's type and range.
//!
//! One binder serves layers, losses, metrics, optimizers, schedules, data
//! sources and settings, so every kind of call gets the same errors: unknown
//! argument (with a suggestion), duplicate, missing, wrong type, out of range,
//! too many positional.

use std::collections::BTreeMap;

use modelc_grammar::ast::{Arg, DurationUnit, Expr, ExprKind, Span};

use crate::diag::{closest, CheckError};

/// A constant argument value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A bare name used as a value: `padding: same`, `on: val_accuracy`.
    Name(String),
    List(Vec<Value>),
    Range(u64, u64),
    Duration(f64, DurationUnit),
    /// A call used as a value: `optimizer adam(lr: 1e-3)`.
    Call,
}

impl Value {
    /// How the value reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Value::Int(i) => format!("the number {i}"),
            Value::Float(f) => format!("the number {f}"),
            Value::Bool(b) => format!("`{b}`"),
            Value::Str(s) => format!("the string \"{s}\""),
            Value::Name(n) => format!("the name `{n}`"),
            Value::List(_) => "a list".into(),
            Value::Range(a, b) => format!("the range {a}..{b}"),
            Value::Duration(v, u) => format!("the duration {v} {}", unit_name(*u)),
            Value::Call => "a call".into(),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

pub fn unit_name(u: DurationUnit) -> &'static str {
    match u {
        DurationUnit::Epochs => "epochs",
        DurationUnit::Steps => "steps",
    }
}

/// Evaluates a constant expression. `None` when the expression is not a
/// constant (a tensor expression).
pub fn constant(e: &Expr) -> Option<Value> {
    Some(match &e.kind {
        ExprKind::Number { value, is_int: true } => Value::Int(*value as i64),
        ExprKind::Number { value, .. } => Value::Float(*value),
        ExprKind::Str(s) => Value::Str(s.clone()),
        ExprKind::Name(n) if n.name == "true" => Value::Bool(true),
        ExprKind::Name(n) if n.name == "false" => Value::Bool(false),
        ExprKind::Name(n) => Value::Name(n.name.clone()),
        ExprKind::List(items) => Value::List(items.iter().map(constant).collect::<Option<_>>()?),
        ExprKind::Range { start, end } => Value::Range(*start, *end),
        ExprKind::Duration { value, unit, .. } => Value::Duration(*value, *unit),
        ExprKind::Neg(inner) => match constant(inner)? {
            Value::Int(i) => Value::Int(-i),
            Value::Float(f) => Value::Float(-f),
            _ => return None,
        },
        ExprKind::Call(_) => Value::Call,
        ExprKind::Binary { .. } | ExprKind::Pipe { .. } => return None,
    })
}

/// The type of one parameter of a signature.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    /// A whole number in `[min, max]`.
    Int {
        min: i64,
        max: i64,
    },
    /// A number in the interval; `open_max` excludes the upper bound.
    Float {
        min: f64,
        max: f64,
        open_min: bool,
        open_max: bool,
    },
    Bool,
    Str,
    /// One of a fixed set of names.
    Choice(&'static [&'static str]),
    /// A whole number `k` or a pair `[a, b]`, each at least `min`.
    IntOrPair {
        min: i64,
    },
    /// `same`, `valid`, a whole number or a pair.
    Padding,
    /// `5 epochs` or `100 steps`.
    Duration,
    /// `[3 epochs, 6 epochs]`: one or more durations, in increasing order.
    DurationList,
    /// `a..b`
    Range,
    /// Any bare name (checked by the caller).
    Name,
    /// A call (checked by the caller): optimizers, schedules, data sources.
    Call,
}

impl Ty {
    pub const POSITIVE_INT: Ty = Ty::Int { min: 1, max: i64::MAX };
    pub const NON_NEGATIVE_INT: Ty = Ty::Int { min: 0, max: i64::MAX };
    pub const POSITIVE: Ty = Ty::Float { min: 0.0, max: f64::INFINITY, open_min: true, open_max: true };
    pub const NON_NEGATIVE: Ty = Ty::Float { min: 0.0, max: f64::INFINITY, open_min: false, open_max: true };
    /// `[0, 1)`: momentum, betas, dropout rates.
    pub const UNIT_OPEN: Ty = Ty::Float { min: 0.0, max: 1.0, open_min: false, open_max: true };
    /// `(0, 1]`: decay factors.
    pub const UNIT_HALF_OPEN: Ty = Ty::Float { min: 0.0, max: 1.0, open_min: true, open_max: false };
    /// `(0, 1)`: fractions such as a validation split.
    pub const FRACTION: Ty = Ty::Float { min: 0.0, max: 1.0, open_min: true, open_max: true };

    /// Whether a whole number fits this type, for settings given outside a
    /// spec (a run file, `--set`, command-line flags): `Err` says what fits.
    pub fn check_int(&self, v: i64) -> Result<(), String> {
        match *self {
            Ty::Int { min, max } if v < min || v > max => Err(int_range(min, max)),
            Ty::Int { .. } => Ok(()),
            _ => Err(self.expected()),
        }
    }

    fn expected(&self) -> String {
        match self {
            Ty::Int { .. } => "a whole number".into(),
            Ty::Float { .. } => "a number".into(),
            Ty::Bool => "`true` or `false`".into(),
            Ty::Str => "a string".into(),
            Ty::Choice(c) => one_of(c),
            Ty::IntOrPair { .. } => "a whole number or a pair [a, b]".into(),
            Ty::Padding => "`same`, `valid`, a whole number or a pair".into(),
            Ty::Duration => "a duration such as `5 epochs` or `100 steps`".into(),
            Ty::DurationList => "a list of durations such as `[3 epochs, 6 epochs]`".into(),
            Ty::Range => "a range such as `0..9`".into(),
            Ty::Name => "a name".into(),
            Ty::Call => "a call such as `name(…)`".into(),
        }
    }
}

pub fn one_of(c: &[&str]) -> String {
    let quoted: Vec<String> = c.iter().map(|s| format!("`{s}`")).collect();
    match quoted.len() {
        0 => "nothing".into(),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

/// One parameter: its name, type and default (`None`: required).
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub ty: Ty,
    pub default: Option<Default>,
}

#[derive(Clone, Copy, Debug)]
pub enum Default {
    Int(i64),
    Float(f64),
    Bool(bool),
    Name(&'static str),
    /// Optional with no value: the caller decides what absence means.
    Absent,
}

pub const fn req(name: &'static str, ty: Ty) -> Param {
    Param { name, ty, default: None }
}

pub const fn opt(name: &'static str, ty: Ty, default: Default) -> Param {
    Param { name, ty, default: Some(default) }
}

/// Bound configuration arguments: name → (value, span of the value).
#[derive(Clone, Debug, Default)]
pub struct Bound {
    pub values: BTreeMap<&'static str, (Value, Span)>,
    /// Where the call is, for errors about the call as a whole.
    pub span: Span,
    /// An argument was already reported by the parser: the values are partial.
    pub incomplete: bool,
}

impl Bound {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name).map(|(v, _)| v)
    }

    pub fn span_of(&self, name: &str) -> Span {
        self.values.get(name).map(|(_, s)| *s).unwrap_or(self.span)
    }

    pub fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            Some(Value::Int(i)) => *i,
            Some(Value::Float(f)) => *f as i64,
            _ => 0,
        }
    }

    pub fn uint(&self, name: &str) -> u64 {
        self.int(name).max(0) as u64
    }

    pub fn float(&self, name: &str) -> f64 {
        self.get(name).and_then(Value::as_f64).unwrap_or(0.0)
    }

    pub fn bool(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Value::Bool(true)))
    }

    pub fn name(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(Value::Name(n)) | Some(Value::Str(n)) => Some(n),
            _ => None,
        }
    }

    /// A whole number or a pair, as a pair.
    pub fn pair(&self, name: &str) -> (u64, u64) {
        match self.get(name) {
            Some(Value::Int(i)) => (*i as u64, *i as u64),
            Some(Value::List(l)) if l.len() == 2 => {
                let a = l[0].as_f64().unwrap_or(0.0) as u64;
                let b = l[1].as_f64().unwrap_or(0.0) as u64;
                (a, b)
            }
            _ => (0, 0),
        }
    }
}

/// Binds `args` (after the `skip` leading positional arguments that are
/// tensor inputs) to `params`. Errors are pushed to `errors`; the result holds
/// every value that checked, plus defaults.
pub fn bind(callee: &str, call_span: Span, params: &[Param], args: &[&Arg], errors: &mut Vec<CheckError>) -> Bound {
    let mut out = Bound { values: BTreeMap::new(), span: call_span, incomplete: false };
    let mut given: BTreeMap<&'static str, Span> = BTreeMap::new();
    let mut positional = 0usize;
    for arg in args {
        // An argument the parser already reported stands for itself.
        if matches!(&arg.value.kind, ExprKind::Name(n) if n.name.is_empty()) {
            out.incomplete = true;
            if let Some(p) =
                arg.name.as_ref().and_then(|n| params.iter().find(|p| p.name == n.name)).or(params.get(positional))
            {
                given.insert(p.name, arg.span);
            }
            positional += usize::from(arg.name.is_none());
            continue;
        }
        let value = constant(&arg.value);
        let param = match &arg.name {
            Some(name) => match params.iter().find(|p| p.name == name.name) {
                Some(p) => p,
                None => {
                    let near = closest(&name.name, params.iter().map(|p| p.name));
                    // A likely typo of a parameter stands for it: do not also
                    // report that parameter missing.
                    if let Some(p) = params.iter().find(|p| Some(p.name) == near) {
                        given.entry(p.name).or_insert(name.span);
                    }
                    let help = near
                        .map(|c| format!("did you mean `{c}`?"))
                        .or_else(|| Some(format!("{callee} takes {}", arg_list(params))));
                    errors.push(CheckError::UnknownArgument {
                        callee: callee.to_string(),
                        name: name.name.clone(),
                        span: name.span.into(),
                        help,
                    });
                    continue;
                }
            },
            None => {
                // A bare name that is a boolean parameter is a flag: `causal`.
                if let Some(Value::Name(n)) = &value {
                    if let Some(p) = params.iter().find(|p| p.name == n && matches!(p.ty, Ty::Bool)) {
                        record(p, Value::Bool(true), arg.span, &mut out, &mut given, errors);
                        continue;
                    }
                }
                let Some(p) = params.get(positional) else {
                    errors.push(CheckError::TooManyArguments {
                        callee: callee.to_string(),
                        max: params.len(),
                        span: arg.span.into(),
                        help: Some(format!("{callee} takes {}", arg_list(params))),
                    });
                    positional += 1;
                    continue;
                };
                positional += 1;
                p
            }
        };
        let Some(value) = value else {
            errors.push(CheckError::WrongType {
                callee: callee.to_string(),
                name: param.name.to_string(),
                expected: param.ty.expected(),
                found: "a tensor expression".into(),
                span: arg.value.span.into(),
                help: None,
            });
            given.insert(param.name, arg.span);
            continue;
        };
        if let Some(err) = check_value(callee, param, &value, arg.value.span) {
            errors.push(err);
            given.insert(param.name, arg.span);
            continue;
        }
        record(param, value, arg.value.span, &mut out, &mut given, errors);
    }
    for p in params {
        if given.contains_key(p.name) {
            continue;
        }
        match p.default {
            None => errors.push(CheckError::MissingArgument {
                callee: callee.to_string(),
                name: p.name.to_string(),
                span: call_span.into(),
                help: Some(format!("{callee} takes {}", arg_list(params))),
            }),
            Some(d) => {
                let v = match d {
                    Default::Int(i) => Value::Int(i),
                    Default::Float(f) => Value::Float(f),
                    Default::Bool(b) => Value::Bool(b),
                    Default::Name(n) => Value::Name(n.to_string()),
                    Default::Absent => continue,
                };
                out.values.insert(p.name, (v, call_span));
            }
        }
    }
    out
}

fn record(
    p: &Param,
    v: Value,
    span: Span,
    out: &mut Bound,
    given: &mut BTreeMap<&'static str, Span>,
    errors: &mut Vec<CheckError>,
) {
    if let Some(first) = given.get(p.name) {
        errors.push(CheckError::DuplicateArgument {
            name: p.name.to_string(),
            span: span.into(),
            first: (*first).into(),
        });
        return;
    }
    given.insert(p.name, span);
    // Whole numbers are accepted where any number is.
    let v = match (p.ty, v) {
        (Ty::Float { .. }, Value::Int(i)) => Value::Float(i as f64),
        (_, v) => v,
    };
    out.values.insert(p.name, (v, span));
}

/// The signature as help text: `dense(units, bias: true)`.
pub fn arg_list(params: &[Param]) -> String {
    if params.is_empty() {
        return "no arguments".into();
    }
    let parts: Vec<String> = params
        .iter()
        .map(|p| match p.default {
            None => p.name.to_string(),
            Some(Default::Int(i)) => format!("{}: {i}", p.name),
            Some(Default::Float(f)) => format!("{}: {f}", p.name),
            Some(Default::Bool(b)) => format!("{}: {b}", p.name),
            Some(Default::Name(n)) => format!("{}: {n}", p.name),
            Some(Default::Absent) => format!("{}?", p.name),
        })
        .collect();
    format!("({})", parts.join(", "))
}

fn check_value(callee: &str, p: &Param, v: &Value, span: Span) -> Option<CheckError> {
    let wrong = |help: Option<String>| CheckError::WrongType {
        callee: callee.to_string(),
        name: p.name.to_string(),
        expected: p.ty.expected(),
        found: v.describe(),
        span: span.into(),
        help,
    };
    let range = |value: String, range: String| CheckError::OutOfRange {
        callee: callee.to_string(),
        name: p.name.to_string(),
        value,
        range,
        span: span.into(),
        help: None,
    };
    match (p.ty, v) {
        (Ty::Int { min, max }, Value::Int(i)) => {
            if *i < min || *i > max {
                return Some(range(i.to_string(), int_range(min, max)));
            }
        }
        (Ty::Int { .. }, Value::Float(f)) => {
            return Some(wrong(Some(format!("use a whole number, e.g. {}", f.round()))));
        }
        (Ty::Float { min, max, open_min, open_max }, v @ (Value::Int(_) | Value::Float(_))) => {
            let x = v.as_f64().unwrap_or(0.0);
            let below = if open_min { x <= min } else { x < min };
            let above = if open_max { x >= max } else { x > max };
            if below || above {
                return Some(range(fmt_num(x), float_range(min, max, open_min, open_max)));
            }
        }
        (Ty::Bool, Value::Bool(_)) | (Ty::Str, Value::Str(_)) | (Ty::Name, Value::Name(_)) => {}
        (Ty::Call, Value::Call) | (Ty::Range, Value::Range(..)) => {
            if let Value::Range(a, b) = v {
                if a > b {
                    return Some(range(format!("{a}..{b}"), "a range whose start is not after its end".into()));
                }
            }
        }
        (Ty::Call, Value::Name(_)) => {} // `optimizer sgd` without parentheses
        (Ty::Choice(choices), Value::Name(n) | Value::Str(n)) => {
            if !choices.contains(&n.as_str()) {
                let help = closest(n, choices.iter().copied()).map(|c| format!("did you mean `{c}`?"));
                return Some(wrong(help));
            }
        }
        (Ty::IntOrPair { .. } | Ty::Padding, _) if pair_ok(v) => {
            let min = if let Ty::IntOrPair { min } = p.ty { min } else { 0 };
            let bad = pair_values(v).into_iter().find(|x| *x < min);
            if let Some(x) = bad {
                return Some(range(x.to_string(), int_range(min, i64::MAX)));
            }
        }
        (Ty::Padding, Value::Name(n)) => {
            if n != "same" && n != "valid" {
                let help = closest(n, ["same", "valid"]).map(|c| format!("did you mean `{c}`?"));
                return Some(wrong(help));
            }
        }
        (Ty::Duration, Value::Duration(x, _)) => {
            if *x < 0.0 || x.fract() != 0.0 {
                return Some(range(fmt_num(*x), "a whole number of epochs or steps".into()));
            }
        }
        (Ty::DurationList, Value::List(items)) if !items.is_empty() => {
            for item in items {
                match item {
                    Value::Duration(x, _) if *x >= 0.0 && x.fract() == 0.0 => {}
                    Value::Duration(x, _) => {
                        return Some(range(fmt_num(*x), "a whole number of epochs or steps".into()));
                    }
                    Value::Int(i) => {
                        return Some(wrong(Some(format!("say which unit: `{i} epochs` or `{i} steps`"))));
                    }
                    _ => return Some(wrong(None)),
                }
            }
        }
        (Ty::Duration, Value::Int(i)) => {
            return Some(wrong(Some(format!("say which unit: `{i} epochs` or `{i} steps`"))));
        }
        _ => return Some(wrong(None)),
    }
    None
}

fn pair_ok(v: &Value) -> bool {
    match v {
        Value::Int(_) => true,
        Value::List(l) => l.len() == 2 && l.iter().all(|x| matches!(x, Value::Int(_))),
        _ => false,
    }
}

fn pair_values(v: &Value) -> Vec<i64> {
    match v {
        Value::Int(i) => vec![*i],
        Value::List(l) => l.iter().filter_map(|x| if let Value::Int(i) = x { Some(*i) } else { None }).collect(),
        _ => vec![],
    }
}

fn int_range(min: i64, max: i64) -> String {
    match (min, max) {
        (0, i64::MAX) => "at least 0".into(),
        (m, i64::MAX) => format!("at least {m}"),
        (a, b) => format!("between {a} and {b}"),
    }
}

fn float_range(min: f64, max: f64, open_min: bool, open_max: bool) -> String {
    if max.is_infinite() {
        return if open_min { format!("greater than {}", fmt_num(min)) } else { format!("at least {}", fmt_num(min)) };
    }
    format!(
        "in {}{}, {}{}",
        if open_min { "(" } else { "[" },
        fmt_num(min),
        fmt_num(max),
        if open_max { ")" } else { "]" }
    )
}

pub fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}
