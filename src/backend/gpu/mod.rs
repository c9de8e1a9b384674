//! The host side of the CUDA kernels, written once over a [`Launcher`]: real CUDA
//! ([`CudaLauncher`]), or the CPU emulator ([`EmuLauncher`]) so every line of it runs in tests
//! without a GPU. Tensors stay on the device between ops; only the inputs go up and results
//! come down.

mod backend_impl;
mod cuda_launcher;
mod emu_launcher;
pub mod mem;
mod pinned;
mod probe;
mod types;

pub use cuda_launcher::CudaLauncher;
pub use emu_launcher::EmuLauncher;
pub use probe::{probe, DeviceInfo};
pub use types::{ConvTile, DType, GpuTensor, Precision};

use types::Converted;

use mem::{f32_bytes, MemCounter};

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{Backend, Conv2dParams, Pool2dParams};
use crate::Result;

/// A kernel argument.
pub enum KArg<'a, B> {
    Buf(&'a B),
    /// A pointer `offset` bytes into a buffer (one image of a packed batch).
    BufAt(&'a B, usize),
    Null,
    I32(i32),
    /// A `float` parameter (passed as its bits, like an `int`).
    F32(f32),
}

// Manual: derive would ask for B: Copy, but only references are copied.
impl<B> Clone for KArg<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for KArg<'_, B> {}

/// A device→host copy under way ([`Launcher::download_later`]).
pub trait InFlight: Send {
    /// Blocks until the bytes are on the host, then hands them to `take` (from staging memory
    /// the launcher may keep, so callers that spread them over several destinations copy once).
    fn wait(self: Box<Self>, take: &mut dyn FnMut(&[u8])) -> Result<()>;
}

/// A copy already done.
struct Landed(Vec<u8>);

impl InFlight for Landed {
    fn wait(self: Box<Self>, take: &mut dyn FnMut(&[u8])) -> Result<()> {
        take(&self.0);
        Ok(())
    }
}

/// What the GPU host code needs from a device: byte buffers, copies and kernel launches.
/// Launches and copies are ordered (one stream); downloads wait for the work before them.
pub trait Launcher: Send + Sync {
    type Buf: Send + Sync;
    fn name(&self) -> String;
    /// A buffer of `bytes`, contents undefined (the emulator fills it with NaN bytes).
    fn alloc(&self, bytes: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[u8]) -> Result<Self::Buf>;
    /// A buffer of `len` bytes that `fill` writes on the host first (into staging memory the
    /// launcher may keep for fast copies; by default an ordinary vector).
    fn upload_with(&self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<Self::Buf> {
        upload_filled(self, len, fill)
    }
    /// Copies the first `out.len()` bytes of `b` to the host.
    fn download(&self, b: &Self::Buf, out: &mut [u8]) -> Result<()>;
    /// Starts copying the first `len` bytes of `b` to the host and returns at once (where the
    /// launcher can; by default the copy is done before it returns). The buffer is the
    /// copy's until it lands; [`InFlight::wait`] hands the bytes over. Lets a batch's results
    /// travel while the host queues the next batch's work.
    fn download_later(&self, b: Self::Buf, len: usize) -> Result<Box<dyn InFlight>> {
        download_now(self, &b, len)
    }
    fn copy(&self, b: &Self::Buf, bytes: usize) -> Result<Self::Buf>;
    /// Device memory held by this launcher's buffers (now, peak).
    fn memory(&self) -> &MemCounter;
    /// Waits until every queued launch and copy has finished.
    fn synchronize(&self) -> Result<()>;
    /// Whether the kernels run on the CPU emulator (where timing them means nothing).
    fn emulated(&self) -> bool {
        false
    }
    /// Whether Hopper's warpgroup MMA (kernels/conv_wgmma.cu) runs here: a GPU of compute
    /// capability 9.0, or the emulator (through the instruction's twin).
    fn has_wgmma(&self) -> bool {
        self.emulated()
    }
    /// # Safety
    /// The arguments must match the kernel's signature and cover what this grid indexes.
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[KArg<Self::Buf>],
    ) -> Result<()>;
}

pub struct GpuBackend<L: Launcher> {
    l: L,
    precision: Precision,
    conv_tile: ConvTile,
    /// Forward convolutions through the cp.async ring where it applies (GRADCAM_CONV_ASYNC=1;
    /// implies KRSC weights; see [`Self::with_conv_async`]).
    conv_async: bool,
    /// Tensor-core forward convolutions with KRSC weights: always (GRADCAM_CONV_KRSC=1),
    /// never (=0), or (unset) when timing says so, if `conv_tune`.
    conv_krsc: Option<bool>,
    /// Times each convolution's candidate kernels (tile sides, staging) on its first launch
    /// per shape and keeps the fastest (GRADCAM_CONV_TUNE; default on a real GPU).
    conv_tune: bool,
    /// Channels-last activations for the tensor-core forward convolutions that qualify
    /// (GRADCAM_CONV_NHWC=1; see [`Self::with_conv_nhwc`]).
    conv_nhwc: bool,
    /// The channels-last convs on Hopper's warpgroup MMA where they qualify
    /// (GRADCAM_CONV_WGMMA=1; see [`Self::with_conv_wgmma`]).
    conv_wgmma: bool,
    /// The wgmma tile's output channels (64, 128 or 256) and ring depth (4, or 6 with 128
    /// channels), when forced (`with_wgmma_tile`; tests): else the tile rule's, or tuning's
    /// choice.
    wgmma_tile: Option<(usize, usize)>,
    /// The channels-last 128x128 tiles' ring depth, when forced (`with_conv_stages`; tests):
    /// else 3, or chosen by tuning between 3 and 4.
    conv_stages: Option<usize>,
    /// The channels-last 128x128 tiles' warps, when forced (`with_conv_warps`; tests): else
    /// 8, or chosen by tuning between 8 and 4.
    conv_warps: Option<usize>,
    /// The channels-last 1x1 convs' slice depth, when forced (`with_conv_slice`; tests): else
    /// 32 channels, or chosen by tuning between 32 and 64.
    conv_slice: Option<usize>,
    /// The tuned kernel per kind of convolution (see [`Self::conv_plans`]).
    conv_plans: Mutex<BTreeMap<String, String>>,
    /// Kernels tuning passed over because their output differed from the first choice's
    /// (see [`Self::conv_rejected`]).
    conv_rejected: Mutex<BTreeMap<String, String>>,
    /// More candidates for tuning (tests: see [`Self::with_extra_conv_candidate`]).
    conv_extra: Vec<ConvChoice>,
    /// Each OpenCV colormap's table (256 RGB entries) on the device, uploaded on first use.
    colormaps: [OnceLock<L::Buf>; crate::cam::colormap::ALL.len()],
    /// Per kernel: launches and time, while profiling is on.
    profile: Mutex<Option<BTreeMap<String, (usize, Duration)>>>,
}

/// A launch's arguments and grid.
type Launch<'a, B> = (Vec<KArg<'a, B>>, [u32; 3]);

