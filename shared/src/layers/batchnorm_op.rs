//! Fused training-mode BatchNorm for the CPU: statistics, normalisation and the backward pass
//! in single passes over the data, accumulating in f64.
//!
//! Composing BatchNorm from candle's elementwise and reduction ops gives the right formula but
//! sums tens of thousands of f32 values sequentially and lets the backward's three terms cancel
//! in f32, which costs about three digits on the gradients of early layers. PyTorch uses one
//! fused kernel; so do we.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::batchnorm_sync::SyncHandle;
use super::contiguous_slice;
use super::fill::{par_chunks_zeroed, par_zeros};
use super::reduce::{sum_dev, sums_grad, Gate};

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
                    .map(|p| sum_dev(p, 0.0, false))
                    .sum();
                let mean = sum / count;
                let ss: f64 = channel_planes(x, n, c, hw, ch)
                    .map(|p| sum_dev(p, mean, true))
                    .sum();
                (mean, ss / count)
            })
            .collect();
        let mut out: Vec<f64> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F64(out), Shape::from((2, c))))
    }
}

/// Per-channel sums of an NCHW tensor, as a [C] f64 tensor: of the values themselves, or
/// with `centre`, of their squared deviations from it (the two passes of synchronised
/// statistics, whose mean is only known once every process's sums are in).
struct ChannelSums {
    centre: Option<Vec<f64>>,
}

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "mtpath-bn-channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let hw = h * w;
        let x = contiguous_slice::<f32>(s, l, "fused batch-norm: input")?;
        let sums: Vec<f64> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (centre, squared) = match &self.centre {
                    Some(m) => (m[ch], true),
                    None => (0.0, false),
                };
                channel_planes(x, n, c, hw, ch)
                    .map(|p| sum_dev(p, centre, squared))
                    .sum()
            })
            .collect();
        Ok((CpuStorage::F64(sums), Shape::from(c)))
    }
}

/// The whole batch's per-channel mean and biased variance, and its value count per channel,
/// with every process's share summed through `sync` (two passes, as [`ChannelStats`]).
fn synced_stats(
    xs: &Tensor,
    sync: &SyncHandle,
) -> candle_core::Result<(Vec<f64>, Vec<f64>, usize)> {
    let (n, c, h, w) = xs.dims4()?;
    let mut sums = xs
        .apply_op1_no_bwd(&ChannelSums { centre: None })?
        .to_vec1::<f64>()?;
    sums.push((n * h * w) as f64);
    sync.sum(&mut sums)?;
    let count = sums[c];
    let mean: Vec<f64> = sums[..c].iter().map(|s| s / count).collect();
    let mut ss = xs
        .apply_op1_no_bwd(&ChannelSums {
            centre: Some(mean.clone()),
        })?
        .to_vec1::<f64>()?;
    sync.sum(&mut ss)?;
    let var = ss.iter().map(|s| s / count).collect();
    Ok((mean, var, count as usize))
}

/// `y = (x - mean) * invstd * weight + bias` with batch statistics fixed in the op, then
/// optionally `+ residual` and `max(0, ·)`, and the exact backward of the whole (gradients
/// flow through the statistics). Fusing the residual add and ReLU saves their passes over the
/// data, their saved tensors and, above all, candle's elementwise ReLU backward.
#[derive(Debug, Clone)]
struct BatchNormTrain {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    relu: bool,
    /// Synchronised BatchNorm: the statistics are the whole batch's, and the backward pass
    /// sums its per-channel terms over the processes too.
    sync: Option<SyncHandle>,
}

