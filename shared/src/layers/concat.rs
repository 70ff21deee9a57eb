//! Channel concatenation of two NCHW tensors as a `CustomOp` (DenseNet grows its input one
//! block output at a time). candle's `cat` backward hands each input a strided channel slice
//! of the gradient, which its add then walks element by element on one thread; here both
//! directions are parallel per-sample block copies and the gradients come out contiguous.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::contiguous_slice;
use super::dtype::float_dispatch;
use super::fill::par_zeros;

/// `cat([a, b], 1)` for NCHW `a` [N, Ca, H, W] and `b` [N, Cb, H, W], differentiable.
pub fn concat_channels(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let cpu_float = |t: &Tensor| {
        super::use_fused_cpu(t)
            && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
    };
    if cpu_float(a) && cpu_float(b) && a.dtype() == b.dtype() && a.rank() == 4 {
        a.contiguous()?.apply_op2(&b.contiguous()?, ConcatChannels)
    } else {
        Tensor::cat(&[a, b], 1)
    }
}

/// Per-sample block sizes (elements) of the two operands: `(Ca·H·W, Cb·H·W, N)`.
fn blocks(la: &Layout, lb: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, ca, h, w) = la.shape().dims4()?;
    let (nb, cb, hb, wb) = lb.shape().dims4()?;
    if (n, h, w) != (nb, hb, wb) {
        candle_core::bail!(
            "channel concat: {:?} and {:?} differ outside the channels",
            la.dims(),
            lb.dims()
        );
    }
    Ok((ca * h * w, cb * h * w, n))
}

fn concat<T: Copy + Send + Sync>(a: &[T], b: &[T], (sa, sb): (usize, usize), out: &mut [T]) {
    out.par_chunks_mut(sa + sb)
        .zip(a.par_chunks(sa.max(1)).zip(b.par_chunks(sb.max(1))))
        .for_each(|(o, (x, y))| {
            o[..sa].copy_from_slice(x);
            o[sa..].copy_from_slice(y);
        });
}

struct ConcatChannels;

impl CustomOp2 for ConcatChannels {
    fn name(&self) -> &'static str {
        "mtpath-concat-channels"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (sa, sb, n) = blocks(l1, l2)?;
        let mut dims = l1.dims().to_vec();
        dims[1] += l2.dims()[1];
        let out = float_dispatch!(
            [s1, s2],
            T => {
                let mut out: Vec<T> = par_zeros(n * (sa + sb));
                concat(
                    contiguous_slice::<T>(s1, l1, "channel concat: input")?,
                    contiguous_slice::<T>(s2, l2, "channel concat: input")?,
                    (sa, sb),
                    &mut out,
                );
                Ok(out)
            },
            "channel concat: f32 or f64 operands of one dtype expected, got {:?}",
            s1.dtype()
        )?;
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = grad
            .contiguous()?
            .apply_op1_no_bwd(&SplitChannels { first: a.dim(1)? })?;
        let (la, lb) = (a.elem_count(), b.elem_count());
        let ga = packed.narrow(0, 0, la)?.reshape(a.dims())?;
        let gb = packed.narrow(0, la, lb)?.reshape(b.dims())?;
        Ok((Some(ga), Some(gb)))
    }
}

/// The inverse of [`ConcatChannels`] for its gradient: `[N, Ca + Cb, H, W]` into the packed
/// contiguous `[ga (N·Ca·H·W), gb (N·Cb·H·W)]`.
struct SplitChannels {
    first: usize,
}

fn split<T: WithDType>(g: &[T], n: usize, (sa, sb): (usize, usize)) -> Vec<T> {
    let mut out: Vec<T> = par_zeros(g.len());
    let (oa, ob) = out.split_at_mut(n * sa);
    oa.par_chunks_mut(sa.max(1))
        .zip(ob.par_chunks_mut(sb.max(1)))
        .zip(g.par_chunks(sa + sb))
        .for_each(|((x, y), src)| {
            x.copy_from_slice(&src[..sa]);
            y.copy_from_slice(&src[sa..]);
        });
    out
}

impl CustomOp1 for SplitChannels {
    fn name(&self) -> &'static str {
        "mtpath-split-channels"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        if self.first > c {
            candle_core::bail!("channel split: {} of {c} channels", self.first);
        }
        let sizes = (self.first * h * w, (c - self.first) * h * w);
        let out = float_dispatch!(
            [s],
            T => Ok(split(
                contiguous_slice::<T>(s, l, "channel split: gradient")?,
                n,
                sizes,
            )),
            "channel split: f32 or f64 expected, got {:?}",
            s.dtype()
        )?;
        Ok((out, Shape::from(n * c * h * w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn concat_and_its_gradients_equal_candle_cat() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 2, 4, 5), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 5, 4, 5), &dev)?)?;
        let ours = concat_channels(a.as_tensor(), b.as_tensor())?;
        let theirs = Tensor::cat(&[a.as_tensor(), b.as_tensor()], 1)?;
        let same = |x: &Tensor, y: &Tensor| -> candle_core::Result<bool> {
            Ok(x.dims() == y.dims() && x.eq(y)?.flatten_all()?.min(0)?.to_scalar::<u8>()? == 1)
        };
        assert!(same(&ours, &theirs)?);
        let r = Tensor::randn(0f64, 1.0, ours.dims(), &dev)?;
        let g1 = ours.mul(&r)?.sum_all()?.backward()?;
        let g2 = theirs.mul(&r)?.sum_all()?.backward()?;
        for v in [&a, &b] {
            let x = g1.get(v.as_tensor()).expect("gradient");
            let y = g2.get(v.as_tensor()).expect("gradient");
            assert!(same(x, y)?);
        }
        assert!(concat_channels(
            a.as_tensor(),
            &Tensor::zeros((3, 1, 4, 6), candle_core::DType::F64, &dev)?
        )
        .is_err());
        Ok(())
    }
}
