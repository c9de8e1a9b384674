//! Winograd F(m×m, 3×3) for 3×3 stride-1 convolutions (Lavin & Gray, arXiv 1509.09308),
//! m = 2 or 4: each (m+2)² input tile gives an m×m output tile with (m+2)² multiplies per
//! (k, c) pair instead of 9m², 2.25× fewer multiply-adds for F(2×2) and 4× for F(4×4).
//!
//! Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A, and the ⊙ summed over input channels is (m+2)² GEMMs:
//! M[ξ] (K×T) = U[ξ] (K×C) · V[ξ] (C×T) for the T tiles of a chunk of tile rows.
//! F(2×2)'s transforms only add and halve, so it rounds as the f32 GEMM does; F(4×4)'s scale
//! by up to 8, a few times F(2×2)'s rounding (tested against the naive convolution at 1e-4
//! of the output's scale, as the rest). F(4×4) interpolates at 0, ±1, 1/2, −2 and ∞ rather
//! than the usual 0, ±1, ±2, ∞: a point and its reciprocal keep the transforms' entries
//! closer to 1, and on 128-channel sums the worst output error dropped 3.3× and the RMS 1.5×
//! (the choice studied by Barabasz, Anderson, Soodhalter and Gregg, "Error analysis and
//! improving the accuracy of Winograd convolution for deep neural networks", 2020). F(4×4) has 16 output pixels per tile, so
//! over small maps (ResNet's 7×7 and 14×14, where a tile is mostly padding and an image
//! gives the GEMMs a handful of columns) F(2×2) runs: see [`Tile::for_map`]. The filters
//! are transformed at load for the tile of the layer's map at the model's own input size.

use super::fast::add_relu;
use super::gemm::{pack_a, sgemm, sgemm_packed, Epilogue, Mat, Parallelism};
use crate::backend::Conv2dParams;
use crate::Tensor;

/// Whether the Winograd path applies and pays: 3×3, stride 1, no dilation, one group, and
/// enough input channels for the GEMMs to dominate the transforms.
pub fn applies(w: &Tensor, p: &Conv2dParams) -> bool {
    applies_to(w.dims4(), p)
}

/// [`applies`] by the filters' dims (K, C, R, S).
/// `GRADCAM_WINOGRAD=0` turns it off (the direct convolution then runs), for comparisons.
pub fn applies_to((_, c, r, s): (usize, usize, usize, usize), p: &Conv2dParams) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on =
        *ON.get_or_init(|| std::env::var("GRADCAM_WINOGRAD").map_or(true, |v| v.trim() != "0"));
    on && r == 3 && s == 3 && p.stride == (1, 1) && p.dilation == (1, 1) && p.groups == 1 && c >= 16
}

/// The Winograd variant: F(2×2, 3×3) or F(4×4, 3×3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    F2,
    F4,
}

impl Tile {
    /// Output pixels per tile side.
    pub fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    /// Input pixels per tile side.
    fn alpha(self) -> usize {
        self.m() + 2
    }
    /// Transform points ξ, one GEMM each.
    pub fn points(self) -> usize {
        self.alpha() * self.alpha()
    }
    /// F(4×4) where an image's map gives its GEMMs at least 48 tiles (one AVX-512 panel of
    /// columns: VGG16's maps from 28×28 up, ResNet's 56×56 and 28×28), else F(2×2).
    /// `GRADCAM_WINOGRAD_F4=0` keeps F(2×2) everywhere, for comparisons.
    pub fn for_map(oh: usize, ow: usize) -> Tile {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON
            .get_or_init(|| std::env::var("GRADCAM_WINOGRAD_F4").map_or(true, |v| v.trim() != "0"));
        match on && oh.div_ceil(4) * ow.div_ceil(4) >= 48 {
            true => Tile::F4,
            false => Tile::F2,
        }
    }
    /// G, (m+2)×3, row-major.
    fn g(self) -> &'static [[f32; 3]] {
        match self {
            Tile::F2 => &[
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ],
            // Rows: the points 0, 1, −1, 1/2, −2, ∞; row j is (1, p, p²) / Π_{q≠p} (p − q).
            Tile::F4 => &[
                [1.0, 0.0, 0.0],
                [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
                [-1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0],
                [-16.0 / 15.0, -8.0 / 15.0, -4.0 / 15.0],
                [1.0 / 15.0, -2.0 / 15.0, 4.0 / 15.0],
                [0.0, 0.0, 1.0],
            ],
        }
    }
}

