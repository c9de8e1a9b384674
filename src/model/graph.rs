//! The network as a list of nodes in execution order (an SSA program): each node names its
//! inputs by index. Builders (vgg.rs, resnet.rs) emit it; network.rs runs it on a backend.

use crate::backend::{Conv2dParams, Pool2dParams};
use crate::{Error, Result, Tensor};

/// Eval-mode BatchNorm folded into the conv before it: bn(conv(x)) = scale·conv(x) + shift.
/// Kept so the conv's own (pre-BN) output can still be a target layer.
#[derive(Clone, Debug)]
pub struct BnAffine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

#[derive(Clone, Debug)]
pub enum Op {
    Input,
    Conv {
        w: usize,
        b: Option<usize>,
        p: Conv2dParams,
        bn: Option<BnAffine>,
        /// The conv's own bias as the file gives it (before folding), on the host: FullGrad
        /// reads it.
        own_bias: Option<Vec<f32>>,
    },
    Relu,
    MaxPool(Pool2dParams),
    AdaptiveAvgPool((usize, usize)),
    Flatten,
    Linear {
        w: usize,
        b: Option<usize>,
    },
    Add,
}

impl Op {
    pub fn describe(&self, params: &[Vec<usize>]) -> String {
        match self {
            Op::Input => "input".into(),
            Op::Conv { w, p, bn, .. } => {
                let s = &params[*w];
                format!(
                    "conv {}x{} {}->{} stride {}{}{}",
                    s[2],
                    s[3],
                    s[1] * p.groups,
                    s[0],
                    p.stride.0,
                    if p.groups > 1 {
                        format!(" groups {}", p.groups)
                    } else {
                        String::new()
                    },
                    if bn.is_some() { " +bn" } else { "" }
                )
            }
            Op::Relu => "relu".into(),
            Op::MaxPool(p) => format!(
                "max pool {}x{} stride {}",
                p.kernel.0, p.kernel.1, p.stride.0
            ),
            Op::AdaptiveAvgPool((h, w)) => format!("adaptive avg pool to {h}x{w}"),
            Op::Flatten => "flatten".into(),
            Op::Linear { w, .. } => {
                let s = &params[*w];
                format!("linear {}->{}", s[1], s[0])
            }
            Op::Add => "residual add".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<usize>,
}

/// Which value of a node a layer name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The node's output.
    Output,
    /// A conv with folded BN, seen before its BN (torchvision's `convN` module).
    PreBn,
}

#[derive(Clone, Debug)]
pub struct Layer {
    /// torchvision module path, e.g. `layer4.2.conv3`, `features.29`.
    pub name: String,
    pub node: usize,
    pub view: View,
    /// What the module is (conv, bn, relu, block, ...), for `gradcam layers`.
    pub kind: String,
}

/// A built network before its parameters go to a backend.
pub struct Graph {
    pub arch: String,
    pub nodes: Vec<Node>,
    pub layers: Vec<Layer>,
    pub params: Vec<Tensor>,
    pub param_shapes: Vec<Vec<usize>>,
    pub num_classes: usize,
    pub default_layer: String,
    /// Channels of the input image (3 for every torchvision classifier).
    pub in_channels: usize,
    /// Class names, from the file's metadata key `labels` (a JSON list), when present.
    pub labels: Option<Vec<String>>,
    /// The model's own input size, from the metadata key `input_size` (`native` or an
    /// integer), when present.
    pub input_size: Option<crate::image::InputSize>,
    /// The input normalisation the model was trained with: ImageNet's unless the metadata
    /// keys `mean` and `std` give others.
    pub normalization: crate::image::Normalization,
}

impl Graph {
    /// FullGrad's bias terms at node `node`'s output g: a per-channel factor m for each
    /// torchvision module with a bias whose output gradient is a multiple of g, the term being
    /// |m ⊙ g|. A BatchNorm (folded here): m = its effective bias β − μ·γ/√(σ² + ε); the conv
    /// before it, if it has a bias b: m = b·γ/√(σ² + ε) (its output gradient is the BN's
    /// scaled); a conv without BN: m = b. Empty for other nodes (or none), and convs without
    /// either.
    pub fn full_grad_biases(&self, node: usize) -> Vec<Vec<f32>> {
        let Some(Op::Conv { bn, own_bias, .. }) = self.nodes.get(node).map(|n| &n.op) else {
            return Vec::new();
        };
        match (bn, own_bias) {
            (Some(bn), b) => {
                // pytorch-grad-cam lists modules in definition order: the conv, then its BN.
                let mut terms: Vec<Vec<f32>> = b
                    .iter()
                    .map(|b| b.iter().zip(&bn.scale).map(|(b, s)| b * s).collect())
                    .collect();
                terms.push(bn.shift.clone());
                terms
            }
            (None, Some(b)) => vec![b.clone()],
            (None, None) => Vec::new(),
        }
    }

