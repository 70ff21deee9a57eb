//! Inference products `Y = W · B` of the unfolded convolutions (1×1 layers, the stem, strided
//! layers) with the kernel `W` packed once and kept ([`super::PackedKernel`]), on CPUs with
//! AVX-512F or AVX2 and FMA.
//!
//! gemm packs its operands on every call and reads the kernel as several strided streams; at
//! batch 1 every layer's kernel comes from memory (ResNet-50's are 100 MB), and gemm reached
//! 140–200 GFLOP/s on ResNet-50's 1×1 shapes on two threads here (AMD EPYC, Zen 4), where
//! onnxruntime's 1×1 layers ran at about 215. This kernel keeps `W` as blocks of [`ROWS`]
//! output channels, a block's values channel-interleaved (`[⌈m / 8⌉, k, 8]`), so that each
//! block is one linear stream; `B` is read in place (rows of positions, no packing), 48
//! positions in three vectors' lanes and 8 output channels in 24 accumulators: 168–225
//! GFLOP/s on the same shapes with the kernel cold (a throwaway benchmark of both). Maps of
//! fewer than 64 positions (7×7: 49 of a tile's 64 lanes) keep the kernel in blocks of 64
//! channels instead, multiplied in tiles of 7 positions × 64 channels in the lanes
//! ([`Layout::Channels`]): 175–188 GFLOP/s against 169–173 on ResNet-50's 7×7 shapes (cold
//! kernels, two threads), ResNet-50's 3×3 stride-2 layer onto 7×7 3.4 → 3.1–3.2 ms on one
//! thread in place (its 1×1 layers level). Each output is one sum over `k` in order (no
//! blocking of `k`) in either layout, whatever the threads: the same bits.
//!
//! With AVX2 and FMA only (16 registers of 8 lanes; [`Isa::Avx2`]), the kernel is kept in
//! blocks of [`ROWS2`] output channels and `B` is copied, a chunk of columns and up to
//! [`KC`] rows of it at a time, into strips of [`STRIP2`] positions laid out one after the
//! other (`[strips, depth, 16]`, in L2): each tile of 6 channels × 16 positions (12
//! accumulators) then reads two linear streams, and prefetches the next block of the kernel
//! as it reads its own. Read in place, each step of `k` of an AVX2 tile touches a new row of
//! `B` (a new page on 56×56 maps) for only 12 multiply-adds, and an earlier in-place tile ran
//! at 0.6–0.7× gemm's AVX2 kernels, which pack `B` as here. The tile alone reaches 95–100%
//! of the core's peak (101 GFLOP/s) on data in cache. On an AVX2-only host (AMD EPYC, Zen 3,
//! two threads, a noisy one), whole passes against gemm's products, alternating runs:
//! ResNet-50 batch 1 +1 to +6%, batch 32 +4 to +11%, DenseNet-121 batch 1 +8 to +11%,
//! ResNet-18 level (its time is in Winograd's narrow products and transforms); the per-layer
//! probes in between put the blocks of `k` and the next-block prefetch ahead of the first
//! version (which read the kernel's rows whole, and prefetched 1 KB ahead) in every pair.
//!
//! The same products serve Winograd's sixteen `M_e = U_e · V_e` ([`super::winograd`]) and
//! DenseNet's fused `norm → ReLU → 1×1` ([`super::parts`]; with AVX2, normalised as `B` is
//! copied into strips, [`Rhs::Normalised`]). Elsewhere
//! (aarch64, WebAssembly, f64) gemm runs.

#[cfg(target_arch = "x86_64")]
use super::direct;
use super::im2col::threads;
#[cfg(target_arch = "x86_64")]
use super::im2col::{unfold_taps, valid_outputs};
use super::{ConvGeom, Dims};
use crate::layers::channel_affine::ChannelAffine;
use rayon::prelude::*;

/// Output channels a block of the packed kernel holds (rows of a tile).
pub(super) const ROWS: usize = 8;
/// Vectors of 16 positions a tile holds.
#[cfg(target_arch = "x86_64")]
const VECTORS: usize = 3;
/// Positions a tile holds.
pub(super) const COLS: usize = 48;

/// Positions whose outputs are finished (bias, residual, ReLU) together right after their
/// product: 8 tiles' strips, 192 KB of output for 128 channels, in L2.
pub(super) const FINISH_COLS: usize = 8 * COLS;

/// Output channels a block of the packed kernel holds on AVX2 ([`Tile2`]).
const ROWS2: usize = 6;
/// Positions a strip of `B` holds on AVX2: two vectors.
const STRIP2: usize = 16;

/// Whether [`product`] runs on this CPU: AVX-512F, or AVX2 with FMA, as the direct kernels
/// ([`direct::isa`]: `MTPATH_DIRECT_CONV=0` turns both off, `MTPATH_SIMD=avx2` the AVX-512
/// tiles, `MTPATH_DIRECT_AVX2=0` the AVX2 ones).
pub(super) fn available() -> bool {
    isa().is_some()
}

/// Whether the AVX-512 tiles run ([`product512`], which [`super::parts`] calls directly).
#[cfg(any(test, target_arch = "x86_64"))]
pub(super) fn available512() -> bool {
    isa() == Some(Isa::Avx512)
}

/// The tiles' instruction set here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// [`Tile`] and [`LaneTile`] (both layouts).
    Avx512,
    /// [`Tile2`] ([`Layout::Positions`] only, [`ROWS2`] channels a block).
    Avx2,
}

/// [`Isa`] from [`direct::isa`].
pub(super) fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        match direct::isa() {
            Some(direct::Isa::Avx512) => Some(Isa::Avx512),
            Some(direct::Isa::Avx2) => Some(Isa::Avx2),
            None => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// How a kernel is packed, and so which tiles multiply it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// Blocks of [`ROWS`] output channels; tiles of 8 channels × 48 positions, the positions
    /// in the lanes.
    Positions,
    /// Blocks of [`LANE_ROWS`] output channels; tiles of [`LANE_COLS`] positions × 64
    /// channels, the channels in the lanes: maps of fewer than 64 positions, where a tile of
    /// positions in lanes leaves lanes empty (7×7: 49 of 64).
    Channels,
}

impl Layout {
    /// The layout for `m` output channels over `n` positions (AVX2 has only
    /// [`Layout::Positions`]).
    pub(super) fn for_shape(m: usize, n: usize) -> Self {
        if n < 64 && m >= LANE_ROWS && isa() != Some(Isa::Avx2) {
            Self::Channels
        } else {
            Self::Positions
        }
    }

    /// Output channels a block holds.
    fn rows(self) -> usize {
        match self {
            Self::Positions if isa() == Some(Isa::Avx2) => ROWS2,
            Self::Positions => ROWS,
            Self::Channels => LANE_ROWS,
        }
    }

    /// Positions a tile holds.
    fn cols(self) -> usize {
        match self {
            Self::Positions if isa() == Some(Isa::Avx2) => STRIP2,
            Self::Positions => COLS,
            Self::Channels => LANE_COLS,
        }
    }
}

