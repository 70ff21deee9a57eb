//! Direct kernels for the shifted-plane convolutions: f32 on x86-64 CPUs with AVX-512F,
//! detected at run time ([`isa`]); everything else keeps gemm. The planar forward kernel also
//! has an AVX2 + FMA variant (half-width vectors, 16 registers, [`Isa::Avx2`]).
//!
//! Through gemm, each of the `k²` tap products packs its shifted plane matrix before
//! multiplying it: the whole padded input is repacked `k²` times per pass. A tap's shift is
//! only an offset into the planes, so these kernels read them where they lie:
//!
//! - forward (and the input gradient, a forward pass with the flipped kernel): a tile of
//!   [`ROWS`] output channels × [`TILE`] positions stays in 24 vector registers while every
//!   input channel and tap is added in; each step loads 6 input vectors and broadcasts 4
//!   weights for 24 fused multiply-adds;
//! - forward on small maps, where the padded grid would waste too many products: a tile of
//!   6 real positions × 64 output channels, over the input laid out channels-last (6
//!   broadcast input values and 4 weight vectors per 24 multiply-adds), written channels-last;
//! - weight gradient: over the input laid out channels-last, 4 output channels × 32 input
//!   channels × 3 taps of kernel gradient accumulate in 24 vector registers, real position
//!   by real position (4 broadcast gradient values and 6 input vectors per 24 multiply-adds),
//!   with no sums across lanes.
//!
//! A single sample's planar forward splits its output channels across the thread pool
//! (one sample gives no batch to split).
//!
//! `MTPATH_DIRECT_CONV=0` turns them off, `MTPATH_SIMD=avx2` their AVX-512 code and
//! `MTPATH_DIRECT_AVX2=0` their AVX2 code (for comparisons).

// Elsewhere (wasm32, ARM) the kernels and their constants are compiled out.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::shifted::Planes;
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
/// Positions per weight-gradient tile, and output channels per group: a group's gradient
/// rows of the tile (256 KB in f32) and one block's input channels (128 KB) stay in L2
/// while the group's blocks pass over them, and each block's sums are added to the kernel
/// gradient once per tile.
const GRAD_TILE: usize = 1024;
const GRAD_GROUP: usize = 64;
/// Channels-last forward tile: positions, vectors of output channels, and the input
/// channels added per pass (their kernel rows stay in L2 while every tile reads them).
const CL_ROWS: usize = 6;
const CL_COLS: usize = 4;
const CL_DEPTH: usize = 16;
/// Output-gradient channels per pass of the scattering input gradient: their kernel rows
/// (16 KB) stay in L1 across the pass's tiles.
const SCATTER_DEPTH: usize = 64;

/// The instruction sets the direct kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512F: every kernel of this module (32 vector registers of 16 lanes).
    Avx512,
    /// AVX2 with FMA: the planar forward kernel only (16 registers of 8 lanes); the other
    /// passes keep gemm. Tiles of 4 channels × 3 vectors, their multiply-adds written by
    /// hand (`avx2::fma_step`): from the intrinsics the compiler left 4 × 3 too few
    /// registers (it spilled an accumulator or folded the input loads into every
    /// multiply-add), so 4 × 2 tiles ran instead, at 1.0–1.4× gemm's AVX2 kernels; the
    /// written 4 × 3 runs DenseNet-121's 3×3 layers at batch 32 11% faster than 4 × 2 (AMD
    /// EPYC Zen 3, AVX2 only, 2 threads).
    Avx2,
}

/// The kernels' instruction set here: AVX-512F, else AVX2 with FMA, where the CPU has them,
/// unless `MTPATH_DIRECT_CONV=0` turns the direct kernels off, `MTPATH_SIMD=avx2` their
/// AVX-512 code (to measure what an AVX2-only CPU gets; build without the `avx512` feature
/// to take gemm's AVX-512 kernels out too) or `MTPATH_DIRECT_AVX2=0` their AVX2 code.
pub(super) fn isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let enabled = var("MTPATH_DIRECT_CONV").trim() != "0";
        let avx512_allowed = !var("MTPATH_SIMD").trim().eq_ignore_ascii_case("avx2");
        let avx2_allowed = var("MTPATH_DIRECT_AVX2").trim() != "0";
        if !enabled {
            None
        } else if avx512_allowed && cpu_has("avx512f") {
            Some(Isa::Avx512)
        } else if avx2_allowed && cpu_has("avx2") && cpu_has("fma") {
            Some(Isa::Avx2)
        } else {
            None
        }
    })
}

/// Whether every kernel of this module runs here ([`Isa::Avx512`]).
pub(super) fn available() -> bool {
    isa() == Some(Isa::Avx512)
}

/// Whether the planar forward kernel ([`forward`]) runs here (either instruction set).
pub(super) fn forward_available() -> bool {
    isa().is_some()
}

fn cpu_has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// A kernel `[c_out, c_in, k, k]` rearranged for the forward tiles: per block of [`ROWS`]
/// output channels, per input channel and tap, the block's [`ROWS`] weights side by side
/// (zeros for channels past `c_out`).
#[derive(Debug)]
pub(super) struct Packed {
    data: Vec<f32>,
    c_out: usize,
    c_in: usize,
    kk: usize,
}

