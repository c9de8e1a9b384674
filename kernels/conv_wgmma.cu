// Channels-last forward convolutions on Hopper's warpgroup tensor cores (GRADCAM_CONV_WGMMA=1,
// compute capability 9.0; built for sm_90a, see wgmma.cuh):
//   conv2d_fwd_wgmma_<t>_m64|m128[_s6]|m256 (t: tf32, bf16, f16): conv_nhwc.cu's
//       convolution (x, residual, y [N][H][W][C]; w the KRSC copy, TF32-rounded for tf32;
//       groups 1, K a multiple of 8), over slices of 128 bytes per row: 64 channels at 16 bits
//       (C a multiple of 64), 32 in TF32 (C a multiple of 32), channel blocks outer and taps
//       inner. Tiles of 64, 128 or 256 output channels (one, two or four warpgroups, block
//       128, 256 or 512) by 128 output pixels. grid (ceil(N·OH·OW / 128), ceil(K / TM));
//       dynamic shared memory 4 stages (_s6: 6) of (TM + 128) rows of 128 bytes, plus 1024
//       bytes to align them (the host's GpuBackend::nhwc_choices matches). The 128-channel
//       tile runs one block per SM, so only its own ring hides the copies' latency: _s6 (193
//       KB) keeps four slices in flight instead of two; tuning picks per layer (the same bits
//       either way). The 64-channel tile hides it with two blocks per SM instead.
//   wgmma_check_<t>: one warpgroup multiplies A [64][KD] by B [128][KD]ᵀ (f32 in, rounded to
//       the element type; KD = 64 at 16 bits, 32 TF32), staged as the conv stages its slices,
//       by the instruction and by its twin (wgmma.cuh); d_ins and d_twin [64][128].
//       grid (1), block 128, dynamic shared memory (64 + 128) · 128 + 1024.
// Why: mma.sync (conv_nhwc.cu) feeds the tensor cores from registers, a warp at a time, 16x8
// per instruction, with ldmatrix loads between; one wgmma per warpgroup computes 64x128 per
// k-step straight from shared memory, asynchronously, so the next slices' copies and the
// barrier overlap the arithmetic. The operands go by 16-byte cp.async copies (zero-filled
// outside the image) into a ring (4 or 6 stages) in the 128-byte swizzle: a row's 8 chunks
// are spread over the banks both when the copies land and when the tensor cores read. At slice
// k the ring holds: k - 1 (its wgmma may still run), k (read now), k + 1 to k + STAGES - 3
// (landing) and k + STAGES - 2 (issued now).
// The accumulation order inside the hardware is not mma.sync's, so results differ from
// conv_nhwc.cu's in the last bits: checked against the CPU within the precision's tolerance
// (tests/gpu_emulated.rs, the GPU selftest), not bit for bit, and not a tuning candidate of the
// mma.sync kernels; the tiles here give each other's bits (each output's sum is the same
// sequence of m64n128 k-steps) and are tuned between.
// Versions: 1 (2026-11-29); 2 (2026-11-29): the ring depth a template parameter, _s6.
#include "common.cuh"
#include "mma.cuh"
#include "gemm_tile.cuh"
#include "nhwc.cuh"
#include "wgmma.cuh"

constexpr int WGMMA_TN = 128;

