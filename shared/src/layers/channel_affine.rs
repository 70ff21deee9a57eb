//! Fused per-channel affine + optional residual + optional ReLU for NCHW f32 tensors on the
//! CPU — the epilogue of a BatchNorm-folded convolution (`conv + bias [+ identity] → ReLU`)
//! and DenseNet's unfoldable `norm → ReLU` — in one pass and one allocation instead of two or
//! three. Inference only (no backward). Other devices, dtypes or layouts fall back to the
//! composed candle ops, with the same result.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::contiguous_slice;

/// Inputs of at least this many elements are processed on the thread pool.
const PARALLEL_ELEMENTS: usize = 1 << 15;

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

    /// Channel `ch`'s `(scale, shift)` and whether a ReLU follows: `y = relu?(x · scale +
    /// shift)`, computed as [`Self::apply_parts`] does (a product, then a sum, no fused
    /// multiply-add).
    pub(crate) fn coefficients(&self, ch: usize) -> (f32, f32, bool) {
        let a = self.scale.as_ref().map_or(1.0, |s| s[ch]);
        (a, self.shift[ch], self.relu)
    }

    /// Apply in place to `plane`, one plane of channel `ch` (adding `residual`, the same
    /// plane of the residual): a fused convolution's epilogue.
    pub(crate) fn finish_plane(&self, ch: usize, plane: &mut [f32], residual: Option<&[f32]>) {
        let (a, b) = (self.scale.as_ref().map_or(1.0, |s| s[ch]), self.shift[ch]);
        rows::in_place(plane, residual, a, b, self.relu);
    }

    fn run(&self, x: &[f32], residual: Option<&[f32]>, n: usize, c: usize, hw: usize) -> Vec<f32> {
        let len = n * c * hw;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let planes = &mut out.spare_capacity_mut()[..len];
        let work = |(p, dst): (usize, &mut [MaybeUninit<f32>])| {
            let ch = p % c;
            let (a, b) = (self.scale.as_ref().map_or(1.0, |s| s[ch]), self.shift[ch]);
            let src = &x[p * hw..(p + 1) * hw];
            let res = residual.map(|r| &r[p * hw..(p + 1) * hw]);
            rows::copy(dst, src, res, a, b, self.relu);
        };
        if len >= PARALLEL_ELEMENTS {
            planes.par_chunks_mut(hw).enumerate().for_each(work);
        } else {
            planes.chunks_mut(hw).enumerate().for_each(work);
        }
        // SAFETY: the planes partition `0..len` and `rows::copy` writes every element of its
        // plane (a panic inside propagates before this line, leaving the vector empty).
        unsafe { out.set_len(len) };
        out
    }

    /// `self` applied to the channel concatenation of `parts` (NCHW, equal N, H and W), then,
    /// when `pool2x2`, [`avg_pool2x2`](super::avg_pool2x2): DenseNet's `norm → ReLU` of a dense
    /// layer's input (the block's features so far) and of a transition's (then its pool,
    /// moved before the 1×1 convolution, which it commutes with, so that the convolution
    /// runs on a quarter of the positions). On the CPU for f32 it reads each part where it
    /// lies and writes the result once: no concatenation (DenseNet-121 copied its growing
    /// input 58 times a pass) and no separate pool (three candle passes). Elsewhere it is
    /// `cat`, [`apply`](Self::apply) and the pool.
    pub fn apply_parts(&self, parts: &[Tensor], pool2x2: bool) -> candle_core::Result<Tensor> {
        let Some(first) = parts.first() else {
            candle_core::bail!("channel affine: no parts to concatenate");
        };
        let (n, _, h, w) = first.dims4()?;
        let fusable = parts
            .iter()
            .all(|t| super::use_fused_cpu(t) && t.dtype() == DType::F32 && t.is_contiguous());
        if !fusable {
            let x = Tensor::cat(parts, 1)?;
            let y = self.apply(&x, None)?;
            return if pool2x2 {
                super::avg_pool2x2(&y)
            } else {
                Ok(y)
            };
        }
        with_channel_parts(parts, "channel affine", |input| {
            let c = input.channels();
            if c != self.shift.len() {
                candle_core::bail!(
                    "channel affine: {c} channels in the parts for {} in the affine",
                    self.shift.len()
                );
            }
            let (oh, ow) = if pool2x2 { (h / 2, w / 2) } else { (h, w) };
            if oh == 0 || ow == 0 {
                candle_core::bail!("2x2 average pool needs at least 2x2 input, got {h}x{w}");
            }
            let hw = h * w;
            let plane = |p: usize, dst: &mut [MaybeUninit<f32>]| {
                let (s, ch) = (p / c, p % c);
                let src = input.plane(s, ch);
                let (a, b) = (self.scale.as_ref().map_or(1.0, |v| v[ch]), self.shift[ch]);
                let f = |v: f32| {
                    let y = v * a + b;
                    if self.relu {
                        y.max(0.0)
                    } else {
                        y
                    }
                };
                if !pool2x2 {
                    rows::copy(dst, src, None, a, b, self.relu);
                    return;
                }
                // avg_pool2x2's order: pairs along a row, then the two rows, then × ¼.
                for (oy, row) in dst.chunks_mut(ow).enumerate() {
                    let (r0, r1) = (&src[2 * oy * w..], &src[(2 * oy + 1) * w..]);
                    for (ox, d) in row.iter_mut().enumerate() {
                        let top = f(r0[2 * ox]) + f(r0[2 * ox + 1]);
                        let bottom = f(r1[2 * ox]) + f(r1[2 * ox + 1]);
                        d.write((top + bottom) * 0.25);
                    }
                }
            };
            let len = n * c * oh * ow;
            let mut out: Vec<f32> = Vec::with_capacity(len);
            let planes = &mut out.spare_capacity_mut()[..len];
            if n * c * hw >= PARALLEL_ELEMENTS {
                planes
                    .par_chunks_mut(oh * ow)
                    .enumerate()
                    .for_each(|(p, d)| plane(p, d));
            } else {
                planes
                    .chunks_mut(oh * ow)
                    .enumerate()
                    .for_each(|(p, d)| plane(p, d));
            }
            // SAFETY: the planes partition `0..len` and `plane` writes every element of its
            // plane (a panic inside propagates before this line, leaving the vector empty).
            unsafe { out.set_len(len) };
            Tensor::from_vec(out, (n, c, oh, ow), first.device())
        })
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

/// The per-plane loops: `y = x · a + b (+ r)`, then `max(0, ·)`. On x86-64 with AVX2
/// (runtime-detected) the same loops compiled for it: the crate targets baseline x86-64,
/// where they ran 4 lanes wide (SSE). No fused multiply-add in either, so both give the same
/// bits.
mod rows {
    use std::mem::MaybeUninit;

    /// `plane = plane · a + b (+ residual)`, ReLU'd when `relu`.
    pub(super) fn in_place(
        plane: &mut [f32],
        residual: Option<&[f32]>,
        a: f32,
        b: f32,
        relu: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2::in_place(plane, residual, a, b, relu) };
        }
        in_place_any(plane, residual, a, b, relu)
    }

    /// `dst = src · a + b (+ residual)`, ReLU'd when `relu` (every element of `dst` written).
    pub(super) fn copy(
        dst: &mut [MaybeUninit<f32>],
        src: &[f32],
        residual: Option<&[f32]>,
        a: f32,
        b: f32,
        relu: bool,
    ) {
        assert_eq!(dst.len(), src.len());
        assert!(residual.is_none_or(|r| r.len() == src.len()));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2::copy(dst, src, residual, a, b, relu) };
        }
        copy_any(dst, src, residual, a, b, relu)
    }

    #[inline(always)]
    fn in_place_any(plane: &mut [f32], residual: Option<&[f32]>, a: f32, b: f32, relu: bool) {
        match (residual, relu) {
            (Some(r), true) => plane
                .iter_mut()
                .zip(r)
                .for_each(|(d, &rv)| *d = (*d * a + b + rv).max(0.0)),
            (Some(r), false) => plane
                .iter_mut()
                .zip(r)
                .for_each(|(d, &rv)| *d = *d * a + b + rv),
            (None, true) => plane.iter_mut().for_each(|d| *d = (*d * a + b).max(0.0)),
            (None, false) => plane.iter_mut().for_each(|d| *d = *d * a + b),
        }
    }

    #[inline(always)]
    fn copy_any(
        dst: &mut [MaybeUninit<f32>],
        src: &[f32],
        residual: Option<&[f32]>,
        a: f32,
        b: f32,
        relu: bool,
    ) {
        match (residual, relu) {
            (Some(r), true) => dst
                .iter_mut()
                .zip(src.iter().zip(r))
                .for_each(|(d, (&v, &rv))| _ = d.write((v * a + b + rv).max(0.0))),
            (Some(r), false) => dst
                .iter_mut()
                .zip(src.iter().zip(r))
                .for_each(|(d, (&v, &rv))| _ = d.write(v * a + b + rv)),
            (None, true) => dst
                .iter_mut()
                .zip(src)
                .for_each(|(d, &v)| _ = d.write((v * a + b).max(0.0))),
            (None, false) => dst
                .iter_mut()
                .zip(src)
                .for_each(|(d, &v)| _ = d.write(v * a + b)),
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use super::*;

        #[target_feature(enable = "avx2")]
        pub(super) fn in_place(
            plane: &mut [f32],
            residual: Option<&[f32]>,
            a: f32,
            b: f32,
            relu: bool,
        ) {
            in_place_any(plane, residual, a, b, relu)
        }

        #[target_feature(enable = "avx2")]
        pub(super) fn copy(
            dst: &mut [MaybeUninit<f32>],
            src: &[f32],
            residual: Option<&[f32]>,
            a: f32,
            b: f32,
            relu: bool,
        ) {
            copy_any(dst, src, residual, a, b, relu)
        }
    }
}

