//! The task pool: the classification tasks a multi-task run trains on, read from a pool file
//! (see [`config`]), checked image by image ([`task`]), and split into group-disjoint,
//! label-stratified train/val/test sets ([`split`]). [`check`] renders the summary that
//! `mtpath pool check` prints.

// The pool is the trainer's and the demo's interface; the CLI uses only part of it so far.

pub mod check;
pub mod config;
pub mod split;
pub mod task;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[allow(unused_imports)] // part of the interface (the trainer uses them)
pub use config::{task_dirs, CropPolicy, PoolConfig, SplitFractions, TaskConfig};

/// One labelled image of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The file: the task folder joined with `rel`.
    pub path: PathBuf,
    /// The path as in the manifest (image folders: relative to the task folder, `/`-separated).
    pub rel: String,
    /// Index into [`Task::classes`].
    pub label: u32,
    /// The group the split keeps together; a manifest's empty group becomes the (normalised)
    /// path, so every sample has one. Image folders: the file itself.
    pub group: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// A task loaded, checked and split.
#[derive(Debug, Clone)]
pub struct Task {
    /// The configured name, else the folder name.
    pub name: String,
    pub root: PathBuf,
    /// Sorted class names; [`Sample::label`] indexes them.
    pub classes: Vec<String>,
    pub weight: f64,
    pub crop: CropPolicy,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
    /// Smallest and largest width and height (each taken separately): `((min_w, min_h),
    /// (max_w, max_h))`, when images were checked.
    pub image_sizes: Option<((u32, u32), (u32, u32))>,
}

impl Task {
    pub fn split(&self, s: Split) -> &[Sample] {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// All samples with their split, train then val then test.
    pub fn samples(&self) -> impl Iterator<Item = (Split, &Sample)> {
        [Split::Train, Split::Val, Split::Test]
            .into_iter()
            .flat_map(move |s| self.split(s).iter().map(move |x| (s, x)))
    }

    pub fn len(&self) -> usize {
        self.train.len() + self.val.len() + self.test.len()
    }
}

/// An image left out of the pool, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// How much of each image is read when a pool is loaded. Every mode checks that the file
/// exists and is not empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageCheck {
    /// Nothing more (fast; bad images surface in training).
    None,
    /// The header: format and size.
    Header,
    /// A full decode with the product's decoder: catches truncated and corrupt files.
    Decode,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Skip (and report in [`Pool::skipped`]) bad images instead of failing.
    pub skip_bad: bool,
    pub check: ImageCheck,
}

impl Default for LoadOptions {
    /// Fail on bad images; check headers.
    fn default() -> Self {
        LoadOptions {
            skip_bad: false,
            check: ImageCheck::Header,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub seed: u64,
    pub tasks: Vec<Task>,
    /// Images left out with `skip_bad`, in task order.
    pub skipped: Vec<Skipped>,
}

impl Pool {
    /// Every task's training split as the data loader's items (path, label, crop policy,
    /// weight); a task without training images is an error.
    pub fn train_items(&self) -> Result<Vec<crate::data::TaskItems>> {
        self.tasks
            .iter()
            .map(|t| {
                let items: Vec<crate::data::Item> = t
                    .split(Split::Train)
                    .iter()
                    .map(|s| crate::data::Item {
                        path: s.path.clone(),
                        label: s.label,
                    })
                    .collect();
                if items.is_empty() {
                    anyhow::bail!("task {} has no training images", t.name);
                }
                Ok(crate::data::TaskItems {
                    name: t.name.clone(),
                    items,
                    crop: t.crop,
                    weight: t.weight,
                })
            })
            .collect()
    }

    /// Read, check and split every task of `config`.
    pub fn load(config: &PoolConfig, opts: &LoadOptions) -> Result<Pool> {
        config.validate()?;
        let mut tasks = Vec::with_capacity(config.tasks.len());
        let mut skipped = Vec::new();
        for tc in &config.tasks {
            let loaded = task::load_task(tc, opts)?;
            let assignment = split::assign(
                &loaded.samples,
                loaded.classes.len(),
                &tc.split,
                config.seed,
                &loaded.name,
            )?;
            let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
            for ((sample, _), s) in loaded.samples.into_iter().zip(assignment) {
                match s {
                    Split::Train => train.push(sample),
                    Split::Val => val.push(sample),
                    Split::Test => test.push(sample),
                }
            }
            skipped.extend(loaded.skipped);
            tasks.push(Task {
                name: loaded.name,
                root: loaded.root,
                classes: loaded.classes,
                weight: tc.weight,
                crop: tc.crop,
                train,
                val,
                test,
                image_sizes: loaded.image_sizes,
            });
        }
        Ok(Pool {
            seed: config.seed,
            tasks,
            skipped,
        })
    }

    /// CSV: task,path,label,group,split — atomically written (use mtpath_shared::fsutil::write_atomic).
    ///
    /// `path` is as in the manifest, `label` the class name, `group` the effective group.
    pub fn write_splits(&self, path: &Path) -> Result<()> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let io =
            |e: csv::Error| anyhow::anyhow!("{}: cannot format the splits: {e}", path.display());
        w.write_record(["task", "path", "label", "group", "split"])
            .map_err(io)?;
        for t in &self.tasks {
            for (s, x) in t.samples() {
                w.write_record([
                    t.name.as_str(),
                    x.rel.as_str(),
                    t.classes[x.label as usize].as_str(),
                    x.group.as_str(),
                    s.as_str(),
                ])
                .map_err(io)?;
            }
        }
        let bytes = w
            .into_inner()
            .map_err(|e| anyhow::anyhow!("{}: cannot format the splits: {e}", path.display()))?;
        mtpath_shared::fsutil::write_atomic(path, &bytes).with_context(|| {
            "cannot write the splits file (check the folder exists and is writable)"
        })
    }

    /// The index of the task called `name`.
    #[cfg(test)]
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
