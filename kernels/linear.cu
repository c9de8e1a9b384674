// Fully connected layers on the shared tiled GEMM.
//   linear_fwd_f32:      y = F.linear(x, w, b)   x [N, in], w [out, in] → [N, out]
//                        grid (ceil(N / 64), ceil(out / 64)), block 256
//   linear_bwd_data_f32: dx = dy @ w             dy [N, out] → [N, in]
//                        grid (ceil(N / 64), ceil(in / 64)), block 256
#include "common.cuh"
#include "gemm_tile.cuh"

extern "C" __global__ void linear_fwd_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ y,
                                          int n, int in, int out) {
    auto a_at = [&](int o, int j) { return w[(size_t)o * in + j]; };
    auto b_at = [&](int j, int i) { return x[(size_t)i * in + j]; };
    auto store = [&](int o, int i, float v) { y[(size_t)i * out + o] = bias ? v + bias[o] : v; };
    gemm_tile(out, n, in, a_at, b_at, store);
}

extern "C" __global__ void linear_bwd_data_f32(const float* __restrict__ dy,
                                               const float* __restrict__ w, float* __restrict__ dx,
                                               int n, int in, int out) {
    auto a_at = [&](int j, int o) { return w[(size_t)o * in + j]; };
    auto b_at = [&](int o, int i) { return dy[(size_t)i * out + o]; };
    auto store = [&](int j, int i, float v) { dx[(size_t)i * in + j] = v; };
    gemm_tile(in, n, out, a_at, b_at, store);
}