/// One kernel that can run a convolution: its entry, tile (rows, and columns: the same but
/// for the wgmma kernels' 128), whether it reads the KRSC weights, its dynamic shared memory
/// and its block size.
#[derive(Clone, Debug)]
struct ConvChoice {
    kernel: String,
    tile: usize,
    cols: usize,
    krsc: bool,
    shared: u32,
    threads: u32,
}

impl ConvChoice {
    /// A kernel on blocks of 256 threads.
    fn new(kernel: String, tile: usize, krsc: bool, shared: usize) -> Self {
        ConvChoice {
            kernel,
            tile,
            cols: tile,
            krsc,
            shared: shared as u32,
            threads: 256,
        }
    }
}

/// A batch of RGB8 images packed in one device buffer: the pixels back to back, then (from
/// byte `table`) one [`IMAGE_DESC`]-byte record per image, so each per-image kernel is one
/// launch per batch whatever the sizes.
pub struct GpuImages<B> {
    buf: B,
    /// Per image: byte offset into `buf` and (height, width).
    layout: Vec<(usize, (usize, usize))>,
    /// Bytes of pixels (the overlays' buffer has this size and the same offsets).
    bytes: usize,
    /// Byte offset of the descriptor table.
    table: usize,
}

/// Bytes of one `ImageDesc` record (kernels/common.cuh): u64 offset, i32 height, i32 width.
pub const IMAGE_DESC: usize = 16;

/// Images per launch of a kernel over a batch's images (gridDim.y's limit).
const IMAGES_PER_LAUNCH: usize = 65_535;

/// The `ImageDesc` records of `layout`, little-endian as the device reads them.
fn image_descs(layout: &[(usize, (usize, usize))]) -> Vec<u8> {
    let mut t = Vec::with_capacity(layout.len() * IMAGE_DESC);
    for &(off, (h, w)) in layout {
        t.extend_from_slice(&(off as u64).to_le_bytes());
        t.extend_from_slice(&(h as i32).to_le_bytes());
        t.extend_from_slice(&(w as i32).to_le_bytes());
    }
    t
}

impl<L: Launcher> GpuBackend<L> {
    /// Exact f32 arithmetic (see [`Precision`]).
    pub fn new(launcher: L) -> Self {
        Self::with_precision(launcher, Precision::F32)
    }

    pub fn with_precision(launcher: L, precision: Precision) -> Self {
        let flag = |name| match std::env::var(name).as_deref() {
            Ok("1") => Some(true),
            Ok("0") => Some(false),
            _ => None,
        };
        let conv_tune = flag("GRADCAM_CONV_TUNE").unwrap_or(!launcher.emulated());
        let conv_wgmma = flag("GRADCAM_CONV_WGMMA") == Some(true);
        GpuBackend {
            l: launcher,
            precision,
            conv_tile: ConvTile::from_env(),
            conv_async: flag("GRADCAM_CONV_ASYNC") == Some(true),
            conv_krsc: flag("GRADCAM_CONV_KRSC"),
            conv_tune,
            conv_nhwc: flag("GRADCAM_CONV_NHWC") == Some(true) || conv_wgmma,
            conv_wgmma,
            wgmma_tile: None,
            conv_stages: None,
            conv_warps: None,
            conv_slice: None,
            conv_plans: Mutex::new(BTreeMap::new()),
            conv_rejected: Mutex::new(BTreeMap::new()),
            conv_extra: Vec::new(),
            colormaps: std::array::from_fn(|_| OnceLock::new()),
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
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_tagged(kernel, None, grid, block, 0, args) }
    }

