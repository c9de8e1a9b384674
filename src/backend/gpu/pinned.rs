//! One page-locked host buffer that large host↔device copies go through (a batch of image
//! bytes up, its overlays down): the DMA engine reads and writes page-locked memory directly,
//! where a copy from ordinary memory is staged by the driver in small pieces at a fraction of
//! the speed. `GRADCAM_PINNED=0` turns it off (plain copies), for comparison.

use std::sync::{Arc, Mutex};

use cudarc::driver::{result, CudaContext};

/// Copies smaller than this go the plain way (not worth the extra host copy).
pub const PINNED_MIN: usize = 1 << 20;

pub struct Staging {
    ctx: Arc<CudaContext>,
    buf: Mutex<Option<(*mut u8, usize)>>,
    on: bool,
}

// SAFETY: the raw buffer is only touched under the mutex, by one copy at a time.
unsafe impl Send for Staging {}
unsafe impl Sync for Staging {}

impl Staging {
    pub fn new(ctx: Arc<CudaContext>) -> Self {
        let on = std::env::var("GRADCAM_PINNED").map_or(true, |v| v != "0");
        Staging {
            ctx,
            buf: Mutex::new(None),
            on,
        }
    }

    /// Runs `f` on `len` bytes of page-locked memory (grown as needed, kept for the next copy);
    /// None when staging is off, the copy is small, or no page-locked memory could be had, and
    /// the caller copies the plain way.
    pub fn with<R>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.on || len < PINNED_MIN {
            return None;
        }
        // A panic inside `f` leaves the buffer as it was: take the lock back.
        let mut guard = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none_or(|(_, cap)| cap < len) {
            if let Some((ptr, _)) = guard.take() {
                // SAFETY: allocated by malloc_host below; no copy is in flight (each use
                // synchronises before it returns).
                unsafe { free(&self.ctx, ptr) };
            }
            // Room for batches a little larger than this one without another allocation.
            let cap = len.next_power_of_two();
            self.ctx.bind_to_thread().ok()?;
            // SAFETY: a plain allocation of `cap` bytes; flags 0 = cached, readable by the CPU.
            let ptr = unsafe { result::malloc_host(cap, 0) }.ok()? as *mut u8;
            // SAFETY: `cap` bytes just allocated; written once so no byte is ever uninitialised.
            unsafe { std::ptr::write_bytes(ptr, 0, cap) };
            *guard = Some((ptr, cap));
        }
        let (ptr, _) = guard.expect("allocated above");
        // SAFETY: `ptr` holds at least `len` bytes, and the mutex makes this the only view.
        let host = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        Some(f(host))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut g = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ptr, _)) = g.take() {
            // SAFETY: allocated by malloc_host; nothing uses it any more.
            unsafe { free(&self.ctx, ptr) };
        }
    }
}

/// # Safety
/// `ptr` came from `malloc_host` in `ctx` and is no longer in use.
unsafe fn free(ctx: &CudaContext, ptr: *mut u8) {
    if ctx.bind_to_thread().is_ok() {
        // SAFETY: forwarded from the caller. A failure only leaks the buffer.
        let _ = unsafe { result::free_host(ptr as *mut std::ffi::c_void) };
    }
}