/// Output channels a block of [`Layout::Channels`] holds: four vectors.
const LANE_ROWS: usize = 64;
/// Positions a tile of [`Layout::Channels`] holds (7×7 maps: seven strips).
const LANE_COLS: usize = 7;

/// A kernel packed once in each [`Layout`] a pass asks for (a layer run at batch 1 and in
/// larger chunks may use both), kept in [`super::PackedKernel`].
#[derive(Debug, Clone, Default)]
pub(super) struct ByLayout {
    positions: std::sync::OnceLock<std::sync::Arc<Vec<f32>>>,
    channels: std::sync::OnceLock<std::sync::Arc<Vec<f32>>>,
}

impl ByLayout {
    fn cell(&self, layout: Layout) -> &std::sync::OnceLock<std::sync::Arc<Vec<f32>>> {
        match layout {
            Layout::Positions => &self.positions,
            Layout::Channels => &self.channels,
        }
    }

    /// The kernel in `layout`, packed by `pack` on first use.
    pub(super) fn get_or_pack(
        &self,
        layout: Layout,
        pack: impl FnOnce() -> Vec<f32>,
    ) -> std::sync::Arc<Vec<f32>> {
        self.cell(layout)
            .get_or_init(|| std::sync::Arc::new(pack()))
            .clone()
    }

    /// Whether a pass has packed the kernel in `layout`.
    #[cfg(test)]
    pub(super) fn has(&self, layout: Layout) -> bool {
        self.cell(layout).get().is_some()
    }
}

/// Elements [`pack`] makes of an `[m, k]` kernel in `layout`.
pub(super) fn packed_len(m: usize, k: usize, layout: Layout) -> usize {
    m.div_ceil(layout.rows()) * layout.rows() * k
}

/// `w` (row-major `[m, k]`) as [`product`] reads it in `layout` ([`interleave`] in blocks
/// of [`Layout::rows`] rows).
pub(super) fn pack(w: &[f32], m: usize, k: usize, layout: Layout) -> Vec<f32> {
    interleave(w, m, k, layout.rows())
}

/// `w` (row-major `[m, k]`) as blocks of `rows` rows, each block's values row-interleaved
/// (`[⌈m / rows⌉, k, rows]`: a block read front to back gives, for each column, its `rows`
/// values), the last block's missing rows zero. The packing of this module's kernels and
/// of [`super::narrow`]'s.
pub(super) fn interleave(w: &[f32], m: usize, k: usize, rows: usize) -> Vec<f32> {
    assert!(w.len() >= m * k);
    let mut packed = vec![0.0; m.div_ceil(rows) * k * rows];
    if packed.is_empty() {
        // No columns (or rows): nothing to interleave (and no chunks of zero length).
        return packed;
    }
    for (b, block) in packed.chunks_exact_mut(k * rows).enumerate() {
        for (kk, values) in block.chunks_exact_mut(rows).enumerate() {
            for (r, value) in values.iter_mut().enumerate() {
                let row = b * rows + r;
                if row < m {
                    *value = w[row * k + kk];
                }
            }
        }
    }
    packed
}

/// What [`product_into`] does to each row of its output once the row's sums are whole:
/// `epilogue(row, first column, values)` (a convolution's bias, residual and ReLU), called
/// while the values are in cache, in place of a pass over the whole output afterwards.
pub(super) type Epilogue<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// `B` as [`product_into`] reads it.
#[derive(Clone, Copy)]
pub(super) enum Rhs<'a> {
    /// Row `kk` at `b[kk · ldb..]`.
    Strided(&'a [f32], usize),
    /// Row `kk` at `rows[kk]`, normalised as it is read: `relu?(x · a + b)` with the
    /// prologue's coefficients for channel `kk` ([`ChannelAffine::coefficients`]; a product,
    /// then a sum, as [`ChannelAffine::apply_parts`] computes it). DenseNet's `norm → ReLU`
    /// over a block's features where they lie ([`super::parts`]). AVX2 only: its products
    /// copy `B` into strips anyway, and normalise in that copy.
    Normalised(&'a [*const f32], &'a ChannelAffine),
    /// A sample's input unfolded as it is read ([`Unfolded`]): the stem's and the strided
    /// layers' columns gathered straight into the strips, instead of unfolded into a matrix
    /// of their own that the strips then copy. AVX2 only, as [`Rhs::Normalised`].
    Unfolded(Unfolded<'a>),
}

/// One sample's input `x` (`[c_in, h, w]`, `dims`' sizes) as the unfolded matrix
/// `[c_in · k · k, positions]` of its convolution: row `(ci · k + ky) · k + kx`, column `o`
/// the output position `first + o` (row-major over the output map), zero where the tap falls
/// in the padding; the values [`super::im2col`]'s unfolding writes.
#[derive(Clone, Copy)]
// Gathered by the AVX2 strips only ([`Unfolded::row_into`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Unfolded<'a> {
    pub(super) x: &'a [f32],
    pub(super) dims: Dims,
    pub(super) geom: ConvGeom,
    /// The output position of column 0 (a panel's first row times the map's width).
    pub(super) first: usize,
}

#[cfg(target_arch = "x86_64")]
impl Unfolded<'_> {
    /// Row `step` of the matrix at columns `c0..c0 + out.len()`, into `out`.
    fn row_into(&self, step: usize, c0: usize, out: &mut [f32]) {
        let (d, stride, pad) = (&self.dims, self.geom.stride, self.geom.padding);
        let (ci, ky, kx) = (step / (d.k * d.k), step / d.k % d.k, step % d.k);
        let plane = &self.x[ci * d.h * d.w..][..d.h * d.w];
        let (x_lo, x_hi) = valid_outputs(d.ow, stride, kx, pad, d.w);
        let (y_lo, y_hi) = valid_outputs(d.oh, stride, ky, pad, d.h);
        let mut position = self.first + c0;
        let mut rest = out;
        while !rest.is_empty() {
            let (oy, ox0) = (position / d.ow, position % d.ow);
            let (segment, tail) = rest.split_at_mut((d.ow - ox0).min(rest.len()));
            position += segment.len();
            rest = tail;
            if !(y_lo..y_hi).contains(&oy) {
                segment.fill(0.0);
                continue;
            }
            let input = &plane[(oy * stride + ky - pad) * d.w..][..d.w];
            unfold_taps(input, segment, ox0, (x_lo, x_hi), kx, self.geom);
        }
    }
}

// SAFETY: `Rhs` only reads through its pointers, and [`product_into`]'s contract keeps what
// they point at unchanged during the call.
unsafe impl Send for Rhs<'_> {}
// SAFETY: as above.
unsafe impl Sync for Rhs<'_> {}

