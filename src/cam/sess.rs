//! SESS, Saliency Enhancing with Scaling and Sliding (Tyagi et al. 2022, arXiv 2207.01769), as
//! pytorch-grad-cam 1.5.7's `SESS` with its defaults: a meta-method that makes any CAM method
//! robust to the object's scale, to several objects and to distractors.
//!
//! Per image (H×W, preprocessed), with a square window of the shorter side s:
//! 1. the image is resized (bilinear) so its shorter side is s, s + t, s + 2t, ... (t =
//!    round(2s/7), `num_scales` sizes), and a window slides over each size with stride s,
//!    the last window of a row or column shifted back inside;
//! 2. every patch is scored by the class's softmax probability (the request's `--target`
//!    applied to the probabilities, clipped at 0), and weighted by its score over the best
//!    patch's;
//! 3. every patch's map (the base method, normalised at the patch size) times its weight is
//!    pasted where the patch came from, that canvas resized back to H×W;
//! 4. each pixel is the mean of the pasted maps that are positive there (0 where none is),
//!    then the map is smoothed by an 11×11 Gaussian of σ 5 (OpenCV's, borders reflected).
//!
//! The class is chosen on the whole image; the base method explains it on every patch (with
//! the request's score, `--target`, which also scores the windows as pytorch-grad-cam does:
//! applied to their softmax probabilities). Costly by nature: at the defaults 122 windows of
//! the shorter side for a square image, 157 at 4:3, 208 at 16:9, explained `score_batch` at a
//! time.

use rayon::prelude::*;

use super::methods::{choose_classes, explain, CamBatch, CamRequest, ClassSel};
use crate::backend::Backend;
use crate::explain::softmax;
use crate::image::resize_bilinear;
use crate::model::Network;
use crate::{Error, Result, Tensor};

/// SESS's settings (pytorch-grad-cam's `num_scales`; its other parameters at their defaults:
/// the window the shorter side, the stride the window, scale step 2/7 of the window, no
/// pre-filtering, mean fusion with θ = 0, smoothing on, softmax scores).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sess {
    pub num_scales: usize,
}

impl Default for Sess {
    fn default() -> Self {
        Sess { num_scales: 12 }
    }
}

/// The options SESS refuses (shared with the command line, which checks up front).
pub fn check_combination(guided: bool, aug_smooth: bool, finer: bool) -> Result<()> {
    for (on, what) in [
        (guided, "--guided"),
        (aug_smooth, "--aug-smooth"),
        (finer, "--finer"),
    ] {
        if on {
            return Err(Error::Invalid(format!(
                "--sess does not combine with {what} (it explains patches of rescaled copies)"
            )));
        }
    }
    Ok(())
}

/// One patch: where it was cut (x, y) and the size of the image it was cut from.
#[derive(Clone, Copy)]
struct Cut {
    x: usize,
    y: usize,
    scaled: (usize, usize),
}

/// [`super::explain`] with SESS: `maps` [N, H, W] at the input size, `weights` [N, 0].
pub(crate) fn explain_sess<B: Backend>(
    net: &Network<B>,
    x: B::Tensor,
    req: &CamRequest,
    sess: &Sess,
) -> Result<CamBatch> {
    check_combination(req.guided, req.aug_smooth, req.finer.is_some())?;
    // (The scales' sizes are listed before their size is checked: a bound on their number
    // keeps that list small.)
    if sess.num_scales == 0 || sess.num_scales > MAX_SCALES {
        return Err(Error::Invalid(format!(
            "SESS takes 1 to {MAX_SCALES} scales, not {}",
            sess.num_scales
        )));
    }
    let be = net.backend();
    let host = be.download(&x)?;
    let (n, c, h, w) = host.dims4();
    let logits = net.forward(x)?;
    let classes = choose_classes(&logits, req.classes, net.num_classes())?;
    let mut maps = Vec::with_capacity(n * h * w);
    for (i, &class) in classes.iter().enumerate() {
        let image = &host.data()[i * c * h * w..(i + 1) * c * h * w];
        maps.extend(sess_one(net, image, (c, h, w), class, req, sess)?);
    }
    Ok(CamBatch {
        logits,
        classes,
        weights: Tensor::zeros([n, 0]),
        maps: Tensor::new([n, h, w], maps),
        layer_map: false,
        guided: None,
        compared: vec![Vec::new(); n],
    })
}

