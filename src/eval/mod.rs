//! The paper's evaluations over a manifest of labelled images (`gradcam eval`):
//! weakly-supervised localisation (§4.1), the pointing game and the map's mass on the object,
//! faithfulness to an occlusion map (§4.3), and deletion / insertion curves; every method is
//! compared with a centre-prior baseline map on the same images.

pub mod manifest;
pub mod metrics;
pub mod road;

use serde::Serialize;

use crate::backend::Backend;
use crate::cam::{argmax, explain, CamRequest, ClassSel, Method};
use crate::explain::softmax_at;
use crate::image::{load_rgb8, preprocess_with, InputSize};
use crate::model::Network;
use crate::{Error, Result, Tensor};
pub use manifest::Entry;
use metrics::{
    auc, centre_prior, coherency, complexity, iou, mass_inside, object_mask, pointing_hit,
    spearman, threshold_box, BoxPx,
};

#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub layer: Option<String>,
    pub size: InputSize,
    pub methods: Vec<Method>,
    /// §4.1: the map is thresholded at this fraction of its max (0.15 in the paper).
    pub loc_threshold: f32,
    /// Pointing game tolerance in pixels (15 in Zhang et al.).
    pub pointing_tolerance: usize,
    /// Occlusion patch and stride at the model-input size; None skips faithfulness (as does a
    /// patch that leaves an image one occlusion cell).
    pub occlusion: Option<(usize, usize)>,
    /// Steps of the deletion / insertion curves; None skips them.
    pub curve_steps: Option<usize>,
    /// Images per forward pass for occlusion and curves (and Score-CAM).
    pub forward_batch: usize,
    /// The class score the methods explain (the measures still follow the class's logit
    /// and probability, but for Coherency, which runs the method again).
    pub target: crate::cam::Target,
    /// Also Coherency: one more explanation per method and image.
    pub coherency: bool,
    /// ROAD's settings; None skips it.
    pub road: Option<road::RoadConfig>,
}

/// [`EvalConfig`]'s defaults, which `gradcam eval` also uses.
pub const LOC_THRESHOLD: f32 = 0.15;
pub const POINTING_TOLERANCE: usize = 15;
/// The occlusion patch at the model-input size (the stride is half of it).
pub const OCCLUSION_PATCH: usize = 32;
pub const CURVE_STEPS: usize = 16;
pub const FORWARD_BATCH: usize = 32;

impl Default for EvalConfig {
    /// Every method on the class's logit at 224×224, with every measure, as `gradcam eval`
    /// runs without options on a model file that names no input size.
    fn default() -> Self {
        EvalConfig {
            layer: None,
            size: InputSize::Square(224),
            methods: Method::ALL.to_vec(),
            loc_threshold: LOC_THRESHOLD,
            pointing_tolerance: POINTING_TOLERANCE,
            occlusion: Some((OCCLUSION_PATCH, OCCLUSION_PATCH / 2)),
            curve_steps: Some(CURVE_STEPS),
            forward_batch: FORWARD_BATCH,
            target: crate::cam::Target::Logit,
            coherency: true,
            road: Some(road::RoadConfig::default()),
        }
    }
}

/// The scores of one map of one image.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    pub method: String,
    pub iou: f32,
    /// IoU ≥ 0.5 with a ground-truth box (GT-known localisation).
    pub localised: bool,
    /// localised and the top-1 prediction is the ground-truth class.
    pub top1_localised: bool,
    pub pointing_hit: bool,
    pub mass_inside: f32,
    pub faithfulness: Option<f32>,
    pub deletion_auc: Option<f32>,
    pub insertion_auc: Option<f32>,
    /// The class's softmax probability on the normalised input times the map, p', against p
    /// on the input (pytorch-grad-cam's perturbation, the Grad-CAM++ paper's relative
    /// measure): the drop max(0, p − p') / p (0 where p is 0) ...
    pub confidence_drop: f32,
    /// ... and whether p' > p.
    pub confidence_increase: bool,
    /// The map's mean value (pytorch-grad-cam's Complexity; lower is sparser).
    pub complexity: f32,
    /// (ρ + 1) / 2 between the map and the method's map of the input times the map
    /// (pytorch-grad-cam's Coherency; the centre prior's is 1, as any map that ignores the
    /// input); None when skipped or when that second explanation failed.
    pub coherency: Option<f32>,
    /// ROAD (pytorch-grad-cam's ROADMostRelevantFirstAverage, ROADLeastRelevantFirstAverage
    /// and ROADCombined over the class probability): the mean change in the probability when
    /// the most (MoRF; lower is better) or least (LeRF; higher is better) relevant pixels
    /// are removed and imputed, and (LeRF − MoRF) / 2; None when skipped or when the map
    /// cannot be scored (values that are not finite).
    pub road_morf: Option<f32>,
    pub road_lerf: Option<f32>,
    pub road_combined: Option<f32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    pub image: String,
    pub class: usize,
    pub predicted: usize,
    pub scores: Vec<Scores>,
    /// The methods that could not explain this image, each with why (the others are scored
    /// all the same; the aggregate counts each method's own images).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_methods: Vec<MethodFailure>,
    /// How many of the image's boxes reached past its border and were clipped to it.
    #[serde(skip_serializing_if = "is_zero")]
    pub clipped_boxes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize)]
