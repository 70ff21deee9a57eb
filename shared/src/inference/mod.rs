//! Inference: the network every feature extraction runs, CLI and browser alike.
//!
//! - [`FoldedNet`], the inference-only trunk with BatchNorm folded away (built
//!   from any trained network, or loaded as it is from an `mtpath export` file);
//! - [`FeatureExtractor`], weights + images → global-average-pooled features.

mod extractor;
mod folded;

pub use extractor::FeatureExtractor;
pub use folded::FoldedNet;

/// Runs `f` on a thread of rayon's pool: natively, and in the browser's threaded module
/// (`f` itself in the single-threaded one). A network's forward pass started outside the
/// pool hands each of its parallel loops (several per convolution) to the pool and waits,
/// the pool's threads woken for every one; started inside, the loops split their work
/// among threads already running and the calling thread takes its own share. Inside the
/// pool already, `f` runs where it is.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        rayon::scope(|_| f())
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        f()
    }
}
