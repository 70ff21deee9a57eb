//! Inference: the network every feature extraction runs, CLI and browser alike.
//!
//! - [`FoldedNet`], the inference-only trunk with BatchNorm folded away (built
//!   from any trained network, or loaded as it is from an `mtpath export` file);
//! - [`FeatureExtractor`], weights + images → global-average-pooled features.

mod extractor;
mod folded;

pub use extractor::FeatureExtractor;
pub use folded::FoldedNet;
