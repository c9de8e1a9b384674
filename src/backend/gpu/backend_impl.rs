//! [`Backend`] for [`GpuBackend`]: each op as its kernel launch (see kernels/*.cu for what
//! each computes and its launch geometry).

use std::time::Duration;

use super::mem::f32_bytes_mut;
use super::{
    dims4, image_descs, ints, pool_ints, DType, GpuBackend, GpuImages, GpuTensor, KArg, Launcher,
    Precision, IMAGES_PER_LAUNCH, IMAGE_DESC,
};
use crate::backend::{
    shapes, Backend, Conv2dParams, ElementRule, FullGradBy, Overlays, Pool2dParams, WeightRule,
};
use crate::cam::OverlayStyle;
use crate::image::{Normalization, RgbImage};
use crate::{Result, Tensor};

impl<L: Launcher> GpuBackend<L> {
    /// conv2d_fwd_<t> [+ residual] [then ReLU], one launch.
    /// `prepared`: the KRSC copy of `w` from [`Backend::conv2d_prepare`], if there is one.
    #[allow(clippy::too_many_arguments)]
    fn conv_fwd(
        &self,
        x: &GpuTensor<L::Buf>,
        w: &GpuTensor<L::Buf>,
        prepared: Option<&GpuTensor<L::Buf>>,
        b: Option<&GpuTensor<L::Buf>>,
        residual: Option<&GpuTensor<L::Buf>>,
        p: &Conv2dParams,
        relu: bool,
    ) -> Result<GpuTensor<L::Buf>> {
        let op = match residual {
            Some(_) => "conv2d_fwd_add_relu",
            None => "conv2d_fwd",
        };
        let (oh, ow) = shapes::conv(op, &x.shape, &w.shape, b.map(|b| &b.shape[..]), p)?;
        let (n, c, h, wd) = dims4(&x.shape);
        let (k, _, r, s) = dims4(&w.shape);
        if let Some(res) = residual {
            shapes::same_shape(op, &res.shape, &[n, k, oh, ow])?;
        }
        // The KRSC copy made of w by `conv2d_prepare` (its shape and dtype are w's).
        if let Some(pr) = prepared {
            shapes::same_shape(op, &pr.shape, &w.shape)?;
            if pr.dtype != w.dtype {
                return Err(crate::Error::Invalid(format!(
                    "{op}: the prepared filters are {:?}, the filters {:?}",
                    pr.dtype, w.dtype
                )));
            }
        }
        // Channels-last where it applies (input, residual and output); a first conv that
        // feeds channels-last ones writes channels-last from NCHW; else everything NCHW.
        let nhwc = self.nhwc_applies(c, &w.shape, p.groups, prepared.is_some());
        let out_nhwc = nhwc || self.nhwc_output_applies(x, &w.shape, p.groups);
        let round = out_nhwc && self.precision() == Precision::Tf32;
        let x = &*self.in_layout_rounded(x, nhwc, nhwc && round)?;
        let residual = match residual {
            Some(r) => Some(self.in_layout(r, out_nhwc)?),
            None => None,
        };
        let residual = residual.as_deref();
        let mut y = self.like(vec![n, k, oh, ow], x)?;
        y.nhwc = out_nhwc;
        y.tf32_exact = round; // the channels-last TF32 epilogues round
        self.launch_conv(
            match (nhwc, out_nhwc) {
                (true, _) => "conv2d_fwd_nhwc",
                (false, true) => "conv2d_fwd_onhwc",
                (false, false) => "conv2d_fwd",
            },
            x.dtype,
            prepared.map(|t| &t.buf),
            &[
                KArg::Buf(&x.buf),
                KArg::Buf(&w.buf),
                b.map_or(KArg::Null, |b| KArg::Buf(&b.buf)),
                residual.map_or(KArg::Null, |r| KArg::Buf(&r.buf)),
                KArg::Buf(&y.buf),
            ],
            [n, c, h, wd, k, r, s, oh, ow],
            p,
            &[relu as usize],
            (k / p.groups, n * oh * ow),
        )?;
        Ok(y)
    }
}

impl<L: Launcher> Backend for GpuBackend<L> {
    type Tensor = GpuTensor<L::Buf>;
    type Images<'a>
        = GpuImages<L::Buf>
    where
        L: 'a;

    fn set_kernel_profiling(&self, on: bool) {
        let mut p = self.profile.lock().expect("profile table");
        *p = on.then(|| p.take().unwrap_or_default());
    }
    fn kernel_times(&self) -> Vec<(String, usize, Duration)> {
        crate::backend::slowest_first(self.profile.lock().expect("profile table").as_ref())
    }
    fn device_memory_peak(&self) -> Option<usize> {
        Some(self.l.memory().peak())
    }
    fn reset_device_memory_peak(&self) {
        self.l.memory().reset_peak()
    }

