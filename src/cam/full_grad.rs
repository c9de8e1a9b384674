//! FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam's `FullGrad`: the map sums, at the
//! input size, |x ⊙ ∂y/∂x| per input channel and, for every module with a bias (each conv
//! with a bias, each BatchNorm), |b ⊙ ∂y/∂out| per channel, every one of these maps min-max
//! normalised on its own and resized to the input size. It ignores the target layer.
//!
//! One forward pass and one backward-data pass down to the input; each bias term is added
//! ([`Backend::full_grad_add`], on the device) as soon as its node's gradient is whole, and the
//! gradient dropped. Only the finished maps come back from a GPU.

use super::methods::{choose_classes, seeds, CamBatch, CamRequest};
use crate::backend::{Backend, FullGradBy};
use crate::model::Network;
use crate::{Error, Result, Tensor};

/// [`super::explain`] for `Method::FullGrad`: `maps` is [N, H, W] at the input size, `weights`
/// [N, 0] (no channel weights).
pub(crate) fn explain_full_grad<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    req: &CamRequest,
) -> Result<CamBatch> {
    for (on, option) in [
        (req.eigen_smooth, "--eigen-smooth"),
        (req.guided, "--guided"),
    ] {
        if on {
            return Err(Error::Invalid(format!(
                "fullgrad does not support {option} (it has no single layer to project or to \
                 combine with the guided gradient)"
            )));
        }
    }
    let be = net.backend();
    let (n, _, h, w) = match be.shape(&x) {
        &[n, c, h, w] => (n, c, h, w),
        s => {
            return Err(Error::Invalid(format!(
                "fullgrad: the input is {s:?}, not NCHW"
            )))
        }
    };
    // The input term needs x after the pass, which consumes it.
    let x_kept = be.duplicate(&x)?;
    let graph = net.graph();
    let terms: Vec<Vec<Vec<f32>>> = (0..graph.nodes.len())
        .map(|i| graph.full_grad_biases(i))
        .collect();
    let visited: Vec<bool> = terms.iter().map(|t| !t.is_empty()).collect();
    let num_classes = net.num_classes();
    let mut total = None;
    let (mut chosen, mut compared) = (Vec::new(), Vec::new());
    let mut visit = |node: usize, g: &B::Tensor| -> Result<()> {
        for m in &terms[node] {
            total = Some(be.full_grad_add(total.take(), g, FullGradBy::Bias(m), (h, w))?);
        }
        Ok(())
    };
    let seed_of = |logits: &Tensor| {
        chosen = choose_classes(logits, req.classes, num_classes)?;
        let s;
        (s, compared) = seeds(req, logits, &chosen)?;
        Ok(s)
    };
    let (logits, input_grad) = net.backward_to_input(x, seed_of, &visited, &mut visit)?;
    // |x ⊙ ∂y/∂x|, each input channel normalised on its own.
    let total = be.full_grad_add(total, &input_grad, FullGradBy::Input(&x_kept), (h, w))?;
    let maps = be.download(&total)?;
    Ok(CamBatch {
        logits,
        classes: chosen,
        weights: Tensor::zeros([n, 0]),
        maps,
        layer_map: false,
        guided: None,
        compared,
    })
}
