//! The CAM-family ops beyond Grad-CAM's two (grad_pool, weighted_sum_relu). They are cheap
//! next to the network, so the CPU has one implementation, parallel over images, written
//! straight from pytorch-grad-cam 1.5.7's formulas; it is the oracle for the CUDA kernels.

use rayon::prelude::*;

use crate::backend::{relu, ElementRule, FullGradBy, WeightRule};
use crate::cam::postprocess::min_max;
use crate::image::resize_bilinear;
use crate::Tensor;

pub fn cam_weights(rule: WeightRule, a: &Tensor, g: &Tensor) -> Tensor {
    let (n, k, h, w) = a.dims4();
    let hw = h * w;
    let data = a
        .data()
        .par_chunks(hw)
        .zip(g.data().par_chunks(hw))
        .map(|(a, g)| {
            // Σ_ij A, in f32 as numpy sums a float32 array.
            let sum_a: f32 = a.iter().sum();
            match rule {
                WeightRule::GradCamPlusPlus => g
                    .iter()
                    .map(|&g| {
                        if g == 0.0 {
                            return 0.0;
                        }
                        let g2 = g * g;
                        let aij = g2 / (2.0 * g2 + sum_a * (g2 * g) + 1e-6);
                        relu(g) * aij
                    })
                    .sum::<f32>(),
                WeightRule::XGradCam => {
                    let denom = sum_a + 1e-7;
                    a.iter().zip(g).map(|(&a, &g)| g * a / denom).sum::<f32>()
                }
                WeightRule::AffineDrop => a.iter().zip(g).map(|(&a, &g)| g * a).sum::<f32>(),
            }
        })
        .collect();
    Tensor::new([n, k], data)
}

/// See [`crate::backend::Backend::fem_weights`]. Mean and variance in f64 (two passes, as
/// numpy's `std`), so the threshold is as exact as the activations allow; relative to the
/// plane's first value, as the kernel (a constant plane: nothing above, for any k).
pub fn fem_weights(a: &Tensor, k_sigma: f32) -> Tensor {
    let (n, k, h, w) = a.dims4();
    let hw = h * w;
    if hw == 0 {
        return Tensor::zeros([n, k]);
    }
    let data = (a.data().par_chunks(hw).take(n * k))
        .map(|plane| {
            let len = plane.len() as f64;
            let a0 = plane[0] as f64;
            let mean = plane.iter().map(|&v| v as f64 - a0).sum::<f64>() / len;
            let var = (plane.iter())
                .map(|&v| (v as f64 - a0 - mean).powi(2))
                .sum::<f64>()
                / len;
            let th = mean + k_sigma as f64 * var.sqrt();
            let above = plane.iter().filter(|&&v| v as f64 - a0 > th).count();
            (above as f64 / len) as f32
        })
        .collect();
    Tensor::new([n, k], data)
}

pub fn elementwise_cam_relu(rule: ElementRule, a: &Tensor, g: &Tensor) -> Tensor {
    let (n, k, h, w) = a.dims4();
    let hw = h * w;
    let mut m = Tensor::zeros([n, h, w]);
    m.data_mut()
        .par_chunks_mut(hw)
        .enumerate()
        .for_each(|(ni, out)| {
            for ki in 0..k {
                let off = (ni * k + ki) * hw;
                let (a, g) = (&a.data()[off..off + hw], &g.data()[off..off + hw]);
                for ((o, &a), &g) in out.iter_mut().zip(a).zip(g) {
                    *o += rule.term(g, a);
                }
            }
            out.iter_mut().for_each(|v| *v = relu(*v));
        });
    m
}

