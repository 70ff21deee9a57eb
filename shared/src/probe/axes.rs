//! The training features' principal axes: the coordinates the logistic solver works in.
//!
//! Real CNN features are strongly correlated (the singular values of 4,000 chula-rbc tiles'
//! random ResNet-18 features run from 153 to 0.008), which makes the logistic objective
//! ill-conditioned: plain L-BFGS took 1,357 iterations at C = 10. Centred and rotated onto
//! the eigenvectors of their scatter matrix, `Z = (X − 1μᵀ)·Q`, the features are uncorrelated,
//! and the objective's Hessian in the new coordinates, `I + C·Zᵀ·diag(p(1 − p))·Z` per class,
//! is diagonal at the start of a cold fit (where every probability is 1/K) and close to
//! diagonal elsewhere: a diagonal preconditioner ([`Axes::preconditioner`]) captures it, and
//! applying it costs nothing next to the objective.
//!
//! The change of variables is exact: `W = W'·Qᵀ`, `b = b' − W·μ`. `Q` has orthonormal columns,
//! so the penalty `‖W‖² = ‖W'‖²`, and the decision values on the training rows are unchanged.
//! Directions in which the centred features have no variance (rounding level; all but
//! `n − 1` of them when features outnumber samples) are dropped: the optimum has no weight
//! there, and the intercept absorbs what the mean puts there. When features outnumber rows
//! the axes come from the `n × n` kernel matrix instead of the `d × d` scatter matrix, and
//! each evaluation of the objective shrinks with them (`n − 1` columns instead of `d`).
//!
//! The eigendecomposition (faer's, blocked and vectorised: 34 ms at 513) does not depend on
//! C, and the axes of all rows serve every subset of them exactly, so a cross-validation
//! computes them once for all its folds and every C (the previous preconditioner, a Cholesky
//! factor of `I + a·X̃ᵀX̃`, was factored for every fold and C, and applied as two triangular
//! products per iteration).

use super::lbfgs::Precondition;
use super::linalg::x_wt;
use crate::linalg::{matmul, View};
use std::sync::Arc;

/// The axes themselves: what maps parameters between the two coordinate systems.
struct Basis {
    d: usize,
    /// Axes kept (directions of nonzero variance), `≤ min(d, n − 1)`.
    r: usize,
    /// Column means `μ`.
    mean: Vec<f64>,
    /// `Q`, `d × r` row-major, orthonormal columns (largest variance first).
    q: Vec<f64>,
    /// `Qᵀμ`.
    mean_rotated: Vec<f64>,
    /// `‖μ‖²`.
    mean_norm_sq: f64,
}

/// The principal axes of a set of rows of `d` features, and `n` rows in them: the rows the
/// axes were computed from, or a subset of them ([`Axes::subset`]: a cross-validation fold's
/// training part, which the axes of all rows serve exactly — the change of variables is exact
/// for any orthonormal basis of the rows' span, and only the preconditioner's fit is at stake).
pub(crate) struct Axes {
    basis: Arc<Basis>,
    n: usize,
    /// The rows in the new coordinates, `Z = (X − 1μᵀ)·Q`, `n × r` row-major.
    z: Vec<f64>,
}

