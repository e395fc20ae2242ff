//! Classification metrics from predictions and labels, accumulated over an
//! epoch: the confusion matrix, accuracy, precision, recall and F1 (macro,
//! micro or weighted averages, as scikit-learn defines them: averages run
//! over the classes present in the labels or the predictions, and a ratio
//! with a zero denominator is 0). `tests/fixtures/metrics_sklearn.json`,
//! made by `tests/fixtures/gen_metrics.py`, holds scikit-learn's own figures.

use modelc_compiler::check::layers::Average;

/// Counts of (label, prediction) pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    pub classes: usize,
    /// `counts[label * classes + prediction]`
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Confusion {
        Confusion { classes, counts: vec![0; classes * classes] }
    }

    /// Adds a batch; out-of-range values are ignored (labels are validated
    /// when data is loaded).
    pub fn add(&mut self, labels: &[f32], predictions: &[f32]) {
        for (l, p) in labels.iter().zip(predictions) {
            let (l, p) = (*l as usize, *p as usize);
            if l < self.classes && p < self.classes {
                self.counts[l * self.classes + p] += 1;
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn tp(&self, c: usize) -> u64 {
        self.counts[c * self.classes + c]
    }

    fn support(&self, c: usize) -> u64 {
        (0..self.classes).map(|p| self.counts[c * self.classes + p]).sum()
    }

    fn predicted(&self, c: usize) -> u64 {
        (0..self.classes).map(|l| self.counts[l * self.classes + c]).sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|c| self.tp(c)).sum();
        ratio(correct, self.total())
    }

    pub fn precision(&self, avg: Average) -> f64 {
        self.average(avg, |s, c| ratio(s.tp(c), s.predicted(c)))
    }

    pub fn recall(&self, avg: Average) -> f64 {
        self.average(avg, |s, c| ratio(s.tp(c), s.support(c)))
    }

    pub fn f1(&self, avg: Average) -> f64 {
        self.average(avg, |s, c| {
            let (p, r) = (ratio(s.tp(c), s.predicted(c)), ratio(s.tp(c), s.support(c)));
            if p + r == 0.0 {
                0.0
            } else {
                2.0 * p * r / (p + r)
            }
        })
    }

    /// The classes scikit-learn averages over: those that occur among the
    /// labels or the predictions. A declared class that never occurs on
    /// either side is left out (it would count as a score of 0).
    pub fn present(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.classes).filter(|&c| self.support(c) > 0 || self.predicted(c) > 0)
    }

    /// Macro: the mean over present classes; weighted: weighted by support;
    /// micro: from pooled counts (for single-label data all three micro
    /// scores equal the accuracy). A ratio with a zero denominator is 0, as
    /// scikit-learn's `zero_division=0`.
    fn average(&self, avg: Average, per_class: impl Fn(&Self, usize) -> f64) -> f64 {
        match avg {
            Average::Macro => {
                let (sum, n) = self.present().fold((0.0, 0usize), |(s, n), c| (s + per_class(self, c), n + 1));
                sum / n.max(1) as f64
            }
            Average::Weighted => {
                let total = self.total();
                self.present().map(|c| per_class(self, c) * self.support(c) as f64).sum::<f64>() / total.max(1) as f64
            }
            Average::Micro => self.accuracy(),
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scikit_learn_on_a_small_case() {
        // y_true = [0, 1, 2, 0, 1, 2], y_pred = [0, 2, 1, 0, 0, 1]:
        // sklearn gives accuracy 1/3, precision macro 2/9, recall macro 1/3,
        // f1 macro 0.26666…, f1 weighted 0.26666…
        let mut c = Confusion::new(3);
        c.add(&[0.0, 1.0, 2.0, 0.0, 1.0, 2.0], &[0.0, 2.0, 1.0, 0.0, 0.0, 1.0]);
        assert!((c.accuracy() - 1.0 / 3.0).abs() < 1e-12);
        assert!((c.precision(Average::Macro) - 2.0 / 9.0).abs() < 1e-12);
        assert!((c.recall(Average::Macro) - 1.0 / 3.0).abs() < 1e-12);
        assert!((c.f1(Average::Macro) - 0.8 / 3.0).abs() < 1e-12);
        assert!((c.f1(Average::Weighted) - 0.8 / 3.0).abs() < 1e-12);
        assert!((c.f1(Average::Micro) - 1.0 / 3.0).abs() < 1e-12);
    }
}
