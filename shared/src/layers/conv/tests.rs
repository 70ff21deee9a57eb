//! Tests of the convolution op against candle, finite differences and direct loops.

use super::im2col::*;
use super::*;
use candle_core::{DType, Device, Var};

/// The largest absolute difference between `got` and `want` element by element (f32 or
/// f64 on either side, compared in f64), for the kernel tests of every conv module.
pub(super) fn max_abs_diff<A, B>(got: &[A], want: &[B]) -> f64
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(&a, &b)| (a.into() - b.into()).abs())
        .fold(0.0, f64::max)
}

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

/// A single sample split over the threads: by output channels (`matmul_rows_parallel`,
/// blocks of 8 rows and a shorter last one) when the map has no more positions than output
/// channels or fewer than `ROWS_PARALLEL_POSITIONS`, else by panels of output rows
/// (`matmul_panels_parallel`: 7×7 stride 2 on a 44×44 map, eight panels of 3 rows and a last
/// of 1); the output must equal candle's convolution (f64).
#[test]
fn single_sample_split_over_threads_matches_candle_conv2d() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    if threads() < 2 {
        eprintln!("skipped: one thread, nothing is split");
        return Ok(());
    }
    for (cin, cout, k, stride, pad, h, by_rows) in [
        (24, 40, 1, 1, 0, 5, true),
        (16, 36, 3, 2, 1, 9, true),
        (8, 9, 3, 1, 1, 3, true),
        (6, 20, 3, 2, 1, 20, true),
        (3, 10, 7, 2, 3, 44, false),
    ] {
        let geom = ConvGeom {
            stride,
            padding: pad,
        };
        let x = Tensor::randn(0f64, 1.0, (1, cin, h, h), &dev)?;
        let w = Tensor::randn(0f64, 1.0, (cout, cin, k, k), &dev)?;
        let d = Dims::new(x.dims(), w.dims(), geom)?;
        let rows = d.c_out >= d.out_len() || d.out_len() < super::im2col::ROWS_PARALLEL_POSITIONS;
        assert!(Split::new(&d).inner_parallel && rows == by_rows, "{d:?}");
        let ours = conv2d(&x, &w, geom)?;
        let theirs = x.conv2d(&w, pad, stride, 1, 1)?;
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-10, "{cin}→{cout} k{k} s{stride}: diff {diff}");
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

/// Large maps are unfolded in panels of output rows; forward and both gradients must
/// equal candle's own convolution (f64) with several panels per sample.
#[test]
fn panelled_unfolding_matches_candle_conv2d_and_its_gradients() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let n = threads().max(2);
    for stride in [1, 2] {
        let geom = ConvGeom { stride, padding: 1 };
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, 32, 48, 48), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f64, 0.1, (8, 32, 3, 3), &dev)?)?;
        let d = Dims::new(x.dims(), w.dims(), geom)?;
        let split = Split::new(&d);
        assert!(
            split.panels(&d, geom, 1).len() > 1,
            "test must exercise panels"
        );
        let ours = conv2d(x.as_tensor(), w.as_tensor(), geom)?;
        let theirs = x.as_tensor().conv2d(w.as_tensor(), 1, stride, 1, 1)?;
        let r = Tensor::randn(0f64, 1.0, ours.dims(), &dev)?;
        let g_ours = ours.mul(&r)?.sum_all()?.backward()?;
        let g_theirs = theirs.mul(&r)?.sum_all()?.backward()?;
        let max_diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f64> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f64>()
        };
        assert!(
            max_diff(&ours, &theirs)? < 1e-10,
            "stride {stride}: forward"
        );
        for (var, name) in [(&x, "dx"), (&w, "dw")] {
            let a = g_ours.get(var.as_tensor()).expect("gradient");
            let b = g_theirs.get(var.as_tensor()).expect("gradient");
            let diff = max_diff(a, b)?;
            assert!(diff < 1e-9, "stride {stride}: {name} differs by {diff}");
        }
    }
    Ok(())
}

