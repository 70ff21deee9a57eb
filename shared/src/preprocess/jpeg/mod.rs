//! A baseline JPEG decoder that is bit-exact with libjpeg-turbo's default decompression, which
//! is what Pillow's `Image.open(f).convert("RGB")` runs.
//!
//! The settings reproduced are libjpeg's defaults, which Pillow keeps (it only changes them in
//! draft mode): `dct_method = JDCT_ISLOW`, `do_fancy_upsampling = TRUE` (so the merged
//! upsampler of `jdmerge.c` is never used), no IDCT scaling, and `jpeg_color_space` guessed as
//! in `jdapimin.c` (JFIF or component ids 1, 2, 3 or anything else but `R G B` → YCbCr).
//! Ported exactly, in integer arithmetic:
//!
//! * Huffman decoding of sequential (SOF0 / SOF1) scans, interleaved or not, several scans per
//!   frame, restart markers (`jdhuff.c`); coefficients are stored as `JCOEF` (`i16`);
//! * the accurate integer IDCT `jpeg_idct_islow` (`jidctint.c`: `CONST_BITS` 13, `PASS1_BITS`
//!   2, `DESCALE` rounding, the post-IDCT range-limit table indexed with `& RANGE_MASK`);
//! * fancy (triangle-filter) chroma upsampling for 2x1, 1x2 and 2x2 subsampling
//!   (`jdsample.c`: `h2v1_fancy_upsample`, `h1v2_fancy_upsample`, `h2v2_fancy_upsample`,
//!   with the plain replicating upsamplers when the subsampled width is at most 2), with the
//!   context rows replicated at the top and bottom edges as `jdmainct.c` does;
//! * YCbCr → RGB with the 16-bit fixed-point tables of `jdcolor.c`; RGB-coded streams (Adobe
//!   transform 0, ids `R G B`, or forced by the caller as libtiff does for Aperio's tiles)
//!   pass through unconverted; CMYK and YCCK as Pillow converts them.
//!
//! Anything else (progressive, lossless, arithmetic coding, 12-bit,
//! other sampling ratios, files without Huffman tables, oversized images) is reported as
//! [`JpegError::Unsupported`], and the caller falls back to the general decoder. Malformed
//! data gives [`JpegError::Corrupt`]; no input makes this module panic.

use image::RgbImage;

use color::{output, Coding};
use frame::{corrupt, unsupported, Component, Frame, Res, NATURAL_ORDER};
use huffman::{extend, find_marker, BitReader, Huffman};

mod color;
mod frame;
mod huffman;
mod idct;
#[cfg(test)]
mod tests;

pub(crate) use frame::JpegError;

/// Limits applied before allocating (the caller's general decoder reports them properly).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_side: u32,
    pub max_bytes: u64,
}

fn be16(data: &[u8], pos: usize) -> Res<usize> {
    match (data.get(pos), data.get(pos + 1)) {
        (Some(&a), Some(&b)) => Ok(usize::from(a) << 8 | usize::from(b)),
        _ => corrupt("unexpected end of data in a marker segment"),
    }
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// How three components become RGB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColourTransform {
    /// As the stream says (`jdapimin.c`: JFIF, Adobe transform, component ids `R G B`).
    FromStream,
    /// No transform: the components are R, G and B, whatever the stream says (libtiff's
    /// JPEG codec for PhotometricInterpretation RGB, which Aperio's tiles rely on).
    Raw,
    /// YCbCr → RGB, whatever the stream says (libtiff with PhotometricInterpretation YCbCr).
    YCbCr,
}

/// Decode `bytes` (a complete JPEG file) to 8-bit RGB like Pillow with libjpeg-turbo.
pub(crate) fn decode(bytes: &[u8], limits: Limits) -> Res<RgbImage> {
    decode_as(bytes, limits, ColourTransform::FromStream)
}

