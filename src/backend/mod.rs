//! The op interface. The model and CAM code are written once against [`Backend`]; the CPU
//! backend (naive oracle and fast im2col + GEMM) lives in `cpu/`, the CUDA backend slots in
//! beside it with its own tensor type.
//!
//! Ops that produce a new value from an input that is no longer needed take it by value, so a
//! backend can work in place (ReLU, residual add) and the forward pass frees what it can.

pub mod cpu;
pub mod emu;
pub mod gpu;
pub mod kernels;
pub mod module_cache;
pub mod nvrtc;
mod params;
pub mod selftest;
mod shapes;

pub use cpu::CpuBackend;
pub use params::{Conv2dParams, Pool2dParams};

use crate::image::RgbImage;
use crate::{Result, Tensor};

/// max(v, 0), as torch's `F.relu` and numpy's `maximum(v, 0)`: a NaN stays NaN. (`f32::max`
/// drops it, so a network whose activations overflowed would run on to finite logits from its
/// biases alone, a blank map reported as fine; the NaN has to reach the logits' check.)
#[inline(always)]
pub fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}
/// Channel weights of the weight-based CAM methods beyond Grad-CAM (whose weights are
/// [`Backend::grad_pool`]), as pytorch-grad-cam 1.5.7 computes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightRule {
    /// Grad-CAM++: Σ_ij relu(g)·g²/(2g² + ΣA·g³ + 1e-6), 0 where g = 0.
    GradCamPlusPlus,
    /// XGrad-CAM: Σ_ij g·A / (ΣA + 1e-7).
    XGradCam,
    /// Σ_ij g·A: how much a score that is affine in A drops when channel k is zeroed
    /// (Ablation-CAM's numerator when the network after the layer is affine).
    AffineDrop,
}

impl WeightRule {
    /// The kernels' `rule` argument (kernels/cam.cu, cam_weights).
    pub fn code(self) -> i32 {
        match self {
            WeightRule::GradCamPlusPlus => 0,
            WeightRule::XGradCam => 1,
            WeightRule::AffineDrop => 2,
        }
    }
}

/// Element-wise CAM methods: map = ReLU(Σ_k t(g_k, A_k)) with a term per position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementRule {
    /// HiResCAM: t = g·A.
    HiResCam,
    /// LayerCAM: t = relu(g)·A.
    LayerCam,
    /// pytorch-grad-cam's GradCAMElementWise: t = relu(g·A) (LayerCAM's where A ≥ 0, as after
    /// a ReLU; they differ on layers with negative activations, e.g. a BatchNorm's output).
    GradCamElementWise,
}

impl ElementRule {
    /// The term of an activation `a` whose gradient is `g`.
    pub fn term(self, g: f32, a: f32) -> f32 {
        match self {
            ElementRule::HiResCam => g * a,
            ElementRule::LayerCam => relu(g) * a,
            ElementRule::GradCamElementWise => relu(g * a),
        }
    }

    /// The kernels' `rule` argument (kernels/cam.cu, elementwise_cam_relu).
    pub fn code(self) -> i32 {
        match self {
            ElementRule::HiResCam => 0,
            ElementRule::LayerCam => 1,
            ElementRule::GradCamElementWise => 2,
        }
    }
}

/// What multiplies the gradient in a FullGrad term ([`Backend::full_grad_add`]).
#[derive(Debug)]
pub enum FullGradBy<'a, T: ?Sized> {
    /// A bias, one factor per channel (a conv's bias, a BatchNorm's shift).
    Bias(&'a [f32]),
    /// The model's input x, element by element (the |x ⊙ ∂y/∂x| term); shaped like the
    /// gradient.
    Input(&'a T),
}

// By hand: the derives would ask T itself to be Clone (and sized) for a pair of references.
impl<T: ?Sized> Clone for FullGradBy<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for FullGradBy<'_, T> {}

/// A profile table (kernel or op → calls, total time) as [`Backend::kernel_times`] gives it:
/// slowest first.
pub(crate) fn slowest_first(
    table: Option<&std::collections::BTreeMap<String, (usize, std::time::Duration)>>,
) -> Vec<(String, usize, std::time::Duration)> {
    let mut v: Vec<_> = (table.into_iter().flatten())
        .map(|(k, &(n, t))| (k.clone(), n, t))
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.2));
    v
}

