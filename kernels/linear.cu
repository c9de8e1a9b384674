// Fully connected layers on the shared tiled GEMM, f32, bf16 or f16 storage (<t>), f32
// arithmetic.
//   linear_fwd_<t>:      y = F.linear(x, w, b)   x [N, in], w [out, in] → [N, out]
//                        grid (ceil(N / 64), ceil(out / 64), splits), block 256
//   linear_bwd_data_<t>: dx = dy @ w             dy [N, out] → [N, in]
//                        grid (ceil(N / 64), ceil(in / 64), splits), block 256
//   linear_sum_<t>:      y[e] = Σ_z part[z][e] (+ b[e % cols]), z in order; grid-stride
// Split K: at batch 64 a layer such as VGG's fc6 (25088 → 4096) has only 64 output tiles for
// 132 SMs, so the depth is cut into `splits` chunks of `chunk` (a multiple of 16) whose f32
// partial products go to `part` [splits][N][cols] and are summed by linear_sum in a fixed
// order (deterministic, unlike atomics). With part null (one split) the GEMM writes y itself.
#include "common.cuh"
#include "gemm_tile.cuh"

template <class T>
__device__ __forceinline__ void linear_fwd(const T* __restrict__ x, const T* __restrict__ w,
                                           const T* __restrict__ bias, T* __restrict__ y,
                                           float* __restrict__ part, int n, int in, int out,
                                           int chunk) {
    const int j0 = blockIdx.z * chunk, len = in - j0 < chunk ? in - j0 : chunk;
    auto a_at = [&](int o, int j) { return ld(w, (size_t)o * in + j0 + j); };
    auto b_at = [&](int j, int i) { return ld(x, (size_t)i * in + j0 + j); };
    float* p = part ? part + (size_t)blockIdx.z * n * out : nullptr;
    auto store = [&](int o, int i, float v) {
        if (p)
            p[(size_t)i * out + o] = v;
        else
            st(y, (size_t)i * out + o, bias ? v + ld(bias, o) : v);
    };
    gemm_tile<true, true>(out, n, len, a_at, b_at, store);
}

template <class T>
__device__ __forceinline__ void linear_bwd_data(const T* __restrict__ dy, const T* __restrict__ w,
                                                T* __restrict__ dx, float* __restrict__ part,
                                                int n, int in, int out, int chunk) {
    const int o0 = blockIdx.z * chunk, len = out - o0 < chunk ? out - o0 : chunk;
    auto a_at = [&](int j, int o) { return ld(w, (size_t)(o0 + o) * in + j); };
    auto b_at = [&](int o, int i) { return ld(dy, (size_t)i * out + o0 + o); };
    float* p = part ? part + (size_t)blockIdx.z * n * in : nullptr;
    auto store = [&](int j, int i, float v) {
        if (p)
            p[(size_t)i * in + j] = v;
        else
            st(dx, (size_t)i * in + j, v);
    };
    gemm_tile<false, true>(in, n, len, a_at, b_at, store);
}

template <class T>
__device__ __forceinline__ void linear_sum(const float* __restrict__ part,
                                           const T* __restrict__ bias, T* __restrict__ y,
                                           int splits, int count, int cols) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < count; e += gridDim.x * blockDim.x) {
        float v = 0.0f;
        for (int z = 0; z < splits; ++z) v += part[(size_t)z * count + e];
        st(y, e, bias ? v + ld(bias, e % cols) : v);
    }
}

extern "C" __global__ void linear_fwd_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ y,
                                          float* __restrict__ part, int n, int in, int out,
                                          int chunk) {
    linear_fwd(x, w, bias, y, part, n, in, out, chunk);
}
extern "C" __global__ void linear_fwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                           const bf16* __restrict__ bias, bf16* __restrict__ y,
                                           float* __restrict__ part, int n, int in, int out,
                                           int chunk) {
    linear_fwd(x, w, bias, y, part, n, in, out, chunk);
}
extern "C" __global__ void linear_fwd_f16(const f16* __restrict__ x, const f16* __restrict__ w,
                                          const f16* __restrict__ bias, f16* __restrict__ y,
                                          float* __restrict__ part, int n, int in, int out,
                                          int chunk) {
    linear_fwd(x, w, bias, y, part, n, in, out, chunk);
}
extern "C" __global__ void linear_bwd_data_f32(const float* __restrict__ dy,
                                               const float* __restrict__ w, float* __restrict__ dx,
                                               float* __restrict__ part, int n, int in, int out,
                                               int chunk) {
    linear_bwd_data(dy, w, dx, part, n, in, out, chunk);
}
extern "C" __global__ void linear_bwd_data_bf16(const bf16* __restrict__ dy,
                                                const bf16* __restrict__ w, bf16* __restrict__ dx,
                                                float* __restrict__ part, int n, int in, int out,
                                                int chunk) {
    linear_bwd_data(dy, w, dx, part, n, in, out, chunk);
}
extern "C" __global__ void linear_bwd_data_f16(const f16* __restrict__ dy,
                                               const f16* __restrict__ w, f16* __restrict__ dx,
                                               float* __restrict__ part, int n, int in, int out,
                                               int chunk) {
    linear_bwd_data(dy, w, dx, part, n, in, out, chunk);
}
extern "C" __global__ void linear_sum_f32(const float* __restrict__ part,
                                          const float* __restrict__ bias, float* __restrict__ y,
                                          int splits, int count, int cols) {
    linear_sum(part, bias, y, splits, count, cols);
}
extern "C" __global__ void linear_sum_bf16(const float* __restrict__ part,
                                           const bf16* __restrict__ bias, bf16* __restrict__ y,
                                           int splits, int count, int cols) {
    linear_sum(part, bias, y, splits, count, cols);
}
extern "C" __global__ void linear_sum_f16(const float* __restrict__ part,
                                          const f16* __restrict__ bias, f16* __restrict__ y,
                                          int splits, int count, int cols) {
    linear_sum(part, bias, y, splits, count, cols);
}
