//! The TIFF container: header, image file directories (classic TIFF and BigTIFF, either byte
//! order, the main chain and SubIFDs) and the tags a slide reader needs.
//!
//! Hand-written rather than through the `tiff` crate (0.11): its decoder parses the first
//! image when it opens a file, under a 1 MiB limit on any tag's value that cannot be raised
//! before that, so a BigTIFF slide with more than 131,072 tiles in its first level fails to
//! open; and it decodes only whole chunks through its own JPEG path, which hands back Aperio's
//! YCbCr-coded tiles unconverted when the photometric tag says RGB. Here every offset and
//! count is checked against the file's length before anything is read or allocated.

use std::collections::HashSet;
use std::sync::Arc;

use super::source::ByteSource;
use super::SlideError;

/// Tags read by the slide reader.
pub(crate) mod tag {
    pub const NEW_SUBFILE_TYPE: u16 = 254;
    pub const IMAGE_WIDTH: u16 = 256;
    pub const IMAGE_LENGTH: u16 = 257;
    pub const BITS_PER_SAMPLE: u16 = 258;
    pub const COMPRESSION: u16 = 259;
    pub const PHOTOMETRIC: u16 = 262;
    pub const IMAGE_DESCRIPTION: u16 = 270;
    pub const STRIP_OFFSETS: u16 = 273;
    pub const SAMPLES_PER_PIXEL: u16 = 277;
    pub const ROWS_PER_STRIP: u16 = 278;
    pub const STRIP_BYTE_COUNTS: u16 = 279;
    pub const X_RESOLUTION: u16 = 282;
    pub const PLANAR_CONFIGURATION: u16 = 284;
    pub const RESOLUTION_UNIT: u16 = 296;
    pub const PREDICTOR: u16 = 317;
    pub const TILE_WIDTH: u16 = 322;
    pub const TILE_LENGTH: u16 = 323;
    pub const TILE_OFFSETS: u16 = 324;
    pub const TILE_BYTE_COUNTS: u16 = 325;
    pub const SUB_IFDS: u16 = 330;
    pub const SAMPLE_FORMAT: u16 = 339;
    pub const JPEG_TABLES: u16 = 347;
}

/// Most directories followed in one file (main chain and SubIFDs together).
const MAX_DIRECTORIES: usize = 4096;
/// Most entries in one directory.
const MAX_ENTRIES: u64 = 4096;

/// One directory entry: its type, count and the raw value-or-offset field.
#[derive(Clone, Copy, Debug)]
struct Entry {
    tag: u16,
    typ: u16,
    count: u64,
    field: [u8; 8],
}

/// Byte order and offset width of a file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub little_endian: bool,
    pub big_tiff: bool,
}

/// One image of the file (a pyramid level, a thumbnail, a label...), with everything needed to
/// find and decode its chunks (tiles, or strips of whole rows).
#[derive(Clone, Debug)]
pub(crate) struct Page {
    pub width: u32,
    pub height: u32,
    /// Whether the image is cut into tiles (else into strips of `chunk_h` rows).
    pub tiled: bool,
    pub chunk_w: u32,
    pub chunk_h: u32,
    pub offsets: Vec<u64>,
    pub byte_counts: Vec<u64>,
    pub compression: u16,
    pub photometric: u16,
    pub samples: u16,
    pub bits: u16,
    pub planar: u16,
    pub predictor: u16,
    pub sample_format: u16,
    pub jpeg_tables: Option<Arc<Vec<u8>>>,
    pub subfile_type: u32,
    pub description: String,
    /// Pixels per resolution unit along x, and the unit (1 none, 2 inch, 3 cm).
    pub x_resolution: Option<f64>,
    pub resolution_unit: u16,
}

impl Page {
    /// Chunks per row of chunks.
    pub fn chunks_across(&self) -> u32 {
        self.width.div_ceil(self.chunk_w)
    }

    /// Rows of chunks.
    pub fn chunks_down(&self) -> u32 {
        self.height.div_ceil(self.chunk_h)
    }
}

