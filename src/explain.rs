//! One batch of images through the whole pipeline: preprocess, Grad-CAM, post-processing.
//! What the CLI and `gradcam bench` run, and the entry point for programs linking the library.
//!
//! [`explain_batch`] takes a batch from start to finish. To keep a GPU busy over a whole data
//! set, split the work as the CLI does: [`explain_batch_device`] queues a batch's device work
//! and returns once its results are on their way back, and [`DeviceBatch::finish`], on another
//! thread, waits for them and builds the explanations while the first thread queues the next
//! batch:
//!
//! ```no_run
//! use gradcam::backend::gpu::{CudaLauncher, GpuBackend, Precision};
//! use gradcam::explain::{explain_batch_device, DeviceBatch, ExplainConfig, Timings};
//! use gradcam::image::{load_rgb8, RgbImage};
//! use gradcam::model::{self, Network};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let graph = model::load("resnet50.safetensors", None)?;
//!     let net = Network::new(graph, GpuBackend::with_precision(CudaLauncher::new(0)?, Precision::Tf32))?;
//!     let images = (std::env::args().skip(1))
//!         .map(|p| load_rgb8(p.as_ref()))
//!         .collect::<Result<Vec<RgbImage>, _>>()?;
//!     let refs: Vec<&RgbImage> = images.iter().collect();
//!     let cfg = ExplainConfig::default();
//!     let (tx, rx) = std::sync::mpsc::sync_channel::<(&[&RgbImage], DeviceBatch)>(1);
//!     std::thread::scope(|s| -> gradcam::Result<()> {
//!         let host = s.spawn(|| -> gradcam::Result<()> {
//!             for (batch, queued) in rx {
//!                 for e in queued.finish(batch, &cfg, &mut Timings::default())? {
//!                     println!("class {} (p = {:.3})", e.class, e.probability);
//!                 }
//!             }
//!             Ok(())
//!         });
//!         for batch in refs.chunks(64) {
//!             let queued = explain_batch_device(&net, batch, &cfg, &mut Timings::default())?;
//!             if tx.send((batch, queued)).is_err() {
//!                 break; // the host thread failed: its error comes from join
//!             }
//!         }
//!         drop(tx);
//!         host.join().expect("host thread panicked")
//!     })?;
//!     Ok(())
//! }
//! ```

use std::borrow::Cow;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::backend::{Backend, Overlays};
use crate::cam::postprocess::guided_images;
use crate::cam::{
    explain, overlay_with, CamBatch, CamRequest, ClassSel, Finer, Method, OverlayStyle,
};
use crate::image::{InputSize, RgbImage};
use crate::model::Network;
use crate::{Error, Result};

/// What [`explain_batch`] computes; `Default` is Grad-CAM of the predicted class at the model's
/// default layer, at 224×224, with the overlay drawn on the original image.
#[derive(Clone, Debug)]
pub struct ExplainConfig {
    /// Target layer (torchvision module path), or several separated by commas (the mean of
    /// their normalised maps); None = the model's default.
    pub layer: Option<String>,
    /// The class explained for each image.
    pub classes: ClassSel,
    /// The paper's counterfactual map: what speaks against the class (the negated score).
    pub counterfactual: bool,
    /// The CAM method.
    pub method: Method,
    /// Also produce guided backpropagation and Guided Grad-CAM images.
    pub guided: bool,
    /// Masked images per forward pass for Score-CAM.
    pub score_batch: usize,
    /// The first principal component of the weighted activations instead of their sum
    /// (pytorch-grad-cam's `eigen_smooth`; see [`crate::cam::eigen`]).
    pub eigen_smooth: bool,
    /// The mean map over six mirrored and scaled copies of each image (pytorch-grad-cam's
    /// `aug_smooth`; see [`crate::cam::aug_smooth`]): six times the work.
    pub aug_smooth: bool,
    /// Finer-CAM: explain the class's margin over its nearest classes (see
    /// [`crate::cam::finer`]).
    pub finer: Option<Finer>,
    /// FEM's threshold in standard deviations ([`CamRequest::fem_k`]).
    pub fem_k: f32,
    /// The class score explained ([`CamRequest::target`]).
    pub target: crate::cam::Target,
    /// How several layers' maps combine ([`CamRequest::fusion`]).
    pub fusion: crate::cam::multi_layer::LayerFusion,
    /// KPCA-CAM's kernel and γ ([`CamRequest::kpca`]).
    pub kpca: crate::cam::kpca::Kpca,
    /// SESS over the method ([`CamRequest::sess`]).
    pub sess: Option<crate::cam::sess::Sess>,
    /// The size the network sees: a square, or each image's own.
    pub size: InputSize,
    /// Where the overlay is drawn, if at all.
    pub overlay: OverlayAt,
    /// The overlay's colormap and image weight (JET and 0.5, pytorch-grad-cam's defaults).
    pub overlay_style: OverlayStyle,
}

