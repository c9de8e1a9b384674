//! Deep Feature Factorization (Collins et al. 2018, arXiv 1806.10206) as pytorch-grad-cam's
//! `DeepFeatureFactorization`: a batch's activations at a layer, [N, K, h, w], read as one
//! K × (N·h·w) matrix, each channel shifted by its minimum, are factorised by NMF into k
//! concepts (channel vectors, [K, k], the shift added back) and, per image, k maps saying
//! where each concept is (the NMF's other factor). The concepts are shared by every image of
//! the batch, so a data set's images can be factorised together and compared.
//!
//! Each concept is also scored by the network after the layer, run on a map that holds the
//! concept at every position (pytorch-grad-cam leaves this to a callback, `model.fc` for a
//! ResNet at `layer4`; for that layer the two are the same), which names what it stands for.

pub mod nmf;

use crate::backend::Backend;
use crate::cam::normalise_minmax;
use crate::image::{resize_bilinear, RgbImage};
use crate::model::{Backward, Network};
use crate::{Error, Result, Tensor};

/// pytorch-grad-cam's default number of concepts.
pub const COMPONENTS: usize = 16;
/// `run_dff_on_image`'s image weight in the overlay.
pub const IMAGE_WEIGHT: f32 = 0.3;

/// A factorisation of several images' activations.
pub struct Factorization {
    /// The concepts, [K, k]: column c is concept c's activation vector.
    pub concepts: Tensor,
    /// Where each concept is, per image: [k, h, w] at the layer's size, unnormalised.
    pub maps: Vec<Tensor>,
    /// NMF iterations run (at most 200).
    pub iterations: usize,
}

/// pytorch-grad-cam's `dff(activations, n_components)` over the images of `acts`, each
/// [N, K, h, w] (NaN read as 0); the tensors may differ in N, h and w (images of their own
/// sizes), not in K. For one tensor this is pytorch-grad-cam's batch exactly.
pub fn factorize(acts: &[Tensor], k: usize) -> Result<Factorization> {
    if k == 0 {
        return Err(Error::Invalid("DFF needs at least one concept".into()));
    }
    let Some(first) = acts.first() else {
        return Err(Error::Invalid("DFF needs at least one image".into()));
    };
    let c = first.dims4().1;
    if let Some(t) = acts.iter().find(|t| t.dims4().1 != c) {
        return Err(Error::Invalid(format!(
            "DFF: activations of {} and {c} channels",
            t.dims4().1
        )));
    }
    // [K, Σ N·h·w]: channel-major, then image, then position.
    let cols: usize = acts.iter().map(|t| t.len() / c).sum();
    let mut x = vec![0f32; c * cols];
    let mut at = 0;
    for t in acts {
        let (n, _, h, w) = t.dims4();
        let hw = h * w;
        for img in 0..n {
            for ch in 0..c {
                let src = &t.data()[(img * c + ch) * hw..][..hw];
                let dst = &mut x[ch * cols + at..][..hw];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = if s.is_nan() { 0.0 } else { s };
                }
            }
            at += hw;
        }
    }
    let mut offset = vec![0f32; c];
    for (ch, row) in x.chunks_mut(cols).enumerate() {
        offset[ch] = row.iter().copied().fold(f32::INFINITY, f32::min);
        row.iter_mut().for_each(|v| *v -= offset[ch]);
    }
    let f = nmf::nmf(&x, (c, cols), k)?;
    let concepts: Vec<f32> = (0..c * k).map(|i| f.w[i] + offset[i / k]).collect();
    // H [k, Σ N·h·w] → per image [k, h, w].
    let mut maps = Vec::new();
    let mut at = 0;
    for t in acts {
        let (n, _, h, w) = t.dims4();
        for _ in 0..n {
            let mut m = Vec::with_capacity(k * h * w);
            for comp in 0..k {
                m.extend_from_slice(&f.h[comp * cols + at..][..h * w]);
            }
            maps.push(Tensor::new([k, h, w], m));
            at += h * w;
        }
    }
    Ok(Factorization {
        concepts: Tensor::new([c, k], concepts),
        maps,
        iterations: f.iterations,
    })
}

