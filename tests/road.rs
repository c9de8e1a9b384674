//! ROAD against pytorch-grad-cam 1.5.7 (tests/fixtures/expected/road__*.safetensors, written
//! by tools/make_road_fixtures.py with the imputation's noise off): the kept pixels at every
//! percentile, the imputed images, and the per-percentile and averaged probability changes.

mod common;

use common::{expected, fixtures, manifest, networks};
use gradcam::eval::road::{self, Order, RoadConfig, PERCENTILES};

/// The committed input of (image, native size): the first manifest.json case holding it, as
/// the generator picks it.
fn input(image: &str) -> gradcam::Tensor {
    let m = manifest("manifest.json");
    let case = (m["cases"].as_array().unwrap().iter())
        .find(|c| c["image"] == format!("images/{image}.png") && c["size"] == "native")
        .unwrap();
    expected(&fixtures().join(case["expected"].as_str().unwrap())).f32("input")
}

#[test]
fn road_matches_pytorch_grad_cam() {
    let nets = networks();
    for (model, image) in [("resnet_tiny", "a"), ("vgg_bn_tiny", "c")] {
        let e = expected(&fixtures().join(format!("expected/road__{model}__{image}.safetensors")));
        let x = input(image);
        let (_, _, h, w) = x.dims4();
        let cam = e.f32("cam");
        let class = e.class();

        // The kept pixels: pytorch-grad-cam's threshold rule exactly (np.packbits rows).
        let packed = e.bytes("keep").unwrap();
        let row = (h * w).div_ceil(8);
        for (r, order) in [Order::MoRF, Order::LeRF].into_iter().enumerate() {
            for (k, &p) in PERCENTILES.iter().enumerate() {
                let bits = &packed[(r * PERCENTILES.len() + k) * row..][..row];
                let theirs: Vec<bool> = (0..h * w)
                    .map(|i| bits[i / 8] >> (7 - i % 8) & 1 == 1)
                    .collect();
                let ours = road::kept(cam.data(), p, order, 0);
                assert_eq!(ours, theirs, "{model} {order:?} {p}");
            }
        }

        // The imputation against SciPy's direct solve; ours converges to 1e-10 relative in
        // f64, so the difference is f32 rounding: within 1e-5 of values of order 1.
        let imputed = e.f32("imputed");
        for (k, (order, p)) in [(Order::MoRF, 10.0), (Order::LeRF, 50.0)]
            .into_iter()
            .enumerate()
        {
            let keep = road::kept(cam.data(), p, order, 0);
            let ours = road::impute(x.data(), (h, w), &keep).unwrap();
            let theirs = &imputed.data()[k * 3 * h * w..(k + 1) * 3 * h * w];
            let diff = (ours.iter().zip(theirs)).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-5, "{model} {order:?} {p}: imputed off by {diff}");
        }

        // The scores: every percentile's probability change, then the averages. Our forward
        // pass agrees with torch's to about 1e-6 on these models; 2e-5 leaves room for the
        // imputation's rounding passing through the network.
        let net = &nets[model];
        let base = gradcam::explain::softmax_at(net.forward(x.clone()).unwrap().data(), class);
        let change = e.f32("change");
        for (r, order) in [Order::MoRF, Order::LeRF].into_iter().enumerate() {
            for (k, &p) in PERCENTILES.iter().enumerate() {
                let cfg = RoadConfig {
                    percentiles: vec![p],
                    noise: 0.0,
                };
                let s = (road::road_scores(net, &x, cam.data(), class, base, &cfg, 4).unwrap())
                    .unwrap();
                let ours = if order == Order::MoRF { s.morf } else { s.lerf };
                let theirs = change.data()[r * PERCENTILES.len() + k];
                assert!(
                    (ours - theirs).abs() < 2e-5,
                    "{model} {order:?} {p}: {ours} vs {theirs}"
                );
            }
        }
        let cfg = RoadConfig {
            noise: 0.0,
            ..RoadConfig::default()
        };
        let s = (road::road_scores(net, &x, cam.data(), class, base, &cfg, 5).unwrap()).unwrap();
        for (name, ours) in [
            ("morf", s.morf),
            ("lerf", s.lerf),
            ("combined", s.combined()),
        ] {
            let theirs = e.f32(name).data()[0];
            assert!(
                (ours - theirs).abs() < 2e-5,
                "{model} {name}: {ours} vs {theirs}"
            );
        }
    }
}

