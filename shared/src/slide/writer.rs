//! A small writer of tiled, pyramidal TIFF files, for tests: slides are built from real tiles
//! and read back. It writes what the reader is meant to meet in the field: Aperio's layout
//! (level 0, a stripped thumbnail, the other levels, a label and a macro) with JPEG tiles as
//! abbreviated streams sharing one JPEGTables, OME-TIFF with its levels as SubIFDs, generic
//! pyramids, BigTIFF, either byte order, and LZW, Deflate or no compression.

use std::io::Write;

use image::RgbImage;

use crate::preprocess::resize_exact;

/// How tiles are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Lzw,
    Deflate,
    /// Baseline JPEG at this quality, YCbCr-coded (PhotometricInterpretation YCbCr, 4:4:4),
    /// as abbreviated streams with shared tables: what libtiff and vips write.
    Jpeg(u8),
    /// Baseline JPEG at this quality, RGB-coded (no colour transform, no subsampling) and
    /// labelled PhotometricInterpretation RGB, as abbreviated streams with shared tables: what
    /// Aperio's scanners write ("JPEG/RGB"). Component ids are 1, 2, 3 with no Adobe marker,
    /// so only the photometric tag says the components are not YCbCr.
    JpegRgb(u8),
}

impl Codec {
    fn code(self) -> u16 {
        match self {
            Codec::None => 1,
            Codec::Lzw => 5,
            Codec::Deflate => 8,
            Codec::Jpeg(_) | Codec::JpegRgb(_) => 7,
        }
    }
}

/// Which vendor's layout to imitate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// Aperio SVS with this many microns per pixel.
    Aperio { mpp: f64 },
    /// OME-TIFF (levels in SubIFDs) with this many microns per pixel.
    Ome { mpp: f64 },
    /// A generic pyramid, resolution in pixels per centimetre when given.
    Generic { mpp: Option<f64> },
}

/// What to write.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    pub tile: u32,
    pub codec: Codec,
    pub layout: Layout,
    /// Pyramid levels (each half the previous one), level 0 included.
    pub levels: usize,
    pub big_tiff: bool,
    pub big_endian: bool,
    /// Write strips (rows of the whole width) instead of tiles.
    pub strips: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            tile: 256,
            codec: Codec::JpegRgb(90),
            layout: Layout::Aperio { mpp: 0.5 },
            levels: 3,
            big_tiff: false,
            big_endian: false,
            strips: false,
        }
    }
}

/// One image to write: pixels and how.
struct PageSpec {
    img: RgbImage,
    tiled: bool,
    chunk: (u32, u32),
    codec: Codec,
    description: String,
    subfile: u32,
    mpp: Option<f64>,
    /// Index of the page whose SubIFDs these are (OME); `None` for the main chain.
    parent: Option<usize>,
}

/// The levels of `img`, each half the size of the previous one (Pillow's bilinear).
pub fn pyramid_levels(img: &RgbImage, levels: usize) -> Vec<RgbImage> {
    let mut out = vec![img.clone()];
    for _ in 1..levels {
        let prev = out.last().expect("level 0 is there");
        let (w, h) = ((prev.width() / 2).max(1), (prev.height() / 2).max(1));
        out.push(resize_exact(prev, w, h).expect("valid sizes"));
    }
    out
}

