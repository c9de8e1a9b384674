//! The evaluation measures as pure functions of a map, so each is tested on hand-made maps.

use crate::{Error, Result};

/// Inclusive pixel box [x0, y0, x1, y1].
pub type BoxPx = [f32; 4];

/// An error unless `values` holds h·w of them (a map or a mask of an h×w image).
fn check_hw(op: &str, what: &str, values: usize, (h, w): (usize, usize)) -> Result<()> {
    match h.checked_mul(w) == Some(values) {
        true => Ok(()),
        false => Err(Error::Invalid(format!(
            "{op}: {what} of {values} values for {h}×{w} pixels"
        ))),
    }
}

/// The paper's §4.1 box: threshold the map at `frac` of its max, take the largest
/// 8-connected segment above it, and return that segment's bounding box. None for an
/// all-zero map; an error for a map that is not h×w.
pub fn threshold_box(map: &[f32], (h, w): (usize, usize), frac: f32) -> Result<Option<BoxPx>> {
    check_hw("threshold_box", "a map", map.len(), (h, w))?;
    let max = map.iter().copied().fold(0f32, f32::max);
    if max <= 0.0 {
        return Ok(None);
    }
    let thr = frac * max;
    let mut label = vec![0u32; h * w];
    let mut best: Option<(usize, BoxPx)> = None;
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..h * w {
        if map[start] < thr || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let (mut count, mut bx) = (0usize, [f32::MAX, f32::MAX, 0f32, 0f32]);
        while let Some(p) = stack.pop() {
            let (y, x) = (p / w, p % w);
            count += 1;
            bx = [
                bx[0].min(x as f32),
                bx[1].min(y as f32),
                bx[2].max(x as f32),
                bx[3].max(y as f32),
            ];
            for dy in -1i32..=1 {
                for dx in -1i32..=1 {
                    let (ny, nx) = (y as i32 + dy, x as i32 + dx);
                    if ny < 0 || nx < 0 || ny >= h as i32 || nx >= w as i32 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if label[q] == 0 && map[q] >= thr {
                        label[q] = next;
                        stack.push(q);
                    }
                }
            }
        }
        if best.is_none_or(|(c, _)| count > c) {
            best = Some((count, bx));
        }
    }
    Ok(best.map(|(_, b)| b))
}

/// Intersection over union of inclusive pixel boxes.
pub fn iou(a: &BoxPx, b: &BoxPx) -> f32 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    let inter = ix * iy;
    let area = |b: &BoxPx| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    inter / (area(a) + area(b) - inter)
}

/// Which pixels belong to the object: the mask where given (an error unless it is h×w),
/// else the union of the boxes (clipped to the image).
pub fn object_mask(
    boxes: &[BoxPx],
    mask: Option<&[bool]>,
    (h, w): (usize, usize),
) -> Result<Vec<bool>> {
    if let Some(m) = mask {
        check_hw("object_mask", "a mask", m.len(), (h, w))?;
        return Ok(m.to_vec());
    }
    let Some(len) = h.checked_mul(w) else {
        return Err(Error::Invalid(format!(
            "object_mask: {h}×{w} pixels overflow"
        )));
    };
    let mut m = vec![false; len];
    for b in boxes {
        // (A box wholly left of or above the image, or of NaN corners, covers nothing; a
        // cast would clamp it onto the first column or row.)
        if len == 0 || !(b[2] >= 0.0 && b[3] >= 0.0) {
            continue;
        }
        for y in (b[1].max(0.0) as usize)..=(b[3] as usize).min(h.saturating_sub(1)) {
            for x in (b[0].max(0.0) as usize)..=(b[2] as usize).min(w.saturating_sub(1)) {
                m[y * w + x] = true;
            }
        }
    }
    Ok(m)
}

