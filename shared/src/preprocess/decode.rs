//! Decoding image bytes to 8-bit RGB with PIL's `convert("RGB")` semantics: baseline JPEGs
//! through our libjpeg-turbo port ([`super::jpeg`]), everything else through the `image` crate.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use super::jpeg;
use crate::{Error, Result};

/// Largest accepted image side, in pixels, when decoding.
pub const MAX_IMAGE_SIDE: u32 = 30_000;

/// Largest allocation, in bytes, that decoding or resizing one image may make (1 GiB).
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;

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
    let bytes = std::fs::read(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
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
        // handles the rest (progressive, 12-bit, arithmetic, ...), and reports oversized images.
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

/// Decode one JPEG-compressed tile of a TIFF with the colour transform its
/// PhotometricInterpretation implies, as libtiff does: `rgb_coded` (Photometric RGB) takes the
/// components as R, G, B; otherwise YCbCr (or grey) is converted as usual. Bit-exact with
/// libjpeg-turbo for baseline streams; other JPEG processes go through the general decoder.
pub(crate) fn decode_tiff_jpeg(
    bytes: &[u8],
    rgb_coded: bool,
) -> std::result::Result<RgbImage, String> {
    let lim = jpeg::Limits {
        max_side: MAX_IMAGE_SIDE,
        max_bytes: MAX_IMAGE_BYTES,
    };
    let transform = if rgb_coded {
        jpeg::ColourTransform::Raw
    } else {
        jpeg::ColourTransform::YCbCr
    };
    match jpeg::decode_as(bytes, lim, transform) {
        Ok(img) => Ok(img),
        Err(jpeg::JpegError::Corrupt(m)) => Err(format!("corrupt JPEG data: {m}")),
        Err(jpeg::JpegError::Unsupported(_)) => decode_inner(bytes),
    }
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
