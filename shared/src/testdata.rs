//! Where tests find the shared (not checked-in) data set and the reference fixtures.
//!
//! The repository is checked out next to a `shared/` folder that holds the data and the
//! torchvision/PyTorch reference fixtures:
//!
//! ```text
//! X/main/        <- the workspace (or a worktree next to it, e.g. X/wt-foo/)
//! X/shared/data/
//! X/shared/fixtures/
//! ```
//!
//! Both locations can be overridden with environment variables, which is what CI and
//! out-of-tree checkouts do.

use std::path::PathBuf;

/// The workspace root (the folder holding the workspace `Cargo.toml`), at compile time.
fn workspace_root() -> PathBuf {
    // This crate lives at `<workspace>/shared`.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Directory holding the shared image data set (the root that fixture metadata paths such as
/// `nct-crc-samples/images/tum/...` are relative to).
///
/// Taken from the environment variable `MTPATH_DATA` when it is set and non-empty, otherwise
/// `<workspace>/../shared/data`.
pub fn data_dir() -> PathBuf {
    dir_from_env("MTPATH_DATA").unwrap_or_else(|| workspace_root().join("../shared/data"))
}

/// Directory holding the reference fixtures (`*.safetensors` made with torchvision/PyTorch).
///
/// Taken from the environment variable `MTPATH_FIXTURES` when it is set and non-empty,
/// otherwise `<workspace>/../shared/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    dir_from_env("MTPATH_FIXTURES").unwrap_or_else(|| workspace_root().join("../shared/fixtures"))
}

fn dir_from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}