impl Axes {
    /// The axes of `x` (`n × d` row-major); `None` when the eigendecomposition fails (values
    /// of absurd scale), and the solver then works in the original coordinates.
    ///
    /// Memory: the rows are centred and widened to f64 a block at a time (on the scatter
    /// route they are never all held in f64), so beyond `x` this keeps `Z` (`n × r` f64)
    /// and, while it works, one block and the `min(n, d)`-sized products.
    pub(crate) fn of(x: &[f32], n: usize, d: usize) -> Option<Axes> {
        assert_eq!(x.len(), n * d);
        if n == 0 || d == 0 {
            return None;
        }
        let mut mean = vec![0.0; d];
        for row in x.chunks_exact(d) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, &v)| *m += f64::from(v));
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let q = if n >= d {
            axes_of_scatter(x, &mean, n, d)?
        } else {
            axes_of_kernel(&centre(x, &mean), n, d)?
        };
        let r = q.len() / d;
        let mut z = vec![0.0; n * r];
        if r > 0 {
            for (block, z_block) in x.chunks(BLOCK_ROWS * d).zip(z.chunks_mut(BLOCK_ROWS * r)) {
                let centred = centre(block, &mean);
                let m = centred.len() / d;
                matmul(
                    m,
                    r,
                    d,
                    z_block,
                    false,
                    View::rows(&centred, d),
                    View::rows(&q, r),
                );
            }
        }
        let mut mean_rotated = vec![0.0; r];
        matmul(
            1,
            r,
            d,
            &mut mean_rotated,
            false,
            View::rows(&mean, d),
            View::rows(&q, r),
        );
        let mean_norm_sq = mean.iter().map(|m| m * m).sum();
        let basis = Basis {
            d,
            r,
            mean,
            q,
            mean_rotated,
            mean_norm_sq,
        };
        Some(Axes {
            basis: Arc::new(basis),
            n,
            z,
        })
    }

    /// The same axes holding only rows `rows` (indices into this set's rows).
    pub(crate) fn subset(&self, rows: &[usize]) -> Axes {
        let r = self.basis.r;
        let gather = |m: &[f64]| -> Vec<f64> {
            rows.iter()
                .flat_map(|&i| &m[i * r..(i + 1) * r])
                .copied()
                .collect()
        };
        Axes {
            basis: Arc::clone(&self.basis),
            n: rows.len(),
            z: gather(&self.z),
        }
    }

    /// Whether computing the axes costs less than 1,000 of the objective's evaluations
    /// (`4·n·d·rows` flops each) for each of the `fits` that share them. With `m = min(n, d)`
    /// the matrix products cost about `4·n·d·m` flops (`10·n·d·m` on the kernel route, with
    /// its QR factorisation), the eigendecomposition about as much as `3·m³` flops of matrix
    /// products (1.1 s at m = 2,049). Without the axes the solver took 200 to 4,500 iterations
    /// on real features, with them 5 to 150, so they pay except for a single fit of few rows
    /// and classes.
    pub(crate) fn worth_it(n: usize, d: usize, rows: usize, fits: usize) -> bool {
        let products = if n >= d { 4.0 } else { 10.0 };
        let (n, d, rows, fits) = (n as f64, d as f64, rows as f64, fits as f64);
        let m = n.min(d);
        products * n * d * m + 3.0 * m * m * m <= 1000.0 * fits * 4.0 * n * d * rows
    }

    /// Rows held.
    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    /// Features of the original coordinates.
    pub(crate) fn features(&self) -> usize {
        self.basis.d
    }

    /// Axes kept.
    pub(crate) fn rank(&self) -> usize {
        self.basis.r
    }

    /// The rows in the new coordinates, `n × rank()` row-major.
    pub(crate) fn rotated_rows(&self) -> &[f64] {
        &self.z
    }

    /// The parameters `[W' (rows × r), b' (rows)]` of the model `coef` (`rows × d`),
    /// `intercept`: the same decision values on the training rows (`W' = W·Q`, `b' = b + W·μ`).
    pub(crate) fn to_rotated(&self, coef: &[f64], intercept: &[f64]) -> Vec<f64> {
        let (b, rows) = (&*self.basis, intercept.len());
        let (d, r) = (b.d, b.r);
        assert_eq!(coef.len(), rows * d);
        let mut theta = vec![0.0; rows * (r + 1)];
        let (w, bias) = theta.split_at_mut(rows * r);
        matmul(
            rows,
            r,
            d,
            w,
            false,
            View::rows(coef, d),
            View::rows(&b.q, r),
        );
        for ((bk, ik), ck) in bias.iter_mut().zip(intercept).zip(coef.chunks_exact(d)) {
            *bk = ik + super::linalg::dot(ck, &b.mean);
        }
        theta
    }

    /// The model `(coef (rows × d), intercept)` of rotated parameters `[W', b']`:
    /// `W = W'·Qᵀ`, `b = b' − W·μ`.
    pub(crate) fn to_original(&self, theta: &[f64], rows: usize) -> (Vec<f64>, Vec<f64>) {
        let basis = &*self.basis;
        let (d, r) = (basis.d, basis.r);
        assert_eq!(theta.len(), rows * (r + 1));
        let (w, b) = theta.split_at(rows * r);
        let mut coef = vec![0.0; rows * d];
        matmul(
            rows,
            d,
            r,
            &mut coef,
            false,
            View::rows(w, r),
            View::transposed(&basis.q, r),
        );
        let intercept = b
            .iter()
            .zip(coef.chunks_exact(d))
            .map(|(bk, ck)| bk - super::linalg::dot(ck, &basis.mean))
            .collect();
        (coef, intercept)
    }

    /// `‖∇f‖` in the original coordinates from the gradient `[g_W', g_b']` in the rotated
    /// ones, in `O(rows·r)`: `g_b = g_b'` and `g_W = (g_W' + g_b·μ'ᵀ)·Qᵀ + g_b·μ⊥ᵀ` (`μ⊥`
    /// the mean's part outside the kept axes), so
    /// `‖g_W‖² = ‖g_W'‖² + 2·Σₖ g_bₖ·(g_W'ₖ·μ') + ‖g_b‖²·‖μ‖²`. The solver's stopping rule
    /// reads this norm, so that it means what it meant in the original coordinates.
    pub(crate) fn original_gradient_norm(&self, g: &[f64], rows: usize) -> f64 {
        let basis = &*self.basis;
        let r = basis.r;
        let (gw, gb) = g.split_at(rows * r);
        let mut sq = super::linalg::dot(gw, gw);
        for (k, gbk) in gb.iter().enumerate() {
            // (No kept axis: the weights' gradient is the mean's part alone.)
            let cross = super::linalg::dot(&gw[k * r..(k + 1) * r], &basis.mean_rotated);
            sq += 2.0 * gbk * cross + gbk * gbk * (1.0 + basis.mean_norm_sq);
        }
        sq.max(0.0).sqrt()
    }

    /// The diagonal preconditioner for rotated parameters `theta` (`[W', b']`, `rows` class
    /// rows) at regularisation `c`: the inverse of the objective's Hessian diagonal there,
    /// `1 + C·Σᵢ pᵢₖ(1 − pᵢₖ)·zᵢⱼ²` for weight `j` of class `k` and `C·Σᵢ pᵢₖ(1 − pᵢₖ)` for
    /// its intercept, with `pᵢₖ` the probabilities at `theta` (a warm start's, where the
    /// curvature of confident classes has fallen far below its value at zero).
    pub(crate) fn preconditioner(&self, theta: &[f64], rows: usize, c: f64) -> Diagonal {
        let (n, r) = (self.n, self.basis.r);
        assert_eq!(theta.len(), rows * (r + 1));
        let (w, b) = theta.split_at(rows * r);
        let mut curv = vec![0.0; n * rows];
        x_wt(&self.z, n, r, w, rows, &mut curv);
        for row in curv.chunks_exact_mut(rows) {
            row.iter_mut().zip(b).for_each(|(v, bk)| *v += bk);
            if rows == 1 {
                let p = super::model::sigmoid(row[0]);
                row[0] = p * (1.0 - p);
            } else {
                super::model::softmax_in_place(row);
                row.iter_mut().for_each(|p| *p *= 1.0 - *p);
            }
        }
        // Hessian diagonal, weights: 1 + C·(curvᵀ·(Z∘Z)), Z∘Z formed a block of rows at a
        // time (not kept: it would double the axes' memory); intercepts: C·Σᵢ curv.
        let mut diag = vec![0.0; rows * (r + 1)];
        let (dw, db) = diag.split_at_mut(rows * r);
        if r > 0 {
            let mut z_sq = vec![0.0; BLOCK_ROWS.min(n) * r];
            for (z_block, curv_block) in self
                .z
                .chunks(BLOCK_ROWS * r)
                .zip(curv.chunks(BLOCK_ROWS * rows))
            {
                let m = curv_block.len() / rows;
                let sq = &mut z_sq[..m * r];
                sq.iter_mut().zip(z_block).for_each(|(s, v)| *s = v * v);
                matmul(
                    rows,
                    r,
                    m,
                    dw,
                    true,
                    View::transposed(curv_block, rows),
                    View::rows(sq, r),
                );
            }
        }
        for row in curv.chunks_exact(rows) {
            db.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        dw.iter_mut().for_each(|h| *h = 1.0 + c * *h);
        db.iter_mut().for_each(|h| *h *= c);
        Diagonal(
            diag.into_iter()
                .map(|h| {
                    if h.is_finite() && h > 0.0 {
                        1.0 / h
                    } else {
                        1.0
                    }
                })
                .collect(),
        )
    }
}