    /// [`Self::launch`]; while profiling, the time goes to `"<kernel> <tag()>"` when tagged (a
    /// convolution's GEMM shape, so the profile shows each layer; formed only then).
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_tagged(
        &self,
        kernel: &str,
        tag: Option<&dyn Fn() -> String>,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[KArg<L::Buf>],
    ) -> Result<()> {
        let mut profile = self.profile.lock().expect("profile table");
        let Some(table) = profile.as_mut() else {
            drop(profile);
            // SAFETY: forwarded from the caller.
            return unsafe { self.l.launch(kernel, grid, block, shared_bytes, args) };
        };
        // Synchronous launches: the wall time between the two waits is the kernel's.
        self.l.synchronize()?;
        let t = Instant::now();
        // SAFETY: forwarded from the caller.
        unsafe { self.l.launch(kernel, grid, block, shared_bytes, args)? };
        self.l.synchronize()?;
        let key = match tag {
            Some(t) => format!("{kernel} {}", t()),
            None => kernel.to_string(),
        };
        let e = table.entry(key).or_default();
        e.0 += 1;
        e.1 += t.elapsed();
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether this device runs Hopper's warpgroup MMA (see [`Self::with_conv_wgmma`]).
    pub fn has_wgmma(&self) -> bool {
        self.l.has_wgmma()
    }

    /// Whether convolutions may run on wgmma here: asked for, and the device has it.
    pub fn uses_wgmma(&self) -> bool {
        self.conv_wgmma && self.l.has_wgmma()
    }

    /// Runs kernels/conv_wgmma.cu's `wgmma_check_<kind>`: A [64, kd] times B [128, kd]
    /// transposed (row-major, kd = 32 for tf32, 64 for bf16 and f16), the operands rounded and
    /// staged as the convs stage a slice, by the wgmma instruction and by its twin, as
    /// (instruction, twin), each [64, 128]. Only where [`Self::has_wgmma`].
    pub fn wgmma_check(&self, kind: &str, a: &[f32], b: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let kd = if kind == "tf32" { 32 } else { 64 };
        assert!(
            matches!(kind, "tf32" | "bf16" | "f16") && a.len() == 64 * kd && b.len() == 128 * kd,
            "wgmma_check_{kind}: A is 64x{kd}, B 128x{kd}"
        );
        let (da, db) = (self.upload_f32(a)?, self.upload_f32(b)?);
        let (di, dt) = (
            self.tensor(vec![64, 128], DType::F32)?,
            self.tensor(vec![64, 128], DType::F32)?,
        );
        let args = [
            KArg::Buf(&da),
            KArg::Buf(&db),
            KArg::Buf(&di.buf),
            KArg::Buf(&dt.buf),
        ];
        let shared = ((64 + 128) * 128 + 1024) as u32;
        let kernel = format!("wgmma_check_{kind}");
        // SAFETY: wgmma_check_<kind> reads A and B as sized above and writes 64 x 128 floats
        // to each output; one warpgroup, its operands in `shared` bytes.
        unsafe { self.launch_tagged(&kernel, None, [1, 1, 1], [128, 1, 1], shared, &args)? };
        Ok((
            self.download(&di)?.data().to_vec(),
            self.download(&dt)?.data().to_vec(),
        ))
    }

    /// Runs kernels/mma.cu's check `mma_check_<kind>` (tf32: A [16, 8] · B [8, 8]; bf16 and
    /// f16: A [16, 16] · B [16, 8], row-major) by the mma instruction and by its shuffle twin, as
    /// (instruction, twin), each [16, 8].
    pub fn mma_check(&self, kind: &str, a: &[f32], b: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let depth = a.len() / 16;
        assert!(
            matches!((kind, depth), ("tf32", 8) | ("bf16" | "f16", 16)) && b.len() == depth * 8,
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

    /// Runs kernels/mma.cu's `ldmatrix_check`: `rows` (128 words: 32 rows of 8 16-bit
    /// elements, little-endian) through `ldmatrix...x4[.trans]` and its shuffle twin; returns
    /// what each lane received (lane-major, 4 words each) as (instruction, twin).
    pub fn ldmatrix_check(&self, rows: &[u32], trans: bool) -> Result<(Vec<u32>, Vec<u32>)> {
        assert_eq!(rows.len(), 128, "ldmatrix_check takes 32 rows of 16 bytes");
        let bytes: Vec<u8> = rows.iter().flat_map(|w| w.to_le_bytes()).collect();
        let src = self.l.upload(&bytes)?;
        let (ins, twin) = (self.l.alloc(512)?, self.l.alloc(512)?);
        let args = [
            KArg::Buf(&src),
            KArg::Buf(&ins),
            KArg::Buf(&twin),
            KArg::I32(trans as i32),
        ];
        // SAFETY: ldmatrix_check reads 128 words and writes 128 to each output; one warp.
        unsafe { self.launch("ldmatrix_check", [1, 1, 1], [32, 1, 1], &args)? };
        let get = |b: &L::Buf| -> Result<Vec<u32>> {
            let mut raw = vec![0u8; 512];
            self.l.download(b, &mut raw)?;
            Ok(raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        Ok((get(&ins)?, get(&twin)?))
    }

    /// `v` cast to `to` on the device (`cast_f32_<t>`) as raw little-endian bytes, and those
    /// cast back (`cast_<t>_f32`): the storage conversions the selftest checks bit for bit.
    pub fn cast_round_trip(&self, v: &[f32], to: DType) -> Result<(Vec<u8>, Vec<f32>)> {
        let x = GpuTensor {
            buf: self.upload_f32(v)?,
            shape: vec![v.len()],
            dtype: DType::F32,
            nhwc: false,
            tf32_exact: false,
        };
        let y = self.as_dtype(&x, to)?;
        let mut bytes = vec![0u8; v.len() * to.size()];
        self.l.download(&y.buf, &mut bytes)?;
        let back = self.as_dtype(&y, DType::F32)?;
        let mut f = vec![0f32; v.len()];
        self.l.download(&back.buf, mem::f32_bytes_mut(&mut f))?;
        Ok((bytes, f))
    }

    /// The tile sides a convolution may take: the one forced (GRADCAM_CONV_TILE), both for
    /// tuning to choose (over more than 64 rows), or the fitted rule's.
    fn conv_tiles(&self, dtype: DType, (rows, depth): (usize, usize)) -> &'static [usize] {
        match self.conv_tile {
            ConvTile::T64 => &[64],
            ConvTile::T128 => &[128],
            // A 128-row tile over 64 rows or fewer idles half its tensor cores or more.
            ConvTile::Auto if self.conv_tune && rows > 64 => &[64, 128],
            ConvTile::Auto if big_tile(dtype, rows, depth) => &[128],
            ConvTile::Auto => &[64],
        }
    }

    /// The channels-last convolutions (kernels/conv_nhwc.cu) for a GEMM of `rows` x `depth`:
    /// tile sides as [`Self::conv_tiles`], and for 128x128 tiles a 4-stage ring and (16-bit)
    /// 4 warps (`_w4`, block 128) beside the 3-stage ring on 8 warps (see `conv_stages`,
    /// `conv_warps`); for 16-bit 1x1 convs (`one_by_one`) over a depth a multiple of 64,
    /// 64-channel slices (`_k64`, see `conv_slice`) beside 32. Dynamic shared memory: the ring
    /// of A and B (rows of the slice's bytes + 16) or the epilogue's [pixel][tile + 4] f32,
    /// the larger.
    fn nhwc_choices(
        &self,
        dtype: DType,
        (rows, depth): (usize, usize),
        one_by_one: bool,
        c: usize,
    ) -> Vec<ConvChoice> {
        let t = match dtype {
            DType::F32 => "tf32",
            _ => dtype.name(),
        };
        if self.wgmma_applies(dtype, c) {
            // 64, 128 or 256 output channels (one, two or four warpgroups) by 128 pixels; 4
            // stages of (TM + 128) rows of 128 bytes (6 for the 128-channel `_s6`), and 1 KB to
            // align them (conv_wgmma.cu). 256 channels and 6 stages only where tuning weighs
            // them, 256 over 256 rows or more.
            let tiles = match self.wgmma_tile {
                Some(tile) => vec![tile],
                None => {
                    let tuned = self.conv_tune && self.conv_tile == ConvTile::Auto;
                    let mut t = Vec::new();
                    for &tm in self.conv_tiles(dtype, (rows, depth)) {
                        t.push((tm, 4));
                        // The ring depth is tuned even where the tile side is forced.
                        if tm == 128 && self.conv_tune {
                            t.push((128, 6));
                        }
                    }
                    if tuned && rows >= 256 {
                        t.push((256, 4));
                    }
                    t
                }
            };
            return tiles
                .into_iter()
                .map(|(tm, stages)| {
                    let s = if stages == 4 {
                        String::new()
                    } else {
                        format!("_s{stages}")
                    };
                    let mut ch = ConvChoice::new(
                        format!("conv2d_fwd_wgmma_{t}_m{tm}{s}"),
                        tm,
                        true,
                        stages * (tm + 128) * 128 + 1024,
                    );
                    ch.cols = 128;
                    ch.threads = 2 * tm as u32;
                    ch
                })
                .collect();
        }
        let choice = |tile: usize, stages: usize, warps: usize, slice: usize| {
            let t128 = if tile == 128 { "_t128" } else { "" };
            let s4 = if stages == 4 { "_s4" } else { "" };
            let w4 = if warps == 4 { "_w4" } else { "" };
            let k64 = if slice == 64 { "_k64" } else { "" };
            let row_words = slice * dtype.size() / 4 + 4;
            let words = (stages * 2 * tile * row_words).max(tile * (tile + 4));
            let name = format!("conv2d_fwd_nhwc_{t}{t128}{s4}{w4}{k64}");
            let mut ch = ConvChoice::new(name, tile, true, words * 4);
            ch.threads = 32 * warps as u32;
            ch
        };
        // Tuning candidates, or as asked for: for 128x128 tiles a 4-stage ring and 4 warps
        // (16-bit; TF32's would spill), and 64-channel slices where the depth order stays.
        let sixteen = dtype != DType::F32;
        let pick = |forced: Option<usize>, base: usize, other: usize, applies: bool| match forced {
            _ if !applies => vec![base],
            Some(n) => vec![n],
            None if self.conv_tune => vec![base, other],
            None => vec![base],
        };
        let stages = pick(self.conv_stages, 3, 4, true);
        let warps = pick(self.conv_warps, 8, 4, sixteen);
        let slices = pick(
            self.conv_slice,
            32,
            64,
            sixteen && one_by_one && depth % 64 == 0,
        );
        let mut out = Vec::new();
        for &tile in self.conv_tiles(dtype, (rows, depth)) {
            // The 64-channel slices come with 3 stages on 8 warps, the 4-warp tiles with 3
            // stages (when two are forced at once, the first of: slices, warps, stages).
            for &sl in &slices {
                if sl == 64 {
                    out.push(choice(tile, 3, 8, 64));
                    continue;
                }
                if tile == 64 {
                    out.push(choice(tile, 3, 8, 32));
                    continue;
                }
                let before = out.len();
                for &st in &stages {
                    for &wa in &warps {
                        if st == 3 || wa == 8 {
                            out.push(choice(tile, st, wa, 32));
                        }
                    }
                }
                if out.len() == before {
                    out.push(choice(tile, 3, warps[0], 32));
                }
            }
        }
        out
    }

    /// The kernels that may run a convolution `op` on tensors of `dtype` under this backend's
    /// arithmetic, for a GEMM of `rows` x `depth` per group: one unless tuning has a choice of
    /// tile sides (64x64 or 128x128) and of staging (plain weights, or the KRSC copy when
    /// `krsc`, the input by vectors when `vec_b`, the 16-bit cp.async ring when `ring_b`).
    /// Every choice computes the same values bit for bit (tests/gpu_emulated.rs), so tuning
    /// changes speed only; the TF32 ring, which reads its input truncated to TF32 rather than
    /// rounded, is never a tuning choice.
    fn conv_choices(
        &self,
        op: &str,
        dtype: DType,
        (rows, depth): (usize, usize),
        krsc: bool,
        (vec_b, ring_b): (bool, bool),
    ) -> Vec<ConvChoice> {
        let base = match (dtype, self.precision) {
            (DType::Bf16 | DType::F16, _) => format!("{op}_{}", dtype.name()),
            (DType::F32, Precision::Tf32) => format!("{op}_tf32"),
            (DType::F32, _) => return vec![ConvChoice::new(format!("{op}_f32"), 64, false, 0)],
        };
        let mut out = Vec::new();
        for &tile in self.conv_tiles(dtype, (rows, depth)) {
            let name = if tile == 128 {
                format!("{base}_t128")
            } else {
                base.clone()
            };
            // The cp.async ring: 3 stages of A (row-major, rows of 32 + 4 words TF32, 16 + 4
            // words 16-bit) and B (32 rows of tile + 8 elements); with `ring_b`, B 4 columns
            // per copy.
            let ring = |tf32: bool| {
                let words = if tf32 {
                    tile * 36 + 32 * (tile + 8)
                } else {
                    tile * 20 + 16 * (tile + 8)
                };
                let kind = if ring_b { "async_vec" } else { "async" };
                ConvChoice::new(format!("{name}_{kind}"), tile, true, 3 * words * 4)
            };
            // Asked for (GRADCAM_CONV_ASYNC=1): TF32 always, 16-bit where B can go by vectors.
            let tf32 = self.precision == Precision::Tf32;
            if krsc && self.conv_async && (tf32 || ring_b) {
                out.push(ring(tf32));
                continue;
            }
            if !krsc || self.conv_krsc != Some(true) {
                out.push(ConvChoice::new(name.clone(), tile, false, 0));
            }
            if krsc {
                let kind = if vec_b { "vec" } else { "krsc" };
                out.push(ConvChoice::new(format!("{name}_{kind}"), tile, true, 0));
                // 16-bit: the ring reads the same bits as the tiles above, so tuning may take
                // it (TF32's reads its input truncated: only when asked for, above).
                if ring_b && self.conv_tune && dtype != DType::F32 {
                    out.push(ring(false));
                }
            }
        }
        out
    }

    /// Launches `<op>_<t>` (conv2d_fwd, conv2d_bwd_data): `bufs`, the geometry both share
    /// (n, c, h, w, k, r, s, oh, ow, strides, paddings, dilations, groups), then `extra`; the
    /// grid cut by the tile of a GEMM of `rows` x `cols` per group. `krsc_w`: the KRSC copy of
    /// the weights (`bufs[1]`) when a forward conv has one (see [`Self::krsc_applies`]).
    #[allow(clippy::too_many_arguments)]
    fn launch_conv(
        &self,
        op: &str,
        dtype: DType,
        krsc_w: Option<&L::Buf>,
        bufs: &[KArg<L::Buf>],
        [n, c, h, w, k, r, s, oh, ow]: [usize; 9],
        p: &Conv2dParams,
        extra: &[usize],
        (rows, cols): (usize, usize),
    ) -> Result<()> {
        let geometry = [
            n,
            c,
            h,
            w,
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
        ];
        // GEMM per group: rows x cols x depth (the profile's per-layer tag).
        let depth = match op {
            "conv2d_bwd_data" => k / p.groups * r * s,
            _ => c / p.groups * r * s,
        };
        // Input pixels 4 at a time (FwdGather::vprep): 1x1 over 4-pixel groups, or 3x3 with
        // padding 1 over rows of a multiple of 4; stride 1, no dilation.
        let (hw4, unit) = ((h * w) % 4 == 0, p.stride == (1, 1) && p.dilation == (1, 1));
        let vec_b = unit
            && match (r, s) {
                (1, 1) => p.padding == (0, 0) && hw4,
                (3, 3) => p.padding == (1, 1) && w % 4 == 0,
                _ => false,
            };
        // The ring's vector copies need unshifted taps: 1x1, no padding.
        let ring_b = vec_b && (r, s) == (1, 1);
        let mut choices = if op == "conv2d_fwd_nhwc" {
            self.nhwc_choices(dtype, (rows, depth), (r, s) == (1, 1), c)
        } else {
            self.conv_choices(op, dtype, (rows, depth), krsc_w.is_some(), (vec_b, ring_b))
        };
        if self.conv_tune {
            let base = &choices[0].kernel;
            let extra = self.conv_extra.iter().filter(|ch| {
                ch.kernel.starts_with(base.as_str())
                    && ch.kernel != *base
                    && (!ch.krsc || krsc_w.is_some())
            });
            choices.extend(extra.cloned().collect::<Vec<_>>());
        }
        // The output (each signature's last buffer), which tuning compares between choices.
        let out = match bufs.last() {
            Some(KArg::Buf(b)) => (*b, rows * p.groups * cols * dtype.size()),
            _ => unreachable!("a convolution's last buffer is its output"),
        };
        let args_for = |ch: &ConvChoice| {
            let mut args = bufs.to_vec();
            if let (true, Some(kw)) = (ch.krsc, krsc_w) {
                args[1] = KArg::Buf(kw);
            }
            args.extend(ints(&geometry));
            args.extend(ints(extra));
            let grid = [
                cols.div_ceil(ch.cols) as u32,
                rows.div_ceil(ch.tile) as u32,
                p.groups as u32,
            ];
            (args, grid)
        };
        let choice = if choices.len() == 1 {
            choices.into_iter().next().expect("one choice")
        } else {
            // Tuned once per kind of layer: its channels, kernel, strides, dilations and groups,
            // whether the input goes by vectors, the epilogue (residual or not, ReLU), and its
            // output pixels (N·OH·OW) to within a factor of 2, so images of many sizes
            // (`--size native`) or split batches do not each tune again. A plan is a kernel.
            let nulls: String = bufs
                .iter()
                .map(|b| if matches!(b, KArg::Null) { '0' } else { '1' })
                .collect();
            let key = format!(
                "{op}_{} {}->{} {r}x{s} stride {}x{} dilation {}x{} groups {} vec {} args {nulls} \
                 {extra:?} pixels <2^{}",
                dtype.name(),
                c / p.groups,
                k / p.groups,
                p.stride.0,
                p.stride.1,
                p.dilation.0,
                p.dilation.1,
                p.groups,
                vec_b as u8,
                usize::BITS - cols.leading_zeros(),
            );
            let known = self.conv_plans.lock().expect("plans").get(&key).cloned();
            let planned =
                known.and_then(|kernel| choices.iter().find(|ch| ch.kernel == kernel).cloned());
            match planned {
                Some(ch) => ch,
                None => {
                    // SAFETY: every choice takes <op>_<t>'s arguments, gridded by its tile.
                    let ch = unsafe { self.tune(&choices, &args_for, out)? };
                    self.conv_plans
                        .lock()
                        .expect("plans")
                        .insert(key, ch.kernel.clone());
                    ch
                }
            }
        };
        let (args, grid) = args_for(&choice);
        let tag = || {
            let t = format!("{rows}x{cols}x{depth}");
            if p.groups > 1 {
                format!("{t}x{}g", p.groups)
            } else {
                t
            }
        };
        // SAFETY: the callers pass the buffers of <op>_<t>'s signature, sized for this geometry.
        unsafe {
            self.launch_tagged(
                &choice.kernel,
                Some(&tag),
                grid,
                [choice.threads, 1, 1],
                choice.shared,
                &args,
            )
        }
    }

    /// The fastest of `choices`: each launched once (compiling its module on first use), then
    /// timed over TUNE_RUNS launches in a row (the launches queue, so the wall time between two
    /// waits is the GPU's). A choice that fails to launch is passed over (the first error is
    /// returned only when none launches). Not in the profile.
    ///
    /// Every choice computes the first one's output bit for bit (tests/gpu_emulated.rs and
    /// tests/cuda.rs check it), so each one's output (`out`: the buffer and its bytes) is
    /// compared with the first's on the device: one that differs is broken on this GPU or
    /// driver, and is passed over with a notice (once per kernel) rather than left to give
    /// wrong maps because it was fast. Where there is no memory for the copy of the first
    /// output, the first choice is kept.
    ///
    /// # Safety
    /// `args_for` gives each choice its kernel's arguments and grid, as [`Launcher::launch`].
    unsafe fn tune<'b>(
        &self,
        choices: &[ConvChoice],
        args_for: &dyn Fn(&ConvChoice) -> Launch<'b, L::Buf>,
        (out, out_bytes): (&L::Buf, usize),
    ) -> Result<ConvChoice>
    where
        L::Buf: 'b,
    {
        const TUNE_RUNS: u32 = 3;
        let mut best: Option<(Duration, &ConvChoice)> = None;
        let mut first_err = None;
        // The first choice that ran, and a copy of its output.
        let mut first: Option<(&ConvChoice, Option<L::Buf>)> = None;
        for ch in choices {
            let (args, grid) = args_for(ch);
            let run = || -> Result<Duration> {
                let go = || {
                    // SAFETY: as the caller promises.
                    unsafe {
                        self.l
                            .launch(&ch.kernel, grid, [ch.threads, 1, 1], ch.shared, &args)
                    }
                };
                // The emulator: one untimed-in-effect run each, to exercise this path.
                let runs = if self.l.emulated() { 1 } else { TUNE_RUNS };
                if runs > 1 {
                    go()?;
                }
                self.l.synchronize()?;
                let t = Instant::now();
                for _ in 0..runs {
                    go()?;
                }
                self.l.synchronize()?;
                Ok(t.elapsed())
            };
            let t = match run() {
                Ok(t) => t,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let agrees = match &first {
                None => {
                    first = Some((ch, self.l.copy(out, out_bytes).ok()));
                    true
                }
                Some((_, None)) => false,
                Some((f, Some(want))) => {
                    let differ = self.count_differing(want, out, out_bytes)?;
                    if differ > 0 {
                        self.reject(&ch.kernel, &f.kernel, differ, out_bytes / 2);
                    }
                    differ == 0
                }
            };
            if agrees && best.is_none_or(|(b, _)| t < b) {
                best = Some((t, ch));
            }
        }
        match (best, first_err) {
            (Some((_, ch)), _) => Ok(ch.clone()),
            (None, Some(e)) => Err(e),
            (None, None) => unreachable!("tune is given at least two choices"),
        }
    }

    /// How many of the first `bytes` / 2 16-bit words of `a` and `b` differ
    /// (`count_differing_u16`, in launches of at most 2^30 words).
    fn count_differing(&self, a: &L::Buf, b: &L::Buf, bytes: usize) -> Result<u64> {
        const CHUNK: usize = 1 << 30;
        let words = bytes / 2;
        let mut total = 0u64;
        for at in (0..words).step_by(CHUNK) {
            let n = CHUNK.min(words - at);
            let count = self.l.upload(&0i32.to_le_bytes())?;
            self.run1d(
                "count_differing_u16",
                n,
                &[
                    KArg::BufAt(a, 2 * at),
                    KArg::BufAt(b, 2 * at),
                    KArg::I32(n as i32),
                    KArg::Buf(&count),
                ],
            )?;
            let mut c = [0u8; 4];
            self.l.download(&count, &mut c)?;
            total += u32::from_le_bytes(c) as u64;
        }
        Ok(total)
    }

    /// Records that tuning passed over `kernel` (its output differed from `first`'s in
    /// `differ` of `words` 16-bit words), with a notice on stderr the first time.
    fn reject(&self, kernel: &str, first: &str, differ: u64, words: usize) {
        let mut rejected = self.conv_rejected.lock().expect("rejected");
        if rejected.contains_key(kernel) {
            return;
        }
        let why = format!("{differ} of {words} 16-bit words of its output differ from {first}'s");
        eprintln!(
            "warning: GPU kernel {kernel} is not used: {why} (every candidate should give the \
             same bits; please report this with `gradcam selftest --device cuda`'s output)"
        );
        rejected.insert(kernel.to_string(), why);
    }

    /// The kernels tuning passed over because they gave other bits than the first choice (a
    /// kernel broken on this device), each with what differed.
    pub fn conv_rejected(&self) -> Vec<(String, String)> {
        let rejected = self.conv_rejected.lock().expect("rejected");
        rejected
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// One more candidate for tuning to weigh wherever the first choice's kernel name is a
    /// prefix of `kernel`'s (with `krsc`, only where the conv has KRSC weights): for tests,
    /// which give it a kernel that computes other bits, to see it passed over. `tile`: the
    /// output channels per block; `shared_bytes`: its dynamic shared memory.
    #[doc(hidden)]
    pub fn with_extra_conv_candidate(
        mut self,
        kernel: &str,
        tile: usize,
        krsc: bool,
        shared_bytes: usize,
    ) -> Self {
        self.conv_extra.push(ConvChoice::new(
            kernel.to_string(),
            tile,
            krsc,
            shared_bytes,
        ));
        self
    }

    /// What tuning chose so far, per kind of convolution (see `launch_conv`): (its key, e.g.
    /// `conv2d_fwd_bf16 64->256 1x1 stride 1x1 dilation 1x1 groups 1 vec 1 args 11111 [1]
    /// pixels <2^18`: channels in and out per group, the kernel, whether the input goes by
    /// vectors, which buffer arguments are given (bias, residual), the extra integers (ReLU),
    /// the output pixel count's octave; the choice: the kernel's entry), in key order.
    pub fn conv_plans(&self) -> Vec<(String, String)> {
        let plans = self.conv_plans.lock().expect("plans");
        plans.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Times each convolution's candidate kernels the first time a kind of layer is met and
    /// keeps the fastest for it (default: `GRADCAM_CONV_TUNE` = 1 or 0, else on for a real GPU, off on the
    /// emulator). A forced tile (`GRADCAM_CONV_TILE`) or KRSC setting narrows the choice.
    pub fn with_conv_tune(mut self, on: bool) -> Self {
        self.conv_tune = on;
        self
    }

    /// Forces the tensor-core convolutions' tile side (default: `GRADCAM_CONV_TILE` = 64 or
    /// 128, else chosen per layer).
    pub fn with_conv_tile(mut self, tile: ConvTile) -> Self {
        self.conv_tile = tile;
        self
    }

    /// Runs tensor-core forward convolutions whose channels per group are a multiple of 32
    /// through the cp.async ring, on KRSC weights (kernels/gemm_tile.cuh; default:
    /// `GRADCAM_CONV_ASYNC=1`): at TF32 all of them (reading the input truncated to TF32), at
    /// BF16 and F16 the 1x1 stride-1 ones over H·W a multiple of 4 (where tuning also
    /// considers it without this).
    pub fn with_conv_async(mut self, on: bool) -> Self {
        self.conv_async = on;
        self
    }

    /// Gives tensor-core forward convolutions whose channels per group are a multiple of 32 a
    /// copy of their weights in KRSC order, made at load time, whose rows the tiles stage by
    /// 16-byte vectors: always (`true`; `GRADCAM_CONV_KRSC=1`) or never (`false`; `=0`).
    /// Unset, the copy is made when tuning is on and tuning picks per layer. Costs a second
    /// copy of those weights in device memory (the backward pass reads the original).
    pub fn with_conv_krsc(mut self, on: bool) -> Self {
        self.conv_krsc = Some(on);
        self
    }

    /// Whether a conv with weights [K, C/g, R, S] gets KRSC weights.
    pub(super) fn krsc_applies(&self, w: &[usize]) -> bool {
        let wanted = self.conv_krsc.unwrap_or(self.conv_tune);
        let wanted = match self.precision {
            Precision::F32 => false,
            _ => wanted || self.conv_async || self.conv_nhwc,
        };
        wanted && w.len() == 4 && w[1].is_multiple_of(32)
    }

    /// Runs tensor-core forward convolutions with groups 1, input channels a multiple of 32
    /// and output channels a multiple of 8 on channels-last activations (kernels/conv_nhwc.cu;
    /// default: `GRADCAM_CONV_NHWC=1`): their input is transposed to NHWC if it is not, their
    /// output stays NHWC (max pooling keeps it), and any other op transposes such a tensor
    /// back to NCHW first (where a network's chain of convolutions ends). BF16 and F16: the
    /// same values, bit for bit, as the NCHW kernels. TF32: the convs' outputs (and inputs
    /// transposed for them) are stored rounded to TF32, which the next conv would round them
    /// to anyway. Implies KRSC weights.
    pub fn with_conv_nhwc(mut self, on: bool) -> Self {
        self.conv_nhwc = on;
        self
    }

    /// Runs the channels-last convs (see [`Self::with_conv_nhwc`], which this implies) whose
    /// slices fill rows of 128 bytes (input channels a multiple of 64 at BF16 and F16, of 32
    /// at TF32) on Hopper's warpgroup MMA (kernels/conv_wgmma.cu; default:
    /// `GRADCAM_CONV_WGMMA=1`), where the device has it (compute capability 9.0, or the
    /// emulator). The hardware sums in its own order, so results differ from the mma.sync
    /// kernels' in the last bits (within the precision's tolerance; tests/gpu_emulated.rs).
    pub fn with_conv_wgmma(mut self, on: bool) -> Self {
        self.conv_wgmma = on;
        self.conv_nhwc |= on;
        self
    }

    /// Forces the wgmma tile: output channels (64, 128 or 256) and ring depth (4; 6 with
    /// 128 channels). For tests, which check each.
    pub fn with_wgmma_tile(mut self, rows: usize, stages: usize) -> Self {
        assert!(
            matches!((rows, stages), (64 | 128 | 256, 4) | (128, 6)),
            "no wgmma tile of {rows} rows and {stages} stages"
        );
        self.wgmma_tile = Some((rows, stages));
        self
    }

    /// Whether a channels-last conv over `c` input channels of `dtype` runs on wgmma.
    fn wgmma_applies(&self, dtype: DType, c: usize) -> bool {
        self.uses_wgmma() && c.is_multiple_of(128 / dtype.size())
    }

    /// Forces the ring depth of the channels-last 128x128 tiles (3 or 4; by default 3, or
    /// tuning's choice): for tests, which check that both compute the same.
    pub fn with_conv_stages(mut self, stages: usize) -> Self {
        assert!(matches!(stages, 3 | 4), "3 or 4 stages");
        self.conv_stages = Some(stages);
        self
    }

    /// Forces the warps of the channels-last 128x128 tiles (8, or 4 with 3 stages at BF16 and
    /// F16; by default 8, or tuning's choice): for tests, which check that both compute the
    /// same.
    pub fn with_conv_warps(mut self, warps: usize) -> Self {
        assert!(matches!(warps, 4 | 8), "4 or 8 warps");
        self.conv_warps = Some(warps);
        self
    }

    /// Forces the depth slices of the channels-last 16-bit 1x1 convs over a depth a multiple
    /// of 64 (32 or 64 channels; by default 32, or tuning's choice): for tests, which check
    /// that both compute the same.
    pub fn with_conv_slice(mut self, channels: usize) -> Self {
        assert!(matches!(channels, 32 | 64), "32 or 64 channels");
        self.conv_slice = Some(channels);
        self
    }

    /// Whether a forward conv of input [N, C, H, W] with weights [K, C/g, R, S] runs
    /// channels-last (see [`Self::with_conv_nhwc`]); `krsc`: whether its KRSC copy exists.
    pub(super) fn nhwc_applies(&self, c: usize, w: &[usize], groups: usize, krsc: bool) -> bool {
        self.conv_nhwc
            && self.precision != Precision::F32
            && krsc
            && groups == 1
            && c.is_multiple_of(32)
            && w[0].is_multiple_of(8)
    }

    /// Whether a forward conv that does not run channels-last writes its output channels-last
    /// anyway (`conv2d_fwd_onhwc_<t>`): a network's first conv (fewer than 32 input channels,
    /// NCHW) whose output channels, a multiple of 32, make the next convs channels-last ones;
    /// its output then needs no transposition before them.
    pub(super) fn nhwc_output_applies(
        &self,
        x: &GpuTensor<L::Buf>,
        w: &[usize],
        groups: usize,
    ) -> bool {
        self.conv_nhwc
            && self.precision != Precision::F32
            && !x.nhwc
            && groups == 1
            && w[1] < 32
            && w[0].is_multiple_of(32)
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
        let mut out = self.tensor(t.shape.clone(), to)?;
        out.nhwc = t.nhwc; // element-wise: the layout stays
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
            nhwc: false,
            tf32_exact: false,
        })
    }

    /// `t` stored channels-last (`nhwc`) or NCHW, transposing on the device when it is not.
    fn in_layout<'a>(
        &self,
        t: &'a GpuTensor<L::Buf>,
        nhwc: bool,
    ) -> Result<Converted<'a, GpuTensor<L::Buf>>> {
        self.in_layout_rounded(t, nhwc, false)
    }

    /// [`Self::in_layout`]; a transposed f32 copy rounded to TF32 when `round_tf32` (the input
    /// of a channels-last TF32 conv, whose cp.async copies do not round).
    fn in_layout_rounded<'a>(
        &self,
        t: &'a GpuTensor<L::Buf>,
        nhwc: bool,
        round_tf32: bool,
    ) -> Result<Converted<'a, GpuTensor<L::Buf>>> {
        // Only the transposition into NHWC rounds (layout_transpose_<t>).
        let round_tf32 = round_tf32 && nhwc && t.dtype == DType::F32;
        if t.nhwc == nhwc {
            if !round_tf32 || t.tf32_exact {
                return Ok(Converted::Given(t));
            }
            // Channels-last already but not TF32-exact (a sum): rounded on a round trip
            // through NCHW (rare: networks add inside a conv's epilogue).
            let other = self.in_layout(t, !nhwc)?;
            return match self.in_layout_rounded(&other, nhwc, true)? {
                Converted::Made(out) => Ok(Converted::Made(out)),
                Converted::Given(_) => unreachable!("the layouts differ"),
            };
        }
        let (n, c, h, w) = dims4(&t.shape);
        let mut out = self.like(t.shape.clone(), t)?;
        out.nhwc = nhwc;
        out.tf32_exact = t.tf32_exact || round_tf32;
        let args = [
            KArg::Buf(&t.buf),
            KArg::Buf(&out.buf),
            KArg::I32(c as i32),
            KArg::I32((h * w) as i32),
            KArg::I32(nhwc as i32),
            KArg::I32(round_tf32 as i32),
        ];
        let grid = [(h * w).div_ceil(32) as u32, c.div_ceil(32) as u32, n as u32];
        // SAFETY: layout_transpose_<t>: [N][C][H·W] ↔ [N][H·W][C], 32x32 tiles per block.
        unsafe {
            self.launch(
                &Self::kernel("layout_transpose", t),
                grid,
                [256, 1, 1],
                &args,
            )?
        };
        Ok(Converted::Made(out))
    }