/// The activations at `layer` for a batch: [N, K, h, w] and the logits [N, classes].
pub fn activations<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    layer: &str,
) -> Result<(Tensor, Tensor)> {
    let be = net.backend();
    let out = net.run(x, &[layer], Backward::None, |l| Ok(l.clone()))?;
    let act = be.download(&out.layers[0].activation)?;
    Ok((act, out.logits))
}

/// Each concept's class scores, [k, classes]: the network after `layer` run on a map holding
/// the concept at each of the layer's (h, w) positions. None where the layer's output is not
/// all the rest reads (inside a residual block, whose shortcut would need an image).
pub fn concept_scores<B: Backend>(
    net: &Network<B>,
    layer: &str,
    concepts: &Tensor,
    input_hw: (usize, usize),
) -> Result<Option<Tensor>> {
    let be = net.backend();
    let [c, k] = concepts.shape()[..] else {
        return Err(Error::Invalid("concepts must be [channels, k]".into()));
    };
    let probe = be.upload(Tensor::new(
        [1, 3, input_hw.0, input_hw.1],
        vec![0.0; 3 * input_hw.0 * input_hw.1],
    ))?;
    let from = net.from_layer(&probe, layer)?;
    if from.has_live_values() {
        return Ok(None);
    }
    let shape = from.shape().to_vec();
    if shape.len() != 4 || shape[1] != c {
        return Err(Error::Invalid(format!(
            "concepts of {c} channels for layer `{layer}` of shape {shape:?}"
        )));
    }
    let hw = shape[2] * shape[3];
    let mut v = Vec::with_capacity(k * c * hw);
    for comp in 0..k {
        for ch in 0..c {
            v.extend(std::iter::repeat_n(concepts.data()[ch * k + comp], hw));
        }
    }
    let replaced = be.upload(Tensor::new([k, c, shape[2], shape[3]], v))?;
    Ok(Some(net.forward_from(&from, replaced, k)?))
}

/// pytorch-grad-cam's `scale_cam_image(maps, size)` for one image's [k, h, w] maps: each
/// min-max normalised at the layer's size, then resized bilinearly to `size` (not normalised
/// again), [k, H, W].
pub fn scale_maps(maps: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    maps.chunks(h * w)
        .flat_map(|m| {
            let mut m = m.to_vec();
            normalise_minmax(&mut m);
            resize_bilinear(&m, h, w, 1, oh, ow)
        })
        .collect()
}

/// The concept each pixel belongs to: the argmax over the k maps (the first on ties), as
/// `show_factorization_on_image` colours it.
pub fn concept_per_pixel(maps: &[f32], k: usize) -> Vec<usize> {
    let hw = maps.len() / k.max(1);
    (0..hw)
        .map(|p| {
            (0..k).fold(0, |best, c| {
                if maps[c * hw + p] > maps[best * hw + p] {
                    c
                } else {
                    best
                }
            })
        })
        .collect()
}

/// matplotlib's `gist_rainbow` control points (position, r, g, b).
const GIST_RAINBOW: [(f64, [f64; 3]); 8] = [
    (0.0, [1.0, 0.0, 0.16]),
    (0.03, [1.0, 0.0, 0.0]),
    (0.215, [1.0, 1.0, 0.0]),
    (0.4, [0.0, 1.0, 0.0]),
    (0.586, [0.0, 1.0, 1.0]),
    (0.77, [0.0, 0.0, 1.0]),
    (0.954, [1.0, 0.0, 1.0]),
    (1.0, [1.0, 0.0, 0.75]),
];

