//! Stride-1 "same" convolutions (`k = 2·pad + 1`, ResNet's and DenseNet's 3×3) without
//! unfolding. The input's planes are copied once, zero-padded, into a flat layout where each
//! kernel tap `(ky, kx)` reads the plane at a constant shift of the output position. The
//! convolution is then `k²` accumulating products of the tap's `[c_out, c_in]` kernel slice
//! with the shifted plane matrix. gemm reads the planes directly, so the `k²`-times-larger
//! column buffer is never written.
//!
//! The price is padding columns: outputs are computed on the padded grid and the padding
//! positions are dropped. On an `h×w` map that wastes `1 − h·w / ((h+p)(w+p))` of the
//! products, so [`planar`] keeps small maps on the unfolding path.
//!
//! Where the direct AVX-512 kernels run ([`direct`]), the same planes laid out channels-last
//! also serve smaller maps and stride-2 "same" convolutions (the 7×7 stem, ResNet's
//! downsampling 3×3): outputs are computed at their own positions only.

use super::direct;
use super::im2col::{
    finish_planes, flipped_transpose, for_each_plane, for_groups, matmul, row_major, row_major_mut,
    transpose_chunk, Finish, Mat, Scratch, Split,
};
use super::{ConvGeom, Dims, PackedKernel};
use crate::layers::fill::par_zeros;
use candle_core::{DType, WithDType};
use rayon::prelude::*;

/// Maps must keep at least this share of the padded grid's positions (a 14×14 map keeps
/// 87%, 7×7 keeps 77%): below it the wasted products cost more than unfolding.
const MIN_USEFUL_SHARE: f64 = 0.85;
/// Elements of the padded input and output buffers of one chunk of samples: 2 MB in f32,
/// so each of the `k²` products reads the planes from cache (4× this was slower on ResNet-18
/// at 224 px than unfolding; this and half of it measured the same).
#[cfg(not(test))]
const CHUNK_BUDGET: usize = 1 << 19;
/// Small in unit tests, so that their batches span several chunks.
#[cfg(test)]
const CHUNK_BUDGET: usize = 1 << 13;

/// Positions a map needs for the channels-last direct kernels (6×6): on smaller maps
/// (ResNet's last stage at 112 px, 4×4) gemm's unfolded products were as fast forward and
/// faster for the weight gradient (512 channels: 7.4 against 8.5 ms).
const MIN_DIRECT_POSITIONS: usize = 36;

/// (output, input) channel pairs per task of the weight gradient's final sum.
const TRANSPOSE_PAIRS: usize = 1 << 12;

/// Channels a tap's product needs on both sides: each of the `k²` products has depth
/// `c_in` and rewrites the `c_out`-row output, which thinner convolutions do not amortise.
const MIN_CHANNELS: usize = 64;

/// Whether a convolution's forward pass takes this module: a batch split across threads and
/// either [`planar`] or, where the direct kernels run ([`direct_applies`]),
/// [`channels_last_fits`] with a whole vector block of output channels (any input channels:
/// ResNet's 7×7 stem on 3 channels qualifies). A batch smaller than the thread pool takes it
/// only through the direct kernels, which split output channels and positions across
/// threads (through gemm each of the `k²` products would run multi-threaded, whose
/// synchronisation costs more than the unfolding it saves).
pub(super) fn forward_applies<T: WithDType>(d: &Dims, g: ConvGeom) -> bool {
    let channels_last =
        direct_applies::<T>() && channels_last_fits(d, g) && d.c_out >= MIN_CHANNELS;
    if Split::new(d).inner_parallel {
        // A single sample: only the direct kernels, which split their output channels (and
        // positions) across the threads themselves; channels-last only for the small maps
        // of stride 1 (ResNet's 7×7 stage: 0.62 against gemm's 0.79 ms for 512 channels),
        // since the stem and stride 2 measured level or slower than gemm there.
        return planar_direct::<T>(d, g) || (channels_last && g.stride == 1);
    }
    planar(d, g) || planar_direct::<T>(d, g) || channels_last
}

/// The planar direct kernel's geometry ([`geometry_fits`]) where it runs, with any channel
/// counts: it has no per-tap products to amortise (DenseNet's 3×3 128 → 32 takes it).
fn planar_direct<T: WithDType>(d: &Dims, g: ConvGeom) -> bool {
    geometry_fits(d, g) && direct_forward_applies::<T>()
}

/// Whether a convolution's weight gradient takes this module: as [`forward_applies`], with
/// enough channels on both sides for the channels-last kernel.
pub(super) fn weight_grad_applies<T: WithDType>(d: &Dims, g: ConvGeom) -> bool {
    !Split::new(d).inner_parallel
        && (planar(d, g)
            || (direct_applies::<T>()
                && channels_last_fits(d, g)
                && d.c_in.min(d.c_out) >= MIN_CHANNELS))
}

/// Whether a convolution's input gradient takes [`input_grad`]: a "same" convolution of
/// stride 2 whose input map has at least [`MIN_DIRECT_POSITIONS`] positions and a whole
/// vector block of channels, where the direct kernels run (stride 1 goes through
/// [`forward_flipped`]).
fn input_grad_applies<T: WithDType>(d: &Dims, g: ConvGeom) -> bool {
    g.stride == 2
        && same_padded(d, g)
        && d.h * d.w >= MIN_DIRECT_POSITIONS
        && d.c_in >= MIN_CHANNELS
        && direct_applies::<T>()
        && !Split::new(d).inner_parallel
}

