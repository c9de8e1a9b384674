//! The conv GEMMs in bf16 on Intel's AMX tiles (Sapphire Rapids and later), for the CPU's
//! `--precision bf16`: A (a layer's filters) is rounded to bf16 and packed once, at load
//! ([`pack`]); B (im2col columns, or the input of a 1×1 conv) is rounded and packed per call,
//! 32 columns at a time; products accumulate in f32 (`tdpbf16ps`), and C is written in f32.
//! One `tdpbf16ps` is 16×16×32 multiply-adds, 16 times an AVX-512 FMA's per cycle.
//!
//! Tiles (palette 1, every one 16 rows of 64 bytes): tmm0–3 hold a 32×32 block of C, tmm4–5
//! 32 rows of A by 32 k, tmm6–7 32 k by 32 columns of B, in the pair layout `tdpbf16ps` reads
//! (row p of a B tile holds, for each column j, B[2p][j] and B[2p+1][j] side by side).
//! Edges are zero-padded in the packs (rows of A to 32, k to 32, columns of B to 32). The C
//! tiles start from the rows' bias; a whole block with no ReLU or accumulation is stored from
//! them straight to C, any other goes through a 32×32 buffer, and the ReLU, accumulation and
//! partial rows and columns are applied as it is copied out.
//!
//! Linux only: a process must ask the kernel for the tile state (`arch_prctl`) before its
//! first tile instruction. `GRADCAM_AMX=0` turns it off (the f32 kernels then run).
//! Rounding is round-to-nearest-even, as torch's `.to(torch.bfloat16)`; the instructions
//! treat bf16 subnormals as zero (values below 1.2e-38, far under any activation's scale).

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{bf16_bits, CPtr, Epilogue, Mat};

/// Rows of C (and A) per block: two tiles of 16.
pub const MB: usize = 32;
/// Columns of C (and B) per block: two tiles of 16.
pub const NB: usize = 32;
/// Depth of one tile step: 32 bf16 = one 64-byte tile row of A.
pub const KB: usize = 32;
/// 32-bit words (bf16 pairs) in one tile: 16 rows of 64 bytes.
const TILE_WORDS: usize = 256;

/// Whether the bf16 products run here: see [`unavailable`].
pub fn available() -> bool {
    unavailable().is_none()
}

/// Why the bf16 products do not run here, or None where they do: the CPU has AMX-TILE,
/// AMX-BF16 and AVX-512 (F, BW, BF16), the kernel grants the tile state, and neither
/// `GRADCAM_AMX` nor `GRADCAM_AVX512` says 0 (their packing and epilogue are AVX-512 code).
pub fn unavailable() -> Option<&'static str> {
    static WHY: OnceLock<Option<&'static str>> = OnceLock::new();
    *WHY.get_or_init(|| {
        if std::env::var("GRADCAM_AMX").is_ok_and(|v| v.trim() == "0") {
            Some("GRADCAM_AMX=0 turns it off")
        } else if !super::avx512::available() {
            Some("it needs AVX-512 (GRADCAM_AVX512=0 turns that off)")
        } else if !(cpu_has_amx_bf16()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16"))
        {
            Some("this CPU has no AMX-BF16 (Intel Xeon since Sapphire Rapids)")
        } else if !request_tile_state() {
            Some("the operating system did not grant the AMX tile state (Linux 5.16 or later)")
        } else {
            None
        }
    })
}

/// CPUID leaf 7: EDX bit 24 AMX-TILE, bit 22 AMX-BF16 (std's detection of these is unstable).
fn cpu_has_amx_bf16() -> bool {
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 22) != 0
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux 5.16+ gives a process the AMX
/// tile state only on request (without it the first tile load faults); granted to the whole
/// process, every thread included.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a system call that only changes which register state this process may use.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Words (bf16 pairs) of A (m×k) packed: m and k rounded up to 32.
pub fn packed_words(m: usize, k: usize) -> usize {
    m.div_ceil(MB) * MB * k.div_ceil(KB) * KB / 2
}

/// A (m×k) rounded to bf16 and packed: for each block of 32 rows, for each step of 32 k, its
/// two 16-row tiles, each row 32 bf16 (pairs of k in one 32-bit word, the lower k in the
/// low half). Zero past m and k.
pub fn pack(a: Mat, m: usize, k: usize) -> Vec<u32> {
    let (mp, kp) = (m.div_ceil(MB), k.div_ceil(KB));
    let mut out = vec![0u32; packed_words(m, k)];
    let at = |i: usize, p: usize| match i < m && p < k {
        true => bf16_bits(a.data[i * a.rs + p * a.cs]) as u32,
        false => 0,
    };
    for ib in 0..mp {
        for ks in 0..kp {
            for h in 0..2 {
                let tile = &mut out[((ib * kp + ks) * 2 + h) * TILE_WORDS..][..TILE_WORDS];
                for r in 0..16 {
                    let i = ib * MB + h * 16 + r;
                    for w in 0..16 {
                        let p = ks * KB + 2 * w;
                        tile[r * 16 + w] = at(i, p) | (at(i, p + 1) << 16);
                    }
                }
            }
        }
    }
    out
}

