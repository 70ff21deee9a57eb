//! `mtpath eval`: frozen-feature evaluation of a trunk on task folders over several seeds.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use mtpath_shared::features::FeatureExtractor;
use mtpath_shared::weights::{read_weights_file, ModelMetadata};
use mtpath_shared::{Arch, Network, NetworkSpec};

use super::train::set_threads;
use crate::evaluate::features::{fnv1a, task_features};
use crate::evaluate::protocol::{self, Protocol};
use crate::evaluate::report;
use crate::pool::{ImageCheck, LoadOptions, Pool, PoolConfig};

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
    /// Probe: linear (logistic regression), svm (linear SVM), knn (k = 20) or knn:K. C of the
    /// linear probes is chosen on a grid by grouped 5-fold cross-validation on train+val.
    #[arg(long, default_value = "linear")]
    pub protocol: Protocol,
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
    /// Seeds 0..N.
    pub seeds: u64,
    /// Input side (default: the model's).
    pub size: Option<u32>,
    /// Images per forward pass.
    pub batch: usize,
    /// Results directory.
    pub out: PathBuf,
}

/// Run an evaluation and write its results; returns the per-task, per-metric summaries.
pub fn evaluate(spec: &EvalSpec) -> Result<Vec<report::Summary>> {
    if spec.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let device = Device::Cpu;
    let (mut extractor, weights_hash) = if spec.weights == "random" {
        let arch = spec.arch.unwrap_or(Arch::ResNet18);
        let net_spec = NetworkSpec::trunk(arch);
        let net = Network::new(net_spec.clone(), &device, 0)?;
        let bytes = net.to_safetensors_bytes(&ModelMetadata::imagenet(&net_spec))?;
        (
            FeatureExtractor::from_safetensors_bytes(&bytes, "random", &device)?,
            fnv1a(format!("random-{arch}").as_bytes()),
        )
    } else {
        let path = PathBuf::from(&spec.weights);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: cannot read the weights", path.display()))?;
        let file = read_weights_file(&path, &device)?;
        (
            FeatureExtractor::from_tensor_file(&file, spec.arch, &device)?,
            fnv1a(&bytes),
        )
    };
    if let Some(s) = spec.size {
        extractor.set_sizes(((s as f64) * 256.0 / 224.0).round() as u32, s)?;
    }
    let cfg = *extractor.preprocess_config();
    let model_id =
        fnv1a(format!("{weights_hash:x}-{}-{}", cfg.resize_shorter, cfg.crop).as_bytes());
    std::fs::create_dir_all(&spec.out)
        .with_context(|| format!("{}: cannot create", spec.out.display()))?;
    let cache = spec.out.join("cache");

    let mut runs = Vec::new();
    let mut features = Vec::new();
    for seed in 0..spec.seeds {
        let pool = Pool::load(
            &PoolConfig::from_task_dirs(&spec.tasks, seed),
            &LoadOptions {
                skip_bad: false,
                check: if seed == 0 {
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
                spec.seeds,
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
        "seeds": (0..spec.seeds).collect::<Vec<_>>(),
        "mtpath_version": env!("CARGO_PKG_VERSION"),
    });
    report::write(&spec.out, header, &runs)
}

pub fn run(args: Args) -> Result<()> {
    set_threads(args.threads);
    let spec = EvalSpec {
        weights: args.weights,
        arch: args.arch,
        tasks: args.tasks,
        protocol: args.protocol,
        seeds: args.seeds,
        size: args.size,
        batch: args.batch,
        out: args.out.clone(),
    };
    let summaries = evaluate(&spec)?;
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
    Ok(())
}
