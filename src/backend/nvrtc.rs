//! NVRTC, loaded at run time (never linked): finding libnvrtc, compiling kernels/*.cu for a
//! GPU architecture to CUBIN or PTX, and reporting compiler logs with the kernel file's name.
//! Nothing here needs a GPU, so CI compiles every kernel for sm_80 and sm_90.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use super::kernels::{HEADERS, SOURCES};
use crate::{Error, Result};

type Prog = *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut Prog,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Prog) -> c_int;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

/// Options of every compilation besides the architecture (part of the module cache's key).
pub const COMPILE_OPTIONS: &[&str] = &["--std=c++17", "-default-device"];

pub struct Nvrtc {
    lib: libloading::Library,
    /// libnvrtc-builtins from the same folder, loaded first: NVRTC opens it by soname, which
    /// a pip install does not put on the loader path.
    _builtins: Option<libloading::Library>,
    path: PathBuf,
    pub version: (i32, i32),
}

/// Output of a compilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Machine code for exactly this architecture (works when NVRTC is newer than the driver).
    Cubin,
    Ptx,
}

/// Where libnvrtc is looked for, in order: `GRADCAM_NVRTC` (a file), CUDA_PATH and CUDA_HOME,
/// /usr/local/cuda, then pip's nvidia-cuda-nvrtc packages under the usual Python prefixes.
/// The dynamic loader's own path is tried last, by soname.
pub fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.push(PathBuf::from(&v).join("lib64"));
            dirs.push(PathBuf::from(&v).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    let mut prefixes: Vec<PathBuf> = ["/usr/local/lib", "/usr/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var) {
            prefixes.push(PathBuf::from(v).join("lib"));
        }
    }
    if let Some(h) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(&h).join(".local/lib"));
        if let Ok(rd) = std::fs::read_dir(PathBuf::from(&h).join(".pyenv/versions")) {
            prefixes.extend(rd.flatten().map(|e| e.path().join("lib")));
        }
    }
    for p in prefixes {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("python3") {
                for site in ["site-packages", "dist-packages"] {
                    for pkg in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
                        dirs.push(e.path().join(site).join(pkg));
                    }
                }
            }
        }
    }
    let mut files: Vec<PathBuf> = std::env::var_os("GRADCAM_NVRTC")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for d in dirs {
        for name in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
            files.push(d.join(name));
        }
    }
    files
}

fn status(code: c_int, what: &str) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "NVRTC {what} failed with status {code}"
        )))
    }
}

