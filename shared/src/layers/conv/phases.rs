//! Stride-2 convolutions with large kernels — the 7×7 stem of ResNet and DenseNet — as
//! stride-1 convolutions of the input's four phases, run by the planar direct kernel
//! ([`direct::forward_at`]).
//!
//! Phase `(a, b)` of a padded plane holds its values at rows `2r + a` and columns `2j + b`.
//! An output at `(oy, ox)` reads the padded input at `(2oy + ky, 2ox + kx)`, which with
//! `ky = 2u + a`, `kx = 2v + b` is phase `(a, b)` at `(oy + u, ox + v)`: a stride-1
//! convolution of the `4·c_in` phase planes with a `⌈k/2⌉ × ⌈k/2⌉` kernel, zero at the taps
//! past the original kernel. For 7×7 that is 16 taps a phase where 12.25 are real (1.31× the
//! products), against im2col + gemm, whose unfolded matrix of the 3-channel stem (147 rows ×
//! 12,544 columns a sample) is written and then repacked by gemm: the stem took 16% of
//! ResNet-18's single-sample pass for 7% of its products. Smaller kernels waste more (5×5:
//! 1.44×, 3×3: 1.78×) and keep their paths.

use super::direct;
use super::im2col::{for_each_plane, for_groups, Finish, Scratch, Split};
use super::shifted::{as_f32, as_f32_mut};
use super::{ConvGeom, Dims, PackedKernel};
use candle_core::{DType, WithDType};

/// Smallest kernel side taken.
const MIN_KERNEL: usize = 7;

/// Whether the forward convolution `d` takes this module: f32 where the planar direct kernel
/// runs, stride 2, a kernel of at least [`MIN_KERNEL`] a side.
pub(super) fn applies<T: WithDType>(d: &Dims, g: ConvGeom) -> bool {
    T::DTYPE == DType::F32 && g.stride == 2 && d.k >= MIN_KERNEL && direct::forward_available()
}

/// One sample's phase planes and the output grid over them.
struct Geometry {
    /// Taps per side of the phase kernel, `⌈k/2⌉`.
    side: usize,
    /// Row length of the planes and the grid: `ow + side − 1`.
    row: usize,
    /// Elements of a phase plane: `oh + side − 1` rows.
    len: usize,
    /// Grid positions computed: `oh` rows, the last one cut at `ow`.
    span: usize,
    /// Tap `(u, v)`'s offset, `u·row + v`.
    offsets: Vec<usize>,
}

impl Geometry {
    fn new(d: &Dims) -> Self {
        let side = d.k.div_ceil(2);
        let row = d.ow + side - 1;
        Self {
            side,
            row,
            len: (d.oh + side - 1) * row,
            span: (d.oh - 1) * row + d.ow,
            offsets: (0..side * side)
                .map(|t| (t / side) * row + t % side)
                .collect(),
        }
    }

    /// The phase planes of one sample `x` `[c_in, h, w]` padded by `pad`, into `planes`
    /// `[4·c_in, len]` (plane `4c + 2a + b` is phase `(a, b)` of channel `c`); zeros wherever
    /// the padded input has none.
    fn fill(&self, x: &[f32], d: &Dims, pad: usize, planes: &mut [f32]) {
        let (h, w) = (d.h, d.w);
        for (i, plane) in planes
            .chunks_exact_mut(self.len)
            .take(4 * d.c_in)
            .enumerate()
        {
            let (c, a, b) = (i / 4, (i / 2) % 2, i % 2);
            let channel = &x[c * h * w..][..h * w];
            for (r, out) in plane.chunks_exact_mut(self.row).enumerate() {
                // Padded row 2r + a is input row 2r + a − pad.
                let Some(iy) = (2 * r + a).checked_sub(pad).filter(|&iy| iy < h) else {
                    out.fill(0.0);
                    continue;
                };
                let src = &channel[iy * w..][..w];
                for (j, o) in out.iter_mut().enumerate() {
                    *o = (2 * j + b)
                        .checked_sub(pad)
                        .and_then(|ix| src.get(ix))
                        .copied()
                        .unwrap_or(0.0);
                }
            }
        }
    }
}