/// The eigenvalues kept of a symmetric matrix of `n` rows' products (ascending, as faer
/// returns them): those above its rounding error, about `max(n, d)·ε·λ_max`; smaller ones
/// are noise, and their directions carry no variance of the rows. Largest first; `None` when
/// the values are not finite (features of absurd scale).
fn kept_eigenvalues(values: faer::ColRef<'_, f64>, n: usize, d: usize) -> Option<Vec<usize>> {
    let m = values.nrows();
    let largest = *values.iter().last()?;
    if !values.iter().all(|v| v.is_finite()) {
        return None;
    }
    let floor = largest * n.max(d) as f64 * f64::EPSILON;
    Some((0..m).rev().filter(|&j| values[j] > floor).collect())
}

/// The eigendecomposition of a symmetric `m × m` matrix of `n` rows' products (of `d`
/// features) and its kept eigenvalues' indices.
fn eigen_of_products(
    products: &[f64],
    m: usize,
    n: usize,
    d: usize,
) -> Option<(faer::linalg::solvers::SelfAdjointEigen<f64>, Vec<usize>)> {
    let eig = faer::MatRef::from_row_major_slice(products, m, m)
        .self_adjoint_eigen(faer::Side::Lower)
        .ok()?;
    let kept = kept_eigenvalues(eig.S().column_vector(), n, d)?;
    Some((eig, kept))
}

