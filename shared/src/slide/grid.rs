//! A grid of square tiles over a slide at a requested resolution, kept where there is tissue.

use image::RgbImage;

use super::{Slide, SlideError, TissueMask};
use crate::preprocess::resize_exact;

/// The resolution tiles are cut at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Magnification {
    /// Microns per pixel of the tiles (needs the slide's own, from its file or given).
    Mpp(f64),
    /// A pyramid level's own pixels.
    Level(usize),
}

/// What tiles to cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileSpec {
    /// Side of a tile, in pixels.
    pub size: u32,
    /// Their resolution.
    pub at: Magnification,
    /// Smallest fraction of tissue a kept tile has (0 keeps every tile).
    pub min_tissue: f32,
}

/// Where one tile lies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TilePosition {
    /// Column and row in the grid.
    pub col: u32,
    pub row: u32,
    /// Top-left corner in level-0 pixels.
    pub x: u64,
    pub y: u64,
    /// Fraction of tissue (1 when no mask was used).
    pub tissue: f32,
}

/// The tiles of a slide and how to read them.
#[derive(Clone, Debug, PartialEq)]
pub struct TilePlan {
    /// The spec the plan follows.
    pub spec: TileSpec,
    /// Side of a tile in level-0 pixels.
    pub footprint: f64,
    /// The level read (the coarsest not coarser than the tiles), and its downsample.
    pub read_level: usize,
    pub read_downsample: f64,
    /// Microns per pixel of the tiles, when the slide's is known.
    pub mpp: Option<f64>,
    /// Grid size (whole tiles inside the slide).
    pub columns: u32,
    pub rows: u32,
    /// Kept tiles, row by row.
    pub tiles: Vec<TilePosition>,
}

/// Plan the tiles of `slide` for `spec`, keeping those with at least `spec.min_tissue` of
/// tissue in `mask` (every tile when there is no mask).
pub fn plan_tiles(
    slide: &Slide,
    spec: TileSpec,
    mask: Option<&TissueMask>,
) -> Result<TilePlan, SlideError> {
    let err = |m: String| SlideError::new(slide.name(), m);
    if spec.size == 0 {
        return Err(err("tile size 0: give a size in pixels, e.g. 224".into()));
    }
    if !(0.0..=1.0).contains(&spec.min_tissue) {
        return Err(err(format!(
            "minimum tissue fraction {} is not between 0 and 1",
            spec.min_tissue
        )));
    }
    let (downsample, mpp) = match spec.at {
        Magnification::Level(l) => {
            let lvl = slide.levels().get(l).ok_or_else(|| {
                err(format!(
                    "no level {l}: the slide has levels 0 to {}",
                    slide.levels().len() - 1
                ))
            })?;
            (lvl.downsample, slide.mpp().map(|m| m * lvl.downsample))
        }
        Magnification::Mpp(target) => {
            if !(target.is_finite() && target > 0.0) {
                return Err(err(format!("--mpp {target} must be a positive number")));
            }
            let base = slide.mpp().ok_or_else(|| {
                err(
                    "the file does not say how large its pixels are (no MPP); give the \
                     slide's microns per pixel (--slide-mpp), or tile at a pyramid level \
                     (--level) instead of --mpp"
                        .into(),
                )
            })?;
            (target / base, Some(target))
        }
    };
    let footprint = f64::from(spec.size) * downsample;
    let (w0, h0) = slide.dimensions();
    let columns = (f64::from(w0) / footprint + 1e-9).floor() as u32;
    let rows = (f64::from(h0) / footprint + 1e-9).floor() as u32;
    let read_level = slide.best_level_for(downsample);
    let mut tiles = Vec::new();
    for row in 0..rows {
        for col in 0..columns {
            let (x, y) = (f64::from(col) * footprint, f64::from(row) * footprint);
            let tissue = mask.map_or(1.0, |m| m.fraction(x, y, footprint, footprint));
            if tissue >= spec.min_tissue {
                tiles.push(TilePosition {
                    col,
                    row,
                    x: x.round() as u64,
                    y: y.round() as u64,
                    tissue,
                });
            }
        }
    }
    Ok(TilePlan {
        spec,
        footprint,
        read_level,
        read_downsample: slide.levels()[read_level].downsample,
        mpp,
        columns,
        rows,
        tiles,
    })
}

impl Slide {
    /// The pixels of one planned tile, `size` × `size`: read at the plan's level, and resized
    /// (Pillow's antialiased bilinear) when that level's pixels are not the tile's.
    pub fn read_tile(&self, plan: &TilePlan, tile: &TilePosition) -> Result<RgbImage, SlideError> {
        let d = plan.read_downsample;
        let size = plan.spec.size;
        let side = plan.footprint / d;
        let x = (tile.x as f64 / d).round() as i64;
        let y = (tile.y as f64 / d).round() as i64;
        let native = (side - f64::from(size)).abs() < 1e-3;
        let read_side = if native {
            size
        } else {
            side.round().max(1.0) as u32
        };
        let region = self.read_region(plan.read_level, x, y, read_side, read_side)?;
        if read_side == size {
            return Ok(region);
        }
        resize_exact(&region, size, size).map_err(|e| SlideError::new(self.name(), e.to_string()))
    }
}