/// Stride-2 unfolding and folding take whole pairs of a row and then its odd last
/// value. Every kernel ResNet/DenseNet strides by 2, on odd and even widths, must still
/// give candle's forward and the gradients of a direct loop (candle's own conv backward
/// does not handle odd sizes at stride 2).
#[test]
fn stride_two_on_odd_and_even_widths_matches_direct_loops() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (k, pad) in [(7, 3), (3, 1), (1, 0)] {
        for width in [17, 18, 20] {
            let geom = ConvGeom {
                stride: 2,
                padding: pad,
            };
            let (n, ci, co, h) = (2, 3, 4, 15);
            let x = Tensor::randn(0f64, 1.0, (n, ci, h, width), &dev)?;
            let w = Tensor::randn(0f64, 0.1, (co, ci, k, k), &dev)?;
            let y = conv2d(&x, &w, geom)?;
            let case = format!("k{k} pad {pad} width {width}");
            let theirs = x.conv2d(&w, pad, 2, 1, 1)?;
            let fwd = (&y - &theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(fwd < 1e-10, "{case}: forward differs by {fwd}");
            let (oh, ow) = (y.dim(2)?, y.dim(3)?);
            let dy = Tensor::randn(0f64, 1.0, y.dims(), &dev)?;
            let dx = conv2d_input_grad(&dy, &w, x.dims(), geom)?.flatten_all()?;
            let dw = conv2d_weight_grad(&x, &dy, w.dims(), geom)?.flatten_all()?;
            let (xv, wv, gv) = (
                x.flatten_all()?.to_vec1::<f64>()?,
                w.flatten_all()?.to_vec1::<f64>()?,
                dy.flatten_all()?.to_vec1::<f64>()?,
            );
            let mut dx_ref = vec![0f64; xv.len()];
            let mut dw_ref = vec![0f64; wv.len()];
            for (s, o, oy, ox, c, ky, kx) in taps_of_every_output(n, co, oh, ow, ci, k) {
                let (yy, xx) = (
                    (oy * 2 + ky) as isize - pad as isize,
                    (ox * 2 + kx) as isize - pad as isize,
                );
                if yy < 0 || xx < 0 || yy >= h as isize || xx >= width as isize {
                    continue;
                }
                let xi = ((s * ci + c) * h + yy as usize) * width + xx as usize;
                let wi = ((o * ci + c) * k + ky) * k + kx;
                let g = gv[((s * co + o) * oh + oy) * ow + ox];
                dx_ref[xi] += g * wv[wi];
                dw_ref[wi] += g * xv[xi];
            }
            for (ours, reference, name) in [(dx, dx_ref, "dx"), (dw, dw_ref, "dw")] {
                let diff = (ours - Tensor::new(reference, &dev)?)?.abs()?.max_all()?;
                let diff = diff.to_scalar::<f64>()?;
                assert!(diff < 1e-10, "{case}: {name} differs by {diff}");
            }
        }
    }
    Ok(())
}

/// Every (sample, out channel, oy, ox, in channel, ky, kx) of a convolution.
fn taps_of_every_output(
    n: usize,
    co: usize,
    oh: usize,
    ow: usize,
    ci: usize,
    k: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize, usize, usize, usize)> {
    (0..n).flat_map(move |s| {
        (0..co).flat_map(move |o| {
            (0..oh).flat_map(move |oy| {
                (0..ow).flat_map(move |ox| {
                    (0..ci).flat_map(move |c| {
                        (0..k).flat_map(move |ky| (0..k).map(move |kx| (s, o, oy, ox, c, ky, kx)))
                    })
                })
            })
        })
    })
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
    let split = Split::new(&d);
    assert!(
        split.per < split.groups[0].len(),
        "test must exercise chunking"
    );
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

/// The fused inference convolution (bias, residual and ReLU applied to each plane as it is
/// written) equals the convolution followed by the epilogue as its own pass, on every path:
/// planar direct (large stride-1 maps), channels-last (small maps, stride 2), the stem's
/// panels, gemm (pointwise, thin, strided), for a single sample and batches, twice with one
/// cache.
#[test]
fn fused_epilogue_matches_the_separate_pass() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (n, cin, cout, k, stride, h) in [
        (1, 64, 66, 3, 1, 16),
        (3, 64, 66, 3, 1, 16),
        (1, 70, 130, 3, 1, 7),
        (4, 70, 130, 3, 1, 7),
        (3, 40, 70, 3, 2, 15),
        (2, 3, 64, 7, 2, 23),
        (2, 24, 40, 1, 1, 9),
        (1, 128, 32, 3, 1, 14),
        // gemm over a batch split by samples: one sample a product (33×33 = 1,089
        // positions), several side by side (9×9), and a strided 1×1 (a downsample).
        (3, 16, 24, 1, 1, 33),
        (8, 24, 40, 1, 1, 9),
        (5, 32, 64, 1, 2, 14),
        // A thread's own sample of a strided 3×3 (20×20 = 400 positions: with the packed
        // products, finished in runs of 384 and 16 positions).
        (2, 16, 64, 3, 2, 40),
    ] {
        let geom = ConvGeom {
            stride,
            padding: k / 2,
        };
        let x = Tensor::randn(0f32, 1.0, (n, cin, h, h), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (cout, cin, k, k), &dev)?;
        let shift: Vec<f32> = (0..cout).map(|c| (c as f32 * 0.37).sin()).collect();
        let cache = PackedKernel::default();
        let plain = conv2d_cached(&x, &w, geom, &cache)?;
        let residual = Tensor::randn(0f32, 1.0, plain.shape(), &dev)?;
        for relu in [false, true] {
            let epilogue = ChannelAffine::new(None, shift.clone(), relu);
            for r in [None, Some(&residual)] {
                let want = epilogue.apply(&plain, r)?.flatten_all()?.to_vec1::<f32>()?;
                for pass in 0..2 {
                    let got = conv2d_fused(&x, &w, geom, &cache, &epilogue, r)?;
                    assert_eq!(got.dims(), plain.dims());
                    let got = got.flatten_all()?.to_vec1::<f32>()?;
                    assert_eq!(
                        got,
                        want,
                        "{n}x{cin}x{h}x{h} → {cout} k{k} s{stride} relu {relu} residual {} pass {pass}",
                        r.is_some()
                    );
                }
            }
        }
    }
    // A residual of the wrong shape is refused, naming both shapes.
    let x = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (6, 4, 3, 3), &dev)?;
    let wrong = Tensor::zeros((1, 6, 7, 7), DType::F32, &dev)?;
    let epilogue = ChannelAffine::new(None, vec![0.0; 6], true);
    let g = ConvGeom {
        stride: 1,
        padding: 1,
    };
    let err = conv2d_fused(&x, &w, g, &PackedKernel::default(), &epilogue, Some(&wrong))
        .expect_err("a mismatched residual");
    assert!(err.to_string().contains("[1, 6, 7, 7]"), "{err}");
    Ok(())
}

