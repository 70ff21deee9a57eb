//! Direct AVX-512 kernels for the shifted-plane convolutions (f32 on x86-64 CPUs with
//! AVX-512F, detected at run time; everything else keeps gemm).
//!
//! Through gemm, each of the `k²` tap products packs its shifted plane matrix before
//! multiplying it: the whole padded input is repacked `k²` times per pass. A tap's shift is
//! only an offset into the planes, so these kernels read them where they lie:
//!
//! - forward (and the input gradient, a forward pass with the flipped kernel): a tile of
//!   [`ROWS`] output channels × [`TILE`] positions stays in 24 vector registers while every
//!   input channel and tap is added in; each step loads 6 input vectors and broadcasts 4
//!   weights for 24 fused multiply-adds;
//! - weight gradient: over the input planes laid out channels-last, 4 output channels × 32
//!   input channels × 3 taps of kernel gradient accumulate in 24 vector registers, position
//!   by position (4 broadcast gradient values and 6 input vectors per 24 multiply-adds), with
//!   no sums across lanes.
//!
//! `MTPATH_DIRECT_CONV=0` turns them off (for comparisons).

use super::Planes;
use rayon::prelude::*;

/// Output channels per forward tile.
const ROWS: usize = 4;
/// Vectors of positions per forward tile.
const VECS: usize = 6;
/// f32 lanes of an AVX-512 vector.
const LANES: usize = 16;
/// Positions per forward tile.
const TILE: usize = VECS * LANES;
/// Elements the forward kernel may read past the last plane (its last tile runs whole and
/// drops the positions past the span): the planes buffer must have them.
pub(super) const SLACK: usize = TILE;
/// Weight-gradient block: output channels, vectors of input channels, taps.
const GRAD_ROWS: usize = 4;
const GRAD_COLS: usize = 2;
const GRAD_TAPS: usize = 3;
/// Positions per weight-gradient tile: its input rows (all channels) stay in L2 while every
/// block of the kernel gradient passes over them.
const GRAD_TILE: usize = 256;

/// Whether the kernels run here: an x86-64 CPU with AVX-512F, not turned off by
/// `MTPATH_DIRECT_CONV=0`.
pub(super) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let enabled = std::env::var("MTPATH_DIRECT_CONV").map_or(true, |v| v.trim() != "0");
        enabled && cpu_has_avx512()
    })
}

fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A kernel `[c_out, c_in, k, k]` rearranged for the forward tiles: per block of [`ROWS`]
/// output channels, per input channel and tap, the block's [`ROWS`] weights side by side
/// (zeros for channels past `c_out`).
pub(super) struct Packed {
    data: Vec<f32>,
    c_out: usize,
    c_in: usize,
    kk: usize,
}

impl Packed {
    pub(super) fn new(w: &[f32], c_out: usize, c_in: usize, kk: usize) -> Self {
        let per_block = c_in * kk * ROWS;
        let mut data = vec![0.0; c_out.div_ceil(ROWS) * per_block];
        data.par_chunks_exact_mut(per_block)
            .enumerate()
            .for_each(|(b, block)| {
                for j in 0..ROWS.min(c_out - b * ROWS) {
                    let src = &w[(b * ROWS + j) * c_in * kk..][..c_in * kk];
                    for (i, v) in src.iter().enumerate() {
                        block[i * ROWS + j] = *v;
                    }
                }
            });
        Self {
            data,
            c_out,
            c_in,
            kk,
        }
    }
}

/// The tap offsets of `pl`'s planes, `(ky, kx)` in row-major order.
fn tap_offsets(pl: &Planes, k: usize) -> Vec<usize> {
    (0..k * k).map(|t| pl.tap_start(t / k, t % k)).collect()
}

