// What the channels-last forward convolutions share (conv_nhwc.cu's mma.sync kernels and
// conv_wgmma.cu's wgmma ones): 8-element vector loads and stores, the epilogue through shared
// memory, and the entry points' parameter list.
#pragma once

#include "common.cuh"
#include "mma.cuh"

// The cursor over the depth: KD-channel blocks, each over every tap (TapSlice's order).
template <int KD>
struct NhwcSlice {
    int ch0, tap, ry, sx;
    __device__ void next(int rs, int s) {
        ++tap, ++sx;
        if (sx == s) sx = 0, ++ry;
        if (tap == rs) tap = 0, ry = 0, ch0 += KD;
    }
};

// 8 consecutive elements (16-byte aligned) as f32, and back: two 16-byte accesses for f32,
// one for 16-bit values.
__device__ __forceinline__ void load8(const float* p, float v[8]) {
    const Word4 a = reinterpret_cast<const Word4*>(p)[0], b = reinterpret_cast<const Word4*>(p)[1];
    const unsigned w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    #pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = __uint_as_float(w[e]);
}
template <class S>
__device__ __forceinline__ void load8(const S* p, float v[8]) {
    const Word4 a = *reinterpret_cast<const Word4*>(p);
    const unsigned w[4] = {a.x, a.y, a.z, a.w};
    #pragma unroll
    for (int e = 0; e < 4; ++e) {
        const Float2 f = unpack2(p, w[e]);
        v[2 * e] = f.x, v[2 * e + 1] = f.y;
    }
}
__device__ __forceinline__ void store8(float* p, const float v[8]) {
    Word4* q = reinterpret_cast<Word4*>(p);
    q[0] = Word4{__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                 __float_as_uint(v[3])};
    q[1] = Word4{__float_as_uint(v[4]), __float_as_uint(v[5]), __float_as_uint(v[6]),
                 __float_as_uint(v[7])};
}
template <class S>
__device__ __forceinline__ void store8(S* p, const float v[8]) {
    *reinterpret_cast<Word4*>(p) = Word4{pack2(p, v[0], v[1]), pack2(p, v[2], v[3]),
                                         pack2(p, v[4], v[5]), pack2(p, v[6], v[7])};
}

// The epilogue of a TM x TN tile (rows: output channels r0.., columns: output pixels c0..)
// whose accumulators sit in mma.sync's m16n8 fragment layout (wgmma's too, per warp): MT x NT
// fragments per warp from row wr and column wc. They go to shared memory `epi` as
// [pixel][channel] (rows TM + 4 floats apart: a warp's fragment stores fall in 32 distinct
// banks), then runs of 8 channels of one pixel get bias, residual and ReLU (conv.cu's order)
// and leave by one 16-byte store into y [pixels][rows]. TF32 stores its output rounded to
// TF32 (what the next conv reads). `epi` holds TN x (TM + 4) floats; all THREADS threads call
// it (it has a barrier), after every warp is done with what `epi` overlays.
template <class S, int TM, int TN, int MT, int NT, int THREADS>
__device__ __forceinline__ void nhwc_epilogue(const float (&acc)[MT][NT][4], int wr, int wc,
                                              float* epi, const S* __restrict__ bias,
                                              const S* __restrict__ residual, S* __restrict__ y,
                                              int rows, int cols, int r0, int c0, int relu) {
    constexpr bool TF32 = sizeof(S) == 4;
    constexpr int EP = TM + 4, RUNS = TM / 8;
    const int tid = threadIdx.x, lane = tid % 32, g = lane / 4, t = lane % 4;
    #pragma unroll
    for (int i = 0; i < MT; ++i)
        #pragma unroll
        for (int j = 0; j < NT; ++j)
            #pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int row = wr + i * 16 + g + (q / 2) * 8, col = wc + j * 8 + 2 * t + q % 2;
                epi[col * EP + row] = acc[i][j][q];
            }
    __syncthreads();
    for (int v = tid; v < TN * RUNS; v += THREADS) {
        const int col = v / RUNS, m0 = (v % RUNS) * 8;
        if (c0 + col >= cols || r0 + m0 >= rows) continue;
        const size_t at = (size_t)(c0 + col) * rows + r0 + m0;
        const Word4 e0 = *reinterpret_cast<const Word4*>(&epi[col * EP + m0]);
        const Word4 e1 = *reinterpret_cast<const Word4*>(&epi[col * EP + m0 + 4]);
        float u[8] = {__uint_as_float(e0.x), __uint_as_float(e0.y), __uint_as_float(e0.z),
                      __uint_as_float(e0.w), __uint_as_float(e1.x), __uint_as_float(e1.y),
                      __uint_as_float(e1.z), __uint_as_float(e1.w)};
        float res[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (residual) load8(residual + at, res);
        #pragma unroll
        for (int e = 0; e < 8; ++e) {
            if (bias) u[e] += ld(bias, r0 + m0 + e);
            if (residual) u[e] += res[e];
            if (relu) u[e] = nan_relu(u[e]);
            if (TF32) u[e] = __uint_as_float(tf32_bits(u[e]));  // what the next conv reads
        }
        store8(y + at, u);
    }
}

// Every forward conv entry takes the same arguments; `groups` is there so the host passes
// all convs alike (it is 1 here).
#define CONV2D_FWD_NHWC_PARAMS(S)                                                               \
    const S *__restrict__ x, const S *__restrict__ w, const S *__restrict__ bias,              \
        const S *__restrict__ residual, S *__restrict__ y, int n, int c, int h, int wd, int k, \
        int r, int s, int oh, int ow, int sh, int sw, int ph, int pw, int dh, int dw,          \
        int groups, int relu
#define CONV2D_FWD_NHWC_ARGS x, w, bias, residual, y, n, c, h, wd, k, r, s, oh, ow, sh, sw, ph, pw, dh, dw, relu

