//! Pooling with gradients: padded max-pool (a `CustomOp`), 2×2 average pool and global
//! average pool (exact compositions of differentiable ops).
//!
//! candle's own `max_pool2d` has no padding and a backward only for kernel == stride, while
//! both ResNet and DenseNet start with `MaxPool2d(3, stride=2, padding=1)`.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::contiguous_slice;
use super::dtype::float_dispatch;
use super::fill::{par_chunks_zeroed, par_zeros};

/// Geometry of a square max-pool window (PyTorch's `MaxPool2d` with `ceil_mode=False`,
/// `dilation=1`; padding counts as −∞).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit −∞ padding on every side.
    pub padding: usize,
}

impl MaxPool2d {
    /// Output side for an input side `n`.
    pub fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn check(&self, h: usize, w: usize) -> candle_core::Result<()> {
        if self.kernel == 0 || self.stride == 0 {
            candle_core::bail!("max-pool kernel and stride must be positive");
        }
        if self.padding * 2 > self.kernel {
            candle_core::bail!("max-pool padding must be at most half the kernel (as PyTorch)");
        }
        if h + 2 * self.padding < self.kernel || w + 2 * self.padding < self.kernel {
            candle_core::bail!(
                "max-pool input {h}x{w} is smaller than the {k}x{k} window",
                k = self.kernel
            );
        }
        Ok(())
    }

    /// The window's rows (or columns) for output position `o` along an axis of length `n`,
    /// clipped to the input (`check` makes them non-empty).
    fn clip(&self, o: usize, n: usize) -> (usize, usize) {
        let start = (o * self.stride).saturating_sub(self.padding);
        let end = (o * self.stride + self.kernel)
            .saturating_sub(self.padding)
            .min(n);
        (start, end)
    }

    /// The clipped column range of every output column's window, for a width `w`.
    fn column_windows(&self, w: usize) -> Vec<(usize, usize)> {
        (0..self.out_size(w)).map(|ox| self.clip(ox, w)).collect()
    }

    /// Window maxima of one H×W plane into `out` (OH×OW): a column maximum over the window's
    /// rows (contiguous, so it vectorises), then the maximum across each window's columns
    /// (`cols`, from [`Self::column_windows`]). NaN propagates, as in PyTorch. `scratch`
    /// holds [`Self::scratch_len`] elements.
    fn max_plane<T: Copy + PartialOrd>(
        &self,
        plane: &[T],
        (h, w): (usize, usize),
        cols: &[(usize, usize)],
        out: &mut [T],
        scratch: &mut [T],
    ) {
        let (rowmax, scratch) = scratch.split_at_mut(w);
        for (oy, out_row) in out.chunks_exact_mut(cols.len()).enumerate() {
            let (y0, y1) = self.clip(oy, h);
            rowmax.copy_from_slice(&plane[y0 * w..(y0 + 1) * w]);
            for y in y0 + 1..y1 {
                for (m, &v) in rowmax.iter_mut().zip(&plane[y * w..(y + 1) * w]) {
                    *m = nan_max(*m, v);
                }
            }
            if self.is_stem_window() && w >= 2 {
                stem_columns(rowmax, out_row, scratch);
                continue;
            }
            for (o, &(x0, x1)) in out_row.iter_mut().zip(cols) {
                *o = rowmax[x0 + 1..x1]
                    .iter()
                    .fold(rowmax[x0], |m, &v| nan_max(m, v));
            }
        }
    }

    /// Scratch elements [`Self::max_plane`] needs for a width `w`: the row maximum, and its
    /// even and odd elements.
    fn scratch_len(w: usize) -> usize {
        2 * w + 2
    }

    /// ResNet's and DenseNet's window (3, stride 2, padding 1).
    fn is_stem_window(&self) -> bool {
        (self.kernel, self.stride, self.padding) == (3, 2, 1)
    }

    /// The flat index (within the plane) of the element PyTorch routes output cell
    /// `(oy, ox)`'s gradient to, given that cell's value `best`: the first element equal to it
    /// in row-major window order, or for a NaN maximum the last NaN (PyTorch's scan replaces
    /// its running maximum on every NaN).
    fn winner<T: Copy + PartialOrd>(
        &self,
        plane: &[T],
        w: usize,
        y: (usize, usize),
        x: (usize, usize),
        best: T,
    ) -> usize {
        #[allow(clippy::eq_op)]
        if best != best {
            let mut found = y.0 * w + x.0;
            for yy in y.0..y.1 {
                for xx in x.0..x.1 {
                    let v = plane[yy * w + xx];
                    #[allow(clippy::eq_op)]
                    if v != v {
                        found = yy * w + xx;
                    }
                }
            }
            return found;
        }
        // The first match in row-major order, as a branch-free scan from the back: which
        // element of a window holds the maximum is data-dependent, and the early-exit scan
        // mispredicted on most cells.
        let mut found = y.0 * w + x.0;
        for yy in (y.0..y.1).rev() {
            let row = &plane[yy * w + x.0..yy * w + x.1];
            for (i, &v) in row.iter().enumerate().rev() {
                found = if v == best { yy * w + x.0 + i } else { found };
            }
        }
        found
    }
}

