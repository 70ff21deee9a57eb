//! Synchronised BatchNorm for data-parallel training: the per-channel sums behind a training
//! batch's statistics, and behind their backward pass, are summed over every process before
//! use, so each process normalises with the statistics of the whole batch (PyTorch's
//! `SyncBatchNorm`). The transport is the caller's (MPI, NCCL, …): this module only asks for
//! element-wise sums of f64 buffers.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::Result;

/// Sums per-channel statistics over the processes of a data-parallel run.
pub trait BatchStatsSync: Send + Sync {
    /// Replace `values` by their element-wise sum over all processes. Every process calls
    /// this in the same order with buffers of the same length.
    fn sum(&self, values: &mut [f64]) -> std::result::Result<(), String>;
}

/// A shared [`BatchStatsSync`], kept by the BatchNorm ops from the forward pass to the
/// backward pass.
#[derive(Clone)]
pub struct SyncHandle(Arc<dyn BatchStatsSync>);

impl SyncHandle {
    /// Sum `values` over the processes; a failure becomes a candle error naming BatchNorm.
    pub(crate) fn sum(&self, values: &mut [f64]) -> candle_core::Result<()> {
        self.0.sum(values).map_err(|e| {
            candle_core::Error::Msg(format!("synchronised BatchNorm: summing over ranks: {e}"))
        })
    }
}

impl fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncHandle")
    }
}

thread_local! {
    /// While [`with_synced_batch_norm`] runs on this thread: the sync of training-mode
    /// BatchNorm layers.
    static SYNC: RefCell<Option<SyncHandle>> = const { RefCell::new(None) };
}

/// Run `f` with every training-mode BatchNorm forward on this thread synchronised through
/// `sync` (the ops keep it for their backward pass, wherever that runs): the CPU's fused
/// kernel, or on other devices the composition of [`batch_norm_train_synced`].
pub fn with_synced_batch_norm<T>(
    sync: Arc<dyn BatchStatsSync>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let previous = SYNC.with(|s| s.replace(Some(SyncHandle(sync))));
    // Restored even when `f` panics, so a caught panic cannot leave the sync installed.
    struct Restore(Option<SyncHandle>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SYNC.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(previous);
    f()
}

/// The sync installed by [`with_synced_batch_norm`] on this thread, if any.
pub(crate) fn current() -> Option<SyncHandle> {
    SYNC.with(|s| s.borrow().clone())
}

/// A sum over the processes that autograd can go through: the forward pass sums the
/// (f64) values over the ranks, and so does the backward pass with the gradient, since every
/// rank's loss depends on the sum (PyTorch's differentiable all-reduce in SyncBatchNorm).
/// The values travel through host memory.
struct SyncSum(SyncHandle);

impl SyncSum {
    fn summed(&self, mut values: Vec<f64>) -> candle_core::Result<Vec<f64>> {
        self.0.sum(&mut values)?;
        Ok(values)
    }
}

impl CustomOp1 for SyncSum {
    fn name(&self) -> &'static str {
        "mtpath-sync-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = super::contiguous_slice::<f64>(s, l, "synchronised sum")?.to_vec();
        Ok((CpuStorage::F64(self.summed(values)?), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("synchronised sum: the values must be contiguous");
        };
        let device = s.device().clone();
        let stream = device.cuda_stream();
        let values = stream
            .clone_dtoh(&s.as_cuda_slice::<f64>()?.slice(start..end))
            .map_err(candle_core::Error::wrap)?;
        let summed = stream
            .clone_htod(&self.summed(values)?)
            .map_err(candle_core::Error::wrap)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(summed, device),
            l.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&SyncSum(self.0.clone()))?,
        ))
    }
}