/// The inference products with the kernel packed once ([`super::packed`], where AVX-512F
/// runs) against the uncached convolution (gemm), f32: 1×1 layers of one sample (rows split
/// over the threads; 13 output channels, a partial block of rows), 7×7 maps (channels in
/// the lanes: 130 channels, a partial block of 64), a strided 1×1, a 7×7 stride-2 stem on a
/// large map (panels of output rows, one a thread), a 3×3 stride 2, and batches (samples
/// side by side); twice with one cache, which must hold the kernel packed in the layout for
/// the shape for the 1×1 layers.
#[test]
fn packed_products_match_gemm() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (n, cin, cout, k, stride, h) in [
        (1, 64, 256, 1, 1, 14),
        (1, 20, 13, 1, 1, 10),
        (1, 256, 64, 1, 1, 30),
        (1, 96, 130, 1, 1, 7),
        (1, 64, 128, 1, 2, 14),
        (1, 3, 64, 7, 2, 60),
        (1, 32, 64, 3, 2, 14),
        (4, 24, 40, 1, 1, 9),
        (3, 16, 24, 1, 1, 33),
    ] {
        let geom = ConvGeom {
            stride,
            padding: k / 2,
        };
        let x = Tensor::randn(0f32, 1.0, (n, cin, h, h), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (cout, cin, k, k), &dev)?;
        let want = conv2d(&x, &w, geom)?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let cache = PackedKernel::default();
        for pass in 0..2 {
            let got = conv2d_cached(&x, &w, geom, &cache)?;
            let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff <= 1e-5 * scale,
                "{n}x{cin}x{h}x{h} → {cout} k{k} s{stride} pass {pass}: {diff} of {scale}"
            );
        }
        if k == 1 {
            let l = want.dim(2)? * want.dim(3)?;
            let channels = super::packed::available512() && n == 1 && l < 64 && cout >= 64;
            let layout = if channels {
                super::packed::Layout::Channels
            } else {
                super::packed::Layout::Positions
            };
            assert_eq!(
                cache.unfolded.has(layout),
                super::packed::available(),
                "{cout} × {l}"
            );
        }
    }
    Ok(())
}

/// The panels of one sample's rows: they tile the rows in order, stay within the budget, and
/// each thread's contiguous half of them holds its share of rows to within one (28 rows on
/// two threads: 14 and 14, where panels of one height made 4 against 3 panels of 4 rows).
#[test]
fn panels_split_the_rows_evenly_among_the_threads() {
    for (rows, most, threads) in [(28, 4, 2), (14, 4, 2), (112, 7, 2), (7, 18, 2), (28, 4, 3)] {
        let panels = balanced_panels(rows, most, threads);
        let mut next = 0;
        for p in &panels {
            assert_eq!(p.start, next, "{rows} rows: a gap or overlap at {p:?}");
            assert!(!p.is_empty() && p.len() <= most, "{rows} rows: panel {p:?}");
            next = p.end;
        }
        assert_eq!(next, rows);
        assert_eq!(panels.len() % threads, 0, "{rows} rows: {panels:?}");
        let per = panels.len() / threads;
        let shares: Vec<usize> = panels
            .chunks(per)
            .map(|c| c.iter().map(|p| p.len()).sum())
            .collect();
        let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        assert!(
            hi - lo <= 1,
            "{rows} rows on {threads} threads: shares {shares:?}"
        );
    }
}
