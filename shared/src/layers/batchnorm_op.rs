//! Fused training-mode BatchNorm for the CPU: statistics, normalisation and the backward pass
//! in single passes over the data, accumulating in f64.
//!
//! Composing BatchNorm from candle's elementwise and reduction ops gives the right formula but
//! sums tens of thousands of f32 values sequentially and lets the backward's three terms cancel
//! in f32, which costs about three digits on the gradients of early layers. PyTorch uses one
//! fused kernel; so do we.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_slice;

/// Per-channel sums over the N planes of channel `c` of an NCHW buffer.
fn channel_planes(
    data: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    ch: usize,
) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |i| &data[(i * c + ch) * hw..(i * c + ch + 1) * hw])
}

/// `Σ f(v)` over `p` in f64 with eight independent accumulators: no long dependency chain,
/// so it pipelines (and vectorises) instead of waiting on each add.
fn sum_f64(p: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = p.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            acc[j] += f(c[j]);
        }
    }
    let mut total = acc.iter().sum::<f64>();
    for &v in tail {
        total += f(v);
    }
    total
}

/// `Σ g` and `Σ g·(x − m)` over paired slices, as [`sum_f64`].
fn sums_dy(x: &[f32], g: &[f32], m: f64) -> (f64, f64) {
    let (mut a, mut b) = ([0f64; 8], [0f64; 8]);
    let (xc, gc) = (x.chunks_exact(8), g.chunks_exact(8));
    let (xt, gt) = (xc.remainder(), gc.remainder());
    for (xs, gs) in xc.zip(gc) {
        for j in 0..8 {
            let gv = gs[j] as f64;
            a[j] += gv;
            b[j] += gv * (xs[j] as f64 - m);
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f64>(), b.iter().sum::<f64>());
    for (&xv, &gv) in xt.iter().zip(gt) {
        sa += gv as f64;
        sb += gv as f64 * (xv as f64 - m);
    }
    (sa, sb)
}

/// Mean and biased variance per channel, as a [2, C] f64 tensor (row 0 mean, row 1 variance).
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "mtpath-bn-channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let hw = h * w;
        let x = contiguous_slice::<f32>(s, l, "fused batch-norm: input")?;
        let count = (n * hw) as f64;
        let stats: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let sum: f64 = channel_planes(x, n, c, hw, ch)
                    .map(|p| sum_f64(p, f64::from))
                    .sum();
                let mean = sum / count;
                let ss: f64 = channel_planes(x, n, c, hw, ch)
                    .map(|p| sum_f64(p, |v| (f64::from(v) - mean).powi(2)))
                    .sum();
                (mean, ss / count)
            })
            .collect();
        let mut out: Vec<f64> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F64(out), Shape::from((2, c))))
    }
}

/// `y = (x - mean) * invstd * weight + bias` with batch statistics fixed in the op, and the
/// exact BatchNorm backward (gradients flow through the statistics).
#[derive(Debug, Clone)]
struct BatchNormTrain {
    mean: Vec<f64>,
    invstd: Vec<f64>,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "mtpath-bn-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let x = contiguous_slice::<f32>(s1, l1, "fused batch-norm: input")?;
        let weight = contiguous_slice::<f32>(s2, l2, "fused batch-norm: weight")?;
        let bias = contiguous_slice::<f32>(s3, l3, "fused batch-norm: bias")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (yp, xp))| {
                let ch = plane % c;
                // Centre first: `x·scale + shift` would cancel catastrophically for channels
                // whose mean is large against their spread. Statistics are f64; the
                // elementwise step is f32 (as PyTorch's), which vectorises.
                let (m, scale, b) = (
                    self.mean[ch] as f32,
                    (self.invstd[ch] * weight[ch] as f64) as f32,
                    bias[ch],
                );
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = (v - m) * scale + b;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let packed = x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &BatchNormBackward {
                fwd: self.clone(),
                weight: weight.to_vec1::<f32>()?,
            },
        )?;
        let len = n * c * h * w;
        let dx = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let dweight = packed.narrow(0, len, c)?;
        let dbias = packed.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

/// Gradients of [`BatchNormTrain`], packed as `[dx (N·C·H·W), dweight (C), dbias (C)]`.
struct BatchNormBackward {
    fwd: BatchNormTrain,
    weight: Vec<f32>,
}

impl CustomOp2 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "mtpath-bn-train-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let x = contiguous_slice::<f32>(s1, l1, "fused batch-norm: input")?;
        let dy = contiguous_slice::<f32>(s2, l2, "fused batch-norm: gradient")?;
        let count = (n * hw) as f64;
        let (mean, invstd) = (&self.fwd.mean, &self.fwd.invstd);
        // Σ dy and Σ dy·x̂ per channel.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (m, is) = (mean[ch], invstd[ch]);
                let (sd, sdxm) = channel_planes(x, n, c, hw, ch)
                    .zip(channel_planes(dy, n, c, hw, ch))
                    .fold((0.0, 0.0), |(sd, sdx), (xp, gp)| {
                        let (a, b) = sums_dy(xp, gp, m);
                        (sd + a, sdx + b)
                    });
                (sd, sdxm * is)
            })
            .collect();
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, rest) = out.split_at_mut(x.len());
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(dy.par_chunks(hw)))
            .enumerate()
            .for_each(|(plane, (dxp, (xp, gp)))| {
                let ch = plane % c;
                let (m, is) = (mean[ch] as f32, invstd[ch]);
                let k = (self.weight[ch] as f64 * is) as f32;
                let mean_dy = (sums[ch].0 / count) as f32;
                // x̂·mean(dy·x̂) = (x − m)·(is·mean(dy·x̂)).
                let slope = (is * sums[ch].1 / count) as f32;
                for ((o, &xv), &g) in dxp.iter_mut().zip(xp).zip(gp) {
                    *o = k * (g - mean_dy - (xv - m) * slope);
                }
            });
        for ch in 0..c {
            rest[ch] = sums[ch].1 as f32;
            rest[c + ch] = sums[ch].0 as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * c)))
    }
}

/// Training-mode batch norm of a contiguous f32 NCHW tensor on the CPU.
///
/// Returns the output and the batch mean and biased variance per channel (for the running
/// estimates).
pub fn batch_norm_train_cpu(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let xs = xs.contiguous()?;
    let stats = xs.apply_op1_no_bwd(&ChannelStats)?.to_vec2::<f64>()?;
    let (mean, var) = (stats[0].clone(), stats[1].clone());
    let invstd = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (mean32, var32) = (to_f32(&mean), to_f32(&var));
    let op = BatchNormTrain { mean, invstd };
    let ys = xs.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((ys, mean32, var32))
}