/// A tiled pyramidal TIFF of `img`.
pub fn write_slide(img: &RgbImage, opts: &WriteOptions) -> Vec<u8> {
    let levels = pyramid_levels(img, opts.levels.max(1));
    let chunk = |l: &RgbImage| {
        if opts.strips {
            (l.width(), opts.tile.min(l.height()))
        } else {
            (opts.tile, opts.tile)
        }
    };
    let (w0, h0) = img.dimensions();
    let mut pages = Vec::new();
    let level_page = |l: &RgbImage, description: String, mpp, parent| PageSpec {
        chunk: chunk(l),
        img: l.clone(),
        tiled: !opts.strips,
        codec: opts.codec,
        description,
        subfile: 0,
        mpp,
        parent,
    };
    match opts.layout {
        Layout::Aperio { mpp } => {
            let q = match opts.codec {
                Codec::Jpeg(q) | Codec::JpegRgb(q) => q,
                _ => 100,
            };
            let head = format!(
                "Aperio Image Library vTEST \r\n{w0}x{h0} [0,0 {w0}x{h0}] ({t}x{t}) JPEG/RGB Q={q}",
                t = opts.tile
            );
            pages.push(level_page(
                &levels[0],
                format!("{head}|AppMag = 20|MPP = {mpp:.4}|Filename = test"),
                None,
                None,
            ));
            let thumb = shrink(img, 256);
            pages.push(PageSpec {
                chunk: (thumb.width(), 16.min(thumb.height())),
                img: thumb,
                tiled: false,
                codec: Codec::None,
                description: format!("{head}\r\n{w0}x{h0} -> thumbnail"),
                subfile: 0,
                mpp: None,
                parent: None,
            });
            for l in &levels[1..] {
                pages.push(level_page(
                    l,
                    format!("{head}\r\n{w0}x{h0} -> {}x{}", l.width(), l.height()),
                    None,
                    None,
                ));
            }
            let label = RgbImage::from_pixel(120, 140, image::Rgb([250, 250, 250]));
            pages.push(PageSpec {
                chunk: (120, 140),
                img: label,
                tiled: false,
                codec: Codec::Lzw,
                description: "label 120x140".into(),
                subfile: 1,
                mpp: None,
                parent: None,
            });
            let macro_img = shrink(img, 300);
            let macro_img =
                RgbImage::from_fn(macro_img.width() + 100, macro_img.height(), |x, y| {
                    if x < 100 {
                        image::Rgb([30, 30, 30])
                    } else {
                        *macro_img.get_pixel(x - 100, y)
                    }
                });
            pages.push(PageSpec {
                chunk: (macro_img.width(), macro_img.height()),
                img: macro_img,
                tiled: false,
                codec: Codec::None,
                description: "macro 400x300".into(),
                subfile: 9,
                mpp: None,
                parent: None,
            });
        }
        Layout::Ome { mpp } => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/2016-06\"><Image ID=\"Image:0\"><Pixels DimensionOrder=\"XYCZT\" ID=\"Pixels:0\" Interleaved=\"true\" PhysicalSizeX=\"{mpp}\" PhysicalSizeXUnit=\"µm\" PhysicalSizeY=\"{mpp}\" SizeC=\"3\" SizeT=\"1\" SizeX=\"{w0}\" SizeY=\"{h0}\" SizeZ=\"1\" Type=\"uint8\"><Channel ID=\"Channel:0:0\" SamplesPerPixel=\"3\"/><TiffData IFD=\"0\" PlaneCount=\"1\"/></Pixels></Image></OME>"
            );
            pages.push(level_page(&levels[0], xml, None, None));
            for l in &levels[1..] {
                let mut p = level_page(l, String::new(), None, Some(0));
                p.subfile = 1;
                pages.push(p);
            }
        }
        Layout::Generic { mpp } => {
            for (i, l) in levels.iter().enumerate() {
                let mut p = level_page(l, String::new(), mpp.map(|m| m * (1 << i) as f64), None);
                p.subfile = u32::from(i > 0);
                pages.push(p);
            }
        }
    }
    Encoder::new(opts.big_tiff, opts.big_endian).finish(&pages)
}

/// `img` shrunk to at most `side` pixels on its longer side.
fn shrink(img: &RgbImage, side: u32) -> RgbImage {
    let s = f64::from(img.width().max(img.height())) / f64::from(side);
    let (w, h) = (
        ((f64::from(img.width()) / s).round() as u32).max(1),
        ((f64::from(img.height()) / s).round() as u32).max(1),
    );
    resize_exact(img, w, h).expect("valid sizes")
}

/// A tag value to write.
enum Value {
    Short(Vec<u16>),
    Long(Vec<u32>),
    Long8(Vec<u64>),
    Rational(u32, u32),
    Ascii(String),
    Undefined(Vec<u8>),
}

struct Encoder {
    big: bool,
    be: bool,
    out: Vec<u8>,
}

