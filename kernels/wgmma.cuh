// Hopper's warpgroup matrix multiply (wgmma.mma_async, sm_90a) on operands in shared memory,
// and its twin: the CPU emulator runs the twin, and on a GPU the wgmma_check_<t> kernels
// (conv_wgmma.cu) compare the instruction with it, so the layouts below are tested everywhere.
//
// The one shape used: m64n128, k16 (BF16, F16) or k8 (TF32), f32 accumulators: D (64 x 128)
// += A (64 x k) · Bᵀ, B given as 128 rows of k (both "K-major": each row's k elements are
// contiguous, as a KRSC weight row and an NHWC pixel are). Each operand sits in shared memory in
// the 128-byte swizzle: rows of 128 bytes (one conv slice: 64 16-bit channels, 32 f32), 8 rows
// to a 1024-byte aligned atom, the 16-byte chunk q of row r stored at chunk q ^ (r % 8). So a
// k-step (32 bytes of each row) is the descriptor's start address plus 32 bytes; the swizzle
// XOR uses address bits 7..9, hence the alignment. Descriptor (PTX ISA "Matrix Descriptor
// Format"): bits 0..13 start address >> 4, 16..29 leading byte offset >> 4 (unused by swizzled
// K-major layouts: 1), 32..45 stride byte offset >> 4 (8 rows to the next 8: 1024), 62..63
// swizzle mode (1: 128 bytes).
// Accumulators per thread, as mma.sync's m16n8 per 8 columns: warp w of the warpgroup holds
// rows 16w.., d[j][q] = D(16w + g + 8(q / 2), 8j + 2t + q % 2), g = lane / 4, t = lane % 4.
// Asynchronous: wgmma_fence before the first wgmma touching the accumulators, wgmma_commit
// after a batch, wgmma_wait<N> before reading them or reusing the operands' shared memory;
// shared memory written by ordinary stores or cp.async needs fence_proxy_async in each writing
// thread before the barrier that precedes the wgmma reading it.
// Built for sm_90a only (conv_wgmma.cu; src/backend/kernels.rs compile_arch): elsewhere these
// compile to traps, so the file still builds for every architecture, and the host launches it
// only on compute capability 9.0.
#pragma once

#include "common.cuh"
#include "mma.cuh"

#if defined(GRADCAM_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GRADCAM_WGMMA 1
#endif

// The element types of the one shape: the operands' storage S picks one.
enum class Wk { Bf16, F16, Tf32 };
template <class S> constexpr Wk wk_of = Wk::Tf32;
template <> constexpr Wk wk_of<bf16> = Wk::Bf16;
template <> constexpr Wk wk_of<f16> = Wk::F16;

// A shared-memory address as descriptors hold it: the shared window's on a GPU, the offset
// into the block's dynamic shared memory in the emulator (whose base counts as aligned).
__device__ __forceinline__ unsigned smem_addr(const void* p) {
#ifdef GRADCAM_EMU
    return (unsigned)((const unsigned char*)p - (const unsigned char*)emu_dynamic_shared());
#else
    return shared_address(p);
#endif
}
// ...and back to a pointer.
__device__ __forceinline__ const unsigned char* smem_ptr(unsigned a) {
#ifdef GRADCAM_EMU
    return (const unsigned char*)emu_dynamic_shared() + a;
#else
    const unsigned char* p;
    asm("cvta.shared.u64 %0, %1;" : "=l"(p) : "l"((unsigned long long)a));
    return p;
#endif
}

// Where byte `kb` (0..127) of row `row` of a swizzled operand starting at `base` lives.
__device__ __forceinline__ unsigned swizzle128(unsigned base, int row, int kb) {
    return base + row * 128 + ((((kb >> 4) ^ (row & 7)) << 4) | (kb & 15));
}

// The descriptor of a swizzled K-major operand whose rows start at shared address `a` (the
// atom 1024-aligned; `a` may be 32·s past it for k-step s).
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned a) {
    return (unsigned long long)((a & 0x3ffffu) >> 4) | (1ull << 16) | ((1024ull >> 4) << 32) |
           (1ull << 62);
}

