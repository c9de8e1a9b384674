//! Model loading: every supported torchvision layout (narrowed random weights made in Rust)
//! is detected, named and shaped like torchvision's; the fast backend matches the naive one
//! end to end; torchvision's pre-BN conv outputs are recovered exactly from the folded conv.

use gradcam::backend::{Backend, CpuBackend};
use gradcam::cam::{grad_cam, ClassSel};
use gradcam::model::{self, synth, Network, Weights};
use gradcam::Tensor;
use safetensors::Dtype;

fn write_synth(
    dir: &tempfile::TempDir,
    arch: &str,
    div: usize,
    dtype: Dtype,
) -> std::path::PathBuf {
    let path = dir.path().join(format!("{arch}.safetensors"));
    synth::write(&path, &synth::state_dict(arch, div, 10, 7).unwrap(), dtype).unwrap();
    path
}

#[test]
fn every_architecture_is_detected_with_torchvision_names_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // (arch, default layer, its [C, H, W] for a 224 input at width / 16)
    let expect: &[(&str, &str, [usize; 3])] = &[
        ("vgg11", "features.19", [32, 14, 14]),
        ("vgg13", "features.23", [32, 14, 14]),
        ("vgg16", "features.29", [32, 14, 14]),
        ("vgg19", "features.35", [32, 14, 14]),
        ("vgg11_bn", "features.27", [32, 14, 14]),
        ("vgg13_bn", "features.33", [32, 14, 14]),
        ("vgg16_bn", "features.42", [32, 14, 14]),
        ("vgg19_bn", "features.51", [32, 14, 14]),
        ("resnet18", "layer4", [32, 7, 7]),
        ("resnet34", "layer4", [32, 7, 7]),
        ("resnet50", "layer4", [128, 7, 7]),
        ("resnet101", "layer4", [128, 7, 7]),
        ("resnet152", "layer4", [128, 7, 7]),
    ];
    assert_eq!(expect.len(), model::ARCHS.len());
    for &(arch, default, chw) in expect {
        let path = write_synth(&dir, arch, 16, Dtype::F16);
        let g = model::load(&path, None).unwrap();
        assert_eq!(g.arch, arch, "detected architecture");
        assert_eq!(g.default_layer, default, "{arch}: default layer");
        assert_eq!(g.num_classes, 10);
        let shapes = g.shapes(&[2, 3, 224, 224]).unwrap();
        let l = g.layer(default).unwrap();
        assert_eq!(
            shapes[l.node],
            vec![2, chw[0], chw[1], chw[2]],
            "{arch}: {default}"
        );
        // The forced architecture reads the same layout.
        let forced = model::load(&path, Some(arch)).unwrap();
        assert_eq!(forced.layers.len(), g.layers.len(), "{arch}: forced");
        // torchvision module paths a user would type.
        let names: Vec<&str> = g.layers.iter().map(|l| l.name.as_str()).collect();
        let wanted: &[&str] = if arch.starts_with("vgg") {
            &[
                "features.0",
                "features",
                "avgpool",
                "classifier.0",
                "classifier.6",
            ]
        } else if arch == "resnet50" {
            &[
                "conv1",
                "bn1",
                "relu",
                "maxpool",
                "layer1.0.downsample.0",
                "layer3.5",
                "layer4.2.conv3",
                "layer4.2.bn3",
                "layer4",
                "avgpool",
                "fc",
            ]
        } else {
            &["conv1", "layer1.0.conv2", "layer4.1", "layer4", "fc"]
        };
        for w in wanted {
            assert!(names.contains(w), "{arch}: no layer {w}");
        }
    }
}

