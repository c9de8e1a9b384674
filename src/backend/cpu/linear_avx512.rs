//! Linear layers over a few images on CPUs with AVX-512: `linear_fwd` and `linear_bwd_data`
//! when the batch is at most [`MAX_BATCH`] (the CPU runs 8 by default).
//!
//! There a linear layer is bound by reading its weights (VGG16's classifier: 494 MB per pass,
//! for 8 rows of input), not by arithmetic, and the GEMM (the `gemm` crate: fewer than 32 rows
//! go there) read them at about 13 GB/s on two Zen 5 cores, as torch's did. These kernels read
//! each weight once, in long contiguous runs, into 16-lane multiply-adds against every image
//! at once:
//! - forward, y = x·Wᵀ + b: two rows of W at a time against up to 8 images (16 accumulators),
//!   each row a dot product with every image's input;
//! - backward-data, dx = dy·W: column strips of W (each task its own: no reduction), four
//!   rows at a time added into the strip of dx, which stays in L1.

use std::arch::x86_64::*;

use rayon::prelude::*;

/// Images per block of the forward kernel; larger batches run block by block.
const NB: usize = 8;
/// Largest batch sent here: beyond it W is reused enough for the GEMM to win.
pub const MAX_BATCH: usize = 2 * NB;

/// y [n, fout] = x [n, fin] · Wᵀ (+ b), W [fout, fin] row-major. The caller has checked
/// [`super::avx512::available`] and the shapes.
pub fn linear_fwd(x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize, fin: usize) -> Vec<f32> {
    let fout = w.len() / fin;
    assert!(x.len() == n * fin && w.len() == fout * fin && b.is_none_or(|b| b.len() == fout));
    // Output-major while computing (each task owns rows of W), images-major at the end.
    let mut yt = vec![0f32; fout * n];
    yt.par_chunks_mut(16 * n)
        .enumerate()
        .for_each(|(blk, out)| {
            let o0 = blk * 16;
            for (pair, out) in out.chunks_mut(2 * n).enumerate() {
                let o = o0 + 2 * pair;
                let rows = out.len() / n;
                for b0 in (0..n).step_by(NB) {
                    let nb = NB.min(n - b0);
                    let xs = &x[b0 * fin..(b0 + nb) * fin];
                    let mut sums = [[0f32; NB]; 2];
                    // SAFETY: AVX-512F (the caller checked); the rows and images are in range.
                    unsafe {
                        match nb {
                            8 => dots::<8>(w, o, rows, xs, fin, &mut sums),
                            7 => dots::<7>(w, o, rows, xs, fin, &mut sums),
                            6 => dots::<6>(w, o, rows, xs, fin, &mut sums),
                            5 => dots::<5>(w, o, rows, xs, fin, &mut sums),
                            4 => dots::<4>(w, o, rows, xs, fin, &mut sums),
                            3 => dots::<3>(w, o, rows, xs, fin, &mut sums),
                            2 => dots::<2>(w, o, rows, xs, fin, &mut sums),
                            _ => dots::<1>(w, o, rows, xs, fin, &mut sums),
                        }
                    }
                    for r in 0..rows {
                        for j in 0..nb {
                            out[r * n + b0 + j] = sums[r][j] + b.map_or(0.0, |b| b[o + r]);
                        }
                    }
                }
            }
        });
    let mut y = vec![0f32; n * fout];
    for (o, col) in yt.chunks(n).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            y[i * fout + o] = v;
        }
    }
    y
}

