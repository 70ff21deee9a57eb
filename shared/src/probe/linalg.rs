//! The dense operations the logistic solver needs: its two matrix products, as
//! [`crate::linalg::matmul`] calls, and the dot product of its vectors.

use crate::linalg::{matmul, View};
use rayon::prelude::*;

/// `Σ aᵢbᵢ` over the common length, in eight independent partial sums so that the loop
/// vectorises (a single running sum is a chain of dependent additions the compiler may not
/// reorder): L-BFGS's two-loop recursion spent 12% of a cross-validation in a plain `sum`.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Rows per block of the products below: blocks are fitted on the threads of the current
/// rayon pool (the folds' fits in parallel already, this splits one fit: the final fit, and
/// the last folds when fewer are left than threads). The blocks depend on `n` alone, never
/// on the threads, so every thread count sums in the same order: the same bits.
const BLOCK_ROWS: usize = 256;

/// Most blocks [`add_rt_x`] splits its rows into: each block keeps a `k × d` partial sum
/// until they are added, so its blocks grow past [`BLOCK_ROWS`] rows on large inputs (one
/// partial per 256 rows was 390 partials, 17 MB a call, at 100,000 tiles × 512 features × 11
/// classes).
const MAX_PARTIALS: usize = 16;

/// `out (n×k) = X (n×d) · Wᵀ`, with `W` `k×d`; all row-major. Blocks of rows in parallel.
pub(crate) fn x_wt(x: &[f64], n: usize, d: usize, w: &[f64], k: usize, out: &mut [f64]) {
    assert!(x.len() == n * d && w.len() == k * d && out.len() == n * k);
    if n <= BLOCK_ROWS || d == 0 || k == 0 {
        return x_wt_block(x, n, d, w, k, out);
    }
    out.par_chunks_mut(BLOCK_ROWS * k)
        .zip(x.par_chunks(BLOCK_ROWS * d))
        .for_each(|(o, xb)| x_wt_block(xb, xb.len() / d, d, w, k, o));
}

fn x_wt_block(x: &[f64], n: usize, d: usize, w: &[f64], k: usize, out: &mut [f64]) {
    matmul(
        n,
        k,
        d,
        out,
        false,
        View::rows(x, d),
        View::transposed(w, d),
    );
}

/// `out (k×d) += Rᵀ · X`, with `R` `n×k` and `X` `n×d`; all row-major. Each block of rows'
/// product in parallel (at most [`MAX_PARTIALS`] blocks of at least [`BLOCK_ROWS`] rows, a
/// function of `n` alone), then their sum in block order.
pub(crate) fn add_rt_x(r: &[f64], n: usize, k: usize, x: &[f64], d: usize, out: &mut [f64]) {
    assert!(r.len() == n * k && x.len() == n * d && out.len() == k * d);
    if n <= BLOCK_ROWS || d == 0 || k == 0 {
        return add_rt_x_block(r, n, k, x, d, out);
    }
    let rows = BLOCK_ROWS.max(n.div_ceil(MAX_PARTIALS));
    let partials: Vec<Vec<f64>> = r
        .par_chunks(rows * k)
        .zip(x.par_chunks(rows * d))
        .map(|(rb, xb)| {
            let mut partial = vec![0.0; k * d];
            add_rt_x_block(rb, rb.len() / k, k, xb, d, &mut partial);
            partial
        })
        .collect();
    for partial in partials {
        out.iter_mut().zip(&partial).for_each(|(o, p)| *o += p);
    }
}

fn add_rt_x_block(r: &[f64], n: usize, k: usize, x: &[f64], d: usize, out: &mut [f64]) {
    matmul(k, d, n, out, true, View::transposed(r, k), View::rows(x, d));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_dot_matches_a_plain_sum_at_every_length() {
        for n in 0..40 {
            let a: Vec<f64> = (0..n).map(|i| (i as f64) * 0.5 - 3.0).collect();
            let b: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (dot(&a, &b) - plain).abs() <= 1e-12 * (1.0 + plain.abs()),
                "n={n}"
            );
        }
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0]), 14.0);
    }

    #[test]
    fn probe_linalg_blocks_give_the_same_bits_on_any_number_of_threads() {
        // Over several blocks of rows (and a partial last one), and over more rows than
        // MAX_PARTIALS blocks of BLOCK_ROWS (add_rt_x's blocks grow): the naive products, and
        // the same bits on one thread and on three.
        for n in [3 * BLOCK_ROWS + 17, MAX_PARTIALS * BLOCK_ROWS + 300] {
            check_blocks(n);
        }
    }

    fn check_blocks(n: usize) {
        let (d, k) = (9, 4);
        let x: Vec<f64> = (0..n * d)
            .map(|i| ((i * 7 % 23) as f64) * 0.1 - 1.0)
            .collect();
        let w: Vec<f64> = (0..k * d)
            .map(|i| ((i * 5 % 13) as f64) * 0.5 - 3.0)
            .collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut z = vec![f64::NAN; n * k];
                x_wt(&x, n, d, &w, k, &mut z);
                let mut g = vec![1.0; k * d];
                add_rt_x(&z, n, k, &x, d, &mut g);
                (z, g)
            })
        };
        let (z, g) = run(1);
        assert_eq!((z.clone(), g.clone()), run(3));
        for i in 0..n {
            for j in 0..k {
                let e: f64 = (0..d).map(|p| x[i * d + p] * w[j * d + p]).sum();
                assert!((z[i * k + j] - e).abs() <= 1e-12 * e.abs().max(1.0));
            }
        }
        for j in 0..k {
            for p in 0..d {
                let e: f64 = 1.0 + (0..n).map(|i| z[i * k + j] * x[i * d + p]).sum::<f64>();
                assert!((g[j * d + p] - e).abs() <= 1e-9 * e.abs().max(1.0));
            }
        }
    }

    #[test]
    fn probe_linalg_matches_naive_products() {
        let (n, d, k) = (5, 7, 3);
        let x: Vec<f64> = (0..n * d).map(|i| ((i * 7 % 11) as f64) - 5.0).collect();
        let w: Vec<f64> = (0..k * d)
            .map(|i| ((i * 5 % 13) as f64) * 0.5 - 3.0)
            .collect();
        let mut z = vec![f64::NAN; n * k];
        x_wt(&x, n, d, &w, k, &mut z);
        for i in 0..n {
            for j in 0..k {
                let e: f64 = (0..d).map(|p| x[i * d + p] * w[j * d + p]).sum();
                assert_eq!(z[i * k + j], e);
            }
        }
        let mut g = vec![1.0; k * d];
        add_rt_x(&z, n, k, &x, d, &mut g);
        for j in 0..k {
            for p in 0..d {
                let e: f64 = 1.0 + (0..n).map(|i| z[i * k + j] * x[i * d + p]).sum::<f64>();
                assert!((g[j * d + p] - e).abs() <= 1e-9 * e.abs().max(1.0));
            }
        }
    }
}
