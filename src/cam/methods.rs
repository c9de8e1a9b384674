//! Grad-CAM (Selvaraju et al., arXiv 1610.02391, §3) and its relatives on one pipeline:
//! a forward pass, a backward-data pass down to the target layer only, then per-method
//! channel weights or element-wise weights. The target score is the pre-softmax logit y^c;
//! the counterfactual map (§3, "Counterfactual Explanations") negates the gradients.
//! Guided Backpropagation (a second, guided backward pass to the input, sharing the forward
//! pass) gives the paper's Guided Grad-CAM.

use super::aug_smooth::explain_aug_smooth;
use super::eigen::principal_projection;
use super::finer::{self, Finer};
use super::full_grad::explain_full_grad;
use super::kpca::{kpca_projection, Kpca};
use super::multi_layer::{fuse_layers, target_layers, LayerFusion};
use super::sess::{explain_sess, Sess};
use super::shapley::{explain_shapley_layers, shapley_seeds};
use super::target::Target;
use crate::backend::{Backend, ElementRule, WeightRule};
use crate::model::{Backward, LayerOutput, Network};
use crate::{Error, Result, Tensor};

/// Which class each image is explained for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassSel {
    /// Each image's own top-1 class (pytorch-grad-cam's default).
    Predicted,
    /// The same class for every image.
    All(usize),
    /// One class per image.
    PerImage(Vec<usize>),
}

