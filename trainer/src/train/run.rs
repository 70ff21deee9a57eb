//! The training loop: the paper's multi-task step over a task pool, with validation,
//! checkpoints, resumption and a clean stop on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use mtpath_shared::multitask::{
    heads_forward_backward, multitask_forward_backward, param_groups, StepStats, TaskBatch,
};
use mtpath_shared::optim::{Optimizer, Sgd, SgdConfig};
use mtpath_shared::weights::{read_safetensors_bytes, read_weights_file, LoadMode, ModelMetadata};
use mtpath_shared::{HeadSpec, Network, NetworkSpec};
use serde::{Deserialize, Serialize};

use super::card::{CardTask, ModelCard};
use super::checkpoint::{self, RunState};
use super::config::TrainConfig;
use super::init::{self, Init};
use super::metrics::{mean_balanced_accuracy, MetricsWriter, TrainRow, ValScores};
use super::progress::Progress;
use super::run_dir;
use super::validate::{evaluate, ValSet};
use crate::data;
use crate::dist::{grads::all_reduce_gradients, Distributed, StatsSync};
use crate::pool::{Pool, Split};

/// Iterations per row of training metrics.
const LOG_EVERY: usize = 10;

/// What a run directory records about how it was started (`RUN/run.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The pool file the run was started with.
    pub pool: PathBuf,
    /// The resolved settings.
    pub config: TrainConfig,
    /// The run's seed.
    pub seed: u64,
    /// Tasks and their classes, in head order.
    pub heads: Vec<HeadSpec>,
    /// Trunk initialisation as resolved ("random" or a file).
    pub init: String,
}

/// What a finished (or stopped) run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// Iterations completed.
    pub iterations: usize,
    /// The `last` checkpoint.
    pub last: PathBuf,
    /// The `best` checkpoint, if a validation pass happened.
    pub best: Option<PathBuf>,
    /// Stopped by the user before the end.
    pub interrupted: bool,
    /// The last validation scores.
    pub validation: Vec<ValScores>,
    /// Training images/s of this session (data waits included).
    pub images_per_s: f64,
}

/// Everything `train` needs.
pub struct RunSpec {
    /// Run directory.
    pub out: PathBuf,
    /// The pool file (recorded; the pool itself is `pool`).
    pub pool_path: PathBuf,
    /// The loaded pool.
    pub pool: Pool,
    /// Settings.
    pub config: TrainConfig,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Remove the run already in `out` (see [`run_dir::RUN_FILES`]) and start a new one.
    pub force: bool,
    /// Print progress.
    pub verbose: bool,
    /// Where the network trains (batches are decoded on the CPU and copied there).
    pub device: Device,
    /// Data-parallel training over several processes (`None`: this process alone).
    pub dist: Option<Distributed>,
}

fn heads_of(pool: &Pool) -> Vec<HeadSpec> {
    pool.tasks
        .iter()
        .map(|t| HeadSpec {
            name: t.name.clone(),
            classes: t.classes.clone(),
        })
        .collect()
}

/// At most `max` items spread evenly over the split (0 = all): a fixed subset.
fn val_sets(pool: &Pool, max: usize) -> Vec<ValSet> {
    pool.tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let all = t.split(Split::Val);
            let take = if max == 0 {
                all.len()
            } else {
                max.min(all.len())
            };
            let items = (0..take)
                .map(|k| {
                    let s = &all[k * all.len() / take.max(1)];
                    (s.path.clone(), s.label)
                })
                .collect();
            ValSet {
                task: i,
                name: t.name.clone(),
                items,
                n_classes: t.classes.len(),
                crop: data::CropPolicy::Resize,
            }
        })
        .collect()
}

struct Trainer<'a> {
    spec: &'a RunSpec,
    seed: u64,
    net: Network,
    meta: ModelMetadata,
    optimizer: Sgd,
    record: RunRecord,
    /// Checkpoints are written in the background while training goes on.
    writer: checkpoint::CheckpointWriter,
}

