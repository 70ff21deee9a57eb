//! Where tests and benchmarks find the shared data and fixtures.
use std::path::PathBuf;

fn workspace_sibling(dir: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")).join(dir)
}

/// The real tasks: `MTPATH_DATA` if set, else `../shared/data` beside the repository.
pub fn data_dir() -> PathBuf {
    std::env::var_os("MTPATH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_sibling("data"))
}

/// The PyTorch reference fixtures: `MTPATH_FIXTURES` if set, else `../shared/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("MTPATH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_sibling("fixtures"))
}

/// Threads standing in for the processes of a data-parallel run, for tests: `sum` adds the
/// buffers of all `ranks` threads (each calls it in the same order) and counts the calls.
pub struct ThreadSum {
    acc: std::sync::Mutex<Vec<f64>>,
    barrier: std::sync::Barrier,
    calls: std::sync::atomic::AtomicUsize,
}

impl ThreadSum {
    /// A sum over `ranks` threads.
    pub fn new(ranks: usize) -> Self {
        Self {
            acc: std::sync::Mutex::new(Vec::new()),
            barrier: std::sync::Barrier::new(ranks),
            calls: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Replace `values` by their sum over the threads.
    pub fn sum(&self, values: &mut [f64]) {
        {
            let mut acc = self.acc.lock().unwrap();
            acc.resize(values.len(), 0.0);
            acc.iter_mut().zip(values.iter()).for_each(|(a, v)| *a += v);
        }
        self.barrier.wait();
        values.copy_from_slice(&self.acc.lock().unwrap());
        if self.barrier.wait().is_leader() {
            self.acc.lock().unwrap().clear();
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.barrier.wait();
    }

    /// Wait until every thread gets here.
    pub fn barrier(&self) {
        self.barrier.wait();
    }

    /// Completed sums.
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl crate::layers::BatchStatsSync for ThreadSum {
    fn sum(&self, values: &mut [f64]) -> Result<(), String> {
        ThreadSum::sum(self, values);
        Ok(())
    }
}
