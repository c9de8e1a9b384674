//! Shared by the parity tests: fixture paths, expected-value files, overlay comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gradcam::backend::CpuBackend;
use gradcam::model::{self, Network};
use gradcam::Tensor;
use safetensors::SafeTensors;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
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
