//! `mtpath loto`: leave-one-task-out — pre-train without the held-out tasks (one run per
//! hyper-parameter combination), evaluate on the held-out tasks against random init, a
//! single-task baseline and optional ImageNet weights, and rank the combinations by average
//! rank. Every run is resumable: rerunning the same command continues where it stopped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mtpath_shared::preprocess::EvalTransform;
use serde::Deserialize;

use crate::evaluate::compare::{compare, fmt_metric, CompareSpec, Comparison, Model};
use crate::evaluate::protocol::{Protocol, ScoreOn};
use crate::evaluate::rank::average_ranks;
use crate::pool::PoolConfig;
use crate::session::{load_pool, set_threads, stop_flag};
use crate::train::checkpoint::TRUNK_FILE;
use crate::train::config::TrainConfig;
use crate::train::run::{train_resumable, RunSpec};

/// Leave-one-task-out: pre-train on a pool without the held-out task(s), once per
/// hyper-parameter combination of --grid; probe the held-out tasks' frozen features of each
/// trunk, of a random trunk, of a single-task network and of --imagenet weights, over the same
/// seeds; rank the combinations by average rank over held-out tasks and probes (the paper's
/// model selection). Writes OUT/loto.md, OUT/loto.json, OUT/held-out/ (tables, plots) and
/// OUT/pretrain/NN/ (the runs). Rerun the same command to continue an interrupted one.
#[derive(Parser, Debug)]
pub struct Args {
    /// Pool file (its [train] table gives the pre-training settings).
    #[arg(long)]
    pub pool: PathBuf,
    /// Task(s) to hold out of pre-training and evaluate on (names as in the pool).
    #[arg(long, value_delimiter = ',', required = true)]
    pub hold_out: Vec<String>,
    /// A pre-training setting and the values to try, e.g. `lr=0.01,0.02` or
    /// `sampler=uniform,proportional` (any [train] key; repeat for more keys: every
    /// combination is trained). One value sets it for all runs.
    #[arg(long = "grid", value_name = "KEY=V1,V2,..")]
    pub grid: Vec<String>,
    /// How the --grid axes combine: `full` (every combination) or `one-at-a-time` (the pool's
    /// settings, then each axis value changed alone: fewer runs when the axes are many).
    #[arg(long, value_enum, default_value = "full")]
    pub design: Design,
    /// Pre-train every combination once per seed (e.g. `0,1,2`): replicates whose held-out
    /// scores are pooled, so that ranks and sds include the spread between pre-training runs
    /// (one run can land far from another with the same recipe). Default: one run, seeded
    /// by the pool.
    #[arg(long, value_delimiter = ',')]
    pub pretrain_seeds: Vec<u64>,
    /// Frozen-feature probes (repeatable): linear, svm, knn, knn:K.
    #[arg(long = "protocol", default_values = ["linear", "knn"])]
    pub protocols: Vec<Protocol>,
    /// Seeds (splits of the held-out tasks) 0..N.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// ImageNet (or any other) trunk weights to compare against, e.g. torchvision's file.
    #[arg(long)]
    pub imagenet: Option<PathBuf>,
    /// Epochs of the single-task baseline (a network trained on each held-out task alone, per
    /// seed, from the pool's initialisation); 0 leaves it out.
    #[arg(long, default_value_t = 10)]
    pub single_task_epochs: usize,
    /// Learning rate of the single-task baseline.
    #[arg(long, default_value_t = 0.01)]
    pub single_task_lr: f64,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Skip unreadable images (listed) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// How held-out images become the network's input: resize (shorter side to size × 256/224, then
    /// a center crop), center-crop (at native resolution, keeping the scan's magnification)
    /// or grid (features averaged over non-overlapping native-resolution crops).
    #[arg(long, default_value = "resize")]
    pub eval_transform: EvalTransform,
}

/// How grid axes combine into pre-training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Design {
    /// Every combination of the axes' values.
    Full,
    /// The base settings, then one run per axis value that differs from the base, with every
    /// other setting at the base.
    OneAtATime,
}

/// One grid axis: a [train] key and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// The key.
    pub key: String,
    /// The values, as TOML.
    pub values: Vec<toml::Value>,
}

