//! `mtpath bench`: images/s of inference and training steps.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Parser, ValueEnum};
use mtpath_shared::inference::FoldedNet;
use mtpath_shared::{Arch, Network, NetworkSpec};

use crate::data::{AugmentConfig, Loader, SamplerKind, TaskItems};
use crate::device::parse_device;
use crate::pool::{task_dirs, ImageCheck, LoadOptions, Pool, PoolConfig};
use crate::train::speed::{time_per_call, train_step_rate};

/// What to time.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Evaluation-mode forward (feature extraction + classifier).
    Infer,
    /// The trainer's whole step: multi-task forward, loss, backward and SGD update.
    Train,
    /// Both.
    Both,
    /// The training data pipeline alone (decode, augment, batch) over real task folders.
    Pipeline,
    /// The linear probe's model selection (grouped 5-fold cross-validation over the default
    /// C grid, then the final fit) on a labelled features file (`--features`), as `eval` and
    /// the browser explorer run it.
    Probe,
    /// Reading a whole-slide image: every `--size` tile of a level (`--slide`, `--level`),
    /// decoded, as `mtpath tile` and `features --slide` read them (tiles in parallel over
    /// `--threads`); the peer is OpenSlide (scripts/bench_slide.py).
    Slide,
}

/// Time forward (inference) and forward+backward (training) passes on random inputs and
/// report images/s, e.g. `mtpath bench --arch resnet18 --batch 32 --size 112 --mode train`.
#[derive(Parser)]
pub struct Args {
    /// Architecture.
    #[arg(long, default_value = "resnet18")]
    arch: Arch,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// What to time.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Timed iterations (after warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Worker threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    threads: Option<usize>,
    /// Pipeline mode: folder of task folders, each with a manifest.csv (default:
    /// MTPATH_DATA).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Pipeline mode: loader threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Pipeline mode: batches kept ready ahead.
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
    /// Pipeline mode: task sampler (uniform, proportional, temperature:T, round-robin,
    /// weighted).
    #[arg(long, default_value = "uniform")]
    sampler: SamplerKind,
    /// Compute device: cpu, cuda or cuda:N (a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CUDA: allow TF32 in float32 matrix multiplies (PyTorch's
    /// `allow_tf32`); off by default, as the parity tests need.
    #[arg(long)]
    tf32: bool,
    /// Probe mode: a features file with labels (`mtpath features --task ...`).
    #[arg(long)]
    features: Option<PathBuf>,
    /// Slide mode: the slide to read.
    #[arg(long)]
    slide: Option<PathBuf>,
    /// Slide mode: the pyramid level to read.
    #[arg(long, default_value_t = 0)]
    level: usize,
    /// Probe mode: logistic or svm.
    #[arg(long, value_enum, default_value_t = ProbeKind::Logistic)]
    probe_kind: ProbeKind,
    /// Probe mode: C values tried past an edge of the grid when the best is there (the
    /// explorer's page widens by 2; `eval` keeps the grid fixed, 0).
    #[arg(long, default_value_t = 0)]
    widen: usize,
}

/// The probe's model in probe mode.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum ProbeKind {
    Logistic,
    Svm,
}

impl From<ProbeKind> for mtpath_shared::probe::ModelKind {
    fn from(k: ProbeKind) -> Self {
        match k {
            ProbeKind::Logistic => Self::Logistic,
            ProbeKind::Svm => Self::Svm,
        }
    }
}

