//! Which task and image fill each slot of each batch.
//!
//! Every slot is decided by a counter-based generator keyed by `(seed, iteration, slot)` (see
//! [`super::rng`]), so [`Sampler::batch_plan`] for iteration `i` is a pure function of the seed,
//! `i`, the batch size and the task sizes/weights, however batches are produced or resumed.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};

use super::rng::{hash, permute, Rng};
use super::TaskItems;

/// How tasks (and images within a task) are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// The paper's: a task uniformly at random, then one of its images uniformly at random.
    UniformTask,
    /// A task with probability proportional to its number of images (= images uniformly over
    /// the union of the tasks).
    Proportional,
    /// Temperature sampling: `p_t ∝ n_t^(1/T)` (`T = 1` is proportional, `T → ∞` uniform).
    Temperature(f64),
    /// Tasks in turn (slot `g` of the global stream goes to task `g mod T`); each task's
    /// images in a fresh pseudo-random order every epoch of that task.
    RoundRobin,
    /// A task with probability proportional to [`TaskItems::weight`], then an image uniformly.
    Weighted,
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UniformTask => write!(f, "uniform"),
            Self::Proportional => write!(f, "proportional"),
            Self::Temperature(t) => write!(f, "temperature:{t}"),
            Self::RoundRobin => write!(f, "round-robin"),
            Self::Weighted => write!(f, "weighted"),
        }
    }
}

impl FromStr for SamplerKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        Ok(match s {
            "uniform" => Self::UniformTask,
            "proportional" => Self::Proportional,
            "round-robin" => Self::RoundRobin,
            "weighted" => Self::Weighted,
            _ => {
                let Some(t) = s.strip_prefix("temperature:") else {
                    bail!(
                        "unknown sampler {s:?}: expected uniform, proportional, temperature:T, \
                         round-robin or weighted"
                    );
                };
                let t: f64 = t
                    .parse()
                    .with_context(|| format!("sampler {s:?}: temperature is not a number"))?;
                ensure!(
                    t.is_finite() && t > 0.0,
                    "sampler {s:?}: temperature must be finite and > 0"
                );
                Self::Temperature(t)
            }
        })
    }
}

/// Domain tags keeping the generator streams of different purposes apart.
const TAG_SLOT: u64 = 0x736c_6f74; // "slot"
const TAG_EPOCH: u64 = 0x6570_6f63; // "epoc"

/// A sampler over fixed task sizes.
#[derive(Debug, Clone)]
pub struct Sampler {
    kind: SamplerKind,
    sizes: Vec<usize>,
    /// Cumulative probabilities, the last exactly 1.
    cumulative: Vec<f64>,
}

impl Sampler {
    /// A sampler over `tasks` (sizes and weights are read; images are not).
    pub fn new(kind: SamplerKind, tasks: &[TaskItems]) -> Result<Self> {
        let sizes: Vec<usize> = tasks.iter().map(|t| t.items.len()).collect();
        let weights: Vec<f64> = tasks.iter().map(|t| t.weight).collect();
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        Self::build(kind, &sizes, &weights, &names)
    }