/// Hands `epilogue` each row of `rows` of `y` at the columns `cols`, `y` pointing at column
/// `cols.start` of row 0 (rows `ldy` apart).
///
/// # Safety
/// `y` holds rows `rows` at those columns, written by no one else meanwhile.
#[cfg(target_arch = "x86_64")]
unsafe fn finish_rows(
    epilogue: Epilogue,
    (y, ldy): (*mut f32, usize),
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    for row in rows {
        // SAFETY: the row's columns lie within `y` (this function's contract).
        let values = unsafe { std::slice::from_raw_parts_mut(y.add(row * ldy), cols.len()) };
        epilogue(row, cols.start, values);
    }
}

/// An output matrix as a raw pointer, for tasks that each write a disjoint rectangle of it.
#[derive(Clone, Copy)]
struct Output {
    ptr: *mut f32,
}

impl Output {
    /// The pointer (a method, so that closures capture the whole `Output`).
    fn get(self) -> *mut f32 {
        self.ptr
    }
}

// SAFETY: the tasks handed an `Output` write disjoint rectangles of it ([`product`]).
unsafe impl Send for Output {}
// SAFETY: as above.
unsafe impl Sync for Output {}

/// `y = W · b` for `W` `[m, k]` packed by [`pack`] in `layout`: `b`'s row `kk` at
/// `b[kk · ldb..][..n]`, `y`'s row `r` at `y[r · ldy..][..n]` (the other elements of `y` are
/// left as they are). Split over the threads when `parallel`: into blocks of rows and, when
/// there are fewer blocks than threads, of positions. Only where [`available`] said so.
pub(super) fn product(
    (packed, layout): (&[f32], Layout),
    (m, n, k): (usize, usize, usize),
    b: (&[f32], usize),
    (y, ldy): (&mut [f32], usize),
    parallel: bool,
) {
    assert!(m == 0 || n == 0 || (ldy >= n && y.len() >= (m - 1) * ldy + n));
    // SAFETY: `y` holds the rows and columns written (asserted above) and is borrowed
    // mutably for the call.
    unsafe {
        product_into(
            (packed, layout),
            (m, n, k),
            Rhs::Strided(b.0, b.1),
            (y.as_mut_ptr(), ldy),
            parallel,
            None,
        )
    }
}