/// The largest rescaled copy SESS makes (values), beyond which it refuses: a native-size
/// photograph's copies reach 4.1 times its shorter side (about 2.5 GB at 3000×4000).
const MAX_SCALED_VALUES: usize = 1 << 27;

/// The most windows SESS explains for one image, as a multiple of a square input's at as many
/// scales: an aspect ratio of about 35:1 (a 10:1 panorama makes about 9 times a square's).
const MAX_THINNESS: usize = 32;

/// What one image's SESS sums so far: the maps times their scores, and plain (pytorch-grad-cam
/// weighs every map 1 when all scores are 0), each with its count of positive values.
struct Fusion {
    total: Vec<f32>,
    count: Vec<f32>,
    plain: Vec<f32>,
    plain_count: Vec<f32>,
    best: f32,
}

/// How many of an [C, H, W] input's windows (min(H, W) square) go through the network at
/// once: `score_batch`, fewer where they are large (at most about 128 MB of them), one at least.
pub fn windows_per_pass(score_batch: usize, c: usize, (h, w): (usize, usize)) -> usize {
    let win = h.min(w);
    score_batch.clamp(1, ((1usize << 25) / (c * win * win).max(1)).max(1))
}

/// One image [C, H, W]: its SESS map [H·W] (before the final normalisation). The windows are
/// cut one scale at a time and explained `score_batch` at a time, never all held at once.
fn sess_one<B: Backend>(
    net: &Network<B>,
    image: &[f32],
    (c, h, w): (usize, usize, usize),
    class: usize,
    req: &CamRequest,
    sess: &Sess,
) -> Result<Vec<f32>> {
    let win = h.min(w);
    let chunk = windows_per_pass(req.score_batch, c, (h, w));
    let scales = scaled_sizes((h, w), win, sess.num_scales);
    let &(lh, lw) = scales.last().expect("one scale at least");
    if c * lh * lw > MAX_SCALED_VALUES {
        return Err(Error::Invalid(format!(
            "SESS: a {h}x{w} input is rescaled up to {lh}x{lw}, too large to explain window \
             by window; give a smaller --size or fewer --sess-scales"
        )));
    }
    // A thin image (2×65000) has a window per pixel pair along its length at every scale:
    // refused past MAX_THINNESS times a square input's windows at as many scales.
    let count = |scales: &[(usize, usize)]| -> usize {
        (scales.iter())
            .map(|&(sh, sw)| window_starts(sh, win, win).len() * window_starts(sw, win, win).len())
            .sum()
    };
    let (windows, square) = (
        count(&scales),
        count(&scaled_sizes((win, win), win, sess.num_scales)),
    );
    if windows > MAX_THINNESS * square {
        return Err(Error::Invalid(format!(
            "SESS: a {h}x{w} input makes {windows} windows of {win}x{win} over its {} scales, \
             each explained by the network (a square input makes {square}; at most \
             {MAX_THINNESS} times that are taken): too thin for SESS; crop it, or give a fixed \
             --size",
            sess.num_scales
        )));
    }
    // Each window's map times its score, pasted and resized back; the positive values summed
    // and counted. The weights are the scores over the best one: resizing is linear and a
    // positive factor keeps the signs, so dividing the sums by the best score at the end is
    // the same (a score of exactly 0 weighs its map out, as in pytorch-grad-cam).
    let mut fusion = Fusion {
        total: vec![0f32; h * w],
        count: vec![0f32; h * w],
        plain: vec![0f32; h * w],
        plain_count: vec![0f32; h * w],
        best: 0.0,
    };
    let mut batch: Vec<f32> = Vec::with_capacity(chunk * c * win * win);
    let mut cuts: Vec<Cut> = Vec::with_capacity(chunk);
    for &(sh, sw) in &scales {
        let planes: Vec<Vec<f32>> = (0..c)
            .map(|ch| resize_bilinear(&image[ch * h * w..(ch + 1) * h * w], h, w, 1, sh, sw))
            .collect();
        for y in window_starts(sh, win, win) {
            for x in window_starts(sw, win, win) {
                for plane in &planes {
                    for r in 0..win {
                        let at = (y + r) * sw + x;
                        batch.extend_from_slice(&plane[at..at + win]);
                    }
                }
                cuts.push(Cut {
                    x,
                    y,
                    scaled: (sh, sw),
                });
                if cuts.len() == chunk {
                    explain_windows(net, &batch, &cuts, (c, h, w), class, req, &mut fusion)?;
                    batch.clear();
                    cuts.clear();
                }
            }
        }
    }
    if !cuts.is_empty() {
        explain_windows(net, &batch, &cuts, (c, h, w), class, req, &mut fusion)?;
    }
    let (sum, n, scale) = match fusion.best > 0.0 {
        true => (&fusion.total, &fusion.count, fusion.best),
        false => (&fusion.plain, &fusion.plain_count, 1.0),
    };
    let mean: Vec<f32> = (sum.iter().zip(n))
        .map(|(t, n)| if *n > 0.0 { t / (n * scale) } else { 0.0 })
        .collect();
    Ok(gaussian_blur_11(&mean, h, w, 5.0))
}

