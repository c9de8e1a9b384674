//! The CPU backend users run: convolutions and linear layers as GEMMs (im2col, or the input
//! itself for 1×1 stride-1 convolutions) on the `gemm` crate; the rest parallel over planes
//! with rayon. Tested against `naive`.

use rayon::prelude::*;

use super::gemm::{
    bf16_packed_dims, pack_a, pack_a_bf16, packed_shape, sgemm, sgemm_prepacked, Epilogue, Mat,
    Parallelism,
};
use super::naive::adaptive_bin;
use super::winograd;
use crate::backend::{self, BwdFilters, Conv2dParams, Pool2dParams, TransposedConv};
use crate::Tensor;

/// With at least as many images as threads, one image per task and single-threaded GEMMs;
/// otherwise images in turn, each GEMM using every thread. Called from a rayon task (the
/// network's image-by-image layers, one image per task), all on that task's thread.
fn per_image<F>(n: usize, out: &mut [f32], per: usize, f: F)
where
    F: Fn(usize, &mut [f32], Parallelism) + Sync,
{
    let threads = rayon::current_num_threads();
    if rayon::current_thread_index().is_some() {
        out.chunks_mut(per)
            .enumerate()
            .for_each(|(i, o)| f(i, o, Parallelism::None));
    } else if n >= threads && threads > 1 {
        out.par_chunks_mut(per)
            .enumerate()
            .for_each(|(i, o)| f(i, o, Parallelism::None));
    } else {
        let par = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        out.chunks_mut(per)
            .enumerate()
            .for_each(|(i, o)| f(i, o, par));
    }
}

/// Range of output positions o in 0..out whose tap `o*stride + off - pad` lands inside 0..len.
fn valid_range(out: usize, off: usize, stride: usize, pad: usize, len: usize) -> (usize, usize) {
    // o*stride + off >= pad  and  o*stride + off < pad + len
    let lo = pad.saturating_sub(off).div_ceil(stride);
    let hi = if pad + len > off {
        (pad + len - off).div_ceil(stride)
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

struct Geom {
    c: usize,
    h: usize,
    w: usize,
    r: usize,
    s: usize,
    oh: usize,
    ow: usize,
    p: Conv2dParams,
}

/// Bytes of im2col buffer worked on at once: small enough to stay in cache between being
/// written and being packed by the GEMM.
const COL_CHUNK_BYTES: usize = 2 << 20;

thread_local! {
    /// Each worker's im2col buffer, reused across calls (no page faults per conv).
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_col<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COL.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < len {
            c.resize(len, 0.0);
        }
        f(&mut c[..len])
    })
}

impl Geom {
    /// Whether the im2col matrix is the input itself (1×1, stride 1, no padding).
    fn direct(&self) -> bool {
        self.r == 1 && self.s == 1 && self.p.stride == (1, 1) && self.p.padding == (0, 0)
    }

    /// Output rows per im2col chunk.
    fn rows_per_chunk(&self) -> usize {
        let kk = self.c * self.r * self.s;
        let cols = (COL_CHUNK_BYTES / 4 / kk.max(1)).max(256);
        cols.div_ceil(self.ow).clamp(1, self.oh)
    }

