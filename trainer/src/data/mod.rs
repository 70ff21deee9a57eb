//! The training data pipeline: which images make each batch ([`sampler`]), how each image is
//! augmented ([`augment`]), and the multi-threaded, prefetching, deterministic batch producer
//! ([`loader`]). Batch `i` is a pure function of `(seed, i, batch size, task lists)`.
//!
//! The pipeline takes plain task descriptions ([`TaskItems`]); mapping task pools onto them is
//! left to the training loop.

// The training loop that consumes this API is integrated separately; until then only
// `mtpath bench --mode pipeline` and the tests use it.

pub mod augment;
pub mod cache;
pub mod loader;
pub mod rng;
pub mod sampler;

use std::path::PathBuf;

pub use augment::AugmentConfig;
#[allow(unused_imports)] // the training loop's entry points, integrated separately
pub use augment::{augment, eval_transform};
pub use cache::ImageCache;
#[allow(unused_imports)]
pub use loader::Batch;
pub use loader::{Loader, Shard};
#[allow(unused_imports)]
pub use sampler::Sampler;
pub use sampler::SamplerKind;

/// One training image: file path and class index within its task.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    pub label: u32,
}

/// How to bring an image larger (or smaller) than the input size to size×size (`crop` of a
/// pool file's task: `random-crop`, `random-resized-crop` or `resize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropPolicy {
    /// A random size×size window at native resolution (shorter side first resized up to
    /// `size` when smaller): large images are cropped, not squashed.
    #[default]
    RandomCrop,
    /// torchvision's `RandomResizedCrop`: a random area/aspect crop resized to size×size.
    RandomResizedCrop,
    /// Resize the shorter side to `size`, then center crop (no random crop).
    Resize,
}

/// One task's training images and how to crop them.
#[derive(Debug, Clone)]
pub struct TaskItems {
    pub name: String,
    pub items: Vec<Item>,
    pub crop: CropPolicy,
    /// Sampling weight, used by [`SamplerKind::Weighted`].
    pub weight: f64,
}
