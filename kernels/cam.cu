// The CAM family on the target layer's activation A and gradient ∂y/∂A, stored f32, bf16 or f16
// (<t>); the weights and maps they produce are always f32.
//   grad_pool_<t>:         alpha = grad.mean(dim=(2, 3))                       [N,K,H,W] → [N,K]
//     grid (N·K), block 256: one block per plane, a strided sum then a block reduction.
//   weighted_sum_relu_<t>: map = F.relu((alpha[:, :, None, None] * a).sum(1))  → [N,H,W]
//     grid (ceil(H·W / 256), N), block 256: one thread per output pixel, a loop over K.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void grad_pool(const T* __restrict__ grad, float* __restrict__ alpha,
                                          int hw) {
    __shared__ float scratch[32];
    const T* plane = grad + (size_t)blockIdx.x * hw;
    float s = 0.0f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) s += ld(plane, i);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) alpha[blockIdx.x] = s / (float)hw;
}

template <class T>
__device__ __forceinline__ void weighted_sum_relu(const T* __restrict__ a,
                                                  const float* __restrict__ alpha,
                                                  float* __restrict__ map, int k, int hw) {
    const int n = blockIdx.y;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw) return;
    const T* an = a + (size_t)n * k * hw;
    float s = 0.0f;
    for (int c = 0; c < k; ++c) s += alpha[n * k + c] * ld(an, (size_t)c * hw + p);
    map[(size_t)n * hw + p] = nan_relu(s);
}

// The rest of the CAM family (pytorch-grad-cam 1.5.7 formulas; see src/backend/cpu/cam_ops.rs).
//   cam_weights_<t>: rule 0 Grad-CAM++: w = Σ relu(g)·g²/(2g² + ΣA·g³ + 1e-6) (0 where g = 0)
//                    rule 1 XGrad-CAM:  w = Σ g·A / (ΣA + 1e-7)
//                    rule 2 Σ g·A (WeightRule::AffineDrop: Ablation-CAM's drop, affine head)
//     grid (N·K), block 256: one block per plane; ΣA first, then the weighted sum.
//   elementwise_cam_relu_<t>: map = relu(Σ_k t(g, A)), rule 0 HiResCAM t = g·A,
//                             rule 1 LayerCAM t = relu(g)·A, rule 2 GradCAMElementWise
//                             t = relu(g·A) (ElementRule::code)
//     grid (ceil(H·W / 256), N), block 256.
template <class T>
__device__ __forceinline__ void cam_weights(const T* __restrict__ a, const T* __restrict__ g,
                                            float* __restrict__ weights, int hw, int rule) {
    __shared__ float scratch[32];
    __shared__ float total;
    const T* ap = a + (size_t)blockIdx.x * hw;
    const T* gp = g + (size_t)blockIdx.x * hw;
    // ΣA (rules 0 and 1; rule is the same for the whole block, so the barriers are uniform).
    float sum_a = 0.0f;
    if (rule != 2) {
        float s = 0.0f;
        for (int i = threadIdx.x; i < hw; i += blockDim.x) s += ld(ap, i);
        s = block_sum(s, scratch);
        if (threadIdx.x == 0) total = s;
        __syncthreads();
        sum_a = total;
    }
    float acc = 0.0f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) {
        const float gv = ld(gp, i);
        if (rule == 0) {
            if (gv != 0.0f) {
                const float g2 = gv * gv;
                acc += nan_relu(gv) * (g2 / (2.0f * g2 + sum_a * (g2 * gv) + 1e-6f));
            }
        } else if (rule == 1) {
            acc += gv * ld(ap, i) / (sum_a + 1e-7f);
        } else {
            acc += gv * ld(ap, i);
        }
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) weights[blockIdx.x] = acc;
}