impl BatchNormTrain {
    /// The forward pass over NCHW `x` (`c` channels of `hw` values).
    fn run(
        &self,
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        (c, hw): (usize, usize),
    ) -> Vec<f32> {
        par_chunks_zeroed(x.len(), hw, |plane, yp: &mut [f32]| {
            let xp = &x[plane * hw..(plane + 1) * hw];
            let ch = plane % c;
            // Centre first: `x·scale + shift` would cancel catastrophically for channels
            // whose mean is large against their spread. Statistics are f64; the
            // elementwise step is f32 (as PyTorch's), which vectorises.
            let (m, scale, b) = (
                self.mean[ch] as f32,
                (self.invstd[ch] * weight[ch] as f64) as f32,
                bias[ch],
            );
            let act = |v: f32| if self.relu { v.max(0.0) } else { v };
            match residual {
                Some(r) => {
                    let rp = &r[plane * hw..(plane + 1) * hw];
                    for ((o, &v), &rv) in yp.iter_mut().zip(xp).zip(rp) {
                        *o = act((v - m) * scale + b + rv);
                    }
                }
                None => {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = act((v - m) * scale + b);
                    }
                }
            }
        })
    }

    /// The backward op for this forward, `weight` and `bias` being the BatchNorm scale and
    /// shift it used.
    fn backward_op(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        residual: bool,
    ) -> candle_core::Result<BatchNormBackward> {
        Ok(BatchNormBackward {
            fwd: self.clone(),
            weight: weight.to_vec1::<f32>()?,
            bias: bias.to_vec1::<f32>()?,
            residual,
        })
    }
}

/// Unpack [`BatchNormBackward`]'s `[dx, (dresidual), dweight, dbias]`. The parameter
/// gradients are copied out: candle keeps them until the optimizer step, and as views they
/// would keep the whole activation-sized buffer alive for that long.
fn unpack_grads(
    packed: &Tensor,
    dims: (usize, usize, usize, usize),
    residual: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>, Tensor, Tensor)> {
    let (n, c, h, w) = dims;
    let len = n * c * h * w;
    let dx = packed.narrow(0, 0, len)?.reshape(dims)?;
    let mut at = len;
    let dr = if residual {
        at += len;
        Some(packed.narrow(0, len, len)?.reshape(dims)?)
    } else {
        None
    };
    Ok((
        dx,
        dr,
        packed.narrow(0, at, c)?.force_contiguous()?,
        packed.narrow(0, at + c, c)?.force_contiguous()?,
    ))
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
        let x = contiguous_slice::<f32>(s1, l1, "fused batch-norm: input")?;
        let weight = contiguous_slice::<f32>(s2, l2, "fused batch-norm: weight")?;
        let bias = contiguous_slice::<f32>(s3, l3, "fused batch-norm: bias")?;
        let y = self.run(x, weight, bias, None, (c, h * w));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = self.backward_op(weight, bias, false)?;
        let packed = x.apply_op3_no_bwd(res, &grad.contiguous()?, &op)?;
        let (dx, _, dweight, dbias) = unpack_grads(&packed, x.dims4()?, false)?;
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

/// [`BatchNormTrain`] with a residual: `(x, [weight; bias] as [2, C], residual)`.
#[derive(Debug, Clone)]
struct BatchNormAddTrain(BatchNormTrain);

impl CustomOp3 for BatchNormAddTrain {
    fn name(&self) -> &'static str {
        "mtpath-bn-add-train"
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
        if l3.dims() != l1.dims() {
            candle_core::bail!(
                "fused batch-norm: residual {:?} does not match input {:?}",
                l3.dims(),
                l1.dims()
            );
        }
        let x = contiguous_slice::<f32>(s1, l1, "fused batch-norm: input")?;
        let wb = contiguous_slice::<f32>(s2, l2, "fused batch-norm: weight and bias")?;
        let r = contiguous_slice::<f32>(s3, l3, "fused batch-norm: residual")?;
        let y = self.0.run(x, &wb[..c], &wb[c..2 * c], Some(r), (c, h * w));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _residual: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(
            res,
            &grad.contiguous()?,
            &self.0.backward_op(&wb.get(0)?, &wb.get(1)?, true)?,
        )?;
        let (dx, dr, _, _) = unpack_grads(&packed, x.dims4()?, true)?;
        // The packed buffer ends with [dweight; dbias]: already the [2, C] gradient of `wb`
        // (copied out for the reason given at `unpack_grads`).
        let c = wb.dim(1)?;
        let dwb = packed
            .narrow(0, packed.dim(0)? - 2 * c, 2 * c)?
            .reshape((2, c))?
            .force_contiguous()?;
        Ok((Some(dx), Some(dwb), dr))
    }
}

