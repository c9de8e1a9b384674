//! Winograd F(2×2, 3×3) for 3×3 stride-1 convolutions (Lavin & Gray, arXiv 1509.09308):
//! each 4×4 input tile gives a 2×2 output tile with 16 multiplies per (k, c) pair instead of
//! 36, so VGG's convolutions and ResNet's 3×3 convs cost 2.25× fewer multiply-adds.
//!
//! Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A, and the ⊙ summed over input channels is 16 GEMMs:
//! M[ξ] (K×T) = U[ξ] (K×C) · V[ξ] (C×T) for the T tiles of a chunk of tile rows.
//! Rounding stays at the f32 GEMM's level for 3×3 (the transforms only add and halve).

use super::fast::add_relu;
use super::gemm::{pack_a, sgemm, sgemm_packed, Epilogue, Mat, Parallelism};
use crate::backend::Conv2dParams;
use crate::Tensor;

/// Whether the Winograd path applies and pays: 3×3, stride 1, no dilation, one group, and
/// enough input channels for the GEMMs to dominate the transforms.
pub fn applies(w: &Tensor, p: &Conv2dParams) -> bool {
    let (_, c, r, s) = w.dims4();
    r == 3 && s == 3 && p.stride == (1, 1) && p.dilation == (1, 1) && p.groups == 1 && c >= 16
}

/// U[ξ][k][c] = (G g Gᵀ)[ξ] for every filter, as a [16, K, C] tensor; or, where the CPU
/// runs the AVX-512 GEMM, each U[ξ] packed for it ([`pack_a`]), as a [16, len] tensor (so
/// every image's 16 products skip the packing, which over a 7×7 map's 16 tiles would cost more
/// than the products).
pub fn transform_weights(w: &Tensor) -> Tensor {
    let u = transform_plain(w);
    let (k, c) = (u.shape()[1], u.shape()[2]);
    let per = k * c;
    let packed: Option<Vec<Vec<f32>>> = (0..16)
        .map(|xi| pack_a(Mat::row_major(&u.data()[xi * per..(xi + 1) * per], c), k, c))
        .collect();
    match packed {
        Some(p) => Tensor::new([16, p[0].len()], p.concat()),
        None => u,
    }
}

/// U as a plain [16, K, C] tensor.
fn transform_plain(w: &Tensor) -> Tensor {
    use rayon::prelude::*;
    let (k, c, _, _) = w.dims4();
    // Transformed per filter (k-major, parallel), then laid out ξ-major for the GEMMs.
    let per_k: Vec<Vec<[f32; 16]>> = (0..k)
        .into_par_iter()
        .map(|ki| {
            (0..c)
                .map(|ci| transform_filter(&w.data()[(ki * c + ci) * 9..(ki * c + ci + 1) * 9]))
                .collect()
        })
        .collect();
    let mut u = vec![0f32; 16 * k * c];
    for (ki, filters) in per_k.iter().enumerate() {
        for (ci, f) in filters.iter().enumerate() {
            for (xi, &v) in f.iter().enumerate() {
                u[(xi * k + ki) * c + ci] = v;
            }
        }
    }
    Tensor::new([16, k, c], u)
}

