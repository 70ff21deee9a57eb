//! Barnes–Hut t-SNE (van der Maaten 2014), steppable so that the browser can draw the
//! embedding while it optimises.
//!
//! Pipeline of [`Tsne::new`]:
//! 1. With [`Metric::Cosine`], every row is scaled to unit length first (zero rows stay zero),
//!    so that the Euclidean distances below are `√(2 − 2·cos)`.
//! 2. PCA ([`super::pca()`], 4 power iterations, the config's seed) to `pca_dims` (default 50)
//!    dimensions; the first two component scores also give the initial embedding.
//! 3. Exact k-nearest neighbours, `k = ⌊3·perplexity⌋`, by **Euclidean** distance on the
//!    PCA-reduced rows (on the raw rows when `pca_dims` is `None`): a brute-force `f32` Gram
//!    product, then the candidates re-ranked with distances recomputed in `f64`.
//! 4. Per point, a Gaussian over its k neighbours' squared distances, its precision found by
//!    bisection so that the entropy is `ln(perplexity)` (to 1e-7 nats); then the symmetrised
//!    joint `P = (P_{j|i} + P_{i|j}) / 2n` as a sparse matrix.
//!
//! Optimisation, as van der Maaten's `bhtsne` and scikit-learn / openTSNE: gradient
//! `4·Σⱼ (α·pᵢⱼ − qᵢⱼ)·wᵢⱼ·(yᵢ − yⱼ)` with `wᵢⱼ = 1/(1 + ‖yᵢ − yⱼ‖²)`, the exaggeration `α`
//! 12 for the first 250 iterations (1 after), momentum 0.5 then 0.8, per-coordinate gains
//! (+0.2 when the gradient's sign flips against the update, ×0.8 otherwise, at least 0.01),
//! learning rate `max(n / α / 4, 50)` (scikit-learn's `'auto'`), the embedding re-centred
//! every iteration. The repulsive term `Σⱼ wᵢⱼ² (yᵢ − yⱼ) / Z` and the normaliser
//! `Z = Σ_{k≠l} w_kl` come from a Barnes–Hut quadtree (θ = 0.5; a cell is summarised when its
//! width is below θ times the distance to its centre of mass, as in scikit-learn and openTSNE;
//! leaves of up to 16 points are summed exactly when opened), the attractive term from the
//! sparse `P`, each pair once. Initialisation: the first two PCA scores scaled so that the first has standard
//! deviation 1e-4 (openTSNE's and scikit-learn's `'pca'` init).
//!
//! All in `f64`, single-threaded and deterministic given the seed.

use std::borrow::Cow;

use super::check_input;
use super::pca::{pca, PcaConfig};
use super::quadtree::QuadTree;
use crate::error::{Error, Result};
use crate::linalg::{matmul, View};
use crate::rng::SplitMix64;

/// The distance t-SNE's neighbourhoods are built with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Metric {
    /// Euclidean distance (on the PCA-reduced rows).
    #[default]
    Euclidean,
    /// Cosine: rows are L2-normalised before PCA, then Euclidean distance is used, which on
    /// unit vectors is `√(2 − 2·cos)` (exactly without PCA, approximately after it).
    Cosine,
}

/// Settings for [`Tsne`]; [`TsneConfig::default`] is the usual t-SNE.
#[derive(Clone, Debug, PartialEq)]
pub struct TsneConfig {
    /// Perplexity (effective number of neighbours). Clamped to `(n − 1) / 3` for small `n`.
    pub perplexity: f64,
    /// Distance between feature vectors.
    pub metric: Metric,
    /// PCA dimensions for the neighbour search; `None` searches on the raw rows (slower for
    /// large `d`). At least 2.
    pub pca_dims: Option<usize>,
    /// Barnes–Hut opening angle: a cell is summarised when `width < θ·distance`; 0 is exact
    /// (quadratic). In `[0, 1]`.
    pub theta: f64,
    /// Early exaggeration factor on `P`.
    pub early_exaggeration: f64,
    /// Iterations with early exaggeration and the initial momentum.
    pub early_exaggeration_iterations: usize,
    /// Total iterations, early exaggeration included.
    pub total_iterations: usize,
    /// Learning rate; `None` is `max(n / early_exaggeration / 4, 50)`.
    pub learning_rate: Option<f64>,
    /// Momentum during early exaggeration.
    pub initial_momentum: f64,
    /// Momentum after it.
    pub final_momentum: f64,
    /// Lower bound of the per-coordinate gains.
    pub min_gain: f64,
    /// Seed (PCA's random start; a random second coordinate when the data is 1-D).
    pub seed: u64,
}

impl Default for TsneConfig {
    fn default() -> Self {
        TsneConfig {
            perplexity: 30.0,
            metric: Metric::Euclidean,
            pca_dims: Some(50),
            theta: 0.5,
            early_exaggeration: 12.0,
            early_exaggeration_iterations: 250,
            total_iterations: 750,
            learning_rate: None,
            initial_momentum: 0.5,
            final_momentum: 0.8,
            min_gain: 0.01,
            seed: 0,
        }
    }
}

