//! Compiled kernel modules on disk, so only the first run on a machine pays for NVRTC. An entry
//! is keyed by everything that changes the machine code: the kernel file and the headers it may
//! include, the architecture, NVRTC's version and our compile options. A broken entry is simply
//! recompiled and overwritten.
//!
//! Folder: `GRADCAM_CACHE_DIR`, else `$XDG_CACHE_HOME/gradcam/kernels`, else
//! `~/.cache/gradcam/kernels`; `GRADCAM_CACHE_DIR=off` turns caching off.

use std::path::{Path, PathBuf};

use super::kernels::{compile_arch, HEADERS, SOURCES};
use super::nvrtc::COMPILE_OPTIONS;

pub struct ModuleCache {
    dir: Option<PathBuf>,
    arch: String,
    nvrtc: (i32, i32),
}

impl ModuleCache {
    pub fn new(arch: &str, nvrtc: (i32, i32)) -> Self {
        ModuleCache {
            dir: default_dir(),
            arch: arch.to_string(),
            nvrtc,
        }
    }

    pub fn in_dir(dir: &Path, arch: &str, nvrtc: (i32, i32)) -> Self {
        ModuleCache {
            dir: Some(dir.to_path_buf()),
            arch: arch.to_string(),
            nvrtc,
        }
    }

    pub fn dir(&self) -> Option<&PathBuf> {
        self.dir.as_ref()
    }

    /// The cache file for kernel file `file` (None: unknown file or caching off).
    pub fn path(&self, file: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let src = SOURCES.iter().find(|(n, _)| *n == file)?.1;
        let mut h = Fnv::new();
        h.add(src.as_bytes());
        for (name, text) in HEADERS {
            h.add(name.as_bytes());
            h.add(text.as_bytes());
        }
        let arch = compile_arch(file, &self.arch);
        h.add(arch.as_bytes());
        h.add(format!("nvrtc {}.{}", self.nvrtc.0, self.nvrtc.1).as_bytes());
        h.add(COMPILE_OPTIONS.join(" ").as_bytes());
        let stem = file.trim_end_matches(".cu");
        Some(dir.join(format!("{stem}-{arch}-{:016x}.cubin", h.0)))
    }

    pub fn get(&self, file: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(file)?).ok()
    }

    /// Stores a module; failures only cost a recompile next time, so they are not errors.
    pub fn put(&self, file: &str, cubin: &[u8]) {
        let Some(path) = self.path(file) else { return };
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, cubin).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

fn default_dir() -> Option<PathBuf> {
    // (Empty is unset, as `GRADCAM_CACHE_DIR= gradcam ...` means, not the working folder.)
    if let Some(d) = std::env::var_os("GRADCAM_CACHE_DIR").filter(|d| !d.is_empty()) {
        let off = d
            .to_str()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("off"));
        return (!off).then(|| PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("gradcam").join("kernels"))
}

/// FNV-1a, 64 bit: stable across Rust versions (unlike `DefaultHasher`), enough for a cache key.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
    }
}