/// A CAM method (pytorch-grad-cam's), under the names `gradcam --method` takes
/// ([`Method::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// α = mean ∂y/∂A; map = ReLU(Σ α A).
    GradCam,
    /// Chattopadhyay et al. 2018: higher-order weights.
    GradCamPlusPlus,
    /// Fu et al. 2020: axiom-based weights.
    XGradCam,
    /// Draelos & Carin 2020: element-wise g ⊙ A.
    HiResCam,
    /// Jiang et al. 2021: element-wise relu(g) ⊙ A.
    LayerCam,
    /// Srinivas & Fleuret 2019 (pytorch-grad-cam's FullGrad): |x ⊙ ∂y/∂x| and the bias
    /// gradients |b ⊙ ∂y/∂out| of every conv and BatchNorm, each normalised, at the input
    /// size; no target layer.
    FullGrad,
    /// pytorch-grad-cam's GradCAMElementWise: element-wise relu(g ⊙ A) (LayerCAM wherever
    /// A ≥ 0, as after a ReLU; they differ on layers with negative activations).
    GradCamElementWise,
    /// Wang et al. 2020: softmax of the class scores of the input masked by each channel.
    ScoreCam,
    /// Desai & Ramaswamy 2020: the relative drop of the class score when each channel of the
    /// layer is zeroed, w_k = (y^c - y^c_k) / y^c (pytorch-grad-cam's AblationCAM).
    AblationCam,
    /// Muhammad & Yeasin 2020: the activations' first principal component (no class, no
    /// gradients).
    EigenCam,
    /// Eigen-CAM of g ⊙ A (pytorch-grad-cam's EigenGradCAM).
    EigenGradCam,
    /// Karmani et al. 2024: the first principal component in a sigmoid kernel's feature
    /// space (pytorch-grad-cam's KPCA_CAM; no class, no gradients; see [`super::kpca`]).
    KpcaCam,
    /// Fuad et al. 2020, Feature Explanation Method (pytorch-grad-cam's FEM): each channel
    /// weighted by the fraction of its positions above its mean plus k standard deviations
    /// ([`CamRequest::fem_k`]; no class, no gradients).
    Fem,
    /// Cai et al. 2025 (pytorch-grad-cam's ShapleyCAM): Grad-CAM's weights from ∂f/∂A − ½ H A,
    /// with H the score's Hessian along A (see the `shapley` module); Grad-CAM itself for the
    /// logit target, where H = 0.
    ShapleyCam,
    /// Chung & Ying 2025 (pytorch-grad-cam's SegEigenCAM): Eigen-CAM of |g| ⊙ A, the sign
    /// chosen so the map's larger magnitude is positive.
    SegEigenCam,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 15] = [
        Method::GradCam,
        Method::GradCamPlusPlus,
        Method::XGradCam,
        Method::HiResCam,
        Method::LayerCam,
        Method::GradCamElementWise,
        Method::FullGrad,
        Method::ScoreCam,
        Method::AblationCam,
        Method::EigenCam,
        Method::EigenGradCam,
        Method::KpcaCam,
        Method::Fem,
        Method::ShapleyCam,
        Method::SegEigenCam,
    ];

    /// The name `--method` takes (`gradcam`, `gradcam++`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::GradCamPlusPlus => "gradcam++",
            Method::XGradCam => "xgradcam",
            Method::HiResCam => "hirescam",
            Method::LayerCam => "layercam",
            Method::GradCamElementWise => "gradcamelementwise",
            Method::FullGrad => "fullgrad",
            Method::ScoreCam => "scorecam",
            Method::AblationCam => "ablationcam",
            Method::EigenCam => "eigencam",
            Method::EigenGradCam => "eigengradcam",
            Method::KpcaCam => "kpcacam",
            Method::Fem => "fem",
            Method::ShapleyCam => "shapleycam",
            Method::SegEigenCam => "segeigencam",
        }
    }

    /// A method by its name, in any case, with or without `-` and `_` (`GradCAM++`,
    /// `grad_cam_pp`); an unknown name is an error listing the known ones.
    pub fn parse(s: &str) -> Result<Method> {
        let key = s.to_ascii_lowercase().replace(['-', '_'], "");
        let key = if key == "gradcampp" || key == "gradcamplusplus" {
            "gradcam++".to_string()
        } else {
            key
        };
        Method::ALL
            .into_iter()
            .find(|m| m.name() == key)
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                Error::Invalid(format!(
                    "unknown method `{s}`; choose one of {}",
                    names.join(", ")
                ))
            })
    }

    /// Whether the method's weights come from gradients (Ablation-CAM may still run a
    /// backward pass, where the head after the layer is affine).
    pub fn uses_gradients(self) -> bool {
        !matches!(
            self,
            Method::ScoreCam
                | Method::AblationCam
                | Method::EigenCam
                | Method::KpcaCam
                | Method::Fem
        )
    }

    /// The request options this method refuses: `--counterfactual` where negating the
    /// gradients changes nothing (no gradients, or only their magnitude), `--eigen-smooth`
    /// where the map is not a channel sum to project (KPCA-CAM, FEM). Shared by `explain`
    /// and the command line, which checks before reading any image.
    pub fn check_options(self, counterfactual: bool, eigen_smooth: bool) -> Result<()> {
        if counterfactual && !self.uses_gradients() {
            return Err(Error::Invalid(format!(
                "--counterfactual negates gradients; {} uses none",
                self.name()
            )));
        }
        // (FullGrad sums |gradient × bias| and |gradient × input|.)
        if counterfactual && matches!(self, Method::SegEigenCam | Method::FullGrad) {
            return Err(Error::Invalid(format!(
                "--counterfactual negates gradients; {} uses only their magnitude, so its map \
                 would not change",
                self.name()
            )));
        }
        let refuse = |why: &str| {
            Err(Error::Invalid(format!(
                "{why}; --eigen-smooth does not apply"
            )))
        };
        match (self, eigen_smooth) {
            (Method::KpcaCam, true) => {
                refuse("kpcacam is itself a principal component (in a kernel's feature space)")
            }
            (Method::Fem, true) => refuse("fem weighs channels by their high activations"),
            _ => Ok(()),
        }
    }

    /// Whether the map is a principal-component projection whatever `eigen_smooth` says.
    /// Whether the map depends on a class score at all (Eigen-CAM, KPCA-CAM and FEM do not).
    pub fn uses_class(self) -> bool {
        !matches!(self, Method::EigenCam | Method::KpcaCam | Method::Fem)
    }

    pub fn is_eigen(self) -> bool {
        matches!(
            self,
            Method::EigenCam | Method::EigenGradCam | Method::SegEigenCam
        )
    }
}

