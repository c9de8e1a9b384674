//! `gradcam selftest`: every op of a backend against the naive CPU oracle, as a table; a
//! non-zero exit on any mismatch.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use gradcam::backend::gpu::{CudaLauncher, EmuLauncher, GpuBackend, Launcher};
use gradcam::backend::{selftest, CpuBackend};

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
}

pub fn run(a: SelftestArgs) -> anyhow::Result<ExitCode> {
    let (name, checks) = match a.device {
        SelftestDevice::Cpu => ("cpu (fast)".into(), selftest::run(&CpuBackend::fast())?),
        SelftestDevice::Emu => (
            "cuda kernels on the CPU emulator".into(),
            selftest::run(&GpuBackend::new(EmuLauncher::new()))?,
        ),
        SelftestDevice::Cuda => {
            let l = CudaLauncher::new(0).context("--device cuda")?;
            let name = l.name();
            (name, selftest::run(&GpuBackend::new(l))?)
        }
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