/// Where [`Explanation::overlay`] is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverlayAt {
    /// On the original image at its own resolution, where the network runs (on a GPU, the
    /// overlays come back instead of the images' maps at their size).
    #[default]
    Image,
    /// On the image resized to the model-input size, on the host.
    Input,
    /// None: saves the overlay pass and its copy back, for runs that keep only the maps.
    Off,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            layer: None,
            classes: ClassSel::Predicted,
            counterfactual: false,
            method: Method::GradCam,
            guided: false,
            score_batch: 32,
            eigen_smooth: false,
            aug_smooth: false,
            finer: None,
            fem_k: crate::cam::FEM_K,
            target: crate::cam::Target::Logit,
            fusion: crate::cam::multi_layer::LayerFusion::Mean,
            kpca: crate::cam::kpca::Kpca::default(),
            sess: None,
            size: InputSize::Square(224),
            overlay: OverlayAt::Image,
            overlay_style: OverlayStyle::default(),
        }
    }
}

/// Everything we report for one image.
pub struct Explanation {
    /// The class explained (the predicted one unless the config named one).
    pub class: usize,
    /// That class's logit.
    pub logit: f32,
    /// That class's softmax probability.
    pub probability: f32,
    /// (class, logit), best first.
    pub top5: Vec<(usize, f32)>,
    /// The method's weight for every channel of the target layer (α for Grad-CAM).
    pub weights: Vec<f32>,
    /// Resolution of the target layer's map (h, w); the input size with `aug_smooth` or
    /// several layers, whose mean map is made there.
    pub map_hw: (usize, usize),
    /// The normalised map at the model-input size, row-major, values in [0, 1].
    pub cam: Vec<f32>,
    /// The model-input size (h, w) the image was resized to.
    pub input_hw: (usize, usize),
    /// The map blended with the image (`ExplainConfig::overlay_style`), as
    /// `ExplainConfig::overlay` says; None when off.
    pub overlay: Option<RgbImage>,
    /// Guided backpropagation and Guided Grad-CAM at the input size, when asked for.
    pub guided: Option<(RgbImage, RgbImage)>,
    /// With Finer-CAM, the classes compared with `class`, nearest first; else empty.
    pub compared: Vec<usize>,
}

/// Wall time per stage, summed over batches.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Resizing and normalising the images.
    pub preprocess: Duration,
    /// The network: forward pass, backward pass, the method's weights and maps.
    pub cam: Duration,
    /// Upsampling, normalising and drawing the overlays.
    pub postprocess: Duration,
}

impl Timings {
    /// Adds another batch's times.
    pub fn add(&mut self, o: &Timings) {
        self.preprocess += o.preprocess;
        self.cam += o.cam;
        self.postprocess += o.postprocess;
    }
}

/// Explains a batch of images that share one input size under `cfg.size`.
///
/// A batch that does not fit in device memory is split in halves until it does, and the
/// network remembers the largest batch that fitted so later batches start there.
pub fn explain_batch<B: Backend>(
    net: &Network<B>,
    images: &[&RgbImage],
    cfg: &ExplainConfig,
    timings: &mut Timings,
) -> Result<Vec<Explanation>> {
    explain_batch_device(net, images, cfg, timings)?.finish(images, cfg, timings)
}

