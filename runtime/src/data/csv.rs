//! CSV files: one sample per line, values separated by commas, one column
//! holding the label. Quoted fields are not supported (a quote is an error
//! that says so). A byte-order mark is skipped; blank lines are skipped.
//!
//! Labels are class indices, real values, or, for classes, names ("setosa",
//! "M"/"B"): named classes are numbered in sorted order, and that order is
//! stated in the log and kept with the model.
//!
//! What a model learns from its training file travels with it as a
//! [`Preprocess`] (saved in the checkpoint's metadata): the feature columns
//! by name and in order, the label column, the class names, and the scaling
//! statistics, fitted on the training samples only. Test files, `eval --data`
//! and `predict` read their columns by name and are scaled with those
//! statistics, never with their own.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DataError, Dataset, Labels};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    None,
    /// Zero mean, unit variance per feature (a constant feature becomes 0).
    Standard,
    /// [0, 1] per feature (a constant feature becomes 0).
    MinMax,
}

impl Scale {
    pub fn from_name(name: &str) -> Scale {
        match name {
            "standard" => Scale::Standard,
            "minmax" => Scale::MinMax,
            _ => Scale::None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scale::None => "none",
            Scale::Standard => "standard",
            Scale::MinMax => "minmax",
        }
    }
}

/// What the label column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Classes: indices in `0..classes`, or names (numbered in sorted order).
    Classes(u32),
    /// A real value.
    Value,
}

/// The preprocessing a model was trained with: applied again, as it was, to
/// every file the model later reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// The feature columns, in the order the model reads them (header names,
    /// or `column N`, 0-based, for a file without a header).
    pub columns: Vec<String>,
    /// The label column.
    pub label: String,
    /// `none`, `standard` or `minmax`.
    pub scale: String,
    /// Per feature: `x' = (x - offset) / divisor`.
    pub offset: Vec<f64>,
    pub divisor: Vec<f64>,
    /// The class names, in class order, when labels are names.
    pub classes: Option<Vec<String>>,
}

/// The metadata key a checkpoint carries the preprocessing under.
pub const METADATA_KEY: &str = "modelc.preprocess";

impl Preprocess {
    /// Fits scaling statistics on `d`'s features.
    pub fn fit(
        d: &Dataset,
        columns: Vec<String>,
        label: &str,
        scale: Scale,
        classes: Option<Vec<String>>,
    ) -> Preprocess {
        let width = d.width;
        let rows = d.len;
        let mut offset = vec![0.0; width];
        let mut divisor = vec![1.0; width];
        if scale != Scale::None && rows > 0 {
            for j in 0..width {
                let col = (0..rows).map(|i| d.features[i * width + j] as f64);
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
                offset[j] = a;
                divisor[j] = b;
            }
        }
        Preprocess { columns, label: label.to_string(), scale: scale.name().into(), offset, divisor, classes }
    }

    /// Scales `d`'s features in place.
    pub fn apply(&self, d: &mut Dataset) {
        if self.scale == "none" || d.width == 0 {
            return;
        }
        for row in d.features.chunks_exact_mut(d.width) {
            for ((x, a), b) in row.iter_mut().zip(&self.offset).zip(&self.divisor) {
                *x = ((*x as f64 - a) / b) as f32;
            }
        }
    }

    /// As JSON, for a checkpoint's metadata.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Preprocess, String> {
        serde_json::from_str(text).map_err(|e| format!("its preprocessing record is malformed: {e}"))
    }

    /// The name of class `c`, or its index.
    pub fn class_name(&self, c: usize) -> String {
        self.classes.as_ref().and_then(|n| n.get(c).cloned()).unwrap_or_else(|| c.to_string())
    }
}

/// A CSV file split into fields: the header (if any) and the data rows with
/// their line numbers.
struct Table<'t> {
    header: Option<Vec<&'t str>>,
    rows: Vec<(usize, Vec<&'t str>)>,
}

fn error(path: &Path, line: usize, column: usize, message: String) -> DataError {
    DataError::Csv { path: path.to_path_buf(), line, column, message }
}

/// Whether every field of `line` is a number: a first line that is data, not
/// a header.
fn numeric(fields: &[&str]) -> bool {
    fields.iter().all(|f| f.trim().parse::<f64>().is_ok())
}

