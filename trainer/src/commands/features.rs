//! `mtpath features`: embed images with a trunk.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mtpath_shared::features_file::FeaturesFile;
use mtpath_shared::inference::FeatureExtractor;
use mtpath_shared::preprocess::{preprocess_file_views, EvalTransform};
use mtpath_shared::Arch;
use rayon::prelude::*;

use crate::evaluate::features::{load_extractor, task_features, LoadedExtractor};
use crate::images::collect_images;
use crate::pool::{ImageCheck, LoadOptions, Pool, PoolConfig, Split};

/// Embed images: writes one float32 tensor `features` [N, F] (rows in the order of the images)
/// and records the image list, architecture and preprocessing in the file's metadata. With
/// --task or --pool, embeds a task's split instead: adds `labels` and `task` (int64, [N]) and
/// the classes, groups and split to the metadata, and caches each task's features (by
/// weights, preprocessing and task content) in --cache.
///
/// With --slide, embeds the tiles of a whole-slide image where there is tissue, without
/// writing them: rows are named SLIDE@xX_yY and the file's `slide` metadata records the
/// cutting and every row's tile (level-0 x, y, tissue fraction).
///
/// Examples: mtpath features --weights resnet50.safetensors --out feats.safetensors tiles/
///           mtpath features --weights run/best/trunk.safetensors --pool pool.toml --split test --out test.safetensors
///           mtpath features --weights pool-r18 --slide case1.svs --mpp 0.5 --out case1.safetensors
#[derive(Parser)]
pub struct Args {
    /// Weights: safetensors (mtpath checkpoint or torchvision state dict), PyTorch .pth, or
    /// `random` (a randomly initialised trunk of --arch), or `pool-r18` (the released trunk).
    #[arg(long)]
    weights: String,
    /// Architecture (resnet18/34/50/101, densenet121/169); default: from the file.
    #[arg(long)]
    arch: Option<Arch>,
    /// Centre-crop side in pixels (the network's input).
    #[arg(long)]
    size: Option<u32>,
    /// Shorter side before cropping (default: size × 256/224, as torchvision).
    #[arg(long)]
    resize: Option<u32>,
    /// How images become the network's input: resize (shorter side to size × 256/224, then
    /// a center crop), center-crop (at native resolution, keeping the scan's magnification)
    /// or grid (features averaged over non-overlapping native-resolution crops).
    #[arg(long, default_value = "resize")]
    eval_transform: EvalTransform,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Image files or directories (searched recursively for JPEG/PNG/TIFF).
    #[arg(required_unless_present_any = ["task", "pool", "slide"], conflicts_with_all = ["task", "pool", "slide"])]
    images: Vec<PathBuf>,
    /// A whole-slide image (SVS, pyramidal TIFF, OME-TIFF): embed its tissue tiles.
    #[arg(long, conflicts_with_all = ["task", "pool"])]
    slide: Option<PathBuf>,
    /// With --slide: tile side in pixels, before the model's preprocessing.
    #[arg(long, default_value_t = 224)]
    tile_size: u32,
    #[command(flatten)]
    tiling: crate::slides::TileArgs,
    /// Task folders (manifest.csv or one subfolder per class) to embed, split with --seed.
    #[arg(long = "task", conflicts_with = "pool")]
    task: Vec<PathBuf>,
    /// A pool file: embed its tasks, split as the pool says.
    #[arg(long)]
    pool: Option<PathBuf>,
    /// Which split of the tasks: all, train, val or test.
    #[arg(long, default_value = "all")]
    split: String,
    /// Seed of the splits of --task folders (a pool has its own).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Feature cache folder for --task/--pool (default: $MTPATH_CACHE, else
    /// ~/.cache/mtpath/features).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// The feature cache folder.
fn cache_dir(arg: Option<&PathBuf>) -> PathBuf {
    if let Some(c) = arg {
        return c.clone();
    }
    if let Some(c) = std::env::var_os("MTPATH_CACHE") {
        return PathBuf::from(c).join("features");
    }
    match std::env::var_os("XDG_CACHE_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").into_os_string())
    }) {
        Some(base) => PathBuf::from(base).join("mtpath").join("features"),
        None => PathBuf::from(".mtpath-cache").join("features"),
    }
}

/// `--task`/`--pool`: a split of tasks, with labels.
fn run_tasks(args: &Args) -> Result<()> {
    let splits: Vec<Split> = match args.split.as_str() {
        "all" => vec![Split::Train, Split::Val, Split::Test],
        "train" => vec![Split::Train],
        "val" => vec![Split::Val],
        "test" => vec![Split::Test],
        other => bail!("--split {other}: use all, train, val or test"),
    };
    let config = match &args.pool {
        Some(p) => PoolConfig::from_file(p)?,
        None => PoolConfig::from_task_dirs(&args.task, args.seed),
    };
    let pool = Pool::load(
        &config,
        &LoadOptions {
            skip_bad: false,
            check: ImageCheck::Header,
        },
    )?;
    if args.resize.is_some() {
        bail!(
            "--resize applies to image files and slides; with --task or --pool the shorter side \
             is --size × 256/224, as in evaluation (the feature cache is keyed by it)"
        );
    }
    let loaded = load_extractor(&args.weights, args.arch, args.size, args.eval_transform)?;
    let (extractor, model_id) = (&loaded.extractor, loaded.cache_id);
    let cfg = *extractor.preprocess_config();
    eprintln!(
        "{} task(s), split {}, {} ({}-d features) at {} px",
        pool.tasks.len(),
        args.split,
        extractor.metadata().trunk.architecture,
        extractor.feature_dim(),
        cfg.crop
    );
    let cache = cache_dir(args.cache.as_ref());
    let mut rows: Vec<f32> = Vec::new();
    let (mut labels, mut task_ids) = (Vec::<i64>::new(), Vec::<i64>::new());
    let (mut images, mut groups, mut split_of) = (Vec::new(), Vec::new(), Vec::new());
    for (ti, task) in pool.tasks.iter().enumerate() {
        let f = task_features(extractor, model_id, task, &cache, args.batch, true)?;
        for &sp in &splits {
            for sample in task.split(sp) {
                rows.extend_from_slice(&f.rows[&sample.path]);
                labels.push(i64::from(sample.label));
                task_ids.push(ti as i64);
                images.push(sample.path.display().to_string());
                groups.push(sample.group.clone());
                split_of.push(sp.as_str());
            }
        }
    }
    let n = labels.len();
    if n == 0 {
        bail!("the {} split of these tasks is empty", args.split);
    }
    let dim = extractor.feature_dim();
    let tasks: Vec<_> = pool
        .tasks
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "classes": t.classes}))
        .collect();
    let file = FeaturesFile::new(rows, n, dim, images)?
        .with("groups", serde_json::to_string(&groups)?)
        .with("splits", serde_json::to_string(&split_of)?)
        .with("tasks", serde_json::to_string(&tasks)?)
        .with("split", args.split.clone())
        .with("seed", pool.seed.to_string());
    let mut file = with_model(file, &loaded, &args.weights);
    file.labels = Some(labels);
    file.task = Some(task_ids);
    file.write(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({n} x {dim}; cache {})",
        args.out.display(),
        cache.display()
    );
    Ok(())
}

