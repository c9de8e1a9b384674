//! Parity with the two other libraries people use for these methods: TorchCAM 0.5.0 (Grad-CAM,
//! XGrad-CAM, LayerCAM) and Captum 0.9.0 (LayerGradCam), on the fixture models and inputs of
//! tests/parity.rs (tests/fixtures/peers.json, made by tools/make_peer_fixtures.py).
//!
//! What is compared is the raw map: at the target layer's resolution, after the ReLU, before
//! any normalisation (each library then finishes it its own way; pytorch-grad-cam's way is
//! tests/parity.rs' and tests/methods.rs'). Raw maps carry the network's own scale, which
//! normalised ones hide.
//!
//! Tolerance: max |ours − theirs| / max |theirs| < 1e-4 per map (f32 throughout; the
//! summation orders differ: observed at most 3e-6).
//!
//! Not compared: TorchCAM's Grad-CAM++ and Score-CAM, which define the method otherwise
//! (peers.json's `not_stored` says how; README, Parity).

mod common;

use common::{expected, fixtures, manifest, networks};
use gradcam::cam::{explain, CamRequest, ClassSel, Method};
use gradcam::Tensor;

/// Largest |ours − theirs| relative to the largest |theirs| (a NaN anywhere counts as
/// infinitely far; the shapes must agree).
fn rel_to_peak(ours: &Tensor, theirs: &Tensor) -> f32 {
    let peak = theirs.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    ours.max_abs_diff(theirs) / peak.max(f32::MIN_POSITIVE)
}

#[test]
fn raw_maps_match_torchcam_and_captum() {
    let nets = networks();
    let doc = manifest("peers.json");
    let cases = doc["cases"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut worst = 0f32;
    for c in cases {
        let id = c["id"].as_str().unwrap();
        let model = c["model"].as_str().unwrap();
        let input = expected(&fixtures().join(c["input_from"].as_str().unwrap())).f32("input");
        let class = c["class"].as_u64().unwrap() as usize;
        let classes = ClassSel::PerImage(vec![class]);
        let (h, w) = (
            c["map_size"][0].as_u64().unwrap() as usize,
            c["map_size"][1].as_u64().unwrap() as usize,
        );
        for (name, theirs) in c["maps"].as_object().unwrap() {
            let method = match name.as_str() {
                "torchcam_gradcam" | "captum_gradcam" => Method::GradCam,
                "torchcam_xgradcam" => Method::XGradCam,
                "torchcam_layercam" => Method::LayerCam,
                other => panic!("{id}: peers.json has a map `{other}` this test does not know"),
            };
            let req = CamRequest {
                method,
                ..CamRequest::grad_cam(c["layer"].as_str().unwrap(), &classes)
            };
            let x = Tensor::new(input.shape(), input.data().to_vec());
            let out = explain(&nets[model], x, &req).unwrap();
            assert_eq!(out.classes, [class], "{id}");
            assert_eq!(out.maps.shape(), [1, h, w], "{id} {name}: map size");
            let theirs: Vec<f32> = (theirs.as_array().unwrap().iter())
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(theirs.len(), h * w, "{id} {name}: the stored map's length");
            assert!(
                theirs.iter().any(|&v| v > 0.0),
                "{id} {name}: an all-zero map proves nothing"
            );
            let err = rel_to_peak(&out.maps, &Tensor::new([1, h, w], theirs));
            assert!(
                err < 1e-4,
                "{id} {name}: raw map off by {err:.2e} of its peak"
            );
            worst = worst.max(err);
            seen.insert(format!("{model} {name}"));
        }
    }
    eprintln!("worst raw-map error against TorchCAM / Captum: {worst:.2e} of the peak");
    // Every model against every peer map: a regenerated file that lost some fails here.
    for model in ["vgg_bn_tiny", "resnet_tiny", "resnet_basic_tiny"] {
        for name in [
            "torchcam_gradcam",
            "captum_gradcam",
            "torchcam_xgradcam",
            "torchcam_layercam",
        ] {
            assert!(seen.contains(&format!("{model} {name}")), "{model} {name}");
        }
    }
}
