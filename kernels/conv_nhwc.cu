// Channels-last (NHWC) activations for the 16-bit forward convolutions (GRADCAM_CONV_NHWC=1):
//   conv2d_fwd_nhwc_<t>[_t128]: y = conv(x, w) + bias [+ residual] [then ReLU], x, residual and
//       y [N][H][W][C]; w the KRSC copy of the weights ([K][R][S][C], conv_weight_krsc_<t>);
//       groups 1, C a multiple of 32, K of 8. grid (ceil(N·OH·OW / TS), ceil(K / TS)), block
//       256, dynamic shared memory conv_nhwc_shared_bytes(TS) (the host's formula matches).
//   layout_transpose_<t>: NCHW ↔ NHWC per image. grid (ceil(H·W / 32), ceil(C / 32), N),
//       block 256.
// Why: in NCHW the 32 channels of one pixel that a depth slice needs are a plane apart, so a
// slice of B is gathered element by element (or 4 pixels of one channel at a time); in NHWC
// they are 64 contiguous bytes, so any kernel, stride, padding or dilation stages B by 16-byte
// cp.async copies (zero-filled outside the image), and a row of the tile is a pixel: the
// tensor cores' B fragments come out of shared memory by ldmatrix.x4 (not transposed) for every
// tap. The output leaves through shared memory as runs of 8 channels of one pixel, 16 bytes.
// The GEMM is the KRSC convolutions' (conv.cu): the same slices in the same order (channel
// blocks outer, taps inner) and the same mma steps, so the results are those kernels' bits.
// Versions: 1 (2026-11-29), 3-stage ring, 64x64 and 128x128 tiles.
#include "common.cuh"
#include "mma.cuh"
#include "gemm_tile.cuh"

// 32 channels (64 bytes) per slice row plus 16 bytes of padding: rows 80 bytes apart, so the
// 8 rows one ldmatrix matrix reads (and A's fragment words) fall in distinct banks.
constexpr int NHWC_ROW_WORDS = 20;

template <int TS>
constexpr int conv_nhwc_ring_words() {
    return 3 * 2 * TS * NHWC_ROW_WORDS;  // 3 stages of A [TS][20] and B [TS][20] words
}
template <int TS>
constexpr int conv_nhwc_epi_words() {
    return TS * (TS + 4);  // [pixel][channel + 4] f32
}

// The cursor over the depth: 32-channel blocks, each over every tap (TapSlice's order).
struct NhwcSlice {
    int ch0, tap, ry, sx;
    __device__ void next(int rs, int s) {
        ++tap, ++sx;
        if (sx == s) sx = 0, ++ry;
        if (tap == rs) tap = 0, ry = 0, ch0 += 32;
    }
};