    /// `t` as NCHW (what every op but the channels-last convolutions reads).
    fn nchw<'a>(&self, t: &'a GpuTensor<L::Buf>) -> Result<Converted<'a, GpuTensor<L::Buf>>> {
        self.in_layout(t, false)
    }

    /// `t` as NCHW, by value (for the ops that work in place).
    fn owned_nchw(&self, t: GpuTensor<L::Buf>) -> Result<GpuTensor<L::Buf>> {
        if !t.nhwc {
            return Ok(t);
        }
        match self.in_layout(&t, false)? {
            Converted::Made(out) => Ok(out),
            Converted::Given(_) => unreachable!("an NHWC tensor is transposed"),
        }
    }

    /// A new tensor stored like `like` (an op's output).
    fn like(&self, shape: Vec<usize>, like: &GpuTensor<L::Buf>) -> Result<GpuTensor<L::Buf>> {
        self.tensor(shape, like.dtype)
    }

    fn upload_f32(&self, v: &[f32]) -> Result<L::Buf> {
        self.l.upload(f32_bytes(v))
    }

    fn colormap(&self, c: crate::cam::Colormap) -> Result<&L::Buf> {
        let slot = &self.colormaps[c.number()];
        if let Some(t) = slot.get() {
            return Ok(t);
        }
        let table: Vec<u8> = c.table().iter().flatten().copied().collect();
        let buf = self.l.upload(&table)?;
        Ok(slot.get_or_init(|| buf))
    }

    /// linear_fwd / linear_bwd_data (`op`) into `y`, whose GEMM is `rows` outputs per image
    /// by `depth`: split along the depth when the output tiles alone would leave most SMs idle
    /// (see kernels/linear.cu), the partial sums then added in order by linear_sum.
    fn launch_linear(
        &self,
        op: &str,
        [a, w]: [&L::Buf; 2],
        bias: Option<&L::Buf>,
        y: &GpuTensor<L::Buf>,
        [n, fin, fout]: [usize; 3],
        (rows, depth): (usize, usize),
    ) -> Result<()> {
        let tiles = n.div_ceil(64) * rows.div_ceil(64);
        let (splits, chunk) = split_depth(tiles, depth);
        let part = if splits > 1 {
            Some(self.tensor(vec![splits, n, rows], DType::F32)?)
        } else {
            None
        };
        let mut args = vec![KArg::Buf(a), KArg::Buf(w)];
        if op == "linear_fwd" {
            args.push(bias.map_or(KArg::Null, KArg::Buf));
        }
        args.push(KArg::Buf(&y.buf));
        args.push(part.as_ref().map_or(KArg::Null, |p| KArg::Buf(&p.buf)));
        args.extend(ints(&[n, fin, fout, chunk]));
        // The 16-bit backward pass runs on the tensor cores with rows and columns swapped
        // (kernels/linear.cu).
        let swapped = op == "linear_bwd_data" && y.dtype != DType::F32;
        let (gx, gy) = if swapped { (rows, n) } else { (n, rows) };
        let grid = [
            gx.div_ceil(64) as u32,
            gy.div_ceil(64) as u32,
            splits as u32,
        ];
        // SAFETY: <op>_<t>'s argument list; grid and `part` sized for `splits` chunks.
        unsafe { self.launch(&Self::kernel(op, y), grid, [256, 1, 1], &args)? };
        if let Some(p) = part {
            let count = n * rows;
            self.run1d(
                &Self::kernel("linear_sum", y),
                count,
                &[
                    KArg::Buf(&p.buf),
                    bias.map_or(KArg::Null, KArg::Buf),
                    KArg::Buf(&y.buf),
                    KArg::I32(splits as i32),
                    KArg::I32(count as i32),
                    KArg::I32(rows as i32),
                ],
            )?;
        }
        Ok(())
    }

    /// 1-D launch over `total` elements (the kernels loop with a grid stride).
    fn run1d(&self, kernel: &str, total: usize, args: &[KArg<L::Buf>]) -> Result<()> {
        let blocks = total.div_ceil(256).clamp(1, 65535) as u32;
        // SAFETY: every caller passes the kernel's own argument list for `total` elements.
        unsafe { self.launch(kernel, [blocks, 1, 1], [256, 1, 1], args) }
    }
}