/// `max(a, b)` where a NaN in either wins (PyTorch's max-pool rule).
#[inline(always)]
fn nan_max<T: Copy + PartialOrd>(a: T, b: T) -> T {
    #[allow(clippy::eq_op)]
    if b > a || b != b {
        b
    } else {
        a
    }
}

/// The column maxima of the stem's window (3, stride 2, padding 1) over one row maximum
/// `r` (at least two elements) into `out`: from `r`'s even and odd elements apart (in
/// `scratch`, `w + 2` elements), so that the windows `odd[ox − 1], even[ox], odd[ox]` are
/// contiguous slices and vectorise, folded in the generic loop's order. The generic loop's
/// per-window folds: the stem pool of one 224-px sample (64 × 112 × 112) 0.46–0.59 → 0.27–0.29
/// ms on two threads (onnxruntime: 0.08; AVX-512 host).
fn stem_columns<T: Copy + PartialOrd>(r: &[T], out: &mut [T], scratch: &mut [T]) {
    let w = r.len();
    let half = w.div_ceil(2);
    let (even, odd) = scratch[..2 * half].split_at_mut(half);
    // Whole pairs (no per-pair length test, so the split vectorises as shuffles), then an
    // odd width's last column, its own partner: ResNet's stem pool (64 × 112 × 112, two
    // threads, Zen 3, in one process alternating with the per-pair test) 0.31–0.49 →
    // 0.21–0.34 ms.
    let pairs = r.chunks_exact(2);
    if let [last] = pairs.remainder() {
        (even[half - 1], odd[half - 1]) = (*last, *last);
    }
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
        (*e, *o) = (pair[0], pair[1]);
    }
    let ow = out.len();
    // Windows that reach past the last column (odd widths) are cut to two columns.
    let full = if w.is_multiple_of(2) { ow } else { ow - 1 };
    out[0] = nan_max(even[0], odd[0]);
    let inner = out[1..full].iter_mut().zip(
        odd[..full - 1]
            .iter()
            .zip(&even[1..full])
            .zip(&odd[1..full]),
    );
    for (o, ((&left, &mid), &right)) in inner {
        *o = nan_max(nan_max(left, mid), right);
    }
    if full < ow {
        out[full] = nan_max(odd[full - 1], even[full]);
    }
}

fn forward_typed<T: candle_core::WithDType>(
    op: &MaxPool2d,
    s: &CpuStorage,
    l: &Layout,
) -> candle_core::Result<(Vec<T>, Shape)> {
    let (n, c, h, w) = l.shape().dims4()?;
    op.check(h, w)?;
    let src = contiguous_slice::<T>(s, l, "max-pool: input")?;
    let (oh, ow) = (op.out_size(h), op.out_size(w));
    let cols = op.column_windows(w);
    let mut out: Vec<T> = par_zeros(n * c * oh * ow);
    out.par_chunks_mut(oh * ow)
        .zip(src.par_chunks_exact(h * w))
        .for_each_init(
            || vec![T::zero(); MaxPool2d::scratch_len(w)],
            |scratch, (dst, plane)| op.max_plane(plane, (h, w), &cols, dst, scratch),
        );
    Ok((out, Shape::from((n, c, oh, ow))))
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "mtpath-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        float_dispatch!(
            [s],
            T => forward_typed::<T>(self, s, l),
            "max-pool supports f32 and f64, got {:?}",
            s.dtype()
        )
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad_res = grad_res.contiguous()?;
        Ok(Some(arg.apply_op3_no_bwd(
            &res.contiguous()?,
            &grad_res,
            &MaxPool2dBackward(*self),
        )?))
    }
}

/// Gradient of [`MaxPool2d`] with respect to its input, from `(input, output, output
/// gradient)`: each output gradient goes to the window element PyTorch picks (the first
/// maximum), found by matching the saved output.
struct MaxPool2dBackward(MaxPool2d);