/// torchvision's wide and ResNeXt ResNets, made narrowed (as far as their groups allow), are
/// detected by name with the grouped 3×3 convs torchvision gives them, load under their own
/// `--arch` and are refused under another's.
#[test]
fn wide_and_grouped_resnets_are_detected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // (arch, width divisor, layer1.0.conv2's weight shape, layer4's channels)
    let expect: &[(&str, usize, [usize; 4], usize)] = &[
        // torch: wide_resnet50_2().layer1[0].conv2.weight.shape == (128, 128, 3, 3)
        ("wide_resnet50_2", 16, [8, 8, 3, 3], 128),
        ("wide_resnet101_2", 16, [8, 8, 3, 3], 128),
        // torch: resnext50_32x4d().layer1[0].conv2.weight.shape == (128, 4, 3, 3)
        ("resnext50_32x4d", 4, [32, 1, 3, 3], 512),
        // torch: resnext101_32x8d().layer1[0].conv2.weight.shape == (256, 8, 3, 3)
        ("resnext101_32x8d", 8, [32, 1, 3, 3], 256),
        // torch: resnext101_64x4d().layer1[0].conv2.weight.shape == (256, 4, 3, 3)
        ("resnext101_64x4d", 4, [64, 1, 3, 3], 512),
    ];
    assert_eq!(expect.len(), model::RESNET_VARIANTS.len());
    for &(arch, div, conv2, c4) in expect {
        let path = write_synth(&dir, arch, div, Dtype::F16);
        let w = Weights::open(&path).unwrap();
        assert_eq!(
            w.shape_of("layer1.0.conv2.weight").unwrap(),
            conv2,
            "{arch}"
        );
        let g = model::load(&path, None).unwrap();
        assert_eq!(g.arch, arch, "detected architecture");
        let shapes = g.shapes(&[1, 3, 224, 224]).unwrap();
        assert_eq!(
            shapes[g.layer("layer4").unwrap().node],
            [1, c4, 7, 7],
            "{arch}"
        );
        assert_eq!(model::load(&path, Some(arch)).unwrap().arch, arch);
        let other = match arch.starts_with("wide") {
            true => "resnext50_32x4d",
            false => "wide_resnet50_2",
        };
        let Err(err) = model::load(&path, Some(other)) else {
            panic!("{arch} loaded as {other}");
        };
        let err = err.to_string();
        assert!(
            err.contains(&format!("--arch {other} does not fit")),
            "{err}"
        );
    }
}

#[test]
fn vgg16_pool5_and_relu5_3_have_the_papers_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let g = model::load(write_synth(&dir, "vgg16", 16, Dtype::F32), None).unwrap();
    let shapes = g.shapes(&[1, 3, 224, 224]).unwrap();
    assert_eq!(shapes[g.layer("features.29").unwrap().node][2..], [14, 14]);
    assert_eq!(shapes[g.layer("features.30").unwrap().node][2..], [7, 7]);
    // Any input size works thanks to the adaptive pool: 100x150 still gives 10 logits.
    let out = g.shapes(&[1, 3, 100, 150]).unwrap();
    assert_eq!(out.last().unwrap(), &vec![1, 10]);
}

#[test]
fn fast_backend_matches_reference_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = synth::Rng::new(5);
    for (arch, layer) in [
        ("resnet18", "layer4"),
        ("resnet50", "layer3"),
        ("resnext50_32x4d", "layer4"),
        ("vgg11_bn", "features.27"),
        ("vgg11", "features.20"),
    ] {
        // A ResNeXt narrowed by 16 has fewer channels than groups.
        let div = if arch.starts_with("resnext") { 4 } else { 16 };
        let path = write_synth(&dir, arch, div, Dtype::F32);
        let x = rng.tensor(&[2, 3, 48, 40], -2.0, 2.0);
        let run = |be: CpuBackend| {
            let net = Network::new(model::load(&path, None).unwrap(), be).unwrap();
            grad_cam(
                &net,
                x.clone(),
                layer,
                &ClassSel::PerImage(vec![3, 7]),
                false,
            )
            .unwrap()
        };
        let (fast, reference) = (run(CpuBackend::fast()), run(CpuBackend::reference()));
        let scale = |t: &Tensor| 1.0 + t.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        for (name, a, b) in [
            ("logits", &fast.logits, &reference.logits),
            ("alpha", &fast.weights, &reference.weights),
            ("maps", &fast.maps, &reference.maps),
        ] {
            let err = a.max_abs_diff(b);
            assert!(err <= 1e-3 * scale(b), "{arch} {name}: {err}");
        }
        assert!(
            reference.maps.data().iter().any(|&v| v > 0.0),
            "{arch}: degenerate map"
        );
    }
}