    fn upload_images<'a>(&'a self, images: &[&'a RgbImage]) -> Result<GpuImages<L::Buf>> {
        let mut layout = Vec::with_capacity(images.len());
        let mut at = 0;
        for im in images {
            layout.push((at, (im.height() as usize, im.width() as usize)));
            at += im.as_raw().len();
        }
        let bytes = at;
        let table = bytes.next_multiple_of(IMAGE_DESC);
        let descs = image_descs(&layout);
        // Pixels and their table packed straight into the launcher's staging memory, then
        // one copy up. The images are copied in parallel: the device may be idle meanwhile
        // (between batches, once the previous batch's work has drained).
        let buf = self
            .l
            .upload_with(table + descs.len(), &mut |dst: &mut [u8]| {
                let (pixels, rest) = dst.split_at_mut(table);
                rest.copy_from_slice(&descs);
                let slots = split_runs(pixels, images.iter().map(|im| im.as_raw().len()));
                parallel_copies(
                    slots
                        .into_iter()
                        .zip(images.iter().map(|im| im.as_raw().as_slice())),
                );
            })?;
        Ok(GpuImages {
            buf,
            layout,
            bytes,
            table,
        })
    }
    fn preprocess(
        &self,
        images: &GpuImages<L::Buf>,
        (oh, ow): (usize, usize),
        norm: &Normalization,
    ) -> Result<Self::Tensor> {
        shapes::input_size("preprocess", (oh, ow))?;
        shapes::images_nonempty("preprocess", images.layout.iter().map(|&(_, hw)| hw))?;
        norm.check()?;
        let dtype = self.precision.storage();
        let n = images.layout.len();
        let out = self.tensor(vec![n, 3, oh, ow], dtype)?;
        let kernel = format!("preprocess_rgb8_{}", dtype.name());
        for i in (0..n).step_by(IMAGES_PER_LAUNCH) {
            let count = (n - i).min(IMAGES_PER_LAUNCH) as u32;
            let mut args = vec![
                KArg::Buf(&images.buf),
                KArg::BufAt(&images.buf, images.table + i * IMAGE_DESC),
                KArg::BufAt(&out.buf, i * 3 * oh * ow * dtype.size()),
            ];
            args.extend(ints(&[oh, ow]));
            args.extend(norm.mean.iter().chain(&norm.std).map(|&v| KArg::F32(v)));
            // SAFETY: preprocess_rgb8_<t> over images i..i+count: their descriptors (offsets
            // into the pixels, sizes) from the table, their outputs from slot i.
            unsafe {
                self.launch(
                    &kernel,
                    [(oh * ow).div_ceil(256) as u32, count, 1],
                    [256, 1, 1],
                    &args,
                )?
            };
        }
        Ok(out)
    }
    fn overlays(
        &self,
        images: &GpuImages<L::Buf>,
        maps: &Tensor,
        style: &OverlayStyle,
    ) -> Result<Overlays> {
        shapes::maps_for("overlays", images.layout.len(), maps.shape())?;
        style.check()?;
        let (n, h, w) = (maps.shape()[0], maps.shape()[1], maps.shape()[2]);
        let lay = &images.layout;
        assert_eq!(n, lay.len(), "one map per image");
        let m = self.upload_f32(maps.data())?;
        let lut = self.colormap(style.colormap)?;
        let mm = self.l.alloc(n * 2 * 4)?;
        let cmax = self.l.alloc(n * 4)?;
        let out = self.l.alloc(images.bytes)?;
        for i in (0..n).step_by(IMAGES_PER_LAUNCH) {
            let j = (i + IMAGES_PER_LAUNCH).min(n);
            let blocks = lay[i..j].iter().map(|&(_, (oh, ow))| oh * ow).max();
            let blocks = blocks.unwrap_or(0).div_ceil(256) as u32;
            let (wh, wi) = style.weights();
            let dims = [ints(&[h, w]), vec![KArg::F32(wh), KArg::F32(wi)]].concat();
            let map_i = KArg::BufAt(&m, i * h * w * 4);
            let desc_i = KArg::BufAt(&images.buf, images.table + i * IMAGE_DESC);
            let mm_i = KArg::BufAt(&mm, i * 8);
            let pixels = KArg::Buf(&images.buf);
            let cmax_i = KArg::BufAt(&cmax, i * 4);
            let lut = KArg::Buf(lut);
            let a1 = [&[map_i, desc_i, mm_i][..], &dims[..2]].concat();
            let a2 = [&[map_i, mm_i, pixels, desc_i, lut, cmax_i][..], &dims].concat();
            let a3 = [
                &[map_i, mm_i, pixels, desc_i, lut, cmax_i, KArg::Buf(&out)][..],
                &dims,
            ]
            .concat();
            let runs = (j - i) as u32;
            // SAFETY: the overlay kernels' argument lists over images i..j: maps, mm, cmax
            // and descriptor slots from i; pixels and out indexed by the descriptors' offsets.
            unsafe {
                self.launch("overlay_minmax_f32", [runs, 1, 1], [256, 1, 1], &a1)?;
                self.launch("overlay_max_f32", [runs, 1, 1], [256, 1, 1], &a2)?;
                self.launch("overlay_rgb8", [blocks, runs, 1], [256, 1, 1], &a3)?;
            }
        }
        // On its way back while the host queues the next batch; whoever waits for it copies
        // straight from the launcher's staging memory into each image, in parallel.
        let landing = self.l.download_later(out, images.bytes)?;
        let lay = lay.clone();
        Ok(Overlays::later(move || {
            let mut pixels: Vec<Vec<u8>> =
                lay.iter().map(|&(_, (h, w))| vec![0; h * w * 3]).collect();
            landing.wait(&mut |host: &[u8]| {
                let from = lay.iter().map(|&(off, (h, w))| &host[off..off + h * w * 3]);
                parallel_copies(pixels.iter_mut().map(Vec::as_mut_slice).zip(from));
            })?;
            Ok(pixels
                .into_iter()
                .zip(&lay)
                .map(|(px, &(_, (oh, ow)))| {
                    RgbImage::from_raw(ow as u32, oh as u32, px).expect("sized from the layout")
                })
                .collect())
        }))
    }

