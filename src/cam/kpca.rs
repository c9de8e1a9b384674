//! KPCA-CAM (Karmani et al. 2024, arXiv 2410.00267), as pytorch-grad-cam 1.5.7's `KPCA_CAM`
//! with its defaults: Eigen-CAM's first principal component taken in a kernel's feature space
//! instead (scikit-learn's `KernelPCA(n_components=1, kernel="sigmoid")`). No class, no
//! gradients.
//!
//! Per image, with the layer's [K, h, w] values viewed as M = [h·w, K] (a row per pixel, each
//! channel minus its mean over the pixels): the kernel matrix G[p, q] = tanh(γ ⟨M_p, M_q⟩ + 1)
//! with γ = 1/K, centred in feature space (G − 1G − G1 + 1G1, 1 the matrix of 1/(h·w)); its
//! largest eigenvalue λ and unit eigenvector v; the map is v·√λ (before the caller's ReLU).
//! v's sign is scikit-learn's: its entry of largest magnitude is positive. The eigenpair comes
//! from the Lanczos iteration Eigen-CAM uses, in f64 (scikit-learn computes in the
//! activations' f32).

use rayon::prelude::*;

use super::eigen::lanczos_top;
use crate::Tensor;

/// KPCA-CAM's projections of a batch `x` [N, K, h, w]: [N, h, w] before the ReLU. NaNs count
/// as zero (as pytorch-grad-cam's). An image whose centred kernel has no eigenvalue clear of
/// rounding (a flat layer) gets a zero map. The kernel is a dense (h·w)² matrix per image.
pub fn kpca_projection(x: &Tensor) -> Tensor {
    let (n, k, h, w) = x.dims4();
    let hw = h * w;
    if k == 0 || hw == 0 {
        return Tensor::zeros([n, h, w]);
    }
    let per: Vec<Vec<f32>> = x
        .data()
        .par_chunks(k * hw)
        .map(|img| project_one(img, k, hw))
        .collect();
    Tensor::new([n, h, w], per.concat())
}