/// [`decode`] with the colour transform of three-component images chosen by the caller.
pub(crate) fn decode_as(bytes: &[u8], limits: Limits, transform: ColourTransform) -> Res<RgbImage> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return corrupt("not a JPEG file (no start-of-image marker)");
    }
    let mut pos = 2;
    let mut qt: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut restart_interval = 0usize;
    let mut frame: Option<Frame> = None;
    let mut jfif = false;
    let mut adobe_transform: Option<u8> = None;
    let mut scans = 0usize;

    loop {
        let Some((marker, after)) = find_marker(bytes, pos) else {
            if scans > 0 {
                break; // no end marker after the data: libjpeg pads, so do we
            }
            return corrupt("no image data before the end of the file");
        };
        pos = after;
        match marker {
            0xD9 => break,
            0xD8 => return corrupt("unexpected start-of-image marker"),
            0x01 | 0xD0..=0xD7 => continue, // TEM, stray RSTn: no payload, ignored
            _ => {}
        }
        let len = be16(bytes, pos)?;
        if len < 2 || pos + len > bytes.len() {
            return corrupt("bad marker segment length");
        }
        let seg = &bytes[pos + 2..pos + len];
        let seg_end = pos + len;
        match marker {
            0xC0 | 0xC1 => {
                if frame.is_some() {
                    return corrupt("more than one frame header");
                }
                frame = Some(parse_frame(seg, limits, bytes.len() - seg_end)?);
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return unsupported(format!("JPEG process SOF{}", marker - 0xC0));
            }
            0xCC => return unsupported("arithmetic coding"),
            0xC4 => parse_dht(seg, &mut dc_tables, &mut ac_tables)?,
            0xDB => parse_dqt(seg, &mut qt)?,
            0xDD => {
                if seg.len() < 2 {
                    return corrupt("bad restart interval segment");
                }
                restart_interval = usize::from(seg[0]) << 8 | usize::from(seg[1]);
            }
            0xE0 if seg.len() >= 5 && &seg[..5] == b"JFIF\0" => jfif = true,
            0xEE if seg.len() >= 12 && &seg[..5] == b"Adobe" => adobe_transform = Some(seg[11]),
            0xDC => return unsupported("DNL marker"),
            0xDA => {
                let Some(fr) = frame.as_mut() else {
                    return corrupt("scan before the frame header");
                };
                let data_start = seg_end;
                let next = decode_scan(
                    bytes,
                    seg,
                    data_start,
                    fr,
                    &qt,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                )?;
                scans += 1;
                pos = next;
                continue;
            }
            _ => {} // APPn, COM, others: skipped
        }
        pos = seg_end;
    }

    let Some(fr) = frame else {
        return corrupt("no frame header");
    };
    if scans == 0 {
        return corrupt("no scan");
    }
    match fr.comps.len() {
        1 => {}
        3 => {
            // jdapimin.c default_decompress_parms
            let ids: Vec<u8> = fr.comps.iter().map(|c| c.id).collect();
            let rgb = match transform {
                ColourTransform::Raw => true,
                ColourTransform::YCbCr => false,
                ColourTransform::FromStream if jfif => false,
                ColourTransform::FromStream => match adobe_transform {
                    Some(t) => t != 1,
                    None => ids == [82, 71, 66],
                },
            };
            if rgb {
                // jdcolor.c rgb_rgb_convert: the (upsampled) components as they are.
                return Ok(output(&fr, Coding::Rgb));
            }
        }
        4 => {
            // jdapimin.c default_decompress_parms: Adobe transform 0 is CMYK, any other YCCK;
            // without an Adobe marker, plain CMYK.
            let ycck = adobe_transform.is_some_and(|t| t != 0);
            return Ok(output(&fr, if ycck { Coding::Ycck } else { Coding::Cmyk }));
        }
        n => return unsupported(format!("{n}-component JPEG")),
    }
    Ok(output(
        &fr,
        if fr.comps.len() == 1 {
            Coding::Gray
        } else {
            Coding::YCbCr
        },
    ))
}