/// G g Gᵀ for one 3×3 filter, row-major 4×4.
fn transform_filter(g: &[f32]) -> [f32; 16] {
    let mut u = [0f32; 16];
    // G g: 4×3
    let mut gg = [[0f32; 3]; 4];
    for j in 0..3 {
        let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
        gg[0][j] = g0;
        gg[1][j] = 0.5 * (g0 + g1 + g2);
        gg[2][j] = 0.5 * (g0 - g1 + g2);
        gg[3][j] = g2;
    }
    // (G g) Gᵀ: 4×4
    for (i, row) in gg.iter().enumerate() {
        let (a, b, d) = (row[0], row[1], row[2]);
        let out = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
        u[i * 4..i * 4 + 4].copy_from_slice(&out);
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
    /// [`transform_weights`]' tensor: U[ξ] after U[ξ], plain or packed.
    pub u: &'a Tensor,
    pub bias: Option<&'a [f32]>,
    /// max(·, 0) on the way out (a conv whose output feeds only a ReLU).
    pub relu: bool,
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
        let (th, tw) = (self.oh.div_ceil(2), self.ow.div_ceil(2));
        let per_tile = 16 * (self.c + self.k) * 4;
        let rows = (CHUNK_BYTES / per_tile / tw)
            .clamp(1, th)
            .max(64usize.div_ceil(tw).min(th));
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = 16 * (self.c + self.k) * rows * tw;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            for ty0 in (0..th).step_by(rows) {
                let ty1 = (ty0 + rows).min(th);
                let t = (ty1 - ty0) * tw;
                let (v, m) = buf[..16 * (self.c + self.k) * t].split_at_mut(16 * self.c * t);
                self.input_transform(img, ty0, ty1, v);
                let (packed, per) = (self.u.shape().len() == 2, self.u.len() / 16);
                for xi in 0..16 {
                    let u = &self.u.data()[xi * per..(xi + 1) * per];
                    let vx = Mat::row_major(&v[xi * self.c * t..(xi + 1) * self.c * t], t);
                    let mx = &mut m[xi * self.k * t..(xi + 1) * self.k * t];
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
                self.output_transform(m, ty0, ty1, residual, out);
            }
        });
    }

    /// V[ξ][c][tile] = (Bᵀ d B)[ξ] for the 4×4 input tile of each output tile in rows
    /// ty0..ty1. Separable: the horizontal half (· B) runs on whole zero-padded input rows,
    /// the vertical half (Bᵀ ·) combines four of those; both loop over tiles contiguously.
    fn input_transform(&self, img: &[f32], ty0: usize, ty1: usize, v: &mut [f32]) {
        let tw = self.ow.div_ceil(2);
        let t = (ty1 - ty0) * tw;
        let padded = 2 * tw + 2;
        // hr[i][j][tx]: input row i of the tile row, horizontal combination j.
        let mut row = vec![0f32; padded];
        let mut hr = vec![0f32; 4 * 4 * tw];
        for ci in 0..self.c {
            let plane = &img[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            for ty in ty0..ty1 {
                for i in 0..4 {
                    let y = (2 * ty + i) as isize - self.pad.0 as isize;
                    row.fill(0.0);
                    if (0..self.h as isize).contains(&y) {
                        let src = &plane[y as usize * self.w..(y as usize + 1) * self.w];
                        // row[x'] = src[x' - pad] where that is inside the image
                        let lo = self.pad.1;
                        let n = self.w.min(padded.saturating_sub(lo));
                        row[lo..lo + n].copy_from_slice(&src[..n]);
                    }
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
                    let at = ki * oh * ow + y * ow;
                    let res = residual.map(|res| &res[at..at + ow]);
                    add_relu(&mut line[..ow], res, self.relu);
                    plane[y * ow..(y + 1) * ow].copy_from_slice(&line[..ow]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::naive;
    use super::*;

    /// Winograd with U plain and (on a CPU with the AVX-512 GEMM) packed against the naive
    /// convolution, on odd sizes and padding 0 and 1; within 1e-4 of the output's scale
    /// (f32 transforms and sums over 40 channels).
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
            let mut forms = vec![transform_plain(&w)];
            let prepared = transform_weights(&w);
            if prepared.shape().len() == 2 {
                forms.push(prepared);
            }
            let res = rng.tensor(want.shape(), -0.5, 0.5);
            // With the fused epilogue too: F.relu(conv + res), against the naive ops.
            let want_fused = naive::relu_fwd(&naive::add(&want, &res));
            for u in &forms {
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
                    };
                    let mut out = vec![f32::NAN; k * oh * ow];
                    let r = fused.then(|| res.data());
                    plan.run(x.data(), r, &mut out, Parallelism::None);
                    let want = if fused { &want_fused } else { &want };
                    let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (i, (a, b)) in out.iter().zip(want.data()).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-4 * scale,
                            "pad {pad}, rank {}, fused {fused} at {i}: {a} vs {b}",
                            u.shape().len()
                        );
                    }
                }
            }
        }
    }
}