/// [`product`] into a raw `y`, for callers whose tasks each write their own columns of one
/// output, with an [`Epilogue`] for the rows of `y` it writes (each row's columns `0..n`
/// handed to it in one or more runs, each once). AVX2 finishes a block of rows for a chunk
/// of columns right after its last sums (in L1); AVX-512 each task's rectangle after its
/// product. Separately, over the whole output after the product, the epilogue took 2% of
/// ResNet-50 at batch 1 and a fork-join a layer.
///
/// # Safety
/// `y` is valid for writes of rows `0..m` (`ldy ≥ n` apart) at columns `0..n`, and nothing
/// else reads or writes those elements during the call; with [`Rhs::Normalised`], each of
/// its first `k` rows is valid for reads of `n` values, which nothing writes meanwhile.
pub(super) unsafe fn product_into(
    (packed, layout): (&[f32], Layout),
    (m, n, k): (usize, usize, usize),
    b: Rhs,
    (y, ldy): (*mut f32, usize),
    parallel: bool,
    epilogue: Option<Epilogue>,
) {
    let isa = isa().expect("packed::product without AVX-512F or AVX2");
    assert!(isa == Isa::Avx512 || layout == Layout::Positions);
    if m == 0 || n == 0 {
        return;
    }
    let (unit_rows, unit_cols) = (layout.rows(), layout.cols());
    assert!(packed.len() >= m.div_ceil(unit_rows) * k * unit_rows);
    match b {
        Rhs::Strided(b, ldb) => assert!(ldb >= n && (k == 0 || b.len() >= (k - 1) * ldb + n)),
        Rhs::Normalised(rows, prologue) => {
            assert!(isa == Isa::Avx2, "normalised rows of B are AVX2's");
            assert!(rows.len() >= k && prologue.channels() >= k);
        }
        Rhs::Unfolded(u) => {
            let d = &u.dims;
            assert!(isa == Isa::Avx2, "unfolded rows of B are AVX2's");
            assert!(d.rows() == k && u.first + n <= d.out_len());
            assert!(u.x.len() >= d.c_in * d.h * d.w && d.oh > 0 && d.ow > 0);
        }
    }
    // The channels' tiles scatter their stores, 16 rows apart in i32 offsets.
    assert!(ldy >= n && (layout == Layout::Positions || 16 * ldy < i32::MAX as usize));
    let out = Output { ptr: y };
    let blocks = m.div_ceil(unit_rows);
    let tasks = if parallel { threads().max(1) } else { 1 };
    let strips = n.div_ceil(unit_cols);
    let by_rows = {
        let row_parts = tasks.min(blocks);
        (row_parts, tasks.div_ceil(row_parts).min(strips))
    };
    let by_cols = {
        let col_parts = tasks.min(strips);
        (tasks.div_ceil(col_parts).min(blocks), col_parts)
    };
    // AVX2 copies `B` into strips per task, so a task taking its own columns copies only
    // those: of the two splits, the one whose busiest task costs least ([`split_cost`]);
    // on a tie, columns where `B` is the larger operand.
    let (row_parts, col_parts) = if isa == Isa::Avx2 {
        let cost = |parts| split_cost(parts, blocks, n);
        match cost(by_cols).cmp(&cost(by_rows)) {
            std::cmp::Ordering::Less => by_cols,
            std::cmp::Ordering::Greater => by_rows,
            std::cmp::Ordering::Equal if n > m => by_cols,
            std::cmp::Ordering::Equal => by_rows,
        }
    } else {
        by_rows
    };
    let rows_per = blocks.div_ceil(row_parts) * unit_rows;
    let cols_per = match layout {
        Layout::Positions => n.div_ceil(col_parts).next_multiple_of(16),
        Layout::Channels => n.div_ceil(col_parts).next_multiple_of(LANE_COLS),
    };
    let run = |task: usize| {
        let (rp, cp) = (task / col_parts, task % col_parts);
        let rows = (rp * rows_per).min(m)..((rp + 1) * rows_per).min(m);
        let cols = (cp * cols_per).min(n)..((cp + 1) * cols_per).min(n);
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the tiles' instruction set is present ([`isa`]; AVX2 only with
        // [`Layout::Positions`], asserted above). The task's rows start at a multiple of the
        // layout's block, so its blocks lie within `packed` (asserted above); it reads rows
        // `0..k` of `b` at columns within `0..n` (asserted above, or this function's
        // contract) and writes rows `rows` at columns `cols` of `y`, which the caller lent
        // (this function's contract), and no other task's: the tasks' rectangles are
        // disjoint.
        unsafe {
            let y = (out.get(), ldy);
            let (r, c) = (rows.clone(), cols.clone());
            match (isa, layout, b) {
                (Isa::Avx2, _, b) => product256(packed, (m, k), r, c, b, y, epilogue),
                (Isa::Avx512, Layout::Positions, Rhs::Strided(b, ldb)) => {
                    product512(packed, (m, k), r, c, (b.as_ptr(), ldb), y)
                }
                (Isa::Avx512, Layout::Channels, Rhs::Strided(b, ldb)) => {
                    channels512(packed, (m, k), r, c, (b.as_ptr(), ldb), y)
                }
                (Isa::Avx512, _, Rhs::Normalised(..) | Rhs::Unfolded(..)) => {
                    unreachable!("asserted above")
                }
            }
            // AVX2 finished its rows as it went; AVX-512 finishes the task's rectangle.
            if let (Isa::Avx512, Some(epilogue)) = (isa, epilogue) {
                let y = (out.get().add(cols.start), ldy);
                finish_rows(epilogue, y, rows, cols);
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (out.get(), ldy, rows, cols, b, k, isa, epilogue);
    };
    if row_parts * col_parts > 1 {
        (0..row_parts * col_parts).into_par_iter().for_each(run);
    } else {
        run(0);
    }
}

/// The busiest task's work per step of `k` when [`product_into`]'s AVX2 tiles split
/// `blocks` blocks of rows and `n` columns into `(row parts, column parts)`, in
/// cycles of one core, roughly: 6 a tile (12 multiply-adds), 4 a strip of `B` copied (a
/// strided read from L2 or L3 and a store), 1 a block of the kernel read (at batch 1 from
/// memory). Columns split evenly in whole strips can still leave one task a strip more:
/// DenseNet's 1×1 layers on 14×14 maps (128 rows, 196 columns) gave one thread 7 strips
/// and the other 6 (54% of the tiles) where rows split 11 and 11 blocks over 13 strips
/// (6.6% faster at batch 1, per-layer timings on Zen 3); on 28×28 maps (25 and 24 strips
/// against 49) the columns keep their lead by the copies.
fn split_cost((row_parts, col_parts): (usize, usize), blocks: usize, n: usize) -> usize {
    let blocks_per = blocks.div_ceil(row_parts);
    let strips_per = n.div_ceil(col_parts).div_ceil(STRIP2);
    6 * blocks_per * strips_per + 4 * strips_per + blocks_per
}

/// How far ahead of the multiply-adds the packed kernel is prefetched, in floats (1 KB: 32
/// steps of `k`; the channels' tiles, which read eight times as much a step, prefetch 4 KB:
/// 16 steps). 4 KB and four lines a step for the channels' tiles were level in place.
#[cfg(target_arch = "x86_64")]
const AHEAD: usize = 256;

/// [`product`]'s rectangle `rows` × `cols` of `y`, in tiles of a block of rows by a strip
/// of [`COLS`] positions. With fewer rows than positions, for each strip every block of rows
/// in turn (the strip of `b`, `k · 48` floats, stays in cache while the blocks stream past);
/// with more (small maps, strided layers: `W` the larger operand), for each block every strip
/// (the block stays in cache while `b` is read again) — strips outer there streamed ResNet-50's
/// 4.7 MB a thread of the 7×7 maps' 3×3 stride-2 kernel from memory twice (49 = 48 + 1).
///
/// # Safety
/// AVX-512F; `rows.start` a multiple of [`ROWS`]; rows `0..k` of `b` hold the columns
/// `cols`; `y` holds rows `rows` at columns `cols`, written by no one else meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn product512(
    packed: &[f32],
    (m, k): (usize, usize),
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    (b, ldb): (*const f32, usize),
    (y, ldy): (*mut f32, usize),
) {
    let strips = (cols.start..cols.end).step_by(COLS);
    let blocks = rows.clone().step_by(ROWS);
    let tile = |r: usize, p: usize| {
        let take = (cols.end - p).min(COLS);
        let vectors = take.div_ceil(16);
        let tile = Tile {
            w: packed.as_ptr().add(r / ROWS * k * ROWS),
            b: b.add(p),
            ldb,
            k,
            y: y.add(r * ldy + p),
            ldy,
            rows: (m - r).min(rows.end - r).min(ROWS),
            last: ((1u32 << (take - 16 * (vectors - 1))) - 1) as u16,
        };
        match vectors {
            VECTORS => tile.run::<VECTORS>(),
            2 => tile.run::<2>(),
            _ => tile.run::<1>(),
        }
    };
    if rows.len() > cols.len() {
        for r in blocks {
            strips.clone().for_each(|p| tile(r, p));
        }
    } else {
        for p in strips {
            blocks.clone().for_each(|r| tile(r, p));
        }
    }
}

/// One tile's operands: a block of the packed kernel, the strip of `b` and of `y`.
#[cfg(target_arch = "x86_64")]
struct Tile {
    w: *const f32,
    b: *const f32,
    ldb: usize,
    k: usize,
    y: *mut f32,
    ldy: usize,
    /// Rows of the block written (the last block's may be fewer than [`ROWS`]).
    rows: usize,
    /// Lanes of the last vector taken.
    last: u16,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// `ROWS × V` accumulators over `k`: per step `V` loads of `b`, [`ROWS`] broadcasts of
    /// the block and `ROWS · V` multiply-adds (24 accumulators at `V` = 3, 27 registers).
    ///
    /// # Safety
    /// As [`product512`]: the block holds `k · ROWS` floats, `b`'s rows `0..k` hold `16 · V`
    /// values (the last vector's `last` lanes), `y`'s rows `0..rows` as many.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const V: usize>(&self) {
        use std::arch::x86_64::*;
        let last = self.last;
        let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
        for kk in 0..self.k {
            let row = self.b.add(kk * self.ldb);
            let x: [__m512; V] = std::array::from_fn(|v| {
                if v + 1 == V {
                    _mm512_maskz_loadu_ps(last, row.add(16 * v))
                } else {
                    _mm512_loadu_ps(row.add(16 * v))
                }
            });
            let wk = self.w.add(kk * ROWS);
            _mm_prefetch::<_MM_HINT_T0>(wk.wrapping_add(AHEAD).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let u = _mm512_set1_ps(*wk.add(r));
                for (a, &x) in acc.iter_mut().zip(&x) {
                    *a = _mm512_fmadd_ps(u, x, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(self.rows) {
            let out = self.y.add(r * self.ldy);
            for (v, &a) in acc.iter().enumerate() {
                if v + 1 == V {
                    _mm512_mask_storeu_ps(out.add(16 * v), last, a);
                } else {
                    _mm512_storeu_ps(out.add(16 * v), a);
                }
            }
        }
    }
}

/// [`product`]'s rectangle in [`Layout::Channels`]: for each block of 64 channels every
/// strip of [`LANE_COLS`] positions (the block, `k · 64` floats, read from memory once and
/// from cache for the other strips).
///
/// # Safety
/// As [`product512`], `rows.start` a multiple of [`LANE_ROWS`], `16 · ldy` within i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn channels512(
    packed: &[f32],
    (m, k): (usize, usize),
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    (b, ldb): (*const f32, usize),
    (y, ldy): (*mut f32, usize),
) {
    for r in rows.clone().step_by(LANE_ROWS) {
        for p in cols.clone().step_by(LANE_COLS) {
            let tile = LaneTile {
                w: packed.as_ptr().add(r / LANE_ROWS * k * LANE_ROWS),
                b: b.add(p),
                ldb,
                k,
                y: y.add(r * ldy + p),
                ldy,
                rows: (m - r).min(rows.end - r).min(LANE_ROWS),
            };
            match cols.end - p {
                1 => tile.run::<1>(),
                2 => tile.run::<2>(),
                3 => tile.run::<3>(),
                4 => tile.run::<4>(),
                5 => tile.run::<5>(),
                6 => tile.run::<6>(),
                _ => tile.run::<LANE_COLS>(),
            }
        }
    }
}

/// One tile of [`Layout::Channels`]: a block of 64 channels of the packed kernel, `P`
/// positions of `b` and of `y`.
#[cfg(target_arch = "x86_64")]
struct LaneTile {
    w: *const f32,
    b: *const f32,
    ldb: usize,
    k: usize,
    y: *mut f32,
    ldy: usize,
    /// Channels of the block written (the last block's may be fewer than 64).
    rows: usize,
}

#[cfg(target_arch = "x86_64")]
impl LaneTile {
    /// `P × 4` accumulators over `k`: per step 4 loads of the block, `P` broadcasts of `b`
    /// and `4 · P` multiply-adds (28 accumulators at `P` = 7, all 32 registers); each output
    /// the same sum in the same order as [`Tile::run`]'s. The stores scatter each vector of
    /// 16 channels down its column of `y`.
    ///
    /// # Safety
    /// As [`channels512`]: the block holds `k · 64` floats, `b`'s rows `0..k` hold `P`
    /// values, `y`'s rows `0..rows` as many.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const P: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); 4]; P];
        for kk in 0..self.k {
            let wk = self.w.add(kk * LANE_ROWS);
            _mm_prefetch::<_MM_HINT_T0>(wk.wrapping_add(4 * AHEAD).cast());
            let u: [__m512; 4] = std::array::from_fn(|v| _mm512_loadu_ps(wk.add(16 * v)));
            let row = self.b.add(kk * self.ldb);
            for (p, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*row.add(p));
                for (a, &u) in acc.iter_mut().zip(&u) {
                    *a = _mm512_fmadd_ps(u, x, *a);
                }
            }
        }
        let ldy = self.ldy as i32;
        let index = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(ldy),
        );
        for (p, acc) in acc.iter().enumerate() {
            for (v, &a) in acc.iter().enumerate() {
                let valid = self.rows.saturating_sub(16 * v).min(16);
                if valid == 0 {
                    break;
                }
                let mask = ((1u32 << valid) - 1) as u16;
                let base = self.y.add(16 * v * self.ldy + p);
                _mm512_mask_i32scatter_ps::<4>(base.cast(), mask, index, a);
            }
        }
    }
}

