//! Runs a [`Graph`] on a backend: the forward pass, keeping only what the backward pass will
//! read, and the backward-data pass from the logits down to the target layers (the lowest of
//! them) and no further; and, for Ablation-CAM, the network run on from a layer with its
//! values replaced. No weight gradients are ever formed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::graph::{Graph, Op, View};
use crate::backend::{Backend, BwdFilters, Conv2dParams};
use crate::{Error, Result, Tensor};

/// The most [`Network::first_non_finite`] keeps of one image's forward pass.
pub const DIAGNOSIS_BYTES: usize = 2 << 30;

pub struct Network<B: Backend> {
    graph: Graph,
    params: Vec<B::Tensor>,
    /// Per node: the backend's prepared conv weights, if it made any.
    prepared: Vec<Option<B::Tensor>>,
    /// Per node: what the backend made for a conv's backward-data pass, the first time a
    /// backward pass crossed it.
    prepared_bwd: Vec<OnceLock<Option<BwdFilters<B::Tensor>>>>,
    backend: B,
    /// The largest batch known to fit in device memory (usize::MAX until one did not).
    batch_cap: AtomicUsize,
}

/// Which backward passes [`Network::run`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backward {
    /// None: logits and the target activations only (Score-CAM, Ablation-CAM, Eigen-CAM).
    None,
    /// Down to the target layers (the gradient CAM methods): one pass down to the lowest of
    /// them, keeping the gradient at each on the way.
    ToLayer,
    /// Also a guided-backprop pass down to the input (Guided Grad-CAM).
    ToLayerAndGuidedInput,
}

/// What [`Network::run`] yields.
pub struct RunOutput<T> {
    /// [N, classes], on the host.
    pub logits: Tensor,
    /// One per target layer, in the order they were named.
    pub layers: Vec<LayerOutput<T>>,
    /// The guided-backprop gradient at the input, [N, 3, H, W], when asked for.
    pub input_grad: Option<T>,
}

/// See [`Network::from_layer`].
pub struct FromLayer<T> {
    layer: super::graph::Layer,
    /// The layer's output shape for the images given.
    shape: Vec<usize>,
    /// (node, value) for each value from before the layer that nodes after it read.
    live: Vec<(usize, T)>,
}

impl<T> FromLayer<T> {
    /// The layer's output shape for the images given.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Whether nodes after the layer also read values from before it (a shortcut), so the
    /// rest of the network depends on more than the layer's output.
    pub fn has_live_values(&self) -> bool {
        !self.live.is_empty()
    }
}

/// One target layer's part of [`RunOutput`].
pub struct LayerOutput<T> {
    /// The layer's activation A, [N, K, h, w].
    pub activation: T,
    /// ∂(seeded score)/∂A, when asked for.
    pub grad: Option<T>,
}

/// What one forward + backward pass yields for the target layer.
pub struct Pass<T> {
    /// [N, classes], on the host.
    pub logits: Tensor,
    /// The target layer's activation A, [N, K, h, w].
    pub activation: T,
    /// ∂(seeded score)/∂A, same shape.
    pub grad: T,
}