/// Columns `cols` of `src` (`rows` rows), each entry `v` of column `j` as `map(v, j)`, as a
/// row-major `rows × cols.len()` matrix.
fn gather_columns(
    src: faer::MatRef<'_, f64>,
    rows: usize,
    cols: &[usize],
    map: impl Fn(f64, usize) -> f64,
) -> Vec<f64> {
    let r = cols.len();
    let mut out = vec![0.0; rows * r];
    for (i, row) in out.chunks_exact_mut(r.max(1)).take(rows).enumerate() {
        for (dst, &j) in row.iter_mut().zip(cols) {
            *dst = map(src[(i, j)], j);
        }
    }
    out
}

/// Rows centred and widened to f64 this many at a time (2 MiB of them at 256 features, 8 at
/// 1,024) where a pass does not need them all at once.
const BLOCK_ROWS: usize = 1024;

/// Rows `x` (`d = mean.len()` features each) minus `mean`, in f64.
fn centre(x: &[f32], mean: &[f64]) -> Vec<f64> {
    x.chunks_exact(mean.len())
        .flat_map(|row| row.iter().zip(mean).map(|(&v, m)| f64::from(v) - m))
        .collect()
}

/// `Q` (`d × r` row-major) from the eigenvectors of the `d × d` scatter matrix `X_cᵀX_c`
/// (summed a block of centred rows at a time): the route when rows outnumber features.
fn axes_of_scatter(x: &[f32], mean: &[f64], n: usize, d: usize) -> Option<Vec<f64>> {
    let mut scatter = vec![0.0; d * d];
    for block in x.chunks(BLOCK_ROWS * d) {
        let centred = centre(block, mean);
        matmul(
            d,
            d,
            centred.len() / d,
            &mut scatter,
            true,
            View::transposed(&centred, d),
            View::rows(&centred, d),
        );
    }
    let (eig, kept) = eigen_of_products(&scatter, d, n, d)?;
    Some(gather_columns(eig.U(), d, &kept, |v, _| v))
}

/// `Q` from the eigenvectors `U` of the `n × n` kernel matrix `X_c·X_cᵀ`, when features
/// outnumber rows (an `n`-sized eigendecomposition instead of a `d`-sized one: 1,200 rows ×
/// 2,048 features): the axes are `X_cᵀ·U·Λ^{-1/2}`, made exactly orthonormal by a QR
/// factorisation (the division by `√λ` magnifies the eigenvectors' rounding error for small
/// `λ`; the span, which is what must contain the rows, is unaffected).
fn axes_of_kernel(centred: &[f64], n: usize, d: usize) -> Option<Vec<f64>> {
    let mut kernel = vec![0.0; n * n];
    matmul(
        n,
        n,
        d,
        &mut kernel,
        false,
        View::rows(centred, d),
        View::transposed(centred, d),
    );
    let (eig, kept) = eigen_of_products(&kernel, n, n, d)?;
    let r = kept.len();
    if r == 0 {
        return Some(Vec::new());
    }
    let values = eig.S().column_vector();
    // U_kept·Λ^{-1/2}, n × r row-major.
    let u = gather_columns(eig.U(), n, &kept, |v, j| v / values[j].sqrt());
    let mut spanning = vec![0.0; d * r];
    matmul(
        d,
        r,
        n,
        &mut spanning,
        false,
        View::transposed(centred, d),
        View::rows(&u, r),
    );
    let thin = faer::MatRef::from_row_major_slice(&spanning, d, r)
        .qr()
        .compute_thin_Q();
    let all: Vec<usize> = (0..r).collect();
    let q = gather_columns(thin.as_ref(), d, &all, |v, _| v);
    q.iter().all(|v| v.is_finite()).then_some(q)
}