pub struct MethodFailure {
    pub method: String,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    pub method: String,
    pub images: usize,
    pub top1_loc_error: f32,
    pub gt_known_loc_error: f32,
    pub pointing_accuracy: f32,
    pub mean_mass_inside: f32,
    pub mean_faithfulness: Option<f32>,
    pub mean_deletion_auc: Option<f32>,
    pub mean_insertion_auc: Option<f32>,
    /// Mean relative drop in the class's probability on the input times the map (Average
    /// Drop, as a fraction), and the share of images where it rose (Increase in Confidence).
    pub mean_confidence_drop: f32,
    pub confidence_increase: f32,
    pub mean_complexity: f32,
    pub mean_coherency: Option<f32>,
    pub mean_road_morf: Option<f32>,
    pub mean_road_lerf: Option<f32>,
    pub mean_road_combined: Option<f32>,
}

/// The centre-prior baseline's name in reports.
pub const CENTRE: &str = "centre-prior";

/// Evaluates one image; the caller loops (and reports failures per image).
pub fn evaluate_image<B: Backend>(
    net: &Network<B>,
    e: &Entry,
    cfg: &EvalConfig,
) -> Result<ImageReport> {
    let be = net.backend();
    if cfg.methods.is_empty() {
        return Err(Error::Invalid("no methods to evaluate".into()));
    }
    let img = load_rgb8(&e.image)?;
    crate::explain::check_images(&[&img], cfg.size)?;
    let full = (img.height() as usize, img.width() as usize);
    if e.class >= net.num_classes() {
        return Err(Error::ClassOutOfRange {
            class: e.class,
            num_classes: net.num_classes(),
        });
    }
    // A box that misses the image entirely is a manifest error (wrong image, or the boxes of
    // another size), not an object nowhere; one that overhangs the border (1-based
    // coordinates, or an annotation dragged past the edge) is clipped to it for every score,
    // as no map can point outside the image, and counted for the report.
    let (h, w) = (full.0 as f32, full.1 as f32);
    let off = |b: &[f32; 4]| {
        b.iter().any(|v| !v.is_finite())
            || b[0].floor() >= w
            || b[1].floor() >= h
            || b[2] < 0.0
            || b[3] < 0.0
    };
    if let Some(b) = e.boxes.iter().find(|b| off(b)) {
        return Err(Error::Invalid(format!(
            "{}: box {b:?} lies outside the {}×{} image",
            e.image.display(),
            full.1,
            full.0
        )));
    }
    let boxes: Vec<BoxPx> = e.boxes.iter().map(|b| clip_box(b, full)).collect();
    let clipped_boxes = boxes.iter().zip(&e.boxes).filter(|(a, b)| a != b).count();
    let mask = e.mask.as_ref().map(|m| load_mask(m, full)).transpose()?;
    let object = object_mask(&boxes, mask.as_deref(), full)?;
    let hw = cfg.size.for_image(&img);
    let x = preprocess_with(&[&img], hw, &net.graph().normalization);
    let layer = cfg
        .layer
        .clone()
        .unwrap_or_else(|| net.graph().default_layer.clone());

    let logits = net.forward(be.upload(x.clone())?)?;
    if !crate::explain::all_finite(&logits) {
        let x = || be.upload(x.clone());
        return Err(crate::explain::non_finite(net, &["logits"], Some(x)));
    }
    let predicted = argmax(logits.data());
    let occlusion = match cfg.occlusion {
        // (A patch covering the whole input, as `--size native` may give a small image, is
        // one occlusion cell: no ranking to compare with, so no faithfulness for the image.)
        Some((patch, stride)) => Some(occlusion_map(
            net,
            &x,
            e.class,
            patch,
            stride,
            cfg.forward_batch,
        )?)
        .filter(|(grid, _)| grid.len() > 1),
        None => None,
    };

    let classes = ClassSel::PerImage(vec![e.class]);
    let mut maps: Vec<MethodMap> = Vec::new();
    let mut failed_methods = Vec::new();
    for &m in &cfg.methods {
        let req = CamRequest {
            layer: &layer,
            classes: &classes,
            method: m,
            counterfactual: false,
            guided: false,
            score_batch: cfg.forward_batch,
            eigen_smooth: false,
            aug_smooth: false,
            finer: None,
            fem_k: crate::cam::FEM_K,
            target: cfg.target,
            fusion: crate::cam::multi_layer::LayerFusion::Mean,
            kpca: crate::cam::kpca::Kpca::default(),
            sess: None,
        };
        // A method that cannot explain this image (Ablation-CAM where the class score is 0)
        // costs only its own scores.
        let out = match explain(net, be.upload(x.clone())?, &req) {
            Ok(out) => out,
            Err(err) => {
                failed_methods.push(MethodFailure {
                    method: m.name().to_string(),
                    error: err.to_string(),
                });
                continue;
            }
        };
        let at_input = out.upsampled(0, hw);
        // The method again on the input times its map; its failure costs only this measure.
        let coh = match cfg.coherency {
            true => be
                .upload(times_map(&x, &at_input))
                .and_then(|xm| explain(net, xm, &req))
                .ok()
                .map(|again| coherency(&at_input, &again.upsampled(0, hw))),
            false => None,
        };
        maps.push((m.name().to_string(), out.upsampled(0, full), at_input, coh));
    }
    if maps.is_empty() {
        // No method explained it: the image fails, with the (first) reason.
        let first = failed_methods.swap_remove(0);
        return Err(Error::Invalid(format!("{}: {}", first.method, first.error)));
    }
    maps.push((
        CENTRE.to_string(),
        centre_prior(full),
        centre_prior(hw),
        cfg.coherency.then_some(1.0),
    ));
    // The class's probability on the input, and on the input times each map, the maps
    // `forward_batch` at a time.
    let p = softmax_at(logits.data(), e.class);
    let (_, c, ih, iw) = x.dims4();
    let mut p_masked = Vec::with_capacity(maps.len());
    for chunk in maps.chunks(cfg.forward_batch.max(1)) {
        let data: Vec<f32> = (chunk.iter())
            .flat_map(|(_, _, at_input, _)| times_map(&x, at_input).data().to_vec())
            .collect();
        let m = chunk.len();
        let l = net.forward(be.upload(Tensor::new([m, c, ih, iw], data))?)?;
        let nc = net.num_classes();
        p_masked.extend((0..m).map(|i| softmax_at(&l.data()[i * nc..(i + 1) * nc], e.class)));
    }

    let mut scores = Vec::new();
    for ((name, at_full, at_input, coh), &pm) in maps.iter().zip(&p_masked) {
        let iou_best = threshold_box(at_full, full, cfg.loc_threshold)?.map_or(0.0, |b| {
            boxes.iter().map(|g| iou(&b, g)).fold(0.0, f32::max)
        });
        let faithfulness = occlusion.as_ref().map(|(grid, cells)| {
            let pooled: Vec<f32> = cells
                .iter()
                .map(|&(y0, x0, p)| patch_mean(at_input, hw, y0, x0, p))
                .collect();
            spearman(&pooled, grid)
        });
        let (deletion_auc, insertion_auc) = match cfg.curve_steps {
            Some(steps) => {
                let (d, i) = curves(net, &x, at_input, e.class, steps, cfg.forward_batch)?;
                (Some(auc(&d)), Some(auc(&i)))
            }
            None => (None, None),
        };
        // A map that is not finite gets no ROAD scores (None); other failures are the image's.
        let road = match &cfg.road {
            Some(rc) => road::road_scores(net, &x, at_input, e.class, p, rc, cfg.forward_batch)?,
            None => None,
        };
        scores.push(Scores {
            method: name.clone(),
            iou: iou_best,
            localised: iou_best >= 0.5,
            top1_localised: iou_best >= 0.5 && predicted == e.class,
            pointing_hit: pointing_hit(at_full, &object, full, cfg.pointing_tolerance)?,
            mass_inside: mass_inside(at_full, &object),
            faithfulness,
            deletion_auc,
            insertion_auc,
            confidence_drop: if p > 0.0 { (p - pm).max(0.0) / p } else { 0.0 },
            confidence_increase: pm > p,
            complexity: complexity(at_input),
            coherency: *coh,
            road_morf: road.map(|r| r.morf),
            road_lerf: road.map(|r| r.lerf),
            road_combined: road.map(|r| r.combined()),
        });
    }
    Ok(ImageReport {
        image: crate::path_text::text(&e.image),
        class: e.class,
        predicted,
        scores,
        failed_methods,
        clipped_boxes,
    })
}

