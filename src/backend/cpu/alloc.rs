//! Keeping freed activation memory in the process.
//!
//! Each layer's output is a fresh tensor of megabytes (ResNet-50 at batch 8: 25 MB after the
//! stem; VGG16: 103 MB after each of its first two convs), freed a layer or two later.
//! glibc's malloc maps blocks that large afresh and gives them back to the kernel when they
//! are freed (and trims the heap's top), so the next layer's tensor is faulted in again page
//! by page: `perf` put 7-8 % of a CPU Grad-CAM run in the kernel's page-fault path. Serving
//! every block from the heap, which is never trimmed, made ResNet-50 7-8 % faster and VGG16
//! about 14 %, at the same peak RSS (BENCHMARKS.md). The cost: memory freed after a peak stays
//! with the process until it exits.

/// Tells the C allocator to keep freed memory for reuse (glibc on Linux; elsewhere nothing):
/// no block mapped on its own, the heap never trimmed. Process-wide, so the library does not
/// do it by itself: the `gradcam` binary calls it first thing, and a program linking the
/// library may too. Returns whether it took effect.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        // glibc's <malloc.h>; not in every libc crate release, so declared here.
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        const M_MMAP_MAX: c_int = -4;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // SAFETY: mallopt only sets allocator parameters, each in range (it returns 0 for
        // one it refuses). With no mapped blocks a thread's arena that cannot hold a block
        // (64 MB at most) falls back to the main heap, which grows as far as memory allows.
        unsafe {
            mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// On glibc both settings are accepted (a value out of range would return 0).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn retain_freed_memory_is_accepted() {
        assert!(super::retain_freed_memory());
    }
}