#[test]
fn pre_bn_conv_layers_give_the_raw_conv_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_synth(&dir, "resnet18", 16, Dtype::F32);
    let net = Network::new(model::load(&path, None).unwrap(), CpuBackend::reference()).unwrap();
    let x = synth::Rng::new(9).tensor(&[1, 3, 64, 64], -1.0, 1.0);
    let seed = |l: &Tensor| Ok(Tensor::full(l.shape(), 1.0));
    let below = net.forward_backward(x.clone(), "maxpool", seed).unwrap();
    let conv = net.forward_backward(x, "layer1.0.conv1", seed).unwrap();
    // torch: model.layer1[0].conv1(model.maxpool(...)): the unfolded weights straight from the file.
    let w = Weights::open(&path)
        .unwrap()
        .get("layer1.0.conv1.weight", &[None, None, None, None])
        .unwrap();
    let raw = net
        .backend()
        .conv2d_fwd(
            &below.activation,
            &w,
            None,
            None,
            &gradcam::backend::Conv2dParams::new(1, 1),
            false,
        )
        .unwrap();
    let err = conv.activation.max_abs_diff(&raw);
    assert!(err < 1e-4, "pre-BN activation differs by {err}");
}

/// Several target layers share one forward pass and one backward pass down to the lowest of
/// them; each layer's activation and gradient must equal those of a pass to that layer alone
/// (the reference backend: same ops, same order, so bit for bit). The list mixes a layer on
/// the main path, a block inside it, the downsample branch (not upstream of the others), and
/// a conv and its BatchNorm (two views of one folded node).
#[test]
fn several_layers_share_one_backward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_synth(&dir, "resnet18", 16, Dtype::F32);
    let net = Network::new(model::load(&path, None).unwrap(), CpuBackend::reference()).unwrap();
    let x = synth::Rng::new(4).tensor(&[2, 3, 64, 48], -1.0, 1.0);
    let seed = |l: &Tensor| {
        let mut s = Tensor::zeros(l.shape());
        s.data_mut()[3] = 1.0;
        s.data_mut()[l.shape()[1] + 5] = -1.0;
        Ok(s)
    };
    let layers = [
        "layer4",
        "layer3.1",
        "layer4.0.downsample.0",
        "layer3.1.conv2",
        "layer3.0.conv2",
        "layer3.0.bn2",
        "layer3.1.bn2",
    ];
    let shared = net
        .run(x.clone(), &layers, model::Backward::ToLayer, seed)
        .unwrap();
    assert_eq!(shared.layers.len(), layers.len());
    let be = net.backend();
    for (layer, got) in layers.iter().zip(&shared.layers) {
        let alone = net.forward_backward(x.clone(), layer, seed).unwrap();
        let grad = got.grad.as_ref().unwrap();
        assert_eq!(be.shape(&got.activation), be.shape(&alone.activation));
        assert_eq!(
            got.activation.max_abs_diff(&alone.activation),
            0.0,
            "{layer}"
        );
        assert_eq!(grad.max_abs_diff(&alone.grad), 0.0, "{layer} gradient");
        assert!(
            grad.data().iter().any(|&v| v != 0.0),
            "{layer}: zero gradient"
        );
    }
    // A conv and its BatchNorm are different values of one node.
    let act = |i: usize| &shared.layers[i].activation;
    assert!(act(4).max_abs_diff(act(5)) > 0.0);
    assert!(act(3).max_abs_diff(act(6)) > 0.0);
    let err = net
        .run(x, &["layer4", "layer4"], model::Backward::ToLayer, seed)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`layer4` is listed twice"), "{err}");
}

