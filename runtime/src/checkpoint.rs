//! Checkpoints: parameters (and, in the run's resume point, optimizer state)
//! as f32 safetensors with PyTorch's names and layouts, so a PyTorch
//! `state_dict()` saved with `safetensors.torch.save_file` loads here and
//! ours load into PyTorch with `load_state_dict`.
//!
//! Writing is atomic and durable: a temporary file in the same folder,
//! flushed to disk (`fsync`), renamed over the old file, and the folder
//! flushed, so a crash or a power cut never leaves a half-written checkpoint
//! in place of a good one; a failed write (a full disk) removes its
//! temporary file. Loading checks every tensor against what the model
//! expects, and that every value is finite, and says which tensor is wrong
//! and how.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Named f32 tensors: name → (shape, values).
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write checkpoint {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` has dtype {dtype}; modelc checkpoints hold f32")]
    DType { path: PathBuf, name: String, dtype: String },
    #[error("{path}: tensor `{name}` is {found:?} but the model expects {expected:?}")]
    Shape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: the model needs `{name}` {shape:?}, which the checkpoint lacks{hint}")]
    Missing { path: PathBuf, name: String, shape: Vec<usize>, hint: String },
    #[error("{path}: the checkpoint holds `{name}`, which the model does not have{hint}")]
    Unexpected { path: PathBuf, name: String, hint: String },
    #[error("{path}: tensor `{name}` holds {count} non-finite values (NaN or infinity) of {total}; the run that wrote it diverged")]
    NonFinite { path: PathBuf, name: String, count: usize, total: usize },
}

/// Writes `tensors` to `path` atomically, with `metadata`.
pub fn save(path: &Path, tensors: &Tensors, metadata: BTreeMap<String, String>) -> Result<(), CheckpointError> {
    let werr = |source| CheckpointError::Write { path: path.to_path_buf(), source };
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, (shape, data))| (n.clone(), data.iter().flat_map(|v| v.to_le_bytes()).collect(), shape.clone()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (n, b, shape) in &bytes {
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
            .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), reason: e.to_string() })?;
        views.push((n.clone(), v));
    }
    let meta: std::collections::HashMap<String, String> = metadata.into_iter().collect();
    let data = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), reason: e.to_string() })?;
    let data = canonical_header(data);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    write_atomic(path, &data).map_err(werr)
}

/// The file with its JSON header's keys in sorted order (the `safetensors`
/// crate writes the metadata map in hash order, so two identical runs wrote
/// different bytes). The header keeps its length (padded with spaces, as the
/// format allows), so the tensors' data and offsets are untouched. A header
/// that does not parse is left as it is.
fn canonical_header(mut data: Vec<u8>) -> Vec<u8> {
    let Some(n) = data.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize) else {
        return data;
    };
    let Some(Ok(header)) = data.get(8..8 + n).map(serde_json::from_slice::<serde_json::Value>) else {
        return data;
    };
    // serde_json's maps are sorted (no `preserve_order`).
    let Ok(mut text) = serde_json::to_vec(&header) else { return data };
    if text.len() <= n {
        text.resize(n, b' ');
        data[8..8 + n].copy_from_slice(&text);
    }
    data
}

/// Writes `data` to `path` through a temporary file beside it: written,
/// flushed to disk, renamed over `path`, and the folder flushed. On failure
/// the temporary file is removed and `path` is as it was.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path);
    Ok(())
}

/// Flushes the folder holding `path`, so a rename in it survives a power
/// cut. Best effort: not every file system can open a folder for it.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Renames tensors by `(from, to)` patterns, the first that matches a name
/// winning; a `*` in `from` matches any text, which replaces the `*` of `to`.
/// Returns the renamed tensors and how many were renamed; a pattern that
/// matches no tensor is an error naming the file's tensors.
pub fn rename(path: &Path, t: Tensors, renames: &[(String, String)]) -> Result<(Tensors, usize), String> {
    let matches = |pat: &str, name: &str| -> Option<String> {
        match pat.split_once('*') {
            None => (pat == name).then(String::new),
            Some((pre, post)) => name.strip_prefix(pre).and_then(|rest| rest.strip_suffix(post)).map(String::from),
        }
    };
    let mut used = vec![false; renames.len()];
    let mut out = Tensors::new();
    let mut renamed = 0;
    let names: Vec<String> = t.keys().cloned().collect();
    for (name, value) in t {
        let hit = renames.iter().enumerate().find_map(|(i, (from, to))| Some((i, to, matches(from, &name)?)));
        let new = match hit {
            Some((i, to, star)) => {
                used[i] = true;
                renamed += 1;
                to.replacen('*', &star, 1)
            }
            None => name,
        };
        if out.insert(new.clone(), value).is_some() {
            return Err(format!("{}: two tensors are renamed to `{new}`", path.display()));
        }
    }
    if let Some(i) = used.iter().position(|u| !u) {
        let (from, to) = &renames[i];
        return Err(format!(
            "`map \"{from}\" -> \"{to}\"` matches no tensor of {} (it has: {})",
            path.display(),
            names.join(", ")
        ));
    }
    Ok((out, renamed))
}

/// Reads every tensor of `path` (f32 only).
pub fn load(path: &Path) -> Result<Tensors, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read { path: path.to_path_buf(), source })?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut out = Tensors::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(CheckpointError::DType {
                path: path.to_path_buf(),
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// The metadata a checkpoint was saved with.
pub fn metadata(path: &Path) -> Result<BTreeMap<String, String>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read { path: path.to_path_buf(), source })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
}

/// Checks loaded tensors against the parameters a model expects (name →
/// shape), and that every value is finite. Names in `fresh` (replaced layers of a finetune) are not loaded:
/// checkpoint tensors for them are skipped whatever their shape. Returns the
/// tensors to use.
pub fn validate(
    path: &Path,
    mut loaded: Tensors,
    expected: &[(String, Vec<usize>)],
    fresh: &[String],
) -> Result<Tensors, CheckpointError> {
    let is_fresh = |n: &str| fresh.iter().any(|f| n == f || n.starts_with(&format!("{f}.")));
    let mut out = Tensors::new();
    for (name, shape) in expected {
        if is_fresh(name) {
            loaded.remove(name);
            continue;
        }
        match loaded.remove(name) {
            Some((found, data)) => {
                if &found != shape {
                    return Err(CheckpointError::Shape {
                        path: path.to_path_buf(),
                        name: name.clone(),
                        expected: shape.clone(),
                        found,
                    });
                }
                let count = data.iter().filter(|v| !v.is_finite()).count();
                if count > 0 {
                    return Err(CheckpointError::NonFinite {
                        path: path.to_path_buf(),
                        name: name.clone(),
                        count,
                        total: data.len(),
                    });
                }
                out.insert(name.clone(), (found, data));
            }
            None => {
                let names: Vec<&str> = loaded.keys().map(String::as_str).collect();
                let hint =
                    modelc_compiler::diag::closest(name, names).map(|c| format!(" (it has `{c}`)")).unwrap_or_default();
                return Err(CheckpointError::Missing {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    shape: shape.clone(),
                    hint,
                });
            }
        }
    }
    if let Some(name) = loaded.keys().find(|n| !is_fresh(n)) {
        let names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let hint =
            modelc_compiler::diag::closest(name, names).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
        return Err(CheckpointError::Unexpected { path: path.to_path_buf(), name: name.clone(), hint });
    }
    Ok(out)
}