    fn name(&self) -> String {
        let tuned = if self.conv_tune && self.precision != Precision::F32 {
            " (kernels tuned per layer)"
        } else {
            ""
        };
        let layout = match (self.conv_nhwc, self.precision) {
            (_, Precision::F32) | (false, _) => "",
            (true, _) if self.uses_wgmma() => " (channels-last, wgmma)",
            (true, _) => " (channels-last)",
        };
        format!(
            "{}, {} convolutions{layout}{tuned}",
            self.l.name(),
            self.precision.name()
        )
    }
    fn tuning_plans(&self) -> Vec<(String, String)> {
        self.conv_plans()
    }
    fn default_batch(&self) -> usize {
        // A GPU needs batches of tens of images to fill its SMs (the speed targets are measured
        // at 64); the emulator runs one block at a time and gains nothing.
        if self.l.emulated() {
            8
        } else {
            64
        }
    }
    fn selftest_tolerance(&self) -> f32 {
        match self.precision {
            Precision::F32 => 1e-3,
            // Each operand rounded to 10 mantissa bits (relative 2^-11); the rounding errors of
            // a sum of products mostly cancel: ≤ 3e-4 of (1 + max |reference|) on arbitrary f32
            // inputs (the selftest's inputs are bf16-exact, which TF32 holds exactly: ~1e-6).
            Precision::Tf32 => 2e-3,
            // Outputs stored in bf16 (relative 2^-9) on top of f32 accumulation: observed
            // ≤ 1.8e-3 of (1 + max |reference|).
            Precision::Bf16 => 1e-2,
            // Outputs stored in f16 (relative 2^-11), 4x finer than bf16.
            Precision::F16 => 5e-3,
        }
    }
    fn upload(&self, t: Tensor) -> Result<Self::Tensor> {
        let dtype = self.precision.storage();
        let buf = match dtype {
            DType::F32 => self.upload_f32(t.data())?,
            // Rounded to nearest even on the host (half), as the kernels round.
            DType::Bf16 | DType::F16 => self.l.upload(&dtype.encode(t.data()))?,
        };
        Ok(GpuTensor {
            buf,
            shape: t.shape().to_vec(),
            dtype,
            nhwc: false,
            tf32_exact: false,
        })
    }
    fn download(&self, t: &Self::Tensor) -> Result<Tensor> {
        let t = &*self.nchw(t)?;
        let v = match t.dtype {
            DType::F32 => {
                let mut v = vec![0f32; t.numel()];
                self.l.download(&t.buf, f32_bytes_mut(&mut v))?;
                v
            }
            DType::Bf16 | DType::F16 => {
                let mut b = vec![0u8; t.numel() * 2];
                self.l.download(&t.buf, &mut b)?;
                t.dtype.decode(&b)
            }
        };
        Ok(Tensor::new(t.shape.clone(), v))
    }
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize] {
        &t.shape
    }
    fn duplicate(&self, t: &Self::Tensor) -> Result<Self::Tensor> {
        Ok(GpuTensor {
            buf: self.l.copy(&t.buf, t.numel() * t.dtype.size())?,
            shape: t.shape.clone(),
            dtype: t.dtype,
            nhwc: t.nhwc,
            tf32_exact: t.tf32_exact,
        })
    }
    fn reshape(&self, t: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor> {
        shapes::reshape(&t.shape, shape)?;
        let mut t = self.owned_nchw(t)?;
        t.shape = shape.to_vec();
        Ok(t)
    }
    /// The KRSC copy of a tensor-core conv's weights when the conv qualifies and KRSC weights
    /// are on (or left to tuning, or the cp.async ring is on): see
    /// [`GpuBackend::with_conv_krsc`].
    fn conv2d_prepare(&self, w: &Self::Tensor, p: &Conv2dParams) -> Result<Option<Self::Tensor>> {
        shapes::filters("conv2d_prepare", &w.shape, p)?;
        if !self.krsc_applies(&w.shape) {
            return Ok(None);
        }
        let (k, cg, r, s) = dims4(&w.shape);
        let out = self.like(w.shape.clone(), w)?;
        self.run1d(
            &Self::kernel("conv_weight_krsc", w),
            w.numel(),
            &[
                KArg::Buf(&w.buf),
                KArg::Buf(&out.buf),
                KArg::I32(k as i32),
                KArg::I32(cg as i32),
                KArg::I32((r * s) as i32),
                KArg::I32((self.precision() == Precision::Tf32) as i32),
            ],
        )?;
        Ok(Some(out))
    }
    fn conv2d_fwd(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        prepared: Option<&Self::Tensor>,
        b: Option<&Self::Tensor>,
        p: &Conv2dParams,
        relu: bool,
    ) -> Result<Self::Tensor> {
        self.conv_fwd(x, w, prepared, b, None, p, relu)
    }
    fn conv2d_fwd_add_relu(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        prepared: Option<&Self::Tensor>,
        b: Option<&Self::Tensor>,
        p: &Conv2dParams,
        residual: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let residual = self.as_dtype(residual, x.dtype)?;
        self.conv_fwd(x, w, prepared, b, Some(&residual), p, true)
    }
    fn conv2d_bwd_data(
        &self,
        dy: &Self::Tensor,
        w: &Self::Tensor,
        (h, wd): (usize, usize),
        p: &Conv2dParams,
    ) -> Result<Self::Tensor> {
        shapes::conv_bwd_data("conv2d_bwd_data", &dy.shape, &w.shape, (h, wd), p)?;
        let dy = &*self.nchw(dy)?;
        let (n, k, oh, ow) = dims4(&dy.shape);
        let (_, cg, r, s) = dims4(&w.shape);
        let c = cg * p.groups;
        let dx = self.like(vec![n, c, h, wd], dy)?;
        self.launch_conv(
            "conv2d_bwd_data",
            dy.dtype,
            None,
            &[KArg::Buf(&dy.buf), KArg::Buf(&w.buf), KArg::Buf(&dx.buf)],
            [n, c, h, wd, k, r, s, oh, ow],
            p,
            &[],
            (cg, n * h * wd),
        )?;
        Ok(dx)
    }
    fn relu_fwd(&self, x: Self::Tensor) -> Result<Self::Tensor> {
        let n = x.shape.iter().product();
        self.run1d(
            &Self::kernel("relu_fwd", &x),
            n,
            &[KArg::Buf(&x.buf), KArg::I32(n as i32)],
        )?;
        Ok(x)
    }
    fn relu_bwd(&self, y: &Self::Tensor, dy: Self::Tensor, guided: bool) -> Result<Self::Tensor> {
        shapes::same_shape("relu_bwd", &y.shape, &dy.shape)?;
        // Element-wise: both in one layout (the gradients' NCHW).
        let dy = self.owned_nchw(dy)?;
        let y = &*self.nchw(y)?;
        let n = dy.shape.iter().product();
        self.run1d(
            &Self::kernel("relu_bwd", &dy),
            n,
            &[
                KArg::Buf(&y.buf),
                KArg::Buf(&dy.buf),
                KArg::I32(n as i32),
                KArg::I32(guided as i32),
            ],
        )?;
        Ok(dy)
    }
    fn max_pool2d_fwd(&self, x: &Self::Tensor, p: &Pool2dParams) -> Result<Self::Tensor> {
        let (oh, ow) = shapes::pool("max_pool2d_fwd", &x.shape, p)?;
        let (n, c, h, w) = dims4(&x.shape);
        let mut y = self.like(vec![n, c, oh, ow], x)?;
        y.tf32_exact = x.tf32_exact; // picks values
        if x.nhwc {
            // Channels-last in and out (between the channels-last convs of VGG's blocks).
            y.nhwc = true;
            let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&y.buf), KArg::I32(c as i32)];
            args.extend(pool_ints(n, [h, w, oh, ow], p));
            let kernel = Self::kernel("max_pool2d_fwd_nhwc", x);
            self.run1d(&kernel, n * c * oh * ow, &args)?;
            return Ok(y);
        }
        let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&y.buf)];
        args.extend(pool_ints(n * c, [h, w, oh, ow], p));
        self.run1d(&Self::kernel("max_pool2d_fwd", x), n * c * oh * ow, &args)?;
        Ok(y)
    }
    fn max_pool2d_bwd(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        p: &Pool2dParams,
    ) -> Result<Self::Tensor> {
        shapes::pool_bwd("max_pool2d_bwd", &x.shape, &dy.shape, p)?;
        let (x, dy) = (&*self.nchw(x)?, &*self.nchw(dy)?);
        let (n, c, h, w) = dims4(&x.shape);
        let (_, _, oh, ow) = dims4(&dy.shape);
        let dx = self.like(x.shape.clone(), dy)?;
        let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&dy.buf), KArg::Buf(&dx.buf)];
        args.extend(pool_ints(n * c, [h, w, oh, ow], p));
        // One thread per input element (a gather over the windows that contain it).
        self.run1d(&Self::kernel("max_pool2d_bwd", dy), n * c * h * w, &args)?;
        Ok(dx)
    }
    fn max_pool2d_tangent(
        &self,
        x: &Self::Tensor,
        v: &Self::Tensor,
        p: &Pool2dParams,
    ) -> Result<Self::Tensor> {
        shapes::pool("max_pool2d_tangent", &x.shape, p)?;
        shapes::same_shape("max_pool2d_tangent", &x.shape, &v.shape)?;
        let x = &*self.nchw(x)?;
        let v = self.nchw(v)?;
        let v = self.as_dtype(&v, x.dtype)?;
        let (n, c, h, w) = dims4(&x.shape);
        let (oh, ow) = p.out_hw((h, w)).ok_or_else(|| {
            crate::Error::Invalid("max_pool2d_tangent: window larger than x".into())
        })?;
        let y = self.like(vec![n, c, oh, ow], x)?;
        let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&v.buf), KArg::Buf(&y.buf)];
        args.extend(pool_ints(n * c, [h, w, oh, ow], p));
        // One thread per output element.
        self.run1d(
            &Self::kernel("max_pool2d_tangent", x),
            n * c * oh * ow,
            &args,
        )?;
        Ok(y)
    }
    fn adaptive_avg_pool2d_fwd(
        &self,
        x: &Self::Tensor,
        (oh, ow): (usize, usize),
    ) -> Result<Self::Tensor> {
        shapes::adaptive_pool("adaptive_avg_pool2d_fwd", &x.shape, (oh, ow))?;
        let x = &*self.nchw(x)?;
        let (n, c, h, w) = dims4(&x.shape);
        let y = self.like(vec![n, c, oh, ow], x)?;
        let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&y.buf)];
        args.extend(ints(&[n * c, h, w, oh, ow]));
        self.run1d(
            &Self::kernel("adaptive_avg_pool2d_fwd", x),
            n * c * oh * ow,
            &args,
        )?;
        Ok(y)
    }
    fn adaptive_avg_pool2d_bwd(
        &self,
        dy: &Self::Tensor,
        (h, w): (usize, usize),
    ) -> Result<Self::Tensor> {
        shapes::adaptive_pool("adaptive_avg_pool2d_bwd", &dy.shape, (h, w))?;
        let dy = &*self.nchw(dy)?;
        let (n, c, oh, ow) = dims4(&dy.shape);
        let dx = self.like(vec![n, c, h, w], dy)?;
        let mut args = vec![KArg::Buf(&dy.buf), KArg::Buf(&dx.buf)];
        args.extend(ints(&[n * c, h, w, oh, ow]));
        self.run1d(
            &Self::kernel("adaptive_avg_pool2d_bwd", dy),
            n * c * h * w,
            &args,
        )?;
        Ok(dx)
    }
    fn linear_fwd(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        shapes::linear("linear_fwd", &x.shape, &w.shape, b.map(|b| &b.shape[..]))?;
        let x = &*self.nchw(x)?;
        let (n, fin, fout) = (x.shape[0], x.shape[1], w.shape[0]);
        let y = self.like(vec![n, fout], x)?;
        self.launch_linear(
            "linear_fwd",
            [&x.buf, &w.buf],
            b.map(|b| &b.buf),
            &y,
            [n, fin, fout],
            (fout, fin),
        )?;
        Ok(y)
    }
    fn linear_bwd_data(&self, dy: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor> {
        shapes::linear_bwd("linear_bwd_data", &dy.shape, &w.shape)?;
        let dy = &*self.nchw(dy)?;
        let (n, fout, fin) = (dy.shape[0], dy.shape[1], w.shape[1]);
        let dx = self.like(vec![n, fin], dy)?;
        self.launch_linear(
            "linear_bwd_data",
            [&dy.buf, &w.buf],
            None,
            &dx,
            [n, fin, fout],
            (fin, fout),
        )?;
        Ok(dx)
    }
    fn add(&self, mut a: Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        shapes::same_shape("add", &a.shape, &b.shape)?;
        let b = &*self.in_layout(b, a.nhwc)?; // element-wise: b in a's layout
        a.tf32_exact = false; // a sum of TF32 values is not one
        let n = a.shape.iter().product();
        self.run1d(
            &Self::kernel("add", &a),
            n,
            &[KArg::Buf(&a.buf), KArg::Buf(&b.buf), KArg::I32(n as i32)],
        )?;
        Ok(a)
    }
    fn channel_affine(
        &self,
        x: Self::Tensor,
        scale: &[f32],
        shift: &[f32],
    ) -> Result<Self::Tensor> {
        shapes::channel_affine("channel_affine", &x.shape, scale.len(), shift.len())?;
        let mut x = self.owned_nchw(x)?;
        x.tf32_exact = false;
        let (_, c, h, w) = dims4(&x.shape);
        let n = x.shape.iter().product();
        let (s, t) = (self.upload_f32(scale)?, self.upload_f32(shift)?);
        let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&s), KArg::Buf(&t)];
        args.extend(ints(&[c, h * w, n]));
        self.run1d(&Self::kernel("channel_affine", &x), n, &args)?;
        Ok(x)
    }
    fn grad_pool(&self, g: &Self::Tensor) -> Result<Self::Tensor> {
        shapes::dims4("grad_pool", "the gradient", &g.shape)?;
        let g = &*self.nchw(g)?;
        let (n, k, h, w) = dims4(&g.shape);
        let a = self.tensor(vec![n, k], DType::F32)?;
        // SAFETY: grad_pool_<t>: one block per plane.
        unsafe {
            self.launch(
                &Self::kernel("grad_pool", g),
                [(n * k) as u32, 1, 1],
                [256, 1, 1],
                &[
                    KArg::Buf(&g.buf),
                    KArg::Buf(&a.buf),
                    KArg::I32((h * w) as i32),
                ],
            )?
        };
        Ok(a)
    }
    fn weighted_sum_relu(&self, a: &Self::Tensor, alpha: &Self::Tensor) -> Result<Self::Tensor> {
        shapes::channel_weights("weighted_sum_relu", &a.shape, &alpha.shape)?;
        let a = &*self.nchw(a)?;
        let (n, k, h, w) = dims4(&a.shape);
        let m = self.tensor(vec![n, h, w], DType::F32)?;
        let alpha = self.as_dtype(alpha, DType::F32)?;
        let args = [
            KArg::Buf(&a.buf),
            KArg::Buf(&alpha.buf),
            KArg::Buf(&m.buf),
            KArg::I32(k as i32),
            KArg::I32((h * w) as i32),
        ];
        // SAFETY: weighted_sum_relu_<t>: one thread per (pixel, image).
        unsafe {
            self.launch(
                &Self::kernel("weighted_sum_relu", a),
                [(h * w).div_ceil(256) as u32, n as u32, 1],
                [256, 1, 1],
                &args,
            )?
        };
        Ok(m)
    }
    fn cam_weights(
        &self,
        rule: WeightRule,
        a: &Self::Tensor,
        g: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        shapes::with_gradient("cam_weights", &a.shape, &g.shape)?;
        let (a, g) = (&*self.nchw(a)?, &*self.nchw(g)?);
        let (n, k, h, w) = dims4(&a.shape);
        let out = self.tensor(vec![n, k], DType::F32)?;
        let g = self.as_dtype(g, a.dtype)?;
        let r = rule.code();
        let args = [
            KArg::Buf(&a.buf),
            KArg::Buf(&g.buf),
            KArg::Buf(&out.buf),
            KArg::I32((h * w) as i32),
            KArg::I32(r),
        ];
        // SAFETY: cam_weights_<t>: one block per plane.
        unsafe {
            self.launch(
                &Self::kernel("cam_weights", a),
                [(n * k) as u32, 1, 1],
                [256, 1, 1],
                &args,
            )?
        };
        Ok(out)
    }
    fn fem_weights(&self, a: &Self::Tensor, k_sigma: f32) -> Result<Self::Tensor> {
        shapes::dims4("fem_weights", "the activations", &a.shape)?;
        let a = &*self.nchw(a)?;
        let (n, k, h, w) = dims4(&a.shape);
        if h * w == 0 || n * k == 0 {
            return self.upload(Tensor::zeros([n, k]));
        }
        let out = self.tensor(vec![n, k], DType::F32)?;
        let args = [
            KArg::Buf(&a.buf),
            KArg::Buf(&out.buf),
            KArg::I32((h * w) as i32),
            KArg::F32(k_sigma),
        ];
        // SAFETY: fem_weights_<t>: one block per plane.
        unsafe {
            self.launch(
                &Self::kernel("fem_weights", a),
                [(n * k) as u32, 1, 1],
                [256, 1, 1],
                &args,
            )?
        };
        Ok(out)
    }
    fn elementwise_cam_relu(
        &self,
        rule: ElementRule,
        a: &Self::Tensor,
        g: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        shapes::with_gradient("elementwise_cam_relu", &a.shape, &g.shape)?;
        let (a, g) = (&*self.nchw(a)?, &*self.nchw(g)?);
        let (n, k, h, w) = dims4(&a.shape);
        let m = self.tensor(vec![n, h, w], DType::F32)?;
        let g = self.as_dtype(g, a.dtype)?;
        let r = rule.code();
        let args = [
            KArg::Buf(&a.buf),
            KArg::Buf(&g.buf),
            KArg::Buf(&m.buf),
            KArg::I32(k as i32),
            KArg::I32((h * w) as i32),
            KArg::I32(r),
        ];
        // SAFETY: elementwise_cam_relu_<t>: one thread per (pixel, image).
        unsafe {
            self.launch(
                &Self::kernel("elementwise_cam_relu", a),
                [(h * w).div_ceil(256) as u32, n as u32, 1],
                [256, 1, 1],
                &args,
            )?
        };
        Ok(m)
    }
    fn score_cam_inputs(
        &self,
        x: &Self::Tensor,
        a: &Self::Tensor,
        (k0, k1): (usize, usize),
    ) -> Result<Self::Tensor> {
        shapes::score_cam("score_cam_inputs", &x.shape, &a.shape, (k0, k1))?;
        let (x, a) = (&*self.nchw(x)?, &*self.nchw(a)?);
        let (n, c, hh, ww) = dims4(&x.shape);
        let (_, k, h, w) = dims4(&a.shape);
        let kc = k1 - k0;
        let mm = self.tensor(vec![n * kc, 2], DType::F32)?;
        let a = &*self.as_dtype(a, x.dtype)?;
        let mut args = vec![KArg::Buf(&a.buf), KArg::Buf(&mm.buf)];
        args.extend(ints(&[k, k0, kc, h, w, hh, ww]));
        // SAFETY: score_cam_minmax_<t>: one block per (image, channel).
        unsafe {
            self.launch(
                &Self::kernel("score_cam_minmax", a),
                [(n * kc) as u32, 1, 1],
                [256, 1, 1],
                &args,
            )?
        };
        let out = self.like(vec![n * kc, c, hh, ww], x)?;
        let mut args = vec![
            KArg::Buf(&x.buf),
            KArg::Buf(&a.buf),
            KArg::Buf(&mm.buf),
            KArg::Buf(&out.buf),
        ];
        args.extend(ints(&[c, k, k0, kc, h, w, hh, ww]));
        // SAFETY: score_cam_inputs_<t>: one thread per (pixel, image·channel).
        unsafe {
            self.launch(
                &Self::kernel("score_cam_inputs", x),
                [(hh * ww).div_ceil(256) as u32, (n * kc) as u32, 1],
                [256, 1, 1],
                &args,
            )?
        };
        Ok(out)
    }
    fn ablate_channels(&self, a: &Self::Tensor, (k0, k1): (usize, usize)) -> Result<Self::Tensor> {
        shapes::channel_range("ablate_channels", &a.shape, (k0, k1))?;
        let a = &*self.nchw(a)?;
        let (n, k, h, w) = dims4(&a.shape);
        let kc = k1 - k0;
        let out = self.like(vec![kc * n, k, h, w], a)?;
        let total = kc * n * k * h * w;
        if total == 0 {
            return Ok(out);
        }
        let mut args = vec![KArg::Buf(&a.buf), KArg::Buf(&out.buf)];
        args.extend(ints(&[n, k, k0, kc, h * w]));
        // SAFETY: ablate_channels_<t>: one thread per element of `out`.
        unsafe {
            self.launch(
                &Self::kernel("ablate_channels", a),
                [total.div_ceil(256) as u32, 1, 1],
                [256, 1, 1],
                &args,
            )?
        };
        Ok(out)
    }
    fn full_grad_add(
        &self,
        total: Option<Self::Tensor>,
        g: &Self::Tensor,
        by: FullGradBy<'_, Self::Tensor>,
        (oh, ow): (usize, usize),
    ) -> Result<Self::Tensor> {
        let by_shapes = match by {
            FullGradBy::Input(x) => FullGradBy::Input(&x.shape[..]),
            FullGradBy::Bias(b) => FullGradBy::Bias(b),
        };
        shapes::full_grad(
            &g.shape,
            by_shapes,
            total.as_ref().map(|t| &t.shape[..]),
            (oh, ow),
        )?;
        let g = &*self.nchw(g)?;
        let (n, k, h, w) = dims4(&g.shape);
        let hw = h * w;
        let mut total = match total {
            Some(t) if t.dtype != DType::F32 => {
                return Err(crate::Error::Invalid(format!(
                    "full_grad_add: the total is {:?}, not f32",
                    t.dtype
                )))
            }
            Some(t) => Some(self.owned_nchw(t)?),
            None => None,
        };
        let accumulate = total.is_some() as usize;
        if n * k * hw == 0 || oh * ow == 0 {
            return match total {
                Some(t) => Ok(t),
                None => Ok(GpuTensor {
                    buf: self.upload_f32(&vec![0f32; n * oh * ow])?,
                    shape: vec![n, oh, ow],
                    dtype: DType::F32,
                    nhwc: false,
                    tf32_exact: false,
                }),
            };
        }
        // One of x and bias is read (by_x says which); the other pointer is never touched.
        let x = match by {
            FullGradBy::Input(x) => Some(self.nchw(x)?),
            FullGradBy::Bias(_) => None,
        };
        let x = match &x {
            Some(x) => Some(self.as_dtype(x, g.dtype)?),
            None => None,
        };
        let bias = match by {
            FullGradBy::Bias(b) => Some(self.upload_f32(b)?),
            FullGradBy::Input(_) => None,
        };
        let by_x = x.is_some() as usize;
        let x_buf = x.as_ref().map_or(&g.buf, |x| &x.buf);
        let mm = self.tensor(vec![n * k, 2], DType::F32)?;
        let bias_buf = bias.as_ref().unwrap_or(&mm.buf);
        let mut args = vec![
            KArg::Buf(&g.buf),
            KArg::Buf(x_buf),
            KArg::Buf(bias_buf),
            KArg::Buf(&mm.buf),
        ];
        args.extend(ints(&[k, hw, by_x]));
        // SAFETY: full_grad_minmax_<t>: one block per (image, channel) plane.
        unsafe {
            self.launch(
                &Self::kernel("full_grad_minmax", g),
                [(n * k) as u32, 1, 1],
                [256, 1, 1],
                &args,
            )?
        };
        // At the output's size the layer sum goes straight into the total; else it is
        // resized into it.
        let same = (h, w) == (oh, ow);
        let total = match total.take() {
            Some(t) => t,
            None => self.tensor(vec![n, oh, ow], DType::F32)?,
        };
        let layer = match same {
            true => None,
            false => Some(self.tensor(vec![n, h, w], DType::F32)?),
        };
        let sum_out = layer.as_ref().map_or(&total.buf, |l| &l.buf);
        let mut args = vec![
            KArg::Buf(&g.buf),
            KArg::Buf(x_buf),
            KArg::Buf(bias_buf),
            KArg::Buf(&mm.buf),
            KArg::Buf(sum_out),
        ];
        args.extend(ints(&[k, hw, by_x, if same { accumulate } else { 0 }]));
        // SAFETY: full_grad_sum_<t>: one thread per (pixel, image) of g.
        unsafe {
            self.launch(
                &Self::kernel("full_grad_sum", g),
                [hw.div_ceil(256) as u32, n as u32, 1],
                [256, 1, 1],
                &args,
            )?
        };
        if let Some(layer) = &layer {
            let mut args = vec![KArg::Buf(&layer.buf), KArg::Buf(&total.buf)];
            args.extend(ints(&[h, w, oh, ow, accumulate]));
            // SAFETY: full_grad_resize_add_f32: one thread per (output pixel, image).
            unsafe {
                self.launch(
                    "full_grad_resize_add_f32",
                    [(oh * ow).div_ceil(256) as u32, n as u32, 1],
                    [256, 1, 1],
                    &args,
                )?
            };
        }
        Ok(total)
    }
    fn aug_copies(&self, x: &Self::Tensor, copies: &[(bool, f32)]) -> Result<Self::Tensor> {
        shapes::dims4("aug_copies", "x", &x.shape)?;
        let x = &*self.nchw(x)?;
        let (n, c, h, w) = dims4(&x.shape);
        let out = self.like(vec![copies.len() * n, c, h, w], x)?;
        if out.shape.iter().product::<usize>() == 0 {
            return Ok(out);
        }
        // One launch per run of alike copies (all of them for plain repeats).
        let mut t0 = 0;
        for run in copies.chunk_by(|a, b| a == b) {
            let (mirror, factor) = run[0];
            let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&out.buf)];
            args.extend(ints(&[n * c, h, w, t0, run.len(), mirror as usize]));
            args.push(KArg::I32(factor.to_bits() as i32));
            let total = run.len() * n * c * h * w;
            // SAFETY: aug_copy_<t>: one thread per element of copies t0..t0 + run.len() of
            // `out` ([T·N, C, H, W]).
            unsafe {
                self.launch(
                    &Self::kernel("aug_copy", x),
                    [total.div_ceil(256) as u32, 1, 1],
                    [256, 1, 1],
                    &args,
                )?
            };
            t0 += run.len();
        }
        Ok(out)
    }
}

