//! The [`Launcher`] over a real GPU through cudarc: buffers are `CudaSlice<u8>` on one stream,
//! kernels are our NVRTC's CUBIN for the device's own architecture (so an NVRTC newer than the
//! driver still works), loaded per kernel file on first use and cached on disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    result::{self, DriverError},
    sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::mem::{Held, MemCounter};
use super::pinned::{HostMemory, Lease, PinnedPool};
use super::probe::{driver_error_text, probe, DeviceInfo};
use super::{download_now, upload_filled, InFlight, KArg, Launcher};
use crate::backend::kernels::{compile_arch, ENTRIES, SOURCES};
use crate::backend::module_cache::ModuleCache;
use crate::backend::nvrtc::{Nvrtc, Target};
use crate::{Error, Result};

pub struct CudaBuf {
    slice: CudaSlice<u8>,
    _held: Held,
}

pub struct CudaLauncher {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    nvrtc: Nvrtc,
    cache: ModuleCache,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    mem: Arc<MemCounter>,
    pinned: Arc<PinnedPool<CudaHost>>,
}

fn cuda_err(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            Error::OutOfMemory(what.to_string())
        } else {
            Error::Cuda(format!("{what}: {}", driver_error_text(e)))
        }
    }
}

/// Page-locked memory from the driver, fenced by events on the launcher's stream.
pub struct CudaHost {
    ctx: Arc<CudaContext>,
}

impl HostMemory for CudaHost {
    type Fence = CudaEvent;
    fn alloc(&self, bytes: usize) -> Option<*mut u8> {
        self.ctx.bind_to_thread().ok()?;
        // SAFETY: a plain allocation; flags 0 = cached, readable by the CPU.
        Some(unsafe { result::malloc_host(bytes, 0) }.ok()? as *mut u8)
    }
    unsafe fn free(&self, ptr: *mut u8, _bytes: usize) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: forwarded from the caller. A failure only leaks the buffer.
            let _ = unsafe { result::free_host(ptr as *mut std::ffi::c_void) };
        }
    }
    fn wait(&self, fence: &CudaEvent) -> Result<()> {
        fence.synchronize().map_err(cuda_err("kernel execution"))
    }
    fn passed(&self, fence: &CudaEvent) -> bool {
        fence.is_complete()
    }
}

/// A download on its way into a page-locked buffer ([`Launcher::download_later`]).
struct Landing {
    lease: Option<Lease<CudaHost>>,
    done: Option<CudaEvent>,
}

impl InFlight for Landing {
    fn wait(mut self: Box<Self>, take: &mut dyn FnMut(&[u8])) -> Result<()> {
        let done = self.done.take().expect("waited once");
        let mut lease = self.lease.take().expect("waited once");
        if let Err(e) = done.synchronize() {
            // Whether the copy has finished is unknown: keep the buffer out of the pool. The
            // error may be any earlier launch's (the kernels that made the bytes).
            lease.leak();
            return Err(cuda_err("kernel execution or the copy back")(e));
        }
        take(lease.bytes());
        Ok(())
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        // Dropped without a wait: back to the pool once the copy has landed.
        if let (Some(lease), Some(done)) = (self.lease.take(), self.done.take()) {
            lease.release_after(done);
        }
    }
}

impl CudaLauncher {
    fn check_download(&self, b: &CudaBuf, len: usize) -> Result<()> {
        if len > b.slice.len() {
            return Err(Error::Invalid(format!(
                "download of {len} bytes from a {}-byte device buffer",
                b.slice.len()
            )));
        }
        Ok(())
    }