template <class S, int WG, int STAGES>
__device__ __forceinline__ void conv2d_fwd_wgmma(const S* __restrict__ x, const S* __restrict__ w,
                                                 const S* __restrict__ bias,
                                                 const S* __restrict__ residual, S* __restrict__ y,
                                                 int n, int c, int h, int wd, int k, int r, int s,
                                                 int oh, int ow, int sh, int sw, int ph, int pw,
                                                 int dh, int dw, int relu) {
    constexpr Wk E = wk_of<S>;
    constexpr int TM = 64 * WG, TN = WGMMA_TN, THREADS = 128 * WG;
    static_assert(STAGES >= 3 && STAGES * (TM + TN) * 128 + 1024 <= 227 * 1024, "ring size");
    constexpr int KD = 128 / (int)sizeof(S);  // channels per slice: rows of 128 bytes
    constexpr int EPC = 16 / (int)sizeof(S);  // channels per 16-byte copy
    constexpr int A_BYTES = TM * 128, STAGE = (TM + TN) * 128;
    constexpr int NA = TM * 8 / THREADS, NB = TN * 8 / THREADS;  // copies per thread and slice
    static_assert(TM * 8 % THREADS == 0 && TN * 8 % THREADS == 0, "whole copies per thread");
    DYNAMIC_SHARED(unsigned, dyn);
    // The swizzle needs 1024-byte aligned stages: the host adds 1024 bytes to align them.
    const unsigned dyn_addr = smem_addr(dyn), pad = (1024u - (dyn_addr & 1023u)) & 1023u;
    unsigned char* ring = reinterpret_cast<unsigned char*>(dyn) + pad;
    const unsigned ring_addr = dyn_addr + pad;
    const int rows = k, cols = n * oh * ow, rs = r * s, ohw = oh * ow;
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4;
    const int c0 = blockIdx.x * TN, r0 = blockIdx.y * TM;
    // Copy v = tid + THREADS i moves chunk v % 8 of row v / 8: 8 neighbouring threads read a
    // row's 128 contiguous bytes. B's rows are output pixels: their input origin, once.
    const S* b_base[NB];
    int b_iy[NB], b_ix[NB];
    #pragma unroll
    for (int i = 0; i < NB; ++i) {
        const int col = c0 + (tid + THREADS * i) / 8;
        if (col < cols) {
            const int ni = col / ohw, p = col - ni * ohw, oy = p / ow, ox = p - oy * ow;
            b_base[i] = x + (size_t)ni * h * wd * c;
            b_iy[i] = oy * sh - ph, b_ix[i] = ox * sw - pw;
        } else {
            b_base[i] = x, b_iy[i] = -(1 << 29), b_ix[i] = 0;  // never inside
        }
    }
    auto chunk = [&](int st, int off, int row, int part) {
        return reinterpret_cast<unsigned*>(ring + st * STAGE + off + row * 128 +
                                           ((part ^ (row & 7)) << 4));
    };
    NhwcSlice<KD> sl{0, 0, 0, 0};
    auto issue = [&](int st) {
        #pragma unroll
        for (int i = 0; i < NA; ++i) {
            const int v = tid + THREADS * i, row = v / 8, part = v % 8;
            const bool ok = r0 + row < rows;
            const S* a = w + ((size_t)(ok ? r0 + row : 0) * rs + sl.tap) * c + sl.ch0 + EPC * part;
            cp_async<16>(chunk(st, 0, row, part), a, ok);
        }
        #pragma unroll
        for (int i = 0; i < NB; ++i) {
            const int v = tid + THREADS * i, row = v / 8, part = v % 8;
            const int iy = b_iy[i] + sl.ry * dh, ix = b_ix[i] + sl.sx * dw;
            const bool in = iy >= 0 && iy < h && ix >= 0 && ix < wd;
            const S* b = in ? b_base[i] + ((size_t)iy * wd + ix) * c + sl.ch0 + EPC * part : x;
            cp_async<16>(chunk(st, A_BYTES, row, part), b, in);
        }
        sl.next(rs, s);
    };
    float acc[1][16][4];
    zero_acc(acc);
    const int slices = (c / KD) * rs;
    #pragma unroll
    for (int st = 0; st < STAGES - 2; ++st) {
        if (st < slices) issue(st);
        cp_async_commit();  // empty groups too, so the wait counts stay uniform
    }
    for (int kk = 0; kk < slices; ++kk) {
        cp_async_wait<STAGES - 3>();  // slice kk has landed (this thread's copies)
        fence_proxy_async();          // ...and is visible to the tensor cores
        __syncthreads();              // everyone's; and slice kk - 2's wgmma are done
        if (kk + STAGES - 2 < slices) issue((kk + STAGES - 2) % STAGES);
        cp_async_commit();
        const unsigned a0 = ring_addr + (kk % STAGES) * STAGE + wg * 64 * 128;
        const unsigned b0 = ring_addr + (kk % STAGES) * STAGE + A_BYTES;
        wgmma_fence(acc[0]);
        #pragma unroll
        for (int ks = 0; ks < 4; ++ks)  // k16 (16-bit) or k8 (TF32): 32 bytes of each row
            wgmma<E>(acc[0], wgmma_desc(a0 + 32 * ks), wgmma_desc(b0 + 32 * ks));
        wgmma_commit();
        wgmma_wait<1>(acc[0]);  // slice kk - 1's are done: its stage is free after the barrier
    }
    wgmma_wait<0>(acc[0]);
    cp_async_wait<0>();
    __syncthreads();  // every warpgroup is done with the ring
    nhwc_epilogue<S, TM, TN, 1, 16, THREADS>(acc, wg * 64 + warp * 16, 0,
                                             reinterpret_cast<float*>(ring), bias, residual, y,
                                             rows, cols, r0, c0, relu);
}

