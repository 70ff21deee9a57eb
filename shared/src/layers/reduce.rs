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

/// Which elements of a gradient pass through the ReLU that followed a BatchNorm.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Gate {
    /// No ReLU: every element.
    Open,
    /// Those whose ReLU input `(x − mean)·scale + shift`, recomputed from `x` in f32 exactly as
    /// the forward pass did, is positive: the elements whose ReLU output is, without reading
    /// that output.
    Input {
        /// The channel mean the forward pass subtracted (as f32).
        mean: f32,
        /// Its `invstd · weight` (as f32).
        scale: f32,
        /// Its bias.
        shift: f32,
    },
}

impl Gate {
    /// Whether the gradient of an element whose BatchNorm input is `x` passes.
    #[inline(always)]
    pub(crate) fn passes(&self, x: f32) -> bool {
        match *self {
            Gate::Open => true,
            Gate::Input { mean, scale, shift } => (x - mean) * scale + shift > 0.0,
        }
    }
}

/// `(Σ g, Σ g·(x − m))` over paired slices, of the elements `gate` passes (the gradient
/// through a ReLU). The slices must have equal lengths.
pub(crate) fn sums_grad(x: &[f32], g: &[f32], gate: Gate, m: f64) -> (f64, f64) {
    debug_assert!(x.len() == g.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2::sums_grad(x, g, gate, m) };
    }
    sums_grad_scalar(x, g, gate, m)
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
fn gated(g: f32, x: f32, gate: Gate) -> f64 {
    f64::from(if gate.passes(x) { g } else { 0.0 })
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

fn sums_grad_scalar(x: &[f32], g: &[f32], gate: Gate, m: f64) -> (f64, f64) {
    let n = x.len().min(g.len());
    let full = n / LANES * LANES;
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    for base in (0..full).step_by(LANES) {
        for j in 0..LANES {
            let i = base + j;
            let gv = gated(g[i], x[i], gate);
            a[j] += gv;
            b[j] += gv * (f64::from(x[i]) - m);
        }
    }
    let (mut sa, mut sb) = (lane_sum(&a), lane_sum(&b));
    for i in full..n {
        let gv = gated(g[i], x[i], gate);
        sa += gv;
        sb += gv * (f64::from(x[i]) - m);
    }
    (sa, sb)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{dev, gated, lane_sum, Gate, LANES};
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
    pub(super) fn sums_grad(x: &[f32], g: &[f32], gate: Gate, m: f64) -> (f64, f64) {
        let n = x.len().min(g.len());
        let full = n / LANES * LANES;
        let mv = _mm256_set1_pd(m);
        let zero = _mm256_setzero_ps();
        let (mean, scale, shift) = match gate {
            Gate::Input { mean, scale, shift } => (
                _mm256_set1_ps(mean),
                _mm256_set1_ps(scale),
                _mm256_set1_ps(shift),
            ),
            Gate::Open => (zero, zero, zero),
        };
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
            // z > 0 (ordered: NaN is not), else +0.0 — the scalar gate.
            match gate {
                Gate::Open => {}
                Gate::Input { .. } => {
                    // Separate sub, mul, add (no fused multiply-add): the forward's roundings.
                    let z = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(xv, mean), scale), shift);
                    gv = _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(z, zero));
                }
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
            let gv = gated(g[i], x[i], gate);
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
    /// lengths with and without a tail, with and without a ReLU gate.
    #[test]
    fn vector_and_scalar_paths_agree_bit_for_bit() {
        for n in [0, 1, 7, 8, 9, 49, 196, 1000] {
            let x = data(n, 1);
            let g = data(n, 2);
            for (c, sq) in [(0.0, false), (0.37, true), (-1.5, false)] {
                assert_eq!(
                    sum_dev(&x, c, sq).to_bits(),
                    sum_dev_scalar(&x, c, sq).to_bits(),
                    "n {n}"
                );
            }
            let input = Gate::Input {
                mean: 0.3,
                scale: -1.7,
                shift: 0.2,
            };
            for gate in [Gate::Open, input] {
                let (a, b) = sums_grad(&x, &g, gate, 0.25);
                let (sa, sb) = sums_grad_scalar(&x, &g, gate, 0.25);
                assert_eq!(
                    (a.to_bits(), b.to_bits()),
                    (sa.to_bits(), sb.to_bits()),
                    "n {n}"
                );
            }
        }
    }

    /// The gate recomputed from the input passes exactly the elements whose forward ReLU
    /// output `max((x − m)·s + b, 0)` is positive, including one that lands on zero: the same
    /// bits as summing the gradient masked by that output.
    #[test]
    fn recomputed_gate_matches_the_relu_output() {
        let mut x = data(1001, 7);
        let g = data(1001, 8);
        let (mean, scale) = (0.37f32, 1.3f32);
        // With no shift, x == mean has a pre-activation of exactly zero: closed.
        x[5] = mean;
        for shift in [-0.11f32, 0.0, 0.4] {
            let masked: Vec<f32> = x
                .iter()
                .zip(&g)
                .map(|(&v, &g)| {
                    let y = ((v - mean) * scale + shift).max(0.0);
                    if y > 0.0 {
                        g
                    } else {
                        0.0
                    }
                })
                .collect();
            let from_output = sums_grad(&x, &masked, Gate::Open, 0.1);
            let from_input = sums_grad(&x, &g, Gate::Input { mean, scale, shift }, 0.1);
            assert_eq!(from_output.0.to_bits(), from_input.0.to_bits(), "{shift}");
            assert_eq!(from_output.1.to_bits(), from_input.1.to_bits(), "{shift}");
            let open = sums_grad(&x, &g, Gate::Open, 0.1);
            assert_ne!(
                open.0.to_bits(),
                from_input.0.to_bits(),
                "the gate closes some"
            );
        }
    }

    #[test]
    fn sums_equal_their_definition() {
        let x = data(37, 4);
        let g = data(37, 5);
        let gate = Gate::Input {
            mean: 0.5,
            scale: 2.0,
            shift: -0.25,
        };
        let passing = |v: f32| (v - 0.5) * 2.0 - 0.25 > 0.0;
        let exact_a: f64 = g
            .iter()
            .zip(&x)
            .filter(|(_, &v)| passing(v))
            .map(|(&g, _)| g as f64)
            .sum();
        let exact_b: f64 = g
            .iter()
            .zip(&x)
            .filter(|(_, &v)| passing(v))
            .map(|(&g, &v)| g as f64 * (v as f64 - 0.1))
            .sum();
        let (a, b) = sums_grad(&x, &g, gate, 0.1);
        assert!((a - exact_a).abs() < 1e-9 && (b - exact_b).abs() < 1e-9);
        let sq: f64 = x.iter().map(|&v| (v as f64 - 1.0).powi(2)).sum();
        assert!((sum_dev(&x, 1.0, true) - sq).abs() < 1e-9);
    }
}
