//! The unfolding path of the convolution: im2col / col2im around `gemm` products, the
//! scratch buffers and the batch split shared with the shifted-plane path ([`super::shifted`]).

use candle_core::WithDType;
use std::ops::Range;

use rayon::prelude::*;

use super::{packed, shifted, ConvGeom, Dims};
use crate::layers::fill::{self, par_zeros};

/// Upper bound on the elements of the im2col buffer when one sample-group spans the whole
/// pool (batches smaller than the thread count); larger batches are processed in chunks.
const COL_BUDGET: usize = 1 << 23;
/// The same bound for each of the per-thread groups of a batch processed sample-parallel.
const GROUP_COL_BUDGET: usize = 1 << 21;
/// Columns one product should have (several samples of a small map at once) so that gemm's
/// packing of the kernel is amortised.
const MIN_WIDTH: usize = 1024;
/// Columns (samples × output positions) a thread's share of the batch needs for the batch
/// to be split across threads rather than inside gemm.
const MIN_GROUP_WIDTH: usize = 256;
/// Output positions below which one sample's product splits its output channels over the
/// threads ([`matmul_rows_parallel`]) even when it has fewer channels than positions: gemm's
/// own threading ran DenseNet-121's 14×14 1×1 layers (128 channels, 196 positions, 512–992
/// inputs) at 1.2–1.3× one thread on two, the split at 1.7–1.9× (AMD EPYC, Zen 4).
pub(super) const ROWS_PARALLEL_POSITIONS: usize = 256;
/// Input channels per task of [`flipped_transpose`].
const FLIP_BLOCK: usize = 16;
/// Elements each task of the partial weight-gradient sum adds.
const SUM_CHUNK: usize = 1 << 14;
/// Elements of one panel's column buffer for a single large map (half of a 1 MB L2 in f32).
const PANEL_BUDGET: usize = 1 << 17;

pub(super) fn parallelism() -> gemm::Parallelism {
    let threads = threads();
    if threads > 1 {
        return gemm::Parallelism::Rayon(threads);
    }
    gemm::Parallelism::None
}

/// Row-major strides for an `rows × cols` matrix.
#[derive(Clone, Copy)]
pub(super) struct Mat<P> {
    pub(super) ptr: P,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: Mat<*mut T>,
    accumulate: bool,
    lhs: Mat<*const T>,
    rhs: Mat<*const T>,
    parallelism: gemm::Parallelism,
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
            parallelism,
        )
    }
}

