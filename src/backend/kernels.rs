//! The kernel sources (kernels/*.cu and their headers), embedded at build time for NVRTC.

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// Kernel files built for an architecture-specific target where the device has it (name, the
/// device's architecture, the target): their instructions (wgmma) exist only there.
const ARCH_SPECIFIC: &[(&str, &str, &str)] = &[("conv_wgmma.cu", "sm_90", "sm_90a")];

/// The architecture NVRTC builds kernel file `file` for on a device of architecture `arch`
/// (e.g. `sm_90`): `arch` itself, or its architecture-specific form for the files that need
/// it (conv_wgmma.cu: `sm_90a`). Elsewhere those files build as they are, with traps where
/// their instructions would be, and the host never launches them.
pub fn compile_arch(file: &str, arch: &str) -> String {
    ARCH_SPECIFIC
        .iter()
        .find(|(f, on, _)| *f == file && *on == arch)
        .map_or_else(|| arch.to_string(), |(_, _, target)| target.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgmma_kernels_build_for_sm_90a_on_hopper_only() {
        assert_eq!(compile_arch("conv_wgmma.cu", "sm_90"), "sm_90a");
        assert_eq!(compile_arch("conv_wgmma.cu", "sm_80"), "sm_80");
        assert_eq!(compile_arch("conv.cu", "sm_90"), "sm_90");
        assert!(SOURCES.iter().any(|(f, _)| *f == "conv_wgmma.cu"));
    }
}
