//! Multi-task training: settings, the loop, validation, checkpoints, metrics, model cards.

pub mod card;
pub mod checkpoint;
pub mod config;
pub mod init;
pub mod memory;
pub mod metrics;
pub mod progress;
pub mod run;
pub mod run_dir;
pub mod speed;
pub mod validate;