/// The output positions `o` in `0..o_len` whose input position `o·stride + k − pad` falls
/// inside `0..n`, as a range (they are contiguous).
pub(super) fn valid_outputs(
    o_len: usize,
    stride: usize,
    k: usize,
    pad: usize,
    n: usize,
) -> (usize, usize) {
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

/// Unfold output rows `oy` of `nc` samples of `x` (which starts at the first of them) into
/// `col` [rows, nc·|oy|·OW] (row = (ci·k + ky)·k + kx); rows in parallel when `parallel`.
fn im2col<T: WithDType>(
    x: &[T],
    d: &Dims,
    g: ConvGeom,
    (nc, oy): (usize, Range<usize>),
    col: &mut [T],
    parallel: bool,
) {
    let seg = oy.len() * d.ow;
    let width = nc * seg;
    // Stride 1 with the output as wide as the input: each row of taps is one shifted copy.
    let same_size = g.stride == 1 && d.ow == d.w && d.oh == d.h;
    let fill_row = |(row, dst): (usize, &mut [T])| {
        let ci = row / (d.k * d.k);
        let ky = (row / d.k) % d.k;
        let kx = row % d.k;
        let (x_lo, x_hi) = valid_outputs(d.ow, g.stride, kx, g.padding, d.w);
        let (y_lo, y_hi) = valid_outputs(d.oh, g.stride, ky, g.padding, d.h);
        for s in 0..nc {
            let plane = &x[(s * d.c_in + ci) * d.h * d.w..][..d.h * d.w];
            let out = &mut dst[s * seg..(s + 1) * seg];
            if same_size {
                shifted_rows(
                    plane,
                    out,
                    d.w,
                    oy.clone(),
                    (y_lo, y_hi),
                    (x_lo, x_hi),
                    (ky, kx),
                    g.padding,
                );
                continue;
            }
            for (row_out, oy) in out.chunks_exact_mut(d.ow).zip(oy.clone()) {
                if oy < y_lo || oy >= y_hi || x_lo == x_hi {
                    row_out.fill(T::zero());
                    continue;
                }
                let y = oy * g.stride + ky - g.padding;
                let src = &plane[y * d.w..(y + 1) * d.w];
                unfold_taps(src, row_out, 0, (x_lo, x_hi), kx, g);
            }
        }
    };
    let col = &mut col[..d.rows() * width];
    if parallel {
        col.par_chunks_mut(width).enumerate().for_each(fill_row);
    } else {
        col.chunks_mut(width).enumerate().for_each(fill_row);
    }
}

/// The taps `kx` of an output row at columns `ox0..ox0 + out.len()` into `out`: `src[ox ·
/// stride + kx − pad]` (`src` the input row) for the valid columns `x_lo..x_hi`
/// ([`valid_outputs`]), zero elsewhere. [`im2col`]'s rows and the packed products' gathered
/// columns ([`packed::Unfolded`]).
pub(super) fn unfold_taps<T: WithDType>(
    src: &[T],
    out: &mut [T],
    ox0: usize,
    (x_lo, x_hi): (usize, usize),
    kx: usize,
    g: ConvGeom,
) {
    let len = out.len();
    let lo = x_lo.clamp(ox0, ox0 + len) - ox0;
    let hi = x_hi.clamp(ox0 + lo, ox0 + len) - ox0;
    out[..lo].fill(T::zero());
    out[hi..].fill(T::zero());
    if lo == hi {
        return;
    }
    let first = (ox0 + lo) * g.stride + kx - g.padding;
    let out = &mut out[lo..hi];
    if g.stride == 1 {
        out.copy_from_slice(&src[first..first + out.len()]);
    } else if g.stride == 2 {
        // Pairs of a constant width, without bounds checks, vectorise as even-lane
        // shuffles; the last value may have no partner in the row.
        let pairs = ((src.len() - first) / 2).min(out.len());
        let (head, tail) = out.split_at_mut(pairs);
        for (o, c) in head.iter_mut().zip(src[first..].chunks_exact(2)) {
            *o = c[0];
        }
        if let Some(o) = tail.first_mut() {
            *o = src[first + 2 * pairs];
        }
    } else {
        // Every stride-th element: chunk heads, without per-element bounds checks.
        for (o, c) in out.iter_mut().zip(src[first..].chunks(g.stride)) {
            *o = c[0];
        }
    }
}

/// One tap `(ky, kx)`'s unfolded rows `oy` of a stride-1 convolution whose output is as
/// large as its `w`-wide input `plane`: the output row `o` reads input row `o + ky − pad`
/// shifted by `kx − pad`, so the valid rows `y_lo..y_hi` are a single copy of the plane at
/// that shift. Then the columns outside `x_lo..x_hi` (which took a neighbouring row's edge)
/// and the rows outside `y_lo..y_hi` are zeroed. Short maps (7×7, 4×4) thus cost one copy
/// and a few stores per row instead of three library calls per output row.
#[allow(clippy::too_many_arguments)]
fn shifted_rows<T: WithDType>(
    plane: &[T],
    out: &mut [T],
    w: usize,
    oy: Range<usize>,
    (y_lo, y_hi): (usize, usize),
    (x_lo, x_hi): (usize, usize),
    (ky, kx): (usize, usize),
    pad: usize,
) {
    let (a, b) = (y_lo.max(oy.start), y_hi.min(oy.end).max(y_lo.max(oy.start)));
    let rel = |o: usize| (o - oy.start) * w;
    out[..rel(a)].fill(T::zero());
    out[rel(b)..].fill(T::zero());
    if a == b {
        return;
    }
    // Flat source index of output (a, 0): row a + ky − pad, column kx − pad (may be < 0
    // at the plane's first value, or run past its last: those are zeroed edge columns).
    let start = ((a + ky - pad) * w) as isize + kx as isize - pad as isize;
    let len = ((b - a) * w) as isize;
    let (src_lo, src_hi) = (start.max(0), (start + len).min(plane.len() as isize));
    let block = &mut out[rel(a)..rel(b)];
    if src_lo < src_hi {
        let at = (src_lo - start) as usize;
        block[at..at + (src_hi - src_lo) as usize]
            .copy_from_slice(&plane[src_lo as usize..src_hi as usize]);
    }
    for row in block.chunks_exact_mut(w) {
        for v in &mut row[..x_lo] {
            *v = T::zero();
        }
        for v in &mut row[x_hi..] {
            *v = T::zero();
        }
    }
}

/// Add `col` [rows, nc·|oy|·OW] (output rows `oy` of `nc` samples) into their input gradient
/// `dx`: the adjoint of [`im2col`]; planes in parallel when `parallel`.
fn col2im<T: WithDType>(
    col: &[T],
    d: &Dims,
    g: ConvGeom,
    (nc, oy): (usize, Range<usize>),
    dx: &mut [T],
    parallel: bool,
) {
    let seg = oy.len() * d.ow;
    let plane_len = d.h * d.w;
    let kk = d.k * d.k;
    let width = nc * seg;
    let fold_plane = |(p, plane): (usize, &mut [T])| {
        let s = p / d.c_in;
        let ci = p % d.c_in;
        for kidx in 0..kk {
            let (ky, kx) = (kidx / d.k, kidx % d.k);
            let src = &col[(ci * kk + kidx) * width + s * seg..][..seg];
            let (x_lo, x_hi) = valid_outputs(d.ow, g.stride, kx, g.padding, d.w);
            let (y_lo, y_hi) = valid_outputs(d.oh, g.stride, ky, g.padding, d.h);
            if x_lo == x_hi {
                continue;
            }
            let first = x_lo * g.stride + kx;
            for o in y_lo.max(oy.start)..y_hi.min(oy.end) {
                let y = o * g.stride + ky - g.padding;
                let dst_row = &mut plane[y * d.w..(y + 1) * d.w];
                let r = (o - oy.start) * d.ow;
                let src_row = &src[r + x_lo..r + x_hi];
                if g.stride == 1 {
                    let dst = &mut dst_row[first - g.padding..first - g.padding + src_row.len()];
                    for (a, b) in dst.iter_mut().zip(src_row) {
                        *a += *b;
                    }
                } else if g.stride == 2 {
                    // As im2col's stride-2 gather: pairs of constant width, then the last.
                    let dst = &mut dst_row[first - g.padding..];
                    let pairs = (dst.len() / 2).min(src_row.len());
                    for (c, b) in dst.chunks_exact_mut(2).zip(&src_row[..pairs]) {
                        c[0] += *b;
                    }
                    if let Some(b) = src_row.get(pairs) {
                        dst[2 * pairs] += *b;
                    }
                } else {
                    for (c, b) in dst_row[first - g.padding..]
                        .chunks_mut(g.stride)
                        .zip(src_row)
                    {
                        c[0] += *b;
                    }
                }
            }
        }
    };
    let dx = &mut dx[..nc * d.c_in * plane_len];
    if parallel {
        dx.par_chunks_mut(plane_len)
            .enumerate()
            .for_each(fold_plane);
    } else {
        dx.chunks_mut(plane_len).enumerate().for_each(fold_plane);
    }
}

/// Copy `nc` samples `[nc, C, L]` into channel-major `[C, nc·L]`, or back with `to_nchw`.
pub(super) fn transpose_chunk<T: WithDType>(
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

/// Per-thread scratch memory for the column and transposed buffers, kept between calls so
/// that every convolution does not fault in fresh pages (a training step makes hundreds).
pub(super) trait Scratch: WithDType {
    /// Run `f` on a buffer of at least `len` elements (contents unspecified).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// The same with a second buffer, for a kernel rearranged by the caller of a kernel
    /// that takes [`Scratch::with_scratch`] itself.
    fn with_kernel_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

/// Run `f` on the first `len` elements of the thread-local buffer `key`, grown as needed.
pub(super) fn with_buffer<T: WithDType, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                *buf = vec![T::zero(); len];
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a nested rayon job): a one-off buffer.
        Err(_) => f(&mut vec![T::zero(); len]),
    })
}

