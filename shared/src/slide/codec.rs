//! Decoding one chunk (a tile or a strip) of a page to 8-bit RGB.

use std::io::Read;

use super::tiff::Page;
use crate::preprocess::decode_tiff_jpeg;

/// Largest decoded chunk accepted (256 MiB): a tile larger than this is a corrupt header.
const MAX_CHUNK_BYTES: u64 = 256 << 20;

/// TIFF compression codes and what they are called in messages.
pub(crate) fn compression_name(code: u16) -> String {
    match code {
        1 => "uncompressed".into(),
        5 => "LZW".into(),
        6 => "old-style JPEG".into(),
        7 => "JPEG".into(),
        8 | 32946 => "Deflate".into(),
        32773 => "PackBits".into(),
        33003 | 33005 => "Aperio JPEG 2000".into(),
        34712 => "JPEG 2000".into(),
        34887 => "LERC".into(),
        34925 => "LZMA".into(),
        50000 => "Zstandard".into(),
        50001 => "WebP".into(),
        other => format!("compression code {other}"),
    }
}

/// Whether this reader decodes pages with `page`'s encoding; `Err` says why not.
pub(crate) fn check_supported(page: &Page) -> Result<(), String> {
    match page.compression {
        1 | 5 | 7 | 8 | 32946 | 32773 | 33003 | 33005 | 34712 => {}
        code => {
            return Err(format!(
                "{} tiles are not supported (JPEG, JPEG 2000, LZW, Deflate, PackBits and \
                 uncompressed are); convert the slide, e.g. `vips tiffsave in out.tif --tile \
                 --pyramid --compression jpeg --bigtiff`",
                compression_name(code)
            ))
        }
    }
    if page.bits != 8 || page.sample_format != 1 {
        return Err(format!(
            "{} bits per sample (format {}): only 8-bit unsigned samples are read",
            page.bits, page.sample_format
        ));
    }
    if !matches!(page.compression, 7 | 33003 | 33005 | 34712) {
        if page.planar != 1 && page.samples != 1 {
            return Err("separate colour planes (PlanarConfiguration 2) are not supported".into());
        }
        match (page.photometric, page.samples) {
            (0 | 1, 1..) | (2, 3..) => {}
            (p, s) => {
                return Err(format!(
                    "photometric interpretation {p} with {s} samples per pixel is not \
                     supported (grey and RGB are)"
                ))
            }
        }
        if !matches!(page.predictor, 1 | 2) {
            return Err(format!(
                "predictor {} is not supported (none and horizontal differencing are)",
                page.predictor
            ));
        }
    }
    Ok(())
}

/// Rows of pixels in chunk `index` (strips at the bottom may be short; tiles are whole).
pub(crate) fn chunk_rows(page: &Page, index: usize) -> u32 {
    if page.tiled {
        return page.chunk_h;
    }
    let row0 = index as u32 * page.chunk_h;
    page.chunk_h.min(page.height.saturating_sub(row0))
}

/// Decode chunk `index` of `page` from its stored bytes to RGB8, `chunk_w` × rows × 3.
pub(crate) fn decode_chunk(page: &Page, index: usize, data: &[u8]) -> Result<Vec<u8>, String> {
    let width = page.chunk_w as usize;
    let rows = chunk_rows(page, index) as usize;
    if page.compression == 7 {
        return decode_jpeg_chunk(page, data, width, rows);
    }
    if matches!(page.compression, 33003 | 33005 | 34712) {
        return decode_jpeg2000_chunk(page, data, width, rows);
    }
    let spp = usize::from(page.samples.max(1));
    let expected = width * rows * spp;
    if expected as u64 > MAX_CHUNK_BYTES {
        return Err(format!(
            "a {width}x{rows} chunk is larger than {} MiB",
            MAX_CHUNK_BYTES >> 20
        ));
    }
    let mut raw = match page.compression {
        1 => data.to_vec(),
        5 => weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
            .decode(data)
            .map_err(|e| format!("LZW data is corrupt ({e})"))?,
        8 | 32946 => {
            let mut out = Vec::with_capacity(expected);
            flate2::read::ZlibDecoder::new(data)
                .take(expected as u64)
                .read_to_end(&mut out)
                .map_err(|e| format!("Deflate data is corrupt ({e})"))?;
            out
        }
        32773 => unpack_bits(data, expected)?,
        code => return Err(format!("{} is not supported", compression_name(code))),
    };
    if raw.len() < expected {
        return Err(format!(
            "decodes to {} bytes where a {width}x{rows} chunk needs {expected}: the data is \
             truncated or corrupt",
            raw.len()
        ));
    }
    raw.truncate(expected);
    if page.predictor == 2 {
        for row in raw.chunks_exact_mut(width * spp) {
            for i in spp..row.len() {
                row[i] = row[i].wrapping_add(row[i - spp]);
            }
        }
    }
    Ok(to_rgb(raw, page.photometric, spp))
}

