//! 3×3 stride-1 convolutions with padding 1 by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray 2016): every 2×2 block of outputs comes from a 4×4 block of input, and the
//! 36 products per input and output channel of a direct 3×3 convolution become 16 — sixteen
//! independent products `M_e [c_out × tiles] = U_e [c_out × c_in] · V_e [c_in × tiles]`, gemm's
//! work, between an input transform `V = Bᵀ d B` and an output transform `Y = Aᵀ M A`. The
//! kernel's transform `U = G g Gᵀ` is computed once and kept ([`PackedKernel`]), packed for
//! [`packed`]'s products where they run (AVX-512F), else as gemm's (or [`narrow`]'s) operand.
//!
//! F(2×2, 3×3)'s transforms use only ±1 and ½, so its rounding error stays within a few
//! units of the direct sum's (the larger tiles F(4×4, 3×3) would save more products and
//! lose about two digits). Inference only: training keeps the other paths.

use super::im2col::{
    for_each_plane, matmul, row_major, row_major_mut, threads, Finish, Scratch, Split,
};
use super::shifted::{as_f32, as_f32_mut};
use super::{direct, narrow, packed};
use super::{ConvGeom, Dims, PackedKernel};
use crate::layers::fill;
use candle_core::{DType, WithDType};
use std::mem::MaybeUninit;

/// Products per tile: the 4×4 transformed positions.
const E: usize = 16;
/// Fewest channels on either side taken: the sixteen products need both dimensions to keep
/// gemm busy.
const MIN_CHANNELS: usize = 32;
/// Fewest output positions taken for a single sample (7×7, sixteen tiles of which the last
/// row and column are cut): ResNet-18's 512-channel layers at batch 1 gained 3.5–4.5% on
/// one and two threads (ResNet-50 and DenseNet-121 level).
const MIN_POSITIONS: usize = 49;
/// Fewest output positions per sample taken when the batch is split by samples (14×14): at
/// batch 32 the 7×7 maps lost 2–3% (ResNet-18, ResNet-50) against the AVX-512 direct sums,
/// which have every sample's positions side by side.
const MIN_BATCH_POSITIONS: usize = 196;
/// [`MIN_BATCH_POSITIONS`] against the AVX2 direct sums (7×7): at batch 32 the 512-channel
/// 7×7 layers ran 31% faster in Winograd (ResNet-18 and ResNet-50; ResNet-18 +6% in all),
/// DenseNet's 128 → 32 10% (AMD EPYC Zen 3, 2 threads).
const MIN_BATCH_POSITIONS_AVX2: usize = 49;
/// Fewest output channels taken when the batch is split by samples, against the AVX-512
/// direct sums: DenseNet's 3×3 128 → 32 at batch 32 transform four times the channels they
/// produce, and DenseNet-121 lost 13.5% there (a single sample gained 8.7%).
const MIN_BATCH_OUTPUTS: usize = 64;
/// [`MIN_BATCH_OUTPUTS`] against the AVX2 direct sums (half the vector width): there the same
/// layers at batch 32 ran 14% faster on 56×56 maps, 5% on 28×28 and level on 14×14
/// (AMD EPYC Zen 3, 2 threads).
const MIN_BATCH_OUTPUTS_AVX2: usize = 32;
/// Transformed input and products (`V` and `M`) per chunk of samples, in f32 elements.
const CHUNK_BUDGET: usize = 1 << 22;

/// How this module runs the forward convolution `d`, or `None` when it does not take it: it
/// takes f32, a 3×3 kernel of stride 1 and padding 1, at least [`MIN_CHANNELS`] on both
/// sides and [`MIN_POSITIONS`] outputs (when the batch is split by samples:
/// [`MIN_BATCH_POSITIONS`] and [`MIN_BATCH_OUTPUTS`]). The split is built once, after the
/// cheap tests, and handed on to [`forward`].
pub(super) fn plan<T: WithDType>(d: &Dims, g: ConvGeom) -> Option<Split> {
    let takes = T::DTYPE == DType::F32
        && enabled()
        && d.k == 3
        && g.stride == 1
        && g.padding == 1
        && d.c_in.min(d.c_out) >= MIN_CHANNELS
        && d.out_len() >= MIN_POSITIONS;
    if !takes {
        return None;
    }
    let split = Split::new(d);
    let (min_positions, min_outputs) = match direct::isa() {
        Some(direct::Isa::Avx2) => (MIN_BATCH_POSITIONS_AVX2, MIN_BATCH_OUTPUTS_AVX2),
        _ => (MIN_BATCH_POSITIONS, MIN_BATCH_OUTPUTS),
    };
    let large = d.out_len() >= min_positions && d.c_out >= min_outputs;
    (split.inner_parallel || large).then_some(split)
}

/// Where this module runs: x86-64 CPUs with the direct kernels' instruction sets (AVX-512F,
/// or AVX2 + FMA; [`direct::isa`], which `MTPATH_DIRECT_CONV=0` and `MTPATH_SIMD=avx2` steer)
/// and WebAssembly (the portable transforms with simd128, gemm's simd128 products; in
/// Chromium ResNet-18 per tile went from 0.98 to 0.84 of onnxruntime-web's time on one
/// thread, 1.06 to 0.75 on two), unless `MTPATH_WINOGRAD=0` turns it off: natively at run
/// time, for WebAssembly (no environment to read) when building it. Elsewhere (aarch64) the
/// direct sums stay: the transforms there were not measured.
fn enabled() -> bool {
    if cfg!(target_arch = "wasm32") {
        return option_env!("MTPATH_WINOGRAD") != Some("0");
    }
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("MTPATH_WINOGRAD").unwrap_or_default().trim() != "0"
            && direct::forward_available()
    })
}