impl TsneConfig {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| Err(Error::invalid(format!("t-SNE: {what}, got {v}")));
        if !(self.perplexity.is_finite() && self.perplexity > 0.0) {
            return bad("perplexity must be positive", self.perplexity);
        }
        if !(0.0..=1.0).contains(&self.theta) {
            return bad("theta must be in [0, 1]", self.theta);
        }
        if !(self.early_exaggeration.is_finite() && self.early_exaggeration > 0.0) {
            return bad(
                "early_exaggeration must be positive",
                self.early_exaggeration,
            );
        }
        if let Some(lr) = self.learning_rate {
            if !(lr.is_finite() && lr > 0.0) {
                return bad("learning_rate must be positive", lr);
            }
        }
        for (what, m) in [
            ("initial_momentum", self.initial_momentum),
            ("final_momentum", self.final_momentum),
        ] {
            if !(0.0..1.0).contains(&m) {
                return bad(&format!("{what} must be in [0, 1)"), m);
            }
        }
        if !(self.min_gain.is_finite() && self.min_gain >= 0.0) {
            return bad("min_gain must be non-negative", self.min_gain);
        }
        if let Some(p) = self.pca_dims {
            if p < 2 {
                return bad("pca_dims must be at least 2", p as f64);
            }
        }
        Ok(())
    }
}

/// The symmetric sparse affinities in compressed rows, each unordered pair once: row `i` holds
/// the `pᵢⱼ = pⱼᵢ` with `j > i`, by increasing `j` (the stored values sum to 1/2).
#[derive(Clone, Debug)]
struct Affinities {
    row_start: Vec<usize>,
    cols: Vec<u32>,
    vals: Vec<f64>,
}

/// A t-SNE run: affinities computed by [`Tsne::new`], optimised by [`Tsne::step`].
///
/// ```no_run
/// # use mtpath_shared::embed::{Tsne, TsneConfig};
/// # fn draw(_: &[f32]) {}
/// # let (x, n, d) = (vec![0.0f32; 64], 16, 4);
/// let mut tsne = Tsne::new(&x, n, d, TsneConfig::default())?;
/// while !tsne.is_done() {
///     draw(tsne.step(25)); // n × 2, row-major
/// }
/// # Ok::<(), mtpath_shared::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Tsne {
    n: usize,
    config: TsneConfig,
    perplexity: f64,
    neighbours: usize,
    learning_rate: f64,
    p: Affinities,
    /// Σ pᵢⱼ ln pᵢⱼ, for the KL divergence.
    p_log_p: f64,
    iteration: usize,
    y: Vec<f64>,
    update: Vec<f64>,
    gains: Vec<f64>,
    grad: Vec<f64>,
    tree: QuadTree,
    out: Vec<f32>,
}

impl Tsne {
    /// Prepare t-SNE of the `n × d` row-major `x`: PCA reduction, neighbours, calibrated
    /// affinities and the PCA initialisation (the heavy part: about `2·n²·pca_dims` flops for
    /// the neighbours). Errors on `n < 2`, `d = 0`, a wrong length, non-finite values or an
    /// invalid config.
    pub fn new(x: &[f32], n: usize, d: usize, config: TsneConfig) -> Result<Tsne> {
        check_input(x, n, d)?;
        config.validate()?;
        let xs: Cow<[f32]> = match config.metric {
            Metric::Euclidean => Cow::Borrowed(x),
            Metric::Cosine => Cow::Owned(normalize_rows(x, d)),
        };
        let dims = config.pca_dims.unwrap_or(2).min(d);
        let fit = pca(
            &xs,
            n,
            d,
            &PcaConfig {
                components: dims,
                oversampling: 10,
                power_iterations: 4,
                seed: config.seed,
            },
        )?;
        let scores = fit.transform(&xs, n)?;
        let mut rng = SplitMix64::new(config.seed ^ 0x7453_4e45);
        let y = initial_embedding(&scores, n, dims, &mut rng);
        let (data, data_dims): (&[f32], usize) = match config.pca_dims {
            Some(_) => (&scores, dims),
            None => (&xs, d),
        };

        let perplexity = config.perplexity.min((n - 1) as f64 / 3.0);
        let k = ((3.0 * perplexity).floor() as usize).clamp(1, n - 1);
        let (idx, d2) = knn(data, n, data_dims, k);
        let (p_cond, _) = calibrate(&d2, k, perplexity);
        let p = symmetrize(&idx, &p_cond, n, k);
        let p_log_p = 2.0
            * p.vals
                .iter()
                .filter(|&&v| v > 0.0)
                .map(|&v| v * v.ln())
                .sum::<f64>();

        let learning_rate = config
            .learning_rate
            .unwrap_or((n as f64 / config.early_exaggeration / 4.0).max(50.0));
        let mut tsne = Tsne {
            n,
            perplexity,
            neighbours: k,
            learning_rate,
            p,
            p_log_p,
            iteration: 0,
            update: vec![0.0; 2 * n],
            gains: vec![1.0; 2 * n],
            grad: vec![0.0; 2 * n],
            tree: QuadTree::default(),
            out: vec![0.0; 2 * n],
            y,
            config,
        };
        tsne.sync_output();
        Ok(tsne)
    }

