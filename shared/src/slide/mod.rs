//! Whole-slide images: pyramidal TIFF, BigTIFF, Aperio SVS and OME-TIFF, read tile by tile.
//!
//! A slide is opened from any [`ByteSource`] (a file natively, a browser `File` in a worker):
//! only its directories are read at first, and then only the tiles a region needs, each
//! decoded once and kept in a bounded cache. On top of the reader sit tissue detection on a
//! thumbnail ([`tissue`]) and a grid of tiles at a requested resolution ([`grid`]).
//!
//! Compression: JPEG (with the shared JPEGTables of Aperio's abbreviated streams; decoded
//! bit-exactly as libjpeg-turbo does, with libtiff's colour semantics), JPEG 2000 (Aperio
//! 33003/33005 and 34712, through the pure-Rust `hayro-jpeg2000`), LZW, Deflate, PackBits
//! and none; 8-bit grey or RGB. Anything else is refused with a message saying how to
//! convert the slide.

mod codec;
pub mod grid;
pub mod heatmap;
mod meta;
mod source;
#[cfg(test)]
mod tests;
mod tiff;
pub mod tissue;
#[cfg(any(test, feature = "testdata"))]
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use image::RgbImage;
#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

pub use grid::{plan_tiles, Magnification, TilePlan, TilePosition, TileSpec};
pub use heatmap::{class_colour, probability_colour, render_heatmap, render_tiles, TileValues};
pub use meta::SlideFormat;
#[cfg(not(target_arch = "wasm32"))]
pub use source::FileSource;
pub use source::{ByteSource, ThreadSafe};
pub use tissue::{detect_tissue, TissueMask, DEFAULT_THUMBNAIL_SIDE};

/// Something wrong with a slide file; the message names the file and, where there is one,
/// the fix.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct SlideError {
    /// The slide (its path or file name).
    pub name: String,
    /// What is wrong.
    pub message: String,
}

impl SlideError {
    pub(crate) fn new(name: &str, message: String) -> Self {
        Self {
            name: name.to_string(),
            message,
        }
    }
}

/// One resolution of the pyramid.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    /// Size in pixels.
    pub width: u32,
    pub height: u32,
    /// Level-0 pixels per pixel of this level.
    pub downsample: f64,
    /// Size of the stored tiles (strips: the width and the rows per strip).
    pub tile_width: u32,
    pub tile_height: u32,
    /// How its tiles are compressed.
    pub compression: String,
    page: usize,
}

/// Default budget of decoded tiles kept in memory, in bytes.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// An open slide.
pub struct Slide {
    name: String,
    source: Box<dyn ByteSource>,
    pages: Vec<tiff::Page>,
    levels: Vec<Level>,
    format: SlideFormat,
    mpp: Option<f64>,
    cache: Mutex<ChunkCache>,
}

impl std::fmt::Debug for Slide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slide")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("levels", &self.levels)
            .field("mpp", &self.mpp)
            .finish()
    }
}

