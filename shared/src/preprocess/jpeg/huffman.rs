//! Huffman decoding of the entropy-coded data: the derived tables (`jdhuff.c`) and the bit
//! reader with its marker handling.

use super::frame::{corrupt, Res};

const LOOKAHEAD: u32 = 9;

#[derive(Clone)]
pub(super) struct Huffman {
    /// Largest code of each length 1..=16 (index = length), -1 if none; index 17 is a sentinel.
    maxcode: [i32; 18],
    /// `values` index of the first code of each length, minus that code.
    valoffset: [i32; 18],
    pub(super) values: Vec<u8>,
    /// For every `LOOKAHEAD`-bit prefix: `(length << 8) | value`, or 0 if the code is longer.
    lookup: Vec<u16>,
}

impl Huffman {
    pub(super) fn new(counts: &[u8; 16], values: &[u8]) -> Res<Huffman> {
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

pub(super) struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to read; once a marker is hit, the position of its `FF`.
    pub(super) pos: usize,
    buf: u64,
    nbits: u32,
    /// A marker (or the end of the data) was reached: further bits read as zeros, as libjpeg
    /// does (with a warning that Pillow ignores).
    marker_hit: bool,
    /// Zero bytes inserted after `marker_hit`.
    padded: u32,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
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
    pub(super) fn bits(&mut self, n: u32) -> u32 {
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
    pub(super) fn decode(&mut self, t: &Huffman) -> Res<u8> {
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
    pub(super) fn overrun(&self) -> bool {
        u64::from(self.padded) * 8 > u64::from(self.nbits)
    }

    /// Drop buffered bits and find the next marker: returns its code and moves past it.
    pub(super) fn next_marker(&mut self) -> Option<u8> {
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
pub(super) fn find_marker(data: &[u8], mut pos: usize) -> Option<(u8, usize)> {
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
pub(super) fn extend(v: u32, s: u32) -> i32 {
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
