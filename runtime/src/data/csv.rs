//! CSV files: one sample per line, numbers separated by commas, one column
//! holding the label. Quoted fields are not supported (a quote is an error
//! that says so). Features can be standardized or min-max scaled.

use std::path::Path;

use super::{DataError, Dataset, Labels};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    None,
    /// Zero mean, unit variance per feature (a constant feature becomes 0).
    Standard,
    /// [0, 1] per feature (a constant feature becomes 0).
    MinMax,
}

/// What the label column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Class indices in `0..classes`.
    Classes(u32),
    /// A real value.
    Value,
}

pub fn load(path: &Path, label: &str, header: bool, scale: Scale, target: Target) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    parse(path, &text, label, header, scale, target)
}

pub fn parse(
    path: &Path,
    text: &str,
    label: &str,
    header: bool,
    scale: Scale,
    target: Target,
) -> Result<Dataset, DataError> {
    let err = |line: usize, column: usize, message: String| DataError::Csv {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    let mut lines =
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).filter(|(_, l)| !l.trim().is_empty());
    let (columns, label_col) = if header {
        let (n, head) = lines.next().ok_or_else(|| err(1, 1, "the file is empty".into()))?;
        let names: Vec<&str> = head.split(',').map(str::trim).collect();
        let col = names
            .iter()
            .position(|c| *c == label)
            .ok_or_else(|| err(n, 1, format!("no column named `{label}` (the columns are {})", names.join(", "))))?;
        (names.len(), col)
    } else {
        let col: usize = label.parse().map_err(|_| {
            err(1, 1, format!("without a header the label column is a number (0-based), not `{label}`"))
        })?;
        (0, col)
    };
    let mut width = if header { columns } else { 0 };
    let mut features = Vec::new();
    let mut classes = Vec::new();
    let mut values = Vec::new();
    let mut len = 0;
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if width == 0 {
            width = fields.len();
            if label_col >= width {
                return Err(err(
                    n,
                    1,
                    format!("label column {label_col} does not exist: the line has {width} columns"),
                ));
            }
        }
        if fields.len() != width {
            return Err(err(n, 1, format!("{} columns, but the file has {width}", fields.len())));
        }
        let mut col = 1;
        for (k, f) in fields.iter().enumerate() {
            let t = f.trim();
            if t.contains('"') {
                return Err(err(n, col, "quoted fields are not supported".into()));
            }
            let v: f64 = t.parse().map_err(|_| err(n, col, format!("`{t}` is not a number")))?;
            if !v.is_finite() {
                return Err(err(n, col, format!("`{t}` is not a finite number")));
            }
            if k == label_col {
                match target {
                    Target::Classes(c) => {
                        if v.fract() != 0.0 || v < 0.0 || v >= c as f64 {
                            return Err(err(n, col, format!("label `{t}` is not a class index in 0..{c}")));
                        }
                        classes.push(v as u32);
                    }
                    Target::Value => values.push(v as f32),
                }
            } else {
                features.push(v as f32);
            }
            col += f.len() + 1;
        }
        len += 1;
    }
    if len == 0 {
        return Err(err(1, 1, "the file has no data rows".into()));
    }
    let width = width - 1;
    rescale(&mut features, width, scale);
    let labels = match target {
        Target::Classes(c) => Labels::Classes { values: classes, classes: c },
        Target::Value => Labels::Values { values, width: 1 },
    };
    Ok(Dataset { features, width, labels, len })
}

fn rescale(x: &mut [f32], width: usize, scale: Scale) {
    if scale == Scale::None || width == 0 {
        return;
    }
    let rows = x.len() / width;
    for j in 0..width {
        let col = (0..rows).map(|i| x[i * width + j] as f64);
        let (a, b) = match scale {
            Scale::Standard => {
                let mean = col.clone().sum::<f64>() / rows as f64;
                let var = col.map(|v| (v - mean) * (v - mean)).sum::<f64>() / rows as f64;
                (mean, if var > 0.0 { var.sqrt() } else { 1.0 })
            }
            _ => {
                let lo = col.clone().fold(f64::INFINITY, f64::min);
                let hi = col.fold(f64::NEG_INFINITY, f64::max);
                (lo, if hi > lo { hi - lo } else { 1.0 })
            }
        };
        for i in 0..rows {
            x[i * width + j] = ((x[i * width + j] as f64 - a) / b) as f32;
        }
    }
}