fn backward_typed<T: candle_core::WithDType + std::ops::AddAssign>(
    op: &MaxPool2d,
    (s, l): (&CpuStorage, &Layout),
    (ys, yl): (&CpuStorage, &Layout),
    (gs, gl): (&CpuStorage, &Layout),
) -> candle_core::Result<(Vec<T>, Shape)> {
    let (n, c, h, w) = l.shape().dims4()?;
    op.check(h, w)?;
    let src = contiguous_slice::<T>(s, l, "max-pool: input")?;
    let out = contiguous_slice::<T>(ys, yl, "max-pool: output")?;
    let grad = contiguous_slice::<T>(gs, gl, "max-pool: gradient")?;
    let (oh, ow) = (op.out_size(h), op.out_size(w));
    let plane_out = oh * ow;
    if grad.len() != n * c * plane_out || out.len() != grad.len() {
        candle_core::bail!(
            "max-pool backward: gradient shape {:?} does not match",
            gl.dims()
        );
    }
    let cols = op.column_windows(w);
    // Each plane is zeroed by the thread that scatters into it, while it is in cache.
    let dx = par_chunks_zeroed(n * c * h * w, h * w, |p, dst: &mut [T]| {
        let plane = &src[p * h * w..][..h * w];
        let (o, g) = (
            &out[p * plane_out..][..plane_out],
            &grad[p * plane_out..][..plane_out],
        );
        for oy in 0..oh {
            let rows = op.clip(oy, h);
            for (ox, &xs) in cols.iter().enumerate() {
                let cell = oy * ow + ox;
                dst[op.winner(plane, w, rows, xs, o[cell])] += g[cell];
            }
        }
    });
    Ok((dx, l.shape().clone()))
}

impl CustomOp3 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "mtpath-max-pool2d-backward"
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
        let args = ((s1, l1), (s2, l2), (s3, l3));
        float_dispatch!(
            [s1, s2, s3],
            T => backward_typed::<T>(&self.0, args.0, args.1, args.2),
            "max-pool backward supports f32 and f64 only"
        )
    }
}

/// `MaxPool2d(kernel, stride, padding)` on an NCHW tensor, differentiable. On the CPU a fused
/// `CustomOp`; on other devices a composition of strided views and elementwise ops with the
/// same forward values and the same gradient routing (to the first maximum of each window).
pub fn max_pool2d(xs: &Tensor, pool: MaxPool2d) -> candle_core::Result<Tensor> {
    if super::use_fused_cpu(xs) {
        xs.contiguous()?.apply_op1(pool)
    } else {
        max_pool2d_composed(xs, pool)
    }
}

/// Rows `start, start + step, …` (`count` of them) of dimension `dim`, as a view made of a
/// narrow and a reshape (candle has no strided slicing), so its gradient is exact.
fn strided(
    xs: &Tensor,
    dim: usize,
    start: usize,
    step: usize,
    count: usize,
) -> candle_core::Result<Tensor> {
    let part = xs.narrow(dim, start, step * count)?;
    let mut dims = part.dims().to_vec();
    dims[dim] = count;
    dims.insert(dim + 1, step);
    part.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Max-pool from device-independent ops: pad with −∞, take the k×k strided views, keep the
/// elementwise maximum, and route the gradient through a one-hot mask of the first view that
/// reaches it (PyTorch's tie rule; matters after ReLU, where zeros tie).
pub fn max_pool2d_composed(xs: &Tensor, p: MaxPool2d) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    p.check(h, w)?;
    let (oh, ow) = (p.out_size(h), p.out_size(w));
    // Padded so that every view `k + stride * (o - 1)` and the reshape `stride * o` fit.
    let need_h = (p.kernel - 1 + p.stride * oh).max(h + p.padding);
    let need_w = (p.kernel - 1 + p.stride * ow).max(w + p.padding);
    let fill = |shape: (usize, usize, usize, usize)| -> candle_core::Result<Tensor> {
        Tensor::full(f32::NEG_INFINITY, shape, xs.device())?.to_dtype(xs.dtype())
    };
    let mut rows = Vec::new();
    if p.padding > 0 {
        rows.push(fill((n, c, p.padding, w))?);
    }
    rows.push(xs.clone());
    if need_h > h + p.padding {
        rows.push(fill((n, c, need_h - h - p.padding, w))?);
    }
    let xp = Tensor::cat(&rows, 2)?;
    let mut cols = Vec::new();
    if p.padding > 0 {
        cols.push(fill((n, c, need_h, p.padding))?);
    }
    cols.push(xp);
    if need_w > w + p.padding {
        cols.push(fill((n, c, need_h, need_w - w - p.padding))?);
    }
    let xp = Tensor::cat(&cols, 3)?;
    let mut views = Vec::with_capacity(p.kernel * p.kernel);
    for ky in 0..p.kernel {
        let r = strided(&xp, 2, ky, p.stride, oh)?;
        for kx in 0..p.kernel {
            views.push(strided(&r, 3, kx, p.stride, ow)?);
        }
    }
    let mut best = views[0].detach();
    for v in &views[1..] {
        best = best.maximum(&v.detach())?;
    }
    let mut taken = best.zeros_like()?;
    let mut out = best.zeros_like()?;
    for v in &views {
        let first = v
            .detach()
            .eq(&best)?
            .to_dtype(v.dtype())?
            .mul(&taken.affine(-1.0, 1.0)?)?;
        taken = taken.add(&first)?;
        // A select, not a product: −∞ padding times a zero mask would be NaN.
        out = first
            .to_dtype(candle_core::DType::U8)?
            .where_cond(v, &out)?;
    }
    Ok(out)
}