impl Nvrtc {
    /// Finds and loads libnvrtc; the error lists every place it looked.
    pub fn find() -> Result<Nvrtc> {
        let mut looked = Vec::new();
        for f in candidates() {
            if f.exists() {
                if let Ok(n) = Self::load(&f) {
                    return Ok(n);
                }
            }
            looked.push(f.display().to_string());
        }
        for soname in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
            if let Ok(n) = Self::load(Path::new(soname)) {
                return Ok(n);
            }
            looked.push(format!("{soname} (dynamic loader path)"));
        }
        Err(Error::Invalid(format!(
            "libnvrtc not found (install the CUDA toolkit or `pip install nvidia-cuda-nvrtc`, or \
             set GRADCAM_NVRTC to the library file); looked in: {}",
            looked.join(", ")
        )))
    }

    fn load(path: &Path) -> Result<Nvrtc> {
        let builtins = path.parent().and_then(|dir| {
            let rd = std::fs::read_dir(dir).ok()?;
            let f = rd.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libnvrtc-builtins.so."))
            })?;
            // SAFETY: as below; the builtins library has no side effects on load.
            unsafe { libloading::Library::new(f) }.ok()
        });
        // SAFETY: loading libnvrtc runs only its initialisers; symbols are checked below.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let mut n = Nvrtc {
            lib,
            _builtins: builtins,
            path: path.to_path_buf(),
            version: (0, 0),
        };
        let (mut major, mut minor) = (0, 0);
        let version: VersionFn = n.sym(b"nvrtcVersion\0")?;
        // SAFETY: nvrtcVersion writes two ints.
        status(unsafe { version(&mut major, &mut minor) }, "nvrtcVersion")?;
        n.version = (major, minor);
        Ok(n)
    }

    fn sym<T: Copy>(&self, name: &[u8]) -> Result<T> {
        // SAFETY: the caller names the C signature of an NVRTC entry point.
        unsafe { self.lib.get::<T>(name) }
            .map(|s| *s)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.path.display())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Compiles the embedded kernel file `file` (e.g. `cam.cu`) for `arch` (e.g. `sm_90`).
    pub fn compile(&self, file: &str, arch: &str, target: Target) -> Result<Vec<u8>> {
        self.compile_with(file, arch, target, &[])
            .map(|(out, _)| out)
    }

    /// Registers, spills and shared memory of every kernel in `file` for `arch`, as ptxas
    /// reports them (`--ptxas-options=-v`).
    pub fn resource_report(&self, file: &str, arch: &str) -> Result<String> {
        let (_, log) = self.compile_with(file, arch, Target::Cubin, &["--ptxas-options=-v"])?;
        Ok(log)
    }

    fn compile_with(
        &self,
        file: &str,
        arch: &str,
        target: Target,
        extra: &[&str],
    ) -> Result<(Vec<u8>, String)> {
        let src = SOURCES
            .iter()
            .find(|(n, _)| *n == file)
            .ok_or_else(|| Error::Invalid(format!("no kernel file {file}")))?
            .1;
        let cstr = |s: &str| CString::new(s).expect("no NUL in kernel sources");
        let (src_c, name_c) = (cstr(src), cstr(file));
        let hdr_src: Vec<CString> = HEADERS.iter().map(|(_, s)| cstr(s)).collect();
        let hdr_name: Vec<CString> = HEADERS.iter().map(|(n, _)| cstr(n)).collect();
        let hdr_src_p: Vec<*const c_char> = hdr_src.iter().map(|s| s.as_ptr()).collect();
        let hdr_name_p: Vec<*const c_char> = hdr_name.iter().map(|s| s.as_ptr()).collect();
        let arch_opt = match target {
            Target::Cubin => format!("--gpu-architecture={arch}"),
            Target::Ptx => format!("--gpu-architecture={}", arch.replace("sm_", "compute_")),
        };
        let opts: Vec<CString> = [arch_opt.as_str()]
            .iter()
            .chain(COMPILE_OPTIONS)
            .chain(extra)
            .map(|o| cstr(o))
            .collect();
        let opts_p: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();

        let create: CreateFn = self.sym(b"nvrtcCreateProgram\0")?;
        let compile: CompileFn = self.sym(b"nvrtcCompileProgram\0")?;
        let log_size: SizeFn = self.sym(b"nvrtcGetProgramLogSize\0")?;
        let get_log: GetFn = self.sym(b"nvrtcGetProgramLog\0")?;
        let (out_size, get_out): (SizeFn, GetFn) = match target {
            Target::Cubin => (
                self.sym(b"nvrtcGetCUBINSize\0")?,
                self.sym(b"nvrtcGetCUBIN\0")?,
            ),
            Target::Ptx => (self.sym(b"nvrtcGetPTXSize\0")?, self.sym(b"nvrtcGetPTX\0")?),
        };
        let destroy: DestroyFn = self.sym(b"nvrtcDestroyProgram\0")?;
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: every pointer passed lives until the end of this function; sizes come from
        // NVRTC itself before each copy.
        unsafe {
            status(
                create(
                    &mut prog,
                    src_c.as_ptr(),
                    name_c.as_ptr(),
                    HEADERS.len() as c_int,
                    hdr_src_p.as_ptr(),
                    hdr_name_p.as_ptr(),
                ),
                "nvrtcCreateProgram",
            )?;
            let rc = compile(prog, opts_p.len() as c_int, opts_p.as_ptr());
            // The log holds the errors on failure and ptxas's report when asked for.
            let mut n = 0usize;
            log_size(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            get_log(prog, log.as_mut_ptr() as *mut c_char);
            let text = CStr::from_bytes_until_nul(&log)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            let result = if rc != 0 {
                Err(Error::Invalid(format!(
                    "NVRTC could not compile kernels/{file} for {arch}:\n{text}"
                )))
            } else {
                let mut n = 0usize;
                status(out_size(prog, &mut n), "size query")?;
                let mut out = vec![0u8; n];
                status(
                    get_out(prog, out.as_mut_ptr() as *mut c_char),
                    "output copy",
                )?;
                Ok((out, text))
            };
            destroy(&mut prog);
            result
        }
    }
}