/// sums[r][j] = W[o + r] · x[j] for r < `rows` (1 or 2) and the NBX images of `xs`.
///
/// # Safety
/// AVX-512F; rows o.. + rows of W and NBX rows of `xs`, each `fin` long, exist.
#[target_feature(enable = "avx512f")]
unsafe fn dots<const NBX: usize>(
    w: &[f32],
    o: usize,
    rows: usize,
    xs: &[f32],
    fin: usize,
    sums: &mut [[f32; NB]; 2],
) {
    let (mut acc0, mut acc1) = ([_mm512_setzero_ps(); NBX], [_mm512_setzero_ps(); NBX]);
    // A single row pairs with itself: the second half of the work is then thrown away.
    let w1 = &w[(o + rows - 1) * fin..(o + rows) * fin];
    let w0 = &w[o * fin..(o + 1) * fin];
    for i in (0..fin).step_by(16) {
        let lanes = 16.min(fin - i);
        let mask: __mmask16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
        // SAFETY: the masked lanes i.. < fin lie inside each row.
        unsafe {
            let a = _mm512_maskz_loadu_ps(mask, w0.as_ptr().add(i));
            let c = _mm512_maskz_loadu_ps(mask, w1.as_ptr().add(i));
            for (j, (p, q)) in acc0.iter_mut().zip(&mut acc1).enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, xs.as_ptr().add(j * fin + i));
                *p = _mm512_fmadd_ps(a, xv, *p);
                *q = _mm512_fmadd_ps(c, xv, *q);
            }
        }
    }
    for (sr, ar) in sums.iter_mut().zip([acc0, acc1]).take(rows) {
        for (s, a) in sr.iter_mut().zip(ar) {
            *s = _mm512_reduce_add_ps(a);
        }
    }
}

/// dx [n, fin] = dy [n, fout] · W, W [fout, fin] row-major, n ≤ [`MAX_BATCH`]. The caller
/// has checked [`super::avx512::available`] and the shapes.
pub fn linear_bwd_data(dy: &[f32], w: &[f32], n: usize, fout: usize) -> Vec<f32> {
    let fin = w.len() / fout;
    assert!(n <= MAX_BATCH && dy.len() == n * fout && w.len() == fout * fin);
    // Strips of at most 1024 columns (8 images' strips of dx, 32 KB, stay in L1; 16 images'
    // in L2), at least four per thread where the layer is wide enough.
    let threads = rayon::current_num_threads();
    let sw = fin
        .div_ceil(4 * threads)
        .next_multiple_of(16)
        .clamp(256, 1024);
    // Strip-major while computing (each task owns columns of dx), images-major at the end.
    let strips = fin.div_ceil(sw);
    let mut parts = vec![0f32; n * strips * sw];
    parts
        .par_chunks_mut(n * sw)
        .enumerate()
        .for_each(|(s, part)| {
            let (c0, cols) = (s * sw, sw.min(fin - s * sw));
            // SAFETY: AVX-512F (the caller checked); columns c0.. + cols of every row exist.
            unsafe { strip(dy, w, (n, fout, fin), (c0, cols), part, sw) };
        });
    let mut dx = vec![0f32; n * fin];
    for (s, part) in parts.chunks(n * sw).enumerate() {
        let (c0, cols) = (s * sw, sw.min(fin - s * sw));
        for j in 0..n {
            dx[j * fin + c0..j * fin + c0 + cols].copy_from_slice(&part[j * sw..][..cols]);
        }
    }
    dx
}

/// part[j][c] = Σ_o dy[j][o] · W[o][c0 + c] for c < cols: four rows of W at a time, each
/// vector of the strip loaded once per image per four rows.
///
/// # Safety
/// AVX-512F; `part` holds n rows of `sw` ≥ cols, W `fout` rows of `fin` ≥ c0 + cols.
#[target_feature(enable = "avx512f")]
unsafe fn strip(
    dy: &[f32],
    w: &[f32],
    (n, fout, fin): (usize, usize, usize),
    (c0, cols): (usize, usize),
    part: &mut [f32],
    sw: usize,
) {
    assert!(cols <= sw && part.len() >= n * sw && c0 + cols <= fin && w.len() >= fout * fin);
    for o in (0..fout).step_by(4) {
        let rows = 4.min(fout - o);
        for v in (0..cols).step_by(16) {
            let lanes = 16.min(cols - v);
            let mask: __mmask16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
            // SAFETY: the masked lanes are columns c0 + v.. < c0 + cols of rows o.. < fout,
            // and of the strip's rows j < n.
            unsafe {
                let mut wv = [_mm512_setzero_ps(); 4];
                for (r, x) in wv.iter_mut().enumerate().take(rows) {
                    *x = _mm512_maskz_loadu_ps(mask, w.as_ptr().add((o + r) * fin + c0 + v));
                }
                for j in 0..n {
                    let at = part.as_mut_ptr().add(j * sw + v);
                    let mut acc = _mm512_maskz_loadu_ps(mask, at);
                    for (r, &x) in wv.iter().enumerate().take(rows) {
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(dy[j * fout + o + r]), x, acc);
                    }
                    _mm512_mask_storeu_ps(at, mask, acc);
                }
            }
        }
    }
}
