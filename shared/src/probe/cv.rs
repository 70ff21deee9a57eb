//! Stratified k-fold cross-validation of a probe.

use super::input::check_training;
use super::model::LinearModel;
use super::{LinearSvc, LogisticRegression};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// Anything that fits a [`LinearModel`] on `x` (`n × d`), labels `y` in `0..n_classes`.
pub trait Probe {
    /// Fit on the given data.
    fn fit_probe(
        &self,
        x: &[f32],
        n: usize,
        d: usize,
        y: &[u32],
        n_classes: usize,
    ) -> Result<LinearModel>;
}

impl Probe for LogisticRegression {
    fn fit_probe(&self, x: &[f32], n: usize, d: usize, y: &[u32], k: usize) -> Result<LinearModel> {
        self.fit(x, n, d, y, k)
    }
}

impl Probe for LinearSvc {
    fn fit_probe(&self, x: &[f32], n: usize, d: usize, y: &[u32], k: usize) -> Result<LinearModel> {
        self.fit(x, n, d, y, k)
    }
}

/// The fold (`0..k`) of every sample: each class's samples, shuffled with `seed`, are dealt
/// round-robin, so every fold holds each class in proportion (±1). Needs `k ≥ 2` and at
/// least `k` samples per class (so every training split still sees every class).
pub fn stratified_folds(y: &[u32], n_classes: usize, k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 {
        return Err(Error::invalid(format!(
            "cv: need at least 2 folds, got {k}"
        )));
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &label) in y.iter().enumerate() {
        by_class
            .get_mut(label as usize)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "cv: label {label} of sample {i} is not below n_classes = {n_classes}"
                ))
            })?
            .push(i);
    }
    if let Some((class, members)) = by_class.iter().enumerate().find(|(_, m)| m.len() < k) {
        return Err(Error::invalid(format!(
            "cv: class {class} has {} samples, fewer than the {k} folds",
            members.len()
        )));
    }
    let mut rng = SplitMix64::new(seed);
    let mut folds = vec![0; y.len()];
    let mut next_fold = 0;
    for members in &mut by_class {
        rng.shuffle(members);
        // Continue the deal where the previous class stopped, so fold sizes stay balanced.
        for &i in members.iter() {
            folds[i] = next_fold;
            next_fold = (next_fold + 1) % k;
        }
    }
    Ok(folds)
}

/// Held-out accuracy of `probe` on each of `k` stratified folds.
#[allow(clippy::too_many_arguments)]
pub fn cross_val_accuracy(
    probe: &impl Probe,
    x: &[f32],
    n: usize,
    d: usize,
    y: &[u32],
    n_classes: usize,
    k: usize,
    seed: u64,
) -> Result<Vec<f64>> {
    check_training(x, n, d, y, n_classes)?;
    let folds = stratified_folds(y, n_classes, k, seed)?;
    (0..k)
        .map(|fold| {
            let (mut xtr, mut ytr, mut xte, mut yte) = (vec![], vec![], vec![], vec![]);
            for (i, (row, &label)) in x.chunks_exact(d).zip(y).enumerate() {
                if folds[i] == fold {
                    xte.extend_from_slice(row);
                    yte.push(label);
                } else {
                    xtr.extend_from_slice(row);
                    ytr.push(label);
                }
            }
            let model = probe.fit_probe(&xtr, ytr.len(), d, &ytr, n_classes)?;
            model.accuracy(&xte, yte.len(), &yte)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_cv_folds_are_stratified_and_balanced() {
        let y: Vec<u32> = (0..50).map(|i| if i < 20 { 0 } else { 1 }).collect();
        let folds = stratified_folds(&y, 2, 5, 1).unwrap();
        for f in 0..5 {
            let in_fold: Vec<u32> = (0..50).filter(|&i| folds[i] == f).map(|i| y[i]).collect();
            assert_eq!(in_fold.len(), 10);
            assert_eq!(in_fold.iter().filter(|&&c| c == 0).count(), 4);
        }
        assert_eq!(folds, stratified_folds(&y, 2, 5, 1).unwrap());
        assert!(stratified_folds(&y, 2, 1, 0).is_err());
        assert!(stratified_folds(&y[..23], 2, 5, 0).is_err()); // class 1 has 3 < 5 samples
    }

    #[test]
    fn probe_cv_accuracy_on_separable_data() {
        let n = 40;
        let y: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let x: Vec<f32> = (0..n)
            .flat_map(|i| {
                let s = if y[i] == 1 { 1.0 } else { -1.0 };
                [s * (1.0 + (i as f32 * 0.1).sin().abs()), (i as f32).cos()]
            })
            .collect();
        for acc in [
            cross_val_accuracy(&LogisticRegression::new(1.0), &x, n, 2, &y, 2, 4, 0).unwrap(),
            cross_val_accuracy(&LinearSvc::new(1.0), &x, n, 2, &y, 2, 4, 0).unwrap(),
        ] {
            assert_eq!(acc, vec![1.0; 4]);
        }
    }
}