/// The tile configuration `ldtilecfg` reads (64 bytes): palette 1, eight tiles of 16×64 B.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// One 32×32 block of C as the tiles leave it, 64-byte aligned for `tilestored`.
#[repr(C, align(64))]
struct Block([f32; MB * NB]);

/// The bias of a block's 32 rows, each 16 times: what its C tiles start from.
#[repr(C, align(64))]
struct BiasRows([f32; MB * 16]);

thread_local! {
    /// Each worker's packed B panel, kept between calls.
    static PANEL: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// c (m×n, rows `c_rs` apart) = a·b (+ c when `accumulate`), then `epi`, with A as [`pack`]
/// made it; B's 32-column panels shared among `threads`. The caller has checked that the
/// views fit their slices ([`super::gemm::sgemm_prepacked`]) and [`available`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed(
    m: usize,
    n: usize,
    k: usize,
    apacked: &[u32],
    b: Mat,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    epi: Epilogue,
    threads: usize,
) {
    assert!(available(), "AMX GEMM called where AMX-BF16 is not usable");
    assert!(m > 0 && n > 0 && k > 0 && c.len() >= (m - 1) * c_rs + n && c_rs >= n);
    assert_eq!(
        apacked.len(),
        packed_words(m, k),
        "A packed for another shape"
    );
    let (mp, np, kp) = (m.div_ceil(MB), n.div_ceil(NB), k.div_ceil(KB));
    let cp = CPtr(c.as_mut_ptr());
    let panel = |buf: &mut Vec<u32>, jp: usize| {
        let (j0, nr) = (jp * NB, NB.min(n - jp * NB));
        buf.resize(kp * 2 * TILE_WORDS, 0);
        // SAFETY: AVX-512 F, BW and BF16 are present (`available`); the panel holds kp
        // steps of two tiles.
        unsafe { pack_b(b, k, j0, nr, buf) };
        let mut out = Block([0.0; MB * NB]);
        let mut init = BiasRows([0.0; MB * 16]);
        let masks = half_masks(nr);
        // SAFETY: AMX is usable (`available`); CONFIG names the eight tiles `block` uses.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly)) };
        for ib in 0..mp {
            let mr = MB.min(m - ib * MB);
            if let Some(bias) = epi.bias {
                for (r, row) in init.0.chunks_exact_mut(16).enumerate() {
                    row.fill(if r < mr { bias[ib * MB + r] } else { 0.0 });
                }
            }
            // A whole block with nothing to do to it but the bias (a ResNet block's last conv,
            // before its residual) goes straight from the tiles to C; else through `out`.
            let direct = mr == MB && nr == NB && !accumulate && !epi.relu;
            // SAFETY: A's block ib holds kp steps of two tiles, as does the B panel; `out`
            // is 32×32 f32, and a direct block's rows ib·32.. + 32 and columns j0.. + 32 lie
            // inside c (checked above), written only by this panel's thread.
            unsafe {
                let a = apacked[ib * kp * 2 * TILE_WORDS..].as_ptr();
                let c = cp.ptr().add(ib * MB * c_rs + j0);
                if direct {
                    block(a, buf.as_ptr(), kp, &init, c, c_rs * 4);
                } else {
                    block(a, buf.as_ptr(), kp, &init, out.0.as_mut_ptr(), NB * 4);
                    store(&out, c, c_rs, mr, masks, accumulate, epi.relu);
                }
            }
        }
        // SAFETY: returns the tile state to its initial state (smaller context switches).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    };
    let run = |jp: usize| PANEL.with(|buf| panel(&mut buf.borrow_mut(), jp));
    if threads > 1 && np > 1 {
        (0..np).into_par_iter().for_each(run);
    } else {
        (0..np).for_each(run);
    }
}

/// The lanes of each 16-column half of a 32-column panel that exist, for `nr` columns.
fn half_masks(nr: usize) -> [__mmask16; 2] {
    [0, 16].map(|lo| match nr.saturating_sub(lo).min(16) {
        16 => 0xffff,
        cols => ((1u32 << cols) - 1) as __mmask16,
    })
}

/// Copies the block's first `mr` rows and the columns of `masks` ([`half_masks`]) to C (rows
/// `c_rs` apart), adding C's
/// own values when `accumulate`, then max(·, 0) when `relu` (the bias is in the block
/// already): the epilogue of [`super::avx512`]'s tiles, at 16 lanes (a scalar loop here took
/// longer than the tile products themselves on shallow convs).
///
/// # Safety
/// AVX-512F; `c` has `mr` rows of the masks' columns writable, `c_rs` apart.
#[target_feature(enable = "avx512f")]
unsafe fn store(
    out: &Block,
    c: *mut f32,
    c_rs: usize,
    mr: usize,
    masks: [__mmask16; 2],
    accumulate: bool,
    relu: bool,
) {
    let zero = _mm512_setzero_ps();
    for r in 0..mr {
        for (h, &mask) in masks.iter().enumerate().filter(|(_, &m)| m != 0) {
            let dst = c.add(r * c_rs + 16 * h);
            let mut v = _mm512_load_ps(out.0.as_ptr().add(r * NB + 16 * h));
            if accumulate {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst));
            }
            if relu {
                v = _mm512_max_ps(zero, v); // the second operand when NaN: kept, as torch
            }
            _mm512_mask_storeu_ps(dst, mask, v);
        }
    }
}

