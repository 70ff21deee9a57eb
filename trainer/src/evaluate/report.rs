//! Aggregating runs over seeds into `results.json` (one entry per task and metric with mean,
//! standard deviation and the raw values) and `results.md`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::protocol::RunScores;
use crate::plots::{self, BarChart, BarSeries, ConfusionPlot};

/// Mean and sample standard deviation (n − 1; 0 for a single value) of some values.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One task × metric summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Task name.
    pub task: String,
    /// Metric name.
    pub metric: String,
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds.
    pub sd: f64,
    /// The value of every seed, in seed order.
    pub values: Vec<f64>,
}

/// The metrics reported, in order.
pub const METRICS: [&str; 4] = ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"];

fn metric(r: &RunScores, m: &str) -> Option<f64> {
    match m {
        "accuracy" => Some(r.accuracy),
        "balanced_accuracy" => Some(r.balanced_accuracy),
        "macro_f1" => Some(r.macro_f1),
        "roc_auc" => r.roc_auc,
        _ => None,
    }
}

/// Summaries for every task (in first-seen order) and metric.
pub fn summarize(runs: &[RunScores]) -> Vec<Summary> {
    let mut tasks: Vec<&str> = Vec::new();
    for r in runs {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        for m in METRICS {
            let values: Vec<f64> = runs
                .iter()
                .filter(|r| r.task == t)
                .filter_map(|r| metric(r, m))
                .collect();
            if values.is_empty() {
                continue;
            }
            let (mean, sd) = mean_sd(&values);
            out.push(Summary {
                task: t.to_string(),
                metric: m.to_string(),
                mean,
                sd,
                values,
            });
        }
    }
    out
}

