//! A deterministic byte mutator in the spirit of libFuzzer's and AFL's havoc stage.

use crate::rng::SplitMix64;

/// The mutator's random choices: the workspace's one generator ([`SplitMix64`]) with the two
/// draws a mutator needs; the same seed gives the same inputs.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.0.below_mod(n as u64) as usize
        }
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Values that tend to sit on boundaries: lengths, counts, sizes, signs.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    15,
    16,
    31,
    32,
    63,
    64,
    127,
    128,
    255,
    256,
    511,
    512,
    1000,
    1024,
    4095,
    4096,
    30_000,
    32_767,
    32_768,
    65_535,
    65_536,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

/// Mutates inputs drawn from a corpus; the dictionary holds format tokens (markers, keys,
/// punctuation) that byte-level changes rarely produce.
#[derive(Debug, Clone)]
pub struct Mutator {
    rng: Rng,
    dict: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    /// A mutator with its seed, dictionary and the largest input it produces.
    pub fn new(seed: u64, dict: &[&[u8]], max_len: usize) -> Self {
        Mutator {
            rng: Rng::new(seed),
            dict: dict.iter().map(|t| t.to_vec()).collect(),
            max_len: max_len.max(1),
        }
    }

    /// The generator, for callers that draw their own choices.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Replace `out` with a mutant of a corpus entry (1 to 16 stacked mutations, fewer being
    /// likelier); `corpus` must not be empty.
    pub fn mutate(&mut self, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&corpus[self.rng.below(corpus.len())]);
        let rounds = 1 << self.rng.below(5);
        for _ in 0..self.rng.below(rounds) + 1 {
            self.mutate_once(corpus, out);
        }
        out.truncate(self.max_len);
    }

    fn pos(&mut self, v: &[u8]) -> usize {
        self.rng.below(v.len())
    }

    /// A position biased to the start (headers), half the time within the first 64 bytes.
    fn head_or_any(&mut self, v: &[u8]) -> usize {
        if self.rng.one_in(2) {
            self.rng.below(v.len().min(64))
        } else {
            self.pos(v)
        }
    }

    fn mutate_once(&mut self, corpus: &[Vec<u8>], v: &mut Vec<u8>) {
        if v.is_empty() {
            let n = self.rng.below(16) + 1;
            v.extend((0..n).map(|_| self.rng.next_u64() as u8));
            return;
        }
        match self.rng.below(13) {
            0 => {
                let p = self.head_or_any(v);
                v[p] ^= 1 << self.rng.below(8);
            }
            1 => {
                let p = self.head_or_any(v);
                v[p] = self.rng.next_u64() as u8;
            }
            2 => {
                // Small arithmetic on a byte.
                let p = self.head_or_any(v);
                let d = self.rng.below(35) as u8 + 1;
                v[p] = if self.rng.one_in(2) {
                    v[p].wrapping_add(d)
                } else {
                    v[p].wrapping_sub(d)
                };
            }
            3 => {
                // An interesting value of 1, 2, 4 or 8 bytes, either endianness.
                let width = 1 << self.rng.below(4);
                let val = INTERESTING[self.rng.below(INTERESTING.len())];
                let val = if self.rng.one_in(4) {
                    val.wrapping_neg()
                } else {
                    val
                };
                let bytes = if self.rng.one_in(2) {
                    val.to_be_bytes()[8 - width..].to_vec()
                } else {
                    val.to_le_bytes()[..width].to_vec()
                };
                let p = self.head_or_any(v);
                overwrite(v, p, &bytes);
            }
            4 => {
                let p = self.rng.below(v.len() + 1);
                let n = self.rng.below(16) + 1;
                let fill: Vec<u8> = if self.rng.one_in(2) {
                    vec![self.rng.next_u64() as u8; n]
                } else {
                    (0..n).map(|_| self.rng.next_u64() as u8).collect()
                };
                v.splice(p..p, fill);
            }
            5 => {
                let p = self.pos(v);
                let n = (self.rng.below(32) + 1).min(v.len() - p);
                v.drain(p..p + n);
            }
            6 => {
                // Duplicate or move a block within the input.
                let from = self.pos(v);
                let n = (self.rng.below(64) + 1).min(v.len() - from);
                let block = v[from..from + n].to_vec();
                let to = self.rng.below(v.len() + 1);
                if self.rng.one_in(2) {
                    v.splice(to..to, block);
                } else {
                    overwrite(v, to.min(v.len() - 1), &block);
                }
            }
            7 => {
                let n = self.rng.below(v.len());
                v.truncate(n);
            }
            8 => {
                // Splice: our prefix, another entry's suffix.
                let other = &corpus[self.rng.below(corpus.len())];
                let cut = self.rng.below(v.len() + 1);
                let from = self.rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            9 => {
                // Copy a block of another entry over ours.
                let other = &corpus[self.rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = self.rng.below(other.len());
                    let n = (self.rng.below(64) + 1).min(other.len() - from);
                    let to = self.pos(v);
                    overwrite(v, to, &other[from..from + n]);
                }
            }
            10 | 11 if !self.dict.is_empty() => {
                let token = self.dict[self.rng.below(self.dict.len())].clone();
                let p = self.rng.below(v.len() + 1);
                if self.rng.one_in(2) {
                    v.splice(p..p, token);
                } else {
                    overwrite(v, p.min(v.len() - 1), &token);
                }
            }
            _ => {
                // Repeat a block many times (long runs, deep nesting, many rows).
                let from = self.pos(v);
                let n = (self.rng.below(8) + 1).min(v.len() - from);
                let block = v[from..from + n].to_vec();
                let times = 1 << self.rng.below(10);
                let rep: Vec<u8> = block.iter().copied().cycle().take(n * times).collect();
                v.splice(from..from, rep);
            }
        }
        v.truncate(self.max_len);
    }
}

/// Write `bytes` at `at`, growing `v` if they run past its end.
fn overwrite(v: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let end = at + bytes.len();
    if end > v.len() {
        v.resize(end, 0);
    }
    v[at..end].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_is_deterministic_and_bounded() {
        let corpus = vec![b"hello, world".to_vec(), vec![0xFF, 0xD8, 0xFF, 0xD9]];
        let run = |seed| {
            let mut m = Mutator::new(seed, &[b"\xFF\xDA"], 40);
            let mut out = Vec::new();
            (0..500)
                .map(|_| {
                    m.mutate(&corpus, &mut out);
                    assert!(out.len() <= 40);
                    out.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        // Mutants differ from their sources most of the time.
        let changed = run(5).iter().filter(|v| !corpus.contains(v)).count();
        assert!(changed > 400, "{changed}");
    }
}
