//! 2-D convolution (square kernel, groups 1, dilation 1) as a candle `CustomOp2` over the
//! `gemm` crate, with both backward passes as matrix products:
//!
//! - forward: `Y = W · im2col(X)`
//! - input gradient: `dX = col2im(Wᵀ · dY)`
//! - weight gradient: `dW = Σ dY · im2col(X)ᵀ`
//!
//! candle 0.11's CPU backward computes the input gradient with a direct `conv_transpose2d`
//! loop and the weight gradient as one convolution whose "kernel" is the whole output
//! gradient; both are slow, and their long sequential f32 sums cost about three digits on
//! BatchNorm-bias gradients of early layers. 1×1 stride-1 convolutions skip im2col entirely.
//! Stride-1 input gradients are forward convolutions of `dY` with the flipped kernel, and
//! stride-1 "same" convolutions on batches of larger maps skip it too ([`shifted`]); on CPUs
//! with AVX-512F, f32 "same" convolutions of stride 1 or 2 down to 6×6 outputs run direct
//! kernels instead of gemm, and on CPUs with AVX2 + FMA the stride-1 forward on larger maps
//! does ([`direct`]); a single sample splits their work over the threads. Other
//! convolutions of one large map (the 7×7 stem) are unfolded in panels of output rows, one
//! panel a thread at a time, each multiplied in that core's L2.
//!
//! For inference, [`conv2d_cached`] keeps the kernel packed for the direct kernels across
//! passes ([`PackedKernel`]) and [`conv2d_fused`] also applies a folded bias, residual and
//! ReLU to each output plane as it is written; on those CPUs and in WebAssembly its 3×3
//! stride-1 convolutions with 32 channels or more (on maps of 7×7 and up for one sample and
//! for batches on AVX2; 14×14 and 64 output channels for batches with AVX-512, whose direct
//! sums are stronger) run Winograd's F(2×2, 3×3) ([`winograd`]), 16 products per 2×2
//! outputs where the direct sums take 36; for one sample on maps of at most 16 tiles (7×7)
//! its products read the transformed kernel as one stream ([`narrow`]). With AVX-512F the
//! unfolded convolutions' products (1×1 layers, the stem, strided layers) read the kernel
//! packed once instead of gemm's packing on every call ([`packed`]).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::channel_affine::ChannelAffine;
use super::contiguous_slice;
use super::dtype::float_dispatch;
use im2col::{conv_forward_cached, conv_input_grad, conv_weight_grad};

mod direct;
mod im2col;
mod layer;
mod narrow;
mod packed;
mod parts;
mod shifted;
#[cfg(test)]
mod tests;
mod winograd;

pub use layer::{Conv2d, ConvInit};
pub use parts::conv1x1_over_parts;

/// A convolution kernel as the direct forward kernel reads it, packed on the first pass that
/// needs it and kept: for inference, whose kernels do not change between passes. Without it
/// every pass repacks every kernel, which a single sample does not amortise (ResNet-18's 3×3
/// kernels are 44 MB). Tie one to one kernel tensor: it is never checked against the kernel
/// it is used with.
#[derive(Debug, Clone, Default)]
pub struct PackedKernel {
    /// For the planar kernel.
    planar: std::sync::OnceLock<std::sync::Arc<direct::Packed>>,
    /// For the channels-last kernel.
    by_tap: std::sync::OnceLock<std::sync::Arc<direct::ByTap>>,
    /// Winograd's transform of the kernel ([`winograd`]).
    winograd: std::sync::OnceLock<std::sync::Arc<Vec<f32>>>,
    /// The same, packed for the products of maps of few tiles ([`narrow`]).
    winograd_narrow: std::sync::OnceLock<std::sync::Arc<Vec<f32>>>,
    /// `[c_out, c_in·k·k]` packed for the unfolded convolutions' products ([`packed`]), in
    /// the layouts a pass used.
    unfolded: packed::ByLayout,
    /// Winograd's transform packed for [`packed`]'s products, in the layouts a pass used.
    winograd_packed: packed::ByLayout,
}

