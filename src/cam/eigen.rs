//! Eigen-CAM (Muhammad & Yeasin 2020, arXiv 2008.00299): the map is the projection of a
//! layer's channels on their first principal component, as pytorch-grad-cam's
//! `get_2d_projection` computes it; with its `eigen_smooth`, the same projection replaces the
//! channel sum of any method's weighted activations.
//!
//! Per image, with X the [K, h, w] input viewed as M = [h·w, K] (a row per pixel):
//! M is centred column by column (each channel minus its mean over the pixels), v is M's first
//! right singular vector, and the map is M·v (before the ReLU the caller applies).
//! `np.linalg.svd(M)[2][0]` in pytorch-grad-cam.
//!
//! The SVD comes from the top eigenvector of the smaller Gram matrix (M·Mᵀ when h·w ≤ K, else
//! Mᵀ·M), never formed: Lanczos iteration in f64 applies it as two passes over M. A singular vector has no sign of its own (LAPACK's varies with the
//! data); here v is oriented so that Σ_k v_k ≥ 0, which is the same as the map correlating
//! positively with the sum over channels of the centred input (M·1), the "where the layer
//! fires" map. pytorch-grad-cam's map is this one or its negation.

use rayon::prelude::*;

use crate::{Error, Result, Tensor};

/// Principal-component projections of a batch `x` [N, K, h, w]: (maps [N, h, w] before the
/// ReLU, loadings v [N, K]). Non-finite inputs count as zero (pytorch-grad-cam zeroes NaN and
/// fails on infinities).
///
/// When the loadings nearly cancel (Σv ≈ 0) the orientation is fragile: a run at reduced
/// precision may pick the other sign and give the complementary map. An error for a tensor
/// that is not 4-D.
pub fn principal_projection(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let &[n, k, h, w] = x.shape() else {
        return Err(Error::Invalid(format!(
            "principal_projection: activations {:?}, not [N, K, h, w]",
            x.shape()
        )));
    };
    let hw = h * w;
    if k == 0 || hw == 0 {
        return Ok((Tensor::zeros([n, h, w]), Tensor::zeros([n, k])));
    }
    let per: Vec<(Vec<f32>, Vec<f32>)> = x
        .data()
        .par_chunks(k * hw)
        .map(|img| project_one(img, k, hw, hw <= k))
        .collect();
    let (mut maps, mut loadings) = (Vec::with_capacity(n * hw), Vec::with_capacity(n * k));
    for (m, v) in per {
        maps.extend(m);
        loadings.extend(v);
    }
    Ok((Tensor::new([n, h, w], maps), Tensor::new([n, k], loadings)))
}

/// One image: `x` is [K, hw] channel-major. Returns (projection [hw], loadings [K]), from the
/// pixels' Gram matrix (`pixels`, the smaller one when hw ≤ K) or the channels'.
fn project_one(x: &[f32], k: usize, hw: usize, pixels: bool) -> (Vec<f32>, Vec<f32>) {
    // Centred channels, channel-major: c[ch][p] = x[ch][p] - mean_p x[ch][p].
    let mut c = vec![0f64; k * hw];
    for (row, src) in c.chunks_mut(hw).zip(x.chunks(hw)) {
        for (d, &s) in row.iter_mut().zip(src) {
            *d = if s.is_finite() { s as f64 } else { 0.0 };
        }
        let mean = row.iter().sum::<f64>() / hw as f64;
        row.iter_mut().for_each(|v| *v -= mean);
    }
    let mut proj = vec![0f64; hw];
    let mut load = vec![0f64; k];
    // M·u over the pixels' values u [hw] → [K] is Mᵀ·u; M·v over loadings v [K] → [hw].
    let mt_times = |u: &[f64]| -> Vec<f64> {
        c.chunks(hw)
            .map(|row| row.iter().zip(u).map(|(a, b)| a * b).sum())
            .collect()
    };
    let m_times = |v: &[f64]| -> Vec<f64> {
        let mut out = vec![0f64; hw];
        for (row, &l) in c.chunks(hw).zip(v) {
            for (o, &a) in out.iter_mut().zip(row) {
                *o += a * l;
            }
        }
        out
    };
    if pixels {
        // The top eigenvector u of M·Mᵀ [hw, hw] gives M·v = σ·u, v = Mᵀ·u / σ.
        let (lambda, u) = lanczos_top(hw, |u| m_times(&mt_times(u)));
        if lambda > 0.0 {
            let sigma = lambda.sqrt();
            load = mt_times(&u).into_iter().map(|v| v / sigma).collect();
            proj = u.iter().map(|u| sigma * u).collect();
        }
    } else {
        // The top eigenvector of Mᵀ·M [K, K] is v, and the map is M·v.
        let (lambda, v) = lanczos_top(k, |v| mt_times(&m_times(v)));
        if lambda > 0.0 {
            proj = m_times(&v);
            load = v;
        }
    }
    if load.iter().sum::<f64>() < 0.0 {
        proj.iter_mut().for_each(|v| *v = -*v);
        load.iter_mut().for_each(|v| *v = -*v);
    }
    (
        proj.into_iter().map(|v| v as f32).collect(),
        load.into_iter().map(|v| v as f32).collect(),
    )
}

