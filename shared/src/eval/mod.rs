//! Evaluation building blocks shared by the trainer and the browser: classification metrics,
//! grouped cross-validation folds and the kNN protocol.

pub mod cv;
pub mod knn;
pub mod metrics;