/// `grid [c_out, span] = Σ_tap W_tap · shifted planes` for the planes `[c_in, len]` of `pl`
/// (followed by [`SLACK`] readable elements).
pub(super) fn forward(planes: &[f32], pl: &Planes, k: usize, w: &Packed, grid: &mut [f32]) {
    assert!(k * k == w.kk && planes.len() >= w.c_in * pl.len + SLACK);
    assert!(grid.len() >= w.c_out * pl.span);
    let offsets = tap_offsets(pl, k);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` (the callers' condition) checked AVX-512F; the asserts above
    // bound every read (the last tile reads at most TILE − 1 past a plane's span end, which
    // the slack covers) and write (masked to the span).
    unsafe {
        avx512::forward(planes, pl.len, pl.span, &offsets, w, grid)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct kernels run only on x86-64 ({offsets:?}, {grid:p})");
}

/// `dw [k², c_out, c_in] (+)= Σ_positions dY · shifted planesᵀ`: the kernel gradient of the
/// taps, given the input planes channels-last, `x_cl` `[len, c_in]` (from
/// [`Planes::pad_channels_last`]), and the output gradient on the planes' grid `dy`
/// `[c_out, len]` (zero at the padding positions); overwritten unless `accumulate`.
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad(
    x_cl: &[f32],
    dy: &[f32],
    pl: &Planes,
    k: usize,
    c_in: usize,
    c_out: usize,
    dw: &mut [f32],
    accumulate: bool,
) {
    assert!(x_cl.len() >= c_in * pl.len && dy.len() >= c_out * pl.len);
    assert!(dw.len() >= k * k * c_out * c_in);
    let offsets = tap_offsets(pl, k);
    if !accumulate {
        dw[..k * k * c_out * c_in].fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked AVX-512F; every read is within the planes (a tap's
    // offset plus the span stays within `len`; channels past `c_in` are masked) and every
    // write within `dw`.
    unsafe {
        avx512::weight_grad(x_cl, dy, pl, &offsets, (c_in, c_out), dw)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct kernels run only on x86-64 ({offsets:?})");
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// The mask of the first `n < 16` lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(
        planes: &[f32],
        len: usize,
        span: usize,
        offsets: &[usize],
        w: &Packed,
        grid: &mut [f32],
    ) {
        let per_block = w.c_in * w.kk * ROWS;
        let (x, out) = (planes.as_ptr(), grid.as_mut_ptr());
        for p0 in (0..span).step_by(TILE) {
            for b in 0..w.c_out.div_ceil(ROWS) {
                let rows = ROWS.min(w.c_out - b * ROWS);
                // SAFETY: see `super::forward`.
                unsafe {
                    tile(
                        x.add(p0),
                        (len, w.c_in),
                        offsets,
                        w.data.as_ptr().add(b * per_block),
                        out.add(b * ROWS * span + p0),
                        (span, rows, span - p0),
                    );
                }
            }
        }
    }

    /// One tile: `rows` output rows (stride `stride`) of the first `valid` (at most
    /// [`TILE`]) positions from `x`, the planes (`c_in` of them, `len` apart) advanced to the
    /// tile's first position.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(
        x: *const f32,
        (len, c_in): (usize, usize),
        offsets: &[usize],
        w: *const f32,
        out: *mut f32,
        (stride, rows, valid): (usize, usize, usize),
    ) {
        let kk = offsets.len();
        let mut acc = [[_mm512_setzero_ps(); VECS]; ROWS];
        for ci in 0..c_in {
            // SAFETY: (all pointer arithmetic below) within the planes plus slack and the
            // packed kernel, as `super::forward` asserts.
            let (xc, wc) = unsafe { (x.add(ci * len), w.add(ci * kk * ROWS)) };
            for (t, &off) in offsets.iter().enumerate() {
                let xp = unsafe { xc.add(off) };
                let mut xv = [_mm512_setzero_ps(); VECS];
                for (v, xv) in xv.iter_mut().enumerate() {
                    *xv = unsafe { _mm512_loadu_ps(xp.add(v * LANES)) };
                }
                let wt = unsafe { wc.add(t * ROWS) };
                for (j, row) in acc.iter_mut().enumerate() {
                    let wj = _mm512_set1_ps(unsafe { *wt.add(j) });
                    for (a, xv) in row.iter_mut().zip(&xv) {
                        *a = _mm512_fmadd_ps(*xv, wj, *a);
                    }
                }
            }
        }
        for (j, row) in acc.iter().enumerate().take(rows) {
            let o = unsafe { out.add(j * stride) };
            for (v, a) in row.iter().enumerate() {
                let start = v * LANES;
                if start >= valid {
                    break;
                }
                let n = valid - start;
                // SAFETY: positions below `valid` lie within the grid row.
                unsafe {
                    if n >= LANES {
                        _mm512_storeu_ps(o.add(start), *a);
                    } else {
                        _mm512_mask_storeu_ps(o.add(start), lanes(n), *a);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad(
        x_cl: &[f32],
        dy: &[f32],
        pl: &Planes,
        offsets: &[usize],
        (c_in, c_out): (usize, usize),
        dw: &mut [f32],
    ) {
        let kk = offsets.len();
        let slice = c_out * c_in;
        let dw = dw.as_mut_ptr();
        for p0 in (0..pl.span).step_by(GRAD_TILE) {
            let n = GRAD_TILE.min(pl.span - p0);
            for co0 in (0..c_out).step_by(GRAD_ROWS) {
                // Rows past `c_out` repeat the last; their sums are dropped.
                let dys: [*const f32; GRAD_ROWS] = std::array::from_fn(|j| {
                    dy[(co0 + j).min(c_out - 1) * pl.len + pl.first + p0..].as_ptr()
                });
                for ci0 in (0..c_in).step_by(GRAD_COLS * LANES) {
                    let masks: [__mmask16; GRAD_COLS] = std::array::from_fn(|i| {
                        let left = c_in.saturating_sub(ci0 + i * LANES);
                        if left >= LANES {
                            !0
                        } else {
                            lanes(left)
                        }
                    });
                    for t0 in (0..kk).step_by(GRAD_TAPS) {
                        // Taps past the last repeat it; their sums are dropped.
                        let offs: [usize; GRAD_TAPS] =
                            std::array::from_fn(|t| offsets[(t0 + t).min(kk - 1)] + p0);
                        // SAFETY: see `super::weight_grad`.
                        let acc = unsafe { block(dys, x_cl[ci0..].as_ptr(), c_in, offs, masks, n) };
                        for (i, per_col) in acc.iter().enumerate() {
                            for (t, per_tap) in per_col.iter().enumerate().take(kk - t0) {
                                for (j, a) in per_tap.iter().enumerate() {
                                    if co0 + j >= c_out {
                                        break;
                                    }
                                    // SAFETY: tap, row and the unmasked channels lie
                                    // within `dw` [k², c_out, c_in].
                                    unsafe {
                                        let at = dw.add(
                                            (t0 + t) * slice + (co0 + j) * c_in + ci0 + i * LANES,
                                        );
                                        let sum =
                                            _mm512_add_ps(_mm512_maskz_loadu_ps(masks[i], at), *a);
                                        _mm512_mask_storeu_ps(at, masks[i], sum);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `Σ_{p < n} dys[j][p] · x[(offs[t] + p)·c_in + 16·i + lane]` for every `(i, t, j)`:
    /// 2 × 16 input channels (lanes masked by `masks`) of 3 taps, for 4 output channels.
    #[target_feature(enable = "avx512f")]
    unsafe fn block(
        dys: [*const f32; GRAD_ROWS],
        x: *const f32,
        c_in: usize,
        offs: [usize; GRAD_TAPS],
        masks: [__mmask16; GRAD_COLS],
        n: usize,
    ) -> [[[__m512; GRAD_ROWS]; GRAD_TAPS]; GRAD_COLS] {
        let mut acc = [[[_mm512_setzero_ps(); GRAD_ROWS]; GRAD_TAPS]; GRAD_COLS];
        // No closures here: they would not inherit the target feature.
        for p in 0..n {
            let mut d = [_mm512_setzero_ps(); GRAD_ROWS];
            for (d, row) in d.iter_mut().zip(&dys) {
                // SAFETY: positions below `n` lie within the rows (`super::weight_grad`).
                *d = _mm512_set1_ps(unsafe { *row.add(p) });
            }
            for (i, per_col) in acc.iter_mut().enumerate() {
                for (per_tap, off) in per_col.iter_mut().zip(&offs) {
                    // SAFETY: within the planes; channels past `c_in` are masked off.
                    let xv = unsafe {
                        _mm512_maskz_loadu_ps(masks[i], x.add((off + p) * c_in + i * LANES))
                    };
                    for (a, d) in per_tap.iter_mut().zip(&d) {
                        *a = _mm512_fmadd_ps(*d, xv, *a);
                    }
                }
            }
        }
        acc
    }
}