/// B's columns j0.. + nr (nr ≤ 32), every k, rounded to bf16 in the tiles' pair layout: for
/// each step of 32 k, two tiles (columns 0–15, 16–31), row p holding for each column j the
/// pair (B[2p][j], B[2p+1][j]). Zero past k and nr.
///
/// # Safety
/// AVX-512F, -BW and -BF16; `out` holds k.div_ceil(32)·512 words; B's view fits k×(j0+nr).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b(b: Mat, k: usize, j0: usize, nr: usize, out: &mut [u32]) {
    let kp = k.div_ceil(KB);
    if b.cs != 1 {
        for (w, o) in out.iter_mut().enumerate() {
            let (ks, h, p, j) = (w / 512, w / 256 % 2, w / 16 % 16, w % 16);
            let (row, col) = (ks * KB + 2 * p, h * 16 + j);
            let at = |r: usize| match r < k && col < nr {
                true => bf16_bits(b.data[r * b.rs + (j0 + col) * b.cs]) as u32,
                false => 0,
            };
            *o = at(row) | (at(row + 1) << 16);
        }
        return;
    }
    let zero = _mm512_setzero_ps();
    // 16-bit lane 2j takes lane j (the lower row), 2j+1 takes lane 16+j (the upper row).
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    for ks in 0..kp {
        for (h, &mask) in half_masks(nr).iter().enumerate() {
            let tile = out.as_mut_ptr().add((ks * 2 + h) * TILE_WORDS);
            for p in 0..16 {
                let r0 = ks * KB + 2 * p;
                let row = |r: usize| match r < k && mask != 0 {
                    true => {
                        _mm512_maskz_loadu_ps(mask, b.data.as_ptr().add(r * b.rs + j0 + h * 16))
                    }
                    false => zero,
                };
                // Both rows in one conversion (r0's 16 values low, r0+1's high), then
                // interleaved: word j = (B[r0][j], B[r0+1][j]).
                let both = _mm512_cvtne2ps_pbh(row(r0 + 1), row(r0));
                let pair = _mm512_permutexvar_epi16(
                    interleave,
                    std::mem::transmute::<__m512bh, __m512i>(both),
                );
                _mm512_storeu_si512(tile.add(p * 16) as *mut _, pair);
            }
        }
    }
}

/// One 32×32 block of C = init + A's block × the B panel over `kp` steps of 32 k, written
/// to `c` (rows `c_rs` bytes apart). `init` holds 32 rows of 16 f32 (each row's bias, 16
/// times: both column tiles of a row start from it). The tile configuration is loaded.
///
/// # Safety
/// AMX-BF16 usable and configured ([`CONFIG`]); `a` and `b` hold kp steps of two 1 KiB tiles;
/// `init` 512 f32; `c` 32 rows of 32 writable f32, `c_rs` bytes apart.
unsafe fn block(
    a: *const u32,
    b: *const u32,
    kp: usize,
    init: &BiasRows,
    c: *mut f32,
    c_rs: usize,
) {
    asm!(
        "tileloadd tmm0, [{i} + {s}*1]",
        "tileloadd tmm1, [{i} + {s}*1]",
        "tileloadd tmm2, [{i} + {s}*1 + 1024]",
        "tileloadd tmm3, [{i} + {s}*1 + 1024]",
        "2:",
        "tileloadd tmm4, [{a} + {s}*1]",
        "tileloadd tmm6, [{b} + {s}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{b} + {s}*1 + 1024]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{a} + {s}*1 + 1024]",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a}, 2048",
        "add {b}, 2048",
        "dec {n}",
        "jnz 2b",
        "tilestored [{c} + {cs}*1], tmm0",
        "tilestored [{c} + {cs}*1 + 64], tmm1",
        "tilestored [{c2} + {cs}*1], tmm2",
        "tilestored [{c2} + {cs}*1 + 64], tmm3",
        a = inout(reg) a => _,
        b = inout(reg) b => _,
        n = inout(reg) kp => _,
        i = in(reg) init.0.as_ptr(),
        s = in(reg) 64usize,
        c = in(reg) c,
        c2 = in(reg) c.byte_add(16 * c_rs),
        cs = in(reg) c_rs,
        options(nostack),
    );
}
