//! Checkpoints: a directory per checkpoint (`RUN/last`, `RUN/best`), replaced atomically.
//!
//! A checkpoint directory holds
//! - `model.safetensors`: trunk (torchvision names) and task heads (`heads.N.*`), with mtpath
//!   metadata — what `mtpath features` and the evaluation read;
//! - `trunk.safetensors`: the trunk alone, loadable into torchvision unchanged;
//! - `optimizer.safetensors`: the optimiser's state (momentum buffers);
//! - `state.json`: iteration, seed and sampler (the data stream is a pure function of them),
//!   and the best validation score so far;
//! - `card.json`, `card.md`: the model card.
//!
//! The files are written into a hidden temporary directory which is then renamed over the old
//! one (the old one is first moved aside, and removed last), so an interruption at any moment
//! leaves a complete checkpoint: either the new one or the previous one.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Where a run stands, saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimiser steps completed.
    pub iteration: usize,
    /// The run's seed.
    pub seed: u64,
    /// The task sampler (its state is `(seed, iteration)`: batch `i` is a pure function of them).
    pub sampler: String,
    /// Best mean validation balanced accuracy so far, and its iteration.
    pub best: Option<(f64, usize)>,
    /// Seconds spent training so far (all sessions).
    pub elapsed_s: f64,
}

/// The file names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The trunk-only weights.
pub const TRUNK_FILE: &str = "trunk.safetensors";
/// The optimiser state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The run state.
pub const STATE_FILE: &str = "state.json";

