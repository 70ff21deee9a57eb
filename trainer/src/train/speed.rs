//! The training step's speed on this machine: what `mtpath bench --mode train` reports, and
//! what the demo sizes its iterations from (hosts of one machine kind differ ~2.4×, so a fixed
//! iteration count would take 6 minutes on one and 15 on another).

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use mtpath_shared::multitask::cross_entropy_sum;
use mtpath_shared::{Arch, Network, NetworkSpec};

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

/// Images/s of a training step (train-mode forward, cross-entropy, backward) of `arch` on
/// random `batch x 3 x size x size` inputs with a 1000-class classifier.
pub fn train_step_rate(
    arch: Arch,
    size: usize,
    batch: usize,
    device: &Device,
    warmup: usize,
    iters: usize,
) -> Result<f64> {
    let net = Network::new(NetworkSpec::classifier(arch, 1000), device, 0)?;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), device)?;
    let labels = Tensor::from_vec(
        (0..batch as u32).map(|i| i % 1000).collect::<Vec<_>>(),
        batch,
        device,
    )?;
    let s = time_per_call(device, warmup, iters, || {
        let logits = net.logits_t(&x, true)?;
        let loss = (cross_entropy_sum(&logits, &labels)? / batch as f64)?;
        loss.backward()?;
        Ok(())
    })?;
    Ok(batch as f64 / s)
}
