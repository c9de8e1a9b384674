//! `gradcam eval MANIFEST`: the paper's localisation, pointing game, faithfulness and
//! deletion / insertion measures per method, against a centre-prior baseline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use gradcam::backend::Backend;
use gradcam::cam::multi_layer::{normalised, target_layers};
use gradcam::cam::{Method, Target};
use gradcam::eval::manifest::Entry;
use gradcam::eval::road::RoadConfig;
use gradcam::eval::{aggregate, evaluate_image, manifest, Aggregate, EvalConfig};
use gradcam::image::{peek_dims, InputSize};
use gradcam::model::Network;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::pass_size::PassSizes;
use crate::{input_size, load_network, parse_size, ModelArgs};

#[derive(Args)]
pub struct EvalArgs {
    /// CSV (`image,class,x0,y0,x1,y1[,mask]`, one box per row; a first line of column names
    /// may give them in any order, xmin..ymax too) or JSON Lines (`{"image", "class", "boxes":
    /// [[x0,y0,x1,y1]], "mask"?}`); inclusive pixel boxes of the original image, paths
    /// relative to the manifest, classes by index or by the model's labels.
    manifest: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Target layer(s), as `explain --layer` (default: ResNet `layer4`, VGG the last ReLU of
    /// `features`).
    #[arg(long)]
    layer: Option<String>,
    /// Comma-separated methods (default: all; with --target softmax|rest, all that have a
    /// class score).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// The class score the methods explain, as `explain --target` (ShapleyCAM differs from
    /// Grad-CAM only under softmax or rest).
    #[arg(long, default_value = "logit", value_parser = crate::explain::parse_target)]
    target: Target,
    /// Model input size: an integer S resizes to S×S, `native` keeps each image's size
    /// (default: the model's own input size if its file says, else 224).
    #[arg(long, value_parser = parse_size)]
    size: Option<InputSize>,
    /// §4.1 threshold, as a fraction of the map's max.
    #[arg(long, default_value_t = gradcam::eval::LOC_THRESHOLD)]
    loc_threshold: f32,
    /// Pointing-game tolerance in pixels.
    #[arg(long, default_value_t = gradcam::eval::POINTING_TOLERANCE)]
    pointing_tolerance: usize,
    /// Occlusion patch size for faithfulness (0 skips it); stride = half the patch.
    #[arg(long, default_value_t = gradcam::eval::OCCLUSION_PATCH)]
    occlusion_patch: usize,
    /// Steps of the deletion / insertion curves (0 skips them).
    #[arg(long, default_value_t = gradcam::eval::CURVE_STEPS)]
    curve_steps: usize,
    /// Images per forward pass for occlusion, curves, the confidence measures and Score-CAM.
    #[arg(
        long,
        default_value_t = gradcam::eval::FORWARD_BATCH as u32,
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    forward_batch: u32,
    /// Skip Coherency (it explains every image a second time per method: twice the time of
    /// Score-CAM and Ablation-CAM).
    #[arg(long)]
    no_coherency: bool,
    /// ROAD's percentiles (pytorch-grad-cam's ROADCombined): at each, the pixels above it
    /// (MoRF) or below 100 minus it (LeRF) are removed and filled in by linear imputation.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,20,30,40,50,60,70,80,90"
    )]
    road_percentiles: Vec<f64>,
    /// Standard deviation of the noise added to ROAD's imputed pixels (normalised units;
    /// drawn from a fixed seed, the same for every method).
    #[arg(long, default_value_t = gradcam::eval::road::NOISE)]
    road_noise: f32,
    /// Skip ROAD (it runs the network twice per percentile per map).
    #[arg(long, conflicts_with_all = ["road_percentiles", "road_noise"])]
    no_road: bool,
    /// Write the per-image and aggregate results here as JSON.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let net = load_network(&a.model)?;
    let (entries, note) = with_network!(&net, net => manifest::load_noting(&a.manifest, net.graph().labels.as_deref(), Some(net.num_classes())))?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    with_network!(net, net => eval_on(a, &net, &entries))
}