impl Slide {
    /// Open a slide file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Slide, SlideError> {
        let name = path.display().to_string();
        let source = FileSource::open(path)
            .map_err(|e| SlideError::new(&name, format!("cannot open: {e}")))?;
        Slide::from_source(&name, Box::new(source))
    }

    /// Open a slide from its bytes' source; `name` names it in messages.
    pub fn from_source(name: &str, source: Box<dyn ByteSource>) -> Result<Slide, SlideError> {
        let pages = tiff::read_pages(source.as_ref(), name)?;
        let format = meta::format_of(&pages[0]);
        let mpp = meta::microns_per_pixel(&pages[0], format);
        let levels = pyramid(&pages);
        codec::check_supported(&pages[0])
            .map_err(|m| SlideError::new(name, format!("level 0: {m}")))?;
        Ok(Slide {
            name: name.to_string(),
            source,
            pages,
            levels,
            format,
            mpp,
            cache: Mutex::new(ChunkCache::new(DEFAULT_CACHE_BYTES)),
        })
    }

    /// The name given when it was opened.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who wrote it.
    pub fn format(&self) -> SlideFormat {
        self.format
    }

    /// Pyramid levels, level 0 (full resolution) first. A slide that is not pyramidal has one.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Microns per pixel at level 0, when the file says.
    pub fn mpp(&self) -> Option<f64> {
        self.mpp
    }

    /// Override the microns per pixel (for files that do not record it, or record it wrong).
    pub fn set_mpp(&mut self, mpp: f64) {
        self.mpp = Some(mpp);
    }

    /// Level-0 size.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.levels[0].width, self.levels[0].height)
    }

    /// Bound the memory kept for decoded tiles (default [`DEFAULT_CACHE_BYTES`]).
    pub fn set_cache_bytes(&self, bytes: usize) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.budget = bytes;
        cache.evict();
    }

    /// The level to read for a wanted downsample: the coarsest one at least as fine.
    pub fn best_level_for(&self, downsample: f64) -> usize {
        let mut best = 0;
        for (i, l) in self.levels.iter().enumerate() {
            if l.downsample <= downsample * (1.0 + 1e-6) {
                best = i;
            }
        }
        best
    }

    /// The `w` × `h` pixels at (`x`, `y`) of `level`, in that level's pixels; whatever lies
    /// outside the image is white.
    pub fn read_region(
        &self,
        level: usize,
        x: i64,
        y: i64,
        w: u32,
        h: u32,
    ) -> Result<RgbImage, SlideError> {
        let lvl = self.levels.get(level).ok_or_else(|| {
            SlideError::new(
                &self.name,
                format!("no level {level} (the slide has {})", self.levels.len()),
            )
        })?;
        if u64::from(w) * u64::from(h) * 3 > crate::preprocess::MAX_IMAGE_BYTES {
            return Err(SlideError::new(
                &self.name,
                format!("a {w}x{h} region is larger than a read may be"),
            ));
        }
        let page = &self.pages[lvl.page];
        let mut out = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
        let (x0, y0) = (x.max(0), y.max(0));
        let x1 = (x + i64::from(w)).min(i64::from(lvl.width));
        let y1 = (y + i64::from(h)).min(i64::from(lvl.height));
        if x1 <= x0 || y1 <= y0 {
            return Ok(out);
        }
        let (cw, ch) = (i64::from(page.chunk_w), i64::from(page.chunk_h));
        let across = i64::from(page.chunks_across());
        let mut wanted = Vec::new();
        for cy in y0 / ch..=(y1 - 1) / ch {
            for cx in x0 / cw..=(x1 - 1) / cw {
                wanted.push((cy * across + cx) as usize);
            }
        }
        let chunks = self.chunks(lvl.page, &wanted)?;
        for (&index, chunk) in wanted.iter().zip(&chunks) {
            let (cx, cy) = (index as i64 % across, index as i64 / across);
            let rows = codec::chunk_rows(page, index) as i64;
            let (ox, oy) = (cx * cw, cy * ch);
            let (sx0, sx1) = (x0.max(ox), x1.min(ox + cw));
            let (sy0, sy1) = (y0.max(oy), y1.min(oy + rows));
            for sy in sy0..sy1 {
                let src = ((sy - oy) * cw + (sx0 - ox)) as usize * 3;
                let dst = ((sy - y) * i64::from(w) + (sx0 - x)) as usize * 3;
                let len = (sx1 - sx0) as usize * 3;
                out.as_mut()[dst..dst + len].copy_from_slice(&chunk[src..src + len]);
            }
        }
        Ok(out)
    }

    /// The whole slide shrunk to at most `max_side` pixels on its longer side, from the
    /// smallest level at least that large (area-averaged), and the level-0 pixels per
    /// thumbnail pixel.
    pub fn thumbnail(&self, max_side: u32) -> Result<(RgbImage, f64), SlideError> {
        let (w0, h0) = self.dimensions();
        let scale = (f64::from(w0.max(h0)) / f64::from(max_side.max(1))).max(1.0);
        let (tw, th) = (
            ((f64::from(w0) / scale).round() as u32).max(1),
            ((f64::from(h0) / scale).round() as u32).max(1),
        );
        let level = self.best_level_for(scale);
        let lvl = &self.levels[level];
        let page = &self.pages[lvl.page];
        let (sx, sy) = (
            f64::from(lvl.width) / f64::from(tw),
            f64::from(lvl.height) / f64::from(th),
        );
        let mut sums = vec![0f64; tw as usize * th as usize * 3];
        let mut counts = vec![0f64; tw as usize * th as usize];
        // One row of chunks at a time: memory stays at a row, whatever the level's size.
        let across = page.chunks_across() as usize;
        for cy in 0..page.chunks_down() as usize {
            let wanted: Vec<usize> = (cy * across..(cy + 1) * across).collect();
            let chunks = self.chunks(lvl.page, &wanted)?;
            for (&index, chunk) in wanted.iter().zip(&chunks) {
                let (ox, oy) = (
                    (index % across) as u32 * page.chunk_w,
                    cy as u32 * page.chunk_h,
                );
                let rows = codec::chunk_rows(page, index);
                for py in 0..rows.min(lvl.height.saturating_sub(oy)) {
                    let ty = ((f64::from(oy + py) / sy) as usize).min(th as usize - 1);
                    for px in 0..page.chunk_w.min(lvl.width.saturating_sub(ox)) {
                        let tx = ((f64::from(ox + px) / sx) as usize).min(tw as usize - 1);
                        let s = (py * page.chunk_w + px) as usize * 3;
                        let t = ty * tw as usize + tx;
                        counts[t] += 1.0;
                        for c in 0..3 {
                            sums[t * 3 + c] += f64::from(chunk[s + c]);
                        }
                    }
                }
            }
        }
        let mut thumb = RgbImage::new(tw, th);
        for (t, px) in thumb.pixels_mut().enumerate() {
            let n = counts[t].max(1.0);
            for c in 0..3 {
                px.0[c] = (sums[t * 3 + c] / n).round().clamp(0.0, 255.0) as u8;
            }
        }
        Ok((thumb, scale))
    }

    /// Decoded chunks `indices` of page `page`, from the cache or decoded in parallel.
    fn chunks(&self, page: usize, indices: &[usize]) -> Result<Vec<Arc<Vec<u8>>>, SlideError> {
        let mut found: Vec<Option<Arc<Vec<u8>>>> = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            indices.iter().map(|&i| cache.get((page, i))).collect()
        };
        let missing: Vec<usize> = (0..indices.len()).filter(|&k| found[k].is_none()).collect();
        let decode = |&k: &usize| self.decode(page, indices[k]).map(Arc::new);
        #[cfg(not(target_arch = "wasm32"))]
        let decoded: Vec<Result<Chunk, SlideError>> = missing.par_iter().map(decode).collect();
        #[cfg(target_arch = "wasm32")]
        let decoded: Vec<Result<Chunk, SlideError>> = missing.iter().map(decode).collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (&k, chunk) in missing.iter().zip(decoded) {
            let chunk = chunk?;
            cache.put((page, indices[k]), chunk.clone());
            found[k] = Some(chunk);
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// Read and decode one chunk.
    fn decode(&self, page_index: usize, index: usize) -> Result<Vec<u8>, SlideError> {
        let page = &self.pages[page_index];
        let level = self
            .levels
            .iter()
            .position(|l| l.page == page_index)
            .map_or_else(
                || "an associated image".to_string(),
                |l| format!("level {l}"),
            );
        let err = |m: String| SlideError::new(&self.name, format!("{level}, tile {index}: {m}"));
        codec::check_supported(page).map_err(&err)?;
        let (offset, count) = (page.offsets[index], page.byte_counts[index]);
        if count == 0 {
            // A sparse tile (never written): background.
            let rows = codec::chunk_rows(page, index) as usize;
            return Ok(vec![255; page.chunk_w as usize * rows * 3]);
        }
        let total = self.source.len();
        if offset.checked_add(count).is_none_or(|end| end > total) {
            return Err(err(format!(
                "its data (byte {offset}, {count} bytes) lies past the end of the file ({total} \
                 bytes): the file is truncated; copy it again"
            )));
        }
        if count > 1 << 30 {
            return Err(err(format!(
                "{count} bytes of compressed data: the file is corrupt"
            )));
        }
        let mut data = vec![0u8; count as usize];
        self.source
            .read_at(offset, &mut data)
            .map_err(|e| err(format!("reading {count} bytes at byte {offset}: {e}")))?;
        codec::decode_chunk(page, index, &data).map_err(err)
    }
}

