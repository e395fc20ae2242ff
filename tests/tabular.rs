//! Tabular data as a new user brings it: CSV files with a header, a named
//! label column with class names, a held-out test file. The preprocessing
//! fitted on the training samples travels with the checkpoint; `eval` and
//! `predict` apply it and read columns by name.

use std::path::{Path, PathBuf};

use modelc_compiler::rng::Rng;

use crate::modelc;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("modelc-tab-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// Rows of a two-class problem ("B", "M") whose four features live on very
/// different scales, so unscaled or wrongly scaled inputs give other answers.
fn rows(n: usize, seed: u64) -> Vec<(String, [f64; 4])> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let m = rng.uniform(0.0, 1.0) < 0.4;
            let shift = if m { 1.0 } else { -1.0 };
            let f = [
                500.0 + 80.0 * (shift + rng.normal()),
                0.02 + 0.006 * (shift * 0.8 + rng.normal()),
                3.0 + rng.normal(),
                -40.0 + 10.0 * (shift * 0.5 + rng.normal()),
            ];
            ((if m { "M" } else { "B" }).to_string(), f)
        })
        .collect()
}

fn csv_text(rows: &[(String, [f64; 4])], columns: &[&str]) -> String {
    let mut s = columns.join(",") + "\n";
    for (label, f) in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match *c {
                "diagnosis" => label.clone(),
                "radius" => format!("{}", f[0]),
                "smoothness" => format!("{}", f[1]),
                "noise" => format!("{}", f[2]),
                _ => format!("{}", f[3]),
            })
            .collect();
        s.push_str(&cells.join(","));
        s.push('\n');
    }
    s
}

const COLUMNS: &[&str] = &["radius", "smoothness", "diagnosis", "noise", "depth"];

/// A spec over `train.csv` (and `test.csv`) in `d`.
fn spec(d: &Path, extra: &str) -> PathBuf {
    let train = d.join("train.csv");
    let test = d.join("test.csv");
    let text = format!(
        "model tab {{\n  input  x: f32[4]\n  target y: class[2]\n  h = x |> dense(16) |> relu\n  logits = h |> dense(2)\n  loss   cross_entropy(logits, y)\n  metric accuracy(logits, y)\n}}\n\ntrain tab {{\n  data      csv(\"{}\", label: \"diagnosis\", scale: standard, test: \"{}\")\n  batch     16\n  epochs    15\n  optimizer adam(lr: 1e-2)\n  seed      3\n{extra}}}\n",
        train.display(),
        test.display()
    );
    let p = d.join("tab.model");
    std::fs::write(&p, text).expect("spec");
    p
}

fn setup(name: &str) -> (PathBuf, PathBuf) {
    let d = dir(name);
    std::fs::write(d.join("train.csv"), csv_text(&rows(400, 1), COLUMNS)).expect("train");
    // The test file's columns in another order: read by name.
    let shuffled = ["depth", "diagnosis", "noise", "smoothness", "radius"];
    std::fs::write(d.join("test.csv"), csv_text(&rows(150, 2), &shuffled)).expect("test");
    let s = spec(&d, "");
    (d, s)
}

fn train(d: &Path, spec: &Path) -> (String, serde_json::Value) {
    let out = d.join("run").to_string_lossy().into_owned();
    let (code, text, err) = modelc(&["train", &spec.to_string_lossy(), "--out", &out]);
    assert_eq!(code, 0, "{err}");
    let log = std::fs::read_to_string(d.join("run/log.jsonl")).expect("log");
    let last = serde_json::from_str(log.lines().last().expect("a line")).expect("json");
    (text, last)
}

