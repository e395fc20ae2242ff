//! Data sources: MNIST IDX files, CSV files, text and synthetic sets, loaded into
//! memory as f32 features and labels, plus seeded shuffling, batching and a
//! validation split.
//!
//! Every malformed file is an error that names the file and what is wrong
//! (and, for CSV, the line and column); nothing panics on bad data.

pub mod csv;
pub mod mnist;
pub mod synthetic;
pub mod text;

use std::path::PathBuf;

use thiserror::Error;

/// Labels of a dataset: class indices or real values.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// One class index per sample (or per position, `per` of them a sample).
    Classes { values: Vec<u32>, classes: u32 },
    /// `width` real values per sample.
    Values { values: Vec<f32>, width: usize },
}

/// A dataset in memory: `len` samples of `features` f32 each (token ids are
/// stored as f32 holding integers).
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub features: Vec<f32>,
    /// Values per sample.
    pub width: usize,
    pub labels: Labels,
    pub len: usize,
}

impl Dataset {
    /// The samples at `indices`, in that order: (features, labels).
    pub fn gather(&self, indices: &[usize], features: &mut Vec<f32>, labels: &mut Vec<f32>) {
        features.clear();
        labels.clear();
        for &i in indices {
            features.extend_from_slice(&self.features[i * self.width..(i + 1) * self.width]);
            match &self.labels {
                Labels::Classes { values, .. } => {
                    let per = values.len() / self.len.max(1);
                    labels.extend(values[i * per..(i + 1) * per].iter().map(|v| *v as f32));
                }
                Labels::Values { values, width } => labels.extend_from_slice(&values[i * width..(i + 1) * width]),
            }
        }
    }

    /// The samples at `indices` as a new dataset.
    pub fn slice(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        self.gather(indices, &mut features, &mut labels);
        let labels = match &self.labels {
            Labels::Classes { classes, .. } => {
                Labels::Classes { values: labels.iter().map(|v| *v as u32).collect(), classes: *classes }
            }
            Labels::Values { width, .. } => Labels::Values { values: labels, width: *width },
        };
        Dataset { features, width: self.width, labels, len: indices.len() }
    }
}

#[derive(Debug, Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an IDX {what} file (magic number {found:#010x}, expected {expected:#010x})")]
    BadMagic { path: PathBuf, what: &'static str, found: u32, expected: u32 },
    #[error("{path}: truncated: the header promises {expected} bytes of data, the file has {found}")]
    Truncated { path: PathBuf, expected: u64, found: u64 },
    #[error("{path}: corrupt gzip data: {reason}")]
    Gzip { path: PathBuf, reason: String },
    #[error("{images} has {image_count} images but {labels} has {label_count} labels")]
    CountMismatch { images: PathBuf, image_count: usize, labels: PathBuf, label_count: usize },
    #[error("{path}: images are {rows}×{cols}, the model expects {expected} values per sample")]
    ImageSize { path: PathBuf, rows: u32, cols: u32, expected: usize },
    #[error("{path}: sample {index} has label {label}, outside the {classes} declared classes")]
    LabelOutOfRange { path: PathBuf, index: usize, label: i64, classes: u32 },
    #[error("{path}:{line}:{column}: {message}")]
    Csv { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Other { path: PathBuf, message: String },
}

pub use modelc_compiler::rng::Rng;

/// The order of samples in epoch `epoch`: a permutation of `0..n` that
/// depends only on (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407)).shuffle(&mut order);
    order
}

/// Splits `0..n` into (train, validation) indices: a seeded shuffle, the last
/// `fraction` (rounded, at least one sample when the fraction is above 0)
/// held out.
pub fn validation_split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed.wrapping_add(0x5EED)).shuffle(&mut order);
    let held = if fraction > 0.0 { ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1)) } else { 0 };
    let val = order.split_off(n - held);
    (order, val)
}

/// Batches of `batch` indices from `order`; the last may be smaller.
pub fn batches(order: &[usize], batch: usize) -> impl Iterator<Item = &[usize]> {
    order.chunks(batch.max(1))
}
