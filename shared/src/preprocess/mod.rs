//! Image preprocessing, numerically equal to torchvision's standard evaluation transform on
//! PIL images:
//!
//! ```text
//! Image.open(path).convert("RGB")
//!   -> Resize(256)        (PIL bilinear, antialiased)
//!   -> CenterCrop(224)
//!   -> ToTensor()         (/255)
//!   -> Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
//! ```
//!
//! The resize is a line-by-line port of Pillow's `ImagingResample` (`libImaging/Resample.c`):
//! separable convolution with a triangle filter whose support grows with the downscale factor,
//! horizontal pass first into an 8-bit intermediate, then the vertical pass, with Pillow's
//! 22-bit fixed-point coefficients and rounding. It is bit-exact with Pillow for 8-bit RGB.
//! (`fast_image_resize`'s convolution follows Pillow-SIMD instead, which stores coefficients as
//! `i16` with a data-dependent precision and therefore differs from Pillow by one level on
//! some pixels.)
//!
//! Decoding: baseline (sequential Huffman, 8-bit) grayscale and YCbCr JPEGs go through our
//! own decoder (module `jpeg`), a port of libjpeg-turbo's default decompression path (accurate
//! integer IDCT, fancy chroma upsampling, fixed-point YCbCr conversion), so they decode to
//! exactly the pixels Pillow gets from libjpeg-turbo. Everything else goes through the `image`
//! crate: PNG and TIFF (which decode exactly as Pillow does), and the JPEG variants our
//! decoder leaves alone (progressive, arithmetic, 12-bit, lossless, CMYK/YCCK, RGB-coded,
//! unusual sampling ratios), which `zune-jpeg` decodes within a few levels of libjpeg-turbo.
//! The whole transform is therefore bit-exact with torchvision for PNG, TIFF and baseline
//! JPEG.
//!
//! Everything here is pure Rust and builds for `wasm32-unknown-unknown`.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::{Error, Result};

mod extensions;
mod jpeg;

pub use extensions::{has_image_extension, IMAGE_EXTENSIONS};

/// Largest accepted image side, in pixels, when decoding.
pub const MAX_IMAGE_SIDE: u32 = 30_000;

/// Largest allocation, in bytes, that decoding or resizing one image may make (1 GiB).
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// ImageNet channel means (RGB), as used by torchvision's pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];

/// ImageNet channel standard deviations (RGB), as used by torchvision's pretrained models.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Settings of the evaluation transform: resize the shorter side, center-crop a square,
/// normalise per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessConfig {
    /// Target length of the shorter image side after resizing (torchvision `Resize(int)`).
    pub resize_shorter: u32,
    /// Side of the square center crop (torchvision `CenterCrop(int)`).
    pub crop: u32,
    /// Per-channel (RGB) mean subtracted after scaling pixel values to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// torchvision's standard ImageNet evaluation transform: resize to 256, crop 224,
    /// ImageNet mean/std.
    fn default() -> Self {
        Self::imagenet(256, 224)
    }
}