/// An inclusive pixel box cut to an h×w image: corners below 0 to 0, past the last pixel to it.
fn clip_box(b: &BoxPx, (h, w): (usize, usize)) -> BoxPx {
    let (w, h) = (w as f32, h as f32);
    [
        b[0].max(0.0),
        b[1].max(0.0),
        if b[2] >= w { w - 1.0 } else { b[2] },
        if b[3] >= h { h - 1.0 } else { b[3] },
    ]
}

/// Per-method means over the images that method explained, the methods in the order of the
/// reports that have the most (every method, unless each image lost one), the centre prior
/// last.
pub fn aggregate(reports: &[ImageReport]) -> Vec<Aggregate> {
    let mut fullest: Vec<&ImageReport> = reports.iter().collect();
    fullest.sort_by_key(|r| std::cmp::Reverse(r.scores.len()));
    let mut methods: Vec<&str> = Vec::new();
    for s in fullest.iter().flat_map(|r| &r.scores) {
        if !methods.contains(&s.method.as_str()) {
            methods.push(&s.method);
        }
    }
    methods.sort_by_key(|&m| m == CENTRE);
    methods
        .into_iter()
        .map(|method| {
            let all: Vec<&Scores> = (reports.iter().flat_map(|r| &r.scores))
                .filter(|s| s.method == method)
                .collect();
            let s = all[0];
            let n = all.len() as f32;
            let frac = |f: &dyn Fn(&Scores) -> bool| all.iter().filter(|s| f(s)).count() as f32 / n;
            let mean_opt = |f: &dyn Fn(&Scores) -> Option<f32>| {
                let v: Vec<f32> = all.iter().filter_map(|s| f(s)).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
            };
            Aggregate {
                method: s.method.clone(),
                images: all.len(),
                top1_loc_error: 1.0 - frac(&|s| s.top1_localised),
                gt_known_loc_error: 1.0 - frac(&|s| s.localised),
                pointing_accuracy: frac(&|s| s.pointing_hit),
                mean_mass_inside: all.iter().map(|s| s.mass_inside).sum::<f32>() / n,
                mean_faithfulness: mean_opt(&|s| s.faithfulness),
                mean_deletion_auc: mean_opt(&|s| s.deletion_auc),
                mean_insertion_auc: mean_opt(&|s| s.insertion_auc),
                mean_confidence_drop: all.iter().map(|s| s.confidence_drop).sum::<f32>() / n,
                confidence_increase: frac(&|s| s.confidence_increase),
                mean_complexity: all.iter().map(|s| s.complexity).sum::<f32>() / n,
                mean_coherency: mean_opt(&|s| s.coherency),
                mean_road_morf: mean_opt(&|s| s.road_morf),
                mean_road_lerf: mean_opt(&|s| s.road_lerf),
                mean_road_combined: mean_opt(&|s| s.road_combined),
            }
        })
        .collect()
}

