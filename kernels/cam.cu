// Grad-CAM's two reductions.
//   grad_pool_f32:        alpha = grad.mean(dim=(2, 3))                        [N,K,H,W] → [N,K]
//     grid (N·K), block 256: one block per plane, a strided sum then a block reduction.
//   weighted_sum_relu_f32: map = F.relu((alpha[:, :, None, None] * a).sum(1))  → [N,H,W]
//     grid (ceil(H·W / 256), N), block 256: one thread per output pixel, a loop over K.
#include "common.cuh"

extern "C" __global__ void grad_pool_f32(const float* __restrict__ grad, float* __restrict__ alpha,
                                         int hw) {
    __shared__ float scratch[32];
    const float* plane = grad + (size_t)blockIdx.x * hw;
    float s = 0.0f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) s += plane[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) alpha[blockIdx.x] = s / (float)hw;
}

extern "C" __global__ void weighted_sum_relu_f32(const float* __restrict__ a,
                                                 const float* __restrict__ alpha,
                                                 float* __restrict__ map, int k, int hw) {
    const int n = blockIdx.y;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw) return;
    const float* an = a + (size_t)n * k * hw;
    float s = 0.0f;
    for (int c = 0; c < k; ++c) s += alpha[n * k + c] * an[(size_t)c * hw + p];
    map[(size_t)n * hw + p] = fmaxf(s, 0.0f);
}
