//! The training step's speed on this machine: what `mtpath bench --mode train` reports, and
//! what the demo sizes its iterations from (hosts of one machine kind differ ~2.4×, so a fixed
//! iteration count would take 6 minutes on one and 15 on another).

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use mtpath_shared::multitask::{multitask_forward_backward, param_groups, TaskBatch};
use mtpath_shared::optim::{Optimizer, Sgd, SgdConfig};
use mtpath_shared::{Arch, HeadSpec, Network, NetworkSpec};

use super::config::TrainConfig;
use crate::device::synchronize;

/// Seconds per call of `f`, averaged over `iters` calls after `warmup` untimed ones.
pub fn time_per_call<F: FnMut() -> Result<()>>(
    device: &Device,
    warmup: usize,
    iters: usize,
    mut f: F,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    synchronize(device)?;
    let start = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    synchronize(device)?;
    Ok(start.elapsed().as_secs_f64() / iters.max(1) as f64)
}

/// Images/s of the trainer's whole optimisation step on `batch x 3 x size x size` random
/// inputs: the multi-task forward in training mode (4 heads, the batch spread over them),
/// the loss, the backward pass and the SGD update with momentum and weight decay, as
/// `mtpath train` runs it (`Trainer::step`). This is the peer that whole-run speed is
/// measured against, so it leaves out only the data pipeline, validation and checkpoints.
pub fn train_step_rate(
    arch: Arch,
    size: usize,
    batch: usize,
    device: &Device,
    warmup: usize,
    iters: usize,
) -> Result<f64> {
    const HEADS: usize = 4;
    const CLASSES: usize = 4;
    let heads = (0..HEADS)
        .map(|h| HeadSpec {
            name: format!("task{h}"),
            classes: (0..CLASSES).map(|c| format!("class{c}")).collect(),
        })
        .collect();
    let net = Network::new(NetworkSpec::multitask(arch, heads), device, 0)?;
    let config = TrainConfig::default();
    let mut optimizer = Sgd::new(
        param_groups(
            &net,
            config.head_lr_scale,
            config.weight_decay,
            config.no_decay_norm_bias,
        ),
        SgdConfig {
            momentum: config.momentum,
            nesterov: config.nesterov,
        },
    )?;
    let data = TaskBatch {
        images: Tensor::randn(0f32, 1.0, (batch, 3, size, size), device)?,
        tasks: (0..batch).map(|i| i % HEADS).collect(),
        labels: (0..batch).map(|i| ((i / HEADS) % CLASSES) as u32).collect(),
        whole: None,
        label_smoothing: 0.0,
    };
    let s = time_per_call(device, warmup, iters, || {
        let (_, grads) = multitask_forward_backward(&net, &data, true)?;
        // A small learning rate keeps the weights sane over many timed steps on noise.
        optimizer.step(&grads, 1e-4)?;
        Ok(())
    })?;
    Ok(batch as f64 / s)
}
