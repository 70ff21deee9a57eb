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
//! * YCbCr → RGB with the 16-bit fixed-point tables of `jdcolor.c`.
//!
//! Anything else (progressive, lossless, arithmetic coding, 12-bit, RGB / CMYK / YCCK colour,
//! other sampling ratios, files without Huffman tables, oversized images) is reported as
//! [`JpegError::Unsupported`], and the caller falls back to the general decoder. Malformed
//! data gives [`JpegError::Corrupt`]; no input makes this module panic.

use image::RgbImage;

/// Why this decoder did not produce an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JpegError {
    /// Valid JPEG (as far as we know) that this decoder does not handle.
    Unsupported(String),
    /// Malformed data.
    Corrupt(String),
}

type Res<T> = std::result::Result<T, JpegError>;

fn corrupt<T>(msg: impl Into<String>) -> Res<T> {
    Err(JpegError::Corrupt(msg.into()))
}

fn unsupported<T>(msg: impl Into<String>) -> Res<T> {
    Err(JpegError::Unsupported(msg.into()))
}

/// Limits applied before allocating (the caller's general decoder reports them properly).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_side: u32,
    pub max_bytes: u64,
}

/// Zigzag index -> natural (row-major) index, with libjpeg's 16 extra entries of 63 so that a
/// corrupt run length cannot index out of the block.
const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

// ---------------------------------------------------------------------------------------------
// Huffman tables (jdhuff.c: jpeg_make_d_derived_tbl)
// ---------------------------------------------------------------------------------------------

const LOOKAHEAD: u32 = 9;

