//! f64 reductions of f32 data for the fused BatchNorm: per-channel sums of values, squared
//! deviations and gradient products. Eight independent accumulators keep the adds pipelined;
//! on x86-64 with AVX2 (runtime-detected) the same eight lanes run as two 4-wide f64 vectors,
//! with the same rounding and the same final order, so both paths give identical bits.
//! The crate targets baseline x86-64, where the compiler left these loops scalar.

/// Accumulator lanes.
const LANES: usize = 8;

/// `Σ (v − centre)`, or with `square` `Σ (v − centre)²`, over `p`.
pub(crate) fn sum_dev(p: &[f32], centre: f64, square: bool) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2::sum_dev(p, centre, square) };
    }
    sum_dev_scalar(p, centre, square)
}

/// `(Σ g, Σ g·(x − m))` over paired slices; with `y`, of `g·[y > 0]` (the gradient through a
/// ReLU whose output is `y`). The slices must have equal lengths.
pub(crate) fn sums_grad(x: &[f32], g: &[f32], y: Option<&[f32]>, m: f64) -> (f64, f64) {
    debug_assert!(x.len() == g.len() && y.is_none_or(|y| y.len() == x.len()));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2::sums_grad(x, g, y, m) };
    }
    sums_grad_scalar(x, g, y, m)
}

fn lane_sum(acc: &[f64; LANES]) -> f64 {
    acc.iter().sum()
}

#[inline(always)]
fn dev(v: f32, centre: f64, square: bool) -> f64 {
    let d = f64::from(v) - centre;
    if square {
        d * d
    } else {
        d
    }
}

#[inline(always)]
fn gate(g: f32, y: Option<f32>) -> f64 {
    f64::from(match y {
        Some(y) if y.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) => 0.0,
        _ => g,
    })
}

fn sum_dev_scalar(p: &[f32], centre: f64, square: bool) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = p.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += dev(c[j], centre, square);
        }
    }
    let mut total = lane_sum(&acc);
    for &v in tail {
        total += dev(v, centre, square);
    }
    total
}