    /// Unfolds output rows oy0..oy1 of one image into `col` [c·r·s, (oy1-oy0)·ow];
    /// padding taps become 0.
    fn im2col(&self, img: &[f32], (oy0, oy1): (usize, usize), col: &mut [f32]) {
        let (ow, p) = (self.ow, &self.p);
        let n = (oy1 - oy0) * ow;
        // Stride 2 across with taps across (ResNet's stem and its strided 3×3 convs): the
        // input rows these output rows read are split once per channel into their even and
        // odd columns, so each tap's run of a row is one contiguous copy instead of a gather
        // (ResNet-50 stem 130-190 → 255-270 GFLOP/s). A 1×1 kernel reads one parity of each
        // row once: the gather is cheaper there.
        let split = p.stride.1 == 2 && self.s > 1;
        let half = self.w.div_ceil(2);
        let iy_lo = (oy0 * p.stride.0).saturating_sub(p.padding.0);
        let last = (oy1 - 1) * p.stride.0 + (self.r - 1) * p.dilation.0 + 1;
        let iy_hi = last.saturating_sub(p.padding.0).min(self.h).max(iy_lo);
        let mut phases = vec![0f32; if split { (iy_hi - iy_lo) * 2 * half } else { 0 }];
        let mut row = 0;
        for ci in 0..self.c {
            let plane = &img[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            if split {
                let rows = plane[iy_lo * self.w..iy_hi * self.w].chunks_exact(self.w.max(1));
                for (src, dst) in rows.zip(phases.chunks_exact_mut(2 * half)) {
                    let (even, odd) = dst.split_at_mut(half);
                    for (j, pair) in src.chunks(2).enumerate() {
                        even[j] = pair[0];
                        if let Some(&v) = pair.get(1) {
                            odd[j] = v;
                        }
                    }
                }
            }
            for ry in 0..self.r {
                let (y0, y1) =
                    valid_range(self.oh, ry * p.dilation.0, p.stride.0, p.padding.0, self.h);
                let (y0, y1) = (y0.clamp(oy0, oy1), y1.clamp(oy0, oy1));
                for sx in 0..self.s {
                    let (x0, x1) =
                        valid_range(ow, sx * p.dilation.1, p.stride.1, p.padding.1, self.w);
                    let dst = &mut col[row * n..(row + 1) * n];
                    row += 1;
                    dst[..(y0 - oy0) * ow].fill(0.0);
                    dst[(y1 - oy0) * ow..].fill(0.0);
                    for oy in y0..y1 {
                        let iy = oy * p.stride.0 + ry * p.dilation.0 - p.padding.0;
                        let d = &mut dst[(oy - oy0) * ow..(oy - oy0 + 1) * ow];
                        d[..x0].fill(0.0);
                        d[x1..].fill(0.0);
                        let src = &plane[iy * self.w..(iy + 1) * self.w];
                        let base = sx * p.dilation.1;
                        if x1 == x0 {
                            // Every column of this tap is padding (padding wider than the
                            // map): `start` below would be negative.
                        } else if p.stride.1 == 1 {
                            let start = x0 + base - p.padding.1;
                            d[x0..x1].copy_from_slice(&src[start..start + (x1 - x0)]);
                        } else if split {
                            // Column 2·ox + base − pad: one parity for the whole run.
                            let q = 2 * x0 + base - p.padding.1;
                            let at = (iy - iy_lo) * 2 * half + (q & 1) * half + (q >> 1);
                            d[x0..x1].copy_from_slice(&phases[at..at + (x1 - x0)]);
                        } else {
                            for (ox, v) in d[x0..x1].iter_mut().enumerate() {
                                *v = src[(x0 + ox) * p.stride.1 + base - p.padding.1];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of `im2col` for the same rows: adds each column entry back to its input
    /// position.
    fn col2im(&self, col: &[f32], (oy0, oy1): (usize, usize), img: &mut [f32]) {
        let (ow, p) = (self.ow, &self.p);
        let n = (oy1 - oy0) * ow;
        let mut row = 0;
        for ci in 0..self.c {
            let plane = &mut img[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            for ry in 0..self.r {
                let (y0, y1) =
                    valid_range(self.oh, ry * p.dilation.0, p.stride.0, p.padding.0, self.h);
                let (y0, y1) = (y0.clamp(oy0, oy1), y1.clamp(oy0, oy1));
                for sx in 0..self.s {
                    let (x0, x1) =
                        valid_range(ow, sx * p.dilation.1, p.stride.1, p.padding.1, self.w);
                    let src = &col[row * n..(row + 1) * n];
                    row += 1;
                    for oy in y0..y1 {
                        let iy = oy * p.stride.0 + ry * p.dilation.0 - p.padding.0;
                        let dst = &mut plane[iy * self.w..(iy + 1) * self.w];
                        let base = sx * p.dilation.1;
                        let s = &src[(oy - oy0) * ow..(oy - oy0 + 1) * ow];
                        if x1 == x0 {
                            // Nothing of this tap lands inside the row (as in `im2col`).
                        } else if p.stride.1 == 1 {
                            let start = x0 + base - p.padding.1;
                            let d = &mut dst[start..start + (x1 - x0)];
                            d.iter_mut().zip(&s[x0..x1]).for_each(|(d, v)| *d += v);
                        } else {
                            for ox in x0..x1 {
                                dst[ox * p.stride.1 + base - p.padding.1] += s[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What [`conv2d_fwd`] can use of a conv's filters made once, at load: the Winograd
/// transform where it applies (F(4×4)'s where the output map at the model's size, `out_hw`,
/// is large enough, [`winograd::Tile::for_map`]; else F(2×2)'s), else (one group, a CPU with
/// the AVX-512 GEMM) the filters as a [K, C·R·S] matrix packed for it ([`pack_a`]: [K, L]).
/// With `bf16` (`--precision bf16`, a CPU with AMX-BF16) every conv of one group is a GEMM on
/// the filters rounded to bf16 and packed for the tiles ([`pack_a_bf16`]), Winograd's
/// included: its transforms would round again on top of bf16's 8 bits. (Over 64 output
/// channels f32 Winograd F(4×4) is about as fast, 0.94–1.06× on ResNet-50's and VGG16's first
/// 3×3 layers: packing the columns costs as much as the tile products there; on 512 channels
/// the tiles are 1.9× faster: BENCHMARKS.md.)
pub fn conv2d_prepare(
    w: &Tensor,
    p: &Conv2dParams,
    out_hw: Option<(usize, usize)>,
    bf16: bool,
) -> Option<Tensor> {
    let (k, c, r, s) = w.dims4();
    if bf16 && p.groups == 1 {
        if let Some(t) = pack_a_bf16(Mat::row_major(w.data(), c * r * s), k, c * r * s) {
            return Some(t);
        }
    }
    if winograd::applies(w, p) {
        let tile = out_hw.map_or(winograd::Tile::F2, |(oh, ow)| {
            winograd::Tile::for_map(oh, ow)
        });
        return Some(winograd::transform_for(w, tile));
    }
    (p.groups == 1)
        .then(|| pack_a(Mat::row_major(w.data(), c * r * s), k, c * r * s))
        .flatten()
}

/// Whether `prepared` has the shape [`conv2d_prepare`] gives filters of `dims` (K, C/groups,
/// R, S) for this conv: the Winograd transform of either tile, plain or packed, or the
/// packed matrix, f32 or bf16. Every form names K and C/groups (or C/groups·R·S) in its
/// shape ([`packed_shape`], [`bf16_packed_dims`]), so filters made for another conv are told
/// apart.
pub fn prepared_fits(
    prepared: &Tensor,
    dims: (usize, usize, usize, usize),
    p: &Conv2dParams,
) -> bool {
    let (k, cg, r, s) = dims;
    if let Some(mk) = bf16_packed_dims(prepared) {
        return p.groups == 1 && mk == (k, cg * r * s);
    }
    if winograd::applies_to(dims, p) {
        let points = [winograd::Tile::F2.points(), winograd::Tile::F4.points()];
        return match *prepared.shape() {
            [np, kk, cc] => {
                points.contains(&np)
                    && kk == k
                    && (cc == cg || packed_shape(k, cg) == Some([kk, cc]))
            }
            _ => false,
        };
    }
    p.groups == 1 && packed_shape(k, cg * r * s).is_some_and(|s| prepared.shape() == s)
}

/// Whether `prepared` is what [`conv2d_prepare_bwd`] packs of filters of `dims` (K, C, R,
/// S) for [`conv2d_bwd_data`]: Wᵀ, (C·R·S)×K.
pub fn packed_bwd_fits(prepared: &Tensor, dims: (usize, usize, usize, usize)) -> bool {
    let (k, c, r, s) = dims;
    if let Some(mk) = bf16_packed_dims(prepared) {
        return mk == (c * r * s, k);
    }
    packed_shape(c * r * s, k).is_some_and(|s| prepared.shape() == s)
}

/// A conv's filters for its backward-data pass, made the first time a backward pass crosses
/// it. Stride 1 (dilation 1, one group, padding below the kernel's size): the pass as a
/// forward conv ([`Conv2dParams::transposed`]) of the flipped, transposed filters, kept only
/// as [`conv2d_prepare`] prepares them (Winograd for 3×3 over 16 channels or more: ~4× faster
/// than the im2col GEMMs and col2im it replaces; else packed for the AVX-512 GEMM, once
/// instead of for each image). The Winograd tile is F(2×2) whatever the map: F(4×4) rounds
/// 4–7× worse than the direct convolution, and Grad-CAM++'s weights, 1 / (2g² + ΣA·g³),
/// magnify that rounding in a gradient where the denominator nearly cancels (the demo model's
/// `layer1.0.conv1` maps moved by up to 2e-2 with F(4×4) here, about 5e-3 with F(2×2), as
/// pytorch-grad-cam in f32 moves against f64). F(2×2) costs VGG16 at `features.2` ~6 %; the
/// default layers' backward passes cross no 3×3 conv on a map large enough for F(4×4). Other convs of one group, with the
/// AVX-512 GEMM: Wᵀ packed once for [`conv2d_bwd_data`]'s GEMMs, which otherwise pack it per
/// image (most of the time on 7×7 maps, where an image is 49 columns). None where neither
/// applies: [`conv2d_bwd_data`] as it is. `bf16`: as for [`conv2d_prepare`].
pub fn conv2d_prepare_bwd(w: &Tensor, p: &Conv2dParams, bf16: bool) -> Option<BwdFilters<Tensor>> {
    let (k, c, r, s) = w.dims4();
    let transposed = p.transposed((r, s)).and_then(|pt| {
        let mut wt = vec![0f32; w.len()];
        for (ki, filters) in w.data().chunks_exact((c * r * s).max(1)).enumerate() {
            for (ci, taps) in filters.chunks_exact((r * s).max(1)).enumerate() {
                let dst = &mut wt[(ci * k + ki) * r * s..][..r * s];
                dst.iter_mut()
                    .zip(taps.iter().rev())
                    .for_each(|(d, &v)| *d = v);
            }
        }
        let wt = Tensor::new([c, k, r, s], wt);
        let prepared = conv2d_prepare(&wt, &pt, None, bf16)?;
        Some(BwdFilters::Transposed(TransposedConv {
            shape: [c, k, r, s],
            p: pt,
            prepared,
        }))
    });
    transposed.or_else(|| {
        let wt = Mat::transposed(w.data(), c * r * s);
        let packed = (p.groups == 1).then(|| match bf16 {
            true => pack_a_bf16(wt, c * r * s, k).or_else(|| pack_a(wt, c * r * s, k)),
            false => pack_a(wt, c * r * s, k),
        });
        packed.flatten().map(|prepared| BwdFilters::Own {
            shape: [k, c, r, s],
            prepared,
        })
    })
}

/// v += res (when given), then max(v, 0) when `relu` (NaN kept: [`backend::relu`]): a conv's epilogue, in one pass.
pub(super) fn add_relu(v: &mut [f32], res: Option<&[f32]>, relu: bool) {
    match (res, relu) {
        (Some(res), true) => (v.iter_mut().zip(res)).for_each(|(v, a)| *v = backend::relu(*v + a)),
        (Some(res), false) => v.iter_mut().zip(res).for_each(|(v, a)| *v += a),
        (None, true) => v.iter_mut().for_each(|v| *v = backend::relu(*v)),
        (None, false) => {}
    }
}

/// `prepared`: what [`conv2d_prepare`] made of `w` (else the Winograd transform is made here
/// when the conv qualifies); `residual` (shaped as the output) is added, then `relu` applied,
/// to each image's output while it is still in cache (a ResNet block's end in one pass).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_fwd(
    x: &Tensor,
    w: &Tensor,
    prepared: Option<&Tensor>,
    b: Option<&Tensor>,
    p: &Conv2dParams,
    residual: Option<&Tensor>,
    relu: bool,
) -> Tensor {
    let f = Filters {
        dims: w.dims4(),
        plain: Some(w),
        prepared,
    };
    conv2d_fwd_with(x, f, b, p, residual, relu)
}

/// A conv's filters as [`conv2d_fwd_with`] reads them: their dims (K, C/g, R, S), and the
/// filters themselves or what [`conv2d_prepare`] made of them, or both.
#[derive(Clone, Copy)]
pub struct Filters<'a> {
    pub dims: (usize, usize, usize, usize),
    pub plain: Option<&'a Tensor>,
    pub prepared: Option<&'a Tensor>,
}

/// [`conv2d_fwd`] on filters that may be known only by what was prepared of them (a
/// backward-data pass's transposed conv keeps no plain copy).
pub fn conv2d_fwd_with(
    x: &Tensor,
    f: Filters,
    b: Option<&Tensor>,
    p: &Conv2dParams,
    residual: Option<&Tensor>,
    relu: bool,
) -> Tensor {
    let (n, c, h, wd) = x.dims4();
    let (k, cg, r, s) = f.dims;
    let prepared = f.prepared;
    let plain = || {
        f.plain
            .expect("a conv's filters or what was prepared of them")
    };
    let (oh, ow) = p.out_hw((h, wd), (r, s)).expect("kernel larger than input");
    let epilogue = |ni: usize, yi: &mut [f32]| {
        let len = yi.len();
        add_relu(yi, residual.map(|t| &t.data()[ni * len..][..len]), relu);
    };
    let g = Geom {
        c: cg,
        h,
        w: wd,
        r,
        s,
        oh,
        ow,
        p: *p,
    };
    let (kg, kk, ohw) = (k / p.groups, cg * r * s, oh * ow);
    let rows = g.rows_per_chunk();
    let mut y = Tensor::zeros([n, k, oh, ow]);
    // Filters packed in bf16 (`--precision bf16`) are a GEMM's, whatever the conv.
    let bf16 = prepared.is_some_and(|t| bf16_packed_dims(t).is_some());
    if !bf16 && winograd::applies_to(f.dims, p) {
        // The tile the filters were prepared for at load (by the map at the model's size),
        // whatever this map is; without them, the tile this map calls for, transformed here.
        let computed;
        let (u, tile) = match prepared {
            Some(u) if u.shape()[0] == winograd::Tile::F4.points() => (u, winograd::Tile::F4),
            Some(u) => (u, winograd::Tile::F2),
            None => {
                let tile = winograd::Tile::for_map(oh, ow);
                computed = winograd::transform_for(plain(), tile);
                (&computed, tile)
            }
        };
        let plan = winograd::Plan {
            c,
            h,
            w: wd,
            k,
            pad: p.padding,
            oh,
            ow,
            u,
            bias: b.map(|b| b.data()),
            relu,
            tile,
        };
        per_image(n, y.data_mut(), k * ohw, |ni, yi, par| {
            let res = residual.map(|t| &t.data()[ni * k * ohw..(ni + 1) * k * ohw]);
            plan.run(
                &x.data()[ni * c * h * wd..(ni + 1) * c * h * wd],
                res,
                yi,
                par,
            );
        });
        return y;
    }
    let packed = prepared.filter(|t| p.groups == 1 && (bf16 || t.shape().len() == 2));
    // C = W·B. Through the packed filters (when there are some) the product adds the bias and
    // (without a residual) the ReLU as it writes each tile; else the bias goes in first and the
    // product accumulates onto it. A residual is added per image after the product (added in
    // the tiles too, it measured no faster: that read is memory-bound either way).
    let tile_epi = Epilogue {
        bias: b.map(Tensor::data),
        relu: relu && residual.is_none(),
    };
    let product = |cols: usize, wg: Option<Mat>, b_mat: Mat, out: &mut [f32], par| match packed {
        Some(pk) => sgemm_prepacked(kg, cols, kk, pk, b_mat, out, ohw, false, tile_epi, par),
        None => {
            let wg = wg.expect("plain filters where none were packed");
            sgemm(kg, cols, kk, wg, b_mat, out, ohw, b.is_some(), par)
        }
    };
    per_image(n, y.data_mut(), k * ohw, |ni, yi, par| {
        if let (Some(b), None) = (b, packed) {
            for (plane, &bv) in yi.chunks_mut(ohw).zip(b.data()) {
                plane.fill(bv);
            }
        }
        let img = &x.data()[ni * c * h * wd..(ni + 1) * c * h * wd];
        for gi in 0..p.groups {
            let xin = &img[gi * cg * h * wd..(gi + 1) * cg * h * wd];
            let wg = (packed.is_none())
                .then(|| Mat::row_major(&plain().data()[gi * kg * kk..(gi + 1) * kg * kk], kk));
            let yg = &mut yi[gi * kg * ohw..(gi + 1) * kg * ohw];
            if g.direct() {
                product(ohw, wg, Mat::row_major(xin, ohw), yg, par);
                continue;
            }
            for oy0 in (0..oh).step_by(rows) {
                let oy1 = (oy0 + rows).min(oh);
                let cols = (oy1 - oy0) * ow;
                with_col(kk * cols, |col| {
                    g.im2col(xin, (oy0, oy1), col);
                    let out = &mut yg[oy0 * ow..];
                    product(cols, wg, Mat::row_major(col, cols), out, par);
                });
            }
        }
        if packed.is_none() || residual.is_some() {
            epilogue(ni, yi);
        }
    });
    y
}

/// `packed`: Wᵀ as [`conv2d_prepare_bwd`] packed it (one group only), else packed per call.
pub fn conv2d_bwd_data(
    dy: &Tensor,
    w: &Tensor,
    packed: Option<&Tensor>,
    in_hw: (usize, usize),
    p: &Conv2dParams,
) -> Tensor {
    let (n, k, oh, ow) = dy.dims4();
    let (_, cg, r, s) = w.dims4();
    let (h, wd) = in_hw;
    let c = cg * p.groups;
    let g = Geom {
        c: cg,
        h,
        w: wd,
        r,
        s,
        oh,
        ow,
        p: *p,
    };
    let (kg, kk, ohw) = (k / p.groups, cg * r * s, oh * ow);
    let rows = g.rows_per_chunk();
    let packed = packed.filter(|_| p.groups == 1);
    let product =
        |cols: usize, wg: Mat, b_mat: Mat, out: &mut [f32], out_rs: usize, par| match packed {
            Some(pk) => sgemm_prepacked(
                kk,
                cols,
                kg,
                pk,
                b_mat,
                out,
                out_rs,
                false,
                Epilogue::default(),
                par,
            ),
            None => sgemm(kk, cols, kg, wg, b_mat, out, out_rs, false, par),
        };
    let mut dx = Tensor::zeros([n, c, h, wd]);
    per_image(n, dx.data_mut(), c * h * wd, |ni, dxi, par| {
        let dyi = &dy.data()[ni * k * ohw..(ni + 1) * k * ohw];
        for gi in 0..p.groups {
            let wg = Mat::transposed(&w.data()[gi * kg * kk..(gi + 1) * kg * kk], kk);
            let dyg = &dyi[gi * kg * ohw..(gi + 1) * kg * ohw];
            let dxg = &mut dxi[gi * cg * h * wd..(gi + 1) * cg * h * wd];
            if g.direct() {
                product(ohw, wg, Mat::row_major(dyg, ohw), dxg, ohw, par);
                continue;
            }
            for oy0 in (0..oh).step_by(rows) {
                let oy1 = (oy0 + rows).min(oh);
                let cols = (oy1 - oy0) * ow;
                with_col(kk * cols, |col| {
                    let dy_rows = Mat {
                        data: &dyg[oy0 * ow..],
                        rs: ohw,
                        cs: 1,
                    };
                    product(cols, wg, dy_rows, col, cols, par);
                    g.col2im(col, (oy0, oy1), dxg);
                });
            }
        }
    });
    dx
}

pub fn relu_fwd(mut x: Tensor) -> Tensor {
    x.data_mut()
        .par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = backend::relu(*v)));
    x
}

pub fn relu_bwd(y: &Tensor, mut dy: Tensor, guided: bool) -> Tensor {
    dy.data_mut()
        .par_chunks_mut(1 << 14)
        .zip(y.data().par_chunks(1 << 14))
        .for_each(|(g, y)| {
            for (g, &y) in g.iter_mut().zip(y) {
                if y <= 0.0 || (guided && *g < 0.0) {
                    *g = 0.0;
                }
            }
        });
    dy
}

/// Clamped window [lo, hi) of pool output index o along one axis (dilation 1).
fn pool_window(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = start.max(0) as usize;
    let hi = ((start + k as isize).max(0) as usize).min(len);
    (lo, hi)
}

/// First maximum of a window in row-major order, as a plane index.
fn argmax_window(
    plane: &[f32],
    w: usize,
    (y0, y1): (usize, usize),
    (x0, x1): (usize, usize),
) -> usize {
    let mut arg = y0 * w + x0;
    let mut best = plane[arg];
    for iy in y0..y1 {
        for (ix, &v) in plane[iy * w + x0..iy * w + x1].iter().enumerate() {
            if v > best || (v.is_nan() && !best.is_nan()) {
                best = v;
                arg = iy * w + x0 + ix;
            }
        }
    }
    arg
}

pub fn max_pool2d_fwd(x: &Tensor, p: &Pool2dParams) -> Option<Tensor> {
    if p.dilation != (1, 1) {
        return None;
    }
    let (n, c, h, w) = x.dims4();
    let (oh, ow) = p.out_hw((h, w))?;
    let mut y = Tensor::zeros([n, c, oh, ow]);
    // Only the value is needed here, not where it was: a branch per element (as in
    // `argmax_window`) mispredicts on real activations and took ~10x longer. The window's rows
    // are first reduced column by column (contiguous, vectorised), then across each window.
    let wx: Vec<_> = (0..ow)
        .map(|ox| pool_window(ox, p.kernel.1, p.stride.1, p.padding.1, w))
        .collect();
    y.data_mut()
        .par_chunks_mut(oh * ow)
        .zip(x.data().par_chunks(h * w))
        .for_each_init(
            || vec![0f32; w],
            |cols, (out, src)| {
                for (oy, out) in out.chunks_exact_mut(ow).enumerate() {
                    let (y0, y1) = pool_window(oy, p.kernel.0, p.stride.0, p.padding.0, h);
                    cols.copy_from_slice(&src[y0 * w..y0 * w + w]);
                    for row in src[(y0 + 1) * w..y1 * w].chunks_exact(w) {
                        cols.iter_mut()
                            .zip(row)
                            .for_each(|(m, &v)| *m = nan_max(*m, v));
                    }
                    for (o, &(x0, x1)) in out.iter_mut().zip(&wx) {
                        *o = cols[x0 + 1..x1]
                            .iter()
                            .fold(cols[x0], |m, &v| nan_max(m, v));
                    }
                }
            },
        );
    Some(y)
}

/// max(a, b) where a NaN wins (as torch's max pooling), and `a` on a tie; no branch.
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}

pub fn max_pool2d_bwd(x: &Tensor, dy: &Tensor, p: &Pool2dParams) -> Option<Tensor> {
    if p.dilation != (1, 1) {
        return None;
    }
    let (_, _, h, w) = x.dims4();
    let (_, _, oh, ow) = dy.dims4();
    let mut dx = Tensor::zeros(x.shape());
    dx.data_mut()
        .par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, out)| {
            let src = &x.data()[plane * h * w..(plane + 1) * h * w];
            let g = &dy.data()[plane * oh * ow..(plane + 1) * oh * ow];
            for oy in 0..oh {
                let wy = pool_window(oy, p.kernel.0, p.stride.0, p.padding.0, h);
                for ox in 0..ow {
                    let wx = pool_window(ox, p.kernel.1, p.stride.1, p.padding.1, w);
                    out[argmax_window(src, w, wy, wx)] += g[oy * ow + ox];
                }
            }
        });
    Some(dx)
}

pub fn adaptive_avg_pool2d_fwd(x: &Tensor, (oh, ow): (usize, usize)) -> Tensor {
    let (n, c, h, w) = x.dims4();
    let mut y = Tensor::zeros([n, c, oh, ow]);
    y.data_mut()
        .par_chunks_mut(oh * ow)
        .zip(x.data().par_chunks(h * w))
        .for_each(|(out, src)| {
            for oy in 0..oh {
                let (y0, y1) = adaptive_bin(oy, h, oh);
                for ox in 0..ow {
                    let (x0, x1) = adaptive_bin(ox, w, ow);
                    let sum: f32 = (y0..y1)
                        .map(|iy| src[iy * w + x0..iy * w + x1].iter().sum::<f32>())
                        .sum();
                    out[oy * ow + ox] = sum / ((y1 - y0) * (x1 - x0)) as f32;
                }
            }
        });
    y
}

pub fn adaptive_avg_pool2d_bwd(dy: &Tensor, (h, w): (usize, usize)) -> Tensor {
    let (n, c, oh, ow) = dy.dims4();
    let mut dx = Tensor::zeros([n, c, h, w]);
    dx.data_mut()
        .par_chunks_mut(h * w)
        .zip(dy.data().par_chunks(oh * ow))
        .for_each(|(out, g)| {
            for oy in 0..oh {
                let (y0, y1) = adaptive_bin(oy, h, oh);
                for ox in 0..ow {
                    let (x0, x1) = adaptive_bin(ox, w, ow);
                    let v = g[oy * ow + ox] / ((y1 - y0) * (x1 - x0)) as f32;
                    for iy in y0..y1 {
                        out[iy * w + x0..iy * w + x1]
                            .iter_mut()
                            .for_each(|d| *d += v);
                    }
                }
            }
        });
    dx
}

fn par_all() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}

/// Whether the AVX-512 kernels for a few images' linear layers run ([`super::linear_avx512`]).
#[cfg(target_arch = "x86_64")]
fn linear_skinny(n: usize, w: &Tensor) -> bool {
    (1..=super::linear_avx512::MAX_BATCH).contains(&n)
        && w.shape().iter().all(|&d| d > 0)
        && super::avx512::available()
}

pub fn linear_fwd(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let (n, fin) = (x.shape()[0], x.shape()[1]);
    let fout = w.shape()[0];
    #[cfg(target_arch = "x86_64")]
    if linear_skinny(n, w) {
        let y = super::linear_avx512::linear_fwd(x.data(), w.data(), b.map(Tensor::data), n, fin);
        return Tensor::new([n, fout], y);
    }
    let mut y = Tensor::zeros([n, fout]);
    let x_mat = Mat::row_major(x.data(), fin);
    sgemm(
        n,
        fout,
        fin,
        x_mat,
        Mat::transposed(w.data(), fin),
        y.data_mut(),
        fout,
        false,
        par_all(),
    );
    if let Some(b) = b {
        for row in y.data_mut().chunks_mut(fout) {
            row.iter_mut().zip(b.data()).for_each(|(v, b)| *v += b);
        }
    }
    y
}

pub fn linear_bwd_data(dy: &Tensor, w: &Tensor) -> Tensor {
    let (n, fout) = (dy.shape()[0], dy.shape()[1]);
    let fin = w.shape()[1];
    #[cfg(target_arch = "x86_64")]
    if linear_skinny(n, w) {
        let dx = super::linear_avx512::linear_bwd_data(dy.data(), w.data(), n, fout);
        return Tensor::new([n, fin], dx);
    }
    let mut dx = Tensor::zeros([n, fin]);
    let dy_mat = Mat::row_major(dy.data(), fout);
    sgemm(
        n,
        fin,
        fout,
        dy_mat,
        Mat::row_major(w.data(), fin),
        dx.data_mut(),
        fin,
        false,
        par_all(),
    );
    dx
}

pub fn add(mut a: Tensor, b: &Tensor) -> Tensor {
    a.data_mut()
        .par_chunks_mut(1 << 14)
        .zip(b.data().par_chunks(1 << 14))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    a
}

pub fn channel_affine(mut x: Tensor, scale: &[f32], shift: &[f32]) -> Tensor {
    let (_, c, h, w) = x.dims4();
    x.data_mut()
        .par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(i, plane)| {
            let (s, t) = (scale[i % c], shift[i % c]);
            plane.iter_mut().for_each(|v| *v = *v * s + t);
        });
    x
}

pub fn grad_pool(g: &Tensor) -> Tensor {
    let (n, k, h, w) = g.dims4();
    let data = g
        .data()
        .par_chunks(h * w)
        .map(|p| p.iter().sum::<f32>() / (h * w) as f32)
        .collect();
    Tensor::new([n, k], data)
}

pub fn weighted_sum_relu(a: &Tensor, alpha: &Tensor) -> Tensor {
    let (n, k, h, w) = a.dims4();
    let mut m = Tensor::zeros([n, h, w]);
    m.data_mut()
        .par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(ni, out)| {
            let al = Mat::row_major(&alpha.data()[ni * k..(ni + 1) * k], k);
            let act = Mat::row_major(&a.data()[ni * k * h * w..(ni + 1) * k * h * w], h * w);
            sgemm(1, h * w, k, al, act, out, h * w, false, Parallelism::None);
            out.iter_mut().for_each(|v| *v = backend::relu(*v));
        });
    m
}
