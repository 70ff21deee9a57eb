//! `mtpath export`: the web model (BatchNorm folded, f32 or f16) and its model card.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use mtpath_shared::export::{export, probe_batch, relative_difference, sha256_hex, Export};
use mtpath_shared::fsutil::write_atomic;
use mtpath_shared::inference::FeatureExtractor;
use mtpath_shared::weights::{read_weights_file, ExportDtype, SourceInfo, TensorFile};
use mtpath_shared::Arch;

use crate::train::checkpoint::{find_checkpoint_dir, MODEL_FILE};

/// Side of the probe images the export is checked on (any side ≥ 32 exercises every layer).
const CHECK_SIDE: usize = 96;

/// Write the model the browser explorer loads: the trunk with BatchNorm folded into the
/// convolutions (DenseNet's pre-activation BatchNorms become per-channel affines), heads and
/// classifier dropped, tensors in f32 or f16; plus `card.json` and `card.md` (architecture,
/// preprocessing, tasks and classes, dtype, source file and its SHA-256). The export is
/// checked against the source on probe images before anything is written.
///
/// Examples: mtpath export runs/r18 --out web-model --dtype f16
///           mtpath export resnet50.pth --arch resnet50 --out web-r50
#[derive(Parser)]
pub struct Args {
    /// A training run directory (uses RUN/best/model.safetensors, else RUN/last/…), a
    /// checkpoint directory, or a weights file: mtpath checkpoint, trunk.safetensors,
    /// torchvision state dict (.safetensors or .pth), or an earlier export.
    input: PathBuf,
    /// Output directory: model.safetensors, card.json, card.md.
    #[arg(long)]
    out: PathBuf,
    /// Tensor type: f32 (exact up to rounding) or f16 (half the size; features within a few
    /// 1e-3 relative; the stem kernel and per-channel vectors stay f32).
    #[arg(long, default_value = "f32")]
    dtype: ExportDtype,
    /// Architecture (resnet18/34/50/101, densenet121/169) when the file has no mtpath
    /// metadata; default: inferred from the tensor names.
    #[arg(long)]
    arch: Option<Arch>,
}

/// The weights file behind `input`: a run's best (else last) checkpoint, a checkpoint
/// directory's model, or the file itself.
fn resolve_input(input: &Path) -> Result<PathBuf> {
    if input.is_dir() {
        for name in ["best", "last"] {
            if let Some(dir) = find_checkpoint_dir(input, name) {
                return Ok(dir.join(MODEL_FILE));
            }
            let p = input.join(name).join(MODEL_FILE);
            if p.is_file() {
                return Ok(p);
            }
        }
        let p = input.join(MODEL_FILE);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "{}: a directory, but neither a training run (no best/{MODEL_FILE} or \
             last/{MODEL_FILE}) nor a checkpoint directory (no {MODEL_FILE})",
            input.display()
        );
    }
    if !input.exists() {
        bail!("{}: no such file or directory", input.display());
    }
    Ok(input.to_path_buf())
}

/// Relative L2 difference between the features of the written bytes (loaded as the browser
/// and `mtpath features` load them) and those of the source weights, on probe images.
fn check(file: &TensorFile, arch: Arch, exported: &Export, out: &Path) -> Result<f64> {
    let device = Device::Cpu;
    let reference = FeatureExtractor::from_tensor_file(file, Some(arch), &device)?;
    let candidate = FeatureExtractor::from_safetensors_bytes(
        &exported.model,
        &out.display().to_string(),
        &device,
    )?;
    if !candidate.is_folded() {
        bail!("internal error: the export does not load as a folded model");
    }
    let x = probe_batch(2, CHECK_SIDE, &device)?;
    let want = reference.features_t(&x)?.flatten_all()?.to_vec1::<f32>()?;
    let got = candidate.features_t(&x)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(relative_difference(&got, &want))
}

fn megabytes(n: usize) -> f64 {
    n as f64 / 1e6
}

pub fn run(args: Args) -> Result<()> {
    let weights = resolve_input(&args.input)?;
    // Never write over the source, nor over the card of the checkpoint it sits in
    // (e.g. --out RUN/best).
    let same_dir = match (args.out.canonicalize(), weights.canonicalize()) {
        (Ok(out), Ok(src)) => src.parent() == Some(out.as_path()),
        _ => false,
    };
    if same_dir
        && (weights.file_name() == Some(MODEL_FILE.as_ref()) || args.out.join("card.json").exists())
    {
        bail!(
            "--out {}: would overwrite the source {} or its card; choose another directory",
            args.out.display(),
            weights.display()
        );
    }

    let bytes = std::fs::read(&weights)
        .with_context(|| format!("{}: cannot read the weights", weights.display()))?;
    let sha256 = sha256_hex(&bytes);
    drop(bytes);
    let file = read_weights_file(&weights, &Device::Cpu)?;
    let source = SourceInfo {
        file: weights.display().to_string(),
        sha256,
    };
    let exported = export(&file, args.arch, args.dtype, source)?;
    let arch = exported.card.trunk.architecture;

    let out_model = args.out.join("model.safetensors");
    let rel = check(&file, arch, &exported, &out_model)?;
    let tolerance = match args.dtype {
        ExportDtype::F32 => 1e-4,
        ExportDtype::F16 => 2e-2,
    };
    if !rel.is_finite() || rel > tolerance {
        bail!(
            "{}: the exported model's features differ from the source's by {rel:.2e} (relative \
             L2; at most {tolerance:.0e} expected for {}); nothing written",
            weights.display(),
            args.dtype
        );
    }

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output directory", args.out.display()))?;
    write_atomic(&out_model, &exported.model)?;
    write_atomic(
        &args.out.join("card.json"),
        format!("{}\n", exported.card.to_json()?).as_bytes(),
    )?;
    write_atomic(
        &args.out.join("card.md"),
        exported.card.to_markdown().as_bytes(),
    )?;

    let source_size = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "exported {arch} ({}, BatchNorm folded; {} tensors, {} values) from {}",
        args.dtype,
        exported.card.tensors,
        exported.card.parameters,
        weights.display()
    );
    if !exported.card.tasks.is_empty() {
        let names: Vec<&str> = exported
            .card
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        eprintln!(
            "  tasks (heads dropped, names kept in the card): {}",
            names.join(", ")
        );
    }
    eprintln!(
        "  check: features differ from the source's by {rel:.2e} (relative L2, 2 probe images \
         at {CHECK_SIDE} px)"
    );
    eprintln!(
        "wrote {} ({:.1} MB; source {:.1} MB), card.json, card.md",
        out_model.display(),
        megabytes(exported.model.len()),
        megabytes(source_size as usize)
    );
    Ok(())
}
