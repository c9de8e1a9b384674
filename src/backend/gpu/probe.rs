//! Is there a usable GPU? Checked before any other cudarc call, because cudarc panics when it
//! cannot load libcuda: the answer is either a device or an error that says what is missing
//! and where we looked, so `--device auto` can fall back to the CPU and `--device cuda` can
//! fail with a useful message.

use cudarc::driver::{result, sys};

use crate::{Error, Result};

/// The GPU a [`super::CudaLauncher`] runs on.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    pub total_memory: usize,
    /// CUDA version the driver supports, e.g. 13000.
    pub driver_version: i32,
}

impl DeviceInfo {
    /// NVRTC's name for the device's architecture, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.capability.0, self.capability.1)
    }
}

/// The driver library and device `ordinal`, or why not.
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    // SAFETY: only tries to dlopen libcuda under its usual names; runs no CUDA code.
    if !unsafe { sys::is_culib_present() } {
        let mut names = cudarc::get_lib_name_candidates("cuda");
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        return Err(Error::NoDevice(format!(
            "no NVIDIA driver: libcuda could not be loaded; looked for {} on the dynamic \
             loader's path (LD_LIBRARY_PATH={})",
            names.join(", "),
            std::env::var("LD_LIBRARY_PATH").unwrap_or_else(|_| "<unset>".into())
        )));
    }
    // cudarc panics on a driver that lacks a symbol it expects (older than CUDA 13's API):
    // report that as an error too.
    std::panic::catch_unwind(|| query(ordinal)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::NoDevice(format!(
            "the NVIDIA driver cannot be used (too old for CUDA 13?): {msg}"
        )))
    })
}

fn query(ordinal: usize) -> Result<DeviceInfo> {
    let no_device = |what: &str, e: result::DriverError| {
        Error::NoDevice(format!("{what}: {}", driver_error_text(e)))
    };
    result::init().map_err(|e| no_device("the NVIDIA driver did not start (cuInit)", e))?;
    let count = result::device::get_count().map_err(|e| no_device("cuDeviceGetCount", e))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::NoDevice(format!(
            "GPU {ordinal} asked for; the driver sees {count}"
        )));
    }
    let mut version = 0;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| no_device("cuDriverGetVersion", e))?;
    // Device queries only: opening a context here as well would create the primary context
    // twice (the launcher opens the one it keeps).
    let dev = result::device::get(ordinal as i32).map_err(|e| no_device("cuDeviceGet", e))?;
    // SAFETY: `dev` comes from cuDeviceGet.
    let attr = |a| unsafe { result::device::get_attribute(dev, a) };
    let capability = (
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    );
    Ok(DeviceInfo {
        ordinal,
        name: result::device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into()),
        capability: (
            capability
                .0
                .map_err(|e| no_device("compute capability", e))?,
            capability
                .1
                .map_err(|e| no_device("compute capability", e))?,
        ),
        // SAFETY: as above.
        total_memory: unsafe { result::device::total_mem(dev) }.unwrap_or(0),
        driver_version: version,
    })
}

/// `CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)`.
pub(crate) fn driver_error_text(e: result::DriverError) -> String {
    let name = e
        .error_name()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}