impl Trainer<'_> {
    /// Rank 0, or a single process: the one that validates and writes the run directory.
    fn lead(&self) -> bool {
        self.spec.dist.as_ref().is_none_or(|d| d.rank() == 0)
    }

    /// After validation at iteration `done` scored `score` (mean balanced accuracy): when it
    /// beats the best so far, record it in `state` and save the `best` checkpoint, returning
    /// its folder.
    fn save_if_best(
        &mut self,
        score: f64,
        done: usize,
        state: &mut RunState,
        elapsed_s: f64,
        validation: &[ValScores],
    ) -> Result<Option<PathBuf>> {
        if !state.best.is_none_or(|(b, _)| score > b) {
            return Ok(None);
        }
        state.best = Some((score, done));
        state.iteration = done;
        state.elapsed_s = elapsed_s;
        Ok(Some(self.save("best", state, validation)?))
    }

    /// One optimisation step on `batch` at learning rate `lr` (the heads only while the trunk
    /// is frozen). A non-finite loss is returned without touching the weights.
    ///
    /// Data-parallel, `batch` is this rank's share: the statistics returned are the whole
    /// batch's, the gradients are summed over the ranks before the step, and the returned
    /// flag says whether any rank asked to stop (`stop_here` is this rank's request), so that
    /// every rank stops after the same iteration.
    fn step(
        &mut self,
        batch: &TaskBatch,
        heads_only: bool,
        lr: f64,
        stop_here: bool,
    ) -> Result<(StepStats, bool)> {
        let (mut stats, mut grads) = match &self.spec.dist {
            _ if heads_only => heads_forward_backward(&self.net, batch)?,
            Some(d) if d.sync_bn => {
                let sync = Arc::new(StatsSync(d.collective.clone()));
                mtpath_shared::layers::with_synced_batch_norm(sync, || {
                    multitask_forward_backward(&self.net, batch, true)
                })?
            }
            _ => multitask_forward_backward(&self.net, batch, true)?,
        };
        let mut stop = stop_here;
        if let Some(d) = &self.spec.dist {
            // The parameters the optimiser updates, in the same order on every rank.
            let vars: Vec<candle_core::Var> = self
                .optimizer
                .groups()
                .iter()
                .filter(|g| !g.frozen)
                .flat_map(|g| g.params.iter().map(|(_, v)| v.clone()))
                .collect();
            let floats: usize = vars.iter().map(|v| v.elem_count()).sum();
            let (summed, any_stop) = sum_step_stats(d, &stats, stop_here, floats)?;
            stats = summed;
            stop = any_stop;
            if stats.loss.is_finite() {
                all_reduce_gradients(
                    d.collective.as_ref(),
                    &vars,
                    &mut grads,
                    crate::dist::grads::BUCKET_FLOATS,
                )?;
            }
        }
        if stats.loss.is_finite() {
            self.optimizer.step(&grads, lr)?;
        }
        Ok((stats, stop))
    }

    fn card(&self, iteration: usize, validation: &[ValScores]) -> ModelCard {
        ModelCard {
            mtpath_version: env!("CARGO_PKG_VERSION").into(),
            commit: super::card::COMMIT.into(),
            trunk: self.meta.trunk.clone(),
            init: self.record.init.clone(),
            pool: self.spec.pool_path.display().to_string(),
            tasks: self
                .spec
                .pool
                .tasks
                .iter()
                .enumerate()
                .map(|(i, t)| CardTask {
                    name: t.name.clone(),
                    head: i,
                    classes: t.classes.clone(),
                    images: [t.train.len(), t.val.len(), t.test.len()],
                })
                .collect(),
            training: self.spec.config.clone(),
            iteration,
            validation: validation.to_vec(),
        }
    }

    /// Checkpoint the weights, optimizer state, run state and model card as they are now into
    /// the folder `name`; the files are written in the background (see
    /// [`checkpoint::CheckpointWriter`]).
    fn save(&mut self, name: &str, state: &RunState, validation: &[ValScores]) -> Result<PathBuf> {
        if !self.lead() {
            // Data-parallel: rank 0 writes the run directory.
            return Ok(self.spec.out.join(name));
        }
        // A step with a finite loss can still blow the weights up: never checkpoint those.
        for (pname, var) in self.net.named_parameters() {
            let sq = var
                .as_tensor()
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            if !sq.is_finite() {
                bail!(
                    "iteration {}: parameter {pname} is not finite — training diverged. The \
                     `{name}` checkpoint was not overwritten; lower the learning rate",
                    state.iteration
                );
            }
        }
        let card = self.card(state.iteration, validation);
        let files = vec![
            (
                checkpoint::MODEL_FILE,
                self.net.to_safetensors_bytes(&self.meta)?,
            ),
            (
                checkpoint::TRUNK_FILE,
                self.net.trunk_safetensors_bytes(&self.meta)?,
            ),
            (
                checkpoint::OPTIMIZER_FILE,
                checkpoint::optimizer_bytes(self.optimizer.state_tensors()?)?,
            ),
            (checkpoint::STATE_FILE, serde_json::to_vec_pretty(state)?),
            ("card.json", card.to_json().into_bytes()),
            ("card.md", card.to_markdown().into_bytes()),
        ];
        self.writer
            .submit(name, files)
            .with_context(|| format!("writing the `{name}` checkpoint"))
    }

    fn set_trunk_frozen(&mut self, frozen: bool) -> Result<()> {
        for g in ["trunk", "trunk_no_decay"] {
            if self.optimizer.groups().iter().any(|x| x.name == g) {
                self.optimizer.set_frozen(g, frozen)?;
            }
        }
        Ok(())
    }
}

