//! Choosing C by grouped, stratified k-fold cross-validation — the model selection both the
//! CLI's evaluation and the browser explorer run, so they pick the same C on the same data.

use super::{LinearModel, LinearSvc, LogisticRegression, ModelKind};
use crate::eval::cv::grouped_stratified_folds;
use crate::eval::metrics::ConfusionMatrix;
use crate::probe::predict_from_decision;
use crate::{Error, Result};

/// The C values tried by default (as the CLI's `eval`).
pub const DEFAULT_C_GRID: [f64; 6] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// How the search runs.
#[derive(Debug, Clone, PartialEq)]
pub struct GridConfig {
    /// Which linear model.
    pub kind: ModelKind,
    /// C values to try (each > 0).
    pub c_grid: Vec<f64>,
    /// Folds wanted; fewer when there are fewer groups (at least 2).
    pub folds: usize,
    /// Seed of the fold assignment.
    pub seed: u64,
}

impl Default for GridConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Logistic,
            c_grid: DEFAULT_C_GRID.to_vec(),
            folds: 5,
            seed: 0,
        }
    }
}

/// Cross-validated scores of one C.
#[derive(Debug, Clone, PartialEq)]
pub struct CvScore {
    /// The regularisation strength.
    pub c: f64,
    /// Mean balanced accuracy over the usable folds.
    pub balanced_accuracy: f64,
    /// Mean accuracy over the usable folds.
    pub accuracy: f64,
    /// Folds whose training part held every class (the others are skipped).
    pub folds_used: usize,
}

/// The outcome of [`grid_search_c`].
#[derive(Debug, Clone, PartialEq)]
pub struct GridSearch {
    /// One entry per C of the grid, in grid order.
    pub scores: Vec<CvScore>,
    /// The C with the best mean balanced accuracy (ties: the smaller C).
    pub best_c: f64,
    /// Folds actually used (≤ the configured number when groups are few).
    pub folds: usize,
    /// The fold of every sample.
    pub fold_of: Vec<usize>,
    /// Out-of-fold prediction of every sample at `best_c` (`None` in a skipped fold).
    pub oof_pred: Vec<Option<u32>>,
    /// Confusion matrix of the out-of-fold predictions at `best_c`.
    pub confusion: ConfusionMatrix,
}

/// Fit one model of `kind` (logistic: L-BFGS to 1e-6, at most 2000 iterations).
pub fn fit_linear(
    kind: ModelKind,
    c: f64,
    x: &[f32],
    n: usize,
    d: usize,
    y: &[u32],
    n_classes: usize,
) -> Result<LinearModel> {
    match kind {
        ModelKind::Svm => LinearSvc::new(c).fit(x, n, d, y, n_classes),
        ModelKind::Logistic => LogisticRegression {
            c,
            max_iter: 2000,
            tol: 1e-6,
        }
        .fit(x, n, d, y, n_classes),
    }
}

