//! The CPU backend: `naive` (the oracle) and `fast` (what users run), behind one type.
//! Shapes are checked by the caller (the network's shape pass) before any op runs.

mod alloc;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod cam_ops;
mod fast;
pub(crate) mod gemm;
#[cfg(target_arch = "x86_64")]
mod linear_avx512;
pub mod naive;
mod profile;
mod winograd;

pub use alloc::retain_freed_memory;
pub use gemm::round_bf16;

use super::{
    shapes, Backend, BwdFilters, Conv2dParams, ElementRule, FullGradBy, Overlays, Pool2dParams,
    TransposedConv, WeightRule,
};
use crate::image::RgbImage;
use crate::{Result, Tensor};

/// Linear weights from which the CPU's default batch quadruples ([`Backend::default_batch_for`]):
/// VGG's 0.5 GB classifier, not ResNet's 8 MB.
const LARGE_LINEAR_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend {
    /// Run the naive reference ops instead of the fast ones (tests, `selftest`).
    pub reference: bool,
    /// Run every layer over the whole batch, never image by image
    /// ([`Backend::image_major`]; also `GRADCAM_IMAGE_MAJOR=0`).
    pub layer_major: bool,
    /// Convolutions in bf16 on AMX tiles, accumulating in f32 (`--precision bf16`), where the
    /// CPU has AMX-BF16 ([`CpuBackend::bf16_available`]); elsewhere, and for grouped convs,
    /// f32 as without it. Everything else stays f32.
    pub bf16: bool,
}

