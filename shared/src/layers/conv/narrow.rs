//! Winograd's sixteen products `M_e = U_e · V_e` ([`super::winograd`]) when a sample has at
//! most 16 tiles — maps of 7×7 or smaller, one sample: ResNet's last stage and DenseNet's
//! last block at batch 1.
//!
//! There the products are narrow (`[c_out × c_in] · [c_in × 16]`) and the transformed kernel
//! `U` is large (16·c_in·c_out floats: 16 MB for ResNet's 512-channel layers, read once per
//! pass), so the pass is a read of `U` from memory. gemm reads its `U_e` as six strided
//! streams (it packs neither operand at this shape) and reached 7.4 GB/s here (AMD EPYC,
//! Zen 4, one thread), where a linear read reaches 20 GB/s: 2.2 ms per 512-channel layer.
//! This kernel keeps `U` packed so that each product reads it as one linear stream
//! (prefetched 4 KB ahead), the 16 tiles in the lanes of one vector and 16 output channels
//! in registers: 1.3 ms (1.7× gemm; 2.8× on DenseNet's 128 → 32), the same sums in the same
//! order as gemm's (equal bits in that benchmark). With AVX2 + FMA (16 registers of 8 lanes)
//! the 16 tiles take two vectors and a pass keeps 4 of the block's channels. Elsewhere gemm
//! runs.

#[cfg(target_arch = "x86_64")]
use super::direct;

/// Output channels a block of the packed kernel holds (and the kernel keeps in registers).
const BLOCK: usize = 16;
/// Most tiles taken: one vector's lanes.
pub(super) const MAX_TILES: usize = 16;

/// Whether [`product`] runs the products of `c_out` output channels over `tiles` tiles on
/// this CPU.
pub(super) fn applies(c_out: usize, tiles: usize) -> bool {
    let shape = c_out.is_multiple_of(BLOCK) && (1..=MAX_TILES).contains(&tiles);
    #[cfg(target_arch = "x86_64")]
    {
        shape && direct::isa().is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = shape;
        false
    }
}

/// The transformed kernel `u` (sixteen row-major `[c_out, c_in]` matrices) packed for
/// [`product`]: each matrix as blocks of [`BLOCK`] output channels, a block's values
/// channel-interleaved (`[c_out / 16, c_in, 16]`), so that a block is read front to back.
pub(super) fn pack(u: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert!(c_out.is_multiple_of(BLOCK) && u.len().is_multiple_of(c_out * c_in));
    u.chunks_exact(c_out * c_in)
        .flat_map(|matrix| super::packed::interleave(matrix, c_out, c_in, BLOCK))
        .collect()
}

/// `m = u · v` for one product: `u` one matrix of [`pack`]'s result (`c_out × c_in`), `v`'s
/// row `ci` at `v[ci · v_stride..][..tiles]`, `m` row-major `[c_out, tiles]`. Only where
/// [`applies`] said so.
pub(super) fn product(
    u: &[f32],
    v: &[f32],
    v_stride: usize,
    (c_out, c_in, tiles): (usize, usize, usize),
    m: &mut [f32],
) {
    assert!(
        applies(c_out, tiles),
        "narrow::product on a shape it does not take"
    );
    assert!(u.len() >= c_out * c_in && m.len() >= c_out * tiles);
    assert!(c_in > 0 && v.len() >= (c_in - 1) * v_stride + tiles);
    #[cfg(target_arch = "x86_64")]
    match direct::isa() {
        // SAFETY: `isa()` found AVX-512F on this CPU; the extents were asserted above.
        Some(direct::Isa::Avx512) => unsafe { product512(u, v, v_stride, (c_out, c_in, tiles), m) },
        // SAFETY: `isa()` found AVX2 and FMA on this CPU; the extents were asserted above.
        Some(direct::Isa::Avx2) => unsafe { product256(u, v, v_stride, (c_out, c_in, tiles), m) },
        None => unreachable!("applies() checked isa()"),
    }
}

/// How far ahead of the multiply-adds a block is prefetched, in floats (4 KB: 1 KB and no
/// prefetch ran 5% and 17% slower with AVX-512).
#[cfg(target_arch = "x86_64")]
const AHEAD: usize = 1024;