/// A TOML value from the command line: a number, boolean or array as TOML reads it, else a
/// string (so `sampler=uniform` needs no quotes).
fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Parse `KEY=V1,V2,..`.
pub fn parse_axis(text: &str) -> Result<Axis> {
    let Some((key, values)) = text.split_once('=') else {
        bail!("--grid {text}: write KEY=V1,V2 (e.g. lr=0.01,0.02)");
    };
    let key = key.trim();
    if key.is_empty() || values.trim().is_empty() {
        bail!("--grid {text}: write KEY=V1,V2 (e.g. lr=0.01,0.02)");
    }
    if key == "arch" || key == "size" {
        bail!(
            "--grid {key}: the architecture and input size cannot vary within one comparison; \
             run loto once per {key}"
        );
    }
    Ok(Axis {
        key: key.to_string(),
        values: values.split(',').map(|v| parse_value(v.trim())).collect(),
    })
}

/// A value as written on the command line (strings without quotes).
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One hyper-parameter combination: its settings and a label naming the varied values.
#[derive(Debug, Clone)]
pub struct Combination {
    /// `key=value` of every axis with more than one value (empty for a single run).
    pub label: String,
    /// The full settings.
    pub config: TrainConfig,
}

/// Every combination of the axes applied to `base`; a key that is not a setting, or a value of
/// the wrong type, is an error naming it.
pub fn combinations(base: &TrainConfig, axes: &[Axis]) -> Result<Vec<Combination>> {
    let base_table = match toml::Value::try_from(base)? {
        toml::Value::Table(t) => t,
        _ => bail!("settings are not a table"),
    };
    let mut out = vec![(base_table, Vec::<String>::new())];
    for axis in axes {
        let mut next = Vec::new();
        for (table, label) in &out {
            for v in &axis.values {
                let mut t = table.clone();
                t.insert(axis.key.clone(), v.clone());
                let mut l = label.clone();
                if axis.values.len() > 1 {
                    l.push(format!("{}={}", axis.key, show(v)));
                }
                next.push((t, l));
            }
        }
        out = next;
    }
    out.into_iter()
        .map(|(t, l)| {
            let mut config =
                TrainConfig::deserialize(toml::Value::Table(t)).with_context(|| {
                    format!(
                        "--grid {}: not a pre-training setting or a value of the wrong type; \
                         see the [train] keys in `mtpath train --help`",
                        l.join(" ")
                    )
                })?;
            if !axes.iter().any(|a| a.key == "schedule") {
                stretch_schedule(base, &mut config);
            }
            config
                .validate()
                .with_context(|| format!("--grid {}", l.join(" ")))?;
            Ok(Combination {
                label: l.join(" "),
                config,
            })
        })
        .collect()
}

/// The folder of combination `i`'s pre-training run with replicate `seed` (None: the only
/// run, seeded by the pool), relative to the output folder.
fn run_dir(i: usize, seed: Option<u64>) -> String {
    match seed {
        None => format!("pretrain/{i:02}"),
        Some(s) => format!("pretrain/{i:02}-seed{s}"),
    }
}

/// The base settings (labelled `base`), then every axis value that changes them alone,
/// labelled `key=value`.
pub fn one_at_a_time(base: &TrainConfig, axes: &[Axis]) -> Result<Vec<Combination>> {
    let mut out = vec![Combination {
        label: "base".into(),
        config: base.clone(),
    }];
    let as_value = |c: &TrainConfig| toml::Value::try_from(c);
    let base_value = as_value(base)?;
    for axis in axes {
        for v in &axis.values {
            let single = Axis {
                key: axis.key.clone(),
                values: vec![v.clone()],
            };
            let mut combo = combinations(base, std::slice::from_ref(&single))?
                .pop()
                .context("no combination")?;
            if as_value(&combo.config)? == base_value {
                continue;
            }
            combo.label = format!("{}={}", axis.key, show(v));
            out.push(combo);
        }
    }
    Ok(out)
}

