//! Validation: per-task accuracy and balanced accuracy of the heads on the validation split.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, D};
use mtpath_shared::eval::metrics::ConfusionMatrix;
use mtpath_shared::inference::FoldedNet;
use mtpath_shared::Network;
use rayon::prelude::*;

use super::metrics::ValScores;
use crate::data::CropPolicy;

/// One task's validation images.
#[derive(Debug, Clone)]
pub struct ValSet {
    /// Head index.
    pub task: usize,
    /// Task name.
    pub name: String,
    /// Images and labels.
    pub items: Vec<(PathBuf, u32)>,
    /// Number of classes of the task.
    pub n_classes: usize,
    /// How images are brought to the input size (deterministic variant).
    pub crop: CropPolicy,
}

/// Accuracy, balanced accuracy (mean recall over the classes present in `labels`) and mean
/// cross-entropy from predictions; NaN scores for an empty set.
pub fn scores(
    task: &str,
    preds: &[u32],
    labels: &[u32],
    losses: &[f64],
    n_classes: usize,
) -> ValScores {
    let cm = ConfusionMatrix::new(labels, preds, n_classes).ok();
    ValScores {
        task: task.to_string(),
        n: labels.len(),
        loss: if losses.is_empty() {
            f64::NAN
        } else {
            losses.iter().sum::<f64>() / losses.len() as f64
        },
        accuracy: cm.as_ref().map_or(f64::NAN, |c| c.accuracy()),
        balanced_accuracy: cm.as_ref().map_or(f64::NAN, |c| c.balanced_accuracy()),
    }
}

/// What the head of a set's task says about each of its images.
pub struct Predictions {
    /// Predicted classes.
    pub classes: Vec<u32>,
    /// Softmax probabilities, one row per image.
    pub proba: Vec<Vec<f32>>,
    /// Cross-entropy of each image.
    pub losses: Vec<f64>,
}

/// A network in evaluation mode for validation. On the CPU its trunk runs folded (BatchNorm
/// folded into the convolutions, no autograd bookkeeping), as `mtpath features` and the
/// browser run it, without the training graph's separate BatchNorm passes, so validating
/// costs less of a run's time. Elsewhere the network itself runs in evaluation mode.
pub struct EvalNet<'a> {
    net: &'a Network,
    folded: Option<FoldedNet>,
}

impl<'a> EvalNet<'a> {
    /// Snapshot `net`'s current weights for evaluation.
    pub fn new(net: &'a Network) -> Result<Self> {
        let folded = if net.device().is_cpu() {
            Some(FoldedNet::from_network(net)?)
        } else {
            None
        };
        Ok(Self { net, folded })
    }

    /// Global-average-pooled trunk features [N, F] of a normalised batch.
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.folded {
            Some(f) => f.features(x)?,
            None => self.net.features_t(x, false)?,
        })
    }
}

/// Run the set's head in evaluation mode over its images, `batch` at a time.
pub fn predict(
    eval: &EvalNet,
    set: &ValSet,
    size: u32,
    batch: usize,
    device: &Device,
) -> Result<Predictions> {
    let mut out = Predictions {
        classes: Vec::with_capacity(set.items.len()),
        proba: Vec::with_capacity(set.items.len()),
        losses: Vec::with_capacity(set.items.len()),
    };
    for chunk in set.items.chunks(batch.max(1)) {
        let pixels: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|(path, _)| {
                let img = mtpath_shared::preprocess::load_image(path)
                    .with_context(|| format!("evaluation image of task {}", set.name))?;
                crate::data::augment::eval_transform(&img, set.crop, size)
            })
            .collect::<Result<_>>()?;
        let n = chunk.len();
        let s = size as usize;
        let x = Tensor::from_vec(pixels.concat(), (n, 3, s, s), device)?;
        let feats = eval.features(&x)?;
        let logits = eval.net.head_logits(set.task, &feats)?;
        let y: Vec<u32> = chunk.iter().map(|(_, y)| *y).collect();
        let y = Tensor::from_vec(y, n, device)?;
        let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll = log_p.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
        out.losses
            .extend(nll.to_vec1::<f32>()?.into_iter().map(f64::from));
        out.classes
            .extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        out.proba.extend(log_p.exp()?.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Run the heads in evaluation mode over every validation set, `batch` images at a time.
pub fn evaluate(
    net: &Network,
    sets: &[ValSet],
    size: u32,
    batch: usize,
    device: &Device,
) -> Result<Vec<ValScores>> {
    let eval = EvalNet::new(net)?;
    let mut out = Vec::with_capacity(sets.len());
    for set in sets {
        let labels: Vec<u32> = set.items.iter().map(|(_, y)| *y).collect();
        let p = predict(&eval, set, size, batch, device)?;
        out.push(scores(
            &set.name,
            &p.classes,
            &labels,
            &p.losses,
            set.n_classes,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_validation_features_match_the_training_graph() {
        use mtpath_shared::{Arch, HeadSpec, NetworkSpec};
        let heads = vec![HeadSpec {
            name: "t".into(),
            classes: vec!["a".into(), "b".into()],
        }];
        let net = Network::new(
            NetworkSpec::multitask(Arch::ResNet18, heads),
            &Device::Cpu,
            3,
        )
        .unwrap();
        // Move the BatchNorm running statistics off their identity start, so that folding
        // has something to fold.
        let x = Tensor::randn(0.5f32, 2.0, (4, 3, 40, 40), &Device::Cpu).unwrap();
        net.features_t(&x, true).unwrap();
        let eval = EvalNet::new(&net).unwrap();
        assert!(
            eval.folded.is_some(),
            "the CPU validates with the folded trunk"
        );
        let want = net.features_t(&x, false).unwrap();
        let got = eval.features(&x).unwrap();
        let diff = (&got - &want).unwrap().sqr().unwrap().sum_all().unwrap();
        let norm = want.sqr().unwrap().sum_all().unwrap();
        let rel = (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt();
        assert!(
            rel < 1e-4,
            "folded vs training graph: relative difference {rel}"
        );
    }

    #[test]
    fn scores_by_hand() {
        // Class 0: 3 samples, 2 right; class 1: 1 sample, right; class 2: absent.
        let s = scores("t", &[0, 0, 1, 1], &[0, 0, 0, 1], &[0.1, 0.2, 0.3, 0.4], 3);
        assert_eq!(s.n, 4);
        assert!((s.accuracy - 0.75).abs() < 1e-12);
        assert!((s.balanced_accuracy - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert!((s.loss - 0.25).abs() < 1e-12);
        // A constant predictor on an imbalanced set: accuracy 0.75, balanced 0.5.
        let s = scores("t", &[0, 0, 0, 0], &[0, 0, 0, 1], &[0.0; 4], 2);
        assert!((s.accuracy - 0.75).abs() < 1e-12);
        assert!((s.balanced_accuracy - 0.5).abs() < 1e-12);
    }
}
