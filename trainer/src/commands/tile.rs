//! `mtpath tile`: cut whole-slide images into a task folder of tiles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use mtpath_shared::fsutil::write_atomic;
use mtpath_shared::slide::render_tiles;
use rayon::prelude::*;

use crate::slides::{open_slide, TileArgs};
use crate::train::metrics::csv_field;

/// Cut slides into tiles at a resolution, where there is tissue, and write them as a task
/// folder: images/LABEL/SLIDE/SLIDE_xX_yY.png and manifest.csv (path, label, group = the
/// slide, and the tile's level-0 x, y and size), ready for `train`, `eval`, `features
/// --task` and the explorer. Also slides/SLIDE.png: the thumbnail with the tissue mask and
/// the kept tiles. Tiles already written are kept, so an interrupted run resumes.
///
/// Examples: mtpath tile --mpp 0.5 --size 224 --out tiles/ slide1.svs slide2.svs
///           mtpath tile --labels slides.csv --out pool/tumour-grade slides/*.svs
#[derive(Parser)]
pub struct Args {
    /// Slides: Aperio SVS, pyramidal TIFF/BigTIFF, OME-TIFF.
    #[arg(required = true)]
    slides: Vec<PathBuf>,
    /// Output task folder (created; other slides' tiles already there are kept).
    #[arg(long)]
    out: PathBuf,
    /// Tile side in pixels.
    #[arg(long, default_value_t = 224)]
    size: u32,
    #[command(flatten)]
    tiling: TileArgs,
    /// Label of every tile (default `unlabelled`).
    #[arg(long, conflicts_with = "labels")]
    label: Option<String>,
    /// CSV of slide,label (a slide by file name, with or without extension): each slide's
    /// tiles get its label.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Tile image format.
    #[arg(long, value_enum, default_value_t = TileFormat::Png)]
    format: TileFormat,
    /// JPEG quality (with --format jpeg).
    #[arg(long, default_value_t = 90)]
    quality: u8,
}

/// How tiles are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TileFormat {
    /// Lossless: the tiles' features equal those of `features --slide`.
    Png,
    /// Smaller files.
    Jpeg,
}

const MANIFEST_HEADER: &str = "path,label,group,split,slide,x,y,size";

/// A manifest row: the slide it came from, and the line.
struct Row {
    slide: String,
    line: String,
}

fn slide_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "slide".into())
}

/// Labels from a `slide,label` CSV, keyed by file name and by stem.
fn read_labels(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("{}: cannot read the labels", path.display()))?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(s), Some(l)) = (col("slide"), col("label")) else {
        bail!(
            "{}: the header must name the columns slide and label (is `{}`)",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(",")
        );
    };
    let mut labels = BTreeMap::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.with_context(|| format!("{} line {}", path.display(), i + 2))?;
        let (slide, label) = (rec.get(s).unwrap_or(""), rec.get(l).unwrap_or(""));
        if slide.is_empty() || label.is_empty() {
            bail!(
                "{} line {}: give a slide and a label",
                path.display(),
                i + 2
            );
        }
        let name = Path::new(slide);
        for key in [
            name.file_name().map(|n| n.to_string_lossy().into_owned()),
            Some(slide_stem(name)),
        ]
        .into_iter()
        .flatten()
        {
            labels.insert(key, label.to_string());
        }
    }
    Ok(labels)
}

/// Rows of an existing manifest, by slide (rows without a slide column keep an empty one).
fn read_manifest(path: &Path) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::ReaderBuilder::new()
        .from_path(path)
        .with_context(|| format!("{}: cannot read the manifest", path.display()))?;
    let headers: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    if headers.join(",") != MANIFEST_HEADER {
        bail!(
            "{}: a manifest not written by `mtpath tile` (header `{}`); tile into a new folder",
            path.display(),
            headers.join(",")
        );
    }
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.with_context(|| format!("{}: unreadable row", path.display()))?;
        let fields: Vec<String> = rec.iter().map(csv_field).collect();
        rows.push(Row {
            slide: rec.get(4).unwrap_or("").to_string(),
            line: fields.join(","),
        });
    }
    Ok(rows)
}

/// The cutting of a slide, recorded beside its tiles so that a rerun with other settings
/// does not mix two cuttings in one folder.
fn cutting(
    slide: &Path,
    size: u32,
    args: &Args,
    opened: &crate::slides::OpenedSlide,
) -> serde_json::Value {
    serde_json::json!({
        "slide": slide.display().to_string(),
        "size": size,
        "tile_mpp": opened.plan.mpp,
        "footprint": opened.plan.footprint,
        "read_level": opened.plan.read_level,
        "min_tissue": args.tiling.min_tissue,
        "format": format!("{:?}", args.format).to_lowercase(),
    })
}

