//! Group-disjoint, label-stratified train/val/test splits, deterministic given the seed.
//!
//! Groups (all samples sharing a `group`) are never divided. Groups the source puts in `test`
//! go to test; groups it puts in `train` are divided into train and val (val fraction
//! renormalised to `val / (train + val)`); the other groups are divided by the configured
//! fractions. Within each of those pools, groups are shuffled with a seed derived from the pool
//! seed and the task name, ordered largest first (stable, so equal sizes keep the shuffled
//! order), and each goes to the split where it brings the per-label counts closest to target
//! (squared deviations, in units of each label's total); then single groups are moved and pairs
//! swapped between splits while that improves the fit (this matters when groups mix labels, as
//! idc-breast's patients do). Finally every class with no train sample gets its smallest
//! movable group moved to train.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use mtpath_shared::rng::SplitMix64;

use super::config::SplitFractions;
use super::task::Given;
use super::{Sample, Split};

const SPLITS: [Split; 3] = [Split::Train, Split::Val, Split::Test];

/// FNV-1a of the task name mixed into the pool seed: each task gets its own shuffle.
pub fn task_seed(seed: u64, task: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    SplitMix64::new(seed ^ h).next_u64()
}

struct Group<'a> {
    name: &'a str,
    members: Vec<usize>,
    counts: Vec<u32>,
    given: Given,
    size: usize,
}

/// Largest refinement problem (groups) for which pairs of groups are tried for swapping.
const MAX_SWAP_GROUPS: usize = 3000;

/// Choose a split (0 train, 1 val, 2 test) for each group, in the given order: greedily, then
/// refined by moving single groups and swapping pairs while that brings the per-label counts
/// closer to target. The cost is `sum over splits s and labels l of ((count[s][l] -
/// fraction[s] * total[l]) / total[l])^2`; splits with fraction 0 receive nothing.
fn place(groups: &[&Group], fr: [f64; 3], n_classes: usize) -> Vec<usize> {
    let mut totals = vec![0f64; n_classes];
    for g in groups {
        for (l, &c) in g.counts.iter().enumerate() {
            totals[l] += f64::from(c);
        }
    }
    // dev[s][l] = count - target, in units of the label's total.
    let mut dev: Vec<Vec<f64>> = (0..3)
        .map(|s| totals.iter().map(|_| -fr[s]).collect())
        .collect();
    let frac = |g: &Group| -> Vec<(usize, f64)> {
        g.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(l, &c)| (l, f64::from(c) / totals[l]))
            .collect()
    };
    let fracs: Vec<Vec<(usize, f64)>> = groups.iter().map(|g| frac(g)).collect();
    // Change of cost when adding `sign * f` to split s.
    let add_cost = |dev: &[Vec<f64>], s: usize, f: &[(usize, f64)], sign: f64| -> f64 {
        f.iter()
            .map(|&(l, x)| {
                let d = dev[s][l];
                let e = d + sign * x;
                e * e - d * d
            })
            .sum()
    };
    let allowed: Vec<usize> = (0..3).filter(|&s| fr[s] > 0.0).collect();
    let mut side = vec![0usize; groups.len()];
    for (i, f) in fracs.iter().enumerate() {
        let mut best: Option<(usize, f64)> = None;
        for &s in &allowed {
            let cost = add_cost(&dev, s, f, 1.0);
            if best.is_none_or(|(_, b)| cost < b) {
                best = Some((s, cost));
            }
        }
        let s = best.map(|(s, _)| s).unwrap_or(0);
        for &(l, x) in f {
            dev[s][l] += x;
        }
        side[i] = s;
    }
    const EPS: f64 = 1e-12;
    for _pass in 0..20 {
        let mut improved = false;
        for i in 0..groups.len() {
            let a = side[i];
            let remove = add_cost(&dev, a, &fracs[i], -1.0);
            for &b in &allowed {
                if b == a {
                    continue;
                }
                if remove + add_cost(&dev, b, &fracs[i], 1.0) < -EPS {
                    for &(l, x) in &fracs[i] {
                        dev[a][l] -= x;
                        dev[b][l] += x;
                    }
                    side[i] = b;
                    improved = true;
                    break;
                }
            }
        }
        if groups.len() <= MAX_SWAP_GROUPS {
            // Net change of split a when g_i (in a) and g_j (in b) swap: g_j - g_i; of b: the
            // opposite. `net` is a dense scratch over labels, `touched` its non-zero labels.
            let mut net = vec![0f64; n_classes];
            let mut touched: Vec<usize> = Vec::new();
            for i in 0..groups.len() {
                for j in i + 1..groups.len() {
                    let (a, b) = (side[i], side[j]);
                    if a == b {
                        continue;
                    }
                    touched.clear();
                    for &(l, x) in &fracs[j] {
                        net[l] += x;
                        touched.push(l);
                    }
                    for &(l, x) in &fracs[i] {
                        if net[l] == 0.0 {
                            touched.push(l);
                        }
                        net[l] -= x;
                    }
                    let delta: f64 = touched
                        .iter()
                        .map(|&l| {
                            let (da, db, x) = (dev[a][l], dev[b][l], net[l]);
                            (da + x) * (da + x) - da * da + (db - x) * (db - x) - db * db
                        })
                        .sum();
                    if delta < -EPS {
                        for &l in &touched {
                            dev[a][l] += net[l];
                            dev[b][l] -= net[l];
                        }
                        side.swap(i, j);
                        improved = true;
                    }
                    for &l in &touched {
                        net[l] = 0.0;
                    }
                }
            }
        }
        if !improved {
            break;
        }
    }
    side
}