    /// Run up to `iterations` more optimisation steps (never past
    /// [`total_iterations`](Self::total_iterations)) and return the current embedding,
    /// `n × 2` row-major.
    pub fn step(&mut self, iterations: usize) -> &[f32] {
        let end = self
            .iteration
            .saturating_add(iterations)
            .min(self.config.total_iterations);
        while self.iteration < end {
            self.iterate();
        }
        self.sync_output();
        &self.out
    }

    /// Run all remaining iterations and return the final embedding.
    pub fn run(&mut self) -> &[f32] {
        self.step(usize::MAX)
    }

    /// The current embedding, `n × 2` row-major.
    pub fn embedding(&self) -> &[f32] {
        &self.out
    }

    /// Iterations done so far.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// Iterations in the whole run (`config.total_iterations`, 750 by default).
    pub fn total_iterations(&self) -> usize {
        self.config.total_iterations
    }

    /// Whether all iterations are done.
    pub fn is_done(&self) -> bool {
        self.iteration >= self.config.total_iterations
    }

    /// Number of points.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The perplexity used (the configured one, clamped to `(n − 1) / 3`).
    pub fn perplexity(&self) -> f64 {
        self.perplexity
    }

    /// Neighbours per point in the affinities (`⌊3·perplexity⌋`, at most `n − 1`).
    pub fn neighbours(&self) -> usize {
        self.neighbours
    }

    /// The learning rate used.
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate
    }

    /// The configuration.
    pub fn config(&self) -> &TsneConfig {
        &self.config
    }

    /// KL(P ‖ Q) of the current embedding against the un-exaggerated affinities, with the
    /// normaliser `Z` from a Barnes–Hut pass (θ of the config): costs about one iteration.
    pub fn kl_divergence(&self) -> f64 {
        let mut tree = QuadTree::default();
        tree.build(&self.y);
        let z: f64 = tree
            .points()
            .map(|(i, [xi, yi])| tree.repulsion(i, xi, yi, self.config.theta).1)
            .sum();
        let mut p_log_w = 0.0;
        for i in 0..self.n {
            for e in self.p.row_start[i]..self.p.row_start[i + 1] {
                let j = self.p.cols[e] as usize;
                let dx = self.y[2 * i] - self.y[2 * j];
                let dy = self.y[2 * i + 1] - self.y[2 * j + 1];
                p_log_w -= 2.0 * self.p.vals[e] * (1.0 + dx * dx + dy * dy).ln();
            }
        }
        let p_sum = 2.0 * self.p.vals.iter().sum::<f64>();
        self.p_log_p - p_log_w + p_sum * z.ln()
    }

    fn iterate(&mut self) {
        let early = self.iteration < self.config.early_exaggeration_iterations;
        let (exaggeration, momentum) = if early {
            (self.config.early_exaggeration, self.config.initial_momentum)
        } else {
            (1.0, self.config.final_momentum)
        };
        bh_gradient(
            &self.p,
            &self.y,
            self.config.theta,
            exaggeration,
            &mut self.tree,
            &mut self.grad,
        );
        let (eta, min_gain) = (self.learning_rate, self.config.min_gain);
        for c in 0..2 * self.n {
            let (g, u) = (self.grad[c], self.update[c]);
            let gain = &mut self.gains[c];
            *gain = if (g > 0.0) != (u > 0.0) {
                *gain + 0.2
            } else {
                *gain * 0.8
            };
            *gain = gain.max(min_gain);
            self.update[c] = momentum * u - eta * *gain * g;
            self.y[c] += self.update[c];
        }
        let mut mean = [0.0; 2];
        for p in self.y.chunks_exact(2) {
            mean[0] += p[0];
            mean[1] += p[1];
        }
        for p in self.y.chunks_exact_mut(2) {
            p[0] -= mean[0] / self.n as f64;
            p[1] -= mean[1] / self.n as f64;
        }
        self.iteration += 1;
    }

    fn sync_output(&mut self) {
        self.out
            .iter_mut()
            .zip(&self.y)
            .for_each(|(o, &v)| *o = v as f32);
    }
}

/// Rows scaled to unit L2 norm (zero rows unchanged).
fn normalize_rows(x: &[f32], d: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(d) {
        let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
    }
    out
}

/// The first two PCA scores, scaled so the first has standard deviation 1e-4. A missing or
/// degenerate coordinate is drawn from N(0, 1e-8).
fn initial_embedding(scores: &[f32], n: usize, dims: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let col = |c: usize| -> Vec<f64> {
        if c < dims {
            (0..n).map(|i| scores[i * dims + c] as f64).collect()
        } else {
            vec![0.0; n]
        }
    };
    let std = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / n as f64;
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64).sqrt()
    };
    let (mut a, mut b) = (col(0), col(1));
    let sa = std(&a);
    let scale = if sa > 0.0 { 1e-4 / sa } else { 0.0 };
    for v in a.iter_mut().chain(b.iter_mut()) {
        *v *= scale;
    }
    for v in [&mut a, &mut b] {
        if std(v) == 0.0 {
            v.iter_mut().for_each(|x| *x = 1e-4 * rng.normal());
        }
    }
    a.iter().zip(&b).flat_map(|(&p, &q)| [p, q]).collect()
}

