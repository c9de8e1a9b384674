//! Criterion benches of the heavy CPU ops on the shapes that dominate ResNet-50 and VGG16
//! at 224×224, batch 8: `cargo bench --bench ops` (the convs also in bf16 where the CPU has
//! AMX). Throughput is in multiply-adds (bytes of
//! weights for the linear layers, images for the principal component); ROAD's imputation is
//! timed per solve.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gradcam::backend::{Backend, Conv2dParams, CpuBackend};
use gradcam::model::synth::Rng;

struct Shape {
    name: &'static str,
    c: usize,
    hw: usize,
    k: usize,
    r: usize,
    stride: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "resnet50_stem_7x7s2",
        c: 3,
        hw: 224,
        k: 64,
        r: 7,
        stride: 2,
    },
    Shape {
        name: "resnet50_layer1_3x3",
        c: 64,
        hw: 56,
        k: 64,
        r: 3,
        stride: 1,
    },
    Shape {
        name: "resnet50_layer1_1x1",
        c: 64,
        hw: 56,
        k: 256,
        r: 1,
        stride: 1,
    },
    Shape {
        name: "resnet50_layer3_1x1",
        c: 256,
        hw: 14,
        k: 1024,
        r: 1,
        stride: 1,
    },
    Shape {
        name: "resnet50_layer4_3x3",
        c: 512,
        hw: 7,
        k: 512,
        r: 3,
        stride: 1,
    },
    Shape {
        name: "vgg16_conv1_2",
        c: 64,
        hw: 224,
        k: 64,
        r: 3,
        stride: 1,
    },
    Shape {
        name: "vgg16_conv5_3",
        c: 512,
        hw: 14,
        k: 512,
        r: 3,
        stride: 1,
    },
];

