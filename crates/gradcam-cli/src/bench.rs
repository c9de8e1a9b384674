//! `gradcam bench`: images/s of the whole pipeline and the time of each stage, on synthetic
//! images (deterministic) or a folder, without writing files (PNG encoding is still timed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use gradcam::backend::Backend;
use gradcam::explain::{explain_batch, ExplainConfig, Timings};
use gradcam::image::{load_rgb8, InputSize, RgbImage};
use gradcam::model::synth::Rng;
use gradcam::model::Network;
use rayon::prelude::*;

use crate::{input_size, inputs, load_network, parse_size, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Number of synthetic images (ignored with --images-dir).
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Benchmark on these image files instead (decoding is then timed too).
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// Model input size: an integer S resizes to S×S, `native` keeps each image's size
    /// (default: the model's own input size if its file says, else 224).
    #[arg(long, value_parser = parse_size)]
    size: Option<InputSize>,
    #[arg(long)]
    layer: Option<String>,
    /// Untimed warm-up batches.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Then one more pass timing every kernel on its own (GPU backends; synchronises after
    /// each launch, so it is not part of the images/s above).
    #[arg(long)]
    profile: bool,
}

fn synthetic(n: usize, side: u32) -> Vec<RgbImage> {
    (0..n)
        .map(|i| {
            let mut rng = Rng::new(i as u64 + 1);
            let (cx, cy) = (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8));
            RgbImage::from_fn(side, side, |x, y| {
                let (u, v) = (x as f32 / side as f32 - cx, y as f32 / side as f32 - cy);
                let d = (u * u + v * v).sqrt();
                let n = (rng.next_u64() & 31) as f32;
                image::Rgb([
                    (255.0 * (1.0 - d)).clamp(0.0, 220.0) as u8 + n as u8,
                    (128.0 + 100.0 * (8.0 * u).sin()) as u8,
                    (n * 4.0) as u8,
                ])
            })
        })
        .collect()
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let t_load = Instant::now();
    let net = load_network(&a.model)?;
    let load = t_load.elapsed();
    with_network!(net, net => bench_on(a, &net, load))
}