    /// Whether every node that reads the layer `name`'s value, directly or through others, is
    /// affine (conv with its folded BN, average pooling, flatten, linear, add): then the logits
    /// are an affine function of the layer's values, as after ResNet's `layer4` (average pool,
    /// fc), and zeroing channel k lowers a score s by exactly Σ_ij (∂s/∂A_k · A_k)_ij.
    pub fn affine_after(&self, name: &str) -> Result<bool> {
        let t = self.layer(name)?.node;
        let mut reads = vec![false; self.nodes.len()];
        reads[t] = true;
        for (i, node) in self.nodes.iter().enumerate().skip(t + 1) {
            reads[i] = node.inputs.iter().any(|&j| reads[j]);
            let affine = matches!(
                node.op,
                Op::Conv { .. }
                    | Op::AdaptiveAvgPool(_)
                    | Op::Flatten
                    | Op::Linear { .. }
                    | Op::Add
            );
            if reads[i] && !affine {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn layer(&self, name: &str) -> Result<&Layer> {
        self.layers
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| Error::UnknownLayer {
                name: name.to_string(),
                valid: self.layer_names_summary(),
            })
    }

    /// The layer `name` if CAM methods can target it: it exists and its output is spatial
    /// ([N, C, H, W]; not the flattened classifier). Checked once up front, so a bad choice
    /// stops a run instead of failing every image.
    pub fn target(&self, name: &str) -> Result<&Layer> {
        let layer = self.layer(name)?;
        // The rank does not depend on the size: the model's own, else 224, which every
        // model takes.
        let s = match self.input_size {
            Some(crate::image::InputSize::Square(s)) => s,
            _ => 224,
        };
        let shapes = (self.shapes(&[1, self.in_channels, s, s]).map(|v| (v, s))).or_else(|_| {
            self.shapes(&[1, self.in_channels, 224, 224])
                .map(|v| (v, 224))
        });
        if let Ok((shapes, s)) = shapes {
            if shapes[layer.node].len() != 4 {
                return Err(Error::BadTarget {
                    name: name.into(),
                    reason: format!(
                        "CAM methods need a spatial activation [N, C, H, W]; this layer gives \
                         {:?} (at {s}×{s})",
                        shapes[layer.node]
                    ),
                });
            }
        }
        Ok(layer)
    }

    /// Refuses target layers whose activations are all one position at an `hw` input: a map
    /// of one value shows nowhere (scaled to [0, 1], as pytorch-grad-cam scales it, it is all
    /// zeros; among several layers, one such adds zeros to the others' mean). Sizes the
    /// network cannot take are refused as [`Graph::shapes`] refuses them.
    pub fn check_map_size(&self, layers: &[&str], (h, w): (usize, usize)) -> Result<()> {
        let shapes = self.shapes(&[1, self.in_channels, h, w])?;
        let mut one = None;
        for &name in layers {
            let s = &shapes[self.layer(name)?.node];
            match s.len() == 4 && s[2] * s[3] == 1 {
                true => one = one.or(Some(name)),
                false => return Ok(()),
            }
        }
        match one {
            Some(name) => Err(Error::BadTarget {
                name: name.into(),
                reason: format!(
                    "its activation is 1×1 at a {h}×{w} input: a map of one position shows \
                     nowhere (scaled to [0, 1] it is all zeros); choose an earlier layer (or a \
                     larger input, where the layer's size follows it)"
                ),
            }),
            None => Ok(()),
        }
    }

    fn layer_names_summary(&self) -> String {
        let names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        // Long ResNets have hundreds of layers; show the module-level ones in full and say
        // where to find the rest.
        if names.len() <= 40 {
            names.join(", ")
        } else {
            let top: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| n.matches('.').count() <= 1)
                .collect();
            format!(
                "{} ... ({} in all; `gradcam layers MODEL` lists every one)",
                top.join(", "),
                names.len()
            )
        }
    }

    /// The most bytes one layer of one image's forward pass at `hw` reads and writes (its
    /// inputs and its output, f32): what a batch's memory on the CPU grows by per image. (A
    /// layer's scratch space is bounded apart from the batch.)
    pub fn largest_layer_bytes(&self, hw: (usize, usize)) -> Result<u64> {
        self.largest_layer_bytes_from(hw, 0)
    }

    /// [`Graph::largest_layer_bytes`] over the nodes from `first` on (a pass run on from a
    /// layer, as Ablation-CAM's).
    pub fn largest_layer_bytes_from(&self, (h, w): (usize, usize), first: usize) -> Result<u64> {
        let shapes = self.shapes(&[1, self.in_channels, h, w])?;
        // (Saturating: a size past u64 is simply too large, never a small wrapped one.)
        let bytes = |s: &Vec<usize>| (s.iter()).fold(4u64, |b, &d| b.saturating_mul(d as u64));
        Ok((self.nodes.iter().zip(&shapes).skip(first))
            .map(|(node, out)| {
                (node.inputs.iter()).fold(bytes(out), |b, &j| b.saturating_add(bytes(&shapes[j])))
            })
            .max()
            .unwrap_or(0))
    }

    /// Multiply-adds ×2 of one image's forward pass at `hw` (convolutions and linear layers;
    /// the elementwise ops are left out): the floor benchmarks are held against. torchvision's
    /// "GFLOPS" column counts multiply-adds, half of this.
    pub fn forward_flops(&self, (h, w): (usize, usize)) -> Result<f64> {
        let shapes = self.shapes(&[1, self.in_channels, h, w])?;
        Ok(self
            .nodes
            .iter()
            .zip(&shapes)
            .map(|(node, out)| match &node.op {
                Op::Conv { w, .. } => {
                    // per output element: C/g · R · S multiply-adds (w is [K, C/g, R, S])
                    let ws = &self.param_shapes[*w];
                    2.0 * (ws[1] * ws[2] * ws[3]) as f64 * out.iter().product::<usize>() as f64
                }
                Op::Linear { w, .. } => {
                    let ws = &self.param_shapes[*w];
                    2.0 * (ws[0] * ws[1]) as f64
                }
                _ => 0.0,
            })
            .sum())
    }

    /// Output shape of every node for an input of `input` = [N, C, H, W], or an error naming
    /// the first layer the input is too small for.
    pub fn shapes(&self, input: &[usize]) -> Result<Vec<Vec<usize>>> {
        if input.len() != 4 || input[1] != self.in_channels {
            return Err(Error::BadInput {
                found: input.to_vec(),
                reason: format!("expected [N, {}, H, W]", self.in_channels),
            });
        }
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let ins: Vec<&Vec<usize>> = node.inputs.iter().map(|&j| &shapes[j]).collect();
            let too_small = || Error::BadInput {
                found: input.to_vec(),
                reason: format!(
                    "the image is too small for {} ({}), which gets {:?}",
                    self.node_name(i),
                    node.op.describe(&self.param_shapes),
                    ins[0]
                ),
            };
            let s = match &node.op {
                Op::Input => input.to_vec(),
                Op::Conv { w, p, .. } => {
                    let ws = &self.param_shapes[*w];
                    let (oh, ow) = p
                        .out_hw((ins[0][2], ins[0][3]), (ws[2], ws[3]))
                        .ok_or_else(too_small)?;
                    vec![ins[0][0], ws[0], oh, ow]
                }
                Op::Relu => ins[0].clone(),
                Op::Add => {
                    if ins[0] != ins[1] {
                        return Err(Error::BadInput {
                            found: input.to_vec(),
                            reason: format!(
                                "the residual add of {} gets {:?} and {:?} (a strided block \
                                 without a downsample?)",
                                self.node_name(i),
                                ins[0],
                                ins[1]
                            ),
                        });
                    }
                    ins[0].clone()
                }
                Op::MaxPool(p) => {
                    let (oh, ow) = p.out_hw((ins[0][2], ins[0][3])).ok_or_else(too_small)?;
                    vec![ins[0][0], ins[0][1], oh, ow]
                }
                Op::AdaptiveAvgPool((h, w)) => vec![ins[0][0], ins[0][1], *h, *w],
                Op::Flatten => vec![ins[0][0], ins[0][1..].iter().product()],
                Op::Linear { w, .. } => vec![ins[0][0], self.param_shapes[*w][0]],
            };
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// The most specific layer name of a node (for messages).
    pub fn node_name(&self, node: usize) -> String {
        self.layers
            .iter()
            .filter(|l| l.node == node)
            .max_by_key(|l| l.name.len())
            .map_or_else(|| format!("node {node}"), |l| l.name.clone())
    }
}

/// What torchvision's layout allows a conv: a bias, and groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvKind {
    /// VGG's convs: a bias, no groups. (A custom VGG-BN whose convs all leave out the bias
    /// BatchNorm makes redundant builds its convs [`ConvKind::Plain`].)
    WithBias,
    /// ResNet's: no bias (one in the file is used), no groups.
    Plain,
    /// A ResNet bottleneck's middle conv: ResNeXt groups it.
    MayBeGrouped,
}

/// Emits nodes, layers and parameters while reading tensors from the weights file.
pub(crate) struct Builder<'w> {
    pub weights: &'w super::Weights,
    pub nodes: Vec<Node>,
    pub layers: Vec<Layer>,
    pub params: Vec<Tensor>,
    /// Channel count of each node's output.
    pub channels: Vec<usize>,
}

/// torchvision's BatchNorm2d default.
const BN_EPS: f32 = 1e-5;

impl<'w> Builder<'w> {
    pub fn new(weights: &'w super::Weights, in_channels: usize) -> Self {
        Builder {
            weights,
            nodes: vec![Node {
                op: Op::Input,
                inputs: vec![],
            }],
            layers: vec![],
            params: vec![],
            channels: vec![in_channels],
        }
    }