macro_rules! scratch_impl {
    ($t:ty, $key:ident, $kernel_key:ident) => {
        thread_local! {
            static $key: std::cell::RefCell<Vec<$t>> = const { std::cell::RefCell::new(Vec::new()) };
            static $kernel_key: std::cell::RefCell<Vec<$t>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        impl Scratch for $t {
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                with_buffer(&$key, len, f)
            }
            fn with_kernel_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                with_buffer(&$kernel_key, len, f)
            }
        }
    };
}
scratch_impl!(f32, SCRATCH_F32, KERNEL_SCRATCH_F32);
scratch_impl!(f64, SCRATCH_F64, KERNEL_SCRATCH_F64);

/// How one call spreads over the threads.
pub(super) struct Split {
    /// Contiguous sample ranges run side by side, each with a single-threaded gemm; one
    /// range (the whole batch) when the batch is smaller than the thread count, and then
    /// gemm and the unfolding run multi-threaded instead.
    pub(super) groups: Vec<std::ops::Range<usize>>,
    /// Samples unfolded and multiplied at once within a group.
    pub(super) per: usize,
    /// Whether the kernels inside a group use the thread pool.
    pub(super) inner_parallel: bool,
}

impl Split {
    pub(super) fn new(d: &Dims) -> Self {
        let threads = threads().max(1);
        let l = d.out_len().max(1);
        // One group per thread when every thread gets a sample (or there is one thread);
        // otherwise a single group and the parallelism goes inside the kernels.
        // Small maps give each group too few columns: every thread would pack the whole
        // kernel (and write a whole partial weight gradient) for a sliver of work.
        let sample_parallel = d.n >= threads && (d.n / threads) * l >= MIN_GROUP_WIDTH;
        let (count, budget) = if sample_parallel {
            (threads, GROUP_COL_BUDGET)
        } else {
            (1, COL_BUDGET)
        };
        let (base, extra) = (d.n / count, d.n % count);
        let mut start = 0;
        let groups = (0..count)
            .map(|i| {
                let len = base + usize::from(i < extra);
                start += len;
                start - len..start
            })
            .collect();
        // Enough columns to amortise gemm's packing of the kernel, within the budget.
        let per = MIN_WIDTH
            .div_ceil(l)
            .min(budget / (d.rows().max(d.c_out) * l).max(1))
            .max(1);
        Self {
            groups,
            per,
            inner_parallel: !sample_parallel,
        }
    }

    pub(super) fn parallelism(&self) -> gemm::Parallelism {
        if self.inner_parallel {
            parallelism()
        } else {
            gemm::Parallelism::None
        }
    }

    /// Scratch elements one chunk needs, given the elements per sample of its buffers.
    pub(super) fn scratch_len(&self, per_sample: usize) -> usize {
        self.per
            .min(self.groups.iter().map(|g| g.len()).max().unwrap_or(0))
            * per_sample
    }
}

pub(super) use crate::parallel::threads;

/// `f((i, chunk))` for every consecutive `len`-element chunk of `buf` (an output plane, one
/// channel's rows of tiles), `i` counting chunks from the first: on the pool when
/// `parallel`, else in order on this thread. `buf`'s length is a multiple of `len`.
pub(super) fn for_each_plane<T: Send>(
    buf: &mut [T],
    len: usize,
    parallel: bool,
    f: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    if parallel {
        buf.par_chunks_exact_mut(len).enumerate().for_each(f);
    } else {
        buf.chunks_exact_mut(len).enumerate().for_each(f);
    }
}

/// `buf` cut into consecutive mutable pieces of `sizes[i]` elements.
fn split_mut<T>(mut buf: &mut [T], sizes: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut parts = Vec::new();
    for len in sizes {
        let (head, tail) = buf.split_at_mut(len);
        parts.push(head);
        buf = tail;
    }
    parts
}

/// Run `f(group, out_part)` for every group of `split`, the output cut per group with
/// `per_sample` elements a sample; groups in parallel when there are several.
pub(super) fn for_groups<T: Send>(
    split: &Split,
    out: &mut [T],
    per_sample: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync + Send,
) {
    let parts = split_mut(out, split.groups.iter().map(|g| g.len() * per_sample));
    if split.groups.len() > 1 {
        split
            .groups
            .par_iter()
            .cloned()
            .zip(parts)
            .for_each(|(g, part)| f(g, part));
    } else {
        for (g, part) in split.groups.iter().cloned().zip(parts) {
            f(g, part);
        }
    }
}

