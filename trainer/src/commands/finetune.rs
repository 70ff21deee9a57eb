//! `mtpath finetune`: a new head on a pre-trained trunk, the whole network trained on a task,
//! the learning rate and the epoch chosen on validation, scored on the test split.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use mtpath_shared::Arch;

use crate::evaluate::finetune::{arch_of, finetune_seeds, FinetuneSpec};
use crate::evaluate::report;
use crate::session::set_threads;

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

pub fn run(args: Args) -> Result<()> {
    set_threads(args.threads);
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let arch = arch_of(&args.weights, args.arch)?;
    let spec = FinetuneSpec {
        weights: args.weights.clone(),
        arch,
        task: args.task.clone(),
        lrs: args.lrs.clone(),
        epochs: args.epochs,
        size: args.size,
        batch: args.batch,
        runs: args.out.join("runs"),
    };
    spec.validate()?;
    let runs = finetune_seeds(&spec, args.seeds)?;
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