/// A diagonal preconditioner: `P = diag(inverse)`.
pub(crate) struct Diagonal(Vec<f64>);

impl Precondition for Diagonal {
    fn apply(&mut self, v: &mut [f64]) {
        assert_eq!(v.len(), self.0.len());
        v.iter_mut().zip(&self.0).for_each(|(vi, pi)| *vi *= pi);
    }

    fn quadratic_form(&mut self, v: &[f64]) -> f64 {
        assert_eq!(v.len(), self.0.len());
        v.iter().zip(&self.0).map(|(vi, pi)| vi * vi * pi).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::input::to_f64;
    use crate::probe::lbfgs::{minimize, Options};
    use crate::probe::logreg::{LogisticRegression, LogregObjective};
    use crate::probe::model::rows_for;
    use crate::rng::SplitMix64;

    /// `n` rows of `d` features driven by three shared factors (so strongly correlated) with
    /// nonzero means, labels cycling through `k` and shifting the first factor.
    fn correlated(n: usize, d: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = SplitMix64::new(seed);
        let loadings: Vec<f64> = (0..3 * d).map(|_| rng.normal()).collect();
        let y: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
        let mut x = Vec::with_capacity(n * d);
        for &label in &y {
            let f = [
                rng.normal() + label as f64,
                rng.normal(),
                0.3 * rng.normal(),
            ];
            for j in 0..d {
                let v = (0..3).map(|t| f[t] * loadings[t * d + j]).sum::<f64>();
                x.push((2.0 + 0.1 * j as f64 + v + 0.05 * rng.normal()) as f32);
            }
        }
        (x, y)
    }

    fn random(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix64::new(seed);
        (0..len).map(|_| 0.3 * rng.normal()).collect()
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / a.abs().max(b.abs()).max(1e-300)
    }

    /// Tall (more rows than features), wide (features outnumber rows), and tall over several
    /// of the passes' blocks of rows.
    const SHAPES: [(usize, usize); 3] = [(40, 6), (7, 12), (2 * BLOCK_ROWS + 52, 5)];

    #[test]
    fn probe_axes_decorrelate_the_rows_over_several_blocks() {
        // The defining property: the rows' coordinates in the axes are centred and
        // uncorrelated (ZᵀZ diagonal), largest variance first — with the scatter matrix and Z
        // formed a block of rows at a time, and one block's mean unlike the others'.
        let (n, d) = (2 * BLOCK_ROWS + 52, 5);
        let (mut x, _) = correlated(n, d, 2, 9);
        x[BLOCK_ROWS * d..2 * BLOCK_ROWS * d]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += 3.0 * (i % d) as f32);
        let axes = Axes::of(&x, n, d).unwrap();
        let (r, z) = (axes.rank(), axes.rotated_rows());
        assert_eq!(r, d);
        let mut zz = vec![0.0; r * r];
        let mut sums = vec![0.0; r];
        for row in z.chunks_exact(r) {
            for a in 0..r {
                sums[a] += row[a];
                for b in 0..r {
                    zz[a * r + b] += row[a] * row[b];
                }
            }
        }
        for a in 0..r {
            assert!(
                sums[a].abs() < 1e-9 * zz[a * r + a].sqrt(),
                "axis {a}: sum {}",
                sums[a]
            );
            if a > 0 {
                assert!(zz[a * r + a] <= zz[(a - 1) * r + a - 1] * (1.0 + 1e-12));
            }
            for b in 0..r {
                if a != b {
                    let scale = (zz[a * r + a] * zz[b * r + b]).sqrt();
                    assert!(
                        zz[a * r + b].abs() < 1e-10 * scale,
                        "ZᵀZ[{a},{b}] = {}",
                        zz[a * r + b]
                    );
                }
            }
        }
    }

