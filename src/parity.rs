//! The pytorch-grad-cam 1.5.7 parity fixtures (tests/fixtures: `manifest.json`, small models,
//! odd-sized images and the reference outputs written by tools/make_fixtures.py) run end to
//! end through [`explain_batch`] on any backend — preprocessing, Grad-CAM and the overlay
//! wherever that backend does them. Used by the tests and by `gradcam selftest --fixtures`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use serde_json::Value;

use crate::backend::Backend;
use crate::cam::ClassSel;
use crate::explain::{explain_batch, ExplainConfig, Timings};
use crate::image::{load_rgb8, InputSize};
use crate::model::{self, Graph, Network};
use crate::{Error, Result, Tensor};

/// A fixture's reference tensors (safetensors written by tools/make_fixtures.py).
pub struct Expected {
    pub tensors: HashMap<String, (Vec<usize>, Vec<u8>, safetensors::Dtype)>,
}

impl Expected {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::BadSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec(), v.dtype())))
            .collect();
        Ok(Expected { tensors })
    }
    /// An F32 reference tensor (panics on a missing name or another dtype: fixtures are ours).
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
    /// What a parity case reads is there: `logits` and `cam` in F32, `class` an I64; else an
    /// error naming what is missing (a fixtures folder given by hand to `selftest`).
    pub fn check_case(&self, path: &Path) -> Result<()> {
        use safetensors::Dtype;
        for (name, dtype) in [
            ("logits", Dtype::F32),
            ("cam", Dtype::F32),
            ("class", Dtype::I64),
        ] {
            match self.tensors.get(name) {
                Some((_, d, t)) if *t == dtype && d.len() >= dtype.size() => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "{}: no {dtype:?} tensor `{name}`, which a parity case compares with",
                        path.display()
                    )))
                }
            }
        }
        Ok(())
    }

    /// The class the case explains.
    ///
    /// # Panics
    /// If the file has no `class` tensor (a file opened through [`Expected::load`]'s checks
    /// always has one).
    pub fn class(&self) -> usize {
        let (_, d, _) = &self.tensors["class"];
        i64::from_le_bytes(d[..8].try_into().expect("an i64")) as usize
    }
}

/// Overlay bytes that break parity: off by more than ±2, or ±4 where the reference 255·cam lies
/// within 1e-2 of a truncation boundary (rounding noise far below the map tolerance may then
/// pick the neighbouring JET entry, up to 4 levels apart, halved by the blend, rescaled).
/// Returns (index, ours, theirs) of each.
pub fn overlay_mismatches(
    ours: &[u8],
    theirs: &[u8],
    reference_cam: &[f32],
) -> Vec<(usize, u8, u8)> {
    if ours.len() != theirs.len() || reference_cam.len().checked_mul(3) != Some(ours.len()) {
        return vec![(usize::MAX, 0, 0)];
    }
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|&(i, (a, b))| {
            let v = 255.0 * reference_cam[i / 3];
            let tol = if (v - v.round()).abs() < 1e-2 { 4 } else { 2 };
            a.abs_diff(*b) > tol
        })
        .map(|(i, (a, b))| (i, *a, *b))
        .collect()
}

/// How one fixture case came out.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub id: String,
    /// Largest |logit - reference| over our top-5 classes, relative to max(1, max |reference|).
    pub logits_err: f32,
    pub class_ok: bool,
    /// Max abs difference of the normalised map at the input size.
    pub cam_err: f32,
    /// Overlay bytes outside the ±2 / ±4 rule (None where the case has no reference overlay).
    pub overlay_bad: Option<usize>,
}

