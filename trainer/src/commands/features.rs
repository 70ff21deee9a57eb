//! `mtpath features`: embed images with a trunk.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use mtpath_shared::features::FeatureExtractor;
use mtpath_shared::preprocess::preprocess_file;
use mtpath_shared::weights::read_weights_file;
use mtpath_shared::Arch;
use rayon::prelude::*;

use crate::images::collect_images;

/// Embed images: writes one float32 tensor `features` [N, F] (rows in the order of the images)
/// and records the image list, architecture and preprocessing in the file's metadata.
///
/// Example: mtpath features --weights resnet50.safetensors --out feats.safetensors tiles/
#[derive(Parser)]
pub struct Args {
    /// Weights: safetensors (mtpath checkpoint or torchvision state dict) or PyTorch .pth.
    #[arg(long)]
    weights: PathBuf,
    /// Architecture (resnet18/34/50/101, densenet121/169); default: from the file.
    #[arg(long)]
    arch: Option<Arch>,
    /// Centre-crop side in pixels (the network's input).
    #[arg(long)]
    size: Option<u32>,
    /// Shorter side before cropping (default: size × 256/224, as torchvision).
    #[arg(long)]
    resize: Option<u32>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Image files or directories (searched recursively for JPEG/PNG/TIFF).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let images = collect_images(&args.images)?;
    let file = read_weights_file(&args.weights, &Device::Cpu)?;
    let mut extractor = FeatureExtractor::from_tensor_file(&file, args.arch, &Device::Cpu)?;
    if let Some(size) = args.size {
        let resize = args
            .resize
            .unwrap_or((size as f64 * 256.0 / 224.0).round() as u32);
        extractor.set_sizes(resize, size)?;
    } else if let Some(resize) = args.resize {
        let crop = extractor.preprocess_config().crop;
        extractor.set_sizes(resize, crop)?;
    }
    let cfg = *extractor.preprocess_config();
    let batch = args.batch.max(1);
    eprintln!(
        "{} images, {} ({}-d features), resize {} → crop {}",
        images.len(),
        extractor.metadata().architecture,
        extractor.feature_dim(),
        cfg.resize_shorter,
        cfg.crop
    );
    let start = Instant::now();
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch) {
        let inputs: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|p| preprocess_file(p, &cfg))
            .collect::<mtpath_shared::Result<_>>()?;
        rows.extend(extractor.extract_preprocessed(&inputs)?);
        let done = rows.len();
        let rate = done as f64 / start.elapsed().as_secs_f64();
        let eta = (images.len() - done) as f64 / rate.max(1e-9);
        eprint!(
            "\r  {done}/{} images, {rate:.1} img/s, ETA {eta:.0} s   ",
            images.len()
        );
        std::io::stderr().flush().ok();
    }
    eprintln!();
    let n = rows.len();
    let dim = extractor.feature_dim();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    let features = Tensor::from_vec(flat, (n, dim), &Device::Cpu)?;
    let names: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let meta = HashMap::from([
        ("images".to_string(), serde_json::to_string(&names)?),
        (
            "architecture".to_string(),
            extractor.metadata().architecture.to_string(),
        ),
        ("weights".to_string(), args.weights.display().to_string()),
        (
            "preprocess".to_string(),
            serde_json::json!({
                "resize_shorter": cfg.resize_shorter,
                "crop": cfg.crop,
                "mean": cfg.mean,
                "std": cfg.std,
            })
            .to_string(),
        ),
    ]);
    let bytes = safetensors::serialize([("features".to_string(), features)], Some(meta))?;
    mtpath_shared::fsutil::write_atomic(&args.out, &bytes)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({n} x {dim})", args.out.display());
    Ok(())
}
