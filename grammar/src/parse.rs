//! From text to AST: runs the pest grammar, turns its pairs into AST nodes,
//! and turns every swallowed malformed piece into a precise syntax error.

use pest::iterators::Pair;
use pest::Parser as _;

use crate::ast::*;
use crate::error::SyntaxError;

#[derive(pest_derive::Parser)]
#[grammar = "src/modelc.pest"]
struct ModelParser;

/// The longest chain of binary operators or pipeline stages in one expression.
/// Longer chains are refused so that no AST is deep enough to overflow the
/// stack when it is walked or dropped.
const MAX_CHAIN: usize = 256;
/// The deepest bracket nesting accepted, for the same reason.
const MAX_NESTING: usize = 64;

/// Parses a whole file. Never fails: returns the AST of everything that parsed
/// and every syntax error found, in source order.
pub fn parse(src: &str) -> (File, Vec<SyntaxError>) {
    pest::set_error_detail(true);
    let mut b = Builder { src, errors: Vec::new() };
    if let Some(err) = nesting_error(src) {
        return (File::default(), vec![err]);
    }
    let file = match ModelParser::parse(Rule::file, src) {
        Ok(mut pairs) => match pairs.next() {
            Some(pair) => b.file(pair),
            None => File::default(),
        },
        Err(e) => {
            b.whole_file_error(e);
            File::default()
        }
    };
    let mut errors = b.errors;
    errors.sort_by_key(|e| e.span().offset());
    (file, errors)
}

/// Refuses absurdly deep bracket nesting before the grammar recurses into it.
fn nesting_error(src: &str) -> Option<SyntaxError> {
    let mut depth = 0usize;
    for (i, c) in src.char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(SyntaxError::Unexpected {
                        expected: "fewer nested brackets".into(),
                        found: format!("more than {MAX_NESTING} levels of nesting"),
                        span: (i, 1).into(),
                        help: Some("split the expression into named bindings".into()),
                    });
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

struct Builder<'s> {
    src: &'s str,
    errors: Vec<SyntaxError>,
}

fn span(p: &Pair<Rule>) -> Span {
    p.as_span().into()
}

impl<'s> Builder<'s> {
    // ------------------------------------------------------------ errors

    /// The whole-file rule failed (only an unclosed brace can do this, since
    /// every other malformed piece is swallowed by a recovery rule).
    fn whole_file_error(&mut self, e: pest::error::Error<Rule>) {
        if let Some(open) = unclosed_brace(self.src) {
            self.errors.push(SyntaxError::Unclosed { open: (open, 1).into() });
        } else {
            self.errors.push(self.convert(&e, 0, self.src));
        }
    }

    /// Re-parses a swallowed piece with `rule` to find what exactly is wrong.
    fn reparse(&mut self, rule: Rule, piece: Span) {
        let text = &self.src[piece.start..piece.end];
        match ModelParser::parse(rule, text) {
            Err(e) => {
                let err = self.convert(&e, piece.start, text);
                self.errors.push(err);
            }
            // Valid alone but not where it stands: say so at its first token.
            Ok(_) => {
                let first = first_token(text).unwrap_or((0, text.len()));
                self.errors.push(SyntaxError::Unexpected {
                    expected: "a statement that belongs here".into(),
                    found: format!("`{}`", &text[first.0..first.1]),
                    span: (piece.start + first.0, first.1 - first.0).into(),
                    help: Some(
                        "`input`, `target`, bindings, `repeat`, `loss` and `metric` go in \
                         model blocks; settings go in train, finetune and stage blocks"
                            .into(),
                    ),
                });
            }
        }
    }