/// [`product`] with AVX2 and FMA: each block in four passes of 4 channels × 2 vectors of 8
/// tiles (8 accumulators, the 2 vectors of `v` and a broadcast: 11 of the 16 registers); the
/// first pass reads the block from memory, the others from cache.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn product256(
    u: &[f32],
    v: &[f32],
    v_stride: usize,
    (c_out, c_in, tiles): (usize, usize, usize),
    m: &mut [f32],
) {
    use std::arch::x86_64::*;
    const ROWS: usize = 4;
    let lanes = |first: usize| {
        let on = |i: i32| if (first + i as usize) < tiles { -1 } else { 0 };
        _mm256_setr_epi32(on(0), on(1), on(2), on(3), on(4), on(5), on(6), on(7))
    };
    let (mask0, mask1) = (lanes(0), lanes(8));
    for (b, block) in u[..c_out * c_in].chunks_exact(c_in * BLOCK).enumerate() {
        let w = block.as_ptr();
        for pass in 0..BLOCK / ROWS {
            let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
            for ci in 0..c_in {
                // SAFETY: row `ci` of `v` holds `tiles` values from `ci · v_stride` (asserted
                // by the caller); masked lanes are not read (the second vector's address may
                // lie past `v` when `tiles ≤ 8`: its mask is then empty). `w` reads value
                // `ci · 16 + pass · 4 + r < c_in · 16` of the block. A prefetch does not fault.
                unsafe {
                    if pass == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(ci * BLOCK + AHEAD).cast());
                    }
                    let row = v.as_ptr().add(ci * v_stride);
                    let x0 = _mm256_maskload_ps(row, mask0);
                    let x1 = _mm256_maskload_ps(row.wrapping_add(8), mask1);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let u = _mm256_broadcast_ss(&*w.add(ci * BLOCK + pass * ROWS + r));
                        acc[0] = _mm256_fmadd_ps(u, x0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(u, x1, acc[1]);
                    }
                }
            }
            for (r, acc) in acc.into_iter().enumerate() {
                let co = b * BLOCK + pass * ROWS + r;
                // SAFETY: row `co < c_out` of `m` holds `tiles` values (asserted by the
                // caller); masked lanes are not written (the second vector's address may lie
                // past `m` when `tiles ≤ 8`: its mask is then empty).
                unsafe {
                    let row = m.as_mut_ptr().add(co * tiles);
                    _mm256_maskstore_ps(row, mask0, acc[0]);
                    _mm256_maskstore_ps(row.wrapping_add(8), mask1, acc[1]);
                }
            }
        }
    }
}

/// [`product`] with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn product512(
    u: &[f32],
    v: &[f32],
    v_stride: usize,
    (c_out, c_in, tiles): (usize, usize, usize),
    m: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mask = ((1u32 << tiles) - 1) as __mmask16;
    for (b, block) in u[..c_out * c_in].chunks_exact(c_in * BLOCK).enumerate() {
        let mut acc = [_mm512_setzero_ps(); BLOCK];
        let w = block.as_ptr();
        for ci in 0..c_in {
            // SAFETY: row `ci` of `v` holds `tiles` values from `ci · v_stride` (asserted by
            // the caller); lanes past `tiles` are masked and not read. `w` reads value
            // `ci · 16 + r < c_in · 16` of the block. A prefetch does not fault.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(ci * BLOCK + AHEAD).cast());
                let x = _mm512_maskz_loadu_ps(mask, v.as_ptr().add(ci * v_stride));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(ci * BLOCK + r)), x, *acc);
                }
            }
        }
        for (r, acc) in acc.into_iter().enumerate() {
            // SAFETY: row `b · 16 + r < c_out` of `m` holds `tiles` values (asserted by the
            // caller); lanes past `tiles` are masked and not written.
            unsafe {
                _mm512_mask_storeu_ps(m.as_mut_ptr().add((b * BLOCK + r) * tiles), mask, acc)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Kernel = fn(&[f32], &[f32], usize, (usize, usize, usize), &mut [f32]);

    /// The kernels this CPU can run, whatever `MTPATH_SIMD` picks: both instruction sets
    /// are checked where both exist.
    fn kernels() -> Vec<(&'static str, Kernel)> {
        let mut found: Vec<(&'static str, Kernel)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                found.push(("avx512", |u, v, s, dims, m| unsafe {
                    product512(u, v, s, dims, m)
                }));
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                found.push(("avx2", |u, v, s, dims, m| unsafe {
                    product256(u, v, s, dims, m)
                }));
            }
        }
        found
    }

    /// Each kernel equals the plain sums bit for bit (same order) over shapes of one and
    /// several blocks, full and partial vectors of tiles (16, 9, 7, 1), and rows of `v`
    /// wider than the tiles.
    #[test]
    fn product_equals_the_plain_sums() {
        let kernels = kernels();
        if kernels.is_empty() {
            eprintln!("skipped: no narrow kernel runs here");
            return;
        }
        let shapes = [
            (16, 3, 16, 16),
            (32, 40, 7, 100),
            (48, 129, 1, 5),
            (16, 8, 9, 9),
        ];
        for (name, kernel) in kernels {
            for (c_out, c_in, tiles, stride) in shapes {
                let u: Vec<f32> = (0..2 * c_out * c_in)
                    .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5)
                    .collect();
                let v: Vec<f32> = (0..(c_in - 1) * stride + tiles)
                    .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                    .collect();
                let packed = pack(&u, c_out, c_in);
                for e in 0..2 {
                    let u_e = &u[e * c_out * c_in..][..c_out * c_in];
                    let mut m = vec![f32::NAN; c_out * tiles];
                    let dims = (c_out, c_in, tiles);
                    kernel(&packed[e * c_out * c_in..], &v, stride, dims, &mut m);
                    for co in 0..c_out {
                        for t in 0..tiles {
                            let want = (0..c_in).fold(0.0f32, |s, ci| {
                                u_e[co * c_in + ci].mul_add(v[ci * stride + t], s)
                            });
                            let got = m[co * tiles + t];
                            assert_eq!(got, want, "{name} {c_out}×{c_in}×{tiles} ({co}, {t})");
                        }
                    }
                }
            }
        }
    }
}
