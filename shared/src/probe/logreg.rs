//! L2-regularised logistic regression with scikit-learn's objective, solved by L-BFGS.

use super::axes::Axes;
use super::input::{check_labels, check_settings, check_training, to_f64};
use super::lbfgs::{self, GradientNorm, Options};
use super::linalg::{add_rt_x, dot, x_wt};
use super::model::{rows_for, sigmoid, FitReport, LinearModel, ModelKind};
use crate::{Error, Result};

/// Logistic-regression probe, as `sklearn.linear_model.LogisticRegression(C=c,
/// solver="lbfgs")`: minimises `0.5‖W‖² + C·Σᵢ CE(xᵢ, yᵢ)` with the intercept unpenalised —
/// a softmax over `K` weight vectors for `K > 2` classes, one sigmoid vector for two.
///
/// The objective is strictly convex in `W`, so any correct solver lands on the same model;
/// this one runs L-BFGS in f64 until the gradient norm falls below `tol` times its value at
/// zero (far tighter than sklearn's default, so the result is the optimum to ~1e-8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogisticRegression {
    /// Inverse regularisation strength (sklearn's `C`), `> 0`.
    pub c: f64,
    /// L-BFGS iteration limit.
    pub max_iter: usize,
    /// Relative gradient-norm tolerance: stop when `‖∇f‖ ≤ tol·‖∇f(0)‖`.
    pub tol: f64,
}

impl Default for LogisticRegression {
    fn default() -> Self {
        LogisticRegression {
            c: 1.0,
            max_iter: 5000,
            tol: 1e-8,
        }
    }
}

impl LogisticRegression {
    /// Defaults (`max_iter` 5000, `tol` 1e-8) with this `C`.
    pub fn new(c: f64) -> Self {
        LogisticRegression {
            c,
            ..Default::default()
        }
    }

    /// Fit on `x` (`n × d` row-major) with labels `y` in `0..n_classes` (every class present).
    pub fn fit(
        &self,
        x: &[f32],
        n: usize,
        d: usize,
        y: &[u32],
        n_classes: usize,
    ) -> Result<LinearModel> {
        self.fit_report(x, n, d, y, n_classes).map(|(m, _)| m)
    }

    /// [`Self::fit`], also saying how the solver went. Not converging within `max_iter` is
    /// not an error (as in sklearn): check [`FitReport::converged`].
    pub fn fit_report(
        &self,
        x: &[f32],
        n: usize,
        d: usize,
        y: &[u32],
        n_classes: usize,
    ) -> Result<(LinearModel, FitReport)> {
        self.fit_from(x, n, d, y, n_classes, None)
    }

    /// [`Self::fit_report`] started from `start` (a model of the same shape, e.g. the fit at a
    /// neighbouring C on the same data: a warm start along a path of C values). The stopping
    /// rule stays relative to the gradient at zero, so a warm start stops where a cold one
    /// would, only sooner.
    ///
    /// The solver works in the training rows' principal [`Axes`] when computing them pays
    /// ([`Axes::worth_it`]), preconditioned by the Hessian's diagonal there, and maps the
    /// result back; otherwise in the original coordinates, unpreconditioned.
    pub fn fit_from(
        &self,
        x: &[f32],
        n: usize,
        d: usize,
        y: &[u32],
        n_classes: usize,
        start: Option<&LinearModel>,
    ) -> Result<(LinearModel, FitReport)> {
        check_settings(self.c, self.max_iter, self.tol)?;
        check_training(x, n, d, y, n_classes)?;
        let start = checked_start(start, d, n_classes)?;
        let rows = rows_for(n_classes);
        if Axes::worth_it(n, d, rows, 1) {
            if let Some(axes) = Axes::of(x, n, d) {
                return Ok(self.solve_in_axes(&axes, y, n_classes, start));
            }
        }
        let xf = to_f64(x);
        let mut obj = LogregObjective::new(&xf, n, d, y, n_classes, self.c);
        let theta0 = match start {
            Some(m) => m.coef.iter().chain(&m.intercept).copied().collect(),
            None => vec![0.0; obj.dim()],
        };
        let norm = |g: &[f64]| dot(g, g).sqrt();
        let gref_norm = start.map(|_| obj.gradient_norm_at_zero(&norm));
        let mut out = lbfgs::minimize(
            |theta, grad| obj.value_grad(theta, grad),
            None,
            theta0,
            self.options(gref_norm),
            None,
        );
        let mut coef = std::mem::take(&mut out.x);
        let intercept = coef.split_off(rows * d);
        Ok(finish(coef, intercept, d, n_classes, &out))
    }

