// Fully connected layers on the shared tiled GEMM, f32 or bf16 storage (<t>), f32 arithmetic.
//   linear_fwd_<t>:      y = F.linear(x, w, b)   x [N, in], w [out, in] → [N, out]
//                        grid (ceil(N / 64), ceil(out / 64)), block 256
//   linear_bwd_data_<t>: dx = dy @ w             dy [N, out] → [N, in]
//                        grid (ceil(N / 64), ceil(in / 64)), block 256
#include "common.cuh"
#include "gemm_tile.cuh"

template <class T>
__device__ __forceinline__ void linear_fwd(const T* __restrict__ x, const T* __restrict__ w,
                                           const T* __restrict__ bias, T* __restrict__ y, int n,
                                           int in, int out) {
    auto a_at = [&](int o, int j) { return ld(w, (size_t)o * in + j); };
    auto b_at = [&](int j, int i) { return ld(x, (size_t)i * in + j); };
    auto store = [&](int o, int i, float v) {
        st(y, (size_t)i * out + o, bias ? v + ld(bias, o) : v);
    };
    gemm_tile<true, true>(out, n, in, a_at, b_at, store);
}

template <class T>
__device__ __forceinline__ void linear_bwd_data(const T* __restrict__ dy, const T* __restrict__ w,
                                                T* __restrict__ dx, int n, int in, int out) {
    auto a_at = [&](int j, int o) { return ld(w, (size_t)o * in + j); };
    auto b_at = [&](int o, int i) { return ld(dy, (size_t)i * out + o); };
    auto store = [&](int j, int i, float v) { st(dx, (size_t)i * in + j, v); };
    gemm_tile<false, true>(in, n, out, a_at, b_at, store);
}

extern "C" __global__ void linear_fwd_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ y,
                                          int n, int in, int out) {
    linear_fwd(x, w, bias, y, n, in, out);
}
extern "C" __global__ void linear_fwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                           const bf16* __restrict__ bias, bf16* __restrict__ y,
                                           int n, int in, int out) {
    linear_fwd(x, w, bias, y, n, in, out);
}
extern "C" __global__ void linear_bwd_data_f32(const float* __restrict__ dy,
                                               const float* __restrict__ w, float* __restrict__ dx,
                                               int n, int in, int out) {
    linear_bwd_data(dy, w, dx, n, in, out);
}
extern "C" __global__ void linear_bwd_data_bf16(const bf16* __restrict__ dy,
                                                const bf16* __restrict__ w, bf16* __restrict__ dx,
                                                int n, int in, int out) {
    linear_bwd_data(dy, w, dx, n, in, out);
}
