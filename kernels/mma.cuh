// Tensor-core multiply-accumulate (mma.sync, sm_80 and later) and its twin written with warp
// shuffles: the CPU emulator runs the twin, and on a GPU the mma_check_tf32 kernel (mma.cu)
// compares the instruction with it, so the fragment layouts below are tested everywhere.
//
// Fragments per PTX ISA "Matrix Fragments for mma.m16n8k8 / m16n8k16", with g = lane / 4 and
// t = lane % 4; A row-major, B column-major, f32 accumulators in both shapes:
//   d[0] = D(g, 2t)    d[1] = D(g, 2t+1)    d[2] = D(g+8, 2t)    d[3] = D(g+8, 2t+1)
// TF32 m16n8k8 (one element per register):
//   a[0] = A(g, t)     a[1] = A(g+8, t)     a[2] = A(g, t+4)     a[3] = A(g+8, t+4)
//   b[0] = B(t, g)     b[1] = B(t+4, g)
// BF16 and F16 m16n8k16 (two elements per register, the lower k in the low half):
//   a[0] = A(g, 2t..2t+1)    a[1] = A(g+8, 2t..2t+1)  a[2] = A(g, 2t+8..2t+9)  a[3] = A(g+8, 2t+8..)
//   b[0] = B(2t..2t+1, g)    b[1] = B(2t+8..2t+9, g)
#pragma once

#include "common.cuh"

#ifndef GRADCAM_EMU
// A generic pointer into shared memory as the 32-bit shared-window address PTX's shared-memory
// instructions take.
__device__ __forceinline__ unsigned shared_address(const void* p) {
    unsigned s;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(p));
    return s;
}
#endif

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8x8 matrices of 16-bit elements,
// lanes 8q..8q+7 giving the addresses of matrix q's rows 0..7 (16 bytes each, 16-byte aligned,
// in shared memory). Lane (g = lane / 4, t = lane % 4) receives in r[q], the first in the low
// half: plain, the elements (row g, column 2t) and (row g, column 2t + 1) of matrix q; TRANS,
// (row 2t, column g) and (row 2t + 1, column g). Either way an m16n8k16 B fragment (b[0] or
// b[1]) per matrix: TRANS from rows along the depth ([depth][pixel], the NCHW ring), plain from
// rows along the pixels ([pixel][depth], the channels-last convs). The twin (the emulator's,
// and checked against the instruction by mma.cu's ldmatrix_check) gathers the row addresses
// by warp shuffles. All 32 lanes must call it together.
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4_shfl(unsigned r[4], const void* row) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const unsigned long long mine = (unsigned long long)row;
    auto row_of = [&](int src) {  // the row address lane `src` gave
        const unsigned lo = __shfl_sync(0xffffffffu, (unsigned)mine, src);
        const unsigned hi = __shfl_sync(0xffffffffu, (unsigned)(mine >> 32), src);
        return (const unsigned short*)(((unsigned long long)hi << 32) | lo);
    };
    for (int q = 0; q < 4; ++q) {
        if (TRANS) {
            const unsigned short* r0 = row_of(8 * q + 2 * t);
            const unsigned short* r1 = row_of(8 * q + 2 * t + 1);
            r[q] = (unsigned)r0[g] | ((unsigned)r1[g] << 16);
        } else {
            const unsigned short* rg = row_of(8 * q + g);
            r[q] = (unsigned)rg[2 * t] | ((unsigned)rg[2 * t + 1] << 16);
        }
    }
}

template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
#ifdef GRADCAM_EMU
    ldmatrix_x4_shfl<TRANS>(r, row);
#else
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(shared_address(row))
                     : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(shared_address(row))
                     : "memory");
#endif
}

// f32 → tf32 (10 mantissa bits, kept in an f32 bit pattern with the low 13 bits zero), rounding
// to nearest with ties away from zero, as cvt.rna.tf32.f32.
__device__ __forceinline__ unsigned tf32_bits(float x) {
#ifdef GRADCAM_EMU
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;  // inf and NaN stay as they are
    return u & 0xffffe000u;
#else
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return u;
#endif
}