/// The input gradient of a stride-2 convolution by the direct kernels, where
/// [`input_grad_applies`]; `None` elsewhere.
pub(super) fn input_grad<T: Scratch>(dy: &[T], w: &[T], d: &Dims, g: ConvGeom) -> Option<Vec<T>> {
    if !input_grad_applies::<T>(d, g) {
        return None;
    }
    let dx = input_grad_scattered(as_f32(dy)?, as_f32(w)?, d, g);
    Some(from_f32(dx))
}

/// The input gradient scattered: each output position's gradient times each tap's kernel
/// slice, added to the input position the tap read, in channels-last padded planes.
fn input_grad_scattered(dy: &[f32], w: &[f32], d: &Dims, g: ConvGeom) -> Vec<f32> {
    let (pad, l, l_out) = (g.padding, d.h * d.w, d.out_len());
    let split = Split::new(d);
    let kernel = direct::ByTap::new(direct::Source::Transposed(w), d.c_in, d.c_out, d.k * d.k);
    let (per, full) = chunking(d, pad, &split);
    let stride = direct::scatter_stride(d.c_in);
    let mut dx: Vec<f32> = par_zeros(d.n * d.c_in * l);
    for_groups(&split, &mut dx, d.c_in * l, |group, dx_part| {
        f32::with_scratch(stride * full.len, |buf| {
            for n0 in group.clone().step_by(per) {
                let nc = per.min(group.end - n0);
                let pl = Planes::new(d.h, d.w, pad, nc);
                let dx_cl = &mut buf[..stride * pl.len];
                dx_cl.fill(0.0);
                let positions = pl.output_positions(nc, g.stride, (d.oh, d.ow));
                let dys = &dy[n0 * d.c_out * l_out..][..nc * d.c_out * l_out];
                direct::input_grad_scatter(
                    dys,
                    l_out,
                    &pl,
                    d.k,
                    &positions,
                    &kernel,
                    (dx_cl, stride),
                );
                // The input's own positions, as rows of the planes.
                let rows: Vec<u32> = pl
                    .output_positions(nc, 1, (d.h, d.w))
                    .into_iter()
                    .map(|p| p + pl.first as u32)
                    .collect();
                let dxs = &mut dx_part[(n0 - group.start) * d.c_in * l..][..nc * d.c_in * l];
                direct::rows_to_nchw(dx_cl, stride, &rows, (d.c_in, l), dxs);
            }
        })
    });
    dx
}

/// The padded planes' path: a stride-1 "same" convolution on a map that is not too small
/// ([`geometry_fits`]), with enough channels on both sides.
fn planar(d: &Dims, g: ConvGeom) -> bool {
    geometry_fits(d, g) && d.c_in.min(d.c_out) >= MIN_CHANNELS
}

/// The channels-last direct kernels' geometry: a "same"-padded convolution (`k = 2·pad + 1`,
/// `k > 1`) of stride 1 or 2 with at least [`MIN_DIRECT_POSITIONS`] output positions.
fn channels_last_fits(d: &Dims, g: ConvGeom) -> bool {
    (g.stride == 1 || g.stride == 2) && same_padded(d, g) && d.oh * d.ow >= MIN_DIRECT_POSITIONS
}

/// Whether the direct kernels run for element type `T` (f32 on a CPU with AVX-512F).
fn direct_applies<T: WithDType>() -> bool {
    T::DTYPE == DType::F32 && direct::available()
}

/// Whether the planar direct forward kernel runs for element type `T` (f32 on a CPU with
/// AVX-512F or AVX2 and FMA).
fn direct_forward_applies<T: WithDType>() -> bool {
    T::DTYPE == DType::F32 && direct::forward_available()
}

/// A stride-1 "same" convolution (`k = 2·pad + 1`).
fn is_same(d: &Dims, g: ConvGeom) -> bool {
    g.stride == 1 && same_padded(d, g)
}

/// A spatial kernel padded to keep the map's size at stride 1 (`k = 2·pad + 1`, `k > 1`).
fn same_padded(d: &Dims, g: ConvGeom) -> bool {
    d.k > 1 && d.k == 2 * g.padding + 1
}

/// A stride-1 "same" convolution on a map that keeps [`MIN_USEFUL_SHARE`] of its padded grid.
fn geometry_fits(d: &Dims, g: ConvGeom) -> bool {
    let p = g.padding;
    is_same(d, g) && (d.h * d.w) as f64 >= MIN_USEFUL_SHARE * ((d.h + p) * (d.w + p)) as f64
}

/// Where `nc` samples of an `h×w` map sit in a channel's flat padded plane.
///
/// Rows are `w + p` long: `w` values then `p` zeros, which are also the left padding of
/// the next row. Samples follow each other with `p` zero rows in between; `p + 1` zero rows
/// lead (the extra one covers the left padding of the first row) and one trails.
pub(super) struct Planes {
    pad: usize,
    h: usize,
    w: usize,
    /// Row length `w + p`.
    wp: usize,
    /// Rows from one sample's first row to the next's, `h + p`.
    sample_rows: usize,
    /// Elements of one channel's plane.
    pub(super) len: usize,
    /// Flat index of the first sample's first value.
    first: usize,
    /// Output positions computed: from `first` to the last sample's last row end.
    pub(super) span: usize,
}

impl Planes {
    pub(super) fn new(h: usize, w: usize, pad: usize, nc: usize) -> Self {
        let wp = w + pad;
        let sample_rows = h + pad;
        let lead = pad + 1;
        Self {
            pad,
            h,
            w,
            wp,
            sample_rows,
            len: (lead + nc * sample_rows + 1) * wp,
            first: lead * wp,
            span: ((nc - 1) * sample_rows + h) * wp,
        }
    }

