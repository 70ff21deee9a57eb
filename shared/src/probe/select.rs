//! Choosing C by grouped, stratified k-fold cross-validation — the model selection both the
//! CLI's evaluation and the browser explorer run, so they pick the same C on the same data.

use super::axes::Axes;
use super::input::check_features;
use super::model::rows_for;
use super::{LinearModel, LinearSvc, LogisticRegression, ModelKind};
use crate::eval::cv::grouped_stratified_folds;
use crate::eval::metrics::ConfusionMatrix;
use crate::probe::predict_from_decision;
use crate::{Error, Result};
use rayon::prelude::*;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

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
    /// When the best C is the grid's largest (smallest), try up to this many further C values
    /// beyond it, a factor of 10 apart, while the best stays at the edge (0: the grid is
    /// fixed, as the evaluation protocol needs).
    pub widen: usize,
}

impl Default for GridConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Logistic,
            c_grid: DEFAULT_C_GRID.to_vec(),
            folds: 5,
            seed: 0,
            widen: 0,
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
    /// One entry per C of the grid, in grid order, then any C added by widening.
    pub scores: Vec<CvScore>,
    /// The C values added because the best was at an edge of the grid ([`GridConfig::widen`]).
    pub widened: Vec<f64>,
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
    /// The model searched.
    pub kind: ModelKind,
    /// The principal axes of all rows (logistic model), for the final fit on them.
    axes: Option<SearchAxes>,
}

/// A search's principal axes and the fingerprint of the rows they are the axes of.
#[derive(Clone)]
struct SearchAxes {
    axes: Arc<Axes>,
    fingerprint: u64,
}

impl std::fmt::Debug for SearchAxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchAxes")
            .field("rows", &self.axes.rows())
            .field("rank", &self.axes.rank())
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Axes are a deterministic function of the rows: those of the same rows are equal.
impl PartialEq for SearchAxes {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

/// A fingerprint of `n × d` features (SipHash of their bits, fixed keys): the search's axes
/// serve a final fit only on the very rows they were computed from.
fn fingerprint(x: &[f32], n: usize, d: usize) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (n, d).hash(&mut h);
    h.write(bytemuck::cast_slice(x));
    h.finish()
}

impl GridSearch {
    /// The final model: [`fit_linear`] at `best_c` on all rows `x` (`n × d`), labels `y`.
    /// When `x` are the rows searched (same values, checked by a fingerprint), a logistic fit
    /// works in the search's principal axes instead of computing them again (their
    /// eigendecomposition: ~0.1 s at 512 features, ~1 s at 2,048, natively); the model is the
    /// one `fit_linear` returns. The search holds the axes (`n × min(n, d)` values in f64)
    /// until it is dropped.
    pub fn fit_best(
        &self,
        x: &[f32],
        n: usize,
        d: usize,
        y: &[u32],
        n_classes: usize,
    ) -> Result<LinearModel> {
        if let Some(search) = &self.axes {
            let axes = &*search.axes;
            let same_rows = axes.rows() == n
                && axes.features() == d
                && x.len() == n * d
                && search.fingerprint == fingerprint(x, n, d);
            if same_rows && self.kind == ModelKind::Logistic {
                return Ok(final_logistic(self.best_c)
                    .fit_in_axes(axes, y, n_classes, None)?
                    .0);
            }
        }
        fit_linear(self.kind, self.best_c, x, n, d, y, n_classes)
    }
}

/// The final logistic fit's solver ([`fit_linear`]'s).
fn final_logistic(c: f64) -> LogisticRegression {
    LogisticRegression {
        c,
        max_iter: 2000,
        tol: 1e-6,
    }
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
        ModelKind::Logistic => final_logistic(c).fit(x, n, d, y, n_classes),
    }
}

/// Relative gradient tolerance of the cross-validation's logistic fits: scikit-learn's
/// default `tol`, looser than the final fit's (1e-6). On real features (1,200 tiles × 512,
/// 8 classes) it halves the iterations and changed no prediction of the tight optimum.
const CV_TOL: f64 = 1e-4;

/// One fold's validation rows, its predictions and confusion matrix at each C fitted, and the
/// model at the last C of the path (to continue it).
struct FoldResult {
    rows: Vec<usize>,
    per_c: Vec<(f64, ConfusionMatrix, Vec<u32>)>,
    last: LinearModel,
}

