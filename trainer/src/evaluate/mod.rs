//! Frozen-feature evaluation: cached features, probe runs per seed, reports.

pub mod features;
pub mod protocol;
pub mod report;