/// What to compute for a batch.
#[derive(Clone, Debug)]
pub struct CamRequest<'a> {
    /// The target layer's torchvision module path, or several separated by commas (their
    /// normalised maps are averaged; see [`super::multi_layer`]).
    pub layer: &'a str,
    /// The class explained for each image.
    pub classes: &'a ClassSel,
    /// The CAM method.
    pub method: Method,
    /// Explain the negated score: what speaks against the class.
    pub counterfactual: bool,
    /// Also run guided backpropagation to the input.
    pub guided: bool,
    /// Masked images per forward pass for Score-CAM.
    pub score_batch: usize,
    /// pytorch-grad-cam's `eigen_smooth`: the map is the first principal component of the
    /// method's weighted activations instead of their channel sum (see [`super::eigen`]).
    pub eigen_smooth: bool,
    /// pytorch-grad-cam's `aug_smooth`: the mean map over six mirrored and scaled copies of the
    /// input, at the input size (see [`super::aug_smooth`]).
    pub aug_smooth: bool,
    /// Finer-CAM: explain the class's margin over its nearest classes instead of its score
    /// (see [`super::finer`]); any gradient method.
    pub finer: Option<&'a Finer>,
    /// FEM's threshold: a position counts when above its channel's mean plus this many
    /// standard deviations (pytorch-grad-cam's `k`, 2 by default).
    pub fem_k: f32,
    /// The class score explained (pytorch-grad-cam's model targets): the logit, the
    /// probability or ReST. The gradient methods seed with its gradient, Score-CAM and
    /// Ablation-CAM compare its values.
    pub target: Target,
    /// How several layers' maps combine: their mean, or their product (RefineCAM).
    pub fusion: LayerFusion,
    /// KPCA-CAM's kernel and γ.
    pub kpca: Kpca,
    /// SESS over the method: its map fused from patches of rescaled copies (see
    /// [`super::sess`]).
    pub sess: Option<Sess>,
}

impl<'a> CamRequest<'a> {
    pub fn grad_cam(layer: &'a str, classes: &'a ClassSel) -> Self {
        CamRequest {
            layer,
            classes,
            method: Method::GradCam,
            counterfactual: false,
            guided: false,
            score_batch: 32,
            eigen_smooth: false,
            aug_smooth: false,
            finer: None,
            fem_k: FEM_K,
            target: Target::Logit,
            fusion: LayerFusion::Mean,
            kpca: Kpca::default(),
            sess: None,
        }
    }
}

/// pytorch-grad-cam's default `k` for FEM.
pub const FEM_K: f32 = 2.0;

/// The result for one batch, on the host.
pub struct CamBatch {
    /// [N, classes]
    pub logits: Tensor,
    /// The class explained for each image.
    pub classes: Vec<usize>,
    /// [N, K]: the method's channel weights (Grad-CAM's α, the paper's neuron importance;
    /// for the element-wise methods, α as well; for Eigen-CAM and Eigen-Grad-CAM, the first
    /// principal component's loadings on the centred channels).
    pub weights: Tensor,
    /// The map at the target layer's resolution, after ReLU, before normalisation: [N, h, w]
    /// (with `aug_smooth`, the mean of normalised maps at the input size; with several layers,
    /// their fusion there, see [`super::multi_layer`]). [`CamBatch::upsampled`] finishes one.
    pub maps: Tensor,
    /// Whether `maps` is one target layer's map, which pytorch-grad-cam min-max normalises at
    /// the layer's resolution (its `scale_cam_image` per layer) before the upsampling and
    /// again after it; else a map it normalises once, after (FullGrad's sum, a fusion of
    /// several layers, aug_smooth's mean, SESS). The first normalisation is not idle: its
    /// `+ 1e-7` scales a map by 1e-7 / its range (0.1 % at the 1e-4 random weights give).
    pub layer_map: bool,
    /// Guided-backprop gradient at the input, [N, C, H, W], when requested.
    pub guided: Option<Tensor>,
    /// With Finer-CAM, each image's compared classes (nearest first); else empty.
    pub compared: Vec<Vec<usize>>,
}

impl CamBatch {
    /// The maps as the upsampling takes them: a layer's map normalised at its resolution
    /// (see [`CamBatch::layer_map`]), any other as it is.
    pub fn maps_to_upsample(&self) -> std::borrow::Cow<'_, Tensor> {
        if !self.layer_map {
            return std::borrow::Cow::Borrowed(&self.maps);
        }
        let mut maps = self.maps.clone();
        let hw = (maps.shape()[1] * maps.shape()[2]).max(1);
        maps.data_mut()
            .chunks_mut(hw)
            .for_each(super::postprocess::normalise_minmax);
        std::borrow::Cow::Owned(maps)
    }

    /// Image `i`'s map finished as pytorch-grad-cam finishes it: upsampled to `hw`
    /// (bilinear) and min-max normalised, a layer's map normalised before as well. Panics
    /// for an `i` past the batch, as indexing does.
    pub fn upsampled(&self, i: usize, hw: (usize, usize)) -> Vec<f32> {
        let (h, w) = (self.maps.shape()[1], self.maps.shape()[2]);
        let mut map = self.maps.data()[i * h * w..(i + 1) * h * w].to_vec();
        if self.layer_map {
            super::postprocess::normalise_minmax(&mut map);
        }
        super::postprocess::upsample_normalised(&map, (h, w), hw)
    }
}

