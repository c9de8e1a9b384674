//! The f32 GEMM on CPUs with AVX-512 (Intel since Skylake-SP, AMD since Zen 4), chosen by
//! [`super::gemm::sgemm`] at run time: the `gemm` crate's AVX-512 kernels need a nightly
//! compiler, so on stable Rust it runs 8-lane AVX2 where 16 lanes are there (torch's oneDNN
//! uses them: on a Zen 5 core, twice the multiply-adds per cycle).
//!
//! BLIS's loop order. For each KC-deep slice of the product, A's rows are packed into 8-row
//! panels (the whole slice stays in L2), then each 48-column panel of B is packed (it stays in
//! L1) and every 8×48 tile of C above it is computed by the micro-kernel: 24 zmm
//! accumulators, per step of k three vector loads of B and eight broadcasts of A. The last
//! panel of B is computed 16, 32 or 48 columns wide, whichever covers it, and tiles at the
//! edges are written back through masks. With several threads, B's panels are shared out;
//! A's packed slice is read by all. Packing A costs as much as a product over a few dozen
//! columns, so `gemm::sgemm` sends only products of 32 rows and 96 columns or more here, and a
//! layer's filters
//! are packed once at load ([`pack`], [`sgemm_packed`]): then any number of columns pays.
//!
//! `GRADCAM_AVX512=0` turns it off (the `gemm` crate's kernels then run), for comparisons.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{CPtr, Epilogue, Mat};

/// Rows of A per panel and of a C tile.
pub const MR: usize = 8;
/// Columns of B per panel and of a C tile: three zmm vectors.
pub const NR: usize = 48;
/// Depth of a slice: a packed B panel is 36 KB, within a 48 KB L1.
const KC: usize = 192;

/// Whether this CPU has AVX-512F (and `GRADCAM_AVX512` does not say 0).
pub fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::env::var("GRADCAM_AVX512").map_or(true, |v| v.trim() != "0")
    })
}

/// A packed KC×NR panel of B, rows of NR contiguous values, 64-byte aligned for vector loads.
#[repr(C, align(64))]
struct Panel([f32; KC * NR]);

/// c (m×n, rows `c_rs` apart) = a·b, or c += a·b when `accumulate`; B's panels shared among
/// `threads`. The caller has checked that the views fit their slices ([`super::gemm::sgemm`])
/// and [`available`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    threads: usize,
) {
    check(m, n, k, c, c_rs);
    // Each slice packed just before its products, so it is still in L2 (packing the whole
    // of A first, as `pack` does, made the backward pass's products 15-20 % slower).
    let mp = m.div_ceil(MR);
    let mut apack = vec![0f32; mp * MR * KC.min(k)];
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        pack_a(a, m, pc, kc, &mut apack[..mp * MR * kc]);
        let load_c = accumulate || pc > 0;
        slice(
            (m, n),
            (pc, kc),
            &apack[..mp * MR * kc],
            b,
            (c, c_rs),
            load_c,
            Epilogue::default(),
            threads,
        );
    }
}

/// The length of [`pack`]'s A: m rounded up to whole MR-row panels, times k.
pub fn packed_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// A (m×k) packed once, as [`sgemm`] packs it slice by slice, for [`sgemm_packed`]: a
/// layer's filters, multiplied by every image's columns.
pub fn pack(a: Mat, m: usize, k: usize) -> Vec<f32> {
    let mp = m.div_ceil(MR);
    let mut out = vec![0f32; packed_len(m, k)];
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        pack_a(a, m, pc, kc, &mut out[mp * MR * pc..][..mp * MR * kc]);
    }
    out
}

/// [`sgemm`] with A given as [`pack`] made it: no packing per call, so products of a few
/// columns (a 7×7 map's 49 pixels) pay too. `epi` is applied as the last slice's tiles are
/// written (the caller has checked that its bias covers the m rows).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed(
    m: usize,
    n: usize,
    k: usize,
    apacked: &[f32],
    b: Mat,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    epi: Epilogue,
    threads: usize,
) {
    check(m, n, k, c, c_rs);
    let mp = m.div_ceil(MR);
    assert_eq!(
        apacked.len(),
        packed_len(m, k),
        "A packed for another shape"
    );
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let a = &apacked[mp * MR * pc..][..mp * MR * kc];
        slice(
            (m, n),
            (pc, kc),
            a,
            b,
            (c, c_rs),
            accumulate || pc > 0,
            if pc + kc == k {
                epi
            } else {
                Epilogue::default()
            },
            threads,
        );
    }
}

fn check(m: usize, n: usize, k: usize, c: &[f32], c_rs: usize) {
    assert!(available(), "AVX-512 GEMM called on a CPU without AVX-512F");
    assert!(m > 0 && n > 0 && k > 0 && c.len() >= (m - 1) * c_rs + n && c_rs >= n);
}

