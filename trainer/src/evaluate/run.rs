//! One evaluation run: a trunk's frozen features (or fine-tuning) on task folders over
//! several seeds, written as results.json / results.md. `mtpath eval` and the held-out
//! comparisons (`compare`) call it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mtpath_shared::preprocess::EvalTransform;
use mtpath_shared::Arch;

use super::features::{load_extractor, task_features};
use super::finetune::{arch_of, finetune_seeds, FinetuneSpec};
use super::protocol::{self, Protocol, RunScores};
use super::report;
use crate::pool::{ImageCheck, LoadOptions, Pool, PoolConfig, Split};

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
    /// How images become input (resize, native center crop, or a grid of native crops).
    pub transform: EvalTransform,
    /// Score on test (reporting) or on validation (model selection).
    pub score_on: protocol::ScoreOn,
    /// Feature cache folder (default: OUT/cache). Entries are keyed by weights,
    /// preprocessing and task content, so evaluations may share one.
    pub cache: Option<PathBuf>,
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
    let loaded = load_extractor(&spec.weights, spec.arch, spec.size, spec.transform)?;
    let (extractor, model_id) = (loaded.extractor, loaded.cache_id);
    let cfg = *extractor.preprocess_config();
    std::fs::create_dir_all(&spec.out)
        .with_context(|| format!("{}: cannot create", spec.out.display()))?;
    let cache = spec.cache.clone().unwrap_or_else(|| spec.out.join("cache"));

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
                extractor.metadata().trunk.architecture,
                cfg.crop
            );
            for t in &pool.tasks {
                features.push(task_features(
                    &extractor, model_id, t, &cache, spec.batch, true,
                )?);
            }
        }
        for (t, f) in pool.tasks.iter().zip(&features) {
            if spec.score_on == protocol::ScoreOn::Validation && t.split(Split::Val).is_empty() {
                // A source split with no validation part (e.g. slides given as train/test):
                // the task cannot take part in selection, which must not look at test.
                if i == 0 {
                    eprintln!(
                        "{}: no validation split, left out of the selection (reported on test only)",
                        t.name
                    );
                }
                continue;
            }
            runs.push(protocol::run(t, f, spec.protocol, seed, spec.score_on)?);
        }
    }
    let header = serde_json::json!({
        "weights": spec.weights,
        "architecture": extractor.metadata().trunk.architecture,
        "input_size": cfg.crop,
        "protocol": spec.protocol.to_string(),
        "seeds": spec.seeds,
        "mtpath_version": env!("CARGO_PKG_VERSION"),
    });
    let summaries = report::write(&spec.out, header, &runs)?;
    Ok(EvalOutput { summaries, runs })
}

/// A fine-tuning evaluation: every task fine-tuned from a trunk on every seed's split.
#[derive(Debug, Clone)]
pub struct FinetuneEvalSpec {
    /// A weights file, or `random` (training from scratch).
    pub weights: String,
    /// Architecture (for `random`, or to disambiguate).
    pub arch: Option<Arch>,
    /// Task folders.
    pub tasks: Vec<PathBuf>,
    /// Learning rates tried.
    pub lrs: Vec<f64>,
    /// Epochs per learning rate.
    pub epochs: usize,
    /// Seeds: 0..seeds.
    pub seeds: u64,
    /// Input side (default 224).
    pub size: Option<u32>,
    /// Images per step.
    pub batch: usize,
    /// Results directory.
    pub out: PathBuf,
}

/// Fine-tune every task on every seed's split (runs under OUT/finetune/TASK/), score on the
/// test splits and write the results like the probes'.
pub fn evaluate_finetune(args: &FinetuneEvalSpec) -> Result<Vec<report::Summary>> {
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
        runs.extend(finetune_seeds(&spec, args.seeds)?);
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
