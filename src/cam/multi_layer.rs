//! Several target layers at once (pytorch-grad-cam's `target_layers=[...]` with more than one):
//! each layer's map is min-max normalised at its own resolution and resized to the input size,
//! and the map is their mean (normalised afterwards like every map). In pytorch-grad-cam:
//! `aggregate_multi_layers` over `scale_cam_image(relu(cam), input size)` per layer.
//!
//! With [`LayerFusion::Product`] the maps are multiplied instead, as pytorch-grad-cam's
//! `RefineCAM`: each layer's map min-max normalised after its resize to the input size (as the
//! base method returns it), their product normalised; a region must stand out in every layer,
//! which cleans up the noisy maps of early layers.
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

/// How the maps of several target layers combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerFusion {
    /// Their mean (pytorch-grad-cam's `target_layers=[...]`).
    #[default]
    Mean,
    /// Their product (pytorch-grad-cam's `RefineCAM`).
    Product,
}

impl LayerFusion {
    pub fn name(self) -> &'static str {
        match self {
            LayerFusion::Mean => "mean",
            LayerFusion::Product => "product",
        }
    }

    pub fn parse(s: &str) -> Result<LayerFusion> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Ok(LayerFusion::Mean),
            "product" | "refinecam" => Ok(LayerFusion::Product),
            _ => Err(Error::Invalid(format!(
                "unknown layer fusion `{s}`; choose mean or product"
            ))),
        }
    }
}

/// The maps [N, h_l, w_l] of several layers combined at `(h, w)`: [N, h, w]. Mean: each
/// normalised at its own resolution, then resized, then averaged. Product: each normalised,
/// resized and normalised again, then multiplied.
pub(crate) fn fuse_layers(maps: &[Tensor], (h, w): (usize, usize), how: LayerFusion) -> Tensor {
    let n = maps[0].shape()[0];
    let start = match how {
        LayerFusion::Mean => 0.0,
        LayerFusion::Product => 1.0,
    };
    let mut out = vec![start; n * h * w];
    for map in maps {
        let (mh, mw) = (map.shape()[1], map.shape()[2]);
        for (i, acc) in out.chunks_mut(h * w).enumerate() {
            let mut m = map.data()[i * mh * mw..(i + 1) * mh * mw].to_vec();
            match how {
                LayerFusion::Mean => {
                    normalise_minmax(&mut m);
                    let up = resize_bilinear(&m, mh, mw, 1, h, w);
                    acc.iter_mut().zip(up).for_each(|(a, v)| *a += v);
                }
                LayerFusion::Product => {
                    // Normalised before and after the resize, as the base method's output:
                    // the same up to the 1e-7 in each, which matters for a nearly flat map.
                    normalise_minmax(&mut m);
                    let mut up = resize_bilinear(&m, mh, mw, 1, h, w);
                    normalise_minmax(&mut up);
                    acc.iter_mut().zip(up).for_each(|(a, v)| *a *= v);
                }
            }
        }
    }
    if how == LayerFusion::Mean {
        let k = maps.len() as f32;
        out.iter_mut().for_each(|v| *v /= k);
    }
    Tensor::new([n, h, w], out)
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