/// The `[rows, nc·|oy|·OW]` right-hand matrix of output rows `oy` of samples `x` (`nc` of
/// them): the input itself for a single sample of a pointwise convolution, else unfolded or
/// transposed into `buf`. Pointwise convolutions always take every output row.
fn columns<'a, T: WithDType>(
    x: &'a [T],
    d: &Dims,
    g: ConvGeom,
    (nc, oy): (usize, Range<usize>),
    buf: &'a mut [T],
    parallel: bool,
) -> &'a [T] {
    let width = nc * oy.len() * d.ow;
    if d.is_pointwise(g) {
        if nc == 1 {
            return &x[..d.c_in * width];
        }
        transpose_chunk(x, buf, d.c_in, d.out_len(), nc, false);
    } else {
        im2col(x, d, g, (nc, oy), buf, parallel);
    }
    &buf[..d.rows() * width]
}

/// `nc` samples of an NCHW tensor `t` with `c` channels as a channel-major `[c, nc·L]`
/// matrix: itself for one sample, else transposed into `buf`.
fn channel_major<'a, T: WithDType>(
    t: &'a [T],
    c: usize,
    l: usize,
    nc: usize,
    buf: &'a mut [T],
) -> &'a [T] {
    if nc == 1 {
        return &t[..c * l];
    }
    transpose_chunk(t, buf, c, l, nc, false);
    &buf[..c * nc * l]
}

pub(super) fn row_major<T>(ptr: *const T, row_stride: usize) -> Mat<*const T> {
    Mat {
        ptr,
        rs: row_stride as isize,
        cs: 1,
    }
}

pub(super) fn row_major_mut<T>(ptr: *mut T, row_stride: usize) -> Mat<*mut T> {
    Mat {
        ptr,
        rs: row_stride as isize,
        cs: 1,
    }
}

/// Output rows of a panel whose column buffer stays within [`PANEL_BUDGET`] (at least one).
fn panel_rows(d: &Dims) -> usize {
    (PANEL_BUDGET / (d.rows() * d.ow).max(1)).max(1)
}

impl Split {
    /// The output-row ranges a chunk of `nc` samples is unfolded in. A single sample of a
    /// spatial convolution on a large map goes in panels whose column buffer stays in L2, so
    /// the unfolding's writes are still cached when gemm reads them; everything else (several
    /// small maps, pointwise convolutions, the multi-threaded kernels) in one piece.
    pub(super) fn panels(&self, d: &Dims, g: ConvGeom, nc: usize) -> Vec<Range<usize>> {
        if nc > 1 || d.is_pointwise(g) || self.inner_parallel {
            return std::iter::once(0..d.oh).collect();
        }
        let step = panel_rows(d).min(d.oh.max(1));
        (0..d.oh)
            .step_by(step)
            .map(|o| o..(o + step).min(d.oh))
            .collect()
    }
}

pub(super) fn conv_forward<T: Scratch>(x: &[T], w: &[T], d: &Dims, g: ConvGeom) -> Vec<T> {
    conv_forward_cached(x, w, d, g, None, None)
}

/// What happens to each output plane once computed: `finish(sample, channel, from,
/// values)` for the plane's positions `from..from + values.len()` (an inference
/// convolution's bias, residual and ReLU; a whole plane, or a run of its positions while
/// they are in cache).
pub(super) type Finish<'a, T> = &'a (dyn Fn(usize, usize, usize, &mut [T]) + Sync);

/// `finish` over every `[l]` plane of `y` `[n, c, l]`, in parallel.
pub(super) fn finish_planes<T: WithDType>(
    y: &mut [T],
    (c, l): (usize, usize),
    finish: Option<Finish<T>>,
) {
    if let Some(finish) = finish {
        for_each_plane(y, l.max(1), true, |(i, plane)| {
            finish(i / c, i % c, 0, plane)
        });
    }
}

/// [`conv_forward`], the direct kernels' packing of `w` taken from (or kept in) `cache`,
/// each output plane handed to `finish` ([`Finish`]).
pub(super) fn conv_forward_cached<T: Scratch>(
    x: &[T],
    w: &[T],
    d: &Dims,
    g: ConvGeom,
    cache: Option<&super::PackedKernel>,
    finish: Option<Finish<T>>,
) -> Vec<T> {
    // Inference (a kept kernel) only: training's passes keep the direct sums.
    if let Some(split) = cache.and_then(|_| super::winograd::plan::<T>(d, g)) {
        if let Some(y) = super::winograd::forward(x, w, d, &split, cache, finish) {
            return y;
        }
    }
    if shifted::forward_applies::<T>(d, g) {
        return shifted::forward(x, w, d, g, cache, finish);
    }
    conv_forward_unfolded(x, w, d, g, cache, finish)
}

