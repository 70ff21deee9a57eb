//! A preconditioner for the logistic solver: `P = (I + a·X̃ᵀX̃)⁻¹`, with `X̃ = [X 1]` the
//! features and a column of ones (the intercept), applied to every class row of the
//! parameters.
//!
//! The logistic objective's Hessian is `I + C·X̃ᵀDX̃` (per class, `D` the softmax curvature
//! of each sample, at most 1/4), so with `a` near `C` times a typical curvature `P`
//! approximates the inverse Hessian's shape, and L-BFGS started from `γ·P` instead of `γ·I`
//! no longer crawls along the feature matrix's ill-conditioned directions. Real CNN
//! features are strongly correlated (singular values spanning five orders of magnitude),
//! which is what made the plain solver take thousands of iterations at large C: on 4,000
//! chula-rbc tiles × 512 features, 11 classes, C = 10, 1,357 iterations became 42 (a
//! diagonal preconditioner, tried before, doubled them: it misses the correlations).
//!
//! `P` changes with C, the Gram matrix `X̃ᵀX̃` does not: a cross-validation fold computes it
//! once for its whole path of C values ([`Gram`]), each fit factors `I + a·X̃ᵀX̃` (Cholesky,
//! blocked so that its bulk runs through gemm) and keeps `L⁻¹`, so that applying `P` is two
//! matrix products.

use super::lbfgs::Precondition;
use super::linalg::dot;
use crate::linalg::{matmul_into, View};

/// Block size of the factorisations (rows and columns handled by the scalar loops at once).
const BLOCK: usize = 64;

/// `X̃ᵀX̃` for the features `x` (`n × d`) with a column of ones appended: `(d+1) × (d+1)`.
pub(crate) struct Gram {
    g: Vec<f64>,
    m: usize,
}

impl Gram {
    /// The Gram matrix of `x` (`n × d`, row-major, f64).
    pub(crate) fn of(x: &[f64], n: usize, d: usize) -> Gram {
        assert_eq!(x.len(), n * d);
        let m = d + 1;
        let mut g = vec![0.0; m * m];
        matmul_into(
            d,
            d,
            n,
            &mut g,
            m,
            false,
            1.0,
            View::transposed(x, d),
            View::rows(x, d),
        );
        let mut sums = vec![0.0; d];
        for row in x.chunks_exact(d) {
            sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        for (j, s) in sums.into_iter().enumerate() {
            g[j * m + d] = s;
            g[d * m + j] = s;
        }
        g[d * m + d] = n as f64;
        Gram { g, m }
    }

    /// Whether this is the Gram matrix of `d` features.
    pub(crate) fn has_features(&self, d: usize) -> bool {
        self.m == d + 1
    }

    /// Whether building a preconditioner (the Gram matrix and one factorisation, about
    /// `2nm² + 2m³` flops) costs less than 500 of the objective's evaluations (`4·n·m·rows`
    /// each): without it the solver took 200 to 4,500 iterations on real features, with it
    /// 15 to 175, so it pays except where features far outnumber samples (then each
    /// evaluation is cheap and the factorisation is not).
    pub(crate) fn worth_it(n: usize, d: usize, rows: usize) -> bool {
        let (n, m, rows) = (n as f64, (d + 1) as f64, rows as f64);
        2.0 * n * m * m + 2.0 * m * m * m <= 500.0 * 4.0 * n * m * rows
    }
}

/// `P = (I + a·X̃ᵀX̃)⁻¹` held as `L⁻¹`, where `L·Lᵀ = I + a·X̃ᵀX̃`.
pub(crate) struct Preconditioner {
    /// `L⁻¹`, lower triangular, `m × m` row-major (zeros above the diagonal).
    l_inv: Vec<f64>,
    m: usize,
    rows: usize,
    /// Scratch: the parameters as `rows × m` (class row, then its intercept), and a product.
    v: Vec<f64>,
    t: Vec<f64>,
}

impl Preconditioner {
    /// The preconditioner for `rows` class rows at weight `a`; `None` when `I + a·X̃ᵀX̃` is
    /// not numerically positive definite (features of absurd scale), and the solver then
    /// goes without.
    pub(crate) fn new(gram: &Gram, a: f64, rows: usize) -> Option<Preconditioner> {
        let m = gram.m;
        if !(a.is_finite() && a >= 0.0) {
            return None;
        }
        let mut l: Vec<f64> = gram.g.iter().map(|v| a * v).collect();
        for i in 0..m {
            l[i * m + i] += 1.0;
        }
        if !cholesky_in_place(&mut l, m) {
            return None;
        }
        let l_inv = lower_inverse(&l, m);
        if l_inv.iter().any(|v| !v.is_finite()) {
            return None;
        }
        Some(Preconditioner {
            l_inv,
            m,
            rows,
            v: vec![0.0; rows * m],
            t: vec![0.0; rows * m],
        })
    }

