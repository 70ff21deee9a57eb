//! Will a training step fit in memory? An estimate made before anything is allocated, so that
//! an impossible setting (`batch = 100000000000`) is refused with the numbers instead of
//! aborting mid-allocation and leaving a half-made run folder.

use anyhow::{bail, Result};
use mtpath_shared::Arch;

use super::config::TrainConfig;

/// Bytes a training step keeps per image and per input pixel (forward activations saved for
/// backward, and their gradients), by architecture: half of what peak-RSS measurements of
/// `mtpath bench --mode train` gave (batches 8 and 32 at 64 px, 2 threads, December 2026), so
/// that the estimate errs low and never refuses a run that fits.
fn activation_bytes_per_pixel(arch: Arch) -> f64 {
    match arch {
        Arch::ResNet18 => 200.0,
        Arch::ResNet34 => 400.0,
        Arch::ResNet50 => 1100.0,
        Arch::ResNet101 => 1800.0,
        Arch::DenseNet121 => 1500.0,
        Arch::DenseNet169 => 1800.0,
    }
}

/// Parameters of each trunk (torchvision's counts, without the classifier), in millions.
fn trunk_parameters_millions(arch: Arch) -> f64 {
    match arch {
        Arch::ResNet18 => 11.2,
        Arch::ResNet34 => 21.3,
        Arch::ResNet50 => 23.5,
        Arch::ResNet101 => 42.5,
        Arch::DenseNet121 => 7.0,
        Arch::DenseNet169 => 12.5,
    }
}

/// A low estimate of the memory a run's training step needs, in bytes, split into what lives
/// on the training device (weights, gradients, momentum, activations) and on the host (the
/// loader's batches in flight).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMemory {
    /// Weights, gradients, momentum and saved activations.
    pub device: f64,
    /// Decoded batches queued by the loader.
    pub host: f64,
}

/// The estimate for `cfg` (f64: absurd settings overflow no integer).
pub fn estimate(cfg: &TrainConfig) -> StepMemory {
    let pixels = f64::from(cfg.size) * f64::from(cfg.size);
    let batch = cfg.batch as f64;
    let weights = trunk_parameters_millions(cfg.arch) * 1e6 * 4.0 * 3.0;
    let activations = batch * pixels * activation_bytes_per_pixel(cfg.arch);
    let batches_in_flight = (cfg.prefetch + 1) as f64;
    StepMemory {
        device: weights + activations,
        host: batches_in_flight * batch * 3.0 * pixels * 4.0,
    }
}

/// Memory this process can still use, in bytes: the smaller of the system's available memory
/// and the cgroup's limit less its usage (containers, Slurm). `None` where unknown.
pub fn available() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let system = meminfo.as_deref().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb * 1024.0)
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
    };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(current)) => Some((max - current).max(0.0)),
        _ => None,
    };
    match (system, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn gib(bytes: f64) -> String {
    if bytes >= 1024f64.powi(6) {
        format!("{:.1e} GiB", bytes / 1024f64.powi(3))
    } else {
        format!("{:.1} GiB", bytes / 1024f64.powi(3))
    }
}

/// Refuse settings whose step cannot fit: on the CPU everything must fit in `available`
/// bytes; on a GPU (`on_cpu` false) the host holds only the loader's batches (the device's
/// memory is not checked here).
pub fn check(cfg: &TrainConfig, on_cpu: bool, available: Option<f64>) -> Result<()> {
    let Some(available) = available else {
        return Ok(());
    };
    let need = estimate(cfg);
    let host_need = if on_cpu {
        need.device + need.host
    } else {
        need.host
    };
    if host_need > available {
        bail!(
            "a training step of {} at {} px with batch {} needs at least {} of memory (an \
             estimate that errs low), but {} is available; lower `batch` or `size` (or \
             `prefetch`)",
            cfg.arch,
            cfg.size,
            cfg.batch,
            gib(host_need),
            gib(available)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_batches_are_refused_with_the_estimate_and_the_limit() {
        let cfg = TrainConfig {
            batch: 100_000_000_000,
            ..TrainConfig::default()
        };
        let err = check(&cfg, true, Some(24.0 * 1024f64.powi(3)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs at least") && err.contains("24.0 GiB"),
            "{err}"
        );
        assert!(err.contains("batch 100000000000"), "{err}");
        // A GPU run still holds the loader's batches on the host.
        assert!(check(&cfg, false, Some(24.0 * 1024f64.powi(3))).is_err());
    }

    #[test]
    fn what_runs_today_passes_on_a_small_machine() {
        // The demo (64 px, batch 32) and a paper-sized ResNet-50 run (224 px, batch 64) on
        // 24 GiB; a 2 GiB machine still takes the demo.
        for (arch, size, batch, gib) in [
            (Arch::ResNet18, 64, 32, 2.0),
            (Arch::ResNet50, 224, 64, 24.0),
            (Arch::DenseNet121, 224, 32, 24.0),
        ] {
            let cfg = TrainConfig {
                arch,
                size,
                batch,
                ..TrainConfig::default()
            };
            check(&cfg, true, Some(gib * 1024f64.powi(3))).unwrap();
        }
        assert!(check(&TrainConfig::default(), true, None).is_ok());
    }

    #[test]
    fn the_estimate_grows_with_batch_size_and_architecture() {
        let small = estimate(&TrainConfig::default());
        let big = estimate(&TrainConfig {
            batch: TrainConfig::default().batch * 2,
            ..TrainConfig::default()
        });
        assert!(big.device > small.device && big.host > small.host);
        let r50 = estimate(&TrainConfig {
            arch: Arch::ResNet50,
            ..TrainConfig::default()
        });
        assert!(r50.device > small.device);
    }
}