/// Features of `images` in order, `batch` at a time (decoding in parallel), with a progress
/// line on stderr.
pub(crate) fn embed_images(
    extractor: &FeatureExtractor,
    images: &[PathBuf],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let cfg = *extractor.preprocess_config();
    let start = Instant::now();
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let inputs: Vec<Vec<Vec<f32>>> = chunk
            .par_iter()
            .map(|p| preprocess_file_views(p, &cfg))
            .collect::<mtpath_shared::Result<_>>()?;
        rows.extend(extractor.extract_views(&inputs)?);
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
    Ok(rows)
}

/// `file` with the model that made it recorded: architecture, weights (name and SHA-256) and
/// preprocessing: what `mtpath predict` checks a probe's provenance against.
fn with_model(file: FeaturesFile, loaded: &LoadedExtractor, weights: &str) -> FeaturesFile {
    let extractor = &loaded.extractor;
    let cfg = extractor.preprocess_config();
    let preprocess = serde_json::json!({
        "resize_shorter": cfg.resize_shorter,
        "crop": cfg.crop,
        "mean": cfg.mean,
        "std": cfg.std,
        "transform": cfg.transform.as_str(),
    });
    file.with(
        "architecture",
        extractor.metadata().trunk.architecture.to_string(),
    )
    .with("weights", weights)
    .with("weights_sha256", loaded.weights_sha256.clone())
    .with("preprocess", preprocess.to_string())
}

pub fn run(args: Args) -> Result<()> {
    if !args.task.is_empty() || args.pool.is_some() {
        return run_tasks(&args);
    }
    let mut loaded = load_extractor(&args.weights, args.arch, None, args.eval_transform)?;
    set_sizes(&mut loaded.extractor, args.size, args.resize)?;
    if let Some(slide) = &args.slide {
        return run_slide(&args, slide, &loaded);
    }
    let images = collect_images(&args.images)?;
    let extractor = &loaded.extractor;
    let cfg = *extractor.preprocess_config();
    let batch = args.batch.max(1);
    eprintln!(
        "{} images, {} ({}-d features), {} → crop {}",
        images.len(),
        extractor.metadata().trunk.architecture,
        extractor.feature_dim(),
        match cfg.transform {
            EvalTransform::Resize => format!("resize {}", cfg.resize_shorter),
            other => other.to_string(),
        },
        cfg.crop
    );
    let rows = embed_images(extractor, &images, batch)?;
    let n = rows.len();
    let dim = extractor.feature_dim();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    let names: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    with_model(
        FeaturesFile::new(flat, n, dim, names)?,
        &loaded,
        &args.weights,
    )
    .write(&args.out)
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({n} x {dim})", args.out.display());
    Ok(())
}

/// `--slide`: the features of a slide's tissue tiles.
fn run_slide(args: &Args, path: &std::path::Path, loaded: &LoadedExtractor) -> Result<()> {
    let opened = crate::slides::open_slide(path, &args.tiling, args.tile_size)?;
    crate::slides::require_tiles(path, &opened)?;
    let extractor = &loaded.extractor;
    let rows = crate::slides::embed_slide(extractor, &opened, args.batch)?;
    let (n, dim) = (rows.len(), extractor.feature_dim());
    let names = opened
        .plan
        .tiles
        .iter()
        .map(|t| crate::slides::tile_name(path, t.x, t.y))
        .collect();
    let record = crate::slides::tiles_record(path, &opened);
    with_model(
        FeaturesFile::new(rows.concat(), n, dim, names)?,
        loaded,
        &args.weights,
    )
    .with("slide", record.to_string())
    .write(&args.out)
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({n} tiles x {dim})", args.out.display());
    Ok(())
}

/// Apply --size/--resize to the extractor's preprocessing.
pub(crate) fn set_sizes(
    extractor: &mut FeatureExtractor,
    size: Option<u32>,
    resize: Option<u32>,
) -> Result<()> {
    if let Some(size) = size {
        let resize = resize.unwrap_or((size as f64 * 256.0 / 224.0).round() as u32);
        extractor.set_sizes(resize, size)?;
    } else if let Some(resize) = resize {
        let crop = extractor.preprocess_config().crop;
        extractor.set_sizes(resize, crop)?;
    }
    Ok(())
}