#define ONE_PER_SM_512 __launch_bounds__(512, 1)
#define ONE_PER_SM_256 __launch_bounds__(256, 1)
#define TWO_PER_SM_128 __launch_bounds__(128, 2)
// Entries <t>_m<TM>[_s<STAGES>] (no suffix: 4 stages), written out: build.rs and the emulator
// find entry points by their `extern "C" __global__ void` lines.
extern "C" __global__ void TWO_PER_SM_128 conv2d_fwd_wgmma_tf32_m64(CONV2D_FWD_NHWC_PARAMS(float)) {
    conv2d_fwd_wgmma<float, 1, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void ONE_PER_SM_256 conv2d_fwd_wgmma_tf32_m128(CONV2D_FWD_NHWC_PARAMS(float)) {
    conv2d_fwd_wgmma<float, 2, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void ONE_PER_SM_256 conv2d_fwd_wgmma_tf32_m128_s6(CONV2D_FWD_NHWC_PARAMS(float)) {
    conv2d_fwd_wgmma<float, 2, 6>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void TWO_PER_SM_128 conv2d_fwd_wgmma_bf16_m64(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_wgmma<bf16, 1, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void ONE_PER_SM_256 conv2d_fwd_wgmma_bf16_m128(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_wgmma<bf16, 2, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void ONE_PER_SM_256 conv2d_fwd_wgmma_bf16_m128_s6(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_wgmma<bf16, 2, 6>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void TWO_PER_SM_128 conv2d_fwd_wgmma_f16_m64(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_wgmma<f16, 1, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void ONE_PER_SM_256 conv2d_fwd_wgmma_f16_m128(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_wgmma<f16, 2, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void ONE_PER_SM_256 conv2d_fwd_wgmma_f16_m128_s6(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_wgmma<f16, 2, 6>(CONV2D_FWD_NHWC_ARGS);
}
// 256 output channels (four warpgroups, block 512): per product, half the pixel rows of the
// 128-channel tiles move from L2 to shared memory. 126 registers (ptxas, sm_90a), 193 KB.
extern "C" __global__ void ONE_PER_SM_512 conv2d_fwd_wgmma_tf32_m256(CONV2D_FWD_NHWC_PARAMS(float)) {
    conv2d_fwd_wgmma<float, 4, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void ONE_PER_SM_512 conv2d_fwd_wgmma_bf16_m256(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_wgmma<bf16, 4, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void ONE_PER_SM_512 conv2d_fwd_wgmma_f16_m256(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_wgmma<f16, 4, 4>(CONV2D_FWD_NHWC_ARGS);
}

// The element bits of a rounded f32 as stored in a slice row.
__device__ __forceinline__ void put_elem(unsigned char* p, float v, float*) {
    *reinterpret_cast<unsigned*>(p) = tf32_bits(v);
}
__device__ __forceinline__ void put_elem(unsigned char* p, float v, bf16*) {
    *reinterpret_cast<unsigned short*>(p) = (unsigned short)bf16_bits(v);
}
__device__ __forceinline__ void put_elem(unsigned char* p, float v, f16*) {
    *reinterpret_cast<unsigned short*>(p) = (unsigned short)f16_bits(v);
}

template <class S>
__device__ __forceinline__ void wgmma_check(const float* __restrict__ a,
                                            const float* __restrict__ b, float* __restrict__ d_ins,
                                            float* __restrict__ d_twin) {
    constexpr Wk E = wk_of<S>;
    constexpr int KD = 128 / (int)sizeof(S), ES = (int)sizeof(S);
    DYNAMIC_SHARED(unsigned, dyn);
    const unsigned dyn_addr = smem_addr(dyn), pad = (1024u - (dyn_addr & 1023u)) & 1023u;
    unsigned char* ring = reinterpret_cast<unsigned char*>(dyn) + pad;
    const unsigned a0 = dyn_addr + pad, b0 = a0 + 64 * 128;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
    for (int i = tid; i < 64 * KD; i += 128)
        put_elem(ring + (swizzle128(a0, i / KD, (i % KD) * ES) - a0), a[i], (S*)nullptr);
    for (int i = tid; i < 128 * KD; i += 128)
        put_elem(ring + (swizzle128(b0, i / KD, (i % KD) * ES) - a0), b[i], (S*)nullptr);
    fence_proxy_async();
    __syncthreads();
    float d[16][4], e[16][4];
    #pragma unroll
    for (int j = 0; j < 16; ++j)
        #pragma unroll
        for (int q = 0; q < 4; ++q) d[j][q] = e[j][q] = 0.0f;
    wgmma_fence(d);
    #pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma<E>(d, wgmma_desc(a0 + 32 * ks), wgmma_desc(b0 + 32 * ks));
    wgmma_commit();
    wgmma_wait<0>(d);
    for (int ks = 0; ks < 4; ++ks) wgmma_twin<E>(e, wgmma_desc(a0 + 32 * ks), wgmma_desc(b0 + 32 * ks));
    #pragma unroll
    for (int j = 0; j < 16; ++j)
        #pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int row = 16 * warp + g + 8 * (q / 2), col = 8 * j + 2 * t + q % 2;
            d_ins[row * 128 + col] = d[j][q];
            d_twin[row * 128 + col] = e[j][q];
        }
}

extern "C" __global__ void wgmma_check_tf32(const float* __restrict__ a, const float* __restrict__ b,
                                            float* __restrict__ d_ins, float* __restrict__ d_twin) {
    wgmma_check<float>(a, b, d_ins, d_twin);
}
extern "C" __global__ void wgmma_check_bf16(const float* __restrict__ a, const float* __restrict__ b,
                                            float* __restrict__ d_ins, float* __restrict__ d_twin) {
    wgmma_check<bf16>(a, b, d_ins, d_twin);
}
extern "C" __global__ void wgmma_check_f16(const float* __restrict__ a, const float* __restrict__ b,
                                           float* __restrict__ d_ins, float* __restrict__ d_twin) {
    wgmma_check<f16>(a, b, d_ins, d_twin);
}
