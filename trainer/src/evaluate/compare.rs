//! Held-out comparison: trunks (multi-task runs, ImageNet, random initialisation) and a
//! single-task baseline evaluated on held-out tasks with the same frozen-feature probes and the
//! same seeds (splits). Writes `comparison.md`, `comparison.json` and a bar chart per probe.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use mtpath_shared::preprocess::EvalTransform;
use mtpath_shared::Arch;
use serde::{Deserialize, Serialize};

use super::finetune::{finetune_seed, FinetuneSpec};
use super::protocol::{Protocol, RunScores, ScoreOn};
use super::report::{self, Summary};
use super::run::{evaluate, EvalSpec};
use crate::plots::{self, BarChart, BarSeries};
use crate::pool::ImageCheck;

/// A model to compare.
#[derive(Debug, Clone)]
pub enum Model {
    /// A trunk: a weights file, or `random` (random initialisation). Several files are
    /// replicates of one recipe (pre-training seeds): each is probed over every seed and
    /// their runs are pooled, so the row's mean and sd cover pre-training and split alike.
    Trunk {
        /// Row label.
        label: String,
        /// Weights files (or `random`); more than one = replicates.
        weights: Vec<String>,
    },
    /// Trained on the held-out task alone — each seed's own training split — from `init`
    /// (`none` or a weights file); then probed like the trunks. Its own head's test scores are
    /// reported too, as the probe `own head`.
    SingleTask {
        /// Row label.
        label: String,
        /// Initialisation.
        init: String,
        /// Epochs over the task's training split.
        epochs: usize,
        /// Learning rate.
        lr: f64,
    },
}

impl Model {
    /// The row label.
    pub fn label(&self) -> &str {
        match self {
            Model::Trunk { label, .. } | Model::SingleTask { label, .. } => label,
        }
    }
}

/// What to compare on.
#[derive(Debug, Clone)]
pub struct CompareSpec {
    /// Architecture of every model.
    pub arch: Arch,
    /// Input side in pixels.
    pub size: u32,
    /// How held-out images become input for the frozen-feature probes.
    pub transform: EvalTransform,
    /// Probes scored on test (reporting) or on validation (model selection).
    pub score_on: ScoreOn,
    /// Held-out task folders.
    pub tasks: Vec<PathBuf>,
    /// Frozen-feature probes.
    pub protocols: Vec<Protocol>,
    /// Seeds 0..N (one split each, the same for every model).
    pub seeds: u64,
    /// Images per forward pass / training step.
    pub batch: usize,
    /// Output folder.
    pub out: PathBuf,
}

/// One model × probe × task: every metric's summary over the seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// Model label.
    pub model: String,
    /// Probe (`linear`, `knn`, …, or `own head` for the single-task model's classifier).
    pub protocol: String,
    /// Task name.
    pub task: String,
    /// Metric summaries (mean, sd, every seed's value).
    pub metrics: Vec<Summary>,
}

impl Cell {
    /// The summary of one metric.
    pub fn metric(&self, name: &str) -> Option<&Summary> {
        self.metrics.iter().find(|s| s.metric == name)
    }
}

/// The result of a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// Held-out task names, in order.
    pub tasks: Vec<String>,
    /// Model labels, in order.
    pub models: Vec<String>,
    /// Every model × probe × task.
    pub cells: Vec<Cell>,
    /// Seeds.
    pub seeds: u64,
}

impl Comparison {
    /// The cell of a model, probe and task.
    pub fn cell(&self, model: &str, protocol: &str, task: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.model == model && c.protocol == protocol && c.task == task)
    }

    /// A model's `metric` averaged over the held-out tasks seed by seed, then mean ± sd over
    /// the seeds (pairs of runs that share a seed index). `None` unless every task has the
    /// cell, with the same number of runs.
    pub fn task_mean(&self, model: &str, protocol: &str, metric: &str) -> Option<(f64, f64)> {
        let per_seed = self.task_mean_values(model, protocol, metric)?;
        Some(super::report::mean_sd(&per_seed))
    }

    /// `a − b` of [`Self::task_mean`]'s per-seed values, paired by seed: mean ± sd of the
    /// difference (the sd says whether a lead is larger than the seeds' noise).
    pub fn paired_difference(
        &self,
        a: &str,
        b: &str,
        protocol: &str,
        metric: &str,
    ) -> Option<(f64, f64)> {
        let xa = self.task_mean_values(a, protocol, metric)?;
        let xb = self.task_mean_values(b, protocol, metric)?;
        if xa.len() != xb.len() {
            return None;
        }
        let d: Vec<f64> = xa.iter().zip(&xb).map(|(x, y)| x - y).collect();
        Some(super::report::mean_sd(&d))
    }

    fn task_mean_values(&self, model: &str, protocol: &str, metric: &str) -> Option<Vec<f64>> {
        let columns: Vec<&Vec<f64>> = self
            .tasks
            .iter()
            .map(|t| Some(&self.cell(model, protocol, t)?.metric(metric)?.values))
            .collect::<Option<_>>()?;
        let n = columns.first()?.len();
        if n == 0 || columns.iter().any(|c| c.len() != n) {
            return None;
        }
        Some(
            (0..n)
                .map(|i| columns.iter().map(|c| c[i]).sum::<f64>() / columns.len() as f64)
                .collect(),
        )
    }

    /// The probes present, in first-seen order.
    pub fn protocols(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.cells {
            if !out.contains(&c.protocol) {
                out.push(c.protocol.clone());
            }
        }
        out
    }
}

