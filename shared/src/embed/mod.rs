//! 2-D maps of feature vectors for the browser feature explorer.
//!
//! - [`pca`](mod@pca): centred PCA by randomized subspace iteration on the covariance (one
//!   streaming pass over the data per iteration, `f32` products through `gemm`, `f64`
//!   everywhere else), deterministic given a seed, with a fixed sign convention. [`pca_2d`] is
//!   the 2-D map.
//! - [`tsne`](mod@tsne): Barnes–Hut t-SNE on sparse perplexity-calibrated affinities (exact
//!   kNN on a PCA-reduced copy of the input), designed to be stepped from the browser so
//!   intermediate embeddings can be drawn: [`Tsne::new`], [`Tsne::step`], [`Tsne::iteration`].
//!
//! Input everywhere: features as a row-major `&[f32]` of `n × d`; output: `Vec<f32>` (or
//! `&[f32]`) of `n × 2`, row-major. Everything is single-threaded pure Rust and builds for
//! `wasm32-unknown-unknown`. Results are deterministic for a given seed on a given platform
//! (the `f32` matrix products may round differently on CPUs with other SIMD kernels).

mod linalg;
pub mod pca;
mod quadtree;
pub mod tsne;

pub use pca::{pca, pca_2d, Pca, Pca2d, PcaConfig};
pub use tsne::{Metric, Tsne, TsneConfig};

use crate::error::{Error, Result};

/// Check an `n × d` row-major feature matrix: `n ≥ 2`, `d ≥ 1`, `x.len() == n·d`, all finite.
pub(crate) fn check_input(x: &[f32], n: usize, d: usize) -> Result<()> {
    if n < 2 {
        return Err(Error::invalid(format!(
            "embedding needs at least 2 points, got n = {n}"
        )));
    }
    if d == 0 {
        return Err(Error::invalid("embedding needs d ≥ 1 features, got d = 0"));
    }
    let expected = n
        .checked_mul(d)
        .ok_or_else(|| Error::invalid(format!("n × d overflows: n = {n}, d = {d}")))?;
    if x.len() != expected {
        return Err(Error::invalid(format!(
            "feature matrix has {} values, expected n × d = {n} × {d} = {expected}",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "feature matrix has a non-finite value ({}) at row {}, column {}",
            x[i],
            i / d,
            i % d
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_input_checks() {
        assert!(check_input(&[0.0; 4], 2, 2).is_ok());
        assert!(check_input(&[0.0; 2], 1, 2).is_err());
        assert!(check_input(&[], 2, 0).is_err());
        assert!(check_input(&[0.0; 5], 2, 2).is_err());
        assert!(check_input(&[0.0, f32::NAN, 0.0, 0.0], 2, 2).is_err());
        assert!(check_input(&[0.0, 0.0, f32::INFINITY, 0.0], 2, 2).is_err());
    }
}
