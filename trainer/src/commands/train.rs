//! `mtpath train`: multi-task pre-training on a task pool.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mtpath_shared::Arch;

use crate::device::parse_device;
use crate::pool::PoolConfig;
use crate::session::{load_pool, report, set_threads, stop_flag};
use crate::train::config::TrainConfig;
use crate::train::run::{train, RunSpec};

/// Pre-train a shared trunk with one linear head per task, as in Mormont et al. (2021).
/// Settings come from the pool file's `[train]` table; flags override them.
#[derive(Parser, Debug)]
pub struct Args {
    /// The pool file (TOML). With --resume, defaults to the one the run was started with.
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// Run directory (checkpoints, metrics, model card).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// With --out: remove the run already in that folder (its checkpoints, metrics and
    /// record; other files stay) and start a new one.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Trunk architecture.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Input side in pixels.
    #[arg(long)]
    pub size: Option<u32>,
    /// Images per step.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Total iterations (optimiser steps).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Base (trunk) learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Heads' learning-rate multiplier (τ).
    #[arg(long)]
    pub tau: Option<f64>,
    /// SGD momentum.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Colour jitter strength (brightness, contrast, saturation; 0 = off).
    #[arg(long)]
    pub jitter: Option<f32>,
    /// H&E stain jitter strength σ in optical density (0.05 = Tellez's HED-light; 0 = off).
    #[arg(long)]
    pub stain_jitter: Option<f32>,
    /// Label smoothing ε of the cross-entropy (0 = off).
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Iterations of heads-only training (trunk and its BatchNorm statistics frozen) first.
    #[arg(long)]
    pub warmup_heads: Option<usize>,
    /// With --init FILE|imagenet: batches forwarded to re-estimate the BatchNorm statistics
    /// on the pool before the first step, outputs unchanged (the paper's adaptation; default
    /// 20, 0 = off).
    #[arg(long)]
    pub bn_adapt: Option<usize>,
    /// RAM for decoded training images in MiB (default 2048; 0 = decode every time).
    #[arg(long)]
    pub cache_mb: Option<usize>,
    /// Task sampler: uniform (the paper's), proportional, temperature:T, round-robin, weighted.
    #[arg(long)]
    pub sampler: Option<String>,
    /// Validate every N iterations (0: at the end only).
    #[arg(long)]
    pub val_every: Option<usize>,
    /// Write the `last` checkpoint every N iterations.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// At most N validation images per task (0: all).
    #[arg(long)]
    pub val_max: Option<usize>,
    /// Trunk initialisation: none, imagenet, or a .safetensors/.pth file.
    #[arg(long)]
    pub init: Option<String>,
    /// Seed (default: the pool's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Data-loading threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Compute threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Skip unreadable or odd images (listed) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Less output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Compute device: cpu, cuda or cuda:N (CUDA needs a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Data-parallel engine: auto (MPI under mpirun/srun, NCCL under torchrun or Slurm on
    /// CUDA), off, mpi or nccl. The global batch (--batch) is split over the ranks.
    #[arg(long, value_enum, default_value = "auto")]
    pub dist: crate::dist::Backend,
    /// Data-parallel: BatchNorm statistics of the whole global batch instead of each rank's
    /// share (slower; results then equal one process's).
    #[arg(long)]
    pub sync_bn: bool,
}

impl Args {
    fn apply(&self, c: &mut TrainConfig) {
        macro_rules! set {
            ($($flag:ident => $field:ident),*) => {$(
                if let Some(v) = self.$flag.clone() { c.$field = v; }
            )*};
        }
        set!(arch => arch, size => size, batch => batch, iters => iters, lr => lr,
             tau => head_lr_scale, momentum => momentum, weight_decay => weight_decay,
             warmup_heads => head_warmup_iters, sampler => sampler, val_every => val_every,
             checkpoint_every => checkpoint_every, val_max => val_max_per_task, init => init,
             workers => workers, bn_adapt => bn_adapt_batches,
             cache_mb => image_cache_mb, jitter => jitter, stain_jitter => stain_jitter,
             label_smoothing => label_smoothing);
        if self.seed.is_some() {
            c.seed = self.seed;
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let mut device = parse_device(&args.device)?;
    let collective = crate::dist::join(args.dist, &mut device)?;
    if args.sync_bn && collective.is_none() {
        eprintln!("note: --sync-bn has no effect in a single process");
    }

    let outcome = run_ranked(args, device, collective.clone());
    match (collective, outcome) {
        // One rank's error would leave the others waiting in a collective: stop them all.
        (Some(c), Err(e)) if c.world() > 1 => {
            eprintln!("error (rank {} of {}): {e:#}", c.rank(), c.world());
            crate::session::default_termination_signals();
            c.abort(1)
        }
        (c, Ok(true)) => {
            drop(c);
            std::process::exit(130)
        }
        (_, outcome) => outcome.map(|_| ()),
    }
}

/// The command on this rank (the only one without data parallelism); `Ok(true)` when the
/// run was interrupted.
fn run_ranked(
    args: Args,
    device: candle_core::Device,
    collective: Option<std::sync::Arc<dyn crate::dist::Collective>>,
) -> Result<bool> {
    set_threads(args.threads);
    let (out, resume) = match (&args.out, &args.resume) {
        (Some(o), None) => (o.clone(), false),
        (None, Some(r)) => (r.clone(), true),
        _ => bail!("give --out RUN/ for a new run, or --resume RUN/ to continue one"),
    };
    let (pool_path, mut config) = if resume {
        let record = crate::train::run::read_record(&out)?;
        let pool = args.pool.clone().unwrap_or(record.pool.clone());
        let mut c = record.config.clone();
        c.seed = Some(record.seed);
        (pool, c)
    } else {
        let Some(pool) = args.pool.clone() else {
            bail!("give the pool file: --pool POOL.toml");
        };
        let pc = PoolConfig::from_file(&pool)?;
        (
            pool.clone(),
            TrainConfig::from_table(pc.train.as_ref(), &pool)?,
        )
    };
    args.apply(&mut config);
    config.validate().with_context(|| {
        format!(
            "{}: invalid training settings (its [train] table, or the flags that override it)",
            pool_path.display()
        )
    })?;
    let pool_config = PoolConfig::from_file(&pool_path)?;
    let pool = load_pool(&pool_config, args.skip_bad)?;
    let spec = RunSpec {
        out: out.clone(),
        pool_path,
        pool,
        config,
        resume,
        force: args.force,
        verbose: !args.quiet,
        device,
        dist: collective.map(|collective| crate::dist::Distributed {
            collective,
            sync_bn: args.sync_bn,
        }),
    };
    let lead = spec.dist.as_ref().is_none_or(|d| d.rank() == 0);
    let outcome = train(&spec, stop_flag())?;
    if lead {
        report(&out, &outcome);
    }
    Ok(outcome.interrupted)
}