/// The fraction of `predict`'s answers on `file` that match its labels.
fn predict_accuracy(spec: &Path, weights: &str, file: &Path) -> (f64, Vec<String>) {
    let (code, text, err) =
        modelc(&["predict", &spec.to_string_lossy(), "--weights", weights, "--input", &file.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let answers: Vec<String> = text.lines().map(|l| l.split('\t').nth(1).expect("class").to_string()).collect();
    let csv = std::fs::read_to_string(file).expect("file");
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let col = header.iter().position(|c| *c == "diagnosis").expect("label column");
    let labels: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').nth(col).expect("label")).collect();
    assert_eq!(answers.len(), labels.len(), "one answer a row");
    let right = answers.iter().zip(&labels).filter(|(a, l)| a == l).count();
    (right as f64 / labels.len() as f64, answers)
}

fn eval_accuracy(spec: &Path, weights: &str, file: &Path) -> (f64, String) {
    let (code, text, err) =
        modelc(&["eval", &spec.to_string_lossy(), "--weights", weights, "--data", &file.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let line = text.lines().find(|l| l.starts_with("accuracy")).expect("accuracy line");
    let pct: f64 = line.trim_start_matches("accuracy").trim().trim_end_matches('%').parse().expect("number");
    (pct / 100.0, text)
}

/// Before: `eval --data test.csv` rescaled the test file by its own
/// statistics, took a validation split of it, and `predict` did not scale
/// at all and refused a file with the label column. Now all three read the
/// file alike: `eval`'s accuracy is `predict`'s answers against the labels,
/// and both equal the accuracy the training log reported on the test file.
#[test]
fn eval_and_predict_apply_the_training_preprocessing() {
    let (d, spec) = setup("travel");
    let (text, last) = train(&d, &spec);
    assert!(text.contains("classes (named in the label column, numbered in sorted order): 0 = B, 1 = M"), "{text}");
    assert!(text.contains("150 test"), "the spec's test file is used: {text}");
    let logged = last["test_accuracy"].as_f64().expect("test accuracy");
    assert!(logged > 0.85, "the model learned: {logged}");
    let weights = d.join("run/last.safetensors").to_string_lossy().into_owned();
    let test = d.join("test.csv");
    let (eval_acc, eval_text) = eval_accuracy(&spec, &weights, &test);
    assert!(eval_text.contains("on 150 test samples"), "the whole file is test data: {eval_text}");
    let (pred_acc, _) = predict_accuracy(&spec, &weights, &test);
    assert!((eval_acc - pred_acc).abs() < 0.005, "eval {eval_acc} vs predict {pred_acc}");
    assert!((eval_acc - logged).abs() < 0.005, "eval {eval_acc} vs the log's {logged}");

    // One row: its own statistics would make every feature 0.
    let one = d.join("one.csv");
    let text = std::fs::read_to_string(&test).expect("test");
    std::fs::write(&one, text.lines().take(2).collect::<Vec<_>>().join("\n") + "\n").expect("one row");
    let (_, answers) = predict_accuracy(&spec, &weights, &one);
    let (_, all) = predict_accuracy(&spec, &weights, &test);
    assert_eq!(answers[0], all[0], "a row is answered alike alone or among others");
    std::fs::remove_dir_all(&d).ok();
}

/// `predict` on files as users have them: no header (the first row was
/// dropped before), a byte-order mark, blank lines, `.CSV` (read as IDX
/// before), the label column present or not.
#[test]
fn predict_reads_csv_files_as_users_have_them() {
    let (d, spec) = setup("predict");
    train(&d, &spec);
    let weights = d.join("run/last.safetensors").to_string_lossy().into_owned();
    let data = rows(5, 9);
    let features_only = ["radius", "smoothness", "noise", "depth"];
    let headerless: String = csv_text(&data, &features_only).lines().skip(1).map(|l| format!("{l}\n")).collect();
    let with_label_no_header: String = csv_text(&data, COLUMNS).lines().skip(1).map(|l| format!("{l}\n")).collect();
    let files = [
        ("named.csv", csv_text(&data, COLUMNS)),
        ("features.csv", csv_text(&data, &features_only)),
        ("headerless.csv", headerless),
        ("labelled_headerless.csv", with_label_no_header.replace(",M,", ",1,").replace(",B,", ",0,")),
        ("bom.csv", format!("\u{feff}{}", csv_text(&data, COLUMNS))),
        ("blank.csv", csv_text(&data, COLUMNS).replacen('\n', "\n\n", 3)),
        ("UPPER.CSV", csv_text(&data, COLUMNS)),
    ];
    let mut answers = Vec::new();
    for (name, text) in &files {
        let p = d.join(name);
        std::fs::write(&p, text).expect("file");
        let (code, out, err) =
            modelc(&["predict", &spec.to_string_lossy(), "--weights", &weights, "--input", &p.to_string_lossy()]);
        if *name == "labelled_headerless.csv" {
            // The training file's label column was named: without a header
            // a fifth column cannot be placed, and the error says so.
            assert_eq!(code, 1, "{name}: {out}");
            assert!(err.contains("add the header line"), "{name}: {err}");
            continue;
        }
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(out.lines().count(), 5, "{name}: every row answered: {out}");
        answers.push(out);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "the same rows, the same answers: {answers:?}");
    std::fs::remove_dir_all(&d).ok();
}

/// Bad values are refused at load with line and column, and the width
/// error names the file that was read, not the spec's path.
#[test]
fn csv_values_and_widths_are_checked_at_load() {
    let (d, spec) = setup("values");
    let big = d.join("big.csv");
    std::fs::write(&big, "radius,smoothness,diagnosis,noise,depth\n1,2,M,3,4\n1,1e39,B,3,4\n").expect("file");
    let out = d.join("run").to_string_lossy().into_owned();
    let (code, _, err) =
        modelc(&["train", &spec.to_string_lossy(), "--out", &out, "--set", &format!("data={}", big.display())]);
    assert_eq!(code, 1);
    assert!(err.contains("big.csv:3:3: `1e39` is too large for f32"), "{err}");
    let narrow = d.join("narrow.csv");
    std::fs::write(&narrow, "a,diagnosis\n1,M\n2,B\n").expect("file");
    let (code, _, err) =
        modelc(&["train", &spec.to_string_lossy(), "--out", &out, "--set", &format!("data={}", narrow.display())]);
    assert_eq!(code, 1);
    assert!(err.contains("narrow.csv: samples have 1 values, but the model's input `x` takes 4"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// `validation` with one training sample panicked (`clamp` with max < min).
#[test]
fn validation_with_too_few_samples_is_an_error() {
    let (d, _) = setup("val");
    let spec = spec(&d, "  validation 0.2\n");
    let out = d.join("run").to_string_lossy().into_owned();
    let (code, _, err) = modelc(&["train", &spec.to_string_lossy(), "--out", &out, "--set", "limit=1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("`validation 0.2` needs at least 2 training samples to hold some out, and there is 1"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).ok();
}
