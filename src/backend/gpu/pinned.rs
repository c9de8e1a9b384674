//! Page-locked host buffers that large host↔device copies go through (a batch of image bytes
//! up, its overlays down): the DMA engine reads and writes page-locked memory directly, where
//! a copy from ordinary memory is staged by the driver in small pieces at a fraction of the
//! speed. `GRADCAM_PINNED=0` turns them off (plain copies), for comparison.
//!
//! A small pool rather than one buffer, so copies need not wait for one another: an upload's
//! buffer goes back to the pool while the device still reads it, fenced by an event, and a
//! download can still be on its way to one buffer while the next batch fills another. The
//! bookkeeping is generic over [`HostMemory`], so it is tested without a GPU.

use std::sync::{Arc, Mutex};

use crate::Result;

/// Copies smaller than this go the plain way (not worth the extra host copy).
pub const PINNED_MIN: usize = 1 << 20;
/// Nor larger than this: page-locked memory is taken from the whole system, and full-size
/// photographs at batch 64 would ask for gigabytes of it.
pub const PINNED_MAX: usize = 1 << 30;
/// Free buffers kept for reuse; more go back to the system (the smallest first).
const KEEP: usize = 4;

/// Page-locked allocations and the fences that say when the device is done with one.
pub trait HostMemory: Send + Sync {
    /// Marks the point after which the device no longer touches a buffer.
    type Fence: Send;
    /// `bytes` of page-locked memory, or None when the system has none to give.
    fn alloc(&self, bytes: usize) -> Option<*mut u8>;
    /// # Safety
    /// `ptr` came from this memory's `alloc` of `bytes`, and nothing uses it any more.
    unsafe fn free(&self, ptr: *mut u8, bytes: usize);
    /// Blocks until the device has passed `fence`.
    fn wait(&self, fence: &Self::Fence) -> Result<()>;
}

struct Block<F> {
    ptr: *mut u8,
    cap: usize,
    /// The device may still read or write the block until this fence.
    busy: Option<F>,
}

pub struct PinnedPool<M: HostMemory> {
    mem: M,
    free: Mutex<Vec<Block<M::Fence>>>,
    on: bool,
}

// SAFETY: a block's memory is reached only through the pool's lock or the one lease holding it.
unsafe impl<M: HostMemory> Send for PinnedPool<M> {}
unsafe impl<M: HostMemory> Sync for PinnedPool<M> {}

impl<M: HostMemory> PinnedPool<M> {
    pub fn new(mem: M) -> Arc<Self> {
        let on = std::env::var("GRADCAM_PINNED").map_or(true, |v| v != "0");
        Self::with_switch(mem, on)
    }

    fn with_switch(mem: M, on: bool) -> Arc<Self> {
        Arc::new(PinnedPool {
            mem,
            free: Mutex::new(Vec::new()),
            on,
        })
    }