fn sums_grad_scalar(x: &[f32], g: &[f32], y: Option<&[f32]>, m: f64) -> (f64, f64) {
    let n = x.len().min(g.len());
    let full = n / LANES * LANES;
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    for base in (0..full).step_by(LANES) {
        for j in 0..LANES {
            let i = base + j;
            let gv = gate(g[i], y.map(|y| y[i]));
            a[j] += gv;
            b[j] += gv * (f64::from(x[i]) - m);
        }
    }
    let (mut sa, mut sb) = (lane_sum(&a), lane_sum(&b));
    for i in full..n {
        let gv = gate(g[i], y.map(|y| y[i]));
        sa += gv;
        sb += gv * (f64::from(x[i]) - m);
    }
    (sa, sb)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{dev, gate, lane_sum, LANES};
    use std::arch::x86_64::*;

    /// Lanes 0–3 and 4–7 of two accumulators as one array, for [`lane_sum`].
    #[target_feature(enable = "avx2")]
    fn lanes(lo: __m256d, hi: __m256d) -> [f64; LANES] {
        let mut out = [0f64; LANES];
        // SAFETY: `out` has room for two unaligned stores of four f64.
        unsafe {
            _mm256_storeu_pd(out.as_mut_ptr(), lo);
            _mm256_storeu_pd(out.as_mut_ptr().add(4), hi);
        }
        out
    }

    /// Eight f32 at `p` widened to f64, as (lanes 0–3, lanes 4–7).
    #[target_feature(enable = "avx2")]
    fn widen(v: __m256) -> (__m256d, __m256d) {
        (
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        )
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn sum_dev(p: &[f32], centre: f64, square: bool) -> f64 {
        let c = _mm256_set1_pd(centre);
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let full = p.len() / LANES * LANES;
        for base in (0..full).step_by(LANES) {
            // SAFETY: base + 8 <= full <= p.len().
            let v = unsafe { _mm256_loadu_ps(p.as_ptr().add(base)) };
            let (a, b) = widen(v);
            let (mut da, mut db) = (_mm256_sub_pd(a, c), _mm256_sub_pd(b, c));
            if square {
                da = _mm256_mul_pd(da, da);
                db = _mm256_mul_pd(db, db);
            }
            lo = _mm256_add_pd(lo, da);
            hi = _mm256_add_pd(hi, db);
        }
        let mut total = lane_sum(&lanes(lo, hi));
        for &v in &p[full..] {
            total += dev(v, centre, square);
        }
        total
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn sums_grad(x: &[f32], g: &[f32], y: Option<&[f32]>, m: f64) -> (f64, f64) {
        let n = x.len().min(g.len());
        let full = n / LANES * LANES;
        let mv = _mm256_set1_pd(m);
        let zero = _mm256_setzero_ps();
        let (mut a_lo, mut a_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let (mut b_lo, mut b_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for base in (0..full).step_by(LANES) {
            // SAFETY: base + 8 <= full <= the length of x, g (and y, asserted by the caller).
            let (xv, mut gv) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(base)),
                    _mm256_loadu_ps(g.as_ptr().add(base)),
                )
            };
            if let Some(y) = y {
                // SAFETY: as above.
                let yv = unsafe { _mm256_loadu_ps(y.as_ptr().add(base)) };
                // y > 0 (ordered: NaN is not), else +0.0 — the scalar gate.
                gv = _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero));
            }
            let (g0, g1) = widen(gv);
            let (x0, x1) = widen(xv);
            a_lo = _mm256_add_pd(a_lo, g0);
            a_hi = _mm256_add_pd(a_hi, g1);
            b_lo = _mm256_add_pd(b_lo, _mm256_mul_pd(g0, _mm256_sub_pd(x0, mv)));
            b_hi = _mm256_add_pd(b_hi, _mm256_mul_pd(g1, _mm256_sub_pd(x1, mv)));
        }
        let (mut sa, mut sb) = (lane_sum(&lanes(a_lo, a_hi)), lane_sum(&lanes(b_lo, b_hi)));
        for i in full..n {
            let gv = gate(g[i], y.map(|y| y[i]));
            sa += gv;
            sb += gv * (f64::from(x[i]) - m);
        }
        (sa, sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 8.0
            })
            .collect()
    }

    /// The dispatched path (AVX2 where available) gives the scalar path's exact bits, on
    /// lengths with and without a tail, with zeros and a NaN in the ReLU output.
    #[test]
    fn vector_and_scalar_paths_agree_bit_for_bit() {
        for n in [0, 1, 7, 8, 9, 49, 196, 1000] {
            let x = data(n, 1);
            let g = data(n, 2);
            let mut y = data(n, 3);
            if n > 4 {
                y[2] = 0.0;
                y[3] = f32::NAN;
                y[4] = -0.0;
            }
            for (c, sq) in [(0.0, false), (0.37, true), (-1.5, false)] {
                assert_eq!(
                    sum_dev(&x, c, sq).to_bits(),
                    sum_dev_scalar(&x, c, sq).to_bits(),
                    "n {n}"
                );
            }
            for yy in [None, Some(&y[..])] {
                let (a, b) = sums_grad(&x, &g, yy, 0.25);
                let (sa, sb) = sums_grad_scalar(&x, &g, yy, 0.25);
                assert_eq!(
                    (a.to_bits(), b.to_bits()),
                    (sa.to_bits(), sb.to_bits()),
                    "n {n}"
                );
            }
        }
    }

    #[test]
    fn sums_equal_their_definition() {
        let x = data(37, 4);
        let g = data(37, 5);
        let y = data(37, 6);
        let exact_a: f64 = g
            .iter()
            .zip(&y)
            .filter(|(_, &y)| y > 0.0)
            .map(|(&g, _)| g as f64)
            .sum();
        let (a, _) = sums_grad(&x, &g, Some(&y), 0.0);
        assert!((a - exact_a).abs() < 1e-9);
        let sq: f64 = x.iter().map(|&v| (v as f64 - 1.0).powi(2)).sum();
        assert!((sum_dev(&x, 1.0, true) - sq).abs() < 1e-9);
    }
}
