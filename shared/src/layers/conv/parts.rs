//! DenseNet's `norm → ReLU → 1×1 convolution` over a block's features in one pass, for
//! inference on CPUs with AVX-512F or AVX2 ([`super::packed`]'s products).
//!
//! Each dense layer normalises the concatenation of every earlier layer's output (up to 1024
//! channels) and multiplies it by a 1×1 kernel. Composed, the normalised concatenation is
//! written whole (3.2 MB a layer on DenseNet-121's 56×56 maps, more than a core's L2) and
//! read back by the product. Here each strip of [`packed::COLS`] positions is normalised
//! from the features themselves (no concatenation either) into a buffer that stays in cache,
//! multiplied there by the packed kernel, and its output finished (bias, ReLU) a few strips
//! at a time while still in L2. The values are the composed ones to the bit: the same
//! affine arithmetic, the same products, the same epilogue. DenseNet-121, batch 1, two
//! threads (AMD EPYC, Zen 4), these layers on the 56×56, 28×28 and 14×14 maps, alternating
//! runs: 3.2–3.3 → 2.6–2.8, 3.2 → 2.8–2.9 and 3.9–4.2 → 3.4 ms; batch 32 level. Maps under
//! 64 positions (7×7) keep the composed path.
//!
//! With AVX2 only, the products copy `B` into strips anyway ([`packed::Rhs::Normalised`]):
//! each sample's product reads the features where they lie and normalises them in that
//! copy, the rest of the product unchanged (its chunks of columns, its blocks of `k`, its
//! epilogue per block of rows). DenseNet-121 at batch 1, two threads (AMD EPYC, Zen 3),
//! these layers timed in one process, the fused and composed paths alternating pass by
//! pass (lower quartiles): 18.8 → 17.8 ms in all, the 28×28 block's 5.6 → 5.0. Batches
//! whose maps the composed convolution multiplies several samples side by side (under
//! 1,024 positions) keep the composed path. (An earlier AVX2 version of this pass, strips
//! of 48 positions each multiplied by the whole kernel, ran DenseNet-121 8% slower than
//! composed.)

use super::im2col::{Scratch, Split};
use super::packed::{self, Isa, Layout, COLS, FINISH_COLS};
use super::{Dims, PackedKernel};
use crate::layers::channel_affine::{with_channel_parts, ChannelAffine, ChannelParts};
use crate::layers::{contiguous_slice, fill};
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use std::ops::Range;