    /// A page-locked buffer of at least `len` bytes for the caller alone, once the device is
    /// done with it. None when the pool does not serve this copy (off, too small or too large,
    /// or no page-locked memory to be had), and the caller copies the plain way.
    pub fn lease(self: &Arc<Self>, len: usize) -> Option<Result<Lease<M>>> {
        if !self.on || !(PINNED_MIN..=PINNED_MAX).contains(&len) {
            return None;
        }
        let reused = {
            let mut free = self.lock();
            // The smallest block that holds `len`, so large ones stay for large copies.
            let best = (free.iter().enumerate())
                .filter(|(_, b)| b.cap >= len)
                .min_by_key(|(_, b)| b.cap)
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let mut block = match reused {
            Some(b) => b,
            None => {
                // Room for batches a little larger than this one without another allocation.
                let cap = len.next_power_of_two().min(PINNED_MAX);
                let ptr = self.mem.alloc(cap)?;
                // SAFETY: `cap` bytes just allocated; written once so no byte is ever
                // uninitialised.
                unsafe { std::ptr::write_bytes(ptr, 0, cap) };
                Block {
                    ptr,
                    cap,
                    busy: None,
                }
            }
        };
        if let Some(f) = block.busy.take() {
            if let Err(e) = self.mem.wait(&f) {
                // The device failed; whether it is done with the block is unknown: keep it
                // out of use (leaked) rather than risk a copy into freed memory.
                return Some(Err(e));
            }
        }
        Some(Ok(Lease {
            pool: self.clone(),
            block: Some(block),
            len,
        }))
    }

    /// Buffers held now (free ones; leases out are not counted). For tests.
    #[cfg(test)]
    fn kept(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.lock().iter().map(|b| b.cap).collect();
        v.sort();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Block<M::Fence>>> {
        // A panic elsewhere never leaves the list half-changed: take the lock back.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, block: Block<M::Fence>) {
        let evicted = {
            let mut free = self.lock();
            free.push(block);
            if free.len() > KEEP {
                let i = (free.iter().enumerate())
                    .min_by_key(|(_, b)| b.cap)
                    .map(|(i, _)| i)
                    .expect("more than KEEP blocks");
                Some(free.swap_remove(i))
            } else {
                None
            }
        };
        if let Some(b) = evicted {
            self.release(b);
        }
    }

    fn release(&self, b: Block<M::Fence>) {
        if let Some(f) = &b.busy {
            if self.mem.wait(f).is_err() {
                return; // unknown whether the device is done with it: leaked, not freed
            }
        }
        // SAFETY: allocated by `mem.alloc(cap)`; the device is past its fence.
        unsafe { self.mem.free(b.ptr, b.cap) };
    }
}

impl<M: HostMemory> Drop for PinnedPool<M> {
    fn drop(&mut self) {
        let blocks = std::mem::take(&mut *self.lock());
        for b in blocks {
            self.release(b);
        }
    }
}

/// One page-locked buffer, the caller's until dropped (then back to the pool).
pub struct Lease<M: HostMemory> {
    pool: Arc<PinnedPool<M>>,
    block: Option<Block<M::Fence>>,
    len: usize,
}

// SAFETY: the lease is the only holder of its block's memory.
unsafe impl<M: HostMemory> Send for Lease<M> {}

impl<M: HostMemory> Lease<M> {
    /// The `len` bytes asked for.
    pub fn bytes(&mut self) -> &mut [u8] {
        let b = self.block.as_ref().expect("held until drop");
        // SAFETY: the block holds at least `len` bytes and this lease is its only user.
        unsafe { std::slice::from_raw_parts_mut(b.ptr, self.len) }
    }

    /// Back to the pool, in use by the device until `fence`: the next lease of this buffer
    /// waits for it.
    pub fn release_after(mut self, fence: M::Fence) {
        if let Some(b) = self.block.as_mut() {
            b.busy = Some(fence);
        }
    }
}

impl<M: HostMemory> Drop for Lease<M> {
    fn drop(&mut self) {
        if let Some(b) = self.block.take() {
            self.pool.give_back(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Ordinary heap memory standing in for page-locked memory; fences are numbers the
    /// "device" has passed once `passed` reaches them; alloc fails past `limit` bytes live.
    #[derive(Default)]
    struct Heap {
        live: Mutex<Vec<(usize, usize)>>,
        passed: AtomicUsize,
        waits: AtomicUsize,
        limit: usize,
    }

    impl HostMemory for Heap {
        type Fence = usize;
        fn alloc(&self, bytes: usize) -> Option<*mut u8> {
            let mut live = self.live.lock().unwrap();
            if live.iter().map(|l| l.1).sum::<usize>() + bytes > self.limit {
                return None;
            }
            let ptr = Box::into_raw(vec![0xAAu8; bytes].into_boxed_slice()) as *mut u8;
            live.push((ptr as usize, bytes));
            Some(ptr)
        }
        unsafe fn free(&self, ptr: *mut u8, bytes: usize) {
            let mut live = self.live.lock().unwrap();
            let i = live.iter().position(|&l| l == (ptr as usize, bytes));
            live.swap_remove(i.expect("freed once, with its own size"));
            // SAFETY: made by `alloc` above as a boxed slice of `bytes`.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, bytes)) });
        }
        fn wait(&self, fence: &usize) -> Result<()> {
            self.waits.fetch_add(1, Ordering::SeqCst);
            // The "device" catches up with every fence it is waited on.
            self.passed.fetch_max(*fence, Ordering::SeqCst);
            Ok(())
        }
    }

    fn pool(limit: usize) -> Arc<PinnedPool<Heap>> {
        PinnedPool::with_switch(
            Heap {
                limit,
                ..Default::default()
            },
            true,
        )
    }

    const MB: usize = 1 << 20;

    #[test]
    fn leases_out_at_once_never_share_memory() {
        let p = pool(usize::MAX);
        let mut a = p.lease(3 * MB).unwrap().unwrap();
        let mut b = p.lease(3 * MB).unwrap().unwrap();
        a.bytes().fill(1);
        b.bytes().fill(2);
        assert!(a.bytes().iter().all(|&v| v == 1), "b wrote into a");
        assert_eq!((a.bytes().len(), b.bytes().len()), (3 * MB, 3 * MB));
        drop((a, b));
        // Both kept (rounded up to 4 MB), and the next lease reuses one of them.
        assert_eq!(p.kept(), vec![4 * MB, 4 * MB]);
        let _c = p.lease(4 * MB).unwrap().unwrap();
        assert_eq!(p.mem.live.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_fenced_buffer_is_waited_for_before_reuse() {
        let p = pool(usize::MAX);
        let a = p.lease(2 * MB).unwrap().unwrap();
        a.release_after(7);
        assert_eq!(p.mem.passed.load(Ordering::SeqCst), 0, "no wait on release");
        let _b = p.lease(2 * MB).unwrap().unwrap();
        assert_eq!(p.mem.passed.load(Ordering::SeqCst), 7, "waited for fence 7");
        // An unfenced buffer is handed out without a wait.
        let waits = p.mem.waits.load(Ordering::SeqCst);
        drop(p.lease(2 * MB).unwrap().unwrap());
        let _c = p.lease(2 * MB).unwrap().unwrap();
        assert_eq!(p.mem.waits.load(Ordering::SeqCst), waits);
    }

    #[test]
    fn the_smallest_fitting_buffer_is_reused() {
        let p = pool(usize::MAX);
        let (big, small) = (
            p.lease(9 * MB).unwrap().unwrap(),
            p.lease(MB).unwrap().unwrap(),
        );
        drop((big, small));
        assert_eq!(p.kept(), vec![MB, 16 * MB]);
        let l = p.lease(MB + 1).unwrap().unwrap();
        assert_eq!(p.kept(), vec![MB], "the 16 MB block served 1 MB + 1");
        drop(l);
        let _l = p.lease(MB).unwrap().unwrap();
        assert_eq!(p.kept(), vec![16 * MB], "the 1 MB block served 1 MB");
    }

    #[test]
    fn at_most_keep_free_buffers_are_kept_and_fenced_ones_are_waited_for_first() {
        let p = pool(usize::MAX);
        let leases: Vec<_> = (0..KEEP + 2)
            .map(|i| p.lease((i + 1) * MB).unwrap().unwrap())
            .collect();
        for (i, l) in leases.into_iter().enumerate() {
            l.release_after(100 + i);
        }
        // The two smallest went back to the system, each after its fence.
        assert_eq!(p.kept().len(), KEEP);
        assert_eq!(p.kept()[0], 4 * MB);
        assert_eq!(p.mem.live.lock().unwrap().len(), KEEP);
        assert!(p.mem.passed.load(Ordering::SeqCst) >= 101);
        drop(p); // frees the rest (the Heap's own checks: each freed once, with its size)
    }

    #[test]
    fn copies_it_does_not_serve_fall_back_to_plain_ones() {
        let p = pool(8 * MB);
        assert!(p.lease(MB - 1).is_none(), "too small to pay");
        assert!(p.lease(PINNED_MAX + 1).is_none(), "too large to pin");
        let _a = p.lease(5 * MB).unwrap().unwrap();
        assert!(p.lease(5 * MB).is_none(), "no page-locked memory left");
        let off = PinnedPool::with_switch(Heap::default(), false);
        assert!(off.lease(2 * MB).is_none(), "GRADCAM_PINNED=0");
    }

    #[test]
    fn a_failed_fence_keeps_the_buffer_out_of_use() {
        struct Broken(Heap);
        impl HostMemory for Broken {
            type Fence = ();
            fn alloc(&self, bytes: usize) -> Option<*mut u8> {
                self.0.alloc(bytes)
            }
            unsafe fn free(&self, ptr: *mut u8, bytes: usize) {
                // SAFETY: forwarded.
                unsafe { self.0.free(ptr, bytes) }
            }
            fn wait(&self, _: &()) -> Result<()> {
                Err(crate::Error::Cuda("device lost".into()))
            }
        }
        let p = PinnedPool::with_switch(
            Broken(Heap {
                limit: usize::MAX,
                ..Default::default()
            }),
            true,
        );
        p.lease(2 * MB).unwrap().unwrap().release_after(());
        let err = p.lease(2 * MB).unwrap().err().expect("the fence's error");
        assert!(err.to_string().contains("device lost"), "{err}");
        // Not handed out again, and never freed while possibly in use.
        assert_eq!(p.kept(), Vec::<usize>::new());
        assert_eq!(p.mem.0.live.lock().unwrap().len(), 1);
    }
}