#[derive(Clone)]
struct Huffman {
    /// Largest code of each length 1..=16 (index = length), -1 if none; index 17 is a sentinel.
    maxcode: [i32; 18],
    /// `values` index of the first code of each length, minus that code.
    valoffset: [i32; 18],
    values: Vec<u8>,
    /// For every `LOOKAHEAD`-bit prefix: `(length << 8) | value`, or 0 if the code is longer.
    lookup: Vec<u16>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Res<Huffman> {
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || total != values.len() {
            return corrupt("bad Huffman table");
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 18];
        let mut lookup = vec![0u16; 1 << LOOKAHEAD];
        let mut code: i32 = 0;
        let mut p: usize = 0;
        for len in 1..=16usize {
            let n = usize::from(counts[len - 1]);
            if n > 0 {
                valoffset[len] = p as i32 - code;
                for _ in 0..n {
                    if len as u32 <= LOOKAHEAD {
                        let shift = LOOKAHEAD - len as u32;
                        let first = (code as usize) << shift;
                        for e in lookup.iter_mut().skip(first).take(1 << shift) {
                            *e = ((len as u16) << 8) | u16::from(values[p]);
                        }
                    }
                    code += 1;
                    p += 1;
                }
                maxcode[len] = code - 1;
            }
            // Codes of this length must fit in `len` bits (libjpeg's JERR_BAD_HUFF_TABLE).
            // (No code may be all ones either, hence `>=`.)
            if code >= (1i32 << len) {
                return corrupt("bad Huffman table");
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Ok(Huffman {
            maxcode,
            valoffset,
            values: values.to_vec(),
            lookup,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Bit reader over entropy-coded data (jdhuff.c: jpeg_fill_bit_buffer)
// ---------------------------------------------------------------------------------------------

struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to read; once a marker is hit, the position of its `FF`.
    pos: usize,
    buf: u64,
    nbits: u32,
    /// A marker (or the end of the data) was reached: further bits read as zeros, as libjpeg
    /// does (with a warning that Pillow ignores).
    marker_hit: bool,
    /// Zero bytes inserted after `marker_hit`.
    padded: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            buf: 0,
            nbits: 0,
            marker_hit: false,
            padded: 0,
        }
    }

    fn fill(&mut self) {
        while self.nbits <= 56 {
            let byte = if self.marker_hit {
                self.padded = self.padded.saturating_add(1);
                0
            } else {
                match self.data.get(self.pos) {
                    None => {
                        self.marker_hit = true;
                        self.padded = self.padded.saturating_add(1);
                        0
                    }
                    Some(&0xFF) => {
                        // Skip fill bytes; FF 00 is a stuffed FF, anything else a marker.
                        let mut p = self.pos + 1;
                        while self.data.get(p) == Some(&0xFF) {
                            p += 1;
                        }
                        if self.data.get(p) == Some(&0) {
                            self.pos = p + 1;
                            0xFF
                        } else {
                            self.pos = p - 1;
                            self.marker_hit = true;
                            self.padded = self.padded.saturating_add(1);
                            0
                        }
                    }
                    Some(&b) => {
                        self.pos += 1;
                        b
                    }
                }
            };
            self.buf |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    #[inline]
    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.fill();
        }
        let v = (self.buf >> (64 - n)) as u32;
        self.buf <<= n;
        self.nbits -= n;
        v
    }

    #[inline]
    fn decode(&mut self, t: &Huffman) -> Res<u8> {
        if self.nbits < 16 {
            self.fill();
        }
        let peek = (self.buf >> 48) as u32;
        let e = t.lookup[(peek >> (16 - LOOKAHEAD)) as usize];
        if e != 0 {
            let len = u32::from(e >> 8);
            self.buf <<= len;
            self.nbits -= len;
            return Ok(e as u8);
        }
        for len in (LOOKAHEAD as usize + 1)..=16 {
            let code = (peek >> (16 - len)) as i32;
            if code <= t.maxcode[len] {
                self.buf <<= len;
                self.nbits -= len as u32;
                let idx = code + t.valoffset[len];
                return match t.values.get(idx as usize) {
                    Some(&v) if idx >= 0 => Ok(v),
                    _ => corrupt("bad Huffman code"),
                };
            }
        }
        corrupt("bad Huffman code")
    }

    /// Whether bits past the end of the entropy-coded data were consumed. libjpeg would go
    /// on with zeros (and Pillow return a damaged image); we call the data corrupt.
    fn overrun(&self) -> bool {
        u64::from(self.padded) * 8 > u64::from(self.nbits)
    }

    /// Drop buffered bits and find the next marker: returns its code and moves past it.
    fn next_marker(&mut self) -> Option<u8> {
        self.buf = 0;
        self.nbits = 0;
        self.marker_hit = false;
        self.padded = 0;
        let (code, after) = find_marker(self.data, self.pos)?;
        self.pos = after;
        Some(code)
    }
}

/// The next marker at or after `pos` (skipping any non-marker bytes): `(code, position after
/// it)`.
fn find_marker(data: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    loop {
        while *data.get(pos)? != 0xFF {
            pos += 1;
        }
        while *data.get(pos)? == 0xFF {
            pos += 1;
        }
        let code = *data.get(pos)?;
        pos += 1;
        if code != 0 {
            return Some((code, pos));
        }
    }
}

#[inline]
fn extend(v: u32, s: u32) -> i32 {
    // HUFF_EXTEND
    let v = v as i32;
    if s == 0 {
        0
    } else if v < (1 << (s - 1)) {
        v + ((-1i32) << s) + 1
    } else {
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Frame
// ---------------------------------------------------------------------------------------------

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Quantisation table latched when the component first appears in a scan.
    quant: Option<[u16; 64]>,
    /// Blocks per row / column in the coefficient buffer (whole MCUs).
    bw: usize,
    bh: usize,
    /// Blocks actually coded in a non-interleaved scan.
    cbw: usize,
    cbh: usize,
    /// `downsampled_width` / `downsampled_height`.
    width: usize,
    height: usize,
    coefs: Vec<i16>,
}

struct Frame {
    width: usize,
    height: usize,
    hmax: usize,
    vmax: usize,
    mcux: usize,
    mcuy: usize,
    comps: Vec<Component>,
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

/// Decode `bytes` (a complete JPEG file) to 8-bit RGB like Pillow with libjpeg-turbo.
pub(crate) fn decode(bytes: &[u8], limits: Limits) -> Res<RgbImage> {
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
                frame = Some(parse_frame(seg, limits)?);
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
            let rgb = if jfif {
                false
            } else if let Some(t) = adobe_transform {
                t != 1
            } else {
                ids == [82, 71, 66]
            };
            if rgb {
                return unsupported("RGB-coded JPEG");
            }
        }
        n => return unsupported(format!("{n}-component JPEG")),
    }
    Ok(output(&fr))
}

fn parse_frame(seg: &[u8], limits: Limits) -> Res<Frame> {
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
    if n != 1 && n != 3 {
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

// ---------------------------------------------------------------------------------------------
// IDCT (jidctint.c: jpeg_idct_islow)
// ---------------------------------------------------------------------------------------------

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

#[inline]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1i64 << (n - 1))) >> n
}

/// The post-IDCT range limit: `range_limit[x & RANGE_MASK]` of jdmaster.c's table, with
/// `range_limit` pointing at `sample_range_limit + CENTERJSAMPLE`.
#[inline]
fn idct_limit(x: i64) -> u8 {
    let i = (x as i32 & 1023) as usize;
    if i < 128 {
        (i + 128) as u8
    } else if i < 512 {
        255
    } else if i < 896 {
        0
    } else {
        (i - 896) as u8
    }
}

/// Odd part shared by both passes: returns (tmp0, tmp1, tmp2, tmp3).
#[inline]
fn odd_part(t0: i64, t1: i64, t2: i64, t3: i64) -> (i64, i64, i64, i64) {
    let mut z1 = t0 + t3;
    let mut z2 = t1 + t2;
    let mut z3 = t0 + t2;
    let mut z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    let mut tmp0 = t0 * FIX_0_298631336;
    let mut tmp1 = t1 * FIX_2_053119869;
    let mut tmp2 = t2 * FIX_3_072711026;
    let mut tmp3 = t3 * FIX_1_501321110;
    z1 *= -FIX_0_899976223;
    z2 *= -FIX_2_562915447;
    z3 *= -FIX_1_961570560;
    z4 *= -FIX_0_390180644;
    z3 += z5;
    z4 += z5;
    tmp0 += z1 + z3;
    tmp1 += z2 + z4;
    tmp2 += z2 + z3;
    tmp3 += z1 + z4;
    (tmp0, tmp1, tmp2, tmp3)
}

fn idct_islow(coef: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let q = |row: usize| i64::from(coef[row * 8 + col]) * i64::from(quant[row * 8 + col]);
        if (1..8).all(|row| coef[row * 8 + col] == 0) {
            let dc = (q(0) << PASS1_BITS) as i32;
            for row in 0..8 {
                ws[row * 8 + col] = dc;
            }
            continue;
        }
        let z2 = q(2);
        let z3 = q(6);
        let z1 = (z2 + z3) * FIX_0_541196100;
        let tmp2 = z1 + z3 * -FIX_1_847759065;
        let tmp3 = z1 + z2 * FIX_0_765366865;
        let z2 = q(0);
        let z3 = q(4);
        let tmp0 = (z2 + z3) << CONST_BITS;
        let tmp1 = (z2 - z3) << CONST_BITS;
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        let (o0, o1, o2, o3) = odd_part(q(7), q(5), q(3), q(1));
        let n = CONST_BITS - PASS1_BITS;
        ws[col] = descale(tmp10 + o3, n) as i32;
        ws[8 + col] = descale(tmp11 + o2, n) as i32;
        ws[16 + col] = descale(tmp12 + o1, n) as i32;
        ws[24 + col] = descale(tmp13 + o0, n) as i32;
        ws[32 + col] = descale(tmp13 - o0, n) as i32;
        ws[40 + col] = descale(tmp12 - o1, n) as i32;
        ws[48 + col] = descale(tmp11 - o2, n) as i32;
        ws[56 + col] = descale(tmp10 - o3, n) as i32;
    }
    for row in 0..8 {
        let w = &ws[row * 8..row * 8 + 8];
        let o = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&x| x == 0) {
            let v = idct_limit(descale(i64::from(w[0]), PASS1_BITS + 3));
            o.fill(v);
            continue;
        }
        let z2 = i64::from(w[2]);
        let z3 = i64::from(w[6]);
        let z1 = (z2 + z3) * FIX_0_541196100;
        let tmp0 = (i64::from(w[0]) + i64::from(w[4])) << CONST_BITS;
        let tmp3 = z1 + z2 * FIX_0_765366865;
        let tmp1 = (i64::from(w[0]) - i64::from(w[4])) << CONST_BITS;
        let tmp2 = z1 + z3 * -FIX_1_847759065;
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        let (o0, o1, o2, o3) = odd_part(
            i64::from(w[7]),
            i64::from(w[5]),
            i64::from(w[3]),
            i64::from(w[1]),
        );
        let n = CONST_BITS + PASS1_BITS + 3;
        o[0] = idct_limit(descale(tmp10 + o3, n));
        o[1] = idct_limit(descale(tmp11 + o2, n));
        o[2] = idct_limit(descale(tmp12 + o1, n));
        o[3] = idct_limit(descale(tmp13 + o0, n));
        o[4] = idct_limit(descale(tmp13 - o0, n));
        o[5] = idct_limit(descale(tmp12 - o1, n));
        o[6] = idct_limit(descale(tmp11 - o2, n));
        o[7] = idct_limit(descale(tmp10 - o3, n));
    }
}

/// IDCT a whole component into a plane of `bw * 8` by `bh * 8` samples.
fn component_samples(c: &Component) -> Vec<u8> {
    let stride = c.bw * 8;
    let mut plane = vec![0u8; stride * c.bh * 8];
    let quant = c.quant.unwrap_or([0; 64]);
    for by in 0..c.bh {
        for bx in 0..c.bw {
            let off = (by * c.bw + bx) * 64;
            let coef = &c.coefs[off..off + 64];
            let start = by * 8 * stride + bx * 8;
            idct_islow(coef, &quant, &mut plane[start..], stride);
        }
    }
    plane
}

// ---------------------------------------------------------------------------------------------
// Upsampling (jdsample.c) and colour conversion (jdcolor.c)
// ---------------------------------------------------------------------------------------------

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

fn output(fr: &Frame) -> RgbImage {
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

#[cfg(test)]
mod tests {
    //! References: CRC-32 of `Image.open(f).convert("RGB").tobytes()` with Pillow 13.0.0 built
    //! against libjpeg-turbo 3.2.0 (`PIL.features.version("libjpeg_turbo")`).
    use super::*;
    use crate::testdata::data_dir;
    use std::path::{Path, PathBuf};

    const LIMITS: Limits = Limits {
        max_side: 30_000,
        max_bytes: 1 << 30,
    };

    fn crc32(data: &[u8]) -> u32 {
        let mut table = [0u32; 256];
        for (i, t) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *t = c;
        }
        let mut crc = !0u32;
        for &b in data {
            crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
        }
        !crc
    }

    fn synthetic(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/jpeg")
            .join(name)
    }

    fn check(path: &Path, w: u32, h: u32, crc: u32) -> std::result::Result<(), String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let img = decode(&bytes, LIMITS).map_err(|e| format!("{}: {e:?}", path.display()))?;
        if img.dimensions() != (w, h) {
            return Err(format!("{}: size {:?}", path.display(), img.dimensions()));
        }
        let got = crc32(img.as_raw());
        if got != crc {
            return Err(format!(
                "{}: crc {got:08x}, Pillow {crc:08x}",
                path.display()
            ));
        }
        Ok(())
    }

    /// Small JPEGs written by Pillow (`tests/data/jpeg/make_jpegs.py`) for the layouts the
    /// data sets lack: grayscale, 4:2:2, restart markers, chroma only 1-2 samples wide.
    #[test]
    fn jpeg_synthetic_files_bit_exact_with_pillow() {
        let cases: [(&str, u32, u32, u32); 7] = [
            ("gray_37x29.jpg", 37, 29, 0xd1cfb34f),
            ("s422_41x23.jpg", 41, 23, 0x29fa2ebc),
            ("s420_45x31_rst.jpg", 45, 31, 0x05fc9303),
            ("s444_19x17_rst.jpg", 19, 17, 0xe9d33d41),
            ("s420_3x5.jpg", 3, 5, 0x2dfa902a),
            ("s422_4x9.jpg", 4, 9, 0x1856db16),
            ("gray_rst_33x20.jpg", 33, 20, 0xa20b116a),
        ];
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|&(n, w, h, c)| check(&synthetic(n), w, h, c).err())
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn jpeg_progressive_is_left_to_the_general_decoder() {
        let bytes = std::fs::read(synthetic("progressive_24x16.jpg")).unwrap();
        assert!(matches!(
            decode(&bytes, LIMITS),
            Err(JpegError::Unsupported(_))
        ));
        let img = crate::preprocess::decode_image(&bytes).expect("fallback decodes");
        assert_eq!(img.dimensions(), (24, 16));
    }

    /// Real JPEGs from every data set, covering the layouts present there (4:2:0 and 4:4:4
    /// baseline, odd sizes): decoded RGB identical to Pillow's.
    #[test]
    fn jpeg_data_set_files_bit_exact_with_pillow() {
        let cases: [(&str, u32, u32, u32); 8] = [
            (
                "lbc-pap/images/hsil/HSIL_10__10__0_4446.jpg",
                320,
                320,
                0x3d54dead,
            ),
            (
                "lc25000-lung/images/lung_aca/lungaca1.jpeg",
                224,
                224,
                0x25f7f346,
            ),
            ("lymphoma/images/cll/cll_0.jpg", 417, 312, 0x982730d7),
            ("lymphoma/images/fl/fl_113.jpg", 417, 312, 0x782626e9),
            (
                "pbc-blood/images/basophil/BA_115777.jpg",
                360,
                363,
                0xd83e7442,
            ),
            (
                "pbc-blood/images/basophil/BA_128084.jpg",
                366,
                369,
                0x1878fe4c,
            ),
            (
                "pbc-blood/images/monocyte/MO_107333.jpg",
                366,
                369,
                0xf55d31b8,
            ),
            (
                "tcga-luad-lusc/images/luad/test_0_0_507.jpg",
                256,
                256,
                0xc32af4d1,
            ),
        ];
        let dir = data_dir();
        if !dir.join(cases[0].0).exists() {
            eprintln!("skipping: {} not found (set MTPATH_DATA)", dir.display());
            return;
        }
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|&(n, w, h, c)| check(&dir.join(n), w, h, c).err())
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// Every JPEG of the data sets against a list of `path width height crc32` lines made with
    /// Pillow (`MTPATH_JPEG_REF=list cargo test -- --ignored jpeg_all`).
    #[test]
    #[ignore]
    fn jpeg_all_data_set_files_against_reference_list() {
        let list = std::env::var("MTPATH_JPEG_REF").expect("set MTPATH_JPEG_REF");
        let text = std::fs::read_to_string(list).unwrap();
        let dir = data_dir();
        let mut n = 0;
        let mut failures = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (w, h) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            let crc = u32::from_str_radix(f[3], 16).unwrap();
            if let Err(e) = check(&dir.join(f[0]), w, h, crc) {
                failures.push(e);
            }
            n += 1;
        }
        eprintln!("{n} files, {} differ", failures.len());
        assert!(failures.is_empty(), "{failures:#?}");
    }

