// Pooling, forward and backward. One thread per output element (forward, max-pool backward)
// or per input element (adaptive backward); grid (ceil(total / 256)), block 256.
//   max_pool2d_fwd_f32:  y = F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw))   planes = N·C
//   max_pool2d_bwd_f32:  dx[argmax] += dy, the first maximum in row-major order wins (PyTorch's
//                        rule); windows overlap, so the scatter is an atomicAdd; dx zeroed first
//   adaptive_avg_pool2d_fwd_f32 / _bwd_f32: bins [floor(i·H/o), ceil((i+1)·H/o))
#include "common.cuh"

__device__ __forceinline__ int window_argmax(const float* plane, int h, int w, int oy, int ox,
                                             int kh, int kw, int sh, int sw, int ph, int pw) {
    int best = -1;
    float bv = 0.0f;
    for (int ky = 0; ky < kh; ++ky) {
        const int iy = oy * sh - ph + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < kw; ++kx) {
            const int ix = ox * sw - pw + kx;
            if (ix < 0 || ix >= w) continue;
            const float v = plane[iy * w + ix];
            if (best < 0 || v > bv || (v != v && bv == bv)) {
                best = iy * w + ix;
                bv = v;
            }
        }
    }
    return best;
}

extern "C" __global__ void max_pool2d_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                              int planes, int h, int w, int oh, int ow, int kh,
                                              int kw, int sh, int sw, int ph, int pw) {
    const int total = planes * oh * ow;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i / (oh * ow), oy = (i / ow) % oh, ox = i % ow;
        const float* plane = x + (size_t)p * h * w;
        y[i] = plane[window_argmax(plane, h, w, oy, ox, kh, kw, sh, sw, ph, pw)];
    }
}

extern "C" __global__ void max_pool2d_bwd_f32(const float* __restrict__ x,
                                              const float* __restrict__ dy, float* __restrict__ dx,
                                              int planes, int h, int w, int oh, int ow, int kh,
                                              int kw, int sh, int sw, int ph, int pw) {
    const int total = planes * oh * ow;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i / (oh * ow), oy = (i / ow) % oh, ox = i % ow;
        const float* plane = x + (size_t)p * h * w;
        const int a = window_argmax(plane, h, w, oy, ox, kh, kw, sh, sw, ph, pw);
        atomicAdd(dx + (size_t)p * h * w + a, dy[i]);
    }
}

extern "C" __global__ void adaptive_avg_pool2d_fwd_f32(const float* __restrict__ x,
                                                       float* __restrict__ y, int planes, int h,
                                                       int w, int oh, int ow) {
    const int total = planes * oh * ow;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i / (oh * ow), oy = (i / ow) % oh, ox = i % ow;
        const int y0 = oy * h / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
        const int x0 = ox * w / ow, x1 = ((ox + 1) * w + ow - 1) / ow;
        const float* plane = x + (size_t)p * h * w;
        float s = 0.0f;
        for (int iy = y0; iy < y1; ++iy)
            for (int ix = x0; ix < x1; ++ix) s += plane[iy * w + ix];
        y[i] = s / (float)((y1 - y0) * (x1 - x0));
    }
}

// Gathers instead of scattering: each input element sums the bins that contain it.
extern "C" __global__ void adaptive_avg_pool2d_bwd_f32(const float* __restrict__ dy,
                                                       float* __restrict__ dx, int planes, int h,
                                                       int w, int oh, int ow) {
    const int total = planes * h * w;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i / (h * w), iy = (i / w) % h, ix = i % w;
        float s = 0.0f;
        for (int oy = 0; oy < oh; ++oy) {
            const int y0 = oy * h / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
            if (iy < y0 || iy >= y1) continue;
            for (int ox = 0; ox < ow; ++ox) {
                const int x0 = ox * w / ow, x1 = ((ox + 1) * w + ow - 1) / ow;
                if (ix < x0 || ix >= x1) continue;
                s += dy[((size_t)p * oh + oy) * ow + ox] / (float)((y1 - y0) * (x1 - x0));
            }
        }
        dx[i] = s;
    }
}
