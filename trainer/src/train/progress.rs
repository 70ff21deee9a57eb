//! A progress line on stderr: iteration, loss, images/s and ETA. Redrawn in place on a
//! terminal; on a pipe or file, one line every few seconds.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Format seconds as `1h02m`, `3m05s` or `12s`.
pub fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Progress of a run from `start` to `total` iterations.
pub struct Progress {
    total: usize,
    start_iter: usize,
    started: Instant,
    last_draw: Instant,
    tty: bool,
    every: Duration,
}

impl Progress {
    /// A progress line for iterations `start_iter..total`.
    pub fn new(start_iter: usize, total: usize) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            total,
            start_iter,
            started: Instant::now(),
            last_draw: Instant::now() - Duration::from_secs(3600),
            tty,
            every: if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(10)
            },
        }
    }

    /// Report that `done` iterations are complete, with the recent loss and throughput.
    pub fn update(&mut self, done: usize, loss: f64, images_per_s: f64, force: bool) {
        if !force && self.last_draw.elapsed() < self.every {
            return;
        }
        self.last_draw = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        let run = done.saturating_sub(self.start_iter);
        let eta = if run > 0 {
            elapsed / run as f64 * (self.total - done) as f64
        } else {
            f64::NAN
        };
        let width = 24;
        let filled = (done * width) / self.total.max(1);
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let line = format!(
            "[{bar}] {done}/{} loss {loss:.4} | {images_per_s:.1} img/s | elapsed {} | ETA {}",
            self.total,
            format_duration(elapsed),
            format_duration(eta)
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Print a message on its own line (above the progress line on a terminal).
    pub fn message(&self, msg: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{msg}");
    }

    /// End the progress line.
    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::format_duration;

    #[test]
    fn durations() {
        assert_eq!(format_duration(5.2), "5s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(3725.0), "1h02m");
        assert_eq!(format_duration(f64::NAN), "?");
    }
}