    fn fuzz_one(bytes: &[u8]) {
        // Either result is fine; panicking is not.
        let _ = decode(bytes, LIMITS);
        let _ = crate::preprocess::decode_image(bytes);
    }

    /// Truncated, garbled and length-corrupted variants of real JPEGs: errors or images,
    /// never a panic.
    #[test]
    fn jpeg_corrupt_input_never_panics() {
        let mut sources = vec![
            std::fs::read(synthetic("s420_45x31_rst.jpg")).unwrap(),
            std::fs::read(synthetic("gray_rst_33x20.jpg")).unwrap(),
            std::fs::read(synthetic("s422_4x9.jpg")).unwrap(),
        ];
        if let Ok(real) = std::fs::read(data_dir().join("pbc-blood/images/monocyte/MO_107333.jpg"))
        {
            sources.push(real);
        }
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for src in &sources {
            let n = src.len();
            // Truncations (the header region byte by byte, then spread over the data).
            let step = (n / 300).max(1);
            for cut in (0..n.min(700)).chain((700..n).step_by(step)) {
                fuzz_one(&src[..cut]);
                // Truncated but with an end marker appended (passes the EOI check).
                let mut v = src[..cut].to_vec();
                v.extend_from_slice(&[0xFF, 0xD9]);
                fuzz_one(&v);
            }
            // Single flipped or overwritten bytes, concentrated on the headers.
            for i in 0..400 {
                let mut v = src.clone();
                let pos = if i % 2 == 0 {
                    (rand() as usize) % n.min(700)
                } else {
                    (rand() as usize) % n
                };
                v[pos] = match i % 4 {
                    0 => v[pos] ^ (1 << (rand() % 8)),
                    1 => 0xFF,
                    2 => 0x00,
                    _ => rand() as u8,
                };
                fuzz_one(&v);
            }
            // Several random bytes at once.
            for _ in 0..100 {
                let mut v = src.clone();
                for _ in 0..8 {
                    let pos = (rand() as usize) % n;
                    v[pos] = rand() as u8;
                }
                fuzz_one(&v);
            }
        }
    }
}
