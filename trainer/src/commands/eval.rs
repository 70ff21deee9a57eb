//! `mtpath eval`: frozen-feature evaluation of a trunk on task folders over several seeds.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mtpath_shared::Arch;

use crate::evaluate::features::{load_extractor, task_features};
use crate::evaluate::finetune::{arch_of, finetune_seed, FinetuneSpec};
use crate::evaluate::protocol::{self, Protocol, RunScores};
use crate::evaluate::report;
use crate::pool::{ImageCheck, LoadOptions, Pool, PoolConfig};
use crate::session::set_threads;

/// Evaluate a trunk's frozen features on tasks: for each seed, a group-disjoint
/// train/val/test split of every task, a probe fitted on train+val and scored on test.
/// Writes results.json (per task and metric: mean, sd, every seed's value), results.md, and a
/// feature cache (by weights, task and preprocessing) in --out.
#[derive(Parser, Debug)]
pub struct Args {
    /// Weights (.safetensors or .pth: an mtpath checkpoint, a trunk, a torchvision state
    /// dict), or `random` for a randomly initialised trunk of --arch. Also `--init`.
    #[arg(long, visible_alias = "init")]
    pub weights: String,
    /// Architecture (needed for `random` and for files without mtpath metadata whose names
    /// are ambiguous).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Task folders (manifest.csv or one subfolder per class).
    #[arg(long = "task", required = true, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// Protocol: linear (logistic regression), svm (linear SVM), knn (k = 20) or knn:K on
    /// frozen features — C of the linear probes is chosen on a grid by grouped 5-fold
    /// cross-validation on train+val — or finetune (a new head, the whole network trained;
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

/// One evaluation: a trunk, tasks, a probe protocol and seeds.
#[derive(Debug, Clone)]
pub struct EvalSpec {
    /// A weights file, or `random`.
    pub weights: String,
    /// Architecture (for `random`, or to disambiguate).
    pub arch: Option<Arch>,
    /// Task folders.
    pub tasks: Vec<PathBuf>,
    /// Probe.
    pub protocol: Protocol,
    /// Seeds (one split each).
    pub seeds: Vec<u64>,
    /// Input side (default: the model's).
    pub size: Option<u32>,
    /// Images per forward pass.
    pub batch: usize,
    /// Results directory.
    pub out: PathBuf,
}

/// What an evaluation produced.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Per task and metric: mean, sd and every seed's value.
    pub summaries: Vec<report::Summary>,
    /// Every run (task × seed).
    pub runs: Vec<RunScores>,
}

/// Run an evaluation and write its results.
pub fn evaluate(spec: &EvalSpec) -> Result<EvalOutput> {
    if spec.seeds.is_empty() {
        bail!("--seeds must be at least 1");
    }
    let (extractor, model_id) = load_extractor(&spec.weights, spec.arch, spec.size)?;
    let cfg = *extractor.preprocess_config();
    std::fs::create_dir_all(&spec.out)
        .with_context(|| format!("{}: cannot create", spec.out.display()))?;
    let cache = spec.out.join("cache");

    let mut runs = Vec::new();
    let mut features = Vec::new();
    for (i, &seed) in spec.seeds.iter().enumerate() {
        let pool = Pool::load(
            &PoolConfig::from_task_dirs(&spec.tasks, seed),
            &LoadOptions {
                skip_bad: false,
                check: if i == 0 {
                    ImageCheck::Header
                } else {
                    ImageCheck::None
                },
            },
        )?;
        if features.is_empty() {
            eprintln!(
                "{}: {} on {} task(s), {} seed(s), {} at {} px",
                spec.weights,
                spec.protocol,
                pool.tasks.len(),
                spec.seeds.len(),
                extractor.metadata().architecture,
                cfg.crop
            );
            for t in &pool.tasks {
                features.push(task_features(
                    &extractor, model_id, t, &cache, spec.batch, true,
                )?);
            }
        }
        for (t, f) in pool.tasks.iter().zip(&features) {
            runs.push(protocol::run(t, f, spec.protocol, seed)?);
        }
    }
    let header = serde_json::json!({
        "weights": spec.weights,
        "architecture": extractor.metadata().architecture,
        "input_size": cfg.crop,
        "protocol": spec.protocol.to_string(),
        "seeds": spec.seeds,
        "mtpath_version": env!("CARGO_PKG_VERSION"),
    });
    let summaries = report::write(&spec.out, header, &runs)?;
    Ok(EvalOutput { summaries, runs })
}

/// `--protocol finetune`: every task fine-tuned on every seed's split (runs under
/// OUT/finetune/TASK/), scored on the test splits, reported like the probes.
fn evaluate_finetune(args: &Args) -> Result<Vec<report::Summary>> {
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let weights = if args.weights == "random" {
        "none".to_string()
    } else {
        args.weights.clone()
    };
    let arch = arch_of(&weights, args.arch)?;
    let size = args.size.unwrap_or(224);
    let mut runs = Vec::new();
    for task in &args.tasks {
        let name = task
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into());
        let spec = FinetuneSpec {
            weights: weights.clone(),
            arch,
            task: task.clone(),
            lrs: args.lrs.clone(),
            epochs: args.epochs,
            size,
            batch: args.batch,
            runs: args.out.join("finetune").join(crate::plots::slug(&name)),
        };
        spec.validate()?;
        for seed in 0..args.seeds {
            let check = if seed == 0 {
                ImageCheck::Decode
            } else {
                ImageCheck::None
            };
            runs.push(finetune_seed(&spec, seed, check)?.scores);
        }
    }
    let header = serde_json::json!({
        "weights": args.weights,
        "architecture": arch,
        "input_size": size,
        "protocol": "finetune",
        "learning_rates": args.lrs,
        "epochs": args.epochs,
        "seeds": (0..args.seeds).collect::<Vec<_>>(),
        "mtpath_version": env!("CARGO_PKG_VERSION"),
    });
    report::write(&args.out, header, &runs)
}

pub fn run(args: Args) -> Result<()> {
    set_threads(args.threads);
    let summaries = if args.protocol == "finetune" {
        evaluate_finetune(&args)?
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
