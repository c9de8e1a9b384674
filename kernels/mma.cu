// The tensor-core fragment layouts of mma.cuh, checked: one warp multiplies A (16x8, row-major)
// by B (8x8, row-major here) after rounding both to TF32, once with mma_tf32_m16n8k8 and once
// with its shuffle twin. d_mma and d_twin are 16x8 row-major.
//   mma_check_tf32: grid (1), block 32
#include "common.cuh"
#include "mma.cuh"

extern "C" __global__ void mma_check_tf32(const float* __restrict__ a, const float* __restrict__ b,
                                          float* __restrict__ d_mma, float* __restrict__ d_twin) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const unsigned fa[4] = {tf32_bits(a[g * 8 + t]), tf32_bits(a[(g + 8) * 8 + t]),
                            tf32_bits(a[g * 8 + t + 4]), tf32_bits(a[(g + 8) * 8 + t + 4])};
    const unsigned fb[2] = {tf32_bits(b[t * 8 + g]), tf32_bits(b[(t + 4) * 8 + g])};
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f}, e[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_tf32_m16n8k8(d, fa, fb);
    mma_tf32_m16n8k8_shfl(e, fa, fb);
    const int idx[4] = {g * 8 + 2 * t, g * 8 + 2 * t + 1, (g + 8) * 8 + 2 * t, (g + 8) * 8 + 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        d_mma[idx[i]] = d[i];
        d_twin[idx[i]] = e[i];
    }
}
