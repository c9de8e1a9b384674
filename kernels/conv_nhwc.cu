// Channels-last (NHWC) activations for the tensor-core forward convolutions
// (GRADCAM_CONV_NHWC=1):
//   conv2d_fwd_nhwc_<t>[_t128[_s4|_w4]][_k64] (t: tf32, bf16, f16; _s4: a 4-stage ring; _w4:
//       4 warps, 16-bit; _k64: 64-channel slices, 16-bit 1x1 convs over C a multiple of 64):
//       y = conv(x, w) + bias [+ residual] [then ReLU], x, residual and y [N][H][W][C]; w the
//       KRSC copy of the weights ([K][R][S][C], conv_weight_krsc_<t>, TF32-rounded for tf32);
//       groups 1, C a multiple of 32, K of 8. TF32 stores its output rounded to TF32 (see
//       below). grid (ceil(N·OH·OW / TS), ceil(K / TS)), block 256 (128 for _w4), dynamic
//       shared memory: the larger of the ring (3 or 4 stages of A and B, TS rows of RW words
//       each) and the epilogue (TS x (TS + 4) f32); the host's formula
//       (GpuBackend::nhwc_choices) matches.
//   layout_transpose_<t>: NCHW ↔ NHWC per image, f32 values rounded to TF32 on the way when
//       asked (a TF32 conv's input). grid (ceil(H·W / 32), ceil(C / 32), N), block 256.
// Why: in NCHW the 32 channels of one pixel that a depth slice needs are a plane apart, so a
// slice of B is gathered element by element (or 4 pixels of one channel at a time); in NHWC
// they are 64 contiguous bytes, so any kernel, stride, padding or dilation stages B by 16-byte
// cp.async copies (zero-filled outside the image), and a row of the tile is a pixel: the
// tensor cores' B fragments (and A's) come out of shared memory by ldmatrix.x4 (not
// transposed) for every tap. The output leaves through shared memory as runs of 8 channels
// of one pixel, 16 bytes.
// The GEMM is the KRSC convolutions' (conv.cu): the same slices in the same order (channel
// blocks outer, taps inner) and the same mma steps, so at 16 bits the results are those
// kernels' bits. TF32: cp.async copies f32 bits as they are and the tensor cores read them
// truncated, so the activations a TF32 conv reads are kept TF32-rounded already (this
// epilogue rounds what it stores, the transposition into NHWC rounds, max pooling keeps
// values; the host rounds anything else, e.g. a sum, see GpuTensor::tf32_exact): the same
// products as the kernels that round on the fly, so the outputs are theirs rounded to TF32.
// Versions: 1 (2026-11-29), 3-stage ring, 64x64 and 128x128 tiles; TF32 (2026-11-29); 4-warp
// 128x128 tiles and 64-channel slices for 1x1 convs (2026-11-29, tuning candidates); the
// epilogue, slice cursor and entry parameters moved to nhwc.cuh, shared with conv_wgmma.cu
// (2026-11-29, the same code).
#include "common.cuh"
#include "mma.cuh"
#include "gemm_tile.cuh"
#include "nhwc.cuh"

// A slice row: KD channels (32: 64 bytes at 16 bits, 128 at f32; 64 at 16 bits: 128 bytes)
// plus 16 bytes of padding, so rows are 80 (144) bytes apart: the 8 rows one ldmatrix matrix
// reads, and the fragment words of A and of TF32's B, fall in distinct banks.
template <class S, int KD>
constexpr int nhwc_row_words() {
    return KD * (int)sizeof(S) / 4 + 4;
}