impl PackedKernel {
    /// The kernel packed for the planar kernel, built by `pack` on first use.
    fn get_or_pack(&self, pack: impl FnOnce() -> direct::Packed) -> std::sync::Arc<direct::Packed> {
        self.planar
            .get_or_init(|| std::sync::Arc::new(pack()))
            .clone()
    }

    /// The kernel packed for the channels-last kernel, built by `pack` on first use.
    fn get_or_pack_by_tap(
        &self,
        pack: impl FnOnce() -> direct::ByTap,
    ) -> std::sync::Arc<direct::ByTap> {
        self.by_tap
            .get_or_init(|| std::sync::Arc::new(pack()))
            .clone()
    }

    /// The kernel's Winograd transform, computed by `transform` on first use.
    fn get_or_transform(&self, transform: impl FnOnce() -> Vec<f32>) -> std::sync::Arc<Vec<f32>> {
        self.winograd
            .get_or_init(|| std::sync::Arc::new(transform()))
            .clone()
    }

    /// The kernel's Winograd transform packed for [`narrow`], computed by `transform` on
    /// first use.
    fn get_or_transform_narrow(
        &self,
        transform: impl FnOnce() -> Vec<f32>,
    ) -> std::sync::Arc<Vec<f32>> {
        self.winograd_narrow
            .get_or_init(|| std::sync::Arc::new(transform()))
            .clone()
    }

    /// Whether a pass has packed the kernel for the planar kernel (it ran).
    #[cfg(test)]
    fn is_packed(&self) -> bool {
        self.planar.get().is_some()
    }

    /// Whether a pass has packed the kernel for the channels-last kernel (it ran).
    #[cfg(test)]
    fn is_packed_by_tap(&self) -> bool {
        self.by_tap.get().is_some()
    }
}

/// Convolution geometry (square kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) c_in: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c_out: usize,
    pub(super) k: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Dims {
    pub(super) fn new(x: &[usize], w: &[usize], g: ConvGeom) -> candle_core::Result<Self> {
        let (&[n, c_in, h, wd], &[c_out, c_in_w, k, k2]) = (x, w) else {
            candle_core::bail!("conv2d expects 4-D input and kernel, got {x:?} and {w:?}");
        };
        if c_in != c_in_w || k != k2 {
            candle_core::bail!("conv2d: input {x:?} does not fit kernel {w:?}");
        }
        if g.stride == 0 || h + 2 * g.padding < k || wd + 2 * g.padding < k {
            candle_core::bail!("conv2d: input {x:?} too small for kernel {w:?} with {g:?}");
        }
        Ok(Self {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            k,
            oh: (h + 2 * g.padding - k) / g.stride + 1,
            ow: (wd + 2 * g.padding - k) / g.stride + 1,
        })
    }

    pub(super) fn rows(&self) -> usize {
        self.c_in * self.k * self.k
    }

    pub(super) fn out_len(&self) -> usize {
        self.oh * self.ow
    }

    pub(super) fn is_pointwise(&self, g: ConvGeom) -> bool {
        self.k == 1 && g.stride == 1 && g.padding == 0
    }
}

/// The forward convolution of CPU storages (f32 or f64), the direct kernels' packing of the
/// kernel taken from (or kept in) `cache` when given: the body of the forward ops below.
fn forward_storage(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    geom: ConvGeom,
    cache: Option<&PackedKernel>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let d = Dims::new(l1.dims(), l2.dims(), geom)?;
    let out = float_dispatch!(
        [s1, s2],
        T => Ok(conv_forward_cached(
            contiguous_slice::<T>(s1, l1, "conv2d: operands")?,
            contiguous_slice::<T>(s2, l2, "conv2d: operands")?,
            &d,
            geom,
            cache,
            None,
        )),
        "{}: f32 or f64 operands of one dtype expected",
        op
    )?;
    Ok((out, Shape::from((d.n, d.c_out, d.oh, d.ow))))
}

