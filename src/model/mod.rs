//! Models from safetensors in torchvision's state_dict naming: architecture detection, the
//! VGG and ResNet builders (BatchNorm folded at load time) and the network that runs them.

mod graph;
mod network;
mod pth;
pub mod resnet;
pub mod synth;
pub mod vgg;
mod weights;

pub use graph::{BnAffine, Graph, Layer, Node, Op, View};
pub use network::{Backward, FromLayer, LayerOutput, Network, Pass, RunOutput, DIAGNOSIS_BYTES};
pub use weights::Weights;

use std::path::Path;

use crate::{Error, Result};

/// Every architecture name `--arch` accepts.
pub const ARCHS: &[&str] = &[
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
];

/// torchvision's wide and grouped (ResNeXt) bottleneck ResNets, which `--arch` also accepts:
/// (name, depth, groups, channels per group of layer1's 3×3 conv at a stem of 64), as
/// torchvision's `groups` and `width_per_group`. Detection names a file by them; forcing one
/// checks the file's shapes.
pub const RESNET_VARIANTS: &[(&str, usize, usize, usize)] = &[
    ("wide_resnet50_2", 50, 1, 128),
    ("wide_resnet101_2", 101, 1, 128),
    ("resnext50_32x4d", 50, 32, 4),
    ("resnext101_32x8d", 101, 32, 8),
    ("resnext101_64x4d", 101, 64, 4),
];

/// Every name `--arch` accepts, for messages.
fn arch_names() -> String {
    (ARCHS.iter().copied())
        .chain(RESNET_VARIANTS.iter().map(|v| v.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads a model, detecting its architecture from tensor names and shapes unless `arch`
/// forces one of [`ARCHS`] or [`RESNET_VARIANTS`] (then the standard layout of that
/// architecture is read).
pub fn load(path: impl AsRef<Path>, arch: Option<&str>) -> Result<Graph> {
    let w = Weights::open(path)?;
    build(&w, arch)
}

/// The largest square input side accepted (`--size`, metadata `input_size`).
pub const MAX_INPUT_SIDE: usize = 8192;

pub fn build(w: &Weights, arch: Option<&str>) -> Result<Graph> {
    let mut g = match arch {
        Some(a) => build_forced(w, a)?,
        None => build_detected(w)?,
    };
    // As torch's strict `load_state_dict`: a tensor the model does not read means the file
    // holds another architecture (deeper, another head) or `--arch` names the wrong one; run
    // anyway, the explanations would come from a different network than the file's.
    let unread = w.unread();
    if !unread.is_empty() {
        // Named by module (`layer3.6`), in the network's order, not tensor by tensor.
        let module = |n: &str| match n.splitn(3, '.').collect::<Vec<_>>()[..] {
            [a, b, _] => format!("{a}.{b}"),
            _ => n.to_string(),
        };
        let natural = |m: &String| {
            m.split('.')
                .map(|p| (p.parse::<usize>().unwrap_or(usize::MAX), p.to_string()))
                .collect::<Vec<_>>()
        };
        let mut modules: Vec<String> = unread.iter().map(|n| module(n)).collect();
        modules.sort_by_key(natural);
        modules.dedup();
        let mut list = modules
            .iter()
            .take(8)
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>();
        if modules.len() > 8 {
            list.push(format!("… `{}`", modules[modules.len() - 1]));
        }
        let fix = match arch {
            Some(a) => {
                format!("--arch {a} may name the wrong architecture (leave it out to detect it)")
            }
            None => "the file holds layers a torchvision VGG or ResNet does not have".into(),
        };
        return Err(Error::Invalid(format!(
            "{}: {} tensor(s) of {} module(s) are not part of the {} built from it: {}; {fix}",
            w.path().display(),
            unread.len(),
            modules.len(),
            g.arch,
            list.join(", ")
        )));
    }
    let meta = w.metadata();
    if let Some(l) = meta.get("labels") {
        let labels: Vec<String> = serde_json::from_str(l).map_err(|e| {
            Error::Invalid(format!(
                "{}: metadata `labels` is not a JSON list of strings: {e}",
                w.path().display()
            ))
        })?;
        if labels.len() != g.num_classes {
            return Err(Error::Invalid(format!(
                "{}: metadata lists {} labels for {} classes",
                w.path().display(),
                labels.len(),
                g.num_classes
            )));
        }
        g.labels = Some(labels);
    }
    match (meta.get("mean"), meta.get("std")) {
        // (Given by the caller: the metadata's, perhaps wrong, is not read.)
        _ if w.normalization().is_some() => {
            g.normalization = w.normalization().expect("checked");
        }
        (None, None) => {}
        (Some(m), Some(s)) => {
            let bad = |e: Error| Error::Invalid(format!("{}: metadata {e}", w.path().display()));
            let (mean, std) = (
                crate::image::Normalization::triple(m, "`mean`").map_err(bad)?,
                crate::image::Normalization::triple(s, "`std`").map_err(bad)?,
            );
            g.normalization = crate::image::Normalization::new(mean, std)
                .map_err(|e| Error::Invalid(format!("{}; --mean/--std override it", bad(e))))?;
        }
        _ => {
            return Err(Error::Invalid(format!(
                "{}: metadata gives one of `mean` and `std` without the other",
                w.path().display()
            )))
        }
    }
    if let Some(s) = meta.get("input_size") {
        g.input_size = Some(match s.trim() {
            "native" => crate::image::InputSize::Native,
            n => crate::image::InputSize::Square(
                n.parse()
                    .ok()
                    .filter(|v| (1..=MAX_INPUT_SIDE).contains(v))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{}: metadata `input_size` is `{s}`, not `native` or a size from 1 \
                             to {MAX_INPUT_SIDE}",
                            w.path().display()
                        ))
                    })?,
            ),
        });
    }
    Ok(g)
}