/// [`conv_forward`] by unfolding and gemm, each output plane handed to `finish` as soon as
/// its sample is computed: several samples' planes as they are copied out of the product
/// (in L1), one sample's by the packed products as they complete its rows
/// ([`packed::Epilogue`]; through gemm, after its product) — not in a pass over the whole
/// output at the end, which at batch 32 read every plane back from memory (ResNet-50's 1×1
/// convolutions).
pub(super) fn conv_forward_unfolded<T: Scratch>(
    x: &[T],
    w: &[T],
    d: &Dims,
    g: ConvGeom,
    cache: Option<&super::PackedKernel>,
    finish: Option<Finish<T>>,
) -> Vec<T> {
    let l = d.out_len();
    let rows = d.rows();
    let split = Split::new(d);
    let par = split.parallelism();
    let inner = split.inner_parallel && threads() > 1;
    // Inference with AVX-512F: the kernel packed once for [`packed`]'s products, laid out
    // for the width of a chunk's product.
    let layout = packed::Layout::for_shape(d.c_out, split.per.min(d.n) * l);
    let packed = match (cache, shifted::as_f32(w)) {
        (Some(cache), Some(w)) if packed::available() => Some(
            cache
                .unfolded
                .get_or_pack(layout, || packed::pack(w, d.c_out, rows, layout)),
        ),
        _ => None,
    };
    let packed = packed.as_deref().map(|p| (p.as_slice(), layout));
    let mut y = fill::uninit::<T>(d.n * d.c_out * l);
    let col_len = split.scratch_len(rows * l);
    let out_len = split.scratch_len(d.c_out * l);
    for_groups(&split, &mut y, d.c_out * l, |group, y_part| {
        T::with_scratch(col_len + out_len, |scratch| {
            let (col_buf, out_buf) = scratch.split_at_mut(col_len);
            for n0 in group.clone().step_by(split.per) {
                let nc = split.per.min(group.end - n0);
                let xs = &x[n0 * d.c_in * d.h * d.w..];
                let ys = &mut y_part[(n0 - group.start) * d.c_out * l..][..nc * d.c_out * l];
                if nc > 1 {
                    // Several samples side by side, then back to NCHW.
                    let width = nc * l;
                    let col = columns(xs, d, g, (nc, 0..d.oh), col_buf, split.inner_parallel);
                    let f32s = packed.zip(shifted::as_f32(col));
                    match (f32s, shifted::as_f32_mut(&mut out_buf[..d.c_out * width])) {
                        (Some((packed, col)), Some(out)) => {
                            let dims = (d.c_out, width, rows);
                            packed::product(packed, dims, (col, width), (out, width), inner)
                        }
                        _ => matmul(
                            d.c_out,
                            width,
                            rows,
                            row_major_mut(out_buf.as_mut_ptr(), width),
                            false,
                            row_major(w.as_ptr(), rows),
                            row_major(col.as_ptr(), width),
                            par,
                        ),
                    }
                    match finish {
                        Some(finish) => {
                            // transpose_chunk's copy, each plane finished while in L1.
                            for (i, plane) in ys.chunks_exact_mut(l).enumerate() {
                                let (s, ch) = (i / d.c_out, i % d.c_out);
                                let plane =
                                    fill::init_copy(plane, &out_buf[(ch * nc + s) * l..][..l]);
                                finish(n0 + s, ch, 0, plane);
                            }
                        }
                        None => {
                            let ys = fill::init_zeroed(ys);
                            transpose_chunk(&out_buf[..d.c_out * width], ys, d.c_out, l, nc, true)
                        }
                    }
                    continue;
                }
                let rows_parallel = d.c_out >= l || l < ROWS_PARALLEL_POSITIONS;
                let panels_parallel = inner && !d.is_pointwise(g) && !rows_parallel;
                // One sample: each panel's product lands in its columns of Y [c_out, L].
                let ys = if let Some(packed) = packed {
                    // Written whole by the products (no zeroing).
                    let out = ys.as_mut_ptr().cast::<f32>();
                    let finish = finish.map(|finish| (finish, n0));
                    if panels_parallel {
                        // SAFETY: `out` is this sample's `[c_out, l]` output (f32: `packed`
                        // is only made for f32), borrowed mutably here.
                        unsafe {
                            matmul_panels_parallel(xs, w, d, g, (out.cast(), Some(packed)), finish)
                        };
                    } else {
                        // Finished by the products as they go ([`packed::Epilogue`]). A
                        // thread's own sample (the batch split by samples) in runs of
                        // `FINISH_COLS` positions, each finished while in L2 (AVX-512's
                        // products finish their whole rectangle).
                        for oy in split.panels(d, g, 1) {
                            let (at, pw) = (oy.start * d.ow, oy.len() * d.ow);
                            let col = columns(xs, d, g, (1, oy), col_buf, split.inner_parallel);
                            let col = shifted::as_f32(col).expect("f32 (packed is)");
                            let step = if inner || finish.is_none() {
                                pw
                            } else {
                                packed::FINISH_COLS
                            };
                            for from in (0..pw).step_by(step.max(1)) {
                                let run = step.min(pw - from);
                                let epilogue = finish.map(|f| finishing::<T>(f, at + from));
                                // SAFETY: the panel's columns `at + from..at + from + run` of
                                // rows `0..c_out` (`l` apart) of this sample's output `ys`,
                                // borrowed mutably here.
                                unsafe {
                                    packed::product_into(
                                        packed,
                                        (d.c_out, run, rows),
                                        packed::Rhs::Strided(&col[from..], pw),
                                        (out.add(at + from), l),
                                        inner,
                                        epilogue.as_ref().map(|e| e as packed::Epilogue),
                                    )
                                };
                            }
                        }
                    }
                    // SAFETY: the panels cover the map's rows, so the products wrote every
                    // column of every row of `ys`.
                    unsafe { fill::assume_init(ys) }
                } else {
                    // Zeroed here rather than in a pass over the whole output (gemm does not
                    // use the values, but it may read them).
                    let ys = if split.inner_parallel {
                        fill::par_init_zeroed(ys)
                    } else {
                        fill::init_zeroed(ys)
                    };
                    if panels_parallel {
                        // SAFETY: `ys` is this sample's `[c_out, l]` output, borrowed mutably
                        // here.
                        unsafe {
                            matmul_panels_parallel(xs, w, d, g, (ys.as_mut_ptr(), None), None)
                        };
                    } else {
                        for oy in split.panels(d, g, 1) {
                            let (at, pw) = (oy.start * d.ow, oy.len() * d.ow);
                            let col = columns(xs, d, g, (1, oy), col_buf, split.inner_parallel);
                            if inner && at == 0 && pw == l && rows_parallel {
                                matmul_rows_parallel(d.c_out, l, rows, ys, w, col);
                                continue;
                            }
                            matmul(
                                d.c_out,
                                pw,
                                rows,
                                row_major_mut(ys[at..].as_mut_ptr(), l),
                                false,
                                row_major(w.as_ptr(), rows),
                                row_major(col.as_ptr(), pw),
                                par,
                            );
                        }
                    }
                    ys
                };
                // Finished above by the packed products.
                let finished = packed.is_some();
                if let Some(finish) = finish.filter(|_| !finished) {
                    let plane = |(ch, plane): (usize, &mut [T])| finish(n0, ch, 0, plane);
                    for_each_plane(ys, l, split.inner_parallel, plane);
                }
            }
        })
    });
    // SAFETY: the groups cover the batch and their chunks of `per` samples each group; every
    // chunk's `ys` went whole through `init_copy` (plane by plane, `nc·c_out` planes of `l`),
    // `init_zeroed`, `par_init_zeroed` or the packed products above.
    unsafe { fill::assume_init_vec(y) }
}