/// The convolution `(input, kernel) → output`.
#[derive(Debug, Clone, Copy)]
struct Conv2dOp(ConvGeom);

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "mtpath-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward_storage(self.name(), (s1, l1), (s2, l2), self.0, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // Only the gradients someone can receive: not the input image's (the stem's input
        // gradient is the costliest pass of a ResNet step), nor a frozen kernel's.
        let dx = if x.track_op() {
            Some(conv2d_input_grad(&dy, w, x.dims(), self.0)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(conv2d_weight_grad(x, &dy, w.dims(), self.0)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// The inference convolution `(input, kernel) → output` with the kernel's packing cached.
struct CachedConv2dOp<'a> {
    geom: ConvGeom,
    cache: &'a PackedKernel,
}

impl CustomOp2 for CachedConv2dOp<'_> {
    fn name(&self) -> &'static str {
        "mtpath-conv2d-cached"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward_storage(self.name(), (s1, l1), (s2, l2), self.geom, Some(self.cache))
    }
}

/// The inference convolution with its epilogue fused: `(input, kernel[, residual]) →
/// epilogue(conv + residual)`, each output plane finished while in cache.
struct FusedConv2dOp<'a> {
    geom: ConvGeom,
    cache: &'a PackedKernel,
    epilogue: &'a ChannelAffine,
}

impl FusedConv2dOp<'_> {
    fn run(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), l2.dims(), self.geom)?;
        let out_shape = [d.n, d.c_out, d.oh, d.ow];
        if self.epilogue.channels() != d.c_out {
            candle_core::bail!(
                "fused conv2d: epilogue of {} channels for {} output channels",
                self.epilogue.channels(),
                d.c_out
            );
        }
        let what = "fused conv2d: f32 operands";
        let residual = match residual {
            Some((s3, l3)) => {
                if l3.dims() != out_shape {
                    candle_core::bail!(
                        "fused conv2d: residual {:?} does not match the output {out_shape:?}",
                        l3.dims()
                    );
                }
                Some(contiguous_slice::<f32>(s3, l3, what)?)
            }
            None => None,
        };
        let l = d.out_len();
        let finish = |s: usize, ch: usize, from: usize, values: &mut [f32]| {
            let r = residual.map(|r| &r[(s * d.c_out + ch) * l + from..][..values.len()]);
            self.epilogue.finish_plane(ch, values, r);
        };
        let out = conv_forward_cached(
            contiguous_slice::<f32>(s1, l1, what)?,
            contiguous_slice::<f32>(s2, l2, what)?,
            &d,
            self.geom,
            Some(self.cache),
            Some(&finish),
        );
        Ok((CpuStorage::F32(out), Shape::from(out_shape.to_vec())))
    }
}

impl CustomOp2 for FusedConv2dOp<'_> {
    fn name(&self) -> &'static str {
        "mtpath-conv2d-fused"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for FusedConv2dOp<'_> {
    fn name(&self) -> &'static str {
        "mtpath-conv2d-fused-residual"
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
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// `epilogue(conv2d(xs, w) + residual)` for inference: [`conv2d_cached`] with the bias,
/// residual and ReLU applied to each output plane as it is written (on the planar direct
/// path, while it is copied out of the padded grid) instead of in a pass of their own. Other
/// devices and dtypes run the convolution and then [`ChannelAffine::apply`].
pub fn conv2d_fused(
    xs: &Tensor,
    w: &Tensor,
    geom: ConvGeom,
    cache: &PackedKernel,
    epilogue: &ChannelAffine,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
    let fusable =
        super::use_fused_cpu(xs) && f32_cpu(xs) && f32_cpu(w) && residual.is_none_or(f32_cpu);
    if !fusable {
        let ys = conv2d_cached(xs, w, geom, cache)?;
        return epilogue.apply(&ys, residual);
    }
    let op = FusedConv2dOp {
        geom,
        cache,
        epilogue,
    };
    let (xs, w) = (xs.contiguous()?, w.contiguous()?);
    match residual {
        Some(r) => xs.apply_op3_no_bwd(&w, &r.contiguous()?, &op),
        None => xs.apply_op2_no_bwd(&w, &op),
    }
}