/// A standard torchvision layout named by one of [`ARCHS`] or [`RESNET_VARIANTS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standard {
    Vgg { items: Vec<vgg::Item>, bn: bool },
    ResNet(resnet::Spec),
}

/// Parses one of [`ARCHS`] or [`RESNET_VARIANTS`].
pub fn standard(arch: &str) -> Result<Standard> {
    let unknown = || Error::UnknownArch(format!("`{arch}` is not one of {}", arch_names()));
    if let Some(spec) = resnet::Spec::variant(arch) {
        return Ok(Standard::ResNet(spec));
    }
    if let Some(rest) = arch.strip_prefix("vgg") {
        let (depth, bn) = rest
            .strip_suffix("_bn")
            .map_or((rest, false), |d| (d, true));
        let items = depth
            .parse()
            .ok()
            .and_then(vgg::standard)
            .ok_or_else(unknown)?;
        Ok(Standard::Vgg { items, bn })
    } else if let Some(depth) = arch.strip_prefix("resnet") {
        let spec = depth
            .parse()
            .ok()
            .and_then(resnet::Spec::standard)
            .ok_or_else(unknown)?;
        Ok(Standard::ResNet(spec))
    } else {
        Err(unknown())
    }
}

fn build_forced(w: &Weights, arch: &str) -> Result<Graph> {
    let std = standard(arch)?;
    // The block or BatchNorm kind the file has and `arch` has not would fail later on a
    // tensor or a width, without saying why.
    let file_kind = match &std {
        Standard::Vgg { bn, .. } => {
            let has_bn = w.contains("features.1.running_var");
            (w.contains("features.0.weight") && has_bn != *bn).then_some(match has_bn {
                true => "VGG with BatchNorm (`features.1.running_var`): use a `_bn` --arch",
                false => "VGG without BatchNorm (no `features.1.running_var`): drop `_bn`",
            })
        }
        Standard::ResNet(spec) => {
            let bottleneck = w.contains("layer1.0.conv3.weight");
            let resnet = w.contains("layer1.0.conv1.weight");
            (resnet && bottleneck != spec.bottleneck).then_some(match bottleneck {
                true => {
                    "ResNet of bottleneck blocks (`layer1.0.conv3.weight`): resnet50, 101 or 152"
                }
                false => "ResNet of basic blocks (no `layer1.0.conv3.weight`): resnet18 or 34",
            })
        }
    };
    if let Some(kind) = file_kind {
        return Err(Error::UnknownArch(format!(
            "{}: --arch {arch} does not fit the file, a {kind} (or leave --arch out to detect it)",
            w.path().display()
        )));
    }
    if let Standard::ResNet(spec) = &std {
        check_resnet_width(w, arch, spec)?;
    }
    match std {
        Standard::Vgg { items, bn } => vgg::build(w, &items, bn, arch.to_string()),
        Standard::ResNet(spec) => resnet::build(w, &spec, arch.to_string()),
    }
}

/// `--arch` a wide ResNet or a ResNeXt: layer1's 3×3 conv must have its groups and, against
/// the stem's width (64 in torchvision; fewer in a narrowed file), its channels per group.
/// torchvision's plain names are not checked: their widths are read from the file as they are
/// (a pruned ResNet-50 runs as `resnet50`).
fn check_resnet_width(w: &Weights, arch: &str, spec: &resnet::Spec) -> Result<()> {
    let Some((groups, per_group)) = spec.width.filter(|&g| g != (1, 64)) else {
        return Ok(());
    };
    if resnet::width(w) == spec.width {
        return Ok(());
    }
    let conv2 = w.shape_of("layer1.0.conv2.weight").unwrap_or(&[]).to_vec();
    let stem = w.shape_of("conv1.weight").and_then(|s| s.first().copied());
    Err(Error::UnknownArch(format!(
        "{}: --arch {arch} does not fit the file: {arch}'s layer1.0.conv2 has {groups} group(s) \
         of {per_group} channels (at a stem of 64), the file's weight is {conv2:?} with a stem of \
         {} (or leave --arch out to detect it)",
        w.path().display(),
        stem.map_or("?".to_string(), |s| s.to_string())
    )))
}

