//! The pool file: which task folders take part, with their weight, crop policy and split
//! fractions, plus the seed and an optional `[train]` table for the trainer.
//!
//! ```toml
//! seed = 7
//!
//! [[task]]
//! path = "data/lymphoma"        # relative to this file's folder
//! name = "lymphoma"             # default: the folder name
//! weight = 2.0                  # default 1.0, > 0
//! crop = "random-resized-crop"  # random-crop (default), random-resized-crop, resize
//! split = { train = 0.8, val = 0.1, test = 0.1 }  # default 0.7/0.15/0.15
//!
//! [train]                       # kept as is for the trainer
//! iters = 3000
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::data::CropPolicy;

/// Fractions of a task's groups that go to train, validation and test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFractions {
    pub train: f64,
    pub val: f64,
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions {
            train: 0.7,
            val: 0.15,
            test: 0.15,
        }
    }
}

impl SplitFractions {
    /// Each fraction finite and `>= 0`, `train > 0`, and the three summing to 1 (±1e-6).
    pub fn validate(&self) -> Result<()> {
        let SplitFractions { train, val, test } = *self;
        for (name, v) in [("train", train), ("val", val), ("test", test)] {
            if !v.is_finite() || v < 0.0 {
                bail!("split fraction {name} = {v} must be a number >= 0");
            }
        }
        if train <= 0.0 {
            bail!("split fraction train = {train} must be > 0 (a task needs training images)");
        }
        let sum = train + val + test;
        if (sum - 1.0).abs() > 1e-6 {
            bail!(
                "split fractions train {train} + val {val} + test {test} = {sum}; they must sum to 1"
            );
        }
        Ok(())
    }
}

fn default_weight() -> f64 {
    1.0
}

/// One `[[task]]` entry of the pool file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Task folder (with `manifest.csv`, or one subfolder per class).
    pub path: PathBuf,
    /// Task name; default: the folder name.
    #[serde(default)]
    pub name: Option<String>,
    /// Relative sampling weight of the task, > 0 (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
    #[serde(default)]
    pub crop: CropPolicy,
    #[serde(default)]
    pub split: SplitFractions,
}

impl TaskConfig {
    /// A task with defaults.
    pub fn new(path: PathBuf) -> Self {
        TaskConfig {
            path,
            name: None,
            weight: default_weight(),
            crop: CropPolicy::default(),
            split: SplitFractions::default(),
        }
    }

    /// The configured name, else the folder's name (after resolving `.`/`..`, if possible).
    pub fn task_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let from = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        from(&self.path)
            .filter(|n| n != "..")
            .or_else(|| self.path.canonicalize().ok().as_deref().and_then(from))
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// A parsed pool file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Seed of the splits (and of training, for the trainer); default 0.
    #[serde(default)]
    pub seed: u64,
    #[serde(rename = "task")]
    pub tasks: Vec<TaskConfig>,
    /// The `[train]` table, kept verbatim for the trainer.
    #[serde(default)]
    pub train: Option<toml::Table>,
}

impl PoolConfig {
    /// Parse a pool TOML file; relative task paths are resolved against the pool file's
    /// directory. Unknown keys are an error (deny_unknown_fields) naming the key and file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "{}: cannot read the pool file (check the path)",
                path.display()
            )
        })?;
        Self::from_toml(&text, path)
    }

    /// Parse pool TOML read from `path` (which names it in errors and anchors relative task
    /// paths), as [`PoolConfig::from_file`] does.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let mut config: PoolConfig = toml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let hint = if msg.contains("unknown field") {
                "remove or correct the key; a pool file has `seed`, `[[task]]` entries \
                 (path, name, weight, crop, split) and an optional `[train]` table"
            } else if msg.contains("missing field `task`") {
                "add at least one [[task]] entry with a `path`"
            } else {
                "fix the TOML; see `mtpath pool check --help` for the format"
            };
            anyhow!("{}: {}\n{hint}", path.display(), msg.trim_end())
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for t in &mut config.tasks {
            if t.path.is_relative() {
                t.path = base.join(&t.path);
            }
        }
        config
            .validate()
            .with_context(|| format!("{}: invalid pool", path.display()))?;
        Ok(config)
    }

    /// A pool of the given task folders with defaults (the demo uses this).
    pub fn from_task_dirs(dirs: &[PathBuf], seed: u64) -> Self {
        PoolConfig {
            seed,
            tasks: dirs.iter().cloned().map(TaskConfig::new).collect(),
            train: None,
        }
    }

    /// At least one task; weights > 0; split fractions valid; task names and folders distinct.
    pub fn validate(&self) -> Result<()> {
        if self.tasks.is_empty() {
            bail!("the pool has no tasks; add [[task]] entries with a `path`");
        }
        let mut names: BTreeMap<String, &Path> = BTreeMap::new();
        let mut folders: BTreeMap<PathBuf, String> = BTreeMap::new();
        for t in &self.tasks {
            let name = t.task_name();
            if name.trim().is_empty() {
                bail!(
                    "task {}: empty name; set `name` to a non-empty string",
                    t.path.display()
                );
            }
            if !t.weight.is_finite() || t.weight <= 0.0 {
                bail!("task `{name}`: weight = {} must be a number > 0", t.weight);
            }
            t.split
                .validate()
                .with_context(|| format!("task `{name}`: fix its `split`"))?;
            // The same folder twice (by another spelling or through a link) would be one
            // task's images under two heads, and in both train and test across them.
            if let Ok(folder) = t.path.canonicalize() {
                if let Some(other) = folders.insert(folder.clone(), name.clone()) {
                    bail!(
                        "tasks `{other}` and `{name}` are the same folder ({}); remove one of them",
                        folder.display()
                    );
                }
            }
            if let Some(other) = names.insert(name.clone(), &t.path) {
                bail!(
                    "two tasks are named `{name}` ({} and {}); give one of them a distinct `name`",
                    other.display(),
                    t.path.display()
                );
            }
        }
        Ok(())
    }
}

/// The task folders under `data`, sorted: subfolders with a manifest.csv or with class
/// subfolders (the demo's and `bench --mode pipeline`'s reading of a data folder).
pub fn task_dirs(data: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data)
        .with_context(|| format!("{}: cannot list", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| {
            p.join(super::task::MANIFEST).is_file()
                || std::fs::read_dir(p)
                    .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().is_dir()))
                    .unwrap_or(false)
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}
