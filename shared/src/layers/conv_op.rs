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

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::contiguous_slice;

/// Upper bound on the elements of one im2col buffer; larger batches are processed in chunks.
const COL_BUDGET: usize = 1 << 23;

/// Convolution geometry (square kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    fn new(x: &[usize], w: &[usize], g: ConvGeom) -> candle_core::Result<Self> {
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

    fn rows(&self) -> usize {
        self.c_in * self.k * self.k
    }

    fn out_len(&self) -> usize {
        self.oh * self.ow
    }

    fn is_pointwise(&self, g: ConvGeom) -> bool {
        self.k == 1 && g.stride == 1 && g.padding == 0
    }

    /// Samples per chunk so that one im2col buffer stays under [`COL_BUDGET`].
    fn chunk(&self) -> usize {
        (COL_BUDGET / (self.rows() * self.out_len()).max(1)).clamp(1, self.n.max(1))
    }
}

fn parallelism() -> gemm::Parallelism {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = candle_core::utils::get_num_threads();
        if threads > 1 {
            return gemm::Parallelism::Rayon(threads);
        }
    }
    gemm::Parallelism::None
}

/// Row-major strides for an `rows × cols` matrix.
#[derive(Clone, Copy)]
struct Mat<P> {
    ptr: P,
    rs: isize,
    cs: isize,
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`.
#[allow(clippy::too_many_arguments)]
fn matmul<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: Mat<*mut T>,
    accumulate: bool,
    lhs: Mat<*const T>,
    rhs: Mat<*const T>,
) {
    // SAFETY: callers pass pointers into live buffers whose extents cover every (row, col)
    // reached with the given strides; dst does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs,
            dst.rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// The output positions `o` in `0..o_len` whose input position `o·stride + k − pad` falls
/// inside `0..n`, as a range (they are contiguous).
fn valid_outputs(o_len: usize, stride: usize, k: usize, pad: usize, n: usize) -> (usize, usize) {
    // o·s + k − p ≥ 0  ⇔  o ≥ ⌈(p − k)/s⌉ ;  o·s + k − p < n  ⇔  o < ⌈(n + p − k)/s⌉.
    let lo = if pad > k {
        (pad - k).div_ceil(stride)
    } else {
        0
    };
    let hi = if n + pad > k {
        (n + pad - k).div_ceil(stride)
    } else {
        0
    };
    (lo.min(o_len), hi.min(o_len).max(lo.min(o_len)))
}

/// Unfold samples `x[n0..n0+nc]` into `col` [rows, nc·L] (row = (ci·k + ky)·k + kx).
fn im2col<T: WithDType>(x: &[T], d: &Dims, g: ConvGeom, n0: usize, nc: usize, col: &mut [T]) {
    let l = d.out_len();
    let width = nc * l;
    col.par_chunks_mut(width)
        .enumerate()
        .for_each(|(row, dst)| {
            let ci = row / (d.k * d.k);
            let ky = (row / d.k) % d.k;
            let kx = row % d.k;
            let (x_lo, x_hi) = valid_outputs(d.ow, g.stride, kx, g.padding, d.w);
            let (y_lo, y_hi) = valid_outputs(d.oh, g.stride, ky, g.padding, d.h);
            for s in 0..nc {
                let plane = &x[((n0 + s) * d.c_in + ci) * d.h * d.w..][..d.h * d.w];
                let out = &mut dst[s * l..(s + 1) * l];
                out[..y_lo * d.ow].fill(T::zero());
                out[y_hi * d.ow..].fill(T::zero());
                for oy in y_lo..y_hi {
                    let y = oy * g.stride + ky - g.padding;
                    let row_out = &mut out[oy * d.ow..(oy + 1) * d.ow];
                    let src = &plane[y * d.w..(y + 1) * d.w];
                    row_out[..x_lo].fill(T::zero());
                    row_out[x_hi..].fill(T::zero());
                    if x_lo == x_hi {
                        continue;
                    }
                    let first = x_lo * g.stride + kx - g.padding;
                    if g.stride == 1 {
                        row_out[x_lo..x_hi].copy_from_slice(&src[first..first + (x_hi - x_lo)]);
                    } else {
                        for (o, xx) in row_out[x_lo..x_hi]
                            .iter_mut()
                            .zip((first..).step_by(g.stride))
                        {
                            *o = src[xx];
                        }
                    }
                }
            }
        });
}

/// Fold `col` [rows, nc·L] back, adding into `dx[n0..n0+nc]` (the adjoint of [`im2col`]).
fn col2im<T: WithDType>(col: &[T], d: &Dims, g: ConvGeom, n0: usize, nc: usize, dx: &mut [T]) {
    let l = d.out_len();
    let plane_len = d.h * d.w;
    let kk = d.k * d.k;
    let width = nc * l;
    dx[n0 * d.c_in * plane_len..(n0 + nc) * d.c_in * plane_len]
        .par_chunks_mut(plane_len)
        .enumerate()
        .for_each(|(p, plane)| {
            let s = p / d.c_in;
            let ci = p % d.c_in;
            for kidx in 0..kk {
                let (ky, kx) = (kidx / d.k, kidx % d.k);
                let src = &col[(ci * kk + kidx) * width + s * l..][..l];
                let (x_lo, x_hi) = valid_outputs(d.ow, g.stride, kx, g.padding, d.w);
                let (y_lo, y_hi) = valid_outputs(d.oh, g.stride, ky, g.padding, d.h);
                if x_lo == x_hi {
                    continue;
                }
                let first = x_lo * g.stride + kx;
                for oy in y_lo..y_hi {
                    let y = oy * g.stride + ky - g.padding;
                    let dst_row = &mut plane[y * d.w..(y + 1) * d.w];
                    let src_row = &src[oy * d.ow + x_lo..oy * d.ow + x_hi];
                    if g.stride == 1 {
                        let dst =
                            &mut dst_row[first - g.padding..first - g.padding + src_row.len()];
                        for (a, b) in dst.iter_mut().zip(src_row) {
                            *a += *b;
                        }
                    } else {
                        for (xx, b) in (first - g.padding..).step_by(g.stride).zip(src_row) {
                            dst_row[xx] += *b;
                        }
                    }
                }
            }
        });
}

/// Copy `t[n0..n0+nc]` ([N, C, L]) into channel-major `[C, nc·L]`, or back with `to_nchw`.
fn transpose_chunk<T: WithDType>(
    src: &[T],
    dst: &mut [T],
    c: usize,
    l: usize,
    nc: usize,
    to_nchw: bool,
) {
    for s in 0..nc {
        for ch in 0..c {
            let a = (s * c + ch) * l;
            let b = ch * nc * l + s * l;
            if to_nchw {
                dst[a..a + l].copy_from_slice(&src[b..b + l]);
            } else {
                dst[b..b + l].copy_from_slice(&src[a..a + l]);
            }
        }
    }
}

fn conv_forward<T: WithDType>(x: &[T], w: &[T], d: &Dims, g: ConvGeom) -> Vec<T> {
    let l = d.out_len();
    let mut y = vec![T::zero(); d.n * d.c_out * l];
    let rows = d.rows();
    let w_mat = Mat {
        ptr: w.as_ptr(),
        rs: rows as isize,
        cs: 1,
    };
    if d.is_pointwise(g) {
        for s in 0..d.n {
            let xs = &x[s * d.c_in * l..];
            let ys = &mut y[s * d.c_out * l..];
            matmul(
                d.c_out,
                l,
                rows,
                Mat {
                    ptr: ys.as_mut_ptr(),
                    rs: l as isize,
                    cs: 1,
                },
                false,
                w_mat,
                Mat {
                    ptr: xs.as_ptr(),
                    rs: l as isize,
                    cs: 1,
                },
            );
        }
        return y;
    }
    let chunk = d.chunk();
    let mut col = vec![T::zero(); rows * chunk * l];
    let mut out = vec![T::zero(); d.c_out * chunk * l];
    for n0 in (0..d.n).step_by(chunk) {
        let nc = chunk.min(d.n - n0);
        let width = nc * l;
        im2col(x, d, g, n0, nc, &mut col[..rows * width]);
        matmul(
            d.c_out,
            width,
            rows,
            Mat {
                ptr: out.as_mut_ptr(),
                rs: width as isize,
                cs: 1,
            },
            false,
            w_mat,
            Mat {
                ptr: col.as_ptr(),
                rs: width as isize,
                cs: 1,
            },
        );
        transpose_chunk(
            &out[..d.c_out * width],
            &mut y[n0 * d.c_out * l..],
            d.c_out,
            l,
            nc,
            true,
        );
    }
    y
}

fn conv_input_grad<T: WithDType>(dy: &[T], w: &[T], d: &Dims, g: ConvGeom) -> Vec<T> {
    let l = d.out_len();
    let rows = d.rows();
    let mut dx = vec![T::zero(); d.n * d.c_in * d.h * d.w];
    // Wᵀ as a (rows × c_out) view of the row-major (c_out × rows) kernel.
    let wt = Mat {
        ptr: w.as_ptr(),
        rs: 1,
        cs: rows as isize,
    };
    if d.is_pointwise(g) {
        for s in 0..d.n {
            matmul(
                rows,
                l,
                d.c_out,
                Mat {
                    ptr: dx[s * d.c_in * l..].as_mut_ptr(),
                    rs: l as isize,
                    cs: 1,
                },
                false,
                wt,
                Mat {
                    ptr: dy[s * d.c_out * l..].as_ptr(),
                    rs: l as isize,
                    cs: 1,
                },
            );
        }
        return dx;
    }
    let chunk = d.chunk();
    let mut dy_cm = vec![T::zero(); d.c_out * chunk * l];
    let mut col = vec![T::zero(); rows * chunk * l];
    for n0 in (0..d.n).step_by(chunk) {
        let nc = chunk.min(d.n - n0);
        let width = nc * l;
        transpose_chunk(&dy[n0 * d.c_out * l..], &mut dy_cm, d.c_out, l, nc, false);
        matmul(
            rows,
            width,
            d.c_out,
            Mat {
                ptr: col.as_mut_ptr(),
                rs: width as isize,
                cs: 1,
            },
            false,
            wt,
            Mat {
                ptr: dy_cm.as_ptr(),
                rs: width as isize,
                cs: 1,
            },
        );
        col2im(&col[..rows * width], d, g, n0, nc, &mut dx);
    }
    dx
}

fn conv_weight_grad<T: WithDType>(x: &[T], dy: &[T], d: &Dims, g: ConvGeom) -> Vec<T> {
    let l = d.out_len();
    let rows = d.rows();
    let mut dw = vec![T::zero(); d.c_out * rows];
    let dw_mat = Mat {
        ptr: dw.as_mut_ptr(),
        rs: rows as isize,
        cs: 1,
    };
    if d.is_pointwise(g) {
        for s in 0..d.n {
            // dW += dY_s (c_out × L) · X_sᵀ (L × c_in)
            matmul(
                d.c_out,
                rows,
                l,
                dw_mat,
                s > 0,
                Mat {
                    ptr: dy[s * d.c_out * l..].as_ptr(),
                    rs: l as isize,
                    cs: 1,
                },
                Mat {
                    ptr: x[s * d.c_in * l..].as_ptr(),
                    rs: 1,
                    cs: l as isize,
                },
            );
        }
        return dw;
    }
    let chunk = d.chunk();
    let mut dy_cm = vec![T::zero(); d.c_out * chunk * l];
    let mut col = vec![T::zero(); rows * chunk * l];
    for (i, n0) in (0..d.n).step_by(chunk).enumerate() {
        let nc = chunk.min(d.n - n0);
        let width = nc * l;
        transpose_chunk(&dy[n0 * d.c_out * l..], &mut dy_cm, d.c_out, l, nc, false);
        im2col(x, d, g, n0, nc, &mut col[..rows * width]);
        matmul(
            d.c_out,
            rows,
            width,
            dw_mat,
            i > 0,
            Mat {
                ptr: dy_cm.as_ptr(),
                rs: width as isize,
                cs: 1,
            },
            Mat {
                ptr: col.as_ptr(),
                rs: 1,
                cs: width as isize,
            },
        );
    }
    dw
}

/// Dispatch a binary CPU kernel on f32 or f64 storage.
fn dispatch2(
    s1: &CpuStorage,
    s2: &CpuStorage,
    name: &str,
    f32k: impl FnOnce() -> candle_core::Result<Vec<f32>>,
    f64k: impl FnOnce() -> candle_core::Result<Vec<f64>>,
) -> candle_core::Result<CpuStorage> {
    match (s1, s2) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => Ok(CpuStorage::F32(f32k()?)),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => Ok(CpuStorage::F64(f64k()?)),
        _ => candle_core::bail!("{name}: f32 or f64 operands of one dtype expected"),
    }
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
        let d = Dims::new(l1.dims(), l2.dims(), self.0)?;
        let out = dispatch2(
            s1,
            s2,
            self.name(),
            || {
                Ok(conv_forward(
                    contiguous_slice::<f32>(s1, l1, "conv2d: operands")?,
                    contiguous_slice::<f32>(s2, l2, "conv2d: operands")?,
                    &d,
                    self.0,
                ))
            },
            || {
                Ok(conv_forward(
                    contiguous_slice::<f64>(s1, l1, "conv2d: operands")?,
                    contiguous_slice::<f64>(s2, l2, "conv2d: operands")?,
                    &d,
                    self.0,
                ))
            },
        )?;
        Ok((out, Shape::from((d.n, d.c_out, d.oh, d.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(
            w,
            &ConvInputGrad {
                geom: self.0,
                x_dims: x.dims().to_vec(),
            },
        )?;
        let dw = x.apply_op2_no_bwd(
            &dy,
            &ConvWeightGrad {
                geom: self.0,
                w_dims: w.dims().to_vec(),
            },
        )?;
        Ok((Some(dx), Some(dw)))
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
        let out = dispatch2(
            s1,
            s2,
            self.name(),
            || {
                Ok(conv_input_grad(
                    contiguous_slice::<f32>(s1, l1, "conv2d: operands")?,
                    contiguous_slice::<f32>(s2, l2, "conv2d: operands")?,
                    &d,
                    g,
                ))
            },
            || {
                Ok(conv_input_grad(
                    contiguous_slice::<f64>(s1, l1, "conv2d: operands")?,
                    contiguous_slice::<f64>(s2, l2, "conv2d: operands")?,
                    &d,
                    g,
                ))
            },
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
        let out = dispatch2(
            s1,
            s2,
            self.name(),
            || {
                Ok(conv_weight_grad(
                    contiguous_slice::<f32>(s1, l1, "conv2d: operands")?,
                    contiguous_slice::<f32>(s2, l2, "conv2d: operands")?,
                    &d,
                    g,
                ))
            },
            || {
                Ok(conv_weight_grad(
                    contiguous_slice::<f64>(s1, l1, "conv2d: operands")?,
                    contiguous_slice::<f64>(s2, l2, "conv2d: operands")?,
                    &d,
                    g,
                ))
            },
        )?;
        Ok((out, Shape::from(self.w_dims.clone())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn valid_output_ranges_match_a_direct_scan() {
        for n in 1..9 {
            for k in 0..7 {
                for pad in 0..4 {
                    for stride in 1..4 {
                        for o_len in [0usize, 2, 12] {
                            let inside: Vec<usize> = (0..o_len)
                                .filter(|&o| {
                                    let x = (o * stride + k) as isize - pad as isize;
                                    x >= 0 && x < n as isize
                                })
                                .collect();
                            let (lo, hi) = valid_outputs(o_len, stride, k, pad, n);
                            assert_eq!(
                                (lo..hi).collect::<Vec<_>>(),
                                inside,
                                "n{n} k{k} p{pad} s{stride} o{o_len}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Forward equals candle's own conv2d in f64 for every geometry ResNet/DenseNet use.
    #[test]
    fn forward_matches_candle_conv2d() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (cin, cout, k, stride, pad, h) in [
            (3, 8, 7, 2, 3, 17),
            (4, 6, 3, 1, 1, 9),
            (4, 6, 3, 2, 1, 10),
            (5, 7, 1, 1, 0, 6),
            (5, 7, 1, 2, 0, 7),
        ] {
            let x = Tensor::randn(0f64, 1.0, (3, cin, h, h + 1), &dev)?;
            let w = Tensor::randn(0f64, 1.0, (cout, cin, k, k), &dev)?;
            let ours = conv2d(
                &x,
                &w,
                ConvGeom {
                    stride,
                    padding: pad,
                },
            )?;
            let theirs = x.conv2d(&w, pad, stride, 1, 1)?;
            let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-10, "k{k} s{stride} p{pad}: diff {diff}");
        }
        Ok(())
    }

    /// Both gradients against central finite differences, in f64.
    #[test]
    fn gradients_match_finite_differences() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (k, stride, pad) in [(3, 2, 1), (1, 1, 0), (1, 2, 0), (3, 1, 1)] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, 6, 5), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f64, 1.0, (4, 3, k, k), &dev)?)?;
            let geom = ConvGeom {
                stride,
                padding: pad,
            };
            let y0 = conv2d(x.as_tensor(), w.as_tensor(), geom)?;
            let r = Tensor::randn(0f64, 1.0, y0.dims(), &dev)?;
            let f = |x: &Tensor, w: &Tensor| -> candle_core::Result<f64> {
                conv2d(x, w, geom)?.mul(&r)?.sum_all()?.to_scalar::<f64>()
            };
            let grads = y0.mul(&r)?.sum_all()?.backward()?;
            for (var, other, is_x) in [(&x, &w, true), (&w, &x, false)] {
                let g = grads
                    .get(var.as_tensor())
                    .expect("grad")
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                for i in (0..base.len()).step_by(3) {
                    let bump = |delta: f64| -> candle_core::Result<f64> {
                        let mut v = base.clone();
                        v[i] += delta;
                        let t = Tensor::from_vec(v, var.dims(), &dev)?;
                        if is_x {
                            f(&t, other.as_tensor())
                        } else {
                            f(other.as_tensor(), &t)
                        }
                    };
                    let numeric = (bump(1e-6)? - bump(-1e-6)?) / 2e-6;
                    assert!(
                        (numeric - g[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
                        "k{k} s{stride} {} [{i}]: numeric {numeric} analytic {}",
                        if is_x { "dx" } else { "dw" },
                        g[i]
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn large_batches_are_chunked_consistently() -> candle_core::Result<()> {
        // 7x7 kernel on 64x64 maps: 147 * 1024 columns a sample, so COL_BUDGET forces chunks.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (70, 3, 64, 64), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (4, 3, 7, 7), &dev)?;
        let d = Dims::new(
            x.dims(),
            w.dims(),
            ConvGeom {
                stride: 2,
                padding: 3,
            },
        )?;
        assert!(d.chunk() < 70, "test must exercise chunking");
        let ours = conv2d(
            &x,
            &w,
            ConvGeom {
                stride: 2,
                padding: 3,
            },
        )?;
        let theirs = x
            .to_dtype(DType::F64)?
            .conv2d(&w.to_dtype(DType::F64)?, 3, 2, 1, 1)?;
        let diff = (ours.to_dtype(DType::F64)? - theirs)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-4, "diff {diff}");
        Ok(())
    }
}