/// Exact k nearest neighbours (Euclidean) of every row of the `n × dim` `data`, self excluded:
/// indices (`n × k`) and squared distances in `f64` (`n × k`), each row by increasing distance
/// (ties by index).
fn knn(data: &[f32], n: usize, dim: usize, k: usize) -> (Vec<u32>, Vec<f64>) {
    assert!(k >= 1 && k < n);
    const ROWS: usize = 128;
    let norms: Vec<f32> = data
        .chunks_exact(dim)
        .map(|r| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32)
        .collect();
    let exact = |i: usize, j: usize| -> f64 {
        let (a, b) = (&data[i * dim..(i + 1) * dim], &data[j * dim..(j + 1) * dim]);
        a.iter()
            .zip(b)
            .map(|(&p, &q)| {
                let t = p as f64 - q as f64;
                t * t
            })
            .sum()
    };
    // Candidates beyond k, re-ranked exactly, absorb the Gram product's rounding.
    let candidates = (k + k / 4 + 8).min(n - 1);
    let mut idx = vec![0u32; n * k];
    let mut d2 = vec![0.0f64; n * k];
    let mut gram = vec![0.0f32; ROWS.min(n) * n];
    let mut cand: Vec<(f32, u32)> = Vec::with_capacity(n);
    let mut top: Vec<(f64, u32)> = Vec::with_capacity(candidates);
    let by_dist = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    for r0 in (0..n).step_by(ROWS) {
        let b = ROWS.min(n - r0);
        matmul(
            b,
            n,
            dim,
            &mut gram[..b * n],
            false,
            View::rows(&data[r0 * dim..(r0 + b) * dim], dim),
            View::transposed(data, dim),
        );
        for r in 0..b {
            let i = r0 + r;
            let g = &gram[r * n..(r + 1) * n];
            cand.clear();
            cand.extend(
                (0..n)
                    .filter(|&j| j != i)
                    .map(|j| (norms[i] + norms[j] - 2.0 * g[j], j as u32)),
            );
            if candidates < cand.len() {
                cand.select_nth_unstable_by(candidates - 1, by_dist);
            }
            top.clear();
            top.extend(
                cand[..candidates]
                    .iter()
                    .map(|&(_, j)| (exact(i, j as usize), j)),
            );
            top.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (c, &(dist, j)) in top[..k].iter().enumerate() {
                idx[i * k + c] = j;
                d2[i * k + c] = dist;
            }
        }
    }
    (idx, d2)
}

/// Conditional affinities `P_{j|i} ∝ exp(−βᵢ·d²ᵢⱼ)` over each row of the `n × k` squared
/// distances, `βᵢ` found by bisection so that the row's entropy is `ln(perplexity)`.
/// Returns the `n × k` affinities (rows sum to 1) and the `βᵢ`.
fn calibrate(d2: &[f64], k: usize, perplexity: f64) -> (Vec<f64>, Vec<f64>) {
    const TOL: f64 = 1e-7;
    let target = perplexity.ln();
    let n = d2.len() / k;
    let mut p = vec![0.0; n * k];
    let mut betas = vec![0.0; n];
    for i in 0..n {
        let row = &d2[i * k..(i + 1) * k];
        let min = row.iter().copied().fold(f64::INFINITY, f64::min);
        let shifted: Vec<f64> = row.iter().map(|&v| v - min).collect();
        let mean = shifted.iter().sum::<f64>() / k as f64;
        let mut beta = if mean > 0.0 { 1.0 / mean } else { 1.0 };
        let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
        let out = &mut p[i * k..(i + 1) * k];
        for _ in 0..200 {
            // H = ln Σ e^{−βd} + β Σ p d, with d ≥ 0 and some d = 0, so the sum is ≥ 1.
            let mut sum = 0.0;
            let mut weighted = 0.0;
            for (o, &d) in out.iter_mut().zip(&shifted) {
                let e = (-beta * d).exp();
                *o = e;
                sum += e;
                weighted += e * d;
            }
            let entropy = sum.ln() + beta * weighted / sum;
            let diff = entropy - target;
            if diff.abs() < TOL {
                break;
            }
            if diff > 0.0 {
                lo = beta;
                beta = if hi.is_finite() {
                    0.5 * (lo + hi)
                } else {
                    2.0 * beta
                };
            } else {
                hi = beta;
                beta = 0.5 * (lo + hi);
            }
        }
        let sum: f64 = out.iter().sum();
        out.iter_mut().for_each(|v| *v /= sum);
        betas[i] = beta;
    }
    (p, betas)
}