// A TF32 operand as the tensor cores read it: the f32 pattern's top 19 bits (operands staged
// without rounding, by cp.async, are truncated; rounded ones are unchanged).
__device__ __forceinline__ float tf32_in(unsigned v) { return __uint_as_float(v & 0xffffe000u); }

// d += A·B by warp shuffles: every lane gathers its two rows of A and two columns of B from
// the lanes that hold them, then sums over k in order. All 32 lanes must call it together.
__device__ __forceinline__ void mma_tf32_m16n8k8_shfl(float d[4], const unsigned a[4],
                                                      const unsigned b[2]) {
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    float row0[8], row1[8], col0[8], col1[8];
    for (int s = 0; s < 4; ++s) {
        // Row g of A sits in lanes 4g..4g+3 (k = s in a[0], k = s+4 in a[2]); row g+8 likewise.
        row0[s] = tf32_in(__shfl_sync(full, a[0], g * 4 + s));
        row1[s] = tf32_in(__shfl_sync(full, a[1], g * 4 + s));
        row0[s + 4] = tf32_in(__shfl_sync(full, a[2], g * 4 + s));
        row1[s + 4] = tf32_in(__shfl_sync(full, a[3], g * 4 + s));
        // Column n of B sits in lanes 4n..4n+3 (k = s in b[0], k = s+4 in b[1]).
        col0[s] = tf32_in(__shfl_sync(full, b[0], 2 * t * 4 + s));
        col0[s + 4] = tf32_in(__shfl_sync(full, b[1], 2 * t * 4 + s));
        col1[s] = tf32_in(__shfl_sync(full, b[0], (2 * t + 1) * 4 + s));
        col1[s + 4] = tf32_in(__shfl_sync(full, b[1], (2 * t + 1) * 4 + s));
    }
    for (int k = 0; k < 8; ++k) {
        d[0] += row0[k] * col0[k];
        d[1] += row0[k] * col1[k];
        d[2] += row1[k] * col0[k];
        d[3] += row1[k] * col1[k];
    }
}

// d += A·B on the tensor cores (the shuffle twin in the emulator).
__device__ __forceinline__ void mma_tf32_m16n8k8(float d[4], const unsigned a[4],
                                                 const unsigned b[2]) {
#ifdef GRADCAM_EMU
    mma_tf32_m16n8k8_shfl(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// cp.async (sm_80+): BYTES (4, 8, or 16, both addresses aligned to BYTES) from global to shared
// memory without passing through registers, zero-filled when `ok` is false (nothing is read
// then); visible to the block after cp_async_wait and a barrier. 16-byte copies bypass L1
// (.cg; PTX allows .ca only below 16). The emulator copies at once.
template <int BYTES>
__device__ __forceinline__ void cp_async(unsigned* dst, const void* src, bool ok) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "4-, 8- or 16-byte copies");
#ifdef GRADCAM_EMU
    for (int i = 0; i < BYTES / 4; ++i) dst[i] = ok ? static_cast<const unsigned*>(src)[i] : 0u;
#else
    const unsigned s = shared_address(dst);
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src),
                     "r"(ok ? 16 : 0)
                     : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(s), "l"(src),
                     "n"(BYTES), "r"(ok ? BYTES : 0)
                     : "memory");
#endif
}
// Closes the group of cp.async issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifndef GRADCAM_EMU
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifndef GRADCAM_EMU
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// Two bf16 in one register: `lo` (the lower k) in bits 0..15.
__device__ __forceinline__ unsigned bf16x2(float lo, float hi) {
    return bf16_bits(lo) | (bf16_bits(hi) << 16);
}

// The same for values that are bf16 already (loaded from bf16 storage, or zero): their top
// 16 bits, no rounding work (the staging loops of gemm_tile_mma run this per word).
__device__ __forceinline__ unsigned bf16x2_exact(float lo, float hi) {
    return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xffff0000u);
}