impl Encoder {
    fn new(big: bool, be: bool) -> Self {
        let mut e = Self {
            big,
            be,
            out: Vec::new(),
        };
        e.out.extend_from_slice(if be { b"MM" } else { b"II" });
        if big {
            e.u16(43);
            e.u16(8);
            e.u16(0);
            e.u64(0);
        } else {
            e.u16(42);
            e.u32(0);
        }
        e
    }

    fn u16(&mut self, v: u16) {
        let b = if self.be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.extend_from_slice(&b);
    }

    fn u32(&mut self, v: u32) {
        let b = if self.be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.extend_from_slice(&b);
    }

    fn u64(&mut self, v: u64) {
        let b = if self.be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.extend_from_slice(&b);
    }

    fn offset(&mut self, v: u64) {
        if self.big {
            self.u64(v)
        } else {
            self.u32(u32::try_from(v).expect("classic TIFF offsets fit 32 bits"))
        }
    }

    fn patch_offset(&mut self, at: usize, v: u64) {
        let bytes: Vec<u8> = if self.big {
            if self.be {
                v.to_be_bytes().to_vec()
            } else {
                v.to_le_bytes().to_vec()
            }
        } else {
            let v = u32::try_from(v).expect("classic TIFF offsets fit 32 bits");
            if self.be {
                v.to_be_bytes().to_vec()
            } else {
                v.to_le_bytes().to_vec()
            }
        };
        self.out[at..at + bytes.len()].copy_from_slice(&bytes);
    }

    fn align(&mut self) {
        if self.out.len() % 2 == 1 {
            self.out.push(0);
        }
    }

    /// Write every page's data and directory; link the main chain and SubIFDs.
    fn finish(mut self, pages: &[PageSpec]) -> Vec<u8> {
        let mut dir_offsets = vec![0u64; pages.len()];
        let mut next_fields: Vec<Option<usize>> = vec![None; pages.len()];
        let mut sub_fields: Vec<Option<usize>> = vec![None; pages.len()];
        // Children (SubIFDs) are written first so their parents can point at them.
        let mut order: Vec<usize> = (0..pages.len())
            .filter(|&i| pages[i].parent.is_some())
            .collect();
        order.extend((0..pages.len()).filter(|&i| pages[i].parent.is_none()));
        for &i in &order {
            let children: Vec<u64> = (0..pages.len())
                .filter(|&c| pages[c].parent == Some(i))
                .map(|c| dir_offsets[c])
                .collect();
            let (dir, next_at, sub_at) = self.page(&pages[i], &children);
            dir_offsets[i] = dir;
            next_fields[i] = Some(next_at);
            sub_fields[i] = sub_at;
        }
        let main: Vec<usize> = (0..pages.len())
            .filter(|&i| pages[i].parent.is_none())
            .collect();
        let first_at = if self.big { 8 } else { 4 };
        self.patch_offset(first_at, dir_offsets[main[0]]);
        for w in main.windows(2) {
            let at = next_fields[w[0]].expect("written");
            self.patch_offset(at, dir_offsets[w[1]]);
        }
        let _ = sub_fields;
        self.out
    }