/// Grad-CAM for a batch: the common case of [`explain`].
pub fn grad_cam<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    layer: &str,
    classes: &ClassSel,
    counterfactual: bool,
) -> Result<CamBatch> {
    let req = CamRequest {
        counterfactual,
        ..CamRequest::grad_cam(layer, classes)
    };
    explain(net, x, &req)
}

pub fn explain<B: Backend>(net: &Network<B>, x: B::Tensor, req: &CamRequest) -> Result<CamBatch> {
    let be = net.backend();
    let &[n, _, _, _] = be.shape(&x) else {
        return Err(Error::Invalid(format!(
            "the input is {:?}, not a batch [N, 3, H, W]",
            be.shape(&x)
        )));
    };
    if n == 0 {
        return Err(Error::Invalid(
            "an empty batch: no images to explain".into(),
        ));
    }
    if let ClassSel::PerImage(c) = req.classes {
        if c.len() != n {
            return Err(Error::Invalid(format!(
                "{} classes given for {n} images",
                c.len()
            )));
        }
    }
    req.method
        .check_options(req.counterfactual, req.eigen_smooth)?;
    if let Some(f) = req.finer {
        f.check(net.num_classes())?;
        finer::check_combination(req.method, req.counterfactual, req.guided, req.aug_smooth)?;
    }
    if req.method == Method::Fem {
        check_fem_k(req.fem_k)?;
    }
    if req.method == Method::KpcaCam {
        req.kpca.check()?;
    }
    req.target
        .check_combination(req.method, req.finer.is_some())?;
    if let Some(sess) = &req.sess {
        return explain_sess(net, x, req, sess);
    }
    if req.aug_smooth {
        return explain_aug_smooth(net, x, req);
    }
    if req.method == Method::FullGrad {
        return explain_full_grad(net, x, req);
    }
    // Each layer has its own J·A under a curved score, so its own backward pass.
    if req.method == Method::ShapleyCam
        && req.target != Target::Logit
        && target_layers(req.layer)?.len() > 1
    {
        return explain_shapley_layers(net, x, req);
    }
    let layers = target_layers(req.layer)?;
    // Ablation-CAM needs no pass per channel for a layer the logits are affine in: one
    // backward pass gives every channel's drop.
    let affine: Vec<bool> = layers
        .iter()
        .map(|l| {
            Ok(req.method == Method::AblationCam
                && req.target == Target::Logit
                && net.graph().affine_after(l)?)
        })
        .collect::<Result<_>>()?;
    let gradients = req.method.uses_gradients() || affine.contains(&true);
    let what = match (gradients, req.guided) {
        (_, true) => Backward::ToLayerAndGuidedInput,
        (true, false) => Backward::ToLayer,
        (false, false) => Backward::None,
    };
    let input_hw = {
        let s = be.shape(&x);
        (s[2], s[3])
    };
    // Score-CAM masks the input again after the pass; Ablation-CAM runs on from a layer.
    let ablation_passes = req.method == Method::AblationCam && affine.contains(&false);
    let x_again = (req.method == Method::ScoreCam || ablation_passes)
        .then(|| be.duplicate(&x))
        .transpose()?;
    let num_classes = net.num_classes();
    let mut chosen = Vec::new();
    let mut compared = Vec::new();
    // ShapleyCAM's seed needs the logits' derivative along the layer (one layer here).
    let tangent = req.method == Method::ShapleyCam && req.target != Target::Logit;
    let out = net.run_inner(x, &layers, what, tangent, |logits, jvp| {
        chosen = choose_classes(logits, req.classes, num_classes)?;
        let s = match jvp {
            Some(jvp) => {
                compared = vec![Vec::new(); chosen.len()];
                shapley_seeds(req.target, logits, jvp, &chosen, req.counterfactual)
            }
            None => {
                let s;
                (s, compared) = seeds(req, logits, &chosen)?;
                s
            }
        };
        // Guided backpropagation explains the class logit whatever the score (as
        // pytorch-grad-cam's GuidedBackpropReLUModel): its own seed where they differ.
        let guided = (req.guided && req.target != Target::Logit)
            .then(|| seed(Target::Logit, logits, &chosen, req.counterfactual));
        Ok((s, guided))
    })?;
    if chosen.is_empty() {
        chosen = choose_classes(&out.logits, req.classes, num_classes)?;
        compared = vec![Vec::new(); chosen.len()];
    }
    let mut weights = None;
    let mut maps = Vec::with_capacity(layers.len());
    for (name, layer) in layers.iter().zip(out.layers) {
        let score = Scores {
            x: x_again.as_ref(),
            layer: name,
            logits: &out.logits,
            classes: &chosen,
            target: req.target,
        };
        let (w, m) = layer_map(net, req, layer, &score)?;
        // The channel weights reported are the first layer's.
        weights.get_or_insert(w);
        maps.push(m);
    }
    let layer_map = maps.len() == 1;
    let maps = match maps.len() {
        1 => maps.pop().expect("one"),
        _ => fuse_layers(&maps, input_hw, req.fusion),
    };
    Ok(CamBatch {
        logits: out.logits,
        classes: chosen,
        weights: weights.expect("one layer at least"),
        maps,
        layer_map,
        guided: out.input_grad.map(|g| be.download(&g)).transpose()?,
        compared,
    })
}

