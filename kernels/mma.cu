// The tensor-core fragment layouts of mma.cuh, checked: one warp multiplies A by B (both
// row-major here) after rounding them, once with the mma instruction and once with its shuffle
// twin. d_mma and d_twin are 16x8 row-major.
//   mma_check_tf32: A 16x8, B 8x8 (TF32)      grid (1), block 32
//   mma_check_bf16: A 16x16, B 16x8 (BF16)    grid (1), block 32
//   mma_check_f16:  A 16x16, B 16x8 (F16)     grid (1), block 32
// and the matrix loads the 16-bit rings read their B fragments with:
//   ldmatrix_check: 32 rows of 8 16-bit elements (matrix q: rows 8q..8q+7) through
//                   ldmatrix_x4<trans> and its twin; each lane's 4 registers.  grid (1), block 32
#include "common.cuh"
#include "mma.cuh"

// Both results' accumulator fragments (the same layout for both shapes) to 16x8 row-major.
__device__ __forceinline__ void store_d(const float d[4], const float e[4], float* d_mma,
                                        float* d_twin) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int idx[4] = {g * 8 + 2 * t, g * 8 + 2 * t + 1, (g + 8) * 8 + 2 * t, (g + 8) * 8 + 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        d_mma[idx[i]] = d[i];
        d_twin[idx[i]] = e[i];
    }
}

extern "C" __global__ void mma_check_tf32(const float* __restrict__ a, const float* __restrict__ b,
                                          float* __restrict__ d_mma, float* __restrict__ d_twin) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const unsigned fa[4] = {tf32_bits(a[g * 8 + t]), tf32_bits(a[(g + 8) * 8 + t]),
                            tf32_bits(a[g * 8 + t + 4]), tf32_bits(a[(g + 8) * 8 + t + 4])};
    const unsigned fb[2] = {tf32_bits(b[t * 8 + g]), tf32_bits(b[(t + 4) * 8 + g])};
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f}, e[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_tf32_m16n8k8(d, fa, fb);
    mma_tf32_m16n8k8_shfl(e, fa, fb);
    store_d(d, e, d_mma, d_twin);
}

// The m16n8k16 shapes: operands rounded by `pack` (bf16x2 or f16x2).
template <Half16 E, class P>
__device__ __forceinline__ void mma_check_16(const float* __restrict__ a,
                                             const float* __restrict__ b, float* __restrict__ d_mma,
                                             float* __restrict__ d_twin, P pack) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const unsigned fa[4] = {pack(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]),
                            pack(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]),
                            pack(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]),
                            pack(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9])};
    const unsigned fb[2] = {pack(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]),
                            pack(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g])};
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f}, e[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_m16n8k16<E>(d, fa, fb);
    mma_m16n8k16_shfl<E>(e, fa, fb);
    store_d(d, e, d_mma, d_twin);
}

extern "C" __global__ void mma_check_bf16(const float* __restrict__ a, const float* __restrict__ b,
                                          float* __restrict__ d_mma, float* __restrict__ d_twin) {
    mma_check_16<Half16::Bf16>(a, b, d_mma, d_twin, bf16x2);
}

extern "C" __global__ void mma_check_f16(const float* __restrict__ a, const float* __restrict__ b,
                                         float* __restrict__ d_mma, float* __restrict__ d_twin) {
    mma_check_16<Half16::F16>(a, b, d_mma, d_twin, f16x2);
}

// ldmatrix...x4 (TRANS: .trans) on 32 random rows, by the instruction and by its twin.
extern "C" __global__ void ldmatrix_check(const unsigned* __restrict__ src,
                                          unsigned* __restrict__ out_ins,
                                          unsigned* __restrict__ out_twin, int trans) {
    struct alignas(16) Rows {  // rows of 16 bytes, 16-byte aligned as ldmatrix requires
        unsigned w[128];
    };
    __shared__ Rows rows;
    const int lane = threadIdx.x % 32;
    for (int i = lane; i < 128; i += 32) rows.w[i] = src[i];
    __syncthreads();
    unsigned a[4], b[4];
    if (trans) {
        ldmatrix_x4<true>(a, &rows.w[4 * lane]);  // lane l gives row l
        ldmatrix_x4_shfl<true>(b, &rows.w[4 * lane]);
    } else {
        ldmatrix_x4<false>(a, &rows.w[4 * lane]);
        ldmatrix_x4_shfl<false>(b, &rows.w[4 * lane]);
    }
    for (int q = 0; q < 4; ++q) {
        out_ins[4 * lane + q] = a[q];
        out_twin[4 * lane + q] = b[q];
    }
}
