//! Every spec in `specs/`: valid ones check clean and their summaries are
//! snapshots; every invalid one fails with located diagnostics whose
//! rendering (no colour, width 80) is a snapshot.

use std::path::Path;

use miette::Diagnostic;
use modelc::render;
use modelc_compiler::summary::summarize;

use crate::{check_spec, relative};

#[test]
fn invalid_specs_fail_with_located_diagnostics() {
    insta::glob!("../specs/invalid", "*.model", |abs| {
        let rel = relative(abs);
        let (sources, _, errors) = check_spec(rel);
        assert!(!errors.is_empty(), "{} should fail to check", rel.display());
        for e in &errors {
            let labels: Vec<_> = e.error.labels().map(|l| l.collect()).unwrap_or_default();
            assert!(!labels.is_empty(), "{}: diagnostic without a span: {}", rel.display(), e.error);
            let text = &sources.file(e.file).text;
            for l in &labels {
                assert!(l.offset() + l.len() <= text.len(), "{}: label past the end", rel.display());
            }
            assert!(e.error.code().is_some(), "{}: diagnostic without a code", rel.display());
        }
        insta::assert_snapshot!(render::diagnostics(&sources, &errors, false, 80));
    });
}

/// Each invalid spec names, on its first line, the code and line of the
/// error it must produce first: `# expect: E0200 at line 7`.
#[test]
fn invalid_specs_fail_where_they_say() {
    insta::glob!("../specs/invalid", "*.model", |abs| {
        let rel = relative(abs);
        let (sources, _, errors) = check_spec(rel);
        let text = &sources.file(modelc_compiler::FileId(0)).text;
        let header = text.lines().next().unwrap_or("");
        let expect =
            header.strip_prefix("# expect: ").unwrap_or_else(|| panic!("{}: no `# expect:` header", rel.display()));
        let (code, line) = expect.split_once(" at line ").expect("`CODE at line N`");
        let first = errors.first().expect("an error");
        let got_line = sources.line_of(first.file, first.offset());
        assert_eq!((first.code().as_str(), got_line.to_string().as_str()), (code, line), "{}", rel.display());
    });
}

#[test]
fn invalid_specs_are_many_and_cover_every_area() {
    let mut areas = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("specs/invalid").expect("specs/invalid") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        if let Some(area) = name.split('_').next() {
            *areas.entry(area.to_string()).or_insert(0) += 1;
        }
    }
    let total: usize = areas.values().sum();
    assert!(total >= 40, "only {total} invalid specs");
    for area in ["syntax", "names", "args", "shapes", "sections"] {
        assert!(areas.get(area).copied().unwrap_or(0) >= 5, "too few `{area}` specs: {areas:?}");
    }
}

#[test]
fn valid_specs_check_clean_and_summaries_are_stable() {
    insta::glob!("../specs", "*.model", |abs| {
        let rel = relative(abs);
        let (sources, program, errors) = check_spec(rel);
        assert!(errors.is_empty(), "{}:\n{}", rel.display(), render::diagnostics(&sources, &errors, false, 80));
        let (code, out, err) = crate::modelc(&["summary", &rel.to_string_lossy()]);
        assert_eq!(code, 0, "{err}");
        assert!(!program.models.is_empty() || !program.finetunes.is_empty());
        insta::assert_snapshot!(out);
    });
}

fn params_by_layer(path: &str, model: &str) -> (u64, Vec<(String, u64)>) {
    let (_, program, errors) = check_spec(Path::new(path));
    assert!(errors.is_empty(), "{errors:?}");
    let m = program.model(model).expect("model");
    let s = summarize(m, None, None, None);
    let rows = s.rows.iter().filter(|r| r.trainable > 0).map(|r| (r.layer.clone(), r.trainable)).collect();
    (s.totals.params, rows)
}

/// PyTorch's counts for the same models (nn.Linear / nn.Conv2d with bias).
#[test]
fn parameter_counts_match_pytorch() {
    let (total, _) = params_by_layer("specs/mnist_mlp.model", "mnist_mlp");
    assert_eq!(total, 101_770);
    let (total, rows) = params_by_layer("specs/lenet5.model", "lenet5");
    assert_eq!(total, 44_426);
    let expected = [("conv1", 156), ("conv2", 2_416), ("fc1", 30_840), ("fc2", 10_164), ("logits", 850)];
    let rows: Vec<(&str, u64)> = rows.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    assert_eq!(rows, expected);
    // nn.TransformerEncoder-style blocks with nn.MultiheadAttention (4·d² + 4·d).
    let (total, _) = params_by_layer("specs/char_gpt.model", "char_gpt");
    assert_eq!(total, 834_400);
    let (total, _) = params_by_layer("specs/xor.model", "xor");
    assert_eq!(total, 17);
}

#[test]
fn parameter_names_and_layouts_follow_pytorch() {
    let (_, program, _) = check_spec(Path::new("specs/lenet5.model"));
    let m = program.model("lenet5").expect("model");
    let names: Vec<(String, Vec<u64>)> = m.params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
    assert_eq!(names[0], ("conv1.weight".to_string(), vec![6, 1, 5, 5]));
    assert_eq!(names[1], ("conv1.bias".to_string(), vec![6]));
    assert_eq!(names[4], ("fc1.weight".to_string(), vec![120, 256]));
    let (_, program, _) = check_spec(Path::new("specs/char_gpt.model"));
    let m = program.model("char_gpt").expect("model");
    let has = |n: &str| m.params.iter().any(|p| p.name == n);
    assert!(has("blocks.0.attn.1.in_proj_weight"));
    assert!(has("blocks.3.mlp.3.bias"));
    assert!(has("x.0.weight"), "embedding weight named after its binding");
}

#[test]
fn finetune_freezes_what_the_stages_say() {
    let (_, program, errors) = check_spec(Path::new("specs/lenet5_finetune.model"));
    assert!(errors.is_empty(), "{errors:?}");
    let f = &program.finetunes[0];
    assert_eq!(f.replaced, vec!["logits".to_string()]);
    let head: Vec<&str> = f.stages[0].trainable.iter().flatten().map(String::as_str).collect();
    assert_eq!(head, ["logits.bias", "logits.weight"]);
    let all = f.stages[1].trainable.as_ref().expect("a stage lists what trains");
    assert!(all.contains("conv2.weight") && all.contains("fc1.bias") && all.contains("logits.weight"));
    assert!(!all.contains("conv1.weight"), "conv1 stays frozen");
    assert_eq!(f.stages[1].lr_scale.get("conv2.weight"), Some(&0.1));
    assert_eq!(f.model.params.iter().find(|p| p.name == "logits.weight").map(|p| p.shape.clone()), Some(vec![5, 84]));
}