    /// An event after the work queued so far, which `lease`'s copy is part of (a host thread
    /// waiting on it sleeps, with `blocking`, rather than spin). If none can be had, waits for
    /// that work instead and gives the lease back; if that fails too, the lease is leaked (the
    /// copy may still be under way).
    fn fence(
        &self,
        lease: Lease<CudaHost>,
        blocking: bool,
        what: &str,
    ) -> Result<(Lease<CudaHost>, CudaEvent)> {
        let flags = blocking.then_some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC);
        match self.stream.record_event(flags) {
            Ok(event) => Ok((lease, event)),
            Err(e) => {
                if self.stream.synchronize().is_err() {
                    lease.leak();
                }
                Err(cuda_err(what)(e))
            }
        }
    }

    /// Queues a copy of the first `len` bytes of `b` into a page-locked buffer of the pool;
    /// None when the pool does not serve it (the caller copies the plain way).
    fn download_pinned(&self, b: &CudaBuf, len: usize) -> Option<Result<Lease<CudaHost>>> {
        let lease = self.pinned.lease(len)?;
        Some(lease.and_then(|mut lease| {
            self.ctx
                .bind_to_thread()
                .map_err(cuda_err("binding the context"))?;
            // SAFETY: `b` holds at least `len` bytes (checked by the callers); the lease's
            // memory is not read or reused before the copy is known to be done (a wait, or a
            // fence the next lease waits for).
            unsafe {
                result::memcpy_dtoh_async(lease.bytes(), self.ptr(b), self.stream.cu_stream())
                    .map_err(cuda_err("device to host copy"))?;
            }
            Ok(lease)
        }))
    }

    /// Opens GPU `ordinal`. Fails with [`Error::NoDevice`] (never a panic) when the driver,
    /// the GPU or NVRTC is missing, naming what and where it looked.
    pub fn new(ordinal: usize) -> Result<Self> {
        let info = probe(ordinal)?;
        let nvrtc = Nvrtc::find().map_err(|e| {
            Error::NoDevice(format!(
                "{} is present but NVRTC (which compiles our kernels) is not: {e}",
                info.name
            ))
        })?;
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("cannot open the GPU"))?;
        // One stream orders everything, so cudarc's per-buffer events are not needed.
        // SAFETY: no buffer exists yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        keep_freed_memory(&ctx);
        Ok(CudaLauncher {
            cache: ModuleCache::new(&info.arch(), nvrtc.version),
            info,
            pinned: PinnedPool::new(CudaHost { ctx: ctx.clone() }),
            ctx,
            stream,
            nvrtc,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            mem: MemCounter::with_limit(None),
        })
    }

    /// Compiles (or loads from the cache) every kernel file now, so a device whose kernels
    /// cannot be built is found out before any work starts.
    pub fn preload(&self) -> Result<()> {
        let arch = self.info.arch();
        for (file, _) in SOURCES {
            // Architecture-specific files (conv_wgmma.cu) load on first use: only the paths
            // that ask for them depend on them.
            if compile_arch(file, &arch) != arch {
                continue;
            }
            self.module(file)?;
        }
        Ok(())
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Free and total device memory as the driver sees it.
    pub fn device_memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(cuda_err("cuMemGetInfo"))
    }

    /// Where compiled modules are cached (None: caching is off).
    pub fn cache_dir(&self) -> Option<&PathBuf> {
        self.cache.dir()
    }

    fn module(&self, file: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().expect("module table");
        if let Some(m) = modules.get(file) {
            return Ok(m.clone());
        }
        let arch = compile_arch(file, &self.info.arch());
        let load = |cubin: Vec<u8>| self.ctx.load_module(Ptx::from_binary(cubin));
        let module = match self.cache.get(file).map(load) {
            Some(Ok(m)) => m,
            // Not cached, or a stale/corrupt entry: compile (and overwrite it).
            _ => {
                let cubin = self.nvrtc.compile(file, &arch, Target::Cubin)?;
                self.cache.put(file, &cubin);
                load(cubin).map_err(|e| {
                    Error::Cuda(format!(
                        "loading kernels/{file} compiled for {arch} on {}: {}",
                        self.info.name,
                        driver_error_text(e)
                    ))
                })?
            }
        };
        modules.insert(file, module.clone());
        Ok(module)
    }

    fn function(&self, kernel: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().expect("function table").get(kernel) {
            return Ok(f.clone());
        }
        let file = kernel_file(kernel)
            .ok_or_else(|| Error::Invalid(format!("no kernel `{kernel}` in kernels/*.cu")))?;
        let f = self
            .module(file)?
            .load_function(kernel)
            .map_err(cuda_err(kernel))?;
        self.functions
            .lock()
            .expect("function table")
            .insert(kernel.to_string(), f.clone());
        Ok(f)
    }

    fn ptr(&self, b: &CudaBuf) -> u64 {
        b.slice.device_ptr(&self.stream).0
    }
}

/// The kernel file that defines entry point `kernel` (build.rs lists them, launch bounds or not).
fn kernel_file(kernel: &str) -> Option<&'static str> {
    ENTRIES.iter().find(|(k, _)| *k == kernel).map(|(_, f)| *f)
}

