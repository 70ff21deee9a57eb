//! `mtpath plot`: (re)draw the figures of a training run or an evaluation.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::evaluate::compare::{self, Comparison};
use crate::evaluate::protocol::RunScores;
use crate::evaluate::report::{self, Summary};
use crate::plots;

/// Draw the figures of runs and evaluations as SVG and PNG under DIR/plots/: a training run's
/// curves (from metrics.jsonl), an evaluation's per-task bars and confusion matrices (from
/// results.json), a held-out comparison's bars (from comparison.json). `train`, `eval`,
/// `loto` and `demo` draw them already; this redraws.
#[derive(Parser, Debug)]
pub struct Args {
    /// Run directories (with metrics.jsonl) or evaluation directories (with results.json).
    #[arg(required = true, num_args = 1..)]
    pub dirs: Vec<PathBuf>,
}

/// The figures of one directory; returns the files written.
pub fn plot_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    if dir.join("metrics.jsonl").is_file() {
        written.extend(plots::training_curves(dir)?);
    }
    let results = dir.join("results.json");
    if results.is_file() {
        let text = std::fs::read_to_string(&results)
            .with_context(|| format!("{}: cannot read", results.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", results.display()))?;
        let summaries: Vec<Summary> = serde_json::from_value(json["results"].clone())
            .with_context(|| {
                format!(
                    "{}: no `results` list as mtpath writes it",
                    results.display()
                )
            })?;
        let runs: Vec<RunScores> =
            serde_json::from_value(json["runs"].clone()).with_context(|| {
                format!("{}: no `runs` list as mtpath writes it", results.display())
            })?;
        let title = format!(
            "{} ({})",
            json["weights"].as_str().unwrap_or("?"),
            json["protocol"].as_str().unwrap_or("?")
        );
        written.extend(report::write_plots(dir, &title, &summaries, &runs)?);
    }
    let comparison = dir.join("comparison.json");
    if comparison.is_file() {
        let text = std::fs::read_to_string(&comparison)
            .with_context(|| format!("{}: cannot read", comparison.display()))?;
        let c: Comparison = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a comparison as mtpath writes it",
                comparison.display()
            )
        })?;
        written.extend(compare::write(&c, dir)?);
    }
    if written.is_empty() {
        bail!(
            "{}: no metrics.jsonl (a training run), results.json (an evaluation) or \
             comparison.json (a held-out comparison) here",
            dir.display()
        );
    }
    Ok(written)
}

pub fn run(args: Args) -> Result<()> {
    for dir in &args.dirs {
        for p in plot_dir(dir)? {
            println!("{}", p.display());
        }
    }
    Ok(())
}
