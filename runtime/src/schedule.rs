//! Learning-rate schedules, evaluated by the runtime before every step (the
//! training step takes the rate as an input).

use modelc_compiler::check::train::{Duration, Schedule};

/// Where training stands, for converting epochs and steps.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// 0-based global step about to run.
    pub step: u64,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
}

impl Progress {
    fn steps(&self, d: Duration) -> u64 {
        match d {
            Duration::Steps(s) => s,
            Duration::Epochs(e) => e * self.steps_per_epoch,
        }
    }

    fn epoch(&self) -> u64 {
        self.step / self.steps_per_epoch.max(1)
    }
}

/// The learning rate for the step `p.step`.
///
/// - `constant`: `lr`.
/// - `step(every, gamma)`: `lr · gamma^⌊t / every⌋`, as StepLR (`every` in
///   epochs counts completed epochs).
/// - `exponential(gamma)`: `lr · gamma^epoch`, as ExponentialLR.
/// - `cosine(warmup, min_lr)`: linear from `lr/warmup` up to `lr` over the
///   warm-up steps, then `min_lr + (lr − min_lr)(1 + cos(π·s/S))/2` over the
///   remaining S steps.
pub fn lr_at(schedule: &Schedule, lr: f64, p: Progress) -> f64 {
    match schedule {
        Schedule::Constant => lr,
        Schedule::Step { every, gamma } => {
            let k = match every {
                Duration::Epochs(e) => p.epoch() / (*e).max(1),
                Duration::Steps(s) => p.step / (*s).max(1),
            };
            lr * gamma.powi(k.min(i32::MAX as u64) as i32)
        }
        Schedule::Exponential { gamma } => lr * gamma.powi(p.epoch().min(i32::MAX as u64) as i32),
        Schedule::Cosine { warmup, min_lr } => {
            let w = p.steps(*warmup).min(p.total_steps);
            if p.step < w {
                return lr * (p.step + 1) as f64 / w as f64;
            }
            let span = p.total_steps.saturating_sub(w).max(1);
            let s = (p.step - w).min(span) as f64;
            min_lr + (lr - min_lr) * (1.0 + (std::f64::consts::PI * s / span as f64).cos()) / 2.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &Schedule, step: u64) -> f64 {
        lr_at(s, 0.1, Progress { step, steps_per_epoch: 10, total_steps: 100 })
    }

    #[test]
    fn step_decay_counts_completed_epochs() {
        let s = Schedule::Step { every: Duration::Epochs(5), gamma: 0.1 };
        assert_eq!(at(&s, 0), 0.1);
        assert_eq!(at(&s, 49), 0.1);
        assert!((at(&s, 50) - 0.01).abs() < 1e-15);
        let s = Schedule::Step { every: Duration::Steps(30), gamma: 0.5 };
        assert_eq!(at(&s, 29), 0.1);
        assert_eq!(at(&s, 30), 0.05);
    }

    #[test]
    fn exponential_decays_per_epoch() {
        let s = Schedule::Exponential { gamma: 0.5 };
        assert_eq!(at(&s, 9), 0.1);
        assert_eq!(at(&s, 10), 0.05);
    }

    #[test]
    fn cosine_warms_up_then_decays_to_the_floor() {
        let s = Schedule::Cosine { warmup: Duration::Steps(10), min_lr: 0.001 };
        assert!((at(&s, 0) - 0.01).abs() < 1e-15);
        assert!((at(&s, 9) - 0.1).abs() < 1e-15);
        assert!((at(&s, 10) - 0.1).abs() < 1e-15);
        assert!((at(&s, 55) - (0.001 + 0.099 * 0.5)).abs() < 1e-12);
        assert!((at(&s, 100) - 0.001).abs() < 1e-15);
        let no_warmup = Schedule::Cosine { warmup: Duration::Steps(0), min_lr: 0.0 };
        assert_eq!(at(&no_warmup, 0), 0.1);
    }
}
