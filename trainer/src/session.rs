//! What every long-running command sets up around its work: the compute thread count, a
//! Ctrl-C stop flag, a task pool loaded with its skipped files listed, and the closing report
//! of a training run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;

use crate::pool::{ImageCheck, LoadOptions, Pool, PoolConfig};
use crate::train::run::RunOutcome;

/// Set the compute thread count (before any parallel work starts).
pub fn set_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .ok();
    }
}

/// Ctrl-C, SIGTERM (what Slurm and Kubernetes send before killing a job) and SIGHUP set the
/// returned flag (the run saves a checkpoint and exits); a second one exits at once.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted (Ctrl-C or SIGTERM): writing a checkpoint, then exiting (Ctrl-C again \
             to quit now)"
        );
    });
    flag
}

/// Give SIGINT, SIGTERM and SIGHUP their default action (end the process) back: for a rank
/// that aborts a data-parallel run, whose launcher then stops the other ranks with SIGTERM,
/// which [`stop_flag`]'s handler would otherwise hold up until the launcher's SIGKILL.
pub fn default_termination_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: resetting a signal's disposition to SIG_DFL has no memory-safety
        // requirements; the previous handler (ctrlc's) is simply no longer called.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// Load a pool for training, printing what was skipped.
pub fn load_pool(config: &PoolConfig, skip_bad: bool) -> Result<Pool> {
    let pool = Pool::load(
        config,
        &LoadOptions {
            skip_bad,
            check: ImageCheck::Decode,
        },
    )?;
    if !pool.skipped.is_empty() {
        eprintln!("skipped {} file(s):", pool.skipped.len());
        for s in &pool.skipped {
            eprintln!("  {}: {}", s.path.display(), s.reason);
        }
    }
    Ok(pool)
}

/// Print where things are after a run.
pub fn report(out: &Path, o: &RunOutcome) {
    if o.interrupted {
        eprintln!(
            "stopped at iteration {}; checkpoint {} — continue with `mtpath train --resume {}`",
            o.iterations,
            o.last.display(),
            out.display()
        );
    } else {
        eprintln!(
            "done: {} iterations at {:.1} img/s; last checkpoint {}{}",
            o.iterations,
            o.images_per_s,
            o.last.display(),
            o.best
                .as_ref()
                .map(|b| format!(", best {}", b.display()))
                .unwrap_or_default()
        );
    }
}
