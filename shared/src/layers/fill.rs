//! Output buffers zero-filled by the threads that then write them.
//!
//! `vec![0.0; n]` zeroes the whole buffer on the calling thread before any kernel runs: for
//! the 25 MB activations of a training step that is a serial pass through memory while the
//! other threads wait, and the kernel then writes the same memory again once it has left
//! the cache. Here each piece is zeroed by the thread that fills it, right before it does, so
//! the zero pass is parallel and the kernel's writes hit the cache.

use candle_core::WithDType;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements zeroed per parallel task by [`par_zeros`] (256 KiB of f32).
const ZERO_CHUNK: usize = 1 << 16;

/// A `len`-element vector of zeros, zeroed in parallel.
pub(crate) fn par_zeros<T: WithDType>(len: usize) -> Vec<T> {
    par_chunks_zeroed(len, ZERO_CHUNK, |_, _| {})
}

/// A `len`-element vector cut into consecutive `chunk`-element pieces (the last may be
/// shorter); each piece is set to `T::zero()` and then handed to `fill(index, piece)`, all
/// pieces in parallel. `fill` sees initialised memory and may write or accumulate into it.
pub(crate) fn par_chunks_zeroed<T: WithDType>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, piece)| {
            for e in piece.iter_mut() {
                e.write(T::zero());
            }
            // SAFETY: every element of `piece` was initialised just above, and
            // `MaybeUninit<T>` has the layout of `T`.
            let piece = unsafe { &mut *(piece as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(i, piece);
        });
    // SAFETY: the pieces partition `0..len` and each was initialised above (a panic in
    // `fill` propagates before this line, leaving the vector empty).
    unsafe { v.set_len(len) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_cover_every_length_and_chunk() {
        for len in [0, 1, 7, ZERO_CHUNK - 1, ZERO_CHUNK, 3 * ZERO_CHUNK + 5] {
            let v: Vec<f32> = par_zeros(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn pieces_are_indexed_in_order_and_start_zeroed() {
        let v: Vec<u32> = par_chunks_zeroed(10, 3, |i, piece| {
            assert!(piece.iter().all(|&x| x == 0));
            for (j, e) in piece.iter_mut().enumerate() {
                *e += (i * 3 + j) as u32;
            }
        });
        assert_eq!(v, (0..10).collect::<Vec<u32>>());
    }
}
