//! torchvision ResNet (BasicBlock and Bottleneck, v1.5 with the stride on the 3×3 conv),
//! which timm's classic ResNets share names with. Widths come from the tensors, so narrowed,
//! wide and grouped (ResNeXt) variants load too.

use super::graph::{Builder, ConvKind, Graph, View};
use super::Weights;
use crate::backend::Pool2dParams;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub bottleneck: bool,
    pub blocks: [usize; 4],
    /// A bottleneck's 3×3 conv as torchvision's `groups` and `width_per_group` give it:
    /// (groups, channels per group at a stem of 64). (1, 64) for a ResNet, (1, 128) for a wide
    /// one, (32, 4) for ResNeXt-50 32x4d; basic blocks are always (1, 64). None when a file's
    /// layer1 is no whole number of channels per group at that scale (a pruned file).
    pub width: Option<(usize, usize)>,
}

/// The ResNet depths torchvision builds.
const DEPTHS: [usize; 5] = [18, 34, 50, 101, 152];

impl Spec {
    pub fn standard(depth: usize) -> Option<Spec> {
        let (bottleneck, blocks) = match depth {
            18 => (false, [2, 2, 2, 2]),
            34 => (false, [3, 4, 6, 3]),
            50 => (true, [3, 4, 6, 3]),
            101 => (true, [3, 4, 23, 3]),
            152 => (true, [3, 8, 36, 3]),
            _ => return None,
        };
        Some(Spec {
            bottleneck,
            blocks,
            width: Some((1, 64)),
        })
    }

    /// One of torchvision's wide or ResNeXt layouts, by its name in [`super::RESNET_VARIANTS`].
    pub fn variant(name: &str) -> Option<Spec> {
        let &(_, depth, groups, per_group) = super::RESNET_VARIANTS.iter().find(|v| v.0 == name)?;
        let spec = Spec::standard(depth)?;
        Some(Spec {
            width: Some((groups, per_group)),
            ..spec
        })
    }

    /// The torchvision name of this layout, when it is one; else the depth it has the blocks
    /// of (or the blocks) and its groups × channels per group, as ResNeXt names give them.
    pub fn name(&self) -> String {
        let blocks = |d: &usize| {
            Spec::standard(*d)
                .is_some_and(|s| (s.bottleneck, s.blocks) == (self.bottleneck, self.blocks))
        };
        let Some(depth) = DEPTHS.iter().copied().find(blocks) else {
            let kind = match self.bottleneck {
                true => "bottleneck",
                false => "basic",
            };
            return format!(
                "resnet ({kind} blocks {:?}{})",
                self.blocks,
                self.width_text(", ")
            );
        };
        if self.width == Some((1, 64)) {
            return format!("resnet{depth}");
        }
        let variant = super::RESNET_VARIANTS
            .iter()
            .find(|v| v.1 == depth && self.width == Some((v.2, v.3)));
        match variant {
            Some(v) => v.0.to_string(),
            None => format!("resnet{depth} ({})", self.width_text("")),
        }
    }

    /// The width part of a name: "" for torchvision's ResNet width.
    fn width_text(&self, sep: &str) -> String {
        match self.width {
            Some((1, 64)) => String::new(),
            Some((g, d)) => format!("{sep}{g}x{d}d"),
            None => format!("{sep}custom widths"),
        }
    }
}

/// The groups and channels per group (at a stem of 64) of the file's layer1.0.conv2, a
/// bottleneck's 3×3 conv; see [`Spec::width`]. (1, 64) for basic blocks, and where the
/// tensors are missing (the builder names them).
pub fn width(w: &Weights) -> Option<(usize, usize)> {
    if !w.contains("layer1.0.conv3.weight") {
        return Some((1, 64));
    }
    let conv2 = w.shape_of("layer1.0.conv2.weight");
    let stem = w.shape_of("conv1.weight").and_then(|s| s.first().copied());
    match (conv2, stem) {
        // (A zero or absurd dimension is no width: None, and the builder names the tensor.)
        (Some(&[k, cg, ..]), Some(stem)) if k > 0 && cg > 0 && k.is_multiple_of(cg) => {
            let groups = k / cg;
            let (per, div) = (k.checked_mul(64)?, groups.checked_mul(stem)?);
            (div > 0 && per.is_multiple_of(div)).then(|| (groups, per / div))
        }
        (None, _) | (_, None) => Some((1, 64)),
        _ => None,
    }
}

pub fn detect(w: &Weights) -> Result<Spec> {
    if w.contains("conv1.0.weight") {
        return Err(Error::UnknownArch(format!(
            "{}: a deep-stem ResNet (timm resnet*d / resnet*c, `conv1.0.weight`); only the \
             classic 7x7-stem ResNet is supported",
            w.path().display()
        )));
    }
    let bottleneck = w.contains("layer1.0.conv3.weight");
    let mut blocks = [0; 4];
    for (l, n) in blocks.iter_mut().enumerate() {
        while w.contains(&format!("layer{}.{}.conv1.weight", l + 1, *n)) {
            *n += 1;
        }
        if *n == 0 {
            return Err(Error::UnknownArch(format!(
                "{}: no layer{}.0.conv1.weight; a ResNet has layer1..layer4",
                w.path().display(),
                l + 1
            )));
        }
    }
    Ok(Spec {
        bottleneck,
        blocks,
        width: width(w),
    })
}

