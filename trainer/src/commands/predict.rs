//! `mtpath predict`: apply a probe file (exported by the browser explorer, or by any tool that
//! writes the `mtpath-probe/1` JSON) to features or images, natively.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mtpath_shared::features_file::FeaturesFile;
use mtpath_shared::preprocess::EvalTransform;
use mtpath_shared::probe::{FeatureSource, ProbeFile};
use mtpath_shared::Arch;

use crate::evaluate::features::load_extractor;
use crate::images::collect_images;
use crate::train::metrics::csv_field;

/// Classify with a probe file: one CSV row per image with the predicted class and, for
/// logistic probes, every class's probability (decision values for SVM probes).
///
/// With --slide, classifies every tissue tile of a whole-slide image without writing tiles:
/// one row per tile with its level-0 x, y and size, and a heatmap over the slide's thumbnail
/// (--heatmap; one class's probability, or every tile in its predicted class's colour).
///
/// Examples: mtpath predict --probe probe.json --features feats.safetensors --out predictions.csv
///           mtpath predict --probe probe.json --weights model.safetensors --out predictions.csv tiles/
///           mtpath predict --probe probe.json --weights pool-r18 --slide case1.svs --out case1.csv --heatmap case1.png
#[derive(Parser)]
pub struct Args {
    /// The probe file (JSON, `mtpath-probe/1`).
    #[arg(long)]
    probe: PathBuf,
    /// A features file written by `mtpath features` or exported by the explorer.
    #[arg(long, conflicts_with_all = ["weights", "images"])]
    features: Option<PathBuf>,
    /// Weights to embed IMAGES or the --slide with (the model the probe was trained on).
    #[arg(long)]
    weights: Option<String>,
    /// A whole-slide image (SVS, pyramidal TIFF, OME-TIFF): classify its tissue tiles.
    #[arg(long, requires = "weights", conflicts_with_all = ["features", "images"])]
    slide: Option<PathBuf>,
    /// With --slide: tile side in pixels, before the model's preprocessing (as `mtpath tile
    /// --size`).
    #[arg(long, default_value_t = 224)]
    tile_size: u32,
    #[command(flatten)]
    tiling: crate::slides::TileArgs,
    /// With --slide: write a heatmap of the predictions over the slide's thumbnail (PNG).
    #[arg(long, requires = "slide")]
    heatmap: Option<PathBuf>,
    /// The class whose probability the heatmap shows (default: the second class of a binary
    /// probe; with more classes, each tile in its predicted class's colour).
    #[arg(long, requires = "heatmap")]
    heatmap_class: Option<String>,
    /// Architecture when the weights file has no model card.
    #[arg(long)]
    arch: Option<Arch>,
    /// With --weights: how images become the network's input: resize (shorter side to size × 256/224, then
    /// a center crop), center-crop (at native resolution, keeping the scan's magnification)
    /// or grid (features averaged over non-overlapping native-resolution crops).
    #[arg(long, default_value = "resize")]
    eval_transform: EvalTransform,
    /// With --weights: centre-crop side in pixels (the network's input; default the model's).
    #[arg(long)]
    size: Option<u32>,
    /// With --weights: shorter side before cropping (default: size × 256/224).
    #[arg(long)]
    resize: Option<u32>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Output CSV (`-` for standard output).
    #[arg(long, default_value = "-")]
    out: String,
    /// Image files or folders (with --weights).
    images: Vec<PathBuf>,
    /// Apply the probe even when the features come from another model or preprocessing than
    /// the one it was trained on (by default such a mismatch is refused).
    #[arg(long)]
    ignore_provenance: bool,
}

/// Where the probe's inputs come from: row names, row-major features, their length, and the
/// model and preprocessing that made them when known.
struct Inputs {
    names: Vec<String>,
    x: Vec<f32>,
    dim: usize,
    source: Option<FeatureSource>,
    /// The slide the rows are tiles of (--slide).
    slide: Option<crate::slides::OpenedSlide>,
}