/// `y (m×n) = w (m×k) · col (k×n)`, all row-major, the rows of `w` and `y` split into one
/// block per thread, each block a single-threaded gemm: for one sample's small maps (at
/// least as many output channels as positions, ResNet's 14×14 and 7×7 stages, or fewer than
/// [`ROWS_PARALLEL_POSITIONS`] positions), where gemm's own threading splits the few
/// columns. In the browser at 2 threads ResNet-50 went from 152 to 145 ms a tile;
/// ResNet-18, whose time is in the large maps, did not move.
fn matmul_rows_parallel<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    y: &mut [T],
    w: &[T],
    col: &[T],
) {
    // Whole multiples of 8 rows (gemm's register tiles) per block.
    let block = m
        .div_ceil(threads().max(1))
        .next_multiple_of(8)
        .min(m.max(1));
    y[..m * n]
        .par_chunks_mut(block * n)
        .enumerate()
        .for_each(|(b, y_rows)| {
            matmul(
                y_rows.len() / n,
                n,
                k,
                row_major_mut(y_rows.as_mut_ptr(), n),
                false,
                row_major(w[b * block * k..].as_ptr(), k),
                row_major(col.as_ptr(), n),
                gemm::Parallelism::None,
            )
        });
}

/// One sample's output `y` `[c_out, oh·ow]` as a raw pointer, for tasks that each write a
/// disjoint range of its columns (output positions) in every row.
#[derive(Clone, Copy)]
struct SharedColumns<T> {
    ptr: *mut T,
}

// SAFETY: the tasks handed a `SharedColumns` write disjoint columns of it
// (`matmul_panels_parallel`), and `T` is plain data (`WithDType`).
unsafe impl<T: Send> Send for SharedColumns<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedColumns<T> {}

impl<T> SharedColumns<T> {
    /// The output from column `at` on.
    fn at(&self, at: usize) -> *mut T {
        self.ptr.wrapping_add(at)
    }
}

/// One sample's spatial convolution on a large map `y = w · im2col(x)` split over the
/// threads by panels of output rows, each panel unfolded into its thread's scratch (which
/// stays in that core's L2) and multiplied there by a single-threaded gemm into its columns
/// of `y`. The whole map unfolded at once (ResNet's 7×7 stem: 7.4 MB) went through memory
/// between the unfolding and gemm, whose own threading then split its columns.
///
/// # Safety
/// `y` is valid for writes of the sample's whole output `[c_out, oh·ow]`, which nothing else
/// reads or writes during the call; when `packed` ([`packed::pack`]'s kernel) is given, `T`
/// is f32.
unsafe fn matmul_panels_parallel<T: Scratch>(
    x: &[T],
    w: &[T],
    d: &Dims,
    g: ConvGeom,
    (y, packed): (*mut T, Option<(&[f32], packed::Layout)>),
    finish: Option<(Finish<T>, usize)>,
) {
    let (l, rows) = (d.out_len(), d.rows());
    assert!(w.len() >= d.c_out * rows);
    let panels = balanced_panels(d.oh, panel_rows(d), threads().max(1));
    let out = SharedColumns { ptr: y };
    panels.into_par_iter().for_each(|oy| {
        let (at, pw) = (oy.start * d.ow, oy.len() * d.ow);
        // The panel's columns `at..at + pw` of every row of `y` by the packed products.
        let packed_product = |packed: (&[f32], packed::Layout), b: packed::Rhs| {
            let y = (out.at(at).cast::<f32>(), l);
            let epilogue = finish.map(|f| finishing::<T>(f, at));
            let epilogue = epilogue.as_ref().map(|e| e as packed::Epilogue);
            // SAFETY: the panel's columns `at..at + pw` of every row of `y`: within `y` (this
            // function's contract), and no other panel's (the panels' row ranges are
            // disjoint); `T` is f32 (`packed` is given). `b` is read only: this sample's
            // input, or the panel's own unfolded columns.
            unsafe { packed::product_into(packed, (d.c_out, pw, rows), b, y, false, epilogue) }
        };
        if let (Some(packed), true) = (packed, gathers(d, g)) {
            let b = packed::Unfolded {
                first: at,
                ..unfolded(x, d, g)
            };
            return packed_product(packed, packed::Rhs::Unfolded(b));
        }
        T::with_scratch(rows * pw, |buf| {
            let col = columns(x, d, g, (1, oy), buf, false);
            // Either way, the panel's columns `at..at + pw` of every row of `y`: within `y`
            // (this function's contract), and no other panel's.
            match (packed, shifted::as_f32(col)) {
                (Some(packed), Some(col)) => packed_product(packed, packed::Rhs::Strided(col, pw)),
                _ => matmul(
                    d.c_out,
                    pw,
                    rows,
                    row_major_mut(out.at(at), l),
                    false,
                    row_major(w.as_ptr(), rows),
                    row_major(col.as_ptr(), pw),
                    gemm::Parallelism::None,
                ),
            }
        })
    });
}