    fn convert(&self, e: &pest::error::Error<Rule>, offset: usize, text: &str) -> SyntaxError {
        let mut pos = match e.location {
            pest::error::InputLocation::Pos(p) => p,
            pest::error::InputLocation::Span((s, _)) => s,
        };
        if let Some(attempts) = e.parse_attempts() {
            pos = pos.max(attempts.max_position);
        }
        let mut expected: Vec<String> = Vec::new();
        if let Some(attempts) = e.parse_attempts() {
            for tok in attempts.expected_tokens() {
                // Literal tokens print as themselves; skip character ranges
                // (`0..9`), case-insensitive letters and built-in rules, which
                // the rule descriptions below say better.
                let t = tok.to_string();
                let shown = match t.as_str() {
                    "BUILTIN_RULE" | "" => continue,
                    "\n" | "\r\n" | "\r" => "end of line".to_string(),
                    " " | "\t" | "\\" | "#" => continue,
                    t if t.len() == 4 && t.as_bytes()[1] == b'.' && t.as_bytes()[2] == b'.' => continue,
                    t if t.len() == 1 && t.chars().all(|c| c.is_ascii_uppercase()) => continue,
                    t => format!("`{t}`"),
                };
                expected.push(shown);
            }
        }
        if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
            for r in positives {
                if let Some(d) = describe(*r) {
                    expected.push(d.to_string());
                }
            }
        }
        expected.sort();
        expected.dedup();
        // Tokens that could merely continue what came before (operators,
        // units, the starts of expressions) crowd out the ones that matter.
        const NOISE: &[&str] = &[
            "`*`",
            "`+`",
            "`-`",
            "`|>`",
            "`..`",
            "`.`",
            "`epoch`",
            "`epochs`",
            "`step`",
            "`steps`",
            "`\"`",
            "`(`",
            "`[`",
            "`_`",
            "`;`",
            "an operator",
            "end of input",
        ];
        if expected.iter().any(|x| !NOISE.contains(&x.as_str())) {
            expected.retain(|x| !NOISE.contains(&x.as_str()));
        }
        // "end of line" is only worth saying when nothing else was possible.
        if expected.len() > 1 {
            expected.retain(|x| x != "end of line");
        }
        // Keep the list readable: names of things first, then punctuation.
        expected.sort_by_key(|s| (s.starts_with('`'), s.clone()));
        let expected = match expected.len() {
            0 => "something else".to_string(),
            1 => expected.remove(0),
            _ => {
                let last = expected.pop().unwrap_or_default();
                format!("{} or {}", expected.join(", "), last)
            }
        };
        let (mut found, len) = found_at(text, pos);
        if found == "end of file" && offset > 0 {
            // A re-parsed piece ends where its line ends.
            found = "end of line".into();
        }
        let help = hint(text, pos);
        SyntaxError::Unexpected { expected, found, span: (offset + pos, len).into(), help }
    }

    // ------------------------------------------------------------ file

    fn file(&mut self, pair: Pair<Rule>) -> File {
        let mut items = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::import => {
                    let sp = span(&p);
                    let s = p.into_inner().next().map(|s| self.string(s)).unwrap_or_default();
                    items.push(Item::Import { path: s, span: sp });
                }
                Rule::model => items.push(Item::Model(self.model(p))),
                Rule::train => items.push(Item::Train(self.train(p))),
                Rule::finetune => items.push(Item::Finetune(self.finetune(p))),
                Rule::bad_item => {
                    let sp = trim_span(self.src, span(&p));
                    if self.src[sp.start..sp.end].trim() == "}" {
                        self.errors.push(SyntaxError::StrayBrace { span: sp.into() });
                    } else {
                        self.reparse(Rule::item_alone, sp);
                    }
                    items.push(Item::Error { first_word: self.first_word(sp), span: sp });
                }
                _ => {}
            }
        }
        File { items }
    }

    fn first_word(&self, sp: Span) -> Option<Ident> {
        let text = &self.src[sp.start..sp.end];
        let (s, e) = first_token(text)?;
        let word = &text[s..e];
        if word.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') {
            Some(Ident { name: word.to_string(), span: Span::new(sp.start + s, sp.start + e) })
        } else {
            None
        }
    }

    /// For a malformed statement, the name it seems to define: `NAME = …`,
    /// `input NAME …`, `target NAME …`, `replace NAME …`.
    fn defined_name(&self, sp: Span) -> Option<Ident> {
        let first = self.first_word(sp)?;
        if matches!(first.name.as_str(), "input" | "target" | "replace") {
            let rest = Span::new(first.span.end, sp.end);
            return self.first_word(rest);
        }
        let after = self.src[first.span.end..sp.end].trim_start();
        let assigns = after.starts_with(":=") || (after.starts_with('=') && !after.starts_with("=="));
        assigns.then_some(first)
    }

    // ------------------------------------------------------------ model

    fn model(&mut self, pair: Pair<Rule>) -> Model {
        let sp = span(&pair);
        let mut inner = pair.into_inner();
        let name = ident(inner.next());
        let body = inner.next().map(|b| self.model_body(b)).unwrap_or_default();
        Model { name, body, span: sp }
    }

    fn model_body(&mut self, pair: Pair<Rule>) -> Vec<Stmt> {
        pair.into_inner().filter_map(|p| self.model_stmt(p)).collect()
    }

    fn model_stmt(&mut self, p: Pair<Rule>) -> Option<Stmt> {
        let sp = span(&p);
        Some(match p.as_rule() {
            Rule::input_decl => {
                let mut i = p.into_inner();
                let name = ident(i.next());
                let ty = self.type_expr(i.next()?);
                Stmt::Input { name, ty, span: sp }
            }
            Rule::target_decl => {
                let (name, ty) = self.target_decl(p)?;
                Stmt::Target { name, ty, span: sp }
            }
            Rule::binding => {
                let mut i = p.into_inner();
                let name = ident(i.next());
                let value = self.expr(i.next()?);
                Stmt::Bind { name, value, span: sp }
            }
            Rule::repeat => {
                let mut i = p.into_inner();
                let count_pair = i.next()?;
                let count_span = span(&count_pair);
                let count = self.integer(&count_pair);
                let mut label = None;
                let mut body = Vec::new();
                for q in i {
                    match q.as_rule() {
                        Rule::ident => label = Some(ident(Some(q))),
                        Rule::model_body => body = self.model_body(q),
                        _ => {}
                    }
                }
                Stmt::Repeat { count, count_span, label, body, span: sp }
            }
            Rule::loss_decl => {
                let value = self.expr(p.into_inner().next()?);
                Stmt::Loss { value, span: sp }
            }
            Rule::metric_decl => {
                let mut name = None;
                let mut value = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::ident => name = Some(ident(Some(q))),
                        _ => value = Some(self.expr(q)),
                    }
                }
                Stmt::Metric { name, value: value?, span: sp }
            }
            Rule::bad_stmt => {
                let sp = trim_span(self.src, sp);
                self.reparse(Rule::model_stmt_alone, sp);
                Stmt::Error { first_word: self.first_word(sp), defines: self.defined_name(sp), span: sp }
            }
            _ => return None,
        })
    }

    fn target_decl(&mut self, p: Pair<Rule>) -> Option<(Ident, TypeExpr)> {
        let mut i = p.into_inner();
        let name = ident(i.next());
        let tt = i.next()?; // target_type
        let inner = tt.into_inner().next()?;
        let ty = self.type_expr(inner);
        Some((name, ty))
    }

    fn type_expr(&mut self, p: Pair<Rule>) -> TypeExpr {
        let sp = span(&p);
        match p.as_rule() {
            Rule::class_type => {
                let mut classes = 0;
                let mut classes_span = sp;
                let mut per_token = false;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::integer => {
                            classes_span = span(&q);
                            classes = self.integer(&q);
                        }
                        Rule::per_token => per_token = true,
                        _ => {}
                    }
                }
                TypeExpr::Class { classes, classes_span, per_token, span: sp }
            }
            _ => {
                // tensor_type: dtype ident, dims
                let mut i = p.into_inner();
                let dtype = ident(i.next());
                let dims = i
                    .next()
                    .map(|d| d.into_inner().map(|q| (self.integer(&q), span(&q))).collect())
                    .unwrap_or_default();
                TypeExpr::Tensor { dtype, dims, span: sp }
            }
        }
    }

    // ------------------------------------------------------------ expressions

    fn expr(&mut self, p: Pair<Rule>) -> Expr {
        let sp = span(&p);
        match p.as_rule() {
            Rule::expr => {
                let mut i = p.into_inner();
                let Some(first) = i.next() else {
                    return error_expr(sp);
                };
                let mut acc = self.expr(first);
                for (n, stage) in i.enumerate() {
                    if n >= MAX_CHAIN {
                        self.too_long(sp);
                        break;
                    }
                    let call = self.stage(stage);
                    let s = acc.span.to(call.span);
                    acc = Expr { kind: ExprKind::Pipe { input: Box::new(acc), stage: call }, span: s };
                }
                acc
            }
            Rule::sum | Rule::product => {
                let mut i = p.into_inner();
                let Some(first) = i.next() else {
                    return error_expr(sp);
                };
                let mut acc = self.expr(first);
                let mut n = 0;
                while let (Some(op), Some(rhs)) = (i.next(), i.next()) {
                    n += 1;
                    if n > MAX_CHAIN {
                        self.too_long(sp);
                        break;
                    }
                    let op = match op.as_str() {
                        "+" => BinOp::Add,
                        "-" => BinOp::Sub,
                        _ => BinOp::Mul,
                    };
                    let rhs = self.expr(rhs);
                    let s = acc.span.to(rhs.span);
                    acc = Expr { kind: ExprKind::Binary { op, lhs: Box::new(acc), rhs: Box::new(rhs) }, span: s };
                }
                acc
            }
            Rule::unary => {
                let parts: Vec<_> = p.into_inner().collect();
                let negs = parts.iter().filter(|q| q.as_rule() == Rule::neg).count();
                let Some(prim) = parts.into_iter().find(|q| q.as_rule() != Rule::neg) else {
                    return error_expr(sp);
                };
                let mut e = self.expr(prim);
                // `--x` is `x`; keep at most one negation.
                if negs % 2 == 1 {
                    e = Expr { kind: ExprKind::Neg(Box::new(e)), span: sp };
                }
                e
            }
            Rule::paren => match p.into_inner().next() {
                Some(inner) => {
                    let mut e = self.expr(inner);
                    e.span = sp;
                    e
                }
                None => error_expr(sp),
            },
            Rule::call => Expr { kind: ExprKind::Call(self.call(p)), span: sp },
            Rule::ident => Expr { kind: ExprKind::Name(ident(Some(p))), span: sp },
            Rule::number => {
                let before = self.errors.len();
                let (value, is_int) = self.number(&p);
                if self.errors.len() > before {
                    return error_expr(sp);
                }
                Expr { kind: ExprKind::Number { value, is_int }, span: sp }
            }
            Rule::string => Expr { kind: ExprKind::Str(self.string(p)), span: sp },
            Rule::list => {
                let items = p.into_inner().map(|q| self.expr(q)).collect();
                Expr { kind: ExprKind::List(items), span: sp }
            }
            Rule::range => {
                let mut i = p.into_inner();
                let start = i.next().map(|q| self.integer(&q)).unwrap_or(0);
                let end = i.next().map(|q| self.integer(&q)).unwrap_or(0);
                Expr { kind: ExprKind::Range { start, end }, span: sp }
            }
            Rule::duration => {
                let mut i = p.into_inner();
                let (value, is_int) = i.next().map(|q| self.number(&q)).unwrap_or((0.0, true));
                let unit = match i.next().map(|q| q.as_str()) {
                    Some(u) if u.starts_with("step") => DurationUnit::Steps,
                    _ => DurationUnit::Epochs,
                };
                Expr { kind: ExprKind::Duration { value, is_int, unit }, span: sp }
            }
            _ => error_expr(sp),
        }
    }

    fn too_long(&mut self, sp: Span) {
        self.errors.push(SyntaxError::Unexpected {
            expected: format!("at most {MAX_CHAIN} operators in one expression"),
            found: "a longer chain".into(),
            span: sp.into(),
            help: Some("split the expression into named bindings".into()),
        });
    }

    fn stage(&mut self, p: Pair<Rule>) -> Call {
        let sp = span(&p);
        match p.into_inner().next() {
            Some(q) if q.as_rule() == Rule::call => self.call(q),
            Some(q) => Call { callee: ident(Some(q)), args: Vec::new(), parens: false, span: sp },
            None => Call { callee: ident(None), args: Vec::new(), parens: false, span: sp },
        }
    }

    fn call(&mut self, p: Pair<Rule>) -> Call {
        let sp = span(&p);
        let mut i = p.into_inner();
        let callee = ident(i.next());
        let args = i.next().map(|a| self.args(a)).unwrap_or_default();
        Call { callee, args, parens: true, span: sp }
    }

    fn args(&mut self, p: Pair<Rule>) -> Vec<Arg> {
        p.into_inner().map(|a| self.arg(a)).collect()
    }

    fn arg(&mut self, p: Pair<Rule>) -> Arg {
        let sp = span(&p);
        let mut name = None;
        let mut value = error_expr(sp);
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::ident => name = Some(ident(Some(q))),
                _ => value = self.expr(q),
            }
        }
        Arg { name, value, span: sp }
    }

    fn number(&mut self, p: &Pair<Rule>) -> (f64, bool) {
        let text = p.as_str();
        let is_int = text.bytes().all(|b| b.is_ascii_digit());
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && (!is_int || v <= 9.007_199_254_740_992e15) => (v, is_int),
            _ => {
                self.errors.push(SyntaxError::NumberOutOfRange { text: text.to_string(), span: span(p).into() });
                (0.0, is_int)
            }
        }
    }

    fn integer(&mut self, p: &Pair<Rule>) -> u64 {
        match p.as_str().parse::<u64>() {
            Ok(v) if v <= 1 << 53 => v,
            _ => {
                self.errors.push(SyntaxError::NumberOutOfRange { text: p.as_str().to_string(), span: span(p).into() });
                // A harmless stand-in, so the checker reports nothing more.
                1
            }
        }
    }

    fn string(&mut self, p: Pair<Rule>) -> String {
        let raw = p.into_inner().next().map(|q| q.as_str()).unwrap_or("");
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    // ------------------------------------------------------------ train, finetune

    fn train(&mut self, pair: Pair<Rule>) -> Train {
        let sp = span(&pair);
        let mut i = pair.into_inner();
        let model = ident(i.next());
        let settings = i.next().map(|s| self.settings(s)).unwrap_or_default();
        Train { model, settings, span: sp }
    }

    fn settings(&mut self, pair: Pair<Rule>) -> Vec<Setting> {
        pair.into_inner().filter_map(|p| self.setting(p, Rule::setting_alone)).collect()
    }

    fn setting(&mut self, p: Pair<Rule>, alone: Rule) -> Option<Setting> {
        let sp = span(&p);
        Some(match p.as_rule() {
            Rule::setting => {
                let mut i = p.into_inner();
                let key = ident(i.next());
                let args = i.next().map(|a| self.args(a)).unwrap_or_default();
                Setting::Item { key, args, span: sp }
            }
            Rule::stage => {
                let mut i = p.into_inner();
                let name = ident(i.next());
                let settings = i.next().map(|s| self.settings(s)).unwrap_or_default();
                Setting::Stage(Stage { name, settings, span: sp })
            }
            Rule::bad_stmt => {
                let sp = trim_span(self.src, sp);
                self.reparse(alone, sp);
                Setting::Error { first_word: self.first_word(sp), span: sp }
            }
            _ => return None,
        })
    }

    fn finetune(&mut self, pair: Pair<Rule>) -> Finetune {
        let sp = span(&pair);
        let mut i = pair.into_inner();
        let name = ident(i.next());
        let base = ident(i.next());
        let mut body = Vec::new();
        if let Some(b) = i.next() {
            for p in b.into_inner() {
                let psp = span(&p);
                match p.as_rule() {
                    Rule::target_decl => {
                        if let Some((name, ty)) = self.target_decl(p) {
                            body.push(FinetuneStmt::Target { name, ty, span: psp });
                        }
                    }
                    Rule::map_decl => {
                        let mut j = p.into_inner();
                        if let (Some(a), Some(b)) = (j.next(), j.next()) {
                            let (from, to) = (self.string(a), self.string(b));
                            body.push(FinetuneStmt::Map { from, to, span: psp });
                        }
                    }
                    Rule::replace => {
                        let mut j = p.into_inner();
                        let name = ident(j.next());
                        if let Some(v) = j.next() {
                            let value = self.expr(v);
                            body.push(FinetuneStmt::Replace { name, value, span: psp });
                        }
                    }
                    _ => {
                        if let Some(s) = self.setting(p, Rule::finetune_stmt_alone) {
                            body.push(FinetuneStmt::Setting(s));
                        }
                    }
                }
            }
        }
        Finetune { name, base, body, span: sp }
    }
}

