// Pooling, forward and backward, f32, bf16 or f16 storage (<t>). One thread per output element
// (forward) or per input element (backward: gathers, no atomics, deterministic);
// grid (ceil(total / 256)), block 256.
//   max_pool2d_fwd_<t>:  y = F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw))   planes = N·C
//   max_pool2d_fwd_nhwc_<t>: the same on channels-last x and y ([N][H][W][C], conv_nhwc.cu's
//                        tensors), planes = N; the same window order, so the same values
//   max_pool2d_bwd_<t>:  dx[i] = Σ dy over the windows whose first maximum (row-major order,
//                        PyTorch's rule) is element i
//   max_pool2d_tangent_<t>: y = v at each window's first maximum of x (a jvp through the pool;
//                        ShapleyCAM's forward-mode pass)
//   adaptive_avg_pool2d_fwd_<t> / _bwd_<t>: bins [floor(i·H/o), ceil((i+1)·H/o))
#include "common.cuh"

// The first maximum of a window as its pixel index iy·w + ix; the plane's pixels `step`
// elements apart (1 for NCHW, C for NHWC).
template <class T>
__device__ __forceinline__ int window_argmax(const T* plane, int h, int w, int oy, int ox, int kh,
                                             int kw, int sh, int sw, int ph, int pw,
                                             int step = 1) {
    int best = -1;
    float bv = 0.0f;
    for (int ky = 0; ky < kh; ++ky) {
        const int iy = oy * sh - ph + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < kw; ++kx) {
            const int ix = ox * sw - pw + kx;
            if (ix < 0 || ix >= w) continue;
            const float v = ld(plane, (size_t)(iy * w + ix) * step);
            if (best < 0 || v > bv || (v != v && bv == bv)) {
                best = iy * w + ix;
                bv = v;
            }
        }
    }
    return best;
}

#define POOL_PARAMS int planes, int h, int w, int oh, int ow, int kh, int kw, int sh, int sw, int ph, int pw
#define POOL_ARGS planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw

template <class T>
__device__ __forceinline__ void max_pool2d_tangent(const T* __restrict__ x, const T* __restrict__ v,
                                                   T* __restrict__ y, POOL_PARAMS) {
    const int total = planes * oh * ow;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i / (oh * ow), oy = (i / ow) % oh, ox = i % ow;
        const size_t base = (size_t)p * h * w;
        st(y, i, ld(v, base + window_argmax(x + base, h, w, oy, ox, kh, kw, sh, sw, ph, pw)));
    }
}

// The pool picks each window's first maximum: the tangent along x itself.
template <class T>
__device__ __forceinline__ void max_pool2d_fwd(const T* __restrict__ x, T* __restrict__ y,
                                               POOL_PARAMS) {
    max_pool2d_tangent(x, x, y, POOL_ARGS);
}

template <class T>
__device__ __forceinline__ void max_pool2d_fwd_nhwc(const T* __restrict__ x, T* __restrict__ y,
                                                    int c, POOL_PARAMS) {
    const size_t total = (size_t)planes * oh * ow * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        const size_t px = i / c;
        const int ox = (int)(px % ow), oy = (int)(px / ow % oh);
        const int n = (int)(px / ((size_t)ow * oh));
        const T* plane = x + (size_t)n * h * w * c + ch;
        const int at = window_argmax(plane, h, w, oy, ox, kh, kw, sh, sw, ph, pw, c);
        st(y, i, ld(plane, (size_t)at * c));
    }
}

// Windows containing input row iy: oy*sh - ph <= iy <= oy*sh - ph + kh - 1.
__device__ __forceinline__ void windows_over(int i, int k, int s, int p, int o, int* lo, int* hi) {
    const int a = i + p - k + 1;
    *lo = a <= 0 ? 0 : (a + s - 1) / s;
    const int b = (i + p) / s;
    *hi = b < o - 1 ? b : o - 1;
}

template <class T>
__device__ __forceinline__ void max_pool2d_bwd(const T* __restrict__ x, const T* __restrict__ dy,
                                               T* __restrict__ dx, POOL_PARAMS) {
    const int total = planes * h * w;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i / (h * w), iy = (i / w) % h, ix = i % w;
        const T* plane = x + (size_t)p * h * w;
        int y0, y1, x0, x1;
        windows_over(iy, kh, sh, ph, oh, &y0, &y1);
        windows_over(ix, kw, sw, pw, ow, &x0, &x1);
        float s = 0.0f;
        for (int oy = y0; oy <= y1; ++oy)
            for (int ox = x0; ox <= x1; ++ox)
                if (window_argmax(plane, h, w, oy, ox, kh, kw, sh, sw, ph, pw) == iy * w + ix)
                    s += ld(dy, ((size_t)p * oh + oy) * ow + ox);
        st(dx, i, s);
    }
}