    /// Where tap `(ky, kx)`'s shifted matrix starts in a plane: the flat index the first
    /// output position reads, never below 0 thanks to the extra leading zero row (and
    /// `start + span` stays within `len` by the trailing one).
    pub(super) fn tap_start(&self, ky: usize, kx: usize) -> usize {
        self.first + ky * self.wp + kx - self.pad * (self.wp + 1)
    }

    /// Copy `nc` samples `[nc, c, h, w]` into `buf` `[c, len]`, zeros everywhere else;
    /// channels in parallel when `parallel`.
    fn pad<T: WithDType>(&self, src: &[T], c: usize, nc: usize, buf: &mut [T], parallel: bool) {
        let (h, w, wp) = (self.h, self.w, self.wp);
        let fill = |(ch, plane): (usize, &mut [T])| {
            plane[..self.first].fill(T::zero());
            let mut at = self.first;
            for s in 0..nc {
                let sample = &src[(s * c + ch) * h * w..][..h * w];
                for row in sample.chunks_exact(w) {
                    plane[at..at + w].copy_from_slice(row);
                    plane[at + w..at + wp].fill(T::zero());
                    at += wp;
                }
                let gap = (self.sample_rows - h) * wp;
                plane[at..at + gap].fill(T::zero());
                at += gap;
            }
            plane[at..].fill(T::zero());
        };
        let planes = &mut buf[..c * self.len];
        if parallel {
            planes
                .par_chunks_exact_mut(self.len)
                .enumerate()
                .for_each(fill);
        } else {
            planes.chunks_exact_mut(self.len).enumerate().for_each(fill);
        }
    }

    /// Copy `nc` samples `[nc, c, h, w]` into `buf` `[len, stride]`: [`Planes::pad`]'s
    /// planes laid out channels-last, `stride ≥ c` elements from one position to the next
    /// (at least `c` rounded up to 16 for f32, which the direct kernels' transpose takes).
    fn pad_channels_last<T: WithDType>(
        &self,
        src: &[T],
        (c, stride): (usize, usize),
        nc: usize,
        buf: &mut [T],
    ) {
        /// Channels copied together: one 64-byte write per position in f32.
        const BLOCK: usize = 16;
        let (h, w, wp) = (self.h, self.w, self.wp);
        let buf = &mut buf[..self.len * stride];
        buf[..self.first * stride].fill(T::zero());
        let mut at = self.first;
        for s in 0..nc {
            let sample = &src[s * c * h * w..][..c * h * w];
            for y in 0..h {
                let row = &mut buf[at * stride..(at + wp) * stride];
                match (as_f32(sample), as_f32_mut(&mut row[..w * stride])) {
                    (Some(sample), Some(dst)) if direct::available() => {
                        direct::transpose_row(sample, (c, h, w), y, dst, stride);
                    }
                    _ => {
                        for c0 in (0..c).step_by(BLOCK) {
                            let cs = BLOCK.min(c - c0);
                            let dsts = row[..w * stride].chunks_exact_mut(stride);
                            for (x, dst) in dsts.enumerate() {
                                for (j, v) in dst[c0..c0 + cs].iter_mut().enumerate() {
                                    *v = sample[((c0 + j) * h + y) * w + x];
                                }
                            }
                        }
                    }
                }
                row[w * stride..].fill(T::zero());
                at += wp;
            }
            let gap = (self.sample_rows - h) * wp;
            buf[at * stride..(at + gap) * stride].fill(T::zero());
            at += gap;
        }
        buf[at * stride..].fill(T::zero());
    }

    /// Where the outputs of a "same"-padded convolution of stride `stride` (`oh × ow` per
    /// sample) read the planes of `nc` samples, as indices into the span (the position of
    /// their first tap's centre), in the dense `[nc, oh, ow]` order.
    fn output_positions(&self, nc: usize, stride: usize, (oh, ow): (usize, usize)) -> Vec<u32> {
        let mut out = Vec::with_capacity(nc * oh * ow);
        for s in 0..nc {
            for oy in 0..oh {
                let row = (s * self.sample_rows + stride * oy) * self.wp;
                out.extend((0..ow).map(|ox| (row + stride * ox) as u32));
            }
        }
        out
    }

    /// Copy the real positions of `grid` `[c, span]` (outputs on the padded grid) to
    /// `dst` `[nc, c, h, w]`, each plane then handed to `finish` (sample `first + s`,
    /// channel) while it is in cache; planes in parallel when `parallel`.
    #[allow(clippy::too_many_arguments)]
    fn unpad<T: WithDType>(
        &self,
        grid: &[T],
        c: usize,
        (first, nc): (usize, usize),
        dst: &mut [T],
        parallel: bool,
        finish: Option<Finish<T>>,
    ) {
        let (h, w, wp) = (self.h, self.w, self.wp);
        let copy = |(i, out): (usize, &mut [T])| {
            let (s, ch) = (i / c, i % c);
            let rows = &grid[ch * self.span + s * self.sample_rows * wp..];
            for (y, row) in out.chunks_exact_mut(w).enumerate() {
                row.copy_from_slice(&rows[y * wp..y * wp + w]);
            }
            if let Some(finish) = finish {
                finish(first + s, ch, 0, out);
            }
        };
        for_each_plane(&mut dst[..nc * c * h * w], h * w, parallel, copy);
    }
}