// FEM (pytorch-grad-cam's FEM): w = the fraction of the plane above mean + k·std (population
// std, about the mean in a second pass as numpy computes it). Everything relative to the
// plane's first value, so a constant plane (a dead channel holding its bias) has mean and
// std exactly 0 there and nothing above, whatever k and however its sum rounds.
//   fem_weights_<t>: grid (N·K), block 256: one block per plane, three block reductions.
template <class T>
__device__ __forceinline__ void fem_weights(const T* __restrict__ a, float* __restrict__ weights,
                                            int hw, float k_sigma) {
    __shared__ float scratch[32];
    __shared__ float shared_mean, shared_th;
    const T* ap = a + (size_t)blockIdx.x * hw;
    const float a0 = ld(ap, 0);
    float s = 0.0f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) s += ld(ap, i) - a0;
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) shared_mean = s / (float)hw;
    __syncthreads();
    const float mean = shared_mean;
    float v = 0.0f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) {
        const float d = ld(ap, i) - a0 - mean;
        v += d * d;
    }
    v = block_sum(v, scratch);
    if (threadIdx.x == 0) shared_th = mean + k_sigma * sqrtf(v / (float)hw);
    __syncthreads();
    const float th = shared_th;
    float above = 0.0f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) above += ld(ap, i) - a0 > th ? 1.0f : 0.0f;
    above = block_sum(above, scratch);
    if (threadIdx.x == 0) weights[blockIdx.x] = above / (float)hw;
}

template <class T>
__device__ __forceinline__ void elementwise_cam_relu(const T* __restrict__ a, const T* __restrict__ g,
                                                     float* __restrict__ map, int k, int hw,
                                                     int rule) {
    const int n = blockIdx.y;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw) return;
    float s = 0.0f;
    for (int c = 0; c < k; ++c) {
        const size_t i = ((size_t)n * k + c) * hw + p;
        const float gv = ld(g, i), av = ld(a, i);
        s += rule == 0 ? gv * av : rule == 1 ? nan_relu(gv) * av : nan_relu(gv * av);
    }
    map[(size_t)n * hw + p] = nan_relu(s);
}

// Score-CAM's masked inputs (see Backend::score_cam_inputs): each channel k0..k1 of A
// upsampled to the input size with align_corners=True, min-max normalised, times x.
//   score_cam_minmax_<t>: grid (N·(k1-k0)), block 256 → mm[2·i] = min, mm[2·i+1] = max (f32)
//   score_cam_inputs_<t>: grid (ceil(H·W / 256), N·(k1-k0)), block 256
//                         → out [N·(k1-k0), C, H, W], image-major, stored like x
template <class T>
__device__ __forceinline__ float sample_ac(const T* m, int h, int w, int oh, int ow, int p) {
    const float sy = oh > 1 ? (float)(h - 1) / (float)(oh - 1) : 0.0f;
    const float sx = ow > 1 ? (float)(w - 1) / (float)(ow - 1) : 0.0f;
    const float fy_ = (float)(p / ow) * sy, fx_ = (float)(p % ow) * sx;
    int y0 = (int)fy_, x0 = (int)fx_;
    if (y0 > h - 1) y0 = h - 1;
    if (x0 > w - 1) x0 = w - 1;
    const int y1 = y0 + 1 < h ? y0 + 1 : h - 1, x1 = x0 + 1 < w ? x0 + 1 : w - 1;
    const float fy = fy_ - (float)y0, fx = fx_ - (float)x0;
    const float top = ld(m, y0 * w + x0) * (1.0f - fx) + ld(m, y0 * w + x1) * fx;
    const float bot = ld(m, y1 * w + x0) * (1.0f - fx) + ld(m, y1 * w + x1) * fx;
    return top * (1.0f - fy) + bot * fy;
}

template <class T>
__device__ __forceinline__ void score_cam_minmax(const T* __restrict__ a, float* __restrict__ mm,
                                                 int k, int k0, int kc, int h, int w, int oh,
                                                 int ow) {
    const int n = blockIdx.x / kc, c = k0 + blockIdx.x % kc;
    const T* m = a + ((size_t)n * k + c) * h * w;
    block_minmax([&](int p) { return sample_ac(m, h, w, oh, ow, p); }, oh * ow, mm + blockIdx.x * 2);
}

