//! Grad-CAM as in the paper (§3): the target score is the pre-softmax logit y^c;
//! α_k = mean over (i, j) of ∂y^c/∂A^k_ij; map = ReLU(Σ_k α_k A^k). The counterfactual map
//! (§3, "Counterfactual Explanations") negates the gradients.

use crate::backend::Backend;
use crate::model::Network;
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

/// The result for one batch, on the host.
pub struct CamBatch {
    /// [N, classes]
    pub logits: Tensor,
    pub classes: Vec<usize>,
    /// α, [N, K]: the paper's neuron importance weights.
    pub alpha: Tensor,
    /// ReLU(Σ α A) at the target layer's resolution, [N, h, w], before any normalisation.
    pub maps: Tensor,
}

pub fn grad_cam<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    layer: &str,
    classes: &ClassSel,
    counterfactual: bool,
) -> Result<CamBatch> {
    let be = net.backend();
    let n = be.shape(&x)[0];
    let num_classes = net.num_classes();
    if let ClassSel::PerImage(c) = classes {
        if c.len() != n {
            return Err(Error::Invalid(format!(
                "{} classes given for {n} images",
                c.len()
            )));
        }
    }
    let mut chosen = Vec::with_capacity(n);
    let pass = net.forward_backward(x, layer, |logits| {
        for i in 0..n {
            let row = &logits.data()[i * num_classes..(i + 1) * num_classes];
            let c = match classes {
                ClassSel::Predicted => argmax(row),
                ClassSel::All(c) => *c,
                ClassSel::PerImage(cs) => cs[i],
            };
            if c >= num_classes {
                return Err(Error::ClassOutOfRange {
                    class: c,
                    num_classes,
                });
            }
            chosen.push(c);
        }
        // ∂(Σ_i ±y_i^{c_i})/∂logits: one-hot rows; each image's score depends only on its own
        // logits, so one backward pass serves the whole batch.
        let mut seed = Tensor::zeros([n, num_classes]);
        let sign = if counterfactual { -1.0 } else { 1.0 };
        for (i, &c) in chosen.iter().enumerate() {
            seed.data_mut()[i * num_classes + c] = sign;
        }
        Ok(seed)
    })?;
    let alpha = be.grad_pool(&pass.grad)?;
    let maps = be.weighted_sum_relu(&pass.activation, &alpha)?;
    Ok(CamBatch {
        logits: pass.logits,
        classes: chosen,
        alpha: be.download(&alpha)?,
        maps: be.download(&maps)?,
    })
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