/// A cosine schedule that decays to its floor exactly at the end of the base run is
/// stretched (or shrunk) to end with a combination that changes `iters`, so that an
/// `iters=1500,3000` axis compares full schedules rather than a run that idles at the floor
/// for its second half.
fn stretch_schedule(base: &TrainConfig, config: &mut TrainConfig) {
    use mtpath_shared::optim::ScheduleKind;
    if config.iters == base.iters {
        return;
    }
    if let (
        ScheduleKind::Cosine {
            total_iters: base_total,
            ..
        },
        ScheduleKind::Cosine { total_iters, .. },
    ) = (&base.schedule, &mut config.schedule)
    {
        if *base_total + base.lr_warmup_iters == base.iters {
            *total_iters = config.iters.saturating_sub(config.lr_warmup_iters).max(1);
        }
    }
}

/// The ranking of the models by average rank of their mean balanced accuracy over every
/// (frozen probe, held-out task); returns (model, average rank) best first.
pub fn ranking(c: &Comparison) -> Vec<(String, f64)> {
    let criteria: Vec<(String, String)> = c
        .protocols()
        .into_iter()
        .filter(|p| p != "own head")
        .flat_map(|p| c.tasks.iter().map(move |t| (p.clone(), t.clone())))
        // A task no model was scored on (no validation split) is not a criterion.
        .filter(|(p, t)| c.models.iter().any(|m| c.cell(m, p, t).is_some()))
        .collect();
    let scores: Vec<Vec<f64>> = c
        .models
        .iter()
        .map(|m| {
            criteria
                .iter()
                .map(|(p, t)| {
                    c.cell(m, p, t)
                        .and_then(|x| x.metric("balanced_accuracy"))
                        .map(|s| s.mean)
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
        .collect();
    let mut ranked: Vec<(String, f64)> = c
        .models
        .iter()
        .cloned()
        .zip(average_ranks(&scores))
        .collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    ranked
}

fn task_path(pool: &PoolConfig, name: &str) -> Option<PathBuf> {
    pool.tasks
        .iter()
        .find(|t| t.task_name() == name)
        .map(|t| t.path.clone())
}

pub fn run(args: Args) -> Result<()> {
    set_threads(args.threads);
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let pool_config = PoolConfig::from_file(&args.pool)?;
    let names: Vec<String> = pool_config.tasks.iter().map(|t| t.task_name()).collect();
    let mut held_out = Vec::new();
    for h in &args.hold_out {
        match task_path(&pool_config, h) {
            Some(p) => held_out.push(p),
            None => bail!(
                "--hold-out {h}: no such task in {} (tasks: {})",
                args.pool.display(),
                names.join(", ")
            ),
        }
    }
    // Selection scores the held-out tasks' validation splits, never their test splits: at
    // least one of them must have one (as the evaluation splits them: seed 0).
    let held_pool = crate::pool::Pool::load(
        &PoolConfig::from_task_dirs(&held_out, 0),
        &crate::pool::LoadOptions {
            skip_bad: args.skip_bad,
            check: crate::pool::ImageCheck::None,
        },
    )?;
    if held_pool
        .tasks
        .iter()
        .all(|t| t.split(crate::pool::Split::Val).is_empty())
    {
        bail!(
            "--hold-out {}: no held-out task has a validation split (a source split with only \
             train/test, or too few groups), and selection never looks at test; also hold out \
             a task with a validation split",
            args.hold_out.join(",")
        );
    }
    let mut train_config = pool_config.clone();
    train_config
        .tasks
        .retain(|t| !args.hold_out.contains(&t.task_name()));
    if train_config.tasks.is_empty() {
        bail!("--hold-out leaves no task to pre-train on");
    }
    let base = TrainConfig::from_table(pool_config.train.as_ref(), &args.pool)?;
    let axes = args
        .grid
        .iter()
        .map(|g| parse_axis(g))
        .collect::<Result<Vec<_>>>()?;
    let combos = match args.design {
        Design::Full => combinations(&base, &axes)?,
        Design::OneAtATime => one_at_a_time(&base, &axes)?,
    };
    // Replicate seeds (None: the pool's seed, one run per combination).
    let replicates: Vec<Option<u64>> = if args.pretrain_seeds.is_empty() {
        vec![None]
    } else {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(d) = args.pretrain_seeds.iter().find(|s| !seen.insert(**s)) {
            bail!("--pretrain-seeds: seed {d} is listed twice");
        }
        args.pretrain_seeds.iter().map(|&s| Some(s)).collect()
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    // The training pool, as a file the runs record (and `mtpath train` can rerun).
    let train_pool_path = args.out.join("pretrain-pool.toml");
    mtpath_shared::fsutil::write_atomic(
        &train_pool_path,
        format!(
            "# Written by `mtpath loto`: {} without {}.\n{}",
            args.pool.display(),
            args.hold_out.join(", "),
            toml::to_string_pretty(&train_config)?
        )
        .as_bytes(),
    )?;
    let pool = load_pool(&train_config, args.skip_bad)?;
    eprintln!(
        "mtpath loto: {} combination(s) × {} pre-training run(s) on {} ({} held out), then {} seed(s) of {} on the held-out task(s)",
        combos.len(),
        replicates.len(),
        pool.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "),
        args.hold_out.join(", "),
        args.seeds,
        args.protocols.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    );
    let stop = stop_flag();
    let mut models = Vec::new();
    for (i, combo) in combos.iter().enumerate() {
        let mut weights = Vec::new();
        for (r, seed) in replicates.iter().enumerate() {
            let out = args.out.join(run_dir(i, *seed));
            let config = TrainConfig {
                seed: seed.or(combo.config.seed),
                ..combo.config.clone()
            };
            eprintln!(
                "\npre-training {}/{}{}{}: {}",
                i + 1,
                combos.len(),
                if combo.label.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", combo.label)
                },
                match seed {
                    Some(s) => format!(", seed {s} ({} of {})", r + 1, replicates.len()),
                    None => String::new(),
                },
                out.display()
            );
            let outcome = train_resumable(
                RunSpec {
                    out: out.clone(),
                    pool_path: train_pool_path.clone(),
                    pool: pool.clone(),
                    config,
                    resume: false,
                    force: false,
                    verbose: true,
                    device: candle_core::Device::Cpu,
                    dist: None,
                },
                stop.clone(),
            )?;
            if outcome.interrupted {
                eprintln!("stopped; rerun the same `mtpath loto` command to continue");
                std::process::exit(130);
            }
            let best = outcome.best.unwrap_or(outcome.last);
            weights.push(best.join(TRUNK_FILE).display().to_string());
        }
        models.push(Model::Trunk {
            label: if combos.len() == 1 {
                "multi-task".into()
            } else {
                format!("multi-task [{}]", combo.label)
            },
            weights,
        });
    }
    let n_combos = models.len();
    models.push(Model::Trunk {
        label: "random init".into(),
        weights: vec!["random".into()],
    });
    if let Some(w) = &args.imagenet {
        models.push(Model::Trunk {
            label: "ImageNet".into(),
            weights: vec![w.display().to_string()],
        });
    }
    if args.single_task_epochs > 0 {
        models.push(Model::SingleTask {
            label: "single-task".into(),
            init: if base.init == "imagenet" || Path::new(&base.init).is_file() {
                base.init.clone()
            } else {
                "none".into()
            },
            epochs: args.single_task_epochs,
            lr: args.single_task_lr,
        });
    }
    let spec = CompareSpec {
        arch: base.arch,
        size: base.size,
        transform: args.eval_transform,
        score_on: ScoreOn::Validation,
        tasks: held_out,
        protocols: args.protocols.clone(),
        seeds: args.seeds,
        batch: base.batch,
        out: args.out.join("held-out-val"),
    };
    // Selection on the held-out tasks' validation splits (probes fitted on train), never on
    // test; the single-task baseline, which is not a candidate, is left out of it.
    let candidates: Vec<Model> = models
        .iter()
        .filter(|m| matches!(m, Model::Trunk { .. }))
        .cloned()
        .collect();
    let v = compare(&spec, &candidates)?;
    let c = compare(
        &CompareSpec {
            score_on: ScoreOn::Test,
            out: args.out.join("held-out"),
            ..spec
        },
        &models,
    )?;
    let ranked = ranking(&v);
    let mut md = format!(
        "# Leave-one-task-out: {} held out of {}\n\nRanking by average rank of the mean balanced \
         accuracy on the held-out tasks' validation splits (probes fitted on their training \
         splits) over every held-out task and probe (1 = best); pre-trained combinations and \
         the random-init (and --imagenet) trunks ranked together. The tables below are on the \
         test splits (probes fitted on train + val), for reporting only.\n\n| rank | model | \
         average rank (validation) |\n|---|---|---|\n",
        args.hold_out.join(", "),
        args.pool.display()
    );
    for (i, (m, r)) in ranked.iter().enumerate() {
        md.push_str(&format!("| {} | {m} | {r:.2} |\n", i + 1));
    }
    md.push('\n');
    md.push_str(&crate::evaluate::compare::markdown(&c));
    mtpath_shared::fsutil::write_atomic(&args.out.join("loto.md"), md.as_bytes())?;
    let combos_json: Vec<serde_json::Value> = combos
        .iter()
        .enumerate()
        .map(|(i, k)| {
            serde_json::json!({
                "runs": replicates.iter().map(|r| run_dir(i, *r)).collect::<Vec<_>>(),
                "label": c.models[i],
                "varied": k.label,
                "config": k.config,
            })
        })
        .collect();
    let json = serde_json::json!({
        "pool": args.pool,
        "held_out": args.hold_out,
        "design": format!("{:?}", args.design),
        "pretrain_seeds": args.pretrain_seeds,
        "seeds": args.seeds,
        "protocols": args.protocols.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "combinations": combos_json,
        "ranking": ranked.iter().map(|(m, r)| serde_json::json!({"model": m, "average_rank": r})).collect::<Vec<_>>(),
        "comparison": "held-out/comparison.json",
        "selection": "held-out-val/comparison.json",
        "mtpath_version": env!("CARGO_PKG_VERSION"),
    });
    mtpath_shared::fsutil::write_atomic(
        &args.out.join("loto.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!("\nranking (average rank on the held-out validation splits; test balanced accuracy):");
    for (i, (m, r)) in ranked.iter().enumerate() {
        let best_cells: Vec<String> = c
            .tasks
            .iter()
            .map(|t| {
                format!(
                    "{t} {}",
                    fmt_metric(
                        c.cell(m, &args.protocols[0].to_string(), t),
                        "balanced_accuracy"
                    )
                )
            })
            .collect();
        println!(
            "  {:>2}. {:<40} {r:>5.2}   {} ({})",
            i + 1,
            m,
            best_cells.join(", "),
            args.protocols[0]
        );
    }
    if let Some((best, _)) = ranked
        .iter()
        .find(|(m, _)| c.models[..n_combos].contains(m))
    {
        println!("best pre-training combination: {best}");
    }
    println!(
        "report: {} · plots: {}",
        args.out.join("loto.md").display(),
        args.out.join("held-out").join("plots").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_numbers_strings_and_reject_nonsense() {
        let a = parse_axis("lr=0.01, 0.02").unwrap();
        assert_eq!(a.key, "lr");
        assert_eq!(
            a.values,
            vec![toml::Value::Float(0.01), toml::Value::Float(0.02)]
        );
        let s = parse_axis("sampler=uniform,temperature:2").unwrap();
        assert_eq!(s.values[1], toml::Value::String("temperature:2".into()));
        assert_eq!(
            parse_axis("iters=200").unwrap().values,
            vec![toml::Value::Integer(200)]
        );
        assert!(parse_axis("lr").is_err());
        assert!(parse_axis("size=112,224").is_err());
    }

    #[test]
    fn combinations_are_the_cartesian_product_with_labels() {
        let base = TrainConfig::default();
        let axes = vec![
            parse_axis("lr=0.01,0.02").unwrap(),
            parse_axis("iters=7").unwrap(),
            parse_axis("head_lr_scale=1.0,10.0").unwrap(),
        ];
        let c = combinations(&base, &axes).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c[1].label, "lr=0.01 head_lr_scale=10.0");
        assert_eq!(c[1].config.lr, 0.01);
        assert_eq!(c[1].config.head_lr_scale, 10.0);
        assert!(c.iter().all(|k| k.config.iters == 7));
        // A key that is not a setting names itself.
        let e = combinations(&base, &[parse_axis("learning_rate=0.1").unwrap()]).unwrap_err();
        assert!(format!("{e:#}").contains("learning_rate"), "{e:#}");
        // A value of the wrong type too.
        assert!(combinations(&base, &[parse_axis("lr=fast,slow").unwrap()]).is_err());
    }

    #[test]
    fn an_iters_axis_stretches_a_cosine_schedule_that_spans_the_base_run() {
        use mtpath_shared::optim::ScheduleKind;
        let base = TrainConfig {
            iters: 1500,
            lr_warmup_iters: 100,
            schedule: ScheduleKind::Cosine {
                total_iters: 1400,
                min_lr: 0.0,
            },
            ..TrainConfig::default()
        };
        let totals = |c: &[Combination]| -> Vec<usize> {
            c.iter()
                .map(|k| match k.config.schedule {
                    ScheduleKind::Cosine { total_iters, .. } => total_iters,
                    _ => panic!("not cosine"),
                })
                .collect()
        };
        let c = combinations(&base, &[parse_axis("iters=750,1500,3000").unwrap()]).unwrap();
        assert_eq!(totals(&c), vec![650, 1400, 2900]);
        // A warm-up that varies with the run keeps the schedule ending with it.
        let c = combinations(
            &base,
            &[
                parse_axis("iters=3000").unwrap(),
                parse_axis("lr_warmup_iters=200").unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(totals(&c), vec![2800]);
        // A schedule that was not tied to the run's length, or one set on the grid, stays.
        let free = TrainConfig {
            schedule: ScheduleKind::Cosine {
                total_iters: 500,
                min_lr: 0.0,
            },
            ..base.clone()
        };
        let c = combinations(&free, &[parse_axis("iters=3000").unwrap()]).unwrap();
        assert_eq!(totals(&c), vec![500]);
    }

    #[test]
    fn ranking_orders_models_by_average_rank_and_ignores_own_head() {
        use crate::evaluate::compare::Cell;
        use crate::evaluate::report::Summary;
        let cell = |m: &str, p: &str, t: &str, v: f64| Cell {
            model: m.into(),
            protocol: p.into(),
            task: t.into(),
            metrics: vec![Summary {
                task: t.into(),
                metric: "balanced_accuracy".into(),
                mean: v,
                sd: 0.0,
                values: vec![v],
            }],
        };
        let c = Comparison {
            tasks: vec!["a".into(), "b".into()],
            models: vec!["m1".into(), "m2".into(), "random init".into()],
            cells: vec![
                cell("m1", "linear", "a", 0.9),
                cell("m2", "linear", "a", 0.8),
                cell("random init", "linear", "a", 0.5),
                cell("m1", "linear", "b", 0.6),
                cell("m2", "linear", "b", 0.7),
                cell("random init", "linear", "b", 0.65),
                cell("random init", "own head", "a", 1.0),
            ],
            seeds: 1,
        };
        let r = ranking(&c);
        // m1: ranks 1, 3 → 2.0; m2: 2, 1 → 1.5; random: 3, 2 → 2.5.
        assert_eq!(
            r,
            vec![
                ("m2".into(), 1.5),
                ("m1".into(), 2.0),
                ("random init".into(), 2.5)
            ]
        );
    }

    #[test]
    fn one_at_a_time_varies_each_axis_alone_from_the_base() {
        let base = TrainConfig {
            lr: 0.01,
            ..TrainConfig::default()
        };
        let axes = [
            parse_axis("lr=0.01,0.03").unwrap(),
            parse_axis("label_smoothing=0.1").unwrap(),
        ];
        let combos = one_at_a_time(&base, &axes).unwrap();
        let labels: Vec<&str> = combos.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["base", "lr=0.03", "label_smoothing=0.1"]);
        assert_eq!(combos[1].config.lr, 0.03);
        assert_eq!(combos[1].config.label_smoothing, 0.0);
        assert_eq!(combos[2].config.lr, 0.01);
        assert_eq!(combos[2].config.label_smoothing, 0.1);
        // The full design crosses them instead.
        assert_eq!(combinations(&base, &axes).unwrap().len(), 2);
        assert!(one_at_a_time(&base, &[parse_axis("nope=1").unwrap()]).is_err());
    }
}