/// `U = G g Gᵀ` for every (output, input) channel pair of `w` `[c_out, c_in, 3, 3]`, as
/// [`E`] row-major matrices `[c_out, c_in]`.
pub(super) fn transform_kernel(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = vec![0.0; E * c_out * c_in];
    let pairs = c_out * c_in;
    for p in 0..pairs {
        let g = &w[p * 9..][..9];
        // t = G g (4 × 3), rows of G: (1, 0, 0), (½, ½, ½), (½, −½, ½), (0, 0, 1).
        let mut t = [[0.0f32; 3]; 4];
        for c in 0..3 {
            let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
            t[0][c] = g0;
            t[1][c] = 0.5 * (g0 + g1 + g2);
            t[2][c] = 0.5 * (g0 - g1 + g2);
            t[3][c] = g2;
        }
        for (a, row) in t.iter().enumerate() {
            let (t0, t1, t2) = (row[0], row[1], row[2]);
            let out = [t0, 0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2), t2];
            for (b, v) in out.into_iter().enumerate() {
                u[(a * 4 + b) * pairs + p] = v;
            }
        }
    }
    u
}

/// One chunk's tiling: `th × tw` tiles a sample.
#[derive(Clone, Copy)]
struct Tiles {
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(d: &Dims) -> Self {
        Self {
            th: d.oh.div_ceil(2),
            tw: d.ow.div_ceil(2),
        }
    }

    fn per_sample(self) -> usize {
        self.th * self.tw
    }
}

/// `Bᵀ`'s rows as (first index, sign, second index, sign): row `a` of `Bᵀ x` is
/// `s₁·x[i₁] + s₂·x[i₂]`. Rows of `Bᵀ`: (1, 0, −1, 0), (0, 1, 1, 0), (0, −1, 1, 0), (0, 1, 0,
/// −1).
const BT: [(usize, f32, usize, f32); 4] = [
    (0, 1.0, 2, -1.0),
    (1, 1.0, 2, 1.0),
    (2, 1.0, 1, -1.0),
    (1, 1.0, 3, -1.0),
];

/// The transforms' loops: written with AVX-512F intrinsics (16 tiles a step, columns picked
/// out of the rows in registers) and, for AVX2, the portable loops compiled for it (picked at
/// run time as the direct kernels are, [`direct::isa`]) — the same sums in the same order on
/// every path.
mod transforms {
    #[cfg(target_arch = "x86_64")]
    use super::direct::Isa;
    use super::{Tiles, BT};

