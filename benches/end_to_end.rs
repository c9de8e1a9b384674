//! Whole-pipeline benches (preprocess → Grad-CAM → overlay) on random-weight ResNet-50 and
//! VGG16 made in Rust (no downloads), 224×224, batch 8: `cargo bench --bench end_to_end`.
//! Throughput is in images.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gradcam::backend::CpuBackend;
use gradcam::explain::{explain_batch, ExplainConfig, Timings};
use gradcam::image::RgbImage;
use gradcam::model::{self, synth, Network};

fn images(n: usize) -> Vec<RgbImage> {
    (0..n)
        .map(|i| {
            let mut rng = synth::Rng::new(i as u64);
            RgbImage::from_fn(224, 224, |_, _| {
                image::Rgb([
                    rng.uniform(0.0, 255.0) as u8,
                    rng.uniform(0.0, 255.0) as u8,
                    128,
                ])
            })
        })
        .collect()
}

fn end_to_end(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let imgs = images(8);
    let refs: Vec<&RgbImage> = imgs.iter().collect();
    let mut group = c.benchmark_group("grad_cam_batch8_224");
    group.sample_size(10);
    group.throughput(Throughput::Elements(8));
    for (arch, layer) in [("resnet50", "layer4"), ("vgg16", "features.29")] {
        let path = dir.path().join(format!("{arch}.safetensors"));
        let dict = synth::state_dict(arch, 1, 1000, 0).unwrap();
        synth::write(&path, &dict, safetensors::Dtype::F32).unwrap();
        drop(dict);
        let net = Network::new(model::load(&path, None).unwrap(), CpuBackend::fast()).unwrap();
        let cfg = ExplainConfig {
            layer: Some(layer.into()),
            ..Default::default()
        };
        group.bench_function(arch, |b| {
            b.iter(|| explain_batch(&net, &refs, &cfg, &mut Timings::default()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
