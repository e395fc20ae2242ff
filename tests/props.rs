//! No input panics: random mutations of the valid specs (deleted, duplicated
//! and swapped tokens, random characters, truncation) all end in a checked
//! program or in diagnostics whose spans lie inside the text and render.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use modelc_compiler::Loader;
use proptest::prelude::*;

/// Serves the real specs from memory, so imports resolve without the disk.
struct MapLoader(HashMap<PathBuf, String>);

impl Loader for MapLoader {
    fn load(&self, path: &Path) -> Result<String, String> {
        self.0.get(path).cloned().ok_or_else(|| "no such file".into())
    }
}

fn specs() -> Vec<(String, String)> {
    ["mnist_mlp", "lenet5", "xor", "lenet5_finetune", "char_gpt"]
        .iter()
        .map(|n| {
            let path = format!("specs/{n}.model");
            let text = std::fs::read_to_string(&path).expect("spec");
            (path, text)
        })
        .collect()
}

/// Splits text into tokens: words, numbers, single punctuation, whitespace runs.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let class = |c: char| {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            0
        } else if c.is_whitespace() {
            1
        } else {
            2
        }
    };
    for w in chars.windows(2) {
        let ((_, a), (j, b)) = (w[0], w[1]);
        if class(a) != class(b) || class(a) == 2 {
            out.push(&text[start..j]);
            start = j;
        }
    }
    out.push(&text[start..]);
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Insert(usize, String),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (
            any::<usize>(),
            prop_oneof![
                "[ -~\n]{1,6}",
                "[{}()\\[\\]|>:,=\"#.]{1,3}",
                any::<String>().prop_map(|s| s.chars().take(4).collect()),
                Just("999999999999999999999".to_string()),
                Just("((((((((((".to_string()),
            ]
        )
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut toks: Vec<String> = tokens(text).into_iter().map(String::from).collect();
    for m in muts {
        let n = toks.len().max(1);
        match m {
            Mutation::Delete(i) if !toks.is_empty() => {
                toks.remove(i % n);
            }
            Mutation::Duplicate(i) if !toks.is_empty() => {
                let t = toks[i % n].clone();
                toks.insert(i % n, t);
            }
            Mutation::Swap(a, b) if !toks.is_empty() => toks.swap(a % n, b % n),
            Mutation::Insert(i, s) => toks.insert(i % (toks.len() + 1), s.clone()),
            Mutation::Truncate(i) => toks.truncate(i % n),
            _ => {}
        }
    }
    toks.concat()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_specs_never_panic(which in 0usize..5, muts in prop::collection::vec(mutation(), 1..4)) {
        let all = specs();
        let (path, text) = &all[which];
        let mutated = apply(text, &muts);
        let loader = MapLoader(all.iter().map(|(p, t)| (PathBuf::from(p), t.clone())).collect());
        let (sources, _, errors) = modelc_compiler::check_text(path, mutated, &loader);
        for e in &errors {
            let text = &sources.file(e.file).text;
            for l in e.error.labels().into_iter().flatten() {
                prop_assert!(l.offset() + l.len() <= text.len(), "label past the end: {}", e.error);
            }
            let rendered = modelc::render::diagnostic(&sources, e, false, 80);
            prop_assert!(!rendered.is_empty());
        }
    }
}

#[test]
fn the_mutator_changes_text() {
    let text = "hidden = image |> dense(128)";
    assert_eq!(tokens(text).concat(), text);
    assert_eq!(apply(text, &[Mutation::Delete(0)]), " = image |> dense(128)");
    assert_eq!(apply(text, &[Mutation::Truncate(3)]), "hidden =");
}