/// Splits `text`; with `header: None` a header is recognised by a first line
/// that is not all numbers.
fn table<'t>(path: &Path, text: &'t str, header: Option<bool>) -> Result<Table<'t>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines =
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).filter(|(_, l)| !l.trim().is_empty());
    let first = lines.next().ok_or_else(|| error(path, 1, 1, "the file is empty".into()))?;
    let split = |l: &'t str| -> Vec<&'t str> { l.split(',').map(str::trim).collect() };
    let has_header = header.unwrap_or_else(|| !numeric(&split(first.1)));
    let (header, mut rows) =
        if has_header { (Some(split(first.1)), Vec::new()) } else { (None, vec![(first.0, split(first.1))]) };
    rows.extend(lines.map(|(n, l)| (n, split(l))));
    let width = header.as_ref().map_or_else(|| rows.first().map_or(0, |r| r.1.len()), Vec::len);
    for (n, fields) in &rows {
        if fields.len() != width {
            let what = if header.is_some() { "the header has" } else { "the first line has" };
            return Err(error(path, *n, 1, format!("{} columns, but {what} {width}", fields.len())));
        }
    }
    if rows.is_empty() {
        return Err(error(path, first.0, 1, "the file has no data rows".into()));
    }
    Ok(Table { header, rows })
}

/// The column of each field, 1-based, for messages.
fn column_of(fields: &[&str], k: usize, raw_line: &str) -> usize {
    // Fields are trimmed: find the k-th field's start in the raw line.
    let mut col = 1;
    for (i, part) in raw_line.split(',').enumerate() {
        if i == k {
            return col + (part.len() - part.trim_start().len());
        }
        col += part.len() + 1;
    }
    let _ = fields;
    col
}

/// A number that fits f32 (no overflow to infinity).
fn number(path: &Path, line: usize, column: usize, t: &str) -> Result<f32, DataError> {
    if t.contains('"') {
        return Err(error(path, line, column, "quoted fields are not supported".into()));
    }
    let v: f64 = t.parse().map_err(|_| error(path, line, column, format!("`{t}` is not a number")))?;
    if !v.is_finite() {
        return Err(error(path, line, column, format!("`{t}` is not a finite number")));
    }
    if v.abs() > f32::MAX as f64 {
        return Err(error(path, line, column, format!("`{t}` is too large for f32 (at most about 3.4e38)")));
    }
    Ok(v as f32)
}

/// A labelled file, unscaled.
pub struct Labelled {
    pub data: Dataset,
    /// The feature columns in the order of `data`'s features.
    pub columns: Vec<String>,
    /// Class names, when labels are names.
    pub classes: Option<Vec<String>>,
}

/// Reads a labelled file. With `like`, the file must have the same feature
/// columns (by name, in any order; they are put in `like`'s order) and its
/// class names are `like`'s.
pub fn read_labelled(
    path: &Path,
    text: &str,
    label: &str,
    header: bool,
    target: Target,
    like: Option<&Preprocess>,
) -> Result<Labelled, DataError> {
    let t = table(path, text, Some(header))?;
    let names: Vec<String> = match &t.header {
        Some(h) => h.iter().map(|s| s.to_string()).collect(),
        None => (0..t.rows[0].1.len()).map(|i| format!("column {i}")).collect(),
    };
    let label_col = if header {
        names.iter().position(|c| c == label).ok_or_else(|| {
            error(path, 1, 1, format!("no column named `{label}` (the columns are {})", names.join(", ")))
        })?
    } else {
        let col: usize = label.parse().map_err(|_| {
            error(path, 1, 1, format!("without a header the label column is a number (0-based), not `{label}`"))
        })?;
        if col >= names.len() {
            return Err(error(
                path,
                t.rows[0].0,
                1,
                format!("label column {col} does not exist: the line has {} columns", names.len()),
            ));
        }
        col
    };
    let own: Vec<usize> = (0..names.len()).filter(|k| *k != label_col).collect();
    let order: Vec<usize> = match like {
        Some(p) => {
            p.columns
                .iter()
                .map(|c| {
                    names.iter().position(|n| n == c).ok_or_else(|| {
                        error(path, 1, 1, format!("no column named `{c}`, which the model was trained on"))
                    })
                })
                .collect::<Result<_, _>>()?
        }
        None => own.clone(),
    };
    // Class names: labels that are not all numbers.
    let raw = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw_lines: Vec<&str> = raw.lines().collect();
    let named = matches!(target, Target::Classes(_))
        && (like.is_some_and(|p| p.classes.is_some())
            || (like.is_none() && t.rows.iter().any(|(_, f)| f[label_col].parse::<f64>().is_err())));
    let class_names: Option<Vec<String>> = if named {
        match like.and_then(|p| p.classes.clone()) {
            Some(c) => Some(c),
            None => {
                let set: BTreeSet<&str> = t.rows.iter().map(|(_, f)| f[label_col]).collect();
                Some(set.into_iter().map(String::from).collect())
            }
        }
    } else {
        None
    };
    if let (Some(names), Target::Classes(c)) = (&class_names, target) {
        if names.len() > c as usize {
            return Err(DataError::Other {
                path: path.to_path_buf(),
                message: format!(
                    "the label column `{}` holds {} class names ({}), but the target declares {c} classes",
                    label,
                    names.len(),
                    names.join(", ")
                ),
            });
        }
    }
    let mut features = Vec::with_capacity(t.rows.len() * order.len());
    let (mut classes, mut values) = (Vec::new(), Vec::new());
    for (n, fields) in &t.rows {
        let raw_line = raw_lines.get(n - 1).copied().unwrap_or("");
        for &k in &order {
            features.push(number(path, *n, column_of(fields, k, raw_line), fields[k])?);
        }
        let col = column_of(fields, label_col, raw_line);
        let v = fields[label_col];
        match (target, &class_names) {
            (Target::Classes(_), Some(names)) => {
                let c = names.iter().position(|x| x == v).ok_or_else(|| {
                    error(path, *n, col, format!("label `{v}` is not one of the classes {}", names.join(", ")))
                })?;
                classes.push(c as u32);
            }
            (Target::Classes(c), None) => {
                let x = number(path, *n, col, v)? as f64;
                if x.fract() != 0.0 || x < 0.0 || x >= c as f64 {
                    return Err(error(path, *n, col, format!("label `{v}` is not a class index in 0..{c}")));
                }
                classes.push(x as u32);
            }
            (Target::Value, _) => values.push(number(path, *n, col, v)?),
        }
    }
    let len = t.rows.len();
    let labels = match target {
        Target::Classes(c) => Labels::Classes { values: classes, classes: c },
        Target::Value => Labels::Values { values, width: 1 },
    };
    let columns = order.iter().map(|k| names[*k].clone()).collect();
    Ok(Labelled { data: Dataset { features, width: order.len(), labels, len }, columns, classes: class_names })
}

