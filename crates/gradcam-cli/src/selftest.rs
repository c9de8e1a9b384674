//! `gradcam selftest`: every op of a backend against the naive CPU oracle, then the
//! pytorch-grad-cam parity fixtures end to end, as a table; a non-zero exit on any mismatch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use gradcam::backend::gpu::{CudaLauncher, EmuLauncher, GpuBackend, Launcher, Precision};
use gradcam::backend::selftest::{self, Check};
use gradcam::backend::{Backend, CpuBackend};
use gradcam::model::Network;
use gradcam::parity::{run_fixtures, ParityTol};

use crate::PrecisionArg;

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
    /// Convolution arithmetic of the GPU kernels (emu, cuda); on the CPU, `bf16` checks its
    /// bf16 convolutions (AMX), any other value its f32 ones.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Tf32)]
    precision: PrecisionArg,
    /// The parity fixtures to run end to end (manifest.json and pytorch-grad-cam's outputs;
    /// default: tests/fixtures of the source tree when run from it, else none).
    #[arg(long)]
    fixtures: Option<PathBuf>,
}

/// The GPU backend the selftest checks: the kernels as configured (GRADCAM_CONV_KRSC, _TILE,
/// _ASYNC); tuning would pick among them by speed, so it is off unless GRADCAM_CONV_TUNE=1
/// (every choice computes the same bits: tests/gpu_emulated.rs, tests/cuda.rs).
fn cuda(precision: Precision) -> gradcam::Result<GpuBackend<CudaLauncher>> {
    let tune = std::env::var("GRADCAM_CONV_TUNE").as_deref() == Ok("1");
    Ok(GpuBackend::with_precision(CudaLauncher::new(0)?, precision).with_conv_tune(tune))
}

/// Every op, then the tensor-core fragment checks.
fn gpu_checks<L: Launcher>(be: &GpuBackend<L>) -> anyhow::Result<Vec<Check>> {
    let mut checks = selftest::run(be)?;
    checks.extend(selftest::device_checks(be)?);
    Ok(checks)
}

/// One row per fixture case: the map's error, or infinity when the class, the logits or the
/// overlay bytes are off (said in the shape column).
fn parity_checks<B: Backend>(
    dir: &Path,
    tol: ParityTol,
    backend: impl Fn() -> anyhow::Result<B>,
) -> anyhow::Result<Vec<Check>> {
    let open = |g| -> gradcam::Result<Network<B>> {
        let be = backend().map_err(|e| gradcam::Error::Invalid(format!("{e:#}")))?;
        Network::new(g, be)
    };
    let results = run_fixtures(dir, open, |_| true)?;
    Ok(results
        .iter()
        .map(|r| {
            let mut notes = vec![format!("logits {:.1e}", r.logits_err)];
            if !r.class_ok {
                notes.push("CLASS DIFFERS".into());
            }
            if let Some(bad) = r.overlay_bad {
                notes.push(format!("overlay {bad} bytes off"));
            }
            let ok_else = r.class_ok
                && r.logits_err < tol.logits
                && (!tol.overlay || r.overlay_bad.unwrap_or(0) == 0);
            Check {
                op: format!("parity {}", short(&r.id)),
                shape: notes.join(", "),
                max_err: if ok_else { r.cam_err } else { f32::INFINITY },
                tolerance: tol.cam,
            }
        })
        .collect())
}

/// `resnet_tiny__layer4__a__native` → `resnet layer4 a native`.
fn short(id: &str) -> String {
    id.replace("_tiny", "").replace("__", " ")
}

pub fn run(a: SelftestArgs) -> anyhow::Result<ExitCode> {
    let fixtures = a.fixtures.clone().or_else(|| {
        Some(PathBuf::from("tests/fixtures")).filter(|d| d.join("manifest.json").exists())
    });
    if let Some(d) = &a.fixtures {
        if !d.join("manifest.json").exists() {
            anyhow::bail!("--fixtures {}: no manifest.json there", d.display());
        }
    }
    let precision: Precision = a.precision.into();
    let cpu = match a.precision {
        PrecisionArg::Bf16 => crate::cpu_bf16("checking the f32 ones"),
        PrecisionArg::F16 if matches!(a.device, SelftestDevice::Cpu) => {
            eprintln!("note: the CPU has no f16 convolutions; checking the f32 ones");
            CpuBackend::fast()
        }
        _ => CpuBackend::fast(),
    };
    let (name, mut checks, tol) = match a.device {
        SelftestDevice::Cpu => (
            cpu.name(),
            selftest::run(&cpu)?,
            match cpu.bf16 {
                true => ParityTol::CPU_BF16,
                false => ParityTol::F32,
            },
        ),
        SelftestDevice::Emu => {
            let be = GpuBackend::with_precision(EmuLauncher::new(), precision);
            (
                be.name(),
                gpu_checks(&be)?,
                ParityTol::for_precision(precision),
            )
        }
        SelftestDevice::Cuda => {
            let be = cuda(precision).context("--device cuda")?;
            (
                be.name(),
                gpu_checks(&be)?,
                ParityTol::for_precision(precision),
            )
        }
    };
    if let Some(dir) = &fixtures {
        let rows = match a.device {
            SelftestDevice::Cpu => parity_checks(dir, tol, || Ok(cpu))?,
            SelftestDevice::Emu => parity_checks(dir, tol, || {
                Ok(GpuBackend::with_precision(EmuLauncher::new(), precision))
            })?,
            SelftestDevice::Cuda => parity_checks(dir, tol, || Ok(cuda(precision)?))?,
        };
        checks.extend(rows);
    }
    println!("selftest: {name} against the naive CPU ops");
    match &fixtures {
        Some(d) => println!("and pytorch-grad-cam 1.5.7's outputs in {}\n", d.display()),
        None => {
            println!("(no parity fixtures: pass --fixtures tests/fixtures from the source tree)\n")
        }
    }
    print!("{}", selftest::table(&checks));
    let failed = checks.iter().filter(|c| !c.passed()).count();
    println!("\n{} passed, {failed} failed", checks.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