/// One method's map of an image: (name, at the image's size, at the input size, its
/// coherency when measured).
type MethodMap = (String, Vec<f32>, Vec<f32>, Option<f32>);

/// The normalised input [1, C, H, W] times a map at its size, every channel alike
/// (pytorch-grad-cam's `input_tensor * cam`).
fn times_map(x: &Tensor, map: &[f32]) -> Tensor {
    let (n, c, h, w) = x.dims4();
    let mut v = x.data().to_vec();
    for plane in v.chunks_mut(h * w) {
        plane.iter_mut().zip(map).for_each(|(a, m)| *a *= m);
    }
    Tensor::new([n, c, h, w], v)
}

fn load_mask(path: &std::path::Path, (h, w): (usize, usize)) -> Result<Vec<bool>> {
    let m = load_rgb8(path)?;
    if (m.height() as usize, m.width() as usize) != (h, w) {
        return Err(Error::Invalid(format!(
            "{}: mask is {}x{}, the image {w}x{h}",
            path.display(),
            m.width(),
            m.height()
        )));
    }
    Ok(m.pixels().map(|p| p.0.iter().any(|&v| v > 0)).collect())
}

fn patch_mean(map: &[f32], (_, w): (usize, usize), y0: usize, x0: usize, p: usize) -> f32 {
    let mut s = 0f32;
    for y in y0..y0 + p {
        s += map[y * w + x0..y * w + x0 + p].iter().sum::<f32>();
    }
    s / (p * p) as f32
}