    /// Write one page: chunks, then tag values, then the directory. Returns the directory's
    /// offset, where its next-directory field is, and where its SubIFDs value is.
    fn page(&mut self, p: &PageSpec, children: &[u64]) -> (u64, usize, Option<usize>) {
        let (cw, ch) = p.chunk;
        let (w, h) = p.img.dimensions();
        let across = w.div_ceil(cw);
        let down = h.div_ceil(ch);
        let mut chunks = Vec::new();
        for cy in 0..down {
            for cx in 0..across {
                let rows = if p.tiled { ch } else { ch.min(h - cy * ch) };
                let mut raw = Vec::with_capacity((cw * rows * 3) as usize);
                for y in cy * ch..cy * ch + rows {
                    for x in cx * cw..cx * cw + cw {
                        // Tiles past the edge are padded with the edge pixels.
                        let px = p.img.get_pixel(x.min(w - 1), y.min(h - 1));
                        raw.extend_from_slice(&px.0);
                    }
                }
                chunks.push((raw, rows));
            }
        }
        let mut tables: Option<Vec<u8>> = None;
        let mut offsets = Vec::new();
        let mut counts = Vec::new();
        for (raw, rows) in chunks {
            let data = match p.codec {
                Codec::None => raw,
                Codec::Lzw => {
                    weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
                        .encode(&raw)
                        .expect("LZW encodes")
                }
                Codec::Deflate => {
                    let mut z =
                        flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                    z.write_all(&raw).expect("in memory");
                    z.finish().expect("in memory")
                }
                Codec::Jpeg(q) | Codec::JpegRgb(q) => {
                    let full = if let Codec::Jpeg(_) = p.codec {
                        encode_jpeg(&raw, cw, rows, q)
                    } else {
                        encode_rgb_jpeg(&raw, cw, rows, q)
                    };
                    let (t, stream) = split_jpeg_tables(&full);
                    match &tables {
                        Some(existing) => assert_eq!(existing, &t, "tiles share their tables"),
                        None => tables = Some(t),
                    }
                    stream
                }
            };
            self.align();
            offsets.push(self.out.len() as u64);
            counts.push(data.len() as u64);
            self.out.extend_from_slice(&data);
        }
        let mut tags: Vec<(u16, Value)> = vec![
            (254, Value::Long(vec![p.subfile])),
            (256, Value::Long(vec![w])),
            (257, Value::Long(vec![h])),
            (258, Value::Short(vec![8, 8, 8])),
            (259, Value::Short(vec![p.codec.code()])),
            (
                262,
                Value::Short(vec![if let Codec::Jpeg(_) = p.codec { 6 } else { 2 }]),
            ),
            (277, Value::Short(vec![3])),
            (284, Value::Short(vec![1])),
        ];
        if !p.description.is_empty() {
            tags.push((270, Value::Ascii(p.description.clone())));
        }
        let offs = |v: Vec<u64>, big: bool| {
            if big {
                Value::Long8(v)
            } else {
                Value::Long(v.into_iter().map(|o| o as u32).collect())
            }
        };
        if p.tiled {
            tags.push((322, Value::Short(vec![cw as u16])));
            tags.push((323, Value::Short(vec![ch as u16])));
            tags.push((324, offs(offsets, self.big)));
            tags.push((325, offs(counts, self.big)));
        } else {
            tags.push((273, offs(offsets, self.big)));
            tags.push((278, Value::Long(vec![ch])));
            tags.push((279, offs(counts, self.big)));
        }
        if let Some(mpp) = p.mpp {
            let per_cm = (10_000.0 / mpp).round() as u32;
            tags.push((282, Value::Rational(per_cm, 1)));
            tags.push((283, Value::Rational(per_cm, 1)));
            tags.push((296, Value::Short(vec![3])));
        }
        if !children.is_empty() {
            tags.push((330, offs(children.to_vec(), self.big)));
        }
        if let Some(t) = tables {
            tags.push((347, Value::Undefined(t)));
        }
        if let Codec::Jpeg(_) = p.codec {
            // The `image` crate encodes without chroma subsampling.
            tags.push((530, Value::Short(vec![1, 1])));
        }
        tags.sort_by_key(|(t, _)| *t);
        // Values that do not fit in the entry go before the directory.
        let inline = if self.big { 8 } else { 4 };
        let mut fields = Vec::new();
        for (tag, value) in &tags {
            let (typ, count, bytes) = self.encode_value(value);
            if bytes.len() <= inline {
                let mut f = bytes.clone();
                f.resize(inline, 0);
                fields.push((*tag, typ, count, f));
            } else {
                self.align();
                let at = self.out.len() as u64;
                self.out.extend_from_slice(&bytes);
                let mut f = Vec::new();
                std::mem::swap(&mut f, &mut self.out);
                self.offset(at);
                let field = self.out.clone();
                self.out = f;
                fields.push((*tag, typ, count, field));
            }
        }
        self.align();
        let dir = self.out.len() as u64;
        if self.big {
            self.u64(fields.len() as u64);
        } else {
            self.u16(fields.len() as u16);
        }
        let mut sub_at = None;
        for (tag, typ, count, field) in fields {
            self.u16(tag);
            self.u16(typ);
            if self.big {
                self.u64(count)
            } else {
                self.u32(count as u32)
            }
            if tag == 330 {
                sub_at = Some(self.out.len());
            }
            self.out.extend_from_slice(&field);
        }
        let next_at = self.out.len();
        self.offset(0);
        (dir, next_at, sub_at)
    }