/// The largest eigenvalue of the symmetric operator `apply` on Rⁿ (positive semi-definite here;
/// KPCA-CAM's centred kernels need not be: the largest algebraic one) and a unit eigenvector, by Lanczos iteration with full reorthogonalisation. The Krylov basis grows
/// until the top Ritz pair's residual is below 1e-10 of its value, or the basis spans an
/// invariant subspace; the small tridiagonal projection's eigenpairs come from
/// [`top_eigenvector`]. Each step costs one `apply` (two passes over M here), so this is far
/// cheaper than a dense eigensolver on the Gram matrix once h·w and K are both large (native-size
/// photographs). At `MAX_BASIS` vectors it restarts from the Ritz vector.
pub(super) fn lanczos_top(n: usize, apply: impl Fn(&[f64]) -> Vec<f64>) -> (f64, Vec<f64>) {
    const MAX_BASIS: usize = 160;
    const CHECK_EVERY: usize = 8;
    // A fixed start with a part along every direction in practice (all ones plus a ripple).
    let mut start: Vec<f64> = (0..n)
        .map(|i| 1.0 + 0.25 * (i as f64 * 0.754_877_666).sin())
        .collect();
    let mut best = (0.0, start.clone());
    for _restart in 0..32 {
        let norm = dot(&start, &start).sqrt();
        if norm == 0.0 {
            break;
        }
        let mut q = vec![start.iter().map(|v| v / norm).collect::<Vec<f64>>()];
        let (mut alpha, mut beta) = (Vec::new(), Vec::new());
        loop {
            let mut w = apply(q.last().expect("one vector at least"));
            alpha.push(dot(q.last().expect("one vector at least"), &w));
            // Gram-Schmidt against the whole basis, twice (the second pass restores what
            // rounding lost), in place of the three-term recurrence's two subtractions.
            for _ in 0..2 {
                for qi in &q {
                    let d = dot(qi, &w);
                    w.iter_mut().zip(qi).for_each(|(x, y)| *x -= d * y);
                }
            }
            let b = dot(&w, &w).sqrt();
            let m = alpha.len();
            let scale = alpha.iter().fold(0f64, |s, a| s.max(a.abs()));
            let spanned = m == n || b <= 1e-13 * scale;
            if spanned || m % CHECK_EVERY == 0 || m == MAX_BASIS {
                let mut t = vec![0f64; m * m];
                for i in 0..m {
                    t[i * m + i] = alpha[i];
                    if i + 1 < m {
                        t[i * m + i + 1] = beta[i];
                        t[(i + 1) * m + i] = beta[i];
                    }
                }
                let (theta, y) = top_eigenvector(t, m);
                let mut ritz = vec![0f64; n];
                for (qi, &yi) in q.iter().zip(&y) {
                    ritz.iter_mut().zip(qi).for_each(|(r, v)| *r += yi * v);
                }
                let residual = b * y[m - 1].abs();
                best = (theta, ritz);
                // Relative to the operator's scale too: a top eigenvalue near 0 (KPCA-CAM's
                // centred kernel of a flat layer is rounding noise) would never pass alone.
                if spanned || residual <= 1e-10 * theta.abs().max(scale) {
                    return best;
                }
                if m == MAX_BASIS {
                    start = best.1.clone();
                    break;
                }
            }
            beta.push(b);
            q.push(w.iter().map(|v| v / b).collect());
        }
    }
    best
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The largest eigenvalue of the symmetric [n, n] matrix `a` and a unit eigenvector of it, by
/// cyclic Jacobi rotations (each zeroes one off-diagonal pair; sweeps repeat until the
/// off-diagonal part is negligible against the diagonal).
fn top_eigenvector(mut a: Vec<f64>, n: usize) -> (f64, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i] * a[i * n + i]).sum();
        if off <= 1e-30 * diag || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = if theta >= 0.0 { 1.0 } else { -1.0 }
                    / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ·A·J with J the identity but J[p][p] = J[q][q] = c, J[p][q] = s,
                // J[q][p] = -s: columns, then rows; V ← V·J.
                for r in 0..n {
                    let (x, y) = (a[r * n + p], a[r * n + q]);
                    a[r * n + p] = c * x - s * y;
                    a[r * n + q] = s * x + c * y;
                }
                for col in 0..n {
                    let (x, y) = (a[p * n + col], a[q * n + col]);
                    a[p * n + col] = c * x - s * y;
                    a[q * n + col] = s * x + c * y;
                }
                for r in 0..n {
                    let (x, y) = (v[r * n + p], v[r * n + q]);
                    v[r * n + p] = c * x - s * y;
                    v[r * n + q] = s * x + c * y;
                }
            }
        }
    }
    let top = (0..n)
        .max_by(|&i, &j| a[i * n + i].total_cmp(&a[j * n + j]))
        .expect("n > 0");
    (a[top * n + top], (0..n).map(|r| v[r * n + top]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// The Jacobi eigenvector against the definition: A·u = λ·u, |u| = 1, and λ the largest
    /// (no unit vector gives a larger Rayleigh quotient than the eigenvalue, tried on many).
    #[test]
    fn top_eigenvector_satisfies_its_definition() {
        let mut seed = 7;
        for n in [1, 2, 5, 17, 40] {
            let b: Vec<f64> = (0..n * n).map(|_| lcg(&mut seed) as f64).collect();
            let mut a = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = (0..n).map(|t| b[t * n + i] * b[t * n + j]).sum();
                }
            }
            let (lambda, u) = top_eigenvector(a.clone(), n);
            let norm: f64 = u.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-12, "n {n}: |u| = {norm}");
            for i in 0..n {
                let au: f64 = (0..n).map(|j| a[i * n + j] * u[j]).sum();
                assert!(
                    (au - lambda * u[i]).abs() < 1e-9 * lambda.max(1.0),
                    "n {n}: row {i}"
                );
            }
            for _ in 0..200 {
                let x: Vec<f64> = (0..n).map(|_| lcg(&mut seed) as f64).collect();
                let xx: f64 = x.iter().map(|v| v * v).sum();
                let xax: f64 = (0..n)
                    .map(|i| x[i] * (0..n).map(|j| a[i * n + j] * x[j]).sum::<f64>())
                    .sum();
                assert!(xax / xx <= lambda * (1.0 + 1e-12), "n {n}: not the largest");
            }
        }
    }

    /// Lanczos against the dense Jacobi solver on random Gram matrices, and on a spectrum
    /// whose top two eigenvalues differ by 1e-6 (slow convergence: the restarts run), where
    /// the vector must lie in the top pair's plane.
    #[test]
    fn lanczos_finds_the_top_eigenpair() {
        let mut seed = 3;
        for n in [1, 2, 3, 9, 50, 200] {
            let b: Vec<f64> = (0..n * n).map(|_| lcg(&mut seed) as f64).collect();
            let mut a = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = (0..n).map(|t| b[t * n + i] * b[t * n + j]).sum();
                }
            }
            let apply = |x: &[f64]| -> Vec<f64> {
                (0..n).map(|i| dot(&a[i * n..(i + 1) * n], x)).collect()
            };
            let (l1, v1) = lanczos_top(n, apply);
            let (l2, v2) = top_eigenvector(a.clone(), n);
            assert!((l1 - l2).abs() <= 1e-9 * l2, "n {n}: {l1} vs {l2}");
            assert!(dot(&v1, &v2).abs() > 1.0 - 1e-8, "n {n}: vectors");
        }
        let n = 300;
        let lambda: Vec<f64> = (0..n)
            .map(|i| match i {
                0 => 1.0,
                1 => 1.0 - 1e-6,
                _ => 0.99 * (1.0 - i as f64 / n as f64),
            })
            .collect();
        let apply = |x: &[f64]| -> Vec<f64> { x.iter().zip(&lambda).map(|(a, b)| a * b).collect() };
        let (l, v) = lanczos_top(n, apply);
        assert!((l - 1.0).abs() < 1e-9, "{l}");
        let in_plane = v[0] * v[0] + v[1] * v[1];
        assert!(in_plane > 1.0 - 1e-6, "{in_plane}");
    }

    /// Against a hand-made case: channels that are multiples of one centred pattern have that
    /// pattern as the projection (scaled by the loadings' norm), whichever side is smaller.
    #[test]
    fn rank_one_channels_project_onto_their_pattern() {
        let pattern = [3.0f32, -1.0, 0.0, 2.0, -4.0, 0.0]; // mean 0
        for gains in [vec![1.0f32, 2.0, 2.0], vec![0.5; 9]] {
            let k = gains.len();
            let x: Vec<f32> = gains
                .iter()
                .flat_map(|g| pattern.iter().map(move |p| g * p + 10.0))
                .collect();
            let (maps, loadings) = principal_projection(&Tensor::new([1, k, 2, 3], x)).unwrap();
            let gnorm = gains.iter().map(|g| g * g).sum::<f32>().sqrt();
            for (m, p) in maps.data().iter().zip(pattern) {
                assert!((m - p * gnorm).abs() < 1e-4, "{m} vs {}", p * gnorm);
            }
            for (l, g) in loadings.data().iter().zip(&gains) {
                assert!((l - g / gnorm).abs() < 1e-6);
            }
        }
    }

    /// Both routes (Gram of the pixels, Gram of the channels) give the same map and loadings,
    /// the map is M·v for the loadings returned, it correlates positively with the channel
    /// sum, and it equals the map from a dense Jacobi solve of the formed channel Gram matrix.
    #[test]
    fn both_routes_agree_and_the_sign_follows_the_channel_sum() {
        let mut seed = 11;
        let shapes = [
            (3, 4, 5),
            (30, 2, 3),
            (8, 3, 3),
            (1, 3, 3),
            (9, 3, 3),
            (100, 12, 12),
        ];
        for (k, h, w) in shapes {
            let x: Vec<f32> = (0..2 * k * h * w).map(|_| lcg(&mut seed)).collect();
            let (maps, loadings) =
                principal_projection(&Tensor::new([2, k, h, w], x.clone())).unwrap();
            let hw = h * w;
            for i in 0..2 {
                let img = &x[i * k * hw..(i + 1) * k * hw];
                let (pm, pl) = project_one(img, k, hw, true);
                let (cm, cl) = project_one(img, k, hw, false);
                let worst = |a: &[f32], b: &[f32]| {
                    (a.iter().zip(b)).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
                };
                assert!(worst(&pm, &cm) < 1e-4, "{k}x{h}x{w}: route maps");
                assert!(worst(&pl, &cl) < 1e-4, "{k}x{h}x{w}: route loadings");
                let centred: Vec<Vec<f64>> = img
                    .chunks(hw)
                    .map(|ch| {
                        let m = ch.iter().map(|&v| v as f64).sum::<f64>() / hw as f64;
                        ch.iter().map(|&v| v as f64 - m).collect()
                    })
                    .collect();
                let v = &loadings.data()[i * k..(i + 1) * k];
                let map = &maps.data()[i * hw..(i + 1) * hw];
                let mut corr = 0.0;
                for p in 0..hw {
                    let mv: f64 = (0..k).map(|c| centred[c][p] * v[c] as f64).sum();
                    assert!((mv - map[p] as f64).abs() < 1e-5, "{k}x{h}x{w}: M·v");
                    corr += map[p] as f64 * (0..k).map(|c| centred[c][p]).sum::<f64>();
                }
                assert!(corr >= 0.0, "{k}x{h}x{w}: sign");
                // The other route: force it by transposing the roles through a direct
                // computation of the top right singular vector's map, up to sign.
                let mut g = vec![0f64; k * k];
                for a in 0..k {
                    for b in 0..k {
                        g[a * k + b] = (0..hw).map(|p| centred[a][p] * centred[b][p]).sum();
                    }
                }
                let (_, v2) = top_eigenvector(g, k);
                let s = if v2.iter().sum::<f64>() < 0.0 {
                    -1.0
                } else {
                    1.0
                };
                for p in 0..hw {
                    let mv: f64 = (0..k).map(|c| centred[c][p] * v2[c] * s).sum();
                    assert!(
                        (mv - map[p] as f64).abs() < 1e-4,
                        "{k}x{h}x{w}: routes differ"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_channels_give_a_zero_map() {
        let (maps, loadings) = principal_projection(&Tensor::full([1, 4, 3, 3], 2.5)).unwrap();
        assert!(maps.data().iter().all(|&v| v == 0.0));
        assert!(loadings.data().iter().all(|&v| v == 0.0));
        let mut x = Tensor::full([1, 2, 2, 2], 1.0);
        x.data_mut()[0] = f32::NAN;
        let (maps, _) = principal_projection(&x).unwrap();
        assert!(maps.data().iter().all(|v| v.is_finite()));
    }
}