    /// [`Self::fit_from`] on the rows `axes` hold (a cross-validation fold's training rows in
    /// the principal axes of all rows: the features themselves are not needed), labelled `y`.
    pub(crate) fn fit_in_axes(
        &self,
        axes: &Axes,
        y: &[u32],
        n_classes: usize,
        start: Option<&LinearModel>,
    ) -> Result<(LinearModel, FitReport)> {
        check_settings(self.c, self.max_iter, self.tol)?;
        check_labels(y, axes.rows(), n_classes)?;
        let start = checked_start(start, axes.features(), n_classes)?;
        Ok(self.solve_in_axes(axes, y, n_classes, start))
    }

    /// The fit in `axes`' coordinates; inputs checked.
    fn solve_in_axes(
        &self,
        axes: &Axes,
        y: &[u32],
        n_classes: usize,
        start: Option<&LinearModel>,
    ) -> (LinearModel, FitReport) {
        let (n, r, rows) = (axes.rows(), axes.rank(), rows_for(n_classes));
        let mut obj = LogregObjective::new(axes.rotated_rows(), n, r, y, n_classes, self.c);
        let theta0 = match start {
            Some(m) => axes.to_rotated(&m.coef, &m.intercept),
            None => vec![0.0; obj.dim()],
        };
        let norm = |g: &[f64]| axes.original_gradient_norm(g, rows);
        let gref_norm = start.map(|_| obj.gradient_norm_at_zero(&norm));
        let mut precond = axes.preconditioner(&theta0, rows, self.c);
        let out = lbfgs::minimize(
            |theta, grad| obj.value_grad(theta, grad),
            Some(&mut precond),
            theta0,
            self.options(gref_norm),
            Some(&norm),
        );
        let (coef, intercept) = axes.to_original(&out.x, rows);
        finish(coef, intercept, axes.features(), n_classes, &out)
    }

    /// L-BFGS's settings for this solver (`gref_norm`: a warm start's reference norm).
    fn options(&self, gref_norm: Option<f64>) -> Options {
        Options {
            max_iter: self.max_iter,
            gtol: self.tol,
            memory: 10,
            gref_norm,
        }
    }
}

/// The model and report of a finished minimisation.
fn finish(
    coef: Vec<f64>,
    mut intercept: Vec<f64>,
    d: usize,
    n_classes: usize,
    out: &lbfgs::Outcome,
) -> (LinearModel, FitReport) {
    if intercept.len() > 1 {
        // Softmax is blind to a shift shared by all intercepts; pick sklearn's
        // (zero-sum) representative.
        let mean = intercept.iter().sum::<f64>() / intercept.len() as f64;
        intercept.iter_mut().for_each(|b| *b -= mean);
    }
    let model = LinearModel {
        coef,
        intercept,
        n_features: d,
        n_classes,
        kind: ModelKind::Logistic,
    };
    let report = FitReport {
        n_iter: out.n_iter,
        converged: out.converged,
        objective: out.f,
    };
    (model, report)
}

/// A warm start, if it has `d` features and `n_classes` classes.
fn checked_start(
    start: Option<&LinearModel>,
    d: usize,
    n_classes: usize,
) -> Result<Option<&LinearModel>> {
    match start {
        Some(m) if m.n_features == d && m.n_classes == n_classes => Ok(Some(m)),
        Some(_) => Err(Error::invalid(
            "probe: a warm start must have the same features and classes",
        )),
        None => Ok(None),
    }
}

/// `log(1 + eᶻ)` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

impl LinearModel {
    /// sklearn's logistic objective at these weights:
    /// `0.5‖coef‖² + C·Σᵢ CE(xᵢ, yᵢ)` (intercept not penalised).
    pub fn objective(&self, x: &[f32], n: usize, y: &[u32], c: f64) -> Result<f64> {
        check_training(x, n, self.n_features, y, self.n_classes)?;
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::invalid(format!(
                "probe: C must be positive and finite, got {c}"
            )));
        }
        let xf = to_f64(x);
        let mut obj = LogregObjective::new(&xf, n, self.n_features, y, self.n_classes, c);
        let theta: Vec<f64> = self.coef.iter().chain(&self.intercept).copied().collect();
        let mut grad = vec![0.0; theta.len()];
        Ok(obj.value_grad(&theta, &mut grad))
    }
}

/// sklearn's logistic objective over `θ = [W (rows × d, row-major), b (rows)]`.
pub(crate) struct LogregObjective<'a> {
    x: &'a [f64],
    n: usize,
    d: usize,
    y: &'a [u32],
    rows: usize,
    c: f64,
    /// Scratch: decision values, then `C·(p − onehot)`.
    z: Vec<f64>,
}