/// What the features of an extractor are, for provenance checks.
fn source_of(loaded: &crate::evaluate::features::LoadedExtractor) -> FeatureSource {
    let extractor = &loaded.extractor;
    let cfg = extractor.preprocess_config();
    FeatureSource {
        architecture: extractor.metadata().trunk.architecture.name().to_string(),
        feature_dim: extractor.feature_dim(),
        input_size: cfg.crop,
        resize: cfg.resize_shorter,
        model_sha256: Some(loaded.weights_sha256.clone()),
        transform: Some(cfg.transform.as_str().to_string()),
    }
}

fn read_inputs(args: &Args) -> Result<Inputs> {
    match (&args.features, &args.weights) {
        (Some(f), _) => {
            let file = FeaturesFile::read(f)?;
            let source = FeatureSource::from_features_metadata(&file.metadata, file.dim);
            Ok(Inputs {
                names: file.images,
                x: file.features,
                dim: file.dim,
                source,
                slide: None,
            })
        }
        (None, Some(w)) if args.slide.is_some() => {
            let path = args.slide.as_deref().unwrap_or(Path::new(""));
            let opened = crate::slides::open_slide(path, &args.tiling, args.tile_size)?;
            crate::slides::require_tiles(path, &opened)?;
            let mut loaded = load_extractor(w, args.arch, None, args.eval_transform)?;
            super::features::set_sizes(&mut loaded.extractor, args.size, args.resize)?;
            let rows = crate::slides::embed_slide(&loaded.extractor, &opened, args.batch)?;
            Ok(Inputs {
                names: (opened.plan.tiles.iter())
                    .map(|t| crate::slides::tile_name(path, t.x, t.y))
                    .collect(),
                x: rows.concat(),
                dim: loaded.extractor.feature_dim(),
                source: Some(source_of(&loaded)),
                slide: Some(opened),
            })
        }
        (None, Some(w)) => {
            if args.images.is_empty() {
                bail!("give image files or folders to classify, or --slide SLIDE");
            }
            let images = collect_images(&args.images)?;
            let mut loaded = load_extractor(w, args.arch, None, args.eval_transform)?;
            super::features::set_sizes(&mut loaded.extractor, args.size, args.resize)?;
            let extractor = &loaded.extractor;
            let rows = super::features::embed_images(extractor, &images, args.batch)?;
            Ok(Inputs {
                names: images.iter().map(|p| p.display().to_string()).collect(),
                x: rows.concat(),
                dim: extractor.feature_dim(),
                source: Some(source_of(&loaded)),
                slide: None,
            })
        }
        (None, None) => bail!("give --features FILE, or --weights FILE and images"),
    }
}

/// A probe applies only to features of the model and preprocessing it was trained on: refuse
/// any recorded difference unless `ignore`, and say when there is nothing to check.
fn check_provenance(
    probe_path: &Path,
    probe: &ProbeFile,
    inputs: &Inputs,
    ignore: bool,
) -> Result<()> {
    let (Some(expected), Some(actual)) = (&probe.features, &inputs.source) else {
        eprintln!(
            "warning: {}: cannot check that the probe and the features come from the same \
             model ({} records no model)",
            probe_path.display(),
            if probe.features.is_none() {
                "the probe"
            } else {
                "the features file"
            }
        );
        return Ok(());
    };
    let differences = expected.differences(actual);
    if differences.is_empty() {
        return Ok(());
    }
    let list = differences.join("\n  ");
    if ignore {
        eprintln!(
            "warning: {}: applied to features of another model or preprocessing \
             (--ignore-provenance):\n  {list}",
            probe_path.display()
        );
        return Ok(());
    }
    bail!(
        "{}: the probe was trained on features of another model or preprocessing:\n  {list}\n\
         embed the images with the model and settings the probe was trained on, or pass \
         --ignore-provenance to apply it anyway",
        probe_path.display()
    )
}