/// Explains a batch of windows ([m][C][win][win]) for `class` and adds their maps to `fusion`.
/// A window's score is the request's target applied to its softmax probabilities, clipped at
/// 0 (pytorch-grad-cam's `target(softmax(output))`): for the logit target the class's
/// probability.
fn explain_windows<B: Backend>(
    net: &Network<B>,
    batch: &[f32],
    cuts: &[Cut],
    (c, h, w): (usize, usize, usize),
    class: usize,
    req: &CamRequest,
    fusion: &mut Fusion,
) -> Result<()> {
    let m = cuts.len();
    let win = h.min(w);
    let sub_classes = ClassSel::PerImage(vec![class; m]);
    let sub = CamRequest {
        classes: &sub_classes,
        sess: None,
        ..req.clone()
    };
    let be = net.backend();
    let x = be.upload(Tensor::new([m, c, win, win], batch.to_vec()))?;
    let out = explain(net, x, &sub)?;
    let nc = out.logits.shape()[1];
    // Each window's score and map pasted back, in parallel; summed in window order.
    let placed: Vec<(f32, Vec<f32>)> = (cuts.par_iter().enumerate())
        .map(|(j, cut)| {
            let z = &out.logits.data()[j * nc..(j + 1) * nc];
            let p = softmax(z);
            let wt = (req.target.score(&p, class) as f32).max(0.0);
            // The base method's output, resized to the window.
            let cam = out.upsampled(j, (win, win));
            let (sh, sw) = cut.scaled;
            let mut canvas = vec![0f32; sh * sw];
            for (r, row) in cam.chunks(win).enumerate() {
                let at = (cut.y + r) * sw + cut.x;
                canvas[at..at + win].copy_from_slice(row);
            }
            (wt, resize_bilinear(&canvas, sh, sw, 1, h, w))
        })
        .collect();
    for (wt, back) in placed {
        fusion.best = fusion.best.max(wt);
        for (p, &v) in back.iter().enumerate() {
            if v > 0.0 {
                fusion.plain[p] += v;
                fusion.plain_count[p] += 1.0;
                // The weighted copy is positive where this one is, unless the score is 0.
                if wt > 0.0 {
                    fusion.total[p] += v * wt;
                    fusion.count[p] += 1.0;
                }
            }
        }
    }
    Ok(())
}

/// The most scales taken (pytorch-grad-cam's default is 12; the largest copy's size is
/// checked against `MAX_SCALED_VALUES` as well).
const MAX_SCALES: usize = 4096;

/// The sizes of the rescaled copies: torchvision's resize to an int makes the shorter side
/// that int and the longer its proportional size, truncated; the ints start at the window and
/// grow by round(2/7 of it).
fn scaled_sizes((h, w): (usize, usize), win: usize, num_scales: usize) -> Vec<(usize, usize)> {
    let step = round_half_even(win as f64 * 2.0 / 7.0);
    (0..num_scales)
        .map(|i| {
            let scale = win + step * i;
            if h <= w {
                (scale, (scale as f64 * w as f64 / h as f64) as usize)
            } else {
                ((scale as f64 * h as f64 / w as f64) as usize, scale)
            }
        })
        .collect()
}