/// `epilogue(conv(prologue(cat(parts)), w))` for a 1×1, stride-1 kernel `w` `[m, k, 1, 1]`
/// over `parts` (NCHW f32, equal N, H, W; `k` channels in all), `prologue` and `epilogue`
/// per-channel affines ([`ChannelAffine`]) of `k` and `m` channels; the kernel packed once in
/// `cache`. `None` where this path does not run (neither AVX-512F nor AVX2, another device
/// or dtype, a non-contiguous part, maps under 64 positions with AVX-512F, whose products
/// take another layout, batches of small maps with AVX2, an empty batch or map): the
/// caller composes the operations instead.
pub fn conv1x1_over_parts(
    parts: &[Tensor],
    prologue: &ChannelAffine,
    w: &Tensor,
    cache: &PackedKernel,
    epilogue: &ChannelAffine,
) -> candle_core::Result<Option<Tensor>> {
    let Some(first) = parts.first() else {
        candle_core::bail!("conv over parts: no parts");
    };
    let fusable = |t: &Tensor| {
        crate::layers::use_fused_cpu(t) && t.dtype() == DType::F32 && t.is_contiguous()
    };
    let Some(isa) = packed::isa() else {
        return Ok(None);
    };
    if !parts.iter().all(fusable) || !fusable(w) {
        return Ok(None);
    }
    let (n, _, h, wd) = first.dims4()?;
    let (m, k, kh, kw) = w.dims4()?;
    let hw = h * wd;
    let empty = n == 0 || m == 0 || hw == 0;
    if empty || (kh, kw) != (1, 1) || Layout::for_shape(m, hw) != Layout::Positions {
        return Ok(None);
    }
    // AVX2 multiplies one sample at a time, as the composed convolution does where its
    // batch splits into single samples; where it puts several side by side (maps under
    // `MIN_WIDTH` positions at batch > 1), composed.
    let dims = Dims {
        n,
        c_in: k,
        h,
        w: wd,
        c_out: m,
        k: 1,
        oh: h,
        ow: wd,
    };
    let split = Split::new(&dims);
    let longest = split.groups.iter().map(|g| g.len()).max().unwrap_or(0);
    if isa == Isa::Avx2 && split.per.min(longest) > 1 {
        return Ok(None);
    }
    with_channel_parts(parts, "conv over parts", |features| {
        if features.channels() != k || prologue.channels() != k {
            candle_core::bail!(
                "conv over parts: {} channels in the parts, {} in the prologue, {k} in the kernel",
                features.channels(),
                prologue.channels()
            );
        }
        if epilogue.channels() != m {
            candle_core::bail!(
                "conv over parts: epilogue of {} channels for {m} output channels",
                epilogue.channels()
            );
        }
        let (w_storage, w_layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(w_cpu) = &*w_storage else {
            candle_core::bail!("conv over parts: the kernel left the CPU");
        };
        let w_values = contiguous_slice::<f32>(w_cpu, w_layout, "conv over parts: kernel")?;
        let kernel = cache.unfolded.get_or_pack(Layout::Positions, || {
            packed::pack(w_values, m, k, Layout::Positions)
        });
        drop(w_storage);
        let input = Input {
            features,
            prologue,
            hw,
        };
        let mut y = fill::uninit::<f32>(n * m * hw);
        let out = Output(y.as_mut_ptr().cast::<f32>());
        let kernel = (kernel.as_slice(), m, k);
        match isa {
            Isa::Avx512 => {
                // Tasks: whole samples when there are enough for the threads, else each
                // sample's positions split (at whole vectors) among them.
                let threads = super::im2col::threads().max(1);
                let col_parts = threads.div_ceil(n).min(hw.div_ceil(16)).max(1);
                let cols_per = hw.div_ceil(col_parts).next_multiple_of(16);
                let task = |t: usize| {
                    let (s, part) = (t / col_parts, t % col_parts);
                    let cols = (part * cols_per).min(hw)..((part + 1) * cols_per).min(hw);
                    // SAFETY: `out` holds `n · m · hw` floats; this task writes sample `s`'s
                    // rows `0..m` at columns `cols`, which no other task writes (distinct
                    // `(s, part)`).
                    unsafe { sample_columns(&input, kernel, epilogue, s, cols, out.get()) };
                };
                if n * col_parts > 1 {
                    (0..n * col_parts).into_par_iter().for_each(task);
                } else {
                    task(0);
                }
            }
            Isa::Avx2 => {
                // The split of the composed convolution: samples side by side on the
                // threads, or one at a time with the product split among them.
                let inner = split.inner_parallel && super::im2col::threads() > 1;
                let group = |samples: Range<usize>| {
                    for s in samples {
                        // SAFETY: `out` holds `n · m · hw` floats, of which this call alone
                        // writes sample `s`'s (the groups hold distinct samples).
                        unsafe { sample_normalised(&input, kernel, epilogue, s, out.get(), inner) };
                    }
                };
                if split.groups.len() > 1 {
                    split.groups.par_iter().cloned().for_each(group);
                } else {
                    split.groups.iter().cloned().for_each(group);
                }
            }
        }
        // SAFETY: the tasks cover every sample's columns `0..hw` in every row `0..m`, each
        // written by the products ([`packed::product512`] writes its whole rectangle,
        // [`packed::product_into`] its whole output).
        let y = unsafe { fill::assume_init_vec(y) };
        Ok(Some(Tensor::from_vec(y, (n, m, h, wd), first.device())?))
    })
}

/// The features a layer reads: its parts and the affine applied to them.
struct Input<'a> {
    features: &'a ChannelParts<'a>,
    prologue: &'a ChannelAffine,
    hw: usize,
}