/// The device half of [`explain_batch`]: preprocessing, the CAM and the overlays run and come
/// back to the host; [`DeviceBatch::finish`] then builds the explanations on the CPU. Callers
/// that stream batches finish one batch on another thread while the device runs the next (the
/// overlays may still be on their way back when this returns: `finish` waits for them).
pub fn explain_batch_device<B: Backend>(
    net: &Network<B>,
    images: &[&RgbImage],
    cfg: &ExplainConfig,
    timings: &mut Timings,
) -> Result<DeviceBatch> {
    // (Refused before the network runs, not after.)
    cfg.overlay_style.check()?;
    if let ClassSel::PerImage(c) = &cfg.classes {
        if c.len() != images.len() {
            return Err(Error::Invalid(format!(
                "{} classes given for {} images",
                c.len(),
                images.len()
            )));
        }
    }
    check_images(images, cfg.size)?;
    let mut parts = Vec::new();
    if !images.is_empty() {
        device_parts(net, images, cfg, timings, &mut parts)?;
    }
    Ok(DeviceBatch { parts })
}

/// Images with pixels, and a fixed input size the CLI would take (1 to
/// [`crate::model::MAX_INPUT_SIDE`], so a typo'd size is an error, not a failed allocation).
pub(crate) fn check_images(images: &[&RgbImage], size: InputSize) -> Result<()> {
    if let Some(i) = images
        .iter()
        .position(|im| im.width() == 0 || im.height() == 0)
    {
        let im = images[i];
        return Err(Error::Invalid(format!(
            "image {i} is empty ({}×{} pixels)",
            im.width(),
            im.height()
        )));
    }
    let max = crate::model::MAX_INPUT_SIDE;
    match size {
        InputSize::Square(s) if s == 0 || s > max => Err(Error::Invalid(format!(
            "an input size of {s}×{s}: sides from 1 to {max} are taken"
        ))),
        _ => Ok(()),
    }
}

/// `cfg` for the images `at..at + len` of its batch: per-image classes are cut with them.
fn sub_config(cfg: &ExplainConfig, at: usize, len: usize) -> Cow<'_, ExplainConfig> {
    match &cfg.classes {
        ClassSel::PerImage(c) => Cow::Owned(ExplainConfig {
            classes: ClassSel::PerImage(c[at..at + len].to_vec()),
            ..cfg.clone()
        }),
        _ => Cow::Borrowed(cfg),
    }
}

fn device_parts<B: Backend>(
    net: &Network<B>,
    images: &[&RgbImage],
    cfg: &ExplainConfig,
    timings: &mut Timings,
    parts: &mut Vec<Part>,
) -> Result<()> {
    let cap = net.batch_cap().max(1);
    if images.len() > cap {
        for (i, chunk) in images.chunks(cap).enumerate() {
            let sub = sub_config(cfg, i * cap, chunk.len());
            device_parts(net, chunk, &sub, timings, parts)?;
        }
        return Ok(());
    }
    match device_fitting(net, images, cfg, timings) {
        Err(Error::OutOfMemory(_)) if images.len() > 1 => {
            net.lower_batch_cap(images.len() / 2);
            device_parts(net, images, cfg, timings, parts)
        }
        r => {
            parts.push(r?);
            Ok(())
        }
    }
}

/// A batch's results downloaded from the device, not yet turned into [`Explanation`]s.
pub struct DeviceBatch {
    parts: Vec<Part>,
}

/// One device run (a whole batch, or a piece of one split to fit in memory).
struct Part {
    len: usize,
    hw: (usize, usize),
    batch: CamBatch,
    /// At each image's own size (`OverlayAt::Image`), possibly still being copied back.
    overlays: Option<Overlays>,
}

