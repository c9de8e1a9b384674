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
pub const IMAGE_WEIGHT: f64 = 0.3;

/// A factorisation of several images' activations.
pub struct Factorization {
    /// The concepts, [K, k]: column c is concept c's activation vector.
    pub concepts: Tensor,
    /// Where each concept is, per image: [k, h, w] at the layer's size, unnormalised.
    pub maps: Vec<Tensor>,
    /// NMF iterations run (at most 200).
    pub iterations: usize,
    /// Whether the NMF met its stopping rule within the 200 iterations.
    pub converged: bool,
}

/// The most values [`factorize`]'s two factors may hold (1 GiB of f32) unless the
/// activations themselves hold more.
pub const MAX_FACTOR_VALUES: usize = 1 << 28;

/// pytorch-grad-cam's `dff(activations, n_components)` over the images of `acts`, each
/// [N, K, h, w] (NaN read as 0); the tensors may differ in N, h and w (images of their own
/// sizes), not in K. For one tensor this is pytorch-grad-cam's batch exactly. The tensors
/// are consumed: the matrix factorised replaces them in memory.
pub fn factorize(acts: Vec<Tensor>, k: usize) -> Result<Factorization> {
    if k == 0 {
        return Err(Error::Invalid("DFF needs at least one concept".into()));
    }
    if let Some(t) = acts.iter().find(|t| t.shape().len() != 4) {
        return Err(Error::Invalid(format!(
            "DFF needs [N, K, h, w] activations, not {:?}",
            t.shape()
        )));
    }
    let Some(first) = acts.first() else {
        return Err(Error::Invalid("DFF needs at least one image".into()));
    };
    let c = first.dims4().1;
    if let Some(t) = acts.iter().find(|t| t.dims4().1 != c || t.is_empty()) {
        return Err(Error::Invalid(format!(
            "DFF: activations of shape {:?} beside {c} channels",
            t.shape()
        )));
    }
    let shapes: Vec<(usize, usize, usize)> = acts
        .iter()
        .map(|t| {
            let (n, _, h, w) = t.dims4();
            (n, h, w)
        })
        .collect();
    // [K, Σ N·h·w]: channel-major, then image, then position.
    let cols: usize = acts.iter().map(|t| t.len() / c).sum();
    // The factors W [K, k] and H [k, columns], no larger than the activations or
    // MAX_FACTOR_VALUES (a k past any use would otherwise end the process on a failed
    // allocation).
    let limit = MAX_FACTOR_VALUES.max(c * cols);
    if k.checked_mul(c + cols).is_none_or(|v| v > limit) {
        return Err(Error::Invalid(format!(
            "DFF: {k} concepts of {c} channels over {cols} positions need more than {limit} \
             values; ask for fewer concepts"
        )));
    }
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
    for &(n, h, w) in &shapes {
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
        converged: f.converged,
    })
}