// d += A·Bᵀ for one k-step, decoded from the descriptors element by element, summing over k in
// order. Each thread computes its own fragment (no shuffles): the warpgroup's 128 threads
// together give D.
template <Wk E>
__device__ __forceinline__ void wgmma_twin(float (&d)[16][4], unsigned long long da,
                                           unsigned long long db) {
    const int lane = threadIdx.x % 32, w = (threadIdx.x / 32) % 4, g = lane / 4, t = lane % 4;
    constexpr int ES = E == Wk::Tf32 ? 4 : 2, K = 32 / ES;
    // Start address and stride byte offset from the descriptors; the 128-byte swizzle assumed.
    auto at = [](unsigned long long desc, int row, int k) {
        const unsigned start = (unsigned)(desc & 0x3fffu) << 4;
        const unsigned sbo = (unsigned)((desc >> 32) & 0x3fffu) << 4;
        const unsigned logical = start + (row / 8) * sbo + (row % 8) * 128 + k * ES;
        const unsigned phys = logical ^ (((logical >> 7) & 7u) << 4);
        const unsigned char* p = smem_ptr(phys);
        if (E == Wk::Tf32) return tf32_in(*reinterpret_cast<const unsigned*>(p));
        const unsigned bits = *reinterpret_cast<const unsigned short*>(p);
        return E == Wk::Bf16 ? __uint_as_float(bits << 16) : f16_float_soft(bits);
    };
    #pragma unroll
    for (int j = 0; j < 16; ++j)
        #pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int row = 16 * w + g + 8 * (q / 2), col = 8 * j + 2 * t + q % 2;
            float acc = d[j][q];
            for (int k = 0; k < K; ++k) acc += at(da, row, k) * at(db, col, k);
            d[j][q] = acc;
        }
}

// One wgmma.mma_async.sync.aligned.m64n128<SHAPE_TYPES> on the accumulators d (registers
// 4j + q = d[j][q]) with descriptors da, db: scale-d true (accumulate), A and B unscaled,
// then TRANS (", 0, 0": neither transposed; empty for TF32, which has no such immediates).
#define WGMMA_M64N128(SHAPE_TYPES, TRANS)                                                   \
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %66, 0; "                                 \
                 "wgmma.mma_async.sync.aligned.m64n128" SHAPE_TYPES " "                    \
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "                                                      \
                 "%64, %65, p, 1, 1" TRANS "; }"                                           \
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])           \
                 : "l"(da), "l"(db), "r"(1)                                                \
                 : "memory")

// d += A·Bᵀ for one k-step on the tensor cores (asynchronous; the twin in the emulator).
template <Wk E>
__device__ __forceinline__ void wgmma(float (&d)[16][4], unsigned long long da,
                                      unsigned long long db) {
#if defined(GRADCAM_EMU)
    wgmma_twin<E>(d, da, db);
#elif defined(GRADCAM_WGMMA)
    if constexpr (E == Wk::Bf16)
        WGMMA_M64N128("k16.f32.bf16.bf16", ", 0, 0");
    else if constexpr (E == Wk::F16)
        WGMMA_M64N128("k16.f32.f16.f16", ", 0, 0");
    else
        WGMMA_M64N128("k8.f32.tf32.tf32", "");  // TF32 takes no transpose immediates
#else
    asm volatile("trap;");
#endif
}

// Orders the accumulators' registers: before a batch of wgmma (wgmma.fence), and around the
// wait so the compiler neither reads them early nor moves other uses across.
__device__ __forceinline__ void wgmma_fence(float (&d)[16][4]) {
#ifndef GRADCAM_EMU
    #pragma unroll
    for (int j = 0; j < 16; ++j)
        #pragma unroll
        for (int q = 0; q < 4; ++q) asm volatile("" : "+f"(d[j][q])::"memory");
#ifdef GRADCAM_WGMMA
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#else
    asm volatile("trap;");
#endif
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if !defined(GRADCAM_EMU) && defined(GRADCAM_WGMMA)
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
// Waits until at most N committed batches are in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait(float (&d)[16][4]) {
#ifndef GRADCAM_EMU
#ifdef GRADCAM_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
    #pragma unroll
    for (int j = 0; j < 16; ++j)
        #pragma unroll
        for (int q = 0; q < 4; ++q) asm volatile("" : "+f"(d[j][q])::"memory");
#endif
}
// Makes this thread's shared-memory writes (stores, cp.async once waited for) visible to the
// tensor cores' reads (the async proxy); then a barrier.
__device__ __forceinline__ void fence_proxy_async() {
#if !defined(GRADCAM_EMU) && defined(GRADCAM_WGMMA)
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
