//! Classification metrics with scikit-learn's definitions: accuracy, balanced accuracy, macro
//! F1, ROC AUC (binary) and the confusion matrix.

use crate::{Error, Result};

/// Counts of (true class, predicted class) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    n_classes: usize,
    /// Row-major `[true][predicted]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// Tally predictions; labels must be below `n_classes`.
    pub fn new(y_true: &[u32], y_pred: &[u32], n_classes: usize) -> Result<Self> {
        if y_true.len() != y_pred.len() {
            return Err(Error::invalid(format!(
                "{} true labels but {} predictions",
                y_true.len(),
                y_pred.len()
            )));
        }
        if y_true.is_empty() {
            return Err(Error::invalid("no samples to score"));
        }
        let mut counts = vec![0u64; n_classes * n_classes];
        for (&t, &p) in y_true.iter().zip(y_pred) {
            let (t, p) = (t as usize, p as usize);
            if t >= n_classes || p >= n_classes {
                return Err(Error::invalid(format!(
                    "label {} out of range for {n_classes} classes",
                    t.max(p)
                )));
            }
            counts[t * n_classes + p] += 1;
        }
        Ok(Self { n_classes, counts })
    }

    /// Number of classes (rows and columns).
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Samples of true class `t` predicted as `p`.
    pub fn get(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.n_classes + p]
    }

    /// Rows (true class) of counts.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks(self.n_classes)
            .map(|r| r.to_vec())
            .collect()
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn true_count(&self, c: usize) -> u64 {
        (0..self.n_classes).map(|p| self.get(c, p)).sum()
    }

    fn pred_count(&self, c: usize) -> u64 {
        (0..self.n_classes).map(|t| self.get(t, c)).sum()
    }

    /// Fraction of correct predictions.
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.n_classes).map(|c| self.get(c, c)).sum();
        correct as f64 / self.total() as f64
    }

    /// Mean recall over the classes present in the true labels
    /// (`sklearn.metrics.balanced_accuracy_score`).
    pub fn balanced_accuracy(&self) -> f64 {
        let recalls: Vec<f64> = (0..self.n_classes)
            .filter(|&c| self.true_count(c) > 0)
            .map(|c| self.get(c, c) as f64 / self.true_count(c) as f64)
            .collect();
        recalls.iter().sum::<f64>() / recalls.len() as f64
    }

    /// Unweighted mean of per-class F1 over the classes that occur in the true labels or the
    /// predictions (`sklearn.metrics.f1_score(average="macro")`).
    pub fn macro_f1(&self) -> f64 {
        let f1: Vec<f64> = (0..self.n_classes)
            .filter(|&c| self.true_count(c) + self.pred_count(c) > 0)
            .map(|c| {
                let tp = self.get(c, c) as f64;
                2.0 * tp / (self.true_count(c) + self.pred_count(c)) as f64
            })
            .collect();
        f1.iter().sum::<f64>() / f1.len() as f64
    }
}

/// Area under the ROC curve of `scores` for the positive class (`positive[i]`), with ties
/// counted one half: the Mann–Whitney statistic, equal to `sklearn.metrics.roc_auc_score`.
pub fn roc_auc(positive: &[bool], scores: &[f64]) -> Result<f64> {
    if positive.len() != scores.len() {
        return Err(Error::invalid(format!(
            "{} labels but {} scores",
            positive.len(),
            scores.len()
        )));
    }
    if scores.iter().any(|s| s.is_nan()) {
        return Err(Error::invalid("ROC AUC of NaN scores"));
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::invalid(
            "ROC AUC needs both classes among the true labels",
        ));
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over ties.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg_rank * order[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Ok(u / (n_pos as f64 * n_neg as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_multiclass_scores() {
        // true: 0 0 0 1 1 2 ; pred: 0 1 0 1 2 2
        let cm = ConfusionMatrix::new(&[0, 0, 0, 1, 1, 2], &[0, 1, 0, 1, 2, 2], 3).unwrap();
        assert_eq!(cm.rows(), vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
        assert!((cm.accuracy() - 4.0 / 6.0).abs() < 1e-15);
        // recalls 2/3, 1/2, 1
        assert!((cm.balanced_accuracy() - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-15);
        // F1: c0 2*2/(3+2)=0.8, c1 2*1/(2+2)=0.5, c2 2*1/(1+2)=2/3
        assert!((cm.macro_f1() - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-15);
    }

    #[test]
    fn absent_classes_follow_sklearn() {
        // Class 2 never occurs: left out of balanced accuracy and macro F1.
        let cm = ConfusionMatrix::new(&[0, 0, 1, 1], &[0, 0, 0, 1], 3).unwrap();
        assert!((cm.balanced_accuracy() - 0.75).abs() < 1e-15);
        // F1: c0 2*2/(2+3)=0.8, c1 2*1/(2+1)=2/3
        assert!((cm.macro_f1() - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-15);
        // Predicted but never true: counts in macro F1 with F1 0 (sklearn), not in recall.
        let cm = ConfusionMatrix::new(&[0, 0], &[0, 1], 2).unwrap();
        assert!((cm.balanced_accuracy() - 0.5).abs() < 1e-15);
        assert!((cm.macro_f1() - (2.0 / 3.0 + 0.0) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn roc_auc_with_ties_matches_sklearn() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        let auc = roc_auc(&[false, false, true, true], &[0.1, 0.4, 0.35, 0.8]).unwrap();
        assert!((auc - 0.75).abs() < 1e-15);
        // With a tie between a positive and a negative: roc_auc_score([0,1,0,1],[0.5,0.5,0.2,0.9]) == 0.875
        let auc = roc_auc(&[false, true, false, true], &[0.5, 0.5, 0.2, 0.9]).unwrap();
        assert!((auc - 0.875).abs() < 1e-15);
        assert!(roc_auc(&[true, true], &[0.1, 0.2]).is_err());
        assert!(roc_auc(&[true, false], &[f64::NAN, 0.2]).is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(ConfusionMatrix::new(&[0, 1], &[0], 2).is_err());
        assert!(ConfusionMatrix::new(&[0, 3], &[0, 1], 2).is_err());
        assert!(ConfusionMatrix::new(&[], &[], 2).is_err());
    }
}
