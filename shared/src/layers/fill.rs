//! Output buffers zero-filled by the threads that then write them, or left uninitialised for
//! writers that set every element.
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

/// A `len`-element output buffer left uninitialised, for writers that set every element:
/// each piece goes through [`init_zeroed`], [`init_copy`] or [`assume_init`] as it is
/// written, and the whole through [`assume_init_vec`] at the end. Zeroing the output in a
/// pass of its own (as [`par_zeros`] does) was a write through memory the writer then
/// repeated: ResNet-50 at batch 32 spent 3.5% of its pass in that memset, and Winograd's
/// layers paid one more parallel loop per convolution at batch 1 (a single sample through
/// gemm keeps one, [`par_init_zeroed`], so that both threads share its zeroing).
pub(crate) fn uninit<T>(len: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`, and `MaybeUninit` elements need no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// `piece` set to zeros and seen as initialised: for a writer that needs a `&mut [T]`, right
/// before it writes (the zeros go to cache, not through memory in a pass of their own).
pub(crate) fn init_zeroed<T: WithDType>(piece: &mut [MaybeUninit<T>]) -> &mut [T] {
    for e in piece.iter_mut() {
        e.write(T::zero());
    }
    // SAFETY: every element was written just above; `MaybeUninit<T>` has `T`'s layout.
    unsafe { assume_init(piece) }
}

/// [`init_zeroed`] split over the thread pool in pieces of [`ZERO_CHUNK`] elements, for one
/// sample's output when the kernels that write it run on every thread.
pub(crate) fn par_init_zeroed<T: WithDType>(piece: &mut [MaybeUninit<T>]) -> &mut [T] {
    piece.par_chunks_mut(ZERO_CHUNK).for_each(|part| {
        init_zeroed(part);
    });
    // SAFETY: the chunks cover `piece`, and each was written by `init_zeroed`.
    unsafe { assume_init(piece) }
}

/// `piece` set to a copy of `src` (same length) and seen as initialised.
pub(crate) fn init_copy<'a, T: Copy>(piece: &'a mut [MaybeUninit<T>], src: &[T]) -> &'a mut [T] {
    assert_eq!(piece.len(), src.len(), "init_copy: lengths differ");
    for (e, &v) in piece.iter_mut().zip(src) {
        e.write(v);
    }
    // SAFETY: every element was written just above (the lengths are equal).
    unsafe { assume_init(piece) }
}

/// `piece` seen as initialised.
///
/// # Safety
/// Every element of `piece` must have been written (by a kernel through a raw pointer, say).
pub(crate) unsafe fn assume_init<T>(piece: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: the caller guarantees every element is initialised, and `MaybeUninit<T>` has
    // the layout of `T`.
    unsafe { &mut *(piece as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `v` seen as initialised, without a copy.
///
/// # Safety
/// Every element of `v` must have been written.
pub(crate) unsafe fn assume_init_vec<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: the allocation is `v`'s own (not dropped: ManuallyDrop), with the same
    // allocator, layout (`MaybeUninit<T>` is `T`'s), length and capacity; the caller
    // guarantees every element is initialised.
    unsafe { Vec::from_raw_parts(ptr.cast::<T>(), len, cap) }
}

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
    let mut v = uninit(len);
    v.par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, piece)| fill(i, init_zeroed(piece)));
    // SAFETY: the pieces partition `0..len` and `init_zeroed` wrote each before `fill` saw it
    // (a panic in `fill` propagates before this line and drops `MaybeUninit`s, reading none).
    unsafe { assume_init_vec(v) }
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
    fn uninit_pieces_become_the_values_written() {
        let mut v = uninit::<f32>(10);
        let (a, rest) = v.split_at_mut(3);
        let (b, c) = rest.split_at_mut(4);
        assert_eq!(init_zeroed(a), &[0.0; 3]);
        let mut big = uninit::<f32>(2 * ZERO_CHUNK + 3);
        assert!(par_init_zeroed(&mut big).iter().all(|&x| x == 0.0));
        assert_eq!(init_copy(b, &[1.0, 2.0, 3.0, 4.0]), &[1.0, 2.0, 3.0, 4.0]);
        for (i, e) in c.iter_mut().enumerate() {
            e.write(5.0 + i as f32);
        }
        // SAFETY: the three pieces cover the vector and each was written above.
        let v = unsafe { assume_init_vec(v) };
        assert_eq!(v, [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert!(uninit::<f32>(0).is_empty());
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn init_copy_refuses_a_shorter_source() {
        init_copy(&mut uninit::<f32>(3), &[1.0, 2.0]);
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
