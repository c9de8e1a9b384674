//! From the raw map to pictures, with pytorch-grad-cam's conventions: bilinear upsampling
//! (half-pixel centres), per-image min-max `(m - min) / (max - min + 1e-7)`, an OpenCV
//! colormap (JET by default) on `uint8(255·m)`, and `show_cam_on_image`'s blend (image weight
//! 0.5 by default).

use super::colormap::OverlayStyle;
use crate::image::{resize_bilinear, RgbImage};
use crate::{Error, Result};

/// In place: `(m - min) / (max - min + 1e-7)`; an all-zero map stays zero.
pub fn normalise_minmax(m: &mut [f32]) {
    let (lo, hi) = min_max(m);
    let range = hi - lo + 1e-7;
    m.iter_mut().for_each(|v| *v = (*v - lo) / range);
}

/// (min, max) of v, NaN ignored as `f32::min`/`max` do; (∞, −∞) when empty. Sixteen running
/// minima and maxima, so the compiler vectorises it (one running pair is a dependency chain
/// of an element per cycle or two: most of FullGrad's time on the CPU).
pub fn min_max(v: &[f32]) -> (f32, f32) {
    const L: usize = 16;
    let (mut lo, mut hi) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L]);
    let chunks = v.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
        }
    }
    let fold = |acc: (f32, f32), x: &f32| (acc.0.min(*x), acc.1.max(*x));
    let lanes = lo
        .iter()
        .zip(&hi)
        .fold((f32::INFINITY, f32::NEG_INFINITY), |a, (l, h)| {
            (a.0.min(*l), a.1.max(*h))
        });
    tail.iter().fold(lanes, fold)
}

/// Upsamples an (h, w) map to (oh, ow) and min-max normalises it to [0, 1).
///
/// # Panics
/// If `map` does not hold h·w values.
pub fn upsample_normalised(
    map: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let mut m = resize_bilinear(map, h, w, 1, oh, ow);
    normalise_minmax(&mut m);
    m
}

/// `show_cam_on_image(img/255, m, use_rgb=True)` with its defaults (JET, image weight 0.5):
/// see [`overlay_with`].
pub fn overlay(img: &RgbImage, m: &[f32]) -> Result<RgbImage> {
    overlay_with(img, m, &OverlayStyle::default())
}

/// `show_cam_on_image(img/255, m, use_rgb=True, colormap, image_weight=w)`:
/// c = (1 − w)·colormap(uint8(255·m))/255 + w·img/255, c /= max(c), uint8(255·c); a c that is
/// 0 everywhere (a black image under a colormap starting at black) stays black, where numpy
/// would divide 0 by 0. `m` has the image's size and `style` an image weight in [0, 1] (else
/// an error).
pub fn overlay_with(img: &RgbImage, m: &[f32], style: &OverlayStyle) -> Result<RgbImage> {
    style.check()?;
    let (table, (wh, wi)) = (style.colormap.table(), style.weights());
    let px = img.as_raw();
    if px.len() != m.len() * 3 {
        return Err(Error::Invalid(format!(
            "overlay: a map of {} values for a {}×{} image",
            m.len(),
            img.width(),
            img.height()
        )));
    }
    let blend = |i: usize, ch: usize| {
        let heat = table[(255.0 * m[i]) as u8 as usize];
        wh * (heat[ch] as f32 / 255.0) + wi * (px[i * 3 + ch] as f32 / 255.0)
    };
    // Two passes (max, then bytes) instead of a full-size f32 buffer: photographs are large.
    let max = (0..px.len()).fold(0f32, |mx, j| mx.max(blend(j / 3, j % 3)));
    // (255·(c / max), in numpy's order: 255/max first rounds otherwise.)
    let out = (0..px.len())
        .map(|j| match max > 0.0 {
            true => (255.0 * (blend(j / 3, j % 3) / max)) as u8,
            false => 0,
        })
        .collect();
    Ok(RgbImage::from_raw(img.width(), img.height(), out).expect("same size as the input"))
}

/// pytorch-grad-cam's `deprocess_image` for a gradient image (HWC): standardise over all
/// values (population std), ×0.1, +0.5, clip to [0, 1], uint8(255·x) (truncation).
pub fn deprocess(hwc: &[f32]) -> Vec<u8> {
    let n = hwc.len().max(1) as f64;
    let mean = hwc.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = hwc.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let denom = var.sqrt() + 1e-5;
    hwc.iter()
        .map(|&v| {
            let x = ((v as f64 - mean) / denom * 0.1 + 0.5).clamp(0.0, 1.0);
            (x * 255.0) as u8
        })
        .collect()
}

/// The guided-backprop picture and Guided Grad-CAM (guided ⊙ map) for one image whose
/// gradient is CHW [3, h, w] and whose normalised map `cam` is [h, w] (else an error).
pub fn guided_images(
    chw: &[f32],
    cam: &[f32],
    (h, w): (usize, usize),
) -> Result<(RgbImage, RgbImage)> {
    let hw = h * w;
    if chw.len() != 3 * hw || cam.len() != hw || u32::try_from(h.max(w)).is_err() {
        return Err(Error::Invalid(format!(
            "guided_images: a gradient of {} values and a map of {} for {h}×{w} pixels",
            chw.len(),
            cam.len()
        )));
    }
    let mut hwc = vec![0f32; 3 * hw];
    for c in 0..3 {
        for i in 0..hw {
            hwc[i * 3 + c] = chw[c * hw + i];
        }
    }
    let masked: Vec<f32> = hwc
        .iter()
        .enumerate()
        .map(|(i, &g)| g * cam[i / 3])
        .collect();
    let img = |px: Vec<u8>| RgbImage::from_raw(w as u32, h as u32, px).expect("sized above");
    Ok((img(deprocess(&hwc)), img(deprocess(&masked))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain fold, for lengths around the 16 lanes; NaN ignored as f32::min does.
    #[test]
    fn min_max_matches_a_plain_fold() {
        for n in [0, 1, 15, 16, 17, 33, 100] {
            let mut v: Vec<f32> = (0..n).map(|i| ((i * 53) % 29) as f32 - 11.5).collect();
            if n > 3 {
                v[n / 2] = f32::NAN;
            }
            let plain = v
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
                    (l.min(x), h.max(x))
                });
            assert_eq!(min_max(&v), plain, "length {n}");
        }
        assert_eq!(min_max(&[f32::NAN, 2.0]), (2.0, 2.0));
    }
}
