//! Frozen-trunk features of every image of a task, cached on disk by weights, preprocessing
//! and the task's files (paths, sizes, modification times; see [`file_stamp`]), so that seeds
//! and protocols reuse one extraction and a changed image is never served stale features.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use mtpath_shared::export::sha256_hex;
use mtpath_shared::features_file::FeaturesFile;
use mtpath_shared::inference::FeatureExtractor;
use mtpath_shared::preprocess::{preprocess_file_views, EvalTransform};
use mtpath_shared::rng::fnv1a;
use mtpath_shared::weights::read_weights_file;
use rayon::prelude::*;

use mtpath_shared::weights::ModelMetadata;
use mtpath_shared::{Arch, Network, NetworkSpec};

use crate::pool::Task;

/// A feature extractor with what identifies it.
pub struct LoadedExtractor {
    /// The extractor.
    pub extractor: FeatureExtractor,
    /// An id of the weights and preprocessing, for feature caches.
    pub cache_id: u64,
    /// SHA-256 (hex) of the weights file (of the generated weights for `random`): the model's
    /// identity in features files and probe files.
    pub weights_sha256: String,
}

/// A feature extractor for `weights` (a file, or `random` for a randomly initialised trunk of
/// `arch`), with the input side `size` when given (shorter side resized to size × 256/224)
/// and the evaluation `transform`.
pub fn load_extractor(
    weights: &str,
    arch: Option<Arch>,
    size: Option<u32>,
    transform: EvalTransform,
) -> Result<LoadedExtractor> {
    let device = Device::Cpu;
    let weights = crate::released::resolve_weights(weights)?;
    let weights = weights.as_str();
    let (mut extractor, weights_hash, weights_sha256) = if weights == "random" {
        let arch = arch.unwrap_or(Arch::ResNet18);
        let net_spec = NetworkSpec::trunk(arch);
        let net = Network::new(net_spec.clone(), &device, 0)?;
        let bytes = net.to_safetensors_bytes(&ModelMetadata::imagenet(&net_spec))?;
        (
            FeatureExtractor::from_safetensors_bytes(&bytes, "random", &device)?,
            fnv1a(format!("random-{arch}").as_bytes()),
            sha256_hex(&bytes),
        )
    } else {
        let path = PathBuf::from(weights);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: cannot read the weights", path.display()))?;
        let file = read_weights_file(&path, &device)?;
        (
            FeatureExtractor::from_tensor_file(&file, arch, &device)?,
            fnv1a(&bytes),
            sha256_hex(&bytes),
        )
    };
    if let Some(s) = size {
        extractor.set_sizes(((s as f64) * 256.0 / 224.0).round() as u32, s)?;
    }
    extractor.set_transform(transform);
    let cfg = *extractor.preprocess_config();
    // The default transform keeps the key it had before transforms existed, so caches stay.
    let mut key = format!("{weights_hash:x}-{}-{}", cfg.resize_shorter, cfg.crop);
    if transform != EvalTransform::Resize {
        key.push_str(&format!("-{transform}"));
    }
    Ok(LoadedExtractor {
        extractor,
        cache_id: fnv1a(key.as_bytes()),
        weights_sha256,
    })
}

/// What identifies a file's contents without reading them, as make and ccache's direct mode
/// do: size and modification time, and on Unix the inode and status-change time, which a
/// rename or a copy over the file changes even when it keeps the old modification time. A
/// file that cannot be examined gets a stamp of its own (the extraction will then report it).
fn file_stamp(path: &Path) -> String {
    let Ok(meta) = std::fs::metadata(path) else {
        return "|unreadable".into();
    };
    let nanos = |t: std::io::Result<std::time::SystemTime>| {
        t.ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    };
    #[cfg(unix)]
    let unix = {
        use std::os::unix::fs::MetadataExt;
        format!("|{}|{}.{}", meta.ino(), meta.ctime(), meta.ctime_nsec())
    };
    #[cfg(not(unix))]
    let unix = String::new();
    format!("|{}|{}{unix}", meta.len(), nanos(meta.modified()))
}

/// Features of every sample of a task, keyed by image path.
#[derive(Debug, Clone)]
pub struct TaskFeatures {
    /// Feature length.
    pub dim: usize,
    /// Path → feature row.
    pub rows: HashMap<PathBuf, Vec<f32>>,
}

/// Extract (or read from `cache_dir`) the features of all samples of `task`.
/// `model_id` identifies the weights and preprocessing (part of the cache key).
pub fn task_features(
    extractor: &FeatureExtractor,
    model_id: u64,
    task: &Task,
    cache_dir: &Path,
    batch: usize,
    verbose: bool,
) -> Result<TaskFeatures> {
    let mut paths: Vec<PathBuf> = task.samples().map(|(_, s)| s.path.clone()).collect();
    paths.sort();
    let key = {
        let mut k = format!("{model_id:016x}");
        for p in &paths {
            k.push_str(&p.display().to_string());
            k.push_str(&file_stamp(p));
        }
        fnv1a(k.as_bytes())
    };
    let cache = cache_dir.join(format!("{}-{key:016x}.safetensors", task.name));
    let dim = extractor.feature_dim();
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    if cache.is_file() {
        // A cache that does not read back, or that was written for other images or another
        // feature length, is recomputed (and overwritten) rather than trusted.
        if let Ok(file) = FeaturesFile::read(&cache) {
            if file.images == names && file.dim == dim {
                let rows = file.features.chunks(dim).map(<[f32]>::to_vec);
                return Ok(TaskFeatures {
                    dim,
                    rows: paths.into_iter().zip(rows).collect(),
                });
            }
        }
    }
    let cfg = *extractor.preprocess_config();
    let started = std::time::Instant::now();
    let mut all: Vec<Vec<f32>> = Vec::with_capacity(paths.len());
    for (i, chunk) in paths.chunks(batch.max(1)).enumerate() {
        let views: Vec<Vec<Vec<f32>>> = chunk
            .par_iter()
            .map(|p| preprocess_file_views(p, &cfg).with_context(|| format!("task {}", task.name)))
            .collect::<Result<_>>()?;
        all.extend(extractor.extract_views(&views)?);
        if verbose && (i % 4 == 3 || all.len() == paths.len()) {
            let rate = all.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
            eprint!(
                "\r  {}: features {}/{} ({rate:.1} img/s, ETA {:.0} s)   ",
                task.name,
                all.len(),
                paths.len(),
                (paths.len() - all.len()) as f64 / rate.max(1e-9)
            );
        }
    }
    if verbose {
        eprintln!();
    }
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("{}: cannot create", cache_dir.display()))?;
    let flat: Vec<f32> = all.iter().flatten().copied().collect();
    FeaturesFile::new(flat, all.len(), dim, names)?.write(&cache)?;
    Ok(TaskFeatures {
        dim,
        rows: paths.into_iter().zip(all).collect(),
    })
}