fn build_detected(w: &Weights) -> Result<Graph> {
    if w.contains("features.0.weight") && w.names().any(|n| n.starts_with("classifier.")) {
        let bn = w.contains("features.1.running_var");
        let items = vgg::detect(w, bn)?;
        let name = [11, 13, 16, 19]
            .into_iter()
            .find(|&d| vgg::standard(d).as_deref() == Some(&items[..]))
            .map_or_else(
                || {
                    format!(
                        "vgg (custom, {} convs)",
                        items.iter().filter(|i| **i == vgg::Item::Conv).count()
                    )
                },
                |d| format!("vgg{d}"),
            );
        let name = if bn { format!("{name}_bn") } else { name };
        vgg::build(w, &items, bn, name)
    } else if w.contains("conv1.weight")
        || w.contains("conv1.0.weight")
        || w.contains("layer1.0.conv1.weight")
    {
        let spec = resnet::detect(w)?;
        resnet::build(w, &spec, spec.name())
    } else {
        let some: Vec<&str> = w.names().take(8).collect();
        Err(Error::UnknownArch(format!(
            "{}: neither a torchvision VGG (features.N / classifier.N) nor a ResNet \
             (conv1, layer1..4, fc); its tensors include {}; use --arch to force one of {}",
            w.path().display(),
            some.join(", "),
            arch_names()
        )))
    }
}

/// Where `s`, all digits and so read as a class index, is also one of the model's labels at
/// another index (a data set whose classes are numbers, listed in ImageFolder's sorted order:
/// `10` is the second): that label's index, so a note can say which was taken.
pub fn digits_label_elsewhere(s: &str, labels: Option<&[String]>) -> Option<usize> {
    let index = s.parse::<usize>().ok()?;
    let at = labels?.iter().position(|l| l == s)?;
    (at != index).then_some(at)
}

/// The lines of a file of classes (a class list, an eval manifest) that give a class as
/// digits which [`digits_label_elsewhere`] finds, for one note: the first (its line number,
/// text and the class whose label it is) and how many.
#[derive(Debug, Default)]
pub struct DigitsLabels {
    first: Option<(usize, String, usize)>,
    lines: usize,
}

impl DigitsLabels {
    /// Counts line `line`'s class `s` when it is such a class.
    pub fn see(&mut self, line: usize, s: &str, labels: Option<&[String]>) {
        if let Some(at) = digits_label_elsewhere(s, labels) {
            self.first.get_or_insert((line, s.to_string(), at));
            self.lines += 1;
        }
    }

    /// The note for `file`, None when no line gave such a class.
    pub fn note(&self, file: &std::path::Path) -> Option<String> {
        let (line, class, at) = self.first.as_ref()?;
        Some(format!(
            "{}:{line}: class `{class}` is read as class index {class}, but it is also the \
             model's label of class {at}{}; to mean the label, give its index",
            file.display(),
            match self.lines {
                1 => String::new(),
                n => format!(" ({n} lines give such a class)"),
            }
        ))
    }
}

/// The classes whose label is `s`: exactly, else with ASCII case aside (`Circle` for
/// `circle`); several where the labels repeat it.
pub fn label_classes(s: &str, labels: &[String]) -> Vec<usize> {
    let exact: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == s).collect();
    match exact.is_empty() {
        true => (0..labels.len())
            .filter(|&i| labels[i].eq_ignore_ascii_case(s))
            .collect(),
        false => exact,
    }
}

/// A class given as an index or as one of the model's labels (exactly, else ignoring ASCII
/// case): None when it is neither; an error when the label names several classes (ImageNet
/// has two `crane`s and two `maillot`s).
pub fn class_index(s: &str, labels: Option<&[String]>) -> Result<Option<usize>, String> {
    if let Ok(c) = s.parse::<usize>() {
        return Ok(Some(c));
    }
    // Digits too many for an index are still an index, not a label to look for.
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{s}` is out of range as a class index (far more than any model has)"
        ));
    }
    let Some(l) = labels else {
        return Ok(None);
    };
    match label_classes(s, l)[..] {
        [] => Ok(None),
        [c] => Ok(Some(c)),
        ref several => Err(format!(
            "`{s}` is the label of classes {several:?}; give the index of the one meant"
        )),
    }
}
