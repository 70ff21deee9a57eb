//! The fitted linear model both probes return, with sklearn's shapes and prediction rules.

use super::input::{check_features, to_f64};
use super::linalg::x_wt;
use crate::{Error, Result};

/// Which solver produced a [`LinearModel`]: decides whether probabilities exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// [`super::LogisticRegression`]: `predict_proba` is the softmax (or sigmoid) of the
    /// decision values.
    Logistic,
    /// [`super::LinearSvc`]: decision values only, like sklearn's `LinearSVC`.
    Svm,
}

/// A linear classifier: `decision = X · coefᵀ + intercept`.
///
/// As in scikit-learn, two-class models hold one weight vector (`rows() == 1`; a positive
/// decision means class 1) and `K > 2` classes hold `K` (`rows() == K`).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    /// `rows() × n_features` weights, row-major.
    pub coef: Vec<f64>,
    /// One intercept per row.
    pub intercept: Vec<f64>,
    /// Feature dimension `d`.
    pub n_features: usize,
    /// Number of classes `K ≥ 2`.
    pub n_classes: usize,
    /// The solver that fitted it.
    pub kind: ModelKind,
}

/// How a fit went.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Solver iterations: L-BFGS iterations, or for the SVM the largest number of
    /// coordinate-descent epochs over the one-vs-rest problems.
    pub n_iter: usize,
    /// Whether the stopping rule was met (rather than `max_iter` or a stalled line search).
    pub converged: bool,
    /// The minimised objective: sklearn's logistic objective, or for the SVM the sum over
    /// the one-vs-rest problems of `0.5‖w‖² + 0.5b² + C·Σ max(0, 1 − yᵢ(w·xᵢ + b))²`.
    pub objective: f64,
}

impl LinearModel {
    /// Weight vectors held: 1 for two classes, else `n_classes`.
    pub fn rows(&self) -> usize {
        rows_for(self.n_classes)
    }

    /// Decision values, `n × rows()` row-major (for two classes one value per sample,
    /// positive for class 1), as sklearn's `decision_function`.
    pub fn decision_function(&self, x: &[f32], n: usize) -> Result<Vec<f64>> {
        check_features(x, n, self.n_features)?;
        Ok(self.decision_f64(&to_f64(x), n))
    }

    pub(crate) fn decision_f64(&self, x: &[f64], n: usize) -> Vec<f64> {
        let r = self.rows();
        let mut z = vec![0.0; n * r];
        x_wt(x, n, self.n_features, &self.coef, r, &mut z);
        for row in z.chunks_exact_mut(r) {
            for (v, b) in row.iter_mut().zip(&self.intercept) {
                *v += b;
            }
        }
        z
    }

    /// Predicted classes: the sign of the decision for two classes, else its argmax (first
    /// of equal maxima), as sklearn.
    pub fn predict(&self, x: &[f32], n: usize) -> Result<Vec<u32>> {
        let z = self.decision_function(x, n)?;
        Ok(predict_from_decision(&z, self.n_classes))
    }

    /// Class probabilities, `n × n_classes` row-major: `[1 − σ(z), σ(z)]` for two classes,
    /// `softmax(z)` otherwise. Only for logistic models (sklearn's `LinearSVC` has none).
    pub fn predict_proba(&self, x: &[f32], n: usize) -> Result<Vec<f64>> {
        if self.kind != ModelKind::Logistic {
            return Err(Error::invalid(
                "probe: predict_proba needs a logistic model; a linear SVM gives decision values only",
            ));
        }
        let z = self.decision_function(x, n)?;
        let k = self.n_classes;
        let mut p = vec![0.0; n * k];
        if k == 2 {
            for (row, &zi) in p.chunks_exact_mut(2).zip(&z) {
                let s = sigmoid(zi);
                row[0] = 1.0 - s;
                row[1] = s;
            }
        } else {
            for (row, zr) in p.chunks_exact_mut(k).zip(z.chunks_exact(k)) {
                row.copy_from_slice(zr);
                softmax_in_place(row);
            }
        }
        Ok(p)
    }

    /// Fraction of samples whose predicted class equals `y`.
    pub fn accuracy(&self, x: &[f32], n: usize, y: &[u32]) -> Result<f64> {
        if y.len() != n {
            return Err(Error::invalid(format!(
                "probe: {} labels for {n} samples",
                y.len()
            )));
        }
        let pred = self.predict(x, n)?;
        let hits = pred.iter().zip(y).filter(|(p, t)| p == t).count();
        Ok(hits as f64 / n as f64)
    }
}

/// Weight vectors for `n_classes` classes (sklearn: one for a binary problem).
pub(crate) fn rows_for(n_classes: usize) -> usize {
    if n_classes == 2 {
        1
    } else {
        n_classes
    }
}

/// Classes from decision values (`n × rows`): the sign for two classes, else the argmax (first
/// of equal maxima), as sklearn's `predict`.
pub fn predict_from_decision(z: &[f64], n_classes: usize) -> Vec<u32> {
    if n_classes == 2 {
        z.iter().map(|&v| u32::from(v > 0.0)).collect()
    } else {
        z.chunks_exact(n_classes)
            .map(|row| {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = j;
                    }
                }
                best as u32
            })
            .collect()
    }
}

/// Decision values to softmax probabilities, in place (shifted by their maximum, so no
/// exponential overflows).
pub(crate) fn softmax_in_place(row: &mut [f64]) {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    row.iter_mut().for_each(|v| *v /= s);
}

/// Numerically stable logistic function.
pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}