impl<'a> LogregObjective<'a> {
    /// Inputs must have passed `check_training`.
    pub(crate) fn new(
        x: &'a [f64],
        n: usize,
        d: usize,
        y: &'a [u32],
        n_classes: usize,
        c: f64,
    ) -> Self {
        let rows = rows_for(n_classes);
        LogregObjective {
            x,
            n,
            d,
            y,
            rows,
            c,
            z: vec![0.0; n * rows],
        }
    }

    /// Number of parameters.
    pub(crate) fn dim(&self) -> usize {
        self.rows * (self.d + 1)
    }

    /// `norm(∇f(0))`: the reference of a warm start's stopping rule.
    pub(crate) fn gradient_norm_at_zero(&mut self, norm: GradientNorm<'_>) -> f64 {
        let mut g = vec![0.0; self.dim()];
        self.value_grad(&vec![0.0; self.dim()], &mut g);
        norm(&g)
    }

    /// The objective at `theta`; its gradient into `grad`.
    pub(crate) fn value_grad(&mut self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (n, d, rows, c) = (self.n, self.d, self.rows, self.c);
        let (w, b) = theta.split_at(rows * d);
        x_wt(self.x, n, d, w, rows, &mut self.z);
        let mut loss = 0.0;
        if rows == 1 {
            for (zi, &yi) in self.z.iter_mut().zip(self.y) {
                let t = *zi + b[0];
                let target = f64::from(yi == 1);
                loss += softplus(t) - target * t;
                *zi = c * (sigmoid(t) - target);
            }
        } else {
            for (row, &yi) in self.z.chunks_exact_mut(rows).zip(self.y) {
                row.iter_mut().zip(b).for_each(|(v, bj)| *v += bj);
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let yi = yi as usize;
                let z_true = row[yi];
                let mut s = 0.0;
                for v in row.iter_mut() {
                    *v = (*v - m).exp();
                    s += *v;
                }
                loss += m + s.ln() - z_true;
                for v in row.iter_mut() {
                    *v *= c / s;
                }
                row[yi] -= c;
            }
        }
        let (gw, gb) = grad.split_at_mut(rows * d);
        gw.copy_from_slice(w);
        add_rt_x(&self.z, n, rows, self.x, d, gw);
        gb.iter_mut().for_each(|v| *v = 0.0);
        for row in self.z.chunks_exact(rows) {
            gb.iter_mut().zip(row).for_each(|(g, r)| *g += r);
        }
        0.5 * w.iter().map(|v| v * v).sum::<f64>() + c * loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// Deterministic pseudo-random data: `n × d` features, labels cycling through `k`.
    fn toy(n: usize, d: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let mut next = move || rng.unit_f64() - 0.5;
        let y: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
        let x = (0..n * d)
            .map(|i| (next() * 2.0 + 0.7 * f64::from(y[i / d]) * ((i % d) as f64 - 1.0)) as f32)
            .collect();
        (x, y)
    }

    fn check_gradient(k: usize) {
        let (n, d) = (23, 4);
        let (x, y) = toy(n, d, k, 7);
        let xf = to_f64(&x);
        let mut obj = LogregObjective::new(&xf, n, d, &y, k, 0.7);
        let theta: Vec<f64> = (0..obj.dim())
            .map(|i| ((i * 37 % 17) as f64 - 8.0) * 0.05)
            .collect();
        let mut grad = vec![0.0; theta.len()];
        obj.value_grad(&theta, &mut grad);
        let mut scratch = vec![0.0; theta.len()];
        for i in 0..theta.len() {
            let h = 1e-5;
            let mut tp = theta.clone();
            tp[i] += h;
            let fp = obj.value_grad(&tp, &mut scratch);
            tp[i] -= 2.0 * h;
            let fm = obj.value_grad(&tp, &mut scratch);
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (fd - grad[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "k={k} param {i}: analytic {} vs finite difference {fd}",
                grad[i]
            );
        }
    }

    #[test]
    fn probe_logreg_gradient_matches_finite_differences_binary() {
        check_gradient(2);
    }

    #[test]
    fn probe_logreg_gradient_matches_finite_differences_multiclass() {
        check_gradient(4);
    }

    #[test]
    fn probe_logreg_separable_1d_by_hand() {
        // x = ±1, ±2, positive ⇒ class 1. Symmetry gives b = 0; stationarity in w reads
        // w = C·(2(1 − σ(w)) + 4(1 − σ(2w))), whose root we bracket by bisection.
        let x = [-2.0f32, -1.0, 1.0, 2.0];
        let y = [0u32, 0, 1, 1];
        let c = 1.0;
        let (model, report) = LogisticRegression::new(c)
            .fit_report(&x, 4, 1, &y, 2)
            .unwrap();
        assert!(report.converged);
        let h = |w: f64| w - c * (2.0 * (1.0 - sigmoid(w)) + 4.0 * (1.0 - sigmoid(2.0 * w)));
        let (mut lo, mut hi) = (0.0, 10.0);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if h(mid) < 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        assert!(
            (model.coef[0] - lo).abs() < 1e-7,
            "w = {} vs {lo}",
            model.coef[0]
        );
        assert!(
            model.intercept[0].abs() < 1e-7,
            "b = {}",
            model.intercept[0]
        );
        assert_eq!(model.predict(&x, 4).unwrap(), y);
        let p = model.predict_proba(&x, 4).unwrap();
        assert!((p[0] + p[1] - 1.0).abs() < 1e-15 && p[1] < 0.5 && p[7] > 0.5);
    }

    #[test]
    fn probe_logreg_shapes_binary_and_multiclass() {
        let (n, d) = (30, 5);
        for k in [2usize, 3, 5] {
            let (x, y) = toy(n, d, k, 3);
            let (m, rep) = LogisticRegression::new(0.5)
                .fit_report(&x, n, d, &y, k)
                .unwrap();
            assert!(rep.converged, "k={k}: {rep:?}");
            let rows = if k == 2 { 1 } else { k };
            assert_eq!(
                (m.coef.len(), m.intercept.len(), m.rows()),
                (rows * d, rows, rows)
            );
            assert_eq!(m.decision_function(&x, n).unwrap().len(), n * rows);
            let p = m.predict_proba(&x, n).unwrap();
            assert_eq!(p.len(), n * k);
            for row in p.chunks_exact(k) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
            let obj = m.objective(&x, n, &y, 0.5).unwrap();
            assert!(
                (obj - rep.objective).abs() <= 1e-12 * obj,
                "{obj} vs {}",
                rep.objective
            );
            if k > 2 {
                // At the optimum Σₖ Wₖ = 0 (penalty vs softmax invariance); Σₖ bₖ = 0 by choice.
                for j in 0..d {
                    let s: f64 = (0..k).map(|r| m.coef[r * d + j]).sum();
                    assert!(s.abs() < 1e-8, "column {j} sums to {s}");
                }
                assert!(m.intercept.iter().sum::<f64>().abs() < 1e-12);
            }
        }
    }

    #[test]
    fn probe_logreg_rejects_bad_input() {
        let lr = LogisticRegression::new(1.0);
        let x = [0.0f32, 1.0, 2.0, 3.0];
        let bad = |r: Result<LinearModel>, needle: &str| match r {
            Err(Error::Invalid(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
            other => panic!("expected an Invalid error with {needle:?}, got {other:?}"),
        };
        bad(lr.fit(&[], 0, 2, &[], 2), "no samples");
        bad(lr.fit(&x, 2, 0, &[0, 1], 2), "no features");
        bad(lr.fit(&x, 3, 2, &[0, 1, 0], 2), "expected 6");
        bad(lr.fit(&x, 2, 2, &[0], 2), "1 labels for 2 samples");
        bad(lr.fit(&x, 2, 2, &[0, 0], 2), "no samples");
        bad(lr.fit(&x, 2, 2, &[0, 0], 1), "at least 2 classes");
        bad(lr.fit(&x, 2, 2, &[0, 2], 2), "not below n_classes");
        bad(lr.fit(&[0.0, f32::NAN, 2.0, 3.0], 2, 2, &[0, 1], 2), "NaN");
        bad(
            lr.fit(&[0.0, 1.0, f32::INFINITY, 3.0], 2, 2, &[0, 1], 2),
            "finite",
        );
        bad(
            LogisticRegression::new(0.0).fit(&x, 2, 2, &[0, 1], 2),
            "C must be",
        );
        bad(
            LogisticRegression::new(f64::NAN).fit(&x, 2, 2, &[0, 1], 2),
            "C must be",
        );
        let m = lr.fit(&x, 2, 2, &[0, 1], 2).unwrap();
        assert!(m.predict(&x[..3], 2).is_err());
        assert!(m.predict(&[f32::NAN, 0.0], 1).is_err());
        assert!(m.objective(&x, 2, &[0, 1], -1.0).is_err());
    }
}
