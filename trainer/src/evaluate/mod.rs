//! Evaluation: cached frozen features, probe runs per seed, fine-tuning, held-out
//! comparisons, reports.

pub mod compare;
pub mod features;
pub mod finetune;
pub mod protocol;
pub mod rank;
pub mod report;
pub mod run;
