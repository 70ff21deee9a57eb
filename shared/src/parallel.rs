//! The one home for how work is spread over threads: how many the kernels split their loops
//! over, and running a forward pass inside the pool that does the splitting.
//!
//! Natively and in the browser's threaded module (built with atomics; wasm-bindgen-rayon's
//! `initThreadPool` starts the pool from JavaScript) that is rayon's pool; the single-threaded
//! browser module has one thread and no pool.

/// Threads the kernels split their work over: the size of the rayon pool the caller runs in
/// (natively the global one, sized by `RAYON_NUM_THREADS` or the core count, as candle's own
/// kernels are), or 1 in the single-threaded browser module.
pub fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        1
    }
}

/// Runs `f` on a thread of rayon's pool: natively, and in the browser's threaded module
/// (`f` itself in the single-threaded one). A network's forward pass started outside the
/// pool hands each of its parallel loops (several per convolution) to the pool and waits,
/// the pool's threads woken for every one; started inside, the loops split their work
/// among threads already running and the calling thread takes its own share. Inside the
/// pool already, `f` runs where it is.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        rayon::scope(|_| f())
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_pool_runs_on_a_pool_thread_and_returns_the_value() {
        let (value, index) = on_pool(|| (41 + 1, rayon::current_thread_index()));
        assert_eq!(value, 42);
        assert!(index.is_some(), "f did not run on a pool thread");
        assert!(threads() >= 1);
    }
}