/// Whether a thread's panel ([`matmul_panels_parallel`]) has the packed products gather its
/// unfolded columns from the input themselves ([`packed::Rhs::Unfolded`]: with AVX2, whose
/// products copy `B` into strips anyway) instead of unfolding the panel into a buffer that
/// the strips then copy. Same values, same bits; one sample, two threads, Zen 3, the two
/// alternating pass by pass in one process: the stem 2487 → 2256 µs, ResNet-50's 3×3 stride-2
/// 128 → 128 on 56×56 2089 → 1996 µs, its 1×1 stride-2 256 → 512 1573 → 1513 µs,
/// ResNet-18's 3×3 stride-2 64 → 128 1173 → 1117 µs. Not for a map taken whole by both
/// threads (small maps): a product split by rows would gather every column on each thread,
/// where the unfolding splits it, and there ResNet-50's 256 → 256 onto 14×14 ran slower.
fn gathers(d: &Dims, g: ConvGeom) -> bool {
    !d.is_pointwise(g) && packed::isa() == Some(packed::Isa::Avx2)
}

/// A sample's input `x` (f32: the packed products') as its unfolded matrix from the first
/// position ([`packed::Unfolded`]).
fn unfolded<'a, T: WithDType>(x: &'a [T], d: &Dims, g: ConvGeom) -> packed::Unfolded<'a> {
    let x = shifted::as_f32(x).expect("f32 (packed is)");
    packed::Unfolded {
        x: &x[..d.c_in * d.h * d.w],
        dims: *d,
        geom: g,
        first: 0,
    }
}

/// A sample's [`Finish`] as the [`packed::Epilogue`] of a product whose columns start at the
/// sample's position `at`: `(finish, sample)`, for f32 outputs (the packed products').
fn finishing<T: WithDType>(
    (finish, sample): (Finish<'_, T>, usize),
    at: usize,
) -> impl Fn(usize, usize, &mut [f32]) + Sync + '_ {
    assert_eq!(
        T::DTYPE,
        candle_core::DType::F32,
        "the packed products are f32"
    );
    move |ch, column, values| {
        // SAFETY: `T` is f32 (asserted above): the same values, the same layout.
        let values = unsafe {
            std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<T>(), values.len())
        };
        finish(sample, ch, at + column, values)
    }
}

/// `rows` output rows in panels of at most `most` rows (at least one), as evenly among
/// `threads` as whole rows allow: the panels of each thread's share in turn (rayon's halving
/// hands each thread a contiguous run of them), at least four a thread where the rows allow,
/// for stealing. Panels of one height regardless of the threads gave ResNet-50's 28- and
/// 14-row maps seven panels, four on one of two threads and three on the other.
pub(super) fn balanced_panels(rows: usize, most: usize, threads: usize) -> Vec<Range<usize>> {
    let shares = threads.min(rows).max(1);
    let (smallest, largest) = (rows / shares, rows.div_ceil(shares));
    // As many panels in every share, so that halving the list halves the rows.
    let count = largest.div_ceil(most.max(1)).max(4.min(smallest)).max(1);
    let mut panels = Vec::with_capacity(shares * count);
    for t in 0..shares {
        let share = (t * rows / shares)..((t + 1) * rows / shares);
        for p in 0..count {
            let start = share.start + p * share.len() / count;
            let end = share.start + (p + 1) * share.len() / count;
            if start < end {
                panels.push(start..end);
            }
        }
    }
    panels
}

/// `W'[ci, co, ky, kx] = W[co, ci, k−1−ky, k−1−kx]`: the kernel that turns a stride-1
/// convolution's input gradient into a forward convolution of the output gradient, into `out`.
pub(super) fn flipped_transpose<T: WithDType>(w: &[T], d: &Dims, out: &mut [T]) {
    let kk = d.k * d.k;
    // Blocks of input channels: each output channel's taps for the whole block are one
    // contiguous read of `w`, where one input channel at a time read 36 bytes per cache line
    // fetched (14% of a 512-channel input gradient).
    out[..w.len()]
        .par_chunks_mut(FLIP_BLOCK * d.c_out * kk)
        .enumerate()
        .for_each(|(b, block)| {
            let ci0 = b * FLIP_BLOCK;
            let cis = block.len() / (d.c_out * kk);
            for co in 0..d.c_out {
                let src = &w[(co * d.c_in + ci0) * kk..][..cis * kk];
                for (j, taps) in src.chunks_exact(kk).enumerate() {
                    let dst = &mut block[(j * d.c_out + co) * kk..][..kk];
                    for (o, v) in dst.iter_mut().zip(taps.iter().rev()) {
                        *o = *v;
                    }
                }
            }
        });
}