fn to_rgb(raw: Vec<u8>, photometric: u16, spp: usize) -> Vec<u8> {
    match (photometric, spp) {
        (2, 3) => raw,
        (2, _) => raw
            .chunks_exact(spp)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        (0, _) => raw
            .chunks_exact(spp)
            .flat_map(|p| [255 - p[0]; 3])
            .collect(),
        _ => raw.chunks_exact(spp).flat_map(|p| [p[0]; 3]).collect(),
    }
}

/// A JPEG chunk: the page's shared tables (JPEGTables, as Aperio writes them) are spliced in
/// front of the abbreviated stream, and the result goes through the crate's JPEG decoder,
/// which is bit-exact with libjpeg-turbo. The colour transform follows the photometric
/// interpretation, as libtiff's does: RGB means RGB-coded components (Aperio), YCbCr is
/// converted; whatever markers the stream carries.
fn decode_jpeg_chunk(
    page: &Page,
    data: &[u8],
    width: usize,
    rows: usize,
) -> Result<Vec<u8>, String> {
    if data.len() < 4 || data[..2] != [0xFF, 0xD8] {
        return Err("JPEG data does not start with a start-of-image marker".into());
    }
    let spliced;
    let stream = match &page.jpeg_tables {
        Some(tables) if tables.len() > 4 && tables[..2] == [0xFF, 0xD8] => {
            let mut s = Vec::with_capacity(tables.len() + data.len());
            let tables_end = if tables[tables.len() - 2..] == [0xFF, 0xD9] {
                tables.len() - 2
            } else {
                tables.len()
            };
            s.extend_from_slice(&tables[..tables_end]);
            s.extend_from_slice(&data[2..]);
            spliced = s;
            &spliced[..]
        }
        _ => data,
    };
    let img = decode_tiff_jpeg(stream, page.photometric == 2)?;
    let (w, h) = img.dimensions();
    if (w as usize) < width || (h as usize) < rows {
        return Err(format!(
            "JPEG data is {w}x{h} pixels where the chunk is {width}x{rows}"
        ));
    }
    if w as usize == width && h as usize == rows {
        return Ok(img.into_raw());
    }
    let src = img.as_raw();
    let mut out = Vec::with_capacity(width * rows * 3);
    for y in 0..rows {
        let start = y * w as usize * 3;
        out.extend_from_slice(&src[start..start + width * 3]);
    }
    Ok(out)
}