/// Steps of `k` an AVX2 tile takes before its sums go to `y` ([`Part::multiply`]): a block's
/// rows for them (12 KB) stay in L1 while the strips pass, and `B`'s copy for them stays in
/// L2 however deep `k` is (3×3 kernels unfolded: up to 4,608). Each output is the sum of
/// its blocks of `k`, each block summed in order, added in order: the same bits whatever
/// the threads and the columns a call is given.
#[cfg(target_arch = "x86_64")]
const KC: usize = 512;

/// Floats of `B` [`product256`] copies into strips at a time (256 KB), which stay in L2
/// (512 KB a core on Zen 3, 256 KB and up on Intel's cores) while every block of the
/// kernel passes over them.
#[cfg(target_arch = "x86_64")]
const CHUNK_FLOATS: usize = 64 * 1024;

/// Positions of the chunks [`product256`] copies for a depth of `k`: [`CHUNK_FLOATS`] over
/// the steps a block of [`KC`] holds, in whole strips.
#[cfg(target_arch = "x86_64")]
fn chunk_positions(k: usize) -> usize {
    (CHUNK_FLOATS / k.clamp(1, KC) / STRIP2 * STRIP2).max(STRIP2)
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Each thread's strips of `B` for [`product256`], kept between calls.
    static STRIPS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`product`]'s rectangle `rows` × `cols` of `y` with AVX2 and FMA: for each chunk of
/// [`chunk_positions`] columns and each block of [`KC`] steps of `k`, `B`'s piece copied into strips
/// ([`pack_strips`]), then every block of [`ROWS2`] rows over every strip
/// ([`Part::multiply`]), the `epilogue` applied to each block's rows of the chunk after its
/// last block of `k`.
///
/// # Safety
/// AVX2 and FMA; `rows.start` a multiple of [`ROWS2`]; `packed` is [`pack`]'s kernel in
/// [`Layout::Positions`] (blocks of [`ROWS2`]); rows `0..k` of `b` hold the columns `cols`;
/// `y` holds rows `rows` at columns `cols`, written by no one else meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product256(
    packed: &[f32],
    (m, k): (usize, usize),
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    b: Rhs,
    (y, ldy): (*mut f32, usize),
    epilogue: Option<Epilogue>,
) {
    let (depth, chunk) = (k.min(KC), chunk_positions(k));
    // An unfolded row of a chunk is gathered into its own line before it is copied.
    let line = if matches!(b, Rhs::Unfolded(_)) {
        chunk
    } else {
        0
    };
    super::im2col::with_buffer(&STRIPS, chunk * depth + 8 + line, |buf| {
        // Strips on 32-byte boundaries, for aligned loads.
        let skip = buf.as_ptr().align_offset(32).min(8);
        let (buf, line) = buf[skip..].split_at_mut(chunk * depth);
        for c0 in cols.clone().step_by(chunk) {
            let width = chunk.min(cols.end - c0);
            // At least one block of `k`: with `k` = 0 the tiles still write their zeros.
            for k0 in (0..k.max(1)).step_by(KC) {
                let kc = KC.min(k - k0);
                let strips = &mut buf[..width.div_ceil(STRIP2) * kc * STRIP2];
                // SAFETY: rows `k0..k0 + kc` of `b` hold columns `c0..c0 + width` (within
                // `cols`, this function's contract); `strips` holds `⌈width / 16⌉` strips
                // of `kc · 16`.
                unsafe { pack_strips(b, k0..k0 + kc, (c0, width), strips, line) };
                let part = Part {
                    steps: k0..k0 + kc,
                    strips,
                    width,
                    // After the last block of `k`, at the chunk's first column.
                    epilogue: epilogue.filter(|_| k0 + kc >= k).map(|e| (e, c0)),
                };
                // SAFETY: as this function's contract, for the chunk's columns.
                unsafe { part.multiply(packed, (m, k), rows.clone(), (y.add(c0), ldy)) };
            }
        }
    })
}

