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
/// Page-locked bytes the pool holds at most, leased and free together; past it, copies go
/// the plain way.
pub const PINNED_TOTAL: usize = 2 << 30;
/// Free buffers kept for reuse; more go back to the system (the smallest the device is done
/// with first, so returning a buffer does not wait for the device).
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
    /// Whether the device has passed `fence` (without waiting).
    fn passed(&self, fence: &Self::Fence) -> bool;
}

struct Block<F> {
    ptr: *mut u8,
    cap: usize,
    /// The device may still read or write the block until this fence.
    busy: Option<F>,
}

impl<F> Block<F> {
    fn idle<M: HostMemory<Fence = F>>(&self, mem: &M) -> bool {
        self.busy.as_ref().is_none_or(|f| mem.passed(f))
    }
}

struct State<F> {
    free: Vec<Block<F>>,
    /// Bytes of every block allocated and not yet freed (free, leased or leaked).
    total: usize,
}

pub struct PinnedPool<M: HostMemory> {
    mem: M,
    state: Mutex<State<M::Fence>>,
    on: bool,
    /// Bytes held at most ([`PINNED_TOTAL`]; smaller in tests).
    budget: usize,
}

// SAFETY: a block's memory is reached only through the pool's lock or the one lease holding it.
unsafe impl<M: HostMemory> Send for PinnedPool<M> {}
unsafe impl<M: HostMemory> Sync for PinnedPool<M> {}

impl<M: HostMemory> PinnedPool<M> {
    pub fn new(mem: M) -> Arc<Self> {
        let on = std::env::var("GRADCAM_PINNED").map_or(true, |v| v != "0");
        Self::with_limits(mem, on, PINNED_TOTAL)
    }

    fn with_limits(mem: M, on: bool, budget: usize) -> Arc<Self> {
        Arc::new(PinnedPool {
            mem,
            state: Mutex::new(State {
                free: Vec::new(),
                total: 0,
            }),
            on,
            budget,
        })
    }