/// Samples per chunk (padded input and output planes within [`CHUNK_BUDGET`]), and the
/// planes of the largest chunk any group of `split` takes, which size the scratch buffers.
fn chunking(d: &Dims, pad: usize, split: &Split) -> (usize, Planes) {
    let per_sample = (d.c_in + d.c_out) * (d.h + pad) * (d.w + pad);
    let per = (CHUNK_BUDGET / per_sample.max(1)).max(1);
    let most = per.min(split.groups.iter().map(|g| g.len()).max().unwrap_or(1));
    (per, Planes::new(d.h, d.w, pad, most))
}

/// `s` itself when `T` is f32 (the element type the direct kernels take).
pub(super) fn as_f32<T: WithDType>(s: &[T]) -> Option<&[f32]> {
    // SAFETY: T's DTYPE is F32 only for T = f32.
    (T::DTYPE == DType::F32)
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) })
}

/// `v` as a `Vec<T>` for `T` = f32 (the direct kernels' results, once [`as_f32`] has
/// established the element type).
fn from_f32<T: WithDType>(v: Vec<f32>) -> Vec<T> {
    assert!(
        T::DTYPE == DType::F32,
        "direct kernels return f32 only for f32 inputs"
    );
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: T is f32 (checked above); the Vec's parts are handed over whole.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity()) }
}