/// U[ξ][k][c] = (G g Gᵀ)[ξ] for every filter, as a [(m+2)², K, C] tensor; or, where the CPU
/// runs the AVX-512 GEMM, each U[ξ] packed for it ([`pack_a`]), as a [(m+2)², K, L] tensor,
/// L > C ([`super::gemm::packed_shape`]), so that every image's products skip the packing,
/// which over a 7×7 map's 16 tiles would cost more than the products. Made once at load, for the tile the layer's map at the model's size
/// calls for; transforming F(4×4)'s 36 per call took as long as VGG16's 28×28 convs.
pub fn transform_for(w: &Tensor, tile: Tile) -> Tensor {
    use rayon::prelude::*;
    let u = transform_plain(w, tile);
    let (np, k, c) = (tile.points(), u.shape()[1], u.shape()[2]);
    let per = k * c;
    let packed: Option<Vec<Tensor>> = (0..np)
        .into_par_iter()
        .map(|xi| pack_a(Mat::row_major(&u.data()[xi * per..(xi + 1) * per], c), k, c))
        .collect();
    match packed {
        Some(p) => {
            let [k, len] = *p[0].shape() else {
                unreachable!("pack_a gives a matrix")
            };
            let data = p.iter().flat_map(|t| t.data()).copied().collect();
            Tensor::new([np, k, len], data)
        }
        None => u,
    }
}

/// U as a plain [(m+2)², K, C] tensor.
fn transform_plain(w: &Tensor, tile: Tile) -> Tensor {
    use rayon::prelude::*;
    let (k, c, _, _) = w.dims4();
    let np = tile.points();
    // Transformed per filter (k-major, parallel) into [ξ][c] blocks, then laid out ξ-major
    // for the GEMMs a row of c at a time (scattering each value to its ξ plane, k·c apart,
    // was a cache miss per value: most of VGG16's load time).
    let blocks: Vec<Vec<f32>> = (0..k)
        .into_par_iter()
        .map(|ki| {
            let mut b = vec![0f32; np * c];
            for ci in 0..c {
                let g = &w.data()[(ki * c + ci) * 9..(ki * c + ci + 1) * 9];
                let f = transform_filter(g, tile);
                for (xi, &v) in f[..np].iter().enumerate() {
                    b[xi * c + ci] = v;
                }
            }
            b
        })
        .collect();
    let mut u = vec![0f32; np * k * c];
    u.par_chunks_mut((k * c).max(1))
        .enumerate()
        .for_each(|(xi, plane)| {
            for (row, b) in plane.chunks_exact_mut(c.max(1)).zip(&blocks) {
                row.copy_from_slice(&b[xi * c..(xi + 1) * c]);
            }
        });
    Tensor::new([np, k, c], u)
}

/// G g Gᵀ for one 3×3 filter, row-major (m+2)×(m+2) in the first (m+2)² entries.
fn transform_filter(g: &[f32], tile: Tile) -> [f32; 36] {
    let (gm, a) = (tile.g(), tile.alpha());
    let mut u = [0f32; 36];
    // G g: a×3; then (G g) Gᵀ: a×a.
    let mut gg = [[0f32; 3]; 6];
    for (i, row) in gm.iter().enumerate() {
        for j in 0..3 {
            gg[i][j] = (0..3).map(|t| row[t] * g[t * 3 + j]).sum();
        }
    }
    for i in 0..a {
        for (j, col) in gm.iter().enumerate() {
            u[i * a + j] = (0..3).map(|t| gg[i][t] * col[t]).sum();
        }
    }
    u
}

pub struct Plan<'a> {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub pad: (usize, usize),
    pub oh: usize,
    pub ow: usize,
    /// [`transform_for`]'s tensor: U[ξ] after U[ξ], plain or packed.
    pub u: &'a Tensor,
    pub bias: Option<&'a [f32]>,
    /// max(·, 0) on the way out (a conv whose output feeds only a ReLU).
    pub relu: bool,
    /// The variant `u` was transformed for.
    pub tile: Tile,
}