    /// The parameters `θ = [W (rows × d, row-major), b (rows)]` as `rows × m` into `self.v`.
    fn gather(&mut self, theta: &[f64]) {
        let (m, rows, d) = (self.m, self.rows, self.m - 1);
        assert_eq!(theta.len(), rows * m);
        let (w, b) = theta.split_at(rows * d);
        for r in 0..rows {
            self.v[r * m..r * m + d].copy_from_slice(&w[r * d..(r + 1) * d]);
            self.v[r * m + d] = b[r];
        }
    }

    /// `self.t = self.v·L⁻ᵀ` (each class row times `L⁻ᵀ`), through gemm block column by
    /// block column so that the zeros of the triangle are skipped:
    /// `t[:, j0..j1] = v[:, ..j1]·L⁻¹[j0..j1, ..j1]ᵀ`.
    fn times_l_inv_t(&mut self) {
        let (m, rows) = (self.m, self.rows);
        for j0 in (0..m).step_by(BLOCK) {
            let j1 = (j0 + BLOCK).min(m);
            matmul_into(
                rows,
                j1 - j0,
                j1,
                &mut self.t[j0..],
                m,
                false,
                1.0,
                View::rows(&self.v, m),
                View {
                    data: &self.l_inv[j0 * m..],
                    rs: 1,
                    cs: m,
                },
            );
        }
    }
}

impl Precondition for Preconditioner {
    /// `θ ← P·θ` class row by class row: each row `v` becomes `v·L⁻ᵀ·L⁻¹ = (P·vᵀ)ᵀ`.
    fn apply(&mut self, theta: &mut [f64]) {
        self.gather(theta);
        self.times_l_inv_t();
        let (m, rows, d) = (self.m, self.rows, self.m - 1);
        // v = t·L⁻¹: v[:, j0..j1] = t[:, j0..]·L⁻¹[j0.., j0..j1].
        for j0 in (0..m).step_by(BLOCK) {
            let j1 = (j0 + BLOCK).min(m);
            matmul_into(
                rows,
                j1 - j0,
                m - j0,
                &mut self.v[j0..],
                m,
                false,
                1.0,
                View {
                    data: &self.t[j0..],
                    rs: m,
                    cs: 1,
                },
                View {
                    data: &self.l_inv[j0 * m + j0..],
                    rs: m,
                    cs: 1,
                },
            );
        }
        let (w, b) = theta.split_at_mut(rows * d);
        for r in 0..rows {
            w[r * d..(r + 1) * d].copy_from_slice(&self.v[r * m..r * m + d]);
            b[r] = self.v[r * m + d];
        }
    }