/// pytorch-grad-cam's window starts along a side: every `step` from 0, the last one moved
/// back so the window ends at the border.
fn window_starts(length: usize, step: usize, win: usize) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut s = 0;
    while s < length {
        if s + win >= length {
            starts.push(length.saturating_sub(win));
            break;
        }
        starts.push(s);
        s += step;
    }
    starts
}

/// Python's round(): halves to even.
fn round_half_even(v: f64) -> usize {
    let r = v.round();
    let r = if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    };
    r.max(0.0) as usize
}

/// `cv2.GaussianBlur(m, (11, 11), sigma)` on an (h, w) f32 map: the separable kernel
/// exp(−d²/2σ²) normalised, borders reflected without repeating the edge (BORDER_REFLECT_101).
fn gaussian_blur_11(m: &[f32], h: usize, w: usize, sigma: f64) -> Vec<f32> {
    let k: Vec<f64> = (0..11)
        .map(|i| (-((i as f64 - 5.0).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    let k: Vec<f64> = k.iter().map(|v| v / sum).collect();
    let reflect = |i: isize, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let n = n as isize;
        let mut i = i;
        while i < 0 || i >= n {
            i = if i < 0 { -i } else { 2 * (n - 1) - i };
        }
        i as usize
    };
    let mut rows = vec![0f64; h * w];
    for y in 0..h {
        for x in 0..w {
            rows[y * w + x] = (0..11)
                .map(|t| k[t] * m[y * w + reflect(x as isize + t as isize - 5, w)] as f64)
                .sum();
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (0..11)
                .map(|t| k[t] * rows[reflect(y as isize + t as isize - 5, h) * w + x])
                .sum::<f64>() as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_rounding_follow_pytorch_grad_cam() {
        assert_eq!(window_starts(64, 64, 64), [0]);
        assert_eq!(window_starts(82, 64, 64), [0, 18]);
        assert_eq!(window_starts(262, 64, 64), [0, 64, 128, 192, 198]);
        assert_eq!(window_starts(128, 64, 64), [0, 64]);
        // round(224 * 2 / 7) = 64; round(2.5) = 2 and round(3.5) = 4, as Python.
        assert_eq!(round_half_even(64.0), 64);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(18.285), 18);
        // Shorter side first, the longer one proportional and truncated (torchvision).
        assert_eq!(
            scaled_sizes((80, 64), 64, 3),
            [(80, 64), (102, 82), (125, 100)]
        );
        assert_eq!(scaled_sizes((75, 97), 75, 2), [(75, 97), (96, 124)]);
    }

    /// The blur keeps a constant map and its mass, and reflects at the border: a spike at a
    /// corner spreads as the kernel's outer product, mirrored.
    #[test]
    fn gaussian_blur_is_opencvs() {
        let (h, w) = (13, 17);
        let flat = gaussian_blur_11(&vec![0.5; h * w], h, w, 5.0);
        assert!(flat.iter().all(|v| (v - 0.5).abs() < 1e-6));
        let mut spike = vec![0f32; h * w];
        spike[6 * w + 8] = 1.0;
        let out = gaussian_blur_11(&spike, h, w, 5.0);
        let total: f32 = out.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        let k = |d: f64| (-(d * d) / 50.0).exp();
        let s: f64 = (-5..=5).map(|d| k(d as f64)).sum();
        let want = (k(1.0) / s) * (k(2.0) / s);
        assert!((out[7 * w + 10] as f64 - want).abs() < 1e-7);
        // At a border, reflect-101: the value one step outside is the one a step inside.
        let mut edge = vec![0f32; h * w];
        edge[1] = 1.0; // row 0, column 1
        let out = gaussian_blur_11(&edge, h, w, 5.0);
        // (0, 0) sees column 1 through offsets -1 (reflected) and +1.
        let want0 = 2.0 * (k(1.0) / s) * (k(0.0) / s);
        assert!(
            (out[0] as f64 - want0).abs() < 1e-7,
            "{} vs {want0}",
            out[0]
        );
    }
}
