//! Linear SVM as scikit-learn's `LinearSVC`: liblinear's dual coordinate descent for the
//! L2-regularised squared-hinge (L2-loss) SVM (`solve_l2r_l1l2_svc`, solver 1), with its
//! shrinking and stopping rule, one-vs-rest, the intercept a penalised feature of value 1.

use super::input::{check_settings, check_training};
use super::model::{rows_for, FitReport, LinearModel, ModelKind};
use crate::rng::SplitMix64;
use crate::Result;

/// Linear SVM probe, as `sklearn.svm.LinearSVC(C=c, tol=tol, max_iter=max_iter)` (squared
/// hinge, L2 penalty, dual, `intercept_scaling = 1`): for each class `k` (only class 1 when
/// there are two), minimises
/// `0.5‖w‖² + 0.5b² + C·Σᵢ max(0, 1 − yᵢ(w·xᵢ + b))²` with `yᵢ = ±1` for class `k` or not.
///
/// Coordinates are visited in a random order like liblinear's (a fixed-seed generator here,
/// so fits are reproducible); the optimum is unique, so the order only moves the result
/// within the stopping tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSvc {
    /// Penalty on the squared hinge (sklearn's `C`), `> 0`.
    pub c: f64,
    /// Epoch limit per one-vs-rest problem (sklearn: 1000).
    pub max_iter: usize,
    /// liblinear's `eps`: stop when the projected gradient's spread `max − min` is below it
    /// (sklearn's `tol`, 1e-4).
    pub tol: f64,
    /// Seed of the coordinate order.
    pub seed: u64,
}

impl Default for LinearSvc {
    fn default() -> Self {
        LinearSvc {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-4,
            seed: 0,
        }
    }
}

