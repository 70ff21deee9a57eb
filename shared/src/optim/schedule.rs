//! Learning-rate schedules: a linear warm-up followed by a constant, step, multi-step or
//! cosine schedule, in PyTorch's closed forms.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The main schedule, run after the warm-up and counted from its end.
///
/// Serialised internally tagged, e.g. in TOML
/// `kind = { type = "multi_step", milestones = [30, 60], gamma = 0.1 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleKind {
    /// The base learning rate throughout.
    Constant,
    /// `torch.optim.lr_scheduler.StepLR`: `base * gamma^floor(t / step_size)`.
    Step { step_size: usize, gamma: f64 },
    /// `torch.optim.lr_scheduler.MultiStepLR`: `base * gamma^(number of milestones <= t)`.
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// `torch.optim.lr_scheduler.CosineAnnealingLR` (closed form), with `min_lr` the absolute
    /// floor (`eta_min`); stays at `min_lr` for `t >= total_iters` instead of rising again.
    Cosine { total_iters: usize, min_lr: f64 },
}

fn default_warmup_start_factor() -> f64 {
    // torch.optim.lr_scheduler.LinearLR's default start_factor
    1.0 / 3.0
}

/// A learning-rate schedule over iterations (optimiser steps).
///
/// With `warmup_iters > 0` this is `SequentialLR([LinearLR(start_factor, 1.0, warmup_iters),
/// main], milestones=[warmup_iters])`: the factor rises linearly from `warmup_start_factor` at
/// iteration 0 to 1 at iteration `warmup_iters`, from where the main schedule runs with its own
/// iteration count starting at 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Base learning rate (the groups' `lr_scale` multiplies it).
    pub base_lr: f64,
    /// The main schedule.
    pub kind: ScheduleKind,
    /// Warm-up length in iterations; 0 for none.
    #[serde(default)]
    pub warmup_iters: usize,
    /// Warm-up factor at iteration 0, in `(0, 1]` (default 1/3, as `LinearLR`).
    #[serde(default = "default_warmup_start_factor")]
    pub warmup_start_factor: f64,
}

impl LrSchedule {
    /// A constant schedule without warm-up.
    pub fn constant(base_lr: f64) -> Self {
        Self {
            base_lr,
            kind: ScheduleKind::Constant,
            warmup_iters: 0,
            warmup_start_factor: default_warmup_start_factor(),
        }
    }

    /// The learning rate for iteration `iter` (0-based: the rate used by the first step is
    /// `lr_at(0)`). Meaningful for schedules that pass [`LrSchedule::validate`].
    pub fn lr_at(&self, iter: usize) -> f64 {
        let base = self.base_lr;
        if iter < self.warmup_iters {
            // LinearLR closed form: base * (start + (end - start) * min(T, t) / T), end = 1
            let start = self.warmup_start_factor;
            return base * (start + (1.0 - start) * iter as f64 / self.warmup_iters as f64);
        }
        let t = iter - self.warmup_iters;
        match &self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step { step_size, gamma } => {
                base * gamma.powf((t / (*step_size).max(1)) as f64)
            }
            ScheduleKind::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= t).count();
                base * gamma.powf(passed as f64)
            }
            ScheduleKind::Cosine {
                total_iters,
                min_lr,
            } => {
                if t >= *total_iters {
                    *min_lr
                } else {
                    let cos = (std::f64::consts::PI * t as f64 / *total_iters as f64).cos();
                    min_lr + (base - min_lr) * (1.0 + cos) / 2.0
                }
            }
        }
    }

    /// Checks the configuration: a finite, non-negative base rate; a warm-up start factor in
    /// `(0, 1]`; `step_size > 0`; finite, non-negative `gamma`; `total_iters > 0` and
    /// `0 <= min_lr <= base_lr` for cosine.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(format!("lr schedule: {msg}")));
        if !(self.base_lr >= 0.0 && self.base_lr.is_finite()) {
            return bad(format!("base_lr {} must be finite and >= 0", self.base_lr));
        }
        if !(self.warmup_start_factor > 0.0 && self.warmup_start_factor <= 1.0) {
            return bad(format!(
                "warmup_start_factor {} must be in (0, 1]",
                self.warmup_start_factor
            ));
        }
        let check_gamma = |gamma: f64| {
            if gamma >= 0.0 && gamma.is_finite() {
                Ok(())
            } else {
                bad(format!("gamma {gamma} must be finite and >= 0"))
            }
        };
        match &self.kind {
            ScheduleKind::Constant => Ok(()),
            ScheduleKind::Step { step_size, gamma } => {
                if *step_size == 0 {
                    return bad("step_size must be > 0".into());
                }
                check_gamma(*gamma)
            }
            ScheduleKind::MultiStep { gamma, .. } => check_gamma(*gamma),
            ScheduleKind::Cosine {
                total_iters,
                min_lr,
            } => {
                if *total_iters == 0 {
                    return bad("cosine total_iters must be > 0".into());
                }
                if !(*min_lr >= 0.0 && *min_lr <= self.base_lr) {
                    return bad(format!(
                        "cosine min_lr {min_lr} must be in [0, base_lr = {}]",
                        self.base_lr
                    ));
                }
                Ok(())
            }
        }
    }
}