fn conv(c: &mut Criterion) {
    let be = CpuBackend::fast();
    let n = 8;
    let mut rng = Rng::new(0);
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10);
    for s in SHAPES {
        let p = Conv2dParams::new(s.stride, (s.r - 1) / 2);
        let x = rng.tensor(&[n, s.c, s.hw, s.hw], -1.0, 1.0);
        let w = rng.tensor(&[s.k, s.c, s.r, s.r], -0.1, 0.1);
        let (oh, ow) = p.out_hw((s.hw, s.hw), (s.r, s.r)).unwrap();
        let dy = rng.tensor(&[n, s.k, oh, ow], -1.0, 1.0);
        let macs = (n * s.k * oh * ow * s.c * s.r * s.r) as u64;
        group.throughput(Throughput::Elements(macs));
        // As the network prepares them: for this output size (Winograd F(4×4) on large maps).
        let prepared = be.conv2d_prepare_for(&w, &p, Some((oh, ow))).unwrap();
        group.bench_function(BenchmarkId::new("conv2d_fwd", s.name), |b| {
            b.iter(|| {
                be.conv2d_fwd(&x, &w, prepared.as_ref(), None, &p, false)
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("conv2d_bwd_data", s.name), |b| {
            b.iter(|| be.conv2d_bwd_data(&dy, &w, (s.hw, s.hw), &p).unwrap())
        });
        // `--precision bf16` (AMX tiles), where this CPU has them.
        if CpuBackend::bf16_available() {
            let bf = CpuBackend::fast_bf16();
            let prepared = bf.conv2d_prepare(&w, &p).unwrap();
            let bwd = bf.conv2d_prepare_bwd(&w, &p, (s.hw, s.hw)).unwrap();
            group.bench_function(BenchmarkId::new("conv2d_fwd_bf16", s.name), |b| {
                b.iter(|| {
                    bf.conv2d_fwd(&x, &w, prepared.as_ref(), None, &p, false)
                        .unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("conv2d_bwd_data_bf16", s.name), |b| {
                b.iter(|| {
                    bf.conv2d_bwd_data_with(&dy, &w, bwd.as_ref(), (s.hw, s.hw), &p)
                        .unwrap()
                })
            });
        }
        // A ResNet block's end (its last conv is 1x1 in ResNet-50): bias, skip, ReLU fused.
        if s.r == 1 {
            let (bias, res) = (rng.tensor(&[s.k], -0.1, 0.1), dy.clone());
            let name = BenchmarkId::new("conv2d_fwd_add_relu", s.name);
            group.bench_function(name, |b| {
                b.iter(|| {
                    be.conv2d_fwd_add_relu(&x, &w, prepared.as_ref(), Some(&bias), &p, &res)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// VGG16's fc6 (25088 → 4096, 411 MB of weights) and ResNet-50's fc (2048 → 1000) over the
/// CPU's default batch of 8: bound by reading the weights, so throughput is in bytes of W.
fn linear(c: &mut Criterion) {
    let be = CpuBackend::fast();
    let mut rng = Rng::new(2);
    let mut group = c.benchmark_group("linear");
    group.sample_size(10);
    for (name, n, fin, fout) in [
        ("vgg16_fc6", 8, 25088, 4096),
        ("resnet50_fc", 8, 2048, 1000),
    ] {
        let x = rng.tensor(&[n, fin], -1.0, 1.0);
        let w = rng.tensor(&[fout, fin], -0.01, 0.01);
        let b = rng.tensor(&[fout], -0.1, 0.1);
        let dy = rng.tensor(&[n, fout], -1.0, 1.0);
        group.throughput(Throughput::Bytes((4 * fin * fout) as u64));
        group.bench_function(BenchmarkId::new("linear_fwd", name), |bn| {
            bn.iter(|| be.linear_fwd(&x, &w, Some(&b)).unwrap())
        });
        group.bench_function(BenchmarkId::new("linear_bwd_data", name), |bn| {
            bn.iter(|| be.linear_bwd_data(&dy, &w).unwrap())
        });
    }
    group.finish();
}

/// Eigen-CAM's principal component (host work, per image) at the default target layers:
/// ResNet-50 layer4 (2048 channels) and VGG16 features.29 (512 channels), at 224 (7×7 and
/// 14×14) and for a 1000×1000 photograph at its native size (32×32 and 62×62).
fn principal_projection(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("principal_projection");
    group.sample_size(10);
    let shapes = [
        ("resnet50_layer4_224", 8, 2048, 7),
        ("vgg16_features29_224", 8, 512, 14),
        ("resnet50_layer4_1000px", 1, 2048, 32),
        ("vgg16_features29_1000px", 1, 512, 62),
    ];
    for (name, n, k, hw) in shapes {
        let x = rng.tensor(&[n, k, hw, hw], 0.0, 1.0);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("principal_projection", name), |b| {
            b.iter(|| gradcam::cam::principal_projection(&x))
        });
    }
    group.finish();
}

/// ROAD's imputation (`gradcam eval`'s ROAD, host work per map): a 224×224 RGB input and a
/// smooth blob map, at 10, 50 and 90 % MoRF (90, 50 and 10 % of the pixels removed), one
/// solve each; and all 18 of the default percentiles as `eval` runs them (in parallel on
/// the machine's threads). tools/bench_road.py times pytorch-grad-cam's on the same case.
fn road_impute(c: &mut Criterion) {
    use gradcam::eval::road::{impute, kept, perturbed, Order, PERCENTILES};
    let (h, w) = (224, 224);
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..3 * h * w).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let map: Vec<f32> = (0..h * w)
        .map(|i| {
            let (y, xx) = ((i / w) as f32, (i % w) as f32);
            (-((y - 90.0).powi(2) + (xx - 130.0).powi(2)) / (2.0 * 50.0 * 50.0)).exp()
        })
        .collect();
    let mut group = c.benchmark_group("road_impute");
    group.sample_size(10);
    for p in [10.0, 50.0, 90.0] {
        let keep = kept(&map, p, Order::MoRF, 0);
        group.bench_function(BenchmarkId::new("road_impute", format!("morf{p}")), |b| {
            b.iter(|| impute(&x, (h, w), &keep).unwrap())
        });
    }
    group.bench_function(BenchmarkId::new("road_impute", "all18"), |b| {
        b.iter(|| perturbed(&x, (h, w), &map, &PERCENTILES, 0.01).unwrap())
    });
    group.finish();
}

criterion_group!(benches, conv, linear, principal_projection, road_impute);
criterion_main!(benches);
