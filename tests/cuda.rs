//! The CUDA backend on a real GPU: the selftest (every kernel against the naive CPU ops) and
//! the pytorch-grad-cam parity fixtures end to end (device preprocessing and overlay included),
//! with tests/parity.rs's tolerances. Skipped where there is no usable GPU, unless
//! GRADCAM_REQUIRE_GPU is set (scripts/gpu-check.sh sets it on the lent H100).

mod common;

use gradcam::backend::gpu::{CudaLauncher, GpuBackend};
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

#[test]
fn selftest_passes_on_the_gpu() {
    let Some(l) = launcher() else { return };
    let checks = selftest::run(&GpuBackend::new(l)).unwrap();
    let table = selftest::table(&checks);
    eprintln!("{table}");
    assert!(checks.iter().all(|c| c.passed()), "{table}");
}

#[test]
fn parity_fixtures_on_the_gpu() {
    if launcher().is_none() {
        return;
    }
    let n = common::parity_end_to_end(|g| {
        Network::new(g, GpuBackend::new(CudaLauncher::new(0).unwrap())).unwrap()
    });
    assert!(n >= 20);
}