/// The overlays of [`Backend::overlays`], ready or still being copied from the device (so a
/// pipeline can queue the next batch meanwhile, and wait for them on another thread).
pub struct Overlays(Box<dyn FnOnce() -> Result<Vec<RgbImage>> + Send>);

impl Overlays {
    pub fn ready(images: Vec<RgbImage>) -> Self {
        Overlays(Box::new(move || Ok(images)))
    }
    /// Overlays that `land` finishes (blocking until the copy is done).
    pub fn later(land: impl FnOnce() -> Result<Vec<RgbImage>> + Send + 'static) -> Self {
        Overlays(Box::new(land))
    }
    /// The overlays, in image order; an error if the copy from the device failed.
    pub fn wait(self) -> Result<Vec<RgbImage>> {
        (self.0)()
    }
}

/// What a backend made of a conv's filters for its backward-data pass
/// ([`Backend::conv2d_prepare_bwd`]).
pub enum BwdFilters<T> {
    /// The pass as another conv's forward pass ([`Conv2dParams::transposed`]).
    Transposed(TransposedConv<T>),
    /// The backend's own backward-data pass, with the filters (of `shape` [K, C/g, R, S]) in
    /// a form of its own (the CPU's Wᵀ packed for its GEMM).
    Own { shape: [usize; 4], prepared: T },
}

/// A conv's backward-data pass as another conv's forward pass: the transposed filters
/// (w[k, c, R−1−r, S−1−s] at [c, k, r, s]) as the backend prepared them for a forward pass,
/// their shape and geometry. No plain copy is kept: prepared filters are all a pass reads.
pub struct TransposedConv<T> {
    /// [C, K, R, S].
    pub shape: [usize; 4],
    pub p: Conv2dParams,
    pub prepared: T,
}

pub trait Backend: Send + Sync {
    /// A tensor living wherever this backend computes (host memory, device memory).
    type Tensor: Send + Sync;

    /// A batch of RGB8 images as the backend keeps them for preprocessing and overlays
    /// (borrowed on the CPU, one packed byte buffer on a GPU).
    type Images<'a>: Send + Sync
    where
        Self: 'a;

    fn name(&self) -> String;

