//! Centred PCA of `n × d` feature rows by randomized subspace iteration.
//!
//! Method (Halko, Martinsson & Tropp 2011, §4.5, applied to the covariance): start from a
//! seeded Gaussian `d × l` basis `Q` (`l = k + oversampling`), repeat `Q ← orth(Xcᵀ Xc Q)`
//! `power_iterations` times, then a Rayleigh–Ritz step: the eigen-decomposition of the
//! `l × l` matrix `Qᵀ Xcᵀ Xc Q` gives the top `k` eigenvalues and (through `Q`) eigenvectors of
//! the covariance. Each application of `Xcᵀ Xc` is a single streaming pass over blocks of rows:
//! the block is centred into an `f32` buffer (the centring itself in `f64`), multiplied through
//! `gemm` in `f32`, and the per-block products are summed in `f64`. Cost: `4·n·d·l` flops per
//! pass and no `n × d` copy of the data; for `l ≥ d` the basis is the identity and the result
//! is the exact eigen-decomposition of the covariance.
//!
//! Conventions (scikit-learn's): `explained_variance = eigenvalue of Xcᵀ Xc / (n − 1)`,
//! `explained_variance_ratio` relative to the total variance `Σ‖xᵢ − μ‖² / (n − 1)`.
//! Each component's sign is fixed so that its entry of largest magnitude (the first such, on
//! ties) is positive; with the seeded start this makes results reproducible.

use super::check_input;
use super::linalg::{orthonormalize_rows, sym_eig};
use crate::error::{Error, Result};
use crate::linalg::{matmul, View};
use crate::rng::SplitMix64;

/// Rows per streaming block: `ROWS × d` `f32` values of scratch (2 MiB at `d = 2048`).
const ROWS: usize = 256;

/// Settings for [`pca`].
#[derive(Clone, Debug, PartialEq)]
pub struct PcaConfig {
    /// Number of principal components `k` (`1 ≤ k ≤ d`).
    pub components: usize,
    /// Extra basis vectors carried through the iteration (`l = min(k + oversampling, d)`);
    /// more makes the top `k` converge faster.
    pub oversampling: usize,
    /// Applications of the covariance before the final Rayleigh–Ritz step. Each one is a pass
    /// over the data; the error of component `i` shrinks like `(λ_{l+1} / λ_i)^iterations`.
    pub power_iterations: usize,
    /// Seed of the random starting basis.
    pub seed: u64,
}

impl Default for PcaConfig {
    /// Two components, oversampling 10, 7 power iterations (scikit-learn's randomized-SVD
    /// default for few components), seed 0.
    fn default() -> Self {
        PcaConfig {
            components: 2,
            oversampling: 10,
            power_iterations: 7,
            seed: 0,
        }
    }
}

/// A fitted PCA: the mean, the top `k` principal axes and their variances.
#[derive(Clone, Debug)]
pub struct Pca {
    /// Number of input features `d`.
    pub n_features: usize,
    /// Column means (`d`).
    pub mean: Vec<f64>,
    /// Principal axes, unit length, as the rows of a `k × d` row-major matrix, by decreasing
    /// variance; each one's largest-magnitude entry is positive.
    pub components: Vec<f32>,
    /// Variance of the data along each axis (`k`): eigenvalues of the covariance, `/(n − 1)`.
    pub explained_variance: Vec<f64>,
    /// `explained_variance / total_variance` (`k`); 0 when the data has no variance.
    pub explained_variance_ratio: Vec<f64>,
    /// Total variance `Σᵢ ‖xᵢ − μ‖² / (n − 1)` (the trace of the covariance).
    pub total_variance: f64,
}

impl Pca {
    /// Number of components `k`.
    pub fn n_components(&self) -> usize {
        self.explained_variance.len()
    }

