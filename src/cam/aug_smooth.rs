//! Test-time augmentation smoothing (pytorch-grad-cam's `aug_smooth`): the map is the mean of
//! the maps of six copies of the input, each mirrored or not and multiplied by 0.9, 1 or 1.1
//! (after normalisation, as ttach's `HorizontalFlip` × `Multiply([0.9, 1, 1.1])`), each map
//! min-max normalised at the input size and mirrored back before the mean.
//!
//! The six copies are made on the backend from the preprocessed batch (`Backend::aug_copies`;
//! on a GPU nothing goes back to the host) and run as one batch. The class is chosen once, on the unaugmented image, and
//! explained in all six (one more forward pass, on the images themselves); pytorch-grad-cam
//! without targets takes each copy's own top-1 class (the same unless the copies disagree).
//! Logits, class, channel weights and the guided gradient are the unaugmented copy's.

use super::methods::{explain, CamBatch, CamRequest, ClassSel};
use crate::backend::Backend;
use crate::model::Network;
use crate::{Error, Result, Tensor};

/// ttach's order: every factor without the mirror, then every factor with it.
pub const AUGMENTATIONS: [(bool, f32); 6] = [
    (false, 0.9),
    (false, 1.0),
    (false, 1.1),
    (true, 0.9),
    (true, 1.0),
    (true, 1.1),
];

/// The unaugmented copy's place in [`AUGMENTATIONS`].
const PLAIN: usize = 1;

/// [`explain`] with `req.aug_smooth`: `maps` is the mean map at the input size [N, H, W].
/// The six copies run as one batch, or one copy at a time when that batch does not fit in
/// device memory (a caller that splits batches then still sees an out-of-memory error for
/// the images alone).
pub(crate) fn explain_aug_smooth<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    req: &CamRequest,
) -> Result<CamBatch> {
    let be = net.backend();
    let (n, c, h, w) = {
        let s = be.shape(&x);
        (s[0], s[1], s[2], s[3])
    };
    if n * c * h * w == 0 {
        return Err(Error::Invalid("aug_smooth: an empty input".into()));
    }
    let classes = match req.classes {
        ClassSel::Predicted => {
            let logits = net.forward(be.duplicate(&x)?)?;
            let nc = logits.shape()[1];
            let top = logits.data().chunks(nc).map(super::argmax).collect();
            ClassSel::PerImage(top)
        }
        other => other.clone(),
    };
    let mut mean = vec![0f32; n * h * w];
    let mut plain = None;
    let mut add = |batch: CamBatch, first: usize| {
        for t in 0..batch.classes.len() / n {
            let mirror = AUGMENTATIONS[first + t].0;
            for i in 0..n {
                let m = batch.upsampled(t * n + i, (h, w));
                let m = if mirror { mirrored(&m, 1, h, w) } else { m };
                for (acc, v) in mean[i * h * w..(i + 1) * h * w].iter_mut().zip(m) {
                    *acc += v;
                }
            }
            if first + t == PLAIN {
                let rows = |x: &Tensor| x.slice_batch(t * n, (t + 1) * n);
                plain = Some(CamBatch {
                    logits: rows(&batch.logits),
                    classes: batch.classes[t * n..(t + 1) * n].to_vec(),
                    weights: rows(&batch.weights),
                    maps: Tensor::zeros([0]),
                    layer_map: false,
                    guided: batch.guided.as_ref().map(rows),
                    compared: batch.compared[t * n..(t + 1) * n].to_vec(),
                });
            }
        }
    };
    let all = 0..AUGMENTATIONS.len();
    match explain_copies(net, &x, all, &classes, req) {
        Ok(batch) => add(batch, 0),
        Err(Error::OutOfMemory(_)) => {
            for t in 0..AUGMENTATIONS.len() {
                add(explain_copies(net, &x, t..t + 1, &classes, req)?, t);
            }
        }
        Err(e) => return Err(e),
    }
    let k = AUGMENTATIONS.len() as f32;
    mean.iter_mut().for_each(|v| *v /= k);
    let plain = plain.expect("the plain copy ran");
    Ok(CamBatch {
        maps: Tensor::new([n, h, w], mean),
        ..plain
    })
}

/// The copies `which` of [`AUGMENTATIONS`] of every image of `x` [N, C, H, W], made on the
/// backend and explained as one batch (copy-major: all images of the first copy, then the
/// next).
fn explain_copies<B: Backend>(
    net: &Network<B>,
    x: &B::Tensor,
    which: std::ops::Range<usize>,
    classes: &ClassSel,
    req: &CamRequest,
) -> Result<CamBatch> {
    let copies = which.len();
    let repeated = match classes {
        ClassSel::PerImage(cs) => ClassSel::PerImage(cs.repeat(copies)),
        other => other.clone(),
    };
    let sub = CamRequest {
        classes: &repeated,
        aug_smooth: false,
        ..req.clone()
    };
    let copies = net.backend().aug_copies(x, &AUGMENTATIONS[which])?;
    explain(net, copies, &sub)
}

/// [C, H, W] mirrored left to right.
fn mirrored(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * h * w);
    for row in x.chunks(w) {
        out.extend(row.iter().rev());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    #[test]
    fn mirror_and_factor() {
        let img = Tensor::new([1, 2, 2, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let copies = CpuBackend::reference()
            .aug_copies(&img, &[(true, 2.0), (false, 1.0)])
            .unwrap();
        assert_eq!(copies.shape(), [2, 2, 2, 2]);
        assert_eq!(
            copies.data(),
            [4.0, 2.0, 8.0, 6.0, 12.0, 10.0, 16.0, 14.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        );
        assert_eq!(
            mirrored(&mirrored(img.data(), 2, 2, 2), 2, 2, 2),
            img.data()
        );
        assert_eq!(AUGMENTATIONS[PLAIN], (false, 1.0));
    }
}
