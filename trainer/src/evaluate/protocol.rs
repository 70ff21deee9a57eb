//! One evaluation run: fit a probe on a task's training (+ validation) features and score it
//! on the test split.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use mtpath_shared::eval::knn::{majority, Knn};
use mtpath_shared::eval::metrics::{roc_auc, ConfusionMatrix};
use mtpath_shared::probe::{
    fit_linear, grid_search_c, predict_from_decision, GridConfig, LinearModel, ModelKind,
};
use serde::{Deserialize, Serialize};

use super::features::TaskFeatures;
use crate::pool::{Split, Task};

/// How frozen features are turned into a classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// k nearest neighbours, cosine similarity on centred, normalised features.
    Knn {
        /// Neighbours that vote.
        k: usize,
    },
    /// L2-regularised logistic regression (scikit-learn's objective), C chosen by grouped
    /// cross-validation on the training split.
    Linear,
    /// Linear SVM (LIBLINEAR's squared hinge, one-vs-rest), C chosen the same way.
    Svm,
}

/// The C values tried by cross-validation.
pub const C_GRID: [f64; 6] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];
/// Folds of the cross-validation over C (fewer when there are fewer groups).
pub const CV_FOLDS: usize = 5;

impl FromStr for Protocol {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "knn" => Ok(Protocol::Knn { k: 20 }),
            // One vocabulary with the browser and probe files, which call it "logistic".
            "linear" | "logreg" | "logistic" => Ok(Protocol::Linear),
            "svm" => Ok(Protocol::Svm),
            other => match other.strip_prefix("knn:") {
                Some(k) => Ok(Protocol::Knn {
                    k: k.parse()
                        .map_err(|_| anyhow::anyhow!("knn:K needs a number"))?,
                }),
                None => bail!("unknown protocol `{other}`: use linear, svm, knn or knn:K"),
            },
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Knn { k } if *k == 20 => write!(f, "knn"),
            Protocol::Knn { k } => write!(f, "knn:{k}"),
            Protocol::Linear => write!(f, "linear"),
            Protocol::Svm => write!(f, "svm"),
        }
    }
}

/// Scores of one run (one task, one seed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunScores {
    /// Task name.
    pub task: String,
    /// Seed of the split.
    pub seed: u64,
    /// Training (+ validation) and test images.
    pub n_train: usize,
    /// Test images.
    pub n_test: usize,
    /// Accuracy on the test split.
    pub accuracy: f64,
    /// Balanced accuracy.
    pub balanced_accuracy: f64,
    /// Macro F1.
    pub macro_f1: f64,
    /// ROC AUC of the second class's score (binary tasks only).
    pub roc_auc: Option<f64>,
    /// The C chosen by cross-validation (linear and SVM probes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c: Option<f64>,
    /// The learning rate chosen on validation (fine-tuning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Confusion matrix rows (true class) × columns (predicted).
    pub confusion: Vec<Vec<u64>>,
    /// Class names, in label order.
    #[serde(default)]
    pub classes: Vec<String>,
}

fn gather(
    task: &Task,
    feats: &TaskFeatures,
    splits: &[Split],
) -> (Vec<f32>, Vec<u32>, Vec<String>) {
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut g = Vec::new();
    for s in splits {
        for sample in task.split(*s) {
            x.extend_from_slice(&feats.rows[&sample.path]);
            y.push(sample.label);
            g.push(sample.group.clone());
        }
    }
    (x, y, g)
}

/// Standardise columns with the training rows' mean and standard deviation (constant
/// columns are only centred).
fn standardize(train: &[f32], test: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (train.len() / dim).max(1) as f64;
    let mut mean = vec![0f64; dim];
    let mut sq = vec![0f64; dim];
    for row in train.chunks(dim) {
        for j in 0..dim {
            mean[j] += f64::from(row[j]);
            sq[j] += f64::from(row[j]).powi(2);
        }
    }
    let sd: Vec<f64> = (0..dim)
        .map(|j| {
            mean[j] /= n;
            let v = (sq[j] / n - mean[j] * mean[j]).max(0.0).sqrt();
            if v > 1e-12 {
                v
            } else {
                1.0
            }
        })
        .collect();
    let apply = |x: &[f32]| -> Vec<f32> {
        x.chunks(dim)
            .flat_map(|row| (0..dim).map(|j| ((f64::from(row[j]) - mean[j]) / sd[j]) as f32))
            .collect()
    };
    (apply(train), apply(test))
}

/// The linear model a protocol fits (k-NN never gets here).
fn model_kind(protocol: Protocol) -> ModelKind {
    match protocol {
        Protocol::Svm => ModelKind::Svm,
        _ => ModelKind::Logistic,
    }
}

/// C with the best mean balanced accuracy over grouped, stratified folds of the training
/// rows (ties: the smaller C), by `mtpath_shared::probe::grid_search_c`, the same search the
/// browser explorer runs, and `protocol`'s linear model fitted at that C on all of them
/// (`GridSearch::fit_best`: `fit_linear`'s model, as the browser's, reusing the search's
/// principal axes). Folds whose training part lacks a class are skipped; with fewer than two
/// groups or no usable fold, C = 1.
#[allow(clippy::too_many_arguments)]
fn select_and_fit(
    protocol: Protocol,
    x: &[f32],
    y: &[u32],
    groups: &[String],
    dim: usize,
    n_classes: usize,
    seed: u64,
) -> Result<(f64, LinearModel)> {
    let kind = model_kind(protocol);
    let cfg = GridConfig {
        kind,
        c_grid: C_GRID.to_vec(),
        folds: CV_FOLDS,
        seed,
        // The protocol's grid is fixed (as in the paper), edges included.
        widen: 0,
    };
    let n = y.len();
    Ok(match grid_search_c(x, n, dim, y, n_classes, groups, &cfg) {
        Ok(search) => (search.best_c, search.fit_best(x, n, dim, y, n_classes)?),
        Err(_) => (1.0, fit_linear(kind, 1.0, x, n, dim, y, n_classes)?),
    })
}

