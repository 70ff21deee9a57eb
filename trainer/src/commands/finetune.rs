//! `mtpath finetune`: a new head on a pre-trained trunk, the whole network trained on a task,
//! the learning rate and the epoch chosen on validation, scored on the test split.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use mtpath_shared::weights::read_weights_file;
use mtpath_shared::{Arch, Network};

use super::train::set_threads;
use crate::evaluate::protocol::{score_predictions, RunScores};
use crate::evaluate::report;
use crate::pool::{ImageCheck, LoadOptions, Pool, PoolConfig, Split};
use crate::train::checkpoint::{read_state, MODEL_FILE};
use crate::train::config::TrainConfig;
use crate::train::run::{train, RunSpec};
use crate::train::validate::{predict, ValSet};

/// Fine-tune a trunk on one task: for every seed (split) and learning rate, train a new head
/// and the whole trunk for some epochs, keep the epoch with the best validation balanced
/// accuracy, pick the learning rate by it, and score that model on the test split.
#[derive(Parser, Debug)]
pub struct Args {
    /// Trunk weights (.safetensors/.pth, torchvision names or an mtpath checkpoint), or `none`
    /// for random initialisation.
    #[arg(long)]
    pub weights: String,
    /// Architecture (default: from the weights file).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// The task folder.
    #[arg(long)]
    pub task: PathBuf,
    /// Learning rates tried (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.001")]
    pub lrs: Vec<f64>,
    /// Epochs (passes over the training split).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Seeds (splits) 0..N.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Results directory (runs under `runs/`).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

fn arch_of(args: &Args) -> Result<Arch> {
    if args.weights == "none" {
        return Ok(args.arch.unwrap_or(Arch::ResNet18));
    }
    let file = read_weights_file(std::path::Path::new(&args.weights), &Device::Cpu)?;
    Ok(match (file.model_card()?, args.arch) {
        (Some(card), _) => card.architecture,
        (None, Some(a)) => a,
        (None, None) => file.arch()?,
    })
}

pub fn run(args: Args) -> Result<()> {
    set_threads(args.threads);
    if args.lrs.is_empty() || args.lrs.iter().any(|lr| lr.is_nan() || *lr <= 0.0) {
        bail!("--lrs needs positive learning rates, e.g. 0.01,0.001");
    }
    if args.seeds == 0 || args.epochs == 0 {
        bail!("--seeds and --epochs must be at least 1");
    }
    let arch = arch_of(&args)?;
    let device = Device::Cpu;
    let mut runs: Vec<RunScores> = Vec::new();
    for seed in 0..args.seeds {
        let pool = Pool::load(
            &PoolConfig::from_task_dirs(std::slice::from_ref(&args.task), seed),
            &LoadOptions {
                skip_bad: false,
                check: if seed == 0 {
                    ImageCheck::Decode
                } else {
                    ImageCheck::None
                },
            },
        )?;
        let task = &pool.tasks[0];
        let per_epoch = task.train.len().div_ceil(args.batch).max(1);
        let mut best: Option<(f64, f64, PathBuf)> = None;
        for &lr in &args.lrs {
            let out = args.out.join("runs").join(format!("seed{seed}-lr{lr}"));
            if out.exists() {
                std::fs::remove_dir_all(&out)
                    .with_context(|| format!("{}: cannot replace", out.display()))?;
            }
            let config = TrainConfig {
                arch,
                size: args.size,
                batch: args.batch,
                iters: per_epoch * args.epochs,
                lr,
                val_every: per_epoch,
                checkpoint_every: per_epoch * args.epochs,
                seed: Some(seed),
                init: args.weights.clone(),
                ..TrainConfig::default()
            };
            eprintln!(
                "{}: seed {seed}, lr {lr}: {} epochs of {per_epoch} steps",
                task.name, args.epochs
            );
            let spec = RunSpec {
                out: out.clone(),
                pool_path: args.task.clone(),
                pool: pool.clone(),
                config,
                resume: false,
                verbose: false,
            };
            let outcome = train(&spec, Arc::new(AtomicBool::new(false)))?;
            // Without a validation split the last epoch is kept (and every lr scores 0).
            let dir = outcome.best.clone().unwrap_or(outcome.last.clone());
            let score = read_state(&dir)?.best.map(|(s, _)| s).unwrap_or(0.0);
            if best.as_ref().is_none_or(|(b, _, _)| score > *b) {
                best = Some((score, lr, dir));
            }
        }
        let Some((val, lr, dir)) = best else {
            bail!("no fine-tuning run finished");
        };
        let (net, _) = Network::from_tensor_file(
            &read_weights_file(&dir.join(MODEL_FILE), &device)?,
            &device,
        )?;
        let test = ValSet {
            task: 0,
            name: task.name.clone(),
            items: task
                .split(Split::Test)
                .iter()
                .map(|s| (s.path.clone(), s.label))
                .collect(),
            n_classes: task.classes.len(),
            crop: crate::data::CropPolicy::Resize,
        };
        if test.items.is_empty() {
            bail!("task {}: the test split is empty", task.name);
        }
        let p = predict(&net, &test, args.size, args.batch, &device)?;
        let y: Vec<u32> = test.items.iter().map(|(_, y)| *y).collect();
        let positive: Vec<f64> = if task.classes.len() == 2 {
            p.proba.iter().map(|r| f64::from(r[1])).collect()
        } else {
            Vec::new()
        };
        let mut scores = score_predictions(
            task,
            seed,
            task.train.len() + task.val.len(),
            &y,
            &p.classes,
            &positive,
            None,
        )?;
        scores.lr = Some(lr);
        eprintln!(
            "{}: seed {seed}: lr {lr} (validation {val:.3}) → test balanced accuracy {:.3}",
            task.name, scores.balanced_accuracy
        );
        runs.push(scores);
    }
    let header = serde_json::json!({
        "weights": args.weights,
        "architecture": arch,
        "input_size": args.size,
        "protocol": "finetune",
        "learning_rates": args.lrs,
        "epochs": args.epochs,
        "seeds": (0..args.seeds).collect::<Vec<_>>(),
        "mtpath_version": env!("CARGO_PKG_VERSION"),
    });
    let summaries = report::write(&args.out, header, &runs)?;
    for s in &summaries {
        println!(
            "{:<20} {:<18} {:.3} ± {:.3}",
            s.task, s.metric, s.mean, s.sd
        );
    }
    println!("results: {}", args.out.join("results.json").display());
    Ok(())
}