fn cells_from(model: &str, protocol: &str, summaries: Vec<Summary>) -> Vec<Cell> {
    let mut tasks: Vec<String> = Vec::new();
    for s in &summaries {
        if !tasks.contains(&s.task) {
            tasks.push(s.task.clone());
        }
    }
    tasks
        .into_iter()
        .map(|t| Cell {
            model: model.to_string(),
            protocol: protocol.to_string(),
            task: t.clone(),
            metrics: summaries.iter().filter(|s| s.task == t).cloned().collect(),
        })
        .collect()
}

fn task_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "task".into())
}

/// Evaluate every model on every held-out task with every probe, over the same seeds, and
/// write the comparison's table, JSON and plots into `spec.out`.
pub fn compare(spec: &CompareSpec, models: &[Model]) -> Result<Comparison> {
    if spec.seeds == 0 || spec.tasks.is_empty() || models.is_empty() {
        bail!("a comparison needs at least one seed, one task and one model");
    }
    let seeds: Vec<u64> = (0..spec.seeds).collect();
    let mut cells = Vec::new();
    for model in models {
        let slug = plots::slug(model.label());
        match model {
            Model::Trunk { weights, .. } => {
                if weights.is_empty() {
                    bail!("{}: no weights to compare", model.label());
                }
                for &protocol in &spec.protocols {
                    let mut runs = Vec::new();
                    for (r, w) in weights.iter().enumerate() {
                        eprintln!(
                            "\n{}{}: {protocol} probe on the held-out task(s)",
                            model.label(),
                            if weights.len() > 1 {
                                format!(" (replicate {} of {})", r + 1, weights.len())
                            } else {
                                String::new()
                            }
                        );
                        let dir = if weights.len() > 1 {
                            format!("{slug}-{protocol}-r{r}")
                        } else {
                            format!("{slug}-{protocol}")
                        };
                        let out = evaluate(&EvalSpec {
                            weights: w.clone(),
                            arch: Some(spec.arch),
                            tasks: spec.tasks.clone(),
                            protocol,
                            seeds: seeds.clone(),
                            size: Some(spec.size),
                            transform: spec.transform,
                            score_on: spec.score_on,
                            cache: Some(spec.out.join("features-cache")),
                            batch: spec.batch,
                            out: spec.out.join("eval").join(dir),
                        })?;
                        runs.extend(out.runs);
                    }
                    cells.extend(cells_from(
                        model.label(),
                        &protocol.to_string(),
                        report::summarize(&runs),
                    ));
                }
            }
            Model::SingleTask {
                init, epochs, lr, ..
            } => {
                let mut own: Vec<RunScores> = Vec::new();
                let mut probed: Vec<Vec<RunScores>> = vec![Vec::new(); spec.protocols.len()];
                for task in &spec.tasks {
                    let name = plots::slug(&task_name(task));
                    let ft = FinetuneSpec {
                        weights: init.clone(),
                        arch: spec.arch,
                        task: task.clone(),
                        lrs: vec![*lr],
                        epochs: *epochs,
                        size: spec.size,
                        batch: spec.batch,
                        runs: spec.out.join(&slug).join(&name),
                    };
                    for &seed in &seeds {
                        eprintln!(
                            "\n{}: training on {} alone (seed {seed}, {epochs} epochs)",
                            model.label(),
                            task_name(task)
                        );
                        let done = finetune_seed(&ft, seed, ImageCheck::None)?;
                        own.push(done.scores);
                        let trunk = done.checkpoint.join(crate::train::checkpoint::TRUNK_FILE);
                        for (i, &protocol) in spec.protocols.iter().enumerate() {
                            let out = evaluate(&EvalSpec {
                                weights: trunk.display().to_string(),
                                arch: Some(spec.arch),
                                tasks: vec![task.clone()],
                                protocol,
                                seeds: vec![seed],
                                size: Some(spec.size),
                                transform: spec.transform,
                                score_on: spec.score_on,
                                cache: Some(spec.out.join("features-cache")),
                                batch: spec.batch,
                                out: spec
                                    .out
                                    .join("eval")
                                    .join(format!("{slug}-{protocol}"))
                                    .join(format!("{name}-seed{seed}")),
                            })?;
                            probed[i].extend(out.runs);
                        }
                    }
                }
                for (protocol, runs) in spec.protocols.iter().zip(probed) {
                    cells.extend(cells_from(
                        model.label(),
                        &protocol.to_string(),
                        report::summarize(&runs),
                    ));
                }
                cells.extend(cells_from(
                    model.label(),
                    "own head",
                    report::summarize(&own),
                ));
            }
        }
    }
    let comparison = Comparison {
        tasks: spec.tasks.iter().map(|t| task_name(t)).collect(),
        models: models.iter().map(|m| m.label().to_string()).collect(),
        cells,
        seeds: spec.seeds,
    };
    write(&comparison, &spec.out)?;
    Ok(comparison)
}