/// Cross-validate every C of `cfg.c_grid` over grouped, stratified folds (no group is ever
/// split across folds; an empty group name makes a sample its own group). Folds whose
/// training part lacks a class are skipped. Errors when fewer than two groups exist or no
/// fold is usable.
#[allow(clippy::too_many_arguments)]
pub fn grid_search_c(
    x: &[f32],
    n: usize,
    d: usize,
    y: &[u32],
    n_classes: usize,
    groups: &[String],
    cfg: &GridConfig,
) -> Result<GridSearch> {
    if x.len() != n * d || y.len() != n || groups.len() != n {
        return Err(Error::invalid(format!(
            "cross-validation: {} feature values, {} labels and {} groups for {n} samples of dimension {d}",
            x.len(),
            y.len(),
            groups.len()
        )));
    }
    if cfg.c_grid.is_empty() || cfg.c_grid.iter().any(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(Error::invalid(format!(
            "cross-validation: C values must be positive and finite, got {:?}",
            cfg.c_grid
        )));
    }
    if let Some(&bad) = y.iter().find(|&&c| c as usize >= n_classes) {
        return Err(Error::invalid(format!(
            "cross-validation: label {bad} but only {n_classes} classes"
        )));
    }
    let distinct = {
        let mut g: Vec<String> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                if g.is_empty() {
                    format!("\u{0}{i}")
                } else {
                    g.clone()
                }
            })
            .collect();
        g.sort();
        g.dedup();
        g.len()
    };
    let k = cfg.folds.min(distinct);
    if k < 2 {
        return Err(Error::invalid(format!(
            "cross-validation needs at least 2 groups (found {distinct})"
        )));
    }
    let fold_of = grouped_stratified_folds(y, groups, k, cfg.seed)?;
    let mut scores = Vec::with_capacity(cfg.c_grid.len());
    let mut preds_per_c: Vec<Vec<Option<u32>>> = Vec::with_capacity(cfg.c_grid.len());
    for &c in &cfg.c_grid {
        let mut oof = vec![None; n];
        let (mut bacc, mut acc, mut used) = (0.0, 0.0, 0usize);
        for f in 0..k {
            let (mut xt, mut yt, mut xv, mut yv, mut iv) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (i, &fold) in fold_of.iter().enumerate() {
                let row = &x[i * d..(i + 1) * d];
                if fold == f {
                    xv.extend_from_slice(row);
                    yv.push(y[i]);
                    iv.push(i);
                } else {
                    xt.extend_from_slice(row);
                    yt.push(y[i]);
                }
            }
            let present = (0..n_classes as u32).all(|cl| yt.contains(&cl));
            if !present || yv.is_empty() {
                continue;
            }
            let model = fit_linear(cfg.kind, c, &xt, yt.len(), d, &yt, n_classes)?;
            let pred = predict_from_decision(&model.decision_function(&xv, yv.len())?, n_classes);
            let cm = ConfusionMatrix::new(&yv, &pred, n_classes)?;
            bacc += cm.balanced_accuracy();
            acc += cm.accuracy();
            used += 1;
            for (&i, &p) in iv.iter().zip(&pred) {
                oof[i] = Some(p);
            }
        }
        let denom = used.max(1) as f64;
        scores.push(CvScore {
            c,
            balanced_accuracy: if used > 0 { bacc / denom } else { f64::NAN },
            accuracy: if used > 0 { acc / denom } else { f64::NAN },
            folds_used: used,
        });
        preds_per_c.push(oof);
    }
    let best = scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.folds_used > 0)
        .fold(None::<(usize, f64)>, |best, (i, s)| match best {
            Some((_, b)) if s.balanced_accuracy <= b => best,
            _ => Some((i, s.balanced_accuracy)),
        })
        .map(|(i, _)| i)
        .ok_or_else(|| {
            Error::invalid(
                "cross-validation: no fold has every class in its training part; label more tiles or use fewer folds",
            )
        })?;
    let oof_pred = preds_per_c.swap_remove(best);
    let (yt, yp): (Vec<u32>, Vec<u32>) = y
        .iter()
        .zip(&oof_pred)
        .filter_map(|(&t, p)| p.map(|p| (t, p)))
        .unzip();
    Ok(GridSearch {
        best_c: scores[best].c,
        scores,
        folds: k,
        fold_of,
        oof_pred,
        confusion: ConfusionMatrix::new(&yt, &yp, n_classes)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n_per: usize, classes: usize, d: usize, noise: f32) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut s = 12345u64;
        let mut r = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for c in 0..classes {
            for _ in 0..n_per {
                for j in 0..d {
                    let centre = if j % classes == c { 1.0 } else { 0.0 };
                    x.push(centre + noise * r());
                }
                y.push(c as u32);
            }
        }
        (x, y)
    }

    #[test]
    fn grid_search_picks_a_c_and_never_splits_groups() {
        let (x, y) = blobs(20, 3, 6, 0.8);
        let n = y.len();
        let groups: Vec<String> = (0..n).map(|i| format!("g{}", i / 4)).collect();
        let r = grid_search_c(&x, n, 6, &y, 3, &groups, &GridConfig::default()).unwrap();
        assert_eq!(r.scores.len(), DEFAULT_C_GRID.len());
        assert!(DEFAULT_C_GRID.contains(&r.best_c));
        let best = r.scores.iter().find(|s| s.c == r.best_c).unwrap();
        assert!(r
            .scores
            .iter()
            .all(|s| s.balanced_accuracy <= best.balanced_accuracy));
        assert!(best.balanced_accuracy > 0.8, "{best:?}");
        for i in 0..n {
            for j in 0..n {
                if groups[i] == groups[j] {
                    assert_eq!(r.fold_of[i], r.fold_of[j]);
                }
            }
        }
        // The confusion matrix counts exactly the out-of-fold predictions.
        let counted: u64 = r.confusion.rows().iter().flatten().sum();
        assert_eq!(counted as usize, r.oof_pred.iter().flatten().count());
        let hits = (0..n).filter(|&i| r.oof_pred[i] == Some(y[i])).count();
        let diag: u64 = (0..3).map(|c| r.confusion.get(c, c)).sum();
        assert_eq!(diag as usize, hits);
    }

    #[test]
    fn grid_search_rejects_bad_input() {
        let (x, y) = blobs(5, 2, 3, 0.1);
        let n = y.len();
        let one_group = vec!["a".to_string(); n];
        assert!(grid_search_c(&x, n, 3, &y, 2, &one_group, &GridConfig::default()).is_err());
        let groups: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let bad_c = GridConfig {
            c_grid: vec![0.0],
            ..GridConfig::default()
        };
        assert!(grid_search_c(&x, n, 3, &y, 2, &groups, &bad_c).is_err());
        assert!(grid_search_c(&x[1..], n, 3, &y, 2, &groups, &GridConfig::default()).is_err());
        assert!(grid_search_c(&x, n, 3, &y, 1, &groups, &GridConfig::default()).is_err());
    }
}