impl DeviceBatch {
    /// The explanations of `images` (the slice given to [`explain_batch_device`]), in order;
    /// the time goes to `timings.postprocess`. Fails only if the overlays' copy from the
    /// device failed.
    pub fn finish(
        self,
        images: &[&RgbImage],
        cfg: &ExplainConfig,
        timings: &mut Timings,
    ) -> Result<Vec<Explanation>> {
        let queued: usize = self.parts.iter().map(|p| p.len).sum();
        if images.len() != queued {
            return Err(Error::Invalid(format!(
                "finish got {} images for a batch of {queued} (give it the slice \
                 explain_batch_device got)",
                images.len()
            )));
        }
        let t0 = Instant::now();
        let mut out = Vec::with_capacity(images.len());
        let mut at = 0;
        let done = self.parts.into_iter().try_for_each(|p| {
            let len = p.len;
            out.extend(p.finish(&images[at..at + len], cfg)?);
            at += len;
            Ok(())
        });
        timings.postprocess += t0.elapsed();
        done.map(|()| out)
    }
}

fn device_fitting<B: Backend>(
    net: &Network<B>,
    images: &[&RgbImage],
    cfg: &ExplainConfig,
    timings: &mut Timings,
) -> Result<Part> {
    let Some(first) = images.first() else {
        return Err(Error::Invalid("an empty batch".into()));
    };
    let hw = cfg.size.for_image(first);
    if images.iter().any(|im| cfg.size.for_image(im) != hw) {
        return Err(Error::Invalid(
            "images of one batch must share their input size".into(),
        ));
    }
    let layer = cfg
        .layer
        .clone()
        .unwrap_or_else(|| net.graph().default_layer.clone());
    if cfg.method != Method::FullGrad {
        net.graph()
            .check_map_size(&crate::cam::multi_layer::target_layers(&layer)?, hw)?;
    }
    let be = net.backend();

    let t0 = Instant::now();
    // Bytes go up once; the resize and normalisation run where the network runs.
    let staged = be.upload_images(images)?;
    let x = be.preprocess(&staged, hw, &net.graph().normalization)?;
    let t1 = Instant::now();
    let req = CamRequest {
        layer: &layer,
        classes: &cfg.classes,
        method: cfg.method,
        counterfactual: cfg.counterfactual,
        guided: cfg.guided,
        score_batch: cfg.score_batch,
        eigen_smooth: cfg.eigen_smooth,
        aug_smooth: cfg.aug_smooth,
        finer: cfg.finer.as_ref(),
        fem_k: cfg.fem_k,
        target: cfg.target,
        fusion: cfg.fusion,
        kpca: cfg.kpca,
        sess: cfg.sess,
    };
    let batch = explain(net, x, &req)?;
    let bad = [
        ("logits", &batch.logits),
        ("maps", &batch.maps),
        ("channel weights", &batch.weights),
    ]
    .into_iter()
    .filter(|(_, t)| !all_finite(t))
    .map(|(name, _)| name)
    .collect::<Vec<_>>();
    if !bad.is_empty() {
        // (The CLI then retries the batch's images one by one, so only the culprit fails.)
        let one = images.len() == 1 && bad[0] == "logits";
        let x = || be.preprocess(&staged, hw, &net.graph().normalization);
        return Err(non_finite(net, &bad, one.then_some(x)));
    }
    let t2 = Instant::now();
    let overlays = if cfg.overlay == OverlayAt::Image {
        Some(be.overlays(&staged, &batch.maps_to_upsample(), &cfg.overlay_style)?)
    } else {
        None
    };
    timings.add(&Timings {
        preprocess: t1 - t0,
        cam: t2 - t1,
        postprocess: t2.elapsed(),
    });
    Ok(Part {
        len: images.len(),
        hw,
        batch,
        overlays,
    })
}

/// Whether a tensor holds no infinity and no NaN.
pub(crate) fn all_finite(t: &crate::Tensor) -> bool {
    t.data().iter().all(|v| v.is_finite())
}

