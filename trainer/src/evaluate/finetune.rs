//! Fine-tuning one task on one split: a new head on a trunk (or a random network), the whole
//! network trained for some epochs per learning rate, the epoch and the learning rate chosen by
//! validation balanced accuracy, the chosen model scored on the test split. Runs already in the
//! output folder are continued or reused, so an interrupted evaluation loses nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;
use mtpath_shared::weights::read_weights_file;
use mtpath_shared::{Arch, Network};

use super::protocol::{score_predictions, RunScores};
use crate::pool::{ImageCheck, LoadOptions, Pool, PoolConfig, Split};
use crate::train::checkpoint::{read_state, MODEL_FILE};
use crate::train::config::TrainConfig;
use crate::train::run::{train_resumable, RunSpec};
use crate::train::validate::{predict, EvalNet, ValSet};

/// What to fine-tune, and how.
#[derive(Debug, Clone)]
pub struct FinetuneSpec {
    /// Trunk weights file, or `none` for random initialisation.
    pub weights: String,
    /// Architecture.
    pub arch: Arch,
    /// The task folder.
    pub task: PathBuf,
    /// Learning rates tried.
    pub lrs: Vec<f64>,
    /// Epochs per learning rate.
    pub epochs: usize,
    /// Input side in pixels.
    pub size: u32,
    /// Images per step.
    pub batch: usize,
    /// Folder of the training runs (one per seed and learning rate).
    pub runs: PathBuf,
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct Finetuned {
    /// Test scores of the chosen model.
    pub scores: RunScores,
    /// Its checkpoint directory (model.safetensors, trunk.safetensors).
    pub checkpoint: PathBuf,
}

impl FinetuneSpec {
    /// Check the settings before anything runs.
    pub fn validate(&self) -> Result<()> {
        if self.lrs.is_empty() || self.lrs.iter().any(|lr| !lr.is_finite() || *lr <= 0.0) {
            bail!("fine-tuning needs positive learning rates, e.g. --lrs 0.01,0.001");
        }
        if self.epochs == 0 || self.batch == 0 {
            bail!("fine-tuning needs at least one epoch and a batch of at least 1");
        }
        Ok(())
    }
}

/// Fine-tune on the splits of seeds `0..seeds` and score each on its test split; the first
/// seed decodes every image (later ones trust that check).
pub fn finetune_seeds(spec: &FinetuneSpec, seeds: u64) -> Result<Vec<RunScores>> {
    (0..seeds)
        .map(|seed| {
            let check = if seed == 0 {
                ImageCheck::Decode
            } else {
                ImageCheck::None
            };
            Ok(finetune_seed(spec, seed, check)?.scores)
        })
        .collect()
}

/// Fine-tune on the split of `seed` and score the chosen model on its test split.
pub fn finetune_seed(spec: &FinetuneSpec, seed: u64, check: ImageCheck) -> Result<Finetuned> {
    spec.validate()?;
    let device = Device::Cpu;
    let pool = Pool::load(
        &PoolConfig::from_task_dirs(std::slice::from_ref(&spec.task), seed),
        &LoadOptions {
            skip_bad: false,
            check,
        },
    )?;
    let task = &pool.tasks[0];
    let per_epoch = task.train.len().div_ceil(spec.batch).max(1);
    let mut best: Option<(f64, f64, PathBuf)> = None;
    for &lr in &spec.lrs {
        let out = spec.runs.join(format!("seed{seed}-lr{lr}"));
        let config = TrainConfig {
            arch: spec.arch,
            size: spec.size,
            batch: spec.batch,
            iters: per_epoch * spec.epochs,
            lr,
            val_every: per_epoch,
            checkpoint_every: per_epoch,
            seed: Some(seed),
            init: spec.weights.clone(),
            ..TrainConfig::default()
        };
        eprintln!(
            "{}: seed {seed}, lr {lr}: {} epochs of {per_epoch} steps",
            task.name, spec.epochs
        );
        let outcome = train_resumable(
            RunSpec {
                out: out.clone(),
                pool_path: spec.task.clone(),
                pool: pool.clone(),
                config,
                resume: false,
                force: false,
                verbose: false,
                device: candle_core::Device::Cpu,
                dist: None,
            },
            Arc::new(AtomicBool::new(false)),
        )?;
        // Without a validation split the last epoch is kept.
        let dir = outcome.best.unwrap_or(outcome.last);
        let score = read_state(&dir)?.best.map(|(s, _)| s).unwrap_or(0.0);
        if best.as_ref().is_none_or(|(b, _, _)| score > *b) {
            best = Some((score, lr, dir));
        }
    }
    let Some((val, lr, dir)) = best else {
        bail!("no fine-tuning run finished");
    };
    let (net, _) =
        Network::from_tensor_file(&read_weights_file(&dir.join(MODEL_FILE), &device)?, &device)?;
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
    let p = predict(&EvalNet::new(&net)?, &test, spec.size, spec.batch, &device)?;
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
    Ok(Finetuned {
        scores,
        checkpoint: dir,
    })
}

/// The architecture of a weights file (its model card, else `arch`, else its tensor names),
/// or `arch` (default ResNet-18) for `none`/`random`.
pub fn arch_of(weights: &str, arch: Option<Arch>) -> Result<Arch> {
    if weights == "none" || weights == "random" {
        return Ok(arch.unwrap_or(Arch::ResNet18));
    }
    let file = read_weights_file(Path::new(weights), &Device::Cpu)?;
    Ok(match (file.model_card()?, arch) {
        (Some(card), _) => card.trunk.architecture,
        (None, Some(a)) => a,
        (None, None) => file.arch()?,
    })
}