/// The backward pass's seeds [N, classes] for the explained classes `chosen`: one-hot (negated
/// for a counterfactual), or Finer-CAM's ∂f/∂y; and each image's compared classes (Finer-CAM;
/// else empty).
pub(crate) fn seeds(
    req: &CamRequest,
    logits: &Tensor,
    chosen: &[usize],
) -> Result<(Tensor, Vec<Vec<usize>>)> {
    match req.finer {
        Some(f) => f.seeds(logits, chosen),
        None => Ok((
            seed(req.target, logits, chosen, req.counterfactual),
            vec![Vec::new(); chosen.len()],
        )),
    }
}

/// What the methods that score changed inputs (Score-CAM, Ablation-CAM) need besides the
/// layer's values.
struct Scores<'a, T> {
    /// The input again.
    x: Option<&'a T>,
    /// The layer's name.
    layer: &'a str,
    /// The unchanged input's logits [N, classes], and the classes explained.
    logits: &'a Tensor,
    classes: &'a [usize],
    /// The score compared.
    target: Target,
}

/// One target layer's channel weights [N, K] and map [N, h, w] (after ReLU, not normalised),
/// on the host.
fn layer_map<B: Backend>(
    net: &Network<B>,
    req: &CamRequest,
    layer: LayerOutput<B::Tensor>,
    score: &Scores<B::Tensor>,
) -> Result<(Tensor, Tensor)> {
    let be = net.backend();
    let a = &layer.activation;
    let g = layer.grad.as_ref();
    let grad = || g.expect("requested");
    // What the channel sum (or, with eigen_smooth, the principal component) runs over.
    let (weights, combine) = match req.method {
        // ShapleyCAM's gradient already carries its Hessian term (see super::shapley).
        Method::GradCam | Method::ShapleyCam => (Some(be.grad_pool(grad())?), Combine::Channels),
        Method::GradCamPlusPlus | Method::XGradCam => {
            let rule = if req.method == Method::XGradCam {
                WeightRule::XGradCam
            } else {
                WeightRule::GradCamPlusPlus
            };
            (Some(be.cam_weights(rule, a, grad())?), Combine::Channels)
        }
        Method::HiResCam => (
            Some(be.grad_pool(grad())?),
            Combine::Elements(ElementRule::HiResCam),
        ),
        // Its weights are the component's loadings.
        Method::EigenGradCam => (None, Combine::Elements(ElementRule::HiResCam)),
        Method::LayerCam => (
            Some(be.grad_pool(grad())?),
            Combine::Elements(ElementRule::LayerCam),
        ),
        Method::GradCamElementWise => (
            Some(be.grad_pool(grad())?),
            Combine::Elements(ElementRule::GradCamElementWise),
        ),
        Method::ScoreCam => {
            let x = score.x.expect("kept for Score-CAM");
            let w = score_cam_weights(net, x, a, score, req.score_batch)?;
            (Some(be.upload(w)?), Combine::Channels)
        }
        Method::AblationCam => {
            let w = match g {
                Some(g) if net.graph().affine_after(score.layer)? => {
                    ablation_cam_weights_affine(net, score, a, g)?
                }
                _ => ablation_cam_weights(net, score, a, req.score_batch)?,
            };
            (Some(be.upload(w)?), Combine::Channels)
        }
        Method::EigenCam => (None, Combine::Activations),
        Method::SegEigenCam => (None, Combine::AbsGradActivations),
        Method::Fem => (Some(be.fem_weights(a, req.fem_k)?), Combine::Channels),
        Method::KpcaCam => {
            // No channel weights: the component lives in the pixels' kernel space.
            let maps = relu(kpca_projection(&be.download(a)?, &req.kpca)?);
            return Ok((Tensor::zeros([maps.shape()[0], 0]), maps));
        }
        Method::FullGrad => unreachable!("explain_full_grad handles FullGrad"),
    };
    if req.eigen_smooth || req.method.is_eigen() {
        let host_a = be.download(a)?;
        // The gradient comes back only where it multiplies the activations element-wise.
        let host_g = match combine {
            Combine::Elements(_) | Combine::AbsGradActivations => Some(be.download(grad())?),
            _ => None,
        };
        let host_w = weights.as_ref().map(|w| be.download(w)).transpose()?;
        let x = combine.on_host(host_a, host_g.as_ref(), host_w.as_ref());
        let (mut projection, mut loadings) = principal_projection(&x)?;
        if req.method == Method::SegEigenCam {
            larger_magnitude_positive(&mut projection, &mut loadings);
        }
        let maps = relu(projection);
        Ok(match host_w {
            Some(w) if !req.method.is_eigen() => (w, maps),
            _ => (loadings, maps),
        })
    } else {
        let weights = weights.expect("only the Eigen methods have no weights; they project");
        let maps = match combine {
            Combine::Channels => be.weighted_sum_relu(a, &weights)?,
            Combine::Elements(rule) => be.elementwise_cam_relu(rule, a, grad())?,
            Combine::Activations | Combine::AbsGradActivations => {
                unreachable!("Eigen-CAM and SegEigenCAM always project")
            }
        };
        Ok((be.download(&weights)?, be.download(&maps)?))
    }
}