/// One image: `x` is [K, hw] channel-major; returns the projection [hw].
fn project_one(x: &[f32], k: usize, hw: usize) -> Vec<f32> {
    // Centred channels, pixel-major: m[p][ch] = x[ch][p] - mean_p x[ch][p].
    let mut m = vec![0f64; hw * k];
    for (ch, src) in x.chunks(hw).enumerate() {
        let val = |s: f32| if s.is_nan() { 0.0 } else { s as f64 };
        let mean = src.iter().map(|&s| val(s)).sum::<f64>() / hw as f64;
        for (p, &s) in src.iter().enumerate() {
            m[p * k + ch] = val(s) - mean;
        }
    }
    // The sigmoid kernel over pixel pairs (symmetric: the upper half, mirrored).
    let gamma = 1.0 / k as f64;
    let mut g = vec![0f64; hw * hw];
    for p in 0..hw {
        let mp = &m[p * k..(p + 1) * k];
        for q in p..hw {
            let mq = &m[q * k..(q + 1) * k];
            let dot: f64 = mp.iter().zip(mq).map(|(a, b)| a * b).sum();
            let v = (gamma * dot + 1.0).tanh();
            g[p * hw + q] = v;
            g[q * hw + p] = v;
        }
    }
    // Centred in feature space: G[p,q] - row mean p - column mean q + overall mean.
    let means: Vec<f64> = g
        .chunks(hw)
        .map(|r| r.iter().sum::<f64>() / hw as f64)
        .collect();
    let all = means.iter().sum::<f64>() / hw as f64;
    for (p, row) in g.chunks_mut(hw).enumerate() {
        for (q, v) in row.iter_mut().enumerate() {
            *v += all - means[p] - means[q];
        }
    }
    let apply = |v: &[f64]| -> Vec<f64> {
        g.chunks(hw)
            .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
            .collect()
    };
    let (lambda, mut v) = lanczos_top(hw, apply);
    // The all-ones vector has eigenvalue 0, so the largest is ≥ 0 but for rounding; one
    // within rounding of 0 has a noise eigenvector (scikit-learn would return that noise).
    let scale = g.iter().fold(0f64, |s, v| s.max(v.abs())) * hw as f64;
    if lambda <= 1e-12 * scale {
        return vec![0.0; hw];
    }
    // The entry of largest magnitude positive (the first one on ties, as np.argmax).
    let at = (0..hw).fold(
        0,
        |best, i| if v[i].abs() > v[best].abs() { i } else { best },
    );
    if v[at] < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
    let root = lambda.max(0.0).sqrt();
    v.iter().map(|x| (x * root) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synth::Rng;

    /// Against a dense reference: the centred kernel built independently, its top eigenvector
    /// by power iteration on G + sI (s bounding the spectrum, so the largest algebraic
    /// eigenvalue dominates), the sign rule, and the eigen equation G·v = λ·v.
    #[test]
    fn projection_is_the_top_eigenvector_of_the_centred_kernel() {
        let mut rng = Rng::new(5);
        let (k, h, w) = (6, 3, 4);
        let hw = h * w;
        let x = rng.tensor(&[1, k, h, w], -1.0, 2.0);
        let got = kpca_projection(&x);
        let d = x.data();
        let feat = |p: usize, ch: usize| {
            let mean = (0..hw).map(|q| d[ch * hw + q] as f64).sum::<f64>() / hw as f64;
            d[ch * hw + p] as f64 - mean
        };
        let kern = |p: usize, q: usize| {
            let dot: f64 = (0..k).map(|ch| feat(p, ch) * feat(q, ch)).sum();
            (dot / k as f64 + 1.0).tanh()
        };
        let raw: Vec<f64> = (0..hw * hw).map(|i| kern(i / hw, i % hw)).collect();
        let n = hw as f64;
        let c: Vec<f64> = (0..hw * hw)
            .map(|i| {
                let (p, q) = (i / hw, i % hw);
                let rp: f64 = (0..hw).map(|j| raw[p * hw + j]).sum::<f64>() / n;
                let cq: f64 = (0..hw).map(|j| raw[j * hw + q]).sum::<f64>() / n;
                let all: f64 = raw.iter().sum::<f64>() / (n * n);
                raw[i] - rp - cq + all
            })
            .collect();
        // Gershgorin: every eigenvalue lies within the largest absolute row sum.
        let s = (c.chunks(hw))
            .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
            .fold(0f64, f64::max);
        let mut v = vec![1.0f64; hw];
        for _ in 0..5000 {
            let mut nv: Vec<f64> = (0..hw)
                .map(|p| (0..hw).map(|q| c[p * hw + q] * v[q]).sum::<f64>() + s * v[p])
                .collect();
            let norm = nv.iter().map(|x| x * x).sum::<f64>().sqrt();
            nv.iter_mut().for_each(|x| *x /= norm);
            v = nv;
        }
        let lambda: f64 = (0..hw)
            .map(|p| v[p] * (0..hw).map(|q| c[p * hw + q] * v[q]).sum::<f64>())
            .sum();
        let at = (0..hw).fold(0, |b, i| if v[i].abs() > v[b].abs() { i } else { b });
        let sign = v[at].signum();
        for (p, vp) in v.iter().enumerate() {
            let want = sign * vp * lambda.sqrt();
            let diff = (got.data()[p] as f64 - want).abs();
            assert!(
                diff < 1e-5 * (1.0 + lambda.sqrt()),
                "pixel {p}: {} vs {want}",
                got.data()[p]
            );
        }
    }

    /// A layer that is the same at every pixel has a centred kernel of rounding noise: the
    /// map is zero, not that noise stretched to full contrast.
    #[test]
    fn a_flat_layer_gives_a_zero_map() {
        let (k, hw) = (5, 20 * 20);
        let x: Vec<f32> = (0..k * hw).map(|i| 0.3 + (i / hw) as f32).collect();
        let got = kpca_projection(&Tensor::new([1, k, 20, 20], x));
        assert!(got.data().iter().all(|&v| v == 0.0));
    }
}