/// Parse a frame header and allocate its coefficient buffers. `data_len` is what the file
/// holds after the header: a frame needs at least one scan, and every block of a scan takes
/// at least two bits (a DC and an AC code), so a frame whose smallest component has more than
/// `4 * data_len` blocks cannot be complete, and is rejected before anything is allocated
/// (a few corrupted header bytes must not cost hundreds of megabytes).
fn parse_frame(seg: &[u8], limits: Limits, data_len: usize) -> Res<Frame> {
    if seg.len() < 6 {
        return corrupt("short frame header");
    }
    if seg[0] != 8 {
        return unsupported(format!("{}-bit samples", seg[0]));
    }
    let height = usize::from(seg[1]) << 8 | usize::from(seg[2]);
    let width = usize::from(seg[3]) << 8 | usize::from(seg[4]);
    let n = usize::from(seg[5]);
    if height == 0 || width == 0 {
        return unsupported("zero-sized or DNL-defined frame");
    }
    if width > limits.max_side as usize || height > limits.max_side as usize {
        return unsupported("image too large");
    }
    if n == 0 || seg.len() < 6 + 3 * n {
        return corrupt("bad frame header");
    }
    if n != 1 && n != 3 && n != 4 {
        return unsupported(format!("{n}-component JPEG"));
    }
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return corrupt("bad sampling factors");
        }
        if c[2] > 3 {
            return corrupt("bad quantisation table index");
        }
        comps.push(Component {
            id: c[0],
            h,
            v,
            tq: usize::from(c[2]),
            quant: None,
            bw: 0,
            bh: 0,
            cbw: 0,
            cbh: 0,
            width: 0,
            height: 0,
            coefs: Vec::new(),
        });
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    if n == 1 {
        // A lone component is coded block by block whatever its sampling factors.
        let c = &mut comps[0];
        c.h = 1;
        c.v = 1;
    }
    let (hmax, vmax) = if n == 1 { (1, 1) } else { (hmax, vmax) };
    for c in &comps {
        // Only the ratios jdsample.c handles with its dedicated (fancy) upsamplers.
        if hmax % c.h != 0 || vmax % c.v != 0 || hmax / c.h > 2 || vmax / c.v > 2 {
            return unsupported("unusual sampling factors");
        }
    }
    let min_blocks = comps
        .iter()
        .map(|c| {
            ceil_div(ceil_div(width * c.h, hmax), 8) * ceil_div(ceil_div(height * c.v, vmax), 8)
        })
        .min()
        .unwrap_or(0);
    if min_blocks > data_len.saturating_mul(4) {
        return corrupt(format!(
            "the frame header declares {width}x{height} pixels, more than the {data_len} bytes \
             after it can encode (truncated or corrupt header)"
        ));
    }
    let mcux = ceil_div(width, 8 * hmax);
    let mcuy = ceil_div(height, 8 * vmax);
    let mut bytes_needed: u64 = (width * height * 3) as u64;
    for c in &mut comps {
        c.bw = mcux * c.h;
        c.bh = mcuy * c.v;
        c.width = ceil_div(width * c.h, hmax);
        c.height = ceil_div(height * c.v, vmax);
        c.cbw = ceil_div(c.width, 8);
        c.cbh = ceil_div(c.height, 8);
        // coefficients (2 bytes), samples, upsampled plane
        bytes_needed += (c.bw * c.bh * 64 * 3) as u64 + (width * height) as u64;
    }
    if bytes_needed > limits.max_bytes {
        return unsupported("image too large");
    }
    for c in &mut comps {
        c.coefs = vec![0i16; c.bw * c.bh * 64];
    }
    Ok(Frame {
        width,
        height,
        hmax,
        vmax,
        mcux,
        mcuy,
        comps,
    })
}

fn parse_dht(seg: &[u8], dc: &mut [Option<Huffman>; 4], ac: &mut [Option<Huffman>; 4]) -> Res<()> {
    let mut p = 0;
    while p < seg.len() {
        if p + 17 > seg.len() {
            return corrupt("short Huffman table segment");
        }
        let tc = seg[p] >> 4;
        let th = usize::from(seg[p] & 15);
        if tc > 1 || th > 3 {
            return corrupt("bad Huffman table class or index");
        }
        let mut counts = [0u8; 16];
        counts.copy_from_slice(&seg[p + 1..p + 17]);
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        p += 17;
        if total > 256 || p + total > seg.len() {
            return corrupt("bad Huffman table");
        }
        let t = Huffman::new(&counts, &seg[p..p + total])?;
        p += total;
        if tc == 0 {
            dc[th] = Some(t);
        } else {
            ac[th] = Some(t);
        }
    }
    Ok(())
}

fn parse_dqt(seg: &[u8], qt: &mut [Option<[u16; 64]>; 4]) -> Res<()> {
    let mut p = 0;
    while p < seg.len() {
        let pq = seg[p] >> 4;
        let tq = usize::from(seg[p] & 15);
        if pq > 1 || tq > 3 {
            return corrupt("bad quantisation table");
        }
        p += 1;
        let size = if pq == 0 { 64 } else { 128 };
        if p + size > seg.len() {
            return corrupt("short quantisation table");
        }
        let mut t = [0u16; 64];
        for (k, &nat) in NATURAL_ORDER.iter().take(64).enumerate() {
            t[nat] = if pq == 0 {
                u16::from(seg[p + k])
            } else {
                u16::from(seg[p + 2 * k]) << 8 | u16::from(seg[p + 2 * k + 1])
            };
        }
        p += size;
        qt[tq] = Some(t);
    }
    Ok(())
}