/// Ablation-CAM runs the network on from the target layer. Given the layer's own values,
/// copied, that must give the logits of the plain forward pass: for a block's output (the
/// head alone), a conv inside a block (its BatchNorm applied again, the block's shortcut
/// from before the layer), and the downsample branch. Zeroing a channel through
/// ablate_channels must then change the score (the weights are checked against
/// pytorch-grad-cam's AblationCAM in tests/methods.rs).
#[test]
fn forward_from_a_layer_gives_the_plain_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_synth(&dir, "resnet18", 16, Dtype::F32);
    let net = Network::new(model::load(&path, None).unwrap(), CpuBackend::reference()).unwrap();
    let be = net.backend();
    let x = synth::Rng::new(6).tensor(&[2, 3, 48, 40], -1.0, 1.0);
    let plain = net.forward(x.clone()).unwrap();
    let nc = plain.shape()[1];
    let seed = |l: &Tensor| Ok(Tensor::zeros(l.shape()));
    for layer in [
        "layer4",
        "layer3.1.conv2",
        "layer2.0.downsample.0",
        "layer1.0.bn1",
    ] {
        let a = net
            .forward_backward(x.clone(), layer, seed)
            .unwrap()
            .activation;
        let copies = be.aug_copies(&a, &[(false, 1.0); 3]).unwrap();
        let from = net.from_layer(&x, layer).unwrap();
        let logits = net.forward_from(&from, copies, 3).unwrap();
        assert_eq!(logits.shape(), [6, nc], "{layer}");
        for (j, row) in logits.data().chunks(2 * nc).enumerate() {
            let err = Tensor::new([2, nc], row.to_vec()).max_abs_diff(&plain);
            assert!(err < 1e-4, "{layer} copy {j}: logits differ by {err}");
        }
        let ablated = be.ablate_channels(&a, (0, 2)).unwrap();
        let logits = net.forward_from(&from, ablated, 2).unwrap();
        let first = Tensor::new([2, nc], logits.data()[..2 * nc].to_vec());
        assert!(
            first.max_abs_diff(&plain) > 0.0,
            "{layer}: ablation changed nothing"
        );
    }
    let from = net.from_layer(&x, "layer4").unwrap();
    let e = net
        .forward_from(&from, Tensor::zeros([2, 1, 2, 2]), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected"), "{e}");
}