pub fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.probe)
        .with_context(|| format!("reading probe {}", args.probe.display()))?;
    let probe = ProbeFile::from_json(&text, &args.probe.display().to_string())?;
    let model = probe.model()?;
    let inputs = read_inputs(&args)?;
    check_provenance(&args.probe, &probe, &inputs, args.ignore_provenance)?;
    let Inputs {
        names,
        x,
        dim: d,
        slide,
        ..
    } = inputs;
    if d != probe.n_features {
        bail!(
            "{}: the probe expects {}-d features but the input has {d}; use the model the probe was trained on",
            args.probe.display(),
            probe.n_features
        );
    }
    let n = names.len();
    let k = probe.classes.len();
    let logistic = probe.kind == "logistic";
    let scores = if logistic {
        model.predict_proba(&x, n)?
    } else {
        model.decision_function(&x, n)?
    };
    let pred = model.predict(&x, n)?;
    let width = scores.len() / n.max(1);
    if let Some(opened) = &slide {
        if let Some(heatmap) = &args.heatmap {
            write_heatmap(
                heatmap,
                opened,
                &probe,
                &scores,
                &pred,
                width,
                args.heatmap_class.as_deref(),
            )?;
        }
    }
    let mut out = String::from(if slide.is_some() {
        "slide,x,y,size,tissue,predicted"
    } else {
        "file,predicted"
    });
    for (i, c) in probe.classes.iter().enumerate() {
        if logistic {
            let _ = write!(out, ",p_{}", csv_field(c));
        } else if width == k || i == 1 {
            let _ = write!(out, ",decision_{}", csv_field(c));
        }
    }
    out.push('\n');
    for (i, name) in names.iter().enumerate() {
        match &slide {
            Some(opened) => {
                let t = &opened.plan.tiles[i];
                let _ = write!(
                    out,
                    "{},{},{},{},{:.3}",
                    csv_field(opened.slide.name()),
                    t.x,
                    t.y,
                    opened.plan.footprint.round(),
                    t.tissue
                );
            }
            None => {
                let _ = write!(out, "{}", csv_field(name));
            }
        }
        let _ = write!(out, ",{}", csv_field(&probe.classes[pred[i] as usize]));
        for v in &scores[i * width..(i + 1) * width] {
            let _ = write!(out, ",{v:.6}");
        }
        out.push('\n');
    }
    if args.out == "-" {
        print!("{out}");
    } else {
        mtpath_shared::fsutil::write_atomic(std::path::Path::new(&args.out), out.as_bytes())
            .with_context(|| format!("writing {}", args.out))?;
        eprintln!("wrote {} ({n} predictions)", args.out);
    }
    Ok(())
}

/// The heatmap of a slide's predictions: one class's probability (`class`, or the second of
/// two), else every tile in its predicted class's colour.
fn write_heatmap(
    path: &Path,
    opened: &crate::slides::OpenedSlide,
    probe: &ProbeFile,
    scores: &[f64],
    pred: &[u32],
    width: usize,
    class: Option<&str>,
) -> Result<()> {
    use mtpath_shared::slide::{class_colour, render_heatmap, TileValues};
    let logistic = probe.kind == "logistic";
    let k = probe.classes.len();
    let class_index = match class {
        Some(c) => Some(probe.classes.iter().position(|x| x == c).with_context(|| {
            format!(
                "--heatmap-class {c}: the probe's classes are {}",
                probe.classes.join(", ")
            )
        })?),
        None if k == 2 => Some(1),
        None => None,
    };
    let n = opened.plan.tiles.len();
    let image = match class_index {
        Some(c) if logistic && width == k => {
            let p: Vec<f32> = (0..n).map(|i| scores[i * width + c] as f32).collect();
            eprintln!(
                "heatmap: probability of {} from dark blue (0) to dark red (1)",
                probe.classes[c]
            );
            render_heatmap(
                &opened.thumb,
                opened.scale,
                &opened.plan,
                TileValues::Probability(&p),
            )
        }
        _ => {
            let predicted: Vec<usize> = pred.iter().map(|&p| p as usize).collect();
            let confidence: Vec<f32> = (0..n)
                .map(|i| {
                    if logistic && width == k {
                        scores[i * width + predicted[i]] as f32
                    } else {
                        1.0
                    }
                })
                .collect();
            let legend: Vec<String> = (probe.classes.iter().enumerate())
                .map(|(i, c)| {
                    let [r, g, b] = class_colour(i);
                    format!("{c} #{r:02x}{g:02x}{b:02x}")
                })
                .collect();
            eprintln!("heatmap: predicted class per tile: {}", legend.join(", "));
            render_heatmap(
                &opened.thumb,
                opened.scale,
                &opened.plan,
                TileValues::Classes {
                    predicted: &predicted,
                    confidence: &confidence,
                },
            )
        }
    };
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    mtpath_shared::fsutil::write_atomic(path, &png)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
