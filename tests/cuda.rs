//! The CUDA backend on a real GPU: the selftest (every kernel against the naive CPU ops) and
//! the pytorch-grad-cam parity fixtures end to end (device preprocessing and overlay included),
//! with tests/parity.rs's tolerances. Skipped where there is no usable GPU, unless
//! GRADCAM_REQUIRE_GPU is set (scripts/gpu-check.sh sets it on the lent H100).

mod common;

use gradcam::backend::gpu::{CudaLauncher, GpuBackend, Precision};
use gradcam::backend::selftest;
use gradcam::model::Network;

fn launcher() -> Option<CudaLauncher> {
    match CudaLauncher::new(0) {
        Ok(l) => Some(l),
        Err(e) if std::env::var_os("GRADCAM_REQUIRE_GPU").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// Every precision, and the experimental staging paths (KRSC weights at each tensor-core
/// precision, the cp.async ring, channels-last 16-bit convolutions).
#[test]
fn selftest_passes_on_the_gpu() {
    for (precision, krsc, ring, nhwc) in [
        (Precision::F32, false, false, false),
        (Precision::Tf32, false, false, false),
        (Precision::Bf16, false, false, false),
        (Precision::F16, false, false, false),
        (Precision::Tf32, true, false, false),
        (Precision::Bf16, true, false, false),
        (Precision::F16, true, false, false),
        (Precision::Tf32, false, true, false),
        (Precision::Bf16, false, true, false),
        (Precision::F16, false, true, false),
        (Precision::Tf32, false, false, true),
        (Precision::Bf16, false, false, true),
        (Precision::F16, false, false, true),
    ] {
        let Some(l) = launcher() else { return };
        let be = GpuBackend::with_precision(l, precision)
            .with_conv_krsc(krsc)
            .with_conv_async(ring)
            .with_conv_nhwc(nhwc);
        let mut checks = selftest::run(&be).unwrap();
        checks.extend(selftest::device_checks(&be).unwrap());
        let table = selftest::table(&checks);
        eprintln!("{precision:?} KRSC {krsc} cp.async {ring} channels-last {nhwc}\n{table}");
        assert!(checks.iter().all(|c| c.passed()), "{table}");
    }
}

/// Hopper's warpgroup MMA (compute capability 9.0 only): the instruction against its twin, the
/// channels-last convs on it against the CPU. (Tests on wgmma have it in their names, so
/// scripts/gpu-check.sh can leave them out with `--skip wgmma` if its selftest hung.)
#[test]
fn wgmma_selftest_passes_on_the_gpu() {
    for precision in [Precision::Tf32, Precision::Bf16, Precision::F16] {
        let Some(l) = launcher() else { return };
        let be = GpuBackend::with_precision(l, precision).with_conv_wgmma(true);
        if !be.uses_wgmma() {
            eprintln!("no wgmma on this GPU: skipped");
            break;
        }
        let mut checks = selftest::run(&be).unwrap();
        checks.extend(selftest::device_checks(&be).unwrap());
        let table = selftest::table(&checks);
        eprintln!("{precision:?} wgmma\n{table}");
        assert!(checks.iter().all(|c| c.passed()), "{table}");
    }
}

/// Batches queued before earlier ones are collected, their overlays waited for on another
/// thread while the device's copies into the page-locked pool may still be under way.
#[test]
fn batches_in_flight_keep_their_own_results_on_the_gpu() {
    if launcher().is_none() {
        return;
    }
    let g = || gradcam::model::load(common::fixtures().join("resnet_tiny.safetensors"), None);
    common::batches_in_flight_keep_their_own_results(
        || Network::new(g().unwrap(), GpuBackend::new(launcher().unwrap())).unwrap(),
        |_, _| {},
    );
}

/// The kernels conv tuning chooses among agree bit for bit on the GPU too; prints the plans.
#[test]
fn conv_tuning_choices_agree_bit_for_bit_on_the_gpu() {
    if launcher().is_none() {
        return;
    }
    for precision in [Precision::Tf32, Precision::Bf16, Precision::F16] {
        let plans = common::conv_choices_agree(precision, || launcher().unwrap());
        eprintln!("{precision:?}: {plans:#?}");
    }
}

/// ...and so do the wgmma tiles among themselves, where the GPU has wgmma.
#[test]
fn wgmma_tiles_agree_bit_for_bit_on_the_gpu() {
    if launcher().is_none() {
        return;
    }
    for precision in [Precision::Tf32, Precision::Bf16, Precision::F16] {
        if !common::wgmma_tiles_agree(precision, || launcher().unwrap()) {
            eprintln!("no wgmma on this GPU: skipped");
            return;
        }
    }
}

#[test]
fn parity_fixtures_on_the_gpu() {
    if launcher().is_none() {
        return;
    }
    let (n, _) = common::parity_end_to_end(
        |g| Network::new(g, GpuBackend::new(CudaLauncher::new(0).unwrap())).unwrap(),
        common::F32_TOL,
        |_| true,
    );
    assert!(n >= 20);
    // The tensor-core paths, with tests/gpu_emulated.rs's tolerances.
    for (precision, tol) in common::TENSOR_CORE_TOL {
        let (_, worst) = common::parity_end_to_end(
            |g| {
                let l = CudaLauncher::new(0).unwrap();
                Network::new(g, GpuBackend::with_precision(l, precision)).unwrap()
            },
            tol,
            |_| true,
        );
        eprintln!("{precision:?}: largest cam error {worst:.2e}");
    }
}

/// The parity fixtures with the channels-last convs on wgmma, where the GPU has it.
#[test]
fn wgmma_parity_fixtures_on_the_gpu() {
    if launcher().is_none() {
        return;
    }
    if !GpuBackend::new(CudaLauncher::new(0).unwrap()).has_wgmma() {
        eprintln!("no wgmma on this GPU: skipped");
        return;
    }
    for (precision, tol) in common::TENSOR_CORE_TOL {
        let (_, worst) = common::parity_end_to_end(
            |g| {
                let l = CudaLauncher::new(0).unwrap();
                let be = GpuBackend::with_precision(l, precision).with_conv_wgmma(true);
                Network::new(g, be).unwrap()
            },
            tol,
            |_| true,
        );
        eprintln!("{precision:?} wgmma: largest cam error {worst:.2e}");
    }
}
