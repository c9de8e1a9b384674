//! torchvision VGG (`features.N`, `avgpool`, `classifier.N`), with or without BatchNorm.
//! Channel counts come from the tensors, so narrowed variants load too.

use super::graph::{Builder, ConvKind, Graph, View};
use super::Weights;
use crate::backend::Pool2dParams;
use crate::{Error, Result};

/// One entry of a torchvision VGG config: a 3×3 conv or a 2×2 max pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    Conv,
    Pool,
}

/// torchvision's configs A, B, D, E as conv/pool patterns: convs per stage, a pool after each.
pub fn standard(depth: usize) -> Option<Vec<Item>> {
    let stages: &[usize] = match depth {
        11 => &[1, 1, 2, 2, 2],
        13 => &[2, 2, 2, 2, 2],
        16 => &[2, 2, 3, 3, 3],
        19 => &[2, 2, 4, 4, 4],
        _ => return None,
    };
    Some(
        stages
            .iter()
            .flat_map(|&n| std::iter::repeat_n(Item::Conv, n).chain([Item::Pool]))
            .collect(),
    )
}

/// Reads the conv/pool pattern off the `features.N.weight` indices: a conv takes 2 module
/// slots (conv, ReLU) or 3 with BatchNorm; a 1-slot gap between convs is a max pool. The
/// trailing pool that every torchvision config ends with cannot be seen in the weights and is
/// assumed.
pub fn detect(w: &Weights, bn: bool) -> Result<Vec<Item>> {
    let mut convs: Vec<usize> = w
        .names()
        .filter_map(|n| n.strip_prefix("features.")?.strip_suffix(".weight"))
        .filter_map(|i| i.parse().ok())
        .filter(|i| w.shape_of(&format!("features.{i}.weight")).map(|s| s.len()) == Some(4))
        .collect();
    convs.sort_unstable();
    if convs.first() != Some(&0) {
        return Err(Error::UnknownArch(format!(
            "{}: VGG weights must start with features.0.weight (a conv)",
            w.path().display()
        )));
    }
    let per = if bn { 3 } else { 2 };
    let mut items = Vec::new();
    for (i, &c) in convs.iter().enumerate() {
        items.push(Item::Conv);
        match convs.get(i + 1).map(|&next| next - c) {
            None => items.push(Item::Pool),
            Some(d) if d == per => {}
            Some(d) if d == per + 1 => items.push(Item::Pool),
            Some(d) => {
                return Err(Error::UnknownArch(format!(
                    "{}: features.{c} and features.{} are {d} modules apart; a VGG has convs {per} \
                     apart, or {} with a max pool between",
                    w.path().display(),
                    convs[i + 1],
                    per + 1
                )))
            }
        }
    }
    Ok(items)
}