pub fn build(w: &Weights, spec: &Spec, arch: String) -> Result<Graph> {
    let mut b = Builder::new(w, 3);
    let mut x = b.conv(0, "conv1", 2, Some("bn1"), ConvKind::Plain)?;
    // The weights record kernel sizes, not strides or pooling: a stem other than torchvision's
    // 7x7 (CIFAR's 3x3 at stride 1 without the max pool, most often) would run with the wrong
    // ones and give wrong maps without a sign. Refused instead.
    if let Some(&[_, _, r, s]) = w.shape_of("conv1.weight") {
        if (r, s) != (7, 7) {
            return Err(Error::UnknownArch(format!(
                "{}: conv1.weight is a {r}x{s} kernel; torchvision's ResNet stem is a 7x7 conv \
                 at stride 2 followed by a 3x3 max pool. A changed stem (e.g. CIFAR's 3x3 at \
                 stride 1 without the max pool) cannot be run: its stride and pooling are not \
                 in the weights",
                w.path().display()
            )));
        }
    }
    x = b.relu(x, Some("relu"));
    x = b.max_pool(x, Pool2dParams::new(3, 2, 1), "maxpool");
    for (l, &n) in spec.blocks.iter().enumerate() {
        for i in 0..n {
            let stride = if l > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{i}", l + 1);
            let input = x;
            let mut y = b.conv(
                input,
                &format!("{p}.conv1"),
                if spec.bottleneck { 1 } else { stride },
                Some(&format!("{p}.bn1")),
                ConvKind::Plain,
            )?;
            y = b.relu(y, None);
            y = b.conv(
                y,
                &format!("{p}.conv2"),
                if spec.bottleneck { stride } else { 1 },
                Some(&format!("{p}.bn2")),
                match spec.bottleneck {
                    true => ConvKind::MayBeGrouped,
                    false => ConvKind::Plain,
                },
            )?;
            if spec.bottleneck {
                y = b.relu(y, None);
                let bn3 = format!("{p}.bn3");
                y = b.conv(y, &format!("{p}.conv3"), 1, Some(&bn3), ConvKind::Plain)?;
            }
            let shortcut = if w.contains(&format!("{p}.downsample.0.weight")) {
                let s = b.conv(
                    input,
                    &format!("{p}.downsample.0"),
                    stride,
                    Some(&format!("{p}.downsample.1")),
                    ConvKind::Plain,
                )?;
                b.name(format!("{p}.downsample"), s, View::Output, "sequential");
                s
            } else if b.channels[input] != b.channels[y] || stride != 1 {
                return Err(Error::MissingTensor {
                    path: w.path().to_path_buf(),
                    name: format!("{p}.downsample.0.weight"),
                    hint: format!(
                        " (the block takes {} channels to {}{}, so its shortcut needs the 1x1 \
                         conv)",
                        b.channels[input],
                        b.channels[y],
                        if stride != 1 { " at stride 2" } else { "" }
                    ),
                });
            } else {
                input
            };
            y = b.add(y, shortcut)?;
            x = b.relu(y, None);
            b.name(p, x, View::Output, "block");
        }
        b.name(format!("layer{}", l + 1), x, View::Output, "sequential");
    }
    x = b.adaptive_avg_pool(x, (1, 1), "avgpool");
    x = b.flatten(x, (1, 1));
    b.linear(x, "fc")?;
    Ok(b.finish(arch, "layer4".into()))
}

#[cfg(test)]
mod tests {
    use super::Spec;

    /// torchvision's names where the layout is one; else the depth whose blocks it has and
    /// its groups × channels per group, as ResNeXt's names put them.
    #[test]
    fn names() {
        let r50 = Spec::standard(50).unwrap();
        assert_eq!(r50.name(), "resnet50");
        let named = |width| {
            Spec {
                width,
                ..r50.clone()
            }
            .name()
        };
        assert_eq!(named(Some((1, 128))), "wide_resnet50_2");
        assert_eq!(named(Some((32, 4))), "resnext50_32x4d");
        // ResNeXt-101's widths on ResNet-50's blocks: no torchvision model.
        assert_eq!(named(Some((32, 8))), "resnet50 (32x8d)");
        assert_eq!(named(None), "resnet50 (custom widths)");
        let odd = Spec {
            blocks: [1, 1, 1, 1],
            width: Some((8, 16)),
            ..r50
        };
        assert_eq!(odd.name(), "resnet (bottleneck blocks [1, 1, 1, 1], 8x16d)");
        assert_eq!(
            Spec::variant("resnext101_64x4d").unwrap().name(),
            "resnext101_64x4d"
        );
        assert_eq!(Spec::standard(18).unwrap().name(), "resnet18");
    }
}