// Two f16 in one register, `lo` in bits 0..15, from values f16 holds exactly (loaded from f16
// storage, or zero): one cvt.rn.f16x2.f32 on the GPU (its first source goes to the high half).
__device__ __forceinline__ unsigned f16x2_exact(float lo, float hi) {
#ifdef GRADCAM_EMU
    return f16_bits_soft(lo) | (f16_bits_soft(hi) << 16);
#else
    unsigned v;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(v) : "f"(hi), "f"(lo));
    return v;
#endif
}

// Rounding any f32 pair (the fragment check's inputs).
__device__ __forceinline__ unsigned f16x2(float lo, float hi) {
    return f16_bits(lo) | (f16_bits(hi) << 16);
}

// The 16-bit operand types of the m16n8k16 tensor-core shape.
enum class Half16 { Bf16, F16 };

// The element of a packed pair at bits 16·H.. as f32.
template <Half16 E, int H>
__device__ __forceinline__ float half_at(unsigned v) {
    const unsigned bits = H ? v >> 16 : v & 0xffffu;
    return E == Half16::Bf16 ? __uint_as_float(bits << 16) : f16_float_soft(bits);
}

// d += A·B (m16n8k16, 16-bit operands E) by warp shuffles, summing over k in order.
template <Half16 E>
__device__ __forceinline__ void mma_m16n8k16_shfl(float d[4], const unsigned a[4],
                                                  const unsigned b[2]) {
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    float row0[16], row1[16], col0[16], col1[16];
    for (int s = 0; s < 4; ++s) {
        // Row g of A: lane 4g+s holds k = 2s, 2s+1 (a[0]) and 2s+8, 2s+9 (a[2]); row g+8 in
        // a[1] and a[3]. Column n of B: lane 4n+s holds k = 2s, 2s+1 (b[0]), 2s+8, 2s+9 (b[1]).
        const unsigned r0a = __shfl_sync(full, a[0], g * 4 + s);
        const unsigned r1a = __shfl_sync(full, a[1], g * 4 + s);
        const unsigned r0b = __shfl_sync(full, a[2], g * 4 + s);
        const unsigned r1b = __shfl_sync(full, a[3], g * 4 + s);
        const unsigned c0a = __shfl_sync(full, b[0], 2 * t * 4 + s);
        const unsigned c0b = __shfl_sync(full, b[1], 2 * t * 4 + s);
        const unsigned c1a = __shfl_sync(full, b[0], (2 * t + 1) * 4 + s);
        const unsigned c1b = __shfl_sync(full, b[1], (2 * t + 1) * 4 + s);
        row0[2 * s] = half_at<E, 0>(r0a), row0[2 * s + 1] = half_at<E, 1>(r0a);
        row0[2 * s + 8] = half_at<E, 0>(r0b), row0[2 * s + 9] = half_at<E, 1>(r0b);
        row1[2 * s] = half_at<E, 0>(r1a), row1[2 * s + 1] = half_at<E, 1>(r1a);
        row1[2 * s + 8] = half_at<E, 0>(r1b), row1[2 * s + 9] = half_at<E, 1>(r1b);
        col0[2 * s] = half_at<E, 0>(c0a), col0[2 * s + 1] = half_at<E, 1>(c0a);
        col0[2 * s + 8] = half_at<E, 0>(c0b), col0[2 * s + 9] = half_at<E, 1>(c0b);
        col1[2 * s] = half_at<E, 0>(c1a), col1[2 * s + 1] = half_at<E, 1>(c1a);
        col1[2 * s + 8] = half_at<E, 0>(c1b), col1[2 * s + 9] = half_at<E, 1>(c1b);
    }
    for (int k = 0; k < 16; ++k) {
        d[0] += row0[k] * col0[k];
        d[1] += row0[k] * col1[k];
        d[2] += row1[k] * col0[k];
        d[3] += row1[k] * col1[k];
    }
}

// d += A·B (m16n8k16, 16-bit operands E) on the tensor cores (the shuffle twin in the emulator).
template <Half16 E>
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2]) {
#ifdef GRADCAM_EMU
    mma_m16n8k16_shfl<E>(d, a, b);
#else
    if (E == Half16::Bf16)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