/// [`Launcher::upload_with`] through an ordinary vector (the default, and the CUDA launcher's
/// way when staging memory is off or the copy is small).
fn upload_filled<L: Launcher + ?Sized>(
    l: &L,
    len: usize,
    fill: &mut dyn FnMut(&mut [u8]),
) -> Result<L::Buf> {
    let mut v = vec![0u8; len];
    fill(&mut v);
    l.upload(&v)
}

/// [`Launcher::download_later`] done at once into an ordinary vector (the default, and the
/// CUDA launcher's way when its page-locked pool does not serve the copy).
fn download_now<L: Launcher + ?Sized>(l: &L, b: &L::Buf, len: usize) -> Result<Box<dyn InFlight>> {
    let mut v = vec![0u8; len];
    l.download(b, &mut v)?;
    Ok(Box::new(Landed(v)))
}

/// Whether a tensor-core convolution takes 128x128 tiles rather than 64x64, from the per-layer
/// profiles of ResNet-50 and VGG16 on an H100 (GPU.md, run 3): 128 rows of output channels at
/// least (else half the tile idles), and deep enough for the larger tile's reuse of each staged
/// element to pay: 256 for TF32; more than 1024 for BF16, whose staging costs as much per
/// element while its tensor cores finish twice as fast. Within 1.2 % of the better tile per
/// layer on both networks.
pub(crate) fn big_tile(dtype: DType, rows: usize, depth: usize) -> bool {
    rows >= 128
        && match dtype {
            DType::Bf16 | DType::F16 => depth > 1024,
            DType::F32 => depth >= 256,
        }
}