fn ident(p: Option<Pair<Rule>>) -> Ident {
    match p {
        Some(p) => Ident { name: p.as_str().to_string(), span: span(&p) },
        None => Ident { name: String::new(), span: Span::default() },
    }
}

fn error_expr(sp: Span) -> Expr {
    Expr { kind: ExprKind::Name(Ident { name: String::new(), span: sp }), span: sp }
}

/// Drops trailing whitespace and newlines from a span so labels sit on the line.
fn trim_span(src: &str, sp: Span) -> Span {
    let text = &src[sp.start..sp.end];
    let trimmed = text.trim_end();
    let lead = text.len() - text.trim_start().len();
    Span::new(sp.start + lead.min(trimmed.len()), sp.start + trimmed.len())
}

/// The byte range of the first token of `text`, skipping blanks.
fn first_token(text: &str) -> Option<(usize, usize)> {
    let start = text.find(|c: char| !c.is_whitespace())?;
    let rest = &text[start..];
    let c = rest.chars().next()?;
    let len = if c.is_ascii_alphanumeric() || c == '_' {
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())
    } else {
        c.len_utf8()
    };
    Some((start, start + len))
}

/// What stands at `pos`, for "found …", and how long a span to label.
fn found_at(text: &str, pos: usize) -> (String, usize) {
    let rest = text.get(pos..).unwrap_or("");
    match rest.chars().next() {
        None => ("end of file".into(), 0),
        Some('\n') | Some('\r') => ("end of line".into(), 0),
        Some(';') => ("`;`".into(), 1),
        Some(_) => match first_token(rest) {
            Some((0, e)) => (format!("`{}`", &rest[..e]), e),
            _ => {
                let c = rest.chars().next().unwrap_or(' ');
                (format!("`{}`", c.escape_debug()), c.len_utf8())
            }
        },
    }
}

