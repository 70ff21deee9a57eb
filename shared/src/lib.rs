//! mtpath's model crate: CNN backbones with torchvision names, multi-task heads, the paper's
//! multi-task training step, optimisers, weights I/O and image preprocessing.
//!
//! Builds for the host and for `wasm32-unknown-unknown`; the browser explorer and the `mtpath`
//! trainer share every line of maths here.

pub mod backbone;
pub mod bn_adapt;
pub mod embed;
pub mod error;
pub mod eval;
pub mod export;
pub mod features_file;
pub mod fsutil;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod inference;
pub mod layers;
pub(crate) mod linalg;
pub mod multitask;
pub mod network;
pub mod optim;
pub mod parallel;
pub mod preprocess;
pub mod probe;
pub mod rng;
pub mod slide;
#[cfg(any(test, feature = "testdata"))]
#[doc(hidden)]
pub mod testdata;
pub mod varstore;
pub mod weights;

pub use backbone::{Arch, Backbone};
pub use error::{Error, Result};
pub use network::{HeadSpec, Network, NetworkSpec};
