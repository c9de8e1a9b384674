//! ShapleyCAM (Cai et al., arXiv 2501.06261), as pytorch-grad-cam 1.5.7's `ShapleyCAM`: the
//! channel weights are the spatial mean of ∂f/∂A − ½ H_A A, a second-order estimate of each
//! channel's Shapley value, where H_A A is the Hessian of the score f along the activation A
//! itself (pytorch-grad-cam takes it by double backpropagation).
//!
//! After a ReLU network's target layer the logits z are piecewise linear in A: z = J A + b
//! locally, with J fixed by the ReLU masks and max-pool choices of the forward pass, and those
//! layers add nothing to the Hessian. So H_A A = Jᵀ H_z (J A), with H_z the target's Hessian
//! in the logits ([`Target::hessian_times`]), and the weights' gradient is Jᵀ s with
//!
//!   s = ∇_z f − ½ H_z (J A):
//!
//! one forward-mode pass from the layer for J A ([`Network::run_with_tangent`]), then the same
//! single backward pass as Grad-CAM, seeded with s instead of ∇_z f. With the logit target
//! H_z = 0 and ShapleyCAM is Grad-CAM (as in pytorch-grad-cam, whose default target is the
//! logit); the softmax and ReST targets are what it was proposed with.

use super::methods::{explain, CamBatch, CamRequest};
use super::multi_layer::{fuse_layers, target_layers};
use super::target::Target;
use crate::backend::Backend;
use crate::model::Network;
use crate::{Result, Tensor};

/// The backward pass's seeds [N, classes]: per image, ±(∇f − ½ H (J A)) at its logits, for
/// its class (negated for a counterfactual, which explains −f).
pub(crate) fn shapley_seeds(
    target: Target,
    logits: &Tensor,
    jvp: &Tensor,
    classes: &[usize],
    counterfactual: bool,
) -> Tensor {
    let nc = logits.shape()[1];
    let sign = if counterfactual { -1.0 } else { 1.0 };
    let mut s = Vec::with_capacity(classes.len() * nc);
    for (i, &c) in classes.iter().enumerate() {
        let z = &logits.data()[i * nc..(i + 1) * nc];
        let u: Vec<f64> = jvp.data()[i * nc..(i + 1) * nc]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let g = target.gradient(z, c);
        let hu = target.hessian_times(z, c, &u);
        s.extend(
            g.iter()
                .zip(&hu)
                .map(|(g, h)| (sign * (g - 0.5 * h)) as f32),
        );
    }
    Tensor::new([classes.len(), nc], s)
}

/// ShapleyCAM over several target layers: each has its own J A, hence its own seed and
/// backward pass; the maps are combined as for the other methods (see
/// [`super::multi_layer`]) and the weights reported are the first layer's.
pub(crate) fn explain_shapley_layers<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    req: &CamRequest,
) -> Result<CamBatch> {
    let be = net.backend();
    let layers = target_layers(req.layer)?;
    let input_hw = {
        let s = be.shape(&x);
        (s[2], s[3])
    };
    let mut x = Some(x);
    let mut first: Option<CamBatch> = None;
    let mut maps = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let xi = match i + 1 == layers.len() {
            true => x.take().expect("kept for the last layer"),
            false => be.duplicate(x.as_ref().expect("kept"))?,
        };
        // The guided image is the same for every layer: the first pass makes it.
        let sub = CamRequest {
            layer,
            guided: req.guided && i == 0,
            ..req.clone()
        };
        let mut out = explain(net, xi, &sub)?;
        maps.push(std::mem::replace(&mut out.maps, Tensor::zeros([0])));
        first.get_or_insert(out);
    }
    let mut out = first.expect("one layer at least");
    out.maps = fuse_layers(&maps, input_hw, req.fusion);
    out.layer_map = false;
    Ok(out)
}