template <class S, int TS, int STAGES = 3, int WARPS = 8, int KD = 32>
__device__ __forceinline__ void conv2d_fwd_nhwc(const S* __restrict__ x, const S* __restrict__ w,
                                                const S* __restrict__ bias,
                                                const S* __restrict__ residual, S* __restrict__ y,
                                                int n, int c, int h, int wd, int k, int r, int s,
                                                int oh, int ow, int sh, int sw, int ph, int pw,
                                                int dh, int dw, int relu) {
    constexpr bool TF32 = sizeof(S) == 4;
    constexpr Mma M = TF32 ? Mma::Tf32 : mma_of<S>;
    constexpr int RW = nhwc_row_words<S, KD>(), STAGE = 2 * TS * RW;
    constexpr int THREADS = 32 * WARPS;
    constexpr int WARPS_M = TS == 64 ? 4 : 2, WARPS_N = WARPS / WARPS_M;
    constexpr int MT = TS / WARPS_M / 16, NT = TS / WARPS_N / 8;
    constexpr int CPR = (RW - 4) / 4;           // 16-byte copies per slice row
    constexpr int EPC = 16 / (int)sizeof(S);    // elements per copy
    constexpr int NV = TS * CPR / THREADS;      // copies per thread and operand per slice
    static_assert(NT % 2 == 0, "ldmatrix.x4 takes n-tiles in pairs");
    DYNAMIC_SHARED(unsigned, ring);
    const int rows = k, cols = n * oh * ow, rs = r * s, ohw = oh * ow;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int c0 = blockIdx.x * TS, r0 = blockIdx.y * TS;
    const int wr = (warp / WARPS_N) * (TS / WARPS_M), wc = (warp % WARPS_N) * (TS / WARPS_N);
    // Copy v = tid + THREADS i moves 16 bytes (EPC channels) number v % CPR of row v / CPR, for A
    // (an output channel's weights) and B (a pixel's input).
    const S* b_base[NV];
    int b_iy[NV], b_ix[NV];
    #pragma unroll
    for (int i = 0; i < NV; ++i) {
        const int col = c0 + (tid + THREADS * i) / CPR;
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
    NhwcSlice<KD> sl{0, 0, 0, 0};
    auto issue = [&](int st) {
        unsigned* sa = as(st);
        unsigned* sb = bs(st);
        #pragma unroll
        for (int i = 0; i < NV; ++i) {
            const int v = tid + THREADS * i, row = v / CPR, part = v % CPR;
            const bool ok = r0 + row < rows;
            const S* a = w + ((size_t)(ok ? r0 + row : 0) * rs + sl.tap) * c + sl.ch0 + EPC * part;
            cp_async<16>(&sa[row * RW + 4 * part], a, ok);
            const int iy = b_iy[i] + sl.ry * dh, ix = b_ix[i] + sl.sx * dw;
            const bool in = iy >= 0 && iy < h && ix >= 0 && ix < wd;
            const S* b = in ? b_base[i] + ((size_t)iy * wd + ix) * c + sl.ch0 + EPC * part : x;
            cp_async<16>(&sb[row * RW + 4 * part], b, in);
        }
        sl.next(rs, s);
    };
    float acc[MT][NT][4];
    zero_acc(acc);
    cp_async_ring<STAGES>((c / KD) * rs, issue, [&](int st) {
        const unsigned* sa = as(st);
        const unsigned* sb = bs(st);
        #pragma unroll
        for (int kw = 0; kw < RW - 4; kw += 8) {  // per mma: k8 (TF32) or k16 (16-bit)
            // Every fragment by ldmatrix.x4 (plain), lane 8q + i giving row i of matrix q: the
            // bits move as they are, so 16-bit pairs and TF32 words alike. At word kw, A's
            // fragment (rows of output channels) is matrices (rows +0, +8) x (words +0, +4);
            // two n-tiles of B (rows of pixels) are (words +0, +4) x (tile j, j + 1). The
            // mma layouts then match: 16-bit a[q] = A(g + 8(q & 1), 2t.. + 8(q >> 1)), TF32
            // a[q] = A(g + 8(q & 1), t + 4(q >> 1)); b[0] and b[1] likewise along the depth.
            unsigned a[MT][4], b[NT][2];
            const int q = lane / 8, i8 = lane % 8;
            #pragma unroll
            for (int i = 0; i < MT; ++i)
                ldmatrix_x4<false>(a[i], &sa[(wr + i * 16 + i8 + 8 * (q & 1)) * RW + kw +
                                             4 * (q >> 1)]);
            #pragma unroll
            for (int j = 0; j < NT; j += 2) {
                unsigned rg[4];
                const int px = wc + (j + (q >> 1)) * 8 + i8;
                ldmatrix_x4<false>(rg, &sb[px * RW + kw + 4 * (q & 1)]);
                b[j][0] = rg[0], b[j][1] = rg[1], b[j + 1][0] = rg[2], b[j + 1][1] = rg[3];
            }
            mma_tile<M>(acc, a, b);
        }
    });
    // The ring is free: the epilogue goes through it.
    nhwc_epilogue<S, TS, TS, MT, NT, THREADS>(acc, wr, wc, reinterpret_cast<float*>(ring), bias,
                                              residual, y, rows, cols, r0, c0, relu);
}

// A value as a TF32 conv reads it (f32 only; 16-bit values go as they are).
__device__ __forceinline__ float tf32_rounded(float v) { return __uint_as_float(tf32_bits(v)); }
template <class S>
__device__ __forceinline__ S tf32_rounded(S v) {
    return v;
}

template <class S>
__device__ __forceinline__ void layout_transpose(const S* __restrict__ in, S* __restrict__ out,
                                                 int c, int hw, int to_nhwc, int round_tf32) {
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
            if (p < hw && ci < c)
                out[base + (size_t)p * c + ci] = round_tf32 ? tf32_rounded(tile[tx][i]) : tile[tx][i];
        } else {
            const int ci = ch0 + i, p = p0 + tx;
            if (ci < c && p < hw) out[base + (size_t)ci * hw + p] = tile[i][tx];
        }
    }
}

