// Element-wise ops, f32, bf16 or f16 storage (<t>). One thread per element, grid-stride loops;
// grid (ceil(n / 256)), block 256.
//   relu_fwd_<t>:       x = F.relu(x)                                   (in place)
//   relu_bwd_<t>:       dy = dy * (y > 0) [* (dy > 0) when guided]      (in place)
//   add_<t>:            a += b
//   channel_affine_<t>: x = x * scale[None,:,None,None] + shift[None,:,None,None] (f32 vectors)
//   cast_f32_<h>, cast_<h>_f32:   out = x.to(dtype), h = bf16 or f16
//   count_differing_u16: *count += (a != b).sum(), over 16-bit words: any dtype's bits (tuning
//                        checks that a candidate kernel gives the first one's output)
#include "common.cuh"

#define GRID_STRIDE(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += gridDim.x * blockDim.x)

template <class T>
__device__ __forceinline__ void relu_fwd(T* __restrict__ x, int n) {
    GRID_STRIDE(i, n) st(x, i, nan_relu(ld(x, i)));
}

template <class T>
__device__ __forceinline__ void relu_bwd(const T* __restrict__ y, T* __restrict__ dy, int n,
                                         int guided) {
    GRID_STRIDE(i, n) {
        const float g = ld(dy, i);
        st(dy, i, (ld(y, i) > 0.0f && (!guided || g > 0.0f)) ? g : 0.0f);
    }
}

template <class T>
__device__ __forceinline__ void add(T* __restrict__ a, const T* __restrict__ b, int n) {
    GRID_STRIDE(i, n) st(a, i, ld(a, i) + ld(b, i));
}

template <class T>
__device__ __forceinline__ void channel_affine(T* __restrict__ x, const float* __restrict__ scale,
                                               const float* __restrict__ shift, int c, int hw,
                                               int n) {
    GRID_STRIDE(i, n) {
        const int ch = (i / hw) % c;
        st(x, i, ld(x, i) * scale[ch] + shift[ch]);
    }
}

template <class S, class D>
__device__ __forceinline__ void cast(const S* __restrict__ x, D* __restrict__ out, int n) {
    GRID_STRIDE(i, n) st(out, i, ld(x, i));
}

extern "C" __global__ void relu_fwd_f32(float* __restrict__ x, int n) { relu_fwd(x, n); }
extern "C" __global__ void relu_fwd_bf16(bf16* __restrict__ x, int n) { relu_fwd(x, n); }
extern "C" __global__ void relu_fwd_f16(f16* __restrict__ x, int n) { relu_fwd(x, n); }
extern "C" __global__ void relu_bwd_f32(const float* __restrict__ y, float* __restrict__ dy, int n,
                                        int guided) {
    relu_bwd(y, dy, n, guided);
}
extern "C" __global__ void relu_bwd_bf16(const bf16* __restrict__ y, bf16* __restrict__ dy, int n,
                                         int guided) {
    relu_bwd(y, dy, n, guided);
}
extern "C" __global__ void relu_bwd_f16(const f16* __restrict__ y, f16* __restrict__ dy, int n,
                                        int guided) {
    relu_bwd(y, dy, n, guided);
}
extern "C" __global__ void add_f32(float* __restrict__ a, const float* __restrict__ b, int n) {
    add(a, b, n);
}
extern "C" __global__ void add_bf16(bf16* __restrict__ a, const bf16* __restrict__ b, int n) {
    add(a, b, n);
}
extern "C" __global__ void add_f16(f16* __restrict__ a, const f16* __restrict__ b, int n) {
    add(a, b, n);
}
extern "C" __global__ void channel_affine_f32(float* __restrict__ x, const float* __restrict__ scale,
                                              const float* __restrict__ shift, int c, int hw, int n) {
    channel_affine(x, scale, shift, c, hw, n);
}
extern "C" __global__ void channel_affine_bf16(bf16* __restrict__ x, const float* __restrict__ scale,
                                               const float* __restrict__ shift, int c, int hw, int n) {
    channel_affine(x, scale, shift, c, hw, n);
}
extern "C" __global__ void channel_affine_f16(f16* __restrict__ x, const float* __restrict__ scale,
                                              const float* __restrict__ shift, int c, int hw, int n) {
    channel_affine(x, scale, shift, c, hw, n);
}
extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, bf16* __restrict__ out, int n) {
    cast(x, out, n);
}
extern "C" __global__ void cast_f32_f16(const float* __restrict__ x, f16* __restrict__ out, int n) {
    cast(x, out, n);
}
extern "C" __global__ void cast_bf16_f32(const bf16* __restrict__ x, float* __restrict__ out, int n) {
    cast(x, out, n);
}
extern "C" __global__ void cast_f16_f32(const f16* __restrict__ x, float* __restrict__ out, int n) {
    cast(x, out, n);
}
extern "C" __global__ void count_differing_u16(const unsigned short* __restrict__ a,
                                              const unsigned short* __restrict__ b, int n,
                                              int* __restrict__ count) {
    int differ = 0;
    GRID_STRIDE(i, n) differ += a[i] != b[i];
    if (differ) atomicAdd(count, differ);
}