/// The run record (settings, heads, seed) of a run directory.
pub fn read_record(out: &Path) -> Result<RunRecord> {
    let p = out.join("run.json");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "{}: cannot read; is {} an mtpath run directory?",
            p.display(),
            out.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid run record", p.display()))
}

/// A reopened run: its record, the iteration to start from, and the `last` checkpoint's state
/// and folder.
type Reopened = (RunRecord, usize, Option<(RunState, PathBuf)>);

/// Reopen the run in `spec.out` for `--resume`: the pool, architecture, input size and splits
/// must be the run's; the network gets the `last` checkpoint's weights. Returns the record, the
/// iteration to start from, and the checkpoint's state and folder.
fn reopen_run(
    spec: &RunSpec,
    heads: &[HeadSpec],
    net: &Network,
    device: &Device,
) -> Result<Reopened> {
    let cfg = &spec.config;
    let splits_path = spec.out.join("splits.csv");
    let record = read_record(&spec.out)?;
    if record.heads.as_slice() != heads {
        bail!(
            "{}: the pool's tasks or classes differ from the run's ({} vs {}); resume with \
         the same pool, or start a new run",
            spec.pool_path.display(),
            describe(heads),
            describe(&record.heads)
        );
    }
    if record.config.arch != cfg.arch || record.config.size != cfg.size {
        bail!("--resume: the architecture and input size cannot change within a run");
    }
    let tmp = spec.out.join(".splits.check.csv");
    spec.pool.write_splits(&tmp)?;
    let same = std::fs::read(&tmp).ok() == std::fs::read(&splits_path).ok();
    std::fs::remove_file(&tmp).ok();
    if !same {
        bail!(
            "{}: the pool's splits differ from the run's {} (data or seed changed); resume \
         with the same data, or start a new run",
            spec.pool_path.display(),
            splits_path.display()
        );
    }
    let dir = checkpoint::find_checkpoint_dir(&spec.out, "last").with_context(|| {
        format!(
            "{}: no complete `last` checkpoint to resume from",
            spec.out.display()
        )
    })?;
    let state = checkpoint::read_state(&dir)?;
    let file = read_weights_file(&dir.join(checkpoint::MODEL_FILE), device)?;
    net.load_weights(&file, LoadMode::Strict)?;
    Ok((record, state.iteration, Some((state, dir))))
}

/// Stream tag of the BatchNorm adaptation's batches: a loader seeded apart from training's,
/// so that adapting leaves the training batches unchanged.
const BN_ADAPT_STREAM: u64 = 0xB0A7_ADA9;

/// The paper's BatchNorm adaptation of a trunk initialised from weights: forward
/// `bn_adapt_batches` mixed-task training batches (evaluation mode), re-estimate every
/// BatchNorm layer's statistics and compensate γ/β (outputs unchanged). Its images go through
/// the run's decoded-image cache, so they warm it for training instead of being decoded twice.
#[allow(clippy::too_many_arguments)]
fn adapt_batch_norm(
    net: &Network,
    tasks: &Arc<Vec<data::TaskItems>>,
    cache: &Arc<data::ImageCache>,
    sampler: data::SamplerKind,
    aug: data::AugmentConfig,
    cfg: &TrainConfig,
    seed: u64,
    verbose: bool,
) -> Result<()> {
    let mut loader = data::Loader::with_cache(
        tasks.clone(),
        sampler,
        aug,
        cfg.batch,
        seed ^ BN_ADAPT_STREAM,
        0,
        cfg.workers,
        cfg.prefetch,
        cache.clone(),
        data::Shard::WHOLE,
    )?;
    let s = cfg.size as usize;
    let batches: Vec<Tensor> = (0..cfg.bn_adapt_batches)
        .map(|_| {
            let b = loader.next_batch()?;
            let n = b.tasks.len();
            Ok(Tensor::from_vec(b.images, (n, 3, s, s), net.device())?)
        })
        .collect::<Result<_>>()?;
    let report = mtpath_shared::bn_adapt::adapt_batch_norm(net, &batches)?;
    if verbose {
        eprintln!(
            "BatchNorm adapted to the pool: {} layers re-estimated on {} images (running \
             standard deviations moved by up to {:.0}%)",
            report.layers,
            report.images,
            report.max_std_change * 100.0
        );
    }
    Ok(())
}