/// `(output gradient, kernel) → input gradient`.
struct ConvInputGrad {
    geom: ConvGeom,
    x_dims: Vec<usize>,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "mtpath-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(&self.x_dims, l2.dims(), self.geom)?;
        if l1.dims() != [d.n, d.c_out, d.oh, d.ow] {
            candle_core::bail!(
                "conv2d backward: gradient shape {:?} does not match",
                l1.dims()
            );
        }
        let g = self.geom;
        let out = float_dispatch!(
            [s1, s2],
            T => Ok(conv_input_grad(
                contiguous_slice::<T>(s1, l1, "conv2d: operands")?,
                contiguous_slice::<T>(s2, l2, "conv2d: operands")?,
                &d,
                g,
            )),
            "{}: f32 or f64 operands of one dtype expected",
            self.name()
        )?;
        Ok((out, Shape::from(self.x_dims.clone())))
    }
}

/// `(input, output gradient) → kernel gradient`.
struct ConvWeightGrad {
    geom: ConvGeom,
    w_dims: Vec<usize>,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "mtpath-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), &self.w_dims, self.geom)?;
        if l2.dims() != [d.n, d.c_out, d.oh, d.ow] {
            candle_core::bail!(
                "conv2d backward: gradient shape {:?} does not match",
                l2.dims()
            );
        }
        let g = self.geom;
        let out = float_dispatch!(
            [s1, s2],
            T => Ok(conv_weight_grad(
                contiguous_slice::<T>(s1, l1, "conv2d: operands")?,
                contiguous_slice::<T>(s2, l2, "conv2d: operands")?,
                &d,
                g,
            )),
            "{}: f32 or f64 operands of one dtype expected",
            self.name()
        )?;
        Ok((out, Shape::from(self.w_dims.clone())))
    }
}

/// The input gradient of [`conv2d`] for an input of shape `x_dims`, given the output
/// gradient `dy` (CPU, f32 or f64, no autograd).
pub fn conv2d_input_grad(
    dy: &Tensor,
    w: &Tensor,
    x_dims: &[usize],
    geom: ConvGeom,
) -> candle_core::Result<Tensor> {
    dy.contiguous()?.apply_op2_no_bwd(
        &w.contiguous()?,
        &ConvInputGrad {
            geom,
            x_dims: x_dims.to_vec(),
        },
    )
}

/// The kernel gradient of [`conv2d`] for a kernel of shape `w_dims`, given the input `x` and
/// the output gradient `dy` (CPU, f32 or f64, no autograd).
pub fn conv2d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    w_dims: &[usize],
    geom: ConvGeom,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(
        &dy.contiguous()?,
        &ConvWeightGrad {
            geom,
            w_dims: w_dims.to_vec(),
        },
    )
}

/// [`conv2d`] for inference: no gradients, and a kernel that stays the same across calls
/// with the same `cache`, whose packing for the direct kernels is kept there.
pub fn conv2d_cached(
    xs: &Tensor,
    w: &Tensor,
    geom: ConvGeom,
    cache: &PackedKernel,
) -> candle_core::Result<Tensor> {
    if super::use_fused_cpu(xs) {
        xs.contiguous()?
            .apply_op2_no_bwd(&w.contiguous()?, &CachedConv2dOp { geom, cache })
    } else {
        xs.conv2d(w, geom.padding, geom.stride, 1, 1)
    }
}

/// Convolution of NCHW `xs` with kernel `w` [out, in, k, k] on the CPU (f32 or f64), with
/// gradients for both. Other devices use candle's `conv2d`.
pub fn conv2d(xs: &Tensor, w: &Tensor, geom: ConvGeom) -> candle_core::Result<Tensor> {
    if super::use_fused_cpu(xs) {
        xs.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp(geom))
    } else {
        xs.conv2d(w, geom.padding, geom.stride, 1, 1)
    }
}