/// `P = (P_{j|i} + P_{i|j}) / 2n` as [`Affinities`] (each pair once, `j > i`).
fn symmetrize(idx: &[u32], p_cond: &[f64], n: usize, k: usize) -> Affinities {
    let mut counts = vec![0usize; n + 1];
    for i in 0..n {
        for &j in &idx[i * k..(i + 1) * k] {
            counts[i.min(j as usize) + 1] += 1;
        }
    }
    for i in 0..n {
        counts[i + 1] += counts[i];
    }
    let mut fill = counts.clone();
    let mut entries = vec![(0u32, 0.0f64); counts[n]];
    let scale = 0.5 / n as f64;
    for i in 0..n {
        for c in 0..k {
            let j = idx[i * k + c] as usize;
            let (a, b) = (i.min(j), i.max(j));
            entries[fill[a]] = (b as u32, p_cond[i * k + c] * scale);
            fill[a] += 1;
        }
    }
    let mut row_start = Vec::with_capacity(n + 1);
    let mut cols = Vec::with_capacity(counts[n]);
    let mut vals = Vec::with_capacity(counts[n]);
    row_start.push(0);
    for i in 0..n {
        let row = &mut entries[counts[i]..counts[i + 1]];
        row.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for &(j, v) in row.iter() {
            if cols.len() > row_start[i] && *cols.last().unwrap() == j {
                *vals.last_mut().unwrap() += v;
            } else {
                cols.push(j);
                vals.push(v);
            }
        }
        row_start.push(cols.len());
    }
    Affinities {
        row_start,
        cols,
        vals,
    }
}

