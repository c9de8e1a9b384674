//! From the raw map to pictures, with pytorch-grad-cam's conventions: bilinear upsampling
//! (half-pixel centres), per-image min-max `(m - min) / (max - min + 1e-7)`, OpenCV's JET on
//! `uint8(255·m)`, and `show_cam_on_image`'s blend with image weight 0.5.

use super::jet::JET;
use crate::image::{resize_bilinear, RgbImage};

/// In place: `(m - min) / (max - min + 1e-7)`; an all-zero map stays zero.
pub fn normalise_minmax(m: &mut [f32]) {
    let (lo, hi) = m
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo + 1e-7;
    m.iter_mut().for_each(|v| *v = (*v - lo) / range);
}

/// Upsamples an (h, w) map to (oh, ow) and min-max normalises it to [0, 1).
pub fn upsample_normalised(
    map: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let mut m = resize_bilinear(map, h, w, 1, oh, ow);
    normalise_minmax(&mut m);
    m
}

/// `show_cam_on_image(img/255, m, use_rgb=True)`: c = 0.5·jet(m)/255 + 0.5·img/255,
/// c /= max(c), uint8(255·c). `m` has the image's size.
pub fn overlay(img: &RgbImage, m: &[f32]) -> RgbImage {
    const W: f32 = 0.5;
    let px = img.as_raw();
    assert_eq!(px.len(), m.len() * 3, "map and image sizes differ");
    let mut c = vec![0f32; px.len()];
    let mut max = 0f32;
    for (i, &v) in m.iter().enumerate() {
        let heat = JET[(255.0 * v) as u8 as usize];
        for ch in 0..3 {
            let x = (1.0 - W) * (heat[ch] as f32 / 255.0) + W * (px[i * 3 + ch] as f32 / 255.0);
            c[i * 3 + ch] = x;
            max = max.max(x);
        }
    }
    let out = c.iter().map(|&x| (255.0 * (x / max)) as u8).collect();
    RgbImage::from_raw(img.width(), img.height(), out).expect("same size as the input")
}
