//! Random weights in torchvision naming for any supported architecture, optionally narrowed:
//! for tests (every layout loads and runs) and benchmarks (no downloads). He-uniform convs
//! and randomised BatchNorm statistics, deterministic from a seed.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::vgg;
use crate::{Error, Result, Tensor};

/// splitmix64: tiny, deterministic, good enough for weights.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    /// Standard normal (Box-Muller; one of the pair).
    pub fn normal(&mut self) -> f64 {
        // u1 in (0, 1], so its logarithm is finite.
        let u1 = ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|_| self.uniform(lo, hi)).collect())
    }
}

struct Dict {
    rng: Rng,
    out: Vec<(String, Tensor)>,
}

impl Dict {
    fn conv(&mut self, name: &str, cout: usize, cin: usize, k: usize, bias: bool) {
        let a = (6.0 / (cin * k * k) as f32).sqrt();
        let w = self.rng.tensor(&[cout, cin, k, k], -a, a);
        self.out.push((format!("{name}.weight"), w));
        if bias {
            let b = self.rng.tensor(&[cout], -0.1, 0.1);
            self.out.push((format!("{name}.bias"), b));
        }
    }
    fn bn(&mut self, name: &str, c: usize) {
        let r = &mut self.rng;
        let t = [
            ("weight", r.tensor(&[c], 0.5, 1.5)),
            ("bias", r.tensor(&[c], -0.1, 0.1)),
            ("running_mean", r.tensor(&[c], -0.1, 0.1)),
            ("running_var", r.tensor(&[c], 0.5, 1.5)),
        ];
        for (s, v) in t {
            self.out.push((format!("{name}.{s}"), v));
        }
    }
    fn linear(&mut self, name: &str, fout: usize, fin: usize) {
        let a = (3.0 / fin as f32).sqrt();
        let w = self.rng.tensor(&[fout, fin], -a, a);
        let b = self.rng.tensor(&[fout], -0.1, 0.1);
        self.out.push((format!("{name}.weight"), w));
        self.out.push((format!("{name}.bias"), b));
    }
}

/// The most weights a random classifier head is given: 2^28 (1.1 GB in f32, about three times
/// that while being written); ImageNet-21k's 21 841 classes over ResNet-50's 2048 features
/// take 45 M.
const MAX_HEAD_WEIGHTS: usize = 1 << 28;

/// Whether a head of `classes` outputs over `features` inputs is within [`MAX_HEAD_WEIGHTS`].
fn head_fits(classes: usize, features: usize) -> Result<()> {
    match classes.checked_mul(features) {
        Some(n) if n <= MAX_HEAD_WEIGHTS => Ok(()),
        _ => Err(Error::Invalid(format!(
            "{classes} classes over {features} features: a head of {:.1} GB of f32 weights, more \
             than the {} M weights random checkpoints are given (at most {} classes here)",
            classes as f64 * features as f64 * 4.0 / 1e9,
            MAX_HEAD_WEIGHTS >> 20,
            MAX_HEAD_WEIGHTS / features.max(1)
        ))),
    }
}