/// A help line for common slips, where the text around the error shows one.
fn hint(text: &str, pos: usize) -> Option<String> {
    let before = text.get(..pos).unwrap_or("").trim_end();
    let rest = text.get(pos..).unwrap_or("");
    let open_parens = before.matches('(').count();
    let close_parens = before.matches(')').count();
    if rest.starts_with("->") || rest.starts_with('>') || rest.starts_with("|>>") {
        return Some("layers are chained with `|>`, as in `x |> dense(128) |> relu`".into());
    }
    if rest.starts_with(":=") || rest.starts_with("==") {
        return Some("bindings use a single `=`, as in `hidden = image |> dense(128)`".into());
    }
    if before.ends_with('=') && rest.starts_with('\n') {
        return Some("a binding needs a value after `=`".into());
    }
    if rest.starts_with('\'') {
        return Some("strings use double quotes: \"data/mnist\"".into());
    }
    if before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == ')')
        && rest.starts_with(|c: char| c.is_ascii_alphabetic())
        && open_parens > close_parens
    {
        return Some("separate arguments with `,`".into());
    }
    if open_parens > close_parens && (rest.is_empty() || rest.starts_with('\n')) {
        return Some("a `(` on this line is never closed".into());
    }
    let open_sq = before.matches('[').count();
    let close_sq = before.matches(']').count();
    if open_sq > close_sq && (rest.is_empty() || rest.starts_with('\n')) {
        return Some("a `[` on this line is never closed".into());
    }
    None
}