/// Assign each sample to a split. `n_classes` bounds the labels.
pub fn assign(
    samples: &[(Sample, Given)],
    n_classes: usize,
    fractions: &SplitFractions,
    seed: u64,
    task: &str,
) -> Result<Vec<Split>> {
    let mut by_name: BTreeMap<&str, Group> = BTreeMap::new();
    for (i, (s, given)) in samples.iter().enumerate() {
        let g = by_name.entry(s.group.as_str()).or_insert_with(|| Group {
            name: s.group.as_str(),
            members: Vec::new(),
            counts: vec![0; n_classes],
            given: Given::None,
            size: 0,
        });
        g.members.push(i);
        g.counts[s.label as usize] += 1;
        g.size += 1;
        match (g.given, *given) {
            (_, Given::None) => {}
            (Given::None, x) => g.given = x,
            (a, b) if a == b => {}
            _ => {
                let example = |want: Given| {
                    g.members
                        .iter()
                        .map(|&m| &samples[m])
                        .find(|(_, gv)| *gv == want)
                        .map(|(s, _)| s.rel.clone())
                        .unwrap_or_default()
                };
                bail!(
                    "task `{task}`: group `{}` has rows given split `train` (e.g. {}) and \
                     `test` (e.g. {}); a group must lie on one side: fix the split column \
                     (or the group) in the manifest",
                    g.name,
                    example(Given::Train),
                    example(Given::Test)
                );
            }
        }
    }

    let mut rng = SplitMix64::new(task_seed(seed, task));
    let mut out = vec![Split::Train; samples.len()];
    let mut train_counts = vec![0u32; n_classes];
    // Groups that may still move to train: (group, current split).
    let mut movable: Vec<(&Group, Split)> = Vec::new();

    let (t, v, te) = (fractions.train, fractions.val, fractions.test);
    let pools: [(Given, [f64; 3]); 2] = [
        (Given::Train, [t / (t + v), v / (t + v), 0.0]),
        (Given::None, [t, v, te]),
    ];
    for g in by_name.values().filter(|g| g.given == Given::Test) {
        for &m in &g.members {
            out[m] = Split::Test;
        }
    }
    for (given, fr) in pools {
        let mut groups: Vec<&Group> = by_name.values().filter(|g| g.given == given).collect();
        rng.shuffle(&mut groups);
        groups.sort_by_key(|g| std::cmp::Reverse(g.size));
        let sides = place(&groups, fr, n_classes);
        for (g, s) in groups.into_iter().zip(sides) {
            for &m in &g.members {
                out[m] = SPLITS[s];
            }
            if s == 0 {
                for (l, &c) in g.counts.iter().enumerate() {
                    train_counts[l] += c;
                }
            } else {
                movable.push((g, SPLITS[s]));
            }
        }
    }

    // Every class with samples outside given-test groups gets at least one train sample.
    for l in 0..n_classes {
        if train_counts[l] > 0 {
            continue;
        }
        let smallest = movable
            .iter()
            .enumerate()
            .filter(|(_, (g, s))| *s != Split::Train && g.counts[l] > 0)
            .min_by_key(|(_, (g, _))| g.size)
            .map(|(i, _)| i);
        if let Some(i) = smallest {
            let g = movable[i].0;
            movable[i].1 = Split::Train;
            for &m in &g.members {
                out[m] = Split::Train;
            }
            for (k, &c) in g.counts.iter().enumerate() {
                train_counts[k] += c;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample(rel: &str, label: u32, group: &str) -> Sample {
        Sample {
            path: PathBuf::from(rel),
            rel: rel.into(),
            label,
            group: group.into(),
        }
    }

    /// `n` samples of 3 labels in groups of `per_group`.
    fn synthetic(n: usize, per_group: usize) -> Vec<(Sample, Given)> {
        (0..n)
            .map(|i| {
                let label = (i / per_group % 3) as u32;
                (
                    sample(&format!("{i}.png"), label, &format!("g{}", i / per_group)),
                    Given::None,
                )
            })
            .collect()
    }

    #[test]
    fn groups_never_cross_and_fractions_hold() {
        let s = synthetic(3000, 5);
        let out = assign(&s, 3, &SplitFractions::default(), 1, "t").unwrap();
        let mut side: BTreeMap<&str, Split> = BTreeMap::new();
        for ((smp, _), sp) in s.iter().zip(&out) {
            assert_eq!(*side.entry(&smp.group).or_insert(*sp), *sp, "{}", smp.group);
        }
        for l in 0..3 {
            let of = |want: Split| {
                s.iter()
                    .zip(&out)
                    .filter(|((x, _), sp)| x.label == l && **sp == want)
                    .count() as f64
                    / 1000.0
            };
            assert!((of(Split::Train) - 0.7).abs() < 0.02, "label {l}");
            assert!((of(Split::Val) - 0.15).abs() < 0.02, "label {l}");
            assert!((of(Split::Test) - 0.15).abs() < 0.02, "label {l}");
        }
    }

    #[test]
    fn seed_decides_the_split() {
        let s = synthetic(300, 1);
        let fr = SplitFractions::default();
        let a = assign(&s, 3, &fr, 1, "t").unwrap();
        assert_eq!(a, assign(&s, 3, &fr, 1, "t").unwrap());
        assert_ne!(a, assign(&s, 3, &fr, 2, "t").unwrap());
        assert_ne!(a, assign(&s, 3, &fr, 1, "other task").unwrap());
    }

    #[test]
    fn given_splits_are_honoured_and_conflicts_named() {
        let mut s = synthetic(60, 2);
        for (i, (_, g)) in s.iter_mut().enumerate() {
            *g = if i < 20 { Given::Test } else { Given::Train };
        }
        let out = assign(&s, 3, &SplitFractions::default(), 0, "t").unwrap();
        for (i, sp) in out.iter().enumerate() {
            assert_eq!(*sp == Split::Test, i < 20, "sample {i}");
        }
        assert!(out.contains(&Split::Val));
        s[21].1 = Given::Test; // group g10 now has a train and a test row
        let err = assign(&s, 3, &SplitFractions::default(), 0, "t").unwrap_err();
        assert!(err.to_string().contains("group `g10`"), "{err}");
    }

    #[test]
    fn every_class_gets_a_train_sample() {
        // Label 2 has a single group, label 1 two.
        let s: Vec<_> = [(0, "a"), (0, "b"), (0, "c"), (1, "d"), (1, "e"), (2, "f")]
            .iter()
            .enumerate()
            .map(|(i, (l, g))| (sample(&format!("{i}"), *l, g), Given::None))
            .collect();
        for seed in 0..20 {
            let out = assign(&s, 3, &SplitFractions::default(), seed, "t").unwrap();
            for l in 0..3 {
                assert!(
                    s.iter()
                        .zip(&out)
                        .any(|((x, _), sp)| x.label == l && *sp == Split::Train),
                    "seed {seed} label {l}: {out:?}"
                );
            }
        }
    }
}