template <class S, int TS>
__device__ __forceinline__ void conv2d_fwd_nhwc(const S* __restrict__ x, const S* __restrict__ w,
                                                const S* __restrict__ bias,
                                                const S* __restrict__ residual, S* __restrict__ y,
                                                int n, int c, int h, int wd, int k, int r, int s,
                                                int oh, int ow, int sh, int sw, int ph, int pw,
                                                int dh, int dw, int relu) {
    constexpr Half16 E = mma_of<S> == Mma::Bf16 ? Half16::Bf16 : Half16::F16;
    constexpr int STAGES = 3, RW = NHWC_ROW_WORDS, STAGE = 2 * TS * RW;
    constexpr int WARPS_M = TS == 64 ? 4 : 2, WARPS_N = 8 / WARPS_M;
    constexpr int MT = TS / WARPS_M / 16, NT = TS / WARPS_N / 8;
    constexpr int NV = TS * 4 / 256;  // 16-byte copies per thread and operand per slice
    static_assert(NT % 2 == 0, "ldmatrix.x4 takes n-tiles in pairs");
    DYNAMIC_SHARED(unsigned, ring);
    const int rows = k, cols = n * oh * ow, rs = r * s, ohw = oh * ow;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
    const int c0 = blockIdx.x * TS, r0 = blockIdx.y * TS;
    const int wr = (warp / WARPS_N) * (TS / WARPS_M), wc = (warp % WARPS_N) * (TS / WARPS_N);
    // Copy v = tid + 256 i moves 16 bytes (8 channels) number v % 4 of row v / 4, for A (an
    // output channel's weights) and B (a pixel's input).
    const S* b_base[NV];
    int b_iy[NV], b_ix[NV];
    #pragma unroll
    for (int i = 0; i < NV; ++i) {
        const int col = c0 + (tid + 256 * i) / 4;
        if (col < cols) {
            const int ni = col / ohw, p = col - ni * ohw, oy = p / ow, ox = p - oy * ow;
            b_base[i] = x + (size_t)ni * h * wd * c;
            b_iy[i] = oy * sh - ph, b_ix[i] = ox * sw - pw;
        } else {
            b_base[i] = x, b_iy[i] = -(1 << 29), b_ix[i] = 0;  // never inside
        }
    }
    auto as = [&](int st) { return ring + st * STAGE; };
    auto bs = [&](int st) { return ring + st * STAGE + TS * RW; };
    NhwcSlice sl{0, 0, 0, 0};
    auto issue = [&](int st) {
        unsigned* sa = as(st);
        unsigned* sb = bs(st);
        #pragma unroll
        for (int i = 0; i < NV; ++i) {
            const int v = tid + 256 * i, row = v / 4, part = v % 4;
            const bool ok = r0 + row < rows;
            const S* a = w + ((size_t)(ok ? r0 + row : 0) * rs + sl.tap) * c + sl.ch0 + 8 * part;
            cp_async<16>(&sa[row * RW + 4 * part], a, ok);
            const int iy = b_iy[i] + sl.ry * dh, ix = b_ix[i] + sl.sx * dw;
            const bool in = iy >= 0 && iy < h && ix >= 0 && ix < wd;
            const S* b = in ? b_base[i] + ((size_t)iy * wd + ix) * c + sl.ch0 + 8 * part : x;
            cp_async<16>(&sb[row * RW + 4 * part], b, in);
        }
        sl.next(rs, s);
    };
    float acc[MT][NT][4];
    #pragma unroll
    for (int i = 0; i < MT; ++i)
        #pragma unroll
        for (int j = 0; j < NT; ++j)
            #pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
    const int slices = (c / 32) * rs;
    #pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < slices) issue(st);
        cp_async_commit();  // empty groups too, so the wait counts stay uniform
    }
    for (int kq = 0; kq < slices; ++kq) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // slice kq has landed for everyone; slice kq - 1's stage is free
        if (kq + STAGES - 1 < slices) issue((kq + STAGES - 1) % STAGES);
        cp_async_commit();
        const unsigned* sa = as(kq % STAGES);
        const unsigned short* sb16 = reinterpret_cast<const unsigned short*>(bs(kq % STAGES));
        #pragma unroll
        for (int kw = 0; kw < 16; kw += 8) {  // two k16 steps per slice
            unsigned a[MT][4], b[NT][2];
            #pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int rr = wr + i * 16 + g;
                a[i][0] = sa[rr * RW + kw + t];
                a[i][1] = sa[(rr + 8) * RW + kw + t];
                a[i][2] = sa[rr * RW + kw + t + 4];
                a[i][3] = sa[(rr + 8) * RW + kw + t + 4];
            }
            // Lane 8q + i gives row i of matrix q: pixel i of n-tile j + (q >> 1), channels
            // 2kw + 8(q & 1) .. + 7 of the slice.
            const int q = lane / 8, i8 = lane % 8;
            #pragma unroll
            for (int j = 0; j < NT; j += 2) {
                unsigned rg[4];
                const int px = wc + (j + (q >> 1)) * 8 + i8;
                ldmatrix_x4<false>(rg, &sb16[px * 2 * RW + 2 * kw + 8 * (q & 1)]);
                b[j][0] = rg[0], b[j][1] = rg[1], b[j + 1][0] = rg[2], b[j + 1][1] = rg[3];
            }
            #pragma unroll
            for (int i = 0; i < MT; ++i)
                #pragma unroll
                for (int j = 0; j < NT; ++j)
                    mma_m16n8k16<E>(acc[i][j], a[i], b[j]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the ring: the epilogue reuses it
    // The accumulators to shared memory as [pixel][channel] (rows TS + 4 floats apart: the
    // fragment stores of a warp fall in 32 distinct banks), then runs of 8 channels of one
    // pixel: bias, residual, ReLU (conv.cu's order), one 16-byte store.
    float* epi = reinterpret_cast<float*>(ring);
    constexpr int EP = TS + 4, RUNS = TS / 8;
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
    for (int v = tid; v < TS * RUNS; v += 256) {
        const int col = v / RUNS, m0 = (v % RUNS) * 8;
        if (c0 + col >= cols || r0 + m0 >= rows) continue;
        const size_t at = (size_t)(c0 + col) * k + r0 + m0;
        const Word4 e0 = *reinterpret_cast<const Word4*>(&epi[col * EP + m0]);
        const Word4 e1 = *reinterpret_cast<const Word4*>(&epi[col * EP + m0 + 4]);
        float u[8] = {__uint_as_float(e0.x), __uint_as_float(e0.y), __uint_as_float(e0.z),
                      __uint_as_float(e0.w), __uint_as_float(e1.x), __uint_as_float(e1.y),
                      __uint_as_float(e1.z), __uint_as_float(e1.w)};
        float res[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (residual) {
            const Word4 rv = *reinterpret_cast<const Word4*>(residual + at);
            const unsigned rw[4] = {rv.x, rv.y, rv.z, rv.w};
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const Float2 f = unpack2(residual, rw[e]);
                res[2 * e] = f.x, res[2 * e + 1] = f.y;
            }
        }
        #pragma unroll
        for (int e = 0; e < 8; ++e) {
            if (bias) u[e] += ld(bias, r0 + m0 + e);
            if (residual) u[e] += res[e];
            if (relu) u[e] = fmaxf(u[e], 0.0f);
        }
        *reinterpret_cast<Word4*>(y + at) = Word4{pack2(y, u[0], u[1]), pack2(y, u[2], u[3]),
                                                  pack2(y, u[4], u[5]), pack2(y, u[6], u[7])};
    }
}