/// Ablation-CAM on a batch, a few channels per pass (copy-major copies of several images),
/// at a block's output and inside a block (the shortcut repeated), and at `layer4`, where the
/// head is affine and one backward pass replaces the passes: each image's weights must equal
/// those of the image explained alone with every channel in one pass, and the weights of
/// channels 0, 3 and the last must be the relative drops of the score with that channel
/// zeroed by hand and the network run on from the layer.
#[test]
fn ablation_weights_of_a_batch_match_each_image_alone() {
    use gradcam::cam::{explain, CamRequest, Method};
    let dir = tempfile::tempdir().unwrap();
    let path = write_synth(&dir, "resnet18", 16, Dtype::F32);
    let net = Network::new(model::load(&path, None).unwrap(), CpuBackend::reference()).unwrap();
    let x = synth::Rng::new(8).tensor(&[3, 3, 40, 40], -1.0, 1.0);
    let cls = [1, 4, 7];
    let classes = ClassSel::PerImage(cls.to_vec());
    for layer in ["layer3", "layer3.1.conv2", "layer4"] {
        let req = CamRequest {
            method: Method::AblationCam,
            score_batch: 7, // 2 channels of 3 images per pass
            ..CamRequest::grad_cam(layer, &classes)
        };
        let batch = explain(&net, x.clone(), &req).unwrap();
        let k = batch.weights.shape()[1];
        for (i, &c) in cls.iter().enumerate() {
            let xi = x.slice_batch(i, i + 1);
            let ci = ClassSel::PerImage(vec![c]);
            let alone = CamRequest {
                classes: &ci,
                score_batch: 4096,
                ..req.clone()
            };
            let one = explain(&net, xi.clone(), &alone).unwrap();
            let row = &batch.weights.data()[i * k..(i + 1) * k];
            let err = Tensor::new([1, k], row.to_vec()).max_abs_diff(&one.weights);
            assert!(err < 1e-5, "{layer} image {i}: weights differ by {err}");
            // By hand: zero the channel, run on from the layer, the relative drop.
            let seed = |l: &Tensor| Ok(Tensor::zeros(l.shape()));
            let a = net.forward_backward(xi.clone(), layer, seed).unwrap();
            let from = net.from_layer(&xi, layer).unwrap();
            for ch in [0, 3, k - 1] {
                let mut zeroed = a.activation.clone();
                let hw = zeroed.shape()[2] * zeroed.shape()[3];
                zeroed.data_mut()[ch * hw..(ch + 1) * hw].fill(0.0);
                let logits = net.forward_from(&from, zeroed, 1).unwrap();
                let s = a.logits.data()[c];
                let want = (s - logits.data()[c]) / s;
                assert!(
                    (row[ch] - want).abs() < 1e-5,
                    "{layer} image {i} channel {ch}: {} vs {want}",
                    row[ch]
                );
            }
            assert!(row.iter().any(|&v| v != 0.0), "{layer} image {i}: all zero");
        }
    }
    // Which layers the logits are affine in: ResNet's layer4 (average pool, fc) only.
    let graph = net.graph();
    assert!(graph.affine_after("layer4").unwrap());
    for layer in ["layer3", "layer4.1.conv2", "layer4.1.bn2", "layer4.1.conv1"] {
        assert!(!graph.affine_after(layer).unwrap(), "{layer}");
    }
    assert!(graph.affine_after("nope").is_err());
}