/// The t-SNE gradient with Barnes–Hut repulsion, into `grad` (`n × 2`); returns `Z`.
fn bh_gradient(
    p: &Affinities,
    y: &[f64],
    theta: f64,
    exaggeration: f64,
    tree: &mut QuadTree,
    grad: &mut [f64],
) -> f64 {
    tree.build(y);
    let mut z = 0.0;
    for (i, [xi, yi]) in tree.points() {
        let (rep, zi) = tree.repulsion(i, xi, yi, theta);
        z += zi;
        grad[2 * i] = rep[0];
        grad[2 * i + 1] = rep[1];
    }
    let scale = -4.0 / z;
    grad.iter_mut().for_each(|g| *g *= scale);
    // Attraction, each pair once: 4·α·pᵢⱼ·wᵢⱼ·(yᵢ − yⱼ) to i, its opposite to j.
    let attract = 4.0 * exaggeration;
    for i in 0..p.row_start.len() - 1 {
        let (xi, yi) = (y[2 * i], y[2 * i + 1]);
        let (mut ax, mut ay) = (0.0, 0.0);
        for e in p.row_start[i]..p.row_start[i + 1] {
            let j = p.cols[e] as usize;
            let dx = xi - y[2 * j];
            let dy = yi - y[2 * j + 1];
            let a = attract * p.vals[e] / (1.0 + dx * dx + dy * dy);
            ax += a * dx;
            ay += a * dy;
            grad[2 * j] -= a * dx;
            grad[2 * j + 1] -= a * dy;
        }
        grad[2 * i] += ax;
        grad[2 * i + 1] += ay;
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact O(n²) gradient for a sparse P.
    fn exact_gradient(p: &Affinities, y: &[f64], exaggeration: f64) -> Vec<f64> {
        let n = y.len() / 2;
        let w = |i: usize, j: usize| {
            let dx = y[2 * i] - y[2 * j];
            let dy = y[2 * i + 1] - y[2 * j + 1];
            1.0 / (1.0 + dx * dx + dy * dy)
        };
        let z: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| w(i, j))
            .sum();
        let mut dense = vec![0.0; n * n];
        for i in 0..n {
            for e in p.row_start[i]..p.row_start[i + 1] {
                let j = p.cols[e] as usize;
                dense[i * n + j] = p.vals[e];
                dense[j * n + i] = p.vals[e];
            }
        }
        let mut g = vec![0.0; 2 * n];
        for i in 0..n {
            for j in 0..n {
                if j == i {
                    continue;
                }
                let wij = w(i, j);
                let f = (exaggeration * dense[i * n + j] - wij / z) * wij;
                g[2 * i] += 4.0 * f * (y[2 * i] - y[2 * j]);
                g[2 * i + 1] += 4.0 * f * (y[2 * i + 1] - y[2 * j + 1]);
            }
        }
        g
    }

    /// `clusters × per` points in `dim` dimensions around well-separated centres.
    fn gaussian_clusters(
        clusters: usize,
        per: usize,
        dim: usize,
        sep: f64,
        seed: u64,
    ) -> (Vec<f32>, Vec<usize>) {
        let mut rng = SplitMix64::new(seed);
        let centres: Vec<f64> = (0..clusters * dim).map(|_| sep * rng.normal()).collect();
        let mut x = Vec::with_capacity(clusters * per * dim);
        let mut labels = Vec::with_capacity(clusters * per);
        // Interleave the clusters so that no structure hides in the row order.
        for _ in 0..per {
            for c in 0..clusters {
                for j in 0..dim {
                    x.push((centres[c * dim + j] + rng.normal()) as f32);
                }
                labels.push(c);
            }
        }
        (x, labels)
    }

    fn knn_agreement(y: &[f32], labels: &[usize], k: usize) -> f64 {
        let n = labels.len();
        let mut agree = 0usize;
        for i in 0..n {
            let mut d: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let dx = y[2 * i] - y[2 * j];
                    let dy = y[2 * i + 1] - y[2 * j + 1];
                    (dx * dx + dy * dy, j)
                })
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            agree += d[..k]
                .iter()
                .filter(|&&(_, j)| labels[j] == labels[i])
                .count();
        }
        agree as f64 / (n * k) as f64
    }

    #[test]
    fn embed_tsne_separates_gaussian_clusters() {
        let (clusters, per, dim) = (5, 100, 50);
        let (x, labels) = gaussian_clusters(clusters, per, dim, 2.0, 1);
        let n = clusters * per;
        let mut tsne = Tsne::new(&x, n, dim, TsneConfig::default()).unwrap();
        assert_eq!(tsne.neighbours(), 90);
        let kl_start = tsne.kl_divergence();
        let y = tsne.run().to_vec();
        assert_eq!(tsne.iteration(), 750);
        assert!(tsne.is_done());
        let kl_end = tsne.kl_divergence();
        assert!(y.iter().all(|v| v.is_finite()));
        let agreement = knn_agreement(&y, &labels, 10);
        // Centroids and within-cluster RMS radii.
        let mut cent = vec![[0.0f64; 2]; clusters];
        for i in 0..n {
            cent[labels[i]][0] += y[2 * i] as f64 / per as f64;
            cent[labels[i]][1] += y[2 * i + 1] as f64 / per as f64;
        }
        let mut radius = vec![0.0f64; clusters];
        for i in 0..n {
            let c = cent[labels[i]];
            radius[labels[i]] += ((y[2 * i] as f64 - c[0]).powi(2)
                + (y[2 * i + 1] as f64 - c[1]).powi(2))
                / per as f64;
        }
        let max_radius = radius.iter().map(|r| r.sqrt()).fold(0.0, f64::max);
        let mut min_sep = f64::INFINITY;
        for a in 0..clusters {
            for b in a + 1..clusters {
                let d =
                    ((cent[a][0] - cent[b][0]).powi(2) + (cent[a][1] - cent[b][1]).powi(2)).sqrt();
                min_sep = min_sep.min(d);
            }
        }
        eprintln!(
            "t-SNE clusters: kNN agreement {agreement:.4}, min centroid distance {min_sep:.2}, \
             max RMS radius {max_radius:.2}, KL {kl_start:.3} -> {kl_end:.3}"
        );
        assert!(agreement > 0.95, "kNN agreement {agreement}");
        assert!(min_sep > 3.0 * max_radius, "{min_sep} vs {max_radius}");
        assert!(
            kl_end < kl_start && kl_end < 1.5,
            "KL {kl_start} -> {kl_end}"
        );
    }

    /// Barnes–Hut against the exact gradient on states of a real run (300 points, 5 clusters):
    /// early exaggeration (iterations 50, 250) and after it (400, 750).
    ///
    /// The error is measured relative to the exact gradient's norm and relative to its
    /// repulsive part (the only approximated part). Near convergence attraction and repulsion
    /// cancel and the gradient itself tends to 0, so there only the second measure is
    /// meaningful.
    #[test]
    fn embed_tsne_barnes_hut_gradient_matches_exact() {
        let (x, _) = gaussian_clusters(5, 60, 30, 2.0, 2);
        let n = 300;
        let mut tsne = Tsne::new(&x, n, 30, TsneConfig::default()).unwrap();
        let no_p = Affinities {
            row_start: vec![0; n + 1],
            cols: vec![],
            vals: vec![],
        };
        let mut tree = QuadTree::default();
        for at in [50, 250, 400, 750] {
            tsne.step(at - tsne.iteration());
            let exaggeration = if at <= 250 { 12.0 } else { 1.0 };
            let exact = exact_gradient(&tsne.p, &tsne.y, exaggeration);
            let repulsion = exact_gradient(&no_p, &tsne.y, 1.0);
            let norm = |v: &[f64]| v.iter().map(|v| v * v).sum::<f64>().sqrt();
            let mut g = vec![0.0; 2 * n];
            let mut errs = Vec::new();
            for theta in [0.5, 0.1, 0.0] {
                bh_gradient(&tsne.p, &tsne.y, theta, exaggeration, &mut tree, &mut g);
                let diff: Vec<f64> = g.iter().zip(&exact).map(|(a, b)| a - b).collect();
                errs.push((norm(&diff) / norm(&exact), norm(&diff) / norm(&repulsion)));
            }
            eprintln!(
                "iteration {at}: BH gradient relative error (to the gradient / to its \
                 repulsion) θ = 0.5: {:.2e} / {:.2e}, θ = 0.1: {:.2e} / {:.2e}, \
                 θ = 0: {:.2e} / {:.2e}",
                errs[0].0, errs[0].1, errs[1].0, errs[1].1, errs[2].0, errs[2].1
            );
            assert!(errs[0].1 < 1e-2, "{errs:?}");
            assert!(errs[1].1 < 1e-3, "{errs:?}");
            assert!(errs[2].0 < 1e-10 && errs[2].1 < 1e-10, "{errs:?}");
            if exaggeration > 1.0 {
                assert!(errs[0].0 < 1e-2, "{errs:?}");
            }
        }
    }

    #[test]
    fn embed_tsne_perplexity_calibration_hits_entropy() {
        let (x, _) = gaussian_clusters(3, 100, 20, 1.5, 4);
        let n = 300;
        for perplexity in [5.0, 30.0, 50.0] {
            let k = (3.0 * perplexity) as usize;
            let (idx, d2) = knn(&x, n, 20, k);
            let (p, betas) = calibrate(&d2, k, perplexity);
            for i in 0..n {
                let row = &p[i * k..(i + 1) * k];
                let h: f64 = -row
                    .iter()
                    .filter(|&&v| v > 0.0)
                    .map(|&v| v * v.ln())
                    .sum::<f64>();
                assert!((h - perplexity.ln()).abs() < 1e-4, "row {i}: H {h}");
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                assert!(betas[i] > 0.0 && betas[i].is_finite());
            }
            let sym = symmetrize(&idx, &p, n, k);
            // Against the dense (P_{j|i} + P_{i|j}) / 2n.
            let mut dense = vec![0.0; n * n];
            for i in 0..n {
                for c in 0..k {
                    let j = idx[i * k + c] as usize;
                    dense[i * n + j] += p[i * k + c] / (2 * n) as f64;
                    dense[j * n + i] += p[i * k + c] / (2 * n) as f64;
                }
            }
            let mut stored = 0;
            for i in 0..n {
                let cols = &sym.cols[sym.row_start[i]..sym.row_start[i + 1]];
                assert!(cols.windows(2).all(|w| w[0] < w[1]));
                for (e, &j) in cols.iter().enumerate() {
                    let j = j as usize;
                    assert!(j > i);
                    let v = sym.vals[sym.row_start[i] + e];
                    assert!((v - dense[i * n + j]).abs() < 1e-15);
                    assert_eq!(dense[i * n + j], dense[j * n + i]);
                    stored += 1;
                }
            }
            assert_eq!(stored, dense.iter().filter(|&&v| v > 0.0).count() / 2);
            let total: f64 = dense.iter().sum();
            assert!((total - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn embed_tsne_knn_is_exact() {
        let (x, _) = gaussian_clusters(3, 40, 7, 1.0, 5);
        let n = 120;
        let k = 10;
        let (idx, d2) = knn(&x, n, 7, k);
        for i in 0..n {
            let mut all: Vec<(f64, u32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let d: f64 = (0..7)
                        .map(|c| (x[i * 7 + c] as f64 - x[j * 7 + c] as f64).powi(2))
                        .sum();
                    (d, j as u32)
                })
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for c in 0..k {
                assert_eq!(idx[i * k + c], all[c].1);
                assert_eq!(d2[i * k + c], all[c].0);
            }
        }
    }

    #[test]
    fn embed_tsne_is_deterministic_and_steppable() {
        let (x, _) = gaussian_clusters(3, 30, 12, 2.0, 6);
        let n = 90;
        let config = TsneConfig {
            perplexity: 10.0,
            total_iterations: 300,
            seed: 42,
            ..TsneConfig::default()
        };
        let mut a = Tsne::new(&x, n, 12, config.clone()).unwrap();
        let mut b = Tsne::new(&x, n, 12, config).unwrap();
        // The initial embedding: the PCA scores scaled to std 1e-4 in the first coordinate.
        let init = a.embedding().to_vec();
        let m = init.iter().step_by(2).map(|&v| v as f64).sum::<f64>() / n as f64;
        let sd = (init
            .iter()
            .step_by(2)
            .map(|&v| (v as f64 - m).powi(2))
            .sum::<f64>()
            / n as f64)
            .sqrt();
        assert!((sd - 1e-4).abs() < 1e-8, "{sd}");
        let ya = a.run().to_vec();
        let mut steps = 0;
        while !b.is_done() {
            b.step(7);
            steps += 1;
        }
        assert_eq!(steps, 43);
        assert_eq!(ya, b.embedding());
        assert_eq!(b.step(10), &ya[..]);
        assert_eq!(b.iteration(), 300);
        assert_eq!(b.total_iterations(), 300);
    }

    #[test]
    fn embed_tsne_small_inputs_and_options() {
        // n = 2, d = 1: perplexity clamps, nothing NaN.
        let mut t = Tsne::new(&[0.0, 1.0], 2, 1, TsneConfig::default()).unwrap();
        assert_eq!(t.neighbours(), 1);
        assert!(t.run().iter().all(|v| v.is_finite()));
        // Duplicated rows, cosine metric, no PCA, large θ.
        let mut x = vec![0.0f32; 40 * 6];
        for (i, v) in x.iter_mut().enumerate() {
            *v = ((i * 7 % 13) % 5) as f32;
        }
        let config = TsneConfig {
            metric: Metric::Cosine,
            pca_dims: None,
            theta: 1.0,
            perplexity: 5.0,
            total_iterations: 200,
            ..TsneConfig::default()
        };
        let mut t = Tsne::new(&x, 40, 6, config).unwrap();
        assert!(t.run().iter().all(|v| v.is_finite()));
        assert!(t.kl_divergence().is_finite());
    }

    #[test]
    fn embed_tsne_rejects_bad_input() {
        let ok = vec![0.5f32; 20];
        assert!(Tsne::new(&ok, 1, 20, TsneConfig::default()).is_err());
        assert!(Tsne::new(&[], 5, 0, TsneConfig::default()).is_err());
        assert!(Tsne::new(&ok, 5, 3, TsneConfig::default()).is_err());
        let mut bad = ok.clone();
        bad[3] = f32::NAN;
        assert!(Tsne::new(&bad, 5, 4, TsneConfig::default()).is_err());
        for config in [
            TsneConfig {
                perplexity: 0.0,
                ..TsneConfig::default()
            },
            TsneConfig {
                theta: 1.5,
                ..TsneConfig::default()
            },
            TsneConfig {
                learning_rate: Some(-1.0),
                ..TsneConfig::default()
            },
            TsneConfig {
                final_momentum: 1.0,
                ..TsneConfig::default()
            },
            TsneConfig {
                pca_dims: Some(1),
                ..TsneConfig::default()
            },
            TsneConfig {
                early_exaggeration: f64::NAN,
                ..TsneConfig::default()
            },
        ] {
            assert!(Tsne::new(&ok, 5, 4, config).is_err());
        }
    }

    /// Timing print at the browser explorer's size (release builds only): 20 Gaussian
    /// clusters, and a diffuse low-rank cloud (ReLU-like, no clusters: the slower case for
    /// Barnes–Hut as the embedding spreads out), both 10,000 × 512.
    #[test]
    #[cfg_attr(debug_assertions, ignore = "timing: run with --release")]
    fn embed_tsne_timing_10000x512() {
        let (n, dim) = (10_000, 512);
        let (clustered, labels) = gaussian_clusters(20, 500, dim, 0.5, 7);
        let mut rng = SplitMix64::new(8);
        let rank = 32;
        let basis: Vec<f64> = (0..rank * dim).map(|_| rng.normal()).collect();
        let mut diffuse = vec![0.0f32; n * dim];
        for row in diffuse.chunks_exact_mut(dim) {
            let z: Vec<f64> = (0..rank).map(|a| rng.normal() / (1.0 + a as f64)).collect();
            for (j, v) in row.iter_mut().enumerate() {
                let s: f64 = (0..rank).map(|a| z[a] * basis[a * dim + j]).sum();
                *v = (s + 0.3 * rng.normal()).max(0.0) as f32;
            }
        }
        for (name, x, labels) in [
            ("20 clusters", &clustered, Some(&labels)),
            ("diffuse", &diffuse, None),
        ] {
            let t = std::time::Instant::now();
            let mut tsne = Tsne::new(x, n, dim, TsneConfig::default()).unwrap();
            let prep = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let mut marks = Vec::new();
            while !tsne.is_done() {
                tsne.step(250);
                marks.push(format!(
                    "{}: {:.1} s",
                    tsne.iteration(),
                    t.elapsed().as_secs_f64()
                ));
            }
            let opt = t.elapsed().as_secs_f64();
            let kl = tsne.kl_divergence();
            let agreement = labels.map(|labels| {
                // 10-NN label agreement on every 10th point (the full check is quadratic).
                let y = tsne.embedding();
                let sample: Vec<usize> = (0..n).step_by(10).collect();
                let mut agree = 0;
                for &i in &sample {
                    let mut d: Vec<(f32, usize)> = (0..n)
                        .filter(|&j| j != i)
                        .map(|j| {
                            let (dx, dy) = (y[2 * i] - y[2 * j], y[2 * i + 1] - y[2 * j + 1]);
                            (dx * dx + dy * dy, j)
                        })
                        .collect();
                    d.select_nth_unstable_by(9, |a, b| a.0.total_cmp(&b.0));
                    agree += d[..10]
                        .iter()
                        .filter(|&&(_, j)| labels[j] == labels[i])
                        .count();
                }
                agree as f64 / (sample.len() * 10) as f64
            });
            eprintln!(
                "t-SNE {n} x {dim} ({name}): preparation {prep:.2} s, 750 iterations {opt:.2} s \
                 ({}), KL {kl:.3}{}",
                marks.join(", "),
                agreement.map_or(String::new(), |a| format!(", 10-NN label agreement {a:.3}"))
            );
        }
    }
}