/// Where a convolution's kernel `W [c_out, c_in, k²]` comes from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// `W` itself.
    Plain(&'a [f32]),
    /// An input gradient's kernel, the flipped transpose of the forward convolution's kernel
    /// `w [c_in, c_out, k²]`: `W[o, i, t] = w[i, o, k² − 1 − t]`, read without building it.
    Flipped(&'a [f32]),
    /// A stride-2 input gradient's kernel, the transpose of the forward convolution's kernel
    /// `w [c_in, c_out, k²]`: `W[o, i, t] = w[i, o, t]`.
    Transposed(&'a [f32]),
}

/// A rearrangement of a kernel, written from a reader of `W[o, i, t]`.
trait Layout {
    fn fill(&mut self, w: impl Fn(usize, usize, usize) -> f32 + Sync);
}

impl Source<'_> {
    /// Fill `layout` from this kernel of `c_out × c_in × kk` (one monomorphised loop per
    /// source, no call per element).
    fn fill(self, (c_out, c_in, kk): (usize, usize, usize), layout: &mut impl Layout) {
        match self {
            Source::Plain(w) => layout.fill(|o, i, t| w[(o * c_in + i) * kk + t]),
            Source::Flipped(w) => layout.fill(|o, i, t| w[(i * c_out + o) * kk + kk - 1 - t]),
            Source::Transposed(w) => layout.fill(|o, i, t| w[(i * c_out + o) * kk + t]),
        }
    }
}

impl Packed {
    pub(super) fn new(src: Source, c_out: usize, c_in: usize, kk: usize) -> Self {
        let blocks = c_out.div_ceil(ROWS);
        let mut packed = Self {
            data: vec![0.0; blocks * c_in * kk * ROWS],
            c_out,
            c_in,
            kk,
        };
        src.fill((c_out, c_in, kk), &mut packed);
        packed
    }
}

impl Layout for Packed {
    fn fill(&mut self, w: impl Fn(usize, usize, usize) -> f32 + Sync) {
        let (c_out, c_in, kk) = (self.c_out, self.c_in, self.kk);
        self.data
            .par_chunks_exact_mut(c_in * kk * ROWS)
            .enumerate()
            .for_each(|(b, block)| {
                let rows = ROWS.min(c_out - b * ROWS);
                for ci in 0..c_in {
                    for j in 0..rows {
                        for t in 0..kk {
                            block[(ci * kk + t) * ROWS + j] = w(b * ROWS + j, ci, t);
                        }
                    }
                }
            });
    }
}

/// The tap offsets of `pl`'s planes, `(ky, kx)` in row-major order.
fn tap_offsets(pl: &Planes, k: usize) -> Vec<usize> {
    (0..k * k).map(|t| pl.tap_start(t / k, t % k)).collect()
}

/// `grid [c_out, span] = Σ_tap W_tap · shifted planes` for the planes `[c_in, len]` of `pl`
/// (followed by [`SLACK`] readable elements). When `parallel` (a single sample, or fewer
/// samples than threads), the output channels are split across the thread pool: each task
/// takes a run of [`ROWS`]-channel blocks over every position, so the tasks write disjoint
/// rows of the grid and share only reads.
pub(super) fn forward(
    planes: &[f32],
    pl: &Planes,
    k: usize,
    w: &Packed,
    grid: &mut [f32],
    parallel: bool,
) {
    assert!(k * k == w.kk);
    forward_at(
        planes,
        (pl.len, pl.span),
        &tap_offsets(pl, k),
        w,
        grid,
        parallel,
    );
}

/// [`forward`] over planes of `len` elements, `span` output positions and the taps at
/// `offsets` into a plane (one per tap of `w`): `grid [c_out, span] = Σ_ci Σ_tap W[·, ci, tap]
/// · planes[ci][offset_tap..][..span]`. Any tap geometry whose offsets plus `span` stay
/// within `len`.
pub(super) fn forward_at(
    planes: &[f32],
    (len, span): (usize, usize),
    offsets: &[usize],
    w: &Packed,
    grid: &mut [f32],
    parallel: bool,
) {
    assert!(offsets.len() == w.kk && planes.len() >= w.c_in * len + SLACK);
    assert!(offsets.iter().all(|&off| off + span <= len));
    assert!(grid.len() >= w.c_out * span);
    let pl = (len, span);
    let grid = &mut grid[..w.c_out * span];
    let blocks = w.c_out.div_ceil(ROWS);
    // Blocks per task: a few tasks per thread, so that a slower core does not hold the
    // others up, while each task still reuses a strip of input across several blocks.
    let per_task = if parallel {
        blocks
            .div_ceil(PARALLEL_TASKS_PER_THREAD * super::im2col::threads().max(1))
            .max(1)
    } else {
        blocks
    };
    let isa = isa().expect("direct::forward runs where forward_available()");
    let run = |(task, rows): (usize, &mut [f32])| {
        let task_blocks = task * per_task..(task * per_task + per_task).min(blocks);
        let geometry = pl;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` (the callers' condition, `forward_available()`) checked the
        // instruction set; the asserts above bound every read (the last tile reads at most
        // TILE − 1 past a plane's span end, which the slack covers; AVX2 tiles are shorter)
        // and write (masked to the span; `rows` holds the task's blocks' rows, fewer for the
        // last block when `c_out` is not a multiple of ROWS).
        unsafe {
            match isa {
                Isa::Avx512 => avx512::forward(planes, geometry, offsets, w, task_blocks, rows),
                Isa::Avx2 => avx2::forward(planes, geometry, offsets, w, task_blocks, rows),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "direct kernels run only on x86-64 ({isa:?} {task_blocks:?} {geometry:?} {:?} {:p})",
            offsets, rows
        );
    };
    let task_len = per_task * ROWS * span;
    if parallel {
        grid.par_chunks_mut(task_len).enumerate().for_each(run);
    } else {
        grid.chunks_mut(task_len).enumerate().for_each(run);
    }
}

/// The planar forward's tiles of `tile` positions over `span` for the output-channel blocks
/// `blocks` of `w`, positions outermost (a strip of input serves every block), each whole
/// tile's input channels `chunk` at a time over every block (the last, partial tile takes
/// them all in one pass): `f(first position, the pass's input channels, the block's packed
/// weights from the first of them, the tile's offset in the blocks' grid rows, rows)`.
/// Shared by both instruction sets' kernels, which differ in the tile (and AVX-512 takes
/// every channel in one pass). Inlined into the kernels' `target_feature` functions, so that
/// their tiles are inlined in turn (out of line, the AVX2 layers ran 2–3% slower).
#[inline(always)]
fn for_each_tile(
    w: &Packed,
    (span, tile): (usize, usize),
    chunk: usize,
    blocks: std::ops::Range<usize>,
    mut f: impl FnMut(usize, std::ops::Range<usize>, *const f32, usize, usize),
) {
    let per_block = w.c_in * w.kk * ROWS;
    for p0 in (0..span).step_by(tile) {
        // `max(1)`: never a step of zero.
        let chunk = if span - p0 >= tile { chunk } else { w.c_in }.max(1);
        for c0 in (0..w.c_in.max(1)).step_by(chunk) {
            let channels = c0..(c0 + chunk).min(w.c_in);
            for b in blocks.clone() {
                let rows = ROWS.min(w.c_out - b * ROWS);
                let weights = w.data[b * per_block + c0 * w.kk * ROWS..].as_ptr();
                f(
                    p0,
                    channels.clone(),
                    weights,
                    (b - blocks.start) * ROWS * span + p0,
                    rows,
                );
            }
        }
    }
}

/// Tasks per thread of a single sample's [`forward`].
const PARALLEL_TASKS_PER_THREAD: usize = 2;

/// Elements between consecutive positions of planes laid out channels-last with `c`
/// channels: `c` rounded up to a vector, plus one vector when that is a multiple of 1 KB, so
/// that the rows one tile reads do not all fall into the same few L1 sets ([`padded_stride`]).
pub(super) fn channels_last_stride(c: usize) -> usize {
    padded_stride(c, LANES)
}

/// `c` rounded up to a multiple of `block`, plus one vector when that is a multiple of 1 KB
/// in f32 (rows that far apart share a few L1 sets).
fn padded_stride(c: usize, block: usize) -> usize {
    let s = c.next_multiple_of(block);
    if s.is_multiple_of(256) {
        s + LANES
    } else {
        s
    }
}

/// Output channels per channels-last forward tile.
const CL_WIDTH: usize = CL_COLS * LANES;

/// A kernel `[c_out, c_in, k, k]` for the channels-last forward tiles: per block of
/// [`CL_WIDTH`] output channels, per tap and input channel, the block's weights side by side
/// (zeros past `c_out`), so that a tile's weights are one contiguous run.
#[derive(Debug)]
pub(super) struct ByTap {
    data: Vec<f32>,
    c_out: usize,
    c_in: usize,
    kk: usize,
}

impl ByTap {
    pub(super) fn new(src: Source, c_out: usize, c_in: usize, kk: usize) -> Self {
        let blocks = c_out.div_ceil(CL_WIDTH);
        let mut by_tap = Self {
            data: vec![0.0; blocks * kk * c_in * CL_WIDTH],
            c_out,
            c_in,
            kk,
        };
        src.fill((c_out, c_in, kk), &mut by_tap);
        by_tap
    }
}

impl Layout for ByTap {
    fn fill(&mut self, w: impl Fn(usize, usize, usize) -> f32 + Sync) {
        let (c_out, c_in, kk) = (self.c_out, self.c_in, self.kk);
        self.data
            .par_chunks_exact_mut(kk * c_in * CL_WIDTH)
            .enumerate()
            .for_each(|(b, block)| {
                let co0 = b * CL_WIDTH;
                // A few input channels at a time: the reads of either source stay within a
                // few rows, and the rows written stay in L1.
                const CHANNELS: usize = 8;
                for ci0 in (0..c_in).step_by(CHANNELS) {
                    let cis = ci0..CHANNELS.min(c_in - ci0) + ci0;
                    for j in 0..CL_WIDTH.min(c_out - co0) {
                        for ci in cis.clone() {
                            for tap in 0..kk {
                                block[(tap * c_in + ci) * CL_WIDTH + j] = w(co0 + j, ci, tap);
                            }
                        }
                    }
                }
            });
    }
}

/// Elements of [`forward_channels_last`]'s output for `c_out` channels at `nq` positions.
pub(super) fn channels_last_out_len(c_out: usize, nq: usize) -> usize {
    c_out.next_multiple_of(CL_WIDTH) * nq
}

/// `y_cl [q, c_out] = Σ_tap x_cl[positions[q] + offset_tap] · W_tap` for the real positions
/// `positions` (grid indices of `pl`) and the input planes channels-last, `x_cl`
/// `[len, channels_last_stride(c_in)]` (from [`Planes::pad_channels_last`]). The output
/// comes in blocks of [`CL_WIDTH`] channels: `y_cl [c_out / CL_WIDTH, q, CL_WIDTH]`, see
/// [`channels_last_to_nchw`]. When `parallel` (fewer samples than threads), each block's
/// positions are also split into runs, and blocks and runs spread over the thread pool.
pub(super) fn forward_channels_last(
    x_cl: &[f32],
    pl: &Planes,
    k: usize,
    positions: &[u32],
    w: &ByTap,
    y_cl: &mut [f32],
    parallel: bool,
) {
    assert!(k * k == w.kk && x_cl.len() >= channels_last_stride(w.c_in) * pl.len);
    assert!(y_cl.len() >= channels_last_out_len(w.c_out, positions.len()));
    assert!(positions.iter().all(|&p| (p as usize) < pl.span));
    let offsets = tap_offsets(pl, k);
    let nq = positions.len();
    let y_cl = &mut y_cl[..channels_last_out_len(w.c_out, nq)];
    let run = |block: usize, positions: &[u32], y: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` checked AVX-512F; the asserts above bound every read (a real
        // position plus any tap offset stays within the planes; channels past `c_out` are
        // masked) and every write (`y` holds the block's rows of these positions).
        unsafe {
            avx512::forward_channels_last(x_cl, positions, &offsets, w, block, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "direct kernels run only on x86-64 ({block} {} {:?} {})",
            positions.len(),
            offsets,
            y.len()
        );
    };
    if nq == 0 {
        return;
    }
    let blocks = w.c_out.div_ceil(CL_WIDTH);
    if parallel {
        // Enough tasks for every thread twice over; runs of whole tiles.
        let tasks = PARALLEL_TASKS_PER_THREAD * super::im2col::threads().max(1);
        let per_run = nq
            .div_ceil(tasks.div_ceil(blocks))
            .next_multiple_of(CL_ROWS);
        y_cl.par_chunks_mut(nq * CL_WIDTH)
            .enumerate()
            .for_each(|(block, rows)| {
                rows.par_chunks_mut(per_run * CL_WIDTH)
                    .zip(positions.par_chunks(per_run))
                    .for_each(|(y, positions)| run(block, positions, y));
            });
    } else {
        for (block, rows) in y_cl.chunks_mut(nq * CL_WIDTH).enumerate() {
            run(block, positions, rows);
        }
    }
}

/// Row `y` of every channel of `sample` `[c, h, w]` into `row` `[w, stride]` (position by
/// position, channels side by side; lanes from `c` up to the next multiple of 16 get zeros),
/// in 16 × 16 blocks transposed in registers.
pub(super) fn transpose_row(
    sample: &[f32],
    (c, h, w): (usize, usize, usize),
    y: usize,
    row: &mut [f32],
    stride: usize,
) {
    assert!(sample.len() >= c * h * w && y < h);
    assert!(stride >= c.next_multiple_of(LANES) && row.len() >= w * stride);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked AVX-512F; reads stay in the channels' row `y` (masked
    // past `w`), writes in the first `w` positions of `row` within the stride.
    unsafe {
        avx512::transpose_row(sample.as_ptr(), (c, h, w), y, row.as_mut_ptr(), stride)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct kernels run only on x86-64 ({y})");
}

/// The input gradient of a "same" convolution of any stride, scattered: for every output
/// position `q` (grid index `positions[q]` of `pl`, the forward's) and tap, the products of
/// its output gradient with the tap's kernel slice are added to the input position the tap
/// read, in `dx_cl` `[len, dx_stride]` (zeroed by the caller; padding positions collect
/// products that are then dropped). `dy` is the chunk's output gradient `[nc, c_out, l_out]`
/// and `w` the transposed kernel ([`Source::Transposed`]): its "output" channels are the
/// input gradient's.
pub(super) fn input_grad_scatter(
    dy: &[f32],
    l_out: usize,
    pl: &Planes,
    k: usize,
    positions: &[u32],
    w: &ByTap,
    (dx_cl, dx_stride): (&mut [f32], usize),
) {
    let nq = positions.len();
    assert!(k * k == w.kk && nq.is_multiple_of(l_out) && dy.len() >= nq * w.c_in);
    assert!(dx_stride >= w.c_out.next_multiple_of(CL_WIDTH));
    assert!(dx_cl.len() >= pl.len * dx_stride);
    assert!(positions.iter().all(|&p| (p as usize) < pl.span));
    let offsets = tap_offsets(pl, k);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked AVX-512F; reads stay in `dy` (each position's channels
    // of its own sample) and the kernel, writes in the rows of `dx_cl` a real position plus
    // a tap offset reaches (within `len`), [`CL_WIDTH`]-channel blocks within the stride.
    unsafe {
        avx512::input_grad_scatter(
            dy,
            (l_out, w.c_in * l_out),
            positions,
            &offsets,
            w,
            dx_cl,
            dx_stride,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct kernels run only on x86-64 ({offsets:?}, {dx_stride})");
}

/// Elements per position of the scattering input gradient's buffer for `c` channels: whole
/// blocks of [`CL_WIDTH`], plus a vector when a multiple of 1 KB ([`padded_stride`]).
pub(super) fn scatter_stride(c: usize) -> usize {
    padded_stride(c, CL_WIDTH)
}

/// The rows `rows` of `src` (`stride` elements each, channels side by side) as `dst`
/// `[nc, c, l]`: row `rows[s·l + p]` holds position `p` of sample `s`.
pub(super) fn rows_to_nchw(
    src: &[f32],
    stride: usize,
    rows: &[u32],
    (c, l): (usize, usize),
    dst: &mut [f32],
) {
    assert!(dst.len() == rows.len() * c && rows.len().is_multiple_of(l.max(1)));
    assert!(stride >= c.next_multiple_of(LANES));
    assert!(rows.iter().all(|&r| (r as usize + 1) * stride <= src.len()));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked AVX-512F; each row read whole (16 lanes from a channel
    // block start, within the stride), writes masked to each sample's planes.
    unsafe {
        avx512::rows_to_nchw(src.as_ptr(), stride, rows, (c, l), dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct kernels run only on x86-64 ({l})");
}

/// [`forward_channels_last`]'s output `src` (`nc·l` positions of `nc` samples) into `dst`
/// `[nc, c, l]`; when `parallel`, samples, blocks and groups of 16 channels (one cache line
/// of each row) spread over the thread pool.
pub(super) fn channels_last_to_nchw(
    src: &[f32],
    c: usize,
    l: usize,
    dst: &mut [f32],
    parallel: bool,
) {
    /// Positions moved together: their rows (16 KB) stay in L1 while every channel of the
    /// block is picked out of them.
    const POSITIONS: usize = 64;
    /// Channels per parallel task: one cache line of each row.
    const LANE_GROUP: usize = 16;
    let nq = dst.len() / c;
    let copy = |(s, block, group): (usize, usize, usize), planes: &mut [f32]| {
        let rows = &src[(block * nq + s * l) * CL_WIDTH..][..l * CL_WIDTH];
        for p0 in (0..l).step_by(POSITIONS) {
            let n = POSITIONS.min(l - p0);
            let tile = &rows[p0 * CL_WIDTH..][..n * CL_WIDTH];
            for (j, plane) in planes.chunks_exact_mut(l).enumerate() {
                let lane = group * LANE_GROUP + j;
                for (v, row) in plane[p0..p0 + n]
                    .iter_mut()
                    .zip(tile.chunks_exact(CL_WIDTH))
                {
                    *v = row[lane];
                }
            }
        }
    };
    if parallel {
        dst.par_chunks_exact_mut(c * l)
            .enumerate()
            .for_each(|(s, sample)| {
                sample
                    .par_chunks_mut(CL_WIDTH * l)
                    .enumerate()
                    .for_each(|(block, planes)| {
                        planes
                            .par_chunks_mut(LANE_GROUP * l)
                            .enumerate()
                            .for_each(|(group, lanes)| copy((s, block, group), lanes));
                    });
            });
    } else {
        for (s, sample) in dst.chunks_exact_mut(c * l).enumerate() {
            for (block, planes) in sample.chunks_mut(CL_WIDTH * l).enumerate() {
                copy((s, block, 0), planes);
            }
        }
    }
}

/// `dw [k², c_out, c_in] (+)= Σ_q dy_t[·, q] · x_cl[positions[q] + offset_tap]`: the kernel
/// gradient of the taps, given the input planes channels-last, `x_cl`
/// `[len, channels_last_stride(c_in)]` (from
/// [`Planes::pad_channels_last`]), and the output gradient at the real positions `positions`
/// (grid indices of `pl`), `dy_t` `[c_out, positions.len()]`; overwritten unless `accumulate`.
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad(
    x_cl: &[f32],
    dy_t: &[f32],
    pl: &Planes,
    k: usize,
    positions: &[u32],
    (c_in, c_out): (usize, usize),
    dw: &mut [f32],
    accumulate: bool,
) {
    assert!(x_cl.len() >= channels_last_stride(c_in) * pl.len);
    assert!(dy_t.len() >= c_out * positions.len());
    assert!(dw.len() >= k * k * c_out * c_in);
    assert!(positions.iter().all(|&p| (p as usize) < pl.span));
    let offsets = tap_offsets(pl, k);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked AVX-512F; every read is within the planes (a real
    // position plus any tap offset stays within `len`; channels past `c_in` are masked) or
    // `dy_t`, and every write within `dw`.
    unsafe {
        avx512::weight_grad(
            x_cl,
            dy_t,
            positions,
            &offsets,
            (c_in, c_out),
            dw,
            accumulate,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct kernels run only on x86-64 ({offsets:?}, {accumulate})");
}

/// The AVX2 + FMA planar forward kernel: [`avx512`]'s forward tile with half-width vectors
/// and 16 registers, so a tile is [`ROWS`] output channels × [`AVX2_VECS`] vectors (8
/// accumulators, 2 input vectors and a broadcast weight, all in registers).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// f32 lanes of an AVX2 vector.
    const LANES8: usize = 8;
    /// Vectors of positions per tile: 4 rows × 3 vectors = 12 accumulators, 3 input vectors
    /// and 1 broadcast weight fill the 16 registers ([`fma_step`]).
    const AVX2_VECS: usize = 3;
    /// Positions per tile (within [`SLACK`]).
    const TILE8: usize = AVX2_VECS * LANES8;
    // `fma_step` is written for this tile.
    const _: () = assert!(ROWS == 4 && AVX2_VECS == 3 && TILE8 <= SLACK);

    /// `acc[j][v] += x[v·8..][..8] · w[j]` for the tile's [`ROWS`] × [`AVX2_VECS`]
    /// accumulators: 3 input vectors loaded from `$xp`, each of the 4 weights at `$wt`
    /// broadcast in turn into one register.
    ///
    /// Hand-written because the 12 accumulators, 3 inputs and 1 broadcast need all 16 AVX2
    /// registers, and LLVM, given the intrinsics, broadcast the next weight early and spilled
    /// an accumulator to the stack every step (a store-reload chain: DenseNet-121's 3×3
    /// layers at batch 32 1.75× slower than the 4 × 2 tile it had instead). Must be expanded
    /// in a function with `avx2,fma` enabled.
    macro_rules! fma_step {
        ($acc:ident, $xp:expr, $wt:expr) => {
            std::arch::asm!(
                "vmovups {x0}, ymmword ptr [{xp}]",
                "vmovups {x1}, ymmword ptr [{xp} + 32]",
                "vmovups {x2}, ymmword ptr [{xp} + 64]",
                "vbroadcastss {b}, dword ptr [{wt}]",
                "vfmadd231ps {a00}, {x0}, {b}",
                "vfmadd231ps {a01}, {x1}, {b}",
                "vfmadd231ps {a02}, {x2}, {b}",
                "vbroadcastss {b}, dword ptr [{wt} + 4]",
                "vfmadd231ps {a10}, {x0}, {b}",
                "vfmadd231ps {a11}, {x1}, {b}",
                "vfmadd231ps {a12}, {x2}, {b}",
                "vbroadcastss {b}, dword ptr [{wt} + 8]",
                "vfmadd231ps {a20}, {x0}, {b}",
                "vfmadd231ps {a21}, {x1}, {b}",
                "vfmadd231ps {a22}, {x2}, {b}",
                "vbroadcastss {b}, dword ptr [{wt} + 12]",
                "vfmadd231ps {a30}, {x0}, {b}",
                "vfmadd231ps {a31}, {x1}, {b}",
                "vfmadd231ps {a32}, {x2}, {b}",
                xp = in(reg) $xp,
                wt = in(reg) $wt,
                x0 = out(ymm_reg) _,
                x1 = out(ymm_reg) _,
                x2 = out(ymm_reg) _,
                b = out(ymm_reg) _,
                a00 = inout(ymm_reg) $acc[0][0],
                a01 = inout(ymm_reg) $acc[0][1],
                a02 = inout(ymm_reg) $acc[0][2],
                a10 = inout(ymm_reg) $acc[1][0],
                a11 = inout(ymm_reg) $acc[1][1],
                a12 = inout(ymm_reg) $acc[1][2],
                a20 = inout(ymm_reg) $acc[2][0],
                a21 = inout(ymm_reg) $acc[2][1],
                a22 = inout(ymm_reg) $acc[2][2],
                a30 = inout(ymm_reg) $acc[3][0],
                a31 = inout(ymm_reg) $acc[3][1],
                a32 = inout(ymm_reg) $acc[3][2],
                options(nostack, readonly, preserves_flags),
            )
        };
    }

    /// Input channels a tile adds in before moving to the next block of output channels:
    /// their rows of input around the tile (16 × 3 rows × ~26 floats) and every block's
    /// weights for them (16 × 9 taps × 4 rows a block) stay in L1 while the blocks take turns,
    /// where a whole tile's input (128 channels: ~40 KB) went back to L2 for every block.
    const CHUNK: usize = 16;

    /// The AVX2 body of [`super::forward`]; as [`super::avx512::forward`], except that each
    /// whole tile takes the input channels [`CHUNK`] at a time over every block, its partial
    /// sums kept in the grid (in L1) between chunks.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA ([`super::forward_available`]); otherwise as
    /// [`super::avx512::forward`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward(
        planes: &[f32],
        (len, span): (usize, usize),
        offsets: &[usize],
        w: &Packed,
        blocks: std::ops::Range<usize>,
        grid: &mut [f32],
    ) {
        let (x, out) = (planes.as_ptr(), grid.as_mut_ptr());
        let tiles = (span, TILE8);
        for_each_tile(
            w,
            tiles,
            CHUNK,
            blocks,
            |p0, channels, weights, out_offset, rows| {
                // SAFETY: see `super::forward`; the pass's channels lie within the planes and
                // the block's packed weights.
                unsafe {
                    tile(
                        x.add(p0 + channels.start * len),
                        (len, channels.len()),
                        offsets,
                        weights,
                        out.add(out_offset),
                        (span, rows, (span - p0).min(TILE8)),
                        channels.start > 0,
                    );
                }
            },
        );
    }

    /// One tile of `rows` output rows × the first `valid` (at most [`TILE8`]) positions:
    /// the sums over `c_in` input channels, added to the tile's values in `out` when
    /// `accumulate` (only whole tiles: `valid` = [`TILE8`]), else written over them.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA; `x` plus every `ci · len + offset` plus [`TILE8`]
    /// must be readable, `w` must hold `c_in · offsets.len() · ROWS` weights and `out` `rows`
    /// rows of `stride` elements with `valid` writable positions each (readable when
    /// `accumulate`).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile(
        x: *const f32,
        (len, c_in): (usize, usize),
        offsets: &[usize],
        w: *const f32,
        out: *mut f32,
        (stride, rows, valid): (usize, usize, usize),
        accumulate: bool,
    ) {
        let kk = offsets.len();
        let mut acc = [[_mm256_setzero_ps(); AVX2_VECS]; ROWS];
        if accumulate {
            debug_assert_eq!(valid, TILE8);
            for (j, row) in acc.iter_mut().enumerate().take(rows) {
                for (v, a) in row.iter_mut().enumerate() {
                    // SAFETY: a whole tile's positions of row `j < rows` are readable.
                    *a = unsafe { _mm256_loadu_ps(out.add(j * stride + v * LANES8)) };
                }
            }
        }
        for ci in 0..c_in {
            // SAFETY: (all pointer arithmetic below) within the planes plus slack and the
            // packed kernel, as `super::forward` asserts.
            let (xc, wc) = unsafe { (x.add(ci * len), w.add(ci * kk * ROWS)) };
            for (t, &off) in offsets.iter().enumerate() {
                // SAFETY: a tap offset stays within the plane (the caller's bound).
                let xp = unsafe { xc.add(off) };
                // SAFETY: tap `t` of input channel `ci` lies within the packed block.
                let wt = unsafe { wc.add(t * ROWS) };
                // SAFETY: a tile's TILE8 positions from the tap are readable (slack), and the
                // tap's ROWS weights lie within the packed block (zeros past `c_out`).
                unsafe { fma_step!(acc, xp, wt) };
            }
        }
        for (j, row) in acc.iter().enumerate().take(rows) {
            // SAFETY: `j < rows` rows of the output, each `stride` long.
            let o = unsafe { out.add(j * stride) };
            for (v, a) in row.iter().enumerate() {
                let start = v * LANES8;
                if start >= valid {
                    break;
                }
                let n = valid - start;
                if n >= LANES8 {
                    // SAFETY: positions below `valid` lie within the grid row.
                    unsafe { _mm256_storeu_ps(o.add(start), *a) };
                } else {
                    let mut lanes = [0.0f32; LANES8];
                    // SAFETY: `lanes` holds one vector.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
                    for (i, &v) in lanes.iter().enumerate().take(n) {
                        // SAFETY: positions below `valid` lie within the grid row.
                        unsafe { *o.add(start + i) = v };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// The mask of the first `min(n, 16)` lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(LANES)) - 1) as __mmask16
    }

    /// The AVX-512 body of [`super::forward`] for the output-channel blocks `blocks`, whose
    /// rows `grid` holds (its row 0 is block `blocks.start`'s first channel).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); `planes` holds `c_in` planes `len`
    /// apart plus [`SLACK`] readable elements, `grid` the blocks' rows (`span` each, up to
    /// `c_out`), and every offset plus `span` stays within a plane's `len` (what
    /// `super::forward` asserts).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(
        planes: &[f32],
        (len, span): (usize, usize),
        offsets: &[usize],
        w: &Packed,
        blocks: std::ops::Range<usize>,
        grid: &mut [f32],
    ) {
        let (x, out) = (planes.as_ptr(), grid.as_mut_ptr());
        // Every input channel in one pass (the chunks were measured on AVX2 only).
        let tiles = (span, TILE);
        for_each_tile(
            w,
            tiles,
            w.c_in,
            blocks,
            |p0, channels, weights, out_offset, rows| {
                // SAFETY: see `super::forward`.
                unsafe {
                    tile(
                        x.add(p0),
                        (len, channels.len()),
                        offsets,
                        weights,
                        out.add(out_offset),
                        (span, rows, span - p0),
                    );
                }
            },
        );
    }

    /// One tile: `rows` output rows (stride `stride`) of the first `valid` (at most
    /// [`TILE`]) positions from `x`, the planes (`c_in` of them, `len` apart) advanced to the
    /// tile's first position.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); `x` plus every `ci · len + offset` plus
    /// [`TILE`] must be readable, `w` must hold `c_in · offsets.len() · ROWS` weights and `out`
    /// `rows` rows of `stride` elements with `valid` writable positions each.
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
                // SAFETY: a tap offset stays within the plane (the caller's bound).
                let xp = unsafe { xc.add(off) };
                let mut xv = [_mm512_setzero_ps(); VECS];
                for (v, xv) in xv.iter_mut().enumerate() {
                    // SAFETY: a tile's TILE positions from the tap are readable (slack).
                    *xv = unsafe { _mm512_loadu_ps(xp.add(v * LANES)) };
                }
                // SAFETY: tap `t` of input channel `ci` lies within the packed block.
                let wt = unsafe { wc.add(t * ROWS) };
                for (j, row) in acc.iter_mut().enumerate() {
                    // SAFETY: `j < ROWS` weights of the tap (zeros past `c_out`).
                    let wj = _mm512_set1_ps(unsafe { *wt.add(j) });
                    for (a, xv) in row.iter_mut().zip(&xv) {
                        *a = _mm512_fmadd_ps(*xv, wj, *a);
                    }
                }
            }
        }
        for (j, row) in acc.iter().enumerate().take(rows) {
            // SAFETY: `j < rows` rows of the output, each `stride` long.
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

    /// The AVX-512 body of [`super::forward_channels_last`] for block `block` of output
    /// channels at `positions`, whose rows `y_cl` holds.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); `x_cl` must hold every position
    /// plus offset at [`channels_last_stride`]`(c_in)` and `y_cl` `positions.len()` rows of
    /// [`CL_WIDTH`] (what `super::forward_channels_last` asserts).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_channels_last(
        x_cl: &[f32],
        positions: &[u32],
        offsets: &[usize],
        w: &ByTap,
        block: usize,
        y_cl: &mut [f32],
    ) {
        let (c_in, nq) = (w.c_in, positions.len());
        debug_assert!(y_cl.len() >= nq * CL_WIDTH);
        let stride = channels_last_stride(c_in);
        let (x, y) = (x_cl.as_ptr(), y_cl.as_mut_ptr());
        for ci0 in (0..c_in).step_by(CL_DEPTH) {
            let cis = ci0..CL_DEPTH.min(c_in - ci0) + ci0;
            // Every (tap, input channel) of the pass as (input offset from a position,
            // weight offset in the block): one flat loop however few channels there are
            // (the stem has 3).
            let steps: Vec<(usize, usize)> = offsets
                .iter()
                .enumerate()
                .flat_map(|(t, &off)| {
                    cis.clone()
                        .map(move |ci| (off * stride + ci, (t * c_in + ci) * CL_WIDTH))
                })
                .collect();
            for q0 in (0..nq).step_by(CL_ROWS) {
                let rows = CL_ROWS.min(nq - q0);
                // Rows past the last repeat it; they are not stored.
                let grid: [usize; CL_ROWS] =
                    std::array::from_fn(|i| positions[q0 + i.min(rows - 1)] as usize);
                // SAFETY: see `super::forward_channels_last`.
                unsafe {
                    let out = y.add(q0 * CL_WIDTH);
                    cl_tile(
                        grid.map(|g| x.add(g * stride)),
                        &steps,
                        w.data.as_ptr().add(block * w.kk * c_in * CL_WIDTH),
                        ci0 > 0,
                        std::array::from_fn(|i| out.add(i * CL_WIDTH)),
                        rows,
                    );
                }
            }
        }
    }

    /// One channels-last tile: `rows` positions (their inputs `src`) × [`CL_WIDTH`] output
    /// channels (`w` the block's weights, `out` the rows of the result), adding the
    /// products of `steps` (input offset, weight offset) to what `out` holds when `add`, else
    /// starting from zero.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); every `src[i] + xo` of `steps` must be
    /// readable, `w + wo` plus [`CL_WIDTH`] readable for every step, and the first `rows` of
    /// `out` must each have [`CL_WIDTH`] readable and writable elements.
    #[target_feature(enable = "avx512f")]
    unsafe fn cl_tile(
        src: [*const f32; CL_ROWS],
        steps: &[(usize, usize)],
        w: *const f32,
        add: bool,
        out: [*mut f32; CL_ROWS],
        rows: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); CL_COLS]; CL_ROWS];
        if add {
            for (row, out) in acc.iter_mut().zip(&out).take(rows) {
                for (v, a) in row.iter_mut().enumerate() {
                    // SAFETY: (all pointer arithmetic below) rows below `rows`, within the
                    // inputs and the kernel: the callers' bounds.
                    *a = unsafe { _mm512_loadu_ps(out.add(v * LANES)) };
                }
            }
        }
        for &(xo, wo) in steps {
            // SAFETY: a step's weight offset lies within the block (the callers' bound).
            let wc = unsafe { w.add(wo) };
            let mut wv = [_mm512_setzero_ps(); CL_COLS];
            for (v, wv) in wv.iter_mut().enumerate() {
                // Zeros past `c_out`: no mask needed.
                // SAFETY: the block holds CL_WIDTH weights per step.
                *wv = unsafe { _mm512_loadu_ps(wc.add(v * LANES)) };
            }
            for (row, src) in acc.iter_mut().zip(&src) {
                // SAFETY: a step's input offset lies within the position's channels.
                let xb = _mm512_set1_ps(unsafe { *src.add(xo) });
                for (a, wv) in row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xb, *wv, *a);
                }
            }
        }
        for (row, out) in acc.iter().zip(&out).take(rows) {
            for (v, a) in row.iter().enumerate() {
                // SAFETY: rows below `rows` have CL_WIDTH writable elements.
                unsafe { _mm512_storeu_ps(out.add(v * LANES), *a) };
            }
        }
    }

    /// The AVX-512 body of [`super::input_grad_scatter`].
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); `dy`, `positions` and `dx_cl`
    /// must satisfy the bounds `super::input_grad_scatter` asserts (every position plus
    /// offset within `dx_cl` at `dx_stride`, every output position within `dy`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input_grad_scatter(
        dy: &[f32],
        (l_out, sample_len): (usize, usize),
        positions: &[u32],
        offsets: &[usize],
        w: &ByTap,
        dx_cl: &mut [f32],
        dx_stride: usize,
    ) {
        // Here the "output" channels of `w` are the input gradient's, its depth the output
        // gradient's channels.
        let (c_in, c_out, nq) = (w.c_in, w.c_out, positions.len());
        let (dyp, dx) = (dy.as_ptr(), dx_cl.as_mut_ptr());
        for co0 in (0..c_out).step_by(CL_WIDTH) {
            let block = co0 / CL_WIDTH;
            // SAFETY: `block` < the blocks of `w.data` (`co0 < c_out`).
            let wb = unsafe { w.data.as_ptr().add(block * w.kk * c_in * CL_WIDTH) };
            for (t, &off) in offsets.iter().enumerate() {
                for ci0 in (0..c_in).step_by(SCATTER_DEPTH) {
                    let steps: Vec<(usize, usize)> = (ci0..SCATTER_DEPTH.min(c_in - ci0) + ci0)
                        .map(|ci| (ci * l_out, (t * c_in + ci) * CL_WIDTH))
                        .collect();
                    for q0 in (0..nq).step_by(CL_ROWS) {
                        let rows = CL_ROWS.min(nq - q0);
                        let qs: [usize; CL_ROWS] = std::array::from_fn(|i| q0 + i.min(rows - 1));
                        // Output position q of sample q / l_out: its gradient's first channel.
                        // SAFETY: `q < nq` output positions of samples within `dy`.
                        let src =
                            qs.map(|q| unsafe { dyp.add(q / l_out * sample_len + q % l_out) });
                        // The input position tap `t` of output q reads, which it adds to.
                        // SAFETY: the position plus the tap offset lies within `dx_cl`
                        // (`super::input_grad_scatter`'s bound).
                        let out = qs.map(|q| unsafe {
                            dx.add((positions[q] as usize + off) * dx_stride + co0)
                        });
                        // SAFETY: see `super::input_grad_scatter`.
                        unsafe { cl_tile(src, &steps, wb, true, out, rows) };
                    }
                }
            }
        }
    }

    /// The AVX-512 body of [`super::transpose_row`].
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); `sample` must point to a readable
    /// `[c, h, w]` sample with `y < h`, and `row` to `w` writable positions of `stride ≥ c`
    /// (rounded up to a vector) elements.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_row(
        sample: *const f32,
        (c, h, w): (usize, usize, usize),
        y: usize,
        row: *mut f32,
        stride: usize,
    ) {
        for c0 in (0..c).step_by(LANES) {
            let cs = LANES.min(c - c0);
            for x0 in (0..w).step_by(LANES) {
                let xs = LANES.min(w - x0);
                let mask = lanes(xs);
                let mut r = [_mm512_setzero_ps(); LANES];
                for (j, r) in r.iter_mut().enumerate().take(cs) {
                    // SAFETY: see `super::transpose_row`.
                    *r = unsafe {
                        _mm512_maskz_loadu_ps(mask, sample.add(((c0 + j) * h + y) * w + x0))
                    };
                }
                let t = transpose16(&r);
                for (i, t) in t.iter().enumerate().take(xs) {
                    // SAFETY: position `x0 + i < w` of the row, channels `c0..c0 + 16` within
                    // its stride (a multiple of 16).
                    unsafe { _mm512_storeu_ps(row.add((x0 + i) * stride + c0), *t) };
                }
            }
        }
    }

    /// The AVX-512 body of [`super::rows_to_nchw`].
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); every row of `rows` must have
    /// `c` (rounded up to a vector) readable elements at `src + row · stride`, `rows` at least
    /// one entry per position of `dst` [samples, c, l].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows_to_nchw(
        src: *const f32,
        stride: usize,
        rows: &[u32],
        (c, l): (usize, usize),
        dst: &mut [f32],
    ) {
        for (s, sample) in dst.chunks_exact_mut(c * l).enumerate() {
            let out = sample.as_mut_ptr();
            for p0 in (0..l).step_by(LANES) {
                let n = LANES.min(l - p0);
                let mask = lanes(n);
                for c0 in (0..c).step_by(LANES) {
                    let mut r = [_mm512_setzero_ps(); LANES];
                    for (i, r) in r.iter_mut().enumerate().take(n) {
                        let row = rows[s * l + p0 + i] as usize;
                        // SAFETY: see `super::rows_to_nchw`.
                        *r = unsafe { _mm512_loadu_ps(src.add(row * stride + c0)) };
                    }
                    let t = transpose16(&r);
                    for (j, t) in t.iter().enumerate().take(LANES.min(c - c0)) {
                        // SAFETY: channel `c0 + j < c`, positions masked to `p0..p0 + n ≤ l`.
                        unsafe { _mm512_mask_storeu_ps(out.add((c0 + j) * l + p0), mask, *t) };
                    }
                }
            }
        }
    }

    /// The 16 × 16 transpose of `r` (row `j` of the result holds element `j` of every row).
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &[__m512; LANES]) -> [__m512; LANES] {
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        // Pairs of rows interleaved, then pairs of pairs: u[4g + m] holds, in each 128-bit
        // lane L, rows 4g..4g+4 of column 4L + m.
        let mut t = [_mm512_setzero_ps(); LANES];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        let mut u = [_mm512_setzero_ps(); LANES];
        for g in 0..4 {
            let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            u[4 * g] = ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            u[4 * g + 1] = ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            u[4 * g + 2] = ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            u[4 * g + 3] = ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        // Then 128-bit lanes: v[m] = [group 0 col m, group 0 col m+8, group 1 col m, group 1
        // col m+8], v[4+m] the same for columns m+4 and m+12, v[8+m] and v[12+m] for groups
        // 2 and 3; and finally whole columns.
        let mut v = [_mm512_setzero_ps(); LANES];
        for m in 0..4 {
            v[m] = _mm512_shuffle_f32x4::<0x88>(u[m], u[4 + m]);
            v[4 + m] = _mm512_shuffle_f32x4::<0xdd>(u[m], u[4 + m]);
            v[8 + m] = _mm512_shuffle_f32x4::<0x88>(u[8 + m], u[12 + m]);
            v[12 + m] = _mm512_shuffle_f32x4::<0xdd>(u[8 + m], u[12 + m]);
        }
        let mut out = [_mm512_setzero_ps(); LANES];
        for m in 0..4 {
            out[m] = _mm512_shuffle_f32x4::<0x88>(v[m], v[8 + m]);
            out[m + 8] = _mm512_shuffle_f32x4::<0xdd>(v[m], v[8 + m]);
            out[m + 4] = _mm512_shuffle_f32x4::<0x88>(v[4 + m], v[12 + m]);
            out[m + 12] = _mm512_shuffle_f32x4::<0xdd>(v[4 + m], v[12 + m]);
        }
        out
    }

    /// Masks of the `N` vectors of channels from `c0`, of `c` channels in all.
    #[inline(always)]
    fn channel_masks<const N: usize>(c0: usize, c: usize) -> [__mmask16; N] {
        std::array::from_fn(|i| lanes(c.saturating_sub(c0 + i * LANES)))
    }

    /// The AVX-512 body of [`super::weight_grad`].
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); `x_cl`, `dy_t` and `dw` must satisfy
    /// the bounds `super::weight_grad` asserts (every position plus offset within `x_cl`,
    /// `dy_t` [c_out, positions], `dw` [k², c_out, c_in]).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad(
        x_cl: &[f32],
        dy_t: &[f32],
        positions: &[u32],
        offsets: &[usize],
        (c_in, c_out): (usize, usize),
        dw: &mut [f32],
        accumulate: bool,
    ) {
        let (kk, nq) = (offsets.len(), positions.len());
        let (slice, stride) = (c_out * c_in, channels_last_stride(c_in));
        let dw = dw.as_mut_ptr();
        for q0 in (0..nq).step_by(GRAD_TILE) {
            let tile = &positions[q0..GRAD_TILE.min(nq - q0) + q0];
            // The first tile's sums overwrite `dw` unless accumulating (every element of
            // `dw` is written by each tile).
            let add = accumulate || q0 > 0;
            for (co_lo, ci0) in (0..c_out).step_by(GRAD_GROUP).flat_map(|co_lo| {
                (0..c_in)
                    .step_by(GRAD_COLS * LANES)
                    .map(move |ci0| (co_lo, ci0))
            }) {
                let masks = channel_masks::<GRAD_COLS>(ci0, c_in);
                for co0 in (co_lo..GRAD_GROUP.min(c_out - co_lo) + co_lo).step_by(GRAD_ROWS) {
                    // Rows past `c_out` repeat the last; their sums are dropped.
                    let dys: [*const f32; GRAD_ROWS] = std::array::from_fn(|j| {
                        dy_t[(co0 + j).min(c_out - 1) * nq + q0..].as_ptr()
                    });
                    for t0 in (0..kk).step_by(GRAD_TAPS) {
                        // Taps past the last repeat it; their sums are dropped.
                        let offs: [usize; GRAD_TAPS] =
                            std::array::from_fn(|t| offsets[(t0 + t).min(kk - 1)]);
                        // SAFETY: see `super::weight_grad`.
                        let acc =
                            unsafe { block(dys, x_cl[ci0..].as_ptr(), stride, offs, masks, tile) };
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
                                        let sum = if add {
                                            _mm512_add_ps(_mm512_maskz_loadu_ps(masks[i], at), *a)
                                        } else {
                                            *a
                                        };
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

    /// `Σ_p dys[j][p] · x[(grid[p] + offs[t])·stride + 16·i + lane]` for every `(i, t, j)`:
    /// 2 × 16 input channels (lanes masked by `masks`) of 3 taps, for 4 output channels.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F ([`super::available`]); each `dys[j]` must have `grid.len()`
    /// readable elements and every `x + (g + off) · stride` the unmasked channels readable.
    #[target_feature(enable = "avx512f")]
    unsafe fn block(
        dys: [*const f32; GRAD_ROWS],
        x: *const f32,
        stride: usize,
        offs: [usize; GRAD_TAPS],
        masks: [__mmask16; GRAD_COLS],
        grid: &[u32],
    ) -> [[[__m512; GRAD_ROWS]; GRAD_TAPS]; GRAD_COLS] {
        let mut acc = [[[_mm512_setzero_ps(); GRAD_ROWS]; GRAD_TAPS]; GRAD_COLS];
        // No closures here: they would not inherit the target feature.
        // Tap offsets in elements of the channels-last planes.
        let offs = offs.map(|o| o * stride);
        for (p, &g) in grid.iter().enumerate() {
            // SAFETY: within the planes (`super::weight_grad`).
            let xg = unsafe { x.add(g as usize * stride) };
            let mut d = [_mm512_setzero_ps(); GRAD_ROWS];
            for (d, row) in d.iter_mut().zip(&dys) {
                // SAFETY: positions of the tile lie within the rows (`super::weight_grad`).
                *d = _mm512_set1_ps(unsafe { *row.add(p) });
            }
            for (i, per_col) in acc.iter_mut().enumerate() {
                for (per_tap, off) in per_col.iter_mut().zip(&offs) {
                    // SAFETY: within the planes; channels past `c_in` are masked off.
                    let xv = unsafe { _mm512_maskz_loadu_ps(masks[i], xg.add(off + i * LANES)) };
                    for (a, d) in per_tap.iter_mut().zip(&d) {
                        *a = _mm512_fmadd_ps(*d, xv, *a);
                    }
                }
            }
        }
        acc
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::layers::conv::tests::max_abs_diff;
    use crate::rng::SplitMix64;

    /// `grid[o, p] = Σ_ci Σ_tap W[o, ci, tap] · planes[ci, offset_tap + p]` in f64.
    fn forward_by_loops(
        planes: &[f32],
        (len, span): (usize, usize),
        offsets: &[usize],
        w: &[f32],
        (c_out, c_in): (usize, usize),
    ) -> Vec<f64> {
        let kk = offsets.len();
        let mut grid = vec![0.0; c_out * span];
        for o in 0..c_out {
            for ci in 0..c_in {
                for (t, &off) in offsets.iter().enumerate() {
                    let wv = f64::from(w[(o * c_in + ci) * kk + t]);
                    for p in 0..span {
                        grid[o * span + p] += wv * f64::from(planes[ci * len + off + p]);
                    }
                }
            }
        }
        grid
    }

    /// Both instruction sets' planar forward kernels, one task and split across threads,
    /// against plain loops: output channels not a multiple of [`ROWS`], spans not a multiple
    /// of either tile, a 5×5 kernel; one thread's and several tasks' results are identical.
    #[test]
    fn planar_forward_kernels_of_both_instruction_sets_match_loops() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|isa| match isa {
                Isa::Avx512 => cpu_has("avx512f"),
                Isa::Avx2 => cpu_has("avx2") && cpu_has("fma"),
            })
            .collect();
        if isas.is_empty() {
            eprintln!("neither AVX-512F nor AVX2+FMA here: nothing to compare");
            return;
        }
        let mut rng = SplitMix64::new(7);
        let shapes = [
            (5, 6, 3, 9, 11),
            (17, 13, 3, 14, 14),
            (8, 9, 5, 7, 13),
            (40, 6, 3, 20, 30),
        ];
        for (c_in, c_out, k, h, w_) in shapes {
            let pad = (k - 1) / 2;
            let pl = Planes::new(h, w_, pad, 2);
            let offsets = tap_offsets(&pl, k);
            let planes: Vec<f32> = (0..c_in * pl.len + SLACK)
                .map(|_| rng.normal() as f32)
                .collect();
            let kernel: Vec<f32> = (0..c_out * c_in * k * k)
                .map(|_| rng.normal() as f32)
                .collect();
            let want =
                forward_by_loops(&planes, (pl.len, pl.span), &offsets, &kernel, (c_out, c_in));
            let packed = Packed::new(Source::Plain(&kernel), c_out, c_in, k * k);
            for &isa in &isas {
                let mut results = Vec::new();
                for per_task in [c_out.div_ceil(ROWS), 1] {
                    let mut grid = vec![f32::NAN; c_out * pl.span];
                    for (task, rows) in grid.chunks_mut(per_task * ROWS * pl.span).enumerate() {
                        let blocks =
                            task * per_task..((task + 1) * per_task).min(c_out.div_ceil(ROWS));
                        // SAFETY: the instruction set was detected above; the planes have
                        // their slack and the grid every block's rows.
                        unsafe {
                            match isa {
                                Isa::Avx512 => avx512::forward(
                                    &planes,
                                    (pl.len, pl.span),
                                    &offsets,
                                    &packed,
                                    blocks,
                                    rows,
                                ),
                                Isa::Avx2 => avx2::forward(
                                    &planes,
                                    (pl.len, pl.span),
                                    &offsets,
                                    &packed,
                                    blocks,
                                    rows,
                                ),
                            }
                        }
                    }
                    let diff = max_abs_diff(&grid, &want);
                    assert!(
                        diff < 1e-4,
                        "{isa:?} {c_in}→{c_out} k{k} {h}x{w_}: differs by {diff}"
                    );
                    results.push(grid);
                }
                assert_eq!(
                    results[0], results[1],
                    "{isa:?}: split tasks differ from one task"
                );
            }
        }
    }
}