    fn push(&mut self, op: Op, inputs: Vec<usize>, channels: usize) -> usize {
        self.nodes.push(Node { op, inputs });
        self.channels.push(channels);
        self.nodes.len() - 1
    }

    fn param(&mut self, t: Tensor) -> usize {
        self.params.push(t);
        self.params.len() - 1
    }

    pub fn name(&mut self, name: impl Into<String>, node: usize, view: View, kind: &str) {
        self.layers.push(Layer {
            name: name.into(),
            node,
            view,
            kind: kind.to_string(),
        });
    }

    /// A conv module `name` (weight, and a bias as `kind` says) with padding (k-1)/2,
    /// optionally followed by the BatchNorm module `bn`, which is folded in.
    pub fn conv(
        &mut self,
        input: usize,
        name: &str,
        stride: usize,
        bn: Option<&str>,
        kind: ConvKind,
    ) -> Result<usize> {
        let cin = self.channels[input];
        let wname = format!("{name}.weight");
        let mut w = self.weights.get(&wname, &[None, None, None, None])?;
        let (k, cg, r, s) = w.dims4();
        if [k, cg, r, s, cin].contains(&0) {
            return Err(Error::Invalid(format!(
                "{}: tensor `{wname}` has shape {:?} on {cin} input channels: a convolution \
                 needs at least one output channel, input channel and kernel row and column",
                self.weights.path().display(),
                w.shape()
            )));
        }
        // Padding (k - 1) / 2 keeps the size only for odd kernels, as every torchvision VGG and
        // ResNet conv has (1, 3, 7); an even one would fail deep inside a residual add.
        if r % 2 == 0 || s % 2 == 0 {
            return Err(Error::Invalid(format!(
                "{}: tensor `{wname}` has a {r}×{s} kernel; torchvision's VGG and ResNet \
                 convolutions have odd kernels (1, 3, 7), padded to keep the size",
                self.weights.path().display()
            )));
        }
        // Only a ResNeXt block's middle conv is grouped in torchvision: anywhere else, fewer
        // input channels in the weight than the layer below gives is a wrong file, not groups.
        let grouped = kind == ConvKind::MayBeGrouped && cg != cin;
        if !cin.is_multiple_of(cg) || k % (cin / cg) != 0 || (cg != cin && !grouped) {
            let also = match kind {
                ConvKind::MayBeGrouped => format!(" (or [{k}, {cin}/groups, {r}, {s}])"),
                _ => String::new(),
            };
            return Err(Error::BadShape {
                path: self.weights.path().to_path_buf(),
                name: wname,
                expected: format!(
                    "[{k}, {cin}, {r}, {s}]{also}: the layer below gives {cin} channels"
                ),
                found: w.shape().to_vec(),
            });
        }
        let groups = cin / cg;
        let bname = format!("{name}.bias");
        let mut b = match (self.weights.contains(&bname), kind) {
            (true, _) => Some(self.weights.get(&bname, &[Some(k)])?),
            (false, ConvKind::WithBias) => {
                let hint = match bn {
                    None => {
                        " (a VGG conv without BatchNorm has a bias in torchvision; the file \
                             looks damaged)"
                    }
                    Some(_) => {
                        " (the file's other VGG convs have biases, as torchvision's \
                                VGG-BN convs do; the file looks damaged)"
                    }
                };
                return Err(Error::MissingTensor {
                    path: self.weights.path().to_path_buf(),
                    name: bname,
                    hint: hint.into(),
                });
            }
            (false, _) => None,
        };
        let own_bias = b.as_ref().map(|b| b.data().to_vec());
        let p = Conv2dParams {
            stride: (stride, stride),
            padding: ((r - 1) / 2, (s - 1) / 2),
            dilation: (1, 1),
            groups,
        };
        let affine = match bn {
            Some(bn) => {
                let get = |t: &str| self.weights.get(&format!("{bn}.{t}"), &[Some(k)]);
                let (gamma, beta, mean, var) = (
                    get("weight")?,
                    get("bias")?,
                    get("running_mean")?,
                    get("running_var")?,
                );
                // var + eps ≤ 0 is a broken file: the square root would be NaN or zero.
                if let Some((i, v)) =
                    (var.data().iter().enumerate()).find(|(_, &v)| v.is_nan() || v + BN_EPS <= 0.0)
                {
                    return Err(Error::Invalid(format!(
                        "{}: {bn}.running_var[{i}] is {v}; a variance cannot be negative",
                        self.weights.path().display()
                    )));
                }
                let scale: Vec<f32> = gamma
                    .data()
                    .iter()
                    .zip(var.data())
                    .map(|(g, v)| g / (v + BN_EPS).sqrt())
                    .collect();
                let shift: Vec<f32> = beta
                    .data()
                    .iter()
                    .zip(mean.data())
                    .zip(&scale)
                    .map(|((b, m), s)| b - m * s)
                    .collect();
                let per = cg * r * s;
                for (ki, chunk) in w.data_mut().chunks_mut(per).enumerate() {
                    chunk.iter_mut().for_each(|v| *v *= scale[ki]);
                }
                let mut folded = Tensor::new([k], shift.clone());
                if let Some(b) = &b {
                    for ((f, bv), s) in folded.data_mut().iter_mut().zip(b.data()).zip(&scale) {
                        *f += bv * s;
                    }
                }
                // A huge γ over a tiny variance folds to ±inf (torch's output would be inf or
                // NaN from there on): the file is broken, as one with non-finite weights is.
                let finite = |ki: usize| {
                    scale[ki].is_finite()
                        && folded.data()[ki].is_finite()
                        && w.data()[ki * per..(ki + 1) * per]
                            .iter()
                            .all(|v| v.is_finite())
                };
                if let Some(i) = (0..k).find(|&ki| !finite(ki)) {
                    return Err(Error::Invalid(format!(
                        "{}: {name} with {bn} folded in is not finite in output channel {i} \
                         ({bn}.weight[{i}] = {:e}, running_var[{i}] = {:e}, running_mean[{i}] \
                         = {:e}): the weights are corrupt (or training diverged)",
                        self.weights.path().display(),
                        gamma.data()[i],
                        var.data()[i],
                        mean.data()[i],
                    )));
                }
                b = Some(folded);
                Some(BnAffine { scale, shift })
            }
            None => None,
        };
        let w = self.param(w);
        let b = b.map(|b| self.param(b));
        let has_bn = affine.is_some();
        let node = self.push(
            Op::Conv {
                w,
                b,
                p,
                bn: affine,
                own_bias,
            },
            vec![input],
            k,
        );
        if let Some(bn) = bn {
            self.name(name, node, View::PreBn, "conv");
            self.name(bn, node, View::Output, "batchnorm (folded)");
        } else {
            self.name(name, node, View::Output, "conv");
        }
        debug_assert_eq!(has_bn, bn.is_some());
        Ok(node)
    }