/// The activations at `layer` for a batch: [N, K, h, w] and the logits [N, classes]. A
/// batch whose activations or logits hold infinities or NaNs (a forward pass that
/// overflowed) fails with [`Error::NonFinite`], naming the layer that first went wrong for one
/// image, rather than being factorised as zeros.
pub fn activations<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    layer: &str,
) -> Result<(Tensor, Tensor)> {
    let be = net.backend();
    let one = be.shape(&x)[0] == 1;
    // (A copy refused, at the edge of the device's memory, only costs the diagnosis.)
    let again = one.then(|| be.duplicate(&x).ok()).flatten();
    let out = net.run(x, &[layer], Backward::None, |l| Ok(l.clone()))?;
    let act = be.download(&out.layers[0].activation)?;
    let at = format!("activations at `{layer}`");
    let bad: Vec<&str> = [(at.as_str(), &act), ("logits", &out.logits)]
        .into_iter()
        .filter(|(_, t)| !crate::explain::all_finite(t))
        .map(|(what, _)| what)
        .collect();
    if !bad.is_empty() {
        let x = again.map(|x| move || Ok(x));
        return Err(crate::explain::non_finite(net, &bad, x));
    }
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
///
/// # Panics
/// If `maps` is not a whole number of h×w maps.
pub fn scale_maps(maps: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    if h * w == 0 {
        return Vec::new();
    }
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
        .map(|p| concept_per_pixel_at(maps, hw, k, p))
        .collect()
}

/// [`concept_per_pixel`] at pixel `p` of `k` maps of `hw` values each.
fn concept_per_pixel_at(maps: &[f32], hw: usize, k: usize, p: usize) -> usize {
    (0..k).fold(0, |best, c| {
        if maps[c * hw + p] > maps[best * hw + p] {
            c
        } else {
            best
        }
    })
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

/// Concept `i` of `k`'s colour: `np.uint8(255 · gist_rainbow(i / k)[:3])`, as
/// `show_factorization_on_image` picks them: matplotlib's 256-entry table (its
/// `_create_lookup_table`, in f64 as NumPy computes it), entry `int(x · 256)`.
pub fn concept_colour(i: usize, k: usize) -> [u8; 3] {
    const N: usize = 256;
    // np.arange(0, 1, 1 / k)[i] is i · (1 / k) in f64; Colormap.__call__ scales by N.
    let x = i as f64 * (1.0 / k as f64);
    let entry = ((x * N as f64) as usize).min(N - 1);
    let lut = |ch: usize| -> f64 {
        let last = GIST_RAINBOW.len() - 1;
        if entry == 0 {
            return GIST_RAINBOW[0].1[ch];
        }
        if entry == N - 1 {
            return GIST_RAINBOW[last].1[ch];
        }
        // xind = (N - 1) · linspace(0, 1, N)[entry]; positions scaled by N - 1 likewise.
        let step = 1.0 / (N - 1) as f64;
        let xind = (N - 1) as f64 * (entry as f64 * step);
        let pos = |j: usize| GIST_RAINBOW[j].0 * (N - 1) as f64;
        // np.searchsorted (left): the first position ≥ xind.
        let ind = (0..=last).find(|&j| pos(j) >= xind).unwrap_or(last);
        let distance = (xind - pos(ind - 1)) / (pos(ind) - pos(ind - 1));
        let (y0, y1) = (GIST_RAINBOW[ind].1[ch], GIST_RAINBOW[ind - 1].1[ch]);
        (distance * (y0 - y1) + y1).clamp(0.0, 1.0)
    };
    std::array::from_fn(|ch| (lut(ch) * 255.0) as u8)
}

/// OpenCV's 8-bit RGB → HSV (H in [0, 180)): its integer algorithm with 12-bit tables.
pub fn rgb_to_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
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

/// OpenCV's 8-bit HSV (H in [0, 180)) → RGB as its vectorised path computes it, the path
/// all but the end of each row of `cv2.cvtColor(mask, COLOR_HSV2RGB)` takes: S and V times
/// 1/255, the sector table in f32, the result times 255 truncated. Every (h, 255, v) agrees
/// with OpenCV 5.0's.
pub fn hsv_to_rgb(hsv: [u8; 3]) -> [u8; 3] {
    hsv_to_rgb_path(hsv, false)
}

/// [`hsv_to_rgb`], or with `scalar` OpenCV's pixel-by-pixel path (a row's tail, a single
/// pixel): the same arithmetic, rounded to nearest instead of truncated.
pub fn hsv_to_rgb_path([h, s, v]: [u8; 3], scalar: bool) -> [u8; 3] {
    let (s, v) = (s as f32 * (1.0 / 255.0), v as f32 * (1.0 / 255.0));
    let hh = h as f32 * (6.0f32 / 180.0);
    let sector = hh.floor();
    let f = hh - sector;
    let tab = [
        v,
        v * (1.0 - s),
        v * (1.0 - s * f),
        v * (1.0 - s * (1.0 - f)),
    ];
    const SECTOR: [[usize; 3]; 6] = [
        [1, 3, 0],
        [1, 0, 2],
        [3, 0, 1],
        [0, 2, 1],
        [0, 1, 3],
        [2, 1, 0],
    ];
    let [bi, gi, ri] = SECTOR[(sector as usize) % 6];
    [tab[ri], tab[gi], tab[bi]].map(|c| {
        let c = c * 255.0;
        let c = if scalar { c.round_ties_even() } else { c };
        c.clamp(0.0, 255.0) as u8
    })
}

/// pytorch-grad-cam's `show_factorization_on_image` (without the legend): each pixel takes
/// the colour of the concept whose map is highest there, at the brightness (HSV value) of
/// that map, blended with the image: `uint8(255 · (w · img + (1 − w) · colour))` (img/255 and
/// w in f64, colour/255 times 1 − w in f32, as NumPy mixes them). `maps` are the image's
/// [k, h, w] maps at the layer's size, scaled as [`scale_maps`] scales them to the image's
/// size a row at a time: the whole scaled maps, k · 4 bytes per pixel, are never held.
pub fn overlay(
    img: &RgbImage,
    maps: &[f32],
    (mh, mw): (usize, usize),
    k: usize,
    image_weight: f64,
) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    if k == 0 || mh * mw == 0 || maps.len() != k * mh * mw {
        return Err(Error::Invalid(format!(
            "DFF overlay: {} map values for {k} concepts of {mh}x{mw}",
            maps.len()
        )));
    }
    // Per concept, the RGB colour at every HSV value.
    // (OpenCV converts each row 32 pixels at a time in its AVX2 build, the vectorised path,
    // and the row's last w mod 32 pixels one by one, the scalar path.)
    let tables: Vec<[Vec<[u8; 3]>; 2]> = (0..k)
        .map(|i| {
            let [hh, s, _] = rgb_to_hsv(concept_colour(i, k));
            [false, true].map(|scalar| {
                (0..=255u8)
                    .map(|v| hsv_to_rgb_path([hh, s, v], scalar))
                    .collect()
            })
        })
        .collect();
    let scaled: Vec<crate::image::BilinearRows> = maps
        .chunks(mh * mw)
        .map(|m| {
            let mut m = m.to_vec();
            normalise_minmax(&mut m);
            crate::image::BilinearRows::new(|i| m[i], (mh, mw, 1), (h, w))
        })
        .collect();
    let weight = image_weight;
    let rest = (1.0 - image_weight) as f32;
    let vector_end = (w / 32) * 32;
    let mut out = img.clone();
    // One output row of every concept's map at a time.
    let mut rows = vec![0f32; k * w];
    for (y, line) in out.chunks_exact_mut((3 * w).max(1)).enumerate().take(h) {
        for (c, r) in scaled.iter().enumerate() {
            r.row(y, &mut rows[c * w..(c + 1) * w]);
        }
        for (x, px) in line.chunks_exact_mut(3).enumerate() {
            let c = concept_per_pixel_at(&rows, w, k, x);
            let v = (255.0 * rows[c * w + x]) as u8;
            let colour = tables[c][(x >= vector_end) as usize][v as usize];
            for (v, &col) in px.iter_mut().zip(&colour) {
                let m = (col as f32 / 255.0) * rest;
                *v = ((*v as f64 / 255.0 * weight + m as f64) * 255.0) as u8;
            }
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
    fn rgb_to_hsv_is_opencvs() {
        // cv2.cvtColor(..., COLOR_RGB2HSV) on uint8 pixels.
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
        // HSV → RGB: every (h, 255, v) against OpenCV in tests/dff.rs (its vectorised path
        // differs from its scalar one, so single-pixel values do not serve).
    }
}
