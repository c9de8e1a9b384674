//! Runs kernels/*.cu on the CPU through the CUDA emulator (kernels/emu/cuda_emu.h), which
//! build.rs compiles into the library: every kernel is tested on machines without a GPU.
//! Slow by design; the CUDA backend's host code will drive it through the same launcher
//! interface as the real device.

use std::ffi::{c_char, c_void, CStr};

use crate::{Error, Result};

#[repr(C)]
struct Kernel {
    name: *const c_char,
    entry: unsafe extern "C" fn(*mut *mut c_void),
}

extern "C" {
    static gradcam_emu_kernels: Kernel;
    static gradcam_emu_kernel_count: usize;
    fn gradcam_emu_launch(
        entry: unsafe extern "C" fn(*mut *mut c_void),
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shmem: u32,
        args: *mut *mut c_void,
    ) -> i32;
}

fn kernels() -> &'static [Kernel] {
    // SAFETY: build.rs defines the array with `gradcam_emu_kernel_count` entries, statically.
    unsafe { std::slice::from_raw_parts(&raw const gradcam_emu_kernels, gradcam_emu_kernel_count) }
}

/// Names of every kernel compiled for the emulator.
pub fn kernel_names() -> Vec<&'static str> {
    kernels()
        .iter()
        // SAFETY: the names are string literals in the generated table.
        .map(|k| unsafe { CStr::from_ptr(k.name) }.to_str().unwrap_or("?"))
        .collect()
}

/// A kernel argument, as `cuLaunchKernel` takes them: device pointers are host buffers here.
pub enum Arg<'a> {
    In(&'a [f32]),
    Bytes(&'a [u8]),
    BytesOut(&'a mut [u8]),
    Out(&'a mut [f32]),
    I32(i32),
    F32(f32),
    /// A null pointer (an absent optional buffer).
    Null,
}

/// Launches kernel `name` on a grid of blocks.
///
/// # Safety
/// Like a CUDA launch, the kernel trusts its arguments: every buffer must be at least as long
/// as the kernel indexes it for this grid, and the argument types must match its signature.
pub unsafe fn launch(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shmem: u32,
    args: &mut [Arg],
) -> Result<()> {
    // One 8-byte slot per argument; the kernel reads each through its own type.
    let mut slots: Vec<u64> = args
        .iter_mut()
        .map(|a| match a {
            Arg::In(b) => b.as_ptr() as u64,
            Arg::Bytes(b) => b.as_ptr() as u64,
            Arg::BytesOut(b) => b.as_mut_ptr() as u64,
            Arg::Out(b) => b.as_mut_ptr() as u64,
            Arg::I32(v) => *v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
            Arg::Null => 0,
        })
        .collect();
    unsafe { launch_raw(name, grid, block, shmem, &mut slots) }
}

/// [`launch`] with the arguments already as 8-byte slots (pointers as addresses).
///
/// # Safety
/// As for [`launch`].
pub unsafe fn launch_raw(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shmem: u32,
    slots: &mut [u64],
) -> Result<()> {
    let k = kernels()
        .iter()
        .find(|k| unsafe { CStr::from_ptr(k.name) }.to_str() == Ok(name))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no kernel `{name}`; have {}",
                kernel_names().join(", ")
            ))
        })?;
    let mut ptrs: Vec<*mut c_void> = slots
        .iter_mut()
        .map(|s| s as *mut u64 as *mut c_void)
        .collect();
    let rc = unsafe {
        gradcam_emu_launch(
            k.entry,
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            shmem,
            ptrs.as_mut_ptr(),
        )
    };
    match rc {
        0 => Ok(()),
        1 => Err(Error::Invalid(format!(
            "{name}: deadlock (a barrier some threads never reach)"
        ))),
        _ => Err(Error::Invalid(format!(
            "{name}: bad launch geometry {grid:?} x {block:?}"
        ))),
    }
}