/// Seconds for the probe's cross-validated choice of C and final fit on a labelled features
/// file, with what was chosen.
fn run_probe(args: &Args) -> Result<()> {
    use mtpath_shared::features_file::FeaturesFile;
    use mtpath_shared::probe::{grid_search_c, GridConfig};
    let path = args
        .features
        .as_ref()
        .context("probe mode times the probe on real features: give --features FILE")?;
    let file = FeaturesFile::read(path)?;
    let labels = file.labels.as_ref().with_context(|| {
        format!(
            "{}: no labels; write it with `mtpath features --task DIR ...`",
            path.display()
        )
    })?;
    let y: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let n_classes = y.iter().max().map_or(0, |&m| m as usize + 1);
    let groups: Vec<String> = file
        .metadata
        .get("groups")
        .and_then(|g| serde_json::from_str(g).ok())
        .unwrap_or_else(|| vec![String::new(); file.n]);
    let cfg = GridConfig {
        kind: args.probe_kind.into(),
        widen: args.widen,
        ..GridConfig::default()
    };
    println!(
        "probe ({:?}): {} tiles x {} features, {n_classes} classes, {}-fold CV over C in {:?}",
        args.probe_kind, file.n, file.dim, cfg.folds, cfg.c_grid
    );
    let start = std::time::Instant::now();
    let search = grid_search_c(
        &file.features,
        file.n,
        file.dim,
        &y,
        n_classes,
        &groups,
        &cfg,
    )?;
    let cv_s = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    search.fit_best(&file.features, file.n, file.dim, &y, n_classes)?;
    let fit_s = start.elapsed().as_secs_f64();
    for s in &search.scores {
        println!(
            "  C {:<8} balanced accuracy {:.4}",
            s.c, s.balanced_accuracy
        );
    }
    println!(
        "probe: cross-validation {cv_s:.2} s, final fit {fit_s:.2} s, total {:.2} s (best C {})",
        cv_s + fit_s,
        search.best_c
    );
    Ok(())
}

/// Tiles/s reading every `--size` tile of one level of `--slide`: one untimed pass (the OS
/// file cache, as for any reader), then `--iters` timed passes, each with a new reader so
/// that its tile cache starts empty.
fn run_slide(args: &Args) -> Result<()> {
    use mtpath_shared::slide::Slide;
    use rayon::prelude::*;
    let path = args
        .slide
        .as_ref()
        .context("slide mode reads a slide: give --slide FILE")?;
    let size = u32::try_from(args.size)?;
    let open = || Slide::open(path).with_context(|| format!("{}", path.display()));
    let slide = open()?;
    let level = slide.levels().get(args.level).with_context(|| {
        format!(
            "{}: no level {} (it has {})",
            path.display(),
            args.level,
            slide.levels().len()
        )
    })?;
    let (w, h) = (level.width, level.height);
    let tiles: Vec<(i64, i64)> = (0..h / size)
        .flat_map(|r| (0..w / size).map(move |c| (i64::from(c * size), i64::from(r * size))))
        .collect();
    if tiles.is_empty() {
        bail!(
            "{}: level {} is smaller than one {size}-px tile",
            path.display(),
            args.level
        );
    }
    println!(
        "{}: level {} ({w}x{h}), {} tiles of {size} px, {} threads",
        path.display(),
        args.level,
        tiles.len(),
        candle_core::utils::get_num_threads()
    );
    let read_all = |slide: &Slide| -> Result<u64> {
        let sums: Vec<u64> = tiles
            .par_iter()
            .map(|&(x, y)| {
                let img = slide.read_region(args.level, x, y, size, size)?;
                Ok(img.as_raw().iter().map(|&v| u64::from(v)).sum())
            })
            .collect::<Result<_>>()?;
        Ok(sums.iter().sum())
    };
    let checksum = read_all(&slide)?;
    let mut best = f64::INFINITY;
    for _ in 0..args.iters.max(1) {
        let fresh = open()?;
        let start = std::time::Instant::now();
        let sum = read_all(&fresh)?;
        best = best.min(start.elapsed().as_secs_f64());
        if sum != checksum {
            bail!("{}: two reads of the slide differ", path.display());
        }
    }
    let pixels = tiles.len() as f64 * f64::from(size) * f64::from(size);
    println!(
        "slide: {:.1} tiles/s ({:.1} Mpx/s), best of {} passes; pixel sum {checksum}",
        tiles.len() as f64 / best,
        pixels / best / 1e6,
        args.iters.max(1)
    );
    Ok(())
}