impl PreprocessConfig {
    /// A config with the given resize and crop sizes and ImageNet mean/std.
    pub fn imagenet(resize_shorter: u32, crop: u32) -> Self {
        Self {
            resize_shorter,
            crop,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Check the settings: sizes positive, `crop <= resize_shorter`, means finite and standard
    /// deviations finite and strictly positive.
    pub fn validate(&self) -> Result<()> {
        if self.resize_shorter == 0 || self.crop == 0 {
            return Err(Error::invalid(format!(
                "preprocess config: resize_shorter ({}) and crop ({}) must be positive",
                self.resize_shorter, self.crop
            )));
        }
        if self.crop > self.resize_shorter {
            return Err(Error::invalid(format!(
                "preprocess config: crop ({}) must not exceed resize_shorter ({})",
                self.crop, self.resize_shorter
            )));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::invalid(format!(
                "preprocess config: mean {:?} must be finite",
                self.mean
            )));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::invalid(format!(
                "preprocess config: std {:?} must be finite and > 0",
                self.std
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decode JPEG, PNG or TIFF bytes (recognised by content, not by any file name) to 8-bit RGB,
/// the way PIL's `Image.open(..).convert("RGB")` does:
///
/// * grayscale is replicated to the three channels;
/// * alpha is dropped without compositing (as PIL's `convert("RGB")` does);
/// * palette images are expanded through their palette;
/// * CMYK JPEGs are converted with PIL's formula `R = (255 - C)(255 - K) / 255`, reading the
///   samples with the Adobe (inverted) convention, as PIL and libjpeg do;
/// * 16-bit samples are scaled to 8 bits with `round(v / 257)` (so 65535 maps to 255 and
///   `257 * k` to `k`). PIL itself clips 16-bit grayscale to 255 on `convert("RGB")`, which
///   turns almost every real 16-bit image white; we deliberately do the sensible thing instead;
/// * floating-point TIFF samples are clamped to `[0, 1]` and scaled to `round(255 v)`.
///
/// Images larger than [`MAX_IMAGE_SIDE`] per side, needing more than [`MAX_IMAGE_BYTES`] to
/// decode, or with a zero side are rejected with an error.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    decode_inner(bytes).map_err(Error::Image)
}

/// Read and decode an image file (see [`decode_image`]); errors name the file and say what is
/// wrong with it (missing, unreadable, empty, truncated, not an image, unsupported).
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_inner(&bytes).map_err(|msg| Error::Image(format!("{}: {msg}", path.display())))
}

fn decode_inner(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty data (0 bytes), not an image".into());
    }
    let format = image::guess_format(bytes).map_err(|_| {
        format!(
            "not a recognised image (expected JPEG, PNG or TIFF data; starts with {})",
            hex_prefix(bytes)
        )
    })?;
    let name = match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Tiff => "TIFF",
        other => {
            return Err(format!(
                "unsupported image format {other:?} (only JPEG, PNG and TIFF are read)"
            ))
        }
    };
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // The JPEG decoder may pad a truncated scan and report success; PIL refuses such
        // files ("image file is truncated"), and so do we.
        return Err("truncated JPEG data (no end-of-image marker)".into());
    }

    if format == ImageFormat::Jpeg {
        // Bit-exact with Pillow's libjpeg-turbo for the JPEGs it supports; the general decoder
        // handles the rest (progressive, CMYK, ...), and reports oversized images.
        let lim = jpeg::Limits {
            max_side: MAX_IMAGE_SIDE,
            max_bytes: MAX_IMAGE_BYTES,
        };
        match jpeg::decode(bytes, lim) {
            Ok(img) => return Ok(img),
            Err(jpeg::JpegError::Corrupt(m)) => return Err(format!("corrupt JPEG data: {m}")),
            Err(jpeg::JpegError::Unsupported(_)) => {}
        }
    }

    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| describe_decode_error(name, e))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(format!(
            "{name} image has a zero-sized side ({}x{})",
            img.width(),
            img.height()
        ));
    }
    to_rgb8(img)
}

fn describe_decode_error(name: &str, e: ImageError) -> String {
    match e {
        ImageError::Limits(e) => format!(
            "{name} image too large to decode ({e}; at most {MAX_IMAGE_SIDE} px per side and \
             {} MiB are allowed)",
            MAX_IMAGE_BYTES >> 20
        ),
        ImageError::Unsupported(e) => format!("unsupported {name} variant: {e}"),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {name} data: {e}")
        }
        ImageError::IoError(e) => format!("corrupt or truncated {name} data: {e}"),
        ImageError::Decoding(e) => format!("corrupt or truncated {name} data: {e}"),
        e => format!("cannot decode {name} data: {e}"),
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", shown.join(" "))
}

/// Whether JPEG data runs through to its end-of-image marker (`FF D9`).
///
/// Walks the marker segments from the start (skipping segments by their length, so EXIF
/// thumbnails do not count) and the entropy-coded data after each start-of-scan (where `FF` is
/// only ever followed by a stuffed `00` or a restart marker), so data appended after the end
/// marker is tolerated, as in PIL.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let n = bytes.len();
    if n < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    while i + 1 < n {
        if bytes[i] != 0xFF {
            // Not at a marker: entropy-coded data; skip to the next real marker.
            i += 1;
            continue;
        }
        let marker = bytes[i + 1];
        match marker {
            0xD9 => return true,
            // Fill byte, stuffed zero, standalone markers (TEM, RSTn): no length field.
            0xFF => i += 1,
            0x00 | 0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                if i + 3 >= n {
                    return false;
                }
                let len = usize::from(bytes[i + 2]) << 8 | usize::from(bytes[i + 3]);
                if len < 2 {
                    return false;
                }
                i += 2 + len;
            }
        }
    }
    false
}