template <class S>
__device__ __forceinline__ void layout_transpose(const S* __restrict__ in, S* __restrict__ out,
                                                 int c, int hw, int to_nhwc) {
    __shared__ S tile[32][33];  // [channel][pixel]
    const int p0 = blockIdx.x * 32, ch0 = blockIdx.y * 32;
    const size_t base = (size_t)blockIdx.z * c * hw;
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    // Both passes run along the contiguous side of the tensor they touch.
    for (int i = ty; i < 32; i += 8) {
        if (to_nhwc) {
            const int ci = ch0 + i, p = p0 + tx;
            if (ci < c && p < hw) tile[i][tx] = in[base + (size_t)ci * hw + p];
        } else {
            const int p = p0 + i, ci = ch0 + tx;
            if (p < hw && ci < c) tile[tx][i] = in[base + (size_t)p * c + ci];
        }
    }
    __syncthreads();
    for (int i = ty; i < 32; i += 8) {
        if (to_nhwc) {
            const int p = p0 + i, ci = ch0 + tx;
            if (p < hw && ci < c) out[base + (size_t)p * c + ci] = tile[tx][i];
        } else {
            const int ci = ch0 + i, p = p0 + tx;
            if (ci < c && p < hw) out[base + (size_t)ci * hw + p] = tile[i][tx];
        }
    }
}

#define CONV2D_FWD_NHWC_PARAMS(S)                                                               \
    const S *__restrict__ x, const S *__restrict__ w, const S *__restrict__ bias,              \
        const S *__restrict__ residual, S *__restrict__ y, int n, int c, int h, int wd, int k, \
        int r, int s, int oh, int ow, int sh, int sw, int ph, int pw, int dh, int dw,          \
        int groups, int relu
#define CONV2D_FWD_NHWC_ARGS x, w, bias, residual, y, n, c, h, wd, k, r, s, oh, ow, sh, sw, ph, pw, dh, dw, relu

// `groups` is in the signature so the host passes every conv the same arguments; it is 1.
extern "C" __global__ void THREE_PER_SM conv2d_fwd_nhwc_bf16(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_nhwc<bf16, 64>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void conv2d_fwd_nhwc_bf16_t128(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_nhwc<bf16, 128>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void THREE_PER_SM conv2d_fwd_nhwc_f16(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_nhwc<f16, 64>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void conv2d_fwd_nhwc_f16_t128(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_nhwc<f16, 128>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void layout_transpose_f32(const float* __restrict__ in,
                                                float* __restrict__ out, int c, int hw,
                                                int to_nhwc) {
    layout_transpose(in, out, c, hw, to_nhwc);
}
extern "C" __global__ void layout_transpose_bf16(const bf16* __restrict__ in,
                                                 bf16* __restrict__ out, int c, int hw,
                                                 int to_nhwc) {
    layout_transpose(in, out, c, hw, to_nhwc);
}
extern "C" __global__ void layout_transpose_f16(const f16* __restrict__ in, f16* __restrict__ out,
                                                int c, int hw, int to_nhwc) {
    layout_transpose(in, out, c, hw, to_nhwc);
}