    #[test]
    fn probe_axes_change_of_variables_keeps_decisions_and_penalty() {
        for (n, d) in SHAPES {
            let (x32, _) = correlated(n, d, 3, 1);
            let axes = Axes::of(&x32, n, d).unwrap();
            let x = to_f64(&x32);
            let r = axes.rank();
            assert_eq!(r, d.min(n - 1), "n={n} d={d}");
            // Orthonormal axes (the kernel route's come through a QR factorisation).
            let q = &axes.basis.q;
            for a in 0..r {
                for b in 0..r {
                    let dot: f64 = (0..d).map(|i| q[i * r + a] * q[i * r + b]).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!(
                        (dot - want).abs() < 1e-12,
                        "n={n} d={d}: QᵀQ[{a},{b}] = {dot}"
                    );
                }
            }
            let rows = 3;
            let (coef, intercept) = (random(rows * d, 2), random(rows, 3));
            let theta = axes.to_rotated(&coef, &intercept);
            let decisions = |xs: &[f64], dim: usize, w: &[f64], b: &[f64]| -> Vec<f64> {
                xs.chunks_exact(dim)
                    .flat_map(|row| {
                        (0..rows).map(move |k| {
                            b[k] + row
                                .iter()
                                .zip(&w[k * dim..])
                                .map(|(a, c)| a * c)
                                .sum::<f64>()
                        })
                    })
                    .collect()
            };
            let (w_rot, b_rot) = theta.split_at(rows * r);
            let want = decisions(&x, d, &coef, &intercept);
            let got = decisions(axes.rotated_rows(), r, w_rot, b_rot);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-10 * (1.0 + w.abs()),
                    "n={n} d={d}: {g} vs {w}"
                );
            }
            // Back: the same decisions, and the penalty of the part the rows can see.
            let (coef_back, intercept_back) = axes.to_original(&theta, rows);
            let back = decisions(&x, d, &coef_back, &intercept_back);
            for (g, w) in back.iter().zip(&want) {
                assert!((g - w).abs() < 1e-10 * (1.0 + w.abs()));
            }
            let sq = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>();
            assert!(rel(sq(w_rot), sq(&coef_back)) < 1e-12);
            if r == d {
                assert!(coef_back
                    .iter()
                    .zip(&coef)
                    .all(|(a, b)| (a - b).abs() < 1e-12));
            } else {
                assert!(sq(w_rot) < sq(&coef), "the unseen part is dropped");
            }
        }
    }

    #[test]
    fn probe_axes_without_variance_fit_the_class_priors() {
        // Every feature constant: no axis is kept, the model is its intercepts, and the
        // stopping rule still sees their gradient (it once read only the weights' part).
        let (n, d, k) = (30, 4, 3);
        let x32: Vec<f32> = (0..n * d).map(|i| 1.5 + (i % d) as f32).collect();
        let y: Vec<u32> = (0..n)
            .map(|i| u32::from(i % 5 == 0) + u32::from(i % 3 == 0))
            .collect();
        let axes = Axes::of(&x32, n, d).unwrap();
        assert_eq!(axes.rank(), 0);
        let solver = LogisticRegression {
            c: 10.0,
            max_iter: 1000,
            tol: 1e-10,
        };
        let (m, report) = solver.fit_in_axes(&axes, &y, k, None).unwrap();
        assert!(report.converged && report.n_iter > 0, "{report:?}");
        assert!(m.coef.iter().all(|w| w.abs() < 1e-12));
        let p = m.predict_proba(&x32, n).unwrap();
        for (class, &p_class) in p[..k].iter().enumerate() {
            let prior = y.iter().filter(|&&c| c as usize == class).count() as f64 / n as f64;
            assert!(
                (p_class - prior).abs() < 1e-6,
                "class {class}: {p_class} vs {prior}"
            );
        }
    }

    #[test]
    fn probe_axes_worth_it_except_for_one_fit_of_many_rows_and_features() {
        // The page's and the CLI's shapes: chula-rbc's 1,000 tiles × 512, pbc-blood's 1,200
        // × 2,048 (the kernel route), idc's 300 × 512 binary, each even for one fit.
        assert!(Axes::worth_it(1000, 512, 11, 1));
        assert!(Axes::worth_it(1200, 2048, 8, 1));
        assert!(Axes::worth_it(300, 512, 1, 1));
        // One binary fit on 100,000 × 2,048: the 2,048-sized products cost more than 1,000
        // evaluations; a cross-validation's 30 fits share them.
        assert!(!Axes::worth_it(100_000, 2048, 1, 1));
        assert!(Axes::worth_it(100_000, 2048, 1, 30));
    }

    #[test]
    fn probe_axes_gradient_norm_is_the_original_coordinates_norm() {
        for (n, d) in SHAPES {
            for k in [2, 4] {
                let (x32, y) = correlated(n, d, k, 4);
                let axes = Axes::of(&x32, n, d).unwrap();
                let x = to_f64(&x32);
                let (r, rows) = (axes.rank(), rows_for(k));
                let theta = random(rows * (r + 1), 5);
                let (coef, intercept) = axes.to_original(&theta, rows);
                let original: Vec<f64> = coef.iter().chain(&intercept).copied().collect();
                let mut g = vec![0.0; original.len()];
                let f = LogregObjective::new(&x, n, d, &y, k, 0.8).value_grad(&original, &mut g);
                let mut g_rot = vec![0.0; theta.len()];
                let f_rot = LogregObjective::new(axes.rotated_rows(), n, r, &y, k, 0.8)
                    .value_grad(&theta, &mut g_rot);
                assert!(rel(f, f_rot) < 1e-12, "same objective: {f} vs {f_rot}");
                let want = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                let got = axes.original_gradient_norm(&g_rot, rows);
                assert!(rel(got, want) < 1e-9, "n={n} d={d} k={k}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn probe_axes_preconditioner_is_the_inverse_hessian_diagonal() {
        for (n, d) in SHAPES {
            for k in [2, 3] {
                let (x, y) = correlated(n, d, k, 6);
                let axes = Axes::of(&x, n, d).unwrap();
                let (r, rows, c) = (axes.rank(), rows_for(k), 2.5);
                let theta = random(rows * (r + 1), 7);
                let Diagonal(inverse) = axes.preconditioner(&theta, rows, c);
                let mut obj = LogregObjective::new(axes.rotated_rows(), n, r, &y, k, c);
                let (mut gp, mut gm) = (vec![0.0; theta.len()], vec![0.0; theta.len()]);
                for i in 0..theta.len() {
                    let h = 1e-5;
                    let mut t = theta.clone();
                    t[i] += h;
                    obj.value_grad(&t, &mut gp);
                    t[i] -= 2.0 * h;
                    obj.value_grad(&t, &mut gm);
                    let hessian_ii = (gp[i] - gm[i]) / (2.0 * h);
                    assert!(
                        rel(1.0 / inverse[i], hessian_ii) < 1e-6,
                        "n={n} d={d} k={k} param {i}: {} vs {hessian_ii}",
                        1.0 / inverse[i]
                    );
                }
            }
        }
    }

    #[test]
    fn probe_axes_of_all_rows_fit_a_subset_exactly() {
        // A cross-validation fold works in the axes of all rows; its optimum must be the
        // plain solver's on its own rows.
        for (n, d) in [(60, 6), (14, 12)] {
            for k in [2, 3] {
                let (x32, y) = correlated(n, d, k, 8);
                let axes = Axes::of(&x32, n, d).unwrap();
                let x = to_f64(&x32);
                let keep: Vec<usize> = (0..n).filter(|i| i % 5 != 1).collect();
                let sub = axes.subset(&keep);
                let xs: Vec<f64> = keep
                    .iter()
                    .flat_map(|&i| &x[i * d..(i + 1) * d])
                    .copied()
                    .collect();
                let ys: Vec<u32> = keep.iter().map(|&i| y[i]).collect();
                let ns = keep.len();
                let c = 3.0;
                let solver = LogisticRegression {
                    c,
                    max_iter: 5000,
                    tol: 1e-10,
                };
                let (fast, report) = solver.fit_in_axes(&sub, &ys, k, None).unwrap();
                assert!(report.converged);
                let mut obj = LogregObjective::new(&xs, ns, d, &ys, k, c);
                let start = vec![0.0; obj.dim()];
                let plain = minimize(
                    |t, g| obj.value_grad(t, g),
                    None,
                    start,
                    Options {
                        max_iter: 100_000,
                        gtol: 1e-11,
                        memory: 10,
                        gref_norm: None,
                    },
                    None,
                );
                assert!(plain.converged);
                assert!(
                    rel(report.objective, plain.f) < 1e-10,
                    "n={n} d={d} k={k}: {} vs {}",
                    report.objective,
                    plain.f
                );
                let rows = rows_for(k);
                for (a, b) in fast.coef.iter().zip(&plain.x[..rows * d]) {
                    assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "coef {a} vs {b}");
                }
            }
        }
    }
}
