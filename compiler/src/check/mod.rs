//! Semantic checking: from parsed files to a checked [`Program`].
//!
//! Resolves names across files, checks every model (shapes, arguments),
//! every train block (settings, data fit) and every finetune (the base model
//! with its replacements, the stages and their frozen sets). Reports every
//! error it can find in one run; a broken piece does not stop the rest.

pub mod args;
pub mod layers;
pub mod model;
pub mod train;
pub mod types;

use std::collections::{BTreeMap, HashMap};

use modelc_grammar::ast::{self, FinetuneStmt, Item};

use crate::diag::{did_you_mean, CheckError, Error, Located};
use crate::source::{FileId, Sources};
pub use model::{ModelInfo, Node, Op, ParamInfo};
pub use train::{FinetuneInfo, TrainInfo};

/// Everything checked in one compilation.
#[derive(Debug, Default)]
pub struct Program {
    pub models: Vec<ModelInfo>,
    pub trains: Vec<TrainInfo>,
    pub finetunes: Vec<FinetuneInfo>,
}

impl Program {
    pub fn model(&self, name: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Checks every file of `sources`. Errors come back sorted by file and offset.
pub fn check(sources: &Sources) -> (Program, Vec<Located>) {
    let mut errors = Vec::new();
    let mut program = Program::default();

    // Models first, from every file, so train and finetune blocks anywhere can
    // refer to them.
    let mut model_asts: BTreeMap<String, (FileId, &ast::Model)> = BTreeMap::new();
    // Each model's own errors, so a finetune reports only what it adds.
    let mut model_errors: HashMap<String, Vec<Located>> = HashMap::new();
    for id in sources.ids() {
        for item in &sources.file(id).ast.items {
            let Item::Model(m) = item else { continue };
            if let Some((first_file, first)) = model_asts.get(&m.name.name) {
                let first = (*first_file == id).then_some(first.name.span.into());
                errors.push(Located {
                    file: id,
                    error: Error::Check(CheckError::Duplicate {
                        what: "model",
                        name: m.name.name.clone(),
                        span: m.name.span.into(),
                        first,
                    }),
                });
                continue;
            }
            model_asts.insert(m.name.name.clone(), (id, m));
            let (info, errs) = model::ModelChecker::new(id, model::Overrides::default()).check(m);
            errors.extend(errs.iter().cloned());
            model_errors.insert(m.name.name.clone(), errs);
            program.models.push(info);
        }
    }
    let broken_items: Vec<(FileId, String)> = sources
        .ids()
        .flat_map(|id| {
            sources.file(id).ast.items.iter().filter_map(move |i| match i {
                Item::Error { first_word: Some(w), .. } => Some((id, w.name.clone())),
                _ => None,
            })
        })
        .collect();
    let model_names: Vec<String> = model_asts.keys().cloned().collect();
    let unknown_model = |name: &ast::Ident, file: FileId| Located {
        file,
        error: Error::Check(CheckError::Unknown {
            kind: "model",
            name: name.name.clone(),
            span: name.span.into(),
            help: did_you_mean(&name.name, model_names.iter().map(String::as_str)).or_else(|| {
                Some(if model_names.is_empty() {
                    "define it with `model NAME { … }`, or `import` the file that does".into()
                } else {
                    format!(
                        "the models are {}",
                        model_names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                    )
                })
            }),
        }),
    };
    // A model whose header did not parse may be the one referred to: stay quiet.
    let quiet = !broken_items.iter().all(|(_, w)| w != "model");

    for id in sources.ids() {
        let mut finetune_names: HashMap<String, ast::Span> = HashMap::new();
        for item in &sources.file(id).ast.items {
            match item {
                Item::Train(t) => {
                    let model = program.model(&t.model.name).cloned();
                    if model.is_none() && !quiet {
                        errors.push(unknown_model(&t.model, id));
                    }
                    let mut checker = train::SettingsChecker { file: id, errors: &mut errors };
                    let info = checker.train(t, model.as_ref());
                    program.trains.push(info);
                }
                Item::Finetune(f) => {
                    if let Some(first) = finetune_names.insert(f.name.name.clone(), f.name.span) {
                        errors.push(Located {
                            file: id,
                            error: Error::Check(CheckError::Duplicate {
                                what: "finetune",
                                name: f.name.name.clone(),
                                span: f.name.span.into(),
                                first: Some(first.into()),
                            }),
                        });
                        continue;
                    }
                    let Some((base_file, base_ast)) = model_asts.get(&f.base.name).copied() else {
                        if !quiet {
                            errors.push(unknown_model(&f.base, id));
                        }
                        continue;
                    };
                    if let Some(info) = finetune(f, id, base_file, base_ast, &model_errors[&f.base.name], &mut errors) {
                        program.finetunes.push(info);
                    }
                }
                _ => {}
            }
        }
    }
    errors.sort_by_key(|e| (e.file, e.offset()));
    errors.dedup();
    (program, errors)
}

/// Re-checks the base model with the finetune's targets and replacements,
/// then checks the finetune's settings and stages against it.
fn finetune(
    f: &ast::Finetune,
    file: FileId,
    base_file: FileId,
    base: &ast::Model,
    base_errors: &[Located],
    errors: &mut Vec<Located>,
) -> Option<FinetuneInfo> {
    let mut overrides = model::Overrides { file: Some(file), ..Default::default() };
    let mut replaced_names = Vec::new();
    let top_bindings: Vec<&ast::Ident> = base
        .body
        .iter()
        .filter_map(|s| match s {
            ast::Stmt::Bind { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    let base_targets: Vec<&ast::Ident> = base
        .body
        .iter()
        .filter_map(|s| match s {
            ast::Stmt::Target { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    let mut ok = true;
    let mut replace_spans: HashMap<String, ast::Span> = HashMap::new();
    for s in &f.body {
        match s {
            FinetuneStmt::Replace { name, value, span } => {
                if !top_bindings.iter().any(|b| b.name == name.name) {
                    let help = did_you_mean(&name.name, top_bindings.iter().map(|b| b.name.as_str()));
                    errors.push(Located {
                        file,
                        error: Error::Check(CheckError::NoSuchLayer {
                            name: name.name.clone(),
                            model: base.name.name.clone(),
                            span: name.span.into(),
                            help,
                        }),
                    });
                    ok = false;
                    continue;
                }
                if let Some(first) = replace_spans.insert(name.name.clone(), *span) {
                    errors.push(Located {
                        file,
                        error: Error::Check(CheckError::DeclaredTwice {
                            what: format!("the replacement of `{}`", name.name),
                            span: (*span).into(),
                            first: first.into(),
                            help: Some("replace a binding once".into()),
                        }),
                    });
                    continue;
                }
                overrides.replace.insert(name.name.clone(), value);
                replaced_names.push(name.name.clone());
            }
            FinetuneStmt::Target { name, ty, .. } => {
                if !base_targets.iter().any(|t| t.name == name.name) {
                    let help = did_you_mean(&name.name, base_targets.iter().map(|t| t.name.as_str()))
                        .or_else(|| base_targets.first().map(|t| format!("the base model's target is `{}`", t.name)));
                    errors.push(Located {
                        file,
                        error: Error::Check(CheckError::Undefined {
                            name: name.name.clone(),
                            span: name.span.into(),
                            help,
                        }),
                    });
                    ok = false;
                    continue;
                }
                overrides.targets.insert(name.name.clone(), ty);
            }
            FinetuneStmt::Setting(_) | FinetuneStmt::Map { .. } => {}
        }
    }
    let (model, model_errors): (ModelInfo, Vec<Located>) = model::ModelChecker::new(base_file, overrides).check(base);
    // Errors in the base model's own lines were reported when it was checked
    // alone; keep only those that the finetune's changes cause.
    let new_errors: Vec<Located> = model_errors.into_iter().filter(|e| !base_errors.contains(e)).collect();
    let had_errors = !new_errors.is_empty();
    // When a replacement or target named nothing, what follows from the
    // unchanged model is noise.
    if ok {
        errors.extend(new_errors);
    }
    let mut model = model;
    model.has_errors |= !ok;
    let replaced: Vec<String> = model
        .params
        .iter()
        .filter(|p| replaced_names.iter().any(|r| p.layer == *r || p.layer.starts_with(&format!("{r}."))))
        .map(|p| p.layer.clone())
        .fold(Vec::new(), |mut v, l| {
            if !v.contains(&l) {
                v.push(l);
            }
            v
        });
    let mut checker = train::SettingsChecker { file, errors };
    let info = checker.finetune(f, model, replaced);
    // A finetune whose model did not check is not worth summarizing.
    (ok && !had_errors).then_some(info)
}