/// One KC-deep slice (`pc`, `kc`) of the product: every tile of C from A's packed slice and
/// B's panels, packed here (in parallel over the panels with `threads` > 1).
#[allow(clippy::too_many_arguments)]
fn slice(
    (m, n): (usize, usize),
    (pc, kc): (usize, usize),
    apack: &[f32],
    b: Mat,
    (c, c_rs): (&mut [f32], usize),
    load_c: bool,
    epi: Epilogue,
    threads: usize,
) {
    let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
    assert_eq!(apack.len(), mp * MR * kc);
    let cp = CPtr(c.as_mut_ptr());
    let panel = |buf: &mut Panel, jp: usize| {
        let (j0, nr) = (jp * NR, NR.min(n - jp * NR));
        pack_b(b, pc, kc, j0, nr, &mut buf.0[..kc * NR]);
        for ip in 0..mp {
            let mr = MR.min(m - ip * MR);
            let epi = Epilogue {
                bias: epi.bias.map(|v| &v[ip * MR..ip * MR + mr]),
                relu: epi.relu,
            };
            // SAFETY: the A and B panels hold kc·MR and kc·NR values; the tile's rows
            // (ip·MR.. + mr) and columns (j0.. + nr) lie inside c, whose length `check`
            // checked, and only this panel's thread writes these columns.
            unsafe {
                let (a, b, c) = (
                    apack.as_ptr().add(ip * MR * kc),
                    buf.0.as_ptr(),
                    cp.ptr().add(ip * MR * c_rs + j0),
                );
                match nr.div_ceil(16) {
                    1 => tile::<1>(kc, a, b, c, c_rs, (mr, nr), load_c, epi),
                    2 => tile::<2>(kc, a, b, c, c_rs, (mr, nr), load_c, epi),
                    _ => tile::<3>(kc, a, b, c, c_rs, (mr, nr), load_c, epi),
                }
            }
        }
    };
    // Each thread's own panel buffer, kept between calls (no rayon work runs inside `panel`,
    // so the borrow is never taken twice on one thread).
    let run = |jp: usize| PANEL.with(|buf| panel(&mut buf.borrow_mut(), jp));
    if threads > 1 && np > 1 {
        (0..np).into_par_iter().for_each(run);
    } else {
        (0..np).for_each(run);
    }
}

thread_local! {
    static PANEL: std::cell::RefCell<Box<Panel>> =
        std::cell::RefCell::new(Box::new(Panel([0.0; KC * NR])));
}

/// A's rows, KC-deep slice at `pc`, as panels of MR rows: panel ip holds, for each step p of
/// the slice, rows ip·MR.. (zero past m).
fn pack_a(a: Mat, m: usize, pc: usize, kc: usize, out: &mut [f32]) {
    for (ip, panel) in out.chunks_mut(MR * kc).enumerate() {
        for i in 0..MR {
            let row = ip * MR + i;
            if row >= m {
                (0..kc).for_each(|p| panel[p * MR + i] = 0.0);
                continue;
            }
            let base = row * a.rs + pc * a.cs;
            for p in 0..kc {
                panel[p * MR + i] = a.data[base + p * a.cs];
            }
        }
    }
}

/// B's columns j0.. + nr of the KC-deep slice at `pc`, as rows of NR values (zero past nr),
/// read along whichever side of B is contiguous.
fn pack_b(b: Mat, pc: usize, kc: usize, j0: usize, nr: usize, out: &mut [f32]) {
    if b.cs == 1 {
        for (p, row) in out.chunks_mut(NR).enumerate() {
            let at = (pc + p) * b.rs + j0;
            row[..nr].copy_from_slice(&b.data[at..at + nr]);
            row[nr..].fill(0.0);
        }
    } else {
        for j in 0..NR {
            if j >= nr {
                (0..kc).for_each(|p| out[p * NR + j] = 0.0);
                continue;
            }
            let base = pc * b.rs + (j0 + j) * b.cs;
            for p in 0..kc {
                out[p * NR + j] = b.data[base + p * b.rs];
            }
        }
    }
}

/// One MR×(16·NV) tile of C from packed panels: C (+)= A·B over kc steps, then `epi` (its
/// bias cut to the tile's rows); rows past `mr` and columns past `nr` are computed over the
/// padding and not written.
///
/// # Safety
/// AVX-512F; `a` holds kc·MR values, `b` kc rows of NR (64-byte aligned); `c` has `mr` rows
/// of at least `nr` ≤ 16·NV writable values, `c_rs` apart.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const NV: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    c_rs: usize,
    (mr, nr): (usize, usize),
    load_c: bool,
    epi: Epilogue,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for p in 0..kc {
        // SAFETY: p < kc, within both panels; each B row starts 192 bytes after the last.
        let (bv, ap) = unsafe {
            let bp = b.add(p * NR);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_load_ps(bp.add(16 * v));
            }
            (bv, a.add(p * MR))
        };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: i < MR.
            let ai = _mm512_set1_ps(unsafe { *ap.add(i) });
            for (x, &y) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(ai, y, *x);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(mr) {
        for (v, &x) in row.iter().enumerate() {
            let lo = v * 16;
            if lo >= nr {
                break;
            }
            let lanes = (nr - lo).min(16);
            let mask: __mmask16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
            // SAFETY: the masked lanes are columns lo.. < nr of row i < mr.
            unsafe {
                let at = c.add(i * c_rs + lo);
                let mut x = match load_c {
                    true => _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, at)),
                    false => x,
                };
                if let Some(bias) = epi.bias {
                    x = _mm512_add_ps(x, _mm512_set1_ps(bias[i]));
                }
                if epi.relu {
                    // max(0, x) returns its second operand when one is NaN: torch's NaN-keeping ReLU.
                    x = _mm512_max_ps(_mm512_setzero_ps(), x);
                }
                _mm512_mask_storeu_ps(at, mask, x);
            }
        }
    }
}