/// Concept `i` of `k`'s colour: `np.uint8(255 · gist_rainbow(i / k)[:3])` (matplotlib's
/// 256-entry table, the entry `int(x · 256)`), as `show_factorization_on_image` picks them.
pub fn concept_colour(i: usize, k: usize) -> [u8; 3] {
    // np.arange(0, 1, 1 / k)[i] is i · (1 / k) in f64.
    let x = i as f64 * (1.0 / k as f64);
    let entry = ((x * 256.0) as usize).min(255);
    let pos = entry as f64 / 255.0;
    let seg = GIST_RAINBOW
        .windows(2)
        .position(|s| pos < s[1].0)
        .unwrap_or(GIST_RAINBOW.len() - 2);
    let ((x0, c0), (x1, c1)) = (GIST_RAINBOW[seg], GIST_RAINBOW[seg + 1]);
    let t = (pos - x0) / (x1 - x0);
    std::array::from_fn(|ch| ((c0[ch] + t * (c1[ch] - c0[ch])).clamp(0.0, 1.0) * 255.0) as u8)
}

/// OpenCV's 8-bit RGB → HSV (H in [0, 180)): its integer algorithm with 12-bit tables.
fn rgb_to_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
    const SHIFT: i32 = 12;
    let (r, g, b) = (r as i32, g as i32, b as i32);
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    let sdiv = if v == 0 {
        0
    } else {
        ((255 << SHIFT) as f64 / v as f64).round() as i32
    };
    let hdiv = if diff == 0 {
        0
    } else {
        ((180 << SHIFT) as f64 / (6.0 * diff as f64)).round() as i32
    };
    let s = (diff * sdiv + (1 << (SHIFT - 1))) >> SHIFT;
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    let mut h = (h * hdiv + (1 << (SHIFT - 1))) >> SHIFT;
    if h < 0 {
        h += 180;
    }
    [h as u8, s as u8, v as u8]
}

