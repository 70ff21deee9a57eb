//! mtpath's model crate: CNN backbones with torchvision names, multi-task heads, the paper's
//! multi-task training step, optimisers, weights I/O and image preprocessing.
//!
//! Builds for the host and for `wasm32-unknown-unknown`; the browser explorer and the `mtpath`
//! trainer share every line of maths here.

pub mod error;
pub mod preprocess;
pub mod testdata;

pub use error::{Error, Result};