/// Start a new run in `spec.out`: initialise the trunk, write the splits and `run.json`.
fn start_run(
    spec: &RunSpec,
    seed: u64,
    heads: &[HeadSpec],
    net: &Network,
    device: &Device,
) -> Result<RunRecord> {
    let cfg = &spec.config;
    let splits_path = spec.out.join("splits.csv");
    let init = init::resolve(&cfg.init, cfg.arch)?;
    let extra = init::load_trunk(net, &init, device)?;
    if spec.verbose {
        if let Init::File(p) = &init {
            eprintln!(
                "trunk initialised from {}{}",
                p.display(),
                if extra.is_empty() {
                    String::new()
                } else {
                    format!(" (ignored {} non-trunk tensors)", extra.len())
                }
            );
        }
    }
    let record = RunRecord {
        pool: spec.pool_path.clone(),
        config: cfg.clone(),
        seed,
        heads: heads.to_vec(),
        init: match &init {
            Init::Random => "random".into(),
            Init::File(p) => p.display().to_string(),
        },
    };
    spec.pool.write_splits(&splits_path)?;
    mtpath_shared::fsutil::write_atomic(
        &spec.out.join("run.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    Ok(record)
}

/// A run as opened for training: its record, the iteration to start from, whether it was
/// resumed, and the `last` checkpoint's state when it was.
struct Opened {
    record: RunRecord,
    start: usize,
    resume: bool,
    state: Option<RunState>,
}

/// What the BatchNorm adaptation draws its batches from: the training images, their cache,
/// the sampler and the augmentation.
type AdaptInputs<'a> = (
    &'a Arc<Vec<data::TaskItems>>,
    &'a Arc<data::ImageCache>,
    data::SamplerKind,
    data::AugmentConfig,
);

/// Start the run in `spec.out` or reopen it (`--resume`, or a dead-end run started over):
/// the network and `optimizer` get the run's weights and state, and a new run from weights
/// gets the BatchNorm adaptation.
fn open_run(
    spec: &RunSpec,
    seed: u64,
    heads: &[HeadSpec],
    net: &Network,
    optimizer: &mut Sgd,
    adapt: AdaptInputs<'_>,
) -> Result<Opened> {
    let cfg = &spec.config;
    let device = net.device().clone();
    let resume = run_dir::prepare(&spec.out, spec.resume, spec.force)?;
    let (record, start, checkpoint) = if resume {
        reopen_run(spec, heads, net, &device)?
    } else {
        (start_run(spec, seed, heads, net, &device)?, 0, None)
    };
    let mut state = None;
    if let Some((s, dir)) = checkpoint {
        optimizer.load_state_tensors(&checkpoint::read_optimizer(&dir, &device)?)?;
        state = Some(s);
    }
    if !resume && record.init != "random" && cfg.bn_adapt_batches > 0 && start < cfg.iters {
        let (tasks, cache, sampler, aug) = adapt;
        adapt_batch_norm(net, tasks, cache, sampler, aug, cfg, seed, spec.verbose)?;
    }
    Ok(Opened {
        record,
        start,
        resume,
        state,
    })
}

/// What rank 0 tells the other ranks about the run it opened.
#[derive(Serialize, Deserialize)]
struct Opening {
    /// Rank 0 could not open the run: why.
    error: Option<String>,
    record: Option<RunRecord>,
    start: usize,
    resume: bool,
}

/// Data-parallel start: rank 0 (which `opened` the run; `None` on the other ranks) sends the
/// outcome, its weights and its optimiser state; the other ranks load them, so every rank
/// starts from rank 0's state whatever the world size the run had before.
fn share_opening(
    d: &Distributed,
    opened: Option<Result<Opened>>,
    net: &Network,
    meta: &ModelMetadata,
    optimizer: &mut Sgd,
) -> Result<Opened> {
    let c = d.collective.as_ref();
    if let Some(opened) = opened {
        let header = match &opened {
            Ok(o) => Opening {
                error: None,
                record: Some(o.record.clone()),
                start: o.start,
                resume: o.resume,
            },
            Err(e) => Opening {
                error: Some(format!("{e:#}")),
                record: None,
                start: 0,
                resume: false,
            },
        };
        c.broadcast_bytes(&mut serde_json::to_vec(&header)?)?;
        let opened = opened?;
        c.broadcast_bytes(&mut net.to_safetensors_bytes(meta)?)?;
        c.broadcast_bytes(&mut checkpoint::optimizer_bytes(
            optimizer.state_tensors()?,
        )?)?;
        return Ok(opened);
    }
    let mut bytes = Vec::new();
    c.broadcast_bytes(&mut bytes)?;
    let header: Opening = serde_json::from_slice(&bytes).context("rank 0's opening message")?;
    if let Some(e) = header.error {
        bail!("rank 0 could not open the run: {e}");
    }
    let device = net.device().clone();
    c.broadcast_bytes(&mut bytes)?;
    let weights = read_safetensors_bytes(&bytes, "rank 0's weights", &device)?;
    net.load_weights(&weights, LoadMode::Strict)?;
    c.broadcast_bytes(&mut bytes)?;
    let state = read_safetensors_bytes(&bytes, "rank 0's optimiser state", &device)?;
    optimizer.load_state_tensors(&state.tensors.into_iter().collect())?;
    Ok(Opened {
        record: header
            .record
            .context("rank 0's opening message has no run record")?,
        start: header.start,
        resume: header.resume,
        state: None,
    })
}

/// `MTPATH_CHECK_REPLICAS=1`: compare every rank's weights with rank 0's after every step
/// (they are always compared at checkpoints).
const CHECK_REPLICAS_ENV: &str = "MTPATH_CHECK_REPLICAS";

/// Data-parallel: check that every rank holds rank 0's parameters bit for bit (BatchNorm's
/// running statistics may differ: without --sync-bn they are each rank's own). An error on
/// every rank when any differs.
fn check_replicas(d: &Distributed, net: &Network, iteration: usize) -> Result<()> {
    let mut digest = Vec::new();
    for (_, var) in net.named_parameters() {
        let values: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        digest.extend(mtpath_shared::rng::fnv1a(&bytes).to_le_bytes());
    }
    let mine = mtpath_shared::rng::fnv1a(&digest).to_le_bytes().to_vec();
    let mut rank0 = mine.clone();
    d.collective.broadcast_bytes(&mut rank0)?;
    let mut differing = [f64::from(u8::from(rank0 != mine))];
    d.collective.all_reduce_sum_f64(&mut differing)?;
    if differing[0] > 0.0 {
        bail!(
            "after iteration {iteration}, the weights of {} rank(s) differ from rank 0's: the \
             ranks no longer train one model (a mismatched build or a faulty collective)",
            differing[0]
        );
    }
    Ok(())
}

/// Sum one step's statistics over the ranks: the whole batch's loss, per-task losses,
/// correct predictions and counts; whether any rank asked to stop; and a check that every
/// rank trains the same `floats` parameters (the gradient sum's length).
fn sum_step_stats(
    d: &Distributed,
    stats: &StepStats,
    stop_here: bool,
    floats: usize,
) -> Result<(StepStats, bool)> {
    let t = stats.samples_per_task.len();
    let mut buf = vec![0f64; 3 + 3 * t];
    buf[0] = f64::from(stats.loss);
    for k in 0..t {
        let n = stats.samples_per_task[k];
        if n > 0 {
            buf[1 + k] = f64::from(stats.loss_per_task[k]) * n as f64;
        }
        buf[1 + t + k] = stats.correct_per_task[k] as f64;
        buf[1 + 2 * t + k] = n as f64;
    }
    buf[1 + 3 * t] = f64::from(u8::from(stop_here));
    buf[2 + 3 * t] = floats as f64;
    d.collective.all_reduce_sum_f64(&mut buf)?;
    let expected = (d.world() * floats) as f64;
    if buf[2 + 3 * t] != expected {
        bail!(
            "the ranks train different parameters ({floats} values here, {} over {} ranks): \
             every rank must run the same mtpath with the same pool and settings",
            buf[2 + 3 * t],
            d.world()
        );
    }
    let samples_per_task: Vec<usize> = (0..t).map(|k| buf[1 + 2 * t + k] as usize).collect();
    let summed = StepStats {
        loss: buf[0] as f32,
        loss_per_task: (0..t)
            .map(|k| match samples_per_task[k] {
                0 => f32::NAN,
                n => (buf[1 + k] / n as f64) as f32,
            })
            .collect(),
        correct_per_task: (0..t).map(|k| buf[1 + t + k] as usize).collect(),
        samples_per_task,
    };
    Ok((summed, buf[1 + 3 * t] > 0.0))
}

/// Train (or continue training) a multi-task model. `stop` is polled between iterations: when
/// set, the `last` checkpoint is written and the function returns with `interrupted`.
pub fn train(spec: &RunSpec, stop: Arc<AtomicBool>) -> Result<RunOutcome> {
    let cfg = &spec.config;
    cfg.validate()?;
    let device = spec.device.clone();
    let (rank, world) = spec.dist.as_ref().map_or((0, 1), |d| (d.rank(), d.world()));
    let lead = rank == 0;
    if world > cfg.batch {
        bail!(
            "a batch of {} images cannot be shared by {world} ranks; give each at least one (--batch {world} or more)",
            cfg.batch
        );
    }
    let share = crate::dist::share(cfg.batch, world, rank);
    let mut share_cfg = cfg.clone();
    share_cfg.batch = share.len();
    super::memory::check(&share_cfg, device.is_cpu(), super::memory::available())?;
    let seed = cfg.seed.unwrap_or(spec.pool.seed);
    let heads = heads_of(&spec.pool);
    let net_spec = NetworkSpec::multitask(cfg.arch, heads.clone());
    let net = Network::new(net_spec.clone(), &device, seed)?;
    let mut meta = ModelMetadata::imagenet(&net_spec);
    meta.trunk.input_size = cfg.size;
    meta.trunk.resize_shorter = ((cfg.size as f64) * 256.0 / 224.0).round() as u32;
    let groups = param_groups(
        &net,
        cfg.head_lr_scale,
        cfg.weight_decay,
        cfg.no_decay_norm_bias,
    );
    let mut optimizer = Sgd::new(
        groups,
        SgdConfig {
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
        },
    )?;
    let sampler: data::SamplerKind = cfg
        .sampler
        .parse()
        .map_err(|e| anyhow::anyhow!("sampler `{}`: {e}", cfg.sampler))?;
    let aug = data::AugmentConfig {
        size: cfg.size,
        hflip: cfg.hflip,
        vflip: cfg.vflip,
        rot90: cfg.rot90,
        jitter: cfg.jitter,
        stain_jitter: cfg.stain_jitter,
        rrc_scale: (cfg.rrc_min_scale, 1.0),
    };
    let tasks = Arc::new(spec.pool.train_items()?);
    let cache = Arc::new(data::ImageCache::new(&tasks, cfg.image_cache_mb << 20));

    // Rank 0 (or the only process) owns the run directory: it starts or reopens the run,
    // and data-parallel ranks then take its weights, optimiser state and starting point.
    let (_lock, opened) = if lead {
        match run_dir::RunLock::acquire(&spec.out) {
            Ok(lock) => {
                let opened = open_run(
                    spec,
                    seed,
                    &heads,
                    &net,
                    &mut optimizer,
                    (&tasks, &cache, sampler, aug),
                );
                (Some(lock), Some(opened))
            }
            Err(e) => (None, Some(Err(e))),
        }
    } else {
        (None, None)
    };
    let opened = match (&spec.dist, opened) {
        (Some(d), opened) => share_opening(d, opened, &net, &meta, &mut optimizer)?,
        (None, Some(opened)) => opened?,
        (None, None) => unreachable!("a single process is rank 0"),
    };
    let Opened {
        record,
        start,
        resume,
        state,
    } = opened;
    if start >= cfg.iters {
        bail!(
            "the run already has {start} iterations (asked: {}); pass a larger --iters to continue",
            cfg.iters
        );
    }
    let verbose = spec.verbose && lead;
    if cfg.head_warmup_iters >= cfg.iters && verbose {
        eprintln!(
            "note: head_warmup_iters ({}) >= iters ({}): the trunk stays frozen in this run",
            cfg.head_warmup_iters, cfg.iters
        );
    }
    if verbose && world > 1 {
        eprintln!(
            "data-parallel over {world} ranks ({}): {} images per rank and step{}",
            spec.dist.as_ref().map_or("", |d| d.collective.engine()),
            share.len(),
            if spec.dist.as_ref().is_some_and(|d| d.sync_bn) {
                ", BatchNorm synchronised"
            } else {
                ", BatchNorm statistics per rank"
            }
        );
    }
    let mut trainer = Trainer {
        spec,
        seed,
        net,
        meta,
        optimizer,
        record,
        writer: checkpoint::CheckpointWriter::new(&spec.out),
    };
    let mut run_state = state.unwrap_or(RunState {
        iteration: start,
        seed,
        sampler: cfg.sampler.clone(),
        best: None,
        elapsed_s: 0.0,
    });
    let elapsed_before = run_state.elapsed_s;

    let mut loader = data::Loader::with_cache(
        tasks.clone(),
        sampler,
        aug,
        cfg.batch,
        trainer.seed,
        start as u64,
        cfg.workers,
        cfg.prefetch,
        cache.clone(),
        data::Shard { rank, world },
    )?;
    let vals = val_sets(&spec.pool, cfg.val_max_per_task);
    let mut metrics = if lead {
        Some(MetricsWriter::open(&spec.out, resume.then_some(start))?)
    } else {
        None
    };
    let schedule = cfg.lr_schedule();
    let mut progress = Progress::new(start, cfg.iters);
    let session = Instant::now();
    let mut window = Window::new(spec.pool.tasks.len());
    let mut last_val: Vec<ValScores> = Vec::new();
    let mut best_dir = checkpoint::find_checkpoint_dir(&spec.out, "best");
    let mut frozen = None;
    let s = cfg.size as usize;
    // Data-parallel: whether any rank asked to stop, as of the last step.
    let mut stop_agreed = false;
    let check_every_step = std::env::var(CHECK_REPLICAS_ENV).is_ok_and(|v| v == "1");

    for it in start..cfg.iters {
        let stopping = match &spec.dist {
            None => stop.load(Ordering::SeqCst),
            Some(_) => stop_agreed,
        };
        if stopping {
            run_state.iteration = it;
            run_state.elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
            let last = trainer.save("last", &run_state, &last_val)?;
            trainer.writer.finish()?;
            // Every rank returns once rank 0's checkpoint is complete.
            if let Some(d) = &spec.dist {
                d.collective.barrier()?;
            }
            progress.finish();
            if lead {
                draw_curves(&spec.out);
            }
            return Ok(RunOutcome {
                iterations: it,
                last,
                best: best_dir,
                interrupted: true,
                validation: last_val,
                images_per_s: window.session_rate(it - start, cfg.batch, session),
            });
        }
        let heads_only = it < cfg.head_warmup_iters;
        if frozen != Some(heads_only) {
            trainer.set_trunk_frozen(heads_only)?;
            frozen = Some(heads_only);
            if heads_only && verbose {
                progress.message(&format!(
                    "iterations {it}..{}: heads only, trunk frozen",
                    cfg.head_warmup_iters
                ));
            }
        }
        let waiting = Instant::now();
        let batch = loader.next_batch()?;
        window.data_wait += waiting.elapsed();
        debug_assert_eq!(batch.iter, it as u64);
        let n = batch.tasks.len();
        let images = Tensor::from_vec(batch.images, (n, 3, s, s), &device)?;
        let tb = TaskBatch {
            images,
            tasks: batch.tasks,
            labels: batch.labels,
            whole: batch.whole,
            label_smoothing: cfg.label_smoothing,
        };
        let lr = schedule.lr_at(it);
        let (stats, any_stop) = trainer.step(&tb, heads_only, lr, stop.load(Ordering::SeqCst))?;
        stop_agreed = any_stop;
        if !stats.loss.is_finite() {
            progress.finish();
            bail!(
                "iteration {it}: the loss is {} — training diverged. Nothing was saved after \
                 iteration {}; the last good checkpoint is {} . Lower the learning rate (now {lr}) \
                 and resume or restart.",
                stats.loss,
                run_state.iteration,
                spec.out.join("last").display()
            );
        }
        window.add(&stats, stats.samples_per_task.iter().sum());
        let done = it + 1;
        if done % LOG_EVERY == 0 || done == cfg.iters {
            let row = window.row(done, lr, &spec.pool);
            if let Some(metrics) = metrics.as_mut() {
                progress.update(done, row.loss, row.images_per_s, false);
                metrics.train(&row)?;
            }
            window.reset();
        }
        let validate_now =
            lead && ((cfg.val_every > 0 && done % cfg.val_every == 0) || done == cfg.iters);
        if validate_now {
            last_val = evaluate(&trainer.net, &vals, cfg.size, cfg.batch, &device)?;
            if let Some(metrics) = metrics.as_mut() {
                metrics.validation(done, &last_val)?;
            }
            if let Some(score) = mean_balanced_accuracy(&last_val) {
                if verbose {
                    progress.message(&validation_line(done, score, &last_val));
                }
                let elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
                if let Some(dir) =
                    trainer.save_if_best(score, done, &mut run_state, elapsed_s, &last_val)?
                {
                    best_dir = Some(dir);
                }
            }
        }
        let checkpoint_now = done % cfg.checkpoint_every == 0 || done == cfg.iters;
        if let Some(d) = &spec.dist {
            if checkpoint_now || check_every_step {
                check_replicas(d, &trainer.net, done)?;
            }
        }
        if checkpoint_now {
            run_state.iteration = done;
            run_state.elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
            trainer.save("last", &run_state, &last_val)?;
        }
    }
    trainer.writer.finish()?;
    if let Some(d) = &spec.dist {
        d.collective.barrier()?;
    }
    progress.finish();
    if verbose && cfg.image_cache_mb > 0 {
        eprintln!(
            "decoded-image cache: {} images ({} MiB of {} MiB) kept in RAM",
            cache.len(),
            cache.used_bytes() >> 20,
            cfg.image_cache_mb
        );
    }
    if lead {
        draw_curves(&spec.out);
    }
    Ok(RunOutcome {
        iterations: cfg.iters,
        last: spec.out.join("last"),
        best: best_dir,
        interrupted: false,
        validation: last_val,
        images_per_s: window.session_rate(cfg.iters - start, cfg.batch, session),
    })
}

/// Train `spec`, or continue it where its directory holds an unfinished run with the same
/// settings (a finished one returns at once): for commands that run many trainings and must
/// lose nothing when stopped. A run stopped before its first checkpoint starts again; a
/// directory holding a run with other settings is an error.
pub fn train_resumable(mut spec: RunSpec, stop: Arc<AtomicBool>) -> Result<RunOutcome> {
    let out = spec.out.clone();
    if out.join("run.json").exists() {
        let record = read_record(&out)?;
        let mut ours = spec.config.clone();
        ours.seed = Some(ours.seed.unwrap_or(spec.pool.seed));
        let mut theirs = record.config.clone();
        theirs.seed = Some(record.seed);
        if serde_json::to_value(&ours)? != serde_json::to_value(&theirs)? {
            bail!(
                "{} holds a run with other settings; remove it, or choose another output folder",
                out.display()
            );
        }
        if let Some(last) = checkpoint::find_checkpoint_dir(&out, "last") {
            let state = checkpoint::read_state(&last)?;
            if state.iteration >= spec.config.iters {
                // Finished earlier: nothing to train.
                return Ok(RunOutcome {
                    iterations: state.iteration,
                    last,
                    best: checkpoint::find_checkpoint_dir(&out, "best"),
                    interrupted: false,
                    validation: Vec::new(),
                    images_per_s: 0.0,
                });
            }
            spec.resume = true;
        }
        // Without a checkpoint, `train` starts the run over (run_dir::prepare).
    }
    train(&spec, stop)
}

/// Training curves into RUN/plots/; a failure is a warning (the run itself is saved).
fn draw_curves(run: &std::path::Path) {
    if let Err(e) = crate::plots::training_curves(run) {
        eprintln!(
            "warning: {}: training curves not drawn: {e:#}",
            run.display()
        );
    }
}

/// The progress line after validation: the mean and each task's balanced accuracy.
fn validation_line(done: usize, score: f64, scores: &[ValScores]) -> String {
    let tasks: Vec<String> = scores
        .iter()
        .map(|v| {
            if v.n == 0 {
                format!("{} (no validation images)", v.task)
            } else {
                format!("{} {:.3}", v.task, v.balanced_accuracy)
            }
        })
        .collect();
    format!(
        "iteration {done}: validation mean balanced accuracy {score:.3} ({})",
        tasks.join(", ")
    )
}

fn describe(heads: &[HeadSpec]) -> String {
    heads
        .iter()
        .map(|h| format!("{}[{}]", h.name, h.classes.len()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Training statistics accumulated over a logging window.
struct Window {
    loss_sum: f64,
    steps: usize,
    images: usize,
    started: Instant,
    task_loss: Vec<f64>,
    task_correct: Vec<usize>,
    task_n: Vec<usize>,
    last_loss: f64,
    /// Time spent waiting for the loader in this window.
    data_wait: std::time::Duration,
}

impl Window {
    fn new(tasks: usize) -> Self {
        Self {
            loss_sum: 0.0,
            steps: 0,
            images: 0,
            started: Instant::now(),
            task_loss: vec![0.0; tasks],
            task_correct: vec![0; tasks],
            task_n: vec![0; tasks],
            last_loss: f64::NAN,
            data_wait: std::time::Duration::ZERO,
        }
    }

    fn add(&mut self, s: &mtpath_shared::multitask::StepStats, n: usize) {
        self.loss_sum += f64::from(s.loss);
        self.last_loss = f64::from(s.loss);
        self.steps += 1;
        self.images += n;
        for t in 0..self.task_n.len() {
            let k = s.samples_per_task[t];
            if k > 0 {
                self.task_loss[t] += f64::from(s.loss_per_task[t]) * k as f64;
                self.task_correct[t] += s.correct_per_task[t];
                self.task_n[t] += k;
            }
        }
    }

    fn row(&self, iter: usize, lr: f64, pool: &Pool) -> TrainRow {
        TrainRow {
            iter,
            loss: self.loss_sum / self.steps.max(1) as f64,
            lr,
            images_per_s: self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9),
            data_wait_fraction: self.data_wait.as_secs_f64()
                / self.started.elapsed().as_secs_f64().max(1e-9),
            tasks: pool
                .tasks
                .iter()
                .enumerate()
                .map(|(t, task)| {
                    let n = self.task_n[t];
                    let f = |v: f64| (n > 0).then(|| v / n as f64);
                    (
                        task.name.clone(),
                        f(self.task_loss[t]),
                        f(self.task_correct[t] as f64),
                    )
                })
                .collect(),
        }
    }

    fn reset(&mut self) {
        *self = Self {
            last_loss: self.last_loss,
            ..Self::new(self.task_n.len())
        };
    }

    fn session_rate(&self, steps: usize, batch: usize, session: Instant) -> f64 {
        (steps * batch) as f64 / session.elapsed().as_secs_f64().max(1e-9)
    }
}