/// Gradients of [`BatchNormTrain`] from `(x, y, dy)`, packed as
/// `[dx (N·C·H·W), dresidual (N·C·H·W, with a residual), dweight (C), dbias (C)]`. With a
/// ReLU, `dz = dy · [y > 0]` (PyTorch's threshold backward) is what the normalisation and
/// the residual receive.
struct BatchNormBackward {
    fwd: BatchNormTrain,
    weight: Vec<f32>,
    bias: Vec<f32>,
    residual: bool,
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "mtpath-bn-train-backward"
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let x = contiguous_slice::<f32>(s1, l1, "fused batch-norm: input")?;
        let y = contiguous_slice::<f32>(s2, l2, "fused batch-norm: output")?;
        let dy = contiguous_slice::<f32>(s3, l3, "fused batch-norm: gradient")?;
        if y.len() != x.len() || dy.len() != x.len() {
            candle_core::bail!(
                "fused batch-norm backward: gradient {:?} does not match input {:?}",
                l3.dims(),
                l1.dims()
            );
        }
        let count = (n * hw) as f64;
        let (mean, invstd) = (&self.fwd.mean, &self.fwd.invstd);
        let relu = self.fwd.relu;
        let mut out: Vec<f32> = par_zeros(x.len() * (1 + usize::from(self.residual)) + 2 * c);
        let (dx, rest) = out.split_at_mut(x.len());
        let (dr, rest) = rest.split_at_mut(if self.residual { x.len() } else { 0 });
        // The forward's f32 centre and scale of channel `ch`.
        let centre = |ch: usize| mean[ch] as f32;
        let scale = |ch: usize| (self.weight[ch] as f64 * invstd[ch]) as f32;
        // dz: the gradient reaching the normalisation. With a residual it is materialised (as
        // the residual's gradient) in the pass that sums it, plane by plane. Without one, the
        // ReLU's gate is recomputed from x (the forward's own f32 arithmetic), so neither
        // pass reads y.
        let masked = relu && !self.residual;
        let gate = |ch: usize| {
            if masked {
                Gate::Input {
                    mean: centre(ch),
                    scale: scale(ch),
                    shift: self.bias[ch],
                }
            } else {
                Gate::Open
            }
        };
        // Σ dz and Σ dz·(x − mean) of every plane, then per channel in sample order.
        let per_plane: Vec<(f64, f64)> = if self.residual {
            dr.par_chunks_mut(hw)
                .enumerate()
                .map(|(p, d)| {
                    let (yp, gp) = (&y[p * hw..][..hw], &dy[p * hw..][..hw]);
                    for ((o, &yv), &g) in d.iter_mut().zip(yp).zip(gp) {
                        *o = if relu && yv <= 0.0 { 0.0 } else { g };
                    }
                    sums_grad(&x[p * hw..][..hw], d, Gate::Open, mean[p % c])
                })
                .collect()
        } else {
            (0..n * c)
                .into_par_iter()
                .map(|p| {
                    let (xp, gp) = (&x[p * hw..][..hw], &dy[p * hw..][..hw]);
                    sums_grad(xp, gp, gate(p % c), mean[p % c])
                })
                .collect()
        };
        let sums: Vec<(f64, f64)> = (0..c)
            .map(|ch| {
                let (sd, sdxm) = (0..n)
                    .map(|s| per_plane[s * c + ch])
                    .fold((0.0, 0.0), |(sd, sdx), (a, b)| (sd + a, sdx + b));
                (sd, sdxm * invstd[ch])
            })
            .collect();
        // Synchronised: dx needs the whole batch's sums and count. The parameter gradients
        // stay this process's own share (the gradient all-reduce sums them).
        let (whole, count) = match &self.fwd.sync {
            None => (sums.clone(), count),
            Some(sync) => {
                let mut buf: Vec<f64> = sums.iter().map(|s| s.0).collect();
                buf.extend(sums.iter().map(|s| s.1));
                buf.push(count);
                sync.sum(&mut buf)?;
                let whole = (0..c).map(|ch| (buf[ch], buf[c + ch])).collect();
                (whole, buf[2 * c])
            }
        };
        let dz: &[f32] = if self.residual { dr } else { dy };
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(dz.par_chunks(hw)))
            .enumerate()
            .for_each(|(plane, (dxp, (xp, gp)))| {
                let ch = plane % c;
                let (m, is) = (centre(ch), invstd[ch]);
                let k = scale(ch);
                let mean_dy = (whole[ch].0 / count) as f32;
                // x̂·mean(dz·x̂) = (x − m)·(is·mean(dz·x̂)).
                let slope = (is * whole[ch].1 / count) as f32;
                if masked {
                    let gate = gate(ch);
                    for ((o, &xv), &g) in dxp.iter_mut().zip(xp).zip(gp) {
                        let g = if gate.passes(xv) { g } else { 0.0 };
                        *o = k * (g - mean_dy - (xv - m) * slope);
                    }
                } else {
                    for ((o, &xv), &g) in dxp.iter_mut().zip(xp).zip(gp) {
                        *o = k * (g - mean_dy - (xv - m) * slope);
                    }
                }
            });
        for ch in 0..c {
            rest[ch] = sums[ch].1 as f32;
            rest[c + ch] = sums[ch].0 as f32;
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// Training-mode batch norm of a contiguous f32 NCHW tensor on the CPU, optionally followed
/// by `+ residual` and a ReLU in the same pass.
///
/// With `sync`, the statistics (and the backward pass's sums) are those of the whole batch
/// over every process ([`super::batchnorm_sync`]).
///
/// Returns the output, the batch mean and biased variance per channel (for the running
/// estimates), and the values per channel they were computed over.
pub fn batch_norm_train_cpu(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    relu: bool,
    eps: f64,
    sync: Option<SyncHandle>,
) -> candle_core::Result<(Tensor, Vec<f32>, Vec<f32>, usize)> {
    let xs = xs.contiguous()?;
    let (mean, var, count) = match &sync {
        None => {
            let (n, _, h, w) = xs.dims4()?;
            let stats = xs.apply_op1_no_bwd(&ChannelStats)?.to_vec2::<f64>()?;
            (stats[0].clone(), stats[1].clone(), n * h * w)
        }
        Some(s) => synced_stats(&xs, s)?,
    };
    let invstd = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (mean32, var32) = (to_f32(&mean), to_f32(&var));
    let op = BatchNormTrain {
        mean,
        invstd,
        relu,
        sync,
    };
    let ys = match residual {
        None => xs.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?,
        Some(r) => {
            let wb = Tensor::stack(&[weight, bias], 0)?;
            xs.apply_op3(&wb, &r.contiguous()?, BatchNormAddTrain(op))?
        }
    };
    Ok((ys, mean32, var32, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// `relu?(bn(x) + r?)` from candle's primitive ops in f64 (batch statistics, biased
    /// variance), the reference for the fused kernel.
    fn composed(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        r: Option<&Tensor>,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let (n, c, h, wd) = x.dims4()?;
        let flat = x.transpose(0, 1)?.reshape((c, n * h * wd))?;
        let mean = flat.mean_keepdim(D::Minus1)?;
        let centred = flat.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let y = centred
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&w.reshape((c, 1))?)?
            .broadcast_add(&b.reshape((c, 1))?)?
            .reshape((c, n, h, wd))?
            .transpose(0, 1)?;
        let y = match r {
            Some(r) => (y + r)?,
            None => y,
        };
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// Elements in the buffer behind `t` (a view keeps its whole buffer alive).
    fn buffer_len(t: &Tensor) -> usize {
        let (storage, _) = t.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
            _ => usize::MAX,
        }
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
        let a = a.to_dtype(DType::F64)?.flatten_all()?;
        let b = b.to_dtype(DType::F64)?.flatten_all()?;
        let num = (&a - &b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        let den = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        Ok(num / den.max(1e-30))
    }

    /// Every combination of residual and ReLU: outputs and the gradients of x, weight, bias
    /// and the residual equal the f64 composition.
    #[test]
    fn fused_bn_add_relu_matches_the_composition_and_its_gradients() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (n, c, h, w) = (3, 5, 6, 7);
        for (with_residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            // A channel with a large mean against its spread checks the centring.
            let x64 = (Tensor::randn(0f64, 1.0, (n, c, h, w), &dev)?
                + Tensor::new(&[0f64, 50.0, 0.0, -3.0, 1.0], &dev)?
                    .reshape((1, c, 1, 1))?
                    .broadcast_as((n, c, h, w))?)?;
            let w64 = Tensor::randn(1f64, 0.3, c, &dev)?;
            let b64 = Tensor::randn(0f64, 0.3, c, &dev)?;
            let r64 = Tensor::randn(0f64, 1.0, (n, c, h, w), &dev)?;
            let g64 = Tensor::randn(0f64, 1.0, (n, c, h, w), &dev)?;
            let vars64: Vec<Var> = [&x64, &w64, &b64, &r64]
                .iter()
                .map(|t| Var::from_tensor(t))
                .collect::<candle_core::Result<_>>()?;
            let vars32: Vec<Var> = [&x64, &w64, &b64, &r64]
                .iter()
                .map(|t| Var::from_tensor(&t.to_dtype(DType::F32)?))
                .collect::<candle_core::Result<_>>()?;
            let r64_arg = with_residual.then(|| vars64[3].as_tensor());
            let reference = composed(
                vars64[0].as_tensor(),
                vars64[1].as_tensor(),
                vars64[2].as_tensor(),
                r64_arg,
                relu,
            )?;
            let (fused, mean, var, _) = batch_norm_train_cpu(
                vars32[0].as_tensor(),
                vars32[1].as_tensor(),
                vars32[2].as_tensor(),
                with_residual.then(|| vars32[3].as_tensor()),
                relu,
                1e-5,
                None,
            )?;
            let case = format!("residual {with_residual} relu {relu}");
            let err = rel_err(&fused, &reference)?;
            // f32 input near 50 carries ~4e-6 absolute rounding against a unit spread.
            assert!(err < 2e-5, "{case}: output {err}");
            assert!((mean[1] - 50.0).abs() < 1.0 && var.iter().all(|v| *v > 0.0));
            let g_ref = reference.mul(&g64)?.sum_all()?.backward()?;
            let g_fused = fused
                .mul(&g64.to_dtype(DType::F32)?)?
                .sum_all()?
                .backward()?;
            let count = if with_residual { 4 } else { 3 };
            for (i, name) in ["x", "weight", "bias", "residual"]
                .iter()
                .take(count)
                .enumerate()
            {
                let a = g_fused.get(vars32[i].as_tensor()).expect("fused gradient");
                let b = g_ref
                    .get(vars64[i].as_tensor())
                    .expect("reference gradient");
                let err = rel_err(a, b)?;
                assert!(err < 1e-5, "{case}: d{name} relative error {err}");
            }
            // The parameters' gradients, kept until the optimizer step, hold no reference to
            // the activation-sized buffer they were computed in.
            for (i, name) in [(1, "weight"), (2, "bias")] {
                let g = g_fused.get(vars32[i].as_tensor()).expect("fused gradient");
                let len = buffer_len(g);
                assert!(
                    len <= 2 * c,
                    "{case}: d{name} holds a buffer of {len} floats"
                );
            }
        }
        Ok(())
    }
}
