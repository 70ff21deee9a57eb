//! Resize: a port of Pillow's `ImagingResample` (bilinear filter, 8 bits per channel), and
//! torchvision's `Resize(int)` output size.

use image::RgbImage;

use super::MAX_IMAGE_BYTES;
use crate::{Error, Result};

/// Pillow's fixed-point precision for 8-bit resampling: `32 - 8 - 2` bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bilinear (triangle) filter, support 1.
fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Per-output-pixel convolution windows in fixed point, as Pillow's `precompute_coeffs` +
/// `normalize_coeffs_8bpc` make them.
struct Coeffs {
    /// Maximum window length; `kk` holds `ksize` entries per output pixel.
    ksize: usize,
    /// `(first input index, window length)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `ksize` per output pixel.
    kk: Vec<i32>,
}

fn precompute_coeffs(in_size: u32, out_size: u32) -> Coeffs {
    // Pillow passes the box as floats: in0 = 0, in1 = in_size.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;

    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut kk = vec![0i32; out_size as usize * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero, as does `as`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) - xmin;
        let xmax = xmax.max(0) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bilinear_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut kk[xx * ksize..(xx + 1) * ksize];
        for (dst, &w) in row.iter_mut().zip(&k).take(xmax) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin as usize, xmax));
    }
    Coeffs { ksize, bounds, kk }
}

/// Pillow's `clip8`: drop the fixed-point fraction and clamp to `0..=255`.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `row0..row0 + rows` of `src` (`src_w` pixels wide, RGB).
fn resample_horizontal(src: &[u8], src_w: usize, row0: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; out_w * rows * 3];
    for yy in 0..rows {
        let line = &src[(yy + row0) * src_w * 3..(yy + row0 + 1) * src_w * 3];
        let dst = &mut out[yy * out_w * 3..(yy + 1) * out_w * 3];
        for (xx, &(xmin, xlen)) in c.bounds.iter().enumerate() {
            let k = &c.kk[xx * c.ksize..xx * c.ksize + xlen];
            let px = &line[xmin * 3..(xmin + xlen) * 3];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (p, &w) in px.chunks_exact(3).zip(k) {
                s0 += i32::from(p[0]) * w;
                s1 += i32::from(p[1]) * w;
                s2 += i32::from(p[2]) * w;
            }
            dst[xx * 3] = clip8(s0);
            dst[xx * 3 + 1] = clip8(s1);
            dst[xx * 3 + 2] = clip8(s2);
        }
    }
    out
}

/// Vertical pass; `row_shift` is subtracted from every window start (Pillow shifts the bounds
/// when the horizontal pass only produced the rows the vertical pass needs).
fn resample_vertical(src: &[u8], w: usize, row_shift: usize, c: &Coeffs) -> Vec<u8> {
    let out_h = c.bounds.len();
    let stride = w * 3;
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, ylen)) in c.bounds.iter().enumerate() {
        let k = &c.kk[yy * c.ksize..yy * c.ksize + ylen];
        acc.fill(HALF);
        for (y, &wt) in k.iter().enumerate() {
            let row = ymin - row_shift + y;
            let line = &src[row * stride..(row + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += i32::from(p) * wt;
            }
        }
        for (d, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

/// Resize to exactly `out_w x out_h` with Pillow's `Image.resize(.., Image.BILINEAR)`
/// (antialiased: the filter support scales with the downscale factor), bit-exact.
pub(super) fn pillow_resize_bilinear(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    if (in_w, in_h) == (out_w, out_h) {
        return img.clone();
    }
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let vert = precompute_coeffs(in_h, out_h);
    let src = img.as_raw();

    let (data, width, row_shift);
    let horizontal;
    if need_horizontal {
        // Only the rows the vertical pass reads are resampled horizontally.
        let first = vert.bounds[0].0;
        let last = vert.bounds[vert.bounds.len() - 1];
        let last = last.0 + last.1;
        let horiz = precompute_coeffs(in_w, out_w);
        horizontal = resample_horizontal(src, in_w as usize, first, last - first, &horiz);
        data = horizontal.as_slice();
        width = out_w as usize;
        row_shift = first;
    } else {
        data = src.as_slice();
        width = in_w as usize;
        row_shift = 0;
    }
    let out = if need_vertical {
        resample_vertical(data, width, row_shift, &vert)
    } else {
        data.to_vec()
    };
    RgbImage::from_raw(out_w, out_h, out).expect("resampled buffer sized for the output")
}

/// torchvision's output size for `Resize(shorter)` of a `w x h` image: the shorter side becomes
/// `shorter`, the longer `int(shorter * long / short)` (truncated), aspect ratio kept.
pub fn resized_size(w: u32, h: u32, shorter: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Integer division equals Python's int(float division) here: a non-integer quotient of
    // integers below 2^32 is never within float rounding distance of an integer.
    let new_long = (u64::from(shorter) * u64::from(long) / u64::from(short.max(1))) as u32;
    if w <= h {
        (shorter, new_long)
    } else {
        (new_long, shorter)
    }
}

/// torchvision `Resize(shorter)` on a PIL image: scale so that the shorter side is `shorter`
/// pixels, the longer side `int(shorter * long / short)`, with Pillow's antialiased bilinear
/// resampling (bit-exact with Pillow). Images whose shorter side already is `shorter` are
/// returned unchanged; smaller images are upscaled.
pub fn resize_shorter_side(img: &RgbImage, shorter: u32) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Image(format!(
            "cannot resize an empty {w}x{h} image"
        )));
    }
    if shorter == 0 {
        return Err(Error::invalid(
            "resize target for the shorter side must be > 0",
        ));
    }
    let (new_w, new_h) = resized_size(w, h, shorter);
    let bytes = u64::from(new_w) * u64::from(new_h) * 3;
    if bytes > MAX_IMAGE_BYTES {
        return Err(Error::Image(format!(
            "resizing a {w}x{h} image to shorter side {shorter} would give {new_w}x{new_h} \
             pixels, more than the {} MiB allowed",
            MAX_IMAGE_BYTES >> 20
        )));
    }
    Ok(pillow_resize_bilinear(img, new_w, new_h))
}

/// Pillow's `Image.resize((w, h), Image.BILINEAR)` (antialiased, bit-exact with Pillow): the
/// resampling of [`resize_shorter_side`] to an arbitrary `w x h`, as torchvision's
/// `RandomResizedCrop` does after cropping.
pub fn resize_exact(img: &RgbImage, w: u32, h: u32) -> Result<RgbImage> {
    let (in_w, in_h) = img.dimensions();
    if in_w == 0 || in_h == 0 || w == 0 || h == 0 {
        return Err(Error::invalid(format!(
            "cannot resize a {in_w}x{in_h} image to {w}x{h}: sides must be > 0"
        )));
    }
    if u64::from(w) * u64::from(h) * 3 > MAX_IMAGE_BYTES {
        return Err(Error::Image(format!(
            "resizing to {w}x{h} pixels needs more than the {} MiB allowed",
            MAX_IMAGE_BYTES >> 20
        )));
    }
    Ok(pillow_resize_bilinear(img, w, h))
}
