//! Linear probes on frozen features: L2-regularised logistic regression and linear SVM, with
//! scikit-learn's exact objectives so that a probe trained here (natively or in the browser)
//! reports the numbers a `sklearn` linear probe would.
//!
//! - [`LogisticRegression`]: minimises `0.5‖W‖² + C·Σᵢ CE(xᵢ, yᵢ)` with an unpenalised
//!   intercept, like `sklearn.linear_model.LogisticRegression(solver="lbfgs")`: a softmax over
//!   `K` weight vectors for `K > 2` classes, a single sigmoid vector for two. Solved with
//!   L-BFGS and a strong-Wolfe line search in f64, to a tight gradient tolerance, in the
//!   training rows' principal axes (`axes`: an exact change of variables in which a diagonal
//!   preconditioner fits the Hessian).
//! - [`LinearSvc`]: `sklearn.svm.LinearSVC` (liblinear's dual coordinate descent for the
//!   L2-regularised squared-hinge SVM, one-vs-rest, the intercept a penalised constant
//!   feature of value 1), ported with liblinear's shrinking and stopping rule.
//! - [`LinearModel`]: what both return: `coef` / `intercept` with sklearn's shapes and
//!   `decision_function`, `predict`, `predict_proba` (logistic only) and `objective`.
//! - [`cv`]: stratified k-fold splits and cross-validated accuracy.
//! - [`select`]: C by grouped, stratified cross-validation (CLI and browser alike).
//! - [`file`]: the probe as JSON (browser export, `mtpath predict`).
//!
//! Features are `f32` rows (`n × d`, row-major); labels are `0..n_classes`. Standardising is
//! the caller's choice, not the probe's. Pure Rust, single-threaded, builds for wasm32.

mod axes;
pub mod cv;
pub mod file;
mod input;
mod lbfgs;
mod linalg;
mod logreg;
mod model;
pub mod select;
mod svm;

#[cfg(test)]
mod fixture_tests;

pub use cv::Probe;
pub use file::{FeatureSource, ProbeFile};
pub use logreg::LogisticRegression;
pub use model::{predict_from_decision, FitReport, LinearModel, ModelKind};
pub use select::{fit_linear, grid_search_c, GridConfig, GridSearch};
pub use svm::LinearSvc;
