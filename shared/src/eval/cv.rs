//! Grouped, stratified k-fold cross-validation: every group (patient, slide, cluster) lies in
//! exactly one fold, and folds keep the class proportions as far as the groups allow.

use std::collections::BTreeMap;

use crate::rng::SplitMix64;
use crate::{Error, Result};

/// The fold (0..k) of every sample.
///
/// Groups are shuffled with `seed` (so equal-sized groups are placed in a seed-dependent
/// order), then placed largest first, each into the fold where it brings the per-class counts
/// closest to an equal share (sum of squared deviations from `class total / k`), ties broken by
/// the smaller fold. Samples with an empty group name are their own group.
pub fn grouped_stratified_folds(
    labels: &[u32],
    groups: &[String],
    k: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    if labels.len() != groups.len() {
        return Err(Error::invalid(format!(
            "{} labels but {} groups",
            labels.len(),
            groups.len()
        )));
    }
    if k < 2 {
        return Err(Error::invalid(format!(
            "cross-validation needs at least 2 folds, got {k}"
        )));
    }
    let n_classes = labels.iter().map(|&y| y as usize + 1).max().unwrap_or(0);
    let mut by_group: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        let key = if g.is_empty() {
            format!("\u{0}sample-{i}")
        } else {
            g.clone()
        };
        by_group.entry(key).or_default().push(i);
    }
    if by_group.len() < k {
        return Err(Error::invalid(format!(
            "{} groups cannot fill {k} folds; use fewer folds",
            by_group.len()
        )));
    }
    let mut members: Vec<Vec<usize>> = by_group.into_values().collect();
    // Fisher–Yates with a seeded generator, then a stable sort by size (largest first).
    SplitMix64::new(seed ^ 0xA5A5_5A5A_1234_5678).shuffle(&mut members);
    members.sort_by_key(|m| std::cmp::Reverse(m.len()));

    let mut totals = vec![0f64; n_classes];
    for &y in labels {
        totals[y as usize] += 1.0;
    }
    let target: Vec<f64> = totals.iter().map(|t| t / k as f64).collect();
    let mut counts = vec![vec![0f64; n_classes]; k];
    let mut sizes = vec![0usize; k];
    let mut fold_of = vec![0usize; labels.len()];
    for m in &members {
        let mut add = vec![0f64; n_classes];
        for &i in m {
            add[labels[i] as usize] += 1.0;
        }
        let cost = |f: usize| -> f64 {
            (0..n_classes)
                .map(|c| {
                    let after = counts[f][c] + add[c];
                    (after - target[c]).powi(2) - (counts[f][c] - target[c]).powi(2)
                })
                .sum()
        };
        let best = (0..k)
            .min_by(|&a, &b| cost(a).total_cmp(&cost(b)).then(sizes[a].cmp(&sizes[b])))
            .unwrap_or(0);
        for c in 0..n_classes {
            counts[best][c] += add[c];
        }
        sizes[best] += m.len();
        for &i in m {
            fold_of[i] = best;
        }
    }
    if sizes.contains(&0) {
        return Err(Error::invalid(format!(
            "a fold came out empty with {} groups and {k} folds; use fewer folds",
            members.len()
        )));
    }
    Ok(fold_of)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn data() -> (Vec<u32>, Vec<String>) {
        // 60 groups of 1..4 samples; labels depend on the group, groups carry one label
        // mostly but some mix two.
        let mut labels = Vec::new();
        let mut groups = Vec::new();
        for g in 0..60u32 {
            for j in 0..(1 + g % 4) {
                labels.push(if j == 3 { (g + 1) % 3 } else { g % 3 });
                groups.push(format!("patient-{g}"));
            }
        }
        (labels, groups)
    }

    #[test]
    fn groups_never_split_and_classes_stay_balanced() {
        let (labels, groups) = data();
        for k in [2, 3, 5] {
            let folds = grouped_stratified_folds(&labels, &groups, k, 7).unwrap();
            let mut seen: HashMap<&String, usize> = HashMap::new();
            for (g, &f) in groups.iter().zip(&folds) {
                assert_eq!(*seen.entry(g).or_insert(f), f, "group {g} in two folds");
            }
            for c in 0..3u32 {
                let total = labels.iter().filter(|&&y| y == c).count() as f64;
                for f in 0..k {
                    let n = labels
                        .iter()
                        .zip(&folds)
                        .filter(|(&y, &ff)| y == c && ff == f)
                        .count() as f64;
                    assert!(
                        (n - total / k as f64).abs() <= 3.0,
                        "k={k} class {c} fold {f}: {n} of {total}"
                    );
                }
            }
        }
    }

    #[test]
    fn seeded_and_empty_groups_are_singletons() {
        let (labels, groups) = data();
        let a = grouped_stratified_folds(&labels, &groups, 5, 1).unwrap();
        assert_eq!(a, grouped_stratified_folds(&labels, &groups, 5, 1).unwrap());
        assert_ne!(a, grouped_stratified_folds(&labels, &groups, 5, 2).unwrap());
        let labels = vec![0, 1, 0, 1];
        let groups = vec![String::new(); 4];
        let f = grouped_stratified_folds(&labels, &groups, 2, 0).unwrap();
        assert_eq!(f.iter().filter(|&&x| x == 0).count(), 2);
    }

    #[test]
    fn too_few_groups_is_an_error() {
        let err = grouped_stratified_folds(&[0, 1, 0], &["a".into(), "a".into(), "b".into()], 3, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fewer folds"), "{err}");
        assert!(grouped_stratified_folds(&[0], &["a".into()], 1, 0).is_err());
    }
}