/// `AvgPool2d(2, stride=2)` (floor mode): DenseNet's transition pooling. Written as a reshape
/// and mean so its gradient is exact for odd sizes too.
pub fn avg_pool2x2(xs: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    if oh == 0 || ow == 0 {
        candle_core::bail!("2x2 average pool needs at least 2x2 input, got {h}x{w}");
    }
    let xs = if h != 2 * oh || w != 2 * ow {
        xs.narrow(2, 0, 2 * oh)?.narrow(3, 0, 2 * ow)?
    } else {
        xs.clone()
    };
    xs.reshape((n, c, oh, 2, ow, 2))?
        .sum(5)?
        .sum(3)?
        .affine(0.25, 0.0)
}

/// Global average pool of an NCHW tensor to [N, C] (`adaptive_avg_pool2d(1)` + flatten).
pub fn global_avg_pool(xs: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    xs.reshape((n, c, h * w))?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    const STEM: MaxPool2d = MaxPool2d {
        kernel: 3,
        stride: 2,
        padding: 1,
    };

    fn reference_forward(x: &[f64], h: usize, w: usize, p: MaxPool2d) -> Vec<f64> {
        let (oh, ow) = (p.out_size(h), p.out_size(w));
        let mut out = vec![f64::NEG_INFINITY; oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..p.kernel {
                    for kx in 0..p.kernel {
                        let y = (oy * p.stride + ky) as isize - p.padding as isize;
                        let xx = (ox * p.stride + kx) as isize - p.padding as isize;
                        if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                            let v = x[y as usize * w + xx as usize];
                            if v > out[oy * ow + ox] {
                                out[oy * ow + ox] = v;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn composed_pool_equals_the_custom_op_forward_and_backward_with_ties() -> candle_core::Result<()>
    {
        let dev = Device::Cpu;
        for (pool, h, w) in [
            (STEM, 9, 7),
            (STEM, 8, 8),
            (
                MaxPool2d {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                },
                7,
                6,
            ),
            (
                MaxPool2d {
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                },
                5,
                6,
            ),
        ] {
            // ReLU of noise: half the values are exact zeros, so windows tie often.
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev)?.relu()?)?;
            let r = Tensor::randn(0f32, 1.0, (2, 3, pool.out_size(h), pool.out_size(w)), &dev)?;
            let fused = x.as_tensor().apply_op1(pool)?;
            let composed = max_pool2d_composed(x.as_tensor(), pool)?;
            assert_eq!(
                fused.flatten_all()?.to_vec1::<f32>()?,
                composed.flatten_all()?.to_vec1::<f32>()?,
                "{pool:?} forward"
            );
            let g1 = fused.mul(&r)?.sum_all()?.backward()?;
            let g2 = composed.mul(&r)?.sum_all()?.backward()?;
            let a = g1.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
            let b = g2.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
            // Same elements receive gradient; overlapping windows may sum in another order.
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_eq!(*u == 0.0, *v == 0.0, "{pool:?} backward routing at {i}");
                assert!(
                    (u - v).abs() <= 1e-6 * u.abs().max(1.0),
                    "{pool:?} {i}: {u} vs {v}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn forward_matches_a_direct_loop_on_odd_and_even_sizes() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (h, w) in [
            (7usize, 7usize),
            (8, 5),
            (112, 112),
            (3, 3),
            (4, 2),
            (5, 4),
            (2, 33),
        ] {
            let x = Tensor::randn(0f64, 1.0, (2, 3, h, w), &dev)?;
            let y = max_pool2d(&x, STEM)?;
            assert_eq!(y.dims(), &[2, 3, STEM.out_size(h), STEM.out_size(w)]);
            let xv = x.flatten_all()?.to_vec1::<f64>()?;
            let yv = y.flatten_all()?.to_vec1::<f64>()?;
            let plane_out = STEM.out_size(h) * STEM.out_size(w);
            for (p, chunk) in xv.chunks(h * w).enumerate() {
                let expect = reference_forward(chunk, h, w, STEM);
                assert_eq!(&yv[p * plane_out..(p + 1) * plane_out], &expect[..]);
            }
        }
        Ok(())
    }

    /// Central finite differences of `sum(maxpool(x) * r)` against the analytic gradient.
    #[test]
    fn gradient_matches_finite_differences() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (9, 6);
        // Distinct values keep the max unique, so the function is differentiable at x.
        let n = 2 * 2 * h * w;
        let mut vals: Vec<f64> = (0..n).map(|i| ((i * 7919) % n) as f64 * 0.37).collect();
        vals.iter_mut().for_each(|v| *v = v.sin() * 3.0 + *v * 1e-3);
        let x = Var::from_tensor(&Tensor::from_vec(vals.clone(), (2, 2, h, w), &dev)?)?;
        let r = Tensor::randn(0f64, 1.0, (2, 2, STEM.out_size(h), STEM.out_size(w)), &dev)?;
        let f = |t: &Tensor| -> candle_core::Result<f64> {
            max_pool2d(t, STEM)?.mul(&r)?.sum_all()?.to_scalar::<f64>()
        };
        let grads = max_pool2d(x.as_tensor(), STEM)?
            .mul(&r)?
            .sum_all()?
            .backward()?;
        let g = grads
            .get(x.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let eps = 1e-6;
        for i in 0..n {
            let mut plus = vals.clone();
            plus[i] += eps;
            let mut minus = vals.clone();
            minus[i] -= eps;
            let fp = f(&Tensor::from_vec(plus, (2, 2, h, w), &dev)?)?;
            let fm = f(&Tensor::from_vec(minus, (2, 2, h, w), &dev)?)?;
            let numeric = (fp - fm) / (2.0 * eps);
            assert!(
                (numeric - g[i]).abs() < 1e-6,
                "element {i}: numeric {numeric} vs analytic {}",
                g[i]
            );
        }
        Ok(())
    }

    /// PyTorch propagates NaN through the maximum and, scanning each window in row-major
    /// order with `val > max || isnan(val)`, routes the gradient to the window's last NaN.
    #[test]
    fn nan_propagates_and_takes_the_gradient_at_the_last_nan() -> candle_core::Result<()> {
        let mut v = vec![0f32; 16];
        v[0] = f32::NAN; // (0,0): in window (0,0) only
        v[5] = f32::NAN; // (1,1): in all four windows, after (0,0) in window (0,0)
        v[15] = 7.0; // (3,3): window (1,1)'s maximum, but the NaN at (1,1) wins there
        let x = Var::from_tensor(&Tensor::from_vec(v, (1, 1, 4, 4), &Device::Cpu)?)?;
        let y = max_pool2d(x.as_tensor(), STEM)?;
        assert!(y
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_nan()));
        let grads = y.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut expect = vec![0f32; 16];
        expect[5] = 4.0;
        assert_eq!(g, expect);
        Ok(())
    }

    #[test]
    fn ties_send_the_gradient_to_the_first_maximum_only() -> candle_core::Result<()> {
        let x = Var::from_tensor(&Tensor::ones(
            (1, 1, 4, 4),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?;
        let grads = max_pool2d(x.as_tensor(), STEM)?.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Windows (2x2 output) start at (-1,-1), (-1,1), (1,-1), (1,1): first valid element of
        // each is (0,0), (0,1), (1,0), (1,1).
        let mut expect = vec![0f32; 16];
        for idx in [0, 1, 4, 5] {
            expect[idx] = 1.0;
        }
        assert_eq!(g, expect);
        Ok(())
    }

    #[test]
    fn avg_pool_gradient_is_exact_on_odd_sizes() -> candle_core::Result<()> {
        let x =
            Var::from_tensor(&Tensor::arange(0f32, 49.0, &Device::Cpu)?.reshape((1, 1, 7, 7))?)?;
        let y = avg_pool2x2(x.as_tensor())?;
        assert_eq!(y.dims(), &[1, 1, 3, 3]);
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?[0],
            (0.0 + 1.0 + 7.0 + 8.0) / 4.0
        );
        let g = y.sum_all()?.backward()?;
        let g = g
            .get(x.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (i, v) in g.iter().enumerate() {
            let (r, c) = (i / 7, i % 7);
            let expect = if r < 6 && c < 6 { 0.25 } else { 0.0 };
            assert_eq!(*v, expect, "at ({r},{c})");
        }
        Ok(())
    }
}
