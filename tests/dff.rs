//! Deep Feature Factorization against pytorch-grad-cam 1.5.7 (tests/fixtures/expected/
//! dff__*.safetensors, written by tools/make_dff_fixtures.py): the concepts, the raw and the
//! scaled maps, the concepts' class scores, scikit-learn's iteration count and the overlay.

mod common;

use common::{expected, fixtures, networks, rel_err};
use gradcam::dff;
use gradcam::Tensor;

/// A tensor stored as int64 (the iteration count).
fn int(e: &gradcam::parity::Expected, name: &str) -> i64 {
    i64::from_le_bytes(e.bytes(name).unwrap()[..8].try_into().unwrap())
}

#[test]
fn dff_matches_pytorch_grad_cam() {
    let nets = networks();
    let m = common::manifest("manifest.json");
    let cases = [
        ("resnet_tiny", "layer4", vec!["a", "b"], "64", 3),
        ("resnet_basic_tiny", "layer3", vec!["a"], "native", 5),
        ("vgg_bn_tiny", "features.27", vec!["c"], "native", 4),
    ];
    for (model, layer, images, size, k) in cases {
        let id = format!("dff__{model}__{layer}__{}__{size}__k{k}", images.join("_"));
        let e = expected(&fixtures().join(format!("expected/{id}.safetensors")));
        // The inputs: the committed manifest.json files holding (image, size).
        let inputs: Vec<Tensor> = (images.iter())
            .map(|im| {
                let case = (m["cases"].as_array().unwrap().iter())
                    .find(|c| {
                        c["image"] == format!("images/{im}.png")
                            && (c["size"].to_string().trim_matches('"') == size)
                    })
                    .unwrap();
                expected(&fixtures().join(case["expected"].as_str().unwrap())).f32("input")
            })
            .collect();
        let (_, c, h, w) = inputs[0].dims4();
        let data: Vec<f32> = inputs.iter().flat_map(|t| t.data().to_vec()).collect();
        let x = Tensor::new([inputs.len(), c, h, w], data);
        let net = &nets[model];
        let (act, _) = dff::activations(net, x, layer).unwrap();
        let f = dff::factorize(vec![act.clone()], k).unwrap();

        // The same start, updates and stopping rule: the same iteration count, and factors
        // equal to rounding carried through the iterations (our activations differ from
        // torch's by about 1e-6, the products inside the updates are summed in another
        // order; measured 4e-7 to 2.3e-6): within 1e-4 of the largest value.
        assert_eq!(f.iterations as i64, int(&e, "iterations"), "{id}");
        let concepts = e.f32("concepts");
        assert_eq!(f.concepts.shape(), concepts.shape(), "{id}");
        let err = rel_err(&f.concepts, &concepts);
        assert!(err < 1e-4, "{id}: concepts off by {err}");
        let maps = e.f32("maps");
        let ours: Vec<f32> = f.maps.iter().flat_map(|m| m.data().to_vec()).collect();
        let err = rel_err(&Tensor::new(maps.shape(), ours), &maps);
        assert!(err < 1e-4, "{id}: maps off by {err}");

        // Images given one tensor each factorise as the batch does (images of their own
        // sizes go in that way).
        if inputs.len() > 1 {
            let (n, kc, ah, aw) = act.dims4();
            let per = kc * ah * aw;
            let split: Vec<Tensor> = (0..n)
                .map(|i| Tensor::new([1, kc, ah, aw], act.data()[i * per..(i + 1) * per].to_vec()))
                .collect();
            let g = dff::factorize(split, k).unwrap();
            assert_eq!(g.concepts.data(), f.concepts.data(), "{id}");
            assert!(g
                .maps
                .iter()
                .zip(&f.maps)
                .all(|(a, b)| a.data() == b.data()));
        }

        // scale_cam_image per image: normalised at the layer's size, resized to the input's.
        let expl = e.f32("explanations");
        let (mh, mw) = (f.maps[0].shape()[1], f.maps[0].shape()[2]);
        for n in 0..inputs.len() {
            let ours = dff::scale_maps(f.maps[n].data(), (mh, mw), (h, w));
            let theirs = &expl.data()[n * k * h * w..][..k * h * w];
            let d = (ours.iter().zip(theirs)).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(d < 1e-4, "{id}: explanations of image {n} off by {d}");
        }

        // The concepts' class scores: `model.fc(concepts.T)` for a ResNet at layer4, which
        // the network run on from the layer on a constant map equals.
        let scores = dff::concept_scores(net, layer, &f.concepts, (h, w)).unwrap();
        if e.tensors.contains_key("scores") {
            let theirs = e.f32("scores");
            let ours = scores.as_ref().expect("layer4 feeds the head alone");
            let err = rel_err(ours, &theirs);
            assert!(err < 1e-4, "{id}: concept scores off by {err}");
        }
        // Every other layer here feeds the rest alone too: scores for every concept.
        assert_eq!(scores.unwrap().shape(), [k, net.num_classes()], "{id}");
        // Inside a residual block the rest also reads the shortcut: no scores.
        if model == "resnet_tiny" {
            let act = dff::activations(
                net,
                Tensor::new([1, c, h, w], inputs[0].data().to_vec()),
                "layer4.0.conv2",
            )
            .unwrap()
            .0;
            let f = dff::factorize(vec![act], 2).unwrap();
            assert!(
                dff::concept_scores(net, "layer4.0.conv2", &f.concepts, (h, w))
                    .unwrap()
                    .is_none()
            );
        }

        // The overlay (first image, native size): byte for byte.
        if let Some(theirs) = e.bytes("overlay") {
            let img =
                gradcam::image::load_rgb8(&fixtures().join(format!("images/{}.png", images[0])))
                    .unwrap();
            assert_eq!(img.dimensions(), (w as u32, h as u32), "{id}");
            let ours =
                dff::overlay(&img, f.maps[0].data(), (mh, mw), k, dff::IMAGE_WEIGHT).unwrap();
            let off = (ours.as_raw().iter().zip(theirs))
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(off, 0, "{id}: overlay bytes that differ");
        }
    }
}