/// OpenCV's 8-bit HSV (H in [0, 180)) → RGB: its float algorithm, rounded to nearest.
fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    let (s, v) = (s as f32 / 255.0, v as f32 / 255.0);
    let (r, g, b) = if s == 0.0 {
        (v, v, v)
    } else {
        let mut hh = h as f32 * (6.0 / 180.0);
        let mut sector = hh.floor() as i32;
        hh -= sector as f32;
        if sector < 0 {
            sector += 6;
        }
        if sector >= 6 {
            sector -= 6;
        }
        let tab = [
            v,
            v * (1.0 - s),
            v * (1.0 - s * hh),
            v * (1.0 - s * (1.0 - hh)),
        ];
        const SECTOR: [[usize; 3]; 6] = [
            [1, 3, 0],
            [1, 0, 2],
            [3, 0, 1],
            [0, 2, 1],
            [0, 1, 3],
            [2, 1, 0],
        ];
        let [bi, gi, ri] = SECTOR[sector as usize];
        (tab[ri], tab[gi], tab[bi])
    };
    [r, g, b].map(|c| (c * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
}

/// pytorch-grad-cam's `show_factorization_on_image` (without the legend): each pixel takes
/// the colour of the concept whose map is highest there, at the brightness (HSV value) of
/// that map, blended with the image: `uint8(255 · (w · img + (1 − w) · colour))`. `maps` are
/// the image's [k, H, W] maps at its size, in [0, 1].
pub fn overlay(img: &RgbImage, maps: &[f32], k: usize, image_weight: f32) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    let hw = (w * h) as usize;
    if k == 0 || maps.len() != k * hw {
        return Err(Error::Invalid(format!(
            "DFF overlay: {} map values for {k} concepts on a {w}x{h} image",
            maps.len()
        )));
    }
    // Per concept, the RGB colour at every HSV value.
    let tables: Vec<Vec<[u8; 3]>> = (0..k)
        .map(|i| {
            let [hh, s, _] = rgb_to_hsv(concept_colour(i, k));
            (0..=255u8).map(|v| hsv_to_rgb([hh, s, v])).collect()
        })
        .collect();
    let owner = concept_per_pixel(maps, k);
    let weight = image_weight as f64;
    let rest = 1.0 - image_weight;
    let mut out = img.clone();
    for (p, px) in out.pixels_mut().enumerate() {
        let c = owner[p];
        let v = (255.0 * maps[c * hw + p]) as u8;
        let colour = tables[c][v as usize];
        for (v, &col) in px.0.iter_mut().zip(&colour) {
            let m = (col as f32 / 255.0) * rest;
            *v = ((*v as f64 / 255.0 * weight + m as f64) * 255.0) as u8;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concept_colours_are_matplotlibs_gist_rainbow() {
        // [np.uint8(255 * np.array(cmap(x))[:3]) for x in np.arange(0, 1, 1 / k)]
        assert_eq!(concept_colour(0, 1), [255, 0, 40]);
        let three = [[255, 0, 40], [91, 255, 0], [0, 143, 255]];
        for (i, c) in three.iter().enumerate() {
            assert_eq!(concept_colour(i, 3), *c, "{i} of 3");
        }
        let five = [
            [255, 0, 40],
            [255, 234, 0],
            [0, 255, 0],
            [0, 235, 255],
            [41, 0, 255],
        ];
        for (i, c) in five.iter().enumerate() {
            assert_eq!(concept_colour(i, 5), *c, "{i} of 5");
        }
        let sixteen = [
            [255, 0, 40],
            [255, 45, 0],
            [255, 131, 0],
            [255, 218, 0],
            [205, 255, 0],
            [118, 255, 0],
            [32, 255, 0],
            [0, 255, 53],
            [0, 255, 139],
            [0, 255, 225],
            [0, 197, 255],
            [0, 110, 255],
            [0, 23, 255],
            [63, 0, 255],
            [150, 0, 255],
            [237, 0, 255],
        ];
        for (i, c) in sixteen.iter().enumerate() {
            assert_eq!(concept_colour(i, 16), *c, "{i} of 16");
        }
    }

    #[test]
    fn hsv_conversions_are_opencvs() {
        // cv2.cvtColor(..., COLOR_RGB2HSV) and back (COLOR_HSV2RGB) on uint8 pixels.
        let rgb = [
            [255, 0, 40],
            [91, 255, 0],
            [0, 143, 255],
            [41, 0, 255],
            [205, 255, 0],
            [0, 255, 139],
            [150, 0, 255],
            [12, 34, 56],
            [200, 100, 50],
            [7, 7, 7],
        ];
        let hsv = [
            [175, 255, 255],
            [49, 255, 255],
            [103, 255, 255],
            [125, 255, 255],
            [36, 255, 255],
            [76, 255, 255],
            [138, 255, 255],
            [105, 200, 56],
            [10, 191, 200],
            [0, 0, 7],
        ];
        for (a, b) in rgb.iter().zip(&hsv) {
            assert_eq!(rgb_to_hsv(*a), *b, "{a:?}");
        }
        let back: [([u8; 3], [u8; 3]); 12] = [
            ([175, 255, 77], [77, 0, 13]),
            ([175, 255, 255], [255, 0, 42]),
            ([49, 255, 77], [28, 77, 0]),
            ([49, 255, 200], [73, 200, 0]),
            ([103, 255, 128], [0, 73, 128]),
            ([125, 255, 200], [33, 0, 200]),
            ([36, 255, 128], [102, 128, 0]),
            ([76, 255, 255], [0, 255, 136]),
            ([138, 255, 77], [46, 0, 77]),
            ([105, 200, 77], [17, 47, 77]),
            ([10, 191, 255], [255, 128, 64]),
            ([0, 0, 128], [128, 128, 128]),
        ];
        for (a, b) in back {
            assert_eq!(hsv_to_rgb(a), b, "{a:?}");
        }
    }
}