template <class T>
__device__ __forceinline__ void adaptive_avg_pool2d_fwd(const T* __restrict__ x, T* __restrict__ y,
                                                        int planes, int h, int w, int oh, int ow) {
    const int total = planes * oh * ow;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int p = i / (oh * ow), oy = (i / ow) % oh, ox = i % ow;
        const int y0 = oy * h / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
        const int x0 = ox * w / ow, x1 = ((ox + 1) * w + ow - 1) / ow;
        const T* plane = x + (size_t)p * h * w;
        float s = 0.0f;
        for (int iy = y0; iy < y1; ++iy)
            for (int ix = x0; ix < x1; ++ix) s += ld(plane, iy * w + ix);
        st(y, i, s / (float)((y1 - y0) * (x1 - x0)));
    }
}

// Gathers instead of scattering: each input element sums the bins that contain it.
template <class T>
__device__ __forceinline__ void adaptive_avg_pool2d_bwd(const T* __restrict__ dy,
                                                        T* __restrict__ dx, int planes, int h,
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
                s += ld(dy, ((size_t)p * oh + oy) * ow + ox) / (float)((y1 - y0) * (x1 - x0));
            }
        }
        st(dx, i, s);
    }
}

extern "C" __global__ void max_pool2d_fwd_nhwc_f32(const float* __restrict__ x,
                                                   float* __restrict__ y, int c, POOL_PARAMS) {
    max_pool2d_fwd_nhwc(x, y, c, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_fwd_nhwc_bf16(const bf16* __restrict__ x,
                                                    bf16* __restrict__ y, int c, POOL_PARAMS) {
    max_pool2d_fwd_nhwc(x, y, c, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_fwd_nhwc_f16(const f16* __restrict__ x, f16* __restrict__ y,
                                                   int c, POOL_PARAMS) {
    max_pool2d_fwd_nhwc(x, y, c, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_fwd_f32(const float* __restrict__ x, float* __restrict__ y,
                                              POOL_PARAMS) {
    max_pool2d_fwd(x, y, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_fwd_bf16(const bf16* __restrict__ x, bf16* __restrict__ y,
                                               POOL_PARAMS) {
    max_pool2d_fwd(x, y, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_fwd_f16(const f16* __restrict__ x, f16* __restrict__ y,
                                              POOL_PARAMS) {
    max_pool2d_fwd(x, y, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_tangent_f32(const float* __restrict__ x,
                                                  const float* __restrict__ v, float* __restrict__ y,
                                                  POOL_PARAMS) {
    max_pool2d_tangent(x, v, y, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_tangent_bf16(const bf16* __restrict__ x,
                                                   const bf16* __restrict__ v, bf16* __restrict__ y,
                                                   POOL_PARAMS) {
    max_pool2d_tangent(x, v, y, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_tangent_f16(const f16* __restrict__ x,
                                                  const f16* __restrict__ v, f16* __restrict__ y,
                                                  POOL_PARAMS) {
    max_pool2d_tangent(x, v, y, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                              float* __restrict__ dx, POOL_PARAMS) {
    max_pool2d_bwd(x, dy, dx, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_bwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ dy,
                                               bf16* __restrict__ dx, POOL_PARAMS) {
    max_pool2d_bwd(x, dy, dx, POOL_ARGS);
}
extern "C" __global__ void max_pool2d_bwd_f16(const f16* __restrict__ x, const f16* __restrict__ dy,
                                              f16* __restrict__ dx, POOL_PARAMS) {
    max_pool2d_bwd(x, dy, dx, POOL_ARGS);
}
extern "C" __global__ void adaptive_avg_pool2d_fwd_f32(const float* __restrict__ x,
                                                       float* __restrict__ y, int planes, int h,
                                                       int w, int oh, int ow) {
    adaptive_avg_pool2d_fwd(x, y, planes, h, w, oh, ow);
}
extern "C" __global__ void adaptive_avg_pool2d_fwd_bf16(const bf16* __restrict__ x,
                                                        bf16* __restrict__ y, int planes, int h,
                                                        int w, int oh, int ow) {
    adaptive_avg_pool2d_fwd(x, y, planes, h, w, oh, ow);
}
extern "C" __global__ void adaptive_avg_pool2d_fwd_f16(const f16* __restrict__ x,
                                                       f16* __restrict__ y, int planes, int h,
                                                       int w, int oh, int ow) {
    adaptive_avg_pool2d_fwd(x, y, planes, h, w, oh, ow);
}
extern "C" __global__ void adaptive_avg_pool2d_bwd_f32(const float* __restrict__ dy,
                                                       float* __restrict__ dx, int planes, int h,
                                                       int w, int oh, int ow) {
    adaptive_avg_pool2d_bwd(dy, dx, planes, h, w, oh, ow);
}
extern "C" __global__ void adaptive_avg_pool2d_bwd_bf16(const bf16* __restrict__ dy,
                                                        bf16* __restrict__ dx, int planes, int h,
                                                        int w, int oh, int ow) {
    adaptive_avg_pool2d_bwd(dy, dx, planes, h, w, oh, ow);
}
extern "C" __global__ void adaptive_avg_pool2d_bwd_f16(const f16* __restrict__ dy,
                                                       f16* __restrict__ dx, int planes, int h,
                                                       int w, int oh, int ow) {
    adaptive_avg_pool2d_bwd(dy, dx, planes, h, w, oh, ow);
}
