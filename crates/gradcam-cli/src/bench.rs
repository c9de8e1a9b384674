//! `gradcam bench`: images/s of the whole pipeline and the time of each stage, on synthetic
//! images (deterministic) or a folder, without writing files (PNG encoding is still timed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use gradcam::backend::Backend;
use gradcam::cam::multi_layer::{normalised, target_layers};
use gradcam::cam::{Method, Target};
use gradcam::explain::{
    explain_batch, explain_batch_device, DeviceBatch, ExplainConfig, OverlayAt, Timings,
};
use gradcam::image::{load_rgb8, InputSize, RgbImage};
use gradcam::model::synth::Rng;
use gradcam::model::Network;
use rayon::prelude::*;

use crate::pass_size::{MethodMemory, PassSizes};
use crate::{input_size, inputs, load_network, parse_size, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Images per batch (default: 64 on a GPU; 8 on the CPU, 32 for models with 64 MB of
    /// linear weights or more, as VGG)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: Option<u32>,
    /// Number of synthetic images, a batch of distinct ones repeated (ignored with
    /// --images-dir).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    images: u32,
    /// Benchmark on these image files instead (decoding is then timed too).
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// Model input size: an integer S resizes to S×S, `native` keeps each image's size
    /// (default: the model's own input size if its file says, else 224).
    #[arg(long, value_parser = parse_size)]
    size: Option<InputSize>,
    /// Target layer(s), as `explain --layer`.
    #[arg(long)]
    layer: Option<String>,
    /// CAM method, as `explain --method`.
    #[arg(long, default_value = "gradcam", value_parser = crate::explain::parse_method)]
    method: Method,
    /// As `explain --target` (ShapleyCAM's forward-mode pass runs for softmax and rest).
    #[arg(long, default_value = "logit", value_parser = crate::explain::parse_target)]
    target: Target,
    /// As `explain --eigen-smooth`.
    #[arg(long)]
    eigen_smooth: bool,
    /// As `explain --aug-smooth` (six copies of each image).
    #[arg(long)]
    aug_smooth: bool,
    /// As `explain --sess` (SESS over the method; --sess-scales sizes, 12 by default).
    #[arg(long)]
    sess: bool,
    /// SESS: how many sizes (as `explain --sess-scales`).
    #[arg(long, default_value_t = 12, requires = "sess", value_parser = clap::value_parser!(u32).range(1..=64))]
    sess_scales: u32,
    /// Untimed warm-up batches.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Leave out the overlays (drawing, copy back, PNG encoding), as `explain --outputs cam,json`.
    #[arg(long)]
    no_overlay: bool,
    /// Then one more pass timing every kernel (GPU) or op (CPU) on its own, with each
    /// convolution's GEMM shape and rate (on a GPU it synchronises after each launch, so it is
    /// not part of the images/s above).
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
    a.target.check_combination(a.method, false)?;
    a.method.check_options(false, a.eigen_smooth)?;
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
    let layer = a.layer.as_deref().map(normalised).transpose()?;
    let listed = layer.as_deref().map(target_layers).transpose()?;
    for l in listed.unwrap_or_default() {
        net.graph().target(l)?;
    }
    // As `explain` does on the CPU: a size whose pass would not fit is refused, and large
    // sizes go through fewer images at a time (the batch printed is the one that ran).
    let asked = a.batch.map_or(net.default_batch(), |b| b as usize);
    let graph = net.graph();
    let layers = target_layers(layer.as_deref().unwrap_or(&graph.default_layer))?;
    let method = MethodMemory {
        score_batch_option: false,
        ..MethodMemory::of(
            graph,
            a.method,
            a.target,
            &layers,
            ExplainConfig::default().score_batch,
            a.sess,
            a.aug_smooth,
            a.method == Method::FullGrad,
        )?
    };
    let host = net.backend().host_activations();
    let mut passes = PassSizes::new(graph, method, host, crate::memory::bytes(), asked);
    if let Some(why) = passes.too_large((side, side)) {
        anyhow::bail!("--size {side}: {why}");
    }
    let batch = passes.images_per_pass((side, side));
    if batch < asked {
        eprintln!(
            "note: {batch} images per pass instead of {asked} at {side}×{side}, as `explain` \
             runs them: larger passes of images this size are no faster and take more memory"
        );
    }
    let mut decode = Duration::ZERO;
    let mut left_out = 0;
    let images = match &a.images_dir {
        Some(dir) => {
            let (files, errs) = inputs::collect(std::slice::from_ref(dir), None);
            if let Some((p, why)) = errs.first() {
                anyhow::bail!("{}: {why}", p.display());
            }
            let t = Instant::now();
            let decoded: Vec<_> = files.par_iter().map(|f| load_rgb8(f)).collect();
            decode = t.elapsed();
            // A file that does not decode is reported and left out, as `explain` does; the
            // bench runs on the rest.
            let mut imgs = Vec::with_capacity(decoded.len());
            for r in decoded {
                match r {
                    Ok(img) => imgs.push(img),
                    Err(e) => {
                        eprintln!("error: {e} (left out of the bench)");
                        left_out += 1;
                    }
                }
            }
            if imgs.is_empty() {
                anyhow::bail!(
                    "{}: none of its {} files decodes",
                    dir.display(),
                    files.len()
                );
            }
            imgs
        }
        // A pass's worth of distinct pictures, cycled: --images of a large --size would
        // otherwise all sit in memory at once, past what the pass sizes planned for.
        None => synthetic((a.images as usize).min(batch), side as u32),
    };
    let cfg = ExplainConfig {
        layer,
        method: a.method,
        target: a.target,
        eigen_smooth: a.eigen_smooth,
        aug_smooth: a.aug_smooth,
        sess: a.sess.then_some(gradcam::cam::sess::Sess {
            num_scales: a.sess_scales as usize,
        }),
        size,
        overlay: match a.no_overlay {
            true => OverlayAt::Off,
            false => OverlayAt::Image,
        },
        ..Default::default()
    };
    let refs: Vec<&RgbImage> = match &a.images_dir {
        Some(_) => images.iter().collect(),
        None => images.iter().cycle().take(a.images as usize).collect(),
    };
    let mut scratch = Timings::default();
    for c in refs.chunks(batch).take(a.warmup) {
        explain_batch(net, c, &cfg, &mut scratch)?;
    }
    net.backend().reset_device_memory_peak();
    let mut t = Timings::default();
    let start = Instant::now();
    // Two stages, as `gradcam explain` runs them: the device works on batch i + 1 while a
    // second thread builds and encodes batch i (at most one more finished batch waits in the
    // channel between them).
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, DeviceBatch)>(1);
    let (host, encode) = std::thread::scope(|s| -> anyhow::Result<(Timings, Duration)> {
        let host = s.spawn(|| -> anyhow::Result<(Timings, Duration)> {
            let (mut th, mut encode) = (Timings::default(), Duration::ZERO);
            for (i, db) in rx {
                let c = &refs[i * batch..(i * batch + batch).min(refs.len())];
                let out = db.finish(c, &cfg, &mut th)?;
                let te = Instant::now();
                out.par_iter()
                    .filter_map(|e| e.overlay.as_ref())
                    .try_for_each(|o| {
                        let mut buf = std::io::Cursor::new(Vec::new());
                        o.write_to(&mut buf, image::ImageFormat::Png)
                    })?;
                encode += te.elapsed();
            }
            Ok((th, encode))
        });
        for (i, c) in refs.chunks(batch).enumerate() {
            let db = explain_batch_device(net, c, &cfg, &mut t)?;
            if tx.send((i, db)).is_err() {
                break; // the host stage failed: its error is reported below
            }
        }
        drop(tx);
        host.join().expect("host stage panicked")
    })?;
    t.add(&host);
    let total = start.elapsed();
    let n = refs.len() as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / n;
    let mut smoothing = match (cfg.eigen_smooth, cfg.aug_smooth) {
        (false, false) => String::new(),
        (true, false) => " (eigen-smooth)".into(),
        (false, true) => " (aug-smooth)".into(),
        (true, true) => " (eigen-smooth, aug-smooth)".into(),
    };
    if cfg.target != Target::Logit {
        smoothing += &format!(" of the {} target", cfg.target.name());
    }
    if let Some(s) = cfg.sess {
        smoothing += &format!(" under SESS ({} scales)", s.num_scales);
    }
    println!(
        "model {} | layer {} | {}{smoothing} | {} | batch {batch} | {} images {}x{}{}",
        net.graph().arch,
        cfg.layer.as_deref().unwrap_or(&net.graph().default_layer),
        cfg.method.name(),
        gradcam::backend::Backend::name(net.backend()),
        refs.len(),
        side,
        side,
        if a.no_overlay { " | no overlays" } else { "" },
    );
    println!("images/s      {:.2}", n / total.as_secs_f64());
    let flops = net.graph().forward_flops((side, side))?;
    println!("per image     {:.2} ms", ms(total));
    // (Where the stages run differs: on a GPU the host only packs the bytes.)
    let gpu = !net.backend().host_activations();
    match gpu {
        true => println!(
            "  preprocess  {:.2} ms (the host's packing of the bytes; their copy and the resize \
             kernels run behind it, in the grad-cam time)",
            ms(t.preprocess)
        ),
        false => println!(
            "  preprocess  {:.2} ms (resize, normalise)",
            ms(t.preprocess)
        ),
    }
    // The rate counts one forward pass per image; these options run more (several layers
    // share one; Ablation-CAM needs none more where the logits are affine in the layer).
    let layers = cfg.layer.as_deref().unwrap_or(&net.graph().default_layer);
    let ablation_passes = cfg.method == Method::AblationCam
        && !layers
            .split(',')
            .all(|l| net.graph().affine_after(l.trim()).unwrap_or(false));
    let passes = match (cfg.aug_smooth, cfg.method) {
        (true, _) | (_, Method::ScoreCam) => " (this option runs more passes than one)",
        _ if ablation_passes => " (this option runs more passes than one)",
        _ => "",
    };
    println!(
        "  grad-cam    {:.2} ms (forward + backward-data to the layer + map): {:.2} TFLOP/s \
         counting one forward pass ({:.2} GFLOP per image){passes}",
        ms(t.cam),
        flops / (ms(t.cam) * 1e-3) / 1e12,
        flops / 1e9
    );
    println!(
        "  postprocess {:.2} ms (upsample, normalise{})",
        ms(t.postprocess),
        if a.no_overlay { "" } else { ", overlay" }
    );
    if !a.no_overlay {
        println!("  png encode  {:.2} ms", ms(encode));
    }
    if gpu {
        println!(
            "  (postprocess and png encode of one batch overlap the next batch's device work)"
        );
    }
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
    let plans = net.backend().tuning_plans();
    if !plans.is_empty() {
        // Tuned in the warm-up: how many kinds of layer took each kernel choice.
        let mut tally = std::collections::BTreeMap::<&str, usize>::new();
        for (_, how) in &plans {
            *tally.entry(how.as_str()).or_default() += 1;
        }
        let tally: Vec<String> = tally.iter().map(|(h, n)| format!("{h}: {n}")).collect();
        println!(
            "conv tuning   {} kinds of layer; tile and weights chosen: {}",
            plans.len(),
            tally.join(", ")
        );
        if a.profile {
            for (key, how) in &plans {
                println!("  {key:<72} {how}");
            }
        }
    }
    if a.profile {
        print_kernel_profile(net, &refs, batch, &cfg, flops)?;
    }
    if let Some(kb) = peak_rss_kb() {
        println!("peak RSS      {:.0} MB", kb as f64 / 1024.0);
    }
    if left_out > 0 {
        eprintln!("{left_out} file(s) left out (listed above)");
        return Ok(ExitCode::from(1));
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
    // Per kernel (convolutions come tagged with their GEMM shape: summed here, listed below).
    let mut per_kernel: Vec<(String, usize, f64)> = Vec::new();
    for (name, launches, t) in &times {
        let k = name.split(' ').next().unwrap_or(name);
        match per_kernel.iter_mut().find(|e| e.0 == k) {
            Some(e) => (e.1 += launches, e.2 += t.as_secs_f64()).1,
            None => per_kernel.push((k.to_string(), *launches, t.as_secs_f64())),
        }
    }
    per_kernel.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!("\nkernel                       launches   ms/image   share");
    for (name, launches, t) in &per_kernel {
        println!(
            "{name:<28} {launches:>8} {:>10.3} {:>6.1}%",
            t * 1e3 / n,
            100.0 * t / total
        );
    }
    println!("{:<28} {:>8} {:>10.3}", "all kernels", "", total * 1e3 / n);
    // The forward convolutions and linear layers against the FLOP count.
    let fwd: f64 = times
        .iter()
        .filter(|t| t.0.starts_with("conv2d_fwd") || t.0.starts_with("linear_fwd"))
        .map(|t| t.2.as_secs_f64())
        .sum();
    // Below a TFLOP/s (CPUs) rates read better in GFLOP/s. Winograd's convolutions count the
    // direct convolution's FLOPs.
    let (unit, scale) = match forward_flops * n / fwd {
        r if r >= 1e12 => ("TFLOP/s", 1e12),
        _ => ("GFLOP/s", 1e9),
    };
    // Each convolution shape: rows x cols x depth per group (x groups), its rate.
    let shaped: Vec<_> = times.iter().filter(|t| t.0.contains(' ')).collect();
    if !shaped.is_empty() {
        println!(
            "\nconvolution GEMM (rows x cols x depth)               launches   ms/image  {unit}"
        );
        for (name, launches, t) in shaped {
            let flop = gemm_flop(name) * *launches as f64;
            println!(
                "{name:<52} {launches:>8} {:>10.4} {:>8.2}",
                t.as_secs_f64() * 1e3 / n,
                flop / t.as_secs_f64() / scale
            );
        }
    }
    if fwd > 0.0 {
        println!(
            "forward convs + linear: {:.3} ms/image for {:.2} GFLOP = {:.2} {unit}",
            fwd * 1e3 / n,
            forward_flops / 1e9,
            forward_flops * n / fwd / scale
        );
    }
    Ok(())
}

/// 2·rows·cols·depth·groups of a profile tag `"<kernel> RxCxD[xGg]"`, per launch.
fn gemm_flop(name: &str) -> f64 {
    let Some(tag) = name.split(' ').nth(1) else {
        return 0.0;
    };
    let dims: Vec<f64> = tag
        .split('x')
        .map(|d| d.trim_end_matches('g').parse().unwrap_or(0.0))
        .collect();
    2.0 * dims.iter().product::<f64>()
}