pub fn run(args: Args) -> Result<()> {
    let labels = match &args.labels {
        Some(p) => Some(read_labels(p)?),
        None => None,
    };
    let mut stems = BTreeMap::new();
    for s in &args.slides {
        if let Some(other) = stems.insert(slide_stem(s), s.clone()) {
            bail!(
                "{} and {} have the same name; tiles are filed by slide name, so rename one",
                other.display(),
                s.display()
            );
        }
    }
    let manifest_path = args.out.join("manifest.csv");
    let mut rows = read_manifest(&manifest_path)?;
    std::fs::create_dir_all(args.out.join("slides"))
        .with_context(|| format!("{}: cannot create the folder", args.out.display()))?;
    let ext = match args.format {
        TileFormat::Png => "png",
        TileFormat::Jpeg => "jpg",
    };
    let mut total = 0usize;
    for path in &args.slides {
        let stem = slide_stem(path);
        let label = match (&labels, &args.label) {
            (Some(map), _) => map
                .get(&stem)
                .or_else(|| {
                    map.get(
                        &path
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                    )
                })
                .cloned()
                .with_context(|| {
                    format!(
                        "{}: no label for this slide in {}; add a row `{stem},LABEL`",
                        path.display(),
                        args.labels
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    )
                })?,
            (None, Some(l)) => l.clone(),
            (None, None) => "unlabelled".to_string(),
        };
        if label.contains(['/', '\\']) || label.starts_with('.') {
            bail!("label `{label}` cannot be a folder name; use letters, digits, - and _");
        }
        let opened = open_slide(path, &args.tiling, args.size)?;
        let record = cutting(path, args.size, &args, &opened);
        let record_path = args.out.join("slides").join(format!("{stem}.json"));
        if let Ok(text) = std::fs::read_to_string(&record_path) {
            let old: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if old != record {
                bail!(
                    "{}: this folder already holds tiles of {stem} cut otherwise ({}); tile \
                     into another --out, or delete {} and its tiles to cut again",
                    args.out.display(),
                    old,
                    record_path.display()
                );
            }
        }
        write_atomic(
            &record_path,
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        let rel_dir = PathBuf::from("images").join(&label).join(&stem);
        std::fs::create_dir_all(args.out.join(&rel_dir))
            .with_context(|| format!("{}: cannot create the folder", args.out.display()))?;
        let written = AtomicUsize::new(0);
        let tiles = &opened.plan.tiles;
        let quality = args.quality.clamp(1, 100);
        let progress = AtomicUsize::new(0);
        tiles.par_iter().try_for_each(|t| -> Result<()> {
            let rel = rel_dir.join(format!("{stem}_x{}_y{}.{ext}", t.x, t.y));
            let file = args.out.join(&rel);
            if !file.exists() {
                let img = opened.slide.read_tile(&opened.plan, t)?;
                let mut bytes = Vec::new();
                match args.format {
                    TileFormat::Png => img.write_to(
                        &mut std::io::Cursor::new(&mut bytes),
                        image::ImageFormat::Png,
                    )?,
                    TileFormat::Jpeg => {
                        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
                            .encode_image(&img)?
                    }
                }
                write_atomic(&file, &bytes)?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            let done = progress.fetch_add(1, Ordering::Relaxed) + 1;
            if done.is_multiple_of(256) || done == tiles.len() {
                eprint!("\r  {done}/{} tiles   ", tiles.len());
            }
            Ok(())
        })?;
        eprintln!();
        rows.retain(|r| r.slide != path.display().to_string());
        for t in tiles {
            let rel = rel_dir.join(format!("{stem}_x{}_y{}.{ext}", t.x, t.y));
            rows.push(Row {
                slide: path.display().to_string(),
                line: [
                    csv_field(&rel.to_string_lossy()),
                    csv_field(&label),
                    csv_field(&stem),
                    String::new(),
                    csv_field(&path.display().to_string()),
                    t.x.to_string(),
                    t.y.to_string(),
                    format!("{}", opened.plan.footprint.round()),
                ]
                .join(","),
            });
        }
        let overview = render_tiles(&opened.thumb, &opened.mask, &opened.plan);
        let mut png = Vec::new();
        overview.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        write_atomic(&args.out.join("slides").join(format!("{stem}.png")), &png)?;
        eprintln!(
            "  {} tiles ({} new) in {}; overview {}",
            tiles.len(),
            written.load(Ordering::Relaxed),
            args.out.join(&rel_dir).display(),
            args.out
                .join("slides")
                .join(format!("{stem}.png"))
                .display()
        );
        total += tiles.len();
        // The manifest after every slide: an interrupted run keeps what it finished.
        write_manifest(&manifest_path, &rows)?;
    }
    let slides: BTreeSet<&str> = rows.iter().map(|r| r.slide.as_str()).collect();
    eprintln!(
        "wrote {} ({total} tiles from {} slide(s) this run; {} rows from {} slide(s) in all)",
        manifest_path.display(),
        args.slides.len(),
        rows.len(),
        slides.len()
    );
    Ok(())
}

fn write_manifest(path: &Path, rows: &[Row]) -> Result<()> {
    let mut text = String::from(MANIFEST_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(&r.line);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())?;
    Ok(())
}