/// Decode one sequential scan; returns the position of the marker that follows it.
#[allow(clippy::too_many_arguments)]
fn decode_scan(
    bytes: &[u8],
    seg: &[u8],
    data_start: usize,
    fr: &mut Frame,
    qt: &[Option<[u16; 64]>; 4],
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
) -> Res<usize> {
    let ns = usize::from(*seg.first().unwrap_or(&0));
    if ns == 0 || ns > 4 || seg.len() < 1 + 2 * ns + 3 {
        return corrupt("bad scan header");
    }
    let (ss, se, ahl) = (seg[1 + 2 * ns], seg[2 + 2 * ns], seg[3 + 2 * ns]);
    if ss != 0 || se != 63 || ahl != 0 {
        return corrupt("bad spectral selection in a sequential scan");
    }
    // (component index, dc table, ac table)
    let mut sc: Vec<(usize, &Huffman, &Huffman)> = Vec::with_capacity(ns);
    for i in 0..ns {
        let id = seg[1 + 2 * i];
        let tables = seg[2 + 2 * i];
        let Some(ci) = fr.comps.iter().position(|c| c.id == id) else {
            return corrupt("scan names an unknown component");
        };
        if sc.iter().any(|s| s.0 == ci) {
            return corrupt("component repeated in a scan");
        }
        let (td, ta) = (usize::from(tables >> 4), usize::from(tables & 15));
        if td > 3 || ta > 3 {
            return corrupt("bad Huffman table index");
        }
        let (Some(dc), Some(ac)) = (dc_tables[td].as_ref(), ac_tables[ta].as_ref()) else {
            // libjpeg substitutes the standard tables (Motion-JPEG); we leave that to the
            // general decoder.
            return unsupported("missing Huffman table");
        };
        if dc.values.iter().any(|&v| v > 15) {
            return corrupt("bad DC Huffman table");
        }
        let comp = &mut fr.comps[ci];
        if comp.quant.is_none() {
            match qt[comp.tq] {
                Some(q) => comp.quant = Some(q),
                None => return corrupt("missing quantisation table"),
            }
        }
        sc.push((ci, dc, ac));
    }
    if ns > 1 {
        let blocks: usize = sc.iter().map(|s| fr.comps[s.0].h * fr.comps[s.0].v).sum();
        if blocks > 10 {
            return corrupt("too many blocks in an MCU");
        }
    }

    let mut r = BitReader::new(bytes, data_start);
    let mut pred = [0i32; 4];
    let (mcus_x, mcus_y) = if ns == 1 {
        let c = &fr.comps[sc[0].0];
        (c.cbw, c.cbh)
    } else {
        (fr.mcux, fr.mcuy)
    };
    let total = mcus_x * mcus_y;
    let mut expected_rst = 0u8;
    let mut block = [0i16; 64];
    for m in 0..total {
        if r.overrun() {
            return corrupt("entropy-coded data ends early (truncated or damaged scan)");
        }
        if restart_interval > 0 && m > 0 && m % restart_interval == 0 {
            match r.next_marker() {
                Some(code) if code == 0xD0 + expected_rst => {}
                _ => return corrupt("missing or out-of-order restart marker"),
            }
            expected_rst = (expected_rst + 1) & 7;
            pred = [0; 4];
        }
        let (mx, my) = (m % mcus_x, m / mcus_x);
        for (si, &(ci, dc, ac)) in sc.iter().enumerate() {
            let (h, v) = if ns == 1 {
                (1, 1)
            } else {
                (fr.comps[ci].h, fr.comps[ci].v)
            };
            for by in 0..v {
                for bx in 0..h {
                    decode_block(&mut r, dc, ac, &mut pred[si], &mut block)?;
                    let comp = &mut fr.comps[ci];
                    let (x, y) = (mx * h + bx, my * v + by);
                    let off = (y * comp.bw + x) * 64;
                    if let Some(dst) = comp.coefs.get_mut(off..off + 64) {
                        dst.copy_from_slice(&block);
                    }
                }
            }
        }
    }
    // Past the scan's data: skip to the next marker (libjpeg skips extraneous bytes too).
    if r.overrun() {
        return corrupt("entropy-coded data ends early (truncated or damaged scan)");
    }
    // The reader only ever buffers entropy-coded bytes, so `r.pos` is not past the marker.
    let mut p = r.pos;
    loop {
        match find_marker(bytes, p) {
            Some((code, after)) if (0xD0..=0xD7).contains(&code) => p = after,
            Some((_, after)) => return Ok(after - 2),
            None => return Ok(bytes.len()),
        }
    }
}

#[inline]
fn decode_block(
    r: &mut BitReader,
    dc: &Huffman,
    ac: &Huffman,
    pred: &mut i32,
    block: &mut [i16; 64],
) -> Res<()> {
    *block = [0; 64];
    let s = u32::from(r.decode(dc)?);
    let diff = extend(r.bits(s), s);
    let Some(v) = pred.checked_add(diff) else {
        return corrupt("DC coefficient out of range");
    };
    *pred = v;
    block[0] = v as i16; // (JCOEF) cast, as libjpeg
    let mut k = 1usize;
    while k < 64 {
        let rs = r.decode(ac)?;
        let (run, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += run;
            let val = extend(r.bits(s), s);
            block[NATURAL_ORDER[k.min(79)]] = val as i16;
        } else {
            if run != 15 {
                break;
            }
            k += 15;
        }
        k += 1;
    }
    Ok(())
}
