//! `mtpath demo`: the README's main job. Pre-trains a multi-task ResNet-18 on the real tasks in
//! a data folder with some tasks held out, sized from the training step's measured speed to fit
//! a wall-clock budget (15 minutes by default), compares its frozen features on the held-out
//! tasks with a random-init trunk and single-task networks, and says where the run is.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mtpath_shared::preprocess::EvalTransform;
use mtpath_shared::Arch;

use crate::pool::{task_dirs, PoolConfig, Split};
use crate::session::{load_pool, report, set_threads, stop_flag};
use crate::train::config::TrainConfig;
use crate::train::run::{train, train_resumable, RunSpec};

/// Pre-train a multi-task ResNet-18 on the tasks of a data folder, holding some tasks out, within
/// a wall-clock budget; then compare it on the held-out tasks with random init and single-task
/// networks.
#[derive(Parser, Debug)]
pub struct Args {
    /// Folder of task folders (each with manifest.csv, or one subfolder per class). Default:
    /// $MTPATH_DATA, else ../shared/data, else ./data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Task(s) to hold out of pre-training and evaluate on, comma-separated. Default: those
    /// of DEFAULT_HOLD_OUT present in the data, else the smallest task.
    #[arg(long, value_delimiter = ',')]
    pub hold_out: Vec<String>,
    /// Run directory.
    #[arg(long, default_value = "mtpath-demo")]
    pub out: PathBuf,
    /// Wall-clock budget of the whole demo (pre-training, validation and the held-out
    /// evaluation), e.g. 15m, 1h, 2h30m: the pre-training iterations are set from the training
    /// step's speed measured on this machine, up to --max-iters.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub budget: std::time::Duration,
    /// Pre-training iterations (instead of sizing them from --budget).
    #[arg(long)]
    pub iters: Option<usize>,
    /// The most pre-training iterations --budget may set. The recipe's study found no
    /// held-out gain from running longer on this pool (3,000 iterations against 1,500:
    /// lymphoma level, pbc-blood lower; docs/recipe.md), so a fast machine finishes early
    /// with the same trunk as a machine that just fits 1,500, instead of a different one.
    #[arg(long, default_value_t = 1500)]
    pub max_iters: usize,
    /// Input side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Architecture.
    #[arg(long, default_value = "resnet18")]
    pub arch: Arch,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Trunk initialisation: none (random), imagenet (torchvision's weights from the PyTorch
    /// cache: the paper's setting), or a weights file.
    #[arg(long, default_value = "none")]
    pub init: String,
    /// Seeds (splits) of the held-out evaluation; 0 skips it.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Epochs of the single-task baseline (a network trained on the held-out task alone, per
    /// seed; the default keeps the demo near a quarter of an hour); 0 leaves it out.
    #[arg(long, default_value_t = 3)]
    pub single_task_epochs: usize,
    /// How held-out images become the network's input: resize (shorter side to size × 256/224, then
    /// a center crop), center-crop (at native resolution, keeping the scan's magnification)
    /// or grid (features averaged over non-overlapping native-resolution crops).
    #[arg(long, default_value = "resize")]
    pub eval_transform: EvalTransform,
    /// Continue an interrupted demo run in --out.
    #[arg(long)]
    pub resume: bool,
}

/// The tasks the demo holds out by default (those present): two histology tasks and one
/// cytology task, each with relatives left in the pool (lymphoma and tcga-luad-lusc beside the
/// other H&E tasks, lc25000-lung among them; pbc-blood's white cells beside chula-rbc's red
/// cells from Wright-stained smears). See docs/recipe.md.
pub const DEFAULT_HOLD_OUT: [&str; 3] = ["lymphoma", "pbc-blood", "tcga-luad-lusc"];

/// The data folder to use, or a message saying how to get one.
pub fn find_data(arg: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match arg {
        Some(p) => vec![p.to_path_buf()],
        None => std::env::var_os("MTPATH_DATA")
            .map(|p| vec![PathBuf::from(p)])
            .unwrap_or_else(|| vec!["../shared/data".into(), "data".into()]),
    };
    for c in &candidates {
        if c.is_dir() {
            return Ok(c.clone());
        }
    }
    bail!(
        "no data folder found (looked at {}). Give one with --data DIR or MTPATH_DATA: a folder \
         of task folders, each with a manifest.csv (path,label,group,split) or one subfolder of \
         images per class. Public pathology sets that work as they are: NCT-CRC-HE-100K \
         (zenodo.org/record/1214456), the IDC breast patches (Janowczyk & Madabhushi), LC25000 \
         (github.com/tampapath/lung_colon_image_set), the PBC blood-cell dataset (Acevedo et al.).",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn run(args: Args) -> Result<()> {
    set_threads(args.threads);
    let data = find_data(args.data.as_deref())?;
    let all = task_dirs(&data)?;
    if all.len() < 2 {
        bail!(
            "{}: found {} task folder(s); the demo needs at least two (one is held out)",
            data.display(),
            all.len()
        );
    }
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    // Tasks too small to split (fewer than 10 images in some class) are left out, and said so.
    let mut usable = Vec::new();
    let probe = PoolConfig::from_task_dirs(&all, 0);
    let pool_all = load_pool(&probe, true)?;
    for (dir, task) in all.iter().zip(&pool_all.tasks) {
        let counts = task.classes.iter().enumerate().map(|(c, _)| {
            [Split::Train, Split::Val, Split::Test]
                .iter()
                .map(|s| {
                    task.split(*s)
                        .iter()
                        .filter(|x| x.label as usize == c)
                        .count()
                })
                .sum::<usize>()
        });
        if counts.min().unwrap_or(0) < 10 {
            eprintln!(
                "leaving out {}: fewer than 10 images in some class",
                name(dir)
            );
        } else {
            usable.push(dir.clone());
        }
    }
    let hold_out: Vec<String> = if !args.hold_out.is_empty() {
        args.hold_out.clone()
    } else {
        let present: Vec<String> = DEFAULT_HOLD_OUT
            .iter()
            .filter(|h| usable.iter().any(|d| name(d) == **h))
            .map(|h| h.to_string())
            .collect();
        if present.is_empty() {
            usable
                .iter()
                .zip(&pool_all.tasks)
                .min_by_key(|(_, t)| t.len())
                .map(|(d, _)| vec![name(d)])
                .unwrap_or_default()
        } else {
            present
        }
    };
    for h in &hold_out {
        if !usable.iter().any(|d| name(d) == *h) {
            bail!(
                "--hold-out {h}: no such usable task in {} (tasks: {})",
                data.display(),
                usable.iter().map(name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let train_dirs: Vec<PathBuf> = usable
        .iter()
        .filter(|d| !hold_out.contains(&name(d)))
        .cloned()
        .collect();
    if train_dirs.is_empty() {
        bail!("--hold-out leaves no task to pre-train on; hold out fewer tasks");
    }
    let held_dirs: Vec<PathBuf> = hold_out.iter().map(|h| data.join(h)).collect();
    let held_images: usize = all
        .iter()
        .zip(&pool_all.tasks)
        .filter(|(d, _)| hold_out.contains(&name(d)))
        .map(|(_, t)| t.len())
        .sum();
    let pool_config = PoolConfig::from_task_dirs(&train_dirs, 0);
    // The pool already loaded, restricted to the training tasks (splits depend only on the
    // seed and each task's own data, so they are the same as loading these tasks alone).
    let pool = crate::pool::Pool {
        seed: pool_all.seed,
        tasks: all
            .iter()
            .zip(&pool_all.tasks)
            .filter(|(d, _)| train_dirs.contains(d))
            .map(|(_, t)| crate::pool::Task {
                crop: crate::pool::CropPolicy::RandomResizedCrop,
                ..t.clone()
            })
            .collect(),
        skipped: pool_all.skipped.clone(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    let pool_path = args.out.join("demo-pool.toml");
    let mut config = recipe(&args, 1);
    if !args.resume {
        let iters = match args.iters {
            Some(i) => i,
            None => {
                let val_images: usize = pool
                    .tasks
                    .iter()
                    .map(|t| t.split(Split::Val).len().min(config.val_max_per_task))
                    .sum();
                iterations_for_budget(&args, &config, val_images, held_images)?
            }
        };
        config = recipe(&args, iters);
    }
    if args.resume {
        let record = crate::train::run::read_record(&args.out)
            .with_context(|| format!("{}: no demo run to resume", args.out.display()))?;
        config = record.config;
        config.seed = Some(record.seed);
    } else {
        write_pool_file(&pool_path, &pool_config, &config)?;
    }
    eprintln!(
        "mtpath demo: pre-training {} at {} px on {} tasks ({}), holding out {}; {} \
         iterations of {} images.\nrun directory: {}",
        config.arch,
        config.size,
        pool.tasks.len(),
        pool.tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        hold_out.join(", "),
        config.iters,
        config.batch,
        args.out.display()
    );
    let spec = RunSpec {
        out: args.out.clone(),
        pool_path,
        pool,
        config,
        resume: args.resume,
        force: false,
        verbose: true,
        device: candle_core::Device::Cpu,
        dist: None,
    };
    let outcome = if args.resume {
        train_resumable(spec, stop_flag())?
    } else {
        train(&spec, stop_flag())?
    };
    report(&args.out, &outcome);
    if outcome.interrupted {
        eprintln!(
            "continue the demo with `mtpath demo --resume --out {}`",
            args.out.display()
        );
        std::process::exit(130);
    }
    println!(
        "\nvalidation (balanced accuracy) after {} iterations:",
        outcome.iterations
    );
    if outcome.validation.is_empty() {
        println!(
            "  (the run had finished earlier; its scores are in {}/card.md)",
            outcome.best.as_ref().unwrap_or(&outcome.last).display()
        );
    }
    for v in &outcome.validation {
        if v.n == 0 {
            println!(
                "  {:<20} no validation split (too few groups to hold some out)",
                v.task
            );
        } else {
            println!(
                "  {:<20} {:.3}  ({} images)",
                v.task, v.balanced_accuracy, v.n
            );
        }
    }
    println!(
        "\nweights: {}/trunk.safetensors (torchvision names), model card {}/card.md, metrics {}/metrics.csv\nheld out for evaluation: {}",
        outcome.best.as_ref().unwrap_or(&outcome.last).display(),
        outcome.best.as_ref().unwrap_or(&outcome.last).display(),
        args.out.display(),
        held_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if args.seeds > 0 {
        let best = outcome.best.as_ref().unwrap_or(&outcome.last);
        held_out_comparison(
            &best.join(crate::train::checkpoint::TRUNK_FILE),
            &args,
            &held_dirs,
            &args.out.join("held-out"),
        )?;
    }
    Ok(())
}

/// The held-out task probed with frozen features of the multi-task trunk, of a random trunk,
/// and of a trunk trained on the held-out task alone (single-task baseline), over `seeds`
/// splits; prints the table and writes `held-out/` (comparison.md/json, plots, every
/// evaluation's results).
fn held_out_comparison(trunk: &Path, args: &Args, tasks: &[PathBuf], out: &Path) -> Result<()> {
    use crate::evaluate::compare::{compare, fmt_metric, CompareSpec, Model};
    use crate::evaluate::protocol::Protocol;
    let names: Vec<String> = tasks
        .iter()
        .map(|t| {
            t.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let name = names.join(", ");
    let seeds = args.seeds;
    eprintln!(
        "\nheld-out evaluation on {name} ({seeds} seeds): multi-task trunk vs random init{}",
        if args.single_task_epochs > 0 {
            " vs single-task"
        } else {
            ""
        }
    );
    let mut models = vec![
        Model::Trunk {
            label: "multi-task".into(),
            weights: vec![trunk.display().to_string()],
        },
        Model::Trunk {
            label: "random init".into(),
            weights: vec!["random".into()],
        },
    ];
    if args.single_task_epochs > 0 {
        models.push(Model::SingleTask {
            label: "single-task".into(),
            init: if args.init == "none" {
                "none".into()
            } else {
                args.init.clone()
            },
            epochs: args.single_task_epochs,
            lr: 0.02,
        });
    }
    let c = compare(
        &CompareSpec {
            arch: args.arch,
            size: args.size,
            transform: args.eval_transform,
            score_on: crate::evaluate::protocol::ScoreOn::Test,
            tasks: tasks.to_vec(),
            protocols: vec![Protocol::Linear, Protocol::Knn { k: 20 }],
            seeds,
            batch: args.batch,
            out: out.to_path_buf(),
        },
        &models,
    )?;
    let mut printed = String::new();
    for task in &names {
        for protocol in c.protocols() {
            for m in &c.models {
                let Some(cell) = c.cell(m, &protocol, task) else {
                    continue;
                };
                printed.push_str(&format!(
                    "  {:<16} {:<9} {:<12} {:>15} {:>18} {:>15}\n",
                    task,
                    protocol,
                    m,
                    fmt_metric(Some(cell), "accuracy"),
                    fmt_metric(Some(cell), "balanced_accuracy"),
                    fmt_metric(Some(cell), "macro_f1")
                ));
            }
        }
    }
    // The lead of the multi-task trunk over each baseline on the held-out tasks together,
    // paired by seed: the question the demo asks.
    let mut lead = String::new();
    if names.len() > 1 {
        for protocol in c.protocols().iter().filter(|p| *p != "own head") {
            for m in &c.models {
                if let Some((mean, sd)) = c.task_mean(m, protocol, "balanced_accuracy") {
                    lead.push_str(&format!(
                        "  {:<16} {protocol:<9} {m:<12} {:>34}\n",
                        "mean of tasks",
                        format!("{mean:.3} ± {sd:.3}")
                    ));
                }
            }
            for base in c.models.iter().skip(1) {
                if let Some((d, sd)) =
                    c.paired_difference(&c.models[0], base, protocol, "balanced_accuracy")
                {
                    lead.push_str(&format!(
                        "  {} − {base} ({protocol}, paired by seed): {d:+.3} ± {sd:.3}{}\n",
                        c.models[0],
                        if d > 2.0 * sd { " (> 2 sd)" } else { "" }
                    ));
                }
            }
        }
    }
    println!(
        "\nheld-out tasks, {seeds} seeds (mean ± sd):\n  {:<16} {:<9} {:<12} {:>15} {:>18} {:>15}\n{printed}{lead}\
         table: {}\nplots: {}",
        "task",
        "probe",
        "model",
        "accuracy",
        "balanced accuracy",
        "macro F1",
        out.join("comparison.md").display(),
        c.protocols()
            .iter()
            .map(|p| out
                .join("plots")
                .join(format!("held-out-{}.png", crate::plots::slug(p)))
                .display()
                .to_string())
            .chain([args.out.join("plots").join("training.png").display().to_string()])
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The demo's pre-training recipe for `iters` iterations (see docs/recipe.md for how it was
/// chosen).
fn recipe(args: &Args, iters: usize) -> TrainConfig {
    let warmup = (iters / 15).clamp(1, 100);
    TrainConfig {
        arch: args.arch,
        size: args.size,
        batch: args.batch,
        iters,
        lr: 0.01,
        head_lr_scale: 1.0,
        weight_decay: 1e-4,
        lr_warmup_iters: warmup,
        schedule: mtpath_shared::optim::ScheduleKind::Cosine {
            total_iters: iters.saturating_sub(warmup).max(1),
            min_lr: 0.0,
        },
        rot90: true,
        jitter: 0.2,
        // Selected over the study-3 recipe by `mtpath loto` with two pre-training seeds per
        // recipe (docs/recipe.md, study 4).
        stain_jitter: 0.05,
        val_every: (iters / 3).max(1),
        val_max_per_task: 200,
        rrc_min_scale: 0.35,
        init: args.init.clone(),
        checkpoint_every: 250,
        ..TrainConfig::default()
    }
}

/// Share of the training step's speed a whole run keeps (loader, validation, checkpoints).
const WHOLE_RUN_SHARE: f64 = 0.85;
/// Evaluation-mode forwards (folded BatchNorm, no backward) run about this much faster than
/// a training step.
const INFER_SPEEDUP: f64 = 2.5;
/// Seconds of one probe fit (C chosen by cross-validation) on a held-out task's features.
const PROBE_S: f64 = 4.0;
/// Seconds of fixed costs: loading the pool, building networks, writing reports.
const FIXED_S: f64 = 45.0;

/// Pre-training iterations that fit `args.budget` on this machine: the training step is timed
/// here, and the held-out evaluation (the single-task baselines, features of three models,
/// the probes) and the validation passes are estimated and taken off the budget.
fn iterations_for_budget(
    args: &Args,
    config: &TrainConfig,
    val_images: usize,
    held_images: usize,
) -> Result<usize> {
    eprint!("timing the training step on this machine… ");
    let rate = crate::train::speed::train_step_rate(
        config.arch,
        config.size as usize,
        config.batch,
        &candle_core::Device::Cpu,
        1,
        3,
    )?;
    let run_rate = rate * WHOLE_RUN_SHARE;
    let infer_rate = rate * INFER_SPEEDUP;
    let views = match args.eval_transform {
        EvalTransform::Grid => f64::from(mtpath_shared::preprocess::GRID_MAX_PER_SIDE.pow(2)) / 2.0,
        _ => 1.0,
    };
    let seeds = args.seeds as f64;
    let held = held_images as f64;
    let protocols = 2.0;
    let mut eval_s = FIXED_S + 3.0 * val_images as f64 / infer_rate;
    if args.seeds > 0 {
        // Multi-task and random trunks: features once (cached over seeds), probes per seed.
        eval_s += 2.0 * held * views / infer_rate + 2.0 * protocols * seeds * PROBE_S;
        if args.single_task_epochs > 0 {
            // ~70% of a task is train+val; one network per seed, then its features and probes.
            eval_s += seeds * args.single_task_epochs as f64 * 0.7 * held / run_rate;
            eval_s += seeds * (held * views / infer_rate + protocols * PROBE_S);
        }
    }
    let budget = args.budget.as_secs_f64();
    let train_s = budget - eval_s;
    let min_train_s = 60.0;
    if train_s < min_train_s {
        bail!(
            "--budget {}: the evaluation alone needs about {} on this machine (training step \
             {rate:.0} img/s); give a budget of at least {}, fewer --seeds, or \
             --single-task-epochs 0",
            humantime::format_duration(args.budget),
            humantime::format_duration(std::time::Duration::from_secs(eval_s as u64)),
            humantime::format_duration(std::time::Duration::from_secs(
                (eval_s + min_train_s) as u64 / 60 * 60 + 60
            ))
        );
    }
    let fit = ((train_s * run_rate) / config.batch as f64).floor() as usize;
    let iters = fit.min(args.max_iters).max(1);
    let train_s = iters as f64 * config.batch as f64 / run_rate;
    eprintln!(
        "{rate:.0} img/s: {iters} iterations (~{} of pre-training, ~{} of validation and \
         held-out evaluation){}",
        humantime::format_duration(std::time::Duration::from_secs(train_s as u64)),
        humantime::format_duration(std::time::Duration::from_secs(eval_s as u64)),
        if fit > iters {
            format!(
                "; {fit} would fit the {} budget, but the recipe stops at --max-iters {}",
                humantime::format_duration(args.budget),
                args.max_iters
            )
        } else {
            format!(
                " fit the {} budget",
                humantime::format_duration(args.budget)
            )
        }
    );
    Ok(iters)
}

/// Write the pool the demo trains on, with its settings, so it can be rerun with `mtpath train`.
fn write_pool_file(path: &Path, pool: &PoolConfig, config: &TrainConfig) -> Result<()> {
    let mut doc = toml::Table::new();
    doc.insert("seed".into(), toml::Value::Integer(pool.seed as i64));
    let tasks: Vec<toml::Value> = pool
        .tasks
        .iter()
        .map(|t| {
            let mut tt = toml::Table::new();
            tt.insert(
                "path".into(),
                toml::Value::String(
                    std::fs::canonicalize(&t.path)
                        .unwrap_or(t.path.clone())
                        .display()
                        .to_string(),
                ),
            );
            tt.insert(
                "crop".into(),
                toml::Value::String("random-resized-crop".into()),
            );
            toml::Value::Table(tt)
        })
        .collect();
    doc.insert("task".into(), toml::Value::Array(tasks));
    let train = toml::Value::try_from(config)?;
    doc.insert("train".into(), train);
    let text = format!(
        "# Written by `mtpath demo`; rerun with `mtpath train --pool {} --out RUN/`.\n{}",
        path.display(),
        toml::to_string_pretty(&doc)?
    );
    mtpath_shared::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}