/// The error for results of a network (`what`: the logits, maps, activations at a layer)
/// holding infinities or NaNs, rather than blank maps written as fine. Given the input of one
/// image (`x`), its forward pass runs again keeping every value, to say which layer first
/// went wrong ([`Network::first_non_finite`]); a diagnosis that fails itself (out of memory,
/// say) leaves the error without it.
pub(crate) fn non_finite<B: Backend>(
    net: &Network<B>,
    what: &[&str],
    x: Option<impl FnOnce() -> Result<B::Tensor>>,
) -> Error {
    let what = match what {
        [.., last] if what.len() > 1 => format!("{} and {last}", what[..what.len() - 1].join(", ")),
        _ => what.join(""),
    };
    let first = x
        .and_then(|x| net.first_non_finite(x().ok()?).ok().flatten())
        .map_or(String::new(), |at| format!(", first in {at}"));
    Error::NonFinite {
        what,
        backend: net.backend().name(),
        first,
    }
}

impl Part {
    fn finish(self, images: &[&RgbImage], cfg: &ExplainConfig) -> Result<Vec<Explanation>> {
        let Part {
            hw,
            batch,
            overlays,
            ..
        } = self;
        let (h, w) = (batch.maps.shape()[1], batch.maps.shape()[2]);
        let nc = batch.logits.shape()[1];
        let k = batch.weights.shape()[1];
        let overlays = overlays
            .map(Overlays::wait)
            .transpose()?
            .unwrap_or_default();
        let mut overlays = overlays.into_iter().map(Some).collect::<Vec<_>>();
        overlays.resize_with(images.len(), || None);
        let at = cfg.overlay;
        images
            .par_iter()
            .zip(overlays.into_par_iter())
            .enumerate()
            .map(|(i, (img, overlay_img))| {
                let logits = &batch.logits.data()[i * nc..(i + 1) * nc];
                let class = batch.classes[i];
                let cam = batch.upsampled(i, hw);
                let overlay_img = match at {
                    OverlayAt::Image => overlay_img,
                    OverlayAt::Input => Some(overlay_with(
                        &resize_rgb(img, hw),
                        &cam,
                        &cfg.overlay_style,
                    )?),
                    OverlayAt::Off => None,
                };
                let guided = (batch.guided.as_ref())
                    .map(|g| {
                        let per = 3 * hw.0 * hw.1;
                        guided_images(&g.data()[i * per..(i + 1) * per], &cam, hw)
                    })
                    .transpose()?;
                Ok(Explanation {
                    class,
                    logit: logits[class],
                    probability: softmax_at(logits, class),
                    top5: top_k(logits, 5),
                    weights: batch.weights.data()[i * k..(i + 1) * k].to_vec(),
                    map_hw: (h, w),
                    cam,
                    input_hw: hw,
                    guided,
                    overlay: overlay_img,
                    compared: batch.compared[i].clone(),
                })
            })
            .collect()
    }
}

fn resize_rgb(img: &RgbImage, (h, w): (usize, usize)) -> RgbImage {
    let src = img.as_raw();
    let dims = (img.height() as usize, img.width() as usize, 3);
    let r = crate::image::resize_with(|i| src[i] as f32, dims, (h, w));
    let px = r
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, px).expect("sized above")
}

/// softmax(logits)\[c\], computed stably. Panics if `c` is not an index of the logits, as
/// indexing does.
pub fn softmax_at(logits: &[f32], c: usize) -> f32 {
    let (m, z) = softmax_shift(logits);
    (((logits[c] - m) as f64).exp() / z) as f32
}

/// The whole softmax, each entry as [`softmax_at`] computes it (the same bits).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let (m, z) = softmax_shift(logits);
    logits
        .iter()
        .map(|&v| (((v - m) as f64).exp() / z) as f32)
        .collect()
}

/// The largest logit and Σ exp(logit − largest).
fn softmax_shift(logits: &[f32]) -> (f32, f64) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (m, logits.iter().map(|&v| ((v - m) as f64).exp()).sum())
}

/// The k largest (index, value) pairs, largest first; lower index first on ties.
pub fn top_k(v: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, v[i])).collect()
}