    /// Elements of one row of the vector input transforms' padded plane: whole steps of 16
    /// tiles (32 columns) plus the 2 more a step reads, rounded to a vector.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn padded_row(tw: usize) -> usize {
        32 * tw.div_ceil(16) + 32
    }

    /// Scratch elements [`input`] needs for `tw` tiles a row (the portable loops' rows).
    pub(super) fn input_scratch(tw: usize) -> usize {
        8 * (tw + 1)
    }

    /// `V = Bᵀ d B` of every tile of channel `plane` `[h, w]` of one sample, written to
    /// `v[e · stride + t0 + tile]` for the sixteen transformed positions `e`; `rows` is
    /// the portable loops' scratch of `8 · (tw + 1)` elements (the vector loops pad the plane
    /// in a buffer of their own, [`wide::with_padded_plane`]).
    pub(super) fn input(
        plane: &[f32],
        hw: (usize, usize),
        tiles: Tiles,
        v: &mut [f32],
        at: (usize, usize),
        rows: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        match super::direct::isa() {
            Some(Isa::Avx512) => {
                return wide::with_padded_plane(plane, hw, tiles, |padded| {
                    // SAFETY: `isa()` found AVX-512F on this CPU.
                    unsafe { wide::input512(padded, tiles, v, at) }
                });
            }
            Some(Isa::Avx2) => {
                return wide::with_padded_plane(plane, hw, tiles, |padded| {
                    // SAFETY: `isa()` found AVX2 on this CPU.
                    unsafe { wide::input256(padded, tiles, v, at) }
                });
            }
            None => {}
        }
        input_any(plane, hw, tiles, v, at, rows)
    }

    /// `Y = Aᵀ m A` of every tile of output channel `co` (`m[e]` at `mm[e · stride + t0 +
    /// tile]`), into `out` `[oh, ow]` (tiles past the map's edge cut).
    pub(super) fn output(
        mm: &[f32],
        at: (usize, usize),
        tiles: Tiles,
        ohw: (usize, usize),
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        match super::direct::isa() {
            // SAFETY: `isa()` found AVX-512F on this CPU.
            Some(Isa::Avx512) => return unsafe { wide::output512(mm, at, tiles, ohw, out) },
            // SAFETY: `isa()` found AVX2 on this CPU.
            Some(Isa::Avx2) => return unsafe { wide::output256(mm, at, tiles, ohw, out) },
            None => {}
        }
        // The thread's rows (every element written before it is read), kept between planes
        // rather than a zeroed vector a plane (`malloc` in ResNet-18's batch-1 profile).
        super::super::im2col::with_buffer(&OUTPUT_ROWS, 12 * tiles.tw, |rows| {
            output_rows(mm, at, tiles, ohw, out, rows)
        })
    }

    thread_local! {
        /// Each thread's rows for [`output`]'s portable loops.
        static OUTPUT_ROWS: std::cell::RefCell<Vec<f32>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    #[cfg(target_arch = "x86_64")]
    mod wide {
        use super::*;

        use std::arch::x86_64::*;

        thread_local! {
            /// Each thread's zero-padded plane for [`with_padded_plane`] and the shape `(h,
            /// w, padded row)` its zeros were written for.
            static PADDED: std::cell::RefCell<(Vec<f32>, (usize, usize, usize))> =
                const { std::cell::RefCell::new((Vec::new(), (0, 0, 0))) };
        }

        /// `f` over `plane` `[h, w]` zero-padded for [`input512`] and [`input256`]: padded
        /// row `r` (of `2·th + 2`, each [`padded_row`] long) holds a zero, input row `r − 1`,
        /// then zeros; rows outside the map are zeros. Each input row is copied once a plane;
        /// the zeros are written once for a shape (a thread's buffer keeps them between
        /// planes, since the copies never touch them). Copying the four rows of every tile
        /// row and writing their zeros each time had put `memmove` and `memset` (with their
        /// other callers) at 4% of ResNet-18's batch-1 samples on an AVX2 host, more than
        /// the transform's own; this took them from 681 to 551 samples a run.
        pub(super) fn with_padded_plane<R>(
            plane: &[f32],
            (h, w): (usize, usize),
            tiles: Tiles,
            f: impl FnOnce(&[f32]) -> R,
        ) -> R {
            let padded = padded_row(tiles.tw);
            let len = (2 * tiles.th + 2) * padded;
            assert!(w < padded && 2 * tiles.th >= h && plane.len() >= h * w);
            let copy = |buf: &mut [f32]| {
                for (iy, src) in plane.chunks_exact(w.max(1)).take(h).enumerate() {
                    buf[(iy + 1) * padded + 1..][..w].copy_from_slice(src);
                }
            };
            PADDED.with(|cell| match cell.try_borrow_mut() {
                Ok(mut guard) => {
                    let (buf, shape) = &mut *guard;
                    if *shape != (h, w, padded) || buf.len() < len {
                        buf.clear();
                        buf.resize(len, 0.0);
                        *shape = (h, w, padded);
                    }
                    copy(&mut buf[..len]);
                    f(&buf[..len])
                }
                // Re-entered on this thread: a one-off buffer.
                Err(_) => {
                    let mut buf = vec![0.0; len];
                    copy(&mut buf);
                    f(&buf)
                }
            })
        }

        /// Lanes `(0, 2, …, 30)` and `(1, 3, …, 31)` of two vectors: the even and odd
        /// elements of 32 consecutive ones.
        #[target_feature(enable = "avx512f")]
        fn deinterleave(lo: __m512, hi: __m512) -> (__m512, __m512) {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            (
                _mm512_permutex2var_ps(lo, even, hi),
                _mm512_permutex2var_ps(lo, odd, hi),
            )
        }

        /// `x[i] ± x[j]` for a row `(i, +1, j, ±1)` of `Bᵀ`.
        #[target_feature(enable = "avx512f")]
        fn combine(x: &[__m512; 4], (i, _, j, sign): (usize, f32, usize, f32)) -> __m512 {
            if sign > 0.0 {
                _mm512_add_ps(x[i], x[j])
            } else {
                _mm512_sub_ps(x[i], x[j])
            }
        }

        /// The mask of the first `min(n, 16)` lanes.
        fn lanes(n: usize) -> __mmask16 {
            ((1u32 << n.min(16)) - 1) as __mmask16
        }

        /// [`super::input`] with AVX-512F, 16 tiles a step: the padded rows' even and odd
        /// columns picked out in registers, the same sums in the same order as
        /// `input_any`.
        #[target_feature(enable = "avx512f")]
        pub(super) fn input512(
            padded_plane: &[f32],
            tiles: Tiles,
            v: &mut [f32],
            (stride, t0): (usize, usize),
        ) {
            let tw = tiles.tw;
            let padded = padded_row(tw);
            assert!(padded_plane.len() >= (2 * tiles.th + 2) * padded);
            assert!(v.len() >= 15 * stride + t0 + tiles.th * tw);
            for ty in 0..tiles.th {
                let rows = &padded_plane[2 * ty * padded..][..4 * padded];
                let base = t0 + ty * tw;
                for tx0 in (0..tw).step_by(16) {
                    let mask = lanes(tw - tx0);
                    // db[b][r]: column b of row r's `d B`.
                    let mut db = [[_mm512_setzero_ps(); 4]; 4];
                    for (r, row) in rows.chunks_exact(padded).enumerate() {
                        // SAFETY: a step reads padded columns 2·tx0 … 2·tx0 + 33, within the
                        // row (`padded_row`).
                        let c = unsafe {
                            let p = row.as_ptr().add(2 * tx0);
                            let (c0, c1) =
                                deinterleave(_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
                            let (c2, c3) =
                                deinterleave(_mm512_loadu_ps(p.add(2)), _mm512_loadu_ps(p.add(18)));
                            [c0, c1, c2, c3]
                        };
                        for (b, &col) in BT.iter().enumerate() {
                            db[b][r] = combine(&c, col);
                        }
                    }
                    for (a, &row) in BT.iter().enumerate() {
                        for (b, x) in db.iter().enumerate() {
                            let at = (a * 4 + b) * stride + base + tx0;
                            // SAFETY: the first `tw − tx0` lanes from `at` lie within the
                            // channel's row of tiles (asserted above).
                            unsafe {
                                _mm512_mask_storeu_ps(v.as_mut_ptr().add(at), mask, combine(x, row))
                            };
                        }
                    }
                }
            }
        }

        /// Lanes `(0, 2, …, 14)` and `(1, 3, …, 15)` of two 8-lane vectors: the even and
        /// odd elements of 16 consecutive ones.
        #[target_feature(enable = "avx2")]
        fn deinterleave256(lo: __m256, hi: __m256) -> (__m256, __m256) {
            // Within each 128-bit half: the pairs' first (or second) elements of `lo`'s
            // half, then of `hi`'s; the 64-bit quarters then put back in order.
            let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            let odd = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
            let order = |x: __m256| {
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(x)))
            };
            (order(even), order(odd))
        }

        /// `x[i] ± x[j]` for a row `(i, +1, j, ±1)` of `Bᵀ` (8 lanes).
        #[target_feature(enable = "avx2")]
        fn combine256(x: &[__m256; 4], (i, _, j, sign): (usize, f32, usize, f32)) -> __m256 {
            if sign > 0.0 {
                _mm256_add_ps(x[i], x[j])
            } else {
                _mm256_sub_ps(x[i], x[j])
            }
        }

        /// [`super::input`] with AVX2, 8 tiles a step, as [`input512`]: the padded rows'
        /// even and odd columns picked out in registers, the same sums in the same order as
        /// `input_any` (which went through its columns one element at a time, a bounds check
        /// each: 14% of ResNet-18's batch-1 samples on an AVX2-only host). Each output row
        /// `a` of `Bᵀ (d B)` is stored as soon as the two rows of `d B` it combines are in
        /// registers (rows 1 and 2, then 0, then 3), so that at most two rows of `d B` are
        /// live: with all four kept (16 vectors, the whole register file) the compiler
        /// spilled them to the stack every step. 128 channels, one thread, the padding copy
        /// included, alternating in one process (Zen 3): 56×56 458–473 → 305–307 µs, 28×28
        /// 131 → 90, 14×14 44 → 34, 7×7 23 → 17; in DenseNet-121 at batch 1 (2 threads)
        /// its 58 3×3 128 → 32 layers 12–16% faster.
        #[target_feature(enable = "avx2")]
        pub(super) fn input256(
            padded_plane: &[f32],
            tiles: Tiles,
            v: &mut [f32],
            (stride, t0): (usize, usize),
        ) {
            let tw = tiles.tw;
            let padded = padded_row(tw);
            assert!(padded_plane.len() >= (2 * tiles.th + 2) * padded);
            assert!(v.len() >= 15 * stride + t0 + tiles.th * tw);
            let out = v.as_mut_ptr();
            for ty in 0..tiles.th {
                let rows = padded_plane[2 * ty * padded..][..4 * padded].as_ptr();
                let base = t0 + ty * tw;
                for tx0 in (0..tw).step_by(8) {
                    let taken = (tw - tx0).min(8);
                    // Row r's `d B`, columns b: the row's four columns of every tile.
                    let db = |r: usize| -> [__m256; 4] {
                        // SAFETY: a step reads padded columns 2·tx0 … 2·tx0 + 17 of rows
                        // 2·ty … 2·ty + 3, within the plane (`padded_row`: at least 2·tw +
                        // 32 columns; asserted above).
                        let c = unsafe {
                            let p = rows.add(r * padded + 2 * tx0);
                            let (c0, c1) =
                                deinterleave256(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                            let (c2, c3) = deinterleave256(
                                _mm256_loadu_ps(p.add(2)),
                                _mm256_loadu_ps(p.add(10)),
                            );
                            [c0, c1, c2, c3]
                        };
                        BT.map(|col| combine256(&c, col))
                    };
                    // Output row `a`'s value for column `b` stored.
                    let store = |a: usize, b: usize, value: __m256| {
                        let at = (a * 4 + b) * stride + base + tx0;
                        // SAFETY: the first `min(tw − tx0, 8)` lanes from `at` lie within
                        // the channel's row of tiles (asserted above); only those are
                        // written. No masked stores (`vmaskmovps`): AMD's cores run them
                        // several times slower than plain ones, and with a mask the
                        // compiler merged the whole steps' plain stores into them.
                        unsafe {
                            if taken == 8 {
                                _mm256_storeu_ps(out.add(at), value)
                            } else {
                                store_first(out.add(at), value, taken)
                            }
                        }
                    };
                    // Rows `a` of `Bᵀ`: 0 = r0 − r2, 1 = r1 + r2, 2 = r2 − r1, 3 = r1 − r3,
                    // through `combine256` and `BT` as `input_any` (the arrays hold row r's
                    // value at index r; the entries a row does not read repeat a neighbour).
                    let (d1, d2) = (db(1), db(2));
                    for b in 0..4 {
                        let x = [d1[b], d1[b], d2[b], d2[b]];
                        store(1, b, combine256(&x, BT[1]));
                        store(2, b, combine256(&x, BT[2]));
                    }
                    let d0 = db(0);
                    for b in 0..4 {
                        store(0, b, combine256(&[d0[b], d1[b], d2[b], d2[b]], BT[0]));
                    }
                    let d3 = db(3);
                    for b in 0..4 {
                        store(3, b, combine256(&[d1[b], d1[b], d2[b], d3[b]], BT[3]));
                    }
                }
            }
        }

        /// The first `n` (at most 8) lanes of `value` stored at `to`: at most three plain
        /// stores, no masked store (slow on AMD's cores) and no call. A copy through the
        /// stack (`copy_nonoverlapping` of `n` floats, a call to `memcpy`) had the AVX2
        /// input transform of 128 channels take 78 µs on 14×14 maps (every step partial:
        /// 7 tiles a row) and 223 µs on 28×28; this takes 58 and 187 (one thread, Zen 3,
        /// alternating in one process), 7×7 and 56×56 level within 6%.
        ///
        /// # Safety
        /// AVX2; `to` is valid for `n` writes.
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn store_first(to: *mut f32, value: __m256, n: usize) {
            if n >= 8 {
                return _mm256_storeu_ps(to, value);
            }
            let (mut to, mut n, mut part) = (to, n, _mm256_castps256_ps128(value));
            if n >= 4 {
                _mm_storeu_ps(to, part);
                part = _mm256_extractf128_ps::<1>(value);
                (to, n) = (to.add(4), n - 4);
            }
            if n >= 2 {
                _mm_store_sd(to.cast(), _mm_castps_pd(part));
                part = _mm_movehl_ps(part, part);
                (to, n) = (to.add(2), n - 2);
            }
            if n >= 1 {
                _mm_store_ss(to, part);
            }
        }

        /// [`super::output`] with AVX-512F, 16 tiles a step, the pairs of outputs interleaved
        /// in registers; the same sums in the same order as `output_any`.
        #[target_feature(enable = "avx512f")]
        pub(super) fn output512(
            mm: &[f32],
            (stride, t0): (usize, usize),
            tiles: Tiles,
            (oh, ow): (usize, usize),
            out: &mut [f32],
        ) {
            let tw = tiles.tw;
            assert!(mm.len() >= 15 * stride + t0 + tiles.th * tw && out.len() >= oh * ow);
            let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let second =
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            for ty in 0..tiles.th {
                let base = t0 + ty * tw;
                for tx0 in (0..tw).step_by(16) {
                    let mask = lanes(tw - tx0);
                    // SAFETY: the first `tw − tx0` lanes of every row lie within `mm`
                    // (asserted above); the others are not read.
                    let m = |e: usize| unsafe {
                        _mm512_maskz_loadu_ps(mask, mm.as_ptr().add(e * stride + base + tx0))
                    };
                    let m: [__m512; 16] = std::array::from_fn(m);
                    let r: [[__m512; 4]; 2] = [
                        std::array::from_fn(|b| {
                            _mm512_add_ps(_mm512_add_ps(m[b], m[4 + b]), m[8 + b])
                        }),
                        std::array::from_fn(|b| {
                            _mm512_sub_ps(_mm512_sub_ps(m[4 + b], m[8 + b]), m[12 + b])
                        }),
                    ];
                    for (a, r) in r.iter().enumerate() {
                        let oy = 2 * ty + a;
                        if oy >= oh {
                            break;
                        }
                        let y0 = _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]);
                        let y1 = _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]);
                        let x0 = 2 * tx0;
                        let n = ow - x0;
                        // SAFETY: the stores cover columns x0 … x0 + min(32, n) − 1 of row
                        // `oy`, within `out` (asserted above).
                        unsafe {
                            let o = out.as_mut_ptr().add(oy * ow + x0);
                            _mm512_mask_storeu_ps(
                                o,
                                lanes(n),
                                _mm512_permutex2var_ps(y0, first, y1),
                            );
                            if n > 16 {
                                let hi = _mm512_permutex2var_ps(y0, second, y1);
                                _mm512_mask_storeu_ps(o.add(16), lanes(n - 16), hi);
                            }
                        }
                    }
                }
            }
        }

        /// [`super::output`] with AVX2, 8 tiles a step: the rows `e` of `M` loaded as
        /// vectors (masked at a row of tiles' end), `Aᵀ m A` in registers, the tiles' pairs
        /// of columns interleaved in registers into the output rows; the same sums in the
        /// same order as `output_rows`. The portable loops compiled for AVX2 (their
        /// intermediate rows in a buffer, the pairs stored one value at a time) took 2–4×
        /// as long: 32 channels on 56×56 190 → 66 µs, 128 on 28×28 292 → 83, 256 on 14×14
        /// 203 → 58 (one thread, Zen 3, alternating in one process).
        #[target_feature(enable = "avx2")]
        pub(super) fn output256(
            mm: &[f32],
            (stride, t0): (usize, usize),
            tiles: Tiles,
            (oh, ow): (usize, usize),
            out: &mut [f32],
        ) {
            let tw = tiles.tw;
            assert!(mm.len() >= 15 * stride + t0 + tiles.th * tw && out.len() >= oh * ow);
            assert!(2 * tw >= ow && 2 * tiles.th >= oh);
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            for ty in 0..tiles.th {
                let base = t0 + ty * tw;
                for tx0 in (0..tw).step_by(8) {
                    let taken = (tw - tx0).min(8);
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(taken as i32), lanes);
                    // SAFETY: the first `taken` lanes of every row `e` lie within `mm`
                    // (asserted above); the others are masked off (neither read nor faulting).
                    let m = |e: usize| unsafe {
                        let from = mm.as_ptr().add(e * stride + base + tx0);
                        if taken == 8 {
                            _mm256_loadu_ps(from)
                        } else {
                            _mm256_maskload_ps(from, mask)
                        }
                    };
                    // r = Aᵀ m: row 0 = m₀ + m₁ + m₂, row 1 = m₁ − m₂ − m₃ (over the first
                    // index), in `output_rows`' order.
                    let m: [[__m256; 4]; 4] =
                        std::array::from_fn(|a| std::array::from_fn(|b| m(4 * a + b)));
                    let r: [[__m256; 4]; 2] = [
                        std::array::from_fn(|b| {
                            _mm256_add_ps(_mm256_add_ps(m[0][b], m[1][b]), m[2][b])
                        }),
                        std::array::from_fn(|b| {
                            _mm256_sub_ps(_mm256_sub_ps(m[1][b], m[2][b]), m[3][b])
                        }),
                    ];
                    for (a, r) in r.iter().enumerate() {
                        let oy = 2 * ty + a;
                        if oy >= oh {
                            break;
                        }
                        // y = r A: column 0 = r₀ + r₁ + r₂, column 1 = r₁ − r₂ − r₃; the
                        // tiles' pairs of columns interleaved into the output row.
                        let y0 = _mm256_add_ps(_mm256_add_ps(r[0], r[1]), r[2]);
                        let y1 = _mm256_sub_ps(_mm256_sub_ps(r[1], r[2]), r[3]);
                        let (lo, hi) = (_mm256_unpacklo_ps(y0, y1), _mm256_unpackhi_ps(y0, y1));
                        let first = _mm256_permute2f128_ps::<0x20>(lo, hi);
                        let second = _mm256_permute2f128_ps::<0x31>(lo, hi);
                        let column = 2 * tx0;
                        let valid = (ow - column).min(16);
                        // SAFETY: columns `column..column + valid` of row `oy` lie within
                        // `out` (asserted above: `oy < oh`, `column + valid ≤ ow`).
                        unsafe {
                            let to = out.as_mut_ptr().add(oy * ow + column);
                            if valid == 16 {
                                _mm256_storeu_ps(to, first);
                                _mm256_storeu_ps(to.add(8), second);
                            } else if valid >= 8 {
                                _mm256_storeu_ps(to, first);
                                store_first(to.add(8), second, valid - 8);
                            } else {
                                store_first(to, first, valid);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The portable input loops (AVX2 and other targets; the tests' reference).
    #[inline(always)]
    pub(super) fn input_any(
        plane: &[f32],
        (h, w): (usize, usize),
        tiles: Tiles,
        v: &mut [f32],
        (stride, t0): (usize, usize),
        rows: &mut [f32],
    ) {
        let tw = tiles.tw;
        let half = tw + 1;
        let rows = &mut rows[..8 * half];
        for ty in 0..tiles.th {
            // Padded input rows 2ty − 1 … 2ty + 2, each split into the even and odd columns
            // of the padded row (padded column q is input column q − 1): a tile's four
            // columns are even[tx], odd[tx], even[tx + 1], odd[tx + 1].
            for (r, parts) in rows.chunks_exact_mut(2 * half).enumerate() {
                let (even, odd) = parts.split_at_mut(half);
                let Some(src) = (2 * ty + r)
                    .checked_sub(1)
                    .filter(|&iy| iy < h)
                    .map(|iy| &plane[iy * w..][..w])
                else {
                    even.fill(0.0);
                    odd.fill(0.0);
                    continue;
                };
                even[0] = 0.0;
                for (j, e) in even.iter_mut().enumerate().skip(1) {
                    *e = src.get(2 * j - 1).copied().unwrap_or(0.0);
                }
                for (j, o) in odd.iter_mut().enumerate() {
                    *o = src.get(2 * j).copied().unwrap_or(0.0);
                }
            }
            let column = |r: usize, c: usize| -> &[f32] {
                let parts = &rows[r * 2 * half..][..2 * half];
                // Columns 0..3 of every tile: even, odd, even shifted, odd shifted.
                &parts[(c % 2) * half + c / 2..][..tw]
            };
            let base = t0 + ty * tw;
            for (a, &(ra, sa, rb, sb)) in BT.iter().enumerate() {
                for (b, &(ca, ta, cb, tb)) in BT.iter().enumerate() {
                    let (p, q) = (column(ra, ca), column(ra, cb));
                    let (x, y) = (column(rb, ca), column(rb, cb));
                    let out = &mut v[(a * 4 + b) * stride + base..][..tw];
                    for i in 0..tw {
                        out[i] = sa * (ta * p[i] + tb * q[i]) + sb * (ta * x[i] + tb * y[i]);
                    }
                }
            }
        }
    }

    /// The portable output loops on a buffer of their own: the tests' reference.
    #[cfg(test)]
    pub(super) fn output_any(
        mm: &[f32],
        (stride, t0): (usize, usize),
        tiles: Tiles,
        (oh, ow): (usize, usize),
        out: &mut [f32],
    ) {
        let mut rows = vec![0.0; 12 * tiles.tw];
        output_rows(mm, (stride, t0), tiles, (oh, ow), out, &mut rows)
    }

    /// The portable output loops with their scratch `rows` (`12 · tw`, contents
    /// unspecified).
    #[inline(always)]
    fn output_rows(
        mm: &[f32],
        (stride, t0): (usize, usize),
        tiles: Tiles,
        (oh, ow): (usize, usize),
        out: &mut [f32],
        rows: &mut [f32],
    ) {
        let tw = tiles.tw;
        let (r, y) = rows[..12 * tw].split_at_mut(8 * tw);
        for ty in 0..tiles.th {
            let base = t0 + ty * tw;
            let m = |e: usize| &mm[e * stride + base..][..tw];
            // r = Aᵀ m: row 0 = m₀ + m₁ + m₂, row 1 = m₁ − m₂ − m₃ (over the first index).
            for b in 0..4 {
                let (m0, m1, m2, m3) = (m(b), m(4 + b), m(8 + b), m(12 + b));
                let (r0, r1) = r[2 * b * tw..][..2 * tw].split_at_mut(tw);
                for i in 0..tw {
                    r0[i] = m0[i] + m1[i] + m2[i];
                    r1[i] = m1[i] - m2[i] - m3[i];
                }
            }
            // y = r A: column 0 = r₀ + r₁ + r₂, column 1 = r₁ − r₂ − r₃.
            for a in 0..2 {
                let rb = |b: usize| &r[(2 * b + a) * tw..][..tw];
                let (r0, r1, r2, r3) = (rb(0), rb(1), rb(2), rb(3));
                let (y0, y1) = y[2 * a * tw..][..2 * tw].split_at_mut(tw);
                for i in 0..tw {
                    y0[i] = r0[i] + r1[i] + r2[i];
                    y1[i] = r1[i] - r2[i] - r3[i];
                }
            }
            for a in 0..2 {
                let oy = 2 * ty + a;
                if oy >= oh {
                    break;
                }
                let row = &mut out[oy * ow..][..ow];
                let (y0, y1) = y[2 * a * tw..][..2 * tw].split_at(tw);
                for (pair, (&u, &v)) in row.chunks_mut(2).zip(y0.iter().zip(y1)) {
                    pair[0] = u;
                    if let Some(second) = pair.get_mut(1) {
                        *second = v;
                    }
                }
            }
        }
    }
}

/// The forward convolution of `x` `[n, c_in, h, w]` with `w` `[c_out, c_in, 3, 3]` where
/// [`plan`] gave `split`, the kernel's transform taken from (or kept in) `cache`; each output
/// plane handed to `finish` once written. `None` for other element types.
pub(super) fn forward<T: Scratch>(
    x: &[T],
    w: &[T],
    d: &Dims,
    split: &Split,
    cache: Option<&PackedKernel>,
    finish: Option<Finish<T>>,
) -> Option<Vec<T>> {
    let (x, w) = (as_f32(x)?, as_f32(w)?);
    let tiles = Tiles::new(d);
    // Few tiles a sample: one sample a chunk, whose products `narrow` runs.
    let narrow = split.inner_parallel && narrow::applies(d.c_out, tiles.per_sample());
    let (l, l_in) = (d.out_len(), d.h * d.w);
    let per_sample = E * (d.c_in + d.c_out) * tiles.per_sample();
    let per = if narrow {
        1
    } else {
        (CHUNK_BUDGET / per_sample).max(1)
    };
    // Inference with AVX-512F: the sixteen products by [`packed`], each `U_e` packed once
    // for the width of a chunk's products and `V_e` read in place (gemm packed `V_e` on
    // every call). ResNet-50 batch 1, two threads, alternating per-layer timings: 256
    // channels on 14×14 0.85 → 0.65 ms, 128 on 28×28 0.69 → 0.59, 64 on 56×56 0.72 → 0.64;
    // DenseNet-121's 128 → 32 6–17% faster; ResNet-18 batch 1 +9%, batch 32 +3–4%.
    let layout = (cache.is_some() && !narrow && packed::available())
        .then(|| packed::Layout::for_shape(d.c_out, per.min(d.n) * tiles.per_sample()));
    let transform = || transform_kernel(w, d.c_out, d.c_in);
    let u = match (cache, narrow, layout) {
        (Some(cache), false, Some(layout)) => cache.winograd_packed.get_or_pack(layout, || {
            let u = transform();
            let matrices = u.chunks_exact(d.c_out * d.c_in);
            matrices
                .flat_map(|u_e| packed::pack(u_e, d.c_out, d.c_in, layout))
                .collect()
        }),
        (Some(cache), false, None) => cache.get_or_transform(transform),
        (Some(cache), true, _) => {
            cache.get_or_transform_narrow(|| narrow::pack(&transform(), d.c_out, d.c_in))
        }
        (None, false, _) => std::sync::Arc::new(transform()),
        (None, true, _) => std::sync::Arc::new(narrow::pack(&transform(), d.c_out, d.c_in)),
    };
    // Elements of one packed `U_e`.
    let packed_len = layout.map(|layout| packed::packed_len(d.c_out, d.c_in, layout));
    let mut y = fill::uninit::<T>(d.n * d.c_out * l);
    let parallel = split.inner_parallel && threads() > 1;
    super::im2col::for_groups(split, &mut y, d.c_out * l, |group, y_part| {
        let most = per.min(group.len());
        let v_len = E * d.c_in * most * tiles.per_sample();
        let m_len = E * d.c_out * most * tiles.per_sample();
        T::with_scratch(v_len + m_len, |scratch| {
            let scratch = as_f32_mut(scratch).expect("T is f32 (as_f32 above)");
            let (v, m) = scratch.split_at_mut(v_len);
            for n0 in group.clone().step_by(per) {
                let nc = per.min(group.end - n0);
                let t_all = nc * tiles.per_sample();
                let v = &mut v[..E * d.c_in * t_all];
                let m = &mut m[..E * d.c_out * t_all];
                // V `[c_in, e, tiles]`: each input channel's sixteen rows of tiles, its
                // samples side by side.
                let rows_len = transforms::input_scratch(tiles.tw);
                let fill = |(ci, v_ci): (usize, &mut [f32])| {
                    let mut rows = vec![0.0; rows_len];
                    for s in 0..nc {
                        let plane = &x[((n0 + s) * d.c_in + ci) * l_in..][..l_in];
                        let at = (t_all, s * tiles.per_sample());
                        transforms::input(plane, (d.h, d.w), tiles, v_ci, at, &mut rows);
                    }
                };
                for_each_plane(v, E * t_all, parallel, fill);
                // M `[e, c_out, tiles]`: M_e = U_e · V_e, the sixteen products side by side
                // when parallel.
                let v = &*v;
                let product = |(e, m_e): (usize, &mut [f32])| {
                    if let (Some(layout), Some(len)) = (layout, packed_len) {
                        let u_e = (&u[e * len..][..len], layout);
                        let dims = (d.c_out, t_all, d.c_in);
                        let v_e = (&v[e * t_all..], E * t_all);
                        return packed::product(u_e, dims, v_e, (m_e, t_all), false);
                    }
                    if narrow {
                        let u_e = &u[e * d.c_out * d.c_in..][..d.c_out * d.c_in];
                        let dims = (d.c_out, d.c_in, t_all);
                        return narrow::product(u_e, &v[e * t_all..], E * t_all, dims, m_e);
                    }
                    matmul(
                        d.c_out,
                        t_all,
                        d.c_in,
                        row_major_mut(m_e.as_mut_ptr(), t_all),
                        false,
                        row_major(u[e * d.c_out * d.c_in..].as_ptr(), d.c_in),
                        row_major(v[e * t_all..].as_ptr(), E * t_all),
                        gemm::Parallelism::None,
                    )
                };
                for_each_plane(m, d.c_out * t_all, parallel, product);
                // Y: each (sample, output channel) plane from its tiles, then finished.
                let ys = &mut y_part[(n0 - group.start) * d.c_out * l..][..nc * d.c_out * l];
                let m = &*m;
                let plane = |(i, out): (usize, &mut [MaybeUninit<T>])| {
                    let (s, co) = (i / d.c_out, i % d.c_out);
                    // Zeroed while in L1, not in a pass over the whole output.
                    let out = fill::init_zeroed(out);
                    let dst = as_f32_mut(out).expect("T is f32 (as_f32 above)");
                    let at = (d.c_out * t_all, co * t_all + s * tiles.per_sample());
                    transforms::output(m, at, tiles, (d.oh, d.ow), dst);
                    if let Some(finish) = finish {
                        finish(n0 + s, co, 0, out);
                    }
                };
                for_each_plane(ys, l, parallel, plane);
            }
        })
    });
    // SAFETY: the groups cover the batch and their chunks of `per` samples each group; every
    // `[l]` plane of every chunk (`nc·c_out` of them, `l` ≥ MIN_POSITIONS) went through
    // `init_zeroed` above.
    Some(unsafe { fill::assume_init_vec(y) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv::tests::max_abs_diff;

    /// The AVX-512 or AVX2 transforms give the portable loops' bits (same sums, same
    /// order), on maps whose tile rows are shorter and longer than one 8- or 16-tile step,
    /// odd and even.
    #[test]
    fn vector_transforms_equal_the_portable_loops() {
        #[cfg(target_arch = "x86_64")]
        {
            if direct::isa().is_none() {
                eprintln!("skipped: the vector transforms do not run here");
                return;
            }
            // Rows of 4, 7, 18, 17, 8, 9, 20, 11, 13 and 14 tiles: every partial step (1 to 7
            // tiles) of the AVX2 loops, and the AVX-512 ones'.
            for (h, w) in [
                (5, 7),
                (5, 21),
                (3, 26),
                (28, 28),
                (14, 14),
                (9, 35),
                (40, 33),
                (3, 16),
                (6, 18),
                (14, 14),
                (4, 40),
            ] {
                let d = Dims::new(
                    &[1, 1, h, w],
                    &[1, 1, 3, 3],
                    ConvGeom {
                        stride: 1,
                        padding: 1,
                    },
                )
                .unwrap();
                let tiles = Tiles::new(&d);
                let plane: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
                let n = tiles.per_sample();
                let (stride, t0) = (n + 3, 2);
                let mut scratch = vec![0.0; transforms::input_scratch(tiles.tw)];
                let mut a = vec![0.0; 16 * stride];
                let mut b = vec![0.0; 16 * stride];
                transforms::input_any(&plane, (h, w), tiles, &mut a, (stride, t0), &mut scratch);
                transforms::input(&plane, (h, w), tiles, &mut b, (stride, t0), &mut scratch);
                assert_eq!(a, b, "input {h}×{w}");
                let mut ya = vec![0.0; h * w];
                let mut yb = vec![0.0; h * w];
                transforms::output_any(&a, (stride, t0), tiles, (h, w), &mut ya);
                transforms::output(&a, (stride, t0), tiles, (h, w), &mut yb);
                assert_eq!(ya, yb, "output {h}×{w}");
            }
        }
    }

    /// Winograd against im2col + gemm: odd and even maps (the last tiles cut), one sample
    /// (the products side by side over the threads; on maps of 16 tiles, 7×7 and 8×7, by
    /// [`narrow`] where it runs; the others by [`packed`] where it runs, in both layouts)
    /// and batches (chunks of samples), with and without the epilogue; within a few units of
    /// the direct sums.
    #[test]
    fn winograd_equals_the_unfolded_convolution() {
        if !enabled() {
            eprintln!("skipped: Winograd does not run here");
            return;
        }
        for (n, c_in, c_out, h, w) in [
            (1, 32, 40, 14, 14),
            (1, 64, 48, 7, 7),
            (1, 40, 64, 8, 7),
            (1, 64, 32, 15, 17),
            (3, 48, 64, 16, 13),
            (2, 32, 64, 28, 28),
            (1, 32, 64, 13, 13),
        ] {
            let g = ConvGeom {
                stride: 1,
                padding: 1,
            };
            let d = Dims::new(&[n, c_in, h, w], &[c_out, c_in, 3, 3], g).unwrap();
            let split = plan::<f32>(&d, g).expect("takes the case");
            let x: Vec<f32> = (0..n * c_in * h * w)
                .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5)
                .collect();
            let wt: Vec<f32> = (0..c_out * c_in * 9)
                .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let want = super::super::im2col::conv_forward_unfolded(&x, &wt, &d, g, None, None);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let cache = PackedKernel::default();
            for pass in 0..2 {
                let got = forward(&x, &wt, &d, &split, Some(&cache), None).unwrap();
                let worst = max_abs_diff(&got, &want);
                assert!(
                    worst <= 1e-5 * f64::from(scale),
                    "n{n} {c_in}→{c_out} {h}×{w} pass {pass}: {worst} of {scale}"
                );
            }
            let narrow =
                split.inner_parallel && narrow::applies(c_out, Tiles::new(&d).per_sample());
            // With AVX-512F the other products are `packed`'s, in the channels layout on a
            // single sample's 49 tiles (13×13) of 64 output channels.
            let packed = !narrow && packed::available();
            let tiles = Tiles::new(&d).per_sample();
            let per = (CHUNK_BUDGET / (E * (c_in + c_out) * tiles)).max(1);
            let layout = packed::Layout::for_shape(c_out, per.min(n) * tiles);
            let channels = packed && layout == packed::Layout::Channels;
            let wide = packed::available512();
            assert_eq!(channels, wide && (n, h) == (1, 13), "the cases' layouts");
            assert_eq!(cache.winograd_narrow.get().is_some(), narrow, "{h}×{w}");
            assert_eq!(
                cache.winograd.get().is_some(),
                !narrow && !packed,
                "{h}×{w}"
            );
            let cell = &cache.winograd_packed;
            let has = |layout| cell.has(layout);
            assert_eq!(
                has(packed::Layout::Channels),
                channels,
                "{c_out} out, {h}×{w}"
            );
            let positions = packed && !channels;
            assert_eq!(
                has(packed::Layout::Positions),
                positions,
                "{c_out} out, {h}×{w}"
            );
            if narrow {
                eprintln!("{c_in}→{c_out} {h}×{w}: narrow products");
            }
            let shift = |_: usize, ch: usize, _: usize, plane: &mut [f32]| {
                plane
                    .iter_mut()
                    .for_each(|v| *v = (*v + ch as f32).max(0.0))
            };
            let fused = forward(&x, &wt, &d, &split, Some(&cache), Some(&shift)).unwrap();
            let l = d.out_len();
            for (i, (a, b)) in fused.iter().zip(&want).enumerate() {
                let ch = ((i / l) % c_out) as f32;
                assert!((a - (b + ch).max(0.0)).abs() <= 1e-5 * (scale + ch));
            }
        }
    }
}