pub(super) fn conv_input_grad<T: Scratch>(dy: &[T], w: &[T], d: &Dims, g: ConvGeom) -> Vec<T> {
    if let Some(dx) = shifted::input_grad(dy, w, d, g) {
        return dx;
    }
    if g.stride == 1 && d.k > 1 && g.padding < d.k {
        // dX = conv(dY, W', padding k−1−p): the forward kernels (panels, no col2im) instead
        // of Wᵀ·dY and a fold, which packs the whole kernel per thread and writes a column
        // buffer k² times dX's size (twice as slow on ResNet's small late maps).
        let dims = Dims {
            n: d.n,
            c_in: d.c_out,
            h: d.oh,
            w: d.ow,
            c_out: d.c_in,
            k: d.k,
            oh: d.h,
            ow: d.w,
        };
        let geom = ConvGeom {
            stride: 1,
            padding: d.k - 1 - g.padding,
        };
        if shifted::forward_applies::<T>(&dims, geom) {
            return shifted::forward_flipped(dy, w, &dims, geom);
        }
        // The flipped kernel goes in a reused buffer: a fresh 9 MB one (ResNet's 512-channel
        // kernels) cost 2 ms of page faults per call.
        return T::with_kernel_scratch(w.len(), |flipped| {
            flipped_transpose(w, d, flipped);
            conv_forward(dy, flipped, &dims, geom)
        });
    }
    let l = d.out_len();
    let rows = d.rows();
    let plane = d.h * d.w;
    let split = Split::new(d);
    let par = split.parallelism();
    let mut dx: Vec<T> = par_zeros(d.n * d.c_in * plane);
    let dy_len = split.scratch_len(d.c_out * l);
    let col_len = split.scratch_len(rows * l);
    for_groups(&split, &mut dx, d.c_in * plane, |group, dx_part| {
        // Wᵀ as a (rows × c_out) view of the row-major (c_out × rows) kernel.
        let wt = Mat {
            ptr: w.as_ptr(),
            rs: 1,
            cs: rows as isize,
        };
        T::with_scratch(dy_len + col_len, |scratch| {
            let (dy_buf, col_buf) = scratch.split_at_mut(dy_len);
            for n0 in group.clone().step_by(split.per) {
                let nc = split.per.min(group.end - n0);
                let width = nc * l;
                let dy_cm = channel_major(&dy[n0 * d.c_out * l..], d.c_out, l, nc, dy_buf);
                let dxs =
                    &mut dx_part[(n0 - group.start) * d.c_in * plane..][..nc * d.c_in * plane];
                if d.is_pointwise(g) {
                    // dX itself is Wᵀ·dY (channel-major for several samples).
                    let direct = nc == 1;
                    let dst = if direct {
                        &mut dxs[..]
                    } else {
                        &mut col_buf[..rows * width]
                    };
                    matmul(
                        rows,
                        width,
                        d.c_out,
                        row_major_mut(dst.as_mut_ptr(), width),
                        false,
                        wt,
                        row_major(dy_cm.as_ptr(), width),
                        par,
                    );
                    if !direct {
                        transpose_chunk(&col_buf[..rows * width], dxs, d.c_in, l, nc, true);
                    }
                    continue;
                }
                // dX = col2im(Wᵀ·dY), panel by panel of output rows (dx starts at zero).
                for oy in split.panels(d, g, nc) {
                    let (at, pw) = (oy.start * d.ow, nc * oy.len() * d.ow);
                    matmul(
                        rows,
                        pw,
                        d.c_out,
                        row_major_mut(col_buf.as_mut_ptr(), pw),
                        false,
                        wt,
                        row_major(dy_cm[at..].as_ptr(), width),
                        par,
                    );
                    col2im(
                        &col_buf[..rows * pw],
                        d,
                        g,
                        (nc, oy),
                        dxs,
                        split.inner_parallel,
                    );
                }
            }
        })
    });
    dx
}

pub(super) fn conv_weight_grad<T: Scratch>(x: &[T], dy: &[T], d: &Dims, g: ConvGeom) -> Vec<T> {
    if shifted::weight_grad_applies::<T>(d, g) {
        return shifted::weight_grad(x, dy, d, g);
    }
    let l = d.out_len();
    let rows = d.rows();
    let split = Split::new(d);
    let par = split.parallelism();
    let dy_len = split.scratch_len(d.c_out * l);
    let col_len = split.scratch_len(rows * l);
    let partial = |group: Range<usize>| -> Vec<T> {
        let mut dw = vec![T::zero(); d.c_out * rows];
        let mut first = true;
        T::with_scratch(dy_len + col_len, |scratch| {
            let (dy_buf, col_buf) = scratch.split_at_mut(dy_len);
            for n0 in group.clone().step_by(split.per) {
                let nc = split.per.min(group.end - n0);
                let width = nc * l;
                let dy_cm = channel_major(&dy[n0 * d.c_out * l..], d.c_out, l, nc, dy_buf);
                let xs = &x[n0 * d.c_in * d.h * d.w..];
                for oy in split.panels(d, g, nc) {
                    let (at, pw) = (oy.start * d.ow, nc * oy.len() * d.ow);
                    let col = columns(xs, d, g, (nc, oy), col_buf, split.inner_parallel);
                    // dW (+)= dY[:, panel] (c_out × pw) · colᵀ (pw × rows)
                    matmul(
                        d.c_out,
                        rows,
                        pw,
                        row_major_mut(dw.as_mut_ptr(), rows),
                        !first,
                        row_major(dy_cm[at..].as_ptr(), width),
                        Mat {
                            ptr: col.as_ptr(),
                            rs: 1,
                            cs: pw as isize,
                        },
                        par,
                    );
                    first = false;
                }
            }
        });
        dw
    };
    sum_over_groups(&split, d.c_out * rows, partial)
}

/// `partial(group)` for every group of `split` (in parallel when there are several), summed
/// in group order so that the result is the same every run; `len` elements each.
fn sum_over_groups<T: WithDType>(
    split: &Split,
    len: usize,
    partial: impl Fn(Range<usize>) -> Vec<T> + Sync + Send,
) -> Vec<T> {
    if split.groups.len() == 1 {
        return partial(split.groups[0].clone());
    }
    let partials: Vec<Vec<T>> = split.groups.par_iter().cloned().map(partial).collect();
    let mut parts = partials.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![T::zero(); len]);
    for p in parts {
        sum.par_chunks_mut(SUM_CHUNK)
            .zip(p.par_chunks(SUM_CHUNK))
            .for_each(|(a, b)| {
                for (a, b) in a.iter_mut().zip(b) {
                    *a += *b;
                }
            });
    }
    sum
}