/// FEM's threshold: a finite number of standard deviations. (pytorch-grad-cam's FEM replaces
/// the whole map computation, so it ignores `eigen_smooth`; gradcam refuses it, in
/// [`Method::check_options`].)
pub fn check_fem_k(k: f32) -> Result<()> {
    match k.is_finite() {
        true => Ok(()),
        false => Err(Error::Invalid(format!(
            "--fem-k must be a finite number of standard deviations, not {}",
            match k.is_nan() {
                true => "NaN".to_string(),
                // (A value past f32's range reads as infinite.)
                false => format!("{k} (or past ±3.4e38)"),
            }
        ))),
    }
}

/// How a method combines the layer's channels into a map.
#[derive(Clone, Copy)]
enum Combine {
    /// Σ_k w_k A_k.
    Channels,
    /// Σ_k rule(g)_k ⊙ A_k.
    Elements(ElementRule),
    /// The activations themselves (Eigen-CAM).
    Activations,
    /// |g| ⊙ A (SegEigenCAM).
    AbsGradActivations,
}

impl Combine {
    /// The [N, K, h, w] tensor whose channel sum is the map, on the host (for the principal
    /// component, which runs there).
    fn on_host(self, a: Tensor, g: Option<&Tensor>, w: Option<&Tensor>) -> Tensor {
        let (_, _, h, wd) = a.dims4();
        let hw = h * wd;
        let mut x = a;
        match self {
            Combine::Activations => {}
            Combine::AbsGradActivations => {
                let g = g.expect("SegEigenCAM has gradients");
                (x.data_mut().iter_mut().zip(g.data())).for_each(|(v, &gv)| *v *= gv.abs());
            }
            Combine::Channels => {
                let w = w.expect("channel methods have weights");
                for (ch, &wi) in x.data_mut().chunks_mut(hw.max(1)).zip(w.data()) {
                    ch.iter_mut().for_each(|v| *v *= wi);
                }
            }
            Combine::Elements(rule) => {
                let g = g.expect("element-wise methods have gradients");
                for (v, &gv) in x.data_mut().iter_mut().zip(g.data()) {
                    *v = rule.term(gv, *v);
                }
            }
        }
        x
    }
}

