//! A counter-based random number generator: SplitMix64 keyed by a hash of integers.
//!
//! Every random draw of the pipeline comes from an [`Rng`] built from a key such as
//! `(seed, iteration, slot)`, so a draw depends only on that key, never on the order in which
//! batches are produced, on the thread count or on earlier draws. Only integer arithmetic is
//! involved, so the streams are identical on every platform. The generator itself is
//! [`mtpath_shared::rng::SplitMix64`]; this module adds the keying and the trainer's draws.

use mtpath_shared::rng::{mix64, SplitMix64, GOLDEN};

/// Hash a sequence of integers to one `u64` (order matters; length is mixed in).
pub fn hash(words: &[u64]) -> u64 {
    let mut h = 0x6A09_E667_F3BC_C909 ^ (words.len() as u64).wrapping_mul(GOLDEN);
    for &w in words {
        h = mix64(h.wrapping_add(GOLDEN) ^ mix64(w.wrapping_add(GOLDEN)));
    }
    h
}

/// A SplitMix64 generator keyed by integers, with the trainer's draws.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator whose stream is a function of `key` only.
    pub fn new(key: u64) -> Self {
        Self(SplitMix64::new(key))
    }

    /// A generator keyed by `hash(words)`.
    pub fn keyed(words: &[u64]) -> Self {
        Self::new(hash(words))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        self.0.unit_f64()
    }

    /// Uniform in `[lo, hi)` (`lo` when the interval is empty).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit_f64()
    }

    /// Uniform integer in `0..n` (`n > 0`), by multiply-shift (bias below `n / 2^64`).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit_f64() < p
    }
}

/// A pseudo-random permutation of `0..n` keyed by `key`, evaluated at one position in O(1)
/// expected time: a 4-round Feistel network on the smallest even-bit power of two `>= n`, with
/// cycle walking to stay inside `0..n`. `permute(i, n, key)` for `i` in `0..n` visits every
/// value of `0..n` exactly once.
pub fn permute(index: u64, n: u64, key: u64) -> u64 {
    assert!(index < n, "permute: index {index} out of 0..{n}");
    if n <= 1 {
        return index;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2);
    let mask = (1u64 << half) - 1;
    let mut x = index;
    loop {
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f = hash(&[key, round, r]) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << half) | r;
        if x < n {
            return x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_a_bijection() {
        for n in [1u64, 2, 3, 5, 16, 17, 100, 255, 256, 257, 1000] {
            for key in 0..4 {
                let mut seen = vec![false; n as usize];
                for i in 0..n {
                    let p = permute(i, n, key) as usize;
                    assert!(!seen[p], "n={n} key={key}: {p} twice");
                    seen[p] = true;
                }
            }
        }
    }

    #[test]
    fn below_and_unit_in_range() {
        let mut r = Rng::keyed(&[1, 2, 3]);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            let u = r.unit_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