/// How a GEMM with `tiles` output tiles cuts its `depth` (linear layers): enough chunks for
/// about 256 blocks (two waves' worth on a large GPU), each at least 512 deep and a multiple of
/// the 16-deep slice; (1, depth) when the tiles already fill the GPU. Returns (splits, chunk).
pub(crate) fn split_depth(tiles: usize, depth: usize) -> (usize, usize) {
    let want = 256usize.div_ceil(tiles.max(1)).min(depth / 512).max(1);
    if want == 1 {
        return (1, depth);
    }
    let chunk = depth.div_ceil(want).div_ceil(16) * 16;
    (depth.div_ceil(chunk), chunk)
}

/// A pooling kernel's geometry after its buffers: planes (N·C), h, w, oh, ow, then the window,
/// strides and paddings.
fn pool_ints<'a, B>(
    planes: usize,
    [h, w, oh, ow]: [usize; 4],
    p: &Pool2dParams,
) -> Vec<KArg<'a, B>> {
    ints(&[
        planes,
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
    ])
}

/// Integer kernel arguments.
fn ints<'a, B>(v: &[usize]) -> Vec<KArg<'a, B>> {
    v.iter().map(|&x| KArg::I32(x as i32)).collect()
}

fn dims4(s: &[usize]) -> (usize, usize, usize, usize) {
    (s[0], s[1], s[2], s[3])
}