    fn encode_value(&self, v: &Value) -> (u16, u64, Vec<u8>) {
        let mut b = Vec::new();
        let be = self.be;
        let put16 = |b: &mut Vec<u8>, v: u16| {
            b.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() })
        };
        match v {
            Value::Short(v) => {
                v.iter().for_each(|&x| put16(&mut b, x));
                (3, v.len() as u64, b)
            }
            Value::Long(v) => {
                for &x in v {
                    b.extend_from_slice(&if be { x.to_be_bytes() } else { x.to_le_bytes() });
                }
                (4, v.len() as u64, b)
            }
            Value::Long8(v) => {
                for &x in v {
                    b.extend_from_slice(&if be { x.to_be_bytes() } else { x.to_le_bytes() });
                }
                (16, v.len() as u64, b)
            }
            Value::Rational(n, d) => {
                for x in [*n, *d] {
                    b.extend_from_slice(&if be { x.to_be_bytes() } else { x.to_le_bytes() });
                }
                (5, 1, b)
            }
            Value::Ascii(s) => {
                b.extend_from_slice(s.as_bytes());
                b.push(0);
                let n = b.len() as u64;
                (2, n, b)
            }
            Value::Undefined(v) => (7, v.len() as u64, v.clone()),
        }
    }
}

/// A complete baseline JPEG of RGB pixels, YCbCr-coded by the `image` crate's encoder.
pub fn encode_jpeg(raw: &[u8], w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut full = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut full, quality)
        .encode(raw, w, h, image::ExtendedColorType::Rgb8)
        .expect("JPEG encodes");
    full
}

/// A complete baseline JPEG of RGB pixels, RGB-coded: each channel is encoded as a greyscale
/// image (same quantisation and Huffman tables), and the three scans become the
/// non-interleaved scans of one three-component frame (ids 1, 2, 3, full resolution).
pub fn encode_rgb_jpeg(raw: &[u8], w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut tables: Option<Vec<u8>> = None;
    let mut sof: Option<Vec<u8>> = None;
    let mut scans = Vec::new();
    for c in 0..3 {
        let plane: Vec<u8> = raw.iter().skip(c).step_by(3).copied().collect();
        let mut grey = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut grey, quality)
            .encode(&plane, w, h, image::ExtendedColorType::L8)
            .expect("JPEG encodes");
        let (t, stream) = split_jpeg_tables(&grey);
        match &tables {
            Some(existing) => assert_eq!(existing, &t, "channels share their tables"),
            None => tables = Some(t),
        }
        // stream: SOI, SOF0, SOS + entropy data, EOI.
        let sof_len = usize::from(u16::from_be_bytes([stream[4], stream[5]]));
        let sof0 = &stream[2..4 + sof_len];
        assert_eq!(sof0[1], 0xC0, "a baseline frame");
        sof.get_or_insert_with(|| sof0.to_vec());
        let sos_at = 4 + sof_len;
        assert_eq!(stream[sos_at + 1], 0xDA, "the scan follows the frame");
        let sos_len = usize::from(u16::from_be_bytes([stream[sos_at + 2], stream[sos_at + 3]]));
        let data = &stream[sos_at + 2 + sos_len..stream.len() - 2];
        let id = c as u8 + 1;
        let mut scan = vec![0xFF, 0xDA, 0, 8, 1, id, 0x00, 0, 63, 0];
        scan.extend_from_slice(data);
        scans.push(scan);
    }
    let tables = tables.expect("three channels");
    let sof = sof.expect("three channels");
    // SOF0: FF C0, length, P, Y, X, Nf = 3, then (id, 1x1, table 0) per component.
    let mut frame = vec![0xFF, 0xC0, 0, 17];
    frame.extend_from_slice(&sof[4..9]);
    frame.push(3);
    for id in 1..=3u8 {
        frame.extend_from_slice(&[id, 0x11, 0]);
    }
    let mut out = tables[..tables.len() - 2].to_vec();
    out.extend_from_slice(&frame);
    for scan in scans {
        out.extend_from_slice(&scan);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// Split a complete baseline JPEG into its tables (SOI, DQT and DHT segments, EOI) and the
/// abbreviated stream of the image (SOI, SOF, SOS and the scan, EOI), dropping APPn segments
/// as Aperio's tiles have none.
pub fn split_jpeg_tables(full: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut tables = vec![0xFF, 0xD8];
    let mut stream = vec![0xFF, 0xD8];
    let mut i = 2;
    while i + 4 <= full.len() {
        assert_eq!(full[i], 0xFF, "a marker at byte {i}");
        let marker = full[i + 1];
        let len = usize::from(u16::from_be_bytes([full[i + 2], full[i + 3]]));
        let segment = &full[i..i + 2 + len];
        match marker {
            0xDB | 0xC4 => tables.extend_from_slice(segment),
            0xE0..=0xEF | 0xFE => {}
            0xDA => {
                stream.extend_from_slice(&full[i..]);
                break;
            }
            _ => stream.extend_from_slice(segment),
        }
        i += 2 + len;
    }
    tables.extend_from_slice(&[0xFF, 0xD9]);
    (tables, stream)
}

/// The image files of a folder of the real tasks (`lc25000-lung/images/lung_aca`), sorted.
pub fn real_tiles(folder: &str) -> Vec<std::path::PathBuf> {
    let dir = crate::testdata::data_dir().join(folder);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the real tasks are needed)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
}