    pub fn relu(&mut self, input: usize, name: Option<&str>) -> usize {
        let c = self.channels[input];
        let node = self.push(Op::Relu, vec![input], c);
        if let Some(n) = name {
            self.name(n, node, View::Output, "relu");
        }
        node
    }

    pub fn max_pool(&mut self, input: usize, p: Pool2dParams, name: &str) -> usize {
        let c = self.channels[input];
        let node = self.push(Op::MaxPool(p), vec![input], c);
        self.name(name, node, View::Output, "max pool");
        node
    }

    pub fn adaptive_avg_pool(&mut self, input: usize, out: (usize, usize), name: &str) -> usize {
        let c = self.channels[input];
        let node = self.push(Op::AdaptiveAvgPool(out), vec![input], c);
        self.name(name, node, View::Output, "adaptive avg pool");
        node
    }

    /// `torch.flatten(x, 1)` after a pool to `hw`: the channel count becomes C·h·w.
    pub fn flatten(&mut self, input: usize, hw: (usize, usize)) -> usize {
        let c = self.channels[input] * hw.0 * hw.1;
        self.push(Op::Flatten, vec![input], c)
    }

    pub fn linear(&mut self, input: usize, name: &str) -> Result<usize> {
        let fin = self.channels[input];
        let w = self
            .weights
            .get(&format!("{name}.weight"), &[None, Some(fin)])?;
        let fout = w.shape()[0];
        if fout == 0 || fin == 0 {
            return Err(Error::Invalid(format!(
                "{}: tensor `{name}.weight` has shape {:?}: a linear layer needs at least one \
                 input and one output",
                self.weights.path().display(),
                w.shape()
            )));
        }
        // torchvision's linear layers all have a bias: a file without one is damaged.
        let bname = format!("{name}.bias");
        if !self.weights.contains(&bname) {
            return Err(Error::MissingTensor {
                path: self.weights.path().to_path_buf(),
                name: bname,
                hint: " (torchvision's linear layers have a bias; for a head trained with \
                       bias=False, store zeros under this name)"
                    .into(),
            });
        }
        let b = self.weights.get(&bname, &[Some(fout)])?;
        let w = self.param(w);
        let b = Some(self.param(b));
        let node = self.push(Op::Linear { w, b }, vec![input], fout);
        self.name(name, node, View::Output, "linear");
        Ok(node)
    }

    pub fn add(&mut self, a: usize, b: usize) -> Result<usize> {
        if self.channels[a] != self.channels[b] {
            return Err(Error::Invalid(format!(
                "{}: residual add of {} and {} channels (a block's conv widths do not match its shortcut)",
                self.weights.path().display(),
                self.channels[a],
                self.channels[b]
            )));
        }
        let c = self.channels[a];
        Ok(self.push(Op::Add, vec![a, b], c))
    }

    pub fn finish(self, arch: String, default_layer: String) -> Graph {
        let num_classes = *self.channels.last().expect("a graph has nodes");
        let param_shapes = self.params.iter().map(|p| p.shape().to_vec()).collect();
        Graph {
            arch,
            nodes: self.nodes,
            layers: self.layers,
            params: self.params,
            param_shapes,
            num_classes,
            default_layer,
            in_channels: self.channels[0],
            labels: None,
            input_size: None,
            normalization: crate::image::Normalization::IMAGENET,
        }
    }
}