/// `round(v / 257)`: the 16-bit -> 8-bit scaling (exact for `v = 257 k`).
fn u16_to_u8(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

fn f32_to_u8(v: f32) -> u8 {
    // NaN maps to 0.
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Convert any decoded image to 8-bit RGB with PIL `convert("RGB")` semantics (see
/// [`decode_image`]).
fn to_rgb8(img: DynamicImage) -> std::result::Result<RgbImage, String> {
    let (w, h) = (img.width(), img.height());
    let map = |n: usize, f: &dyn Fn(usize) -> [u8; 3]| -> RgbImage {
        let mut out = Vec::with_capacity(n * 3);
        for i in 0..n {
            out.extend_from_slice(&f(i));
        }
        // Length is w*h*3 by construction.
        RgbImage::from_raw(w, h, out).expect("buffer sized for the image")
    };
    let n = w as usize * h as usize;
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma8(g) => {
            let g = g.as_raw();
            map(n, &|i| [g[i]; 3])
        }
        DynamicImage::ImageLumaA8(g) => {
            let g = g.as_raw();
            map(n, &|i| [g[2 * i]; 3])
        }
        DynamicImage::ImageRgba8(c) => {
            let c = c.as_raw();
            map(n, &|i| [c[4 * i], c[4 * i + 1], c[4 * i + 2]])
        }
        DynamicImage::ImageLuma16(g) => {
            let g = g.as_raw();
            map(n, &|i| [u16_to_u8(g[i]); 3])
        }
        DynamicImage::ImageLumaA16(g) => {
            let g = g.as_raw();
            map(n, &|i| [u16_to_u8(g[2 * i]); 3])
        }
        DynamicImage::ImageRgb16(c) => {
            let c = c.as_raw();
            map(n, &|i| {
                [
                    u16_to_u8(c[3 * i]),
                    u16_to_u8(c[3 * i + 1]),
                    u16_to_u8(c[3 * i + 2]),
                ]
            })
        }
        DynamicImage::ImageRgba16(c) => {
            let c = c.as_raw();
            map(n, &|i| {
                [
                    u16_to_u8(c[4 * i]),
                    u16_to_u8(c[4 * i + 1]),
                    u16_to_u8(c[4 * i + 2]),
                ]
            })
        }
        DynamicImage::ImageRgb32F(c) => {
            let c = c.as_raw();
            map(n, &|i| {
                [
                    f32_to_u8(c[3 * i]),
                    f32_to_u8(c[3 * i + 1]),
                    f32_to_u8(c[3 * i + 2]),
                ]
            })
        }
        DynamicImage::ImageRgba32F(c) => {
            let c = c.as_raw();
            map(n, &|i| {
                [
                    f32_to_u8(c[4 * i]),
                    f32_to_u8(c[4 * i + 1]),
                    f32_to_u8(c[4 * i + 2]),
                ]
            })
        }
        other => return Err(format!("unsupported pixel layout {:?}", other.color())),
    })
}

// ---------------------------------------------------------------------------------------------
// Resize (port of Pillow's ImagingResample, bilinear filter, 8 bits per channel)
// ---------------------------------------------------------------------------------------------

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
fn pillow_resize_bilinear(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
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

/// Python's `int(round(d / 2.0))` for `d >= 0`: halves round to even.
fn half_round_even(d: u32) -> u32 {
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

/// torchvision `CenterCrop(size)`: a `size x size` crop whose offset is
/// `int(round((side - size) / 2.0))` (Python rounding, halves to even). An image smaller than
/// `size` along a side is first zero-padded on that side, `(size - side) // 2` before and the
/// rest after, as torchvision does.
pub fn center_crop(img: &RgbImage, size: u32) -> Result<RgbImage> {
    if size == 0 {
        return Err(Error::invalid("center crop size must be > 0"));
    }
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Image(format!("cannot crop an empty {w}x{h} image")));
    }
    // Padding (left, top) and the padded size, per torchvision's center_crop.
    let (pad_l, pw) = if size > w {
        ((size - w) / 2, size)
    } else {
        (0, w)
    };
    let (pad_t, ph) = if size > h {
        ((size - h) / 2, size)
    } else {
        (0, h)
    };
    let top = half_round_even(ph - size);
    let left = half_round_even(pw - size);

    let mut out = RgbImage::new(size, size);
    let src = img.as_raw();
    let stride = w as usize * 3;
    for oy in 0..size {
        // Row in the padded image, then in the source.
        let py = oy + top;
        if py < pad_t || py - pad_t >= h {
            continue;
        }
        let sy = (py - pad_t) as usize;
        // Columns [left, left + size) of the padded image that fall inside the source.
        let x0 = left.max(pad_l);
        let x1 = (left + size).min(pad_l + w);
        if x0 >= x1 {
            continue;
        }
        let (sx0, sx1) = ((x0 - pad_l) as usize, (x1 - pad_l) as usize);
        let (dx0, dx1) = ((x0 - left) as usize, (x1 - left) as usize);
        let dst_stride = size as usize * 3;
        let dst = &mut out.as_mut()[oy as usize * dst_stride..(oy as usize + 1) * dst_stride];
        dst[dx0 * 3..dx1 * 3].copy_from_slice(&src[sy * stride + sx0 * 3..sy * stride + sx1 * 3]);
    }
    Ok(out)
}

/// torchvision `ToTensor` + `Normalize(mean, std)`: a `[3, H, W]` row-major `f32` buffer with
/// `(v / 255 - mean[c]) / std[c]`.
///
/// Computed in `f32` exactly as PyTorch does (`v * (1 / 255)`, since PyTorch divides by a
/// scalar through its reciprocal, then a true division by `std`), so results are bit-equal.
pub fn normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = w as usize * h as usize;
    let mut out = vec![0f32; 3 * plane];
    let inv255 = 1.0f32 / 255.0;
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) * inv255 - mean[c]) / std[c];
        }
    }
    out
}

