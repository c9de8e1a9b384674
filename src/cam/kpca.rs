//! KPCA-CAM (Karmani et al. 2024, arXiv 2410.00267), as pytorch-grad-cam 1.5.7's `KPCA_CAM`:
//! Eigen-CAM's first principal component taken in a kernel's feature space instead
//! (scikit-learn's `KernelPCA(n_components=1, kernel=..., gamma=...)`, the sigmoid kernel by
//! default). No class, no gradients.
//!
//! Per image, with the layer's [K, h, w] values viewed as M = [h·w, K] (a row per pixel, each
//! channel minus its mean over the pixels): the kernel matrix G[p, q] = κ(M_p, M_q) (by
//! default tanh(γ ⟨M_p, M_q⟩ + 1) with γ = 1/K; see [`KpcaKernel`]), centred in feature space (G − 1G − G1 + 1G1, 1 the matrix of 1/(h·w)); its
//! largest eigenvalue λ and unit eigenvector v; the map is v·√λ (before the caller's ReLU).
//! v's sign is scikit-learn's: its entry of largest magnitude is positive. The eigenpair comes
//! from the Lanczos iteration Eigen-CAM uses, in f64 (scikit-learn computes in the
//! activations' f32).

use rayon::prelude::*;

use super::eigen::lanczos_top;
use crate::{Error, Result, Tensor};

/// scikit-learn's kernels, with its `KernelPCA` defaults (degree 3, coef0 1; γ = 1/K unless
/// given).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KpcaKernel {
    /// tanh(γ ⟨x, y⟩ + 1), pytorch-grad-cam's default.
    #[default]
    Sigmoid,
    /// exp(−γ ‖x − y‖²).
    Rbf,
    /// (γ ⟨x, y⟩ + 1)³.
    Poly,
    /// ⟨x, y⟩ / (‖x‖ ‖y‖), 0 for a zero vector.
    Cosine,
    /// ⟨x, y⟩: plain PCA, Eigen-CAM's map up to its sign.
    Linear,
}

impl KpcaKernel {
    pub const ALL: [KpcaKernel; 5] = [
        KpcaKernel::Sigmoid,
        KpcaKernel::Rbf,
        KpcaKernel::Poly,
        KpcaKernel::Cosine,
        KpcaKernel::Linear,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KpcaKernel::Sigmoid => "sigmoid",
            KpcaKernel::Rbf => "rbf",
            KpcaKernel::Poly => "poly",
            KpcaKernel::Cosine => "cosine",
            KpcaKernel::Linear => "linear",
        }
    }

    pub fn parse(s: &str) -> Result<KpcaKernel> {
        let key = s.to_ascii_lowercase();
        KpcaKernel::ALL
            .into_iter()
            .find(|k| k.name() == key)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown KPCA kernel `{s}`; choose sigmoid, rbf, poly, cosine or linear"
                ))
            })
    }

    /// Whether γ means anything to it.
    pub fn has_gamma(self) -> bool {
        matches!(
            self,
            KpcaKernel::Sigmoid | KpcaKernel::Rbf | KpcaKernel::Poly
        )
    }
}

/// KPCA-CAM's settings (pytorch-grad-cam's `kernel` and `gamma`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Kpca {
    pub kernel: KpcaKernel,
    /// γ; None is scikit-learn's 1/K.
    pub gamma: Option<f64>,
}

impl Kpca {
    /// A finite, positive γ, and only for a kernel that has one.
    pub fn check(&self) -> Result<()> {
        match self.gamma {
            Some(g) if !self.kernel.has_gamma() => Err(Error::Invalid(format!(
                "the {} kernel has no gamma (given {g})",
                self.kernel.name()
            ))),
            Some(g) if !(g.is_finite() && g > 0.0) => Err(Error::Invalid(format!(
                "KPCA gamma must be a finite positive number, not {g}"
            ))),
            _ => Ok(()),
        }
    }
}