/// Rows of `B` [`pack_strips`] prefetches ahead of the row it copies: each row's piece is
/// 0.2–4 KB, too short for the hardware's stream prefetch to start before the row ends. On
/// the packed products alone (two threads, Zen 3, the distances alternating pass by pass in
/// one process, lower quartiles): ResNet-50's 256 → 64 1×1 on 56×56 1271 → 1237 (2 rows
/// ahead) and 1221 µs (4), 512-deep 28×28 917 → 896 µs, 14×14 and 7×7 shapes level.
#[cfg(target_arch = "x86_64")]
const PACK_AHEAD: usize = 4;

/// Rows `steps` of `B` at columns `c0..c0 + width` as strips of [`STRIP2`] positions,
/// `[⌈width / 16⌉, steps.len(), 16]` in `strips`, the last strip's missing positions zero:
/// each row of `B` read front to back once, and normalised on the way where `b` says
/// ([`Rhs::Normalised`]); an unfolded row ([`Rhs::Unfolded`]) gathered into `line` first.
///
/// # Safety
/// AVX2; rows `steps` of `b` hold columns `c0..c0 + width`; `strips` holds `⌈width / 16⌉ ·
/// steps.len() · 16`; `line` holds `width` for [`Rhs::Unfolded`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_strips(
    b: Rhs,
    steps: std::ops::Range<usize>,
    (c0, width): (usize, usize),
    strips: &mut [f32],
    line: &mut [f32],
) {
    let k = steps.len();
    assert!(strips.len() >= width.div_ceil(STRIP2) * k * STRIP2);
    let strips = strips.as_mut_ptr();
    for (kk, step) in steps.enumerate() {
        let (row, ahead, coefficients) = match b {
            Rhs::Strided(b, ldb) => {
                let row = b.as_ptr().add(step * ldb + c0);
                (row, row.wrapping_add(PACK_AHEAD * ldb), None)
            }
            Rhs::Normalised(rows, prologue) => {
                let row = rows[step].add(c0);
                let ahead = rows
                    .get(step + PACK_AHEAD)
                    .map_or(row, |r| r.wrapping_add(c0));
                (row, ahead, Some(prologue.coefficients(step)))
            }
            Rhs::Unfolded(u) => {
                let line = &mut line[..width];
                u.row_into(step, c0, line);
                (line.as_ptr(), line.as_ptr(), None)
            }
        };
        let to = (strips.add(kk * STRIP2), k * STRIP2);
        // SAFETY: as this function's contract, for this row.
        unsafe {
            match coefficients {
                None => strip_row::<COPY>((row, ahead), to, width, (1.0, 0.0)),
                Some((a, b, false)) => strip_row::<AFFINE>((row, ahead), to, width, (a, b)),
                Some((a, b, true)) => strip_row::<AFFINE_RELU>((row, ahead), to, width, (a, b)),
            }
        }
    }
}

/// [`strip_row`]'s map of eight values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn map_vector<const MODE: u8>(
    x: std::arch::x86_64::__m256,
    (a, b): (std::arch::x86_64::__m256, std::arch::x86_64::__m256),
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    match MODE {
        COPY => x,
        AFFINE => _mm256_add_ps(_mm256_mul_ps(x, a), b),
        // `_mm256_max_ps` answers its second operand for a NaN, as `f32::max` answers 0.
        _ => _mm256_max_ps(_mm256_add_ps(_mm256_mul_ps(x, a), b), _mm256_setzero_ps()),
    }
}

/// What [`strip_row`] does to each value: nothing, `x · a + b`, or `max(x · a + b, 0)`.
#[cfg(target_arch = "x86_64")]
const COPY: u8 = 0;
#[cfg(target_arch = "x86_64")]
const AFFINE: u8 = 1;
#[cfg(target_arch = "x86_64")]
const AFFINE_RELU: u8 = 2;

/// One row's `width` values from `row` into its place in each strip (`to`: the first strip's,
/// the strips `stride` apart), the last strip's missing positions zero; the row `PACK_AHEAD`
/// further prefetched at `ahead`. `MODE` as [`COPY`], [`AFFINE`], [`AFFINE_RELU`].
///
/// # Safety
/// AVX2; `row` holds `width` values; the strips hold `⌈width / 16⌉` places of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn strip_row<const MODE: u8>(
    (row, ahead): (*const f32, *const f32),
    (to, stride): (*mut f32, usize),
    width: usize,
    (a, b): (f32, f32),
) {
    use std::arch::x86_64::*;
    let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
    let map = |x: __m256| map_vector::<MODE>(x, (va, vb));
    let whole = width / STRIP2;
    for s in 0..whole {
        let from = row.add(s * STRIP2);
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(s * STRIP2).cast());
        let to = to.add(s * stride);
        _mm256_storeu_ps(to, map(_mm256_loadu_ps(from)));
        _mm256_storeu_ps(to.add(8), map(_mm256_loadu_ps(from.add(8))));
    }
    let rest = width - whole * STRIP2;
    if rest > 0 {
        let to = to.add(whole * stride);
        for p in 0..STRIP2 {
            *to.add(p) = if p < rest {
                let x = *row.add(whole * STRIP2 + p);
                match MODE {
                    COPY => x,
                    AFFINE => x * a + b,
                    _ => (x * a + b).max(0.0),
                }
            } else {
                0.0
            };
        }
    }
}

/// Strips of `B` for the steps `steps` of `k`: strip `s`'s step `steps.start + i` at
/// `strips[(s · steps.len() + i) · 16..][..16]` ([`pack_strips`]'s layout).
#[cfg(target_arch = "x86_64")]
struct Part<'a> {
    steps: std::ops::Range<usize>,
    strips: &'a [f32],
    width: usize,
    /// The epilogue for each block's rows once multiplied, and the first column of `y` (as
    /// [`product_into`] numbers them) the part's columns start at.
    epilogue: Option<(Epilogue<'a>, usize)>,
}

#[cfg(target_arch = "x86_64")]
impl Part<'_> {
    /// For each block of [`ROWS2`] rows every strip (the block's rows for these steps, `24 ·
    /// KC` bytes, in L1 while the strips pass); the sums written to `y` for the first steps
    /// of `k`, added to it for the others.
    ///
    /// # Safety
    /// AVX2 and FMA; `rows.start` a multiple of [`ROWS2`] and `packed` [`pack`]'s kernel
    /// (`[m, k]`) in [`Layout::Positions`]; the strips hold `⌈width / 16⌉` strips of the
    /// steps, starting on a 32-byte boundary; `y` holds rows `rows` at `width` columns,
    /// written by no one else meanwhile (and, past the first steps, the earlier steps' sums).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn multiply(
        &self,
        packed: &[f32],
        (m, k): (usize, usize),
        rows: std::ops::Range<usize>,
        (y, ldy): (*mut f32, usize),
    ) {
        let strips = self.width.div_ceil(STRIP2);
        let depth = self.steps.len();
        assert!(self.steps.end <= k);
        assert!(self.strips.len() >= strips * depth * STRIP2);
        assert!(packed.len() >= m.div_ceil(ROWS2) * k * ROWS2 && rows.start.is_multiple_of(ROWS2));
        assert!(self.strips.as_ptr().align_offset(32) == 0);
        for r in rows.clone().step_by(ROWS2) {
            for (s, p) in (0..self.width).step_by(STRIP2).enumerate() {
                let tile = Tile2 {
                    w: packed
                        .as_ptr()
                        .add((r / ROWS2 * k + self.steps.start) * ROWS2),
                    next: k * ROWS2,
                    b: self.strips.as_ptr().add(s * depth * STRIP2),
                    k: self.steps.len(),
                    y: y.add(r * ldy + p),
                    ldy,
                    rows: (m - r).min(rows.end - r).min(ROWS2),
                    take: (self.width - p).min(STRIP2),
                    add: self.steps.start > 0,
                };
                if tile.take > 8 {
                    tile.run::<2>()
                } else {
                    tile.run::<1>()
                }
            }
            if let Some((epilogue, first)) = self.epilogue {
                let block = r..(r + ROWS2).min(rows.end).min(m);
                // SAFETY: the block's rows at the part's `width` columns, just written by its
                // tiles (this function's contract: `y` holds them, lent to this call).
                unsafe { finish_rows(epilogue, (y, ldy), block, first..first + self.width) };
            }
        }
    }
}