/// The output as a raw pointer, for tasks that each write their own columns.
#[derive(Clone, Copy)]
struct Output(*mut f32);

impl Output {
    /// The pointer (a method, so that closures capture the whole `Output`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the tasks handed an `Output` write disjoint columns of it.
unsafe impl Send for Output {}
// SAFETY: as above.
unsafe impl Sync for Output {}

/// Sample `s`'s output at columns `cols`: strip by strip, the prologue into a buffer, then
/// the product into `y`; the epilogue every [`FINISH_COLS`] positions.
///
/// # Safety
/// [`packed::available512`]; `y` holds `[n, m, hw]` floats, of which this call alone writes
/// sample `s`'s columns `cols`.
unsafe fn sample_columns(
    input: &Input,
    (kernel, m, k): (&[f32], usize, usize),
    epilogue: &ChannelAffine,
    s: usize,
    cols: Range<usize>,
    y: *mut f32,
) {
    // The thread's scratch (contents unspecified): each strip writes the `width` values
    // of every row it reads.
    f32::with_scratch(k * COLS, |strip| {
        for start in cols.clone().step_by(FINISH_COLS) {
            let end = (start + FINISH_COLS).min(cols.end);
            for p in (start..end).step_by(COLS) {
                let width = (end - p).min(COLS);
                for kk in 0..k {
                    let plane = input.features.plane(s, kk);
                    let (a, b, relu) = input.prologue.coefficients(kk);
                    affine_row(
                        &mut strip[kk * COLS..][..width],
                        &plane[p..p + width],
                        (a, b, relu),
                    );
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F ([`packed::available512`], this function's contract); `kernel`
                // is `w` packed in blocks from row 0; the strip holds rows `0..k` of `width`
                // values `COLS` apart; sample `s`'s rows `0..m` (`hw` apart) at columns
                // `p..p + width` of `y` are this call's (its contract).
                unsafe {
                    packed::product512(
                        kernel,
                        (m, k),
                        0..m,
                        0..width,
                        (strip.as_ptr(), COLS),
                        (y.add((s * m) * input.hw + p), input.hw),
                    )
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (kernel, y);
            }
            for ch in 0..m {
                // SAFETY: row `ch` of sample `s` at columns `start..end`: written just above,
                // this call's alone (its contract).
                let row = unsafe {
                    std::slice::from_raw_parts_mut(
                        y.add((s * m + ch) * input.hw + start),
                        end - start,
                    )
                };
                epilogue.finish_plane(ch, row, None);
            }
        }
    })
}

/// Sample `s`'s output with AVX2: one product reading the features where they lie,
/// normalised as its strips are copied ([`packed::Rhs::Normalised`]), each block of rows
/// finished by the epilogue as it completes; split among the threads when `parallel`.
///
/// # Safety
/// [`packed::isa`] is AVX2; `y` holds `[n, m, hw]` floats, of which this call alone writes
/// sample `s`'s.
unsafe fn sample_normalised(
    input: &Input,
    (kernel, m, k): (&[f32], usize, usize),
    epilogue: &ChannelAffine,
    s: usize,
    y: *mut f32,
    parallel: bool,
) {
    let rows: Vec<*const f32> = (0..k)
        .map(|kk| input.features.plane(s, kk).as_ptr())
        .collect();
    let finish = |ch: usize, _: usize, values: &mut [f32]| epilogue.finish_plane(ch, values, None);
    // SAFETY: each of the `k` rows is a plane of `hw` values, borrowed for the call; sample
    // `s`'s `[m, hw]` output is this call's (its contract).
    unsafe {
        packed::product_into(
            (kernel, Layout::Positions),
            (m, input.hw, k),
            packed::Rhs::Normalised(&rows, input.prologue),
            (y.add(s * m * input.hw), input.hw),
            parallel,
            Some(&finish),
        )
    }
}

/// `dst = relu?(src · a + b)`, as [`ChannelAffine::apply_parts`] computes it.
#[inline]
fn affine_row(dst: &mut [f32], src: &[f32], (a, b, relu): (f32, f32, bool)) {
    #[cfg(target_arch = "x86_64")]
    if packed::available512() {
        // SAFETY: AVX-512F is present (checked just above).
        return unsafe { affine_row512(dst, src, (a, b, relu)) };
    }
    affine_row_any(dst, src, (a, b, relu))
}

#[inline(always)]
fn affine_row_any(dst: &mut [f32], src: &[f32], (a, b, relu): (f32, f32, bool)) {
    if relu {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &v)| *d = (v * a + b).max(0.0));
    } else {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * a + b);
    }
}

/// [`affine_row_any`] compiled for AVX-512F (the compiler vectorises it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn affine_row512(dst: &mut [f32], src: &[f32], coefficients: (f32, f32, bool)) {
    affine_row_any(dst, src, coefficients)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv::{conv2d_fused, ConvGeom};
    use candle_core::Device;

