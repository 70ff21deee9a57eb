//! One evaluation run: fit a probe on a task's training (+ validation) features and score it
//! on the test split.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use mtpath_shared::eval::knn::Knn;
use mtpath_shared::eval::metrics::{roc_auc, ConfusionMatrix};
use serde::Serialize;

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
}

impl FromStr for Protocol {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "knn" => Ok(Protocol::Knn { k: 20 }),
            other => match other.strip_prefix("knn:") {
                Some(k) => Ok(Protocol::Knn {
                    k: k.parse()
                        .map_err(|_| anyhow::anyhow!("knn:K needs a number"))?,
                }),
                None => bail!("unknown protocol `{other}`: use knn or knn:K"),
            },
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Knn { k } if *k == 20 => write!(f, "knn"),
            Protocol::Knn { k } => write!(f, "knn:{k}"),
        }
    }
}

/// Scores of one run (one task, one seed).
#[derive(Debug, Clone, Serialize)]
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
    /// Confusion matrix rows (true class) × columns (predicted).
    pub confusion: Vec<Vec<u64>>,
}

fn gather(task: &Task, feats: &TaskFeatures, splits: &[Split]) -> (Vec<f32>, Vec<u32>) {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for s in splits {
        for sample in task.split(*s) {
            x.extend_from_slice(&feats.rows[&sample.path]);
            y.push(sample.label);
        }
    }
    (x, y)
}

/// Fit on train + val of `task` (as split for this seed) and score on its test split.
pub fn run(task: &Task, feats: &TaskFeatures, protocol: Protocol, seed: u64) -> Result<RunScores> {
    let (x_train, y_train) = gather(task, feats, &[Split::Train, Split::Val]);
    let (x_test, y_test) = gather(task, feats, &[Split::Test]);
    if y_test.is_empty() {
        bail!(
            "task {}: the test split is empty; give it more groups or a larger test fraction",
            task.name
        );
    }
    let n_classes = task.classes.len();
    let proba = match protocol {
        Protocol::Knn { k } => {
            Knn::fit(&x_train, feats.dim, &y_train, n_classes, k)?.predict_proba(&x_test)?
        }
    };
    let pred: Vec<u32> = proba
        .iter()
        .map(|p| {
            let mut best = 0;
            for (c, &v) in p.iter().enumerate() {
                if v > p[best] {
                    best = c;
                }
            }
            best as u32
        })
        .collect();
    let cm = ConfusionMatrix::new(&y_test, &pred, n_classes)?;
    let auc = if n_classes == 2 {
        let pos: Vec<bool> = y_test.iter().map(|&y| y == 1).collect();
        let scores: Vec<f64> = proba.iter().map(|p| p[1]).collect();
        roc_auc(&pos, &scores).ok()
    } else {
        None
    };
    Ok(RunScores {
        task: task.name.clone(),
        seed,
        n_train: y_train.len(),
        n_test: y_test.len(),
        accuracy: cm.accuracy(),
        balanced_accuracy: cm.balanced_accuracy(),
        macro_f1: cm.macro_f1(),
        roc_auc: auc,
        confusion: cm.rows(),
    })
}
