//! `nn.BatchNorm2d` with PyTorch's training semantics.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, ModuleT, Tensor, TensorId, Var, D};

use crate::varstore::{Builder, Init};
use crate::Result;

/// PyTorch's default `eps`.
pub const BN_EPS: f64 = 1e-5;
/// PyTorch's default `momentum` for the running statistics.
pub const BN_MOMENTUM: f64 = 0.1;

/// Per-channel sums of a BatchNorm layer's inputs, gathered by [`collect_input_moments`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputMoments {
    /// Values seen per channel (N·H·W summed over batches).
    pub count: u64,
    /// Per-channel sum of the inputs.
    pub sum: Vec<f64>,
    /// Per-channel sum of the squared inputs.
    pub sum_sq: Vec<f64>,
}

impl InputMoments {
    /// Per-channel mean and unbiased variance (PyTorch's running-variance convention).
    pub fn mean_var(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.count.max(1) as f64;
        let bessel = if self.count > 1 { n / (n - 1.0) } else { 1.0 };
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| {
                let m = s / n;
                (m, ((q / n - m * m).max(0.0)) * bessel)
            })
            .unzip()
    }
}

thread_local! {
    /// While [`collect_input_moments`] runs: every BatchNorm layer's input moments, keyed by
    /// the id of its `running_mean` tensor.
    static COLLECTING: RefCell<Option<HashMap<TensorId, InputMoments>>> = const { RefCell::new(None) };
}

/// Run `f` (evaluation-mode forwards on this thread) and return the input moments of every
/// BatchNorm layer it went through, keyed by the id of the layer's `running_mean` tensor
/// ([`BatchNorm2d::running_mean`]). Outputs are not changed. Used by the BatchNorm
/// adaptation of a pre-trained network ([`crate::bn_adapt::adapt_batch_norm`]).
pub fn collect_input_moments<F>(f: F) -> Result<HashMap<TensorId, InputMoments>>
where
    F: FnOnce() -> Result<()>,
{
    COLLECTING.with(|c| *c.borrow_mut() = Some(HashMap::new()));
    let out = f();
    let moments = COLLECTING
        .with(|c| c.borrow_mut().take())
        .unwrap_or_default();
    out.map(|()| moments)
}

/// Add `xs` ([N, C, H, W]) to the moments of the layer keyed `key`, when collecting.
fn record_moments(key: TensorId, xs: &Tensor) -> candle_core::Result<()> {
    if !COLLECTING.with(|c| c.borrow().is_some()) {
        return Ok(());
    }
    let (n, c, h, w) = xs.dims4()?;
    let flat = xs
        .detach()
        .transpose(0, 1)?
        .reshape((c, n * h * w))?
        .to_dtype(DType::F64)?;
    let sum = flat.sum(1)?.to_vec1::<f64>()?;
    let sum_sq = flat.sqr()?.sum(1)?.to_vec1::<f64>()?;
    COLLECTING.with(|cell| {
        if let Some(map) = cell.borrow_mut().as_mut() {
            let m = map.entry(key).or_insert_with(|| InputMoments {
                count: 0,
                sum: vec![0.0; c],
                sum_sq: vec![0.0; c],
            });
            m.count += (n * h * w) as u64;
            m.sum.iter_mut().zip(&sum).for_each(|(a, b)| *a += b);
            m.sum_sq.iter_mut().zip(&sum_sq).for_each(|(a, b)| *a += b);
        }
    });
    Ok(())
}