#[cfg(test)]
mod tests {
    use super::split_depth;

    #[test]
    fn tile_rule_follows_the_h100_profiles() {
        use super::{big_tile, DType};
        // ResNet-50 layer2 3x3 (128 x 50176 x 1152): 128 tiles, TF32 and BF16.
        assert!(big_tile(DType::F32, 128, 1152) && big_tile(DType::Bf16, 128, 1152));
        // 64 output channels (ResNet layer1, VGG block 1): 64 tiles.
        assert!(!big_tile(DType::F32, 64, 576) && !big_tile(DType::Bf16, 64, 576));
        // Shallow 1x1 (256 x 200704 x 64): 64 tiles; 1x1 over 1024 channels: BF16 stays at 64.
        assert!(!big_tile(DType::F32, 256, 64));
        assert!(big_tile(DType::F32, 2048, 1024) && !big_tile(DType::Bf16, 2048, 1024));
    }

    #[test]
    fn linear_depth_splits_fill_the_gpu_in_16_deep_chunks() {
        // VGG16 at batch 64: fc6 25088 → 4096 (64 tiles), fc7, fc8 (1000 outputs: 16 tiles).
        assert_eq!(split_depth(64, 25088), (4, 6272));
        assert_eq!(split_depth(64, 4096), (4, 1024));
        assert_eq!(split_depth(16, 4096), (8, 512));
        // Enough tiles already, or too shallow to be worth it: one pass.
        assert_eq!(split_depth(300, 25088), (1, 25088));
        assert_eq!(split_depth(1, 700), (1, 700));
        // Chunks are multiples of 16 and cover the depth.
        let (s, c) = split_depth(17, 1100);
        assert_eq!((s, c), (2, 560));
        assert!(c % 16 == 0 && s * c >= 1100 && (s - 1) * c < 1100);
    }
}