/// Bilinear resize with `align_corners=True`: output index d samples d·(in-1)/(out-1).
fn upsample_align_corners(
    src: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let axis = |n: usize, o: usize| -> Vec<(usize, usize, f32)> {
        let scale = if o > 1 {
            (n - 1) as f32 / (o - 1) as f32
        } else {
            0.0
        };
        (0..o)
            .map(|d| {
                let s = d as f32 * scale;
                let i0 = (s.floor() as usize).min(n - 1);
                let i1 = (i0 + 1).min(n - 1);
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let (ty, tx) = (axis(h, oh), axis(w, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, fy) in &ty {
        for &(x0, x1, fx) in &tx {
            let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
            let bot = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
            out.push(top * (1.0 - fy) + bot * fy);
        }
    }
    out
}

pub fn score_cam_inputs(x: &Tensor, a: &Tensor, (k0, k1): (usize, usize)) -> Tensor {
    let (n, c, hh, ww) = x.dims4();
    let (_, k, h, w) = a.dims4();
    let kc = k1 - k0;
    let per = c * hh * ww;
    let mut out = Tensor::zeros([n * kc, c, hh, ww]);
    out.data_mut()
        .par_chunks_mut(per)
        .enumerate()
        .for_each(|(i, dst)| {
            let (ni, ki) = (i / kc, k0 + i % kc);
            let plane = &a.data()[(ni * k + ki) * h * w..(ni * k + ki + 1) * h * w];
            let mut u = upsample_align_corners(plane, (h, w), (hh, ww));
            let (lo, hi) = u
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                    (l.min(v), h.max(v))
                });
            let range = hi - lo + 1e-8;
            u.iter_mut().for_each(|v| *v = (*v - lo) / range);
            let img = &x.data()[ni * per..(ni + 1) * per];
            for ci in 0..c {
                let (d, s) = (
                    &mut dst[ci * hh * ww..(ci + 1) * hh * ww],
                    &img[ci * hh * ww..(ci + 1) * hh * ww],
                );
                d.iter_mut()
                    .zip(s)
                    .zip(&u)
                    .for_each(|((d, s), u)| *d = s * u);
            }
        });
    out
}

/// See [`crate::backend::Backend::aug_copies`].
pub fn aug_copies(x: &Tensor, copies: &[(bool, f32)]) -> Tensor {
    let (n, c, h, w) = x.dims4();
    let mut out = Vec::with_capacity(copies.len() * n * c * h * w);
    for &(mirror, factor) in copies {
        for row in x.data().chunks(w.max(1)) {
            match mirror {
                true => out.extend(row.iter().rev().map(|v| v * factor)),
                false => out.extend(row.iter().map(|v| v * factor)),
            }
        }
    }
    Tensor::new([copies.len() * n, c, h, w], out)
}

/// See [`crate::backend::Backend::ablate_channels`].
pub fn ablate_channels(a: &Tensor, (k0, k1): (usize, usize)) -> Tensor {
    let (n, k, h, w) = a.dims4();
    let hw = h * w;
    let mut out = Vec::with_capacity((k1 - k0) * n * k * hw);
    for ablated in k0..k1 {
        for (c, plane) in a.data().chunks(hw.max(1)).enumerate().take(n * k) {
            match c % k == ablated {
                true => out.extend(std::iter::repeat_n(0.0, hw)),
                false => out.extend_from_slice(plane),
            }
        }
    }
    Tensor::new([(k1 - k0) * n, k, h, w], out)
}

/// See [`crate::backend::Backend::full_grad_add`]. A layer's channels are summed before one
/// resize (bilinear resizing is linear; pytorch-grad-cam resizes every channel, then sums).
pub fn full_grad_add(
    total: Option<Tensor>,
    g: &Tensor,
    by: FullGradBy<'_, Tensor>,
    (oh, ow): (usize, usize),
) -> Tensor {
    let (n, k, h, w) = g.dims4();
    let hw = h * w;
    let mut total = total.unwrap_or_else(|| Tensor::zeros([n, oh, ow]));
    total
        .data_mut()
        .par_chunks_mut((oh * ow).max(1))
        .enumerate()
        .for_each(|(i, acc)| {
            let (mut layer, mut plane) = (vec![0f32; hw], vec![0f32; hw]);
            for ch in 0..k {
                let at = (i * k + ch) * hw;
                let grad = &g.data()[at..at + hw];
                match by {
                    FullGradBy::Bias(b) => {
                        (plane.iter_mut().zip(grad)).for_each(|(p, v)| *p = (b[ch] * v).abs())
                    }
                    FullGradBy::Input(x) => (plane.iter_mut().zip(grad))
                        .zip(&x.data()[at..at + hw])
                        .for_each(|((p, v), x)| *p = (x * v).abs()),
                }
                // `normalise_minmax`'s arithmetic, added straight into the layer's sum.
                let (lo, hi) = min_max(&plane);
                let range = hi - lo + 1e-7;
                (layer.iter_mut().zip(&plane)).for_each(|(l, v)| *l += (v - lo) / range);
            }
            let up = resize_bilinear(&layer, h, w, 1, oh, ow);
            acc.iter_mut().zip(up).for_each(|(a, v)| *a += v);
        });
    total
}
