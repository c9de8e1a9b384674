// FullGrad's terms (see Backend::full_grad_add and src/backend/cpu/cam_ops.rs): for a gradient
// g [N, K, h, w] stored f32, bf16 or f16 (<t>), per image Σ_k normalise(|m_k ⊙ g_k|), resized to
// (oh, ow) and added to an f32 total [N, oh, ow]. m_k is bias[k] (a bias term) or, when `by_x`,
// the plane x[n, k] (the input term, x stored like g); normalise(v) = (v - min) / (max - min +
// 1e-7) over the plane, as pytorch-grad-cam's scale_cam_image. The gradient stays on the device.
//   full_grad_minmax_<t>:    mm[2·(n·K + k)] = min, mm[...+1] = max of |m_k ⊙ g[n, k]|
//                            grid (N·K), block 256: one block per plane
//   full_grad_sum_<t>:       out[n, p] (+)= Σ_k normalise(|m_k ⊙ g[n, k, p]|), at g's size
//                            grid (ceil(h·w / 256), N), block 256: one thread per pixel, a loop
//                            over K in order (as the CPU sums)
//   full_grad_resize_add_f32: total[n, q] (+)= layer[n] resized to (oh, ow) at q; bilinear
//                            resizing is linear, so a layer's sum is resized once, not per channel
//                            grid (ceil(oh·ow / 256), N), block 256
// `accumulate` 0 writes instead of adding (the first term starts the total; no zeroing pass).
#include "common.cuh"

template <class T>
__device__ __forceinline__ float full_grad_term(const T* g, const T* x, const float* bias,
                                                size_t i, int k, int by_x) {
    return fabsf((by_x ? ld(x, i) : bias[k]) * ld(g, i));
}

template <class T>
__device__ __forceinline__ void full_grad_minmax(const T* __restrict__ g, const T* __restrict__ x,
                                                 const float* __restrict__ bias,
                                                 float* __restrict__ mm, int k, int hw, int by_x) {
    const size_t plane = (size_t)blockIdx.x * hw;
    const int ch = blockIdx.x % k;
    block_minmax([&](int p) { return full_grad_term(g, x, bias, plane + p, ch, by_x); }, hw,
                 mm + (size_t)blockIdx.x * 2);
}

template <class T>
__device__ __forceinline__ void full_grad_sum(const T* __restrict__ g, const T* __restrict__ x,
                                              const float* __restrict__ bias,
                                              const float* __restrict__ mm, float* __restrict__ out,
                                              int k, int hw, int by_x, int accumulate) {
    const int n = blockIdx.y;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw) return;
    float s = 0.0f;
    for (int c = 0; c < k; ++c) {
        const size_t plane = (size_t)n * k + c;
        const float lo = mm[plane * 2], range = mm[plane * 2 + 1] - lo + 1e-7f;
        s += (full_grad_term(g, x, bias, plane * hw + p, c, by_x) - lo) / range;
    }
    float* o = out + (size_t)n * hw + p;
    *o = accumulate ? *o + s : s;
}

extern "C" __global__ void full_grad_resize_add_f32(const float* __restrict__ layer,
                                                    float* __restrict__ total, int h, int w,
                                                    int oh, int ow, int accumulate) {
    const int n = blockIdx.y;
    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= oh * ow) return;
    const float v = bilinear_sample(layer + (size_t)n * h * w, h, w, oh, ow, q);
    float* o = total + (size_t)n * oh * ow + q;
    *o = accumulate ? *o + v : v;
}

// Entry points, one per storage type.
#define MINMAX_ARGS(T)                                                                     \
    const T* __restrict__ g, const T* __restrict__ x, const float* __restrict__ bias,    \
        float* __restrict__ mm, int k, int hw, int by_x
#define SUM_ARGS(T)                                                                        \
    const T* __restrict__ g, const T* __restrict__ x, const float* __restrict__ bias,    \
        const float* __restrict__ mm, float* __restrict__ out, int k, int hw, int by_x,   \
        int accumulate
extern "C" __global__ void full_grad_minmax_f32(MINMAX_ARGS(float)) {
    full_grad_minmax(g, x, bias, mm, k, hw, by_x);
}
extern "C" __global__ void full_grad_minmax_bf16(MINMAX_ARGS(bf16)) {
    full_grad_minmax(g, x, bias, mm, k, hw, by_x);
}
extern "C" __global__ void full_grad_minmax_f16(MINMAX_ARGS(f16)) {
    full_grad_minmax(g, x, bias, mm, k, hw, by_x);
}
extern "C" __global__ void full_grad_sum_f32(SUM_ARGS(float)) {
    full_grad_sum(g, x, bias, mm, out, k, hw, by_x, accumulate);
}
extern "C" __global__ void full_grad_sum_bf16(SUM_ARGS(bf16)) {
    full_grad_sum(g, x, bias, mm, out, k, hw, by_x, accumulate);
}
extern "C" __global__ void full_grad_sum_f16(SUM_ARGS(f16)) {
    full_grad_sum(g, x, bias, mm, out, k, hw, by_x, accumulate);
}