template <class T>
__device__ __forceinline__ void score_cam_inputs(const T* __restrict__ x, const T* __restrict__ a,
                                                 const float* __restrict__ mm, T* __restrict__ out,
                                                 int c, int k, int k0, int kc, int h, int w, int oh,
                                                 int ow) {
    const int i = blockIdx.y, n = i / kc, ch = k0 + i % kc;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= oh * ow) return;
    const T* m = a + ((size_t)n * k + ch) * h * w;
    const float u = (sample_ac(m, h, w, oh, ow, p) - mm[i * 2]) / (mm[i * 2 + 1] - mm[i * 2] + 1e-8f);
    for (int cc = 0; cc < c; ++cc)
        st(out, ((size_t)i * c + cc) * oh * ow + p, ld(x, ((size_t)n * c + cc) * oh * ow + p) * u);
}

// Ablation-CAM's ablated activations (see Backend::ablate_channels): copy j of image i is
// A[i] with channel k0 + j zeroed, copy-major.
//   ablate_channels_<t>: grid (ceil(total / 256)), block 256, one thread per output element
//                        (total = (k1-k0)·N·K·h·w, which may pass 2^31: 64-bit indices).
template <class T>
__device__ __forceinline__ void ablate_channels(const T* __restrict__ a, T* __restrict__ out,
                                                int n, int k, int k0, int kc, int hw) {
    const size_t per_copy = (size_t)n * k * hw;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= per_copy * kc) return;
    const size_t j = idx / per_copy, in = idx % per_copy;
    const int ch = (int)((in / hw) % k);
    st(out, idx, ch == k0 + (int)j ? 0.0f : ld(a, in));
}