/// The directories of a file: the main chain in order, each followed by its SubIFDs.
pub(crate) fn read_pages(src: &dyn ByteSource, name: &str) -> Result<Vec<Page>, SlideError> {
    let file = Reader { src, name };
    let (layout, first) = file.header()?;
    let mut pages = Vec::new();
    let mut seen = HashSet::new();
    let mut next = first;
    while next != 0 {
        if !seen.insert(next) || seen.len() > MAX_DIRECTORIES {
            return Err(file.error(format!(
                "the directory chain loops or has more than {MAX_DIRECTORIES} entries \
                 (directory at byte {next}): the file is corrupt"
            )));
        }
        let (entries, following) = file.directory(layout, next)?;
        let subs = file.values_u64(layout, &entries, tag::SUB_IFDS)?;
        pages.push(file.page(layout, next, &entries)?);
        for sub in subs.unwrap_or_default() {
            if sub == 0 || !seen.insert(sub) || seen.len() > MAX_DIRECTORIES {
                continue;
            }
            let (entries, _) = file.directory(layout, sub)?;
            pages.push(file.page(layout, sub, &entries)?);
        }
        next = following;
    }
    if pages.is_empty() {
        return Err(file.error("the file holds no image directory".into()));
    }
    Ok(pages)
}

/// Reads of one file, with errors that name it.
struct Reader<'a> {
    src: &'a dyn ByteSource,
    name: &'a str,
}