/// One AVX2 tile's operands: a block of [`ROWS2`] rows of the packed kernel, one strip of
/// `B` ([`pack_strips`]) and the tile's corner in `y`, for `k` steps.
#[cfg(target_arch = "x86_64")]
struct Tile2 {
    w: *const f32,
    /// Floats from the block to the next one (`k · ROWS2`, `k` the kernel's whole depth).
    next: usize,
    b: *const f32,
    k: usize,
    y: *mut f32,
    ldy: usize,
    /// Rows of the block written (the last block's may be fewer than [`ROWS2`]).
    rows: usize,
    /// Positions of the strip written (the last strip's may be fewer than 16).
    take: usize,
    /// Whether the sums are added to `y` (earlier steps' sums) rather than written.
    add: bool,
}

#[cfg(target_arch = "x86_64")]
impl Tile2 {
    /// `ROWS2 × V` accumulators over `k` steps: per step `V` aligned loads of the strip,
    /// [`ROWS2`] broadcasts of the block and `6 · V` multiply-adds (12 accumulators at `V` =
    /// 2, 15 of the 16 registers). The block's rows one block ahead are prefetched as they
    /// are read (at batch 1 every layer's kernel comes from memory).
    ///
    /// # Safety
    /// As [`Part::multiply`]: the block holds `k · ROWS2` floats, the strip `k · 16` on a
    /// 32-byte boundary, `y`'s rows `0..rows` hold `take` ≤ `8 · V` values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const V: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm256_setzero_ps(); V]; ROWS2];
        for kk in 0..self.k {
            let strip = self.b.add(kk * STRIP2);
            let x: [__m256; V] = std::array::from_fn(|v| _mm256_load_ps(strip.add(8 * v)));
            let wk = self.w.add(kk * ROWS2);
            _mm_prefetch::<_MM_HINT_T0>(wk.wrapping_add(self.next).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let u = _mm256_broadcast_ss(&*wk.add(r));
                for (a, &x) in acc.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(u, x, *a);
                }
            }
        }
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (r, acc) in acc.iter().enumerate().take(self.rows) {
            let out = self.y.add(r * self.ldy);
            for (v, &a) in acc.iter().enumerate() {
                let valid = self.take.saturating_sub(8 * v).min(8);
                let at = out.add(8 * v);
                if valid == 8 {
                    let a = if self.add {
                        _mm256_add_ps(_mm256_loadu_ps(at), a)
                    } else {
                        a
                    };
                    _mm256_storeu_ps(at, a);
                } else if valid > 0 {
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lanes);
                    let a = if self.add {
                        _mm256_add_ps(_mm256_maskload_ps(at, mask), a)
                    } else {
                        a
                    };
                    _mm256_maskstore_ps(at, mask, a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both layouts against the plain sums (exact: small integers), on shapes with partial
    /// blocks of rows (m not a multiple of 8 or 64), partial strips (n not a multiple of 48,
    /// 16 or 7), strided `b` and `y`, one thread and split (rows and positions); and the two
    /// layouts' tiles give the same bits on real-valued data (the same sums in the same
    /// order).
    #[test]
    fn product_equals_the_plain_sums() {
        if !available() {
            eprintln!("skipped: the packed products do not run here");
            return;
        }
        for (m, n, k) in [
            (8, 48, 16),
            (13, 50, 7),
            (64, 196, 33),
            (128, 196, 20),
            (3, 5, 1),
            (40, 113, 64),
            (64, 49, 40),
            (130, 20, 9),
            (72, 3, 5),
            (9, 20, 0),
        ] {
            let w: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 19) as f32 - 9.0).collect();
            let (ldb, ldy) = (n + 3, n + 5);
            let b: Vec<f32> = (0..k * ldb).map(|i| ((i * 11) % 13) as f32 - 6.0).collect();
            let mut want = vec![-1.0f32; m * ldy];
            for r in 0..m {
                for p in 0..n {
                    want[r * ldy + p] = (0..k).map(|kk| w[r * k + kk] * b[kk * ldb + p]).sum();
                }
            }
            for layout in layouts() {
                let packed = pack(&w, m, k, layout);
                for parallel in [false, true] {
                    let mut y = vec![-1.0f32; m * ldy];
                    product(
                        (&packed, layout),
                        (m, n, k),
                        (&b, ldb),
                        (&mut y, ldy),
                        parallel,
                    );
                    assert_eq!(y, want, "{m}×{n}×{k} {layout:?} parallel {parallel}");
                }
            }
        }
        let (m, n, k) = (100, 49, 77);
        let w: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let run = |layout| {
            let mut y = vec![0.0f32; m * n];
            let packed = pack(&w, m, k, layout);
            product((&packed, layout), (m, n, k), (&b, n), (&mut y, n), true);
            y
        };
        if available512() {
            assert_eq!(run(Layout::Positions), run(Layout::Channels));
            assert_eq!(Layout::for_shape(m, n), Layout::Channels);
        } else {
            assert_eq!(Layout::for_shape(m, n), Layout::Positions);
        }
    }

    /// The epilogue sees every row's columns once, after their sums are whole (several
    /// chunks of columns and blocks of `k`; one thread and split by rows or columns), and
    /// what it writes is what the product leaves.
    #[test]
    fn the_epilogue_finishes_each_value_once() {
        if !available() {
            eprintln!("skipped: the packed products do not run here");
            return;
        }
        for (m, n, k) in [
            (13, 700, 1000),
            (64, 3000, 64),
            (128, 196, 20),
            (7, 49, 600),
        ] {
            let w: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 19) as f32 - 9.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 11) % 13) as f32 - 6.0).collect();
            let layout = Layout::for_shape(m, n);
            let packed = pack(&w, m, k, layout);
            let mut plain = vec![0.0f32; m * n];
            product(
                (&packed, layout),
                (m, n, k),
                (&b, n),
                (&mut plain, n),
                false,
            );
            for parallel in [false, true] {
                let seen = std::sync::Mutex::new(vec![0u8; m * n]);
                let epilogue = |row: usize, first: usize, values: &mut [f32]| {
                    let mut seen = seen.lock().unwrap();
                    for (i, v) in values.iter_mut().enumerate() {
                        let at = row * n + first + i;
                        assert_eq!(
                            *v,
                            plain[at],
                            "{m}×{n}×{k}: ({row}, {}) unfinished",
                            first + i
                        );
                        seen[at] += 1;
                        *v = -*v + row as f32;
                    }
                };
                let mut y = vec![f32::NAN; m * n];
                // SAFETY: `y` holds the `m × n` output, borrowed mutably for the call.
                unsafe {
                    product_into(
                        (&packed, layout),
                        (m, n, k),
                        Rhs::Strided(&b, n),
                        (y.as_mut_ptr(), n),
                        parallel,
                        Some(&epilogue),
                    )
                };
                assert!(
                    seen.into_inner().unwrap().iter().all(|&c| c == 1),
                    "{m}×{n}×{k}"
                );
                for (at, (got, want)) in y.iter().zip(&plain).enumerate() {
                    assert_eq!(*got, -*want + (at / n) as f32, "{m}×{n}×{k} at {at}");
                }
            }
        }
    }

    /// Two threads' AVX2 split: DenseNet's 1×1 layers on 14×14 maps (22 blocks of 6 rows,
    /// 196 columns) split their rows (11 blocks over 13 strips each, not 22 over 7 and 6),
    /// on 28×28 and 56×56 maps their columns (each thread copies only its own strips).
    #[test]
    fn the_busiest_task_decides_the_split() {
        let blocks = 128usize.div_ceil(ROWS2);
        let rows_first = |n: usize| split_cost((2, 1), blocks, n) < split_cost((1, 2), blocks, n);
        assert!(rows_first(196));
        assert!(!rows_first(784));
        assert!(!rows_first(3136));
    }

    /// The AVX2 products gathering an input's unfolded columns themselves ([`Rhs::Unfolded`])
    /// give the bits of the same products over the unfolded matrix written out (each row
    /// built here by its definition): kernels of 1, 3 and 7, strides 1 and 2, padding in and
    /// out of every side, maps not square, columns from a panel's first position, several
    /// chunks of columns and blocks of `k`, one thread and split.
    #[test]
    fn unfolded_columns_equal_the_written_matrix() {
        if isa() != Some(Isa::Avx2) {
            eprintln!("skipped: the gathered columns are AVX2's");
            return;
        }
        for (c_in, (h, w), k, (stride, padding), c_out, first) in [
            (3, (40, 37), 7, (2, 3), 10, 0),
            (3, (23, 29), 7, (2, 3), 6, 3 * 15),
            (16, (15, 14), 3, (2, 1), 13, 0),
            (70, (8, 9), 3, (2, 1), 40, 4),
            (9, (11, 6), 3, (1, 1), 7, 6),
            (60, (14, 14), 1, (2, 0), 32, 0),
            (5, (9, 10), 3, (2, 0), 12, 0),
            (4, (5, 5), 3, (1, 2), 9, 1),
            (64, (30, 31), 3, (1, 1), 8, 31),
        ] {
            let g = ConvGeom { stride, padding };
            let (oh, ow) = (
                (h + 2 * padding - k) / stride + 1,
                (w + 2 * padding - k) / stride + 1,
            );
            let dims = Dims {
                n: 1,
                c_in,
                h,
                w,
                c_out,
                k,
                oh,
                ow,
            };
            let (rows, n) = (dims.rows(), oh * ow - first);
            let x: Vec<f32> = (0..c_in * h * w).map(|i| (i as f32 * 0.37).sin()).collect();
            let wt: Vec<f32> = (0..c_out * rows).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut matrix = vec![0.0f32; rows * n];
            for (row, values) in matrix.chunks_exact_mut(n).enumerate() {
                let (ci, ky, kx) = (row / (k * k), row / k % k, row % k);
                for (o, v) in values.iter_mut().enumerate() {
                    let (oy, ox) = ((first + o) / ow, (first + o) % ow);
                    let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                    if (padding..h + padding).contains(&iy) && (padding..w + padding).contains(&ix)
                    {
                        *v = x[(ci * h + iy - padding) * w + ix - padding];
                    }
                }
            }
            let packed = pack(&wt, c_out, rows, Layout::Positions);
            let u = Unfolded {
                x: &x,
                dims,
                geom: g,
                first,
            };
            for parallel in [false, true] {
                let mut want = vec![-1.0f32; c_out * n];
                let mut got = vec![-1.0f32; c_out * n];
                let shape = (c_out, n, rows);
                let packed = (&packed[..], Layout::Positions);
                product(packed, shape, (&matrix, n), (&mut want, n), parallel);
                // SAFETY: `got` holds `c_out` rows of `n`, borrowed mutably here.
                unsafe {
                    let y = (got.as_mut_ptr(), n);
                    product_into(packed, shape, Rhs::Unfolded(u), y, parallel, None)
                };
                let case = format!("{c_in}×{h}×{w} k{k} s{stride} p{padding} from {first}");
                let differs = got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(
                    differs, None,
                    "{case} parallel {parallel}: first differing value"
                );
            }
        }
    }

    /// The layouts this CPU's tiles multiply.
    fn layouts() -> Vec<Layout> {
        if available512() {
            vec![Layout::Positions, Layout::Channels]
        } else {
            vec![Layout::Positions]
        }
    }

    /// The AVX2 products over several chunks of columns and blocks of `k` (and one sample
    /// split among the threads by columns) on real-valued data: within rounding of the
    /// plain sums in `f64`, and the same bits whatever the threads.
    #[test]
    fn deep_products_equal_the_plain_sums() {
        if !available() {
            eprintln!("skipped: the packed products do not run here");
            return;
        }
        for (m, n, k) in [(13, 700, 1000), (50, 30, 4000), (7, 600, 257)] {
            let w: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let packed = pack(&w, m, k, Layout::Positions);
            let run = |parallel| {
                let mut y = vec![f32::NAN; m * n];
                let dims = (m, n, k);
                product(
                    (&packed, Layout::Positions),
                    dims,
                    (&b, n),
                    (&mut y, n),
                    parallel,
                );
                y
            };
            let y = run(true);
            assert_eq!(y, run(false), "{m}×{n}×{k}: threads changed the bits");
            for r in 0..m {
                for p in 0..n {
                    let want: f64 = (0..k)
                        .map(|kk| w[r * k + kk] as f64 * b[kk * n + p] as f64)
                        .sum();
                    let got = y[r * n + p] as f64;
                    assert!(
                        (got - want).abs() < 1e-3,
                        "({r}, {p}): {got} against {want}"
                    );
                }
            }
        }
    }
}