/// FullGrad's bias terms per node, from the file's own tensors: a VGG's conv without BN has
/// its bias; with BN, the conv's bias times the BN scale, then the BN's effective bias
/// β − μ·γ/√(σ² + 1e-5); a ResNet conv (no bias) with BN the BN's alone; a ReLU none.
#[test]
fn full_grad_bias_terms_come_from_the_files_biases() {
    let dir = tempfile::tempdir().unwrap();
    let bias = |path: &std::path::Path, name: &str| {
        (Weights::open(path).unwrap())
            .get(name, &[None])
            .unwrap()
            .data()
            .to_vec()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    let vgg = write_synth(&dir, "vgg11", 16, Dtype::F32);
    let g = model::load(&vgg, None).unwrap();
    let terms = g.full_grad_biases(g.layer("features.0").unwrap().node);
    assert_eq!(terms, [bias(&vgg, "features.0.bias")]);
    assert!(g
        .full_grad_biases(g.layer("features.1").unwrap().node)
        .is_empty());
    let vgg_bn = write_synth(&dir, "vgg11_bn", 16, Dtype::F32);
    let g = model::load(&vgg_bn, None).unwrap();
    let terms = g.full_grad_biases(g.layer("features.0").unwrap().node);
    let (gamma, beta) = (
        bias(&vgg_bn, "features.1.weight"),
        bias(&vgg_bn, "features.1.bias"),
    );
    let (mean, var) = (
        bias(&vgg_bn, "features.1.running_mean"),
        bias(&vgg_bn, "features.1.running_var"),
    );
    let scale: Vec<f32> = (gamma.iter().zip(&var))
        .map(|(g, v)| g / (v + 1e-5).sqrt())
        .collect();
    let conv: Vec<f32> = (bias(&vgg_bn, "features.0.bias").iter().zip(&scale))
        .map(|(b, s)| b * s)
        .collect();
    let bn: Vec<f32> = (beta.iter().zip(&mean).zip(&scale))
        .map(|((b, m), s)| b - m * s)
        .collect();
    assert_eq!(terms.len(), 2);
    assert!(close(&terms[0], &conv) && close(&terms[1], &bn));
    let resnet = write_synth(&dir, "resnet18", 16, Dtype::F32);
    let g = model::load(&resnet, None).unwrap();
    assert_eq!(g.full_grad_biases(g.layer("conv1").unwrap().node).len(), 1);
}

/// Checkpoints from wrappers and fine-tuning scripts: names under a wrapper's attribute
/// (`module.` from DataParallel, `backbone.`, nested), and a ResNet head saved as
/// `nn.Sequential(nn.Dropout, nn.Linear)` (`fc.1.weight`), or a VGG's last layer likewise
/// (`classifier.6.1.weight`). Each must load as the plain torchvision model and give the same
/// logits and maps bit for bit (dropout is the identity at inference).
#[test]
fn wrapper_prefixes_and_sequential_heads_load_as_the_plain_model() {
    let dir = tempfile::tempdir().unwrap();
    let x = synth::Rng::new(9).tensor(&[1, 3, 40, 36], -2.0, 2.0);
    let cam = |path: &std::path::Path, layer: &str| {
        let net = Network::new(model::load(path, None).unwrap(), CpuBackend::fast()).unwrap();
        grad_cam(&net, x.clone(), layer, &ClassSel::PerImage(vec![2]), false).unwrap()
    };
    for (arch, layer, head) in [
        ("resnet18", "layer4", "fc"),
        ("vgg11", "features.19", "classifier.6"),
    ] {
        let plain = synth::state_dict(arch, 16, 10, 1).unwrap();
        let want = {
            let path = dir.path().join(format!("{arch}.safetensors"));
            synth::write(&path, &plain, Dtype::F32).unwrap();
            cam(&path, layer)
        };
        let rename = |case: &str, n: &str| {
            let in_head = n.strip_prefix(head).map(|p| format!("{head}.1{p}"));
            match case {
                "dp" => format!("module.{n}"),
                "nested" => format!("module.backbone.{n}"),
                "dropout-head" => in_head.unwrap_or_else(|| n.to_string()),
                _ => format!("net.{}", in_head.unwrap_or_else(|| n.to_string())),
            }
        };
        for case in ["dp", "nested", "dropout-head", "both"] {
            let mut dict: Vec<(String, Tensor)> = plain
                .iter()
                .map(|(n, t)| (rename(case, n), t.clone()))
                .collect();
            if case == "dp" {
                // A tensor of the wrapper's own (an auxiliary head) that sorts first.
                dict.push(("module.aux.weight".into(), Tensor::zeros([2, 2])));
            }
            let path = dir.path().join(format!("{arch}-{case}.safetensors"));
            synth::write(&path, &dict, Dtype::F32).unwrap();
            assert_eq!(model::load(&path, None).unwrap().arch, arch, "{case}");
            let got = cam(&path, layer);
            assert_eq!(got.logits.data(), want.logits.data(), "{arch} {case}");
            assert_eq!(got.maps.data(), want.maps.data(), "{arch} {case}");
        }
    }

    // A training checkpoint with the model twice, plain and under `ema.` (with other values):
    // the plain weights are used, and the copy is found for a note (`Weights::other_copies`);
    // a plain file and a wrapper's single auxiliary tensor have none.
    let plain = synth::state_dict("resnet18", 16, 10, 1).unwrap();
    let mut dict = plain.clone();
    let ema = synth::state_dict("resnet18", 16, 10, 2).unwrap();
    dict.extend(ema.into_iter().map(|(n, t)| (format!("ema.{n}"), t)));
    dict.push(("aux.weight".into(), Tensor::zeros([2, 2])));
    let path = dir.path().join("ema.safetensors");
    synth::write(&path, &dict, Dtype::F32).unwrap();
    let w = model::Weights::open(&path).unwrap();
    model::build(&w, None).unwrap();
    assert_eq!(w.other_copies(), [("ema.".to_string(), plain.len())]);
    let want = {
        let path = dir.path().join("plain.safetensors");
        synth::write(&path, &plain, Dtype::F32).unwrap();
        let w = model::Weights::open(&path).unwrap();
        model::build(&w, None).unwrap();
        assert_eq!(w.other_copies(), []);
        cam(&path, "layer4")
    };
    assert_eq!(cam(&path, "layer4").logits.data(), want.logits.data());

    // Two linear layers in the head: the activation between them is not in the file, so the
    // head is not guessed at; the error names the tensor the plain model needs.
    let mut dict = synth::state_dict("resnet18", 16, 10, 1).unwrap();
    let fc = dict.iter().position(|(n, _)| n == "fc.weight").unwrap();
    let w = dict[fc].1.clone();
    dict[fc].0 = "fc.0.weight".into();
    dict.push(("fc.3.weight".into(), w));
    let path = dir.path().join("mlp-head.safetensors");
    synth::write(&path, &dict, Dtype::F32).unwrap();
    let Err(err) = model::load(&path, None) else {
        panic!("a two-layer head loaded as a plain fc")
    };
    let err = err.to_string();
    assert!(
        err.contains("`fc.weight` is missing") && err.contains("a Sequential of several layers"),
        "{err}"
    );
}

/// A checkpoint saved in double precision (`model.double()`) loads rounded to f32: the same
/// logits and maps as the f32 file, bit for bit (the values went f32 → f64 → f32).
#[test]
fn f64_checkpoints_load_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let x = synth::Rng::new(4).tensor(&[1, 3, 36, 36], -2.0, 2.0);
    let cam = |dtype: Dtype| {
        let net = Network::new(
            model::load(write_synth(&dir, "resnet18", 16, dtype), None).unwrap(),
            CpuBackend::fast(),
        )
        .unwrap();
        grad_cam(
            &net,
            x.clone(),
            "layer4",
            &ClassSel::PerImage(vec![1]),
            false,
        )
        .unwrap()
    };
    let (a, b) = (cam(Dtype::F32), cam(Dtype::F64));
    assert_eq!(a.logits.data(), b.logits.data());
    assert_eq!(a.maps.data(), b.maps.data());
}

