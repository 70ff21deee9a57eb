//! An in-repo mutation fuzzer for the parsers that read user files, run as ordinary
//! `cargo test`s on stable Rust (feature `fuzzing`; never part of the library's API).
//!
//! * [`mutate`]: a deterministic byte mutator (bit flips, interesting values, inserts,
//!   deletions, duplications, truncation, splicing, dictionary tokens) over a seed corpus;
//! * [`harness`]: runs one target for a time budget, catching panics, flagging slow inputs,
//!   oversized allocations and property violations, and saving each failing input under
//!   `target/fuzz-findings/` with its path printed;
//! * [`alloc`]: the tracking global allocator a fuzz test binary installs so that the harness
//!   sees each call's largest allocation (and an absurd one is saved before the process dies);
//! * [`targets`]: one function per parser (JPEG, images, safetensors, `.pth`, features file,
//!   probe JSON), shared with the cargo-fuzz targets in `fuzz/`.
//!
//! The seed corpus lives in `fuzz/corpus/<target>/`, inputs that once failed in
//! `fuzz/regressions/<target>/` (replayed before every run). Environment:
//! `MTPATH_FUZZ_SECS` (seconds per target, default 4), `MTPATH_FUZZ_SEED` (default 1; `random`
//! for a fresh one per run), `MTPATH_FUZZ_HANG_SECS` (default 10: an input running longer is
//! saved and the process aborted).

pub mod alloc;
pub mod harness;
pub mod mutate;
pub mod targets;

pub use alloc::TrackingAlloc;
pub use harness::{fuzz, Report, Target};
pub use mutate::Mutator;