    /// Project `n` rows of `d = n_features` features onto the axes: `(x − mean) · componentsᵀ`,
    /// an `n × k` row-major matrix.
    pub fn transform(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let d = self.n_features;
        if x.len() != n * d {
            return Err(Error::invalid(format!(
                "PCA transform: {} values is not n × d = {n} × {d}",
                x.len()
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "PCA transform: non-finite value at row {}, column {}",
                i / d,
                i % d
            )));
        }
        let k = self.n_components();
        let mut out = vec![0.0f32; n * k];
        let mut buf = vec![0.0f32; ROWS.min(n) * d];
        for r0 in (0..n).step_by(ROWS) {
            let b = ROWS.min(n - r0);
            centre_block(x, d, &self.mean, r0, b, &mut buf);
            matmul(
                b,
                k,
                d,
                &mut out[r0 * k..(r0 + b) * k],
                false,
                View::rows(&buf[..b * d], d),
                View::transposed(&self.components, d),
            );
        }
        Ok(out)
    }
}

/// A 2-D PCA map: the first two principal-component scores of every row.
#[derive(Clone, Debug)]
pub struct Pca2d {
    /// `n × 2` row-major scores on the first two axes.
    pub embedding: Vec<f32>,
    /// Share of the total variance along each of the two axes.
    pub explained_variance_ratio: [f64; 2],
    /// The fitted PCA (two components, or one when `d = 1`).
    pub pca: Pca,
}

/// Fit a centred PCA with `config.components` components to the `n × d` row-major `x`.
///
/// Errors on `n < 2`, `d = 0`, a wrong length, non-finite values, or `components` outside
/// `1..=d`.
pub fn pca(x: &[f32], n: usize, d: usize, config: &PcaConfig) -> Result<Pca> {
    check_input(x, n, d)?;
    let k = config.components;
    if k == 0 || k > d {
        return Err(Error::invalid(format!(
            "PCA: components must be in 1..={d} (d), got {k}"
        )));
    }
    let l = k.saturating_add(config.oversampling).min(d);

    let mut mean = vec![0.0f64; d];
    for row in x.chunks_exact(d) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);

    let mut rng = SplitMix64::new(config.seed);
    let exact = l == d;
    let mut qt = vec![0.0f64; l * d];
    if exact {
        for i in 0..d {
            qt[i * d + i] = 1.0;
        }
    } else {
        qt.iter_mut().for_each(|v| *v = rng.normal());
        orthonormalize_rows(&mut qt, l, d, &mut rng);
    }

    let mut pass = CovPass::new(x, n, d, &mean, l);
    let iterations = if exact { 0 } else { config.power_iterations };
    let mut sum_sq = None;
    for _ in 0..iterations {
        let s = pass.apply(&qt);
        sum_sq.get_or_insert(s);
        qt.copy_from_slice(&pass.zt);
        orthonormalize_rows(&mut qt, l, d, &mut rng);
    }
    // Rayleigh–Ritz: T = Qᵀ (Xcᵀ Xc Q).
    let s = pass.apply(&qt);
    let sum_sq = *sum_sq.get_or_insert(s);
    let mut t = vec![0.0f64; l * l];
    for a in 0..l {
        for b in 0..l {
            let qa = &qt[a * d..(a + 1) * d];
            let zb = &pass.zt[b * d..(b + 1) * d];
            t[a * l + b] = qa.iter().zip(zb).map(|(p, q)| p * q).sum();
        }
    }
    let (values, vectors) = sym_eig(&t, l);

    let denom = (n - 1) as f64;
    let total_variance = sum_sq / denom;
    let mut components = vec![0.0f32; k * d];
    let mut axis = vec![0.0f64; d];
    for a in 0..k {
        axis.fill(0.0);
        for j in 0..l {
            let u = vectors[a * l + j];
            axis.iter_mut()
                .zip(&qt[j * d..(j + 1) * d])
                .for_each(|(v, q)| *v += u * q);
        }
        let norm = axis.iter().map(|v| v * v).sum::<f64>().sqrt();
        let (mut big, mut at) = (0.0f64, 0usize);
        for (i, v) in axis.iter().enumerate() {
            if v.abs() > big {
                big = v.abs();
                at = i;
            }
        }
        let sign = if axis[at] < 0.0 { -1.0 } else { 1.0 };
        components[a * d..(a + 1) * d]
            .iter_mut()
            .zip(&axis)
            .for_each(|(c, v)| *c = (sign * v / norm) as f32);
    }
    let explained_variance: Vec<f64> = values[..k].iter().map(|v| v.max(0.0) / denom).collect();
    let explained_variance_ratio = explained_variance
        .iter()
        .map(|v| {
            if total_variance > 0.0 {
                v / total_variance
            } else {
                0.0
            }
        })
        .collect();
    Ok(Pca {
        n_features: d,
        mean,
        components,
        explained_variance,
        explained_variance_ratio,
        total_variance,
    })
}

