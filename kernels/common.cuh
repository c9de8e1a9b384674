// Shared by every kernel file: reductions and the dynamic shared memory macro.
// No system headers: NVRTC on a user's machine has no CUDA include directory.
#pragma once

#ifdef GRADCAM_EMU
#define DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(emu_dynamic_shared())
#else
// 16-byte aligned for vector copies (cp.async of 16 bytes); the declared type alone promises
// only its own alignment.
#define DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

// Sum over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block (blockDim.x a multiple of 32, at most 1024); thread 0 gets the total.
// `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / 32;
    v = threadIdx.x < warps ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    __syncthreads();
    return v;
}

// max(v, 0) that keeps NaN, as torch's F.relu (fmaxf drops it): activations that overflowed
// reach the logits as NaN, where the host's check names them, instead of vanishing.
__device__ __forceinline__ float nan_relu(float v) { return v < 0.0f ? 0.0f : v; }

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Max over a block (blockDim.x a multiple of 32); every thread gets it. `scratch`: 32 floats.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = threadIdx.x < blockDim.x / 32 ? scratch[threadIdx.x] : -3.0e38f;
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    v = scratch[0];
    __syncthreads();
    return v;
}

// Bilinear sampling along one axis with half-pixel centres and clamped edges (cv2.resize
// INTER_LINEAR, F.interpolate align_corners=False): output index d of dst samples source
// indices i0, i1 with weight f on i1. In double, as the CPU path: a 4000-pixel axis needs more
// than f32's 24 bits for the same sub-pixel weight; once per pixel, so cheap.
__device__ __forceinline__ void bilinear_axis(int d, int src, int dst, int* i0, int* i1, float* f) {
    double s = ((double)d + 0.5) * ((double)src / (double)dst) - 0.5;
    if (s < 0.0) s = 0.0;
    int a = (int)s;
    if (a > src - 1) a = src - 1;
    *i0 = a;
    *i1 = a + 1 < src ? a + 1 : src - 1;
    *f = a == src - 1 ? 0.0f : (float)(s - (double)a);
}

// Map m [h, w] (f32) resized to (oh, ow), bilinearly, at output pixel p = y·ow + x.
__device__ __forceinline__ float bilinear_sample(const float* m, int h, int w, int oh, int ow, int p) {
    int y0, y1, x0, x1;
    float fy, fx;
    bilinear_axis(p / ow, h, oh, &y0, &y1, &fy);
    bilinear_axis(p % ow, w, ow, &x0, &x1, &fx);
    const float top = m[y0 * w + x0] * (1.0f - fx) + m[y0 * w + x1] * fx;
    const float bot = m[y1 * w + x0] * (1.0f - fx) + m[y1 * w + x1] * fx;
    return top * (1.0f - fy) + bot * fy;
}

// One image of a batch as it went up: the byte offset of its RGB8 pixels (HWC) in the upload
// buffer, its height and width. The host packs this table after the pixels (one copy up), so a
// batch of any mix of sizes is one launch per stage. 16 bytes, as the host writes it.
struct ImageDesc {
    unsigned long long off;
    int h, w;
};

