//! The paper's multi-task training step (Mormont, Geurts & Marée, 2021).
//!
//! A batch mixes samples of several tasks. Every sample goes through the shared trunk and then
//! only through its own task's head. The loss is the sum of per-sample cross-entropies divided
//! by the batch size `B`; after back-propagation each head's gradient is multiplied by
//! `B / n_t` (`n_t` = samples of task `t` in the batch), so a head sees the mean loss of its own
//! samples while the trunk sees the batch mean.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, D};

use crate::network::Network;
use crate::optim::ParamGroup;
use crate::{Error, Result};

/// A batch for the multi-task step.
#[derive(Debug, Clone)]
pub struct TaskBatch {
    /// Normalised images [B, 3, H, W].
    pub images: Tensor,
    /// Task index of each sample (index into the network's heads).
    pub tasks: Vec<usize>,
    /// Class index of each sample within its task.
    pub labels: Vec<u32>,
    /// When these samples are one process's share of a larger batch (data-parallel
    /// training): that batch. `None`: the samples are the whole batch.
    pub whole: Option<WholeBatch>,
    /// Label smoothing ε of the targets (torch's `CrossEntropyLoss(label_smoothing=ε)`): each
    /// sample's target puts `1 - ε` on its class and `ε / K` on each of its task's `K`
    /// classes. 0 = one-hot targets.
    pub label_smoothing: f64,
}

/// The batch a data-parallel share belongs to. Its size is the loss's divisor `B` and its
/// per-task counts the heads' `n_t`, so that the shares' gradients sum to the gradient of
/// the whole batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeBatch {
    /// Samples in the whole batch.
    pub size: usize,
    /// Samples of each task (head order) in the whole batch.
    pub per_task: Vec<usize>,
}

/// What one forward/backward pass measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// The optimised loss: sum of cross-entropies / B (of a share: its part of the whole
    /// batch's loss).
    pub loss: f32,
    /// Samples per task in these samples (of a share: the share's own).
    pub samples_per_task: Vec<usize>,
    /// Mean cross-entropy per task (NaN for tasks absent from the batch).
    pub loss_per_task: Vec<f32>,
    /// Correct predictions per task.
    pub correct_per_task: Vec<usize>,
}

/// Sum over rows of the cross-entropy of `logits` [n, C] against `labels` [n].
pub fn cross_entropy_sum(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    smoothed_cross_entropy_sum(logits, labels, 0.0)
}

/// Sum over rows of the cross-entropy of `logits` [n, C] against `labels` [n] smoothed by
/// `eps`: `(1 - ε)·(−log p_y) + ε·mean_k(−log p_k)` per row, torch's
/// `CrossEntropyLoss(label_smoothing=ε, reduction="sum")`.
pub fn smoothed_cross_entropy_sum(
    logits: &Tensor,
    labels: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = log_p.gather(&labels.unsqueeze(1)?, 1)?.sum_all()?.neg()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let classes = log_p.dim(D::Minus1)? as f64;
    let uniform = (log_p.sum_all()?.neg()? / classes)?;
    (nll * (1.0 - eps))? + (uniform * eps)?
}

fn validate(net: &Network, batch: &TaskBatch) -> Result<usize> {
    let b = batch.images.dim(0)?;
    if !(0.0..1.0).contains(&batch.label_smoothing) {
        return Err(Error::invalid(format!(
            "label smoothing {} must be in [0, 1)",
            batch.label_smoothing
        )));
    }
    if b == 0 || batch.tasks.len() != b || batch.labels.len() != b {
        return Err(Error::invalid(format!(
            "batch of {b} images with {} task ids and {} labels",
            batch.tasks.len(),
            batch.labels.len()
        )));
    }
    for (i, (&t, &y)) in batch.tasks.iter().zip(&batch.labels).enumerate() {
        let head = net.heads().get(t).ok_or_else(|| {
            Error::invalid(format!(
                "sample {i}: task {t}, but the model has {} heads",
                net.heads().len()
            ))
        })?;
        if y as usize >= head.out_features() {
            return Err(Error::invalid(format!(
                "sample {i}: label {y} out of range for task {t} ({} classes)",
                head.out_features()
            )));
        }
    }
    if let Some(whole) = &batch.whole {
        let n_tasks = net.heads().len();
        let fits = whole.per_task.len() == n_tasks
            && whole.per_task.iter().sum::<usize>() == whole.size
            && (0..n_tasks)
                .all(|t| batch.tasks.iter().filter(|&&x| x == t).count() <= whole.per_task[t]);
        if !fits {
            return Err(Error::invalid(format!(
                "a share of {b} samples does not fit its whole batch ({} samples, {:?} per task)",
                whole.size, whole.per_task
            )));
        }
    }
    Ok(b)
}

/// Forward and backward of the multi-task loss, with the heads' gradients rescaled by `B/n_t`.
///
/// `train` selects BatchNorm's mode for the trunk (batch statistics and running-stat updates,
/// or running statistics). Returns the statistics and the gradients of every variable that
/// took part; heads with no sample have no gradient entry.
pub fn multitask_forward_backward(
    net: &Network,
    batch: &TaskBatch,
    train: bool,
) -> Result<(StepStats, GradStore)> {
    validate(net, batch)?;
    let features = net.features_t(&batch.images, train)?;
    heads_loss_backward(net, &features, batch)
}

/// The heads-only variant used while the trunk is frozen (the warm-up of the paper's
/// scheme): the trunk runs in evaluation mode (running statistics, no updates to them) and
/// outside the autograd graph, so only the heads get gradients, rescaled as in
/// [`multitask_forward_backward`].
pub fn heads_forward_backward(net: &Network, batch: &TaskBatch) -> Result<(StepStats, GradStore)> {
    validate(net, batch)?;
    let features = net.features_t(&batch.images, false)?.detach();
    heads_loss_backward(net, &features, batch)
}

