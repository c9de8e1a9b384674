//! The [`Launcher`] over the CPU emulator: device buffers are host vectors.

use std::cell::UnsafeCell;

use super::{KArg, Launcher};
use crate::backend::emu;
use crate::Result;

pub struct EmuBuf(UnsafeCell<Vec<f32>>);

// SAFETY: the emulator runs one launch at a time on the calling thread, and the GPU host code
// (like CUDA's) orders every write to a buffer before the launches that read it.
unsafe impl Sync for EmuBuf {}

impl EmuBuf {
    fn addr(&self) -> u64 {
        // SAFETY: only the address is taken; kernels write through it during a launch.
        unsafe { (*self.0.get()).as_mut_ptr() as u64 }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct EmuLauncher;

impl Launcher for EmuLauncher {
    type Buf = EmuBuf;

    fn name(&self) -> String {
        "cuda kernels on the CPU emulator".into()
    }
    fn alloc(&self, n: usize) -> Result<EmuBuf> {
        Ok(EmuBuf(UnsafeCell::new(vec![0.0; n])))
    }
    fn upload(&self, data: &[f32]) -> Result<EmuBuf> {
        Ok(EmuBuf(UnsafeCell::new(data.to_vec())))
    }
    fn download(&self, b: &EmuBuf) -> Result<Vec<f32>> {
        // SAFETY: no launch is running (launches are synchronous here).
        Ok(unsafe { (*b.0.get()).clone() })
    }
    fn copy(&self, b: &EmuBuf) -> Result<EmuBuf> {
        self.download(b).and_then(|v| self.upload(&v))
    }
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[KArg<EmuBuf>],
    ) -> Result<()> {
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match a {
                KArg::Buf(b) => b.addr(),
                KArg::Null => 0,
                KArg::I32(v) => *v as u32 as u64,
            })
            .collect();
        // SAFETY: forwarded from the caller.
        unsafe { emu::launch_raw(kernel, grid, block, 0, &mut slots) }
    }
}
