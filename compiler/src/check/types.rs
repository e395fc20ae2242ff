//! Tensor types as the checker sees them: a dtype and a shape whose leading
//! dimension is usually the symbolic batch `N`.

use std::fmt;

use serde::Serialize;

/// The product of sizes, saturating instead of overflowing: statistics of
/// absurd (user-written) sizes stay defined.
pub fn product(dims: &[u64]) -> u64 {
    dims.iter().fold(1u64, |a, d| a.saturating_mul(*d))
}

/// The most elements one tensor may hold (per sample, for activations):
/// 2^40, 4 TiB of f32. Larger sizes are refused when a model is checked, so
/// that no later stage computes a size that overflows.
pub const MAX_ELEMENTS: u64 = 1 << 40;

/// The product of `dims` when it is at most [`MAX_ELEMENTS`].
pub fn bounded_product(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d)).filter(|n| *n <= MAX_ELEMENTS)
}

/// One dimension: the symbolic batch size or a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Dim {
    Batch,
    Fixed(u64),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("N"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum DType {
    F32,
    I32,
    /// Integer class labels in `0..classes`.
    Class {
        classes: u64,
    },
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::F32 => f.write_str("f32"),
            DType::I32 => f.write_str("i32"),
            DType::Class { classes } => write!(f, "class[{classes}]"),
        }
    }
}

/// A tensor's shape, batch dimension included when it has one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    /// `[N, dims…]`
    pub fn batched(dims: &[u64]) -> Shape {
        Shape(std::iter::once(Dim::Batch).chain(dims.iter().map(|d| Dim::Fixed(*d))).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn has_batch(&self) -> bool {
        self.0.first() == Some(&Dim::Batch)
    }

    /// The dimensions after the batch (all of them when there is none).
    pub fn sample_dims(&self) -> Vec<u64> {
        self.0
            .iter()
            .filter_map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                Dim::Batch => None,
            })
            .collect()
    }

    /// Elements per sample (per batch row), or in all when there is no batch.
    pub fn sample_elements(&self) -> u64 {
        product(&self.sample_dims())
    }

    pub fn last(&self) -> Option<u64> {
        match self.0.last() {
            Some(Dim::Fixed(n)) => Some(*n),
            _ => None,
        }
    }

    /// Numpy-style broadcasting, right-aligned. The batch broadcasts only
    /// against itself or a 1.
    pub fn broadcast(&self, other: &Shape) -> Option<Shape> {
        let n = self.rank().max(other.rank());
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let a = i.checked_sub(n - self.rank()).map(|j| self.0[j]);
            let b = i.checked_sub(n - other.rank()).map(|j| other.0[j]);
            out.push(match (a, b) {
                (Some(x), None) | (None, Some(x)) => x,
                (Some(x), Some(y)) if x == y => x,
                (Some(Dim::Fixed(1)), Some(y)) => y,
                (Some(x), Some(Dim::Fixed(1))) => x,
                _ => return None,
            });
        }
        Some(Shape(out))
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The type of a value in a model: dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype {
            DType::Class { classes } => write!(f, "class[{classes}] {}", self.shape),
            d => write!(f, "{d}{}", self.shape),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy_and_keeps_the_batch() {
        let a = Shape::batched(&[128, 64]);
        let b = Shape(vec![Dim::Fixed(128), Dim::Fixed(64)]);
        assert_eq!(a.broadcast(&b), Some(a.clone()));
        assert_eq!(a.broadcast(&Shape::scalar()), Some(a.clone()));
        assert_eq!(a.broadcast(&Shape::batched(&[1, 64])), Some(a.clone()));
        assert_eq!(a.broadcast(&Shape::batched(&[64, 128])), None);
        // A batch never broadcasts against a fixed size other than 1.
        assert_eq!(Shape::batched(&[3]).broadcast(&Shape(vec![Dim::Fixed(2), Dim::Fixed(3)])), None);
        assert_eq!(a.to_string(), "[N, 128, 64]");
    }
}
