//! `gradcam selftest`: every op of a backend against the naive CPU oracle, as a table; a
//! non-zero exit on any mismatch.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use gradcam::backend::gpu::{CudaLauncher, EmuLauncher, GpuBackend, Launcher};
use gradcam::backend::{selftest, Backend, CpuBackend};

use crate::PrecisionArg;

/// Every op, then the tensor-core fragment checks.
fn gpu_checks<L: Launcher>(be: GpuBackend<L>) -> anyhow::Result<(String, Vec<selftest::Check>)> {
    let mut checks = selftest::run(&be)?;
    checks.extend(selftest::mma_checks(&be)?);
    Ok((be.name(), checks))
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SelftestDevice {
    /// The fast CPU backend.
    Cpu,
    /// The CUDA kernels and GPU host code on the CPU emulator (slow; no GPU needed).
    Emu,
    /// The CUDA kernels on the first NVIDIA GPU.
    Cuda,
}

#[derive(Args)]
pub struct SelftestArgs {
    #[arg(long, value_enum, default_value_t = SelftestDevice::Cpu)]
    device: SelftestDevice,
    /// Convolution arithmetic of the GPU kernels (emu, cuda).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Tf32)]
    precision: PrecisionArg,
}

pub fn run(a: SelftestArgs) -> anyhow::Result<ExitCode> {
    let (name, checks) = match a.device {
        SelftestDevice::Cpu => ("cpu (fast)".into(), selftest::run(&CpuBackend::fast())?),
        SelftestDevice::Emu => gpu_checks(GpuBackend::with_precision(
            EmuLauncher::new(),
            a.precision.into(),
        ))?,
        SelftestDevice::Cuda => gpu_checks(GpuBackend::with_precision(
            CudaLauncher::new(0).context("--device cuda")?,
            a.precision.into(),
        ))?,
    };
    println!("selftest: {name} against the naive CPU ops\n");
    print!("{}", selftest::table(&checks));
    let failed = checks.iter().filter(|c| !c.passed()).count();
    println!("\n{} passed, {failed} failed", checks.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
