//! Fancy chroma upsampling (`jdsample.c`) and YCbCr → RGB conversion (`jdcolor.c`).

use image::RgbImage;

use super::frame::{Component, Frame};
use super::idct::component_samples;

/// Upsample component `c` (samples in `plane`, row stride `stride`) to `width` x `height`.
fn upsample(
    c: &Component,
    plane: &[u8],
    stride: usize,
    hx: usize,
    vx: usize,
    width: usize,
    height: usize,
) -> Vec<u8> {
    let (cw, ch) = (c.width, c.height);
    let row = |y: usize| &plane[y * stride..y * stride + cw];
    let mut out = vec![0u8; width * height];
    // Output row buffer of the upsampler's full width (2 * cw may exceed `width` by one).
    let mut line = vec![0u8; cw * hx];
    let mut colsum = vec![0i32; cw];
    let fancy_h = cw > 2;
    for y in 0..height {
        let iy = y / vx;
        match (hx, vx) {
            (1, 1) => line.copy_from_slice(row(y)),
            (2, 1) => {
                let inp = row(iy);
                if fancy_h {
                    h2v1_fancy(inp, &mut line);
                } else {
                    for (i, &v) in inp.iter().enumerate() {
                        line[2 * i] = v;
                        line[2 * i + 1] = v;
                    }
                }
            }
            (1, 2) => {
                let (nb, bias) = vertical_neighbour(y, iy, ch);
                let (a, b) = (row(iy), row(nb));
                for i in 0..cw {
                    let s = 3 * i32::from(a[i]) + i32::from(b[i]);
                    line[i] = ((s + bias) >> 2) as u8;
                }
            }
            _ => {
                // (2, 2)
                if fancy_h {
                    let (nb, _) = vertical_neighbour(y, iy, ch);
                    let (a, b) = (row(iy), row(nb));
                    for i in 0..cw {
                        colsum[i] = 3 * i32::from(a[i]) + i32::from(b[i]);
                    }
                    h2v2_fancy_row(&colsum, &mut line);
                } else {
                    let inp = row(iy);
                    for (i, &v) in inp.iter().enumerate() {
                        line[2 * i] = v;
                        line[2 * i + 1] = v;
                    }
                }
            }
        }
        out[y * width..(y + 1) * width].copy_from_slice(&line[..width]);
    }
    out
}

/// The context row for output row `y` (from input row `iy`): the row above for the upper
/// output row of a pair, below for the lower, replicated at the edges; and the rounding bias.
fn vertical_neighbour(y: usize, iy: usize, ch: usize) -> (usize, i32) {
    if y.is_multiple_of(2) {
        (iy.saturating_sub(1), 1)
    } else {
        ((iy + 1).min(ch - 1), 2)
    }
}

fn h2v1_fancy(inp: &[u8], out: &mut [u8]) {
    let n = inp.len();
    let px = |i: usize| i32::from(inp[i]);
    out[0] = inp[0];
    out[1] = ((px(0) * 3 + px(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        let v = px(i) * 3;
        out[2 * i] = ((v + px(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((v + px(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((px(n - 1) * 3 + px(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = inp[n - 1];
}

fn h2v2_fancy_row(cs: &[i32], out: &mut [u8]) {
    let n = cs.len();
    out[0] = ((cs[0] * 4 + 8) >> 4) as u8;
    out[1] = ((cs[0] * 3 + cs[1] + 7) >> 4) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((cs[i] * 3 + cs[i - 1] + 8) >> 4) as u8;
        out[2 * i + 1] = ((cs[i] * 3 + cs[i + 1] + 7) >> 4) as u8;
    }
    out[2 * n - 2] = ((cs[n - 1] * 3 + cs[n - 2] + 8) >> 4) as u8;
    out[2 * n - 1] = ((cs[n - 1] * 4 + 7) >> 4) as u8;
}

pub(super) fn output(fr: &Frame) -> RgbImage {
    let (w, h) = (fr.width, fr.height);
    let mut planes = Vec::with_capacity(fr.comps.len());
    for c in &fr.comps {
        let samples = component_samples(c);
        let stride = c.bw * 8;
        planes.push(upsample(
            c,
            &samples,
            stride,
            fr.hmax / c.h,
            fr.vmax / c.v,
            w,
            h,
        ));
    }
    let mut rgb = vec![0u8; w * h * 3];
    if planes.len() == 1 {
        for (px, &g) in rgb.chunks_exact_mut(3).zip(&planes[0]) {
            px.fill(g);
        }
    } else {
        const SCALEBITS: u32 = 16;
        const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * 65536.0 + 0.5) as i64;
        let mut cr_r = [0i32; 256];
        let mut cb_b = [0i32; 256];
        let mut cr_g = [0i64; 256];
        let mut cb_g = [0i64; 256];
        for i in 0..256 {
            let x = i as i64 - 128;
            cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            cr_g[i] = -fix(0.71414) * x;
            cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
            let y = i32::from(planes[0][i]);
            let cb = usize::from(planes[1][i]);
            let cr = usize::from(planes[2][i]);
            px[0] = clamp(y + cr_r[cr]);
            px[1] = clamp(y + ((cb_g[cb] + cr_g[cr]) >> SCALEBITS) as i32);
            px[2] = clamp(y + cb_b[cb]);
        }
    }
    // Dimensions were bounded by the frame limits; the buffer has exactly w * h * 3 bytes.
    RgbImage::from_raw(w as u32, h as u32, rgb).unwrap_or_default()
}