/// The pyramid: the first page, then every other page with the same chunking (tiled or not)
/// and the same aspect ratio, smaller, in decreasing size. Aperio's thumbnail (stripped),
/// labels and macros (other aspect ratios or marked as such) are left out.
fn pyramid(pages: &[tiff::Page]) -> Vec<Level> {
    let first = &pages[0];
    let (w0, h0) = (f64::from(first.width), f64::from(first.height));
    let mut chosen: Vec<usize> = vec![0];
    for (i, p) in pages.iter().enumerate().skip(1) {
        // NewSubfileType bit 0 marks a reduced resolution; any other bit (Aperio marks its
        // macro with 9) or a label/macro description marks an associated image.
        let associated = {
            let d = p.description.to_ascii_lowercase();
            p.subfile_type & !1 != 0 || d.starts_with("label") || d.starts_with("macro")
        };
        if associated || p.tiled != first.tiled || p.width >= first.width {
            continue;
        }
        let ds = h0 / f64::from(p.height);
        let expected_w = w0 / ds;
        if (expected_w - f64::from(p.width)).abs() > (0.01 * f64::from(p.width)).max(2.0) {
            continue;
        }
        if codec::check_supported(p).is_err() {
            continue;
        }
        chosen.push(i);
    }
    chosen.sort_by_key(|&i| std::cmp::Reverse(pages[i].width));
    chosen.dedup_by_key(|i| pages[*i].width);
    chosen
        .into_iter()
        .map(|i| {
            let p = &pages[i];
            Level {
                width: p.width,
                height: p.height,
                downsample: (w0 / f64::from(p.width) + h0 / f64::from(p.height)) / 2.0,
                tile_width: p.chunk_w,
                tile_height: p.chunk_h,
                compression: codec::compression_name(p.compression),
                page: i,
            }
        })
        .collect()
}

/// A chunk: (page, index in the page).
type ChunkKey = (usize, usize);
/// A decoded chunk, shared between the cache and the readers.
type Chunk = Arc<Vec<u8>>;

/// Decoded chunks under a byte budget, least recently used evicted first.
struct ChunkCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: HashMap<ChunkKey, (u64, Chunk)>,
}

impl ChunkCache {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, key: (usize, usize)) -> Option<Arc<Vec<u8>>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(&key).map(|(used, chunk)| {
            *used = clock;
            chunk.clone()
        })
    }

    fn put(&mut self, key: (usize, usize), chunk: Arc<Vec<u8>>) {
        self.clock += 1;
        self.used += chunk.len();
        if let Some((_, old)) = self.entries.insert(key, (self.clock, chunk)) {
            self.used -= old.len();
        }
        self.evict();
    }

    fn evict(&mut self) {
        while self.used > self.budget && !self.entries.is_empty() {
            let Some((&oldest, _)) = self.entries.iter().min_by_key(|(_, (t, _))| *t) else {
                break;
            };
            if let Some((_, chunk)) = self.entries.remove(&oldest) {
                self.used -= chunk.len();
            }
        }
    }
}
