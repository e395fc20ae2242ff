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

    /// During a linear warm-up of `warmup`: `Err(fraction of lr)`, from
    /// `1/w` up to 1. After it: `Ok(fraction of the rest of the run done)`.
    fn after_warmup(&self, warmup: Duration) -> Result<f64, f64> {
        let w = self.steps(warmup).min(self.total_steps);
        if self.step < w {
            return Err((self.step + 1) as f64 / w as f64);
        }
        let span = self.total_steps.saturating_sub(w).max(1);
        Ok((self.step - w).min(span) as f64 / span as f64)
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
/// - `multistep(at, gamma)`: `lr · gamma^k` once k milestones are passed
///   (MultiStepLR; epoch milestones count completed epochs).
/// - `linear(warmup, end)`: the warm-up as `cosine`'s, then
///   `lr + (lr·end − lr)·s/S` over the remaining S steps.
/// - `onecycle(pct, div, final_div)`: OneCycleLR with cosine annealing and
///   `max_lr = lr`: from `lr/div` up to `lr` at step `pct·T − 1`, then down
///   to `lr/(div·final_div)` at step `T − 1`.
/// - `plateau(…)`: `lr` here; the trainer multiplies it by a [`Plateau`]'s
///   factor, decided after each epoch.
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
        Schedule::Cosine { warmup, min_lr } => match p.after_warmup(*warmup) {
            Err(f) => lr * f,
            Ok(f) => min_lr + (lr - min_lr) * (1.0 + (std::f64::consts::PI * f).cos()) / 2.0,
        },
        Schedule::MultiStep { at, gamma } => {
            let passed = at
                .iter()
                .filter(|m| match m {
                    Duration::Epochs(e) => p.epoch() >= *e,
                    Duration::Steps(s) => p.step >= *s,
                })
                .count();
            lr * gamma.powi(passed as i32)
        }
        Schedule::Linear { warmup, end } => match p.after_warmup(*warmup) {
            Err(f) => lr * f,
            Ok(f) => lr + (lr * end - lr) * f,
        },
        Schedule::OneCycle { pct, div, final_div } => {
            let initial = lr / div;
            let floor = initial / final_div;
            let up = (pct * p.total_steps as f64 - 1.0).max(1.0);
            let last = (p.total_steps as f64 - 1.0).max(up + 1.0);
            let t = p.step as f64;
            let anneal = |from: f64, to: f64, f: f64| to + (from - to) / 2.0 * ((std::f64::consts::PI * f).cos() + 1.0);
            if t <= up {
                anneal(initial, lr, t / up)
            } else {
                anneal(lr, floor, ((t - up) / (last - up)).min(1.0))
            }
        }
        Schedule::Plateau { .. } => lr,
    }
}

/// ReduceLROnPlateau's state: the factor on the rate, the best value seen
/// and the epochs since it improved.
#[derive(Clone, Debug, PartialEq)]
pub struct Plateau {
    pub factor: f64,
    pub best: Option<f64>,
    pub bad_epochs: u64,
}

impl Default for Plateau {
    fn default() -> Self {
        Plateau { factor: 1.0, best: None, bad_epochs: 0 }
    }
}

impl Plateau {
    /// Takes an epoch's value of the watched quantity (lower is better for a
    /// loss, higher otherwise); returns the new factor when it changed.
    pub fn observe(&mut self, schedule: &Schedule, base_lr: f64, value: f64, lower_is_better: bool) -> Option<f64> {
        let Schedule::Plateau { factor, patience, min_delta, min_lr, .. } = schedule else { return None };
        let score = if lower_is_better { -value } else { value };
        match self.best {
            Some(b) if score <= b + min_delta => self.bad_epochs += 1,
            _ => {
                self.best = Some(score);
                self.bad_epochs = 0;
            }
        }
        if self.bad_epochs > *patience {
            let floor = if base_lr > 0.0 { min_lr / base_lr } else { 0.0 };
            let next = (self.factor * factor).max(floor);
            self.bad_epochs = 0;
            if next < self.factor {
                self.factor = next;
                return Some(next);
            }
        }
        None
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
    fn multistep_passes_its_milestones() {
        let s = Schedule::MultiStep { at: vec![Duration::Epochs(3), Duration::Steps(70)], gamma: 0.5 };
        assert_eq!(at(&s, 29), 0.1);
        assert_eq!(at(&s, 30), 0.05);
        assert_eq!(at(&s, 70), 0.025);
    }

    #[test]
    fn linear_warms_up_then_falls_to_its_end() {
        let s = Schedule::Linear { warmup: Duration::Steps(10), end: 0.1 };
        assert!((at(&s, 0) - 0.01).abs() < 1e-15);
        assert!((at(&s, 10) - 0.1).abs() < 1e-15);
        assert!((at(&s, 55) - (0.1 - 0.09 * 0.5)).abs() < 1e-12);
        assert!((at(&s, 100) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn plateau_cuts_the_rate_after_patience_epochs() {
        let s = Schedule::Plateau { on: "val_loss".into(), factor: 0.5, patience: 1, min_delta: 0.0, min_lr: 0.02 };
        let mut p = Plateau::default();
        assert_eq!(p.observe(&s, 0.1, 1.0, true), None);
        assert_eq!(p.observe(&s, 0.1, 1.0, true), None, "one bad epoch is within patience");
        assert_eq!(p.observe(&s, 0.1, 1.0, true), Some(0.5), "two are not");
        assert_eq!(p.observe(&s, 0.1, 0.9, true), None, "an improvement");
        for _ in 0..2 {
            p.observe(&s, 0.1, 0.95, true);
        }
        assert_eq!(p.factor, 0.25);
        for _ in 0..2 {
            p.observe(&s, 0.1, 0.95, true);
        }
        assert!((p.factor - 0.2).abs() < 1e-15, "never below min_lr / lr: {}", p.factor);
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