/// Freed buffers stay in the stream-ordered pool instead of going back to the driver at every
/// synchronisation, as PyTorch's caching allocator does (best effort: older drivers lack pools).
fn keep_freed_memory(ctx: &CudaContext) {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: plain driver calls on the context's own device; the value is a u64 as the
    // attribute requires.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS
        {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
}

impl Launcher for CudaLauncher {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        format!(
            "cuda: {} ({}, {} MiB)",
            self.info.name,
            self.info.arch(),
            self.info.total_memory >> 20
        )
    }
    fn has_wgmma(&self) -> bool {
        // sm_90a targets came with NVRTC 12.0.
        self.info.capability == (9, 0) && self.nvrtc.version >= (12, 0)
    }
    fn alloc(&self, bytes: usize) -> Result<CudaBuf> {
        let held = self.mem.reserve(bytes)?;
        // SAFETY: u8 has no invalid bit patterns. Uninitialised, as the Launcher contract says
        // (every kernel writes its whole output; zero-filling each activation cost a memset).
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(cuda_err("alloc"))?;
        Ok(CudaBuf { slice, _held: held })
    }
    fn upload(&self, data: &[u8]) -> Result<CudaBuf> {
        if data.is_empty() {
            return self.alloc(0);
        }
        let held = self.mem.reserve(data.len())?;
        let slice = self
            .stream
            .clone_htod(data)
            .map_err(cuda_err("host to device copy"))?;
        Ok(CudaBuf { slice, _held: held })
    }
    fn upload_with(&self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<CudaBuf> {
        let Some(lease) = self.pinned.lease(len) else {
            return upload_filled(self, len, fill);
        };
        let mut lease = lease?;
        fill(lease.bytes());
        let buf = self.alloc(len)?;
        self.ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the context"))?;
        // SAFETY: `buf` holds `len` bytes. No wait here: the kernels after this copy in the
        // stream see its bytes, and the lease goes back to the pool fenced by an event, so
        // its memory is refilled only once the copy has read it.
        unsafe {
            result::memcpy_htod_async(self.ptr(&buf), lease.bytes(), self.stream.cu_stream())
                .map_err(cuda_err("host to device copy"))?;
        }
        let (lease, copied) = self.fence(lease, false, "host to device copy")?;
        lease.release_after(copied);
        Ok(buf)
    }
    fn download(&self, b: &CudaBuf, out: &mut [u8]) -> Result<()> {
        self.check_download(b, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        if let Some(lease) = self.download_pinned(b, out.len()) {
            let mut lease = lease?;
            if let Err(e) = self.synchronize() {
                // Whether the copy has finished is unknown: keep the buffer out of the pool.
                lease.leak();
                return Err(e);
            }
            out.copy_from_slice(lease.bytes());
            return Ok(());
        }
        self.stream
            .memcpy_dtoh(&b.slice.slice(..out.len()), out)
            .map_err(cuda_err("device to host copy"))?;
        self.synchronize()
    }
    fn download_later(&self, b: CudaBuf, len: usize) -> Result<Box<dyn InFlight>> {
        self.check_download(&b, len)?;
        let Some(lease) = self.download_pinned(&b, len) else {
            return download_now(self, &b, len);
        };
        // The host stage waits on this event for as long as the device takes: it sleeps.
        let (lease, done) = self.fence(lease?, true, "device to host copy")?;
        // Freed now, in stream order after the copy just queued: the next batch may reuse it.
        drop(b);
        Ok(Box::new(Landing {
            lease: Some(lease),
            done: Some(done),
        }))
    }
    fn copy(&self, b: &CudaBuf, bytes: usize) -> Result<CudaBuf> {
        let held = self.mem.reserve(bytes)?;
        let slice = self
            .stream
            .clone_dtod(&b.slice)
            .map_err(cuda_err("device copy"))?;
        Ok(CudaBuf { slice, _held: held })
    }
    fn memory(&self) -> &MemCounter {
        &self.mem
    }
    fn synchronize(&self) -> Result<()> {
        // Also where errors of earlier asynchronous launches surface.
        self.stream
            .synchronize()
            .map_err(cuda_err("kernel execution"))
    }
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[KArg<CudaBuf>],
    ) -> Result<()> {
        let f = self.function(kernel)?;
        if shared_bytes > 48 * 1024 {
            // Past 48 KB a kernel must opt in to its dynamic shared memory (idempotent, cheap).
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared_bytes as i32,
            )
            .map_err(cuda_err(kernel))?;
        }
        // One 8-byte slot per argument: cuLaunchKernel reads each parameter's own size from
        // its slot (little-endian, so an int is the slot's low half).
        let slots: Vec<u64> = args
            .iter()
            .map(|a| match a {
                KArg::Buf(b) => self.ptr(b),
                KArg::BufAt(b, off) => self.ptr(b) + *off as u64,
                KArg::Null => 0,
                KArg::I32(v) => *v as u32 as u64,
                KArg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut builder = self.stream.launch_builder(&f);
        for s in &slots {
            builder.arg(s);
        }
        let cfg = LaunchConfig {
            grid_dim: (grid[0], grid[1], grid[2]),
            block_dim: (block[0], block[1], block[2]),
            shared_mem_bytes: shared_bytes,
        };
        // SAFETY: forwarded from the caller (arguments match the kernel and its grid).
        unsafe { builder.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(kernel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry point resolves to the file that defines it, including those declared with
    /// launch bounds (`void TWO_PER_SM conv2d_fwd_tf32(`), which a plain text search missed.
    #[test]
    fn every_entry_point_resolves_to_its_file() {
        for name in [
            "conv2d_fwd_tf32",
            "conv2d_bwd_data_bf16",
            "conv2d_fwd_tf32_t128",
        ] {
            assert_eq!(kernel_file(name), Some("conv.cu"), "{name}");
        }
        assert_eq!(kernel_file("relu_fwd_f32"), Some("pointwise.cu"));
        assert_eq!(kernel_file("conv2d_fwd"), None);
        for (file, src) in SOURCES {
            let n = src.matches("extern \"C\" __global__ void ").count();
            let listed = ENTRIES.iter().filter(|(_, f)| f == file).count();
            assert_eq!(n, listed, "{file}: entry points missing from ENTRIES");
        }
    }
}
