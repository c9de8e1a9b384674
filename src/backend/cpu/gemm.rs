//! A safe wrapper for the f32 products the fast CPU ops are made of: the `gemm` crate's
//! kernels, or on CPUs with AVX-512 (x86-64) this crate's own ([`super::avx512`]) for A
//! packed at load ([`pack_a`]) and for products of at least 32 rows and 96 contiguous
//! columns.

pub use gemm::Parallelism;

use crate::tensor::Tensor;

/// A strided view of an m×n matrix: element (i, j) sits at `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// What [`sgemm_packed`] does to C as it writes it: C = A·B (+ C) + bias[row], then
/// max(·, 0) — a conv's bias and ReLU while each tile is in registers, so a conv whose output
/// is large next to its depth (VGG16's first, 27 deep) writes it once instead of filling it
/// with the bias, reading it back into the product and again for the ReLU.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// One value per row of C.
    pub bias: Option<&'a [f32]>,
    // (Read by the AVX-512 kernel only.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub relu: bool,
}

/// c (m×n, rows `c_rs` apart) = a (m×k) · b (k×n), or c += a·b when `accumulate`.
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
    par: Parallelism,
) {
    assert!(
        a.fits(m, k) && b.fits(k, n) && c_fits(m, n, c, c_rs),
        "gemm operands too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.chunks_mut(c_rs).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // Over fewer columns or rows, packing A or B costs more than the wider vectors gain;
    // B's rows must be contiguous (a transposed B is gathered element by element).
    if m >= 32 && n >= 2 * super::avx512::NR && k >= 16 && b.cs == 1 && super::avx512::available() {
        return super::avx512::sgemm(m, n, k, a, b, c, c_rs, accumulate, threads(par));
    }
    // SAFETY: the asserts above keep every strided access inside the three slices, and `c`
    // is borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// C's base pointer, shared by the threads of a product that write its disjoint column
/// panels (the AVX-512 and AMX kernels).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct CPtr(pub(super) *mut f32);
// SAFETY: each thread writes only the columns of its own panels.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for CPtr {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for CPtr {}

#[cfg(target_arch = "x86_64")]
impl CPtr {
    /// (A method, so closures capture the whole `CPtr`, which is Sync, not its raw field.)
    pub(super) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Whether C (m×n, rows `c_rs` apart) fits in `c`.
fn c_fits(m: usize, n: usize, c: &[f32], c_rs: usize) -> bool {
    c_rs >= n && (m == 0 || c.len() >= (m - 1) * c_rs + n)
}

/// The shape of what [`pack_a`] makes of an m×k A: [m, L], L the packed length over m
/// rounded up, plus one. The kernel packs whole panels of rows, so the packed length alone
/// would not tell m = 5 from m = 8; the shape names m, and L > k tells a packed matrix from a
/// plain m×k one. None where it packs nothing.
pub fn packed_shape(m: usize, k: usize) -> Option<[usize; 2]> {
    #[cfg(target_arch = "x86_64")]
    if m > 0 && k > 0 && super::avx512::available() {
        return Some([m, super::avx512::packed_len(m, k).div_ceil(m) + 1]);
    }
    let _ = (m, k);
    None
}

/// A (m×k) packed for this CPU's AVX-512 kernel, to be multiplied by [`sgemm_packed`] many
/// times (a layer's filters), as a tensor shaped [`packed_shape`] (zeros after the packed
/// data); None where that kernel does not run.
pub fn pack_a(a: Mat, m: usize, k: usize) -> Option<Tensor> {
    assert!(a.fits(m, k), "gemm operand too small");
    let shape = packed_shape(m, k)?;
    #[cfg(target_arch = "x86_64")]
    {
        let mut v = super::avx512::pack(a, m, k);
        v.resize(shape[0] * shape[1], 0.0);
        Some(Tensor::new(shape, v))
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("packed_shape is None on this architecture: {shape:?}")
}

/// [`sgemm`] with A as [`pack_a`] gave it (its data, which may run on past the packed
/// matrix), then `epi` as C is written.
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
    par: Parallelism,
) {
    assert!(
        b.fits(k, n) && c_fits(m, n, c, c_rs) && epi.bias.is_none_or(|v| v.len() >= m),
        "gemm operands too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // The padding after the packed matrix is not the kernel's to read; a slice too short
        // is left for its length check.
        let len = super::avx512::packed_len(m, k).min(apacked.len());
        let a = &apacked[..len];
        super::avx512::sgemm_packed(m, n, k, a, b, c, c_rs, accumulate, epi, threads(par));
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (apacked, accumulate, epi, par);
        unreachable!("pack_a packs nothing on this architecture");
    }
}

/// f32 → bf16 bits, rounded to nearest, ties to even (as torch's `.to(torch.bfloat16)`); a
/// NaN stays a NaN.
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to the nearest bf16, as an f32: what the bf16 products multiply (tests
/// compare them with f32 products of rounded operands).
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Whether this CPU runs the bf16 products of `--precision bf16` (AMX-BF16, [`super::amx`]).
pub fn bf16_available() -> bool {
    bf16_unavailable().is_none()
}

/// Why this CPU does not run the bf16 products, or None where it does.
pub fn bf16_unavailable() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    return super::amx::unavailable();
    #[cfg(not(target_arch = "x86_64"))]
    Some("it needs an x86-64 CPU with AMX-BF16 (Intel Xeon since Sapphire Rapids)")
}

/// A (m×k) rounded to bf16 and packed for the AMX kernel, to be multiplied by
/// [`sgemm_prepacked`] many times (a layer's filters); None where that kernel does not run.
/// The tensor holds pairs of bf16 in the bits of each f32 (it is never computed on, only
/// handed back here), shaped [m, k, 1, 1, q] (q·m·k ≥ the packed length): five dims, which
/// no f32 form of a conv's filters has, plain or prepared ([`bf16_packed_dims`]).
pub fn pack_a_bf16(a: Mat, m: usize, k: usize) -> Option<Tensor> {
    assert!(a.fits(m, k), "gemm operand too small");
    if m == 0 || k == 0 || !bf16_available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let words = super::amx::pack(a, m, k);
        let q = words.len().div_ceil(m * k);
        let mut v: Vec<f32> = words.into_iter().map(f32::from_bits).collect();
        v.resize(m * k * q, 0.0);
        Some(Tensor::new([m, k, 1, 1, q], v))
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("bf16_available is false on this architecture")
}

/// (m, k) of an A that [`pack_a_bf16`] packed, else None (also for a tensor of that shape
/// too short to hold the packing, which a caller may have built by hand, and wherever the
/// bf16 products do not run, so such a tensor is refused as filters, never multiplied).
pub fn bf16_packed_dims(t: &Tensor) -> Option<(usize, usize)> {
    match *t.shape() {
        #[cfg(target_arch = "x86_64")]
        [m, k, 1, 1, _]
            if m > 0 && k > 0 && t.len() >= super::amx::packed_words(m, k) && bf16_available() =>
        {
            Some((m, k))
        }
        _ => None,
    }
}

/// [`sgemm_packed`] for an A from [`pack_a`] or [`pack_a_bf16`], whichever `packed` is.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_prepacked(
    m: usize,
    n: usize,
    k: usize,
    packed: &Tensor,
    b: Mat,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    epi: Epilogue,
    par: Parallelism,
) {
    let Some(dims) = bf16_packed_dims(packed) else {
        return sgemm_packed(m, n, k, packed.data(), b, c, c_rs, accumulate, epi, par);
    };
    assert!(
        dims == (m, k)
            && b.fits(k, n)
            && c_fits(m, n, c, c_rs)
            && epi.bias.is_none_or(|v| v.len() >= m),
        "gemm operands too small, or A packed for another shape"
    );
    if n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let data = packed.data();
        let len = super::amx::packed_words(m, k).min(data.len());
        // SAFETY: f32 and u32 have one size and alignment, and every bit pattern is a u32:
        // the words `pack_a_bf16` stored as f32 bits, read back as they were.
        let words = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u32>(), len) };
        super::amx::sgemm_packed(m, n, k, words, b, c, c_rs, accumulate, epi, threads(par));
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (accumulate, epi, par);
        unreachable!("pack_a_bf16 packs nothing on this architecture");
    }
}