/// Reads and scales a labelled file by its own statistics (the training
/// file, or a quick look at any file).
pub fn parse(
    path: &Path,
    text: &str,
    label: &str,
    header: bool,
    scale: Scale,
    target: Target,
) -> Result<Dataset, DataError> {
    let l = read_labelled(path, text, label, header, target, None)?;
    let mut d = l.data;
    Preprocess::fit(&d, l.columns, label, scale, l.classes).apply(&mut d);
    Ok(d)
}

pub fn load(path: &Path, label: &str, header: bool, scale: Scale, target: Target) -> Result<Dataset, DataError> {
    parse(path, &read(path)?, label, header, scale, target)
}

/// The text of `path`.
pub fn read(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

/// Reads the features of a file to predict on: the columns `p` names, by
/// name when the file has a header (a label column, or any other, is
/// ignored), else by position (with or without the label column). Scaled as
/// `p` says. A header is recognised by a first line that is not all numbers.
pub fn read_features(path: &Path, text: &str, p: &Preprocess) -> Result<Dataset, DataError> {
    let t = table(path, text, None)?;
    let width = t.rows[0].1.len();
    let order: Vec<usize> = match &t.header {
        Some(h) => p
            .columns
            .iter()
            .map(|c| {
                h.iter().position(|n| n == c).ok_or_else(|| {
                    error(
                        path,
                        1,
                        1,
                        format!(
                            "no column named `{c}`, which the model was trained on (the columns are {})",
                            h.join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        None if width == p.columns.len() => (0..width).collect(),
        None => {
            // Without a header: the training file's layout, label included.
            let label_col = p.label.parse::<usize>().ok().filter(|_| width == p.columns.len() + 1);
            match label_col {
                Some(l) => (0..width).filter(|k| *k != l).collect(),
                None => {
                    return Err(error(
                        path,
                        t.rows[0].0,
                        1,
                        format!(
                        "{width} columns without a header, but the model reads {} features ({}); add the header line",
                        p.columns.len(),
                        p.columns.join(", ")
                    ),
                    ))
                }
            }
        }
    };
    let raw = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw_lines: Vec<&str> = raw.lines().collect();
    let mut features = Vec::with_capacity(t.rows.len() * order.len());
    for (n, fields) in &t.rows {
        let raw_line = raw_lines.get(n - 1).copied().unwrap_or("");
        for &k in &order {
            features.push(number(path, *n, column_of(fields, k, raw_line), fields[k])?);
        }
    }
    let len = t.rows.len();
    let mut d = Dataset { features, width: order.len(), labels: Labels::Values { values: vec![], width: 0 }, len };
    p.apply(&mut d);
    Ok(d)
}

/// Whether `path` names a CSV file (`.csv`, any case).
pub fn is_csv(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}