// Entry points, one per op and storage type (written out: the emulator's table and the
// launcher find entries by name).
extern "C" __global__ void grad_pool_f32(const float* __restrict__ g, float* __restrict__ alpha, int hw) {
    grad_pool(g, alpha, hw);
}
extern "C" __global__ void grad_pool_bf16(const bf16* __restrict__ g, float* __restrict__ alpha, int hw) {
    grad_pool(g, alpha, hw);
}
extern "C" __global__ void grad_pool_f16(const f16* __restrict__ g, float* __restrict__ alpha, int hw) {
    grad_pool(g, alpha, hw);
}
extern "C" __global__ void weighted_sum_relu_f32(const float* __restrict__ a, const float* __restrict__ alpha,
                                                 float* __restrict__ map, int k, int hw) {
    weighted_sum_relu(a, alpha, map, k, hw);
}
extern "C" __global__ void weighted_sum_relu_bf16(const bf16* __restrict__ a, const float* __restrict__ alpha,
                                                  float* __restrict__ map, int k, int hw) {
    weighted_sum_relu(a, alpha, map, k, hw);
}
extern "C" __global__ void weighted_sum_relu_f16(const f16* __restrict__ a, const float* __restrict__ alpha,
                                                 float* __restrict__ map, int k, int hw) {
    weighted_sum_relu(a, alpha, map, k, hw);
}
extern "C" __global__ void cam_weights_f32(const float* __restrict__ a, const float* __restrict__ g,
                                           float* __restrict__ weights, int hw, int rule) {
    cam_weights(a, g, weights, hw, rule);
}
extern "C" __global__ void cam_weights_bf16(const bf16* __restrict__ a, const bf16* __restrict__ g,
                                            float* __restrict__ weights, int hw, int rule) {
    cam_weights(a, g, weights, hw, rule);
}
extern "C" __global__ void cam_weights_f16(const f16* __restrict__ a, const f16* __restrict__ g,
                                           float* __restrict__ weights, int hw, int rule) {
    cam_weights(a, g, weights, hw, rule);
}
extern "C" __global__ void fem_weights_f32(const float* __restrict__ a, float* __restrict__ weights,
                                           int hw, float k_sigma) {
    fem_weights(a, weights, hw, k_sigma);
}
extern "C" __global__ void fem_weights_bf16(const bf16* __restrict__ a, float* __restrict__ weights,
                                            int hw, float k_sigma) {
    fem_weights(a, weights, hw, k_sigma);
}
extern "C" __global__ void fem_weights_f16(const f16* __restrict__ a, float* __restrict__ weights,
                                           int hw, float k_sigma) {
    fem_weights(a, weights, hw, k_sigma);
}
extern "C" __global__ void elementwise_cam_relu_f32(const float* __restrict__ a, const float* __restrict__ g,
                                                    float* __restrict__ map, int k, int hw, int rule) {
    elementwise_cam_relu(a, g, map, k, hw, rule);
}
extern "C" __global__ void elementwise_cam_relu_bf16(const bf16* __restrict__ a, const bf16* __restrict__ g,
                                                     float* __restrict__ map, int k, int hw, int rule) {
    elementwise_cam_relu(a, g, map, k, hw, rule);
}
extern "C" __global__ void elementwise_cam_relu_f16(const f16* __restrict__ a, const f16* __restrict__ g,
                                                    float* __restrict__ map, int k, int hw, int rule) {
    elementwise_cam_relu(a, g, map, k, hw, rule);
}
#define ABLATE_DIMS int n, int k, int k0, int kc, int hw
extern "C" __global__ void ablate_channels_f32(const float* __restrict__ a, float* __restrict__ out,
                                               ABLATE_DIMS) {
    ablate_channels(a, out, n, k, k0, kc, hw);
}
extern "C" __global__ void ablate_channels_bf16(const bf16* __restrict__ a, bf16* __restrict__ out,
                                                ABLATE_DIMS) {
    ablate_channels(a, out, n, k, k0, kc, hw);
}
extern "C" __global__ void ablate_channels_f16(const f16* __restrict__ a, f16* __restrict__ out,
                                               ABLATE_DIMS) {
    ablate_channels(a, out, n, k, k0, kc, hw);
}
#define SCORE_DIMS int k, int k0, int kc, int h, int w, int oh, int ow
extern "C" __global__ void score_cam_minmax_f32(const float* __restrict__ a, float* __restrict__ mm,
                                                SCORE_DIMS) {
    score_cam_minmax(a, mm, k, k0, kc, h, w, oh, ow);
}
extern "C" __global__ void score_cam_minmax_bf16(const bf16* __restrict__ a, float* __restrict__ mm,
                                                 SCORE_DIMS) {
    score_cam_minmax(a, mm, k, k0, kc, h, w, oh, ow);
}
extern "C" __global__ void score_cam_minmax_f16(const f16* __restrict__ a, float* __restrict__ mm,
                                                SCORE_DIMS) {
    score_cam_minmax(a, mm, k, k0, kc, h, w, oh, ow);
}
extern "C" __global__ void score_cam_inputs_f32(const float* __restrict__ x, const float* __restrict__ a,
                                                const float* __restrict__ mm, float* __restrict__ out,
                                                int c, SCORE_DIMS) {
    score_cam_inputs(x, a, mm, out, c, k, k0, kc, h, w, oh, ow);
}
extern "C" __global__ void score_cam_inputs_bf16(const bf16* __restrict__ x, const bf16* __restrict__ a,
                                                 const float* __restrict__ mm, bf16* __restrict__ out,
                                                 int c, SCORE_DIMS) {
    score_cam_inputs(x, a, mm, out, c, k, k0, kc, h, w, oh, ow);
}
extern "C" __global__ void score_cam_inputs_f16(const f16* __restrict__ x, const f16* __restrict__ a,
                                                const float* __restrict__ mm, f16* __restrict__ out,
                                                int c, SCORE_DIMS) {
    score_cam_inputs(x, a, mm, out, c, k, k0, kc, h, w, oh, ow);
}
