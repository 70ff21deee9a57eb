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
            })
        }
        (None, Some(w)) => {
            let images = collect_images(&args.images)?;
            let loaded = load_extractor(w, args.arch, None, args.eval_transform)?;
            let extractor = &loaded.extractor;
            let cfg = extractor.preprocess_config();
            let source = FeatureSource {
                architecture: extractor.metadata().trunk.architecture.name().to_string(),
                feature_dim: extractor.feature_dim(),
                input_size: cfg.crop,
                resize: cfg.resize_shorter,
                model_sha256: Some(loaded.weights_sha256.clone()),
                transform: Some(cfg.transform.as_str().to_string()),
            };
            let rows = super::features::embed_images(extractor, &images, args.batch)?;
            Ok(Inputs {
                names: images.iter().map(|p| p.display().to_string()).collect(),
                x: rows.concat(),
                dim: extractor.feature_dim(),
                source: Some(source),
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
        names, x, dim: d, ..
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