    /// Hands a batch of images (any sizes) to the backend: one host→device copy on a GPU.
    fn upload_images<'a>(&'a self, images: &[&'a RgbImage]) -> Result<Self::Images<'a>>;
    /// RGB8 → bilinear resize to `hw` (half-pixel centres, as cv2.resize) → `norm` (the
    /// model's, ImageNet's for torchvision weights): [N, 3, h, w].
    fn preprocess(
        &self,
        images: &Self::Images<'_>,
        hw: (usize, usize),
        norm: &crate::image::Normalization,
    ) -> Result<Self::Tensor>;
    /// Each image's overlay at its own size from its raw map (maps [N, h, w], host-side):
    /// bilinear upsample, min-max, the style's colormap and `show_cam_on_image`'s blend (see
    /// [`crate::cam::overlay_with`]). On a GPU they may still be on their way back when this
    /// returns: [`Overlays::wait`].
    fn overlays(
        &self,
        images: &Self::Images<'_>,
        maps: &Tensor,
        style: &crate::cam::OverlayStyle,
    ) -> Result<Overlays>;

    /// Images per batch when the caller names none: enough to keep this backend busy without
    /// holding much memory (the CPU gains nothing from more than a few).
    fn default_batch(&self) -> usize {
        8
    }
    /// [`Backend::default_batch`] for a model whose linear layers hold `linear_bytes` of
    /// weights (see [`crate::model::Network::default_batch`]).
    fn default_batch_for(&self, _linear_bytes: usize) -> usize {
        self.default_batch()
    }

    /// Whether activations live in host memory (the CPU), where a batch of large images must
    /// be cut to fit it; a GPU splits a batch that does not fit its own memory itself.
    fn host_activations(&self) -> bool {
        false
    }

    /// How far `gradcam selftest` lets this backend's results lie from the naive f32 ops,
    /// relative to (1 + max |reference|).
    fn selftest_tolerance(&self) -> f32 {
        1e-3
    }

    /// Times every kernel (synchronising around each launch) while on; `gradcam bench
    /// --profile`. Turning it on keeps earlier times; no-op where there are no kernels.
    fn set_kernel_profiling(&self, _on: bool) {}
    /// (kernel, launches, total time), slowest first.
    fn kernel_times(&self) -> Vec<(String, usize, std::time::Duration)> {
        Vec::new()
    }

    /// What per-layer kernel tuning chose so far: (kind of layer, choice); empty where there
    /// is no tuning.
    fn tuning_plans(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Peak bytes of device memory held by tensors since the last reset (None on the CPU).
    fn device_memory_peak(&self) -> Option<usize> {
        None
    }
    fn reset_device_memory_peak(&self) {}

    /// Whether the network's leading layers (those whose weights are smaller than their
    /// output per image) run image by image, the images in parallel, instead of layer by
    /// layer over the batch: on the CPU a batch's early activations (ResNet-50's `layer1`,
    /// 25 MB at 8 images) do not fit in cache, one image's do. Needs
    /// [`Backend::split_batch`] and [`Backend::concat_batch`].
    fn image_major(&self) -> bool {
        false
    }
    /// The batch's images, each a batch of one.
    fn split_batch(&self, _x: Self::Tensor) -> Result<Vec<Self::Tensor>> {
        Err(crate::Error::Invalid(
            "this backend does not split batches".into(),
        ))
    }
    /// Batches of the same shape, in order, as one.
    fn concat_batch(&self, _parts: Vec<Self::Tensor>) -> Result<Self::Tensor> {
        Err(crate::Error::Invalid(
            "this backend does not join batches".into(),
        ))
    }

    /// Moves a host tensor to the backend (for the CPU a move, no copy).
    fn upload(&self, t: Tensor) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<Tensor>;
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize];
    fn duplicate(&self, t: &Self::Tensor) -> Result<Self::Tensor>;
    fn reshape(&self, t: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor>;

    /// Weights of a conv in a backend-specific form made once at load time (the CPU's
    /// Winograd-transformed filters); None when the backend has no use for one.
    fn conv2d_prepare(&self, w: &Self::Tensor, p: &Conv2dParams) -> Result<Option<Self::Tensor>>;
    /// [`Backend::conv2d_prepare`] knowing the output's H×W at the model's nominal input size
    /// (the CPU picks its Winograd tile by it); the map may differ at run time (other input
    /// sizes), so this is a hint, not a promise.
    fn conv2d_prepare_for(
        &self,
        w: &Self::Tensor,
        p: &Conv2dParams,
        _out_hw: Option<(usize, usize)>,
    ) -> Result<Option<Self::Tensor>> {
        self.conv2d_prepare(w, p)
    }
    /// `F.conv2d(x, w, b, stride, padding, dilation, groups)`; x `[N,C,H,W]`, w `[K,C/g,R,S]`;
    /// `prepared` is what [`Backend::conv2d_prepare`] made of w, if anything; `relu` applies
    /// a ReLU to the output in the same pass (for a conv whose output only feeds a ReLU).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_fwd(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        prepared: Option<&Self::Tensor>,
        b: Option<&Self::Tensor>,
        p: &Conv2dParams,
        relu: bool,
    ) -> Result<Self::Tensor>;
    /// `F.relu(F.conv2d(x, w, b, ...) + residual)`: a ResNet block's last conv, its skip
    /// connection and the ReLU after them. A backend may fuse them into one pass; this one
    /// runs the three ops.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_fwd_add_relu(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        prepared: Option<&Self::Tensor>,
        b: Option<&Self::Tensor>,
        p: &Conv2dParams,
        residual: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let y = self.conv2d_fwd(x, w, prepared, b, p, false)?;
        let y = self.add(y, residual)?;
        self.relu_fwd(y)
    }
    /// ∂L/∂x of conv2d given ∂L/∂y (`torch.nn.grad.conv2d_input`); `in_hw` is x's H×W.
    fn conv2d_bwd_data(
        &self,
        dy: &Self::Tensor,
        w: &Self::Tensor,
        in_hw: (usize, usize),
        p: &Conv2dParams,
    ) -> Result<Self::Tensor>;
    /// What [`Backend::conv2d_bwd_data_with`] can use for a conv, made the first time a
    /// backward pass crosses it (`in_hw`: its input's H×W then, for a backend that picks by
    /// it; the CPU does not), so that passes which stop above it pay nothing; None (the
    /// default) where the backend's own backward-data pass serves.
    fn conv2d_prepare_bwd(
        &self,
        _w: &Self::Tensor,
        _p: &Conv2dParams,
        _in_hw: (usize, usize),
    ) -> Result<Option<BwdFilters<Self::Tensor>>> {
        Ok(None)
    }
    /// [`Backend::conv2d_bwd_data`], through what [`Backend::conv2d_prepare_bwd`] made when
    /// it made something.
    fn conv2d_bwd_data_with(
        &self,
        dy: &Self::Tensor,
        w: &Self::Tensor,
        _bwd: Option<&BwdFilters<Self::Tensor>>,
        in_hw: (usize, usize),
        p: &Conv2dParams,
    ) -> Result<Self::Tensor> {
        self.conv2d_bwd_data(dy, w, in_hw, p)
    }
    /// `F.relu(x)`, in place where possible.
    fn relu_fwd(&self, x: Self::Tensor) -> Result<Self::Tensor>;
    /// `dy * (y > 0)` from the ReLU's output y; `guided` also zeroes negative dy
    /// (guided backpropagation).
    fn relu_bwd(&self, y: &Self::Tensor, dy: Self::Tensor, guided: bool) -> Result<Self::Tensor>;
    /// `F.max_pool2d(x, k, stride, padding, dilation)` (floor mode).
    fn max_pool2d_fwd(&self, x: &Self::Tensor, p: &Pool2dParams) -> Result<Self::Tensor>;
    /// Routes each output gradient to the first maximum of its window (PyTorch's tie rule).
    fn max_pool2d_bwd(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        p: &Pool2dParams,
    ) -> Result<Self::Tensor>;
    /// The max pool's derivative along `v` at x (shaped like x): each window's value of v at
    /// the first maximum of x in it (the forward pass's choice; PyTorch's tie rule). What a
    /// forward-mode pass (`torch.func.jvp`) carries through `F.max_pool2d`.
    fn max_pool2d_tangent(
        &self,
        x: &Self::Tensor,
        v: &Self::Tensor,
        p: &Pool2dParams,
    ) -> Result<Self::Tensor>;
    /// `F.adaptive_avg_pool2d(x, out_hw)`, bins [floor(i·H/o), ceil((i+1)·H/o)).
    fn adaptive_avg_pool2d_fwd(
        &self,
        x: &Self::Tensor,
        out_hw: (usize, usize),
    ) -> Result<Self::Tensor>;
    fn adaptive_avg_pool2d_bwd(
        &self,
        dy: &Self::Tensor,
        in_hw: (usize, usize),
    ) -> Result<Self::Tensor>;
    /// `F.linear(x, w, b)`; x `[N,in]`, w `[out,in]`.
    fn linear_fwd(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// `dy @ w`.
    fn linear_bwd_data(&self, dy: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor>;
    /// `a + b`, reusing a.
    fn add(&self, a: Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `x * scale[None,:,None,None] + shift[None,:,None,None]` (host-side per-channel vectors).
    fn channel_affine(&self, x: Self::Tensor, scale: &[f32], shift: &[f32])
        -> Result<Self::Tensor>;
    /// α\[n,k\] = `dA.mean(dim=(2,3))`: Grad-CAM's neuron importance weights, `[N,K]`.
    fn grad_pool(&self, grad: &Self::Tensor) -> Result<Self::Tensor>;
    /// `F.relu((alpha[:,:,None,None] * a).sum(1))`: the raw class activation map, `[N,h,w]`.
    fn weighted_sum_relu(&self, a: &Self::Tensor, alpha: &Self::Tensor) -> Result<Self::Tensor>;
    /// Channel weights `[N,K]` of a weight-based CAM method from A and ∂y/∂A.
    fn cam_weights(
        &self,
        rule: WeightRule,
        a: &Self::Tensor,
        g: &Self::Tensor,
    ) -> Result<Self::Tensor>;
    /// FEM's channel weights `[N,K]`: the fraction of each plane's positions above its mean
    /// plus `k_sigma` (population) standard deviations. pytorch-grad-cam's FEM:
    /// `(a > a.mean((2,3), keepdim=True) + k * a.std((2,3), keepdim=True, unbiased=False))
    /// .mean((2,3))`.
    fn fem_weights(&self, a: &Self::Tensor, k_sigma: f32) -> Result<Self::Tensor>;
    /// ReLU(Σ_k w(g)_k ⊙ A_k), `[N,h,w]`, for the element-wise CAM methods.
    fn elementwise_cam_relu(
        &self,
        rule: ElementRule,
        a: &Self::Tensor,
        g: &Self::Tensor,
    ) -> Result<Self::Tensor>;
    /// Score-CAM's masked inputs for channels k0..k1 of A: each channel upsampled to x's
    /// size (bilinear, `align_corners=True`, as `nn.UpsamplingBilinear2d`), min-max normalised
    /// `(u - min) / (max - min + 1e-8)`, times x. [N·(k1-k0), C, H, W], image-major.
    fn score_cam_inputs(
        &self,
        x: &Self::Tensor,
        a: &Self::Tensor,
        k: (usize, usize),
    ) -> Result<Self::Tensor>;
    /// aug_smooth's copies of x [N, C, H, W], each mirrored left to right or not and times a
    /// factor: [T·N, C, H, W], copy-major. In torch:
    /// `torch.cat([(x.flip(3) if m else x) * f for m, f in copies])`.
    fn aug_copies(&self, x: &Self::Tensor, copies: &[(bool, f32)]) -> Result<Self::Tensor>;
    /// Ablation-CAM's ablated activations for channels k0..k1 of A [N, K, h, w]: copy j of
    /// image i is A\[i\] with channel k0 + j set to zero. [(k1-k0)·N, K, h, w], copy-major. In
    /// torch: `torch.cat([a.index_fill(1, torch.tensor([k]), 0) for k in range(k0, k1)])`.
    fn ablate_channels(&self, a: &Self::Tensor, k: (usize, usize)) -> Result<Self::Tensor>;
    /// One FullGrad term of the gradient `g` [N, K, h, w], added to `total` [N, oh, ow] (f32;
    /// `None` starts from zeros) and returned: per image Σ_k normalise(|m_k ⊙ g_k|) resized to
    /// `out` = (oh, ow) (bilinear, half-pixel centres, as `cv2.resize`), where m is `by` and
    /// normalise(v) = (v - min) / (max - min + 1e-7) over each plane. In pytorch-grad-cam's
    /// FullGrad: `total + scale_accross_batch_and_channels((m * g).abs(), (ow, oh)).sum(1)`.
    fn full_grad_add(
        &self,
        total: Option<Self::Tensor>,
        g: &Self::Tensor,
        by: FullGradBy<'_, Self::Tensor>,
        out: (usize, usize),
    ) -> Result<Self::Tensor>;
}