/// The forward FLOP count benchmarks are held against, vs torchvision's published multiply-add
/// counts at 224×224 (its "GFLOPS" column: ResNet-18 1.81 G, ResNet-50 4.09 G), within 1 %.
#[test]
fn forward_flops_match_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, gmacs) in [("resnet18", 1.81), ("resnet50", 4.09)] {
        let path = dir.path().join(format!("{arch}.safetensors"));
        synth::write(
            &path,
            &synth::state_dict(arch, 1, 1000, 1).unwrap(),
            Dtype::F16,
        )
        .unwrap();
        let g = model::load(&path, None).unwrap();
        let macs = g.forward_flops((224, 224)).unwrap() / 2e9;
        assert!(
            (macs / gmacs - 1.0).abs() < 0.01,
            "{arch}: {macs:.3} G multiply-adds"
        );
    }
}

/// The CPU's default batch: 8 images, 32 for a model whose linear layers hold 64 MB of
/// weights or more (read once per batch): VGG11 at half width has a 103 MB first linear layer
/// (12544 × 2048), ResNet-18 at a sixteenth of its width a 128 × 10 one.
#[test]
fn default_batch_follows_the_linear_weights() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, div, want) in [("resnet18", 16, 8), ("vgg11", 16, 8), ("vgg11", 2, 32)] {
        let path = write_synth(&dir, arch, div, Dtype::F32);
        let net = Network::new(model::load(&path, None).unwrap(), CpuBackend::fast()).unwrap();
        assert_eq!(net.default_batch(), want, "{arch} / {div}");
    }
    let cpu = CpuBackend::fast();
    assert_eq!(
        (cpu.default_batch_for(0), cpu.default_batch_for(64 << 20)),
        (8, 32)
    );
}