/// KPCA-CAM's projections of a batch `x` [N, K, h, w]: [N, h, w] before the ReLU. NaNs count
/// as zero (as pytorch-grad-cam's). An image whose centred kernel has no eigenvalue clear of
/// rounding (a flat layer) gets a zero map. The kernel is a dense (h·w)² matrix per image;
/// one that overflows (the polynomial kernel with a large gamma) is an error naming gamma.
pub fn kpca_projection(x: &Tensor, kpca: &Kpca) -> Result<Tensor> {
    let &[n, k, h, w] = x.shape() else {
        return Err(Error::Invalid(format!(
            "KPCA-CAM: activations of shape {:?}, not [N, K, h, w]",
            x.shape()
        )));
    };
    let hw = h * w;
    if k == 0 || hw == 0 {
        return Ok(Tensor::zeros([n, h, w]));
    }
    let matrix = 8 * (hw as u64).pow(2);
    if matrix > MAX_KERNEL_BYTES {
        return Err(Error::Invalid(format!(
            "KPCA-CAM at a layer of {h}×{w} positions: its kernel between positions is a dense \
             {hw}×{hw} matrix per image ({:.1} GB), more than the {:.1} GB allowed; explain at a \
             smaller --size or at a later (smaller) layer",
            matrix as f64 / 1e9,
            MAX_KERNEL_BYTES as f64 / 1e9
        )));
    }
    // Small kernels an image per thread; large ones an image at a time, each one's rows over
    // the threads (so that the memory is one kernel's, not one per thread).
    let per: Vec<Vec<f32>> = if matrix <= PER_THREAD_KERNEL_BYTES {
        (x.data().par_chunks(k * hw))
            .map(|img| project_one(img, k, hw, kpca, false))
            .collect::<Result<_>>()?
    } else {
        (x.data().chunks(k * hw))
            .map(|img| project_one(img, k, hw, kpca, true))
            .collect::<Result<_>>()?
    };
    Ok(Tensor::new([n, h, w], per.concat()))
}

/// The largest kernel matrix KPCA-CAM builds (16384 positions, a 128×128 layer: ResNet's
/// `conv1` at 224 has 12544); past it, memory and time (several passes over it per image)
/// grow out of reach, as in pytorch-grad-cam (scikit-learn's dense kernel).
const MAX_KERNEL_BYTES: u64 = 2_200_000_000;

/// Kernels up to this size are built an image per thread (a 64×64 layer).
const PER_THREAD_KERNEL_BYTES: u64 = 8 * 4096 * 4096;