/// A JPEG 2000 chunk (a raw codestream, or JP2), through `hayro-jpeg2000`. Aperio's 33003
/// holds Y, Cb, Cr components without the codestream's own colour transform, converted here
/// as OpenSlide does (full-range BT.601); 33005 and 34712 with Photometric RGB are RGB.
fn decode_jpeg2000_chunk(
    page: &Page,
    data: &[u8],
    width: usize,
    rows: usize,
) -> Result<Vec<u8>, String> {
    use hayro_jpeg2000::{DecodeSettings, DecoderContext, Image};
    let image = Image::new(data, &DecodeSettings::default())
        .map_err(|e| format!("corrupt JPEG 2000 data ({e:?})"))?;
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w < width || h < rows {
        return Err(format!(
            "JPEG 2000 data is {w}x{h} pixels where the chunk is {width}x{rows}"
        ));
    }
    let mut ctx = DecoderContext::default();
    let decoded = image
        .decode(&mut ctx)
        .map_err(|e| format!("corrupt JPEG 2000 data ({e:?})"))?;
    let channels = decoded.components().len();
    let samples = decoded.data_u8();
    if channels == 0 || samples.len() < w * h * channels {
        return Err("JPEG 2000 data decodes to fewer samples than its size".into());
    }
    let ycbcr = page.compression == 33003 || page.photometric == 6;
    let mut out = Vec::with_capacity(width * rows * 3);
    for y in 0..rows {
        for x in 0..width {
            let s = &samples[(y * w + x) * channels..];
            let px = match channels {
                1 | 2 => [s[0]; 3],
                _ if ycbcr => ycbcr_to_rgb(s[0], s[1], s[2]),
                _ => [s[0], s[1], s[2]],
            };
            out.extend_from_slice(&px);
        }
    }
    Ok(out)
}

/// Full-range BT.601 YCbCr to RGB for Aperio's 33003 JPEG 2000 tiles, in OpenSlide's exact
/// arithmetic (its `make-tables.c`): R and B add a rounded chroma term to Y; G adds the
/// floor of two 16-bit fixed-point terms, one carrying the +0.5 of rounding; then clamped.
/// Tiles then equal OpenSlide's `read_region` bit for bit (tested against OpenSlide 4).
pub(crate) fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let t = ycbcr_tables();
    let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
    let c = |v: i32| v.clamp(0, 255) as u8;
    [
        c(y + t.r_cr[cr]),
        c(y + ((t.g_cb[cb] + t.g_cr[cr]) >> 16)),
        c(y + t.b_cb[cb]),
    ]
}

/// OpenSlide's YCbCr → RGB lookup tables.
struct YcbcrTables {
    r_cr: [i32; 256],
    g_cb: [i32; 256],
    g_cr: [i32; 256],
    b_cb: [i32; 256],
}

fn ycbcr_tables() -> &'static YcbcrTables {
    static TABLES: std::sync::OnceLock<YcbcrTables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        // `f64::round` rounds halves away from zero, as C's `round` does.
        let table = |f: &dyn Fn(f64) -> f64| -> [i32; 256] {
            std::array::from_fn(|i| f(i as f64 - 128.0).round() as i32)
        };
        YcbcrTables {
            r_cr: table(&|v| 1.402 * v),
            g_cb: table(&|v| 65536.0 * (0.5 - 0.34414 * v)),
            g_cr: table(&|v| 65536.0 * -0.71414 * v),
            b_cb: table(&|v| 1.772 * v),
        }
    })
}

/// PackBits run-length decoding, up to `expected` bytes.
fn unpack_bits(data: &[u8], expected: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(expected);
    let mut i = 0;
    while i < data.len() && out.len() < expected {
        let n = data[i] as i8;
        i += 1;
        if n >= 0 {
            let len = n as usize + 1;
            let lit = data.get(i..i + len).ok_or("PackBits data is truncated")?;
            out.extend_from_slice(lit);
            i += len;
        } else if n != -128 {
            let b = *data.get(i).ok_or("PackBits data is truncated")?;
            out.extend(std::iter::repeat_n(b, (1 - n as isize) as usize));
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_decodes_the_tiff_specification_example() {
        let packed = [
            0xFEu8, 0xAA, 0x02, 0x80, 0x00, 0x2A, 0xFD, 0xAA, 0x03, 0x80, 0x00, 0x2A, 0x22, 0xF7,
            0xAA,
        ];
        let want = [
            0xAAu8, 0xAA, 0xAA, 0x80, 0x00, 0x2A, 0xAA, 0xAA, 0xAA, 0xAA, 0x80, 0x00, 0x2A, 0x22,
            0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA,
        ];
        assert_eq!(unpack_bits(&packed, want.len()).unwrap(), want);
        assert!(unpack_bits(&[0x05, 1, 2], 10).is_err());
    }
}