/// The parts of a channel concatenation (NCHW f32 on the CPU, contiguous, equal N, H and W)
/// read where they lie: no concatenation is made ([`with_channel_parts`]).
pub(crate) struct ChannelParts<'a> {
    /// Each part's values.
    slices: Vec<&'a [f32]>,
    /// Each part's channels.
    counts: Vec<usize>,
    /// For each channel of the concatenation: (part, channel within the part).
    sources: Vec<(usize, usize)>,
    /// Positions of a plane.
    hw: usize,
}

impl ChannelParts<'_> {
    /// Channels of the concatenation.
    pub(crate) fn channels(&self) -> usize {
        self.sources.len()
    }

    /// Sample `s`'s plane of the concatenation's channel `ch`.
    pub(crate) fn plane(&self, s: usize, ch: usize) -> &[f32] {
        let (j, i) = self.sources[ch];
        &self.slices[j][(s * self.counts[j] + i) * self.hw..][..self.hw]
    }
}

/// `f` on `parts` read in place ([`ChannelParts`]), their storage held for the call: DenseNet's
/// norm over a block's features ([`ChannelAffine::apply_parts`], and the fused pass of
/// [`crate::layers::conv::conv1x1_over_parts`]). The parts must be contiguous f32 on the
/// CPU; parts that differ outside the channels are an error naming both shapes, `what` its
/// prefix.
pub(crate) fn with_channel_parts<R>(
    parts: &[Tensor],
    what: &str,
    f: impl FnOnce(&ChannelParts) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let Some(first) = parts.first() else {
        candle_core::bail!("{what}: no parts to concatenate");
    };
    let (n, _, h, w) = first.dims4()?;
    let mut counts = Vec::with_capacity(parts.len());
    for t in parts {
        let (pn, pc, ph, pw) = t.dims4()?;
        if (pn, ph, pw) != (n, h, w) {
            candle_core::bail!(
                "{what}: parts {:?} and {:?} differ outside the channels",
                first.dims(),
                t.dims()
            );
        }
        counts.push(pc);
    }
    let guards: Vec<_> = parts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(parts.len());
    for (storage, layout) in &guards {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("{what}: a part left the CPU");
        };
        slices.push(contiguous_slice::<f32>(
            cpu,
            layout,
            &format!("{what}: part"),
        )?);
    }
    let sources = counts
        .iter()
        .enumerate()
        .flat_map(|(j, &cj)| (0..cj).map(move |i| (j, i)))
        .collect();
    f(&ChannelParts {
        slices,
        counts,
        sources,
        hw: h * w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_affine_equals_composed_ops() {
        let dev = Device::Cpu;
        let scale = vec![0.5f32, -2.0, 1.5];
        let shift = vec![0.1f32, 0.2, -0.3];
        let s = Tensor::from_slice(&scale, (1, 3, 1, 1), &dev).unwrap();
        let b = Tensor::from_slice(&shift, (1, 3, 1, 1), &dev).unwrap();
        // The second shape is above PARALLEL_ELEMENTS: the planes run on the pool.
        for (shape, relu) in [(2, 5, 7), (2, 80, 80)]
            .into_iter()
            .flat_map(|s| [(s, false), (s, true)])
        {
            let (n, h, w) = shape;
            let x = Tensor::randn(0f32, 1.0, (n, 3, h, w), &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (n, 3, h, w), &dev).unwrap();
            let composed = x.broadcast_mul(&s).unwrap().broadcast_add(&b).unwrap();
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
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
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

    /// `apply_parts` against `cat`, `apply` and `avg_pool2x2` composed: odd and even maps,
    /// a batch, parts of one and several channels, with and without the pool.
    #[test]
    fn parts_equal_concatenation_then_affine_then_pool() {
        let dev = Device::Cpu;
        for (n, h, w, widths) in [
            (1, 6, 6, vec![3usize]),
            (2, 5, 7, vec![2, 1, 3]),
            (3, 8, 4, vec![1, 4]),
            // Enough elements for the parallel path.
            (2, 32, 32, vec![16, 8, 8]),
        ] {
            let c: usize = widths.iter().sum();
            let parts: Vec<Tensor> = widths
                .iter()
                .map(|&ci| Tensor::randn(0f32, 1.0, (n, ci, h, w), &dev).unwrap())
                .collect();
            let scale: Vec<f32> = (0..c).map(|i| 0.5 + 0.25 * i as f32).collect();
            let shift: Vec<f32> = (0..c).map(|i| 0.3 - 0.1 * i as f32).collect();
            for relu in [false, true] {
                let op = ChannelAffine::new(Some(scale.clone()), shift.clone(), relu);
                let y = op.apply(&Tensor::cat(&parts, 1).unwrap(), None).unwrap();
                for pool in [false, true] {
                    let want = if pool {
                        crate::layers::avg_pool2x2(&y).unwrap()
                    } else {
                        y.clone()
                    };
                    let got = op.apply_parts(&parts, pool).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    assert_eq!(
                        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        "n {n} {h}x{w} parts {widths:?} relu {relu} pool {pool}"
                    );
                }
            }
        }
        // Channels that do not add up, and parts of different sizes, are errors.
        let op = ChannelAffine::new(None, vec![0.0; 3], true);
        let a = Tensor::zeros((1, 2, 4, 4), DType::F32, &dev).unwrap();
        assert!(op.apply_parts(std::slice::from_ref(&a), false).is_err());
        let b = Tensor::zeros((1, 1, 2, 4), DType::F32, &dev).unwrap();
        assert!(op.apply_parts(&[a, b], false).is_err());
        assert!(op.apply_parts(&[], false).is_err());
    }
}
