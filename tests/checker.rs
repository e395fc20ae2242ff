//! The checker on small in-memory programs: semantics that the spec
//! snapshots do not pin down by themselves.

use std::path::Path;

use modelc_compiler::check::types::{DType, Dim, Shape};
use modelc_compiler::{Loader, Located, Program};

struct NoFiles;

impl Loader for NoFiles {
    fn load(&self, _: &Path) -> Result<String, String> {
        Err("no such file".into())
    }
}

fn check(src: &str) -> (Program, Vec<Located>) {
    let (_, p, e) = modelc_compiler::check_text("test.model", src.to_string(), &NoFiles);
    (p, e)
}

fn codes(src: &str) -> Vec<String> {
    check(src).1.iter().map(Located::code).collect()
}

const HEAD: &str = "model m {\n  input x: f32[8]\n  target y: class[4]\n";

#[test]
fn repeat_carries_outer_names_and_prefixes_parameters() {
    let src = format!("{HEAD}  h = x |> dense(16)\n  repeat 3 {{\n    h = h + (h |> dense(16) |> relu)\n  }}\n  logits = h |> dense(4)\n  loss cross_entropy(logits, y)\n}}\n");
    let (p, e) = check(&src);
    assert!(e.is_empty(), "{e:?}");
    let m = p.model("m").expect("model");
    let names: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "h.weight",
            "h.bias",
            "repeat0.0.h.weight",
            "repeat0.0.h.bias",
            "repeat0.1.h.weight",
            "repeat0.1.h.bias",
            "repeat0.2.h.weight",
            "repeat0.2.h.bias",
            "logits.weight",
            "logits.bias"
        ]
    );
}

#[test]
fn redefining_a_name_outside_repeat_is_an_error() {
    let src = format!(
        "{HEAD}  h = x |> dense(16)\n  h = h |> relu\n  logits = h |> dense(4)\n  loss cross_entropy(logits, y)\n}}\n"
    );
    assert_eq!(codes(&src), ["E0201"]);
}

#[test]
fn per_token_targets_take_the_prediction_shape() {
    let src = "model t {\n  input tok: i32[12]\n  target nxt: class[7] per token\n  logits = embed(tok, 7, dim: 8) |> dense(7)\n  loss cross_entropy(logits, nxt)\n}\n";
    let (p, e) = check(src);
    assert!(e.is_empty(), "{e:?}");
    let m = p.model("t").expect("model");
    let target = &m.nodes[m.targets[0]];
    assert_eq!(target.ty.dtype, DType::Class { classes: 7 });
    assert_eq!(target.ty.shape, Shape(vec![Dim::Batch, Dim::Fixed(12)]));
}

#[test]
fn one_mistake_gives_one_diagnostic() {
    // A broken line still defines its name, so `logits` is not "undefined".
    let src = format!("{HEAD}  h = x |> dense(16\n  logits = h |> dense(4)\n  loss cross_entropy(logits, y)\n}}\n");
    assert_eq!(codes(&src), ["E0100"]);
    // A typo of a required argument is not also reported missing.
    let src = format!("{HEAD}  logits = x |> dense(unit: 4)\n  loss cross_entropy(logits, y)\n}}\n");
    assert_eq!(codes(&src), ["E0300"]);
}

#[test]
fn every_error_is_reported_in_one_run() {
    let src = format!("{HEAD}  a = x |> dens(16)\n  b = x |> dense(0)\n  c = q |> relu\n  logits = x |> dense(4)\n  loss cross_entropy(logits, y)\n}}\n");
    assert_eq!(codes(&src), ["E0204", "E0303", "E0200"]);
}

#[test]
fn windows_line_endings_parse() {
    let src = format!("{HEAD}  logits = x |> dense(4)\n  loss cross_entropy(logits, y)\n}}\n").replace('\n', "\r\n");
    let (p, e) = check(&src);
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(p.models[0].param_count(), 36);
}

#[test]
fn flags_and_pairs_bind() {
    let src = "model c {\n  input img: f32[3, 32, 32]\n  target y: class[2]\n  f = img |> conv2d(8, kernel: [3, 5], stride: 2, padding: same, bias: false)\n  logits = f |> flatten |> dense(2)\n  loss cross_entropy(logits, y)\n}\n";
    // `padding: same` needs stride 1.
    assert_eq!(codes(src), ["E0310"]);
    let src = src.replace("stride: 2, ", "");
    let (p, e) = check(&src);
    assert!(e.is_empty(), "{e:?}");
    let m = p.model("c").expect("model");
    assert_eq!(m.params[0].shape, vec![8, 3, 3, 5]);
    // same padding keeps 32×32: 8·32·32 inputs to the dense layer.
    assert_eq!(m.params[1].shape, vec![2, 8 * 32 * 32]);
}

#[test]
fn import_cycles_and_missing_imports() {
    struct Two;
    impl Loader for Two {
        fn load(&self, path: &Path) -> Result<String, String> {
            match path.to_str() {
                Some("b.model") => Ok("import \"a.model\"\n".into()),
                _ => Err("no such file".into()),
            }
        }
    }
    // a imports b, b imports a: each file is read once, no loop.
    let (s, _, e) = modelc_compiler::check_text("a.model", "import \"b.model\"\nimport \"c.model\"\n".into(), &Two);
    assert_eq!(s.files.len(), 2);
    assert_eq!(e.iter().map(Located::code).collect::<Vec<_>>(), ["E0206"]);
}

/// Found by the property test: an out-of-range number used to leave a
/// required argument unset, and `heads: 0` divided by zero.
#[test]
fn rejected_numbers_do_not_reach_the_checker() {
    let src = "model t {\n  input tok: i32[4]\n  target n: class[8] per token\n  x = embed(tok, 8, dim: 8) |> attention(heads: 99999999999999999999999)\n  logits = x |> dense(8)\n  loss cross_entropy(logits, n)\n}\n";
    assert_eq!(codes(src), ["E0103"]);
}

/// Sizes past 2^40 elements are refused where they are declared (E0405),
/// so no later stage (summary, init, memory plan) can overflow; once they
/// checked clean and only the summary saturated.
#[test]
fn absurd_sizes_are_errors_not_overflows() {
    let src = "model big {\n  input x: f32[4294967296]\n  target y: class[2]\n  logits = x |> dense(4294967296) |> dense(2)\n  loss cross_entropy(logits, y)\n}\n";
    assert_eq!(codes(src), ["E0405"]);
}

/// Found by the fuzzer: nested `repeat`s of statements that make no nodes ran
/// for minutes and grew memory without bound.
#[test]
fn nested_repeats_are_bounded() {
    let src = "model m {\n  input x: f32[2]\n  target y: f32[1]\n  h = x\n  repeat 1000 {\n    repeat 1000 {\n      repeat 1000 {\n        h = h\n      }\n    }\n  }\n  out = h |> dense(1)\n  loss mse(out, y)\n}\n";
    let t = std::time::Instant::now();
    assert_eq!(codes(src), ["E0303"]);
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
}

/// Found by the fuzzer: unclosed braces inside a malformed line made error
/// recovery backtrack exponentially (0.5 s for 500 bytes).
#[test]
fn unclosed_braces_parse_in_linear_time() {
    let src = format!("model m {{\n  x = f(\"{}\")\n  y = {}\n}}\n", "{".repeat(40), "{".repeat(40));
    let t = std::time::Instant::now();
    let (_, e) = check(&src);
    assert!(!e.is_empty());
    assert!(t.elapsed().as_millis() < 2000, "took {:?}", t.elapsed());
}
