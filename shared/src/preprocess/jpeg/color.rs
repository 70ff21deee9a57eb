//! Fancy chroma upsampling (`jdsample.c`), YCbCr → RGB and YCCK → CMYK conversion
//! (`jdcolor.c`), and CMYK → RGB as Pillow's `convert("RGB")` does it.

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

/// How the components code colour (libjpeg's `jpeg_color_space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    Gray,
    YCbCr,
    /// Three components that are R, G and B already.
    Rgb,
    /// Four components stored as Adobe writes them (inverted: 0 is full ink).
    Cmyk,
    /// YCbCr-coded inverted CMY, plus K (Adobe transform 2).
    Ycck,
}

/// libjpeg's fixed-point YCbCr → RGB tables (`jdcolor.c` `build_ycc_rgb_table`).
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

const SCALEBITS: u32 = 16;

impl YccTables {
    fn new() -> Self {
        const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * 65536.0 + 0.5) as i64;
        let mut t = YccTables {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    /// R, G, B before clamping.
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [i32; 3] {
        let y = i32::from(y);
        let (cb, cr) = (usize::from(cb), usize::from(cr));
        [
            y + self.cr_r[cr],
            y + ((self.cb_g[cb] + self.cr_g[cr]) >> SCALEBITS) as i32,
            y + self.cb_b[cb],
        ]
    }
}

fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Pillow's `convert("RGB")` of a CMYK pixel read with the Adobe convention (`CMYK;I`: ink is
/// `255 - sample`): `R = (255 - K) - C (255 - K) / 255` with its rounding (`MULDIV255`).
fn pillow_cmyk_to_rgb(samples: [u8; 4]) -> [u8; 3] {
    let nk = i32::from(samples[3]);
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [0, 1, 2].map(|i| {
        let ink = 255 - i32::from(samples[i]);
        clamp(nk - muldiv255(ink, nk))
    })
}

pub(super) fn output(fr: &Frame, coding: Coding) -> RgbImage {
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
    match coding {
        Coding::Gray => {
            for (px, &g) in rgb.chunks_exact_mut(3).zip(&planes[0]) {
                px.fill(g);
            }
        }
        Coding::YCbCr => {
            let t = YccTables::new();
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                let v = t.rgb(planes[0][i], planes[1][i], planes[2][i]);
                px.copy_from_slice(&v.map(clamp));
            }
        }
        Coding::Rgb => {
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&[planes[0][i], planes[1][i], planes[2][i]]);
            }
        }
        Coding::Cmyk => {
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                let s = [planes[0][i], planes[1][i], planes[2][i], planes[3][i]];
                px.copy_from_slice(&pillow_cmyk_to_rgb(s));
            }
        }
        Coding::Ycck => {
            // jdcolor.c ycck_cmyk_convert: CMY = 255 - RGB(YCC), clamped; K unchanged.
            let t = YccTables::new();
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                let v = t.rgb(planes[0][i], planes[1][i], planes[2][i]);
                let s = [
                    clamp(255 - v[0]),
                    clamp(255 - v[1]),
                    clamp(255 - v[2]),
                    planes[3][i],
                ];
                px.copy_from_slice(&pillow_cmyk_to_rgb(s));
            }
        }
    }
    // Dimensions were bounded by the frame limits; the buffer has exactly w * h * 3 bytes.
    RgbImage::from_raw(w as u32, h as u32, rgb).unwrap_or_default()
}