impl Reader<'_> {
    fn error(&self, message: String) -> SlideError {
        SlideError::new(self.name, message)
    }

    fn bytes(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, SlideError> {
        let total = self.src.len();
        if offset.checked_add(len).is_none_or(|end| end > total) {
            return Err(self.error(format!(
                "{what} at byte {offset} ({len} bytes) lies past the end of the file \
                 ({total} bytes): the file is truncated or corrupt; copy it again"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.src
            .read_at(offset, &mut buf)
            .map_err(|e| self.error(format!("reading {what} at byte {offset}: {e}")))?;
        Ok(buf)
    }

    fn header(&self) -> Result<(Layout, u64), SlideError> {
        if self.src.len() < 8 {
            return Err(self.error(format!(
                "{} bytes, too short for a TIFF file; is it a slide?",
                self.src.len()
            )));
        }
        let head = self.bytes(0, 8.min(self.src.len()), "the header")?;
        let little_endian = match &head[..2] {
            b"II" => true,
            b"MM" => false,
            _ => {
                return Err(self.error(
                    "not a TIFF file (no II/MM byte-order mark): slides are read from TIFF, \
                     BigTIFF, Aperio SVS and OME-TIFF files"
                        .into(),
                ))
            }
        };
        let u16_at = |b: &[u8]| {
            if little_endian {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                u16::from_be_bytes([b[0], b[1]])
            }
        };
        match u16_at(&head[2..4]) {
            42 => {
                let layout = Layout {
                    little_endian,
                    big_tiff: false,
                };
                Ok((layout, u64::from(read_u32(&head[4..8], little_endian))))
            }
            43 => {
                let layout = Layout {
                    little_endian,
                    big_tiff: true,
                };
                if u16_at(&head[4..6]) != 8 {
                    return Err(
                        self.error("BigTIFF header with an offset size other than 8".into())
                    );
                }
                let first = self.bytes(8, 8, "the BigTIFF header")?;
                Ok((layout, read_u64(&first, little_endian)))
            }
            v => Err(self.error(format!(
                "TIFF version {v} is neither 42 (TIFF) nor 43 (BigTIFF)"
            ))),
        }
    }

    /// The entries of the directory at `offset` and the offset of the next one (0: none).
    fn directory(&self, layout: Layout, offset: u64) -> Result<(Vec<Entry>, u64), SlideError> {
        let le = layout.little_endian;
        let (count_size, entry_size, next_size) = if layout.big_tiff {
            (8u64, 20u64, 8u64)
        } else {
            (2, 12, 4)
        };
        let head = self.bytes(offset, count_size, "a directory")?;
        let count = if layout.big_tiff {
            read_u64(&head, le)
        } else {
            u64::from(read_u16(&head, le))
        };
        if count == 0 || count > MAX_ENTRIES {
            return Err(self.error(format!(
                "the directory at byte {offset} has {count} entries: the file is corrupt"
            )));
        }
        let body = self.bytes(
            offset + count_size,
            count * entry_size + next_size,
            "a directory",
        )?;
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let e = &body[i * entry_size as usize..(i + 1) * entry_size as usize];
            let mut field = [0u8; 8];
            let (n, f) = if layout.big_tiff {
                (read_u64(&e[4..12], le), &e[12..20])
            } else {
                (u64::from(read_u32(&e[4..8], le)), &e[8..12])
            };
            field[..f.len()].copy_from_slice(f);
            entries.push(Entry {
                tag: read_u16(&e[0..2], le),
                typ: read_u16(&e[2..4], le),
                count: n,
                field,
            });
        }
        let tail = &body[(count * entry_size) as usize..];
        let next = if layout.big_tiff {
            read_u64(tail, le)
        } else {
            u64::from(read_u32(tail, le))
        };
        Ok((entries, next))
    }

    /// The raw bytes of an entry's value.
    fn value_bytes(&self, layout: Layout, e: &Entry) -> Result<Vec<u8>, SlideError> {
        let size = type_size(e.typ)
            .ok_or_else(|| self.error(format!("tag {} has unknown field type {}", e.tag, e.typ)))?;
        let len = e.count.checked_mul(size).ok_or_else(|| {
            self.error(format!("tag {} has an impossible count {}", e.tag, e.count))
        })?;
        let inline = if layout.big_tiff { 8 } else { 4 };
        if len <= inline {
            return Ok(e.field[..len as usize].to_vec());
        }
        let offset = if layout.big_tiff {
            read_u64(&e.field, layout.little_endian)
        } else {
            u64::from(read_u32(&e.field[..4], layout.little_endian))
        };
        self.bytes(offset, len, &format!("the value of tag {}", e.tag))
    }

    /// An unsigned integer tag's values (BYTE, SHORT, LONG, LONG8, IFD, IFD8).
    fn values_u64(
        &self,
        layout: Layout,
        entries: &[Entry],
        tag: u16,
    ) -> Result<Option<Vec<u64>>, SlideError> {
        let Some(e) = entries.iter().find(|e| e.tag == tag) else {
            return Ok(None);
        };
        let raw = self.value_bytes(layout, e)?;
        let le = layout.little_endian;
        let v = match e.typ {
            1 | 7 => raw.iter().map(|&b| u64::from(b)).collect(),
            3 => raw
                .chunks_exact(2)
                .map(|c| u64::from(read_u16(c, le)))
                .collect(),
            4 | 13 => raw
                .chunks_exact(4)
                .map(|c| u64::from(read_u32(c, le)))
                .collect(),
            16 | 18 => raw.chunks_exact(8).map(|c| read_u64(c, le)).collect(),
            t => {
                return Err(self.error(format!(
                    "tag {tag} has field type {t}, expected an unsigned integer"
                )))
            }
        };
        Ok(Some(v))
    }

    fn value_u64(
        &self,
        layout: Layout,
        entries: &[Entry],
        tag: u16,
    ) -> Result<Option<u64>, SlideError> {
        Ok(self
            .values_u64(layout, entries, tag)?
            .and_then(|v| v.first().copied()))
    }

    fn value_rational(
        &self,
        layout: Layout,
        entries: &[Entry],
        tag: u16,
    ) -> Result<Option<f64>, SlideError> {
        let Some(e) = entries.iter().find(|e| e.tag == tag) else {
            return Ok(None);
        };
        let raw = self.value_bytes(layout, e)?;
        let le = layout.little_endian;
        Ok(match e.typ {
            5 if raw.len() >= 8 => {
                let (n, d) = (read_u32(&raw[..4], le), read_u32(&raw[4..8], le));
                (d != 0).then(|| f64::from(n) / f64::from(d))
            }
            11 if raw.len() >= 4 => Some(f64::from(f32::from_bits(read_u32(&raw[..4], le)))),
            12 if raw.len() >= 8 => Some(f64::from_bits(read_u64(&raw[..8], le))),
            _ => None,
        })
    }

    fn value_text(
        &self,
        layout: Layout,
        entries: &[Entry],
        tag: u16,
    ) -> Result<String, SlideError> {
        let Some(e) = entries.iter().find(|e| e.tag == tag) else {
            return Ok(String::new());
        };
        let raw = self.value_bytes(layout, e)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
    }

    fn page(&self, layout: Layout, offset: u64, entries: &[Entry]) -> Result<Page, SlideError> {
        let at = |what: &str| format!("the image at directory byte {offset}: {what}");
        let get = |tag| self.value_u64(layout, entries, tag);
        let width = get(tag::IMAGE_WIDTH)?.unwrap_or(0);
        let height = get(tag::IMAGE_LENGTH)?.unwrap_or(0);
        if width == 0 || height == 0 || width > u64::from(u32::MAX) || height > u64::from(u32::MAX)
        {
            return Err(self.error(at(&format!("impossible size {width}x{height}"))));
        }
        let (width, height) = (width as u32, height as u32);
        let samples = get(tag::SAMPLES_PER_PIXEL)?.unwrap_or(1).clamp(0, 64) as u16;
        let bits = self
            .values_u64(layout, entries, tag::BITS_PER_SAMPLE)?
            .unwrap_or_else(|| vec![1]);
        let bits0 = bits.first().copied().unwrap_or(1);
        let bits = if bits.iter().all(|&b| b == bits0) {
            bits0.min(64) as u16
        } else {
            0
        };
        let tiled = entries.iter().any(|e| e.tag == tag::TILE_WIDTH);
        let (chunk_w, chunk_h, offsets_tag, counts_tag) = if tiled {
            let tw = get(tag::TILE_WIDTH)?.unwrap_or(0);
            let th = get(tag::TILE_LENGTH)?.unwrap_or(0);
            if tw == 0 || th == 0 || tw > 1 << 16 || th > 1 << 16 {
                return Err(self.error(at(&format!("impossible tile size {tw}x{th}"))));
            }
            (
                tw as u32,
                th as u32,
                tag::TILE_OFFSETS,
                tag::TILE_BYTE_COUNTS,
            )
        } else {
            let rows = get(tag::ROWS_PER_STRIP)?
                .unwrap_or(u64::from(height))
                .clamp(1, u64::from(height)) as u32;
            (width, rows, tag::STRIP_OFFSETS, tag::STRIP_BYTE_COUNTS)
        };
        let offsets = self
            .values_u64(layout, entries, offsets_tag)?
            .ok_or_else(|| self.error(at("no tile or strip offsets")))?;
        let byte_counts = self
            .values_u64(layout, entries, counts_tag)?
            .ok_or_else(|| self.error(at("no tile or strip byte counts")))?;
        let planar = get(tag::PLANAR_CONFIGURATION)?.unwrap_or(1) as u16;
        let page = Page {
            width,
            height,
            tiled,
            chunk_w,
            chunk_h,
            offsets,
            byte_counts,
            compression: get(tag::COMPRESSION)?.unwrap_or(1) as u16,
            photometric: get(tag::PHOTOMETRIC)?.unwrap_or(if samples >= 3 { 2 } else { 1 }) as u16,
            samples,
            bits,
            planar,
            predictor: get(tag::PREDICTOR)?.unwrap_or(1) as u16,
            sample_format: get(tag::SAMPLE_FORMAT)?.unwrap_or(1) as u16,
            jpeg_tables: match entries.iter().find(|e| e.tag == tag::JPEG_TABLES) {
                Some(e) => Some(Arc::new(self.value_bytes(layout, e)?)),
                None => None,
            },
            subfile_type: get(tag::NEW_SUBFILE_TYPE)?.unwrap_or(0) as u32,
            description: self.value_text(layout, entries, tag::IMAGE_DESCRIPTION)?,
            x_resolution: self.value_rational(layout, entries, tag::X_RESOLUTION)?,
            resolution_unit: get(tag::RESOLUTION_UNIT)?.unwrap_or(2) as u16,
        };
        let planes = if page.planar == 2 {
            u64::from(page.samples)
        } else {
            1
        };
        let needed = u64::from(page.chunks_across()) * u64::from(page.chunks_down()) * planes;
        if (page.offsets.len() as u64) < needed || (page.byte_counts.len() as u64) < needed {
            return Err(self.error(at(&format!(
                "{} offsets and {} byte counts for {needed} chunks",
                page.offsets.len(),
                page.byte_counts.len()
            ))));
        }
        Ok(page)
    }
}

fn type_size(typ: u16) -> Option<u64> {
    Some(match typ {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => return None,
    })
}

fn read_u16(b: &[u8], le: bool) -> u16 {
    let a = [b[0], b[1]];
    if le {
        u16::from_le_bytes(a)
    } else {
        u16::from_be_bytes(a)
    }
}

fn read_u32(b: &[u8], le: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if le {
        u32::from_le_bytes(a)
    } else {
        u32::from_be_bytes(a)
    }
}

fn read_u64(b: &[u8], le: bool) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    if le {
        u64::from_le_bytes(a)
    } else {
        u64::from_be_bytes(a)
    }
}