/// What every fold's fits share: the data, the fold of each row, the model, and for the
/// logistic model the principal axes of all rows (each fold works in them, on its rows).
struct Folds<'a> {
    x: &'a [f32],
    d: usize,
    y: &'a [u32],
    n_classes: usize,
    fold_of: &'a [usize],
    kind: ModelKind,
    axes: Option<Axes>,
}

/// Fit fold `f`'s training part at each C of `path` in turn (logistic fits warm-started from
/// the previous C, the first from `start`) and predict its validation part; `None` when the
/// training part lacks a class or the fold is empty.
fn fit_fold(
    folds: &Folds<'_>,
    f: usize,
    path: &[f64],
    start: Option<&LinearModel>,
) -> Result<Option<FoldResult>> {
    let Folds {
        x,
        d,
        y,
        n_classes,
        fold_of,
        kind,
        ..
    } = *folds;
    let (mut yt, mut xv, mut yv, mut rows, mut train) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, &fold) in fold_of.iter().enumerate() {
        if fold == f {
            xv.extend_from_slice(&x[i * d..(i + 1) * d]);
            yv.push(y[i]);
            rows.push(i);
        } else {
            yt.push(y[i]);
            train.push(i);
        }
    }
    let present = (0..n_classes as u32).all(|cl| yt.contains(&cl));
    if !present || yv.is_empty() || path.is_empty() {
        return Ok(None);
    }
    // The training rows: in the axes of all rows (logistic), or their features copied out.
    let axes = folds.axes.as_ref().map(|a| a.subset(&train));
    let xt: Vec<f32> = match (&axes, kind) {
        (Some(_), ModelKind::Logistic) => Vec::new(),
        _ => train
            .iter()
            .flat_map(|&i| &x[i * d..(i + 1) * d])
            .copied()
            .collect(),
    };
    let mut per_c = Vec::with_capacity(path.len());
    let mut previous = start.cloned();
    let nt = yt.len();
    for &c in path {
        let model = match kind {
            ModelKind::Logistic => {
                let solver = LogisticRegression {
                    c,
                    max_iter: 2000,
                    tol: CV_TOL,
                };
                match &axes {
                    Some(axes) => solver.fit_in_axes(axes, &yt, n_classes, previous.as_ref()),
                    None => solver.fit_from(&xt, nt, d, &yt, n_classes, previous.as_ref()),
                }?
                .0
            }
            ModelKind::Svm => fit_linear(kind, c, &xt, nt, d, &yt, n_classes)?,
        };
        let pred = predict_from_decision(&model.decision_function(&xv, yv.len())?, n_classes);
        per_c.push((c, ConfusionMatrix::new(&yv, &pred, n_classes)?, pred));
        previous = Some(model);
    }
    Ok(previous.map(|last| FoldResult { rows, per_c, last }))
}

/// The mean scores and out-of-fold predictions of C over the folds that fitted it.
fn score_c(c: f64, folds: &[FoldResult], n: usize) -> (CvScore, Vec<Option<u32>>) {
    let mut oof = vec![None; n];
    let (mut bacc, mut acc, mut used) = (0.0, 0.0, 0usize);
    for fold in folds {
        let Some((_, cm, pred)) = fold.per_c.iter().find(|(fc, _, _)| *fc == c) else {
            continue;
        };
        bacc += cm.balanced_accuracy();
        acc += cm.accuracy();
        used += 1;
        for (&i, &p) in fold.rows.iter().zip(pred) {
            oof[i] = Some(p);
        }
    }
    let denom = used.max(1) as f64;
    let score = CvScore {
        c,
        balanced_accuracy: if used > 0 { bacc / denom } else { f64::NAN },
        accuracy: if used > 0 { acc / denom } else { f64::NAN },
        folds_used: used,
    };
    (score, oof)
}