/// Batch normalisation over the channels of an NCHW tensor.
///
/// Training mode normalises with the batch's statistics (biased variance) and updates the
/// running estimates as PyTorch does: `running = (1 - momentum) * running + momentum * stat`
/// with the *unbiased* variance, and increments `num_batches_tracked`. Evaluation mode uses the
/// running estimates.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// Register `weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked` in
    /// torchvision's order.
    pub fn new(b: &mut Builder<'_>, channels: usize) -> Result<Self> {
        Ok(Self {
            weight: b.param("weight", &[channels], Init::Const(1.0))?,
            bias: b.param("bias", &[channels], Init::Const(0.0))?,
            running_mean: b.buffer("running_mean", &[channels], Init::Const(0.0))?,
            running_var: b.buffer("running_var", &[channels], Init::Const(1.0))?,
            num_batches_tracked: b.counter("num_batches_tracked")?,
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
        })
    }

    /// The current running mean.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The current running variance.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Per-channel `(scale, shift)` with `y = x * scale + shift` in evaluation mode: the form
    /// used to fold BatchNorm into the preceding convolution.
    pub fn eval_scale_shift(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let scale = self
            .weight
            .as_tensor()
            .div(&(self.running_var.as_tensor().detach() + self.eps)?.sqrt()?)?;
        let shift = self
            .bias
            .as_tensor()
            .sub(&self.running_mean.as_tensor().detach().mul(&scale)?)?;
        Ok((scale, shift))
    }

    fn forward_eval(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        record_moments(self.running_mean.as_tensor().id(), xs)?;
        let (scale, shift) = self.eval_scale_shift()?;
        let c = scale.dim(0)?;
        xs.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)
    }

    /// `relu(bn(xs) [+ residual])`: the common epilogue of a convolution in ResNet
    /// (`relu(bn(conv) + identity)`) and DenseNet (`relu(norm(x))`). In training mode on the
    /// CPU the three run as one fused op with one backward; elsewhere they compose.
    pub fn forward_relu_t(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        if train {
            if let Some(ys) = self.forward_train_fused(xs, residual, true)? {
                return Ok(ys);
            }
        }
        let mut ys = self.forward_t(xs, train)?;
        if let Some(r) = residual {
            ys = (ys + r)?;
        }
        ys.relu()
    }

    /// The fused CPU kernel, when it serves `xs` (contiguous-able f32 on the CPU with more
    /// than one value per channel, or any count when synchronised over processes); when
    /// synchronised on other devices, the synchronised composition. `None`: compose here.
    fn forward_train_fused(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, c, h, w) = xs.dims4()?;
        let sync = super::batchnorm_sync::current();
        // Synchronised, one value per channel here is fine: the statistics are the batch's.
        let fusable = (n * h * w >= 2 || sync.is_some())
            && super::use_fused_cpu(xs)
            && xs.dtype() == DType::F32
            && residual.is_none_or(|r| r.dtype() == DType::F32 && r.device().is_cpu());
        let (ys, mean, var, count) = match (fusable, &sync) {
            (false, None) => return Ok(None),
            (false, Some(sync)) => {
                // Other devices and dtypes, synchronised: the composition, then the epilogue.
                let (mut ys, mean, var, count) = super::batchnorm_sync::batch_norm_train_synced(
                    xs,
                    self.weight.as_tensor(),
                    self.bias.as_tensor(),
                    self.eps,
                    sync,
                )?;
                if let Some(r) = residual {
                    ys = (ys + r)?;
                }
                if relu {
                    ys = ys.relu()?;
                }
                (ys, mean, var, count)
            }
            (true, _) => super::batchnorm_op::batch_norm_train_cpu(
                xs,
                self.weight.as_tensor(),
                self.bias.as_tensor(),
                residual,
                relu,
                self.eps,
                sync,
            )?,
        };
        let dev = xs.device();
        self.update_running_stats(
            &Tensor::from_vec(mean, c, dev)?,
            &Tensor::from_vec(var, c, dev)?,
            count,
        )?;
        Ok(Some(ys))
    }

    fn forward_train(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(ys) = self.forward_train_fused(xs, None, false)? {
            return Ok(ys);
        }
        let (n, c, h, w) = xs.dims4()?;
        // Generic composition (other devices and dtypes).
        let count = n * h * w;
        if count < 2 {
            candle_core::bail!(
                "BatchNorm in training mode needs more than one value per channel, got input {:?}",
                xs.dims()
            );
        }
        // Channel-major view [C, N*H*W] keeps the reductions on one axis.
        let flat = xs.transpose(0, 1)?.reshape((c, count))?;
        let mean = flat.mean_keepdim(D::Minus1)?;
        let centred = flat.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_std = (var.clone() + self.eps)?.sqrt()?.recip()?;
        let scale = inv_std.broadcast_mul(&self.weight.as_tensor().reshape((c, 1))?)?;
        let ys = centred
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.as_tensor().reshape((c, 1))?)?;
        let ys = ys.reshape((c, n, h, w))?.transpose(0, 1)?.contiguous()?;

        self.update_running_stats(&mean.flatten_all()?, &var.flatten_all()?, count)?;
        Ok(ys)
    }

    fn update_running_stats(
        &self,
        mean: &Tensor,
        var: &Tensor,
        count: usize,
    ) -> candle_core::Result<()> {
        let m = self.momentum;
        let unbiased = (var.detach() * (count as f64 / (count - 1) as f64))?;
        let rm = ((self.running_mean.as_tensor().detach() * (1.0 - m))? + (mean.detach() * m)?)?;
        let rv = ((self.running_var.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        let tracked = (self.num_batches_tracked.as_tensor().to_dtype(DType::F64)? + 1.0)?
            .to_dtype(DType::I64)?;
        self.num_batches_tracked.set(&tracked)
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train {
            self.forward_train(xs)
        } else {
            self.forward_eval(xs)
        }
    }
}
