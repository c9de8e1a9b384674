//! Finer-CAM (Zhang et al., CVPR 2025, arXiv 2501.11309), as pytorch-grad-cam 1.5.7's
//! `FinerCAM` with its `FinerWeightedTarget`: instead of the class score y_m, the method
//! explains y_m's margin over the classes whose logits are nearest to it,
//!
//!   f(y) = Σ_j p_j (y_m − α y_j) / (Σ_j p_j + 1e-9),  p = softmax(y),  j over the compared,
//!
//! which suppresses what the similar classes share and keeps what tells them apart. Any
//! gradient method runs on it unchanged (pytorch-grad-cam's `base_method`): only the seed of
//! the backward pass, ∂f/∂y, differs. The probabilities are part of f, so the seed includes
//! the softmax's derivative, as torch's autograd computes it.

use super::Method;
use crate::{Error, Result, Tensor};

/// Finer-CAM's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Finer {
    /// How strongly the compared classes' logits are subtracted (pytorch-grad-cam's `alpha`).
    pub alpha: f32,
    /// Which classes are compared, by nearness of their logit to the explained class's:
    /// 1 is the nearest (pytorch-grad-cam's `comparison_categories`, default 1, 2, 3).
    pub ranks: Vec<usize>,
}

impl Default for Finer {
    fn default() -> Self {
        Finer {
            alpha: 1.0,
            ranks: vec![1, 2, 3],
        }
    }
}

impl Finer {
    /// The settings checked for a model with `num_classes` classes: ranks from 1 on, each
    /// once, one at least below the class count, a finite alpha.
    pub fn check(&self, num_classes: usize) -> Result<()> {
        if self.ranks.is_empty() || self.ranks.contains(&0) {
            return Err(Error::Invalid(format!(
                "Finer-CAM comparison ranks {:?}: give one or more, from 1 (the class whose \
                 logit is nearest the explained one's)",
                self.ranks
            )));
        }
        if let Some(r) = (1..self.ranks.len()).find(|&i| self.ranks[..i].contains(&self.ranks[i])) {
            return Err(Error::Invalid(format!(
                "Finer-CAM comparison ranks {:?}: rank {} is given twice (its class would be \
                 compared, and weighed, twice)",
                self.ranks, self.ranks[r]
            )));
        }
        if !self.ranks.iter().any(|&r| r < num_classes) {
            return Err(Error::Invalid(format!(
                "Finer-CAM comparison ranks {:?}: the model has {num_classes} classes, so \
                 there is no class to compare with at any of them",
                self.ranks
            )));
        }
        if !self.alpha.is_finite() {
            return Err(Error::Invalid(format!(
                "Finer-CAM alpha {} is not a finite number",
                self.alpha
            )));
        }
        Ok(())
    }

    /// The classes compared with `main` for one image's logits: the other classes sorted by
    /// |y_j − y_main| (ties by index), those at `ranks`; ranks past the last class are
    /// dropped, as pytorch-grad-cam drops them. An error when none is left, or `main` is not
    /// a class of the logits.
    pub fn compared(&self, logits: &[f32], main: usize) -> Result<Vec<usize>> {
        if main >= logits.len() {
            return Err(Error::ClassOutOfRange {
                class: main,
                num_classes: logits.len(),
            });
        }
        let mut others: Vec<usize> = (0..logits.len()).filter(|&j| j != main).collect();
        let gap = |j: usize| (logits[j] - logits[main]).abs();
        others.sort_by(|&a, &b| gap(a).total_cmp(&gap(b)).then(a.cmp(&b)));
        let picked: Vec<usize> = (self.ranks.iter())
            .filter_map(|&r| others.get(r.checked_sub(1)?).copied())
            .collect();
        if picked.is_empty() {
            return Err(Error::Invalid(format!(
                "Finer-CAM: no class to compare with at ranks {:?} (the model has {} classes)",
                self.ranks,
                logits.len()
            )));
        }
        Ok(picked)
    }

    /// f(y) for one image (see the module's doc), in f64. Panics if `main` or a compared
    /// class is not an index of the logits, as indexing does ([`Finer::compared`] gives
    /// classes that are).
    pub fn score(&self, logits: &[f32], main: usize, compared: &[usize]) -> f64 {
        let p = softmax(logits);
        let y = |j: usize| logits[j] as f64;
        let alpha = self.alpha as f64;
        let num: f64 = compared
            .iter()
            .map(|&j| p[j] * (y(main) - alpha * y(j)))
            .sum();
        let den: f64 = compared.iter().map(|&j| p[j]).sum::<f64>() + 1e-9;
        num / den
    }

