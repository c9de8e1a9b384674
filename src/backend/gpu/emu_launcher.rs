//! The [`Launcher`] over the CPU emulator: device buffers are host memory.

use std::cell::UnsafeCell;
use std::sync::Arc;

use super::mem::{Held, MemCounter};
use super::{InFlight, KArg, Launcher};
use crate::backend::emu;
use crate::Result;

pub struct EmuBuf {
    // u128 words: 16-byte alignment, as cudaMalloc's 256 at least, for the kernels' 16-byte
    // vector loads.
    data: UnsafeCell<Vec<u128>>,
    _held: Held,
}

// SAFETY: the emulator runs one launch at a time on the calling thread, and the GPU host code
// (like CUDA's) orders every write to a buffer before the launches that read it.
unsafe impl Sync for EmuBuf {}

impl EmuBuf {
    fn addr(&self) -> u64 {
        // SAFETY: only the address is taken; kernels write through it during a launch.
        unsafe { (*self.data.get()).as_mut_ptr() as u64 }
    }
}

/// The emulated device; `with_memory_limit` makes it run out of memory like a small GPU.
#[derive(Debug)]
pub struct EmuLauncher {
    mem: Arc<MemCounter>,
}

impl Default for EmuLauncher {
    fn default() -> Self {
        Self::new()
    }
}

impl EmuLauncher {
    pub fn new() -> Self {
        EmuLauncher {
            mem: MemCounter::with_limit(None),
        }
    }
    /// Allocations past `bytes` in total fail with [`crate::Error::OutOfMemory`].
    pub fn with_memory_limit(bytes: usize) -> Self {
        EmuLauncher {
            mem: MemCounter::with_limit(Some(bytes)),
        }
    }
}

impl Launcher for EmuLauncher {
    type Buf = EmuBuf;

    fn name(&self) -> String {
        "cuda kernels on the CPU emulator".into()
    }
    fn emulated(&self) -> bool {
        true
    }
    fn alloc(&self, bytes: usize) -> Result<EmuBuf> {
        Ok(EmuBuf {
            _held: self.mem.reserve(bytes)?,
            // All ones: NaN as f32, bf16 and f16, so a kernel that reads memory nobody wrote (a
            // GPU allocation is uninitialised) shows up in the tests.
            data: UnsafeCell::new(vec![u128::MAX; bytes.div_ceil(16)]),
        })
    }
    fn upload(&self, data: &[u8]) -> Result<EmuBuf> {
        let b = self.alloc(data.len())?;
        // SAFETY: the buffer was just made with room for `data`; nothing else sees it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), b.addr() as *mut u8, data.len());
        }
        Ok(b)
    }
    fn download(&self, b: &EmuBuf, out: &mut [u8]) -> Result<()> {
        read(b, out);
        Ok(())
    }
    fn download_later(&self, b: EmuBuf, len: usize) -> Result<Box<dyn InFlight>> {
        // As on a GPU, the bytes are read when they are waited for, from the buffer the copy
        // now holds, so the host code's ordering is tested: later launches must not touch it.
        Ok(Box::new(EmuLanding { from: b, len }))
    }
    fn copy(&self, b: &EmuBuf, bytes: usize) -> Result<EmuBuf> {
        let mut v = vec![0u8; bytes];
        self.download(b, &mut v)?;
        self.upload(&v)
    }
    fn memory(&self) -> &MemCounter {
        &self.mem
    }
    fn synchronize(&self) -> Result<()> {
        Ok(()) // launches run to completion before they return
    }
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[KArg<EmuBuf>],
    ) -> Result<()> {
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match a {
                KArg::Buf(b) => b.addr(),
                KArg::BufAt(b, off) => b.addr() + *off as u64,
                KArg::Null => 0,
                KArg::I32(v) => *v as u32 as u64,
                KArg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        // SAFETY: forwarded from the caller.
        unsafe { emu::launch_raw(kernel, grid, block, shared_bytes, &mut slots) }
    }
}

struct EmuLanding {
    from: EmuBuf,
    len: usize,
}

impl InFlight for EmuLanding {
    fn wait(self: Box<Self>, take: &mut dyn FnMut(&[u8])) -> Result<()> {
        let mut v = vec![0u8; self.len];
        read(&self.from, &mut v);
        take(&v);
        Ok(())
    }
}

/// The first `out.len()` bytes of `b`.
fn read(b: &EmuBuf, out: &mut [u8]) {
    // SAFETY: no launch writes `b` meanwhile (launches are synchronous here, and a landing
    // holds its buffer alone); the GPU host code asks for at most the bytes it allocated.
    unsafe {
        assert!(
            out.len() <= (*b.data.get()).len() * 16,
            "download past the buffer"
        );
        std::ptr::copy_nonoverlapping(b.addr() as *const u8, out.as_mut_ptr(), out.len());
    }
}
