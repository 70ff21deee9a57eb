//! The accurate integer inverse DCT (`jidctint.c`: `jpeg_idct_islow`).

use super::frame::Component;

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

#[inline]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1i64 << (n - 1))) >> n
}

/// The post-IDCT range limit: `range_limit[x & RANGE_MASK]` of jdmaster.c's table, with
/// `range_limit` pointing at `sample_range_limit + CENTERJSAMPLE`.
#[inline]
fn idct_limit(x: i64) -> u8 {
    let i = (x as i32 & 1023) as usize;
    if i < 128 {
        (i + 128) as u8
    } else if i < 512 {
        255
    } else if i < 896 {
        0
    } else {
        (i - 896) as u8
    }
}

/// Odd part shared by both passes: returns (tmp0, tmp1, tmp2, tmp3).
#[inline]
fn odd_part(t0: i64, t1: i64, t2: i64, t3: i64) -> (i64, i64, i64, i64) {
    let mut z1 = t0 + t3;
    let mut z2 = t1 + t2;
    let mut z3 = t0 + t2;
    let mut z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    let mut tmp0 = t0 * FIX_0_298631336;
    let mut tmp1 = t1 * FIX_2_053119869;
    let mut tmp2 = t2 * FIX_3_072711026;
    let mut tmp3 = t3 * FIX_1_501321110;
    z1 *= -FIX_0_899976223;
    z2 *= -FIX_2_562915447;
    z3 *= -FIX_1_961570560;
    z4 *= -FIX_0_390180644;
    z3 += z5;
    z4 += z5;
    tmp0 += z1 + z3;
    tmp1 += z2 + z4;
    tmp2 += z2 + z3;
    tmp3 += z1 + z4;
    (tmp0, tmp1, tmp2, tmp3)
}

fn idct_islow(coef: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let q = |row: usize| i64::from(coef[row * 8 + col]) * i64::from(quant[row * 8 + col]);
        if (1..8).all(|row| coef[row * 8 + col] == 0) {
            let dc = (q(0) << PASS1_BITS) as i32;
            for row in 0..8 {
                ws[row * 8 + col] = dc;
            }
            continue;
        }
        let z2 = q(2);
        let z3 = q(6);
        let z1 = (z2 + z3) * FIX_0_541196100;
        let tmp2 = z1 + z3 * -FIX_1_847759065;
        let tmp3 = z1 + z2 * FIX_0_765366865;
        let z2 = q(0);
        let z3 = q(4);
        let tmp0 = (z2 + z3) << CONST_BITS;
        let tmp1 = (z2 - z3) << CONST_BITS;
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        let (o0, o1, o2, o3) = odd_part(q(7), q(5), q(3), q(1));
        let n = CONST_BITS - PASS1_BITS;
        ws[col] = descale(tmp10 + o3, n) as i32;
        ws[8 + col] = descale(tmp11 + o2, n) as i32;
        ws[16 + col] = descale(tmp12 + o1, n) as i32;
        ws[24 + col] = descale(tmp13 + o0, n) as i32;
        ws[32 + col] = descale(tmp13 - o0, n) as i32;
        ws[40 + col] = descale(tmp12 - o1, n) as i32;
        ws[48 + col] = descale(tmp11 - o2, n) as i32;
        ws[56 + col] = descale(tmp10 - o3, n) as i32;
    }
    for row in 0..8 {
        let w = &ws[row * 8..row * 8 + 8];
        let o = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&x| x == 0) {
            let v = idct_limit(descale(i64::from(w[0]), PASS1_BITS + 3));
            o.fill(v);
            continue;
        }
        let z2 = i64::from(w[2]);
        let z3 = i64::from(w[6]);
        let z1 = (z2 + z3) * FIX_0_541196100;
        let tmp0 = (i64::from(w[0]) + i64::from(w[4])) << CONST_BITS;
        let tmp3 = z1 + z2 * FIX_0_765366865;
        let tmp1 = (i64::from(w[0]) - i64::from(w[4])) << CONST_BITS;
        let tmp2 = z1 + z3 * -FIX_1_847759065;
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        let (o0, o1, o2, o3) = odd_part(
            i64::from(w[7]),
            i64::from(w[5]),
            i64::from(w[3]),
            i64::from(w[1]),
        );
        let n = CONST_BITS + PASS1_BITS + 3;
        o[0] = idct_limit(descale(tmp10 + o3, n));
        o[1] = idct_limit(descale(tmp11 + o2, n));
        o[2] = idct_limit(descale(tmp12 + o1, n));
        o[3] = idct_limit(descale(tmp13 + o0, n));
        o[4] = idct_limit(descale(tmp13 - o0, n));
        o[5] = idct_limit(descale(tmp12 - o1, n));
        o[6] = idct_limit(descale(tmp11 - o2, n));
        o[7] = idct_limit(descale(tmp10 - o3, n));
    }
}

/// IDCT a whole component into a plane of `bw * 8` by `bh * 8` samples.
pub(super) fn component_samples(c: &Component) -> Vec<u8> {
    let stride = c.bw * 8;
    let mut plane = vec![0u8; stride * c.bh * 8];
    let quant = c.quant.unwrap_or([0; 64]);
    for by in 0..c.bh {
        for bx in 0..c.bw {
            let off = (by * c.bw + bx) * 64;
            let coef = &c.coefs[off..off + 64];
            let start = by * 8 * stride + bx * 8;
            idct_islow(coef, &quant, &mut plane[start..], stride);
        }
    }
    plane
}