fn sync_dir(dir: &Path) {
    // Best effort: make the renames durable where the platform allows opening directories.
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Write `files` as the checkpoint directory `run/name`, atomically replacing any previous one.
pub fn write_checkpoint_dir(run: &Path, name: &str, files: &[(&str, Vec<u8>)]) -> Result<PathBuf> {
    let tmp = run.join(format!(".{name}.tmp"));
    let old = run.join(format!(".{name}.old"));
    let dst = run.join(name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)
            .with_context(|| format!("{}: cannot remove a stale temporary", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    for (file, bytes) in files {
        let p = tmp.join(file);
        let mut f =
            fs::File::create(&p).with_context(|| format!("{}: cannot create", p.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("{}: cannot write (disk full?)", p.display()))?;
    }
    sync_dir(&tmp);
    if dst.exists() {
        if old.exists() {
            fs::remove_dir_all(&old)
                .with_context(|| format!("{}: cannot remove", old.display()))?;
        }
        fs::rename(&dst, &old).with_context(|| format!("{}: cannot move aside", dst.display()))?;
    }
    fs::rename(&tmp, &dst)
        .with_context(|| format!("{}: cannot rename into place", dst.display()))?;
    sync_dir(run);
    if old.exists() {
        fs::remove_dir_all(&old).ok();
    }
    Ok(dst)
}

/// Writes checkpoint folders ([`write_checkpoint_dir`]) on a background thread, so that
/// training goes on while a checkpoint's files are written and synced to disk (seconds for a
/// ResNet's weights and optimizer state, each time). The bytes are taken when the checkpoint
/// is submitted, so later steps cannot change what is written. One write is in flight at a
/// time: [`CheckpointWriter::submit`] first waits for the previous one and reports its error,
/// and [`CheckpointWriter::finish`] waits for the last. Each folder is still replaced
/// atomically, so a crash during a write leaves the previous checkpoint whole.
pub struct CheckpointWriter {
    run: PathBuf,
    pending: Option<std::thread::JoinHandle<Result<PathBuf>>>,
}

impl CheckpointWriter {
    /// A writer of checkpoint folders under the run directory `run`.
    pub fn new(run: &Path) -> Self {
        Self {
            run: run.to_path_buf(),
            pending: None,
        }
    }

    /// Start writing the folder `name` with `files` once the previous write has finished;
    /// returns the folder's path (complete after [`CheckpointWriter::finish`]).
    pub fn submit(&mut self, name: &str, files: Vec<(&'static str, Vec<u8>)>) -> Result<PathBuf> {
        self.finish()?;
        let run = self.run.clone();
        let folder = name.to_string();
        self.pending = Some(std::thread::spawn(move || {
            write_checkpoint_dir(&run, &folder, &files)
        }));
        Ok(self.run.join(name))
    }

    /// Wait for the write in flight, if any, and report its outcome.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(handle) = self.pending.take() {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("the checkpoint writer thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for CheckpointWriter {
    /// A run that ends on an error still completes the checkpoint in flight.
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The complete checkpoint directory `run/name`, falling back to the previous one when an
/// interruption happened between moving it aside and renaming the new one into place.
pub fn find_checkpoint_dir(run: &Path, name: &str) -> Option<PathBuf> {
    [run.join(name), run.join(format!(".{name}.old"))]
        .into_iter()
        .find(|d| d.join(STATE_FILE).is_file() && d.join(MODEL_FILE).is_file())
}

/// Read a checkpoint's run state.
pub fn read_state(dir: &Path) -> Result<RunState> {
    let p = dir.join(STATE_FILE);
    let text = fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid mtpath run state", p.display()))
}

/// Serialise optimiser state tensors.
pub fn optimizer_bytes(state: Vec<(String, Tensor)>) -> Result<Vec<u8>> {
    let tensors = state
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(tensors, None)?)
}

/// Read optimiser state tensors written by [`optimizer_bytes`].
pub fn read_optimizer(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let p = dir.join(OPTIMIZER_FILE);
    if !p.is_file() {
        bail!("{}: missing; the checkpoint is incomplete", p.display());
    }
    let file = mtpath_shared::weights::read_weights_file(&p, device)?;
    Ok(file.tensors.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_background_writer_writes_in_order_and_reports_failures() {
        let run = tempfile::tempdir().unwrap();
        let files = |v: &str| vec![(STATE_FILE, v.as_bytes().to_vec()), (MODEL_FILE, vec![7])];
        let mut w = CheckpointWriter::new(run.path());
        let last = w.submit("last", files("1")).unwrap();
        assert_eq!(last, run.path().join("last"));
        w.submit("best", files("2")).unwrap();
        w.submit("last", files("3")).unwrap();
        w.finish().unwrap();
        assert_eq!(fs::read_to_string(last.join(STATE_FILE)).unwrap(), "3");
        let best = find_checkpoint_dir(run.path(), "best").unwrap();
        assert_eq!(fs::read_to_string(best.join(STATE_FILE)).unwrap(), "2");

        // A run "directory" that is a file: the failure comes back from finish (or the next
        // submit), naming the path.
        let not_a_dir = run.path().join("file");
        fs::write(&not_a_dir, "x").unwrap();
        let mut w = CheckpointWriter::new(&not_a_dir);
        w.submit("last", files("1")).unwrap();
        let e = format!("{:#}", w.finish().unwrap_err());
        assert!(e.contains("file"), "{e}");
        // Nothing is left pending after an error.
        w.finish().unwrap();
    }

    #[test]
    fn replacing_a_checkpoint_keeps_a_complete_one_at_every_stage() {
        let run = tempfile::tempdir().unwrap();
        let files = |v: &str| {
            vec![
                (STATE_FILE, v.as_bytes().to_vec()),
                (MODEL_FILE, b"m".to_vec()),
            ]
        };
        write_checkpoint_dir(run.path(), "last", &files("1")).unwrap();
        write_checkpoint_dir(run.path(), "last", &files("2")).unwrap();
        let dir = find_checkpoint_dir(run.path(), "last").unwrap();
        assert_eq!(fs::read_to_string(dir.join(STATE_FILE)).unwrap(), "2");
        assert!(!run.path().join(".last.old").exists());
        assert!(!run.path().join(".last.tmp").exists());

        // Interrupted after moving the old one aside: the old one is found.
        fs::rename(run.path().join("last"), run.path().join(".last.old")).unwrap();
        let dir = find_checkpoint_dir(run.path(), "last").unwrap();
        assert!(dir.ends_with(".last.old"));
        // A half-written temporary is never taken, and the next write clears it.
        fs::create_dir_all(run.path().join(".last.tmp")).unwrap();
        fs::write(run.path().join(".last.tmp").join(STATE_FILE), "half").unwrap();
        assert!(find_checkpoint_dir(run.path(), "last")
            .unwrap()
            .ends_with(".last.old"));
        write_checkpoint_dir(run.path(), "last", &files("3")).unwrap();
        let dir = find_checkpoint_dir(run.path(), "last").unwrap();
        assert_eq!(fs::read_to_string(dir.join(STATE_FILE)).unwrap(), "3");
    }
}