fn eval_on<B: Backend>(
    a: EvalArgs,
    net: &Network<B>,
    entries: &[Entry],
) -> anyhow::Result<ExitCode> {
    let size = input_size(a.size, net.graph());
    // Settings that would give numbers without meaning (a threshold outside the map's range,
    // one occlusion cell, curves of empty steps), refused before any work.
    if !(0.0..=1.0).contains(&a.loc_threshold) {
        anyhow::bail!(
            "--loc-threshold {}: a fraction of the map's maximum, from 0 to 1",
            a.loc_threshold
        );
    }
    if let InputSize::Square(s) = size {
        if a.occlusion_patch >= s {
            anyhow::bail!(
                "--occlusion-patch {}: covers the whole {s}×{s} input, a single occlusion cell \
                 (at most {}; 0 skips faithfulness)",
                a.occlusion_patch,
                s - 1
            );
        }
        if a.curve_steps > s * s {
            anyhow::bail!(
                "--curve-steps {}: more than the {} pixels of the {s}×{s} input (0 skips the \
                 curves)",
                a.curve_steps,
                s * s
            );
        }
    }
    let mut methods: Vec<Method> = if a.methods.is_empty() {
        (Method::ALL.into_iter())
            .filter(|&m| a.target.check_combination(m, false).is_ok())
            .collect()
    } else {
        a.methods
            .iter()
            .map(|m| Method::parse(m))
            .collect::<Result<_, _>>()?
    };
    // Each once, in the order given.
    let mut seen = Vec::new();
    methods.retain(|m| {
        !seen.contains(m) && {
            seen.push(*m);
            true
        }
    });
    for &m in &methods {
        a.target.check_combination(m, false)?;
    }
    let layer = a.layer.as_deref().map(normalised).transpose()?;
    if let Some(l) = &layer {
        for l in target_layers(l)? {
            net.graph().target(l)?;
        }
    }
    if let (InputSize::Square(s), true) = (size, methods.iter().any(|&m| m != Method::FullGrad)) {
        let at = layer
            .clone()
            .unwrap_or_else(|| net.graph().default_layer.clone());
        if let Err(e) = net.graph().check_map_size(&target_layers(&at)?, (s, s)) {
            anyhow::bail!("{}: {e}", crate::size_said(a.size, net.graph(), s));
        }
    }
    let cfg = EvalConfig {
        layer: layer.clone(),
        size,
        methods,
        loc_threshold: a.loc_threshold,
        pointing_tolerance: a.pointing_tolerance,
        occlusion: (a.occlusion_patch > 0)
            .then_some((a.occlusion_patch, (a.occlusion_patch / 2).max(1))),
        curve_steps: (a.curve_steps > 0).then_some(a.curve_steps),
        forward_batch: a.forward_batch as usize,
        target: a.target,
        coherency: !a.no_coherency,
        road: (!a.no_road).then(|| RoadConfig {
            percentiles: a.road_percentiles.clone(),
            noise: a.road_noise,
        }),
    };
    if let Some(r) = &cfg.road {
        r.check()?;
    }
    // A report that cannot be written is found before the work, not after.
    if let Some(out) = &a.out {
        let dir = out.parent().filter(|d| !d.as_os_str().is_empty());
        if out.is_dir() || dir.is_some_and(|d| !d.is_dir()) {
            anyhow::bail!("--out {}: not a file in an existing folder", out.display());
        }
        crate::inputs::check_report_out("--out", out, &[a.manifest.as_path()])?;
    }
    // On the CPU the copies an image's measures run (occlusion, curves, ROAD, Score-CAM) go
    // through fewer at a time at large sizes, as explain's passes do, and an image one pass
    // of which would not fit in memory is refused (`--size native` on photographs).
    let graph = net.graph();
    let at = cfg
        .layer
        .clone()
        .unwrap_or_else(|| graph.default_layer.clone());
    let first = target_layers(&at)?
        .first()
        .map_or(at.clone(), |l| l.to_string());
    let host = net.backend().host_activations();
    let mut passes = PassSizes::forward_to(graph, &first, host, size, cfg.forward_batch)?;
    let bar = ProgressBar::new(entries.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  eta {eta}")
            .expect("valid template"),
    );
    let mut reports = Vec::new();
    // (image, why) of each image that could not be evaluated: in the report too, so a reader
    // of the JSON knows which images its aggregate leaves out.
    let mut failed = Vec::new();
    let mut partial = 0;
    // Boxes past the image's border, clipped to it: (boxes, images, the first image).
    let mut clipped = (0, 0, None);
    for e in entries {
        let hw = match size {
            InputSize::Square(s) => Some((s, s)),
            InputSize::Native => peek_dims(&e.image).map(|(w, h)| (h as usize, w as usize)),
        };
        let mut cfg = cfg.clone();
        if let Some(hw) = hw {
            if let Some(why) = passes.too_large(hw) {
                let path = e.image.display().to_string();
                bar.suspend(|| eprintln!("error: {path}: {why}"));
                failed.push(json!({"image": path, "error": why}));
                bar.inc(1);
                continue;
            }
            cfg.forward_batch = passes.pass_of(hw, cfg.forward_batch);
        }
        match evaluate_image(net, e, &cfg) {
            Ok(r) => {
                // A method that could not explain the image: said, and its row counts fewer
                // images; the image's other methods are scored.
                for f in &r.failed_methods {
                    let path = e.image.display();
                    bar.suspend(|| eprintln!("error: {path}: {}: {}", f.method, f.error));
                    partial += 1;
                }
                if r.clipped_boxes > 0 {
                    clipped.0 += r.clipped_boxes;
                    clipped.1 += 1;
                    clipped
                        .2
                        .get_or_insert_with(|| e.image.display().to_string());
                }
                reports.push(r)
            }
            Err(err) => {
                // Most errors name the image already.
                let (msg, path) = (err.to_string(), e.image.display().to_string());
                match msg.contains(&path) {
                    true => bar.suspend(|| eprintln!("error: {msg}")),
                    false => bar.suspend(|| eprintln!("error: {path}: {msg}")),
                }
                failed.push(json!({"image": path, "error": msg}));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let (boxes, images, Some(first)) = &clipped {
        eprintln!(
            "note: {boxes} box(es) of {images} image(s) reach past the image's border and were \
             clipped to it (the first in {first}; boxes are inclusive 0-based pixels, the last \
             column is the width - 1)"
        );
    }
    if let Some(note) = passes.cut_note("large images' copies", "--forward-batch") {
        eprintln!("note: {note}");
    }
    let agg = aggregate(&reports);
    print!("{}", table(&agg));
    if let Some(out) = &a.out {
        let report = json!({
            "manifest": a.manifest.display().to_string(),
            "model": net.graph().arch,
            "layer": layer.clone().unwrap_or_else(|| net.graph().default_layer.clone()),
            "target": a.target.name(),
            "loc_threshold": a.loc_threshold,
            "pointing_tolerance": a.pointing_tolerance,
            "occlusion": cfg.occlusion,
            "curve_steps": cfg.curve_steps,
            "road": cfg.road.as_ref().map(|r| json!({
                "percentiles": r.percentiles,
                "noise": r.noise,
            })),
            "aggregate": agg,
            "images": reports,
            "failed": failed,
        });
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if reports.is_empty() {
        anyhow::bail!("no image could be evaluated");
    }
    Ok(if !failed.is_empty() || partial > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A readable table; lower is better for errors, deletion, avg-drop and complexity, higher for
/// the rest (`road` is ROADCombined).
pub fn table(agg: &[Aggregate]) -> String {
    // (A value that rounds to zero reads 0.000, whatever its sign.)
    let opt = |v: Option<f32>| {
        v.map_or_else(
            || "-".to_string(),
            |v| format!("{v:.3}").replace("-0.000", "0.000"),
        )
    };
    // The first column as wide as its longest name (`gradcamelementwise`).
    let mw = agg.iter().map(|a| a.method.len()).fold(14, usize::max);
    let mut s = format!(
        "{:<mw$} {:>6} {:>10} {:>10} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}\n",
        "method",
        "images",
        "top1-loc-e",
        "gt-loc-err",
        "pointing",
        "mass-in",
        "faithful",
        "deletion",
        "insertion",
        "avg-drop",
        "incr",
        "complex",
        "coherent",
        "road"
    );
    for a in agg {
        s += &format!(
            "{:<mw$} {:>6} {:>10.3} {:>10.3} {:>9.3} {:>8.3} {:>8} {:>9} {:>9} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>7}\n",
            a.method,
            a.images,
            a.top1_loc_error,
            a.gt_known_loc_error,
            a.pointing_accuracy,
            a.mean_mass_inside,
            opt(a.mean_faithfulness),
            opt(a.mean_deletion_auc),
            opt(a.mean_insertion_auc),
            a.mean_confidence_drop,
            a.confidence_increase,
            a.mean_complexity,
            opt(a.mean_coherency),
            opt(a.mean_road_combined)
        );
    }
    s
}
