// Element-wise ops. One thread per element, grid-stride loops; grid (ceil(n / 256)), block 256.
//   relu_fwd_f32:       x = F.relu(x)                                   (in place)
//   relu_bwd_f32:       dy = dy * (y > 0) [* (dy > 0) when guided]      (in place)
//   add_f32:            a += b
//   channel_affine_f32: x = x * scale[None,:,None,None] + shift[None,:,None,None]
#include "common.cuh"

extern "C" __global__ void relu_fwd_f32(float* __restrict__ x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        x[i] = fmaxf(x[i], 0.0f);
}

extern "C" __global__ void relu_bwd_f32(const float* __restrict__ y, float* __restrict__ dy, int n,
                                        int guided) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float g = dy[i];
        dy[i] = (y[i] > 0.0f && (!guided || g > 0.0f)) ? g : 0.0f;
    }
}

extern "C" __global__ void add_f32(float* __restrict__ a, const float* __restrict__ b, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        a[i] += b[i];
}

extern "C" __global__ void channel_affine_f32(float* __restrict__ x, const float* __restrict__ scale,
                                              const float* __restrict__ shift, int c, int hw, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int ch = (i / hw) % c;
        x[i] = x[i] * scale[ch] + shift[ch];
    }
}
