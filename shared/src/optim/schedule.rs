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

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(base_lr: f64, kind: ScheduleKind, warmup_iters: usize, start: f64) -> LrSchedule {
        let s = LrSchedule {
            base_lr,
            kind,
            warmup_iters,
            warmup_start_factor: start,
        };
        s.validate().unwrap();
        s
    }

    /// Expected values worked out by hand from torch's closed forms.
    fn check(s: &LrSchedule, expected: &[(usize, f64)]) {
        for &(iter, want) in expected {
            let got = s.lr_at(iter);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1e-300),
                "{:?} at {iter}: got {got}, expected {want}",
                s.kind
            );
        }
    }

    #[test]
    fn constant_with_and_without_warmup() {
        check(
            &sched(0.1, ScheduleKind::Constant, 0, 0.5),
            &[(0, 0.1), (1, 0.1), (100_000, 0.1)],
        );
        // factor 0.2 + 0.8 * t / 5
        check(
            &sched(0.1, ScheduleKind::Constant, 5, 0.2),
            &[(0, 0.02), (1, 0.036), (4, 0.084), (5, 0.1), (6, 0.1)],
        );
        assert_eq!(LrSchedule::constant(0.3).lr_at(7), 0.3);
    }

    #[test]
    fn step_lr() {
        let kind = ScheduleKind::Step {
            step_size: 10,
            gamma: 0.1,
        };
        check(
            &sched(0.1, kind.clone(), 0, 1.0),
            &[(0, 0.1), (9, 0.1), (10, 0.01), (19, 0.01), (25, 0.001)],
        );
        // counted from the end of a 5-iteration warm-up
        check(
            &sched(0.1, kind, 5, 0.5),
            &[
                (0, 0.05),
                (2, 0.07),
                (5, 0.1),
                (14, 0.1),
                (15, 0.01),
                (30, 0.001),
            ],
        );
    }

    #[test]
    fn multi_step_lr() {
        // milestones in any order; a repeated milestone counts twice, as in torch
        let kind = ScheduleKind::MultiStep {
            milestones: vec![60, 30, 90, 90],
            gamma: 0.5,
        };
        check(
            &sched(1.0, kind.clone(), 0, 1.0),
            &[
                (0, 1.0),
                (29, 1.0),
                (30, 0.5),
                (59, 0.5),
                (60, 0.25),
                (89, 0.25),
                (90, 0.0625),
            ],
        );
        check(
            &sched(1.0, kind, 10, 0.1),
            &[
                (0, 0.1),
                (5, 0.55),
                (10, 1.0),
                (39, 1.0),
                (40, 0.5),
                (70, 0.25),
            ],
        );
    }

    #[test]
    fn cosine_lr() {
        let kind = ScheduleKind::Cosine {
            total_iters: 100,
            min_lr: 0.001,
        };
        // 0.001 + 0.099 * (1 + cos(pi * t / 100)) / 2; cos(pi/4) = 0.70710678118654752
        let quarter = 0.001 + 0.099 * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0;
        check(
            &sched(0.1, kind.clone(), 0, 1.0),
            &[
                (0, 0.1),
                (25, quarter),
                (50, 0.0505),
                (100, 0.001),
                (150, 0.001),
            ],
        );
        check(
            &sched(0.1, kind, 10, 0.01),
            &[
                (0, 0.001),
                (10, 0.1),
                (35, quarter),
                (60, 0.0505),
                (110, 0.001),
                (1000, 0.001),
            ],
        );
        // monotone non-increasing after warm-up
        let s = sched(
            0.1,
            ScheduleKind::Cosine {
                total_iters: 37,
                min_lr: 0.0,
            },
            3,
            0.1,
        );
        for i in 3..50 {
            assert!(s.lr_at(i + 1) <= s.lr_at(i), "cosine rises at {i}");
        }
        assert!(
            (0..3).all(|i| s.lr_at(i) < s.lr_at(i + 1)),
            "warm-up must rise"
        );
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let base = LrSchedule::constant(0.1);
        let bad = |s: LrSchedule| s.validate().unwrap_err().to_string();
        assert!(bad(LrSchedule {
            base_lr: -0.1,
            ..base.clone()
        })
        .contains("base_lr"));
        assert!(bad(LrSchedule {
            base_lr: f64::NAN,
            ..base.clone()
        })
        .contains("base_lr"));
        for f in [0.0, 1.5, -0.2] {
            let s = LrSchedule {
                warmup_iters: 5,
                warmup_start_factor: f,
                ..base.clone()
            };
            assert!(bad(s).contains("warmup_start_factor"));
        }
        let with = |kind| LrSchedule {
            kind,
            ..base.clone()
        };
        assert!(bad(with(ScheduleKind::Step {
            step_size: 0,
            gamma: 0.1
        }))
        .contains("step_size"));
        assert!(bad(with(ScheduleKind::Step {
            step_size: 1,
            gamma: -0.1
        }))
        .contains("gamma"));
        let ms = ScheduleKind::MultiStep {
            milestones: vec![1],
            gamma: f64::INFINITY,
        };
        assert!(bad(with(ms)).contains("gamma"));
        let cos = |total_iters, min_lr| ScheduleKind::Cosine {
            total_iters,
            min_lr,
        };
        assert!(bad(with(cos(0, 0.0))).contains("total_iters"));
        assert!(bad(with(cos(10, 0.5))).contains("min_lr"));
        assert!(bad(with(cos(10, -0.01))).contains("min_lr"));
        with(cos(10, 0.1)).validate().unwrap();
    }

    #[test]
    fn serde_round_trip_defaults_and_typos() {
        let s = LrSchedule {
            base_lr: 0.05,
            kind: ScheduleKind::MultiStep {
                milestones: vec![30, 60],
                gamma: 0.1,
            },
            warmup_iters: 500,
            warmup_start_factor: 0.001,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""type":"multi_step""#), "{json}");
        assert_eq!(serde_json::from_str::<LrSchedule>(&json).unwrap(), s);

        let parsed: LrSchedule = serde_json::from_str(
            r#"{"base_lr": 0.1, "kind": {"type": "cosine", "total_iters": 90, "min_lr": 0.0}}"#,
        )
        .unwrap();
        assert_eq!(parsed.warmup_iters, 0);
        assert_eq!(parsed.warmup_start_factor, 1.0 / 3.0);
        assert_eq!(
            parsed.kind,
            ScheduleKind::Cosine {
                total_iters: 90,
                min_lr: 0.0
            }
        );
        let constant: LrSchedule =
            serde_json::from_str(r#"{"base_lr": 0.1, "kind": {"type": "constant"}}"#).unwrap();
        assert_eq!(constant.kind, ScheduleKind::Constant);

        // misspelt fields are errors, not silently ignored
        assert!(serde_json::from_str::<LrSchedule>(
            r#"{"base_lr": 0.1, "kind": {"type": "constant"}, "warmup": 5}"#
        )
        .is_err());
        assert!(serde_json::from_str::<LrSchedule>(
            r#"{"base_lr": 0.1, "kind": {"type": "step", "step_size": 3, "gama": 0.5}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<LrSchedule>(
            r#"{"base_lr": 0.1, "kind": {"type": "step", "step_size": 3, "gamma": 0.5, "x": 1}}"#
        )
        .is_err());
    }
}