/// The 2-D PCA map of the `n × d` row-major `x` (default [`PcaConfig`]: seed 0).
///
/// For `d = 1` the second coordinate is 0 (and its variance ratio 0). Errors as [`pca`].
pub fn pca_2d(x: &[f32], n: usize, d: usize) -> Result<Pca2d> {
    let config = PcaConfig {
        components: 2.min(d.max(1)),
        ..PcaConfig::default()
    };
    let pca = pca(x, n, d, &config)?;
    let scores = pca.transform(x, n)?;
    let embedding = if pca.n_components() == 2 {
        scores
    } else {
        scores.iter().flat_map(|&s| [s, 0.0]).collect()
    };
    let r = &pca.explained_variance_ratio;
    let explained_variance_ratio = [r[0], r.get(1).copied().unwrap_or(0.0)];
    Ok(Pca2d {
        embedding,
        explained_variance_ratio,
        pca,
    })
}

/// Write rows `r0 .. r0 + b` of `x`, centred, into `buf[..b·d]` (difference in `f64`).
fn centre_block(x: &[f32], d: usize, mean: &[f64], r0: usize, b: usize, buf: &mut [f32]) -> f64 {
    let mut sum_sq = 0.0f64;
    for (src, dst) in x[r0 * d..(r0 + b) * d]
        .chunks_exact(d)
        .zip(buf.chunks_exact_mut(d))
    {
        for ((o, &v), m) in dst.iter_mut().zip(src).zip(mean) {
            let c = v as f64 - m;
            sum_sq += c * c;
            *o = c as f32;
        }
    }
    sum_sq
}

/// Scratch for applications of the (unnormalised) covariance `Xcᵀ Xc` to an `l`-column basis.
struct CovPass<'a> {
    x: &'a [f32],
    n: usize,
    d: usize,
    mean: &'a [f64],
    l: usize,
    buf: Vec<f32>,
    q32: Vec<f32>,
    y: Vec<f32>,
    zb: Vec<f32>,
    /// The result, `(Xcᵀ Xc Q)ᵀ` as an `l × d` row-major matrix.
    zt: Vec<f64>,
}

impl<'a> CovPass<'a> {
    fn new(x: &'a [f32], n: usize, d: usize, mean: &'a [f64], l: usize) -> Self {
        let rows = ROWS.min(n);
        CovPass {
            x,
            n,
            d,
            mean,
            l,
            buf: vec![0.0; rows * d],
            q32: vec![0.0; l * d],
            y: vec![0.0; rows * l],
            zb: vec![0.0; l * d],
            zt: vec![0.0; l * d],
        }
    }