/// Index of the best score (highest mean balanced accuracy; ties: the smaller C).
fn best_index(scores: &[CvScore]) -> Option<usize> {
    let mut order: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i].folds_used > 0)
        .collect();
    order.sort_by(|&a, &b| scores[a].c.total_cmp(&scores[b].c));
    order
        .into_iter()
        .fold(None, |best: Option<usize>, i| match best {
            Some(b) if scores[i].balanced_accuracy <= scores[b].balanced_accuracy => best,
            _ => Some(i),
        })
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
    // Every row checked here, where the error can name it (a fold's fits see only some).
    check_features(x, n, d)?;
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
    let rows = rows_for(n_classes);
    // One eigendecomposition for every fit: each fold's path and any widening.
    let axes = (cfg.kind == ModelKind::Logistic
        && Axes::worth_it(n, d, rows, k * (cfg.c_grid.len() + cfg.widen)))
    .then(|| Axes::of(x, n, d))
    .flatten();
    let folds_data = Folds {
        x,
        d,
        y,
        n_classes,
        fold_of: &fold_of,
        kind: cfg.kind,
        axes,
    };
    // Each fold fits the grid's C values in ascending order, each from the previous one (a
    // warm start: the optimum, and so the scores, do not depend on it). Folds are
    // independent, fitted in parallel where threads exist.
    let mut path = cfg.c_grid.clone();
    path.sort_by(f64::total_cmp);
    path.dedup();
    let mut folds: Vec<FoldResult> = (0..k)
        .into_par_iter()
        .map(|f| fit_fold(&folds_data, f, &path, None))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut all_c = cfg.c_grid.clone();
    let mut widened = Vec::new();
    let (mut ups, mut downs) = (0, 0);
    loop {
        let scores: Vec<CvScore> = all_c.iter().map(|&c| score_c(c, &folds, n).0).collect();
        let Some(best) = best_index(&scores) else {
            break;
        };
        // Widen only past an edge that beats its neighbour: a tie says nothing about
        // what lies beyond.
        let score_of = |c: f64| {
            all_c
                .iter()
                .position(|&a| a == c)
                .map_or(f64::NAN, |i| scores[i].balanced_accuracy)
        };
        let (lo, hi) = (path[0], path[path.len() - 1]);
        let (c, b) = (scores[best].c, scores[best].balanced_accuracy);
        let next = if path.len() < 2 {
            break;
        } else if c == hi && b > score_of(path[path.len() - 2]) {
            hi * 10.0
        } else if c == lo && b > score_of(path[1]) {
            lo / 10.0
        } else {
            break;
        };
        let up = next > hi;
        if (if up { ups } else { downs }) >= cfg.widen {
            break;
        }
        // Continue each fold's path upwards from its model at the largest C; downwards, a
        // small C converges fast from zero.
        let more: Vec<Option<FoldResult>> = folds
            .par_iter()
            .map(|fold| {
                let start = up.then_some(&fold.last);
                let f = fold_of[fold.rows[0]];
                fit_fold(&folds_data, f, &[next], start)
            })
            .collect::<Result<_>>()?;
        for (fold, extra) in folds.iter_mut().zip(more) {
            if let Some(extra) = extra {
                fold.per_c.extend(extra.per_c);
                if up {
                    fold.last = extra.last;
                }
            }
        }
        if up {
            path.push(next);
            ups += 1;
        } else {
            path.insert(0, next);
            downs += 1;
        }
        all_c.push(next);
        widened.push(next);
    }
    let scored: Vec<(CvScore, Vec<Option<u32>>)> =
        all_c.iter().map(|&c| score_c(c, &folds, n)).collect();
    let scores: Vec<CvScore> = scored.iter().map(|(s, _)| s.clone()).collect();
    let best = best_index(&scores).ok_or_else(|| {
        Error::invalid(
            "cross-validation: no fold has every class in its training part; label more tiles or use fewer folds",
        )
    })?;
    let oof_pred = scored[best].1.clone();
    let axes = folds_data.axes.map(|axes| SearchAxes {
        axes: Arc::new(axes),
        fingerprint: fingerprint(x, n, d),
    });
    let (yt, yp): (Vec<u32>, Vec<u32>) = y
        .iter()
        .zip(&oof_pred)
        .filter_map(|(&t, p)| p.map(|p| (t, p)))
        .unzip();
    Ok(GridSearch {
        best_c: scores[best].c,
        scores,
        widened,
        folds: k,
        fold_of,
        oof_pred,
        confusion: ConfusionMatrix::new(&yt, &yp, n_classes)?,
        kind: cfg.kind,
        axes,
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
    fn the_final_fit_reuses_the_search_axes_only_for_the_rows_searched() {
        let (x, y) = blobs(12, 3, 5, 0.9);
        let (n, d) = (y.len(), 5);
        let groups: Vec<String> = (0..n).map(|i| (i / 2).to_string()).collect();
        let r = grid_search_c(&x, n, d, &y, 3, &groups, &GridConfig::default()).unwrap();
        assert!(r.axes.is_some(), "a logistic search keeps its axes");
        let max_diff = |a: &LinearModel, b: &LinearModel| {
            a.coef
                .iter()
                .chain(&a.intercept)
                .zip(b.coef.iter().chain(&b.intercept))
                .map(|(u, v)| (u - v).abs())
                .fold(0.0, f64::max)
        };
        let reused = r.fit_best(&x, n, d, &y, 3).unwrap();
        let fresh = fit_linear(ModelKind::Logistic, r.best_c, &x, n, d, &y, 3).unwrap();
        assert!(max_diff(&reused, &fresh) < 1e-12);
        // Other rows of the same shape (one tile's features changed): fitted on their own.
        let mut other = x.clone();
        other[..d].iter_mut().for_each(|v| *v = 4.0 - *v);
        let got = r.fit_best(&other, n, d, &y, 3).unwrap();
        let want = fit_linear(ModelKind::Logistic, r.best_c, &other, n, d, &y, 3).unwrap();
        assert!(max_diff(&got, &want) < 1e-12);
        assert!(max_diff(&got, &reused) > 1e-3, "the change moves the model");
        // An SVM search keeps no axes and fits as fit_linear does.
        let svm = GridConfig {
            kind: ModelKind::Svm,
            ..GridConfig::default()
        };
        let r = grid_search_c(&x, n, d, &y, 3, &groups, &svm).unwrap();
        assert!(r.axes.is_none());
        let got = r.fit_best(&x, n, d, &y, 3).unwrap();
        let want = fit_linear(ModelKind::Svm, r.best_c, &x, n, d, &y, 3).unwrap();
        assert!(max_diff(&got, &want) < 1e-12);
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
        // A value that is not finite is named by its sample in the caller's numbering (a
        // fold's fit would see the row at another index of its training part).
        let mut nan = x.clone();
        nan[(n - 1) * 3 + 2] = f32::NAN;
        let err = grid_search_c(&nan, n, 3, &y, 2, &groups, &GridConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("feature 2 of sample {}", n - 1)),
            "{err}"
        );
    }

    #[test]
    fn the_grid_widens_past_an_edge_only_when_asked_and_says_so() {
        // Two classes apart along s, seen only through x0 = s + u and x1 = u with a large
        // shared nuisance u: heavy regularisation follows the class means (x0 alone, poor),
        // weaker regularisation learns x0 − x1 = s (near perfect). So the largest of a grid of
        // tiny C values wins.
        let mut state = 7u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..80 {
            let class = (i % 2) as u32;
            let s = if class == 1 { 0.5 } else { -0.5 } + 0.2 * uniform();
            let u = 20.0 * uniform();
            x.extend([(s + u) as f32, u as f32]);
            y.push(class);
        }
        let (d, k) = (2, 2);
        let n = y.len();
        let groups: Vec<String> = (0..n).map(|i| format!("g{}", i / 2)).collect();
        let narrow = GridConfig {
            c_grid: vec![1e-4, 1e-3],
            ..GridConfig::default()
        };
        let fixed = grid_search_c(&x, n, d, &y, k, &groups, &narrow).unwrap();
        assert!(fixed.widened.is_empty());
        assert_eq!(fixed.scores.len(), 2);
        let wide = grid_search_c(
            &x,
            n,
            d,
            &y,
            k,
            &groups,
            &GridConfig {
                widen: 2,
                ..narrow.clone()
            },
        )
        .unwrap();
        assert!(
            !wide.widened.is_empty() && wide.widened.len() <= 2,
            "{wide:?}"
        );
        assert!(wide.widened.iter().all(|&c| c > 1e-3));
        // Only strictly better edges widen; the best found is not beaten by a neighbour.
        let best = wide.scores.iter().find(|s| s.c == wide.best_c).unwrap();
        assert!(wide
            .scores
            .iter()
            .all(|s| s.balanced_accuracy <= best.balanced_accuracy));
        assert_eq!(wide.scores.len(), 2 + wide.widened.len());
        // The widened scores equal a search over the widened grid from the start.
        let full = grid_search_c(
            &x,
            n,
            d,
            &y,
            k,
            &groups,
            &GridConfig {
                c_grid: wide.scores.iter().map(|s| s.c).collect(),
                ..narrow
            },
        )
        .unwrap();
        for (a, b) in wide.scores.iter().zip(&full.scores) {
            assert_eq!(a.c, b.c);
            assert!(
                (a.balanced_accuracy - b.balanced_accuracy).abs() < 1e-12,
                "{a:?} {b:?}"
            );
        }
        assert_eq!(wide.best_c, full.best_c);
    }
}