/// The training splits of every task folder under `root` (as the demo reads a data folder),
/// read by the task-pool reader without decoding the images.
fn task_folders_train_items(root: &Path) -> Result<Vec<TaskItems>> {
    let dirs = task_dirs(root)?;
    if dirs.is_empty() {
        bail!(
            "{}: no task folders (with a manifest.csv or one subfolder per class) found; \
             --data names the folder above them",
            root.display()
        );
    }
    let config = PoolConfig::from_task_dirs(&dirs, 0);
    let opts = LoadOptions {
        skip_bad: false,
        check: ImageCheck::None,
    };
    Pool::load(&config, &opts)?.train_items()
}

/// Images/s of the data loader over every task folder of `--data`.
fn run_pipeline(args: &Args) -> Result<()> {
    let root = args
        .data
        .clone()
        .or_else(|| std::env::var_os("MTPATH_DATA").map(PathBuf::from))
        .context("pipeline mode reads real task folders: give --data DIR (or set MTPATH_DATA)")?;
    let tasks = task_folders_train_items(&root)?;
    let images: usize = tasks.iter().map(|t| t.items.len()).sum();
    println!(
        "{} tasks ({images} images) from {}, batch {} at {} px, {} loader workers, \
         prefetch {}, sampler {}",
        tasks.len(),
        root.display(),
        args.batch,
        args.size,
        args.workers,
        args.prefetch,
        args.sampler
    );
    let aug = AugmentConfig {
        size: u32::try_from(args.size)?,
        ..AugmentConfig::default()
    };
    let mut loader = Loader::new(
        Arc::new(tasks),
        args.sampler,
        aug,
        args.batch,
        0,
        0,
        args.workers,
        args.prefetch,
    )?;
    let rate = loader.pipeline_rate(args.warmup, args.iters)?;
    println!(
        "pipeline: {:.1} img/s ({:.1} ms/batch)",
        rate,
        args.batch as f64 / rate * 1e3
    );
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if args.mode == Mode::Pipeline {
        return run_pipeline(&args);
    }
    if args.mode == Mode::Probe {
        crate::session::set_threads(args.threads);
        return run_probe(&args);
    }
    if args.mode == Mode::Slide {
        crate::session::set_threads(args.threads);
        return run_slide(&args);
    }
    crate::session::set_threads(args.threads);
    let dev = parse_device(&args.device)?;
    candle_core::cuda::set_gemm_reduced_precision_f32(args.tf32);
    let net = Network::new(NetworkSpec::classifier(args.arch, 1000), &dev, 0)?;
    let x = Tensor::randn(0f32, 1.0, (args.batch, 3, args.size, args.size), &dev)?;
    println!(
        "{} batch {} at {} px, {} threads, {}",
        args.arch,
        args.batch,
        args.size,
        candle_core::utils::get_num_threads(),
        if dev.is_cpu() {
            "cpu".to_string()
        } else {
            format!(
                "{} (tf32 {})",
                args.device,
                if args.tf32 { "on" } else { "off" }
            )
        }
    );
    if matches!(args.mode, Mode::Infer | Mode::Both) {
        // Inference as `features`, `eval` and the browser run it: BatchNorm folded into the
        // convolutions, no autograd bookkeeping; then the 1000-class classifier.
        let xi = x.clone();
        let infer: Box<dyn Fn() -> Result<()> + '_> = if dev.is_cpu() {
            let folded = FoldedNet::from_network(&net)?;
            let fc = Tensor::randn(0f32, 0.01, (net.arch().feature_dim(), 1000), &dev)?;
            Box::new(move || {
                folded.features(&xi)?.matmul(&fc)?;
                Ok(())
            })
        } else {
            let net = &net;
            Box::new(move || {
                net.logits_t(&xi, false)?;
                Ok(())
            })
        };
        let s = time_per_call(&dev, args.warmup, args.iters, infer)?;
        println!(
            "infer: {:.1} img/s ({:.1} ms/batch)",
            args.batch as f64 / s,
            s * 1e3
        );
    }
    if matches!(args.mode, Mode::Train | Mode::Both) {
        let rate = train_step_rate(
            args.arch,
            args.size,
            args.batch,
            &dev,
            args.warmup,
            args.iters,
        )?;
        let s = args.batch as f64 / rate;
        println!(
            "train: {:.1} img/s ({:.1} ms/step)",
            args.batch as f64 / s,
            s * 1e3
        );
    }
    Ok(())
}
