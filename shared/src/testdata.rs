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