/// [`as_f32`] for a mutable slice.
pub(super) fn as_f32_mut<T: WithDType>(s: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`.
    (T::DTYPE == DType::F32)
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) })
}

/// `w [c_out, c_in, k, k]` as `k²` row-major `[c_out, c_in]` tap slices.
fn taps_major<T: WithDType>(w: &[T], d: &Dims) -> Vec<T> {
    let kk = d.k * d.k;
    let mut out = vec![T::zero(); w.len()];
    out.par_chunks_exact_mut(d.c_out * d.c_in)
        .enumerate()
        .for_each(|(tap, slice)| {
            for (o, v) in slice.iter_mut().zip(w.iter().skip(tap).step_by(kk)) {
                *o = *v;
            }
        });
    out
}

/// The forward convolution of `x` `[n, c_in, h, w]` with `w` `[c_out, c_in, k, k]`.
pub(super) fn forward<T: Scratch>(
    x: &[T],
    w: &[T],
    d: &Dims,
    g: ConvGeom,
    cache: Option<&PackedKernel>,
    finish: Option<Finish<T>>,
) -> Vec<T> {
    forward_from(x, w, false, d, g, cache, finish)
}

/// The input gradient of a stride-1 convolution with kernel `w` `[c_in, c_out, k, k]`
/// (the forward convolution's): the forward convolution `d` of the output gradient `dy` with
/// `w`'s flipped transpose, which the direct kernels read from `w` as they pack it.
pub(super) fn forward_flipped<T: Scratch>(dy: &[T], w: &[T], d: &Dims, g: ConvGeom) -> Vec<T> {
    forward_from(dy, w, true, d, g, None, None)
}

/// [`forward`] with the kernel `w` itself or, when `flipped`, `w`'s flipped transpose; the
/// direct kernels' packing of it from `cache` when given (built there on first use); each
/// output plane handed to `finish` (on the planar path as it is copied out of the grid).
fn forward_from<T: Scratch>(
    x: &[T],
    w: &[T],
    flipped: bool,
    d: &Dims,
    g: ConvGeom,
    cache: Option<&PackedKernel>,
    finish: Option<Finish<T>>,
) -> Vec<T> {
    let source = as_f32(w).filter(|_| direct::forward_available()).map(|w| {
        if flipped {
            direct::Source::Flipped(w)
        } else {
            direct::Source::Plain(w)
        }
    });
    if !planar(d, g) && !planar_direct::<T>(d, g) && direct::available() {
        if let (Some(x), Some(w)) = (as_f32(x), source) {
            let mut y = from_f32(forward_channels_last(x, w, d, g, cache));
            finish_planes(&mut y, (d.c_out, d.out_len()), finish);
            return y;
        }
    }
    let (pad, kk, l) = (g.padding, d.k * d.k, d.h * d.w);
    let split = Split::new(d);
    let par = split.parallelism();
    let pack = |w| direct::Packed::new(w, d.c_out, d.c_in, kk);
    let packed = source.map(|w| match cache {
        Some(cache) => cache.get_or_pack(|| pack(w)),
        None => std::sync::Arc::new(pack(w)),
    });
    let taps = match (&packed, flipped) {
        (Some(_), _) => Vec::new(),
        (None, false) => taps_major(w, d),
        (None, true) => {
            // gemm multiplies the flipped kernel itself.
            let forward_dims = Dims {
                c_in: d.c_out,
                c_out: d.c_in,
                ..*d
            };
            let mut kernel = vec![T::zero(); w.len()];
            flipped_transpose(w, &forward_dims, &mut kernel);
            taps_major(&kernel, d)
        }
    };
    let (per, full) = chunking(d, pad, &split);
    let planes_len = d.c_in * full.len + direct::SLACK;
    let mut y: Vec<T> = par_zeros(d.n * d.c_out * l);
    for_groups(&split, &mut y, d.c_out * l, |group, y_part| {
        T::with_scratch(planes_len + d.c_out * full.span, |scratch| {
            let (planes_buf, grid_buf) = scratch.split_at_mut(planes_len);
            for n0 in group.clone().step_by(per) {
                let nc = per.min(group.end - n0);
                let pl = Planes::new(d.h, d.w, pad, nc);
                pl.pad(
                    &x[n0 * d.c_in * l..],
                    d.c_in,
                    nc,
                    planes_buf,
                    split.inner_parallel,
                );
                let direct = match (&packed, as_f32(planes_buf), as_f32_mut(grid_buf)) {
                    (Some(packed), Some(planes), Some(grid)) => {
                        direct::forward(planes, &pl, d.k, packed, grid, split.inner_parallel);
                        true
                    }
                    _ => false,
                };
                for tap in (0..kk).filter(|_| !direct) {
                    let start = pl.tap_start(tap / d.k, tap % d.k);
                    // grid (+)= W_tap (c_out × c_in) · shifted planes (c_in × span)
                    matmul(
                        d.c_out,
                        pl.span,
                        d.c_in,
                        row_major_mut(grid_buf.as_mut_ptr(), pl.span),
                        tap > 0,
                        row_major(taps[tap * d.c_out * d.c_in..].as_ptr(), d.c_in),
                        row_major(planes_buf[start..].as_ptr(), pl.len),
                        par,
                    );
                }
                let ys = &mut y_part[(n0 - group.start) * d.c_out * l..][..nc * d.c_out * l];
                let parallel = split.inner_parallel;
                pl.unpad(grid_buf, d.c_out, (n0, nc), ys, parallel, finish);
            }
        })
    });
    y
}

/// The forward convolution by the channels-last direct kernel: the input planes padded
/// channels-last, the output computed at the real positions only, then turned back to NCHW.
fn forward_channels_last(
    x: &[f32],
    w: direct::Source,
    d: &Dims,
    g: ConvGeom,
    cache: Option<&PackedKernel>,
) -> Vec<f32> {
    let (pad, l_in, l) = (g.padding, d.h * d.w, d.out_len());
    let split = Split::new(d);
    let pack = || direct::ByTap::new(w, d.c_out, d.c_in, d.k * d.k);
    let by_tap = match cache {
        Some(cache) => cache.get_or_pack_by_tap(pack),
        None => std::sync::Arc::new(pack()),
    };
    let (per, full) = chunking(d, pad, &split);
    let most = per.min(split.groups.iter().map(|g| g.len()).max().unwrap_or(1));
    let stride = direct::channels_last_stride(d.c_in);
    let planes_len = stride * full.len;
    let mut y: Vec<f32> = par_zeros(d.n * d.c_out * l);
    for_groups(&split, &mut y, d.c_out * l, |group, y_part| {
        f32::with_scratch(
            planes_len + direct::channels_last_out_len(d.c_out, most * l),
            |scratch| {
                let (x_cl, y_cl) = scratch.split_at_mut(planes_len);
                for n0 in group.clone().step_by(per) {
                    let nc = per.min(group.end - n0);
                    let pl = Planes::new(d.h, d.w, pad, nc);
                    let xs = &x[n0 * d.c_in * l_in..];
                    pl.pad_channels_last(xs, (d.c_in, stride), nc, x_cl);
                    let positions = pl.output_positions(nc, g.stride, (d.oh, d.ow));
                    let parallel = split.inner_parallel;
                    direct::forward_channels_last(
                        x_cl, &pl, d.k, &positions, &by_tap, y_cl, parallel,
                    );
                    let ys = &mut y_part[(n0 - group.start) * d.c_out * l..][..nc * d.c_out * l];
                    direct::channels_last_to_nchw(y_cl, d.c_out, l, ys, parallel);
                }
            },
        )
    });
    y
}

/// The kernel gradient of the convolution of `x` `[n, c_in, h, w]` given the output
/// gradient `dy` `[n, c_out, h, w]`.
pub(super) fn weight_grad<T: Scratch>(x: &[T], dy: &[T], d: &Dims, g: ConvGeom) -> Vec<T> {
    let (pad, kk, l, l_out) = (g.padding, d.k * d.k, d.h * d.w, d.out_len());
    let split = Split::new(d);
    let par = split.parallelism();
    let (per, full) = chunking(d, pad, &split);
    let slice = d.c_out * d.c_in;
    // The direct kernel wherever it runs; else gemm on the planes (`planar` holds).
    let direct = direct_applies::<T>();
    // Elements per position of the input planes: channels-last (padded) for the direct
    // kernel, one per channel otherwise.
    let cl_stride = direct::channels_last_stride(d.c_in);
    let x_stride = if direct { cl_stride } else { d.c_in };
    // Per group: k² tap slices [c_out, c_in], summed over the group's chunks.
    let partial = |group: std::ops::Range<usize>| -> Vec<T> {
        let mut dw = vec![T::zero(); kk * slice];
        let mut first_chunk = true;
        T::with_scratch((x_stride + d.c_out) * full.len, |scratch| {
            let (x_buf, dy_buf) = scratch.split_at_mut(x_stride * full.len);
            for n0 in group.clone().step_by(per) {
                let nc = per.min(group.end - n0);
                let pl = Planes::new(d.h, d.w, pad, nc);
                let (xs, dys) = (&x[n0 * d.c_in * l..], &dy[n0 * d.c_out * l_out..]);
                if direct {
                    // The output gradient, channels as rows.
                    transpose_chunk(dys, dy_buf, d.c_out, l_out, nc, false);
                    pl.pad_channels_last(xs, (d.c_in, cl_stride), nc, x_buf);
                    let bufs = (as_f32(x_buf), as_f32(dy_buf), as_f32_mut(&mut dw));
                    if let (Some(x_cl), Some(dy_t), Some(dw)) = bufs {
                        let positions = pl.output_positions(nc, g.stride, (d.oh, d.ow));
                        let dims = (d.c_in, d.c_out);
                        direct::weight_grad(
                            x_cl,
                            dy_t,
                            &pl,
                            d.k,
                            &positions,
                            dims,
                            dw,
                            !first_chunk,
                        );
                    }
                    first_chunk = false;
                    continue;
                }
                pl.pad(xs, d.c_in, nc, x_buf, split.inner_parallel);
                // The output gradient on the padded grid, zero at the padding positions, so
                // the products there add nothing.
                pl.pad(dys, d.c_out, nc, dy_buf, split.inner_parallel);
                for tap in 0..kk {
                    let start = pl.tap_start(tap / d.k, tap % d.k);
                    // dW_tap (+)= dY (c_out × span) · shifted planesᵀ (span × c_in)
                    matmul(
                        d.c_out,
                        d.c_in,
                        pl.span,
                        row_major_mut(dw[tap * slice..].as_mut_ptr(), d.c_in),
                        !first_chunk,
                        row_major(dy_buf[pl.first..].as_ptr(), pl.len),
                        Mat {
                            ptr: x_buf[start..].as_ptr(),
                            rs: 1,
                            cs: pl.len as isize,
                        },
                        par,
                    );
                }
                first_chunk = false;
            }
        });
        dw
    };
    // The groups' k² tap slices summed (in group order, the same every run) and put back
    // to [c_out, c_in, k, k] in one pass.
    let partials: Vec<Vec<T>> = if split.groups.len() == 1 {
        vec![partial(split.groups[0].clone())]
    } else {
        split.groups.par_iter().cloned().map(partial).collect()
    };
    let mut dw: Vec<T> = par_zeros(kk * slice);
    dw.par_chunks_mut(kk * TRANSPOSE_PAIRS)
        .enumerate()
        .for_each(|(b, out)| {
            let first = b * TRANSPOSE_PAIRS;
            for (i, v) in out.iter_mut().enumerate() {
                let at = (i % kk) * slice + first + i / kk;
                *v = partials[1..]
                    .iter()
                    .fold(partials[0][at], |sum, p| sum + p[at]);
            }
        });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv::tests::max_abs_diff;
    use candle_core::{Device, Tensor, Var};

    fn values(t: &Tensor) -> candle_core::Result<Vec<f64>> {
        t.flatten_all()?.to_vec1::<f64>()
    }

    /// `t`'s elements as f32.
    fn f32s(t: &Tensor) -> candle_core::Result<Vec<f32>> {
        t.flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()
    }

    /// Assert that f32 results `got` equal the f64 reference `want` within 2e-6 of its
    /// largest magnitude (at least 1); `what` names the case.
    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(got, want);
        assert!(
            diff < 2e-6 * scale,
            "{what} differs by {diff} (scale {scale})"
        );
    }

    /// Forward, input and kernel gradients against candle's own convolution and its
    /// autograd (f64), with batches spanning several chunks and groups.
    #[test]
    fn shifted_convolution_and_gradients_match_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (n, cin, cout, k, h, w) in [
            (7, 5, 8, 3, 14, 15),
            (3, 4, 3, 5, 24, 25),
            (1, 6, 4, 3, 20, 16),
        ] {
            let pad = (k - 1) / 2;
            let geom = ConvGeom {
                stride: 1,
                padding: pad,
            };
            let d = Dims::new(&[n, cin, h, w], &[cout, cin, k, k], geom)?;
            assert!(geometry_fits(&d, geom));
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, cin, h, w), &dev)?)?;
            let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (cout, cin, k, k), &dev)?)?;
            let reference = x.as_tensor().conv2d(wt.as_tensor(), pad, 1, 1, 1)?;
            let dy = Tensor::randn(0f64, 1.0, reference.shape(), &dev)?;
            let grads = reference.mul(&dy)?.sum_all()?.backward()?;
            let (xs, ws, dys) = (values(&x)?, values(&wt)?, values(&dy)?);
            let y = forward(&xs, &ws, &d, geom, None, None);
            // The input gradient: the forward convolution of dY with the flipped kernel.
            let d_t = Dims::new(&[n, cout, h, w], &[cin, cout, k, k], geom)?;
            let mut flipped = vec![0.0; ws.len()];
            flipped_transpose(&ws, &d, &mut flipped);
            let dx = forward(&dys, &flipped, &d_t, geom, None, None);
            let dx_read = forward_flipped(&dys, &ws, &d_t, geom);
            let dw = weight_grad(&xs, &dys, &d, geom);
            let want_dx = values(grads.get(x.as_tensor()).expect("dx"))?;
            let expected = [
                ("y", values(&reference)?),
                ("dx", want_dx.clone()),
                ("dx (flipped as packed)", want_dx),
                ("dw", values(grads.get(wt.as_tensor()).expect("dw"))?),
            ];
            for ((name, want), got) in expected.into_iter().zip([y, dx, dx_read, dw]) {
                let diff = max_abs_diff(&got, &want);
                assert!(
                    diff < 1e-9,
                    "{n}x{cin}x{h}x{w} k{k}: {name} differs by {diff}"
                );
            }
        }
        Ok(())
    }

    /// The direct AVX-512 kernels (f32) against candle's f64 convolution and autograd, on
    /// channel counts that leave partial blocks (output channels not a multiple of 4 or 64,
    /// input channels not a multiple of 16 or 32), a 5×5 kernel (a partial group of taps),
    /// large maps (planar tiles) and small ones (channels-last tiles), stride 2 on odd and
    /// even sizes (3×3 and a 7×7 stem), and batches spanning several chunks (accumulated
    /// weight gradients) and tiles.
    #[test]
    fn direct_kernels_match_candle() -> candle_core::Result<()> {
        if !direct::available() {
            eprintln!("no AVX-512F here: the direct kernels are not used, nothing to compare");
            return Ok(());
        }
        let dev = Device::Cpu;
        for (n, cin, cout, k, stride, h, w) in [
            (5, 37, 6, 3, 1, 14, 15),
            (3, 20, 9, 5, 1, 12, 13),
            (2, 70, 66, 3, 1, 16, 16),
            (3, 64, 65, 3, 1, 14, 14),
            (4, 70, 66, 3, 1, 5, 6),
            (3, 33, 130, 3, 1, 4, 4),
            (5, 3, 5, 3, 1, 20, 21),
            (3, 40, 70, 3, 2, 15, 14),
            (4, 5, 64, 7, 2, 23, 22),
        ] {
            let pad = (k - 1) / 2;
            let geom = ConvGeom {
                stride,
                padding: pad,
            };
            let d = Dims::new(&[n, cin, h, w], &[cout, cin, k, k], geom)?;
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, cin, h, w), &dev)?)?;
            let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (cout, cin, k, k), &dev)?)?;
            let reference = x.as_tensor().conv2d(wt.as_tensor(), pad, stride, 1, 1)?;
            let dy = Tensor::randn(0f64, 1.0, reference.shape(), &dev)?;
            // candle's own backward fails on odd sizes at stride 2: direct loops there.
            let grads = (stride == 1)
                .then(|| reference.mul(&dy)?.sum_all()?.backward())
                .transpose()?;
            let (xs, ws, dys) = (f32s(&x)?, f32s(&wt)?, f32s(&dy)?);
            let want_dw = match &grads {
                Some(grads) => values(grads.get(wt.as_tensor()).expect("dw"))?,
                None => weight_grad_by_loops(&values(&x)?, &values(&dy)?, &d, geom),
            };
            let mut checks = vec![
                (
                    "y",
                    values(&reference)?,
                    forward(&xs, &ws, &d, geom, None, None),
                ),
                ("dw", want_dw, weight_grad(&xs, &dys, &d, geom)),
            ];
            if stride == 2 {
                let want = input_grad_by_loops(&values(&dy)?, &values(&wt)?, &d, geom);
                checks.push((
                    "dx (scattered)",
                    want,
                    input_grad_scattered(&dys, &ws, &d, geom),
                ));
            }
            if let Some(grads) = grads {
                // The input gradient: the forward pass of dY with the flipped kernel.
                let d_t = Dims::new(&[n, cout, h, w], &[cin, cout, k, k], geom)?;
                let mut flipped = vec![0.0; ws.len()];
                flipped_transpose(&ws, &d, &mut flipped);
                let dx = forward(&dys, &flipped, &d_t, geom, None, None);
                let want = values(grads.get(x.as_tensor()).expect("dx"))?;
                // The same, the flipped kernel read from the forward one as it is packed.
                let dx_read = forward_flipped(&dys, &ws, &d_t, geom);
                checks.push(("dx", want.clone(), dx));
                checks.push(("dx (flipped as packed)", want, dx_read));
            }
            for (name, want, got) in checks {
                let what = format!("{n}x{cin}x{h}x{w} → {cout} k{k} s{stride}: {name}");
                assert_close(&got, &want, &what);
            }
        }
        Ok(())
    }

    /// A single sample (fewer samples than threads): the direct kernels split output
    /// channels and positions across the threads instead of gemm's unfolding, and still
    /// equal candle's f64 convolution.
    #[test]
    fn single_sample_forward_matches_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Planar maps, then channels-last ones: small maps, stride 2, a 7×7 stem.
        for (cin, cout, k, stride, h, w) in [
            (64, 66, 3, 1, 14, 14),
            (70, 129, 3, 1, 16, 17),
            (128, 32, 3, 1, 15, 14),
            (70, 130, 3, 1, 7, 7),
            (40, 70, 3, 2, 15, 14),
            (3, 64, 7, 2, 23, 22),
        ] {
            let g = ConvGeom {
                stride,
                padding: k / 2,
            };
            let d = Dims::new(&[1, cin, h, w], &[cout, cin, k, k], g)?;
            if !forward_applies::<f32>(&d, g) {
                // Only where the kernels do not run, or stride 2 (the single sample keeps
                // gemm).
                assert!(
                    !direct::available() || stride == 2,
                    "{cin}→{cout} k{k} s{stride} {h}x{w}"
                );
                continue;
            }
            let x = Tensor::randn(0f64, 1.0, (1, cin, h, w), &dev)?;
            let wt = Tensor::randn(0f64, 1.0, (cout, cin, k, k), &dev)?;
            let want = values(&x.conv2d(&wt, k / 2, stride, 1, 1)?)?;
            let (xs, ws) = (f32s(&x)?, f32s(&wt)?);
            let got = forward(&xs, &ws, &d, g, None, None);
            assert_close(&got, &want, &format!("{cin}→{cout} k{k} s{stride} {h}x{w}"));
            // A kernel packed once and kept gives the same output on every later pass.
            let cache = PackedKernel::default();
            for _ in 0..2 {
                assert_eq!(forward(&xs, &ws, &d, g, Some(&cache), None), got);
            }
            assert_eq!(cache.is_packed(), planar_direct::<f32>(&d, g));
            assert_eq!(cache.is_packed_by_tap(), !planar_direct::<f32>(&d, g));
        }
        Ok(())
    }

    /// `dX[s, ci, iy, ix] = Σ dY[s, co, oy, ox] · W[co, ci, ky, kx]` over the output positions
    /// and taps that read `(iy, ix)` (`iy = oy·stride + ky − p`), by plain loops.
    fn input_grad_by_loops(dy: &[f64], w: &[f64], d: &Dims, g: ConvGeom) -> Vec<f64> {
        let (k, p, st) = (d.k, g.padding as isize, g.stride);
        let mut dx = vec![0.0; d.n * d.c_in * d.h * d.w];
        for s in 0..d.n {
            for co in 0..d.c_out {
                for oy in 0..d.oh {
                    for ox in 0..d.ow {
                        let g = dy[((s * d.c_out + co) * d.oh + oy) * d.ow + ox];
                        for ci in 0..d.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * st + ky) as isize - p;
                                    let ix = (ox * st + kx) as isize - p;
                                    if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize
                                    {
                                        continue;
                                    }
                                    let at = ((s * d.c_in + ci) * d.h + iy as usize) * d.w;
                                    dx[at + ix as usize] +=
                                        g * w[((co * d.c_in + ci) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                }
            }
        }
        dx
    }

    /// `dW[co, ci, ky, kx] = Σ dY[s, co, oy, ox] · X[s, ci, oy·stride + ky − p, ox·stride + kx − p]`
    /// by plain loops (inputs outside the map are zero).
    fn weight_grad_by_loops(x: &[f64], dy: &[f64], d: &Dims, g: ConvGeom) -> Vec<f64> {
        let (k, p, st) = (d.k, g.padding as isize, g.stride);
        let mut dw = vec![0.0; d.c_out * d.c_in * k * k];
        for (i, v) in dw.iter_mut().enumerate() {
            let (co, ci, ky, kx) = (i / (d.c_in * k * k), i / (k * k) % d.c_in, i / k % k, i % k);
            for s in 0..d.n {
                for oy in 0..d.oh {
                    for ox in 0..d.ow {
                        let iy = (oy * st + ky) as isize - p;
                        let ix = (ox * st + kx) as isize - p;
                        if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize {
                            continue;
                        }
                        let xv = x[((s * d.c_in + ci) * d.h + iy as usize) * d.w + ix as usize];
                        *v += dy[((s * d.c_out + co) * d.oh + oy) * d.ow + ox] * xv;
                    }
                }
            }
        }
        dw
    }

    #[test]
    fn small_maps_and_other_geometries_keep_the_unfolding_path() -> candle_core::Result<()> {
        let cases = [
            (7, 3, 1, 1, false),  // 7×7 map keeps 77% of the padded grid
            (14, 3, 1, 1, true),  // 87%
            (14, 3, 2, 1, false), // stride 2
            (14, 3, 1, 0, false), // not "same"
            (14, 1, 1, 0, false), // pointwise: a plain product already
        ];
        for (h, k, stride, padding, expected) in cases {
            let g = ConvGeom { stride, padding };
            let d = Dims::new(&[2, 4, h, h], &[4, 4, k, k], g)?;
            assert_eq!(
                geometry_fits(&d, g),
                expected,
                "{h}x{h} k{k} s{stride} p{padding}"
            );
        }
        // Thin convolutions (DenseNet's 128 → 32) keep gemm's unfolding...
        let g = ConvGeom {
            stride: 1,
            padding: 1,
        };
        let thin = Dims::new(&[64, 128, 56, 56], &[32, 128, 3, 3], g)?;
        assert!(geometry_fits(&thin, g) && !forward_applies::<f64>(&thin, g));
        // ... unless the direct kernel runs: it has no per-tap products to amortise.
        assert_eq!(
            forward_applies::<f32>(&thin, g),
            direct::forward_available()
        );
        assert!(!weight_grad_applies::<f32>(&thin, g));
        // Small maps, stride 2 and the stem take it only where the direct kernels run (f32
        // with AVX-512F); the stem's 3 input channels only forward.
        let stem_geom = ConvGeom {
            stride: 2,
            padding: 3,
        };
        let stem = Dims::new(&[32, 3, 112, 112], &[64, 3, 7, 7], stem_geom)?;
        let down = ConvGeom {
            stride: 2,
            padding: 1,
        };
        let to_7 = Dims::new(&[32, 128, 14, 14], &[256, 128, 3, 3], down)?;
        let small = Dims::new(&[32, 256, 7, 7], &[256, 256, 3, 3], g)?;
        for (d, g) in [(small, g), (to_7, down)] {
            assert!(!geometry_fits(&d, g) && !forward_applies::<f64>(&d, g));
            assert_eq!(forward_applies::<f32>(&d, g), direct::available());
            assert_eq!(weight_grad_applies::<f32>(&d, g), direct::available());
        }
        assert_eq!(
            forward_applies::<f32>(&stem, stem_geom),
            direct::available()
        );
        assert!(!weight_grad_applies::<f32>(&stem, stem_geom));
        // A single sample takes it only through the direct kernels.
        let single = Dims::new(&[1, 64, 56, 56], &[64, 64, 3, 3], g)?;
        if Split::new(&single).inner_parallel {
            assert!(!forward_applies::<f64>(&single, g));
            assert_eq!(
                forward_applies::<f32>(&single, g),
                direct::forward_available()
            );
            // Small maps through the channels-last kernel (AVX-512 only), 4×4 not at all.
            let single_small = Dims::new(&[1, 256, 7, 7], &[256, 256, 3, 3], g)?;
            assert_eq!(
                forward_applies::<f32>(&single_small, g),
                direct::available()
            );
            let single_4 = Dims::new(&[1, 256, 4, 4], &[256, 256, 3, 3], g)?;
            assert!(!forward_applies::<f32>(&single_4, g));
        }
        // 4×4 outputs keep gemm.
        let to_4 = Dims::new(&[32, 256, 7, 7], &[512, 256, 3, 3], down)?;
        assert!(!forward_applies::<f32>(&to_4, down) && !weight_grad_applies::<f32>(&to_4, down));
        Ok(())
    }
}
