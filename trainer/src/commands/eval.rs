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
    /// dict), or `random` for a randomly initialised trunk of --arch.
    #[arg(long)]
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
    #[arg(long, default_value = "knn")]
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

pub fn run(args: Args) -> Result<()> {
    set_threads(args.threads);
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let device = Device::Cpu;
    let (mut extractor, weights_hash) = if args.weights == "random" {
        let arch = args.arch.unwrap_or(Arch::ResNet18);
        let spec = NetworkSpec::trunk(arch);
        let net = Network::new(spec.clone(), &device, 0)?;
        let bytes = net.to_safetensors_bytes(&ModelMetadata::imagenet(&spec))?;
        (
            FeatureExtractor::from_safetensors_bytes(&bytes, "random", &device)?,
            fnv1a(format!("random-{arch}").as_bytes()),
        )
    } else {
        let path = PathBuf::from(&args.weights);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: cannot read the weights", path.display()))?;
        let file = read_weights_file(&path, &device)?;
        (
            FeatureExtractor::from_tensor_file(&file, args.arch, &device)?,
            fnv1a(&bytes),
        )
    };
    if let Some(s) = args.size {
        extractor.set_sizes(((s as f64) * 256.0 / 224.0).round() as u32, s)?;
    }
    let cfg = *extractor.preprocess_config();
    let model_id =
        fnv1a(format!("{weights_hash:x}-{}-{}", cfg.resize_shorter, cfg.crop).as_bytes());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    let cache = args.out.join("cache");

    let mut runs = Vec::new();
    let mut features = Vec::new();
    for seed in 0..args.seeds {
        let pool = Pool::load(
            &PoolConfig::from_task_dirs(&args.tasks, seed),
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
                "{} on {} task(s), {} seed(s), {} at {} px",
                args.protocol,
                pool.tasks.len(),
                args.seeds,
                extractor.metadata().architecture,
                cfg.crop
            );
            for t in &pool.tasks {
                features.push(task_features(
                    &extractor, model_id, t, &cache, args.batch, true,
                )?);
            }
        }
        for (t, f) in pool.tasks.iter().zip(&features) {
            runs.push(protocol::run(t, f, args.protocol, seed)?);
        }
    }
    let header = serde_json::json!({
        "weights": args.weights,
        "architecture": extractor.metadata().architecture,
        "input_size": cfg.crop,
        "protocol": args.protocol.to_string(),
        "seeds": (0..args.seeds).collect::<Vec<_>>(),
        "mtpath_version": env!("CARGO_PKG_VERSION"),
    });
    let summaries = report::write(&args.out, header, &runs)?;
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