/// The CPU runs a network's leading layers image by image, the images in parallel (their
/// activations stay in cache), and the rest over the batch: the logits, maps, weights and
/// guided gradients are the same bits as with every layer over the batch. Grad-CAM at the last
/// layer and at the cut's own layer (`layer2`, kept and joined) run image by image; a target
/// deeper inside the leading layers, FullGrad and guided backpropagation keep too much there
/// and run layer by layer (the joins of such values are tested in src/model/network.rs).
/// The cut: before the first layer whose weights outweigh twice its output per image, at a
/// block's end (ResNet-50 at 224: after `layer2`).
#[test]
fn image_by_image_layers_give_the_batchs_bits() {
    use gradcam::cam::{explain, CamRequest, Method};
    // (Unless GRADCAM_IMAGE_MAJOR=0 turns it off for the whole process.)
    let image_major = CpuBackend::fast();
    let layer_major = CpuBackend {
        layer_major: true,
        ..CpuBackend::fast()
    };
    assert!(!layer_major.image_major());
    // More images than threads (else every layer runs over the batch), one left over.
    let n = rayon::current_num_threads().max(2) + 1;
    let x = synth::Rng::new(5).tensor(&[n, 3, 64, 64], -2.0, 2.0);
    for (arch, layers) in [
        ("resnet18", ["layer4", "layer2"]),
        ("resnet50", ["layer4", "layer2"]),
        ("vgg11_bn", ["features.25", "features.4"]),
    ] {
        let d = synth::state_dict(arch, 16, 10, 2).unwrap();
        let w = gradcam::model::Weights::from_static(
            arch,
            Box::leak(
                synth::to_safetensors(&d, Dtype::F32)
                    .unwrap()
                    .into_boxed_slice(),
            ),
        )
        .unwrap();
        let graph = || model::build(&w, None).unwrap();
        let a = Network::new(graph(), image_major).unwrap();
        let b = Network::new(graph(), layer_major).unwrap();
        let none = vec![false; a.graph().nodes.len()];
        let cut = a
            .image_major_cut(&[n, 3, 64, 64], &none)
            .unwrap()
            .expect(arch);
        // The first target after the cut, the second before it.
        let node = |l: &str| a.graph().layer(l).unwrap().node;
        assert!(
            node(layers[1]) < cut && cut <= node(layers[0]),
            "{arch}: {cut}"
        );
        let classes = ClassSel::PerImage((0..n).map(|i| (1 + 3 * i) % 10).collect());
        for (layer, method, guided) in [
            (layers[0], Method::GradCam, false),
            (layers[0], Method::GradCam, true),
            (layers[1], Method::GradCam, false),
            (layers[0], Method::FullGrad, false),
        ] {
            let mut req = CamRequest::grad_cam(layer, &classes);
            (req.method, req.guided) = (method, guided);
            let (p, q) = (
                explain(&a, x.clone(), &req).unwrap(),
                explain(&b, x.clone(), &req).unwrap(),
            );
            let what = format!("{arch} {layer} {method:?}");
            assert_eq!(p.logits.data(), q.logits.data(), "{what}");
            assert_eq!(p.maps.data(), q.maps.data(), "{what}");
            assert_eq!(p.weights.data(), q.weights.data(), "{what}");
            assert_eq!(p.guided.is_some(), guided);
            assert_eq!(
                p.guided.as_ref().map(Tensor::data),
                q.guided.as_ref().map(Tensor::data),
                "{what}"
            );
        }
    }
    let d = synth::state_dict("resnet50", 1, 1000, 2).unwrap();
    let w = gradcam::model::Weights::from_static(
        "resnet50",
        Box::leak(
            synth::to_safetensors(&d, Dtype::F32)
                .unwrap()
                .into_boxed_slice(),
        ),
    )
    .unwrap();
    let net = Network::new(model::build(&w, None).unwrap(), image_major).unwrap();
    let after_layer2 = net.graph().layer("layer2").unwrap().node + 1;
    assert_eq!(
        net.image_major_cut(&[8, 3, 224, 224], &vec![false; net.graph().nodes.len()])
            .unwrap(),
        Some(after_layer2)
    );
}