    /// `θᵀ·P·θ = Σ_rows ‖L⁻¹·vᵀ‖²`: one of the two products of [`Self::apply`].
    fn quadratic_form(&mut self, theta: &[f64]) -> f64 {
        self.gather(theta);
        self.times_l_inv_t();
        dot(&self.t, &self.t)
    }
}

/// Cholesky factorisation of the symmetric `m × m` row-major `a` in place: its lower
/// triangle becomes `L` with `L·Lᵀ = a`, and the strict upper triangle is zeroed. Blocked
/// (right-looking): each block column is factored by scalar loops, the trailing matrix
/// updated through gemm. `false` when a pivot is not positive (not positive definite).
fn cholesky_in_place(a: &mut [f64], m: usize) -> bool {
    assert_eq!(a.len(), m * m);
    let mut panel = Vec::new();
    for k0 in (0..m).step_by(BLOCK) {
        let k1 = (k0 + BLOCK).min(m);
        // Block column k0..k1, rows k0..m: L[i][j] = (A[i][j] − Σ_{k0≤p<j} L[i][p]·L[j][p]) /
        // L[j][j] (the columns before k0 were folded into A by the trailing updates).
        for i in k0..m {
            for j in k0..k1.min(i + 1) {
                let s = a[i * m + j] - dot(&a[i * m + k0..i * m + j], &a[j * m + k0..j * m + j]);
                if i == j {
                    if !(s > 0.0 && s.is_finite()) {
                        return false;
                    }
                    a[i * m + i] = s.sqrt();
                } else {
                    a[i * m + j] = s / a[j * m + j];
                }
            }
        }
        if k1 == m {
            break;
        }
        // Trailing update A[k1.., k1..] −= L[k1.., k0..k1]·L[k1.., k0..k1]ᵀ (the whole
        // square: gemm has no triangular output, and the upper half is zeroed at the end).
        let (rest, w) = (m - k1, k1 - k0);
        panel.clear();
        for i in k1..m {
            panel.extend_from_slice(&a[i * m + k0..i * m + k1]);
        }
        matmul_into(
            rest,
            rest,
            w,
            &mut a[k1 * m + k1..],
            m,
            true,
            -1.0,
            View::rows(&panel, w),
            View::transposed(&panel, w),
        );
    }
    for i in 0..m {
        a[i * m + i + 1..(i + 1) * m].fill(0.0);
    }
    true
}

/// The inverse of the lower-triangular `m × m` row-major `l` (nonzero diagonal), also lower
/// triangular. Blocked by rows: block `[k0, k1)` of `X = L⁻¹` solves
/// `L_kk·X[k0..k1, ..k0] = −L[k0..k1, ..k0]·X[..k0, ..k0]` (the product through gemm) and
/// `L_kk·X_kk = I` by forward substitution.
fn lower_inverse(l: &[f64], m: usize) -> Vec<f64> {
    assert_eq!(l.len(), m * m);
    let mut x = vec![0.0; m * m];
    for k0 in (0..m).step_by(BLOCK) {
        let k1 = (k0 + BLOCK).min(m);
        let h = k1 - k0;
        // Right-hand sides, h × k1: [−L[k0..k1, ..k0]·X[..k0, ..k0] | I].
        let mut rhs = vec![0.0; h * k1];
        if k0 > 0 {
            matmul_into(
                h,
                k0,
                k0,
                &mut rhs,
                k1,
                false,
                -1.0,
                View {
                    data: &l[k0 * m..],
                    rs: m,
                    cs: 1,
                },
                View {
                    data: &x,
                    rs: m,
                    cs: 1,
                },
            );
        }
        for r in 0..h {
            rhs[r * k1 + k0 + r] = 1.0;
        }
        // Forward substitution, row by row: row r of the solution is
        // (rhs_r − Σ_{p<r} L[k0+r][k0+p]·row_p) / L[k0+r][k0+r].
        for r in 0..h {
            let (done, cur) = rhs.split_at_mut(r * k1);
            let cur = &mut cur[..k1];
            for p in 0..r {
                let f = l[(k0 + r) * m + k0 + p];
                cur.iter_mut()
                    .zip(&done[p * k1..(p + 1) * k1])
                    .for_each(|(c, v)| *c -= f * v);
            }
            let diag = l[(k0 + r) * m + k0 + r];
            cur.iter_mut().for_each(|c| *c /= diag);
            x[(k0 + r) * m..(k0 + r) * m + k1].copy_from_slice(cur);
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// A random symmetric positive-definite `m × m` matrix `BᵀB/m + I`.
    fn spd(m: usize, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix64::new(seed);
        let b: Vec<f64> = (0..m * m).map(|_| rng.unit_f64() - 0.5).collect();
        let mut a = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                a[i * m + j] = (0..m).map(|k| b[k * m + i] * b[k * m + j]).sum::<f64>() / m as f64
                    + f64::from(i == j);
            }
        }
        a
    }

    #[test]
    fn probe_cholesky_reconstructs_across_block_edges() {
        for m in [1, 5, BLOCK, BLOCK + 1, 2 * BLOCK + 7] {
            let a = spd(m, m as u64);
            let mut l = a.clone();
            assert!(cholesky_in_place(&mut l, m));
            for i in 0..m {
                for j in 0..m {
                    if j > i {
                        assert_eq!(l[i * m + j], 0.0);
                    }
                    let s: f64 = (0..m).map(|k| l[i * m + k] * l[j * m + k]).sum();
                    assert!(
                        (s - a[i * m + j]).abs() < 1e-12,
                        "m={m} ({i},{j}): {s} vs {}",
                        a[i * m + j]
                    );
                }
            }
            let x = lower_inverse(&l, m);
            for i in 0..m {
                for j in 0..m {
                    let s: f64 = (0..m).map(|k| x[i * m + k] * l[k * m + j]).sum();
                    let e = f64::from(i == j);
                    assert!((s - e).abs() < 1e-12, "m={m} (L⁻¹L)[{i}][{j}] = {s}");
                }
            }
        }
    }

    #[test]
    fn probe_cholesky_refuses_indefinite() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0]; // eigenvalues 3 and −1
        assert!(!cholesky_in_place(&mut a, 2));
        let mut nan = vec![f64::NAN; 4];
        assert!(!cholesky_in_place(&mut nan, 2));
    }

    #[test]
    fn probe_preconditioner_inverts_i_plus_a_gram() {
        // (I + a·X̃ᵀX̃)·(P·v) must give v back, for every class row.
        let (n, d, rows, a) = (40, BLOCK + 3, 3, 0.37);
        let mut rng = SplitMix64::new(9);
        let x: Vec<f64> = (0..n * d).map(|_| rng.unit_f64() * 2.0 + 0.3).collect();
        let gram = Gram::of(&x, n, d);
        assert!(gram.has_features(d) && !gram.has_features(d + 1));
        let m = d + 1;
        let mut p = Preconditioner::new(&gram, a, rows).expect("positive definite");
        let v: Vec<f64> = (0..rows * m).map(|_| rng.unit_f64() - 0.5).collect();
        let mut pv = v.clone();
        p.apply(&mut pv);
        let vpv = p.quadratic_form(&v);
        assert!(
            (vpv - dot(&v, &pv)).abs() < 1e-12 * vpv.abs().max(1.0),
            "{vpv}"
        );
        // Each class row as [w | b], multiplied by I + a·X̃ᵀX̃ (X̃ from its definition).
        for r in 0..rows {
            let mut u: Vec<f64> = pv[r * d..(r + 1) * d].to_vec();
            u.push(pv[rows * d + r]);
            for j in 0..m {
                let mut g_u = 0.0;
                for i in 0..n {
                    let xi = |k: usize| if k < d { x[i * d + k] } else { 1.0 };
                    let proj: f64 = (0..m).map(|k| xi(k) * u[k]).sum();
                    g_u += xi(j) * proj;
                }
                let back = u[j] + a * g_u;
                let want = if j < d { v[r * d + j] } else { v[rows * d + r] };
                assert!(
                    (back - want).abs() < 1e-9 * (1.0 + want.abs()),
                    "row {r} component {j}: {back} vs {want}"
                );
            }
        }
    }

    #[test]
    fn probe_gram_worth_it_only_when_samples_carry_the_cost() {
        assert!(Gram::worth_it(4000, 512, 11));
        assert!(Gram::worth_it(300, 512, 11));
        assert!(Gram::worth_it(1000, 2048, 7));
        assert!(!Gram::worth_it(300, 512, 1));
        assert!(!Gram::worth_it(50, 2048, 2));
    }
}