/// The noise: N(0, noise²) on the removed pixels only, the same draw on every call and at
/// the same pixel whatever else is removed (so every method's map meets the same noise),
/// another for another seed.
#[test]
fn road_noise_is_seeded_and_on_removed_pixels_only() {
    let (h, w) = (60, 80);
    let x: Vec<f32> = (0..3 * h * w).map(|i| (i % 17) as f32 / 17.0).collect();
    let keep: Vec<bool> = (0..h * w).map(|i| (i / w) % 3 != 0).collect();
    let clean = road::impute(&x, (h, w), &keep).unwrap();
    let a = road::impute_noisy(&x, (h, w), &keep, 0.5, 11).unwrap();
    assert_eq!(a, road::impute_noisy(&x, (h, w), &keep, 0.5, 11).unwrap());
    assert_ne!(a, road::impute_noisy(&x, (h, w), &keep, 0.5, 12).unwrap());
    let mut d = Vec::new();
    for (i, (n, c)) in a.iter().zip(&clean).enumerate() {
        match keep[i % (h * w)] {
            true => assert_eq!(n, c),
            false => d.push((n - c) as f64),
        }
    }
    // Another mask: where a pixel is removed in both, it gets the same draw.
    let keep2: Vec<bool> = (0..h * w).map(|i| (i % w) % 2 == 0).collect();
    let clean2 = road::impute(&x, (h, w), &keep2).unwrap();
    let b = road::impute_noisy(&x, (h, w), &keep2, 0.5, 11).unwrap();
    for i in 0..3 * h * w {
        if !keep[i % (h * w)] && !keep2[i % (h * w)] {
            assert!(
                ((a[i] - clean[i]) - (b[i] - clean2[i])).abs() < 1e-6,
                "pixel {i}"
            );
        }
    }
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let sd = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    // 4800 draws: the mean within 4 standard errors, the deviation within 5 %.
    assert!(
        mean.abs() < 4.0 * 0.5 / (d.len() as f64).sqrt(),
        "mean {mean}"
    );
    assert!((sd - 0.5).abs() < 0.025, "sd {sd}");
}

/// Settings out of range are errors naming the setting.
#[test]
fn road_settings_are_checked() {
    for (percentiles, noise, what) in [
        (vec![], 0.0, "at least one percentile"),
        (vec![10.0, 100.0], 0.0, "percentile 100"),
        (vec![0.0], 0.0, "percentile 0"),
        (vec![50.0], -1.0, "noise -1"),
        (vec![50.0], f32::NAN, "noise NaN"),
        (
            vec![10.0, 20.0, 10.0],
            0.0,
            "percentile 10 is listed twice (at 1 and 3)",
        ),
    ] {
        let err = RoadConfig { percentiles, noise }.check().unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
}

/// A map flat over most of the image (Grad-CAM's zeros; pytorch-grad-cam's ROAD is NaN
/// there, nothing being kept at the low percentiles): finite scores, the same on every run;
/// a map that is not finite gets none.
#[test]
fn road_scores_flat_maps() {
    let nets = networks();
    let net = &nets["resnet_tiny"];
    let x = input("a");
    let (_, _, h, w) = x.dims4();
    let map: Vec<f32> = (0..h * w)
        .map(|i| {
            if i % w > 2 * w / 3 {
                (i % w) as f32 / w as f32
            } else {
                0.0
            }
        })
        .collect();
    let base = gradcam::explain::softmax_at(net.forward(x.clone()).unwrap().data(), 3);
    let cfg = RoadConfig::default();
    let a = road::road_scores(net, &x, &map, 3, base, &cfg, 6)
        .unwrap()
        .unwrap();
    assert!(a.morf.is_finite() && a.lerf.is_finite(), "{a:?}");
    let b = road::road_scores(net, &x, &map, 3, base, &cfg, 4)
        .unwrap()
        .unwrap();
    assert_eq!(a, b);
    // At 10 % MoRF the flat part supplies every kept pixel: 10 % of them, all at zero.
    let keep = road::kept(&map, 10.0, Order::MoRF, 5);
    let want = ((h * w) as f64 * 0.1).round() as usize;
    assert_eq!(keep.iter().filter(|&&k| k).count(), want);
    assert!(keep.iter().zip(&map).all(|(&k, &m)| !k || m == 0.0));
    let mut bad = map.clone();
    bad[7] = f32::NAN;
    assert_eq!(
        road::road_scores(net, &x, &bad, 3, base, &cfg, 6).unwrap(),
        None
    );
}