/// Markdown table: one row per task, `mean ± sd` per metric.
pub fn markdown(title: &str, summaries: &[Summary], runs: &[RunScores]) -> String {
    let mut s = format!("# {title}\n\n| task |");
    for m in METRICS {
        s.push_str(&format!(" {m} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(METRICS.len()));
    s.push('\n');
    let mut tasks: Vec<&str> = Vec::new();
    for x in summaries {
        if !tasks.contains(&x.task.as_str()) {
            tasks.push(&x.task);
        }
    }
    for t in tasks {
        s.push_str(&format!("| {t} |"));
        for m in METRICS {
            match summaries.iter().find(|x| x.task == t && x.metric == m) {
                Some(x) => s.push_str(&format!(" {:.3} ± {:.3} |", x.mean, x.sd)),
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s.push_str("\n## Runs\n\n| task | seed | train | test | accuracy | balanced accuracy | macro F1 | ROC AUC |\n|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {} |\n",
            r.task,
            r.seed,
            r.n_train,
            r.n_test,
            r.accuracy,
            r.balanced_accuracy,
            r.macro_f1,
            r.roc_auc.map(|a| format!("{a:.4}")).unwrap_or("–".into())
        ));
    }
    s
}

/// Human names of the metrics, for legends.
fn metric_label(m: &str) -> &str {
    match m {
        "accuracy" => "accuracy",
        "balanced_accuracy" => "balanced accuracy",
        "macro_f1" => "macro F1",
        "roc_auc" => "ROC AUC (binary)",
        other => other,
    }
}

/// Task names in first-seen order.
fn task_order(summaries: &[Summary]) -> Vec<String> {
    let mut tasks: Vec<String> = Vec::new();
    for x in summaries {
        if !tasks.contains(&x.task) {
            tasks.push(x.task.clone());
        }
    }
    tasks
}

/// The figures of an evaluation, in `out/plots/`: `metrics` (per task, every metric's mean ±
/// sd over seeds) and `confusion-TASK` (the test confusion matrices of all seeds, summed).
/// Returns the paths written (SVG and PNG of each).
pub fn write_plots(
    out: &Path,
    title: &str,
    summaries: &[Summary],
    runs: &[RunScores],
) -> Result<Vec<PathBuf>> {
    let dir = out.join("plots");
    let tasks = task_order(summaries);
    let chart = BarChart {
        title: title.to_string(),
        y_label: "score (mean ± sd over seeds)".into(),
        groups: tasks.clone(),
        series: METRICS
            .iter()
            .filter(|m| summaries.iter().any(|s| s.metric == **m))
            .map(|m| BarSeries {
                name: metric_label(m).to_string(),
                values: tasks
                    .iter()
                    .map(|t| {
                        summaries
                            .iter()
                            .find(|s| &s.task == t && s.metric == *m)
                            .map(|s| (s.mean, s.sd))
                    })
                    .collect(),
            })
            .collect(),
        y_max: Some(1.0),
    };
    let mut written = plots::save(&chart, &dir.join("metrics"))?.to_vec();
    for t in &tasks {
        let task_runs: Vec<&RunScores> = runs.iter().filter(|r| &r.task == t).collect();
        let Some(first) = task_runs.first() else {
            continue;
        };
        let n = first.confusion.len();
        let mut sum = vec![vec![0u64; n]; n];
        for r in &task_runs {
            for (row, src) in sum.iter_mut().zip(&r.confusion) {
                for (a, b) in row.iter_mut().zip(src) {
                    *a += b;
                }
            }
        }
        let classes = if first.classes.len() == n {
            first.classes.clone()
        } else {
            (0..n).map(|c| format!("class {c}")).collect()
        };
        let seeds = task_runs.len();
        let plot = ConfusionPlot::new(
            format!(
                "{t}: test confusion, {seeds} seed{} summed",
                if seeds == 1 { "" } else { "s" }
            ),
            classes,
            sum,
        )?;
        written.extend(plots::save(
            &plot,
            &dir.join(format!("confusion-{}", plots::slug(t))),
        )?);
    }
    Ok(written)
}

/// Write `results.json` and `results.md` into `out`, atomically, and the plots (see
/// [`write_plots`]; a plot that fails is a warning, not a lost evaluation).
pub fn write(out: &Path, header: serde_json::Value, runs: &[RunScores]) -> Result<Vec<Summary>> {
    let summaries = summarize(runs);
    let mut json = header;
    json["results"] = serde_json::to_value(&summaries)?;
    json["runs"] = serde_json::to_value(runs)?;
    mtpath_shared::fsutil::write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let title = format!(
        "mtpath evaluation: {} ({})",
        json["weights"].as_str().unwrap_or("?"),
        json["protocol"].as_str().unwrap_or("?")
    );
    mtpath_shared::fsutil::write_atomic(
        &out.join("results.md"),
        markdown(&title, &summaries, runs).as_bytes(),
    )?;
    if let Err(e) = write_plots(out, &title, &summaries, runs) {
        eprintln!("warning: {}: plots not written: {e:#}", out.display());
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(task: &str, seed: u64, acc: f64, auc: Option<f64>) -> RunScores {
        RunScores {
            task: task.into(),
            seed,
            n_train: 10,
            n_test: 4,
            accuracy: acc,
            balanced_accuracy: acc,
            macro_f1: acc,
            roc_auc: auc,
            c: None,
            lr: None,
            confusion: vec![vec![2, 0], vec![0, 2]],
            classes: vec!["x".into(), "y".into()],
        }
    }

    #[test]
    fn mean_and_sample_sd() {
        let (m, sd) = mean_sd(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_sd(&[0.7]), (0.7, 0.0));
    }

    #[test]
    fn summaries_per_task_and_metric_with_raw_values() {
        let runs = vec![
            run("a", 0, 0.5, Some(0.6)),
            run("b", 0, 0.9, None),
            run("a", 1, 0.7, Some(0.8)),
        ];
        let s = summarize(&runs);
        let acc_a = s
            .iter()
            .find(|x| x.task == "a" && x.metric == "accuracy")
            .unwrap();
        assert_eq!(acc_a.values, vec![0.5, 0.7]);
        assert!((acc_a.mean - 0.6).abs() < 1e-15);
        assert!(s.iter().all(|x| !(x.task == "b" && x.metric == "roc_auc")));
        let md = markdown("t", &s, &runs);
        assert!(md.contains("| a | 0.600 ± 0.141 |"), "{md}");
        assert!(md.contains("| b |") && md.contains("–"));
    }

    #[test]
    fn plots_are_one_bar_chart_and_a_summed_confusion_matrix_per_task() {
        let runs = vec![
            run("a", 0, 0.5, Some(0.6)),
            run("b", 0, 0.9, None),
            run("a", 1, 0.7, Some(0.8)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let written = write_plots(dir.path(), "t", &summarize(&runs), &runs).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "metrics.svg",
                "metrics.png",
                "confusion-a.svg",
                "confusion-a.png",
                "confusion-b.svg",
                "confusion-b.png"
            ]
        );
        // Task a: two seeds of [[2,0],[0,2]] → 4 on the diagonal.
        let svg = std::fs::read_to_string(dir.path().join("plots/confusion-a.svg")).unwrap();
        assert!(
            svg.contains(">\n4\n<") && svg.contains("2 seeds summed"),
            "{svg}"
        );
    }
}