pub fn build(w: &Weights, items: &[Item], bn: bool, arch: String) -> Result<Graph> {
    let mut b = Builder::new(w, 3);
    let mut x = 0;
    let mut idx = 0;
    let mut last_relu = None;
    // torchvision's VGG-BN convs have biases (before BatchNorm they are redundant, so custom
    // VGG-BNs may leave them all out): one missing among the others is a damaged file, which
    // would otherwise run as if its bias were 0.
    let biased = match bn {
        true => (w.names())
            .filter_map(|n| n.strip_prefix("features.")?.strip_suffix(".bias"))
            .any(|i| w.shape_of(&format!("features.{i}.weight")).map(|s| s.len()) == Some(4)),
        false => true,
    };
    let kind = match biased {
        true => ConvKind::WithBias,
        false => ConvKind::Plain,
    };
    for item in items {
        match item {
            Item::Conv => {
                let name = format!("features.{idx}");
                if bn {
                    let bn_name = format!("features.{}", idx + 1);
                    x = b.conv(x, &name, 1, Some(&bn_name), kind)?;
                    idx += 2;
                } else {
                    x = b.conv(x, &name, 1, None, ConvKind::WithBias)?;
                    idx += 1;
                }
                let relu = format!("features.{idx}");
                x = b.relu(x, Some(&relu));
                last_relu = Some(relu);
                idx += 1;
            }
            Item::Pool => {
                x = b.max_pool(x, Pool2dParams::new(2, 2, 0), &format!("features.{idx}"));
                idx += 1;
            }
        }
    }
    b.name("features", x, View::Output, "sequential");

    // The classifier: Linear, ReLU, Dropout, ..., Linear. Its first in-features fix the
    // adaptive pool size (7×7 in torchvision).
    let mut linears: Vec<usize> = w
        .names()
        .filter_map(|n| n.strip_prefix("classifier.")?.strip_suffix(".weight"))
        .filter_map(|i| i.parse().ok())
        .collect();
    linears.sort_unstable();
    // torchvision's classifier: Linear (0), ReLU, Dropout, Linear (3), ReLU, Dropout, Linear
    // (6); fine-tuned heads may be shorter (Linear at 0 and 3). One that ends in a square
    // hidden Linear (4096 → 4096 in torchvision) is cut short, not another model: its last
    // layer would be taken for thousands of classes.
    if linears.first() != Some(&0) {
        // torchvision's AlexNet (a Dropout at classifier.0) and SqueezeNet (a conv at
        // classifier.1) are named like a VGG: say what the file is, not what it lacks.
        let said = (w.metadata().get("arch"))
            .filter(|a| !a.starts_with("vgg"))
            .map_or(String::new(), |a| format!(" (its metadata says `{a}`)"));
        return Err(Error::UnknownArch(format!(
            "{}: named like a torchvision VGG (features.N, classifier.N) but without a VGG's \
             classifier.0 linear layer{said}: another network, such as AlexNet or SqueezeNet; \
             only VGG and ResNet are supported",
            w.path().display()
        )));
    }
    let last = *linears.last().expect("classifier.0 is there");
    let last_shape = w
        .shape_of(&format!("classifier.{last}.weight"))
        .unwrap_or(&[]);
    if linears.len() > 1 && last < 6 && last_shape.len() == 2 && last_shape[0] == last_shape[1] {
        return Err(Error::MissingTensor {
            path: w.path().to_path_buf(),
            name: format!("classifier.{}.weight", last + 3),
            hint: format!(
                " (classifier.{last} maps {} → {} like a hidden layer; the file looks cut short)",
                last_shape[1], last_shape[0]
            ),
        });
    }
    let first = linears[0];
    // (A weight that is not a matrix has no input width: 0 matches no side, so the error below.)
    let fin = match w.shape_of(&format!("classifier.{first}.weight")) {
        Some(&[_, fin]) => fin,
        _ => 0,
    };
    let c = b.channels[x];
    let side = (1..=64).find(|s| c * s * s == fin).ok_or_else(|| {
        let shape = w
            .shape_of(&format!("classifier.{first}.weight"))
            .unwrap_or(&[]);
        Error::BadShape {
            path: w.path().to_path_buf(),
            name: format!("classifier.{first}.weight"),
            expected: format!(
                "[{}, {c}·h·w] (the {c} channels of the last conv, pooled to h×w)",
                shape.first().copied().unwrap_or(0)
            ),
            found: shape.to_vec(),
        }
    })?;
    x = b.adaptive_avg_pool(x, (side, side), "avgpool");
    x = b.flatten(x, (side, side));
    for (i, &li) in linears.iter().enumerate() {
        x = b.linear(x, &format!("classifier.{li}"))?;
        if let Some(&next) = linears.get(i + 1) {
            if next != li + 3 {
                return Err(Error::UnknownArch(format!(
                    "{}: classifier.{li} and classifier.{next} should be 3 modules apart \
                     (Linear, ReLU, Dropout)",
                    w.path().display()
                )));
            }
            x = b.relu(x, Some(&format!("classifier.{}", li + 1)));
            b.name(
                format!("classifier.{}", li + 2),
                x,
                View::Output,
                "dropout (identity)",
            );
        }
    }
    b.name("classifier", x, View::Output, "sequential");
    let default = last_relu.expect("a VGG has convs");
    Ok(b.finish(arch, default))
}
