//! Device-memory accounting shared by the launchers: bytes held now, the peak since the last
//! reset (what `gradcam bench` reports), and an optional cap (the emulator's stand-in for a
//! full GPU, so batch splitting is tested without one).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

#[derive(Debug, Default)]
pub struct MemCounter {
    now: AtomicUsize,
    peak: AtomicUsize,
    limit: Option<usize>,
}

impl MemCounter {
    pub fn with_limit(limit: Option<usize>) -> Arc<Self> {
        Arc::new(MemCounter {
            limit,
            ..Default::default()
        })
    }

    /// Books `bytes` before an allocation; fails like a full device past the cap.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Held> {
        let now = self.now.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if let Some(limit) = self.limit {
            if now > limit {
                self.now.fetch_sub(bytes, Ordering::SeqCst);
                return Err(Error::OutOfMemory(format!(
                    "{bytes} bytes asked for, {} held, cap {limit}",
                    now - bytes
                )));
            }
        }
        self.peak.fetch_max(now, Ordering::SeqCst);
        Ok(Held {
            counter: self.clone(),
            bytes,
        })
    }

    pub fn in_use(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    /// Starts a new peak from what is held now.
    pub fn reset_peak(&self) {
        self.peak.store(self.in_use(), Ordering::SeqCst);
    }
}

/// Bytes booked against a [`MemCounter`], given back when the buffer holding it drops.
#[derive(Debug)]
pub struct Held {
    counter: Arc<MemCounter>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.now.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// f32s as the bytes a device buffer holds.
pub fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialised bytes; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// f32s as bytes to download into.
pub fn f32_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above, and every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}
