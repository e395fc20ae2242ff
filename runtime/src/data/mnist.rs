//! MNIST in the IDX format of LeCun, Cortes and Burges: four files, gzipped
//! or not (`train-images-idx3-ubyte[.gz]`, …). Pixels become f32 in [0, 1].

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Labels};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Loads one split from `dir`, keeping the digits `classes.0..=classes.1`
/// relabelled from 0 (as `mnist("…", classes: 5..9)` declares).
pub fn load(dir: &Path, split: Split, classes: (u64, u64)) -> Result<Dataset, DataError> {
    load_sized(dir, split, classes, None)
}

/// [`load`], refusing images that are not `width` values each (the model's
/// input) before anything else is read.
pub fn load_sized(dir: &Path, split: Split, classes: (u64, u64), width: Option<usize>) -> Result<Dataset, DataError> {
    let stem = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = find(dir, &format!("{stem}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{stem}-labels-idx1-ubyte"))?;
    let images = read(&images_path)?;
    let labels = read(&labels_path)?;
    let (count, rows, cols, pixels) = parse_images(&images_path, &images)?;
    sized(&images_path, rows, cols, width)?;
    let label_bytes = parse_labels(&labels_path, &labels)?;
    if label_bytes.len() != count {
        return Err(DataError::CountMismatch {
            images: images_path,
            image_count: count,
            labels: labels_path,
            label_count: label_bytes.len(),
        });
    }
    let width = (rows * cols) as usize;
    let (lo, hi) = (classes.0 as u8, classes.1 as u8);
    let mut features = Vec::new();
    let mut values = Vec::new();
    for (i, l) in label_bytes.iter().enumerate() {
        if *l > 9 {
            return Err(DataError::LabelOutOfRange { path: labels_path, index: i, label: *l as i64, classes: 10 });
        }
        if (lo..=hi).contains(l) {
            features.extend(pixels[i * width..(i + 1) * width].iter().map(|p| *p as f32 / 255.0));
            values.push((l - lo) as u32);
        }
    }
    let len = values.len();
    Ok(Dataset { features, width, labels: Labels::Classes { values, classes: (hi - lo + 1) as u32 }, len })
}

/// A standalone IDX image file (gzipped or not), pixels scaled to [0, 1]:
/// (images, rows·cols values each).
pub fn read_images(path: &Path, width: Option<usize>) -> Result<Dataset, DataError> {
    let bytes = read(path)?;
    let (count, rows, cols, pixels) = parse_images(path, &bytes)?;
    sized(path, rows, cols, width)?;
    let features = pixels.iter().map(|p| *p as f32 / 255.0).collect();
    Ok(Dataset {
        features,
        width: (rows * cols) as usize,
        labels: Labels::Classes { values: vec![0; count], classes: 10 },
        len: count,
    })
}

fn sized(path: &Path, rows: u32, cols: u32, width: Option<usize>) -> Result<(), DataError> {
    match width {
        Some(expected) if (rows as usize) * (cols as usize) != expected => {
            Err(DataError::ImageSize { path: path.to_path_buf(), rows, cols, expected })
        }
        _ => Ok(()),
    }
}

/// `name.gz` or `name`, whichever exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    for candidate in [dir.join(format!("{name}.gz")), dir.join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(DataError::Io {
        path: dir.join(format!("{name}[.gz]")),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file (looked for it with and without .gz)"),
    })
}

/// The file's bytes, decompressed when it is gzip.
fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Gzip { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn header(path: &Path, b: &[u8], words: usize) -> Result<Vec<u32>, DataError> {
    (0..words)
        .map(|i| {
            be32(b, 4 * i).ok_or(DataError::Truncated {
                path: path.to_path_buf(),
                expected: 4 * words as u64,
                found: b.len() as u64,
            })
        })
        .collect()
}

fn parse_images<'a>(path: &Path, b: &'a [u8]) -> Result<(usize, u32, u32, &'a [u8]), DataError> {
    let h = header(path, b, 4)?;
    if h[0] != IMAGES_MAGIC {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            what: "image",
            found: h[0],
            expected: IMAGES_MAGIC,
        });
    }
    let (count, rows, cols) = (h[1] as usize, h[2], h[3]);
    let need = count as u64 * rows as u64 * cols as u64;
    let have = (b.len() - 16) as u64;
    if have < need {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected: need, found: have });
    }
    Ok((count, rows, cols, &b[16..16 + need as usize]))
}

fn parse_labels<'a>(path: &Path, b: &'a [u8]) -> Result<&'a [u8], DataError> {
    let h = header(path, b, 2)?;
    if h[0] != LABELS_MAGIC {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            what: "label",
            found: h[0],
            expected: LABELS_MAGIC,
        });
    }
    let count = h[1] as u64;
    let have = (b.len() - 8) as u64;
    if have < count {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected: count, found: have });
    }
    Ok(&b[8..8 + count as usize])
}