    /// A page-locked buffer of at least `len` bytes for the caller alone, once the device is
    /// done with it. None when the pool does not serve this copy (off, too small or too large,
    /// or no page-locked memory to be had), and the caller copies the plain way.
    pub fn lease(self: &Arc<Self>, len: usize) -> Option<Result<Lease<M>>> {
        if !self.on || !(PINNED_MIN..=PINNED_MAX).contains(&len) {
            return None;
        }
        // Room for batches a little larger than this one without another allocation.
        let cap = len.next_power_of_two().min(PINNED_MAX);
        let (reused, evicted) = {
            let mut st = self.lock();
            // The smallest block that holds `len`, so large ones stay for large copies.
            let best = (st.free.iter().enumerate())
                .filter(|(_, b)| b.cap >= len)
                .min_by_key(|(_, b)| b.cap)
                .map(|(i, _)| i);
            match best {
                Some(i) => (Some(st.free.swap_remove(i)), Vec::new()),
                None => {
                    // Free blocks too small for this copy make room for it, smallest first.
                    let mut evicted = Vec::new();
                    while st.total + cap > self.budget && !st.free.is_empty() {
                        let i = smallest(&st.free, |_| true);
                        let b = st.free.swap_remove(i);
                        st.total -= b.cap;
                        evicted.push(b);
                    }
                    if st.total + cap > self.budget {
                        drop(st);
                        evicted.into_iter().for_each(|b| self.release(b));
                        return None;
                    }
                    st.total += cap; // claimed before allocating, so threads cannot overshoot
                    (None, evicted)
                }
            }
        };
        evicted.into_iter().for_each(|b| self.release(b));
        let mut block = match reused {
            Some(b) => b,
            None => {
                let Some(ptr) = self.mem.alloc(cap) else {
                    self.lock().total -= cap;
                    return None;
                };
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
        let mut v: Vec<usize> = self.lock().free.iter().map(|b| b.cap).collect();
        v.sort();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<M::Fence>> {
        // A panic elsewhere never leaves the state half-changed: take the lock back.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, block: Block<M::Fence>) {
        let evicted = {
            let mut st = self.lock();
            st.free.push(block);
            // Over KEEP, the smallest block the device is done with goes; if the device still
            // uses every one, none goes yet (PINNED_TOTAL bounds them all the same).
            let idle = (st.free.iter()).any(|b| b.idle(&self.mem));
            if st.free.len() > KEEP && idle {
                let i = smallest(&st.free, |b| b.idle(&self.mem));
                let b = st.free.swap_remove(i);
                st.total -= b.cap;
                Some(b)
            } else {
                None
            }
        };
        if let Some(b) = evicted {
            self.release(b);
        }
    }

    /// Frees a block taken out of the books, once the device has passed its fence.
    fn release(&self, b: Block<M::Fence>) {
        if !b.idle(&self.mem) && self.mem.wait(b.busy.as_ref().expect("busy")).is_err() {
            return; // unknown whether the device is done with it: leaked, not freed
        }
        // SAFETY: allocated by `mem.alloc(cap)`; the device is past its fence.
        unsafe { self.mem.free(b.ptr, b.cap) };
    }
}

/// Index of the smallest block among those `pick` accepts (one must be).
fn smallest<F>(blocks: &[Block<F>], pick: impl Fn(&Block<F>) -> bool) -> usize {
    (blocks.iter().enumerate())
        .filter(|(_, b)| pick(b))
        .min_by_key(|(_, b)| b.cap)
        .map(|(i, _)| i)
        .expect("a block to pick")
}

impl<M: HostMemory> Drop for PinnedPool<M> {
    fn drop(&mut self) {
        let blocks = std::mem::take(&mut self.lock().free);
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

    /// Never reused nor freed: for a buffer the device may still be copying into or out of
    /// when whether it is done cannot be known (a failed device). The pool itself goes on.
    pub fn leak(mut self) {
        self.block = None;
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

    /// Ordinary heap memory standing in for page-locked memory. Fences are numbers: the
    /// "device" has passed those in `done` (a test marks some; a wait adds its own), and every
    /// wait is logged. Allocation fails past `limit` bytes live.
    #[derive(Default)]
    struct Heap {
        live: Mutex<Vec<(usize, usize)>>,
        done: Mutex<Vec<usize>>,
        waited: Mutex<Vec<usize>>,
        limit: usize,
    }

    impl Heap {
        fn waited(&self) -> Vec<usize> {
            let mut v = self.waited.lock().unwrap().clone();
            v.sort();
            v
        }
        fn live(&self) -> usize {
            self.live.lock().unwrap().len()
        }
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
            self.waited.lock().unwrap().push(*fence);
            self.done.lock().unwrap().push(*fence);
            Ok(())
        }
        fn passed(&self, fence: &usize) -> bool {
            self.done.lock().unwrap().contains(fence)
        }
    }

    const MB: usize = 1 << 20;

    fn pool(budget: usize) -> Arc<PinnedPool<Heap>> {
        let heap = Heap {
            limit: usize::MAX,
            ..Default::default()
        };
        PinnedPool::with_limits(heap, true, budget)
    }

    fn take(p: &Arc<PinnedPool<Heap>>, len: usize) -> Lease<Heap> {
        p.lease(len).expect("served").expect("no device error")
    }

    #[test]
    fn leases_out_at_once_never_share_memory() {
        let p = pool(PINNED_TOTAL);
        for round in 0..2 {
            // Fresh blocks in round 0, the same blocks reused in round 1.
            let (mut a, mut b) = (take(&p, 3 * MB), take(&p, 3 * MB));
            a.bytes().fill(1);
            b.bytes().fill(2);
            assert!(
                a.bytes().iter().all(|&v| v == 1),
                "round {round}: b wrote into a"
            );
            assert_eq!((a.bytes().len(), b.bytes().len()), (3 * MB, 3 * MB));
        }
        // Both kept (rounded up to 4 MB) and reused: two allocations in all.
        assert_eq!(p.kept(), vec![4 * MB, 4 * MB]);
        assert_eq!(p.mem.live(), 2);
    }

    #[test]
    fn a_fenced_buffer_is_waited_for_before_reuse() {
        let p = pool(PINNED_TOTAL);
        take(&p, 2 * MB).release_after(7);
        assert_eq!(p.mem.waited(), Vec::<usize>::new(), "no wait on release");
        let b = take(&p, 2 * MB);
        assert_eq!(
            p.mem.waited(),
            vec![7],
            "waited for fence 7 before handing it out"
        );
        // Back without a fence: handed out again without another wait.
        drop(b);
        let _c = take(&p, 2 * MB);
        assert_eq!(p.mem.waited(), vec![7]);
        assert_eq!(p.mem.live(), 1);
    }

    #[test]
    fn the_smallest_fitting_buffer_is_reused() {
        let p = pool(PINNED_TOTAL);
        drop((take(&p, 9 * MB), take(&p, MB)));
        assert_eq!(p.kept(), vec![MB, 16 * MB]);
        let l = take(&p, MB + 1);
        assert_eq!(p.kept(), vec![MB], "the 16 MB block served 1 MB + 1");
        drop(l);
        let _l = take(&p, MB);
        assert_eq!(p.kept(), vec![16 * MB], "the 1 MB block served 1 MB");
    }

    #[test]
    fn returning_a_buffer_never_waits_and_evicts_only_what_the_device_is_done_with() {
        let p = pool(PINNED_TOTAL);
        let leases: Vec<_> = (1..=KEEP + 2).map(|i| take(&p, i * MB)).collect();
        for (i, l) in leases.into_iter().enumerate() {
            l.release_after(100 + i);
        }
        // Six blocks (1, 2, 4, 4, 8, 8 MB), all still in use by the device: none evicted.
        assert_eq!(p.kept(), vec![MB, 2 * MB, 4 * MB, 4 * MB, 8 * MB, 8 * MB]);
        assert_eq!(p.mem.waited(), Vec::<usize>::new());
        // The device passes fences 101 and 104; the next return evicts the smallest block it
        // is done with (2 MB), without waiting.
        p.mem.done.lock().unwrap().extend([101, 104]);
        drop(take(&p, 16 * MB));
        assert_eq!(p.kept(), vec![MB, 4 * MB, 4 * MB, 8 * MB, 8 * MB, 16 * MB]);
        assert_eq!(p.mem.waited(), Vec::<usize>::new());
    }

    #[test]
    fn dropping_the_pool_waits_for_each_fence_it_has_not_seen_passed() {
        let waited = Arc::new(Mutex::new(Vec::new()));
        struct Logged(Heap, Arc<Mutex<Vec<usize>>>);
        impl HostMemory for Logged {
            type Fence = usize;
            fn alloc(&self, bytes: usize) -> Option<*mut u8> {
                self.0.alloc(bytes)
            }
            unsafe fn free(&self, ptr: *mut u8, bytes: usize) {
                // SAFETY: forwarded.
                unsafe { self.0.free(ptr, bytes) }
            }
            fn wait(&self, fence: &usize) -> Result<()> {
                self.1.lock().unwrap().push(*fence);
                self.0.wait(fence)
            }
            fn passed(&self, fence: &usize) -> bool {
                self.0.passed(fence)
            }
        }
        let heap = Heap {
            limit: usize::MAX,
            ..Default::default()
        };
        heap.done.lock().unwrap().push(11);
        let p = PinnedPool::with_limits(Logged(heap, waited.clone()), true, PINNED_TOTAL);
        for (len, fence) in [(MB, 10), (2 * MB, 11), (4 * MB, 12)] {
            p.lease(len).unwrap().unwrap().release_after(fence);
        }
        drop(p);
        let mut w = waited.lock().unwrap().clone();
        w.sort();
        assert_eq!(w, vec![10, 12], "fence 11 had passed already");
    }

    #[test]
    fn the_budget_bounds_all_blocks_and_evicts_free_ones_to_make_room() {
        let p = pool(8 * MB);
        let a = take(&p, 5 * MB); // 8 MB: the whole budget
        assert!(p.lease(MB).is_none(), "over the budget while `a` is out");
        drop(a);
        drop(take(&p, 3 * MB)); // reuses the 8 MB block
        assert_eq!(p.mem.live(), 1);
        // A 16 MB copy cannot fit even with the free block gone.
        assert!(p.lease(9 * MB).is_none());
        assert_eq!(
            p.kept(),
            Vec::<usize>::new(),
            "the free block went to make room"
        );
        drop(take(&p, 2 * MB));
        // The 2 MB block is free; an 8 MB one needs its room: it goes, the new one comes.
        let _b = take(&p, 5 * MB);
        assert_eq!(p.kept(), Vec::<usize>::new());
        assert_eq!(p.mem.live(), 1);
    }

    #[test]
    fn copies_it_does_not_serve_fall_back_to_plain_ones() {
        let heap = Heap {
            limit: 8 * MB,
            ..Default::default()
        };
        let p = PinnedPool::with_limits(heap, true, PINNED_TOTAL);
        assert!(p.lease(MB - 1).is_none(), "too small to pay");
        assert!(p.lease(PINNED_MAX + 1).is_none(), "too large to pin");
        let _a = p.lease(5 * MB).unwrap().unwrap();
        assert!(p.lease(5 * MB).is_none(), "no page-locked memory left");
        let off = PinnedPool::with_limits(Heap::default(), false, PINNED_TOTAL);
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
            fn passed(&self, _: &()) -> bool {
                false
            }
        }
        let heap = Heap {
            limit: usize::MAX,
            ..Default::default()
        };
        let p = PinnedPool::with_limits(Broken(heap), true, PINNED_TOTAL);
        p.lease(2 * MB).unwrap().unwrap().release_after(());
        let err = p.lease(2 * MB).unwrap().err().expect("the fence's error");
        assert!(err.to_string().contains("device lost"), "{err}");
        // Not handed out again, and never freed while possibly in use.
        assert_eq!(p.kept(), Vec::<usize>::new());
        assert_eq!(p.mem.0.live(), 1);
        // A leaked lease likewise: the pool goes on without it.
        p.lease(4 * MB).unwrap().unwrap().leak();
        assert_eq!(p.kept(), Vec::<usize>::new());
        assert_eq!(p.mem.0.live(), 2);
        assert!(p.lease(4 * MB).is_some());
    }
}