    /// ∂f/∂y for one image, in f64 then rounded. With P = Σ_j p_j, N = Σ_j p_j d_j,
    /// d_j = y_m − α y_j and ∂p_j/∂y_i = p_j (δ_ij − p_i):
    ///   ∂N/∂y_i = [i ∈ J] p_i (d_i − α) − p_i N + δ_im P,   ∂P/∂y_i = [i ∈ J] p_i − p_i P,
    ///   ∂f/∂y_i = (∂N/∂y_i · D − N · ∂P/∂y_i) / D²,  D = P + 1e-9.
    ///
    /// # Panics
    /// If `main` or a class in `compared` is not an index into `logits`.
    pub fn seed_row(&self, logits: &[f32], main: usize, compared: &[usize]) -> Vec<f32> {
        let p = softmax(logits);
        let alpha = self.alpha as f64;
        let d = |j: usize| logits[main] as f64 - alpha * logits[j] as f64;
        let big_p: f64 = compared.iter().map(|&j| p[j]).sum();
        let num: f64 = compared.iter().map(|&j| p[j] * d(j)).sum();
        let den = big_p + 1e-9;
        let mut d_num: Vec<f64> = p.iter().map(|&pi| -pi * num).collect();
        let mut d_den: Vec<f64> = p.iter().map(|&pi| -pi * big_p).collect();
        // A class listed twice counts twice, as in the sums above.
        for &j in compared {
            d_num[j] += p[j] * (d(j) - alpha);
            d_den[j] += p[j];
        }
        d_num[main] += big_p;
        (d_num.iter().zip(&d_den))
            .map(|(dn, dd)| ((dn * den - num * dd) / (den * den)) as f32)
            .collect()
    }

    /// The seeds [N, classes] of a batch whose explained classes are `main`, and each
    /// image's compared classes; an error unless the logits are [N, classes] with N = the
    /// classes given.
    pub fn seeds(&self, logits: &Tensor, main: &[usize]) -> Result<(Tensor, Vec<Vec<usize>>)> {
        let &[n, nc] = logits.shape() else {
            return Err(Error::Invalid(format!(
                "Finer-CAM: logits {:?}, not [N, classes]",
                logits.shape()
            )));
        };
        if n != main.len() {
            return Err(Error::Invalid(format!(
                "Finer-CAM: {} classes given for {n} images",
                main.len()
            )));
        }
        let mut seed = Vec::with_capacity(main.len() * nc);
        let mut compared = Vec::with_capacity(main.len());
        for (row, &m) in logits.data().chunks(nc.max(1)).zip(main) {
            let c = self.compared(row, m)?;
            seed.extend(self.seed_row(row, m, &c));
            compared.push(c);
        }
        Ok((Tensor::new([main.len(), nc], seed), compared))
    }
}

/// Finer-CAM goes with the gradient methods, alone: it changes the score they explain.
pub fn check_combination(
    method: Method,
    counterfactual: bool,
    guided: bool,
    aug_smooth: bool,
) -> Result<()> {
    let clash = if !method.uses_gradients() {
        Some(format!("{}, which uses no gradients", method.name()))
    } else if counterfactual {
        Some("--counterfactual (both change the explained score)".into())
    } else if guided {
        Some("--guided (guided backpropagation explains the class score)".into())
    } else if aug_smooth {
        Some("--aug-smooth (each copy would compare its own classes)".into())
    } else {
        None
    };
    match clash {
        Some(c) => Err(Error::Invalid(format!(
            "Finer-CAM does not combine with {c}"
        ))),
        None => Ok(()),
    }
}

/// softmax(y) in f64.
fn softmax(y: &[f32]) -> Vec<f64> {
    let m = y.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = y.iter().map(|&v| (v as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed against central differences of f (steps of 2e-3 on the logits: 1e-3 relative).
    #[test]
    fn seed_is_the_gradient_of_the_score() {
        let logits = [2.0f32, 1.7, -0.3, 1.9, 0.4, 2.2];
        for (alpha, ranks) in [(1.0, vec![1, 2, 3]), (0.6, vec![2]), (1.5, vec![1, 5])] {
            let f = Finer { alpha, ranks };
            let main = 5;
            let c = f.compared(&logits, main).unwrap();
            let g = f.seed_row(&logits, main, &c);
            for i in 0..logits.len() {
                let h = 1e-3f32;
                let (mut up, mut down) = (logits, logits);
                up[i] += h;
                down[i] -= h;
                // The step as the f32 logits hold it.
                let step = up[i] as f64 - down[i] as f64;
                let fd = (f.score(&up, main, &c) - f.score(&down, main, &c)) / step;
                assert!(
                    (g[i] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()),
                    "alpha {alpha} class {i}: {} vs {fd}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn compared_classes_are_the_nearest_logits() {
        let f = Finer::default();
        // Gaps to class 0 (2.0): 1 → 0.3, 2 → 2.3, 3 → 0.1, 4 → 1.6, 5 → 0.2.
        let logits = [2.0f32, 1.7, -0.3, 1.9, 0.4, 2.2];
        assert_eq!(f.compared(&logits, 0).unwrap(), [3, 5, 1]);
        let far = Finer {
            ranks: vec![5, 9],
            ..Finer::default()
        };
        assert_eq!(far.compared(&logits, 0).unwrap(), [2]);
        let none = Finer {
            ranks: vec![6],
            ..Finer::default()
        };
        assert!(none.compared(&logits, 0).is_err());
        let checked = |ranks: Vec<usize>| {
            Finer {
                ranks,
                ..Finer::default()
            }
            .check(6)
        };
        assert!(checked(vec![0, 1]).is_err());
        assert!(checked(vec![6, 7]).is_err());
        assert!(checked(vec![]).is_err());
        assert!(checked(vec![5, 9]).is_ok());
        let e = checked(vec![1, 2, 1]).unwrap_err().to_string();
        assert!(e.contains("rank 1 is given twice"), "{e}");
    }
}