/// The forward convolution of `x` `[n, c_in, h, w]` with `w` `[c_out, c_in, k, k]` where
/// [`applies`] holds, the phase kernel taken from (or packed into) `cache`; each output plane
/// handed to `finish` as it is copied out of the grid. `None` for other element types.
pub(super) fn forward<T: Scratch>(
    x: &[T],
    w: &[T],
    d: &Dims,
    g: ConvGeom,
    cache: Option<&PackedKernel>,
    finish: Option<Finish<T>>,
) -> Option<Vec<T>> {
    let (x, w) = (as_f32(x)?, as_f32(w)?);
    let geo = Geometry::new(d);
    let channels = 4 * d.c_in;
    // The phase kernel is the only packing this convolution's cache ever holds: whether a
    // convolution takes this module depends on its kernel and stride alone.
    let pack = || {
        let src = direct::Source::Phases { w, k: d.k };
        direct::Packed::new(src, d.c_out, channels, geo.side * geo.side)
    };
    let packed = match cache {
        Some(cache) => cache.get_or_pack(pack),
        None => std::sync::Arc::new(pack()),
    };
    let (l, l_in) = (d.out_len(), d.c_in * d.h * d.w);
    let split = Split::new(d);
    let planes_len = channels * geo.len + direct::SLACK;
    let mut y: Vec<T> = crate::layers::fill::par_zeros(d.n * d.c_out * l);
    for_groups(&split, &mut y, d.c_out * l, |group, y_part| {
        T::with_scratch(planes_len + d.c_out * geo.span, |scratch| {
            let scratch = as_f32_mut(scratch).expect("T is f32 (as_f32 above)");
            let (planes, grid) = scratch.split_at_mut(planes_len);
            for s in group.clone() {
                geo.fill(&x[s * l_in..][..l_in], d, g.padding, planes);
                let parallel = split.inner_parallel;
                let at = (geo.len, geo.span);
                direct::forward_at(planes, at, &geo.offsets, &packed, grid, parallel);
                let ys = &mut y_part[(s - group.start) * d.c_out * l..][..d.c_out * l];
                let copy = |(ch, plane): (usize, &mut [T])| {
                    let dst = as_f32_mut(plane).expect("T is f32 (as_f32 above)");
                    let rows = &grid[ch * geo.span..][..geo.span];
                    for (oy, out) in dst.chunks_exact_mut(d.ow).enumerate() {
                        out.copy_from_slice(&rows[oy * geo.row..][..d.ow]);
                    }
                    if let Some(finish) = finish {
                        finish(s, ch, plane);
                    }
                };
                for_each_plane(ys, l, parallel, copy);
            }
        })
    });
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv::tests::max_abs_diff;

    /// The phase geometry reads exactly the padded input an output's taps read: the planes
    /// filled from a ramp, every real tap of every output found at its phase offset.
    #[test]
    fn phase_offsets_read_the_strided_taps() {
        for (h, w, k, pad) in [(9, 7, 7, 3), (10, 11, 7, 3), (12, 12, 9, 4), (8, 9, 7, 0)] {
            let g = ConvGeom {
                stride: 2,
                padding: pad,
            };
            let d = Dims::new(&[1, 2, h, w], &[1, 2, k, k], g).unwrap();
            let geo = Geometry::new(&d);
            let x: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
            let mut planes = vec![f32::NAN; 8 * geo.len];
            geo.fill(&x, &d, pad, &mut planes);
            assert!(
                planes.iter().all(|v| v.is_finite()),
                "a plane value unwritten"
            );
            let padded = |c: usize, y: usize, xx: usize| -> f32 {
                match (y.checked_sub(pad), xx.checked_sub(pad)) {
                    (Some(iy), Some(ix)) if iy < h && ix < w => x[(c * h + iy) * w + ix],
                    _ => 0.0,
                }
            };
            for c in 0..2 {
                for (oy, ox) in (0..d.oh).flat_map(|oy| (0..d.ow).map(move |ox| (oy, ox))) {
                    let p = oy * geo.row + ox;
                    assert!(p < geo.span);
                    for (ky, kx) in (0..k).flat_map(|ky| (0..k).map(move |kx| (ky, kx))) {
                        let (a, u, b, v) = (ky % 2, ky / 2, kx % 2, kx / 2);
                        let off = geo.offsets[u * geo.side + v];
                        assert!(off + geo.span <= geo.len);
                        let got = planes[(4 * c + 2 * a + b) * geo.len + off + p];
                        let want = padded(c, 2 * oy + ky, 2 * ox + kx);
                        assert_eq!(
                            got, want,
                            "{h}×{w} k{k} p{pad}: ({oy}, {ox}) tap ({ky}, {kx})"
                        );
                    }
                }
            }
        }
    }

    /// The phase path against im2col + gemm: a 7×7 stem and a 9×9 kernel, odd and even
    /// maps, one sample (split over the threads) and a batch (samples side by side), with
    /// the epilogue applied as planes are copied out.
    #[test]
    fn phases_equal_the_unfolded_convolution() {
        if !direct::forward_available() {
            eprintln!("skipped: no AVX-512F or AVX2 + FMA, the phases do not run here");
            return;
        }
        for (n, c_in, h, w, c_out, k, pad) in [
            (1, 3, 37, 30, 8, 7, 3),
            (3, 2, 20, 21, 5, 7, 3),
            (2, 3, 16, 16, 4, 9, 4),
            (1, 1, 12, 13, 3, 7, 0),
        ] {
            let g = ConvGeom {
                stride: 2,
                padding: pad,
            };
            let d = Dims::new(&[n, c_in, h, w], &[c_out, c_in, k, k], g).unwrap();
            assert!(applies::<f32>(&d, g));
            let x: Vec<f32> = (0..n * c_in * h * w)
                .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5)
                .collect();
            let wt: Vec<f32> = (0..c_out * c_in * k * k)
                .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let want = super::super::im2col::conv_forward_unfolded(&x, &wt, &d, g, None);
            let cache = PackedKernel::default();
            let relu = |_: usize, ch: usize, plane: &mut [f32]| {
                plane
                    .iter_mut()
                    .for_each(|v| *v = (*v + ch as f32 * 0.01).max(0.0))
            };
            for pass in 0..2 {
                let got = forward(&x, &wt, &d, g, Some(&cache), None).unwrap();
                let worst = max_abs_diff(&got, &want);
                assert!(
                    worst < 1e-4,
                    "n{n} c{c_in} {h}×{w} k{k} pass {pass}: {worst}"
                );
            }
            let fused = forward(&x, &wt, &d, g, Some(&cache), Some(&relu)).unwrap();
            let l = d.out_len();
            for (i, (a, b)) in fused.iter().zip(&want).enumerate() {
                let ch = (i / l) % c_out;
                assert!((a - (b + ch as f32 * 0.01).max(0.0)).abs() < 1e-4);
            }
        }
    }
}
