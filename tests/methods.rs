//! Parity of the CAM family and guided backpropagation with pytorch-grad-cam 1.5.7
//! (tests/fixtures/methods.json, made by tools/make_method_fixtures.py).
//!
//! Tolerances:
//! - logits: relative error < 1e-4 (as tests/parity.rs)
//! - channel weights (Grad-CAM++, XGrad-CAM, Score-CAM): relative error < 1e-3 (these divide by
//!   sums and, for Score-CAM, go through a softmax of logits: rounding grows a little)
//! - maps (normalised, input size): max abs < 1e-4 (several target layers included; observed
//!   at most 5.3e-6); overlays
//!   as tests/parity.rs; with
//!   aug_smooth, against pytorch-grad-cam's mean map min-max normalised (it leaves it as is)
//! - Eigen-CAM's principal-component projection (Eigen-CAM, Eigen-Grad-CAM, eigen_smooth):
//!   relative error < 1e-3 up to sign. pytorch-grad-cam takes LAPACK's sign, which flips from
//!   image to image; gradcam orients the component to correlate with the channel sum. Where the
//!   two agree, the maps and overlays must match pytorch-grad-cam's; where they do not, the
//!   map must be the ReLU of the negated projection (both kinds of case are in the fixtures).
//! - Finer-CAM (over Grad-CAM, LayerCAM, Grad-CAM++ and FullGrad): the compared classes
//!   exactly, the maps and (Grad-CAM) weights as above: its seed, ∂f/∂y through the softmax,
//!   is computed in f64 where torch's autograd runs in f32
//! - KPCA-CAM: the map against the ReLU of scikit-learn's projection (its sign is
//!   deterministic), relative error < 1e-3 (scikit-learn computes in f32, gradcam in f64)
//! - guided gradient: relative error < 1e-4; its deprocessed PNGs: bytes within ±2 (uint8
//!   truncation after standardising)

mod common;

use common::{check_overlay, expected, fixtures, manifest, networks, rel_err};
use gradcam::cam::kpca::{Kpca, KpcaKernel};
use gradcam::cam::multi_layer::LayerFusion;
use gradcam::cam::postprocess::guided_images;
use gradcam::cam::sess::Sess;
use gradcam::cam::{
    explain, normalise_minmax, overlay, principal_projection, upsample_normalised, CamRequest,
    ClassSel, Finer, Method, Target,
};
use gradcam::image::{load_rgb8, preprocess, InputSize};
use gradcam::Tensor;
use serde_json::Value;

fn method(name: &str) -> Option<Method> {
    Some(match name {
        "gradcampp" => Method::GradCamPlusPlus,
        "xgradcam" => Method::XGradCam,
        "hirescam" => Method::HiResCam,
        "layercam" => Method::LayerCam,
        "gradcamelementwise" => Method::GradCamElementWise,
        "scorecam" => Method::ScoreCam,
        "ablationcam" => Method::AblationCam,
        "fullgrad" => Method::FullGrad,
        "eigencam" => Method::EigenCam,
        "eigengradcam" => Method::EigenGradCam,
        "kpcacam" => Method::KpcaCam,
        "fem" => Method::Fem,
        "shapleycam" => Method::ShapleyCam,
        "segeigencam" => Method::SegEigenCam,
        "gradcam" => Method::GradCam,
        _ => return None,
    })
}

/// What pytorch-grad-cam's get_2d_projection received, rebuilt from the fixture's tensors.
fn eigen_input(name: &str, exp: &common::Expected) -> Tensor {
    let a = exp.f32("activation");
    let (n, k, h, w) = a.dims4();
    let mut x = a.data().to_vec();
    let g = || exp.f32("gradient");
    match name {
        "eigencam" => {}
        "eigengradcam" | "hirescam" => x.iter_mut().zip(g().data()).for_each(|(v, g)| *v *= g),
        "layercam" => (x.iter_mut().zip(g().data())).for_each(|(v, g)| *v *= g.max(0.0)),
        "gradcamelementwise" => {
            (x.iter_mut().zip(g().data())).for_each(|(v, g)| *v = (*v * g).max(0.0))
        }
        _ => {
            let wt = exp.f32("weights");
            for (ch, &wi) in x.chunks_mut(h * w).zip(wt.data()) {
                ch.iter_mut().for_each(|v| *v *= wi);
            }
        }
    }
    Tensor::new([n, k, h, w], x)
}

fn relu_of(t: &Tensor, sign: f32) -> Tensor {
    Tensor::new(
        t.shape(),
        t.data().iter().map(|v| (sign * v).max(0.0)).collect(),
    )
}

