//! Dense linear algebra only the embeddings need: row orthonormalisation and a symmetric
//! eigensolver (cyclic Jacobi) in `f64`. Matrix products are [`crate::linalg::matmul`].

use crate::rng::SplitMix64;

/// Orthonormalise the `l` rows (each of length `d`) of `q` in place: modified Gram–Schmidt,
/// applied twice for stability. A row that is (numerically) in the span of the previous ones
/// is replaced by a random vector from `rng` orthogonalised against them, so the result always
/// has `l ≤ d` orthonormal rows.
pub(crate) fn orthonormalize_rows(q: &mut [f64], l: usize, d: usize, rng: &mut SplitMix64) {
    assert!(q.len() == l * d && l <= d);
    for a in 0..l {
        let (done, rest) = q.split_at_mut(a * d);
        let row = &mut rest[..d];
        let mut attempts = 0;
        loop {
            let before = norm(row);
            for _ in 0..2 {
                for b in 0..a {
                    let prev = &done[b * d..(b + 1) * d];
                    let dot: f64 = prev.iter().zip(row.iter()).map(|(p, r)| p * r).sum();
                    row.iter_mut().zip(prev).for_each(|(r, p)| *r -= dot * p);
                }
            }
            let after = norm(row);
            if after > 1e-10 * before && after > 0.0 && after.is_finite() {
                row.iter_mut().for_each(|r| *r /= after);
                break;
            }
            attempts += 1;
            assert!(attempts < 100, "cannot complete an orthonormal basis");
            row.iter_mut().for_each(|r| *r = rng.normal());
        }
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Eigen-decomposition of the symmetric `m × m` row-major matrix `a` (cyclic Jacobi).
///
/// Returns the eigenvalues in decreasing order and the eigenvectors as the rows of an
/// `m × m` row-major matrix (row `i` belongs to eigenvalue `i`).
pub(crate) fn sym_eig(a: &[f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), m * m);
    let mut a = a.to_vec();
    // Symmetrise what rounding may have left asymmetric.
    for i in 0..m {
        for j in 0..i {
            let s = 0.5 * (a[i * m + j] + a[j * m + i]);
            a[i * m + j] = s;
            a[j * m + i] = s;
        }
    }
    // v: rows are the eigenvectors being accumulated (v = Jᵀ… applied to the identity).
    let mut v = vec![0.0; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    if scale > 0.0 {
        for _sweep in 0..100 {
            let off: f64 = (0..m)
                .flat_map(|i| (0..m).filter(move |&j| j != i).map(move |j| (i, j)))
                .map(|(i, j)| a[i * m + j] * a[i * m + j])
                .sum::<f64>()
                .sqrt();
            if off <= 1e-15 * scale {
                break;
            }
            for p in 0..m {
                for q in p + 1..m {
                    let apq = a[p * m + q];
                    if apq == 0.0 {
                        continue;
                    }
                    let (app, aqq) = (a[p * m + p], a[q * m + q]);
                    let theta = (aqq - app) / (2.0 * apq);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    // A ← Jᵀ A J with J the rotation in the (p, q) plane.
                    for k in 0..m {
                        let (akp, akq) = (a[k * m + p], a[k * m + q]);
                        a[k * m + p] = c * akp - s * akq;
                        a[k * m + q] = s * akp + c * akq;
                    }
                    for k in 0..m {
                        let (apk, aqk) = (a[p * m + k], a[q * m + k]);
                        a[p * m + k] = c * apk - s * aqk;
                        a[q * m + k] = s * apk + c * aqk;
                    }
                    for k in 0..m {
                        let (vpk, vqk) = (v[p * m + k], v[q * m + k]);
                        v[p * m + k] = c * vpk - s * vqk;
                        v[q * m + k] = s * vpk + c * vqk;
                    }
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| a[j * m + j].total_cmp(&a[i * m + i]).then(i.cmp(&j)));
    let values = order.iter().map(|&i| a[i * m + i]).collect();
    let vectors = order
        .iter()
        .flat_map(|&i| v[i * m..(i + 1) * m].iter().copied())
        .collect();
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_sym_eig_reconstructs() {
        let m = 9;
        let mut rng = SplitMix64::new(3);
        let g: Vec<f64> = (0..m * m).map(|_| rng.normal()).collect();
        let mut a = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                a[i * m + j] = (0..m).map(|k| g[i * m + k] * g[j * m + k]).sum::<f64>();
            }
        }
        let (w, v) = sym_eig(&a, m);
        assert!(w.windows(2).all(|p| p[0] >= p[1]));
        for i in 0..m {
            for j in 0..m {
                let r: f64 = (0..m).map(|k| w[k] * v[k * m + i] * v[k * m + j]).sum();
                assert!((r - a[i * m + j]).abs() < 1e-10, "{r} {}", a[i * m + j]);
                let o: f64 = (0..m).map(|k| v[i * m + k] * v[j * m + k]).sum();
                assert!((o - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn embed_orthonormalize_completes_rank_deficient_basis() {
        let (l, d) = (4, 6);
        let mut rng = SplitMix64::new(1);
        let mut q = vec![0.0; l * d];
        q[0] = 1.0;
        q[d] = 2.0; // parallel to row 0
        q[2 * d + 1] = 1.0;
        // row 3 all zeros
        orthonormalize_rows(&mut q, l, d, &mut rng);
        for i in 0..l {
            for j in 0..l {
                let o: f64 = (0..d).map(|k| q[i * d + k] * q[j * d + k]).sum();
                assert!((o - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }
}