/// The full evaluation transform on a decoded image: [`resize_shorter_side`] ->
/// [`center_crop`] -> [`normalize_chw`]; returns `3 * crop * crop` floats, `[3, crop, crop]`.
pub fn preprocess_rgb(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    let resized = resize_shorter_side(img, cfg.resize_shorter)?;
    let cropped = center_crop(&resized, cfg.crop)?;
    Ok(normalize_chw(&cropped, cfg.mean, cfg.std))
}

/// [`decode_image`] then [`preprocess_rgb`].
pub fn preprocess_bytes(bytes: &[u8], cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    preprocess_rgb(&decode_image(bytes)?, cfg)
}

/// [`load_image`] then [`preprocess_rgb`]; errors name the file.
pub fn preprocess_file(path: &Path, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    let img = load_image(path)?;
    preprocess_rgb(&img, cfg).map_err(|e| match e {
        Error::Image(msg) => Error::Image(format!("{}: {msg}", path.display())),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{data_dir, fixtures_dir};
    use image::codecs::png::PngEncoder;
    use image::codecs::tiff::TiffEncoder;
    use image::{ExtendedColorType, ImageEncoder};

    /// Committed tiny test images (made with Pillow 13).
    fn test_image(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    fn png_bytes(w: u32, h: u32, data: &[u8], color: ExtendedColorType) -> Vec<u8> {
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(data, w, h, color)
            .expect("encode png");
        out
    }

    fn tiff_bytes(w: u32, h: u32, data: &[u8], color: ExtendedColorType) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        TiffEncoder::new(&mut out)
            .write_image(data, w, h, color)
            .expect("encode tiff");
        out.into_inner()
    }

    fn u16_ne(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    /// The 97x61 RGB pattern also generated in Python to make the Pillow references below.
    fn pattern() -> RgbImage {
        RgbImage::from_fn(97, 61, |x, y| {
            image::Rgb([
                ((x * 7 + y * 13) % 256) as u8,
                ((x * x + 3 * y) % 256) as u8,
                (((x ^ y) * 5) % 256) as u8,
            ])
        })
    }

    /// Position-weighted checksum, mirrored in the Python that made the references.
    fn checksum(img: &RgbImage) -> u64 {
        img.as_raw()
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u64 % 1_000_003 + 1) * u64::from(v))
            .sum()
    }

    #[test]
    fn preprocess_resize_is_bit_exact_with_pillow() {
        // (w, h, checksum, first pixel, last pixel) from Pillow 13:
        // Image.fromarray(pattern).resize((w, h), Image.BILINEAR)
        type Case = (u32, u32, u64, [u8; 3], [u8; 3]);
        let cases: [Case; 5] = [
            (31, 20, 211_619_801, [26, 7, 8], [146, 160, 215]),
            (256, 161, 934_484_042_017, [0, 0, 0], [172, 180, 204]),
            (97, 20, 2_071_563_424, [17, 4, 6], [155, 176, 198]),
            (40, 61, 3_276_138_465, [7, 2, 5], [165, 178, 226]),
            (400, 251, 5_544_970_738_330, [0, 0, 0], [172, 180, 204]),
        ];
        let src = pattern();
        for (w, h, sum, first, last) in cases {
            let out = pillow_resize_bilinear(&src, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert_eq!(out.get_pixel(0, 0).0, first, "{w}x{h} first pixel");
            assert_eq!(out.get_pixel(w - 1, h - 1).0, last, "{w}x{h} last pixel");
            assert_eq!(checksum(&out), sum, "{w}x{h} checksum");
        }
    }

    #[test]
    fn preprocess_fixture_parity() {
        let fixture = fixtures_dir().join("preprocess.safetensors");
        let bytes = std::fs::read(&fixture)
            .unwrap_or_else(|e| panic!("{}: {e} (set MTPATH_FIXTURES)", fixture.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse fixture");
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
        let files: Vec<String> = serde_json::from_str(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("files"))
                .expect("metadata key `files`"),
        )
        .expect("`files` is a JSON list");
        assert_eq!(files.len(), 7);

        let cfg = PreprocessConfig::default();
        eprintln!(
            "{:<58} {:>12} {:>12} {:>8}",
            "image", "max|diff|", "mean|diff|", "n>1e-5"
        );
        let mut failures = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let view = st.tensor(&format!("image{i}")).expect("fixture tensor");
            assert_eq!(view.shape(), &[3, 224, 224]);
            let expected: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let path = data_dir().join(file);
            let got = preprocess_file(&path, &cfg).expect("preprocess fixture image");
            assert_eq!(got.len(), expected.len());
            let diffs: Vec<f32> = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .collect();
            let max = diffs.iter().cloned().fold(0.0f32, f32::max);
            let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
            let n_off = diffs.iter().filter(|&&d| d > 1e-5).count();
            eprintln!("{file:<58} {max:>12.3e} {mean:>12.3e} {n_off:>8}");
            // PNG, TIFF and baseline JPEG decoding and everything after decoding are
            // bit-exact with Pillow (the decoders and the resize, crop and normalisation are
            // checked on their own), so PNG and TIFF match exactly. The two JPEGs decode to
            // exactly what Pillow 13.0.0 / libjpeg-turbo 3.2.0 gives (module `jpeg`), and our
            // output equals that Pillow's transform bit for bit; the fixture was made with
            // another Pillow build, whose libjpeg-turbo differs by one level on a few decoded
            // pixels, which leaves 338 and 151 values one level (1/255/std = 0.0175) off.
            // Bounded here at one level and a mean of 1e-4 (was 0.075 / 0.008 with zune-jpeg).
            let is_jpeg = file.ends_with(".jpg") || file.ends_with(".jpeg");
            let (max_tol, mean_tol) = if is_jpeg {
                (0.0176, 1e-4)
            } else {
                (1e-6, 1e-7)
            };
            if max > max_tol || mean > mean_tol {
                failures.push(format!(
                    "{file}: max |diff| {max} (allowed {max_tol}), mean {mean} (allowed {mean_tol})"
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn preprocess_resized_size_follows_torchvision() {
        assert_eq!(resized_size(417, 312, 256), (342, 256));
        assert_eq!(resized_size(366, 369, 256), (256, 258));
        assert_eq!(resized_size(50, 50, 256), (256, 256));
        assert_eq!(resized_size(30, 50, 256), (256, 426));
        assert_eq!(resized_size(256, 300, 256), (256, 300));
        // Shorter side already right: returned unchanged.
        let img = RgbImage::from_fn(256, 300, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(resize_shorter_side(&img, 256).unwrap(), img);
        assert!(resize_shorter_side(&img, 0).is_err());
    }

    #[test]
    fn preprocess_center_crop_rounds_half_to_even() {
        assert_eq!(
            (0..8).map(half_round_even).collect::<Vec<_>>(),
            // round(d / 2) for d = 0..7: 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5
            vec![0, 0, 1, 2, 2, 2, 3, 4]
        );
        // 7 wide, 6 high, crop 4: left = round(1.5) = 2, top = round(1.0) = 1.
        let img = RgbImage::from_fn(7, 6, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = center_crop(&img, 4).unwrap();
        assert_eq!(c.get_pixel(0, 0).0, [2, 1, 0]);
        assert_eq!(c.get_pixel(3, 3).0, [5, 4, 0]);
        // 5 wide: left = round(0.5) = 0.
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        assert_eq!(center_crop(&img, 4).unwrap().get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn preprocess_center_crop_pads_small_images_with_zeros() {
        // 2 wide, 5 high, crop 5: pad left (5-2)//2 = 1, right 2; no vertical padding.
        let img = RgbImage::from_fn(2, 5, |x, y| image::Rgb([10 + x as u8, 20 + y as u8, 99]));
        let c = center_crop(&img, 5).unwrap();
        for y in 0..5 {
            assert_eq!(c.get_pixel(0, y).0, [0, 0, 0]);
            assert_eq!(c.get_pixel(1, y).0, [10, 20 + y as u8, 99]);
            assert_eq!(c.get_pixel(2, y).0, [11, 20 + y as u8, 99]);
            assert_eq!(c.get_pixel(3, y).0, [0, 0, 0]);
            assert_eq!(c.get_pixel(4, y).0, [0, 0, 0]);
        }
        // 3 wide, 8 high, crop 4: padded to 4x8 (left 0, right 1), then top = round(2) = 2.
        let img = RgbImage::from_fn(3, 8, |x, y| image::Rgb([x as u8 + 1, y as u8, 0]));
        let c = center_crop(&img, 4).unwrap();
        assert_eq!(c.get_pixel(0, 0).0, [1, 2, 0]);
        assert_eq!(c.get_pixel(2, 3).0, [3, 5, 0]);
        assert_eq!(c.get_pixel(3, 3).0, [0, 0, 0]);
        assert!(center_crop(&img, 0).is_err());
    }

    #[test]
    fn preprocess_normalize_matches_torch_formula() {
        let img = RgbImage::from_raw(2, 1, vec![0, 128, 255, 10, 20, 30]).unwrap();
        let v = normalize_chw(&img, IMAGENET_MEAN, IMAGENET_STD);
        assert_eq!(v.len(), 6);
        let f =
            |p: u8, c: usize| (f32::from(p) * (1.0 / 255.0) - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert_eq!(
            v,
            vec![f(0, 0), f(10, 0), f(128, 1), f(20, 1), f(255, 2), f(30, 2)]
        );
        assert!((v[0] - (-0.485 / 0.229)).abs() < 1e-6);
    }

    #[test]
    fn preprocess_config_validation() {
        assert_eq!(
            PreprocessConfig::default(),
            PreprocessConfig::imagenet(256, 224)
        );
        assert!(PreprocessConfig::default().validate().is_ok());
        assert!(PreprocessConfig::imagenet(224, 256).validate().is_err());
        assert!(PreprocessConfig::imagenet(0, 0).validate().is_err());
        let mut cfg = PreprocessConfig::default();
        cfg.std[1] = 0.0;
        assert!(cfg.validate().is_err());
        cfg.std[1] = f32::NAN;
        assert!(cfg.validate().is_err());
        let img = RgbImage::new(10, 10);
        assert!(preprocess_rgb(&img, &PreprocessConfig::imagenet(8, 9)).is_err());
    }

    #[test]
    fn preprocess_tiny_and_non_square_images_are_upscaled() {
        let cfg = PreprocessConfig::default();
        for (w, h) in [(50, 50), (50, 30), (7, 300), (1, 1)] {
            let img =
                RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 3) as u8, 128]));
            let v = preprocess_rgb(&img, &cfg).unwrap();
            assert_eq!(v.len(), 3 * 224 * 224);
            assert!(v.iter().all(|x| x.is_finite()));
        }
        // A flat image stays flat through resize and crop.
        let flat = RgbImage::from_pixel(13, 40, image::Rgb([200, 100, 50]));
        let v = preprocess_rgb(&flat, &cfg).unwrap();
        let plane = 224 * 224;
        for (c, p) in [200u8, 100, 50].into_iter().enumerate() {
            let want = (f32::from(p) * (1.0 / 255.0) - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            assert!(v[c * plane..(c + 1) * plane].iter().all(|&x| x == want));
        }
    }

    #[test]
    fn preprocess_decodes_grayscale_png() {
        let png = png_bytes(3, 1, &[0, 77, 255], ExtendedColorType::L8);
        let img = decode_image(&png).unwrap();
        assert_eq!(img.as_raw(), &[0, 0, 0, 77, 77, 77, 255, 255, 255]);
    }

    #[test]
    fn preprocess_decodes_16bit_gray_png_scaled_to_8bit() {
        let png = png_bytes(
            4,
            1,
            &u16_ne(&[0, 257 * 100, 65535, 257 * 7 + 200]),
            ExtendedColorType::L16,
        );
        let img = decode_image(&png).unwrap();
        assert_eq!(
            img.as_raw(),
            &[0, 0, 0, 100, 100, 100, 255, 255, 255, 8, 8, 8]
        );
    }

    #[test]
    fn preprocess_decodes_16bit_rgb_png_and_tiff() {
        let px = u16_ne(&[65535, 0, 257 * 50, 257 * 200, 257 * 3 + 100, 257 * 3 + 150]);
        let want = [255u8, 0, 50, 200, 3, 4];
        let png = png_bytes(2, 1, &px, ExtendedColorType::Rgb16);
        assert_eq!(decode_image(&png).unwrap().as_raw(), &want);
        let tif = tiff_bytes(2, 1, &px, ExtendedColorType::Rgb16);
        assert_eq!(decode_image(&tif).unwrap().as_raw(), &want);
        // 16-bit RGBA TIFF: alpha dropped.
        let px = u16_ne(&[257 * 9, 257 * 8, 257 * 7, 0]);
        let tif = tiff_bytes(1, 1, &px, ExtendedColorType::Rgba16);
        assert_eq!(decode_image(&tif).unwrap().as_raw(), &[9, 8, 7]);
    }

    #[test]
    fn preprocess_decodes_8bit_tiff_variants() {
        let tif = tiff_bytes(2, 1, &[1, 2, 3, 4, 5, 6], ExtendedColorType::Rgb8);
        assert_eq!(decode_image(&tif).unwrap().as_raw(), &[1, 2, 3, 4, 5, 6]);
        let tif = tiff_bytes(2, 1, &[9, 250], ExtendedColorType::L8);
        assert_eq!(
            decode_image(&tif).unwrap().as_raw(),
            &[9, 9, 9, 250, 250, 250]
        );
        let tif = tiff_bytes(1, 1, &[1, 2, 3, 0], ExtendedColorType::Rgba8);
        assert_eq!(decode_image(&tif).unwrap().as_raw(), &[1, 2, 3]);
    }

    #[test]
    fn preprocess_drops_alpha_without_compositing() {
        // PIL's convert("RGB") keeps the colour of fully transparent pixels.
        let png = png_bytes(
            2,
            1,
            &[10, 20, 30, 0, 40, 50, 60, 128],
            ExtendedColorType::Rgba8,
        );
        assert_eq!(
            decode_image(&png).unwrap().as_raw(),
            &[10, 20, 30, 40, 50, 60]
        );
        let png = png_bytes(1, 1, &[90, 0], ExtendedColorType::La8);
        assert_eq!(decode_image(&png).unwrap().as_raw(), &[90, 90, 90]);
    }

    #[test]
    fn preprocess_decodes_palette_png() {
        // 4x2 palette image with a transparent index (made with Pillow); expected values are
        // Pillow's convert("RGB").
        let img = load_image(&test_image("palette.png")).unwrap();
        let want: [[u8; 3]; 8] = [
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [12, 34, 56],
            [12, 34, 56],
            [0, 0, 255],
            [0, 255, 0],
            [255, 0, 0],
        ];
        assert_eq!(img.dimensions(), (4, 2));
        assert_eq!(img.as_raw(), &want.concat());
    }

    #[test]
    fn preprocess_decodes_cmyk_jpeg_like_pillow() {
        // 16x8 CMYK JPEG written by Pillow (Adobe marker, inverted samples): left half
        // CMYK (10, 200, 60, 30), right half (180, 20, 90, 100). Pillow's convert("RGB") gives
        // (216, 49, 172) and (46, 143, 100).
        let img = load_image(&test_image("cmyk.jpg")).unwrap();
        assert_eq!(img.dimensions(), (16, 8));
        for y in 0..8 {
            for x in 0..16 {
                let want = if x < 8 {
                    [216, 49, 172]
                } else {
                    [46, 143, 100]
                };
                assert_eq!(img.get_pixel(x, y).0, want, "pixel ({x}, {y})");
            }
        }
    }

    fn err_msg<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn preprocess_rejects_empty_and_garbage_bytes() {
        let m = err_msg(decode_image(&[]));
        assert!(m.contains("empty"), "{m}");
        let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        let m = err_msg(decode_image(&garbage));
        assert!(m.contains("not a recognised image"), "{m}");
        let m = err_msg(preprocess_bytes(
            b"GIF89a\x01\x00\x01\x00",
            &PreprocessConfig::default(),
        ));
        assert!(m.contains("unsupported image format"), "{m}");
    }

    #[test]
    fn preprocess_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("mtpath-preprocess-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = PreprocessConfig::default();

        let missing = dir.join("does-not-exist.png");
        let m = err_msg(preprocess_file(&missing, &cfg));
        assert!(
            m.contains("does-not-exist.png") && m.contains("No such file"),
            "{m}"
        );

        let empty = dir.join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let m = err_msg(load_image(&empty));
        assert!(m.contains("empty.jpg") && m.contains("empty data"), "{m}");

        let text = dir.join("notes.png");
        std::fs::write(
            &text,
            b"this is plainly not an image, whatever its name says",
        )
        .unwrap();
        let m = err_msg(preprocess_file(&text, &cfg));
        assert!(
            m.contains("notes.png") && m.contains("not a recognised image"),
            "{m}"
        );

        let real = std::fs::read(test_image("cmyk.jpg")).unwrap();
        let truncated = dir.join("truncated.jpg");
        std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
        let m = err_msg(load_image(&truncated));
        assert!(
            m.contains("truncated.jpg") && m.contains("truncated"),
            "{m}"
        );

        let png = png_bytes(8, 8, &[100; 8 * 8 * 3], ExtendedColorType::Rgb8);
        let cut = dir.join("cut.png");
        std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
        let m = err_msg(load_image(&cut));
        assert!(m.contains("cut.png") && m.contains("PNG"), "{m}");

        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn preprocess_rejects_truncated_real_jpeg() {
        let path = data_dir().join("lymphoma/images/fl/fl_113.jpg");
        let Ok(real) = std::fs::read(&path) else {
            eprintln!("skipping: {} not found (set MTPATH_DATA)", path.display());
            return;
        };
        assert!(decode_image(&real).is_ok());
        let m = err_msg(decode_image(&real[..real.len() / 2]));
        assert!(m.contains("truncated"), "{m}");
        // Data after the end marker is tolerated, as in PIL.
        let mut padded = real.clone();
        padded.extend_from_slice(&[0u8; 4096]);
        assert_eq!(decode_image(&padded).unwrap(), decode_image(&real).unwrap());
    }

    #[test]
    fn preprocess_rejects_absurd_sizes() {
        // A real (highly compressible) PNG one pixel wider than allowed.
        let w = MAX_IMAGE_SIDE + 1;
        let png = png_bytes(w, 1, &vec![0u8; w as usize], ExtendedColorType::L8);
        let m = err_msg(decode_image(&png));
        assert!(m.contains("too large"), "{m}");
        // Extreme aspect ratios would blow up on resize.
        let strip = RgbImage::new(30_000, 1);
        let m = err_msg(resize_shorter_side(&strip, 256));
        assert!(m.contains("MiB"), "{m}");
    }
}