fn bytes_close(id: &str, what: &str, ours: &[u8], theirs: &[u8], tol: u8) {
    assert_eq!(ours.len(), theirs.len(), "{id}: {what} size");
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    assert!(worst <= tol, "{id}: {what} bytes differ by {worst}");
}

#[test]
fn cam_family_and_guided_backprop_match_pytorch_grad_cam() {
    let nets = networks();
    let cases = manifest("methods.json")["cases"]
        .as_array()
        .unwrap()
        .clone();
    let mut seen = std::collections::BTreeSet::new();
    let mut signs = std::collections::BTreeSet::new();
    for c in &cases {
        let id = c["id"].as_str().unwrap();
        let net = &nets[c["model"].as_str().unwrap()];
        let exp = expected(&fixtures().join(c["expected"].as_str().unwrap()));
        let input = expected(&fixtures().join(c["input_from"].as_str().unwrap())).f32("input");
        let img = load_rgb8(&fixtures().join(c["image"].as_str().unwrap())).unwrap();
        let size = match &c["size"] {
            Value::String(s) if s == "native" => InputSize::Native,
            v => InputSize::Square(v.as_u64().unwrap() as usize),
        };
        let hw = size.for_image(&img);
        let x = preprocess(&[&img], hw);
        assert!(x.max_abs_diff(&input) < 1e-5, "{id}: preprocessing");

        let name = c["method"].as_str().unwrap();
        seen.insert(name.to_string());
        let guided = name == "guided";
        let finer = c.get("finer").map(|f| Finer {
            alpha: f["alpha"].as_f64().unwrap() as f32,
            ranks: (f["ranks"].as_array().unwrap().iter())
                .map(|r| r.as_u64().unwrap() as usize)
                .collect(),
        });
        let classes = match c["class"].as_u64() {
            Some(k) => ClassSel::PerImage(vec![k as usize]),
            None => ClassSel::Predicted,
        };
        let req = CamRequest {
            layer: c["layer"].as_str().unwrap(),
            classes: &classes,
            method: method(name).unwrap_or(Method::GradCam),
            counterfactual: c["counterfactual"].as_bool().unwrap(),
            guided,
            score_batch: 16,
            eigen_smooth: c["eigen_smooth"].as_bool().unwrap_or(false),
            aug_smooth: c["aug_smooth"].as_bool().unwrap_or(false),
            finer: finer.as_ref(),
            fem_k: c
                .get("fem_k")
                .map_or(gradcam::cam::FEM_K, |k| k.as_f64().unwrap() as f32),
            target: c.get("target").map_or(Target::Logit, |t| {
                Target::parse(t.as_str().unwrap()).unwrap()
            }),
            fusion: c.get("layer_fusion").map_or(LayerFusion::Mean, |f| {
                LayerFusion::parse(f.as_str().unwrap()).unwrap()
            }),
            kpca: c.get("kpca").map_or(Kpca::default(), |k| Kpca {
                kernel: KpcaKernel::parse(k["kernel"].as_str().unwrap()).unwrap(),
                gamma: k["gamma"].as_f64(),
            }),
            sess: c.get("sess").map(|s| Sess {
                num_scales: s["scales"].as_u64().unwrap() as usize,
            }),
        };
        // FullGrad takes the gradients' magnitudes: --counterfactual is refused as changing
        // nothing, and pytorch-grad-cam's counterfactual map is the plain one.
        let req = match req.method == Method::FullGrad && req.counterfactual {
            true => {
                let e = explain(net, x.clone(), &req).err().unwrap().to_string();
                assert!(e.contains("only their magnitude"), "{id}: {e}");
                CamRequest {
                    counterfactual: false,
                    ..req
                }
            }
            false => req,
        };
        let out = explain(net, x, &req).unwrap();
        let err = rel_err(&out.logits, &exp.f32("logits"));
        assert!(err < 1e-4, "{id}: logits {err}");
        assert_eq!(out.classes[0], exp.class(), "{id}: class");
        if req.target != Target::Logit {
            seen.insert(format!("{name}+{}", req.target.name()));
        }
        if finer.is_some() {
            seen.insert(format!("{name}+finer"));
            let theirs: Vec<usize> = (exp.bytes("compared").unwrap().chunks(8))
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
                .collect();
            assert_eq!(out.compared[0], theirs, "{id}: compared classes");
        }
        let (h, w) = (out.maps.shape()[1], out.maps.shape()[2]);
        let cam = out.upsampled(0, hw);
        let mut theirs_cam = exp.f32("cam");
        let mut flipped = false;
        if req.layer.contains(',') {
            seen.insert(format!(
                "{name}+layers{}",
                match req.fusion {
                    LayerFusion::Mean => "",
                    LayerFusion::Product => "+product",
                }
            ));
        }
        if req.aug_smooth {
            // pytorch-grad-cam leaves the mean of the six normalised maps as it is; gradcam's
            // maps are always min-max normalised.
            seen.insert(format!("{name}+aug_smooth"));
            let mut m = theirs_cam.data().to_vec();
            normalise_minmax(&mut m);
            theirs_cam = Tensor::new(theirs_cam.shape(), m);
        }
        if req.sess.is_some() {
            seen.insert(match req.target {
                Target::Logit => format!("{name}+sess"),
                t => format!("{name}+{}+sess", t.name()),
            });
        }
        if req.kpca != Kpca::default() {
            seen.insert(format!("kpcacam+{}", req.kpca.kernel.name()));
        }
        if name == "kpcacam" || name == "segeigencam" {
            // scikit-learn's sign is deterministic (largest entry positive), and so is
            // SegEigenCAM's (larger magnitude positive): compared as is.
            let theirs = exp.f32("projection");
            let err = rel_err(&out.maps, &relu_of(&theirs, 1.0));
            assert!(
                err < 1e-3,
                "{id}: map differs from their projection by {err}"
            );
        } else if exp.tensors.contains_key("projection") {
            if req.eigen_smooth {
                seen.insert(format!("{name}+eigen_smooth"));
            }
            let theirs = exp.f32("projection");
            let (ours, _) = principal_projection(&eigen_input(name, &exp)).unwrap();
            let dot: f32 = (ours.data().iter().zip(theirs.data()))
                .map(|(a, b)| a * b)
                .sum();
            let sign = if dot < 0.0 { -1.0 } else { 1.0 };
            let signed = Tensor::new(
                theirs.shape(),
                theirs.data().iter().map(|v| sign * v).collect(),
            );
            let err = rel_err(&ours, &signed);
            assert!(err < 1e-3, "{id}: projection differs by {err} (up to sign)");
            let err = rel_err(&out.maps, &relu_of(&theirs, sign));
            assert!(
                err < 1e-3,
                "{id}: map differs from their projection by {err}"
            );
            flipped = sign < 0.0;
            signs.insert(flipped);
            if flipped {
                // Their map from the flipped projection, as they finish a layer's map:
                // normalised at its size, resized, normalised again.
                let mut m = relu_of(&theirs, -1.0).data().to_vec();
                normalise_minmax(&mut m);
                theirs_cam = Tensor::new([1, hw.0, hw.1], upsample_normalised(&m, (h, w), hw));
            }
        }
        let err = Tensor::new([1, hw.0, hw.1], cam.clone()).max_abs_diff(&theirs_cam);
        assert!(err < 1e-4, "{id}: cam differs by {err}");

        if guided {
            let g = out.guided.as_ref().expect("guided requested");
            // theirs is HWC
            let theirs = exp.f32("guided");
            let mut ours_hwc = vec![0f32; g.len()];
            let n = hw.0 * hw.1;
            for ch in 0..3 {
                for i in 0..n {
                    ours_hwc[i * 3 + ch] = g.data()[ch * n + i];
                }
            }
            let err = rel_err(&Tensor::new(theirs.shape(), ours_hwc), &theirs);
            assert!(err < 1e-4, "{id}: guided gradient {err}");
            let (gb, ggc) = guided_images(g.data(), &cam, hw).unwrap();
            bytes_close(
                id,
                "guided png",
                gb.as_raw(),
                exp.bytes("guided_png").unwrap(),
                2,
            );
            bytes_close(
                id,
                "guided grad-cam png",
                ggc.as_raw(),
                exp.bytes("guided_gradcam_png").unwrap(),
                2,
            );
            continue;
        }
        if let Some(theirs) = exp.tensors.get("weights").map(|_| exp.f32("weights")) {
            let err = rel_err(&out.weights, &theirs);
            assert!(err < 1e-3, "{id}: weights {err}");
        }
        if let Some(theirs) = exp.bytes("overlay").filter(|_| !flipped) {
            check_overlay(
                id,
                overlay(&img, &cam).unwrap().as_raw(),
                theirs,
                theirs_cam.data(),
            );
        }
    }
    assert_eq!(
        signs.len(),
        2,
        "the fixtures should hold both signs of the component"
    );
    let want = [
        "gradcampp",
        "xgradcam",
        "hirescam",
        "layercam",
        "gradcamelementwise",
        "scorecam",
        "ablationcam",
        "fullgrad",
        "eigencam",
        "eigengradcam",
        "kpcacam",
        "kpcacam+rbf",
        "kpcacam+poly",
        "kpcacam+cosine",
        "kpcacam+linear",
        "fem",
        "shapleycam",
        "segeigencam",
        "shapleycam+softmax",
        "shapleycam+rest",
        "gradcam+softmax",
        "scorecam+softmax",
        "ablationcam+rest",
        "gradcam+eigen_smooth",
        "gradcamelementwise+eigen_smooth",
        "layercam+eigen_smooth",
        "gradcam+aug_smooth",
        "layercam+aug_smooth",
        "gradcam+layers",
        "gradcampp+layers",
        "gradcampp+layers+product",
        "gradcam+layers+product",
        "gradcam+sess",
        "gradcampp+sess",
        "gradcam+softmax+sess",
        "gradcam+rest+sess",
        "gradcam+finer",
        "layercam+finer",
        "gradcampp+finer",
        "fullgrad+finer",
        "guided",
    ];
    assert!(
        want.iter().all(|m| seen.contains(*m)),
        "methods covered: {seen:?}"
    );
}

