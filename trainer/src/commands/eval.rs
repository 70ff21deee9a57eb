//! `mtpath eval`: frozen-feature evaluation of a trunk on task folders over several seeds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use mtpath_shared::preprocess::EvalTransform;
use mtpath_shared::Arch;

use crate::evaluate::protocol::Protocol;
use crate::evaluate::run::{evaluate, evaluate_finetune, EvalSpec, FinetuneEvalSpec};
use crate::session::set_threads;

/// Evaluate a trunk's frozen features on tasks: for each seed, a group-disjoint
/// train/val/test split of every task, a probe fitted on train+val and scored on test.
/// Writes results.json (per task and metric: mean, sd, every seed's value), results.md, and a
/// feature cache (by weights, task and preprocessing) in --out.
#[derive(Parser, Debug)]
pub struct Args {
    /// Weights (.safetensors or .pth: an mtpath checkpoint, a trunk, a torchvision state
    /// dict), `random` for a randomly initialised trunk of --arch, or `pool-r18` (mtpath's
    /// released pathology trunk, models/pool-r18). Also `--init`.
    #[arg(long, visible_alias = "init")]
    pub weights: String,
    /// Architecture (needed for `random` and for files without mtpath metadata whose names
    /// are ambiguous).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Task folders (manifest.csv or one subfolder per class).
    #[arg(long = "task", required = true, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// Protocol: linear (logistic regression; also `logistic`, as the browser names it), svm
    /// (linear SVM), knn (k = 20) or knn:K on frozen features — C of the linear probes is
    /// chosen on a grid by grouped 5-fold cross-validation on train+val — or finetune (a new head, the whole network trained;
    /// learning rate from --lrs and epoch chosen on validation).
    #[arg(long, default_value = "linear")]
    pub protocol: String,
    /// Fine-tuning only: learning rates tried (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.001")]
    pub lrs: Vec<f64>,
    /// Fine-tuning only: epochs per learning rate.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Seeds (splits) to run: 0..N.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Network input side (centre crop after resizing the shorter side to size × 256/224);
    /// default: the model's.
    #[arg(long)]
    pub size: Option<u32>,
    /// How images become the network's input: resize (shorter side to size × 256/224, then
    /// a center crop), center-crop (at native resolution, keeping the scan's magnification)
    /// or grid (features averaged over non-overlapping native-resolution crops).
    #[arg(long, default_value = "resize")]
    pub eval_transform: EvalTransform,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Results directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    set_threads(args.threads);
    let summaries = if args.protocol == "finetune" {
        evaluate_finetune(&FinetuneEvalSpec {
            weights: args.weights.clone(),
            arch: args.arch,
            tasks: args.tasks.clone(),
            lrs: args.lrs.clone(),
            epochs: args.epochs,
            seeds: args.seeds,
            size: args.size,
            batch: args.batch,
            out: args.out.clone(),
        })?
    } else {
        let spec = EvalSpec {
            weights: args.weights.clone(),
            arch: args.arch,
            tasks: args.tasks.clone(),
            protocol: args
                .protocol
                .parse::<Protocol>()
                .context("--protocol: linear, svm, knn, knn:K or finetune")?,
            seeds: (0..args.seeds).collect(),
            size: args.size,
            transform: args.eval_transform,
            score_on: crate::evaluate::protocol::ScoreOn::Test,
            cache: None,
            batch: args.batch,
            out: args.out.clone(),
        };
        evaluate(&spec)?.summaries
    };
    println!("task                 metric              mean ± sd");
    for s in &summaries {
        println!(
            "{:<20} {:<18} {:.3} ± {:.3}",
            s.task, s.metric, s.mean, s.sd
        );
    }
    println!(
        "results: {} and {}",
        args.out.join("results.json").display(),
        args.out.join("results.md").display()
    );
    println!("plots: {}", args.out.join("plots").display());
    Ok(())
}