    /// A sampler over tasks of the given sizes and weights (weights only matter for
    /// [`SamplerKind::Weighted`]).
    #[cfg(test)]
    pub fn from_sizes(kind: SamplerKind, sizes: &[usize], weights: &[f64]) -> Result<Self> {
        let names: Vec<String> = (0..sizes.len()).map(|t| format!("#{t}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Self::build(kind, sizes, weights, &names)
    }

    fn build(kind: SamplerKind, sizes: &[usize], weights: &[f64], names: &[&str]) -> Result<Self> {
        ensure!(!sizes.is_empty(), "sampler: no tasks");
        ensure!(
            weights.len() == sizes.len(),
            "sampler: {} weights for {} tasks",
            weights.len(),
            sizes.len()
        );
        for (n, name) in sizes.iter().zip(names) {
            ensure!(*n > 0, "sampler: task {name} has no images");
        }
        let raw: Vec<f64> = match kind {
            SamplerKind::RoundRobin => Vec::new(),
            SamplerKind::UniformTask => vec![1.0; sizes.len()],
            SamplerKind::Proportional => sizes.iter().map(|&n| n as f64).collect(),
            SamplerKind::Temperature(t) => {
                ensure!(
                    t.is_finite() && t > 0.0,
                    "sampler: temperature {t} must be finite and > 0"
                );
                sizes.iter().map(|&n| (n as f64).powf(1.0 / t)).collect()
            }
            SamplerKind::Weighted => {
                for (w, name) in weights.iter().zip(names) {
                    ensure!(
                        w.is_finite() && *w >= 0.0,
                        "sampler: task {name} has weight {w}; weights must be finite and >= 0"
                    );
                }
                weights.to_vec()
            }
        };
        let total: f64 = raw.iter().sum();
        if !raw.is_empty() {
            ensure!(
                total > 0.0 && total.is_finite(),
                "sampler: task weights sum to {total}"
            );
        }
        let mut cumulative = Vec::with_capacity(raw.len());
        let mut acc = 0.0;
        for w in &raw {
            acc += w;
            cumulative.push(acc / total);
        }
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Ok(Self {
            kind,
            sizes: sizes.to_vec(),
            cumulative,
        })
    }

    /// The number of tasks.
    #[cfg(test)]
    pub fn num_tasks(&self) -> usize {
        self.sizes.len()
    }

    /// The probability of each task per slot (for round-robin: `1 / T` each, deterministically).
    #[cfg(test)]
    pub fn task_probabilities(&self) -> Vec<f64> {
        if self.cumulative.is_empty() {
            vec![1.0 / self.sizes.len() as f64; self.sizes.len()]
        } else {
            let mut prev = 0.0;
            self.cumulative
                .iter()
                .map(|&c| {
                    let p = c - prev;
                    prev = c;
                    p
                })
                .collect()
        }
    }

    /// The images of batch `iter` (of `batch` slots): `(task, item, augment seed)` per slot.
    ///
    /// A pure function of `(seed, iter, batch)` and the task sizes/weights.
    pub fn batch_plan(&self, seed: u64, iter: u64, batch: usize) -> Vec<(usize, usize, u64)> {
        (0..batch)
            .map(|slot| self.slot(seed, iter, batch, slot))
            .collect()
    }

    fn slot(&self, seed: u64, iter: u64, batch: usize, slot: usize) -> (usize, usize, u64) {
        let mut rng = Rng::keyed(&[TAG_SLOT, seed, iter, batch as u64, slot as u64]);
        let (task, item) = match self.kind {
            SamplerKind::RoundRobin => {
                // Position in the global stream of slots, then in task `task`'s own stream.
                let g = iter * batch as u64 + slot as u64;
                let t = self.sizes.len() as u64;
                let task = (g % t) as usize;
                let k = g / t;
                let n = self.sizes[task] as u64;
                let (epoch, pos) = (k / n, k % n);
                let key = hash(&[TAG_EPOCH, seed, task as u64, epoch]);
                (task, permute(pos, n, key) as usize)
            }
            _ => {
                let u = rng.unit_f64();
                let task = self
                    .cumulative
                    .iter()
                    .position(|&c| u < c)
                    .unwrap_or(self.cumulative.len() - 1);
                (task, rng.below(self.sizes[task] as u64) as usize)
            }
        };
        (task, item, rng.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAWS: usize = 20_000;

    /// Task counts over `DRAWS` slots (batches of 32).
    fn counts(s: &Sampler, seed: u64) -> Vec<usize> {
        let mut c = vec![0; s.num_tasks()];
        for it in 0..(DRAWS / 32) as u64 {
            for (t, _, _) in s.batch_plan(seed, it, 32) {
                c[t] += 1;
            }
        }
        c
    }

    /// Pearson chi-square statistic of `counts` against probabilities `p`.
    fn chi2(counts: &[usize], p: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(p)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                if e == 0.0 {
                    assert_eq!(c, 0, "a task of probability 0 was drawn");
                    return 0.0;
                }
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// Chi-square 99.9% quantile bound for up to 6 degrees of freedom is 22.5; 30 is generous
    /// yet catches any real bias at 20k draws.
    const CHI2_MAX: f64 = 30.0;

    const SIZES: [usize; 5] = [4204, 950, 374, 9, 1200];

    fn check(kind: SamplerKind, weights: &[f64], expected: &[f64]) {
        let s = Sampler::from_sizes(kind, &SIZES, weights).unwrap();
        for (a, b) in s.task_probabilities().iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{kind}: {a} vs {b}");
        }
        let c = counts(&s, 7);
        let x = chi2(&c, expected);
        assert!(
            x < CHI2_MAX,
            "{kind}: chi2 {x} for counts {c:?}, expected {expected:?}"
        );
    }

    fn normalised(v: &[f64]) -> Vec<f64> {
        let s: f64 = v.iter().sum();
        v.iter().map(|x| x / s).collect()
    }

    #[test]
    fn uniform_task_ignores_sizes() {
        check(SamplerKind::UniformTask, &[1.0; 5], &[0.2; 5]);
    }

    #[test]
    fn proportional_follows_sizes() {
        let p = normalised(&SIZES.map(|n| n as f64));
        check(SamplerKind::Proportional, &[1.0; 5], &p);
    }

    #[test]
    fn temperature_follows_formula() {
        for t in [2.0, 5.0] {
            let p = normalised(&SIZES.map(|n| (n as f64).powf(1.0 / t)));
            check(SamplerKind::Temperature(t), &[1.0; 5], &p);
        }
        // T = 1 is proportional.
        let a = Sampler::from_sizes(SamplerKind::Temperature(1.0), &SIZES, &[1.0; 5]).unwrap();
        let b = Sampler::from_sizes(SamplerKind::Proportional, &SIZES, &[1.0; 5]).unwrap();
        for (x, y) in a.task_probabilities().iter().zip(b.task_probabilities()) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    #[test]
    fn weighted_follows_weights() {
        let w = [1.0, 2.0, 0.0, 3.0, 4.0];
        check(SamplerKind::Weighted, &w, &normalised(&w));
    }

    #[test]
    fn items_uniform_within_task() {
        let s = Sampler::from_sizes(SamplerKind::UniformTask, &[10, 3], &[1.0; 2]).unwrap();
        let mut c = vec![0usize; 10];
        for it in 0..1000 {
            for (t, i, _) in s.batch_plan(3, it, 20) {
                if t == 0 {
                    c[i] += 1;
                }
            }
        }
        assert!(chi2(&c, &[0.1; 10]) < CHI2_MAX, "{c:?}");
    }

    #[test]
    fn round_robin_cycles_tasks_and_covers_epochs() {
        let sizes = [7usize, 3, 12];
        let s = Sampler::from_sizes(SamplerKind::RoundRobin, &sizes, &[1.0; 3]).unwrap();
        let batch = 5;
        // Flatten 2 * lcm-ish epochs worth of slots.
        let plan: Vec<(usize, usize, u64)> =
            (0..60).flat_map(|it| s.batch_plan(1, it, batch)).collect();
        for (g, &(t, _, _)) in plan.iter().enumerate() {
            assert_eq!(t, g % 3, "slot {g}");
        }
        for (task, &n) in sizes.iter().enumerate() {
            let seq: Vec<usize> = plan.iter().filter(|p| p.0 == task).map(|p| p.1).collect();
            let epochs: Vec<&[usize]> = seq.chunks_exact(n).collect();
            assert!(epochs.len() >= 2);
            for (e, ep) in epochs.iter().enumerate() {
                let mut sorted = ep.to_vec();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "task {task} epoch {e}");
            }
            // Epochs are reshuffled (12! orders: equal by chance with negligible odds).
            if n == 12 {
                assert_ne!(epochs[0], epochs[1]);
            }
        }
    }

    #[test]
    fn plan_is_a_pure_function_of_its_inputs() {
        for kind in [
            SamplerKind::UniformTask,
            SamplerKind::RoundRobin,
            SamplerKind::Temperature(2.0),
        ] {
            let s = Sampler::from_sizes(kind, &SIZES, &[1.0; 5]).unwrap();
            let seq: Vec<_> = (0..50).map(|it| s.batch_plan(42, it, 16)).collect();
            for it in [0u64, 17, 49] {
                let alone = s.clone().batch_plan(42, it, 16);
                assert_eq!(alone, seq[it as usize], "{kind} iter {it}");
            }
            assert_ne!(s.batch_plan(42, 3, 16), s.batch_plan(43, 3, 16));
            assert_ne!(s.batch_plan(42, 3, 16), s.batch_plan(42, 4, 16));
            // Augment seeds differ between slots.
            let seeds: std::collections::HashSet<u64> = seq.iter().flatten().map(|p| p.2).collect();
            assert_eq!(seeds.len(), 50 * 16);
        }
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "uniform",
            "proportional",
            "temperature:2",
            "temperature:0.5",
            "round-robin",
            "weighted",
        ] {
            let k: SamplerKind = s.parse().unwrap();
            assert_eq!(k.to_string(), s);
        }
        assert_eq!(
            "temperature:2".parse::<SamplerKind>().unwrap(),
            SamplerKind::Temperature(2.0)
        );
        for bad in [
            "",
            "uniformly",
            "temperature:",
            "temperature:0",
            "temperature:-1",
        ] {
            assert!(bad.parse::<SamplerKind>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_empty_tasks_and_bad_weights() {
        assert!(Sampler::from_sizes(SamplerKind::UniformTask, &[3, 0], &[1.0; 2]).is_err());
        assert!(Sampler::from_sizes(SamplerKind::UniformTask, &[], &[]).is_err());
        assert!(Sampler::from_sizes(SamplerKind::Weighted, &[3, 3], &[0.0, 0.0]).is_err());
        assert!(Sampler::from_sizes(SamplerKind::Weighted, &[3, 3], &[1.0, f64::NAN]).is_err());
    }
}
