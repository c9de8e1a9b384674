//! The GPU host code (src/backend/gpu) driving the real kernels through the CPU emulator, end
//! to end: the pytorch-grad-cam parity fixtures and the CAM family against the CPU backend.
//! Tolerances as tests/parity.rs (logits 1e-4 relative, maps 1e-3).

mod common;

use common::{fixtures, manifest, rel_err, Expected};
use gradcam::backend::gpu::{EmuLauncher, GpuBackend};
use gradcam::backend::{Backend, CpuBackend};
use gradcam::cam::{explain, upsample_normalised, CamRequest, ClassSel, Method};
use gradcam::image::{load_rgb8, preprocess, InputSize};
use gradcam::model::{self, Network};
use gradcam::Tensor;
use serde_json::Value;

fn emulated(model_file: &str) -> Network<GpuBackend<EmuLauncher>> {
    let g = model::load(fixtures().join(model_file), None).unwrap();
    Network::new(g, GpuBackend::new(EmuLauncher)).unwrap()
}

#[test]
fn parity_fixtures_through_the_emulated_kernels() {
    let m = manifest("manifest.json");
    let mut count = 0;
    for c in m["cases"].as_array().unwrap() {
        let model = &m["models"][c["model"].as_str().unwrap()];
        let net = emulated(model["file"].as_str().unwrap());
        let exp = Expected::load(&fixtures().join(c["expected"].as_str().unwrap()));
        let img = load_rgb8(&fixtures().join(c["image"].as_str().unwrap())).unwrap();
        let size = match &c["size"] {
            Value::String(_) => InputSize::Native,
            v => InputSize::Square(v.as_u64().unwrap() as usize),
        };
        let hw = size.for_image(&img);
        let x = net.backend().upload(preprocess(&[&img], hw)).unwrap();
        let classes = c["class"]
            .as_u64()
            .map_or(ClassSel::Predicted, |k| ClassSel::All(k as usize));
        let req = CamRequest {
            counterfactual: c["counterfactual"].as_bool().unwrap(),
            ..CamRequest::grad_cam(c["layer"].as_str().unwrap(), &classes)
        };
        let out = explain(&net, x, &req).unwrap();
        let id = c["id"].as_str().unwrap();
        assert!(
            rel_err(&out.logits, &exp.f32("logits")) < 1e-4,
            "{id}: logits"
        );
        assert_eq!(out.classes[0], exp.class(), "{id}");
        let (h, w) = (out.maps.shape()[1], out.maps.shape()[2]);
        let cam = upsample_normalised(out.maps.data(), (h, w), hw);
        let err = Tensor::new([1, hw.0, hw.1], cam).max_abs_diff(&exp.f32("cam"));
        assert!(err < 1e-3, "{id}: cam differs by {err}");
        count += 1;
    }
    assert!(count >= 20);
}

#[test]
fn cam_family_and_guided_match_the_cpu_backend() {
    let gpu = emulated("resnet_tiny.safetensors");
    let cpu = Network::new(
        model::load(fixtures().join("resnet_tiny.safetensors"), None).unwrap(),
        CpuBackend::fast(),
    )
    .unwrap();
    let img = load_rgb8(&fixtures().join("images/a.png")).unwrap();
    let x = preprocess(&[&img, &img], (64, 64));
    let classes = ClassSel::PerImage(vec![1, 4]);
    for method in Method::ALL {
        let req = CamRequest {
            method,
            guided: method == Method::GradCam,
            score_batch: 16,
            ..CamRequest::grad_cam("layer3", &classes)
        };
        let a = explain(&gpu, gpu.backend().upload(x.clone()).unwrap(), &req).unwrap();
        let b = explain(&cpu, x.clone(), &req).unwrap();
        let name = method.name();
        assert!(rel_err(&a.logits, &b.logits) < 1e-4, "{name}: logits");
        assert!(
            rel_err(&a.maps, &b.maps) < 1e-3,
            "{name}: maps {}",
            rel_err(&a.maps, &b.maps)
        );
        assert!(rel_err(&a.weights, &b.weights) < 1e-3, "{name}: weights");
        if let (Some(ga), Some(gb)) = (&a.guided, &b.guided) {
            assert!(rel_err(ga, gb) < 1e-3, "guided gradient");
        }
    }
}