/// Pointing game (Zhang et al. 2016): a hit when the map's maximum lies on the object or
/// within `tolerance` pixels of it; an error unless the map and the object are h×w.
pub fn pointing_hit(
    map: &[f32],
    object: &[bool],
    (h, w): (usize, usize),
    tolerance: usize,
) -> Result<bool> {
    check_hw("pointing_hit", "a map", map.len(), (h, w))?;
    check_hw("pointing_hit", "an object mask", object.len(), (h, w))?;
    if map.is_empty() {
        return Ok(false);
    }
    let arg = map
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > map[best] { i } else { best });
    let (py, px) = ((arg / w) as i64, (arg % w) as i64);
    let t = i64::try_from(tolerance).unwrap_or(i64::MAX);
    for y in py.saturating_sub(t).max(0)..=py.saturating_add(t).min(h as i64 - 1) {
        for x in px.saturating_sub(t).max(0)..=px.saturating_add(t).min(w as i64 - 1) {
            let near = (y - py).pow(2) + (x - px).pow(2) <= t.saturating_mul(t);
            if near && object[y as usize * w + x as usize] {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Share of the map's mass on the object (the energy-based pointing game); 0 for an
/// all-zero map.
pub fn mass_inside(map: &[f32], object: &[bool]) -> f32 {
    let total: f64 = map.iter().map(|&v| v.max(0.0) as f64).sum();
    if total == 0.0 {
        return 0.0;
    }
    let inside: f64 = map
        .iter()
        .zip(object)
        .filter(|(_, &o)| o)
        .map(|(&v, _)| v.max(0.0) as f64)
        .sum();
    (inside / total) as f32
}

/// Ranks with ties sharing their mean rank.
fn ranks(v: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0f64; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0;
        for k in i..=j {
            r[idx[k]] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation; 0 when either side is constant.
pub fn spearman(a: &[f32], b: &[f32]) -> f32 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return 0.0;
    }
    (cov / (va * vb).sqrt()) as f32
}

/// pytorch-grad-cam's `Coherency` of two maps: (Pearson's ρ + 1) / 2, ρ with its 1e-8 in the
/// denominator (0 for a flat map), so 1 for maps that agree up to scale and offset.
pub fn coherency(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&v| v as f64).sum::<f64>() / n,
        b.iter().map(|&v| v as f64).sum::<f64>() / n,
    );
    let (mut cov, mut va, mut vb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        cov += dx * dy;
        va += dx * dx;
        vb += dy * dy;
    }
    let d = (n - 1.0).max(1.0);
    let rho = (cov / d) / ((va / d).sqrt() * (vb / d).sqrt() + 1e-8);
    ((rho + 1.0) / 2.0) as f32
}

/// pytorch-grad-cam's `Complexity`: the map's mean absolute value (0 for an empty map, 1 for
/// one that keeps everything).
pub fn complexity(map: &[f32]) -> f32 {
    (map.iter().map(|&v| v.abs() as f64).sum::<f64>() / map.len().max(1) as f64) as f32
}

/// Area under a curve sampled at equal steps over [0, 1] (trapezoid rule).
pub fn auc(curve: &[f32]) -> f32 {
    if curve.len() < 2 {
        return curve.first().copied().unwrap_or(0.0);
    }
    let steps = (curve.len() - 1) as f32;
    curve.windows(2).map(|p| (p[0] + p[1]) / 2.0).sum::<f32>() / steps
}

/// The centre-prior baseline map: a Gaussian centred on the image, σ = a quarter of each side.
pub fn centre_prior((h, w): (usize, usize)) -> Vec<f32> {
    let (sy, sx) = (h as f32 / 4.0, w as f32 / 4.0);
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    (0..h * w)
        .map(|i| {
            let (y, x) = ((i / w) as f32, (i % w) as f32);
            (-((y - cy) / sy).powi(2) / 2.0 - ((x - cx) / sx).powi(2) / 2.0).exp()
        })
        .collect()
}

/// The width of the border band [`MapStats::border_mass`] measures, as a fraction of each
/// side: with 10 % on every side the band is 36 % of the image.
pub const BORDER: f32 = 0.1;

/// Where a map puts its weight, in a few numbers, so a data set's explanations can be sorted
/// and filtered without opening every overlay (a model that looks at watermarks, frames or
/// backgrounds shows a high border mass or a peak far from the object). Positions are pixel
/// centres as fractions of the width and height: (0, 0) is the top-left corner, (1, 1) the
/// bottom-right one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapStats {
    /// The highest value's position, (x, y); the first in row-major order on ties.
    pub peak: (f32, f32),
    /// The centre of mass, (x, y).
    pub centroid: (f32, f32),
    /// Share of the mass in the band within [`BORDER`] of an edge (about 0.36 for a uniform
    /// map: exactly the band's share of the pixels).
    pub border_mass: f32,
    /// Share of the pixels at half the map's maximum or more: how spread the explanation is.
    pub area_half: f32,
}

/// The statistics of a non-negative map of `(h, w)` pixels; `None` for an all-zero map
/// (pytorch-grad-cam's normalisation gives one when no channel counts for the class) or one
/// whose length is not `h * w`.
pub fn map_stats(map: &[f32], (h, w): (usize, usize)) -> Option<MapStats> {
    if map.is_empty() || map.len() != h * w {
        return None;
    }
    let frac = |i: usize, n: usize| (i as f32 + 0.5) / n as f32;
    let mut best = 0;
    let (mut total, mut sx, mut sy) = (0f64, 0f64, 0f64);
    for (i, &v) in map.iter().enumerate() {
        if v > map[best] {
            best = i;
        }
        let v = v.max(0.0) as f64;
        total += v;
        sx += v * frac(i % w, w) as f64;
        sy += v * frac(i / w, h) as f64;
    }
    let max = map[best];
    if total == 0.0 || max <= 0.0 {
        return None;
    }
    let border: Vec<bool> = (0..h * w)
        .map(|i| {
            let (x, y) = (frac(i % w, w), frac(i / w, h));
            x.min(1.0 - x) < BORDER || y.min(1.0 - y) < BORDER
        })
        .collect();
    Some(MapStats {
        peak: (frac(best % w, w), frac(best / w, h)),
        centroid: ((sx / total) as f32, (sy / total) as f32),
        border_mass: mass_inside(map, &border),
        area_half: map.iter().filter(|&&v| v >= max / 2.0).count() as f32 / map.len() as f32,
    })
}
