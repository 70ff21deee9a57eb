//! The tracking allocator: the system allocator plus, on threads the harness has armed, the
//! size of the largest single request. A request above [`ABSURD_BYTES`] on an armed thread is
//! refused (which aborts the process, as any failed allocation does) after the harness has
//! saved the input that caused it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Requests above this size (2 GiB) are absurd for every parser fuzzed here (the image
/// decoders' own cap is 1 GiB): the input is saved and the allocation refused.
pub const ABSURD_BYTES: usize = 2 << 30;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// The system allocator with per-thread tracking; install it in a fuzz test binary with
/// `#[global_allocator] static A: TrackingAlloc = TrackingAlloc;`. Without it the harness
/// runs all the same but cannot see allocation sizes.
pub struct TrackingAlloc;

/// Start tracking this thread's allocations (resets the largest request seen).
pub(crate) fn arm() {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
}

/// Stop tracking; returns the largest single request since [`arm`].
pub(crate) fn disarm() -> usize {
    ARMED.with(|a| a.set(false));
    LARGEST.with(|l| l.get())
}

/// Record a request; false if it must be refused.
fn note(size: usize) -> bool {
    let armed = ARMED.try_with(|a| a.get()).unwrap_or(false);
    if !armed || IN_HOOK.try_with(|h| h.get()).unwrap_or(true) {
        return true;
    }
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    if size <= ABSURD_BYTES {
        return true;
    }
    // Save the input before the process dies; allocations inside the hook are not tracked.
    let _ = IN_HOOK.try_with(|h| h.set(true));
    super::harness::save_current_input("absurd-alloc", &format!("{size} bytes requested"));
    let _ = IN_HOOK.try_with(|h| h.set(false));
    false
}

// SAFETY: every call is forwarded to `System` unchanged, except absurd requests on armed
// threads, which return null as a failed allocation does.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}