/// Patch positions covering [0, n): every `stride`, plus the last one flush with the edge.
fn positions(n: usize, p: usize, stride: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=n - p).step_by(stride).collect();
    if *v.last().unwrap_or(&0) != n - p {
        v.push(n - p);
    }
    v
}

/// Occlusion sensitivity (Zeiler & Fergus): the drop in the class logit when a patch of the
/// input is set to the data mean (0 after normalisation). Returns the drops and the cells.
#[allow(clippy::type_complexity)]
fn occlusion_map<B: Backend>(
    net: &Network<B>,
    x: &Tensor,
    class: usize,
    patch: usize,
    stride: usize,
    batch: usize,
) -> Result<(Vec<f32>, Vec<(usize, usize, usize)>)> {
    let (_, c, h, w) = x.dims4();
    let p = patch.min(h).min(w).max(1);
    let cells: Vec<(usize, usize, usize)> = positions(h, p, stride.max(1))
        .into_iter()
        .flat_map(|y| {
            positions(w, p, stride.max(1))
                .into_iter()
                .map(move |xx| (y, xx, p))
        })
        .collect();
    let base = net.forward(net.backend().upload(x.clone())?)?.data()[class];
    let mut drops = Vec::with_capacity(cells.len());
    for chunk in cells.chunks(batch.max(1)) {
        let mut data = Vec::with_capacity(chunk.len() * x.len());
        for &(y0, x0, p) in chunk {
            let mut v = x.data().to_vec();
            for ch in 0..c {
                for y in y0..y0 + p {
                    v[(ch * h + y) * w + x0..(ch * h + y) * w + x0 + p].fill(0.0);
                }
            }
            data.extend(v);
        }
        let t = Tensor::new([chunk.len(), c, h, w], data);
        let logits = net.forward(net.backend().upload(t)?)?;
        let nc = net.num_classes();
        drops.extend((0..chunk.len()).map(|i| base - logits.data()[i * nc + class]));
    }
    Ok((drops, cells))
}

/// Deletion and insertion curves (Petsiuk et al., RISE): the class probability as the most
/// important pixels (by the map) are removed from the image / added to a blank (data-mean)
/// image, in `steps` equal steps.
fn curves<B: Backend>(
    net: &Network<B>,
    x: &Tensor,
    map: &[f32],
    class: usize,
    steps: usize,
    batch: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (_, c, h, w) = x.dims4();
    let hw = h * w;
    let mut order: Vec<usize> = (0..hw).collect();
    order.sort_by(|&a, &b| map[b].total_cmp(&map[a]).then(a.cmp(&b)));
    // More steps than pixels would repeat steps (a native-size image smaller than asked for).
    let steps = steps.clamp(1, hw.max(1));
    let run =
        |insert: bool| -> Result<Vec<f32>> {
            let mut probs = Vec::with_capacity(steps + 1);
            let variants: Vec<usize> = (0..=steps).collect();
            for chunk in variants.chunks(batch.max(1)) {
                let mut data = Vec::with_capacity(chunk.len() * x.len());
                for &s in chunk {
                    let k = s * hw / steps;
                    let mut keep = vec![!insert; hw];
                    for &p in &order[..k] {
                        keep[p] = insert;
                    }
                    for ch in 0..c {
                        let plane = &x.data()[ch * hw..(ch + 1) * hw];
                        data.extend(
                            plane
                                .iter()
                                .zip(&keep)
                                .map(|(&v, &k)| if k { v } else { 0.0 }),
                        );
                    }
                }
                let t = Tensor::new([chunk.len(), c, h, w], data);
                let logits = net.forward(net.backend().upload(t)?)?;
                let nc = net.num_classes();
                probs.extend((0..chunk.len()).map(|i| {
                    crate::explain::softmax_at(&logits.data()[i * nc..(i + 1) * nc], class)
                }));
            }
            Ok(probs)
        };
    Ok((run(false)?, run(true)?))
}