/// Threads for a product, as the `gemm` crate counts them.
#[cfg(target_arch = "x86_64")]
fn threads(par: Parallelism) -> usize {
    match par {
        Parallelism::Rayon(0) => rayon::current_num_threads(),
        Parallelism::Rayon(t) => t,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform values in [-1, 1) from a 64-bit LCG.
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        }
    }

    /// Asserts C (m×n, rows `c_rs` apart) = A·B (+ C0 when `acc`) + bias, ReLU'd, against an
    /// f64 sum of the terms `a(i, p)`·`b(p, j)`: within 1e-5 of the sum of their magnitudes
    /// (f32 rounding), and C0 untouched past column n.
    #[allow(clippy::too_many_arguments)]
    fn assert_product(
        (m, n, k): (usize, usize, usize),
        c: &[f32],
        c0: &[f32],
        c_rs: usize,
        a: impl Fn(usize, usize) -> f64,
        b: impl Fn(usize, usize) -> f64,
        acc: bool,
        epi: Epilogue,
        what: &str,
    ) {
        for i in 0..m {
            for j in 0..c_rs {
                let got = c[i * c_rs + j];
                if j >= n {
                    assert_eq!(got, c0[i * c_rs + j], "{what}: padding column {j} written");
                    continue;
                }
                let (mut want, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let t = a(i, p) * b(p, j);
                    want += t;
                    mag += t.abs();
                }
                if acc {
                    want += c0[i * c_rs + j] as f64;
                }
                if let Some(bias) = epi.bias {
                    want += bias[i] as f64;
                    mag += bias[i].abs() as f64;
                }
                if epi.relu {
                    want = want.max(0.0);
                }
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * mag + 1e-6,
                    "{what} {m}x{n}x{k} ({i}, {j}): {got} vs {want}"
                );
            }
        }
    }

    /// `sgemm` (whichever kernels this CPU runs: on one with AVX-512 the products of at least
    /// 32×96×16 with B's rows contiguous go to `avx512`, their last panel 16, 32 or 48 wide),
    /// and there `sgemm_packed` for every shape, with and without its epilogue, against a
    /// plain f64 sum, for shapes that leave partial tiles and slices on every side, transposed
    /// views, accumulation and several threads. Each entry within 1e-5 of the sum of its
    /// terms' magnitudes (f32 rounding).
    #[test]
    fn sgemm_matches_a_plain_sum() {
        let mut rnd = uniform(0x1234_5678u64);
        // (Entries at odd positions accumulate; those of k > 192 span several slices.)
        let shapes = [
            (16, 32, 16),
            (17, 33, 17),
            (64, 97, 512),
            (40, 97, 200),
            (8, 300, 40),
            (512, 97, 64),
            (9, 113, 33),
            (24, 130, 20),
            (130, 144, 385),
            (3, 5, 7),
            (72, 49, 400),
            (40, 96, 250),
        ];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            for variant in 0..4 {
                let (a_t, b_t, acc) = (variant & 1 == 1, variant & 2 == 2, si % 2 == 1);
                let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
                let c_rs = n + 3;
                let c0: Vec<f32> = (0..m * c_rs).map(|_| rnd()).collect();
                let am = match a_t {
                    false => Mat::row_major(&a, k),
                    true => Mat::transposed(&a, m),
                };
                let bm = match b_t {
                    false => Mat::row_major(&b, n),
                    true => Mat::transposed(&b, k),
                };
                let par = match variant {
                    1 | 3 => Parallelism::Rayon(2),
                    _ => Parallelism::None,
                };
                let mut c = c0.clone();
                sgemm(m, n, k, am, bm, &mut c, c_rs, acc, par);
                let mut outs = vec![(c, Epilogue::default())];
                // A packed once (AVX-512 CPUs): any number of columns; without and with the
                // epilogue (a bias per row, the ReLU).
                let bias: Vec<f32> = (0..m).map(|_| rnd()).collect();
                let full = Epilogue {
                    bias: Some(&bias),
                    relu: true,
                };
                if let Some(packed) = pack_a(am, m, k) {
                    for epi in [Epilogue::default(), full] {
                        let mut c = c0.clone();
                        sgemm_packed(m, n, k, packed.data(), bm, &mut c, c_rs, acc, epi, par);
                        outs.push((c, epi));
                    }
                }
                for (c, epi) in outs {
                    let a = |i: usize, p: usize| am.data[i * am.rs + p * am.cs] as f64;
                    let b = |p: usize, j: usize| bm.data[p * bm.rs + j * bm.cs] as f64;
                    let what = format!("variant {variant}");
                    assert_product((m, n, k), &c, &c0, c_rs, a, b, acc, epi, &what);
                }
            }
        }
    }

    /// The bf16 products of `--precision bf16` (AMX): `sgemm_prepacked` on A from
    /// `pack_a_bf16` against a plain f64 sum of the bf16-rounded terms, for shapes that
    /// leave partial blocks of 32 rows, columns and k, a transposed B (the gathered pack), a
    /// strided C, accumulation, the epilogue and several threads. Each entry within 1e-5 of
    /// the sum of its terms' magnitudes (the f32 accumulation's rounding). On a CPU without
    /// AMX-BF16 the packing refuses (None) and nothing else can run: said, not failed.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sgemm_bf16_matches_a_plain_sum_of_rounded_terms() {
        let mut rnd = uniform(0x9e37_79b9u64);
        if !bf16_available() {
            let a = [1.0f32; 4];
            assert!(pack_a_bf16(Mat::row_major(&a, 2), 2, 2).is_none());
            eprintln!("note: no AMX-BF16 on this CPU: its bf16 products are not tested here");
            return;
        }
        let shapes = [
            (32, 32, 32),
            (1, 1, 1),
            (33, 65, 31),
            (64, 49, 576),
            (100, 200, 147),
            (512, 7, 1024),
            (17, 300, 64),
        ];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            for variant in 0..4 {
                let (b_t, acc) = (variant & 2 == 2, (si + variant) % 2 == 1);
                let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rnd() * 3.0).collect();
                let c_rs = n + 5;
                let c0: Vec<f32> = (0..m * c_rs).map(|_| rnd()).collect();
                let am = Mat::row_major(&a, k);
                let bm = match b_t {
                    false => Mat::row_major(&b, n),
                    true => Mat::transposed(&b, k),
                };
                let par = match variant {
                    1 | 3 => Parallelism::Rayon(2),
                    _ => Parallelism::None,
                };
                let packed = pack_a_bf16(am, m, k).expect("AMX is available");
                assert_eq!(bf16_packed_dims(&packed), Some((m, k)));
                let bias: Vec<f32> = (0..m).map(|_| rnd()).collect();
                // Whole 32×32 blocks without a ReLU or accumulation go from the tiles to C
                // directly (with and without a bias), the rest through the block buffer.
                let epi = match variant {
                    0 | 3 => Epilogue::default(),
                    v => Epilogue {
                        bias: Some(&bias),
                        relu: v == 1,
                    },
                };
                let mut c = c0.clone();
                sgemm_prepacked(m, n, k, &packed, bm, &mut c, c_rs, acc, epi, par);
                let a = |i: usize, p: usize| round_bf16(a[i * k + p]) as f64;
                let b = |p: usize, j: usize| round_bf16(bm.data[p * bm.rs + j * bm.cs]) as f64;
                let what = format!("bf16 variant {variant}");
                assert_product((m, n, k), &c, &c0, c_rs, a, b, acc, epi, &what);
            }
        }
    }

    /// Rounding to bf16 is to nearest, ties to even, as torch's `.to(torch.bfloat16)`.
    #[test]
    fn round_bf16_is_to_nearest_even() {
        // torch.tensor(0.1).bfloat16().item() == 0.10009765625; 1.1 → 1.1015625
        assert_eq!(round_bf16(0.1), f32::from_bits(0x3dcd_0000));
        assert_eq!(round_bf16(1.1), 1.101_562_5);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1);
        // 1 + 3·2^-8 between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round_bf16(-2.5), -2.5);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    }
}