/// `mean ± sd` of a metric, or `–`.
pub fn fmt_metric(cell: Option<&Cell>, metric: &str) -> String {
    cell.and_then(|c| c.metric(metric))
        .map(|s| format!("{:.3} ± {:.3}", s.mean, s.sd))
        .unwrap_or_else(|| "–".into())
}

/// The comparison as Markdown: per probe, a row per model, balanced accuracy and accuracy per
/// task.
pub fn markdown(c: &Comparison) -> String {
    let mut s = format!(
        "Frozen features of each model, probed on the held-out task(s); mean ± sd over {} seeds \
         (the same splits for every model). `own head`: the single-task model's own classifier.\n",
        c.seeds
    );
    for protocol in c.protocols() {
        s.push_str(&format!("\n## {protocol}\n\n| model |"));
        for t in &c.tasks {
            s.push_str(&format!(" {t}: balanced accuracy | {t}: accuracy |"));
        }
        let mean_column = c.tasks.len() > 1;
        if mean_column {
            s.push_str(" mean over tasks: balanced accuracy |");
        }
        s.push_str("\n|---|");
        s.push_str(&"---|---|".repeat(c.tasks.len()));
        if mean_column {
            s.push_str("---|");
        }
        s.push('\n');
        for m in &c.models {
            if c.cells
                .iter()
                .all(|x| !(x.model == *m && x.protocol == protocol))
            {
                continue;
            }
            s.push_str(&format!("| {m} |"));
            for t in &c.tasks {
                let cell = c.cell(m, &protocol, t);
                s.push_str(&format!(
                    " {} | {} |",
                    fmt_metric(cell, "balanced_accuracy"),
                    fmt_metric(cell, "accuracy")
                ));
            }
            if mean_column {
                let mean = c.task_mean(m, &protocol, "balanced_accuracy");
                s.push_str(&match mean {
                    Some((m, sd)) => format!(" {m:.3} ± {sd:.3} |"),
                    None => " – |".into(),
                });
            }
            s.push('\n');
        }
    }
    s
}

/// The bar chart of one probe: a group per task, a bar per model (balanced accuracy).
pub fn chart(c: &Comparison, protocol: &str) -> BarChart {
    BarChart {
        title: format!(
            "held-out task(s), {protocol}: balanced accuracy over {} seeds",
            c.seeds
        ),
        y_label: "balanced accuracy (mean ± sd)".into(),
        groups: c.tasks.clone(),
        series: c
            .models
            .iter()
            .filter(|m| {
                c.cells
                    .iter()
                    .any(|x| x.model == **m && x.protocol == protocol)
            })
            .map(|m| BarSeries {
                name: m.clone(),
                values: c
                    .tasks
                    .iter()
                    .map(|t| {
                        c.cell(m, protocol, t)
                            .and_then(|x| x.metric("balanced_accuracy"))
                            .map(|s| (s.mean, s.sd))
                    })
                    .collect(),
            })
            .collect(),
        y_max: Some(1.0),
    }
}