fn bench_on<B: Backend>(
    a: BenchArgs,
    net: &Network<B>,
    load: Duration,
) -> anyhow::Result<ExitCode> {
    let size = input_size(a.size, net.graph());
    let side = match size {
        InputSize::Square(s) => s,
        InputSize::Native => {
            anyhow::bail!("bench needs a numeric --size (batches share one input size)")
        }
    };
    let mut decode = Duration::ZERO;
    let images = match &a.images_dir {
        Some(dir) => {
            let (files, errs) = inputs::collect(std::slice::from_ref(dir));
            if let Some((p, why)) = errs.first() {
                anyhow::bail!("{}: {why}", p.display());
            }
            let t = Instant::now();
            let imgs = files
                .par_iter()
                .map(|f| load_rgb8(f))
                .collect::<Result<Vec<_>, _>>()?;
            decode = t.elapsed();
            imgs
        }
        None => synthetic(a.images, side as u32),
    };
    let cfg = ExplainConfig {
        layer: a.layer.clone(),
        size,
        ..Default::default()
    };
    let batch = a.batch as usize;
    let refs: Vec<&RgbImage> = images.iter().collect();
    let mut scratch = Timings::default();
    for c in refs.chunks(batch).take(a.warmup) {
        explain_batch(net, c, &cfg, &mut scratch)?;
    }
    net.backend().reset_device_memory_peak();
    let mut t = Timings::default();
    let mut encode = Duration::ZERO;
    let start = Instant::now();
    for c in refs.chunks(batch) {
        let out = explain_batch(net, c, &cfg, &mut t)?;
        let te = Instant::now();
        out.par_iter().try_for_each(|e| {
            let mut buf = std::io::Cursor::new(Vec::new());
            e.overlay.write_to(&mut buf, image::ImageFormat::Png)
        })?;
        encode += te.elapsed();
    }
    let total = start.elapsed();
    let n = images.len() as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / n;
    println!(
        "model {} | layer {} | {} | batch {batch} | {} images {}x{}",
        net.graph().arch,
        cfg.layer.as_deref().unwrap_or(&net.graph().default_layer),
        gradcam::backend::Backend::name(net.backend()),
        images.len(),
        side,
        side,
    );
    println!("images/s      {:.2}", n / total.as_secs_f64());
    let flops = net.graph().forward_flops((side, side))?;
    println!("per image     {:.2} ms", ms(total));
    println!("  preprocess  {:.2} ms", ms(t.preprocess));
    println!(
        "  grad-cam    {:.2} ms (forward + backward-data to the layer + map): {:.2} TFLOP/s \
         counting the forward pass alone ({:.2} GFLOP per image)",
        ms(t.cam),
        flops / (ms(t.cam) * 1e-3) / 1e12,
        flops / 1e9
    );
    println!(
        "  postprocess {:.2} ms (upsample, normalise, overlay)",
        ms(t.postprocess)
    );
    println!("  png encode  {:.2} ms", ms(encode));
    if a.images_dir.is_some() {
        println!(
            "decode        {:.2} ms per image (before the timed loop)",
            ms(decode)
        );
    }
    println!("model load    {:.0} ms", load.as_secs_f64() * 1e3);
    if let Some(bytes) = net.backend().device_memory_peak() {
        println!(
            "peak device   {:.0} MB (tensors held at once, weights included)",
            bytes as f64 / 1e6
        );
    }
    if net.batch_cap() < batch {
        println!(
            "note: batches were split to {} images to fit in device memory",
            net.batch_cap()
        );
    }
    if a.profile {
        print_kernel_profile(net, &refs, batch, &cfg, flops)?;
    }
    if let Some(kb) = peak_rss_kb() {
        println!("peak RSS      {:.0} MB", kb as f64 / 1024.0);
    }
    Ok(ExitCode::SUCCESS)
}

/// VmHWM from /proc (Linux); None elsewhere.
pub fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Per-kernel time over one more pass through the images, as a table with each kernel's share.
fn print_kernel_profile<B: Backend>(
    net: &Network<B>,
    refs: &[&RgbImage],
    batch: usize,
    cfg: &ExplainConfig,
    forward_flops: f64,
) -> anyhow::Result<()> {
    let be = net.backend();
    be.set_kernel_profiling(true);
    let mut scratch = Timings::default();
    for c in refs.chunks(batch) {
        explain_batch(net, c, cfg, &mut scratch)?;
    }
    let times = be.kernel_times();
    be.set_kernel_profiling(false);
    if times.is_empty() {
        println!("profile: this backend has no kernels to time");
        return Ok(());
    }
    let total: f64 = times.iter().map(|t| t.2.as_secs_f64()).sum();
    let n = refs.len() as f64;
    println!("\nkernel                       launches   ms/image   share");
    for (name, launches, t) in &times {
        println!(
            "{name:<28} {launches:>8} {:>10.3} {:>6.1}%",
            t.as_secs_f64() * 1e3 / n,
            100.0 * t.as_secs_f64() / total
        );
    }
    println!("{:<28} {:>8} {:>10.3}", "all kernels", "", total * 1e3 / n);
    // The forward convolutions and linear layers against the FLOP count.
    let fwd: f64 = times
        .iter()
        .filter(|t| t.0.starts_with("conv2d_fwd") || t.0.starts_with("linear_fwd"))
        .map(|t| t.2.as_secs_f64())
        .sum();
    if fwd > 0.0 {
        println!(
            "forward convs + linear: {:.3} ms/image for {:.2} GFLOP = {:.2} TFLOP/s",
            fwd * 1e3 / n,
            forward_flops / 1e9,
            forward_flops * n / fwd / 1e12
        );
    }
    Ok(())
}