/// A state dict for `arch` (one of [`super::ARCHS`] or [`super::RESNET_VARIANTS`]) with every
/// width divided by `div`.
pub fn state_dict(
    arch: &str,
    div: usize,
    num_classes: usize,
    seed: u64,
) -> Result<Vec<(String, Tensor)>> {
    let div = div.max(1);
    let mut d = Dict {
        rng: Rng::new(seed),
        out: Vec::new(),
    };
    match super::standard(arch)? {
        super::Standard::Vgg { items, bn } => {
            let widths = [64, 128, 256, 512, 512].map(|c| (c / div).max(1));
            let (mut idx, mut stage, mut cin) = (0, 0, 3);
            for it in items {
                match it {
                    vgg::Item::Conv => {
                        let c = widths[stage];
                        d.conv(&format!("features.{idx}"), c, cin, 3, true);
                        if bn {
                            d.bn(&format!("features.{}", idx + 1), c);
                            idx += 1;
                        }
                        idx += 2;
                        cin = c;
                    }
                    vgg::Item::Pool => {
                        idx += 1;
                        stage += 1;
                    }
                }
            }
            let hidden = (4096 / div).max(1);
            d.linear("classifier.0", hidden, cin * 49);
            d.linear("classifier.3", hidden, hidden);
            head_fits(num_classes, hidden)?;
            d.linear("classifier.6", num_classes, hidden);
        }
        super::Standard::ResNet(spec) => {
            let exp = if spec.bottleneck { 4 } else { 1 };
            let stem = (64 / div).max(1);
            d.conv("conv1", stem, 3, 7, false);
            d.bn("bn1", stem);
            // A wide or grouped bottleneck's 3×3 conv: torchvision's `width_per_group` ×
            // `groups` / 64 times the plain width, kept relative to the (narrowed) stem so that
            // detection reads the same groups and channels per group back.
            let (groups, per_group) = spec.width.unwrap_or((1, 64));
            let scale = per_group * groups / 64;
            let grouped = (groups, per_group) != (1, 64);
            if grouped
                && !((stem * scale).is_multiple_of(groups)
                    && (per_group * groups).is_multiple_of(64))
            {
                return Err(Error::Invalid(format!(
                    "{arch} at --width-div {div}: layer1's 3x3 conv would have {} channels, not \
                     a multiple of its {groups} groups; use a smaller --width-div",
                    stem * scale
                )));
            }
            let mut cin = stem;
            for (l, &n) in spec.blocks.iter().enumerate() {
                let planes = ((64 << l) / div).max(1);
                let width = match grouped {
                    true => (stem * scale) << l,
                    false => planes,
                };
                for i in 0..n {
                    let p = format!("layer{}.{i}", l + 1);
                    if spec.bottleneck {
                        d.conv(&format!("{p}.conv1"), width, cin, 1, false);
                        d.bn(&format!("{p}.bn1"), width);
                        d.conv(&format!("{p}.conv2"), width, width / groups, 3, false);
                        d.bn(&format!("{p}.bn2"), width);
                        d.conv(&format!("{p}.conv3"), planes * exp, width, 1, false);
                        d.bn(&format!("{p}.bn3"), planes * exp);
                    } else {
                        d.conv(&format!("{p}.conv1"), planes, cin, 3, false);
                        d.bn(&format!("{p}.bn1"), planes);
                        d.conv(&format!("{p}.conv2"), planes, planes, 3, false);
                        d.bn(&format!("{p}.bn2"), planes);
                    }
                    let stride = if l > 0 && i == 0 { 2 } else { 1 };
                    if stride != 1 || cin != planes * exp {
                        d.conv(&format!("{p}.downsample.0"), planes * exp, cin, 1, false);
                        d.bn(&format!("{p}.downsample.1"), planes * exp);
                    }
                    cin = planes * exp;
                }
            }
            head_fits(num_classes, cin)?;
            d.linear("fc", num_classes, cin);
        }
    }
    Ok(d.out)
}

/// Serialises tensors as safetensors with the given float dtype (F32, F16 or BF16).
pub fn to_safetensors(tensors: &[(String, Tensor)], dtype: Dtype) -> Result<Vec<u8>> {
    let mut names = std::collections::HashSet::new();
    if let Some((n, _)) = tensors.iter().find(|(n, _)| !names.insert(n)) {
        return Err(Error::Invalid(format!("tensor `{n}` is given twice")));
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b: Vec<u8> = match dtype {
                Dtype::F16 => t
                    .data()
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => t
                    .data()
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::F64 => t
                    .data()
                    .iter()
                    .flat_map(|v| f64::from(*v).to_le_bytes())
                    .collect(),
                _ => t.data().iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            (n.clone(), b, t.shape().to_vec())
        })
        .collect();
    let dtype = match dtype {
        Dtype::F16 | Dtype::BF16 | Dtype::F64 => dtype,
        _ => Dtype::F32,
    };
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, b, s)| {
            let v = TensorView::new(dtype, s.clone(), b)
                .map_err(|e| Error::Invalid(format!("{n}: {e:?}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, &None).map_err(|e| Error::Invalid(format!("serialising: {e:?}")))
}

pub fn write(path: &Path, tensors: &[(String, Tensor)], dtype: Dtype) -> Result<()> {
    let bytes = to_safetensors(tensors, dtype)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    /// A head past 2^28 weights is refused before it is made, naming the classes and the most
    /// that fit; ImageNet-21k's is made.
    #[test]
    fn huge_heads_are_refused() {
        let err = super::state_dict("resnet18", 16, 100_000_000, 0).unwrap_err();
        let s = err.to_string();
        assert!(
            s.contains("100000000 classes over 32 features") && s.contains("8388608 classes"),
            "{s}"
        );
        let d = super::state_dict("resnet18", 16, 21_841, 0).unwrap();
        let fc = d.iter().find(|(n, _)| n == "fc.weight").unwrap();
        assert_eq!(fc.1.shape(), [21_841, 32]);
    }
}