/// The overlay's colours against matplotlib and OpenCV (tools/make_dff_fixtures.py): every
/// concept colour for k = 1..64, its HSV, and OpenCV's HSV → RGB for every hue and value at
/// full saturation (the concept colours' saturation) on both of its paths, byte for byte.
#[test]
fn dff_colours_are_matplotlibs_and_opencvs() {
    let e = expected(&fixtures().join("expected/dff__colours.safetensors"));
    let colours = e.bytes("colours").unwrap();
    let mut at = 0;
    for k in 1..=64 {
        for i in 0..k {
            assert_eq!(dff::concept_colour(i, k), colours[at..at + 3], "{i} of {k}");
            at += 3;
        }
    }
    assert_eq!(at, colours.len());
    let hsv = e.bytes("hsv").unwrap();
    let hsv2rgb = e.bytes("hsv2rgb").unwrap();
    let scalar = e.bytes("hsv2rgb_scalar").unwrap();
    for (c, h) in colours.chunks(3).zip(hsv.chunks(3)) {
        assert_eq!(dff::rgb_to_hsv([c[0], c[1], c[2]]), h, "{c:?}");
    }
    for h in 0..180u8 {
        for v in 0..=255u8 {
            let at = (h as usize * 256 + v as usize) * 3;
            assert_eq!(
                dff::hsv_to_rgb([h, 255, v]),
                hsv2rgb[at..at + 3],
                "h {h} v {v}"
            );
            let one = dff::hsv_to_rgb_path([h, 255, v], true);
            assert_eq!(one, scalar[at..at + 3], "h {h} v {v}, one pixel");
        }
    }
}
