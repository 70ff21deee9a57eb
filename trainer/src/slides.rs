//! Whole-slide images on the command line: how a slide is cut into tiles (shared by `tile`,
//! `features --slide` and `predict --slide`), and embedding a slide's tiles without writing
//! them.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use image::RgbImage;
use mtpath_shared::inference::FeatureExtractor;
use mtpath_shared::preprocess::preprocess_views;
use mtpath_shared::slide::{
    detect_tissue, plan_tiles, Magnification, Slide, TilePlan, TileSpec, TissueMask,
};
use rayon::prelude::*;

/// Tile resolution used when neither --mpp nor --level is given (about 20× objective).
pub const DEFAULT_MPP: f64 = 0.5;

/// Where and how densely tiles are cut from a slide.
#[derive(clap::Args, Clone, Debug)]
pub struct TileArgs {
    /// Resolution of the tiles in microns per pixel (0.5 ≈ 20×, 0.25 ≈ 40×); default 0.5
    /// when the slide records its own, else level 0.
    #[arg(long, conflicts_with = "level")]
    pub mpp: Option<f64>,
    /// Cut tiles from this pyramid level's own pixels instead (0 = full resolution).
    #[arg(long)]
    pub level: Option<usize>,
    /// Keep tiles with at least this fraction of tissue (0 keeps every tile).
    #[arg(long, default_value_t = 0.5)]
    pub min_tissue: f32,
    /// The slide's own microns per pixel at level 0, for files that do not record it (or
    /// record it wrong).
    #[arg(long)]
    pub slide_mpp: Option<f64>,
    /// Longer side, in pixels, of the thumbnail that tissue is detected on and pictures are
    /// drawn over.
    #[arg(long, default_value_t = mtpath_shared::slide::DEFAULT_THUMBNAIL_SIDE)]
    pub thumbnail: u32,
}

/// A slide with its thumbnail, tissue mask and tiles.
pub struct OpenedSlide {
    pub slide: Slide,
    pub thumb: RgbImage,
    /// Level-0 pixels per thumbnail pixel.
    pub scale: f64,
    pub mask: TissueMask,
    pub plan: TilePlan,
}

/// Open `path`, find its tissue and plan its tiles of `size` pixels; one summary line on
/// stderr.
pub fn open_slide(path: &Path, args: &TileArgs, size: u32) -> Result<OpenedSlide> {
    let mut slide = Slide::open(path)?;
    if let Some(mpp) = args.slide_mpp {
        if !(mpp.is_finite() && mpp > 0.0) {
            bail!("--slide-mpp {mpp}: give the slide's microns per pixel, e.g. 0.25");
        }
        slide.set_mpp(mpp);
    }
    let at = match (args.mpp, args.level) {
        (Some(m), _) => Magnification::Mpp(m),
        (None, Some(l)) => Magnification::Level(l),
        (None, None) if slide.mpp().is_some() => Magnification::Mpp(DEFAULT_MPP),
        (None, None) => {
            eprintln!(
                "note: {} does not record its microns per pixel: tiles are cut at level 0 \
                 (give --slide-mpp to cut at --mpp {DEFAULT_MPP})",
                path.display()
            );
            Magnification::Level(0)
        }
    };
    let (thumb, scale) = slide.thumbnail(args.thumbnail.max(16))?;
    let mask = detect_tissue(&thumb, scale);
    let spec = TileSpec {
        size,
        at,
        min_tissue: args.min_tissue,
    };
    let plan = plan_tiles(&slide, spec, Some(&mask))?;
    let (w, h) = slide.dimensions();
    let level = &slide.levels()[plan.read_level];
    eprintln!(
        "{}: {}, {w}x{h} px in {} level(s), {}; tissue {:.0}% of the slide; {} of {} tiles of \
         {size} px{} from level {} ({})",
        path.display(),
        slide.format().as_str(),
        slide.levels().len(),
        slide
            .mpp()
            .map_or("microns per pixel unknown".to_string(), |m| format!(
                "{m:.4} µm/px"
            )),
        100.0 * mask.coverage(),
        plan.tiles.len(),
        u64::from(plan.columns) * u64::from(plan.rows),
        plan.mpp
            .map_or(String::new(), |m| format!(" at {m:.3} µm/px")),
        plan.read_level,
        if (plan.footprint / level.downsample - f64::from(size)).abs() < 1e-3 {
            "its own pixels".to_string()
        } else {
            format!("{:.1} px resized", plan.footprint / level.downsample)
        },
    );
    if let Some(m) = plan.mpp {
        if let Some(base) = slide.mpp() {
            if m < base * 0.999 {
                eprintln!(
                    "warning: {}: {m} µm/px is finer than the scan ({base:.4} µm/px): tiles \
                     are enlarged",
                    path.display()
                );
            }
        }
    }
    Ok(OpenedSlide {
        slide,
        thumb,
        scale,
        mask,
        plan,
    })
}