fn heads_loss_backward(
    net: &Network,
    features: &Tensor,
    batch: &TaskBatch,
) -> Result<(StepStats, GradStore)> {
    let b = batch.tasks.len();
    // The whole batch's size and per-task counts set the loss's scale (see `WholeBatch`).
    let (b_whole, n_whole) = match &batch.whole {
        Some(w) => (w.size, w.per_task.clone()),
        None => {
            let mut n = vec![0; net.heads().len()];
            batch.tasks.iter().for_each(|&t| n[t] += 1);
            (b, n)
        }
    };
    let device = features.device();
    let n_tasks = net.heads().len();
    let mut total: Option<Tensor> = None;
    let mut stats = StepStats {
        loss: 0.0,
        samples_per_task: vec![0; n_tasks],
        loss_per_task: vec![f32::NAN; n_tasks],
        correct_per_task: vec![0; n_tasks],
    };
    for t in 0..n_tasks {
        let rows: Vec<u32> = (0..b as u32)
            .filter(|&i| batch.tasks[i as usize] == t)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let n_t = rows.len();
        let labels: Vec<u32> = rows.iter().map(|&i| batch.labels[i as usize]).collect();
        let idx = Tensor::from_vec(rows, n_t, device)?;
        let labels = Tensor::from_vec(labels, n_t, device)?;
        let logits = net.head_logits(t, &features.index_select(&idx, 0)?)?;
        let ce = smoothed_cross_entropy_sum(&logits, &labels, batch.label_smoothing)?;
        let pred = logits.argmax(D::Minus1)?;
        stats.correct_per_task[t] = pred
            .eq(&labels)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
        stats.samples_per_task[t] = n_t;
        stats.loss_per_task[t] = ce.to_dtype(DType::F32)?.to_scalar::<f32>()? / n_t as f32;
        total = Some(match total {
            None => ce,
            Some(acc) => (acc + ce)?,
        });
    }
    let total = total.ok_or_else(|| Error::invalid("empty batch"))?;
    let loss = (total / b_whole as f64)?;
    stats.loss = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let mut grads = loss.backward()?;
    for (t, head) in net.heads().iter().enumerate() {
        if stats.samples_per_task[t] == 0 {
            continue;
        }
        let scale = b_whole as f64 / n_whole[t] as f64;
        for var in [head.weight(), head.bias()] {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok((stats, grads))
}

/// Parameter groups for the paper's scheme: `trunk` at the base learning rate and `heads` at
/// `head_lr_scale` (τ) times it, both with `weight_decay`. With `no_decay_norm_bias`,
/// BatchNorm parameters and biases go to `trunk_no_decay` / `heads_no_decay` groups without
/// weight decay. Buffers (running statistics) are never included.
pub fn param_groups(
    net: &Network,
    head_lr_scale: f64,
    weight_decay: f64,
    no_decay_norm_bias: bool,
) -> Vec<ParamGroup> {
    let mut groups: Vec<ParamGroup> = Vec::new();
    for (name, var) in net.named_parameters() {
        let is_head = !net.is_trunk_name(&name);
        let no_decay = no_decay_norm_bias && var.rank() <= 1;
        let group_name = match (is_head, no_decay) {
            (false, false) => "trunk",
            (false, true) => "trunk_no_decay",
            (true, false) => "heads",
            (true, true) => "heads_no_decay",
        };
        match groups.iter_mut().find(|g| g.name == group_name) {
            Some(g) => g.params.push((name, var)),
            None => groups.push(ParamGroup {
                name: group_name.to_string(),
                params: vec![(name, var)],
                lr_scale: if is_head { head_lr_scale } else { 1.0 },
                weight_decay: if no_decay { 0.0 } else { weight_decay },
                frozen: false,
            }),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// torch's `cross_entropy(logits, y, label_smoothing=eps, reduction="sum")` in f64.
    fn reference(logits: &[[f64; 3]], labels: &[usize], eps: f64) -> f64 {
        logits
            .iter()
            .zip(labels)
            .map(|(z, &y)| {
                let m = z.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                let nll = lse - z[y];
                let mean_nll = z.iter().map(|v| lse - v).sum::<f64>() / 3.0;
                (1.0 - eps) * nll + eps * mean_nll
            })
            .sum()
    }

    #[test]
    fn smoothed_cross_entropy_matches_torch_definition() {
        let rows = [[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-2.0, 4.0, 1.0]];
        let labels = [0usize, 1, 1];
        let dev = Device::Cpu;
        let logits = Tensor::new(&rows, &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 1], &dev).unwrap();
        for eps in [0.0, 0.1, 0.3] {
            let got = smoothed_cross_entropy_sum(&logits, &y, eps)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let want = reference(&rows, &labels, eps);
            assert!((got - want).abs() < 1e-12, "eps {eps}: {got} vs {want}");
        }
        // Smoothing raises the loss of a confident right answer and lowers a confident
        // wrong one's.
        let sharp = Tensor::new(&[[9.0f64, 0.0, 0.0]], &dev).unwrap();
        let right = Tensor::new(&[0u32], &dev).unwrap();
        let wrong = Tensor::new(&[1u32], &dev).unwrap();
        let ce = |y: &Tensor, eps| {
            smoothed_cross_entropy_sum(&sharp, y, eps)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert!(ce(&right, 0.1) > ce(&right, 0.0));
        assert!(ce(&wrong, 0.1) < ce(&wrong, 0.0));
    }
}
