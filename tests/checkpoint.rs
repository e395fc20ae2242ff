//! Checkpoints: round trips, atomic writes, and errors that name the tensor.

use std::collections::BTreeMap;
use std::path::Path;

use modelc::checkpoint::{self, CheckpointError, Tensors};

fn tensors() -> Tensors {
    let mut t = Tensors::new();
    t.insert("fc1.weight".into(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    t.insert("fc1.bias".into(), (vec![2], vec![0.5, -0.5]));
    t
}

fn expected() -> Vec<(String, Vec<usize>)> {
    vec![("fc1.weight".into(), vec![2, 3]), ("fc1.bias".into(), vec![2])]
}

#[test]
fn round_trip_is_exact_and_atomic() {
    let dir = std::env::temp_dir().join(format!("modelc-ckpt-{}", std::process::id()));
    let path = dir.join("runs/best.safetensors");
    let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
    checkpoint::save(&path, &tensors(), meta).expect("saves");
    let back = checkpoint::load(&path).expect("loads");
    assert_eq!(back, tensors());
    let leftovers: Vec<_> =
        std::fs::read_dir(path.parent().expect("dir")).expect("dir").filter_map(Result::ok).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    let ok = checkpoint::validate(&path, back, &expected(), &[]).expect("matches the model");
    assert_eq!(ok.len(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mismatches_name_the_tensor_and_both_shapes() {
    let p = Path::new("ckpt.safetensors");
    let mut wrong = tensors();
    wrong.insert("fc1.weight".into(), (vec![3, 2], vec![0.0; 6]));
    let e = checkpoint::validate(p, wrong, &expected(), &[]).expect_err("shape");
    assert_eq!(e.to_string(), "ckpt.safetensors: tensor `fc1.weight` is [3, 2] but the model expects [2, 3]");

    let mut missing = tensors();
    missing.remove("fc1.bias");
    missing.insert("fc1.bais".into(), (vec![2], vec![0.0; 2]));
    let e = checkpoint::validate(p, missing, &expected(), &[]).expect_err("missing");
    assert_eq!(
        e.to_string(),
        "ckpt.safetensors: the model needs `fc1.bias` [2], which the checkpoint lacks (it has `fc1.bais`)"
    );

    let mut extra = tensors();
    extra.insert("fc2.weight".into(), (vec![1], vec![0.0]));
    let e = checkpoint::validate(p, extra, &expected(), &[]).expect_err("unexpected");
    assert!(matches!(e, CheckpointError::Unexpected { ref name, .. } if name == "fc2.weight"), "{e}");
}

#[test]
fn replaced_layers_are_not_loaded() {
    // A finetune's fresh head may have any shape in the old checkpoint.
    let mut old = tensors();
    old.insert("logits.weight".into(), (vec![10, 2], vec![0.0; 20]));
    let mut exp = expected();
    exp.push(("logits.weight".into(), vec![5, 2]));
    let ok = checkpoint::validate(Path::new("c"), old, &exp, &["logits".to_string()]).expect("fresh head skipped");
    assert!(!ok.contains_key("logits.weight"));
}

#[test]
fn foreign_files_are_clear_errors() {
    // The PyTorch fixture holds an i32 tensor (the labels).
    let e = checkpoint::load(Path::new("tests/fixtures/mnist_mlp_step.safetensors")).expect_err("i32 tensor");
    assert!(e.to_string().contains("tensor `label` has dtype I32"), "{e}");
    let e = checkpoint::load(Path::new("README.md")).expect_err("not safetensors");
    assert!(e.to_string().starts_with("README.md is not a valid safetensors file"), "{e}");
    let e = checkpoint::load(Path::new("runs/none.safetensors")).expect_err("missing");
    assert!(e.to_string().starts_with("cannot read checkpoint runs/none.safetensors"), "{e}");
}

/// A write that fails (here the rename: the destination is a folder; a full
/// disk fails the same way, earlier) leaves no temporary file behind and
/// the destination as it was.
#[test]
fn a_failed_write_leaves_no_temporary_file() {
    let dir = std::env::temp_dir().join(format!("modelc-ckpt-fail-{}", std::process::id()));
    let path = dir.join("last.safetensors");
    std::fs::create_dir_all(path.join("occupied")).expect("a folder where the file goes");
    let e = checkpoint::save(&path, &tensors(), BTreeMap::new()).expect_err("cannot replace a folder");
    assert!(e.to_string().contains("cannot write checkpoint"), "{e}");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names, ["last.safetensors"], "only the folder that was there");
    assert!(path.join("occupied").is_dir());
    std::fs::remove_dir_all(&dir).ok();
}

/// The same tensors and metadata give the same bytes every time (the
/// `safetensors` crate writes metadata in hash order; the header is
/// rewritten with sorted keys), and the file still loads with its metadata.
#[test]
fn identical_checkpoints_are_identical_files() {
    let dir = std::env::temp_dir().join(format!("modelc-ckpt-bytes-{}", std::process::id()));
    let meta: BTreeMap<String, String> = (0..16).map(|i| (format!("key{i}"), format!("value {i}"))).collect();
    let mut files = Vec::new();
    for i in 0..6 {
        let path = dir.join(format!("c{i}.safetensors"));
        checkpoint::save(&path, &tensors(), meta.clone()).expect("saves");
        files.push(std::fs::read(&path).expect("reads"));
        assert_eq!(checkpoint::load(&path).expect("loads"), tensors());
        assert_eq!(checkpoint::metadata(&path).expect("metadata"), meta);
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]), "checkpoint bytes differ between identical saves");
    std::fs::remove_dir_all(&dir).ok();
}
