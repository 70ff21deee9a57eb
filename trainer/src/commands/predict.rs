//! `mtpath predict`: apply a probe file (exported by the browser explorer, or by any tool that
//! writes the `mtpath-probe/1` JSON) to features or images, natively.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mtpath_shared::features_file::FeaturesFile;
use mtpath_shared::preprocess::EvalTransform;
use mtpath_shared::probe::ProbeFile;
use mtpath_shared::Arch;

use crate::evaluate::features::load_extractor;
use crate::images::collect_images;
use crate::train::metrics::csv_field;

/// Classify with a probe file: one CSV row per image with the predicted class and, for
/// logistic probes, every class's probability (decision values for SVM probes).
///
/// Examples: mtpath predict --probe probe.json --features feats.safetensors --out predictions.csv
///           mtpath predict --probe probe.json --weights model.safetensors --out predictions.csv tiles/
#[derive(Parser)]
pub struct Args {
    /// The probe file (JSON, `mtpath-probe/1`).
    #[arg(long)]
    probe: PathBuf,
    /// A features file written by `mtpath features` or exported by the explorer.
    #[arg(long, conflicts_with_all = ["weights", "images"])]
    features: Option<PathBuf>,
    /// Weights to embed IMAGES with (the model the probe was trained on).
    #[arg(long, requires = "images")]
    weights: Option<String>,
    /// Architecture when the weights file has no model card.
    #[arg(long)]
    arch: Option<Arch>,
    /// With --weights: how images become the network's input: resize (shorter side to size × 256/224, then
    /// a center crop), center-crop (at native resolution, keeping the scan's magnification)
    /// or grid (features averaged over non-overlapping native-resolution crops).
    #[arg(long, default_value = "resize")]
    eval_transform: EvalTransform,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Output CSV (`-` for standard output).
    #[arg(long, default_value = "-")]
    out: String,
    /// Image files or folders (with --weights).
    images: Vec<PathBuf>,
}

/// Row names and features (row-major) of a features file.
fn read_features_file(path: &Path) -> Result<(Vec<String>, Vec<f32>, usize)> {
    let file = FeaturesFile::read(path)?;
    Ok((file.images, file.features, file.dim))
}

pub fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.probe)
        .with_context(|| format!("reading probe {}", args.probe.display()))?;
    let probe = ProbeFile::from_json(&text, &args.probe.display().to_string())?;
    let model = probe.model()?;
    let (names, x, d) = match (&args.features, &args.weights) {
        (Some(f), _) => read_features_file(f)?,
        (None, Some(w)) => {
            let images = collect_images(&args.images)?;
            let (extractor, _) = load_extractor(w, args.arch, None, args.eval_transform)?;
            if let Some(src) = &probe.features {
                if src.architecture != extractor.metadata().trunk.architecture.name() {
                    bail!(
                        "{}: the probe was trained on {} features, but {w} is a {}; use the same model",
                        args.probe.display(),
                        src.architecture,
                        extractor.metadata().trunk.architecture.name()
                    );
                }
            }
            let rows = super::features::embed_images(&extractor, &images, args.batch)?;
            let d = extractor.feature_dim();
            let names = images.iter().map(|p| p.display().to_string()).collect();
            (names, rows.concat(), d)
        }
        (None, None) => bail!("give --features FILE, or --weights FILE and images"),
    };
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
    let mut out = String::from("file,predicted");
    for (i, c) in probe.classes.iter().enumerate() {
        if logistic {
            let _ = write!(out, ",p_{}", csv_field(c));
        } else if width == k || i == 1 {
            let _ = write!(out, ",decision_{}", csv_field(c));
        }
    }
    out.push('\n');
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            out,
            "{},{}",
            csv_field(name),
            csv_field(&probe.classes[pred[i] as usize])
        );
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