/// `buf` cut into consecutive pieces of the given lengths (which sum to at most its length).
fn split_runs(mut buf: &mut [u8], lens: impl Iterator<Item = usize>) -> Vec<&mut [u8]> {
    let mut out = Vec::new();
    for len in lens {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        out.push(head);
        buf = tail;
    }
    out
}

/// Copies each source into its destination (equal lengths), spread over up to 8 scoped
/// threads by bytes. Plain threads, not rayon: the uploads' copies run on the thread that
/// queues the device's work, which must not wait behind the other pipeline stage's rayon jobs
/// (building and encoding the previous batch).
fn parallel_copies<'a>(pairs: impl Iterator<Item = (&'a mut [u8], &'a [u8])>) {
    const MIN_PER_THREAD: usize = 1 << 20;
    let pairs: Vec<_> = pairs.collect();
    let total: usize = pairs.iter().map(|(d, _)| d.len()).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (total / MIN_PER_THREAD).clamp(1, cores.clamp(1, 8));
    if threads == 1 {
        pairs.into_iter().for_each(|(d, s)| d.copy_from_slice(s));
        return;
    }
    // Consecutive pairs per thread, about total / threads bytes each.
    let mut groups: Vec<Vec<(&mut [u8], &[u8])>> = vec![Vec::new()];
    let (share, mut taken) = (total.div_ceil(threads), 0);
    for (d, s) in pairs {
        if taken >= share {
            groups.push(Vec::new());
            taken = 0;
        }
        taken += d.len();
        groups.last_mut().expect("one group").push((d, s));
    }
    std::thread::scope(|scope| {
        for g in groups {
            scope.spawn(move || g.into_iter().for_each(|(d, s)| d.copy_from_slice(s)));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{parallel_copies, split_runs};

    /// Pieces of odd sizes, 5 MB in all (several threads where the machine has the cores):
    /// every byte lands in its own piece.
    #[test]
    fn parallel_copies_fill_every_piece() {
        let lens: Vec<usize> = (0..23).map(|i| 1 + (i * 7919 * 31) % 450_000).collect();
        let total: usize = lens.iter().sum();
        let src: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        let mut dst = vec![0u8; total + 5];
        let from = {
            let mut at = 0;
            lens.iter()
                .map(|&l| {
                    at += l;
                    &src[at - l..at]
                })
                .collect::<Vec<_>>()
        };
        parallel_copies(
            split_runs(&mut dst, lens.iter().copied())
                .into_iter()
                .zip(from),
        );
        assert!(total > 4 << 20);
        assert_eq!(&dst[..total], &src[..]);
        assert_eq!(&dst[total..], &[0; 5]);
    }
}