/// SegEigenCAM's sign (its paper's Eq. 13): each image's projection negated, with its
/// loadings, where its most negative value outweighs its largest.
fn larger_magnitude_positive(projection: &mut Tensor, loadings: &mut Tensor) {
    let (n, h, w) = (
        projection.shape()[0],
        projection.shape()[1],
        projection.shape()[2],
    );
    let k = loadings.shape()[1];
    for i in 0..n {
        let m = &mut projection.data_mut()[i * h * w..(i + 1) * h * w];
        let (lo, hi) = m
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        if lo.abs() > hi.abs() {
            m.iter_mut().for_each(|v| *v = -*v);
            let l = &mut loadings.data_mut()[i * k..(i + 1) * k];
            l.iter_mut().for_each(|v| *v = -*v);
        }
    }
}

fn relu(mut t: Tensor) -> Tensor {
    t.data_mut()
        .iter_mut()
        .for_each(|v| *v = crate::backend::relu(*v));
    t
}

pub(crate) fn choose_classes(
    logits: &Tensor,
    sel: &ClassSel,
    num_classes: usize,
) -> Result<Vec<usize>> {
    let n = logits.shape()[0];
    (0..n)
        .map(|i| {
            let c = match sel {
                ClassSel::Predicted => {
                    argmax(&logits.data()[i * num_classes..(i + 1) * num_classes])
                }
                ClassSel::All(c) => *c,
                ClassSel::PerImage(cs) => cs[i],
            };
            if c >= num_classes {
                return Err(Error::ClassOutOfRange {
                    class: c,
                    num_classes,
                });
            }
            Ok(c)
        })
        .collect()
}

/// ∂(Σ_i ±f(z_i, c_i))/∂logits for the target f: one-hot rows for the logit. Each image's
/// score depends only on its own logits, so one backward pass serves the whole batch.
fn seed(target: Target, logits: &Tensor, classes: &[usize], counterfactual: bool) -> Tensor {
    let nc = logits.shape()[1];
    let sign = if counterfactual { -1.0 } else { 1.0 };
    let mut s = Vec::with_capacity(classes.len() * nc);
    for (i, &c) in classes.iter().enumerate() {
        let z = &logits.data()[i * nc..(i + 1) * nc];
        s.extend(target.gradient(z, c).iter().map(|g| (sign * g) as f32));
    }
    Tensor::new([classes.len(), nc], s)
}

/// softmax over channels of y^c(x ⊙ mask_k), masked inputs run `per_pass` at a time.
fn score_cam_weights<B: Backend>(
    net: &Network<B>,
    x: &B::Tensor,
    a: &B::Tensor,
    score: &Scores<B::Tensor>,
    per_pass: usize,
) -> Result<Tensor> {
    let classes = score.classes;
    let be = net.backend();
    let (n, k) = (be.shape(a)[0], be.shape(a)[1]);
    let nc = net.num_classes();
    let chunk = (per_pass / n).max(1);
    let mut scores = vec![0f32; n * k];
    for k0 in (0..k).step_by(chunk) {
        let k1 = (k0 + chunk).min(k);
        let masked = be.score_cam_inputs(x, a, (k0, k1))?;
        let logits = net.forward(masked)?;
        for ni in 0..n {
            for j in 0..k1 - k0 {
                let row = (ni * (k1 - k0) + j) * nc;
                let z = &logits.data()[row..row + nc];
                scores[ni * k + k0 + j] = score.target.score(z, classes[ni]) as f32;
            }
        }
    }
    for row in scores.chunks_mut(k) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.iter_mut().for_each(|v| *v = (*v - m).exp());
        let z: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= z);
    }
    Ok(Tensor::new([n, k], scores))
}