    /// `zt ← (Xcᵀ Xc Q)ᵀ` for the basis `Q` given as the rows of `qt` (`l × d`); returns
    /// `Σ ‖xᵢ − μ‖²`.
    fn apply(&mut self, qt: &[f64]) -> f64 {
        let (d, l) = (self.d, self.l);
        self.q32
            .iter_mut()
            .zip(qt)
            .for_each(|(o, &v)| *o = v as f32);
        self.zt.fill(0.0);
        let mut sum_sq = 0.0;
        for r0 in (0..self.n).step_by(ROWS) {
            let b = ROWS.min(self.n - r0);
            sum_sq += centre_block(self.x, d, self.mean, r0, b, &mut self.buf);
            let block = &self.buf[..b * d];
            // y (b×l) = Xc_b · Q
            matmul(
                b,
                l,
                d,
                &mut self.y[..b * l],
                false,
                View::rows(block, d),
                View::transposed(&self.q32, d),
            );
            // zb (l×d) = yᵀ · Xc_b
            matmul(
                l,
                d,
                b,
                &mut self.zb,
                false,
                View::transposed(&self.y[..b * l], l),
                View::rows(block, d),
            );
            self.zt
                .iter_mut()
                .zip(&self.zb)
                .for_each(|(z, &v)| *z += v as f64);
        }
        sum_sq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n × d` data with covariance ≈ `Rᵀ diag(spectrum) R` for a random rotation `R`, plus an
    /// offset so centring matters.
    fn data_with_spectrum(n: usize, d: usize, spectrum: &[f64], seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut r: Vec<f64> = (0..d * d).map(|_| rng.normal()).collect();
        orthonormalize_rows(&mut r, d, d, &mut rng);
        let offset: Vec<f64> = (0..d).map(|_| 3.0 * rng.normal()).collect();
        let mut x = vec![0.0f32; n * d];
        for i in 0..n {
            let z: Vec<f64> = (0..d)
                .map(|a| rng.normal() * spectrum.get(a).copied().unwrap_or(0.01).sqrt())
                .collect();
            for j in 0..d {
                let v: f64 = (0..d).map(|a| z[a] * r[a * d + j]).sum();
                x[i * d + j] = (v + offset[j]) as f32;
            }
        }
        x
    }

    /// Exact PCA in f64: eigen-decomposition of the sample covariance.
    fn exact(x: &[f32], n: usize, d: usize) -> (Vec<f64>, Vec<f64>, f64) {
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() / n as f64)
            .collect();
        let mut c = vec![0.0; d * d];
        for i in 0..n {
            for a in 0..d {
                let xa = x[i * d + a] as f64 - mean[a];
                for b in 0..d {
                    c[a * d + b] += xa * (x[i * d + b] as f64 - mean[b]);
                }
            }
        }
        c.iter_mut().for_each(|v| *v /= (n - 1) as f64);
        let total = (0..d).map(|a| c[a * d + a]).sum();
        let (w, v) = sym_eig(&c, d);
        (w, v, total)
    }

    fn check_against_exact(n: usize, d: usize, k: usize, spectrum: &[f64], seed: u64) {
        let x = data_with_spectrum(n, d, spectrum, seed);
        let config = PcaConfig {
            components: k,
            seed,
            ..PcaConfig::default()
        };
        let fit = pca(&x, n, d, &config).unwrap();
        let (w, v, total) = exact(&x, n, d);
        assert!((fit.total_variance - total).abs() < 1e-9 * total);
        for a in 0..k {
            let ratio = w[a] / total;
            assert!(
                (fit.explained_variance_ratio[a] - ratio).abs() < 1e-4,
                "component {a}: ratio {} vs exact {ratio}",
                fit.explained_variance_ratio[a]
            );
            assert!((fit.explained_variance[a] - w[a]).abs() < 1e-4 * w[0]);
            let comp = &fit.components[a * d..(a + 1) * d];
            let dot: f64 = (0..d).map(|j| comp[j] as f64 * v[a * d + j]).sum();
            let s = dot.signum();
            let err = (0..d)
                .map(|j| (comp[j] as f64 - s * v[a * d + j]).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4, "component {a}: max deviation {err}");
            // Sign convention: the largest-magnitude loading is positive.
            let top = comp
                .iter()
                .fold(0.0f32, |m, &c| if c.abs() > m.abs() { c } else { m });
            assert!(top > 0.0);
        }
    }

    #[test]
    fn embed_pca_matches_exact_eigendecomposition() {
        let spectrum = [100.0, 60.0, 30.0, 15.0, 8.0, 4.0, 2.0, 1.0, 0.5];
        // Randomized path, n > d.
        check_against_exact(400, 40, 5, &spectrum, 1);
        // Randomized path, n < d (rank-deficient covariance).
        check_against_exact(60, 90, 4, &spectrum, 2);
        // Exact path (k + oversampling ≥ d).
        check_against_exact(200, 12, 3, &spectrum, 3);
        check_against_exact(30, 5, 5, &spectrum, 4);
    }

    #[test]
    fn embed_pca_is_deterministic_and_transform_matches_projection() {
        let (n, d) = (150, 20);
        let x = data_with_spectrum(n, d, &[50.0, 20.0, 5.0], 9);
        let a = pca_2d(&x, n, d).unwrap();
        let b = pca_2d(&x, n, d).unwrap();
        assert_eq!(a.embedding, b.embedding);
        assert_eq!(a.pca.components, b.pca.components);
        assert_eq!(a.embedding.len(), n * 2);
        for i in 0..n {
            for c in 0..2 {
                let e: f64 = (0..d)
                    .map(|j| {
                        (x[i * d + j] as f64 - a.pca.mean[j]) * a.pca.components[c * d + j] as f64
                    })
                    .sum();
                assert!((a.embedding[i * 2 + c] as f64 - e).abs() < 1e-4 * (1.0 + e.abs()));
            }
        }
        // Scores are centred and have the explained variances.
        for c in 0..2 {
            let s: Vec<f64> = (0..n).map(|i| a.embedding[i * 2 + c] as f64).collect();
            let mean = s.iter().sum::<f64>() / n as f64;
            let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            assert!(mean.abs() < 1e-4);
            assert!((var - a.pca.explained_variance[c]).abs() < 1e-4 * var);
        }
        assert!(a.explained_variance_ratio[0] > a.explained_variance_ratio[1]);
    }

    #[test]
    fn embed_pca_edge_cases_and_errors() {
        // d = 1: second coordinate 0.
        let x = [1.0f32, 2.0, 4.0];
        let p = pca_2d(&x, 3, 1).unwrap();
        assert_eq!(p.embedding.len(), 6);
        assert!(p.embedding.iter().skip(1).step_by(2).all(|&v| v == 0.0));
        assert!((p.explained_variance_ratio[0] - 1.0).abs() < 1e-6);
        // Constant data: zero variance, no NaN.
        let p = pca_2d(&[5.0f32; 12], 4, 3).unwrap();
        assert!(p.embedding.iter().all(|v| *v == 0.0));
        assert_eq!(p.explained_variance_ratio, [0.0, 0.0]);
        // Errors.
        assert!(pca_2d(&[1.0; 3], 1, 3).is_err());
        assert!(pca_2d(&[], 3, 0).is_err());
        assert!(pca_2d(&[1.0; 5], 3, 2).is_err());
        assert!(pca_2d(&[1.0, f32::NAN, 0.0, 0.0], 2, 2).is_err());
        let cfg = PcaConfig {
            components: 4,
            ..PcaConfig::default()
        };
        assert!(pca(&[1.0; 6], 2, 3, &cfg).is_err());
        let p = pca_2d(&[1.0, 2.0, 3.0, 5.0], 2, 2).unwrap();
        assert!(p.pca.transform(&[1.0; 3], 2).is_err());
    }

    /// Timing print for the browser explorer's largest case (release builds only).
    #[test]
    #[cfg_attr(debug_assertions, ignore = "timing: run with --release")]
    fn embed_pca_timing_10000x2048() {
        let (n, d) = (10_000, 2048);
        let mut rng = SplitMix64::new(5);
        // Low-rank structure plus noise, non-negative like pooled ReLU features.
        let r = 32;
        let basis: Vec<f32> = (0..r * d).map(|_| rng.normal() as f32).collect();
        let mut x = vec![0.0f32; n * d];
        for i in 0..n {
            let z: Vec<f32> = (0..r)
                .map(|a| rng.normal() as f32 / (1.0 + a as f32))
                .collect();
            for j in 0..d {
                let v: f32 = (0..r).map(|a| z[a] * basis[a * d + j]).sum();
                x[i * d + j] = (v + 0.3 * rng.normal() as f32).max(0.0);
            }
        }
        let t = std::time::Instant::now();
        let p = pca_2d(&x, n, d).unwrap();
        eprintln!(
            "pca_2d {n} x {d}: {:.3} s (ratios {:.4} {:.4})",
            t.elapsed().as_secs_f64(),
            p.explained_variance_ratio[0],
            p.explained_variance_ratio[1]
        );
        let t = std::time::Instant::now();
        let cfg = PcaConfig {
            components: 50,
            power_iterations: 4,
            ..PcaConfig::default()
        };
        let p50 = pca(&x, n, d, &cfg).unwrap();
        let _ = p50.transform(&x, n).unwrap();
        eprintln!(
            "pca 50 components (4 iterations) + transform {n} x {d}: {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
}
