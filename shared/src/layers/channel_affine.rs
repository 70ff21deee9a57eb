//! Fused per-channel affine + optional residual + optional ReLU for NCHW f32 tensors on the
//! CPU — the epilogue of a BatchNorm-folded convolution (`conv + bias [+ identity] → ReLU`)
//! and DenseNet's unfoldable `norm → ReLU` — in one pass and one allocation instead of two or
//! three. Inference only (no backward). Other devices, dtypes or layouts fall back to the
//! composed candle ops, with the same result.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_slice;
use super::fill::par_zeros;

/// `y = x · scale[c] + shift[c] (+ residual) (then max(0, ·))` over NCHW `x`.
#[derive(Debug, Clone)]
pub struct ChannelAffine {
    scale: Option<Vec<f32>>,
    shift: Vec<f32>,
    relu: bool,
}

impl ChannelAffine {
    /// A per-channel shift (a folded bias), optionally scaled.
    pub fn new(scale: Option<Vec<f32>>, shift: Vec<f32>, relu: bool) -> Self {
        Self { scale, shift, relu }
    }

    /// Whether a ReLU follows.
    pub fn with_relu(&self, relu: bool) -> Self {
        Self {
            relu,
            ..self.clone()
        }
    }

    fn check(&self, l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let dims = l.shape().dims();
        if dims.len() != 4 || dims[1] != self.shift.len() {
            candle_core::bail!(
                "channel affine: input {:?} does not have {} channels",
                dims,
                self.shift.len()
            );
        }
        Ok((dims[0], dims[1], dims[2] * dims[3]))
    }

    /// Number of channels.
    pub(crate) fn channels(&self) -> usize {
        self.shift.len()
    }

    /// Apply in place to `plane`, one plane of channel `ch` (adding `residual`, the same
    /// plane of the residual): a fused convolution's epilogue.
    pub(crate) fn finish_plane(&self, ch: usize, plane: &mut [f32], residual: Option<&[f32]>) {
        let (a, b) = (self.scale.as_ref().map_or(1.0, |s| s[ch]), self.shift[ch]);
        match residual {
            Some(r) => {
                for (d, &rv) in plane.iter_mut().zip(r) {
                    let y = *d * a + b + rv;
                    *d = if self.relu { y.max(0.0) } else { y };
                }
            }
            None => {
                for d in plane.iter_mut() {
                    let y = *d * a + b;
                    *d = if self.relu { y.max(0.0) } else { y };
                }
            }
        }
    }

    fn run(&self, x: &[f32], residual: Option<&[f32]>, n: usize, c: usize, hw: usize) -> Vec<f32> {
        let mut out: Vec<f32> = par_zeros(n * c * hw);
        let work = |(p, dst): (usize, &mut [f32])| {
            let ch = p % c;
            let (a, b) = (self.scale.as_ref().map_or(1.0, |s| s[ch]), self.shift[ch]);
            let src = &x[p * hw..(p + 1) * hw];
            match residual {
                Some(r) => {
                    let r = &r[p * hw..(p + 1) * hw];
                    for ((d, &v), &rv) in dst.iter_mut().zip(src).zip(r) {
                        let y = v * a + b + rv;
                        *d = if self.relu { y.max(0.0) } else { y };
                    }
                }
                None => {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        let y = v * a + b;
                        *d = if self.relu { y.max(0.0) } else { y };
                    }
                }
            }
        };
        if n * c * hw >= 1 << 15 {
            out.par_chunks_mut(hw).enumerate().for_each(work);
        } else {
            out.chunks_mut(hw).enumerate().for_each(work);
        }
        out
    }

    /// Apply to `x` (and add `residual`, same shape) — fused on the CPU for contiguous f32.
    pub fn apply(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let fusable = x.device().is_cpu()
            && x.dtype() == DType::F32
            && x.rank() == 4
            && residual.is_none_or(|r| r.dtype() == DType::F32 && r.dims() == x.dims());
        if fusable {
            // `contiguous` is free for the usual (contiguous) case.
            let x = x.contiguous()?;
            return match residual {
                Some(r) => x.apply_op2_no_bwd(&r.contiguous()?, self),
                None => x.apply_op1_no_bwd(self),
            };
        }
        let c = self.shift.len();
        let shift =
            Tensor::from_slice(&self.shift, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?;
        let mut y = match &self.scale {
            Some(s) => x.broadcast_mul(
                &Tensor::from_slice(s, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?,
            )?,
            None => x.clone(),
        }
        .broadcast_add(&shift)?;
        if let Some(r) = residual {
            y = (y + r)?;
        }
        if self.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = self.check(l)?;
        let x = contiguous_slice::<f32>(s, l, "channel affine: input")?;
        Ok((
            CpuStorage::F32(self.run(x, None, n, c, hw)),
            l.shape().clone(),
        ))
    }
}

impl CustomOp2 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = self.check(l1)?;
        let x = contiguous_slice::<f32>(s1, l1, "channel affine: input")?;
        let r = contiguous_slice::<f32>(s2, l2, "channel affine: residual")?;
        Ok((
            CpuStorage::F32(self.run(x, Some(r), n, c, hw)),
            l1.shape().clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_affine_equals_composed_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let scale = vec![0.5f32, -2.0, 1.5];
        let shift = vec![0.1f32, 0.2, -0.3];
        let s = Tensor::from_slice(&scale, (1, 3, 1, 1), &dev).unwrap();
        let b = Tensor::from_slice(&shift, (1, 3, 1, 1), &dev).unwrap();
        let composed = x.broadcast_mul(&s).unwrap().broadcast_add(&b).unwrap();
        for relu in [false, true] {
            for res in [None, Some(&r)] {
                let op = ChannelAffine::new(Some(scale.clone()), shift.clone(), relu);
                let got = op.apply(&x, res).unwrap();
                let mut want = composed.clone();
                if let Some(r) = res {
                    want = (want + r).unwrap();
                }
                if relu {
                    want = want.relu().unwrap();
                }
                let diff = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    diff < 1e-6,
                    "relu {relu} residual {}: {diff}",
                    res.is_some()
                );
            }
        }
        // A strided (transposed) input gives the same result as its contiguous copy.
        let xt = x.transpose(2, 3).unwrap();
        let op = ChannelAffine::new(None, shift.clone(), true);
        let a = op.apply(&xt, None).unwrap();
        let b = op.apply(&xt.contiguous().unwrap(), None).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert!(op
            .apply(
                &Tensor::zeros((1, 2, 2, 2), DType::F32, &dev).unwrap(),
                None
            )
            .is_err());
    }
}
