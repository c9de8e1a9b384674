//! The host side of the CUDA kernels, written once over a [`Launcher`]: real CUDA
//! ([`CudaLauncher`]), or the CPU emulator ([`EmuLauncher`]) so every line of it runs in tests
//! without a GPU. Tensors stay on the device between ops; only the inputs go up and results
//! come down.

mod cuda_launcher;
mod emu_launcher;
pub mod mem;
mod probe;

pub use cuda_launcher::CudaLauncher;
pub use emu_launcher::EmuLauncher;
pub use probe::{probe, DeviceInfo};

use mem::{f32_bytes, f32_bytes_mut, MemCounter};

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{Backend, Conv2dParams, ElementRule, Pool2dParams, WeightRule};
use crate::image::RgbImage;
use crate::{Result, Tensor};

/// A kernel argument.
pub enum KArg<'a, B> {
    Buf(&'a B),
    /// A pointer `offset` bytes into a buffer (one image of a packed batch).
    BufAt(&'a B, usize),
    Null,
    I32(i32),
}

// Manual: derive would ask for B: Copy, but only references are copied.
impl<B> Clone for KArg<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for KArg<'_, B> {}

/// What the GPU host code needs from a device: byte buffers, copies and kernel launches.
/// Launches and copies are ordered (one stream); downloads wait for the work before them.
pub trait Launcher: Send + Sync {
    type Buf: Send + Sync;
    fn name(&self) -> String;
    /// A zero-filled buffer of `bytes` bytes.
    fn alloc(&self, bytes: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[u8]) -> Result<Self::Buf>;
    /// Copies the first `out.len()` bytes of `b` to the host.
    fn download(&self, b: &Self::Buf, out: &mut [u8]) -> Result<()>;
    fn copy(&self, b: &Self::Buf, bytes: usize) -> Result<Self::Buf>;
    /// Device memory held by this launcher's buffers (now, peak).
    fn memory(&self) -> &MemCounter;
    /// Waits until every queued launch and copy has finished.
    fn synchronize(&self) -> Result<()>;
    /// # Safety
    /// The arguments must match the kernel's signature and cover what this grid indexes.
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[KArg<Self::Buf>],
    ) -> Result<()>;
}

/// How a tensor is stored on the device (arithmetic is f32 either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }
    /// The `<t>` of kernel entry names.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        }
    }
}

pub struct GpuTensor<B> {
    shape: Vec<usize>,
    buf: B,
    dtype: DType,
}

impl<B> GpuTensor<B> {
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A tensor as given, or a converted copy.
enum Converted<'a, T> {
    Given(&'a T),
    Made(T),
}

impl<T> std::ops::Deref for Converted<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Converted::Given(t) => t,
            Converted::Made(t) => t,
        }
    }
}

/// Arithmetic of the convolutions (the bulk of the work); everything else is f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 FMAs: the same numbers as the CPU backend and pytorch-grad-cam on the CPU.
    F32,
    /// Tensor cores with operands rounded to TF32 (10 mantissa bits), f32 accumulation: what
    /// PyTorch's cuDNN convolutions do by default (`torch.backends.cudnn.allow_tf32`).
    #[default]
    Tf32,
    /// bf16 tensors in memory (activations, gradients, weights: half the traffic) and BF16
    /// tensor-core convolutions (8 mantissa bits), f32 accumulation; the CAM weights and maps
    /// are computed and kept in f32. As `torch.autocast(dtype=torch.bfloat16)`.
    Bf16,
}

