//! k-nearest-neighbour classification with cosine similarity on centred, L2-normalised
//! features (the paper's kNN protocol: k = 20).

use crate::{Error, Result};

/// A fitted kNN classifier: the training features, centred by their mean and L2-normalised.
#[derive(Debug, Clone)]
pub struct Knn {
    k: usize,
    dim: usize,
    mean: Vec<f64>,
    train: Vec<f64>,
    labels: Vec<u32>,
    n_classes: usize,
}

fn normalize(row: &mut [f64]) {
    let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > 0.0 {
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// The column means of `x` (`n × dim`, row-major, `dim > 0`) and its rows centred by them and
/// scaled to unit L2 norm (zero rows stay zero): the space where cosine similarity is a dot
/// product. Used by [`Knn`] and the browser's nearest-neighbour view.
pub fn centred_unit_rows(x: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / dim;
    let mut mean = vec![0f64; dim];
    for row in x.chunks(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut rows = Vec::with_capacity(n * dim);
    for row in x.chunks(dim) {
        let start = rows.len();
        rows.extend(row.iter().zip(&mean).map(|(&v, m)| f64::from(v) - m));
        normalize(&mut rows[start..]);
    }
    (mean, rows)
}

impl Knn {
    /// Fit on `x` (`n × dim`, row-major) with labels `y` (< `n_classes`).
    pub fn fit(x: &[f32], dim: usize, y: &[u32], n_classes: usize, k: usize) -> Result<Self> {
        if dim == 0 || x.len() != y.len() * dim || y.is_empty() {
            return Err(Error::invalid(format!(
                "kNN: {} values for {} samples of dimension {dim}",
                x.len(),
                y.len()
            )));
        }
        if k == 0 {
            return Err(Error::invalid("kNN: k must be at least 1"));
        }
        if let Some(&bad) = y.iter().find(|&&c| c as usize >= n_classes) {
            return Err(Error::invalid(format!(
                "kNN: label {bad} out of range for {n_classes} classes"
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid("kNN: features contain NaN or infinity"));
        }
        let n = y.len();
        let (mean, train) = centred_unit_rows(x, dim);
        Ok(Self {
            k: k.min(n),
            dim,
            mean,
            train,
            labels: y.to_vec(),
            n_classes,
        })
    }

    /// Vote fractions per class for each row of `x` (`m × dim`): the share of the k most
    /// cosine-similar training samples in each class.
    pub fn predict_proba(&self, x: &[f32]) -> Result<Vec<Vec<f64>>> {
        if !x.len().is_multiple_of(self.dim) {
            return Err(Error::invalid(format!(
                "kNN: {} values are not rows of dimension {}",
                x.len(),
                self.dim
            )));
        }
        let mut out = Vec::with_capacity(x.len() / self.dim);
        let mut q = vec![0f64; self.dim];
        let mut sims: Vec<(f64, usize)> = Vec::with_capacity(self.labels.len());
        for row in x.chunks(self.dim) {
            for ((qv, &v), m) in q.iter_mut().zip(row).zip(&self.mean) {
                *qv = f64::from(v) - m;
            }
            normalize(&mut q);
            sims.clear();
            sims.extend(self.train.chunks(self.dim).enumerate().map(|(i, t)| {
                let s: f64 = t.iter().zip(&q).map(|(a, b)| a * b).sum();
                (s, i)
            }));
            // Most similar first; equal similarities keep training order (deterministic).
            sims.select_nth_unstable_by(self.k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut votes = vec![0f64; self.n_classes];
            for &(_, i) in &sims[..self.k] {
                votes[self.labels[i] as usize] += 1.0;
            }
            votes.iter_mut().for_each(|v| *v /= self.k as f64);
            out.push(votes);
        }
        Ok(out)
    }

    /// The majority class among the k nearest neighbours (ties: the smallest class index).
    pub fn predict(&self, x: &[f32]) -> Result<Vec<u32>> {
        Ok(self.predict_proba(x)?.iter().map(|p| majority(p)).collect())
    }
}

/// The class with the largest vote fraction (ties: the smallest class index).
pub fn majority(votes: &[f64]) -> u32 {
    let mut best = 0;
    for (c, &v) in votes.iter().enumerate() {
        if v > votes[best] {
            best = c;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_neighbours_after_centring() {
        // Two clusters along different directions; centring removes the common offset that
        // would otherwise make every pair nearly parallel.
        let offset = [100.0f32, 100.0];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..10 {
            let t = i as f32 * 0.01;
            x.extend([offset[0] + 5.0 + t, offset[1] - t]);
            y.push(0);
            x.extend([offset[0] - t, offset[1] + 5.0 + t]);
            y.push(1);
        }
        let knn = Knn::fit(&x, 2, &y, 2, 5).unwrap();
        let pred = knn.predict(&[105.0, 100.0, 100.0, 105.0]).unwrap();
        assert_eq!(pred, vec![0, 1]);
        let p = knn.predict_proba(&[105.0, 100.0]).unwrap();
        assert_eq!(p, vec![vec![1.0, 0.0]]);
    }

    #[test]
    fn votes_ties_and_errors() {
        // k = 2 with one neighbour of each class: tie → class 0.
        let knn = Knn::fit(&[1.0, 0.0, 0.0, 1.0, -1.0, -1.0], 2, &[1, 0, 1], 2, 2).unwrap();
        let p = knn.predict_proba(&[1.0, 1.0]).unwrap();
        assert_eq!(p[0].iter().sum::<f64>(), 1.0);
        assert!(Knn::fit(&[1.0], 2, &[0], 2, 1).is_err());
        assert!(Knn::fit(&[1.0, f32::NAN], 2, &[0], 2, 1).is_err());
        assert!(Knn::fit(&[1.0, 0.0], 2, &[3], 2, 1).is_err());
        assert!(knn.predict(&[1.0, 2.0, 3.0]).is_err());
    }
}
