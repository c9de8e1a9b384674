//! Shared by the parity tests: fixture paths, expected-value files, overlay comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gradcam::backend::CpuBackend;
use gradcam::model::{self, Network};
use gradcam::Tensor;
use serde_json::Value;

/// tests/fixtures, or GRADCAM_FIXTURES (a test binary run on another machine, see
/// scripts/gpu-check.sh).
pub fn fixtures() -> PathBuf {
    std::env::var_os("GRADCAM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

pub use gradcam::parity::{Expected, ParityTol};

/// A fixture's reference tensors.
pub fn expected(path: &Path) -> Expected {
    Expected::load(path).unwrap()
}

pub fn manifest(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

/// One network per model of manifest.json.
pub fn networks() -> HashMap<String, Network<CpuBackend>> {
    manifest("manifest.json")["models"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, m)| {
            let path = fixtures().join(m["file"].as_str().unwrap());
            let g = model::load(&path, None).unwrap();
            (name.clone(), Network::new(g, CpuBackend::fast()).unwrap())
        })
        .collect()
}

/// Largest |ours - theirs| relative to max(1, max |theirs|).
pub fn rel_err(ours: &Tensor, theirs: &Tensor) -> f32 {
    let scale = theirs.data().iter().fold(1f32, |m, v| m.max(v.abs()));
    ours.max_abs_diff(theirs) / scale
}

/// show_cam_on_image bytes by gradcam::parity::overlay_mismatches' rule: within ±2, or ±4
/// where the reference 255·cam lies within 1e-2 of a truncation boundary.
pub fn check_overlay(id: &str, ours: &[u8], theirs: &[u8], reference_cam: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{id}: overlay size");
    let bad = gradcam::parity::overlay_mismatches(ours, theirs, reference_cam);
    if let Some(&(i, a, b)) = bad.first() {
        panic!(
            "{id}: {} overlay bytes off, first {i}: {a} vs {b}",
            bad.len()
        );
    }
}

/// tests/parity.rs's tolerances.
pub const F32_TOL: ParityTol = ParityTol::F32;

/// The tensor-core precisions with their parity tolerances.
pub const TENSOR_CORE_TOL: [(gradcam::backend::gpu::Precision, ParityTol); 3] = [
    (gradcam::backend::gpu::Precision::Tf32, ParityTol::TF32),
    (gradcam::backend::gpu::Precision::Bf16, ParityTol::BF16),
    (gradcam::backend::gpu::Precision::F16, ParityTol::F16),
];

/// Every case of manifest.json (that `only` accepts) through `explain_batch` on any backend,
/// asserting `tol` case by case. Returns the number of cases and the largest cam error.
pub fn parity_end_to_end<B: gradcam::backend::Backend>(
    open: impl Fn(gradcam::model::Graph) -> Network<B>,
    tol: ParityTol,
    only: impl Fn(&str) -> bool,
) -> (usize, f32) {
    let results = gradcam::parity::run_fixtures(&fixtures(), |g| Ok(open(g)), only).unwrap();
    for r in &results {
        assert!(tol.passes(r), "{}: {r:?} outside {tol:?}", r.id);
    }
    let worst = results.iter().map(|r| r.cam_err).fold(0f32, f32::max);
    (results.len(), worst)
}
