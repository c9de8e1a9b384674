//! Non-negative matrix factorisation X ≈ W·H as scikit-learn's `NMF(n_components=k,
//! init='random', random_state=0)` computes it (its defaults: coordinate descent, Frobenius
//! loss, no regularisation, tol 1e-4, at most 200 iterations), which pytorch-grad-cam's Deep
//! Feature Factorization calls: the same random start (NumPy's legacy MT19937 normals), the
//! same update order and the same f32 arithmetic, so the factors agree to rounding (the
//! products the updates read are f32 matrix products in both, summed in another order).

use crate::backend::cpu::gemm::{sgemm, Mat, Parallelism};
use crate::{Error, Result};

/// scikit-learn's defaults.
const TOL: f64 = 1e-4;
const MAX_ITER: usize = 200;

/// NumPy's `RandomState(seed)`: MT19937 seeded by `init_genrand`, and the legacy polar
/// Gaussian (`standard_normal`), which draws pairs and hands out the second first.
pub struct LegacyNormal {
    mt: [u32; 624],
    pos: usize,
    spare: Option<f64>,
}

impl LegacyNormal {
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        LegacyNormal {
            mt,
            pos: 624,
            spare: None,
        }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.pos == 624 {
            for i in 0..624 {
                let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
                if y & 1 == 1 {
                    v ^= 0x9908_b0df;
                }
                self.mt[i] = v;
            }
            self.pos = 0;
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A double in [0, 1) from 53 random bits (two draws), as NumPy's legacy double.
    fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    pub fn normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        loop {
            let x1 = 2.0 * self.next_f64() - 1.0;
            let x2 = 2.0 * self.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.spare = Some(f * x1);
                return f * x2;
            }
        }
    }
}

/// The factors of an `n_samples × n_features` matrix: W [n_samples, k], H [k, n_features],
/// row-major, the iterations run, and whether the stopping rule was met before the limit.
pub struct Nmf {
    pub w: Vec<f32>,
    pub h: Vec<f32>,
    pub iterations: usize,
    pub converged: bool,
}

/// NumPy's pairwise sum of f32 values (`np.add.reduce` on a contiguous f32 array): runs of
/// 8 partial sums up to 128 values, halves (rounded down to a multiple of 8) above.
pub fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &v| s + v)
    } else if n <= 128 {
        let mut r: [f32; 8] = std::array::from_fn(|j| a[j]);
        let whole = n - n % 8;
        for block in a[8..whole].chunks_exact(8) {
            r.iter_mut().zip(block).for_each(|(r, &v)| *r += v);
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[whole..] {
            res += v;
        }
        res
    } else {
        let half = n / 2;
        let half = half - half % 8;
        pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
    }
}