/// Write comparison.md, comparison.json and plots/held-out-PROBE.{svg,png}; returns the plots.
pub fn write(c: &Comparison, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    mtpath_shared::fsutil::write_atomic(
        &out.join("comparison.md"),
        format!("# Held-out comparison\n\n{}", markdown(c)).as_bytes(),
    )?;
    mtpath_shared::fsutil::write_atomic(
        &out.join("comparison.json"),
        serde_json::to_string_pretty(c)?.as_bytes(),
    )?;
    let mut written = Vec::new();
    for protocol in c.protocols() {
        let stem = out
            .join("plots")
            .join(format!("held-out-{}", plots::slug(&protocol)));
        written.extend(plots::save(&chart(c, &protocol), &stem)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(task: &str, metric: &str, values: &[f64]) -> Summary {
        let (mean, sd) = report::mean_sd(values);
        Summary {
            task: task.into(),
            metric: metric.into(),
            mean,
            sd,
            values: values.to_vec(),
        }
    }

    fn comparison() -> Comparison {
        let cell = |model: &str, protocol: &str, task: &str, v: &[f64]| Cell {
            model: model.into(),
            protocol: protocol.into(),
            task: task.into(),
            metrics: vec![
                summary(task, "balanced_accuracy", v),
                summary(task, "accuracy", v),
            ],
        };
        Comparison {
            tasks: vec!["lymphoma".into()],
            models: vec![
                "multi-task".into(),
                "random init".into(),
                "single-task".into(),
            ],
            cells: vec![
                cell("multi-task", "linear", "lymphoma", &[0.6, 0.7]),
                cell("random init", "linear", "lymphoma", &[0.4, 0.5]),
                cell("single-task", "linear", "lymphoma", &[0.5, 0.5]),
                cell("single-task", "own head", "lymphoma", &[0.55, 0.45]),
            ],
            seeds: 2,
        }
    }

    #[test]
    fn markdown_has_a_table_per_probe_with_every_model() {
        let md = markdown(&comparison());
        assert!(
            md.contains("## linear") && md.contains("## own head"),
            "{md}"
        );
        assert!(
            md.contains("| multi-task | 0.650 ± 0.071 | 0.650 ± 0.071 |"),
            "{md}"
        );
        // Only the single-task model has an `own head` row.
        let own = &md[md.find("## own head").unwrap()..];
        assert!(own.contains("| single-task |") && !own.contains("| multi-task |"));
    }

    #[test]
    fn chart_has_a_bar_per_model_of_that_probe() {
        let c = comparison();
        let ch = chart(&c, "linear");
        assert_eq!(ch.series.len(), 3);
        assert_eq!(
            ch.series[1].values,
            vec![Some((0.45, report::mean_sd(&[0.4, 0.5]).1))]
        );
        assert_eq!(chart(&c, "own head").series.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let written = write(&c, dir.path()).unwrap();
        assert_eq!(written.len(), 4);
        assert!(dir.path().join("comparison.json").is_file());
    }

    #[test]
    fn task_mean_pairs_seeds_across_tasks() {
        let mut c = comparison();
        c.tasks.push("pbc-blood".into());
        let cell = |model: &str, v: &[f64]| Cell {
            model: model.into(),
            protocol: "linear".into(),
            task: "pbc-blood".into(),
            metrics: vec![summary("pbc-blood", "balanced_accuracy", v)],
        };
        c.cells.push(cell("multi-task", &[0.8, 0.9]));
        c.cells.push(cell("random init", &[0.8, 0.7]));
        // Per seed: multi-task (0.7, 0.8), random init (0.6, 0.6).
        let (m, sd) = c
            .task_mean("multi-task", "linear", "balanced_accuracy")
            .unwrap();
        assert!((m - 0.75).abs() < 1e-12 && (sd - report::mean_sd(&[0.7, 0.8]).1).abs() < 1e-12);
        let (d, dsd) = c
            .paired_difference("multi-task", "random init", "linear", "balanced_accuracy")
            .unwrap();
        assert!((d - 0.15).abs() < 1e-12, "{d}");
        assert!((dsd - report::mean_sd(&[0.1, 0.2]).1).abs() < 1e-12);
        // A model without every task's cell has no mean.
        assert!(c
            .task_mean("single-task", "linear", "balanced_accuracy")
            .is_none());
        let md = markdown(&c);
        assert!(md.contains("mean over tasks: balanced accuracy"), "{md}");
        assert!(md.contains("| 0.750 ± 0.071 |"), "{md}");
    }
}