#[test]
fn method_names_parse_and_scorecam_rejects_counterfactual() {
    assert_eq!(Method::parse("GradCAM++").unwrap(), Method::GradCamPlusPlus);
    assert_eq!(Method::parse("gradcampp").unwrap(), Method::GradCamPlusPlus);
    assert_eq!(Method::parse("score-cam").unwrap(), Method::ScoreCam);
    assert_eq!(Method::parse("EigenGradCAM").unwrap(), Method::EigenGradCam);
    assert_eq!(
        Method::parse("GradCAMElementWise").unwrap(),
        Method::GradCamElementWise
    );
    assert_eq!(Method::parse("Ablation-CAM").unwrap(), Method::AblationCam);
    assert_eq!(Method::parse("FullGrad").unwrap(), Method::FullGrad);
    assert_eq!(Method::parse("ShapleyCAM").unwrap(), Method::ShapleyCam);
    let e = Method::parse("randomcam").unwrap_err().to_string();
    assert!(e.contains("ablationcam") && e.contains("eigencam"), "{e}");
    let nets = networks();
    let req = CamRequest {
        method: Method::ScoreCam,
        counterfactual: true,
        ..CamRequest::grad_cam("layer4", &ClassSel::Predicted)
    };
    let e = explain(&nets["resnet_tiny"], Tensor::zeros([1, 3, 64, 64]), &req)
        .err()
        .unwrap();
    assert!(e.to_string().contains("counterfactual"));
    // Finer-CAM changes the explained score: only for the gradient methods, alone.
    let finer = Finer::default();
    for (method, guided, what) in [
        (Method::EigenCam, false, "no gradients"),
        (Method::GradCam, true, "--guided"),
    ] {
        let req = CamRequest {
            method,
            guided,
            finer: Some(&finer),
            ..CamRequest::grad_cam("layer4", &ClassSel::Predicted)
        };
        let e = explain(&nets["resnet_tiny"], Tensor::zeros([1, 3, 64, 64]), &req)
            .err()
            .unwrap();
        assert!(e.to_string().contains(what), "{e}");
    }
}

/// Guided backpropagation explains the class logit whatever `--target` says (pytorch-grad-cam's
/// GuidedBackpropReLUModel backpropagates `output[0, class]`), while the map follows the
/// target: under softmax the guided gradient equals the logit run's exactly, the map does not.
#[test]
fn guided_backprop_keeps_the_logit_under_another_target() {
    let nets = networks();
    let net = &nets["resnet_tiny"];
    let img = load_rgb8(&fixtures().join("images/a.png")).unwrap();
    let x = preprocess(&[&img, &img], (64, 64));
    let classes = ClassSel::PerImage(vec![2, 5]);
    let run = |target| {
        let req = CamRequest {
            guided: true,
            target,
            ..CamRequest::grad_cam("layer4", &classes)
        };
        explain(net, x.clone(), &req).unwrap()
    };
    let (logit, softmax) = (run(Target::Logit), run(Target::Softmax));
    assert_eq!(
        logit.guided.as_ref().unwrap().data(),
        softmax.guided.as_ref().unwrap().data()
    );
    assert!(rel_err(&logit.weights, &softmax.weights) > 1e-2);
}
