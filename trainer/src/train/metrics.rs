//! Training metrics: `metrics.jsonl` (one JSON object per line, everything) and `metrics.csv`
//! (one row per task and measurement, for spreadsheets and plots).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// The CSV header.
pub const CSV_HEADER: &str = "iter,kind,task,loss,accuracy,balanced_accuracy,lr,images_per_s";

/// Training measurements averaged over a window of iterations ending at `iter`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainRow {
    /// Iterations completed.
    pub iter: usize,
    /// Mean batch loss over the window.
    pub loss: f64,
    /// Learning rate of the last step (trunk).
    pub lr: f64,
    /// Training images per second over the window (data waits included).
    pub images_per_s: f64,
    /// Share of the window's time spent waiting for the data loader (0: the loader keeps
    /// the compute busy).
    pub data_wait_fraction: f64,
    /// Per task: mean cross-entropy and training accuracy over the window (None: no sample).
    pub tasks: Vec<(String, Option<f64>, Option<f64>)>,
}

/// Validation scores of one task.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValScores {
    /// Task name.
    pub task: String,
    /// Images evaluated.
    pub n: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// Mean per-class recall over the classes present.
    pub balanced_accuracy: f64,
}

/// Appends rows to both files.
pub struct MetricsWriter {
    jsonl: File,
    csv: File,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// `s` as one CSV field: quoted (with doubled quotes) when it holds a comma, quote or newline.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Keep only the lines whose iteration (parsed by `iter_of`) is at most `max_iter`;
/// lines that cannot be parsed (a line cut by a crash) are dropped.
fn truncate_lines(
    path: &Path,
    keep_first: bool,
    max_iter: usize,
    iter_of: impl Fn(&str) -> Option<usize>,
) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let keep = (keep_first && i == 0) || iter_of(line).is_some_and(|it| it <= max_iter);
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    mtpath_shared::fsutil::write_atomic(path, out.as_bytes())?;
    Ok(())
}

impl MetricsWriter {
    /// Open the run's metric files for appending. With `resume_from = Some(k)`, rows after
    /// iteration `k` (written after the checkpoint the run resumes from) are removed first.
    pub fn open(run: &Path, resume_from: Option<usize>) -> Result<Self> {
        let jsonl_path = run.join("metrics.jsonl");
        let csv_path = run.join("metrics.csv");
        if let Some(k) = resume_from {
            truncate_lines(&jsonl_path, false, k, |l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()?
                    .get("iter")?
                    .as_u64()
                    .map(|v| v as usize)
            })?;
            truncate_lines(&csv_path, true, k, |l| l.split(',').next()?.parse().ok())?;
        } else {
            for p in [&jsonl_path, &csv_path] {
                if p.exists() {
                    fs::remove_file(p)
                        .with_context(|| format!("{}: cannot remove", p.display()))?;
                }
            }
        }
        let open = |p: &PathBuf| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("{}: cannot open for writing", p.display()))
        };
        let mut csv = open(&csv_path)?;
        if fs::metadata(&csv_path)?.len() == 0 {
            writeln!(csv, "{CSV_HEADER}")?;
        }
        Ok(Self {
            jsonl: open(&jsonl_path)?,
            csv,
        })
    }

    /// Record a training window.
    pub fn train(&mut self, row: &TrainRow) -> Result<()> {
        let tasks: serde_json::Map<String, serde_json::Value> = row
            .tasks
            .iter()
            .map(|(n, l, a)| (n.clone(), serde_json::json!({"loss": l, "accuracy": a})))
            .collect();
        let json = serde_json::json!({
            "iter": row.iter, "kind": "train", "loss": row.loss, "lr": row.lr,
            "images_per_s": row.images_per_s, "data_wait_fraction": row.data_wait_fraction,
            "tasks": tasks,
        });
        writeln!(self.jsonl, "{json}")?;
        writeln!(
            self.csv,
            "{},train,all,{},,,{},{}",
            row.iter, row.loss, row.lr, row.images_per_s
        )?;
        for (name, loss, acc) in &row.tasks {
            writeln!(
                self.csv,
                "{},train,{},{},{},,,",
                row.iter,
                csv_field(name),
                fmt_opt(*loss),
                fmt_opt(*acc)
            )?;
        }
        self.flush()
    }

    /// Record a validation pass; `mean_balanced_accuracy` is what picks the best checkpoint.
    pub fn validation(&mut self, iter: usize, scores: &[ValScores]) -> Result<()> {
        let mean = mean_balanced_accuracy(scores);
        let json = serde_json::json!({
            "iter": iter, "kind": "val", "mean_balanced_accuracy": mean, "tasks": scores,
        });
        writeln!(self.jsonl, "{json}")?;
        for s in scores {
            writeln!(
                self.csv,
                "{iter},val,{},{},{},{},,",
                csv_field(&s.task),
                s.loss,
                s.accuracy,
                s.balanced_accuracy
            )?;
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.jsonl.flush()?;
        self.csv.flush()?;
        Ok(())
    }
}

/// Mean over tasks of the balanced accuracy (NaN-free: tasks without images are left out).
pub fn mean_balanced_accuracy(scores: &[ValScores]) -> Option<f64> {
    let v: Vec<f64> = scores
        .iter()
        .filter(|s| s.n > 0)
        .map(|s| s.balanced_accuracy)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(iter: usize) -> TrainRow {
        TrainRow {
            iter,
            loss: 1.0 / iter as f64,
            lr: 0.1,
            images_per_s: 10.0,
            data_wait_fraction: 0.25,
            tasks: vec![("a,b".into(), Some(0.5), None)],
        }
    }

    #[test]
    fn resume_drops_rows_after_the_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        let mut w = MetricsWriter::open(run.path(), None).unwrap();
        for i in [10, 20, 30] {
            w.train(&row(i)).unwrap();
        }
        let v = ValScores {
            task: "t".into(),
            n: 4,
            loss: 0.3,
            accuracy: 0.75,
            balanced_accuracy: 0.5,
        };
        w.validation(20, std::slice::from_ref(&v)).unwrap();
        drop(w);
        // A crash left half a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(run.path().join("metrics.jsonl"))
            .unwrap();
        write!(f, "{{\"iter\": 4").unwrap();
        drop(f);

        let mut w = MetricsWriter::open(run.path(), Some(20)).unwrap();
        w.train(&row(30)).unwrap();
        let jsonl = fs::read_to_string(run.path().join("metrics.jsonl")).unwrap();
        let iters: Vec<u64> = jsonl
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["iter"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(iters, vec![10, 20, 20, 30]);
        let csv = fs::read_to_string(run.path().join("metrics.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "10,train,all,0.1,,,0.1,10");
        assert_eq!(lines[2], "10,train,\"a,b\",0.5,,,,");
        assert!(lines.contains(&"20,val,t,0.3,0.75,0.5,,"));
        assert_eq!(lines.iter().filter(|l| l.starts_with("30,")).count(), 2);
        assert_eq!(mean_balanced_accuracy(&[v]), Some(0.5));
    }
}