// `groups` is in the signature so the host passes every conv the same arguments; it is 1.
extern "C" __global__ void THREE_PER_SM conv2d_fwd_nhwc_tf32(CONV2D_FWD_NHWC_PARAMS(float)) {
    conv2d_fwd_nhwc<float, 64>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void conv2d_fwd_nhwc_tf32_t128(CONV2D_FWD_NHWC_PARAMS(float)) {
    conv2d_fwd_nhwc<float, 128>(CONV2D_FWD_NHWC_ARGS);
}
// 128x128 tiles with a 4-stage ring (three slices in flight): a tuning candidate.
extern "C" __global__ void conv2d_fwd_nhwc_tf32_t128_s4(CONV2D_FWD_NHWC_PARAMS(float)) {
    conv2d_fwd_nhwc<float, 128, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void conv2d_fwd_nhwc_bf16_t128_s4(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_nhwc<bf16, 128, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void conv2d_fwd_nhwc_f16_t128_s4(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_nhwc<f16, 128, 4>(CONV2D_FWD_NHWC_ARGS);
}
#define FOUR_WARPS __launch_bounds__(128)
// 128x128 tiles on 4 warps (block 128), each 64x64 of the tile: per k-step a warp reads 8
// ldmatrix.x4 for 32 mma, where the 8-warp tiles' 64x32 read 6 for 16 (and the 64x64 tiles'
// 16x32, 3 for 4): less shared-memory traffic per product, more registers (241 at 16 bits,
// two blocks per SM; TF32's staging addresses would spill). A tuning candidate.
extern "C" __global__ void FOUR_WARPS conv2d_fwd_nhwc_bf16_t128_w4(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_nhwc<bf16, 128, 3, 4>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void FOUR_WARPS conv2d_fwd_nhwc_f16_t128_w4(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_nhwc<f16, 128, 3, 4>(CONV2D_FWD_NHWC_ARGS);
}
// 1x1 convs over C a multiple of 64, in 64-channel slices: rows of 128 bytes as TF32's, half
// the barriers and waits per product, 4 k-steps per slice. Over one tap the depth order is the
// same (channels 0, 1, 2, ...), so the bits are the 32-channel kernels'. Tuning candidates.
extern "C" __global__ void THREE_PER_SM conv2d_fwd_nhwc_bf16_k64(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_nhwc<bf16, 64, 3, 8, 64>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void conv2d_fwd_nhwc_bf16_t128_k64(CONV2D_FWD_NHWC_PARAMS(bf16)) {
    conv2d_fwd_nhwc<bf16, 128, 3, 8, 64>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void THREE_PER_SM conv2d_fwd_nhwc_f16_k64(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_nhwc<f16, 64, 3, 8, 64>(CONV2D_FWD_NHWC_ARGS);
}
extern "C" __global__ void conv2d_fwd_nhwc_f16_t128_k64(CONV2D_FWD_NHWC_PARAMS(f16)) {
    conv2d_fwd_nhwc<f16, 128, 3, 8, 64>(CONV2D_FWD_NHWC_ARGS);
}
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
                                                int to_nhwc, int round_tf32) {
    layout_transpose(in, out, c, hw, to_nhwc, round_tf32);
}
extern "C" __global__ void layout_transpose_bf16(const bf16* __restrict__ in,
                                                 bf16* __restrict__ out, int c, int hw,
                                                 int to_nhwc, int round_tf32) {
    layout_transpose(in, out, c, hw, to_nhwc, round_tf32);
}
extern "C" __global__ void layout_transpose_f16(const f16* __restrict__ in, f16* __restrict__ out,
                                                int c, int hw, int to_nhwc, int round_tf32) {
    layout_transpose(in, out, c, hw, to_nhwc, round_tf32);
}