/// Refuse a slide none of whose tiles has enough tissue to embed.
pub fn require_tiles(path: &Path, opened: &OpenedSlide) -> Result<()> {
    if opened.plan.tiles.is_empty() {
        bail!(
            "{}: no tile has {} tissue or more; lower --min-tissue (0 keeps every tile)",
            path.display(),
            opened.plan.spec.min_tissue
        );
    }
    Ok(())
}

/// Features of every planned tile, in the plan's order, `batch` tiles at a time (read and
/// preprocessed in parallel), with a progress line on stderr.
pub fn embed_slide(
    extractor: &FeatureExtractor,
    opened: &OpenedSlide,
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let cfg = *extractor.preprocess_config();
    let tiles = &opened.plan.tiles;
    let start = Instant::now();
    let mut rows = Vec::with_capacity(tiles.len());
    for chunk in tiles.chunks(batch.max(1)) {
        let inputs: Vec<Vec<Vec<f32>>> = chunk
            .par_iter()
            .map(|t| -> Result<_> {
                let img = opened.slide.read_tile(&opened.plan, t)?;
                Ok(preprocess_views(&img, &cfg)?)
            })
            .collect::<Result<_>>()?;
        rows.extend(extractor.extract_views(&inputs)?);
        let done = rows.len();
        let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r  {done}/{} tiles, {rate:.1} tiles/s, ETA {:.0} s   ",
            tiles.len(),
            (tiles.len() - done) as f64 / rate.max(1e-9)
        );
        std::io::stderr().flush().ok();
    }
    eprintln!();
    Ok(rows)
}

/// The JSON record of a slide's tiles that features files carry: the slide, how it was cut,
/// and each row's tile (level-0 x, y, and tissue fraction).
pub fn tiles_record(path: &Path, opened: &OpenedSlide) -> serde_json::Value {
    let plan = &opened.plan;
    serde_json::json!({
        "slide": path.display().to_string(),
        "format": opened.slide.format().as_str(),
        "dimensions": opened.slide.dimensions(),
        "slide_mpp": opened.slide.mpp(),
        "tile_size": plan.spec.size,
        "tile_mpp": plan.mpp,
        "footprint": plan.footprint,
        "read_level": plan.read_level,
        "min_tissue": plan.spec.min_tissue,
        "tiles": plan.tiles.iter().map(|t| [t.x as f64, t.y as f64, f64::from(t.tissue)]).collect::<Vec<_>>(),
    })
}

/// Name of a slide's tile at level-0 (`x`, `y`) in row lists: `SLIDE@xX_yY` (no comma, so
/// CSV files need no quoting; `mtpath tile` names the file of the same tile `SLIDE_xX_yY`).
pub fn tile_name(path: &Path, x: u64, y: u64) -> String {
    format!("{}@x{x}_y{y}", path.display())
}