/// A slide-like image: `files` (row-major, `cols` per row) side by side as one piece of
/// tissue at `at` on bright, slightly noisy glass of `width` × `height` pixels.
pub fn tissue_from_tiles(
    files: &[std::path::PathBuf],
    width: u32,
    height: u32,
    cols: u32,
    at: (u32, u32),
) -> RgbImage {
    let mut canvas = RgbImage::from_fn(width, height, |x, y| {
        let n = ((x * 7 + y * 13) % 5) as u8;
        image::Rgb([238 + n, 239, 241 - n])
    });
    for (i, file) in files.iter().enumerate() {
        let (c, r) = (i as u32 % cols, i as u32 / cols);
        let tile = crate::preprocess::load_image(file).expect("a real tile decodes");
        let (tw, th) = tile.dimensions();
        for y in 0..th {
            for x in 0..tw {
                let (cx, cy) = (at.0 + c * tw + x, at.1 + r * th + y);
                if cx < width && cy < height {
                    canvas.put_pixel(cx, cy, *tile.get_pixel(x, y));
                }
            }
        }
    }
    canvas
}

/// The slide the end-to-end tests share: `files` (up to 32 real 224-px tiles) as 8 × 4 tiles
/// of tissue on 2304 × 1280 px of glass, written in Aperio's layout at 0.5 µm/px with four
/// levels and `codec` (256-px tiles).
pub fn mosaic_slide(files: &[std::path::PathBuf], codec: Codec) -> Vec<u8> {
    let img = tissue_from_tiles(files, 2304, 1280, 8, (256, 192));
    let opts = WriteOptions {
        tile: 256,
        codec,
        layout: Layout::Aperio { mpp: 0.5 },
        levels: 4,
        ..WriteOptions::default()
    };
    write_slide(&img, &opts)
}

/// A slide-like image from real tiles: `cols` × `rows` tiles of the real lc25000-lung task
/// (224 px H&E adenocarcinoma), as one piece of tissue at `at` on glass of `width` × `height`.
pub fn real_tissue_image(
    width: u32,
    height: u32,
    cols: u32,
    rows: u32,
    at: (u32, u32),
) -> RgbImage {
    let files = real_tiles("lc25000-lung/images/lung_aca");
    tissue_from_tiles(&files[..(cols * rows) as usize], width, height, cols, at)
}