/// Bytes of V and M worked on at once, to keep them in cache between the transforms and
/// the GEMMs.
const CHUNK_BYTES: usize = 4 << 20;

thread_local! {
    static BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Plan<'_> {
    /// One image: `img` [C, H, W] → `out` [K, OH, OW], plus `residual` (shaped as `out`) when
    /// given, then the ReLU when the plan has one: the epilogue rides on the output transform,
    /// while each row is in L1 (a pass over the output after it measured ~5 % of VGG16).
    pub fn run(&self, img: &[f32], residual: Option<&[f32]>, out: &mut [f32], par: Parallelism) {
        let (m, np) = (self.tile.m(), self.tile.points());
        let (th, tw) = (self.oh.div_ceil(m), self.ow.div_ceil(m));
        let per_tile = np * (self.c + self.k) * 4;
        let rows = (CHUNK_BYTES / per_tile / tw)
            .clamp(1, th)
            .max(64usize.div_ceil(tw).min(th));
        assert_eq!(
            self.u.shape()[..2],
            [np, self.k],
            "U transformed for another tile or filter count"
        );
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = np * (self.c + self.k) * rows * tw;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            for ty0 in (0..th).step_by(rows) {
                let ty1 = (ty0 + rows).min(th);
                let t = (ty1 - ty0) * tw;
                let (v, mm) = buf[..np * (self.c + self.k) * t].split_at_mut(np * self.c * t);
                match self.tile {
                    Tile::F2 => self.input_transform(img, ty0, ty1, v),
                    Tile::F4 => self.input_transform4(img, ty0, ty1, v),
                }
                // A packed U's rows are longer than C (`gemm::packed_shape`).
                let (packed, per) = (self.u.shape()[2] != self.c, self.u.len() / np);
                for xi in 0..np {
                    let u = &self.u.data()[xi * per..(xi + 1) * per];
                    let vx = Mat::row_major(&v[xi * self.c * t..(xi + 1) * self.c * t], t);
                    let mx = &mut mm[xi * self.k * t..(xi + 1) * self.k * t];
                    match packed {
                        true => sgemm_packed(
                            self.k,
                            t,
                            self.c,
                            u,
                            vx,
                            mx,
                            t,
                            false,
                            Epilogue::default(),
                            par,
                        ),
                        false => {
                            let ux = Mat::row_major(u, self.c);
                            sgemm(self.k, t, self.c, ux, vx, mx, t, false, par)
                        }
                    }
                }
                match self.tile {
                    Tile::F2 => self.output_transform(mm, ty0, ty1, residual, out),
                    Tile::F4 => self.output_transform4(mm, ty0, ty1, residual, out),
                }
            }
        });
    }

    /// Row `yp` of the plane zero-padded by the plan's padding (row[x'] = plane[yp - pad][x' -
    /// pad] where that is inside the image, else 0), as the input tiles read it.
    fn padded_row(&self, plane: &[f32], yp: usize, row: &mut [f32]) {
        row.fill(0.0);
        let y = yp as isize - self.pad.0 as isize;
        if (0..self.h as isize).contains(&y) {
            let src = &plane[y as usize * self.w..(y as usize + 1) * self.w];
            let lo = self.pad.1;
            let n = self.w.min(row.len().saturating_sub(lo));
            row[lo..lo + n].copy_from_slice(&src[..n]);
        }
    }

    /// V[ξ][c][tile] = (Bᵀ d B)[ξ] for the 4×4 input tile of each output tile in rows
    /// ty0..ty1. Separable: the horizontal half (· B) runs on whole zero-padded input rows,
    /// the vertical half (Bᵀ ·) combines four of those; both loop over tiles contiguously.
    fn input_transform(&self, img: &[f32], ty0: usize, ty1: usize, v: &mut [f32]) {
        let tw = self.ow.div_ceil(2);
        let t = (ty1 - ty0) * tw;
        // hr[i][j][tx]: input row i of the tile row, horizontal combination j.
        let mut row = vec![0f32; 2 * tw + 2];
        let mut hr = vec![0f32; 4 * 4 * tw];
        for ci in 0..self.c {
            let plane = &img[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            for ty in ty0..ty1 {
                for i in 0..4 {
                    self.padded_row(plane, 2 * ty + i, &mut row);
                    let h = &mut hr[i * 4 * tw..(i + 1) * 4 * tw];
                    let (h0, rest) = h.split_at_mut(tw);
                    let (h1, rest) = rest.split_at_mut(tw);
                    let (h2, h3) = rest.split_at_mut(tw);
                    for tx in 0..tw {
                        let q = &row[2 * tx..2 * tx + 4];
                        h0[tx] = q[0] - q[2];
                        h1[tx] = q[1] + q[2];
                        h2[tx] = q[2] - q[1];
                        h3[tx] = q[1] - q[3];
                    }
                }
                let base = (ty - ty0) * tw;
                for j in 0..4 {
                    let r = |i: usize| &hr[(i * 4 + j) * tw..(i * 4 + j + 1) * tw];
                    let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                    let out = |xi: usize| (xi * self.c + ci) * t + base;
                    for tx in 0..tw {
                        v[out(j) + tx] = r0[tx] - r2[tx];
                        v[out(4 + j) + tx] = r1[tx] + r2[tx];
                        v[out(8 + j) + tx] = r2[tx] - r1[tx];
                        v[out(12 + j) + tx] = r1[tx] - r3[tx];
                    }
                }
            }
        }
    }

    /// Y = Aᵀ M A for each tile, written to the output rows it covers, plus the bias (and
    /// residual), then the ReLU if any.
    fn output_transform(
        &self,
        m: &[f32],
        ty0: usize,
        ty1: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let tw = self.ow.div_ceil(2);
        let t = (ty1 - ty0) * tw;
        let (oh, ow) = (self.oh, self.ow);
        // am[i][j][tx]: row i of Aᵀ M (i < 2), column j.
        let mut am = vec![0f32; 2 * 4 * tw];
        let mut line = vec![0f32; 2 * tw];
        for ki in 0..self.k {
            let b = self.bias.map_or(0.0, |b| b[ki]);
            let plane = &mut out[ki * oh * ow..(ki + 1) * oh * ow];
            for ty in ty0..ty1 {
                let base = (ty - ty0) * tw;
                let mrow = |xi: usize| {
                    &m[(xi * self.k + ki) * t + base..(xi * self.k + ki) * t + base + tw]
                };
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (mrow(j), mrow(4 + j), mrow(8 + j), mrow(12 + j));
                    let (a0, a1) = am.split_at_mut(4 * tw);
                    let (a0, a1) = (&mut a0[j * tw..(j + 1) * tw], &mut a1[j * tw..(j + 1) * tw]);
                    for tx in 0..tw {
                        a0[tx] = m0[tx] + m1[tx] + m2[tx];
                        a1[tx] = m1[tx] - m2[tx] - m3[tx];
                    }
                }
                for i in 0..2 {
                    let y = 2 * ty + i;
                    if y >= oh {
                        break;
                    }
                    let r = |j: usize| &am[(i * 4 + j) * tw..(i * 4 + j + 1) * tw];
                    let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                    for tx in 0..tw {
                        line[2 * tx] = r0[tx] + r1[tx] + r2[tx] + b;
                        line[2 * tx + 1] = r1[tx] - r2[tx] - r3[tx] + b;
                    }
                    self.finish_row(ki, y, &mut line[..ow], residual, plane);
                }
            }
        }
    }

    /// Output row y of channel ki, computed (bias included) in `line`: the residual added,
    /// the ReLU applied, then written to the channel's plane. Both tiles' last step.
    fn finish_row(
        &self,
        ki: usize,
        y: usize,
        line: &mut [f32],
        residual: Option<&[f32]>,
        plane: &mut [f32],
    ) {
        let ow = self.ow;
        let at = (ki * self.oh + y) * ow;
        add_relu(line, residual.map(|res| &res[at..at + ow]), self.relu);
        plane[y * ow..(y + 1) * ow].copy_from_slice(line);
    }

    /// [`Self::input_transform`] for F(4×4): 6×6 input tiles, 4 apart.
    fn input_transform4(&self, img: &[f32], ty0: usize, ty1: usize, v: &mut [f32]) {
        let tw = self.ow.div_ceil(4);
        let t = (ty1 - ty0) * tw;
        // hr[i][j][tx]: input row i of the tile row, horizontal combination j.
        let mut row = vec![0f32; 4 * tw + 2];
        let mut hr = vec![0f32; 6 * 6 * tw];
        for ci in 0..self.c {
            let plane = &img[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            for ty in ty0..ty1 {
                for i in 0..6 {
                    self.padded_row(plane, 4 * ty + i, &mut row);
                    let h = &mut hr[i * 6 * tw..(i + 1) * 6 * tw];
                    let (h0, rest) = h.split_at_mut(tw);
                    let (h1, rest) = rest.split_at_mut(tw);
                    let (h2, rest) = rest.split_at_mut(tw);
                    let (h3, rest) = rest.split_at_mut(tw);
                    let (h4, h5) = rest.split_at_mut(tw);
                    // Bᵀ's rows (points 0, 1, −1, 1/2, −2, ∞).
                    for tx in 0..tw {
                        let d = &row[4 * tx..4 * tx + 6];
                        h0[tx] = d[0] - 2.0 * d[2] + d[4] + 1.5 * (d[3] - d[1]);
                        h1[tx] = 0.5 * d[2] + 2.5 * d[3] + d[4] - d[1];
                        h2[tx] = d[1] - 2.5 * d[2] + 0.5 * d[3] + d[4];
                        h3[tx] = 2.0 * (d[3] - d[1]) - d[2] + d[4];
                        h4[tx] = 0.5 * (d[1] - d[3]) - d[2] + d[4];
                        h5[tx] = d[1] - 1.5 * d[2] - 2.0 * d[3] + 1.5 * d[4] + d[5];
                    }
                }
                let base = (ty - ty0) * tw;
                for j in 0..6 {
                    let r = |i: usize| &hr[(i * 6 + j) * tw..(i * 6 + j + 1) * tw];
                    let (r0, r1, r2, r3, r4, r5) = (r(0), r(1), r(2), r(3), r(4), r(5));
                    let out = |xi: usize| (xi * self.c + ci) * t + base;
                    for tx in 0..tw {
                        let (d0, d1, d2, d3, d4) = (r0[tx], r1[tx], r2[tx], r3[tx], r4[tx]);
                        v[out(j) + tx] = d0 - 2.0 * d2 + d4 + 1.5 * (d3 - d1);
                        v[out(6 + j) + tx] = 0.5 * d2 + 2.5 * d3 + d4 - d1;
                        v[out(12 + j) + tx] = d1 - 2.5 * d2 + 0.5 * d3 + d4;
                        v[out(18 + j) + tx] = 2.0 * (d3 - d1) - d2 + d4;
                        v[out(24 + j) + tx] = 0.5 * (d1 - d3) - d2 + d4;
                        v[out(30 + j) + tx] = d1 - 1.5 * d2 - 2.0 * d3 + 1.5 * d4 + r5[tx];
                    }
                }
            }
        }
    }

    /// [`Self::output_transform`] for F(4×4): Y = Aᵀ M A, 4×4 outputs per tile.
    fn output_transform4(
        &self,
        m: &[f32],
        ty0: usize,
        ty1: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let tw = self.ow.div_ceil(4);
        let t = (ty1 - ty0) * tw;
        let (oh, ow) = (self.oh, self.ow);
        // am[i][j][tx]: row i of Aᵀ M (i < 4), column j.
        let mut am = vec![0f32; 4 * 6 * tw];
        let mut line = vec![0f32; 4 * tw];
        for ki in 0..self.k {
            let b = self.bias.map_or(0.0, |b| b[ki]);
            let plane = &mut out[ki * oh * ow..(ki + 1) * oh * ow];
            for ty in ty0..ty1 {
                let base = (ty - ty0) * tw;
                let mrow = |xi: usize| {
                    &m[(xi * self.k + ki) * t + base..(xi * self.k + ki) * t + base + tw]
                };
                for j in 0..6 {
                    let (m0, m1, m2) = (mrow(j), mrow(6 + j), mrow(12 + j));
                    let (m3, m4, m5) = (mrow(18 + j), mrow(24 + j), mrow(30 + j));
                    let col = |i: usize| (i * 6 + j) * tw;
                    // Aᵀ's rows: (1, p, p², p³) at the points 0, 1, −1, 1/2, −2, and ∞.
                    for tx in 0..tw {
                        let (p, q) = (m1[tx] + m2[tx], m1[tx] - m2[tx]);
                        let (h, t) = (m3[tx], m4[tx]);
                        am[col(0) + tx] = m0[tx] + p + h + t;
                        am[col(1) + tx] = q + 0.5 * h - 2.0 * t;
                        am[col(2) + tx] = p + 0.25 * h + 4.0 * t;
                        am[col(3) + tx] = q + 0.125 * h - 8.0 * t + m5[tx];
                    }
                }
                for i in 0..4 {
                    let y = 4 * ty + i;
                    if y >= oh {
                        break;
                    }
                    let r = |j: usize| &am[(i * 6 + j) * tw..(i * 6 + j + 1) * tw];
                    let (r0, r1, r2, r3, r4, r5) = (r(0), r(1), r(2), r(3), r(4), r(5));
                    for tx in 0..tw {
                        let (p, q) = (r1[tx] + r2[tx], r1[tx] - r2[tx]);
                        let (h, t) = (r3[tx], r4[tx]);
                        line[4 * tx] = r0[tx] + p + h + t + b;
                        line[4 * tx + 1] = q + 0.5 * h - 2.0 * t + b;
                        line[4 * tx + 2] = p + 0.25 * h + 4.0 * t + b;
                        line[4 * tx + 3] = q + 0.125 * h - 8.0 * t + r5[tx] + b;
                    }
                    self.finish_row(ki, y, &mut line[..ow], residual, plane);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::naive;
    use super::*;

    /// A 3×3 conv's plan with padding 1 (output the input's size).
    fn same_size_plan<'a>(
        (c, h, w, k): (usize, usize, usize, usize),
        u: &'a Tensor,
        bias: Option<&'a [f32]>,
        relu: bool,
        tile: Tile,
    ) -> Plan<'a> {
        Plan {
            c,
            h,
            w,
            k,
            pad: (1, 1),
            oh: h,
            ow: w,
            u,
            bias,
            relu,
            tile,
        }
    }

    /// A map large enough for several chunks of tile rows (the tiles of 128 + 128 channels
    /// do not fit in one chunk's bytes), both tiles, with bias and ReLU.
    #[test]
    fn chunked_tile_rows_give_the_convolution() {
        let mut rng = crate::model::synth::Rng::new(8);
        let (c, h, wd, k) = (128, 48, 47, 128);
        let x = rng.tensor(&[1, c, h, wd], -1.0, 1.0);
        let w = rng.tensor(&[k, c, 3, 3], -0.1, 0.1);
        let b = rng.tensor(&[k], -0.5, 0.5);
        let p = Conv2dParams::new(1, 1);
        let want = naive::relu_fwd(&naive::conv2d_fwd(&x, &w, Some(&b), &p));
        let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        for tile in [Tile::F2, Tile::F4] {
            let (th, tw) = (h.div_ceil(tile.m()), wd.div_ceil(tile.m()));
            let per_tile = tile.points() * (c + k) * 4;
            assert!(CHUNK_BYTES / per_tile / tw < th, "{tile:?}: one chunk only");
            let u = transform_for(&w, tile);
            let plan = same_size_plan((c, h, wd, k), &u, Some(b.data()), true, tile);
            let mut out = vec![f32::NAN; k * h * wd];
            plan.run(x.data(), None, &mut out, Parallelism::None);
            for (i, (a, b)) in out.iter().zip(want.data()).enumerate() {
                assert!((a - b).abs() <= 1e-4 * scale, "{tile:?} at {i}: {a} vs {b}");
            }
        }
    }

    /// F(4×4)'s rounding against the convolution in f64, over 128 channels: the worst output
    /// within 2.5e-6 of the output's scale, the error's RMS within 1.2e-6 of the output's
    /// (measured 2026-12-01: 1.2e-6 and 7.3e-7 at the points 0, ±1, 1/2, −2; 4.1e-6 and
    /// 1.1e-6 at the usual 0, ±1, ±2, whose worst fails; F(2×2) 3.6e-7 and 2.5e-7, within
    /// 1e-6 and 5e-7). The RMS bound leaves room for other GEMM summation orders.
    #[test]
    fn f4_rounds_within_its_bound() {
        let mut rng = crate::model::synth::Rng::new(11);
        let (c, h, wd, k) = (128, 24, 24, 16);
        let x = rng.tensor(&[1, c, h, wd], 0.0, 1.0);
        let w = rng.tensor(&[k, c, 3, 3], -0.15, 0.15);
        let mut want = vec![0f64; k * h * wd];
        for ki in 0..k {
            for ci in 0..c {
                for (t, &wv) in w.data()[(ki * c + ci) * 9..][..9].iter().enumerate() {
                    let (dy, dx) = (t / 3, t % 3);
                    for y in 0..h {
                        let iy = y + dy;
                        if !(1..=h).contains(&iy) {
                            continue;
                        }
                        for xo in 0..wd {
                            let ix = xo + dx;
                            if (1..=wd).contains(&ix) {
                                let v = x.data()[(ci * h + iy - 1) * wd + ix - 1];
                                want[(ki * h + y) * wd + xo] += wv as f64 * v as f64;
                            }
                        }
                    }
                }
            }
        }
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
        for (tile, worst_bound, rms_bound) in [(Tile::F4, 2.5e-6, 1.2e-6), (Tile::F2, 1e-6, 5e-7)] {
            let u = transform_for(&w, tile);
            let plan = same_size_plan((c, h, wd, k), &u, None, false, tile);
            let mut out = vec![f32::NAN; k * h * wd];
            plan.run(x.data(), None, &mut out, Parallelism::None);
            let err: Vec<f64> = out.iter().zip(&want).map(|(a, b)| *a as f64 - b).collect();
            let worst = err.iter().fold(0f64, |m, e| m.max(e.abs())) / scale;
            let err_rms = (err.iter().map(|e| e * e).sum::<f64>() / err.len() as f64).sqrt() / rms;
            eprintln!("{tile:?}: worst {worst:.2e}, RMS {err_rms:.2e}");
            assert!(worst <= worst_bound, "{tile:?}: worst error {worst:.2e}");
            assert!(err_rms <= rms_bound, "{tile:?}: RMS error {err_rms:.2e}");
        }
    }

    /// Winograd F(2×2) and F(4×4) with U plain and (on a CPU with the AVX-512 GEMM) packed
    /// against the naive convolution, on odd sizes (partial tiles) and padding 0 and 1; within
    /// 1e-4 of the output's scale (f32 transforms and sums over 40 channels).
    #[test]
    fn plain_and_packed_filters_give_the_convolution() {
        let mut rng = crate::model::synth::Rng::new(7);
        let (n, c, h, wd, k) = (1, 40, 13, 11, 24);
        let x = rng.tensor(&[n, c, h, wd], -1.0, 1.0);
        let w = rng.tensor(&[k, c, 3, 3], -0.2, 0.2);
        for pad in [0, 1] {
            let p = Conv2dParams::new(1, pad);
            let want = naive::conv2d_fwd(&x, &w, None, &p);
            let (oh, ow) = (want.shape()[2], want.shape()[3]);
            let mut forms = Vec::new();
            for tile in [Tile::F2, Tile::F4] {
                forms.push((tile, transform_plain(&w, tile)));
                let prepared = transform_for(&w, tile);
                if prepared.shape()[2] != c {
                    forms.push((tile, prepared));
                }
            }
            let res = rng.tensor(want.shape(), -0.5, 0.5);
            // With the fused epilogue too: F.relu(conv + res), against the naive ops.
            let want_fused = naive::relu_fwd(&naive::add(&want, &res));
            for (tile, u) in &forms {
                for fused in [false, true] {
                    let plan = Plan {
                        c,
                        h,
                        w: wd,
                        k,
                        pad: (pad, pad),
                        oh,
                        ow,
                        u,
                        bias: None,
                        relu: fused,
                        tile: *tile,
                    };
                    let mut out = vec![f32::NAN; k * oh * ow];
                    let r = fused.then(|| res.data());
                    plan.run(x.data(), r, &mut out, Parallelism::None);
                    let want = if fused { &want_fused } else { &want };
                    let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (i, (a, b)) in out.iter().zip(want.data()).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-4 * scale,
                            "{tile:?}, pad {pad}, U {:?}, fused {fused} at {i}: {a} vs {b}",
                            u.shape()
                        );
                    }
                }
            }
        }
    }
}
