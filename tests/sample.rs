//! Text: the `text` source through the trainer (bits per character in the
//! log and `eval`), and `modelc sample`, whose key/value cache must give
//! the tokens the whole-window evaluation gives.

use std::path::{Path, PathBuf};

use modelc::sample::{generate, Engine, Options};

use crate::modelc;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("modelc-sample-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn tiny() -> modelc_compiler::check::ModelInfo {
    let (_, program, errors) = crate::check_spec(Path::new("specs/char_gpt_tiny.model"));
    assert!(errors.is_empty(), "{errors:?}");
    program.models[0].clone()
}

/// Greedy and seeded sampling give the same tokens with the cache (one
/// position per token) as with the whole window, over three windows' worth
/// of tokens, so across the window shifts.
#[test]
fn the_cache_gives_the_whole_windows_tokens() {
    let model = tiny();
    let weights = modelc::init::init(&model, 3).expect("init");
    let vocab = modelc::data::text::Vocab::Chars;
    let prompt = vocab.encode(b"ROMEO:\n", Path::new("prompt")).expect("ascii");
    for (temperature, top_k) in [(0.0, None), (1.0, Some(10))] {
        let opts = Options { tokens: 3 * 16 + 5, temperature, top_k, seed: 7 };
        let mut cached = Engine::cached(&model, &weights).expect("decode step compiles");
        let mut window = Engine::window(&model, &weights).expect("evaluation compiles");
        let a = generate(&mut cached, &prompt, &opts, |_| {}).expect("samples");
        let b = generate(&mut window, &prompt, &opts, |_| {}).expect("samples");
        assert_eq!(a.len(), opts.tokens);
        assert_eq!(a, b, "temperature {temperature}: {:?} vs {:?}", vocab.decode_all(&a), vocab.decode_all(&b));
        // Not one token repeated: the comparison has something to compare.
        assert!(a.iter().any(|t| *t != a[0]), "{:?}", vocab.decode_all(&a));
    }
}

/// Models at the edges (found by review): a window of one token (the
/// window shift once emptied nothing and the next token overran it), and
/// a prediction that is not a layer's output (a negated head: the
/// whole-window engine used to read the dense layer under the negation).
#[test]
fn edge_models_give_the_same_tokens_with_and_without_the_cache() {
    let spec = |context: u64, head: &str| {
        format!(
            "model m {{\n  input tokens: i32[{context}]\n  target next: class[96] per token\n  x = embed(tokens, 96, dim: 8) + positions({context}, dim: 8)\n  h = x + (x |> layernorm |> attention(heads: 2, causal))\n  logits = {head}\n  loss cross_entropy(logits, next)\n}}\ntrain m {{\n  data text(\"data/tinyshakespeare/input.txt\", context: {context})\n  batch 2\n  epochs 1\n  optimizer sgd(lr: 0.1)\n}}\n"
        )
    };
    for (context, head) in [(1, "h |> dense(96)"), (4, "-(h |> layernorm |> dense(96))"), (5, "(h |> dense(96)) * 0.5")]
    {
        let (_, program, errors) =
            modelc_compiler::check_text("edge.model", spec(context, head), &modelc_compiler::FsLoader);
        assert!(errors.is_empty(), "{errors:?}");
        let model = &program.models[0];
        let weights = modelc::init::init(model, 1).expect("init");
        let opts = Options { tokens: 3 * context as usize + 4, temperature: 0.0, top_k: None, seed: 0 };
        let prompt = [1u32, 2, 3];
        let a =
            generate(&mut Engine::cached(model, &weights).expect("decode"), &prompt, &opts, |_| {}).expect("samples");
        let b = generate(&mut Engine::window(model, &weights).expect("eval"), &prompt, &opts, |_| {}).expect("samples");
        assert_eq!(a, b, "context {context}, head `{head}`");
    }
    // One learned position for the whole window: the same row everywhere.
    let text = spec(4, "h |> dense(96)").replace("positions(4, dim: 8)", "positions(1, dim: 8)");
    let (_, program, errors) = modelc_compiler::check_text("edge.model", text, &modelc_compiler::FsLoader);
    assert!(errors.is_empty(), "{errors:?}");
    let model = &program.models[0];
    let weights = modelc::init::init(model, 1).expect("init");
    let opts = Options { tokens: 9, temperature: 0.0, top_k: None, seed: 0 };
    let a = generate(&mut Engine::cached(model, &weights).expect("decode"), &[5], &opts, |_| {}).expect("samples");
    let b = generate(&mut Engine::window(model, &weights).expect("eval"), &[5], &opts, |_| {}).expect("samples");
    assert_eq!(a, b, "positions(1) over a window of 4");
}

/// A model whose positions see later ones has no token-by-token form.
#[test]
fn sampling_refuses_a_model_that_mixes_positions() {
    let (_, program, errors) = crate::check_spec(Path::new("tests/zoo/attention_tiny.model"));
    assert!(errors.is_empty());
    let model = &program.models[0];
    let weights = modelc::init::init(model, 0).expect("init");
    let Err(e) = Engine::cached(model, &weights) else { panic!("a non-causal model decodes") };
    assert!(e.contains("`enc` (attention without `causal`) mixes positions"), "{e}");
}

/// Through the CLI: train char_gpt_tiny a little on Tiny Shakespeare (the
/// log and `eval` give bits per character, the checkpoint its vocabulary),
/// then sample with and without the cache.
#[test]
fn train_eval_and_sample_text() {
    let d = dir("cli");
    let out = d.join("run");
    let (code, stdout, err) = modelc(&[
        "train",
        "specs/char_gpt_tiny.model",
        "--limit",
        "512",
        "--test-limit",
        "128",
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains(" bpc)"), "{stdout}");
    let log = std::fs::read_to_string(out.join("log.jsonl")).expect("log");
    let line: serde_json::Value = serde_json::from_str(log.lines().last().expect("a line")).expect("json");
    let (loss, bpc) = (line["test_loss"].as_f64().expect("test loss"), line["test_bpc"].as_f64().expect("test bpc"));
    assert!((bpc - loss / std::f64::consts::LN_2).abs() < 1e-12);
    let weights = out.join("last.safetensors");
    let meta = modelc::checkpoint::metadata(&weights).expect("metadata");
    assert_eq!(meta.get("modelc.vocab").map(String::as_str), Some(r#"{"size":96,"vocab":"chars"}"#));
    let w = weights.to_string_lossy();
    let (code, stdout, err) = modelc(&["eval", "specs/char_gpt_tiny.model", "--weights", &w, "--limit", "128"]);
    assert_eq!(code, 0, "{err}");
    let want = format!("bits/char  {:.4}", bpc);
    assert!(stdout.contains(&want), "{stdout} lacks {want}");
    let args = ["sample", "specs/char_gpt_tiny.model", "--weights", &w, "--prompt", "KING:", "--tokens", "40"];
    let (code, cached, err) = modelc(&[&args[..], &["--temperature", "0"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("40 tokens") && err.contains("key/value cache"), "{err}");
    let (code, window, err) = modelc(&[&args[..], &["--temperature", "0", "--no-cache"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(cached, window);
    assert!(cached.starts_with("KING:") && cached.trim_end_matches('\n').len() >= 45, "{cached:?}");
    // A prompt outside the vocabulary, and a bad temperature, are errors.
    let (code, _, err) = modelc(&[&args[..4], &["--prompt", "é"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("the prompt:1:1: a character the model's `chars` vocabulary lacks"), "{err}");
    let (code, _, err) = modelc(&[&args[..], &["--temperature=-1"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("--temperature -1 must be 0"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}