impl<B: Backend> Network<B> {
    /// Moves the parameters to the backend.
    pub fn new(mut graph: Graph, backend: B) -> Result<Self> {
        let params = std::mem::take(&mut graph.params)
            .into_iter()
            .map(|p| backend.upload(p))
            .collect::<Result<Vec<_>>>()?;
        // Each conv's output size at the model's own input size (else 224), for the backend
        // to prepare its filters for.
        let s = match graph.input_size {
            Some(crate::image::InputSize::Square(s)) => s,
            _ => 224,
        };
        let shapes = graph.shapes(&[1, graph.in_channels, s, s]).ok();
        let prepared = (graph.nodes.iter().enumerate())
            .map(|(i, node)| match &node.op {
                Op::Conv { w, p, .. } => {
                    let out = shapes
                        .as_ref()
                        .and_then(|v| Some((*v[i].get(2)?, *v[i].get(3)?)));
                    backend.conv2d_prepare_for(&params[*w], p, out)
                }
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        let prepared_bwd = graph.nodes.iter().map(|_| OnceLock::new()).collect();
        Ok(Network {
            graph,
            params,
            prepared,
            prepared_bwd,
            backend,
            batch_cap: AtomicUsize::new(usize::MAX),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// What the backend made for conv node `i`'s backward-data pass, made now if this is the
    /// first backward pass through it.
    fn bwd_filters(
        &self,
        i: usize,
        w: usize,
        p: &Conv2dParams,
        in_hw: (usize, usize),
    ) -> Result<Option<&BwdFilters<B::Tensor>>> {
        if let Some(made) = self.prepared_bwd[i].get() {
            return Ok(made.as_ref());
        }
        let made = self.backend.conv2d_prepare_bwd(&self.params[w], p, in_hw)?;
        // Two threads may both make it; either result serves.
        let _ = self.prepared_bwd[i].set(made);
        Ok(self.prepared_bwd[i].get().and_then(Option::as_ref))
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Images per batch when the caller names none: the backend's choice for this model,
    /// which may depend on the bytes of its linear layers' weights (read once per batch).
    pub fn default_batch(&self) -> usize {
        let linear_bytes: usize = (self.graph.nodes.iter())
            .filter_map(|node| match &node.op {
                Op::Linear { w, .. } => Some(self.backend.shape(&self.params[*w])),
                _ => None,
            })
            .map(|shape| 4 * shape.iter().product::<usize>())
            .sum();
        self.backend.default_batch_for(linear_bytes)
    }

    /// The largest batch that fits on the device, as learned from out-of-memory errors.
    pub fn batch_cap(&self) -> usize {
        self.batch_cap.load(Ordering::Relaxed)
    }

    /// Records that batches above `n` images do not fit.
    pub fn lower_batch_cap(&self, n: usize) {
        self.batch_cap.fetch_min(n.max(1), Ordering::Relaxed);
    }

    pub fn num_classes(&self) -> usize {
        self.graph.num_classes
    }

    /// Logits only; every activation is freed as soon as its last consumer has run.
    pub fn forward(&self, x: B::Tensor) -> Result<Tensor> {
        self.graph.shapes(self.backend.shape(&x))?;
        let keep = vec![false; self.graph.nodes.len()];
        let mut vals = self.run_forward(x, &keep)?;
        let out = vals.pop().flatten().expect("the last node is the output");
        self.backend.download(&out)
    }

    /// Forward, then backward-data from `seed(logits)` (∂score/∂logits, [N, classes]) down to
    /// the layer named `layer`.
    pub fn forward_backward(
        &self,
        x: B::Tensor,
        layer: &str,
        seed: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Pass<B::Tensor>> {
        let out = self.run(x, &[layer], Backward::ToLayer, seed)?;
        let l = out.layers.into_iter().next().expect("one layer asked for");
        Ok(Pass {
            logits: out.logits,
            activation: l.activation,
            grad: l.grad.expect("requested"),
        })
    }

    /// The general pass: one forward pass, the activation of each layer in `layers`, and the
    /// backward passes `what` asks for. Several layers share one backward pass, down to the
    /// lowest of them.
    pub fn run(
        &self,
        x: B::Tensor,
        layers: &[&str],
        what: Backward,
        seed: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<RunOutput<B::Tensor>> {
        self.run_inner(x, layers, what, false, |logits, _| {
            Ok((seed(logits)?, None))
        })
    }

    /// [`Self::run`] with one target layer and a backward pass to it whose seed also sees
    /// J·A, the logits' derivative along the layer's own activation A with every ReLU and
    /// max pool as the forward pass set them ([N, classes]; the network is piecewise linear
    /// after the layer, so this is the forward-mode pass `torch.func.jvp` would make):
    /// `seed(logits, jvp)`. ShapleyCAM's Hessian-vector product needs it.
    pub fn run_with_tangent(
        &self,
        x: B::Tensor,
        layer: &str,
        what: Backward,
        seed: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<RunOutput<B::Tensor>> {
        if what == Backward::None {
            return Err(Error::Invalid(
                "a seed for a tangent pass needs a backward pass".into(),
            ));
        }
        self.run_inner(x, &[layer], what, true, |logits, jvp| {
            Ok((seed(logits, jvp.expect("the tangent pass ran"))?, None))
        })
    }

    /// [`Self::run`] and [`Self::run_with_tangent`] in one: `seed(logits, jvp)` (jvp only with
    /// `tangent`, for the first layer) returns the layers' seed and, where the guided pass
    /// explains another score than they do, its own (else it takes theirs).
    pub(crate) fn run_inner(
        &self,
        x: B::Tensor,
        layers: &[&str],
        what: Backward,
        tangent: bool,
        seed: impl FnOnce(&Tensor, Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)>,
    ) -> Result<RunOutput<B::Tensor>> {
        if tangent && (layers.len() != 1 || what == Backward::None) {
            return Err(Error::Invalid(
                "a tangent pass needs one target layer and a backward pass to it".into(),
            ));
        }
        let be = &self.backend;
        let shapes = self.graph.shapes(be.shape(&x))?;
        if layers.is_empty() {
            return Err(Error::Invalid("no target layer given".into()));
        }
        let mut targets = Vec::with_capacity(layers.len());
        for (i, &name) in layers.iter().enumerate() {
            if layers[..i].contains(&name) {
                return Err(Error::Invalid(format!(
                    "target layer `{name}` is listed twice"
                )));
            }
            let target = self.graph.layer(name)?.clone();
            let s = &shapes[target.node];
            if s.len() != 4 {
                return Err(Error::BadTarget {
                    name: name.into(),
                    reason: format!(
                        "CAM methods need a spatial activation [N, C, H, W]; this layer gives {s:?}"
                    ),
                });
            }
            targets.push(target);
        }
        let ts: Vec<usize> = targets.iter().map(|t| t.node).collect();
        let nodes = &self.graph.nodes;
        let n = nodes.len();
        let to_layer = matches!(what, Backward::ToLayer | Backward::ToLayerAndGuidedInput);
        let guided = matches!(what, Backward::ToLayerAndGuidedInput);
        let mut keep = vec![false; n];
        ts.iter().for_each(|&t| keep[t] = true);
        let down_t = self.down_of(&ts);
        if to_layer {
            self.mark_read_by_backward(&down_t, &mut keep);
        }
        let down_0 = guided.then(|| self.down_of(&[0]));
        if let Some(d) = &down_0 {
            self.mark_read_by_backward(d, &mut keep);
        }
        let (mut vals, logits) = self.forward_keeping(x, &keep)?;
        let (mut grads, mut input_grad) = (None, None);
        if to_layer || guided {
            // The tangent pass reads what the backward pass does: the ReLU outputs and
            // max-pool inputs above the layer, all kept.
            let jvp = match tangent {
                true => Some(self.tangent(&vals, &targets[0], &down_t)?),
                false => None,
            };
            let mut guided_seed = None;
            let seed = checked_seed(&logits, |l| {
                let (s, g) = seed(l, jvp.as_ref())?;
                guided_seed = g;
                Ok(s)
            })?;
            if let Some(d) = &down_0 {
                let g = match guided_seed {
                    Some(g) => checked_seed(&logits, |_| Ok(g))?,
                    None => seed.clone(),
                };
                let up = be.upload(g)?;
                input_grad = self
                    .backward(&vals, &shapes, (d, &[0]), up, true, None)?
                    .pop();
            }
            if to_layer {
                let up = be.upload(seed)?;
                grads = Some(self.backward(&vals, &shapes, (&down_t, &ts), up, false, None)?);
            }
        }
        let mut grads = grads.map(Vec::into_iter);
        let mut out = Vec::with_capacity(targets.len());
        for (i, target) in targets.iter().enumerate() {
            // Two views of one node share its value: the last takes it, the others copy it.
            let shared = ts[i + 1..].contains(&target.node);
            let value = &mut vals[target.node];
            let activation = match shared {
                true => be.duplicate(value.as_ref().expect("target kept"))?,
                false => value.take().expect("target kept"),
            };
            let grad = grads.as_mut().map(|g| g.next().expect("one per target"));
            out.push(self.conv_view(target, activation, grad)?);
        }
        Ok(RunOutput {
            logits,
            layers: out,
            input_grad,
        })
    }

    /// J·A on the host, [N, classes]: the target's activation carried forward to the logits
    /// by the linear part of each node after it (convs and linear layers without their bias,
    /// ReLUs as masks of the forward pass's outputs, max pools picking what the forward pass
    /// picked). For a view before a folded BatchNorm, A is the conv's output, so the direction
    /// at the node is scale · A = A_bn − shift.
    fn tangent(
        &self,
        vals: &[Option<B::Tensor>],
        target: &super::graph::Layer,
        down: &[bool],
    ) -> Result<Tensor> {
        let be = &self.backend;
        let nodes = &self.graph.nodes;
        let n = nodes.len();
        let t = target.node;
        let mut v = be.duplicate(alive(vals, t))?;
        if target.view == View::PreBn {
            let Op::Conv { bn: Some(bn), .. } = &nodes[t].op else {
                unreachable!("PreBn views are made only for convs with folded BN")
            };
            let shift: Vec<f32> = bn.shift.iter().map(|s| -s).collect();
            v = be.channel_affine(v, &vec![1.0; shift.len()], &shift)?;
        }
        let mut last_use = vec![0; n];
        for (i, node) in nodes.iter().enumerate().skip(t + 1) {
            if down[i] {
                node.inputs.iter().for_each(|&j| last_use[j] = i);
            }
        }
        let mut tan: Vec<Option<B::Tensor>> = (0..n).map(|_| None).collect();
        tan[t] = Some(v);
        for i in t + 1..n {
            if !down[i] {
                continue;
            }
            let node = &nodes[i];
            let inp = node.inputs[0];
            // The input's tangent, taken where this node is its last reader.
            let owned = |tan: &mut Vec<Option<B::Tensor>>, j: usize| -> Result<B::Tensor> {
                match last_use[j] == i {
                    true => Ok(tan[j].take().expect("tangent alive")),
                    false => be.duplicate(tan[j].as_ref().expect("tangent alive")),
                }
            };
            let param = |j: &usize| &self.params[*j];
            let y = match &node.op {
                Op::Input => unreachable!("the input is never downstream of a layer"),
                Op::Conv { w, p, .. } => {
                    let x = alive(&tan, inp);
                    be.conv2d_fwd(x, param(w), self.prepared[i].as_ref(), None, p, false)?
                }
                Op::Relu => {
                    let x = owned(&mut tan, inp)?;
                    be.relu_bwd(alive(vals, i), x, false)?
                }
                Op::MaxPool(p) => be.max_pool2d_tangent(alive(vals, inp), alive(&tan, inp), p)?,
                Op::AdaptiveAvgPool(hw) => be.adaptive_avg_pool2d_fwd(alive(&tan, inp), *hw)?,
                Op::Flatten => {
                    let x = owned(&mut tan, inp)?;
                    let s = be.shape(&x);
                    let flat = [s[0], s[1..].iter().product()];
                    be.reshape(x, &flat)?
                }
                Op::Linear { w, .. } => be.linear_fwd(alive(&tan, inp), param(w), None)?,
                // An input from before the layer (a shortcut) does not move with A.
                Op::Add => match (down[inp], down[node.inputs[1]]) {
                    (true, true) => {
                        let a = owned(&mut tan, inp)?;
                        be.add(a, alive(&tan, node.inputs[1]))?
                    }
                    (true, false) => owned(&mut tan, inp)?,
                    (false, _) => owned(&mut tan, node.inputs[1])?,
                },
            };
            tan[i] = Some(y);
            for &j in &node.inputs {
                if last_use[j] == i {
                    tan[j] = None;
                }
            }
        }
        match &tan[n - 1] {
            Some(logits) => be.download(logits),
            None => Err(Error::Invalid(format!(
                "{} does not influence the logits",
                self.graph.node_name(t)
            ))),
        }
    }

    /// The nodes a backward pass from the logits down to `from` visits: those that depend on
    /// one of them.
    fn down_of(&self, from: &[usize]) -> Vec<bool> {
        let nodes = &self.graph.nodes;
        let mut down = vec![false; nodes.len()];
        from.iter().for_each(|&f| down[f] = true);
        let lowest = *from.iter().min().expect("one at least");
        for i in lowest + 1..nodes.len() {
            down[i] = down[i] || nodes[i].inputs.iter().any(|&j| down[j]);
        }
        down
    }

    /// Marks in `keep` what a backward pass over `down` reads: ReLU outputs (their masks) and
    /// max-pool inputs. Convolutions and linear layers need only their weights.
    fn mark_read_by_backward(&self, down: &[bool], keep: &mut [bool]) {
        for (i, node) in self.graph.nodes.iter().enumerate().skip(1) {
            if down[i] {
                match node.op {
                    Op::Relu => keep[i] = true,
                    Op::MaxPool(_) => node.inputs.iter().for_each(|&j| keep[j] = true),
                    _ => {}
                }
            }
        }
    }

    /// FullGrad's pass: the forward pass, then one plain backward-data pass from
    /// `seed(logits)` down to the input, calling `visit(node, ∂score/∂node)` for each node
    /// `visited` marks as soon as its gradient is whole (so no more than one is held at a
    /// time). Returns the logits and the gradient at the input.
    pub fn backward_to_input<'a>(
        &self,
        x: B::Tensor,
        seed: impl FnOnce(&Tensor) -> Result<Tensor>,
        visited: &'a [bool],
        visit: &'a mut dyn FnMut(usize, &B::Tensor) -> Result<()>,
    ) -> Result<(Tensor, B::Tensor)> {
        let be = &self.backend;
        let shapes = self.graph.shapes(be.shape(&x))?;
        let n = self.graph.nodes.len();
        let down = self.down_of(&[0]);
        let mut keep = vec![false; n];
        self.mark_read_by_backward(&down, &mut keep);
        let (vals, logits) = self.forward_keeping(x, &keep)?;
        let up = be.upload(checked_seed(&logits, seed)?)?;
        let visitor = Some((visited, visit));
        let g = self.backward(&vals, &shapes, (&down, &[0]), up, false, visitor)?;
        Ok((logits, g.into_iter().next().expect("one target")))
    }

    /// A target's activation and gradient as its view asks: torchvision's conv module output,
    /// before its (folded) BatchNorm, for a `PreBn` view; as computed otherwise.
    fn conv_view(
        &self,
        target: &super::graph::Layer,
        activation: B::Tensor,
        grad: Option<B::Tensor>,
    ) -> Result<LayerOutput<B::Tensor>> {
        if target.view != View::PreBn {
            return Ok(LayerOutput { activation, grad });
        }
        // A_conv = (A_bn - shift) / scale and ∂/∂A_conv = scale · ∂/∂A_bn.
        let be = &self.backend;
        let Op::Conv { bn: Some(bn), .. } = &self.graph.nodes[target.node].op else {
            unreachable!("PreBn views are made only for convs with folded BN")
        };
        if let Some(k) = bn.scale.iter().position(|&s| s == 0.0) {
            return Err(Error::BadTarget {
                name: target.name.clone(),
                reason: format!(
                    "its BatchNorm scales channel {k} by zero, so the conv output cannot be \
                     recovered; target the BatchNorm layer instead"
                ),
            });
        }
        let inv: Vec<f32> = bn.scale.iter().map(|s| 1.0 / s).collect();
        let shift: Vec<f32> = bn
            .shift
            .iter()
            .zip(&bn.scale)
            .map(|(t, s)| -t / s)
            .collect();
        let activation = be.channel_affine(activation, &inv, &shift)?;
        let grad = grad
            .map(|g| be.channel_affine(g, &bn.scale, &vec![0.0; bn.scale.len()]))
            .transpose()?;
        Ok(LayerOutput { activation, grad })
    }

    /// Backward-data from the logits (gradient `seed`) down to the lowest node of `targets`,
    /// visiting only the nodes in `down` (those that depend on a target), and the gradient at
    /// each target, in their order. `guided` applies the guided-backprop ReLU rule (only
    /// positive gradients pass).
    fn backward(
        &self,
        vals: &[Option<B::Tensor>],
        shapes: &[Vec<usize>],
        (down, targets): (&[bool], &[usize]),
        seed: B::Tensor,
        guided: bool,
        mut visitor: Visitor<B::Tensor>,
    ) -> Result<Vec<B::Tensor>> {
        let be = &self.backend;
        let nodes = &self.graph.nodes;
        let n = nodes.len();
        let to = *targets.iter().min().expect("one target at least");
        let mut grads: Vec<Option<B::Tensor>> = (0..n).map(|_| None).collect();
        grads[n - 1] = Some(seed);
        // A target above `to` has its whole gradient once every node above it has run (they
        // are in topological order); the pass goes on with it, so it is copied here.
        let mut at_target: Vec<Option<B::Tensor>> = targets.iter().map(|_| None).collect();
        for i in (to + 1..n).rev() {
            if !down[i] {
                continue;
            }
            let Some(g) = grads[i].take() else { continue };
            if let Some((visited, visit)) = visitor.as_mut() {
                if visited[i] {
                    visit(i, &g)?;
                }
            }
            for (k, _) in targets.iter().enumerate().filter(|(_, &t)| t == i) {
                at_target[k] = Some(be.duplicate(&g)?);
            }
            let node = &nodes[i];
            let inp = node.inputs[0];
            let hw = |j: usize| (shapes[j][2], shapes[j][3]);
            let dx = match &node.op {
                Op::Conv { w, p, .. } => {
                    let bwd = self.bwd_filters(i, *w, p, hw(inp))?;
                    be.conv2d_bwd_data_with(&g, &self.params[*w], bwd, hw(inp), p)?
                }
                Op::Relu => be.relu_bwd(alive(vals, i), g, guided)?,
                Op::MaxPool(p) => be.max_pool2d_bwd(alive(vals, inp), &g, p)?,
                Op::AdaptiveAvgPool(_) => be.adaptive_avg_pool2d_bwd(&g, hw(inp))?,
                Op::Flatten => be.reshape(g, &shapes[inp])?,
                Op::Linear { w, .. } => be.linear_bwd_data(&g, &self.params[*w])?,
                Op::Add => {
                    let other = node.inputs[1];
                    if down[other] {
                        let copy = be.duplicate(&g)?;
                        accumulate(be, &mut grads[other], copy)?;
                    }
                    g
                }
                Op::Input => unreachable!("the input is never downstream of a layer"),
            };
            if down[inp] {
                accumulate(be, &mut grads[inp], dx)?;
            }
        }
        // Two views of one node (a conv and its BatchNorm) are two targets on one node.
        let lowest: Vec<usize> = (0..targets.len()).filter(|&k| targets[k] == to).collect();
        let (&last, others) = lowest.split_last().expect("`to` is a target");
        for &k in others {
            at_target[k] = grads[to].as_ref().map(|g| be.duplicate(g)).transpose()?;
        }
        at_target[last] = grads[to].take();
        at_target
            .into_iter()
            .zip(targets)
            .map(|(g, &t)| {
                g.ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} does not influence the logits",
                        self.graph.node_name(t)
                    ))
                })
            })
            .collect()
    }

    /// What [`Self::forward_from`] needs to run the network on from the layer `layer` for
    /// the images `x`: the values from before the layer that nodes after it read (a residual
    /// block's shortcut), from one forward pass up to the layer. None, and no pass, for a
    /// layer whose output alone feeds the rest (ResNet's `layer4`, VGG's `features.29`).
    pub fn from_layer(&self, x: &B::Tensor, layer: &str) -> Result<FromLayer<B::Tensor>> {
        let be = &self.backend;
        let target = self.graph.layer(layer)?.clone();
        let t = target.node;
        let nodes = &self.graph.nodes;
        let n = nodes.len();
        let shapes = self.graph.shapes(be.shape(x))?;
        let live: Vec<usize> = (0..t)
            .filter(|&j| nodes[t + 1..].iter().any(|node| node.inputs.contains(&j)))
            .collect();
        let mut values = Vec::with_capacity(live.len());
        if !live.is_empty() {
            let mut keep = vec![false; n];
            live.iter().for_each(|&j| keep[j] = true);
            let mut vals = self.run_nodes(vec![Some(be.duplicate(x)?)], 1, t, &keep)?;
            for &j in &live {
                values.push((j, vals[j].take().expect("kept")));
            }
        }
        Ok(FromLayer {
            layer: target,
            shape: shapes[t].clone(),
            live: values,
        })
    }

    /// Logits [copies·N, classes] of the network run on from `from`'s layer, whose output is
    /// replaced by `replaced` [copies·N, K, h, w] (in the layer's view; copy-major, as
    /// [`Backend::ablate_channels`] makes them); the values `from` holds are repeated to
    /// match. Only the nodes after the layer run on the copies.
    pub fn forward_from(
        &self,
        from: &FromLayer<B::Tensor>,
        replaced: B::Tensor,
        copies: usize,
    ) -> Result<Tensor> {
        let be = &self.backend;
        let t = from.layer.node;
        let nodes = &self.graph.nodes;
        let n = nodes.len();
        let want: Vec<usize> = [vec![from.shape[0] * copies], from.shape[1..].to_vec()].concat();
        if be.shape(&replaced) != want.as_slice() {
            return Err(Error::Invalid(format!(
                "forward_from `{}`: values of shape {:?}, expected {want:?}",
                from.layer.name,
                be.shape(&replaced)
            )));
        }
        let mut vals: Vec<Option<B::Tensor>> = (0..n).map(|_| None).collect();
        let plain = vec![(false, 1.0); copies];
        for (j, v) in &from.live {
            vals[*j] = Some(be.aug_copies(v, &plain)?);
        }
        vals[t] = Some(match from.layer.view {
            View::PreBn => {
                // The layer's values are the conv's output before its (folded) BatchNorm;
                // the node's are after it.
                let Op::Conv { bn: Some(bn), .. } = &nodes[t].op else {
                    unreachable!("PreBn views are made only for convs with folded BN")
                };
                be.channel_affine(replaced, &bn.scale, &bn.shift)?
            }
            _ => replaced,
        });
        let mut keep = vec![false; n];
        // The layer's value is given, not computed: no fusion may assume otherwise.
        keep[t] = true;
        let mut vals = self.run_nodes(vals, t + 1, n, &keep)?;
        let out = vals.pop().flatten().expect("the last node is the output");
        be.download(&out)
    }

    /// Where a forward pass first goes wrong: the first node whose output holds an infinity
    /// or a NaN, as a phrase: "the output of `layer2.0.conv1`, `layer2.0.bn1` (conv)" (a conv
    /// with its BatchNorm folded), "a value inside `layer2.0` (block)" where no layer names
    /// the node (a residual add, the ReLU a torchvision block shares), "the normalised input".
    /// None when every value is finite, or when keeping every value of the pass would take
    /// more than [`DIAGNOSIS_BYTES`] (a 224² ResNet-50 image keeps about 0.2 GB; a
    /// photograph at `--size native`, many times that). A diagnosis for one image whose logits
    /// were found not finite, not part of a run.
    pub fn first_non_finite(&self, x: B::Tensor) -> Result<Option<String>> {
        let shapes = self.graph.shapes(self.backend.shape(&x))?;
        let values: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        if values.saturating_mul(4) > DIAGNOSIS_BYTES {
            return Ok(None);
        }
        let keep = vec![true; self.graph.nodes.len()];
        let vals = self.run_forward(x, &keep)?;
        let layers = &self.graph.layers;
        for (j, v) in vals.iter().enumerate() {
            let Some(v) = v else { continue };
            if self
                .backend
                .download(v)?
                .data()
                .iter()
                .all(|x| x.is_finite())
            {
                continue;
            }
            let said = |named: &[&super::graph::Layer]| {
                let names: Vec<_> = named.iter().map(|l| format!("`{}`", l.name)).collect();
                format!("{} ({})", names.join(", "), named[0].kind)
            };
            let named: Vec<_> = layers.iter().filter(|l| l.node == j).collect();
            let next = layers.iter().filter(|l| l.node > j).min_by_key(|l| l.node);
            return Ok(Some(match (j, named.is_empty(), next) {
                (0, ..) => "the normalised input".into(),
                (_, false, _) => format!("the output of {}", said(&named)),
                (_, true, Some(l)) => format!("a value inside {}", said(&[l])),
                (_, true, None) => "the logits".into(),
            }));
        }
        Ok(None)
    }

    /// The forward pass keeping what `keep` marks, and the logits on the host (the output's
    /// value dropped).
    fn forward_keeping(
        &self,
        x: B::Tensor,
        keep: &[bool],
    ) -> Result<(Vec<Option<B::Tensor>>, Tensor)> {
        let mut vals = self.run_forward(x, keep)?;
        let out = vals.last_mut().and_then(Option::take).expect("output");
        let logits = self.backend.download(&out)?;
        Ok((vals, logits))
    }

    /// Runs every node; a value is dropped after its last consumer unless `keep` says so.
    /// Where the backend asks for it, the leading nodes run image by image, the images in
    /// parallel ([`Network::image_major_cut`]), and what they leave is joined into batches.
    fn run_forward(&self, x: B::Tensor, keep: &[bool]) -> Result<Vec<Option<B::Tensor>>> {
        let be = &self.backend;
        let n = self.graph.nodes.len();
        // (Fewer images than threads: the layers over the batch, each op on every thread.)
        let images = be.shape(&x)[0];
        let cut = match be.image_major() && images > 1 && images >= rayon::current_num_threads() {
            true => self.image_major_cut(be.shape(&x), keep)?,
            false => None,
        };
        match cut {
            Some(cut) => self.run_split(x, keep, cut),
            None => self.run_nodes(vec![Some(x)], 1, n, keep),
        }
    }

    /// [`Network::run_forward`] with nodes `1..cut` image by image, the images in parallel,
    /// and what they leave (the values read after the cut, those `keep` marks) joined.
    fn run_split(&self, x: B::Tensor, keep: &[bool], cut: usize) -> Result<Vec<Option<B::Tensor>>> {
        let be = &self.backend;
        let n = self.graph.nodes.len();
        use rayon::prelude::*;
        let mut per: Vec<Vec<Option<B::Tensor>>> = (be.split_batch(x)?.into_par_iter())
            .map(|xi| self.run_nodes(vec![Some(xi)], 1, cut, keep))
            .collect::<Result<_>>()?;
        let mut vals: Vec<Option<B::Tensor>> = (0..n).map(|_| None).collect();
        for (j, v) in vals.iter_mut().enumerate().take(cut) {
            if per[0][j].is_some() {
                let parts = per
                    .iter_mut()
                    .map(|p| p[j].take().expect("alive for every image"));
                *v = Some(be.concat_batch(parts.collect())?);
            }
        }
        self.run_nodes(vals, cut, n, keep)
    }

    /// Where the image-by-image part of a forward pass ends: before the first layer whose
    /// weights outweigh twice its output per image (image by image, each image reads the
    /// weights; over the batch, each image's output is written out and read back: ResNet-50's
    /// stem, `layer1` and `layer2`, VGG16's first three blocks), at the last point before it
    /// where one value alone is alive (a block's end: the least to join into a batch); None
    /// when that leaves nothing before it or `keep` (the values kept for later, per node)
    /// holds much before it (see below).
    pub fn image_major_cut(&self, input: &[usize], keep: &[bool]) -> Result<Option<usize>> {
        let nodes = &self.graph.nodes;
        let shapes = self.graph.shapes(input)?;
        let per_image = |i: usize| 4 * shapes[i][1..].iter().product::<usize>();
        let heavy = |i: usize| match &nodes[i].op {
            Op::Conv { w, .. } => {
                4 * self.graph.param_shapes[*w].iter().product::<usize>() > 2 * per_image(i)
            }
            Op::Linear { .. } | Op::Flatten | Op::AdaptiveAvgPool(_) => true,
            _ => false,
        };
        let Some(end) = (1..nodes.len()).find(|&i| heavy(i)) else {
            return Ok(None);
        };
        // Values alive before node c: made before it and read at or after it.
        let last_use = last_reads(nodes);
        let Some(cut) = (2..=end)
            .rev()
            .find(|&c| (0..c).filter(|&j| last_use[j] >= c).count() == 1)
        else {
            return Ok(None);
        };
        // Values kept before the cut (a target layer, what a backward pass reading down into
        // it needs, FullGrad's every bias layer, guided backpropagation's every ReLU) are
        // joined too: copies that cost more than the cache saves once all the joined values,
        // the live one included, pass three times the live one.
        let live = (0..cut).find(|&j| last_use[j] >= cut).map_or(0, per_image);
        let joined: usize = (0..cut)
            .filter(|&j| last_use[j] >= cut || keep[j])
            .map(per_image)
            .sum();
        Ok((joined <= 3 * live).then_some(cut))
    }

    /// Runs nodes `from..to` given `vals` (the values they read from before `from`; shorter
    /// than the node count is filled with `None`).
    fn run_nodes(
        &self,
        mut vals: Vec<Option<B::Tensor>>,
        from: usize,
        to: usize,
        keep: &[bool],
    ) -> Result<Vec<Option<B::Tensor>>> {
        let be = &self.backend;
        let nodes = &self.graph.nodes;
        let n = nodes.len();
        vals.resize_with(n, || None);
        let mut last_use = last_reads(nodes);
        let mut uses = vec![0usize; n];
        nodes
            .iter()
            .for_each(|node| node.inputs.iter().for_each(|&j| uses[j] += 1));
        last_use[n - 1] = n;
        // A conv whose output only feeds the next node, a ReLU, and is not kept: the conv
        // applies the ReLU itself and the ReLU node takes the value over.
        let fused: Vec<bool> = (0..n)
            .map(|i| {
                matches!(nodes[i].op, Op::Conv { .. })
                    && i + 1 < n
                    && matches!(nodes[i + 1].op, Op::Relu)
                    && nodes[i + 1].inputs == [i]
                    && uses[i] == 1
                    && !keep[i]
            })
            .collect();
        // A ResNet block's end — conv, then the residual add, then a ReLU, each feeding only the
        // next and none kept — runs as one conv2d_fwd_add_relu (one pass on a GPU); the add
        // and ReLU nodes take the value over. Holds the add's other input.
        let with_residual: Vec<Option<usize>> = (0..n)
            .map(|i| {
                if !matches!(nodes[i].op, Op::Conv { .. }) || i + 2 >= n || uses[i] != 1 || keep[i]
                {
                    return None;
                }
                let (add, relu) = (&nodes[i + 1], &nodes[i + 2]);
                let other = match add.inputs[..] {
                    [a, b] if a == i => b,
                    [a, b] if b == i => a,
                    _ => return None,
                };
                (matches!(add.op, Op::Add)
                    && other != i
                    && matches!(relu.op, Op::Relu)
                    && relu.inputs == [i + 1]
                    && uses[i + 1] == 1
                    && !keep[i + 1])
                    .then_some(other)
            })
            .collect();
        for i in from..to {
            let node = &nodes[i];
            let inp = node.inputs[0];
            // Ops that can work in place take their first input when nobody else needs it.
            let owned = |vals: &mut Vec<Option<B::Tensor>>| -> Result<B::Tensor> {
                if last_use[inp] == i && !keep[inp] {
                    Ok(vals[inp].take().expect("value alive"))
                } else {
                    be.duplicate(vals[inp].as_ref().expect("value alive"))
                }
            };
            let param = |j: &usize| &self.params[*j];
            let y = match &node.op {
                Op::Input => unreachable!("only node 0 is the input"),
                Op::Conv { w, b, p, .. } if with_residual[i].is_some() => be.conv2d_fwd_add_relu(
                    alive(&vals, inp),
                    param(w),
                    self.prepared[i].as_ref(),
                    b.as_ref().map(param),
                    p,
                    alive(&vals, with_residual[i].expect("checked")),
                )?,
                Op::Add if with_residual[i - 1].is_some() => vals[i - 1].take().expect("fused"),
                Op::Relu if i >= 2 && with_residual[i - 2].is_some() => {
                    vals[inp].take().expect("fused")
                }
                Op::Conv { w, b, p, .. } => be.conv2d_fwd(
                    alive(&vals, inp),
                    param(w),
                    self.prepared[i].as_ref(),
                    b.as_ref().map(param),
                    p,
                    fused[i],
                )?,
                Op::Relu if fused[inp] => vals[inp].take().expect("value alive"),
                Op::Relu => {
                    let x = owned(&mut vals)?;
                    be.relu_fwd(x)?
                }
                Op::MaxPool(p) => be.max_pool2d_fwd(alive(&vals, inp), p)?,
                Op::AdaptiveAvgPool(hw) => be.adaptive_avg_pool2d_fwd(alive(&vals, inp), *hw)?,
                Op::Flatten => {
                    let x = owned(&mut vals)?;
                    let s = be.shape(&x);
                    let flat = [s[0], s[1..].iter().product()];
                    be.reshape(x, &flat)?
                }
                Op::Linear { w, b } => {
                    be.linear_fwd(alive(&vals, inp), param(w), b.as_ref().map(param))?
                }
                Op::Add => {
                    let a = owned(&mut vals)?;
                    be.add(a, alive(&vals, node.inputs[1]))?
                }
            };
            vals[i] = Some(y);
            for &j in &node.inputs {
                if last_use[j] == i && !keep[j] {
                    vals[j] = None;
                }
            }
        }
        Ok(vals)
    }
}

/// Per node, the last node that reads its value (0 when none does).
fn last_reads(nodes: &[super::graph::Node]) -> Vec<usize> {
    let mut last = vec![0; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        node.inputs.iter().for_each(|&j| last[j] = i);
    }
    last
}

/// `seed(logits)`, the gradient of the score at the logits, checked to have their shape.
fn checked_seed(logits: &Tensor, seed: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let seed = seed(logits)?;
    if seed.shape() != logits.shape() {
        return Err(Error::Invalid(format!(
            "gradient seed has shape {:?}, logits {:?}",
            seed.shape(),
            logits.shape()
        )));
    }
    Ok(seed)
}

/// [`Network::backward_to_input`]'s nodes to visit and what to call there.
type Visitor<'a, T> = Option<(&'a [bool], &'a mut dyn FnMut(usize, &T) -> Result<()>)>;

fn accumulate<B: Backend>(be: &B, slot: &mut Option<B::Tensor>, g: B::Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(prev) => be.add(prev, &g)?,
        None => g,
    });
    Ok(())
}

fn alive<T>(vals: &[Option<T>], j: usize) -> &T {
    vals[j].as_ref().expect("value alive")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::model::synth;

    /// Values kept from before the cut (an inner target, what a backward pass reads, the
    /// input) are joined from the images into the batch's bits, each in image order, at any
    /// cut; `image_major_cut` takes the cut while the joined values (the live one included)
    /// stay within three times the live one, and refuses it past that.
    /// `first_non_finite` finds nothing in a finite pass, says "the normalised input" when
    /// the input itself is not finite (no layer's output), names a conv (folded with its
    /// BatchNorm) whose sums overflow, and does not run a pass that would keep more than
    /// DIAGNOSIS_BYTES.
    #[test]
    fn first_non_finite_names_where_and_keeps_to_its_budget() {
        let net = |d: &[(String, Tensor)]| {
            let bytes = synth::to_safetensors(d, safetensors::Dtype::F32).unwrap();
            let w =
                crate::model::Weights::from_static("resnet18", Box::leak(bytes.into_boxed_slice()))
                    .unwrap();
            Network::new(crate::model::build(&w, None).unwrap(), CpuBackend::fast()).unwrap()
        };
        let mut d = synth::state_dict("resnet18", 16, 10, 4).unwrap();
        let fine = net(&d);
        let x = synth::Rng::new(5).tensor(&[1, 3, 32, 32], -1.0, 1.0);
        assert_eq!(fine.first_non_finite(x.clone()).unwrap(), None);
        let mut bad = x.clone();
        bad.data_mut()[7] = f32::INFINITY;
        let said = fine.first_non_finite(bad).unwrap();
        assert_eq!(said.as_deref(), Some("the normalised input"));
        // 3·H·W values past the budget on their own: not run (a pass would take far more).
        let side = ((DIAGNOSIS_BYTES / 4 / 3) as f64).sqrt() as usize + 1;
        let huge = Tensor::zeros([1, 3, side, side]);
        assert_eq!(fine.first_non_finite(huge).unwrap(), None);
        // layer2.0.conv1's filters ×1e38 (finite, and finite folded with its BatchNorm): its
        // sums overflow, and its output is the first that is not finite.
        for (name, t) in d.iter_mut() {
            if name == "layer2.0.conv1.weight" {
                t.data_mut().iter_mut().for_each(|v| *v *= 1e38);
            }
        }
        let said = net(&d).first_non_finite(x).unwrap();
        assert_eq!(
            said.as_deref(),
            Some("the output of `layer2.0.conv1`, `layer2.0.bn1` (conv)")
        );
    }

    #[test]
    fn kept_values_before_the_cut_are_joined_in_order() {
        let d = synth::state_dict("resnet18", 16, 10, 4).unwrap();
        let bytes = synth::to_safetensors(&d, safetensors::Dtype::F32).unwrap();
        let w = crate::model::Weights::from_static("resnet18", Box::leak(bytes.into_boxed_slice()))
            .unwrap();
        let graph = || crate::model::build(&w, None).unwrap();
        let fast = Network::new(graph(), CpuBackend::fast()).unwrap();
        let plain = CpuBackend {
            layer_major: true,
            ..CpuBackend::fast()
        };
        let layer_major = Network::new(graph(), plain).unwrap();
        let n = rayon::current_num_threads().max(2) + 1;
        let shape = [n, 3, 64, 64];
        let nodes = fast.graph().nodes.len();
        let none = vec![false; nodes];
        let cut = fast.image_major_cut(&shape, &none).unwrap().expect("a cut");
        // Two kept values as large as the live one (`layer2`'s output): three in all, taken.
        let mut keep = none.clone();
        let node = |l: &str| fast.graph().layer(l).unwrap().node;
        keep[node("layer2.1.conv1")] = true;
        keep[node("layer2.0")] = true;
        assert_eq!(fast.image_major_cut(&shape, &keep).unwrap(), Some(cut));
        let all = vec![true; nodes];
        assert_eq!(fast.image_major_cut(&shape, &all).unwrap(), None);
        let x = synth::Rng::new(8).tensor(&shape, -2.0, 2.0);
        // Those, then the input and every value kept, at the cut taken and at an earlier one.
        let mut every = all.clone();
        every[nodes - 1] = false;
        for (keep, cut) in [(&keep, cut), (&every, cut), (&every, node("layer1") + 1)] {
            let a = fast.run_split(x.clone(), keep, cut).unwrap();
            let b = layer_major
                .run_nodes(vec![Some(x.clone())], 1, nodes, keep)
                .unwrap();
            for j in (0..nodes).filter(|&j| keep[j] || j == nodes - 1) {
                let (p, q) = (a[j].as_ref().unwrap(), b[j].as_ref().unwrap());
                assert_eq!(p.shape(), q.shape(), "node {j}");
                assert_eq!(p.data(), q.data(), "node {j} (cut {cut})");
            }
        }
    }
}