/// Factorises the non-negative row-major `x` (`n_samples × n_features`) into k components.
pub fn nmf(x: &[f32], (ns, nf): (usize, usize), k: usize) -> Result<Nmf> {
    if k == 0 || ns == 0 || nf == 0 || x.len() != ns * nf {
        return Err(Error::Invalid(format!(
            "NMF of {} values as {ns}x{nf} into {k} components",
            x.len()
        )));
    }
    if let Some(v) = x.iter().find(|v| !v.is_finite() || **v < 0.0) {
        return Err(Error::Invalid(format!(
            "NMF needs finite non-negative values, found {v}"
        )));
    }
    // scikit-learn's random start: sqrt(mean / k) times |N(0, 1)|, H drawn before W; the
    // mean as NumPy's f32 `X.mean()`.
    let mean = pairwise_sum(x) / x.len() as f32;
    let avg = (mean / k as f32).sqrt();
    let mut rng = LegacyNormal::new(0);
    let mut h: Vec<f32> = (0..k * nf)
        .map(|_| (avg * rng.normal() as f32).abs())
        .collect();
    let mut w: Vec<f32> = (0..ns * k)
        .map(|_| (avg * rng.normal() as f32).abs())
        .collect();
    // H is updated as its transpose (rows of k), as scikit-learn does; X's transpose is a
    // view, not a copy.
    let mut ht = transpose(&h, k, nf);
    let (xm, xt) = (Mat::row_major(x, nf), Mat::transposed(x, nf));
    let mut first = None;
    let (mut iterations, mut converged) = (MAX_ITER, false);
    for it in 1..=MAX_ITER {
        // Each half-step's violation is an f32; scikit-learn adds and compares in Python.
        let v = update(xm, &mut w, &ht, (ns, nf), k) as f64
            + update(xt, &mut ht, &w, (nf, ns), k) as f64;
        let v0 = *first.get_or_insert(v);
        if v0 == 0.0 || v / v0 <= TOL {
            (iterations, converged) = (it, true);
            break;
        }
    }
    h = transpose(&ht, nf, k);
    Ok(Nmf {
        w,
        h,
        iterations,
        converged,
    })
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// One coordinate-descent pass over the k columns of `w` [n, k] for `x` [n, m] (a view) ≈
/// w·otherᵀ,
/// `other` [m, k]; returns the projected gradient's L1 norm (the stopping measure).
fn update(x: Mat, w: &mut [f32], other: &[f32], (n, m): (usize, usize), k: usize) -> f32 {
    let par = match rayon::current_num_threads() {
        1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    };
    // oo = otherᵀ·other [k, k] and xo = x·other [n, k]: f32 products, as scikit-learn's
    // BLAS calls.
    let mut oo = vec![0f32; k * k];
    let ot = Mat::transposed(other, k);
    sgemm(
        k,
        k,
        m,
        ot,
        Mat::row_major(other, k),
        &mut oo,
        k,
        false,
        par,
    );
    let mut xo = vec![0f32; n * k];
    sgemm(n, k, m, x, Mat::row_major(other, k), &mut xo, k, false, par);
    // scikit-learn's loop: component by component, every row; f32 throughout.
    let mut violation = 0f32;
    for t in 0..k {
        let hess = oo[t * k + t];
        for i in 0..n {
            let wi = &mut w[i * k..(i + 1) * k];
            let mut grad = -xo[i * k + t];
            for r in 0..k {
                grad += oo[t * k + r] * wi[r];
            }
            let pg = if wi[t] == 0.0 { grad.min(0.0) } else { grad };
            violation += pg.abs();
            if hess != 0.0 {
                wi[t] = (wi[t] - grad / hess).max(0.0);
            }
        }
    }
    violation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_normal_is_numpys() {
        // np.random.RandomState(0): the raw words and standard_normal(5).
        let mut r = LegacyNormal::new(0);
        assert_eq!(
            [r.next_u32(), r.next_u32(), r.next_u32()],
            [2357136044, 2546248239, 3071714933]
        );
        let mut r = LegacyNormal::new(0);
        let want = [
            1.764052345967664,
            0.4001572083672233,
            0.9787379841057392,
            2.240893199201458,
            1.8675579901499675,
        ];
        for w in want {
            assert_eq!(r.normal(), w);
        }
    }

    #[test]
    fn pairwise_sum_is_numpys() {
        // a = (np.arange(n) % 7 * 0.1 + 0.01).astype(np.float32); np.add.reduce(a) bits.
        for (n, bits) in [
            (5usize, 0x3f866666u32),
            (100, 0x41f40000),
            (1000, 0x439ad99a),
            (4099, 0x449ec2e2),
        ] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i % 7) as f64 * 0.1 + 0.01) as f32)
                .collect();
            assert_eq!(pairwise_sum(&a).to_bits(), bits, "n {n}");
        }
    }

    #[test]
    fn nmf_recovers_an_exact_low_rank_product() {
        // X = A·B with non-negative A [30, 3], B [3, 40]: the fit's residual is small.
        let mut rng = crate::model::synth::Rng::new(5);
        let a: Vec<f32> = (0..90).map(|_| rng.uniform(0.0, 1.0)).collect();
        let b: Vec<f32> = (0..120).map(|_| rng.uniform(0.0, 1.0)).collect();
        let x: Vec<f32> = (0..30 * 40)
            .map(|i| {
                (0..3)
                    .map(|r| a[(i / 40) * 3 + r] * b[r * 40 + i % 40])
                    .sum()
            })
            .collect();
        let f = nmf(&x, (30, 40), 3).unwrap();
        let mut err = 0f64;
        let mut norm = 0f64;
        for i in 0..30 {
            for j in 0..40 {
                let v: f32 = (0..3).map(|r| f.w[i * 3 + r] * f.h[r * 40 + j]).sum();
                err += ((v - x[i * 40 + j]) as f64).powi(2);
                norm += (x[i * 40 + j] as f64).powi(2);
            }
        }
        assert!(
            (err / norm).sqrt() < 0.02,
            "relative error {}",
            (err / norm).sqrt()
        );
        assert!(f.w.iter().chain(&f.h).all(|&v| v >= 0.0));
        assert!(nmf(&[1.0, -1.0], (1, 2), 1).is_err());
        assert!(nmf(&[1.0, f32::NAN], (1, 2), 1).is_err());
    }
}