impl CpuBackend {
    pub fn fast() -> Self {
        CpuBackend {
            reference: false,
            layer_major: false,
            bf16: false,
        }
    }
    pub fn reference() -> Self {
        CpuBackend {
            reference: true,
            layer_major: false,
            bf16: false,
        }
    }
    /// The fast backend with its convolutions in bf16 on AMX ([`CpuBackend::bf16`]), where
    /// [`CpuBackend::bf16_available`].
    pub fn fast_bf16() -> Self {
        CpuBackend {
            bf16: true,
            ..Self::fast()
        }
    }
    /// Whether this CPU runs bf16 convolutions: AMX-BF16 (Intel Xeon since Sapphire Rapids)
    /// granted by the OS (Linux), and neither `GRADCAM_AMX` nor `GRADCAM_AVX512` 0.
    pub fn bf16_available() -> bool {
        gemm::bf16_available()
    }
    /// Why [`CpuBackend::bf16_available`] is false, in a few words; None where it is true.
    pub fn bf16_unavailable() -> Option<&'static str> {
        gemm::bf16_unavailable()
    }

    /// How a conv with these prepared filters runs.
    fn path(&self, prepared: Option<&Tensor>) -> ConvPath {
        match prepared {
            _ if self.reference => ConvPath::Reference,
            Some(t) if gemm::bf16_packed_dims(t).is_some() => ConvPath::Bf16,
            _ => ConvPath::F32,
        }
    }

    /// An error unless `prepared` is what `conv2d_prepare` made of filters shaped as w's for
    /// this conv (the reference backend prepares nothing and ignores it).
    fn check_prepared(
        &self,
        op: &str,
        prepared: Option<&Tensor>,
        w: &Tensor,
        p: &Conv2dParams,
    ) -> Result<()> {
        match prepared {
            Some(pr) if !self.reference && !fast::prepared_fits(pr, w.dims4(), p) => {
                Err(crate::Error::Invalid(format!(
                    "{op}: the prepared filters {:?} were not made of filters {:?} for this conv",
                    pr.shape(),
                    w.shape()
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Backend for CpuBackend {
    type Tensor = Tensor;
    type Images<'a> = Vec<&'a RgbImage>;

    fn default_batch_for(&self, linear_bytes: usize) -> usize {
        // A linear layer reads its weights once per batch, at memory speed: VGG's classifier
        // (0.5 GB) took 8 ms of VGG16's 54 per image at 8 images. At 32 images (the GEMM,
        // past the AVX-512 linear kernels' 16) its forward and backward passes take 2.8 ms
        // per image against 6.8 at 16: VGG16 +11 % in `gradcam bench`, +7 % whole process,
        // the same peak memory (the leading layers run image by image); 64 gains no more.
        if linear_bytes >= LARGE_LINEAR_BYTES {
            32
        } else {
            self.default_batch()
        }
    }
    fn host_activations(&self) -> bool {
        true
    }
    fn image_major(&self) -> bool {
        // `GRADCAM_IMAGE_MAJOR=0` runs every layer over the whole batch, for comparisons.
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        !self.reference
            && !self.layer_major
            && *ON.get_or_init(|| {
                std::env::var("GRADCAM_IMAGE_MAJOR").map_or(true, |v| v.trim() != "0")
            })
    }
    fn split_batch(&self, x: Tensor) -> Result<Vec<Tensor>> {
        shapes::batch("split_batch", x.shape())?;
        if x.shape()[1..].contains(&0) {
            return Err(crate::Error::Invalid(
                "an empty tensor has no images to split".into(),
            ));
        }
        Ok((0..x.shape()[0]).map(|i| x.slice_batch(i, i + 1)).collect())
    }
    fn concat_batch(&self, parts: Vec<Tensor>) -> Result<Tensor> {
        let Some(first) = parts.first() else {
            return Err(crate::Error::Invalid("no batches to join".into()));
        };
        let mut shape = first.shape().to_vec();
        shapes::batch("concat_batch", &shape)?;
        if parts.iter().any(|p| p.shape().get(1..) != shape.get(1..)) {
            return Err(crate::Error::Invalid(
                "batches of different shapes cannot be joined".into(),
            ));
        }
        shape[0] = parts.iter().map(|p| p.shape()[0]).sum();
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data().len()).sum());
        parts.iter().for_each(|p| data.extend_from_slice(p.data()));
        Ok(Tensor::new(shape, data))
    }
    fn upload_images<'a>(&'a self, images: &[&'a RgbImage]) -> Result<Vec<&'a RgbImage>> {
        Ok(images.to_vec())
    }
    fn preprocess(
        &self,
        images: &Vec<&RgbImage>,
        hw: (usize, usize),
        norm: &crate::image::Normalization,
    ) -> Result<Tensor> {
        shapes::input_size("preprocess", hw)?;
        norm.check()?;
        let dims = images
            .iter()
            .map(|im| (im.height() as usize, im.width() as usize));
        shapes::images_nonempty("preprocess", dims)?;
        let _p = profile::span("preprocess", || None);
        Ok(crate::image::preprocess_with(images, hw, norm))
    }
    fn overlays(
        &self,
        images: &Vec<&RgbImage>,
        maps: &Tensor,
        style: &crate::cam::OverlayStyle,
    ) -> Result<Overlays> {
        shapes::maps_for("overlays", images.len(), maps.shape())?;
        style.check()?;
        let _p = profile::span("overlay", || None);
        use crate::cam::{overlay_with, upsample_normalised};
        use rayon::prelude::*;
        let (h, w) = (maps.shape()[1], maps.shape()[2]);
        Ok(Overlays::ready(
            images
                .par_iter()
                .enumerate()
                .map(|(i, img)| {
                    let full = (img.height() as usize, img.width() as usize);
                    let m =
                        upsample_normalised(&maps.data()[i * h * w..(i + 1) * h * w], (h, w), full);
                    overlay_with(img, &m, style)
                })
                .collect::<Result<_>>()?,
        ))
    }

    fn set_kernel_profiling(&self, on: bool) {
        profile::set(on)
    }
    fn kernel_times(&self) -> Vec<(String, usize, std::time::Duration)> {
        profile::times()
    }

    fn name(&self) -> String {
        let kind = match self.reference {
            true => "reference",
            false if self.bf16 && Self::bf16_available() => "fast, bf16 convolutions on AMX",
            false => "fast",
        };
        format!("cpu ({kind}, {} threads)", rayon::current_num_threads())
    }

    fn upload(&self, t: Tensor) -> Result<Tensor> {
        Ok(t)
    }
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn shape<'a>(&self, t: &'a Tensor) -> &'a [usize] {
        t.shape()
    }
    fn duplicate(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn reshape(&self, t: Tensor, shape: &[usize]) -> Result<Tensor> {
        shapes::reshape(t.shape(), shape)?;
        Ok(t.reshape(shape))
    }

    fn conv2d_prepare(&self, w: &Tensor, p: &Conv2dParams) -> Result<Option<Tensor>> {
        self.conv2d_prepare_for(w, p, None)
    }
    fn conv2d_prepare_for(
        &self,
        w: &Tensor,
        p: &Conv2dParams,
        out_hw: Option<(usize, usize)>,
    ) -> Result<Option<Tensor>> {
        shapes::filters("conv2d_prepare", w.shape(), p)?;
        Ok((!self.reference)
            .then(|| fast::conv2d_prepare(w, p, out_hw, self.bf16))
            .flatten())
    }
    fn conv2d_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        prepared: Option<&Tensor>,
        b: Option<&Tensor>,
        p: &Conv2dParams,
        relu: bool,
    ) -> Result<Tensor> {
        shapes::conv("conv2d_fwd", x.shape(), w.shape(), b.map(Tensor::shape), p)?;
        self.check_prepared("conv2d_fwd", prepared, w, p)?;
        let _p = conv_span("conv2d_fwd", x, w.dims4(), p, self.path(prepared));
        Ok(if self.reference {
            let y = naive::conv2d_fwd(x, w, b, p);
            if relu {
                naive::relu_fwd(&y)
            } else {
                y
            }
        } else {
            fast::conv2d_fwd(x, w, prepared, b, p, None, relu)
        })
    }
    fn conv2d_fwd_add_relu(
        &self,
        x: &Tensor,
        w: &Tensor,
        prepared: Option<&Tensor>,
        b: Option<&Tensor>,
        p: &Conv2dParams,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let op = "conv2d_fwd_add_relu";
        let (oh, ow) = shapes::conv(op, x.shape(), w.shape(), b.map(Tensor::shape), p)?;
        self.check_prepared(op, prepared, w, p)?;
        let (n, k) = (x.shape()[0], w.shape()[0]);
        shapes::same_shape(op, residual.shape(), &[n, k, oh, ow])?;
        if self.reference {
            let y = self.conv2d_fwd(x, w, prepared, b, p, false)?;
            return self.relu_fwd(self.add(y, residual)?);
        }
        let _p = conv_span("conv2d_fwd", x, w.dims4(), p, self.path(prepared));
        Ok(fast::conv2d_fwd(x, w, prepared, b, p, Some(residual), true))
    }
    fn conv2d_bwd_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        in_hw: (usize, usize),
        p: &Conv2dParams,
    ) -> Result<Tensor> {
        self.conv2d_bwd_data_with(dy, w, None, in_hw, p)
    }
    fn conv2d_prepare_bwd(
        &self,
        w: &Tensor,
        p: &Conv2dParams,
        _in_hw: (usize, usize),
    ) -> Result<Option<BwdFilters<Tensor>>> {
        shapes::filters("conv2d_prepare_bwd", w.shape(), p)?;
        Ok((!self.reference)
            .then(|| fast::conv2d_prepare_bwd(w, p, self.bf16))
            .flatten())
    }
    fn conv2d_bwd_data_with(
        &self,
        dy: &Tensor,
        w: &Tensor,
        bwd: Option<&BwdFilters<Tensor>>,
        in_hw: (usize, usize),
        p: &Conv2dParams,
    ) -> Result<Tensor> {
        shapes::conv_bwd_data("conv2d_bwd_data", dy.shape(), w.shape(), in_hw, p)?;
        // Filters made for this conv (a caller's mix-up, or a hand-built BwdFilters, takes
        // the general path rather than a wrong result): the transposed conv's output is x's
        // size whenever it applies.
        let dims = [w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]];
        let fits = |t: &TransposedConv<Tensor>| {
            let [c, k, r, s] = t.shape;
            [k, c, r, s] == dims
                && t.p.out_hw((dy.shape()[2], dy.shape()[3]), (r, s)) == Some(in_hw)
                && fast::prepared_fits(&t.prepared, (c, k, r, s), &t.p)
        };
        let own = match bwd {
            _ if self.reference => None,
            Some(BwdFilters::Transposed(t)) if fits(t) => {
                let [c, k, r, s] = t.shape;
                let path = self.path(Some(&t.prepared));
                let _p = conv_span("conv2d_bwd_data", dy, (c, k, r, s), &t.p, path);
                let f = fast::Filters {
                    dims: (c, k, r, s),
                    plain: None,
                    prepared: Some(&t.prepared),
                };
                return Ok(fast::conv2d_fwd_with(dy, f, None, &t.p, None, false));
            }
            Some(BwdFilters::Own { shape, prepared })
                if *shape == dims && fast::packed_bwd_fits(prepared, w.dims4()) =>
            {
                Some(prepared)
            }
            _ => None,
        };
        // The product Wᵀ (C/g·R·S × K/g) times dy's columns, then col2im.
        let stage = match own {
            _ if self.reference => "conv2d_bwd_data",
            Some(t) if gemm::bf16_packed_dims(t).is_some() => "conv2d_bwd_data_col2im_bf16",
            _ => "conv2d_bwd_data_col2im",
        };
        let _p = profile::span(stage, || {
            let (n, k, oh, ow) = (dy.shape()[0], dy.shape()[1], dy.shape()[2], dy.shape()[3]);
            let rows = w.shape()[1] * w.shape()[2] * w.shape()[3];
            Some(profile::gemm_tag(rows, n * oh * ow, k / p.groups, p.groups))
        });
        Ok(if self.reference {
            naive::conv2d_bwd_data(dy, w, in_hw, p)
        } else {
            fast::conv2d_bwd_data(dy, w, own, in_hw, p)
        })
    }
    fn relu_fwd(&self, x: Tensor) -> Result<Tensor> {
        let _p = profile::span("relu_fwd", || None);
        Ok(if self.reference {
            naive::relu_fwd(&x)
        } else {
            fast::relu_fwd(x)
        })
    }
    fn relu_bwd(&self, y: &Tensor, dy: Tensor, guided: bool) -> Result<Tensor> {
        shapes::same_shape("relu_bwd", y.shape(), dy.shape())?;
        let _p = profile::span("relu_bwd", || None);
        Ok(if self.reference {
            naive::relu_bwd(y, &dy, guided)
        } else {
            fast::relu_bwd(y, dy, guided)
        })
    }
    fn max_pool2d_fwd(&self, x: &Tensor, p: &Pool2dParams) -> Result<Tensor> {
        shapes::pool("max_pool2d_fwd", x.shape(), p)?;
        let _p = profile::span("max_pool2d_fwd", || None);
        // The fast pool handles dilation 1 (every torchvision model); others use the oracle.
        let fast = (!self.reference)
            .then(|| fast::max_pool2d_fwd(x, p))
            .flatten();
        Ok(fast.unwrap_or_else(|| naive::max_pool2d_fwd(x, p)))
    }
    fn max_pool2d_bwd(&self, x: &Tensor, dy: &Tensor, p: &Pool2dParams) -> Result<Tensor> {
        shapes::pool_bwd("max_pool2d_bwd", x.shape(), dy.shape(), p)?;
        let _p = profile::span("max_pool2d_bwd", || None);
        let fast = (!self.reference)
            .then(|| fast::max_pool2d_bwd(x, dy, p))
            .flatten();
        Ok(fast.unwrap_or_else(|| naive::max_pool2d_bwd(x, dy, p)))
    }
    fn max_pool2d_tangent(&self, x: &Tensor, v: &Tensor, p: &Pool2dParams) -> Result<Tensor> {
        let _p = profile::span("max_pool2d_tangent", || None);
        shapes::pool("max_pool2d_tangent", x.shape(), p)?;
        shapes::same_shape("max_pool2d_tangent", x.shape(), v.shape())?;
        Ok(naive::max_pool2d_tangent(x, v, p))
    }
    fn adaptive_avg_pool2d_fwd(&self, x: &Tensor, out_hw: (usize, usize)) -> Result<Tensor> {
        shapes::adaptive_pool("adaptive_avg_pool2d_fwd", x.shape(), out_hw)?;
        let _p = profile::span("adaptive_avg_pool2d_fwd", || None);
        Ok(if self.reference {
            naive::adaptive_avg_pool2d_fwd(x, out_hw)
        } else {
            fast::adaptive_avg_pool2d_fwd(x, out_hw)
        })
    }
    fn adaptive_avg_pool2d_bwd(&self, dy: &Tensor, in_hw: (usize, usize)) -> Result<Tensor> {
        shapes::adaptive_pool("adaptive_avg_pool2d_bwd", dy.shape(), in_hw)?;
        let _p = profile::span("adaptive_avg_pool2d_bwd", || None);
        Ok(if self.reference {
            naive::adaptive_avg_pool2d_bwd(dy, in_hw)
        } else {
            fast::adaptive_avg_pool2d_bwd(dy, in_hw)
        })
    }
    fn linear_fwd(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        shapes::linear("linear_fwd", x.shape(), w.shape(), b.map(Tensor::shape))?;
        let _p = profile::span("linear_fwd", || None);
        Ok(if self.reference {
            naive::linear_fwd(x, w, b)
        } else {
            fast::linear_fwd(x, w, b)
        })
    }
    fn linear_bwd_data(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        shapes::linear_bwd("linear_bwd_data", dy.shape(), w.shape())?;
        let _p = profile::span("linear_bwd_data", || None);
        Ok(if self.reference {
            naive::linear_bwd_data(dy, w)
        } else {
            fast::linear_bwd_data(dy, w)
        })
    }
    fn add(&self, a: Tensor, b: &Tensor) -> Result<Tensor> {
        shapes::same_shape("add", a.shape(), b.shape())?;
        let _p = profile::span("add", || None);
        Ok(if self.reference {
            naive::add(&a, b)
        } else {
            fast::add(a, b)
        })
    }
    fn channel_affine(&self, x: Tensor, scale: &[f32], shift: &[f32]) -> Result<Tensor> {
        shapes::channel_affine("channel_affine", x.shape(), scale.len(), shift.len())?;
        let _p = profile::span("channel_affine", || None);
        Ok(if self.reference {
            naive::channel_affine(&x, scale, shift)
        } else {
            fast::channel_affine(x, scale, shift)
        })
    }
    fn grad_pool(&self, g: &Tensor) -> Result<Tensor> {
        shapes::dims4("grad_pool", "the gradient", g.shape())?;
        let _p = profile::span("grad_pool", || None);
        Ok(if self.reference {
            naive::grad_pool(g)
        } else {
            fast::grad_pool(g)
        })
    }
    fn weighted_sum_relu(&self, a: &Tensor, alpha: &Tensor) -> Result<Tensor> {
        shapes::channel_weights("weighted_sum_relu", a.shape(), alpha.shape())?;
        let _p = profile::span("weighted_sum_relu", || None);
        Ok(if self.reference {
            naive::weighted_sum_relu(a, alpha)
        } else {
            fast::weighted_sum_relu(a, alpha)
        })
    }
    fn cam_weights(&self, rule: WeightRule, a: &Tensor, g: &Tensor) -> Result<Tensor> {
        shapes::with_gradient("cam_weights", a.shape(), g.shape())?;
        let _p = profile::span("cam_weights", || None);
        Ok(cam_ops::cam_weights(rule, a, g))
    }
    fn fem_weights(&self, a: &Tensor, k_sigma: f32) -> Result<Tensor> {
        shapes::dims4("fem_weights", "the activations", a.shape())?;
        let _p = profile::span("fem_weights", || None);
        Ok(cam_ops::fem_weights(a, k_sigma))
    }
    fn elementwise_cam_relu(&self, rule: ElementRule, a: &Tensor, g: &Tensor) -> Result<Tensor> {
        shapes::with_gradient("elementwise_cam_relu", a.shape(), g.shape())?;
        let _p = profile::span("elementwise_cam_relu", || None);
        Ok(cam_ops::elementwise_cam_relu(rule, a, g))
    }
    fn score_cam_inputs(&self, x: &Tensor, a: &Tensor, k: (usize, usize)) -> Result<Tensor> {
        shapes::score_cam("score_cam_inputs", x.shape(), a.shape(), k)?;
        let _p = profile::span("score_cam_inputs", || None);
        Ok(cam_ops::score_cam_inputs(x, a, k))
    }
    fn aug_copies(&self, x: &Tensor, copies: &[(bool, f32)]) -> Result<Tensor> {
        shapes::dims4("aug_copies", "x", x.shape())?;
        let _p = profile::span("aug_copies", || None);
        Ok(cam_ops::aug_copies(x, copies))
    }
    fn ablate_channels(&self, a: &Tensor, k: (usize, usize)) -> Result<Tensor> {
        shapes::channel_range("ablate_channels", a.shape(), k)?;
        let _p = profile::span("ablate_channels", || None);
        Ok(cam_ops::ablate_channels(a, k))
    }
    fn full_grad_add(
        &self,
        total: Option<Tensor>,
        g: &Tensor,
        by: FullGradBy<'_, Tensor>,
        out: (usize, usize),
    ) -> Result<Tensor> {
        let _p = profile::span("full_grad_add", || None);
        let by_shapes = match by {
            FullGradBy::Input(x) => FullGradBy::Input(x.shape()),
            FullGradBy::Bias(b) => FullGradBy::Bias(b),
        };
        shapes::full_grad(g.shape(), by_shapes, total.as_ref().map(Tensor::shape), out)?;
        Ok(cam_ops::full_grad_add(total, g, by, out))
    }
}

/// The profile's span of a forward conv (`stage` conv2d_fwd), or of a backward-data pass run
/// as one, named by the path it takes, tagged with its GEMM; the filters by their dims.
/// How a conv runs, for its profile line.
#[derive(Clone, Copy, PartialEq)]
enum ConvPath {
    Reference,
    /// Winograd where it applies, else f32 GEMMs.
    F32,
    /// GEMMs on filters packed in bf16 ([`CpuBackend::bf16`]).
    Bf16,
}

fn conv_span(
    stage: &'static str,
    x: &Tensor,
    (k, cg, r, s): (usize, usize, usize, usize),
    p: &Conv2dParams,
    path: ConvPath,
) -> Option<profile::Span> {
    // The backward-data pass run as a transposed conv's forward pass names its path too.
    let winograd = winograd::applies_to((k, cg, r, s), p);
    let op = match (stage, path) {
        (_, ConvPath::Reference) => stage,
        ("conv2d_fwd", ConvPath::Bf16) => "conv2d_fwd_gemm_bf16",
        ("conv2d_fwd", _) if winograd => "conv2d_fwd_winograd",
        ("conv2d_fwd", _) => "conv2d_fwd_gemm",
        (_, ConvPath::Bf16) => "conv2d_bwd_data_gemm_bf16",
        _ if winograd => "conv2d_bwd_data_winograd",
        _ => "conv2d_bwd_data_gemm",
    };
    profile::span(op, || {
        let n = x.shape()[0];
        let (oh, ow) = p.out_hw((x.shape()[2], x.shape()[3]), (r, s))?;
        Some(profile::gemm_tag(
            k / p.groups,
            n * oh * ow,
            cg * r * s,
            p.groups,
        ))
    })
}