impl LinearSvc {
    /// sklearn's defaults (`max_iter` 1000, `tol` 1e-4) with this `C`.
    pub fn new(c: f64) -> Self {
        LinearSvc {
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

    /// [`Self::fit`], also saying how the solver went (`converged` is false if any
    /// one-vs-rest problem hit `max_iter`; sklearn warns in that case, it does not fail).
    pub fn fit_report(
        &self,
        x: &[f32],
        n: usize,
        d: usize,
        y: &[u32],
        n_classes: usize,
    ) -> Result<(LinearModel, FitReport)> {
        check_settings(self.c, self.max_iter, self.tol)?;
        check_training(x, n, d, y, n_classes)?;
        // ‖xᵢ‖² + bias², the diagonal of Q without the L2-loss term.
        let sqnorm: Vec<f64> = x
            .chunks_exact(d)
            .map(|row| {
                row.iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
                    + 1.0
            })
            .collect();
        let rows = rows_for(n_classes);
        let mut rng = SplitMix64::new(self.seed);
        let mut model = LinearModel {
            coef: Vec::with_capacity(rows * d),
            intercept: Vec::with_capacity(rows),
            n_features: d,
            n_classes,
            kind: ModelKind::Svm,
        };
        let mut report = FitReport {
            n_iter: 0,
            converged: true,
            objective: 0.0,
        };
        let mut sign = vec![0i8; n];
        for r in 0..rows {
            let positive = if rows == 1 { 1 } else { r as u32 };
            for (s, &label) in sign.iter_mut().zip(y) {
                *s = if label == positive { 1 } else { -1 };
            }
            let fit = solve_l2loss_dual(x, d, &sqnorm, &sign, self, &mut rng);
            report.n_iter = report.n_iter.max(fit.n_iter);
            report.converged &= fit.converged;
            report.objective += primal_objective(x, d, &sign, &fit.w, fit.b, self.c);
            model.coef.extend_from_slice(&fit.w);
            model.intercept.push(fit.b);
        }
        Ok((model, report))
    }
}

struct BinaryFit {
    w: Vec<f64>,
    b: f64,
    n_iter: usize,
    converged: bool,
}

/// `w·x + b·1` with `x` widened from f32 (exactly what liblinear sees: sklearn hands it the
/// f32 features as doubles).
fn decision(row: &[f32], w: &[f64], b: f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks = row.chunks_exact(4);
    let mut wc = w.chunks_exact(4);
    for (r, ww) in (&mut chunks).zip(&mut wc) {
        for j in 0..4 {
            acc[j] += f64::from(r[j]) * ww[j];
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(&r, ww)| f64::from(r) * ww)
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail + b
}

/// `solve_l2r_l1l2_svc` for the L2 loss: `Dᵢᵢ = 1/(2C)`, no upper bound on α.
fn solve_l2loss_dual(
    x: &[f32],
    d: usize,
    sqnorm: &[f64],
    y: &[i8],
    svc: &LinearSvc,
    rng: &mut SplitMix64,
) -> BinaryFit {
    let l = y.len();
    let diag = 0.5 / svc.c;
    let upper = f64::INFINITY;
    let qd: Vec<f64> = sqnorm.iter().map(|s| s + diag).collect();
    let mut alpha = vec![0.0f64; l];
    let mut w = vec![0.0f64; d];
    let mut b = 0.0f64;
    let mut index: Vec<usize> = (0..l).collect();
    let mut active = l;
    let mut pg_max_old = f64::INFINITY;
    let mut pg_min_old = f64::NEG_INFINITY;
    let mut iter = 0;
    let mut converged = false;
    while iter < svc.max_iter {
        let mut pg_max_new = f64::NEG_INFINITY;
        let mut pg_min_new = f64::INFINITY;
        for i in 0..active {
            let j = i + rng.below_mod((active - i) as u64) as usize;
            index.swap(i, j);
        }
        let mut s = 0;
        while s < active {
            let i = index[s];
            let yi = f64::from(y[i]);
            let row = &x[i * d..(i + 1) * d];
            let g = yi * decision(row, &w, b) - 1.0 + alpha[i] * diag;
            let mut pg = 0.0;
            if alpha[i] == 0.0 {
                if g > pg_max_old {
                    active -= 1;
                    index.swap(s, active);
                    continue;
                } else if g < 0.0 {
                    pg = g;
                }
            } else if alpha[i] == upper {
                if g < pg_min_old {
                    active -= 1;
                    index.swap(s, active);
                    continue;
                } else if g > 0.0 {
                    pg = g;
                }
            } else {
                pg = g;
            }
            pg_max_new = pg_max_new.max(pg);
            pg_min_new = pg_min_new.min(pg);
            if pg.abs() > 1e-12 {
                let old = alpha[i];
                alpha[i] = (alpha[i] - g / qd[i]).clamp(0.0, upper);
                let step = (alpha[i] - old) * yi;
                for (wj, &xj) in w.iter_mut().zip(row) {
                    *wj += step * f64::from(xj);
                }
                b += step;
            }
            s += 1;
        }
        iter += 1;
        if pg_max_new - pg_min_new <= svc.tol {
            if active == l {
                converged = true;
                break;
            }
            active = l;
            pg_max_old = f64::INFINITY;
            pg_min_old = f64::NEG_INFINITY;
            continue;
        }
        pg_max_old = if pg_max_new <= 0.0 {
            f64::INFINITY
        } else {
            pg_max_new
        };
        pg_min_old = if pg_min_new >= 0.0 {
            f64::NEG_INFINITY
        } else {
            pg_min_new
        };
    }
    BinaryFit {
        w,
        b,
        n_iter: iter,
        converged,
    }
}

/// `0.5‖w‖² + 0.5b² + C·Σ max(0, 1 − yᵢ(w·xᵢ + b))²`.
pub(crate) fn primal_objective(x: &[f32], d: usize, y: &[i8], w: &[f64], b: f64, c: f64) -> f64 {
    let reg = 0.5 * (w.iter().map(|v| v * v).sum::<f64>() + b * b);
    let loss: f64 = x
        .chunks_exact(d)
        .zip(y)
        .map(|(row, &yi)| (1.0 - f64::from(yi) * decision(row, w, b)).max(0.0).powi(2))
        .sum();
    reg + c * loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn probe_svm_separable_1d_by_hand() {
        // x = ±1, ±2, class 1 for x > 0. The map x → −x, y → −y sends the optimum (w, b) to
        // (w, −b), so b = 0. For w < 0.5 all four points violate the margin:
        // 0.5w² + 2C(1 − w)² + 2C(1 − 2w)² is least at w = 12C / (1 + 20C) (< 0.5 here).
        let x = [-2.0f32, -1.0, 1.0, 2.0];
        let y = [0u32, 0, 1, 1];
        for c in [0.05, 0.2] {
            let svc = LinearSvc {
                tol: 1e-10,
                ..LinearSvc::new(c)
            };
            let (m, rep) = svc.fit_report(&x, 4, 1, &y, 2).unwrap();
            assert!(rep.converged);
            let w = 12.0 * c / (1.0 + 20.0 * c);
            assert!(
                (m.coef[0] - w).abs() < 1e-8,
                "C={c}: w = {} vs {w}",
                m.coef[0]
            );
            assert!(m.intercept[0].abs() < 1e-8);
            assert_eq!(m.predict(&x, 4).unwrap(), y);
            assert!(m.predict_proba(&x, 4).is_err());
        }
    }

    #[test]
    fn probe_svm_reaches_primal_optimum() {
        // 3 classes in 2-D; every one-vs-rest solution must make the primal gradient vanish:
        // w − 2C·Σ_{margin violators} yᵢ(1 − yᵢfᵢ)·xᵢ = 0, and likewise for b.
        let x: Vec<f32> = (0..60)
            .flat_map(|i| {
                let k = (i % 3) as f32;
                let t = i as f32 * 0.37;
                [k + t.sin(), 2.0 * k - t.cos()]
            })
            .collect();
        let y: Vec<u32> = (0..60).map(|i| (i % 3) as u32).collect();
        let c = 0.3;
        let svc = LinearSvc {
            tol: 1e-9,
            ..LinearSvc::new(c)
        };
        let (m, rep) = svc.fit_report(&x, 60, 2, &y, 3).unwrap();
        assert!(rep.converged);
        assert_eq!((m.coef.len(), m.intercept.len()), (6, 3));
        for k in 0..3 {
            let (w, b) = (&m.coef[k * 2..k * 2 + 2], m.intercept[k]);
            let mut grad = [w[0], w[1], b];
            for (row, &label) in x.chunks_exact(2).zip(&y) {
                let yi = if label == k as u32 { 1.0 } else { -1.0 };
                let slack = 1.0 - yi * (w[0] * row[0] as f64 + w[1] * row[1] as f64 + b);
                if slack > 0.0 {
                    let g = -2.0 * c * yi * slack;
                    grad[0] += g * row[0] as f64;
                    grad[1] += g * row[1] as f64;
                    grad[2] += g;
                }
            }
            assert!(grad.iter().all(|g| g.abs() < 1e-7), "class {k}: {grad:?}");
        }
    }

    #[test]
    fn probe_svm_rejects_bad_input() {
        let x = [0.0f32, 1.0, 2.0, 3.0];
        let svc = LinearSvc::new(1.0);
        assert!(matches!(
            svc.fit(&x, 2, 2, &[1, 1], 2),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            svc.fit(&x, 2, 2, &[0, 1, 1], 2),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(svc.fit(&[], 0, 2, &[], 2), Err(Error::Invalid(_))));
        assert!(matches!(
            svc.fit(&[f32::NAN, 0.0, 1.0, 1.0], 2, 2, &[0, 1], 2),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            LinearSvc::new(-1.0).fit(&x, 2, 2, &[0, 1], 2),
            Err(Error::Invalid(_))
        ));
        let no_tol = LinearSvc {
            tol: 0.0,
            ..LinearSvc::new(1.0)
        };
        assert!(matches!(
            no_tol.fit(&x, 2, 2, &[0, 1], 2),
            Err(Error::Invalid(_))
        ));
    }
}
