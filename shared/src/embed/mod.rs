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

/// SplitMix64: a tiny, fully specified generator, so that seeded results do not depend on the
/// `rand` crate's version or platform.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    pub(crate) fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller, one value per call).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = self.next_open01();
        let u2 = self.next_open01();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
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

    #[test]
    fn embed_rng_is_seeded_and_normal() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let xs: Vec<f64> = (0..20_000).map(|_| a.normal()).collect();
        let ys: Vec<f64> = (0..20_000).map(|_| b.normal()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
    }
}
