//! The class score a method explains, as a function f of the logits z (pytorch-grad-cam's
//! model targets). The gradient methods seed their backward pass with ∂f/∂z; Score-CAM and
//! Ablation-CAM compare f of changed inputs; ShapleyCAM also needs f's Hessian (see
//! [`Target::hessian_times`]). Everything here is per image, in f64.

use super::Method;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// f = z_c, the class's logit (`ClassifierOutputTarget`).
    #[default]
    Logit,
    /// f = softmax(z)_c, the class's probability (`ClassifierOutputSoftmaxTarget`).
    Softmax,
    /// f = z_c − CE(z, c) = 2 z_c − logsumexp(z), the logit and the log-probability together
    /// (`ClassifierOutputReST`, proposed with ShapleyCAM).
    Rest,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Logit, Target::Softmax, Target::Rest];

    pub fn name(self) -> &'static str {
        match self {
            Target::Logit => "logit",
            Target::Softmax => "softmax",
            Target::Rest => "rest",
        }
    }

    pub fn parse(s: &str) -> Result<Target> {
        let key = s.to_ascii_lowercase();
        Target::ALL
            .into_iter()
            .find(|t| t.name() == key)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown target `{s}`; choose one of logit, softmax, rest"
                ))
            })
    }

    /// A target other than the logit changes the class score: only for the methods that
    /// have one (not Eigen-CAM, KPCA-CAM, FEM), and not with Finer-CAM, which has its own.
    pub fn check_combination(self, method: Method, finer: bool) -> Result<()> {
        if self == Target::Logit {
            return Ok(());
        }
        let t = self.name();
        if !method.uses_class() {
            return Err(Error::Invalid(format!(
                "--target {t} changes the class score; {} uses none",
                method.name()
            )));
        }
        if finer {
            return Err(Error::Invalid(format!(
                "--target {t} and --finer each define the score explained; give one"
            )));
        }
        Ok(())
    }

    /// f(z) for class `c`. Panics if `c` is not an index of z, as indexing does: callers
    /// check the class against the model first ([`crate::Error::ClassOutOfRange`]).
    pub fn score(self, z: &[f32], c: usize) -> f64 {
        self.score64(&widen(z), c)
    }

    /// ∂f/∂z. Panics as [`Target::score`] does.
    pub fn gradient(self, z: &[f32], c: usize) -> Vec<f64> {
        self.gradient64(&widen(z), c)
    }

    /// H·u with H = ∂²f/∂z² at z: what a Hessian-vector product through the network adds
    /// beyond the layers (piecewise linear after a ReLU network's target layer, so their own
    /// second derivative is zero almost everywhere).
    pub fn hessian_times(self, z: &[f32], c: usize, u: &[f64]) -> Vec<f64> {
        self.hessian_times64(&widen(z), c, u)
    }

    fn score64(self, z: &[f64], c: usize) -> f64 {
        match self {
            Target::Logit => z[c],
            Target::Softmax => softmax(z)[c],
            Target::Rest => 2.0 * z[c] - logsumexp(z),
        }
    }

    fn gradient64(self, z: &[f64], c: usize) -> Vec<f64> {
        let mut g = vec![0.0; z.len()];
        match self {
            Target::Logit => g[c] = 1.0,
            // ∂p_c/∂z_j = p_c (δ_cj − p_j)
            Target::Softmax => {
                let p = softmax(z);
                g.iter_mut().zip(&p).for_each(|(g, &pj)| *g = -p[c] * pj);
                g[c] += p[c];
            }
            // 2 e_c − p
            Target::Rest => {
                let p = softmax(z);
                g.iter_mut().zip(&p).for_each(|(g, &pj)| *g = -pj);
                g[c] += 2.0;
            }
        }
        g
    }

    fn hessian_times64(self, z: &[f64], c: usize, u: &[f64]) -> Vec<f64> {
        match self {
            Target::Logit => vec![0.0; z.len()],
            // ∂²p_c/∂z_i∂z_j = p_c [(δ_ic − p_i)(δ_jc − p_j) − δ_ij p_i + p_i p_j]
            Target::Softmax => {
                let p = softmax(z);
                let d: Vec<f64> = (0..z.len()).map(|i| delta(i, c) - p[i]).collect();
                let (du, pu) = (dot(&d, u), dot(&p, u));
                (0..z.len())
                    .map(|i| p[c] * (d[i] * du - p[i] * u[i] + p[i] * pu))
                    .collect()
            }
            // −(diag(p) − p pᵀ) u: logsumexp's Hessian, negated.
            Target::Rest => {
                let p = softmax(z);
                let pu = dot(&p, u);
                (0..z.len()).map(|i| -(p[i] * u[i] - p[i] * pu)).collect()
            }
        }
    }
}

fn widen(z: &[f32]) -> Vec<f64> {
    z.iter().map(|&v| v as f64).collect()
}

fn delta(i: usize, j: usize) -> f64 {
    if i == j {
        1.0
    } else {
        0.0
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn logsumexp(z: &[f64]) -> f64 {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    m + z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let lse = logsumexp(z);
    z.iter().map(|&v| (v - lse).exp()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences in f64, step 1e-5: the gradient from the score and the Hessian
    /// along u from the gradient, each within 1e-8 (the values are O(1); the differences'
    /// error is O(step²) plus rounding O(1e-16 / step)).
    #[test]
    fn gradient_and_hessian_match_central_differences() {
        let z = [1.5, -0.25, 0.75, 2.0, -1.0];
        let u = [0.3, -1.2, 0.5, 0.9, -0.4];
        let step = 1e-5;
        let at = |dir: &[f64], s: f64| -> Vec<f64> {
            z.iter().zip(dir).map(|(v, d)| v + s * d).collect()
        };
        for t in Target::ALL {
            for c in [0, 3] {
                let g = t.gradient64(&z, c);
                for j in 0..z.len() {
                    let mut e = [0.0; 5];
                    e[j] = 1.0;
                    let fd =
                        (t.score64(&at(&e, step), c) - t.score64(&at(&e, -step), c)) / (2.0 * step);
                    assert!(
                        (fd - g[j]).abs() < 1e-8,
                        "{t:?} c={c} df/dz{j}: {fd} vs {}",
                        g[j]
                    );
                }
                let hu = t.hessian_times64(&z, c, &u);
                let (gp, gm) = (
                    t.gradient64(&at(&u, step), c),
                    t.gradient64(&at(&u, -step), c),
                );
                for j in 0..z.len() {
                    let fd = (gp[j] - gm[j]) / (2.0 * step);
                    assert!(
                        (fd - hu[j]).abs() < 1e-8,
                        "{t:?} c={c} (Hu)_{j}: {fd} vs {}",
                        hu[j]
                    );
                }
            }
        }
        // The f32 entry points agree with the f64 ones.
        let z32 = [1.5f32, -0.25, 0.75, 2.0, -1.0];
        assert_eq!(
            Target::Rest.gradient(&z32, 2),
            Target::Rest.gradient64(&z, 2)
        );
    }

    #[test]
    fn names_parse() {
        for t in Target::ALL {
            assert_eq!(Target::parse(t.name()).unwrap(), t);
        }
        assert_eq!(Target::parse("ReST").unwrap(), Target::Rest);
        assert!(Target::parse("prob")
            .unwrap_err()
            .to_string()
            .contains("softmax"));
    }
}
