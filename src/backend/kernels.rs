//! The kernel sources (kernels/*.cu and their headers), embedded at build time for NVRTC.

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
