//! Shared by the parity tests: fixture paths, expected-value files, overlay comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gradcam::backend::CpuBackend;
use gradcam::model::{self, Network};
use gradcam::Tensor;
use safetensors::SafeTensors;
use serde_json::Value;

/// tests/fixtures, or GRADCAM_FIXTURES (a test binary run on another machine, see
/// scripts/gpu-check.sh).
pub fn fixtures() -> PathBuf {
    std::env::var_os("GRADCAM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

pub struct Expected {
    pub tensors: HashMap<String, (Vec<usize>, Vec<u8>, safetensors::Dtype)>,
}

impl Expected {
    pub fn load(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec(), v.dtype())))
            .collect();
        Expected { tensors }
    }
    pub fn f32(&self, name: &str) -> Tensor {
        let (shape, data, dtype) = &self.tensors[name];
        assert_eq!(*dtype, safetensors::Dtype::F32, "{name}");
        let v = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Tensor::new(shape.clone(), v)
    }
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensors.get(name).map(|(_, d, _)| d.as_slice())
    }
    pub fn class(&self) -> usize {
        let (_, d, _) = &self.tensors["class"];
        i64::from_le_bytes(d[..8].try_into().unwrap()) as usize
    }
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

/// show_cam_on_image bytes: within ±2, or ±4 where the reference 255·cam lies within 1e-2
/// of a truncation boundary (rounding noise far below the map tolerance may then pick the
/// neighbouring JET entry, up to 4 levels apart, halved by the blend, then rescaled).
pub fn check_overlay(id: &str, ours: &[u8], theirs: &[u8], reference_cam: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{id}: overlay size");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let v = 255.0 * reference_cam[i / 3];
        let tol = if (v - v.round()).abs() < 1e-2 { 4 } else { 2 };
        assert!(a.abs_diff(*b) <= tol, "{id}: overlay byte {i}: {a} vs {b}");
    }
}

/// How close a backend must come to pytorch-grad-cam (f32 on the CPU) in [`parity_end_to_end`].
#[derive(Clone, Copy, Debug)]
pub struct ParityTol {
    /// Logits, relative to max(1, max |reference|).
    pub logits: f32,
    /// The normalised map at the input size, absolute.
    pub cam: f32,
    /// Check overlay bytes with [`check_overlay`] (only meaningful at the f32 cam tolerance).
    pub overlay: bool,
}

/// tests/parity.rs's tolerances.
pub const F32_TOL: ParityTol = ParityTol {
    logits: 1e-4,
    cam: 1e-3,
    overlay: true,
};

/// The tensor-core precisions with their parity tolerances (see tests/gpu_emulated.rs).
pub const TENSOR_CORE_TOL: [(gradcam::backend::gpu::Precision, ParityTol); 2] = [
    (
        gradcam::backend::gpu::Precision::Tf32,
        ParityTol {
            logits: 1e-2,
            cam: 2e-2,
            overlay: false,
        },
    ),
    (
        gradcam::backend::gpu::Precision::Bf16,
        ParityTol {
            logits: 5e-2,
            cam: 2e-1,
            overlay: false,
        },
    ),
];

/// Every case of manifest.json through [`explain_batch`] on any backend: preprocessing,
/// Grad-CAM and the overlay where the backend does them (on the device for a GPU), against
/// pytorch-grad-cam. `only` picks cases by id. Returns the number of cases checked and the
/// largest cam error.
pub fn parity_end_to_end<B: gradcam::backend::Backend>(
    open: impl Fn(gradcam::model::Graph) -> Network<B>,
    tol: ParityTol,
    only: impl Fn(&str) -> bool,
) -> (usize, f32) {
    use gradcam::cam::ClassSel;
    use gradcam::explain::{explain_batch, ExplainConfig, Timings};
    use gradcam::image::{load_rgb8, InputSize};
    let m = manifest("manifest.json");
    let mut nets = HashMap::new();
    let mut count = 0;
    let mut worst = 0f32;
    for c in m["cases"].as_array().unwrap() {
        if !only(c["id"].as_str().unwrap()) {
            continue;
        }
        let model = c["model"].as_str().unwrap();
        let net = nets.entry(model.to_string()).or_insert_with(|| {
            let file = m["models"][model]["file"].as_str().unwrap();
            open(model::load(fixtures().join(file), None).unwrap())
        });
        let id = c["id"].as_str().unwrap();
        let exp = Expected::load(&fixtures().join(c["expected"].as_str().unwrap()));
        let img = load_rgb8(&fixtures().join(c["image"].as_str().unwrap())).unwrap();
        let cfg = ExplainConfig {
            layer: Some(c["layer"].as_str().unwrap().into()),
            classes: c["class"]
                .as_u64()
                .map_or(ClassSel::Predicted, |k| ClassSel::All(k as usize)),
            counterfactual: c["counterfactual"].as_bool().unwrap(),
            size: match &c["size"] {
                Value::String(_) => InputSize::Native,
                v => InputSize::Square(v.as_u64().unwrap() as usize),
            },
            ..Default::default()
        };
        let e = explain_batch(net, &[&img], &cfg, &mut Timings::default())
            .unwrap()
            .remove(0);
        // An Explanation carries the top-5 logits: each within parity.rs's 1e-4 relative.
        let logits = exp.f32("logits");
        let scale = logits.data().iter().fold(1f32, |m, v| m.max(v.abs()));
        for &(k, l) in &e.top5 {
            let err = (l - logits.data()[k]).abs() / scale;
            assert!(err < tol.logits, "{id}: logit {k} relative error {err}");
        }
        assert_eq!(e.class, exp.class(), "{id}: class");
        let cam_ref = exp.f32("cam");
        let err = Tensor::new(cam_ref.shape().to_vec(), e.cam.clone()).max_abs_diff(&cam_ref);
        assert!(err < tol.cam, "{id}: cam differs by {err}");
        worst = worst.max(err);
        if let (true, Some(theirs)) = (tol.overlay, exp.bytes("overlay")) {
            check_overlay(id, e.overlay.as_raw(), theirs, cam_ref.data());
        }
        count += 1;
    }
    (count, worst)
}
