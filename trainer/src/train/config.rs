//! Training settings: defaults, the pool file's `[train]` table, then command-line flags.

use std::path::Path;

use anyhow::{bail, Context, Result};
use mtpath_shared::optim::ScheduleKind;
use mtpath_shared::Arch;
use serde::{Deserialize, Serialize};

/// Everything that decides what a training run computes. Stored in `RUN/run.json`, so a
/// resumed run continues with exactly the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Trunk architecture.
    pub arch: Arch,
    /// Input side in pixels (training crops and validation crops).
    pub size: u32,
    /// Images per step, all tasks together.
    pub batch: usize,
    /// Optimiser steps in total (head warm-up included).
    pub iters: usize,
    /// Base learning rate (the trunk's).
    pub lr: f64,
    /// Heads learn at `lr × head_lr_scale` (τ in the paper).
    pub head_lr_scale: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay, added to the gradient as in `torch.optim.SGD`.
    pub weight_decay: f64,
    /// No weight decay on BatchNorm parameters and biases.
    pub no_decay_norm_bias: bool,
    /// Learning-rate schedule after the learning-rate warm-up.
    pub schedule: ScheduleKind,
    /// Linear learning-rate warm-up, in iterations.
    pub lr_warmup_iters: usize,
    /// Iterations at the start that train only the heads: trunk frozen, BatchNorm statistics
    /// included (evaluation mode).
    pub head_warmup_iters: usize,
    /// Task sampler: `uniform` (the paper's), `proportional`, `temperature:T`,
    /// `round-robin` or `weighted`.
    pub sampler: String,
    /// Random horizontal flips.
    pub hflip: bool,
    /// Random vertical flips.
    pub vflip: bool,
    /// Random multiples of 90° rotations.
    pub rot90: bool,
    /// Smallest area fraction of random-resized crops (torchvision's `scale=(min, 1)`).
    pub rrc_min_scale: f32,
    /// Colour jitter strength (brightness, contrast, saturation in `[1 - j, 1 + j]`); 0 = off.
    pub jitter: f32,
    /// H&E stain jitter strength σ (Tellez et al. 2018): in colour-deconvolved
    /// haematoxylin/eosin/DAB optical density, each stain scaled by a factor in
    /// `[1 - σ, 1 + σ]` and shifted by an amount in `[-σ, σ]` (0.05: "HED-light"); 0 = off.
    pub stain_jitter: f32,
    /// Label smoothing ε of the cross-entropy (torch's `label_smoothing`); 0 = off.
    pub label_smoothing: f64,
    /// Validate every this many iterations (and at the end); 0 = only at the end.
    pub val_every: usize,
    /// At most this many validation images per task (a fixed subset); 0 = all.
    pub val_max_per_task: usize,
    /// Write the `last` checkpoint every this many iterations (and at the end).
    pub checkpoint_every: usize,
    /// Seed of the run (initialisation, sampling, augmentation). Default: the pool's seed.
    pub seed: Option<u64>,
    /// Trunk initialisation: `none` (random), `imagenet` (torchvision's weights from the
    /// PyTorch cache) or a weights file (.safetensors or .pth).
    pub init: String,
    /// When the trunk starts from weights (`init` a file or `imagenet`): mixed-task batches
    /// forwarded before the first step to re-estimate every BatchNorm layer's statistics on
    /// the pool, with γ/β compensated so outputs are unchanged (the paper's adaptation;
    /// mtdp's `adapt_batch_norm`). 0 = off.
    pub bn_adapt_batches: usize,
    /// RAM for decoded training images, in MiB (8-bit RGB as decoded; first come, first
    /// kept): after the first pass an image costs its augmentation only. 0 = decode every
    /// time. Batches are the same either way.
    pub image_cache_mb: usize,
    /// Decoding threads of the data pipeline.
    pub workers: usize,
    /// Batches prepared ahead of the step.
    pub prefetch: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            arch: Arch::ResNet18,
            size: 224,
            batch: 64,
            iters: 10_000,
            lr: 1e-3,
            head_lr_scale: 1.0,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            no_decay_norm_bias: false,
            schedule: ScheduleKind::Constant,
            lr_warmup_iters: 0,
            head_warmup_iters: 0,
            sampler: "uniform".into(),
            hflip: true,
            vflip: true,
            rot90: false,
            jitter: 0.0,
            stain_jitter: 0.0,
            label_smoothing: 0.0,
            rrc_min_scale: 0.08,
            val_every: 500,
            val_max_per_task: 0,
            checkpoint_every: 500,
            seed: None,
            init: "none".into(),
            bn_adapt_batches: 20,
            image_cache_mb: 2048,
            workers: 2,
            prefetch: 4,
        }
    }
}

