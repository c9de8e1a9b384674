// Convolutions as implicit GEMMs: the im2col matrix is never formed; each tile gathers its
// patch elements straight from the input (zero in the padding).
//   conv2d_fwd_<t>:      y = F.conv2d(x, w, b, stride, padding, dilation, groups) [+ ReLU]
//                        GEMM per group: [K/g] x [N·OH·OW], depth C/g·R·S
//   conv2d_bwd_data_<t>: dx = torch.nn.grad.conv2d_input(x.shape, w, dy, ...)
//                        GEMM per group: [C/g] x [N·H·W], depth K/g·R·S
// <t> = f32 (FMAs) or tf32 (tensor cores, f32 in and out; torch's allow_tf32 convolutions).
// Launch: grid (ceil(cols / 64), ceil(rows / 64), groups), block 256 (see gemm_tile.cuh).
#include "common.cuh"
#include "gemm_tile.cuh"

template <bool TC>
__device__ __forceinline__ void conv2d_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                           const float* __restrict__ bias, float* __restrict__ y,
                                           int n, int c, int h, int wd, int k, int r, int s, int oh,
                                           int ow, int sh, int sw, int ph, int pw, int dh, int dw,
                                           int groups, int relu) {
    const int g = blockIdx.z, cg = c / groups, kg = k / groups, rs = r * s, ohw = oh * ow;
    const int depth = cg * rs;
    auto a_at = [&](int m, int d) { return w[(size_t)(g * kg + m) * depth + d]; };
    auto b_at = [&](int d, int col) {
        const int ci = d / rs, ry = (d % rs) / s, sx = d % s;
        const int ni = col / ohw, oy = (col % ohw) / ow, ox = col % ow;
        const int iy = oy * sh - ph + ry * dh, ix = ox * sw - pw + sx * dw;
        if (iy < 0 || iy >= h || ix < 0 || ix >= wd) return 0.0f;
        return x[(((size_t)ni * c + g * cg + ci) * h + iy) * wd + ix];
    };
    auto store = [&](int m, int col, float v) {
        const int ko = g * kg + m, ni = col / ohw;
        if (bias) v += bias[ko];
        if (relu) v = fmaxf(v, 0.0f);
        y[((size_t)ni * k + ko) * ohw + col % ohw] = v;
    };
    if (TC)
        gemm_tile_tf32(kg, n * ohw, depth, a_at, b_at, store);
    else
        gemm_tile(kg, n * ohw, depth, a_at, b_at, store);
}

template <bool TC>
__device__ __forceinline__ void conv2d_bwd_data(const float* __restrict__ dy,
                                                const float* __restrict__ w, float* __restrict__ dx,
                                                int n, int c, int h, int wd, int k, int r, int s,
                                                int oh, int ow, int sh, int sw, int ph, int pw,
                                                int dh, int dw, int groups) {
    const int g = blockIdx.z, cg = c / groups, kg = k / groups, rs = r * s, hw = h * wd;
    auto a_at = [&](int ci, int d) {
        const int ko = d / rs;
        return w[((size_t)(g * kg + ko) * cg + ci) * rs + d % rs];
    };
    auto b_at = [&](int d, int col) {
        const int ko = d / rs, ry = (d % rs) / s, sx = d % s;
        const int ni = col / hw, iy = (col % hw) / wd, ix = col % wd;
        const int ty = iy + ph - ry * dh, tx = ix + pw - sx * dw;
        if (ty < 0 || tx < 0 || ty % sh || tx % sw) return 0.0f;
        const int oy = ty / sh, ox = tx / sw;
        if (oy >= oh || ox >= ow) return 0.0f;
        return dy[(((size_t)ni * k + g * kg + ko) * oh + oy) * ow + ox];
    };
    auto store = [&](int ci, int col, float v) {
        dx[((size_t)(col / hw) * c + g * cg + ci) * hw + col % hw] = v;
    };
    if (TC)
        gemm_tile_tf32(cg, n * hw, kg * rs, a_at, b_at, store);
    else
        gemm_tile(cg, n * hw, kg * rs, a_at, b_at, store);
}

// The entry points: one per op and type (the emulator's table and the launcher find them by
// name, so no macros here).
#define CONV2D_FWD_PARAMS                                                                      \
    const float *__restrict__ x, const float *__restrict__ w, const float *__restrict__ bias,  \
        float *__restrict__ y, int n, int c, int h, int wd, int k, int r, int s, int oh, int ow, \
        int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu
#define CONV2D_FWD_ARGS x, w, bias, y, n, c, h, wd, k, r, s, oh, ow, sh, sw, ph, pw, dh, dw, groups, relu
#define CONV2D_BWD_PARAMS                                                                       \
    const float *__restrict__ dy, const float *__restrict__ w, float *__restrict__ dx, int n, int c, \
        int h, int wd, int k, int r, int s, int oh, int ow, int sh, int sw, int ph, int pw, int dh,  \
        int dw, int groups
#define CONV2D_BWD_ARGS dy, w, dx, n, c, h, wd, k, r, s, oh, ow, sh, sw, ph, pw, dh, dw, groups

extern "C" __global__ void conv2d_fwd_f32(CONV2D_FWD_PARAMS) { conv2d_fwd<false>(CONV2D_FWD_ARGS); }
extern "C" __global__ void conv2d_fwd_tf32(CONV2D_FWD_PARAMS) { conv2d_fwd<true>(CONV2D_FWD_ARGS); }
extern "C" __global__ void conv2d_bwd_data_f32(CONV2D_BWD_PARAMS) {
    conv2d_bwd_data<false>(CONV2D_BWD_ARGS);
}
extern "C" __global__ void conv2d_bwd_data_tf32(CONV2D_BWD_PARAMS) {
    conv2d_bwd_data<true>(CONV2D_BWD_ARGS);
}
