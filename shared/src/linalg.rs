//! The workspace's one dense matrix product: strided views and `gemm` (single-threaded, so
//! the same code runs in the browser), in `f32` (embeddings) and `f64` (the probes' solvers).

/// The element types [`matmul`] multiplies.
pub(crate) trait Scalar: Copy + 'static {
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
}

impl Scalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Scalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// A strided view of an `rows × cols` matrix: element `(r, c)` is `data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        View {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m×n, row-major) = lhs (m×k) · rhs (k×n)`, or `+=` when `accumulate`.
pub(crate) fn matmul<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    lhs: View<'_, T>,
    rhs: View<'_, T>,
) {
    matmul_into(m, n, k, dst, n, accumulate, T::ONE, lhs, rhs)
}

/// `dst = beta·lhs·rhs`, or `dst += beta·lhs·rhs` when `accumulate`, where `dst` is `m×n`
/// with rows `dst_rs` elements apart (a block of a larger row-major matrix).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    beta: T,
    lhs: View<'_, T>,
    rhs: View<'_, T>,
) {
    let dst_fits = m == 0 || n == 0 || ((m - 1) * dst_rs + n <= dst.len() && n <= dst_rs);
    assert!(dst_fits && lhs.fits(m, k) && rhs.fits(k, n));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(T::ZERO);
            }
        }
        return;
    }
    // SAFETY: the assert above makes every (row, col) reached through these strides lie inside
    // its slice (rows of `dst` are `dst_rs ≥ n` apart, so they do not overlap); `dst` is a
    // unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_matmul_matches_naive() {
        let (m, n, k) = (5, 4, 7);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        let b: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 13) as f32) * 0.5 - 3.0)
            .collect();
        // a (m×k) · bᵀ, with b stored n×k.
        let mut c = vec![f32::NAN; m * n];
        matmul(
            m,
            n,
            k,
            &mut c,
            false,
            View::rows(&a, k),
            View::transposed(&b, k),
        );
        for i in 0..m {
            for j in 0..n {
                let e: f32 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                assert_eq!(c[i * n + j], e);
            }
        }
        matmul(
            m,
            n,
            k,
            &mut c,
            true,
            View::rows(&a, k),
            View::transposed(&b, k),
        );
        for i in 0..m {
            for j in 0..n {
                let e: f32 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                assert_eq!(c[i * n + j], 2.0 * e);
            }
        }
    }
}