/// Training-mode BatchNorm composed from candle's ops (any device and dtype) with the whole
/// batch's statistics over every process: per-channel sums of `x` and `x²` (in f64) go
/// through [`SyncSum`], so autograd's backward sums their gradients over the processes too.
/// Returns the output and the mean, biased variance and value count per channel.
pub(crate) fn batch_norm_train_synced(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    sync: &SyncHandle,
) -> candle_core::Result<(Tensor, Vec<f32>, Vec<f32>, usize)> {
    let (n, c, h, w) = xs.dims4()?;
    let dtype = xs.dtype();
    let flat = xs.transpose(0, 1)?.reshape((c, n * h * w))?;
    let flat64 = flat.to_dtype(DType::F64)?;
    let local = Tensor::cat(&[flat64.sum(1)?, flat64.sqr()?.sum(1)?], 0)?;
    let mut count = [(n * h * w) as f64];
    sync.sum(&mut count)?;
    let count = count[0];
    let total = local.contiguous()?.apply_op1(SyncSum(sync.clone()))?;
    let mean = (total.narrow(0, 0, c)? / count)?;
    // E[x²] − mean² in f64; a variance that rounds below zero is zero.
    let var = ((total.narrow(0, c, c)? / count)? - mean.sqr()?)?.relu()?;
    let scale = ((var.clone() + eps)?.sqrt()?.recip()? * weight.to_dtype(DType::F64)?)?;
    let ys = flat
        .broadcast_sub(&mean.to_dtype(dtype)?.reshape((c, 1))?)?
        .broadcast_mul(&scale.to_dtype(dtype)?.reshape((c, 1))?)?
        .broadcast_add(&bias.reshape((c, 1))?)?
        .reshape((c, n, h, w))?
        .transpose(0, 1)?
        .contiguous()?;
    let to_f32 = |t: &Tensor| t.detach().to_dtype(DType::F32)?.to_vec1::<f32>();
    Ok((ys, to_f32(&mean)?, to_f32(&var)?, count as usize))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::layers::batchnorm_op::batch_norm_train_cpu;
    use crate::testdata::ThreadSum;

    /// `(y, dx, dweight, dbias, dresidual, mean, var, count)` of the fused op on `x`, for the
    /// loss `sum(y * g)`.
    type Outcome = (
        Tensor,
        Tensor,
        Tensor,
        Tensor,
        Tensor,
        Vec<f32>,
        Vec<f32>,
        usize,
    );

    fn run(
        (x, r, g): (&Tensor, &Tensor, &Tensor),
        (w, b): (&Tensor, &Tensor),
        (residual, composed): (bool, bool),
        sync: Option<Arc<dyn BatchStatsSync>>,
    ) -> Outcome {
        let go = || -> Result<Outcome> {
            let vars: Vec<Var> = [x, w, b, r]
                .iter()
                .map(|t| Var::from_tensor(t))
                .collect::<candle_core::Result<_>>()?;
            let (y, mean, var, count) = match (composed, current()) {
                (true, Some(sync)) => {
                    let (y, mean, var, count) = batch_norm_train_synced(
                        vars[0].as_tensor(),
                        vars[1].as_tensor(),
                        vars[2].as_tensor(),
                        1e-5,
                        &sync,
                    )?;
                    let y = if residual {
                        (y + vars[3].as_tensor())?
                    } else {
                        y
                    };
                    (y.relu()?, mean, var, count)
                }
                (_, sync) => batch_norm_train_cpu(
                    vars[0].as_tensor(),
                    vars[1].as_tensor(),
                    vars[2].as_tensor(),
                    residual.then(|| vars[3].as_tensor()),
                    true,
                    1e-5,
                    sync,
                )?,
            };
            let grads = y.mul(g)?.sum_all()?.backward()?;
            // Without a residual, its gradient is zero.
            let grad = |i: usize| match grads.get(vars[i].as_tensor()) {
                Some(g) => g.clone(),
                None => vars[i].as_tensor().zeros_like().unwrap(),
            };
            Ok((y, grad(0), grad(1), grad(2), grad(3), mean, var, count))
        };
        match sync {
            Some(s) => with_synced_batch_norm(s, go).unwrap(),
            None => go().unwrap(),
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Two "processes" holding shares of 1 and 3 samples of a batch of 4, synchronised,
    /// compute what one process computes on the whole batch (with and without a residual,
    /// in the fused CPU kernel and in the composition other devices run): outputs and input
    /// gradients row for row, the statistics, and parameter gradients that sum to the
    /// whole's.
    #[test]
    fn synchronised_shares_equal_the_whole_batch() {
        let dev = Device::Cpu;
        let (n, c, h, w) = (4, 3, 5, 5);
        let x = (Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap() + 2.0).unwrap();
        let r = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(1f32, 0.3, c, &dev).unwrap();
        let bt = Tensor::randn(0f32, 0.3, c, &dev).unwrap();
        for (residual, composed) in [(true, false), (false, false), (true, true), (false, true)] {
            let whole = run((&x, &r, &g), (&wt, &bt), (residual, false), None);
            let sync = Arc::new(ThreadSum::new(2));
            let shares: Vec<Outcome> = std::thread::scope(|s| {
                let handles: Vec<_> = [(0, 1), (1, 3)]
                    .into_iter()
                    .map(|(start, len)| {
                        let part = |t: &Tensor| t.narrow(0, start, len).unwrap();
                        let (x, r, g) = (part(&x), part(&r), part(&g));
                        let (wt, bt) = (&wt, &bt);
                        let sync: Arc<dyn BatchStatsSync> = sync.clone();
                        s.spawn(move || {
                            run((&x, &r, &g), (wt, bt), (residual, composed), Some(sync))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let cat = |i: usize| {
                let parts: Vec<Tensor> = shares
                    .iter()
                    .map(|o| [&o.0, &o.1, &o.4][i].clone())
                    .collect();
                Tensor::cat(&parts, 0).unwrap()
            };
            assert!(max_diff(&cat(0), &whole.0) < 1e-5, "outputs");
            assert!(max_diff(&cat(1), &whole.1) < 1e-5, "input gradients");
            assert!(max_diff(&cat(2), &whole.4) < 1e-6, "residual gradients");
            let dw = (&shares[0].2 + &shares[1].2).unwrap();
            let db = (&shares[0].3 + &shares[1].3).unwrap();
            assert!(max_diff(&dw, &whole.2) < 1e-4, "weight gradients");
            assert!(max_diff(&db, &whole.3) < 1e-4, "bias gradients");
            for o in &shares {
                assert_eq!(o.7, n * h * w);
                for (a, b) in o.5.iter().zip(&whole.5).chain(o.6.iter().zip(&whole.6)) {
                    assert!((a - b).abs() < 1e-6, "statistics {a} vs {b}");
                }
            }
            // Without the sync, a share's statistics are its own: the checks above can fail.
            let part = |t: &Tensor| t.narrow(0, 0, 1).unwrap();
            let alone = run(
                (&part(&x), &part(&r), &part(&g)),
                (&wt, &bt),
                (residual, false),
                None,
            );
            assert!(max_diff(&alone.0, &part(&whole.0)) > 1e-3);
            assert_eq!(alone.0.dtype(), DType::F32);
        }
    }
}