/// The offset of the outermost `{` left unclosed at end of file, skipping
/// comments and strings.
fn unclosed_brace(src: &str) -> Option<usize> {
    let mut stack = Vec::new();
    let mut in_comment = false;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in src.char_indices() {
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') | (_, '\n') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '#' => in_comment = true,
            '"' => in_string = true,
            '{' => stack.push(i),
            '}' => {
                stack.pop();
            }
            _ => {}
        }
    }
    // The innermost unclosed brace is usually the one the user forgot; but a
    // missing `}` is only noticed at the end, so point at the last opened.
    stack.last().copied()
}

/// Human descriptions of the grammar rules that can appear in "expected …".
fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident | Rule::pipe_stage => "a name",
        Rule::number | Rule::duration => "a number",
        Rule::integer | Rule::dims => "a whole number",
        Rule::string => "a string",
        Rule::expr | Rule::sum | Rule::product | Rule::unary | Rule::paren | Rule::arg => "an expression",
        Rule::call => "a layer call",
        Rule::args | Rule::setting_args => "arguments",
        Rule::tensor_type | Rule::target_type | Rule::class_type => "a type such as `f32[784]`",
        Rule::input_decl | Rule::target_decl | Rule::binding | Rule::repeat | Rule::loss_decl | Rule::metric_decl => {
            "a statement"
        }
        Rule::setting => "a setting",
        Rule::model | Rule::train | Rule::finetune | Rule::import => "`model`, `train`, `finetune` or `import`",
        Rule::model_body | Rule::settings | Rule::finetune_body => "`{`",
        Rule::per_token => "`per token`",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::EOI => "end of input",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_first_model() {
        let src = "model m {\n  input image: f32[784]\n  target label: class[10]\n  h = image |> dense(128) |> relu\n  logits = h\n    |> dense(10)\n  loss cross_entropy(logits, label)\n}\n";
        let (file, errors) = parse(src);
        assert!(errors.is_empty(), "{errors:?}");
        let Item::Model(m) = &file.items[0] else { panic!("not a model: {file:?}") };
        assert_eq!(m.name.name, "m");
        assert_eq!(m.body.len(), 5);
        let Stmt::Bind { value, .. } = &m.body[3] else { panic!() };
        assert!(matches!(value.kind, ExprKind::Pipe { .. }));
        assert_eq!(&src[value.span.start..value.span.end], "h\n    |> dense(10)");
    }

    #[test]
    fn reports_every_bad_line_and_keeps_the_rest() {
        let src = "model m {\n  input image f32[784]\n  h = image |> dense(128\n  y = h |> relu\n}\n";
        let (file, errors) = parse(src);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let Item::Model(m) = &file.items[0] else { panic!() };
        assert!(matches!(&m.body[2], Stmt::Bind { name, .. } if name.name == "y"));
        let Stmt::Error { defines, .. } = &m.body[1] else { panic!() };
        assert_eq!(defines.as_ref().map(|d| d.name.as_str()), Some("h"));
    }

    #[test]
    fn pipe_binds_looser_than_plus() {
        let (file, errors) = parse("model m { y = a + b |> relu }");
        assert!(errors.is_empty(), "{errors:?}");
        let Item::Model(m) = &file.items[0] else { panic!() };
        let Stmt::Bind { value, .. } = &m.body[0] else { panic!() };
        let ExprKind::Pipe { input, .. } = &value.kind else { panic!("{value:?}") };
        assert!(matches!(input.kind, ExprKind::Binary { op: BinOp::Add, .. }));
    }

    #[test]
    fn unclosed_block_is_one_clear_error() {
        let (_, errors) = parse("model m {\n  x = y\n");
        assert!(matches!(errors.as_slice(), [SyntaxError::Unclosed { .. }]), "{errors:?}");
    }
}
