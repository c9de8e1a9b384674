//! FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam's `FullGrad`: the map sums, at the
//! input size, |x ⊙ ∂y/∂x| per input channel and, for every module with a bias (each conv
//! with a bias, each BatchNorm), |b ⊙ ∂y/∂out| per channel, every one of these maps min-max
//! normalised on its own and resized to the input size. It ignores the target layer.
//!
//! One forward pass and one backward-data pass down to the input; each bias term is taken as
//! soon as its node's gradient is whole, on the host (the gradient comes back from a GPU),
//! and dropped. A layer's channels share one resize: bilinear resizing is linear, so the sum
//! of the resized channels is the resized sum (pytorch-grad-cam resizes every channel, then
//! sums).

use rayon::prelude::*;

use super::methods::{choose_classes, seed, CamBatch, CamRequest};
use super::postprocess::normalise_minmax;
use crate::backend::Backend;
use crate::image::resize_bilinear;
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
    let host_x = be.download(&x)?;
    let (n, c, h, w) = host_x.dims4();
    let graph = net.graph();
    let terms: Vec<Vec<Vec<f32>>> = (0..graph.nodes.len())
        .map(|i| graph.full_grad_biases(i))
        .collect();
    let visited: Vec<bool> = terms.iter().map(|t| !t.is_empty()).collect();
    let num_classes = net.num_classes();
    let mut total = vec![0f32; n * h * w];
    let mut chosen = Vec::new();
    let mut visit = |node: usize, g: &B::Tensor| -> Result<()> {
        let g = be.download(g)?;
        for m in &terms[node] {
            add_bias_term(&mut total, &g, m, (h, w));
        }
        Ok(())
    };
    let seed_of = |logits: &Tensor| {
        chosen = choose_classes(logits, req.classes, num_classes)?;
        Ok(seed(&chosen, num_classes, req.counterfactual))
    };
    let (logits, input_grad) = net.backward_to_input(x, seed_of, &visited, &mut visit)?;
    let g = be.download(&input_grad)?;
    // |x ⊙ ∂y/∂x|, each input channel normalised on its own.
    let hw = h * w;
    total
        .par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(i, acc)| {
            for ch in 0..c {
                let at = (i * c + ch) * hw;
                let mut m: Vec<f32> = (host_x.data()[at..at + hw].iter())
                    .zip(&g.data()[at..at + hw])
                    .map(|(x, g)| (x * g).abs())
                    .collect();
                normalise_minmax(&mut m);
                acc.iter_mut().zip(m).for_each(|(a, v)| *a += v);
            }
        });
    Ok(CamBatch {
        logits,
        classes: chosen,
        weights: Tensor::zeros([n, 0]),
        maps: Tensor::new([n, h, w], total),
        guided: None,
    })
}

/// Adds to each image's map in `total` [N, h, w] the bias term of gradient `g` [N, K, gh, gw]
/// with per-channel factor `m`: Σ_k normalise(|m_k · g_k|), resized to (h, w).
fn add_bias_term(total: &mut [f32], g: &Tensor, m: &[f32], (h, w): (usize, usize)) {
    let (_, k, gh, gw) = g.dims4();
    let ghw = gh * gw;
    total
        .par_chunks_mut((h * w).max(1))
        .enumerate()
        .for_each(|(i, acc)| {
            let mut layer = vec![0f32; ghw];
            for (ch, &mk) in m.iter().enumerate().take(k) {
                let at = (i * k + ch) * ghw;
                let mut plane: Vec<f32> = g.data()[at..at + ghw]
                    .iter()
                    .map(|v| (mk * v).abs())
                    .collect();
                normalise_minmax(&mut plane);
                layer.iter_mut().zip(plane).for_each(|(l, v)| *l += v);
            }
            let up = resize_bilinear(&layer, gh, gw, 1, h, w);
            acc.iter_mut().zip(up).for_each(|(a, v)| *a += v);
        });
}