/// Which split a probe is scored on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreOn {
    /// Fit on train + val, score on test: the reported numbers.
    #[default]
    Test,
    /// Fit on train, score on val: for model selection, which must never see test.
    Validation,
}

/// Fit on train + val of `task` (as split for this seed) and score on its test split, or, with
/// [`ScoreOn::Validation`], fit on train and score on val.
pub fn run(
    task: &Task,
    feats: &TaskFeatures,
    protocol: Protocol,
    seed: u64,
    on: ScoreOn,
) -> Result<RunScores> {
    let (fit_on, score_on): (&[Split], &[Split]) = match on {
        ScoreOn::Test => (&[Split::Train, Split::Val], &[Split::Test]),
        ScoreOn::Validation => (&[Split::Train], &[Split::Val]),
    };
    let (x_train, y_train, g_train) = gather(task, feats, fit_on);
    let (x_test, y_test, _) = gather(task, feats, score_on);
    if y_test.is_empty() {
        bail!(
            "task {}: the {} split is empty; give it more groups or a larger {} fraction",
            task.name,
            score_on[0].as_str(),
            score_on[0].as_str()
        );
    }
    let n_classes = task.classes.len();
    let dim = feats.dim;
    // Predicted classes, and per test image the score of class 1 (for ROC AUC on binary tasks).
    let (pred, positive_score, chosen_c): (Vec<u32>, Vec<f64>, Option<f64>) = match protocol {
        Protocol::Knn { k } => {
            let proba = Knn::fit(&x_train, dim, &y_train, n_classes, k)?.predict_proba(&x_test)?;
            let pred = proba.iter().map(|p| majority(p)).collect();
            (
                pred,
                proba.iter().map(|p| p[1.min(p.len() - 1)]).collect(),
                None,
            )
        }
        Protocol::Linear | Protocol::Svm => {
            for c in 0..n_classes as u32 {
                if !y_train.contains(&c) {
                    bail!(
                        "task {}: class `{}` has no training images in this split",
                        task.name,
                        task.classes[c as usize]
                    );
                }
            }
            let (xs_train, xs_test) = standardize(&x_train, &x_test, dim);
            let (c, model) = select_and_fit(
                protocol, &xs_train, &y_train, &g_train, dim, n_classes, seed,
            )?;
            let z = model.decision_function(&xs_test, y_test.len())?;
            let pred = predict_from_decision(&z, n_classes);
            let score = if n_classes == 2 { z } else { Vec::new() };
            (pred, score, Some(c))
        }
    };
    score_predictions(
        task,
        seed,
        y_train.len(),
        &y_test,
        &pred,
        &positive_score,
        chosen_c,
    )
}

/// Test-split scores from predicted classes and, for binary tasks, each image's score for
/// class 1 (used for ROC AUC; empty for multi-class tasks).
pub fn score_predictions(
    task: &Task,
    seed: u64,
    n_train: usize,
    y_test: &[u32],
    pred: &[u32],
    positive_score: &[f64],
    c: Option<f64>,
) -> Result<RunScores> {
    let n_classes = task.classes.len();
    let cm = ConfusionMatrix::new(y_test, pred, n_classes)?;
    let auc = if n_classes == 2 && positive_score.len() == y_test.len() {
        let pos: Vec<bool> = y_test.iter().map(|&y| y == 1).collect();
        roc_auc(&pos, positive_score).ok()
    } else {
        None
    };
    Ok(RunScores {
        task: task.name.clone(),
        seed,
        n_train,
        n_test: y_test.len(),
        accuracy: cm.accuracy(),
        balanced_accuracy: cm.balanced_accuracy(),
        macro_f1: cm.macro_f1(),
        roc_auc: auc,
        c,
        lr: None,
        confusion: cm.rows(),
        classes: task.classes.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardize_uses_training_statistics() {
        let train = [1.0f32, 5.0, 3.0, 5.0];
        let test = [5.0f32, 7.0];
        let (a, b) = standardize(&train, &test, 2);
        assert_eq!(a, vec![-1.0, 0.0, 1.0, 0.0]);
        // Column 0: mean 2, sd 1; column 1 constant: centred only.
        assert_eq!(b, vec![3.0, 2.0]);
    }

    #[test]
    fn protocols_parse_and_print() {
        for s in ["linear", "svm", "knn", "knn:5"] {
            assert_eq!(s.parse::<Protocol>().unwrap().to_string(), s);
        }
        assert_eq!("logreg".parse::<Protocol>().unwrap(), Protocol::Linear);
        assert!("lda".parse::<Protocol>().is_err());
    }

    #[test]
    fn cross_validation_picks_a_c_that_separates_and_stays_in_the_grid() {
        // Two classes separable along dimension 0 with noise along dimension 1; 12 groups.
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut g = Vec::new();
        for i in 0..48u32 {
            let class = i % 2;
            x.extend([
                if class == 1 { 1.0 } else { -1.0 } + (i as f32 * 0.37).sin() * 0.3,
                (i as f32 * 1.3).cos(),
            ]);
            y.push(class);
            g.push(format!("p{}", i % 12));
        }
        for p in [Protocol::Linear, Protocol::Svm] {
            let (c, m) = select_and_fit(p, &x, &y, &g, 2, 2, 0).unwrap();
            assert!(C_GRID.contains(&c));
            let pred = predict_from_decision(&m.decision_function(&x, 48).unwrap(), 2);
            assert_eq!(pred, y, "{p}: C = {c}");
        }
    }
}