impl TrainConfig {
    /// Defaults overridden by a pool file's `[train]` table (unknown keys are an error that
    /// names the file).
    pub fn from_table(table: Option<&toml::Table>, source: &Path) -> Result<Self> {
        match table {
            None => Ok(Self::default()),
            Some(t) => Self::deserialize(toml::Value::Table(t.clone())).with_context(|| {
                format!(
                    "{}: bad [train] table; see `mtpath train --help` for the settings",
                    source.display()
                )
            }),
        }
    }

    /// Check the settings make sense before anything is run; errors name the `[train]` key
    /// (the flags of the same name override them).
    pub fn validate(&self) -> Result<()> {
        if self.size < 32 {
            bail!("`size` = {} px is too small (at least 32)", self.size);
        }
        if self.batch == 0 {
            bail!("`batch` = 0: it must be at least 1");
        }
        if self.iters == 0 {
            bail!("`iters` = 0: it must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("`lr` = {} must be a number > 0", self.lr);
        }
        if !(self.head_lr_scale.is_finite() && self.head_lr_scale > 0.0) {
            bail!(
                "`head_lr_scale` = {} must be a number > 0",
                self.head_lr_scale
            );
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("`momentum` = {} must be in [0, 1)", self.momentum);
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!(
                "`weight_decay` = {} must be a number >= 0",
                self.weight_decay
            );
        }
        if !(0.0..1.0).contains(&self.jitter) {
            bail!("`jitter` = {} must be in [0, 1)", self.jitter);
        }
        if !(0.0..1.0).contains(&self.stain_jitter) {
            bail!("`stain_jitter` = {} must be in [0, 1)", self.stain_jitter);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "`label_smoothing` = {} must be in [0, 1)",
                self.label_smoothing
            );
        }
        if !(self.rrc_min_scale > 0.0 && self.rrc_min_scale <= 1.0) {
            bail!("`rrc_min_scale` = {} must be in (0, 1]", self.rrc_min_scale);
        }
        if self.workers == 0 {
            bail!("`workers` = 0: it must be at least 1");
        }
        if self.prefetch == 0 {
            bail!("`prefetch` = 0: it must be at least 1");
        }
        if self.checkpoint_every == 0 {
            bail!("`checkpoint_every` = 0: it must be at least 1");
        }
        self.lr_schedule().validate()?;
        Ok(())
    }

    /// The learning-rate schedule these settings describe.
    pub fn lr_schedule(&self) -> mtpath_shared::optim::LrSchedule {
        let mut s = mtpath_shared::optim::LrSchedule::constant(self.lr);
        s.kind = self.schedule.clone();
        s.warmup_iters = self.lr_warmup_iters;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_table_overrides_defaults_and_rejects_unknown_keys() {
        let t: toml::Table = toml::from_str("batch = 16\nlr = 0.05\narch = \"resnet50\"").unwrap();
        let c = TrainConfig::from_table(Some(&t), Path::new("pool.toml")).unwrap();
        assert_eq!(c.batch, 16);
        assert_eq!(c.lr, 0.05);
        assert_eq!(c.arch, Arch::ResNet50);
        assert_eq!(c.size, 224);

        let t: toml::Table = toml::from_str("batchsize = 16").unwrap();
        let err = format!(
            "{:#}",
            TrainConfig::from_table(Some(&t), Path::new("pool.toml")).unwrap_err()
        );
        assert!(
            err.contains("pool.toml") && err.contains("batchsize"),
            "{err}"
        );
    }

    #[test]
    fn schedule_from_toml() {
        let t: toml::Table =
            toml::from_str("schedule = { type = \"cosine\", total_iters = 100, min_lr = 0.0 }")
                .unwrap();
        let c = TrainConfig::from_table(Some(&t), Path::new("p.toml")).unwrap();
        assert!(matches!(c.schedule, ScheduleKind::Cosine { .. }));
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let c = TrainConfig {
            momentum: 1.0,
            ..TrainConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("momentum"));
        let c = TrainConfig {
            lr: -1.0,
            ..TrainConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(TrainConfig::default().validate().is_ok());
    }
}
