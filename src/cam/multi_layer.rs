//! Several target layers at once (pytorch-grad-cam's `target_layers=[...]` with more than one):
//! each layer's map is min-max normalised at its own resolution and resized to the input size,
//! and the map is their mean (normalised afterwards like every map). In pytorch-grad-cam:
//! `aggregate_multi_layers` over `scale_cam_image(relu(cam), input size)` per layer.
//!
//! `CamRequest::layer` names them separated by commas (torchvision module paths have none).
//! All layers share one forward pass and one backward pass, down to the lowest of them (as in
//! pytorch-grad-cam), so they explain the same classes. The channel weights reported are the
//! first layer's.

use super::postprocess::normalise_minmax;
use crate::image::resize_bilinear;
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

/// The mean over layers of each map [N, h_l, w_l] min-max normalised at its own resolution
/// and resized to `(h, w)`: [N, h, w].
pub(crate) fn mean_of_layers(maps: &[Tensor], (h, w): (usize, usize)) -> Tensor {
    let n = maps[0].shape()[0];
    let mut mean = vec![0f32; n * h * w];
    for map in maps {
        let (mh, mw) = (map.shape()[1], map.shape()[2]);
        for (i, acc) in mean.chunks_mut(h * w).enumerate() {
            let mut m = map.data()[i * mh * mw..(i + 1) * mh * mw].to_vec();
            normalise_minmax(&mut m);
            for (a, v) in acc.iter_mut().zip(resize_bilinear(&m, mh, mw, 1, h, w)) {
                *a += v;
            }
        }
    }
    let k = maps.len() as f32;
    mean.iter_mut().for_each(|v| *v /= k);
    Tensor::new([n, h, w], mean)
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
