//! The run folder's life: one process at a time in it (a lock held for the life of the
//! process), and what a new run does with what an earlier one left there.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::checkpoint;

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// What a training run writes in its folder: all that `--force` (or a restart of a run that
/// never reached its first checkpoint) removes. Anything else in the folder is left alone.
pub const RUN_FILES: &[&str] = &[
    "run.json",
    "splits.csv",
    ".splits.check.csv",
    "metrics.csv",
    "metrics.jsonl",
    "last",
    ".last.tmp",
    ".last.old",
    "best",
    ".best.tmp",
    ".best.old",
    "plots",
];

/// An exclusive lock on a run folder (`RUN/.lock`, `flock`), released when dropped or when the
/// process ends however it ends, so a killed run never leaves a stale lock behind.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Lock the run folder `dir` (created if missing), or say which process holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the run directory", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open the run's lock file", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                bail!(
                    "{}: another mtpath process{} is using this run (it holds {}); wait for it \
                     to finish or stop it (Ctrl-C), then try again",
                    dir.display(),
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("{}: cannot lock", path.display()));
            }
        }
        // Who holds it, for the message above; the lock itself is the flock.
        file.set_len(0)
            .and_then(|_| file.write_all(std::process::id().to_string().as_bytes()))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(Self { _file: file })
    }
}

/// Remove what a run wrote in `dir` ([`RUN_FILES`]); true when there was something.
fn remove_run_files(dir: &Path) -> Result<bool> {
    let mut removed = false;
    for name in RUN_FILES {
        let p = dir.join(name);
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        }
        .with_context(|| format!("{}: cannot remove", p.display()))?;
        removed = true;
    }
    Ok(removed)
}

/// Decide how a run starts in the folder `dir` (locked by the caller) and clear what must go.
/// Returns whether to continue the run there from its `last` checkpoint.
///
/// - `force`: whatever run is there is removed, and a new one starts.
/// - A run that stopped before its first checkpoint has nothing to continue: it is removed
///   with a warning and started again, with or without `resume`.
/// - Otherwise a new run refuses a folder holding a run, and `resume` continues it.
pub fn prepare(dir: &Path, resume: bool, force: bool) -> Result<bool> {
    let has_run = dir.join("run.json").exists();
    let has_checkpoint = checkpoint::find_checkpoint_dir(dir, "last").is_some();
    if force {
        if remove_run_files(dir)? {
            eprintln!(
                "--force: removed the run that was in {}; starting a new one",
                dir.display()
            );
        }
        return Ok(false);
    }
    if has_run && !has_checkpoint {
        eprintln!(
            "warning: {} holds a run that stopped before its first checkpoint; starting it over",
            dir.display()
        );
        remove_run_files(dir)?;
        return Ok(false);
    }
    if has_run && !resume {
        bail!(
            "{} already holds a run; continue it with --resume {}, start it over with --force, \
             or choose another --out",
            dir.display(),
            dir.display()
        );
    }
    Ok(resume)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another mtpath process"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        RunLock::acquire(dir.path()).unwrap();
    }

    fn fake_run(dir: &Path, with_checkpoint: bool) {
        fs::write(dir.join("run.json"), "{}").unwrap();
        fs::write(dir.join("metrics.csv"), "iteration\n").unwrap();
        if with_checkpoint {
            let last = dir.join("last");
            fs::create_dir_all(&last).unwrap();
            fs::write(last.join(checkpoint::STATE_FILE), "{}").unwrap();
            fs::write(last.join(checkpoint::MODEL_FILE), "x").unwrap();
        }
    }

    #[test]
    fn a_run_without_a_checkpoint_is_started_over_and_other_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        fake_run(dir.path(), false);
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        for resume in [false, true] {
            fake_run(dir.path(), false);
            assert!(!prepare(dir.path(), resume, false).unwrap());
            assert!(!dir.path().join("run.json").exists());
            assert!(!dir.path().join("metrics.csv").exists());
            assert!(dir.path().join("notes.txt").exists());
        }
    }

    #[test]
    fn a_run_with_a_checkpoint_needs_resume_or_force() {
        let dir = tempfile::tempdir().unwrap();
        fake_run(dir.path(), true);
        let err = prepare(dir.path(), false, false).unwrap_err().to_string();
        assert!(err.contains("--resume") && err.contains("--force"), "{err}");
        assert!(prepare(dir.path(), true, false).unwrap());
        assert!(dir.path().join("last").exists());
        assert!(!prepare(dir.path(), false, true).unwrap());
        assert!(!dir.path().join("last").exists() && !dir.path().join("run.json").exists());
    }
}
