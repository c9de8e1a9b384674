//! Keeping freed activation memory in the process.
//!
//! Each layer's output is a fresh tensor of megabytes (ResNet-50 at batch 8: 25 MB after the
//! stem), freed a layer or two later. glibc's malloc gives blocks that large back to the kernel
//! when they are freed (and trims the heap's top), so the next layer's tensor is faulted in
//! again page by page: `perf` put 7-8 % of a CPU Grad-CAM run in the kernel's page-fault path.
//! Serving blocks up to 32 MB (the most `mallopt` allows) from the heap and never trimming it
//! made ResNet-50 and VGG16 7-8 % faster at the same peak RSS (BENCHMARKS.md).

/// Tells the C allocator to keep freed activation memory for reuse (glibc on Linux; elsewhere
/// nothing). Process-wide, so the library does not do it by itself: the `gradcam` binary calls
/// it first thing, and a program linking the library may too. Returns whether it took effect.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>; not in every libc crate release, so declared here.
        const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
        const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
        extern "C" {
            fn mallopt(
                param: std::os::raw::c_int,
                value: std::os::raw::c_int,
            ) -> std::os::raw::c_int;
        }
        // SAFETY: mallopt only sets allocator parameters; both values are in range (glibc
        // refuses an mmap threshold above 32 MB on 64-bit targets, and says so by returning 0).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
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
