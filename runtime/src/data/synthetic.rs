//! Synthetic sets: the four XOR points, and interleaved spirals.

use super::{Dataset, Labels, Rng};

/// The XOR truth table: inputs (0,0), (0,1), (1,0), (1,1). With `classes`
/// the labels are class indices, else one f32 value per sample.
pub fn xor(classes: bool) -> Dataset {
    let features = vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0];
    let y = [0u32, 1, 1, 0];
    let labels = if classes {
        Labels::Classes { values: y.to_vec(), classes: 2 }
    } else {
        Labels::Values { values: y.iter().map(|v| *v as f32).collect(), width: 1 }
    };
    Dataset { features, width: 2, labels, len: 4 }
}

/// `samples` points on `classes` interleaved spiral arms (the classic
/// CS231n set), with Gaussian noise of standard deviation `noise`; seeded.
pub fn spirals(samples: usize, classes: u32, noise: f64, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut features = Vec::with_capacity(samples * 2);
    let mut values = Vec::with_capacity(samples);
    for i in 0..samples {
        let class = (i % classes as usize) as u32;
        let r = (i / classes as usize) as f64 / (samples as f64 / classes as f64).max(1.0);
        let t = class as f64 * 4.0 + r * 4.0 + rng.normal() * noise;
        features.push((r * t.sin()) as f32);
        features.push((r * t.cos()) as f32);
        values.push(class);
    }
    Dataset { features, width: 2, labels: Labels::Classes { values, classes }, len: samples }
}