/// One image: `x` is [K, hw] channel-major; returns the projection [hw]. `rows_parallel`:
/// the kernel's rows built and multiplied over the threads.
fn project_one(
    x: &[f32],
    k: usize,
    hw: usize,
    kpca: &Kpca,
    rows_parallel: bool,
) -> Result<Vec<f32>> {
    // Centred channels, pixel-major: m[p][ch] = x[ch][p] - mean_p x[ch][p].
    let mut m = vec![0f64; hw * k];
    for (ch, src) in x.chunks(hw).enumerate() {
        let val = |s: f32| if s.is_nan() { 0.0 } else { s as f64 };
        let mean = src.iter().map(|&s| val(s)).sum::<f64>() / hw as f64;
        for (p, &s) in src.iter().enumerate() {
            m[p * k + ch] = val(s) - mean;
        }
    }
    // The kernel over pixel pairs (symmetric: the upper half, mirrored).
    let gamma = kpca.gamma.unwrap_or(1.0 / k as f64);
    let norms: Vec<f64> = (0..hw)
        .map(|p| {
            m[p * k..(p + 1) * k]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let kern = |p: usize, q: usize| -> f64 {
        let (mp, mq) = (&m[p * k..(p + 1) * k], &m[q * k..(q + 1) * k]);
        let dot: f64 = mp.iter().zip(mq).map(|(a, b)| a * b).sum();
        match kpca.kernel {
            KpcaKernel::Sigmoid => (gamma * dot + 1.0).tanh(),
            KpcaKernel::Poly => (gamma * dot + 1.0).powi(3),
            // ‖x − y‖² from the norms; clamped, as rounding can take it below 0.
            KpcaKernel::Rbf => {
                let d2 = norms[p] * norms[p] + norms[q] * norms[q] - 2.0 * dot;
                (-gamma * d2.max(0.0)).exp()
            }
            KpcaKernel::Cosine => match norms[p] * norms[q] {
                0.0 => 0.0,
                nn => dot / nn,
            },
            KpcaKernel::Linear => dot,
        }
    };
    let mut g = vec![0f64; hw * hw];
    if rows_parallel {
        // Whole rows over the threads: symmetric to the bit all the same, as (p, q) and
        // (q, p) multiply and add the same numbers in the same order.
        (g.par_chunks_mut(hw).enumerate()).for_each(|(p, row)| {
            row.iter_mut()
                .enumerate()
                .for_each(|(q, v)| *v = kern(p, q))
        });
    } else {
        // The upper half, mirrored.
        for p in 0..hw {
            for q in p..hw {
                let v = kern(p, q);
                g[p * hw + q] = v;
                g[q * hw + p] = v;
            }
        }
    }
    let overflow = || {
        let gamma = match gamma.abs() {
            g if (1e-4..1e6).contains(&g) => format!("{gamma}"),
            _ => format!("{gamma:e}"),
        };
        Error::Invalid(format!(
            "KPCA-CAM's {:?} kernel overflows on this layer's activations with gamma {gamma}: \
             give a smaller --kpca-gamma (the default is 1 / channels = {})",
            kpca.kernel,
            1.0 / k as f64
        ))
    };
    if g.iter().any(|v| !v.is_finite()) {
        return Err(overflow());
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
        let dot = |row: &[f64]| row.iter().zip(v).map(|(a, b)| a * b).sum();
        match rows_parallel {
            true => g.par_chunks(hw).map(dot).collect(),
            false => g.chunks(hw).map(dot).collect(),
        }
    };
    let (lambda, mut v) = lanczos_top(hw, apply);
    // The all-ones vector has eigenvalue 0, so the largest is ≥ 0 but for rounding; one
    // within rounding of 0 has a noise eigenvector (scikit-learn would return that noise).
    let scale = g.iter().fold(0f64, |s, v| s.max(v.abs())) * hw as f64;
    if lambda <= 1e-12 * scale {
        return Ok(vec![0.0; hw]);
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
    let map: Vec<f32> = v.iter().map(|x| (x * root) as f32).collect();
    // (Finite in f64, past f32's range.)
    match map.iter().all(|x| x.is_finite()) {
        true => Ok(map),
        false => Err(overflow()),
    }
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
        let got = kpca_projection(&x, &Kpca::default()).unwrap();
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

    /// Large kernels are built and multiplied row-parallel an image at a time: the same bits
    /// as the symmetric, one-thread way, for every kernel. A layer whose kernel would pass the
    /// limit is refused, naming its size, before anything is allocated.
    #[test]
    fn large_kernels_row_parallel_and_the_limit() {
        let mut rng = Rng::new(21);
        let (k, hw) = (7, 23 * 19);
        let x = rng.tensor(&[1, k, 23, 19], -1.0, 2.0);
        for kernel in [
            KpcaKernel::Sigmoid,
            KpcaKernel::Rbf,
            KpcaKernel::Poly,
            KpcaKernel::Cosine,
            KpcaKernel::Linear,
        ] {
            let kpca = Kpca {
                kernel,
                gamma: None,
            };
            let one = project_one(x.data(), k, hw, &kpca, false).unwrap();
            let rows = project_one(x.data(), k, hw, &kpca, true).unwrap();
            assert!(one == rows, "{kernel:?}");
            assert!(one.iter().any(|&v| v != 0.0), "{kernel:?}");
        }
        // 130×130 positions: a 16900² f64 kernel, 2.28 GB; 128×128 (2.1 GB) would be built.
        let big = Tensor::zeros([2, 1, 130, 130]);
        let err = kpca_projection(&big, &Kpca::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("130×130") && err.contains("2.3 GB") && err.contains("--size"),
            "{err}"
        );
    }

    /// A layer that is the same at every pixel has a centred kernel of rounding noise: the
    /// map is zero, not that noise stretched to full contrast.
    #[test]
    fn a_flat_layer_gives_a_zero_map() {
        let (k, hw) = (5, 20 * 20);
        let x: Vec<f32> = (0..k * hw).map(|i| 0.3 + (i / hw) as f32).collect();
        let got = kpca_projection(&Tensor::new([1, k, 20, 20], x), &Kpca::default()).unwrap();
        assert!(got.data().iter().all(|&v| v == 0.0));
    }

    /// The other kernels, each against its formula written out per pixel pair (the kernel
    /// matrix itself, through the linear kernel's identity with Eigen-CAM), and γ checked.
    #[test]
    fn other_kernels() {
        let mut rng = Rng::new(9);
        let (k, h, w) = (5, 4, 3);
        let x = rng.tensor(&[1, k, h, w], -1.0, 2.0);
        // Linear: plain PCA, so Eigen-CAM's projection up to its sign.
        let lin = kpca_projection(
            &x,
            &Kpca {
                kernel: KpcaKernel::Linear,
                gamma: None,
            },
        )
        .unwrap();
        let (eig, _) = super::super::eigen::principal_projection(&x).unwrap();
        let dot: f32 = lin.data().iter().zip(eig.data()).map(|(a, b)| a * b).sum();
        let sign = dot.signum();
        for (a, b) in lin.data().iter().zip(eig.data()) {
            assert!(
                (a - sign * b).abs() < 1e-4,
                "linear kernel vs Eigen-CAM: {a} vs {b}"
            );
        }
        // Every kernel: the projection is an eigenvector of the centred kernel (G v = λ v
        // with λ = ‖v‖², as v carries √λ), the kernel built here from its formula.
        let hw = h * w;
        let d = x.data();
        let feat = |p: usize| -> Vec<f64> {
            (0..k)
                .map(|ch| {
                    let mean = (0..hw).map(|q| d[ch * hw + q] as f64).sum::<f64>() / hw as f64;
                    d[ch * hw + p] as f64 - mean
                })
                .collect()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for (kernel, gamma) in [
            (KpcaKernel::Rbf, None),
            (KpcaKernel::Rbf, Some(0.5f64)),
            (KpcaKernel::Poly, None),
            (KpcaKernel::Cosine, None),
            (KpcaKernel::Sigmoid, Some(0.05)),
        ] {
            let kpca = Kpca { kernel, gamma };
            kpca.check().unwrap();
            let got = kpca_projection(&x, &kpca).unwrap();
            let gm = gamma.unwrap_or(1.0 / k as f64);
            let kern = |p: usize, q: usize| {
                let (a, b) = (feat(p), feat(q));
                match kernel {
                    KpcaKernel::Rbf => {
                        let d2: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
                        (-gm * d2).exp()
                    }
                    KpcaKernel::Poly => (gm * dot(&a, &b) + 1.0).powi(3),
                    KpcaKernel::Cosine => dot(&a, &b) / (dot(&a, &a) * dot(&b, &b)).sqrt(),
                    _ => (gm * dot(&a, &b) + 1.0).tanh(),
                }
            };
            let raw: Vec<f64> = (0..hw * hw).map(|i| kern(i / hw, i % hw)).collect();
            let rm: Vec<f64> = (0..hw)
                .map(|p| (0..hw).map(|q| raw[p * hw + q]).sum::<f64>() / hw as f64)
                .collect();
            let all = rm.iter().sum::<f64>() / hw as f64;
            let v: Vec<f64> = got.data().iter().map(|&v| v as f64).collect();
            let lambda = dot(&v, &v);
            assert!(lambda > 1e-6, "{kernel:?}: a zero map");
            for p in 0..hw {
                let gv: f64 = (0..hw)
                    .map(|q| (raw[p * hw + q] - rm[p] - rm[q] + all) * v[q])
                    .sum();
                assert!(
                    (gv - lambda * v[p]).abs() < 1e-4 * (1.0 + lambda),
                    "{kernel:?} {gamma:?}: (Gv)_{p} = {gv}, λ v_{p} = {}",
                    lambda * v[p]
                );
            }
        }
        // A kernel past f64's range: an error naming gamma, not a map of NaNs.
        let huge = Kpca {
            kernel: KpcaKernel::Poly,
            gamma: Some(1e30),
        };
        let e = kpca_projection(&x, &huge).unwrap_err().to_string();
        assert!(
            e.contains("Poly kernel overflows") && e.contains("--kpca-gamma"),
            "{e}"
        );
        let bad = |kernel, gamma| Kpca { kernel, gamma }.check().unwrap_err().to_string();
        assert!(bad(KpcaKernel::Cosine, Some(1.0)).contains("no gamma"));
        assert!(bad(KpcaKernel::Rbf, Some(-1.0)).contains("positive"));
    }
}
