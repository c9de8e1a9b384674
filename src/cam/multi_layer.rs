//! Several target layers at once (pytorch-grad-cam's `target_layers=[...]` with more than one):
//! each layer's map is min-max normalised at its own resolution and resized to the input size,
//! and the map is their mean (normalised afterwards like every map). In pytorch-grad-cam:
//! `aggregate_multi_layers` over `scale_cam_image(relu(cam), input size)` per layer.
//!
//! `CamRequest::layer` names them separated by commas (torchvision module paths have none).
//! Each layer takes its own forward and backward pass. Logits, class, channel weights and the
//! guided gradient are the first layer's.

use super::methods::{explain, CamBatch, CamRequest, ClassSel};
use super::postprocess::normalise_minmax;
use crate::backend::Backend;
use crate::image::resize_bilinear;
use crate::model::Network;
use crate::{Error, Result, Tensor};

/// The layers `layer` lists, or an error naming an empty entry.
pub fn target_layers(layer: &str) -> Result<Vec<&str>> {
    let layers: Vec<&str> = layer.split(',').map(str::trim).collect();
    if layers.iter().any(|l| l.is_empty()) {
        return Err(Error::Invalid(format!(
            "target layers `{layer}`: an empty name in the comma-separated list"
        )));
    }
    if let Some((_, l)) = (layers.iter().enumerate()).find(|(i, l)| layers[..*i].contains(l)) {
        return Err(Error::Invalid(format!(
            "target layers `{layer}`: `{l}` is listed twice"
        )));
    }
    Ok(layers)
}

/// `layer` as [`target_layers`] reads it, written back without spaces (`layer3,layer4`): the
/// form reports and `run.json` record.
pub fn normalised(layer: &str) -> Result<String> {
    Ok(target_layers(layer)?.join(","))
}

/// [`explain`] for a `req.layer` listing several layers: `maps` is the mean map at the input
/// size [N, H, W].
pub(crate) fn explain_layers<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    req: &CamRequest,
) -> Result<CamBatch> {
    let be = net.backend();
    let layers = target_layers(req.layer)?;
    for l in &layers {
        net.graph().layer(l)?;
    }
    let (n, h, w) = {
        let s = be.shape(&x);
        (s[0], s[2], s[3])
    };
    let mut mean = vec![0f32; n * h * w];
    let mut first = None;
    let mut x = Some(x);
    for (li, layer) in layers.iter().enumerate() {
        // The last layer takes the input itself; the others a copy.
        let xi = match li + 1 == layers.len() {
            true => x.take().expect("taken once"),
            false => be.duplicate(x.as_ref().expect("kept until the last layer"))?,
        };
        // Every layer explains the classes the first one chose (a near tie could otherwise
        // fall the other way in another pass).
        let chosen = first
            .as_ref()
            .map(|f: &CamBatch| ClassSel::PerImage(f.classes.clone()));
        let sub = CamRequest {
            layer,
            guided: req.guided && li == 0,
            classes: chosen.as_ref().unwrap_or(req.classes),
            ..req.clone()
        };
        let b = explain(net, xi, &sub)?;
        let (mh, mw) = (b.maps.shape()[1], b.maps.shape()[2]);
        for (i, acc) in mean.chunks_mut(h * w).enumerate() {
            let mut m = b.maps.data()[i * mh * mw..(i + 1) * mh * mw].to_vec();
            normalise_minmax(&mut m);
            for (a, v) in acc.iter_mut().zip(resize_bilinear(&m, mh, mw, 1, h, w)) {
                *a += v;
            }
        }
        if li == 0 {
            first = Some(b);
        }
    }
    let k = layers.len() as f32;
    mean.iter_mut().for_each(|v| *v /= k);
    Ok(CamBatch {
        maps: Tensor::new([n, h, w], mean),
        ..first.expect("one layer at least")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists() {
        assert_eq!(target_layers("layer4").unwrap(), ["layer4"]);
        assert_eq!(
            target_layers("layer3, layer4").unwrap(),
            ["layer3", "layer4"]
        );
        let e = target_layers("layer3,,layer4").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = target_layers("layer4, layer4").unwrap_err().to_string();
        assert!(e.contains("`layer4` is listed twice"), "{e}");
        assert_eq!(normalised(" layer3 , layer4 ").unwrap(), "layer3,layer4");
    }
}