// [min, max] of sample(p) over p in 0..count, written to out[0], out[1] by thread 0: the
// extremes a min-max normalisation needs, without storing the samples.
template <class F>
__device__ __forceinline__ void block_minmax(F sample, int count, float* out) {
    __shared__ float scratch[32];
    float lo = 3.0e38f, hi = -3.0e38f;
    for (int p = threadIdx.x; p < count; p += blockDim.x) {
        const float v = sample(p);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    hi = block_max(hi, scratch);
    lo = -block_max(-lo, scratch);
    if (threadIdx.x == 0) {
        out[0] = lo;
        out[1] = hi;
    }
}

// Division by a divisor fixed for the whole kernel (a conv's R·S, S, stride, ...) with a
// multiply-high and a shift instead of the ~20-instruction integer division: with
// l = ceil(log2 d) and m = 2^32·(2^l - d)/d + 1, n / d = (umulhi(n, m) + n) >> l for
// 0 <= n < 2^31 (Granlund & Montgomery, "Division by invariant integers using multiplication").
struct FastDiv {
    int d;
    unsigned m, l;
    // Every thread of a convolution builds a few of these, so no 64-bit integer division
    // (a long software routine on GPUs): the quotient comes from a double division, corrected
    // to the exact floor by 64-bit multiplies. Checked equal to the integer formula for every
    // d < 2^22, 5M random d < 2^31 and the top 100k.
    __device__ explicit FastDiv(int divisor) : d(divisor), m(0), l(0) {
        l = d > 1 ? 32 - __clz(d - 1) : 0;
        const unsigned long long num = ((1ull << l) - (unsigned)d) << 32;
        unsigned long long q = (unsigned long long)((double)num / (double)(unsigned)d);
        while (q * (unsigned)d > num) --q;
        while ((q + 1) * (unsigned)d <= num) ++q;
        m = (unsigned)(q + 1);
    }
    __device__ __forceinline__ int div(int n) const {
        return (int)((__umulhi((unsigned)n, m) + (unsigned)n) >> l);
    }
    // n mod d, given q = n / d.
    __device__ __forceinline__ int mod(int n, int q) const { return n - q * d; }
};

// Storage types. Tensors are f32, bf16 or f16 in memory; arithmetic is always f32. The
// 16-bit types are kept as raw bits (no cuda_bf16.h / cuda_fp16.h: users' NVRTC has no include
// path); ld/st convert.
struct bf16 {
    unsigned short bits;
};
struct f16 {
    unsigned short bits;
};

// f32 → bf16 bits, rounding to nearest even (as cvt.rn.bf16.f32 and torch), in software so the
// GPU and the emulator round identically.
__device__ __forceinline__ unsigned bf16_bits(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;  // NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// f32 → IEEE binary16 bits, rounding to nearest even; overflow to ±inf, gradual underflow
// through the subnormals (as torch's .half()). The GPU runs cvt.rn.f16.f32; the emulator this
// twin, and the selftest checks both against the host's `half` crate bit for bit.
__device__ __forceinline__ unsigned f16_bits_soft(float x) {
    const unsigned u = __float_as_uint(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN
    if (a >= 0x477ff000u) return sign | 0x7c00u;  // ≥ 65520 rounds to inf (65504 is the max)
    if (a >= 0x38800000u)                         // normal: rebias the exponent, round at bit 13
        return sign | ((a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13);
    // Subnormal: round(|x| · 2^24) of the significand m · 2^(e - 150).
    const int shift = 126 - (int)(a >> 23);
    if (shift > 24) return sign;
    const unsigned m = (a & 0x7fffffu) | 0x800000u, q = m >> shift;
    const unsigned rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    return sign | (q + (rem > half || (rem == half && (q & 1u))));
}

// IEEE binary16 bits → f32 (exact).
__device__ __forceinline__ float f16_float_soft(unsigned h) {
    const unsigned sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0) {  // subnormal (or zero): m · 2^-24, exact in f32
        const float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

__device__ __forceinline__ unsigned f16_bits(float x) {
#ifdef GRADCAM_EMU
    return f16_bits_soft(x);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#endif
}

__device__ __forceinline__ float f16_float(unsigned h) {
#ifdef GRADCAM_EMU
    return f16_float_soft(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h));
    return f;
#endif
}

__device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, size_t i) {
    return __uint_as_float((unsigned)p[i].bits << 16);
}
__device__ __forceinline__ float ld(const f16* p, size_t i) { return f16_float(p[i].bits); }
__device__ __forceinline__ void st(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, size_t i, float v) {
    p[i].bits = (unsigned short)bf16_bits(v);
}
__device__ __forceinline__ void st(f16* p, size_t i, float v) {
    p[i].bits = (unsigned short)f16_bits(v);
}

// Two f32 values moved as one 8-byte access.
struct alignas(8) Float2 {
    float x, y;
};
// Two 16-bit elements of one 32-bit word (the first in the low half) as f32, and back.
__device__ __forceinline__ Float2 unpack2(const bf16*, unsigned w) {
    return Float2{__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u)};
}
__device__ __forceinline__ Float2 unpack2(const f16*, unsigned w) {
    return Float2{f16_float(w & 0xffffu), f16_float(w >> 16)};
}
__device__ __forceinline__ unsigned pack2(const bf16*, float a, float b) {
    return bf16_bits(a) | (bf16_bits(b) << 16);
}
__device__ __forceinline__ unsigned pack2(const f16*, float a, float b) {
    return f16_bits(a) | (f16_bits(b) << 16);
}