impl Precision {
    /// How network tensors are stored under this precision.
    pub fn storage(self) -> DType {
        match self {
            Precision::Bf16 => DType::Bf16,
            Precision::F32 | Precision::Tf32 => DType::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Tile side of the tensor-core convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvTile {
    /// 128x128 for large GEMMs (≥ 128 output channels, ≥ 8192 output pixels), else 64x64.
    Auto,
    T64,
    T128,
}

impl ConvTile {
    fn from_env() -> Self {
        match std::env::var("GRADCAM_CONV_TILE").as_deref() {
            Ok("64") => ConvTile::T64,
            Ok("128") => ConvTile::T128,
            _ => ConvTile::Auto,
        }
    }
}

pub struct GpuBackend<L: Launcher> {
    l: L,
    precision: Precision,
    conv_tile: ConvTile,
    /// OpenCV's JET table (256 RGB entries) on the device, uploaded on first use.
    jet: OnceLock<L::Buf>,
    /// Per kernel: launches and time, while profiling is on.
    profile: Mutex<Option<BTreeMap<String, (usize, Duration)>>>,
}

/// A batch of RGB8 images packed in one device buffer.
pub struct GpuImages<B> {
    buf: B,
    /// Per image: byte offset into `buf` and (height, width).
    layout: Vec<(usize, (usize, usize))>,
    bytes: usize,
}

impl<L: Launcher> GpuBackend<L> {
    /// Exact f32 arithmetic (see [`Precision`]).
    pub fn new(launcher: L) -> Self {
        Self::with_precision(launcher, Precision::F32)
    }

    pub fn with_precision(launcher: L, precision: Precision) -> Self {
        GpuBackend {
            l: launcher,
            precision,
            conv_tile: ConvTile::from_env(),
            jet: OnceLock::new(),
            profile: Mutex::new(None),
        }
    }

    /// Every kernel launch goes through here (and is timed while profiling is on).
    ///
    /// # Safety
    /// As [`Launcher::launch`].
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[KArg<L::Buf>],
    ) -> Result<()> {
        let mut profile = self.profile.lock().expect("profile table");
        let Some(table) = profile.as_mut() else {
            drop(profile);
            // SAFETY: forwarded from the caller.
            return unsafe { self.l.launch(kernel, grid, block, args) };
        };
        // Synchronous launches: the wall time between the two waits is the kernel's.
        self.l.synchronize()?;
        let t = Instant::now();
        // SAFETY: forwarded from the caller.
        unsafe { self.l.launch(kernel, grid, block, args)? };
        self.l.synchronize()?;
        let e = table.entry(kernel.to_string()).or_default();
        e.0 += 1;
        e.1 += t.elapsed();
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs kernels/mma.cu's check `mma_check_<kind>` (tf32: A [16, 8] · B [8, 8]; bf16:
    /// A [16, 16] · B [16, 8], row-major) by the mma instruction and by its shuffle twin, as
    /// (instruction, twin), each [16, 8].
    pub fn mma_check(&self, kind: &str, a: &[f32], b: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let depth = a.len() / 16;
        assert!(
            matches!((kind, depth), ("tf32", 8) | ("bf16", 16)) && b.len() == depth * 8,
            "mma_check_{kind}: A is 16x{depth}"
        );
        let (da, db) = (self.upload_f32(a)?, self.upload_f32(b)?);
        let (dm, dt) = (
            self.tensor(vec![16, 8], DType::F32)?,
            self.tensor(vec![16, 8], DType::F32)?,
        );
        let args = [
            KArg::Buf(&da),
            KArg::Buf(&db),
            KArg::Buf(&dm.buf),
            KArg::Buf(&dt.buf),
        ];
        // SAFETY: mma_check_<kind> reads A and B as sized above, writes 128 + 128; one warp.
        unsafe { self.launch(&format!("mma_check_{kind}"), [1, 1, 1], [32, 1, 1], &args)? };
        Ok((
            self.download(&dm)?.data().to_vec(),
            self.download(&dt)?.data().to_vec(),
        ))
    }

    /// The convolution entry for tensors of `dtype` under this backend's arithmetic and the
    /// tile side its grid is cut by, for a GEMM of `rows` x `cols` per group: e.g.
    /// (`conv2d_fwd_tf32`, 64) or (`conv2d_fwd_bf16_t128`, 128).
    fn conv_kernel(&self, op: &str, dtype: DType, rows: usize, cols: usize) -> (String, usize) {
        let base = match (dtype, self.precision) {
            (DType::Bf16, _) => format!("{op}_bf16"),
            (DType::F32, Precision::Tf32) => format!("{op}_tf32"),
            (DType::F32, _) => return (format!("{op}_f32"), 64),
        };
        let big = match self.conv_tile {
            ConvTile::T64 => false,
            ConvTile::T128 => true,
            // Large GEMMs only: a 128x128 tile does twice the tensor-core work per staged
            // element but leaves SMs idle on small layers (to be tuned on a GPU profile).
            ConvTile::Auto => rows >= 128 && cols >= 8192,
        };
        if big {
            (format!("{base}_t128"), 128)
        } else {
            (base, 64)
        }
    }

    /// conv2d_fwd_<t> [+ residual] [then ReLU], one launch.
    fn conv_fwd(
        &self,
        x: &GpuTensor<L::Buf>,
        w: &GpuTensor<L::Buf>,
        b: Option<&GpuTensor<L::Buf>>,
        residual: Option<&GpuTensor<L::Buf>>,
        p: &Conv2dParams,
        relu: bool,
    ) -> Result<GpuTensor<L::Buf>> {
        let (n, c, h, wd) = dims4(&x.shape);
        let (k, _, r, s) = dims4(&w.shape);
        let (oh, ow) = p
            .out_hw((h, wd), (r, s))
            .expect("shapes checked by the network");
        let y = self.like(vec![n, k, oh, ow], x)?;
        let mut args = vec![
            KArg::Buf(&x.buf),
            KArg::Buf(&w.buf),
            b.map_or(KArg::Null, |b| KArg::Buf(&b.buf)),
            residual.map_or(KArg::Null, |r| KArg::Buf(&r.buf)),
            KArg::Buf(&y.buf),
        ];
        args.extend(ints(&[
            n,
            c,
            h,
            wd,
            k,
            r,
            s,
            oh,
            ow,
            p.stride.0,
            p.stride.1,
            p.padding.0,
            p.padding.1,
            p.dilation.0,
            p.dilation.1,
            p.groups,
            relu as usize,
        ]));
        let (rows, cols) = (k / p.groups, n * oh * ow);
        let (kernel, tile) = self.conv_kernel("conv2d_fwd", x.dtype, rows, cols);
        let grid = [
            cols.div_ceil(tile) as u32,
            rows.div_ceil(tile) as u32,
            p.groups as u32,
        ];
        // SAFETY: the argument list is conv2d_fwd_<t>'s, sized for this grid.
        unsafe { self.launch(&kernel, grid, [256, 1, 1], &args)? };
        Ok(y)
    }

    /// Forces the tensor-core convolutions' tile side (default: `GRADCAM_CONV_TILE` = 64 or
    /// 128, else chosen per layer).
    pub fn with_conv_tile(mut self, tile: ConvTile) -> Self {
        self.conv_tile = tile;
        self
    }

    /// An element-wise or reduction op's entry for its input's storage, e.g. `relu_fwd_bf16`.
    fn kernel(op: &str, t: &GpuTensor<L::Buf>) -> String {
        format!("{op}_{}", t.dtype.name())
    }

    /// `t` stored as `to`, converting on the device when it is not.
    fn as_dtype<'a>(
        &self,
        t: &'a GpuTensor<L::Buf>,
        to: DType,
    ) -> Result<Converted<'a, GpuTensor<L::Buf>>> {
        if t.dtype == to {
            return Ok(Converted::Given(t));
        }
        let out = self.tensor(t.shape.clone(), to)?;
        let n = t.numel();
        self.run1d(
            &format!("cast_{}_{}", t.dtype.name(), to.name()),
            n,
            &[KArg::Buf(&t.buf), KArg::Buf(&out.buf), KArg::I32(n as i32)],
        )?;
        Ok(Converted::Made(out))
    }

    pub fn launcher(&self) -> &L {
        &self.l
    }

    fn tensor(&self, shape: Vec<usize>, dtype: DType) -> Result<GpuTensor<L::Buf>> {
        let n: usize = shape.iter().product();
        Ok(GpuTensor {
            buf: self.l.alloc(n * dtype.size())?,
            shape,
            dtype,
        })
    }

    /// A new tensor stored like `like` (an op's output).
    fn like(&self, shape: Vec<usize>, like: &GpuTensor<L::Buf>) -> Result<GpuTensor<L::Buf>> {
        self.tensor(shape, like.dtype)
    }

    fn upload_f32(&self, v: &[f32]) -> Result<L::Buf> {
        self.l.upload(f32_bytes(v))
    }

    fn jet(&self) -> Result<&L::Buf> {
        if let Some(j) = self.jet.get() {
            return Ok(j);
        }
        let table: Vec<u8> = crate::cam::jet::JET.iter().flatten().copied().collect();
        let buf = self.l.upload(&table)?;
        Ok(self.jet.get_or_init(|| buf))
    }

    /// 1-D launch over `total` elements (the kernels loop with a grid stride).
    fn run1d(&self, kernel: &str, total: usize, args: &[KArg<L::Buf>]) -> Result<()> {
        let blocks = total.div_ceil(256).clamp(1, 65535) as u32;
        // SAFETY: every caller passes the kernel's own argument list for `total` elements.
        unsafe { self.launch(kernel, [blocks, 1, 1], [256, 1, 1], args) }
    }
}

/// Integer kernel arguments.
fn ints<'a, B>(v: &[usize]) -> Vec<KArg<'a, B>> {
    v.iter().map(|&x| KArg::I32(x as i32)).collect()
}

fn dims4(s: &[usize]) -> (usize, usize, usize, usize) {
    (s[0], s[1], s[2], s[3])
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
        let p = self.profile.lock().expect("profile table");
        let mut v: Vec<_> = p
            .iter()
            .flatten()
            .map(|(k, &(n, t))| (k.clone(), n, t))
            .collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.2));
        v
    }
    fn device_memory_peak(&self) -> Option<usize> {
        Some(self.l.memory().peak())
    }
    fn reset_device_memory_peak(&self) {
        self.l.memory().reset_peak()
    }

    fn upload_images<'a>(&'a self, images: &[&'a RgbImage]) -> Result<GpuImages<L::Buf>> {
        let bytes = images.iter().map(|im| im.as_raw().len()).sum();
        let mut packed = Vec::with_capacity(bytes);
        let mut layout = Vec::with_capacity(images.len());
        for im in images {
            layout.push((packed.len(), (im.height() as usize, im.width() as usize)));
            packed.extend_from_slice(im.as_raw());
        }
        Ok(GpuImages {
            buf: self.l.upload(&packed)?,
            layout,
            bytes,
        })
    }
    fn preprocess(
        &self,
        images: &GpuImages<L::Buf>,
        (oh, ow): (usize, usize),
    ) -> Result<Self::Tensor> {
        let dtype = self.precision.storage();
        let out = self.tensor(vec![images.layout.len(), 3, oh, ow], dtype)?;
        let kernel = format!("preprocess_rgb8_{}", dtype.name());
        for (i, &(off, (h, w))) in images.layout.iter().enumerate() {
            let mut args = vec![
                KArg::BufAt(&images.buf, off),
                KArg::BufAt(&out.buf, i * 3 * oh * ow * dtype.size()),
            ];
            args.extend(ints(&[h, w, oh, ow]));
            // SAFETY: preprocess_rgb8_<t> on image i (h·w·3 bytes at `off`) into slot i.
            unsafe {
                self.launch(
                    &kernel,
                    [(oh * ow).div_ceil(256) as u32, 1, 1],
                    [256, 1, 1],
                    &args,
                )?
            };
        }
        Ok(out)
    }
    fn overlays(&self, images: &GpuImages<L::Buf>, maps: &Tensor) -> Result<Vec<RgbImage>> {
        let (n, h, w) = (maps.shape()[0], maps.shape()[1], maps.shape()[2]);
        let lay = &images.layout;
        assert_eq!(n, lay.len(), "one map per image");
        let m = self.upload_f32(maps.data())?;
        let jet = self.jet()?;
        let mm = self.l.alloc(n * 2 * 4)?;
        let cmax = self.l.alloc(n * 4)?;
        let out = self.l.alloc(images.bytes)?;
        // Consecutive images of one size are contiguous: one launch per run of them.
        let mut i = 0;
        while i < n {
            let (off, (oh, ow)) = lay[i];
            let mut j = i + 1;
            while j < n && lay[j].1 == (oh, ow) && j - i < 65535 {
                j += 1;
            }
            let dims = ints(&[h, w, oh, ow]);
            let map_i = KArg::BufAt(&m, i * h * w * 4);
            let mm_i = KArg::BufAt(&mm, i * 8);
            let img_i = KArg::BufAt(&images.buf, off);
            let cmax_i = KArg::BufAt(&cmax, i * 4);
            let jet = KArg::Buf(jet);
            let a1 = [&[map_i, mm_i][..], &dims].concat();
            let a2 = [&[map_i, mm_i, img_i, jet, cmax_i][..], &dims].concat();
            let out_i = KArg::BufAt(&out, off);
            let a3 = [&[map_i, mm_i, img_i, jet, cmax_i, out_i][..], &dims].concat();
            let runs = (j - i) as u32;
            // SAFETY: the overlay kernels' argument lists over images i..j, which share
            // (oh, ow) and lie back to back from `off`; maps, mm and cmax slots from i.
            unsafe {
                self.launch("overlay_minmax_f32", [runs, 1, 1], [256, 1, 1], &a1)?;
                self.launch("overlay_max_f32", [runs, 1, 1], [256, 1, 1], &a2)?;
                self.launch(
                    "overlay_rgb8",
                    [(oh * ow).div_ceil(256) as u32, runs, 1],
                    [256, 1, 1],
                    &a3,
                )?;
            }
            i = j;
        }
        let mut bytes = vec![0u8; images.bytes];
        self.l.download(&out, &mut bytes)?;
        Ok(lay
            .iter()
            .map(|&(off, (oh, ow))| {
                RgbImage::from_raw(ow as u32, oh as u32, bytes[off..off + oh * ow * 3].to_vec())
                    .expect("sized from the layout")
            })
            .collect())
    }

    fn name(&self) -> String {
        format!("{}, {} convolutions", self.l.name(), self.precision.name())
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
        }
    }
    fn upload(&self, t: Tensor) -> Result<Self::Tensor> {
        let dtype = self.precision.storage();
        let buf = match dtype {
            DType::F32 => self.upload_f32(t.data())?,
            // Rounded to nearest even on the host (half), as the kernels round.
            DType::Bf16 => {
                let bytes: Vec<u8> = t
                    .data()
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect();
                self.l.upload(&bytes)?
            }
        };
        Ok(GpuTensor {
            buf,
            shape: t.shape().to_vec(),
            dtype,
        })
    }
    fn download(&self, t: &Self::Tensor) -> Result<Tensor> {
        let v = match t.dtype {
            DType::F32 => {
                let mut v = vec![0f32; t.numel()];
                self.l.download(&t.buf, f32_bytes_mut(&mut v))?;
                v
            }
            DType::Bf16 => {
                let mut b = vec![0u8; t.numel() * 2];
                self.l.download(&t.buf, &mut b)?;
                b.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect()
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
        })
    }
    fn reshape(&self, mut t: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor> {
        t.shape = shape.to_vec();
        Ok(t)
    }
    fn conv2d_prepare(&self, _w: &Self::Tensor, _p: &Conv2dParams) -> Result<Option<Self::Tensor>> {
        Ok(None)
    }
    fn conv2d_fwd(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        _prepared: Option<&Self::Tensor>,
        b: Option<&Self::Tensor>,
        p: &Conv2dParams,
        relu: bool,
    ) -> Result<Self::Tensor> {
        self.conv_fwd(x, w, b, None, p, relu)
    }
    fn conv2d_fwd_add_relu(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        _prepared: Option<&Self::Tensor>,
        b: Option<&Self::Tensor>,
        p: &Conv2dParams,
        residual: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let residual = self.as_dtype(residual, x.dtype)?;
        self.conv_fwd(x, w, b, Some(&residual), p, true)
    }
    fn conv2d_bwd_data(
        &self,
        dy: &Self::Tensor,
        w: &Self::Tensor,
        (h, wd): (usize, usize),
        p: &Conv2dParams,
    ) -> Result<Self::Tensor> {
        let (n, k, oh, ow) = dims4(&dy.shape);
        let (_, cg, r, s) = dims4(&w.shape);
        let c = cg * p.groups;
        let dx = self.like(vec![n, c, h, wd], dy)?;
        let mut args = vec![KArg::Buf(&dy.buf), KArg::Buf(&w.buf), KArg::Buf(&dx.buf)];
        args.extend(ints(&[
            n,
            c,
            h,
            wd,
            k,
            r,
            s,
            oh,
            ow,
            p.stride.0,
            p.stride.1,
            p.padding.0,
            p.padding.1,
            p.dilation.0,
            p.dilation.1,
            p.groups,
        ]));
        let (rows, cols) = (cg, n * h * wd);
        let (kernel, tile) = self.conv_kernel("conv2d_bwd_data", dy.dtype, rows, cols);
        let grid = [
            cols.div_ceil(tile) as u32,
            rows.div_ceil(tile) as u32,
            p.groups as u32,
        ];
        // SAFETY: conv2d_bwd_data_<t>'s argument list, sized for this grid.
        unsafe { self.launch(&kernel, grid, [256, 1, 1], &args)? };
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
        let (n, c, h, w) = dims4(&x.shape);
        let (oh, ow) = p.out_hw((h, w)).expect("shapes checked by the network");
        let y = self.like(vec![n, c, oh, ow], x)?;
        let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&y.buf)];
        args.extend(ints(&[
            n * c,
            h,
            w,
            oh,
            ow,
            p.kernel.0,
            p.kernel.1,
            p.stride.0,
            p.stride.1,
            p.padding.0,
            p.padding.1,
        ]));
        self.run1d(&Self::kernel("max_pool2d_fwd", x), n * c * oh * ow, &args)?;
        Ok(y)
    }
    fn max_pool2d_bwd(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        p: &Pool2dParams,
    ) -> Result<Self::Tensor> {
        let (n, c, h, w) = dims4(&x.shape);
        let (_, _, oh, ow) = dims4(&dy.shape);
        let dx = self.like(x.shape.clone(), dy)?;
        let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&dy.buf), KArg::Buf(&dx.buf)];
        args.extend(ints(&[
            n * c,
            h,
            w,
            oh,
            ow,
            p.kernel.0,
            p.kernel.1,
            p.stride.0,
            p.stride.1,
            p.padding.0,
            p.padding.1,
        ]));
        // One thread per input element (a gather over the windows that contain it).
        self.run1d(&Self::kernel("max_pool2d_bwd", dy), n * c * h * w, &args)?;
        Ok(dx)
    }
    fn adaptive_avg_pool2d_fwd(
        &self,
        x: &Self::Tensor,
        (oh, ow): (usize, usize),
    ) -> Result<Self::Tensor> {
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
        let (n, fin, fout) = (x.shape[0], x.shape[1], w.shape[0]);
        let y = self.like(vec![n, fout], x)?;
        let mut args = vec![
            KArg::Buf(&x.buf),
            KArg::Buf(&w.buf),
            b.map_or(KArg::Null, |b| KArg::Buf(&b.buf)),
            KArg::Buf(&y.buf),
        ];
        args.extend(ints(&[n, fin, fout]));
        // SAFETY: linear_fwd_f32's argument list, sized for this grid.
        unsafe {
            self.launch(
                &Self::kernel("linear_fwd", x),
                [n.div_ceil(64) as u32, fout.div_ceil(64) as u32, 1],
                [256, 1, 1],
                &args,
            )?
        };
        Ok(y)
    }
    fn linear_bwd_data(&self, dy: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor> {
        let (n, fout, fin) = (dy.shape[0], dy.shape[1], w.shape[1]);
        let dx = self.like(vec![n, fin], dy)?;
        let mut args = vec![KArg::Buf(&dy.buf), KArg::Buf(&w.buf), KArg::Buf(&dx.buf)];
        args.extend(ints(&[n, fin, fout]));
        // SAFETY: linear_bwd_data_f32's argument list, sized for this grid.
        unsafe {
            self.launch(
                &Self::kernel("linear_bwd_data", dy),
                [n.div_ceil(64) as u32, fin.div_ceil(64) as u32, 1],
                [256, 1, 1],
                &args,
            )?
        };
        Ok(dx)
    }
    fn add(&self, a: Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
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
        let (_, c, h, w) = dims4(&x.shape);
        let n = x.shape.iter().product();
        let (s, t) = (self.upload_f32(scale)?, self.upload_f32(shift)?);
        let mut args = vec![KArg::Buf(&x.buf), KArg::Buf(&s), KArg::Buf(&t)];
        args.extend(ints(&[c, h * w, n]));
        self.run1d(&Self::kernel("channel_affine", &x), n, &args)?;
        Ok(x)
    }
    fn grad_pool(&self, g: &Self::Tensor) -> Result<Self::Tensor> {
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
        let (n, k, h, w) = dims4(&a.shape);
        let out = self.tensor(vec![n, k], DType::F32)?;
        let g = self.as_dtype(g, a.dtype)?;
        let r = (rule == WeightRule::XGradCam) as i32;
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
    fn elementwise_cam_relu(
        &self,
        rule: ElementRule,
        a: &Self::Tensor,
        g: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let (n, k, h, w) = dims4(&a.shape);
        let m = self.tensor(vec![n, h, w], DType::F32)?;
        let g = self.as_dtype(g, a.dtype)?;
        let r = (rule == ElementRule::LayerCam) as i32;
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
}