/// Ablation-CAM's weights: w[i, k] = (s_i - s_ik) / s_i, with s_i image i's class score and
/// s_ik that score when channel k of the layer is zeroed, the network run on from the layer
/// (about `per_pass` images per pass: `per_pass / N` channels, N ablated copies each).
/// pytorch-grad-cam's AblationLayer zeroes a channel when the layer's activation has a zero
/// (after a ReLU, the usual targets) and otherwise sets it to min - 1e7 (growing with the
/// copy's place in its batch); gradcam always zeroes.
fn ablation_cam_weights<B: Backend>(
    net: &Network<B>,
    score: &Scores<B::Tensor>,
    a: &B::Tensor,
    per_pass: usize,
) -> Result<Tensor> {
    let be = net.backend();
    let x = score.x.expect("kept for Ablation-CAM");
    let (n, k) = (be.shape(a)[0], be.shape(a)[1]);
    let nc = net.num_classes();
    let base = ablation_base_scores(score)?;
    let chunk = (per_pass / n).max(1);
    let from = net.from_layer(x, score.layer)?;
    let mut w = vec![0f32; n * k];
    for k0 in (0..k).step_by(chunk) {
        let k1 = (k0 + chunk).min(k);
        let ablated = be.ablate_channels(a, (k0, k1))?;
        let logits = net.forward_from(&from, ablated, k1 - k0)?;
        for j in 0..k1 - k0 {
            for i in 0..n {
                let row = (j * n + i) * nc;
                let s = score
                    .target
                    .score(&logits.data()[row..row + nc], score.classes[i]);
                w[i * k + k0 + j] = ((base[i] as f64 - s) / base[i] as f64) as f32;
            }
        }
    }
    Ok(Tensor::new([n, k], w))
}

/// Ablation-CAM's weights for a layer the logits are affine in ([`Graph::affine_after`]):
/// zeroing channel k lowers s_i by exactly Σ_hw ∂s_i/∂A_k · A_k, so w[i, k] is that over s_i,
/// from the one backward pass instead of a pass per channel. The same weights as the passes
/// up to rounding: these are not differences of two nearly equal scores.
///
/// [`Graph::affine_after`]: crate::model::Graph::affine_after
fn ablation_cam_weights_affine<B: Backend>(
    net: &Network<B>,
    score: &Scores<B::Tensor>,
    a: &B::Tensor,
    g: &B::Tensor,
) -> Result<Tensor> {
    let be = net.backend();
    let base = ablation_base_scores(score)?;
    let mut w = be.download(&be.cam_weights(WeightRule::AffineDrop, a, g)?)?;
    let k = w.shape()[1];
    for (row, s) in w.data_mut().chunks_mut(k.max(1)).zip(&base) {
        row.iter_mut().for_each(|v| *v /= s);
    }
    Ok(w)
}

/// Each image's class score s_i, which Ablation-CAM divides by: an error where one is 0.
fn ablation_base_scores<T>(score: &Scores<T>) -> Result<Vec<f32>> {
    let nc = score.logits.shape()[1];
    let base: Vec<f32> = (score.classes.iter().enumerate())
        .map(|(i, &c)| {
            let z = &score.logits.data()[i * nc..(i + 1) * nc];
            score.target.score(z, c) as f32
        })
        .collect();
    if let Some(i) = base.iter().position(|&s| s == 0.0) {
        let whose = match base.len() {
            1 => "the".to_string(),
            _ => format!("image {i}'s (of the batch)"),
        };
        return Err(Error::Invalid(format!(
            "Ablation-CAM: {whose} class score is exactly 0, so the relative drops that weigh \
             its channels are undefined"
        )));
    }
    Ok(base)
}

/// Index of the largest value; the first one on ties (as `torch.argmax` on CPU).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SegEigenCAM's sign rule: negated where the most negative value outweighs the largest
    /// (strictly: a tie keeps the sign, as pytorch-grad-cam's `abs(min) > abs(max)`).
    #[test]
    fn larger_magnitude_is_made_positive() {
        let mut p = Tensor::new(
            [3, 1, 3],
            vec![-3.0, 1.0, 2.0, 3.0, -1.0, -2.0, -2.0, 2.0, 0.0],
        );
        let mut l = Tensor::new([3, 2], vec![0.5, -1.0, 0.5, -1.0, 0.5, -1.0]);
        larger_magnitude_positive(&mut p, &mut l);
        assert_eq!(
            p.data(),
            &[3.0, -1.0, -2.0, 3.0, -1.0, -2.0, -2.0, 2.0, 0.0]
        );
        assert_eq!(l.data(), &[-0.5, 1.0, 0.5, -1.0, 0.5, -1.0]);
    }
}