    fn affine(c: usize, relu: bool, seed: f32) -> ChannelAffine {
        let scale = (0..c)
            .map(|i| 0.5 + ((i as f32 * 0.37 + seed) % 1.0))
            .collect();
        let shift = (0..c)
            .map(|i| ((i as f32 * 0.61 + seed) % 1.0) - 0.5)
            .collect();
        ChannelAffine::new(Some(scale), shift, relu)
    }

    /// The fused pass against its composition (`apply_parts`, then the fused convolution,
    /// which runs the same packed products): equal bits, over one and several samples,
    /// maps whose positions are and are not whole strips or vectors (one sample's split
    /// among the threads included), parts of one and several channels, more positions
    /// than [`FINISH_COLS`], and (AVX2) several chunks of columns and blocks of `k`. With
    /// AVX2 the samples of a batch whose maps the composed convolution puts side by side
    /// (under 1,024 positions) take the composed path: the last column says where AVX2
    /// fuses. Each case with and without the prologue's ReLU.
    #[test]
    fn fused_pass_equals_the_composed_operations() {
        let dev = Device::Cpu;
        for (case, relu) in [
            (1, 8, 8, vec![3, 5], 16, true),
            (1, 9, 9, vec![16, 1, 7], 24, true),
            (1, 14, 14, vec![64, 32, 32], 128, true),
            (3, 12, 11, vec![4, 4], 8, false),
            (1, 23, 23, vec![40, 8], 13, true),
            (2, 32, 33, vec![24, 8, 8], 40, true),
            (1, 40, 40, vec![300, 250], 20, true),
        ]
        .into_iter()
        .flat_map(|case| [(case.clone(), true), (case, false)])
        {
            let (n, h, w, widths, m, avx2_fuses) = case;
            let parts: Vec<Tensor> = widths
                .iter()
                .map(|&c| Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap())
                .collect();
            let k: usize = widths.iter().sum();
            let kernel = Tensor::randn(0f32, 0.2, (m, k, 1, 1), &dev).unwrap();
            let (prologue, epilogue) = (affine(k, relu, 0.1), affine(m, true, 0.7));
            let cache = PackedKernel::default();
            let got = conv1x1_over_parts(&parts, &prologue, &kernel, &cache, &epilogue).unwrap();
            let fuses = match packed::isa() {
                Some(Isa::Avx512) => true,
                Some(Isa::Avx2) => avx2_fuses,
                None => false,
            };
            assert_eq!(got.is_some(), fuses, "{n}×{h}×{w}: fused or not");
            let Some(got) = got else {
                continue;
            };
            let x = prologue.apply_parts(&parts, false).unwrap();
            let geom = ConvGeom {
                stride: 1,
                padding: 0,
            };
            let want = conv2d_fused(&x, &kernel, geom, &cache, &epilogue, None).unwrap();
            assert_eq!(got.dims(), [n, m, h, w]);
            let (got, want) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ, 0,
                "{n}×{h}×{w}, parts {widths:?}, {m} out, ReLU {relu}"
            );
            // And against plain candle operations (no packed products, no fusion).
            let x = Tensor::cat(&parts, 1).unwrap();
            let scale = |t: &ChannelAffine, c: usize| {
                let (a, b): (Vec<f32>, Vec<f32>) = (0..c)
                    .map(|ch| {
                        let (a, b, _) = t.coefficients(ch);
                        (a, b)
                    })
                    .unzip();
                (
                    Tensor::from_vec(a, (1, c, 1, 1), &dev).unwrap(),
                    Tensor::from_vec(b, (1, c, 1, 1), &dev).unwrap(),
                )
            };
            let (a, b) = scale(&prologue, k);
            let x = x.broadcast_mul(&a).unwrap().broadcast_add(&b).unwrap();
            let x = if relu { x.relu().unwrap() } else { x };
            let y = x.conv2d(&kernel, 0, 1, 1, 1).unwrap();
            let (a, b) = scale(&epilogue, m);
            let plain = y.broadcast_mul(&a).unwrap().broadcast_add(&b).unwrap();
            let plain = plain.relu().unwrap().flatten_all().unwrap();
            let worst = got
                .iter()
                .zip(plain.to_vec1::<f32>().unwrap())
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-5,
                "{n}×{h}×{w} ReLU {relu}: {worst} against candle"
            );
        }
    }

    /// Maps under 64 positions (with AVX-512F, another layout; AVX2 fuses them), other
    /// kernels, an empty batch and mismatched parts.
    #[test]
    fn declines_or_rejects_what_it_does_not_compute() {
        let dev = Device::Cpu;
        let part = |c, h| Tensor::randn(0f32, 1.0, (1, c, h, h), &dev).unwrap();
        let kernel = |m, k, s| Tensor::randn(0f32, 1.0, (m, k, s, s), &dev).unwrap();
        let cache = PackedKernel::default();
        let (pro, epi) = (affine(8, true, 0.2), affine(64, true, 0.3));
        let small = conv1x1_over_parts(&[part(8, 7)], &pro, &kernel(64, 8, 1), &cache, &epi);
        assert_eq!(
            small.unwrap().is_some(),
            packed::isa() == Some(Isa::Avx2),
            "a 7×7 map is fused with AVX2 only"
        );
        let wide = conv1x1_over_parts(&[part(8, 8)], &pro, &kernel(64, 8, 3), &cache, &epi);
        assert!(wide.unwrap().is_none(), "a 3×3 kernel is not this pass's");
        let none = Tensor::zeros((0, 8, 8, 8), DType::F32, &dev).unwrap();
        let empty = conv1x1_over_parts(&[none], &pro, &kernel(64, 8, 1), &cache, &epi);
        assert!(
            empty.unwrap().is_none(),
            "an empty batch takes the composed path"
        );
        if packed::isa().is_some() {
            let parts = [part(4, 8), part(4, 9)];
            let mixed = conv1x1_over_parts(&parts, &pro, &kernel(64, 8, 1), &cache, &epi);
            assert!(mixed.is_err(), "parts of different maps");
            let short = conv1x1_over_parts(&[part(6, 8)], &pro, &kernel(64, 8, 1), &cache, &epi);
            assert!(
                short.is_err(),
                "6 channels in the parts for an 8-channel kernel"
            );
        }
    }
}