/// Runs the cases of `dir`/manifest.json whose id `only` accepts, one network per model.
pub fn run_fixtures<B: Backend>(
    dir: &Path,
    open: impl Fn(Graph) -> Result<Network<B>>,
    only: impl Fn(&str) -> bool,
) -> Result<Vec<CaseResult>> {
    let text = std::fs::read_to_string(dir.join("manifest.json"))
        .map_err(|e| Error::Invalid(format!("{}: {e}", dir.join("manifest.json").display())))?;
    let m: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}/manifest.json: {e}", dir.display())))?;
    let bad = |what: &str| Error::Invalid(format!("{}/manifest.json: {what}", dir.display()));
    let cases = m["cases"].as_array().ok_or_else(|| bad("no cases"))?;
    let mut nets: HashMap<String, Network<B>> = HashMap::new();
    let mut out = Vec::new();
    for c in cases {
        let field = |k: &str| {
            c[k].as_str()
                .ok_or_else(|| bad(&format!("a case lacks {k}")))
        };
        let id = field("id")?;
        if !only(id) {
            continue;
        }
        let model_name = field("model")?;
        if !nets.contains_key(model_name) {
            let file = m["models"][model_name]["file"]
                .as_str()
                .ok_or_else(|| bad(&format!("no file for model {model_name}")))?;
            nets.insert(model_name.into(), open(model::load(dir.join(file), None)?)?);
        }
        let net = &nets[model_name];
        let exp_path = dir.join(field("expected")?);
        let exp = Expected::load(&exp_path)?;
        exp.check_case(&exp_path)?;
        let img = load_rgb8(&dir.join(field("image")?))?;
        let cfg = ExplainConfig {
            layer: Some(field("layer")?.into()),
            classes: c["class"]
                .as_u64()
                .map_or(ClassSel::Predicted, |k| ClassSel::All(k as usize)),
            counterfactual: c["counterfactual"].as_bool().unwrap_or(false),
            size: match &c["size"] {
                Value::String(_) => InputSize::Native,
                v => InputSize::Square(v.as_u64().ok_or_else(|| bad("a case's size"))? as usize),
            },
            ..Default::default()
        };
        let e = explain_batch(net, &[&img], &cfg, &mut Timings::default())?.remove(0);
        let logits = exp.f32("logits");
        let scale = logits.data().iter().fold(1f32, |m, v| m.max(v.abs()));
        let logits_err = e
            .top5
            .iter()
            .map(|&(k, l)| {
                logits
                    .data()
                    .get(k)
                    .map_or(f32::INFINITY, |r| (l - r).abs() / scale)
            })
            .fold(0f32, f32::max);
        let cam_ref = exp.f32("cam");
        let cam_err = if e.cam.len() == cam_ref.data().len() {
            Tensor::new(cam_ref.shape().to_vec(), e.cam.clone()).max_abs_diff(&cam_ref)
        } else {
            f32::INFINITY
        };
        let overlay_bad = exp.bytes("overlay").map(|theirs| match &e.overlay {
            Some(o) => overlay_mismatches(o.as_raw(), theirs, cam_ref.data()).len(),
            None => theirs.len(),
        });
        out.push(CaseResult {
            id: id.into(),
            logits_err,
            class_ok: e.class == exp.class(),
            cam_err,
            overlay_bad,
        });
    }
    Ok(out)
}

/// How close a backend must come to pytorch-grad-cam (f32 on the CPU).
#[derive(Clone, Copy, Debug)]
pub struct ParityTol {
    /// Logits, relative to max(1, max |reference|).
    pub logits: f32,
    /// The normalised map at the input size, absolute.
    pub cam: f32,
    /// Overlay bytes by [`overlay_mismatches`]' rule (only meaningful at the f32 map tolerance).
    pub overlay: bool,
}

impl ParityTol {
    /// f32 arithmetic (the CPU, `--precision f32`): observed map error ≈ 3e-6.
    pub const F32: ParityTol = ParityTol {
        logits: 1e-4,
        cam: 1e-3,
        overlay: true,
    };
    /// TF32 tensor cores (10 of f32's 23 mantissa bits): observed map error 4.9e-3.
    pub const TF32: ParityTol = ParityTol {
        logits: 1e-2,
        cam: 2e-2,
        overlay: false,
    };
    /// bf16 tensors and tensor cores: observed 1.1e-1 on the nearly flat maps of the tiny
    /// random-weight fixtures, where min-max normalisation magnifies small differences.
    pub const BF16: ParityTol = ParityTol {
        logits: 5e-2,
        cam: 2e-1,
        overlay: false,
    };

    /// The CPU's bf16 convolutions (AMX; operands rounded to bf16, everything stored in f32):
    /// observed map error 5.0e-2, logits 1.3e-2.
    pub const CPU_BF16: ParityTol = ParityTol {
        logits: 3e-2,
        cam: 1e-1,
        overlay: false,
    };

    /// f16 tensors and tensor cores (10 mantissa bits, as TF32, every tensor stored rounded):
    /// observed map error 3.1e-3, logits 1.6e-3 (emulator).
    pub const F16: ParityTol = ParityTol {
        logits: 1e-2,
        cam: 3e-2,
        overlay: false,
    };

    pub fn for_precision(p: crate::backend::gpu::Precision) -> Self {
        use crate::backend::gpu::Precision;
        match p {
            Precision::F32 => Self::F32,
            Precision::Tf32 => Self::TF32,
            Precision::Bf16 => Self::BF16,
            Precision::F16 => Self::F16,
        }
    }

    pub fn passes(&self, r: &CaseResult) -> bool {
        r.class_ok
            && r.logits_err < self.logits
            && r.cam_err < self.cam
            && (!self.overlay || r.overlay_bad.unwrap_or(0) == 0)
    }
}
