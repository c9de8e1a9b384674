// Shared-memory tiled GEMMs whose operands are gathered by functors, so convolutions (implicit
// im2col) and linear layers share one inner loop. C[rows, cols] = A[rows, depth] ·
// B[depth, cols]; block 256 threads, grid (ceil(cols / 64), ceil(rows / 64)); 16-deep slices of
// A and B are staged in shared memory.
//   gemm_tile:      f32 FMAs; each thread owns a 4x4 piece of the 64x64 tile; 16-deep slices.
//   gemm_tile_mma:  tensor cores (mma.cuh); operands rounded to TF32 as they are staged, or
//                   for BF16 / F16 already 16-bit values (16-bit storage) packed as they are; f32
//                   accumulation; 64x64 tiles (each of the 8 warps owns 16x32: 4
//                   m16n8 tiles) or 128x128 (64x32: 16 tiles, twice the tensor-core work per
//                   staged element); requires blockDim.x == 256 (the staging map below).
#pragma once

#include "mma.cuh"

#define TILE 64
#define DEPTH 16

// A_DF / B_DF: the operand is contiguous along the depth in memory (weights [rows][depth], a
// linear layer's activations [N][features]), so its staging runs the depth fastest across
// threads; otherwise along its rows / columns (im2col columns, transposed weights).
template <bool A_DF, bool B_DF, class FA, class FB, class FS>
__device__ __forceinline__ void gemm_tile(int rows, int cols, int depth, FA a_at, FB b_at,
                                          FS store) {
    __shared__ float as[DEPTH][TILE + 1];
    __shared__ float bs[DEPTH][TILE + 1];
    const int tid = threadIdx.x;
    const int r0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    const int tr = (tid / 16) * 4, tc = (tid % 16) * 4;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int d0 = 0; d0 < depth; d0 += DEPTH) {
        for (int i = tid; i < DEPTH * TILE; i += blockDim.x) {
            int d = A_DF ? i % DEPTH : i / TILE, t = A_DF ? i / DEPTH : i % TILE;
            as[d][t] = (r0 + t < rows && d0 + d < depth) ? a_at(r0 + t, d0 + d) : 0.0f;
            d = B_DF ? i % DEPTH : i / TILE, t = B_DF ? i / DEPTH : i % TILE;
            bs[d][t] = (c0 + t < cols && d0 + d < depth) ? b_at(d0 + d, c0 + t) : 0.0f;
        }
        __syncthreads();
        for (int d = 0; d < DEPTH; ++d) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = as[d][tr + i];
            for (int j = 0; j < 4; ++j) b[j] = bs[d][tc + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
            if (r0 + tr + i < rows && c0 + tc + j < cols) store(r0 + tr + i, c0 + tc + j, acc[i][j]);
}

// One static shared array per size, so the tile configurations inlined into one kernel (the
// depth orders of conv.cu) share it instead of each adding its own.
template <int WORDS>
__device__ __forceinline__ unsigned* smem_pool() {
    struct alignas(16) Pool {  // 16-byte aligned for the vector stores of A rows
        unsigned w[WORDS];
    };
    __shared__ Pool pool;
    return pool.w;
}

// Two 64x64 tensor-core blocks per SM: registers capped at 128 per thread.
#define TWO_PER_SM __launch_bounds__(256, 2)
// Three for the 64x64 KRSC and channels-last tiles (ptxas fits them in the registers without spilling; 90-104
// uncapped, where only two blocks fit).
#define THREE_PER_SM __launch_bounds__(256, 3)

// Four 32-bit words moved as one 16-byte vector (ld.global.v4 / st.shared.v4), and two as
// one 8-byte vector.
struct alignas(16) Word4 {
    unsigned x, y, z, w;
};
struct alignas(8) Word2 {
    unsigned x, y;
};

// gemm_tile with B from a gatherer (the interface of gemm_tile_mma below: a slice cursor `sl`,
// `a_at(row, sl, l)`, `gb.prep(col)` / `gb.at(prepared, sl)` / `gb.load(run, l)`), for the f32
// convolutions: each thread stages one column (prepared once) at depths b_d, b_d + 4, ...
// Requires blockDim.x == 256 and a cursor stepping DEPTH.
template <bool A_DF, class SL, class FA, class GB, class MS>
__device__ __forceinline__ void gemm_tile_gather(int rows, int cols, int depth, SL sl, FA a_at,
                                                 const GB& gb, MS make_store) {
    // Its own arrays, not smem_pool: sharing saves 8 KB but costs 8 registers (80 → 88,
    // three blocks per SM → two), and three blocks fit either way.
    __shared__ float as[DEPTH][TILE + 1];
    __shared__ float bs[DEPTH][TILE + 1];
    const int tid = threadIdx.x;
    const int r0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    const int tr = (tid / 16) * 4, tc = (tid % 16) * 4;
    const int b_x = tid % TILE, b_d = tid / TILE;
    const bool b_in = c0 + b_x < cols;
    const auto bc = gb.prep(b_in ? c0 + b_x : c0);
    float acc[4][4];
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int d0 = 0; d0 < depth; d0 += DEPTH) {
        #pragma unroll
        for (int k = 0; k < DEPTH * TILE / 256; ++k) {
            const int i = tid + 256 * k;
            const int l = A_DF ? i % DEPTH : i / TILE, t = A_DF ? i / DEPTH : i % TILE;
            as[l][t] = (r0 + t < rows && d0 + l < depth) ? a_at(r0 + t, sl, l) : 0.0f;
        }
        const auto run = gb.at(bc, sl);
        #pragma unroll
        for (int j = 0; j < DEPTH / 4; ++j) {
            const int l = b_d + 4 * j;
            bs[l][b_x] = (b_in && d0 + l < depth) ? gb.load(run, l) : 0.0f;
        }
        sl.next();
        __syncthreads();
        #pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
            float a[4], b[4];
            #pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = as[d][tr + i];
            #pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = bs[d][tc + j];
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    const auto store = make_store();
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < 4; ++j)
            if (r0 + tr + i < rows && c0 + tc + j < cols) store(r0 + tr + i, c0 + tc + j, acc[i][j]);
}

// Operand types of the tensor-core tile.
enum class Mma { Tf32, Bf16, F16 };

// The tensor-core operand type of 16-bit storage S.
template <class S>
constexpr Mma mma_of = Mma::Bf16;
template <>
constexpr Mma mma_of<f16> = Mma::F16;

// A warp tile's accumulators (MT x NT fragments of m16n8) set to zero.
template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4]) {
    #pragma unroll
    for (int i = 0; i < MT; ++i)
        #pragma unroll
        for (int j = 0; j < NT; ++j)
            #pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
}

// One depth step of a warp tile: acc[i][j] += a[i] · b[j] by M's mma (k8 for TF32, k16 for
// BF16 and F16), i before j as every tile orders it.
template <Mma M, int MT, int NT>
__device__ __forceinline__ void mma_tile(float (&acc)[MT][NT][4], const unsigned (&a)[MT][4],
                                         const unsigned (&b)[NT][2]) {
    #pragma unroll
    for (int i = 0; i < MT; ++i)
        #pragma unroll
        for (int j = 0; j < NT; ++j) {
            if (M == Mma::Tf32)
                mma_tf32_m16n8k8(acc[i][j], a[i], b[j]);
            else if (M == Mma::Bf16)
                mma_m16n8k16<Half16::Bf16>(acc[i][j], a[i], b[j]);
            else
                mma_m16n8k16<Half16::F16>(acc[i][j], a[i], b[j]);
        }
}

// Shared memory words the tensor-core tile stages per slice (A's and B's, padded rows). A is
// depth-major ([word][TM + 8]), or with AV row-major ([TM][words + 4]).
template <Mma M, int TM, int TN, int KD, bool AV = false>
constexpr int mma_smem_words() {
    constexpr int W = M == Mma::Tf32 ? KD : KD / 2;
    return (AV ? TM * (W + 4) : W * (TM + 8)) + W * (TN + 8);
}

// Shared memory words of gemm_tile_mma's EV epilogue: up to 64 rows of TN + 8 floats.
template <int TM, int TN>
constexpr int mma_epi_words() {
    return (TM < 64 ? TM : 64) * (TN + 8);
}

// One shared-memory word of operand type M: a TF32 element (rounded here; `hi` is the same
// element), or a pair of 16-bit elements along the depth, packed as they are (they come from
// 16-bit storage, so no rounding work).
template <Mma M>
__device__ __forceinline__ unsigned pack_word(float lo, float hi) {
    if (M == Mma::Tf32) return tf32_bits(lo);
    if (M == Mma::Bf16) return bf16x2_exact(lo, hi);
    return f16x2_exact(lo, hi);
}

// gb.vprep(col) for the BV staging, nothing (an int) otherwise: gatherers without vectors need
// no vprep.
template <bool BV, class GB>
__device__ __forceinline__ auto bv_prep(const GB& gb, int col) {
    if constexpr (BV)
        return gb.vprep(col);
    else
        return col;
}

// gemm_tile_mma's EV epilogue: a warp's MT x NT accumulator tiles (its rows from wr, columns
// from wc, of the tile at r0, c0) through shared memory `ct` (mma_epi_words<TM, TN>() floats,
// free for it), read back as runs of 8 columns of one row: `store(row, col, v, count)`, count
// (1..8) of them inside the matrix. Up to 64 rows per pass (each warp's rows fall in one pass),
// rows TN + 8 floats apart: the fragments' 8-byte writes (row g, columns 2t, 2t + 1) hit 32
// distinct banks per half-warp.
template <int TM, int TN, int MT, int NT, class ST>
__device__ __forceinline__ void epilogue_runs(const float (&acc)[MT][NT][4], float* ct, int r0,
                                              int c0, int wr, int wc, int rows, int cols,
                                              const ST& store) {
    constexpr int PASS = TM < 64 ? TM : 64, CP = TN + 8, RUNS = TN / 8;
    const int tid = threadIdx.x, lane = tid % 32, g = lane / 4, t = lane % 4;
    #pragma unroll
    for (int pass = 0; pass < TM / PASS; ++pass) {
        if (pass > 0) __syncthreads();  // the previous pass has been read
        if (wr / PASS == pass) {
            #pragma unroll
            for (int i = 0; i < MT; ++i)
                #pragma unroll
                for (int j = 0; j < NT; ++j)
                    #pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int lr = wr - pass * PASS + i * 16 + g + h * 8;
                        *reinterpret_cast<Float2*>(&ct[lr * CP + wc + j * 8 + 2 * t]) =
                            Float2{acc[i][j][2 * h], acc[i][j][2 * h + 1]};
                    }
        }
        __syncthreads();
        #pragma unroll
        for (int u0 = 0; u0 < PASS * RUNS; u0 += 256) {
            const int u = u0 + tid, lr = u / RUNS, cc = (u % RUNS) * 8;
            const int row = r0 + pass * PASS + lr, col = c0 + cc;
            if (u < PASS * RUNS && row < rows && col < cols) {
                const Word4* run = reinterpret_cast<const Word4*>(&ct[lr * CP + cc]);
                const Word4 lo = run[0], hi = run[1];
                const float v[8] = {__uint_as_float(lo.x), __uint_as_float(lo.y),
                                    __uint_as_float(lo.z), __uint_as_float(lo.w),
                                    __uint_as_float(hi.x), __uint_as_float(hi.y),
                                    __uint_as_float(hi.z), __uint_as_float(hi.w)};
                store(row, col, v, cols - col < 8 ? cols - col : 8);
            }
        }
    }
}

// The epilogue: `make_store()` is called once the depth loop is done and returns the
// `store(row, col, value)` functor, so what only the epilogue needs (a divider for output
// columns, say) holds no registers during the loop.
//
// Depth slices: the depth is walked KD (16 or 32) at a time by a slice cursor `sl` (a copy of
// the one passed in, `sl.next()` moves it on), so a gatherer can decode what is uniform over a
// slice once (a convolution's tap and channel block) instead of once per element. A comes from
// `a_at(row, sl, l)`, B from a gatherer with `prep(col)`, run once for the column a thread
// stages (the same in every slice), `at(prepared, sl)` once per slice, and `load(run, l)` per
// element, l < KD being the depth within the slice (elements at depth ≥ `depth` are not
// asked for). Staging runs A's depth and B's columns fastest across threads (contiguous in
// memory for weights and neighbouring output pixels), and the next slice's loads are issued
// before the tensor cores work on the current one. Shared memory holds one 32-bit word per TF32
// element, or one per pair of BF16 elements along the depth (the m16n8k16 fragments take
// pairs), so both read their fragments with the same (k·(T+8) + row) pattern, T + 8 ≡ 8
// (mod 32): 32 distinct banks.
//
// AV (A by vectors): A's rows are contiguous along the depth in memory and already in the
// tensor cores' format (TF32-rounded f32, or 16-bit pairs), as a convolution's weights in KRSC
// order are: `a_at(row, sl, q)` then returns the address of the row's words 4q..4q+3 of the
// slice (16-byte aligned), staged by one vector load and one vector store, no conversion. A is
// row-major in shared memory then, rows WORDS + 4 words apart: the fragment reads (row g + i,
// word t + j) still hit 32 distinct banks. Whole slices only (depth a multiple of KD).
//
// EV (the epilogue through shared memory): the accumulators are written to shared memory
// (mma_epi_words, up to 64 rows at a time) and read back as runs of 8 neighbouring columns of
// one row, so a warp hands over 4 whole rows of 64 columns at once: `store(row, col, v, count)`
// with v the run's 8 values and count (1..8) how many are inside the matrix. The caller can
// then move a run by 16-byte vectors (whole 128-byte lines of 16-bit output) and decode its
// column once, instead of one scattered element at a time from the fragments' layout.
//
// BV (B by vectors; with AV): B's columns come in groups of 4 the gatherer reads as vectors
// (`cols` a multiple of 4): `gb.vprep(col)` once for the group a thread stages, `gb.vat(
// prepared, sl)` once per slice, `gb.vload(run, l)` the group's 4 elements at depth l as raw
// bits (Word4 of f32, Word2 of 16-bit values). TF32 rounds a word's 4 columns and stores them
// by one vector store; 16-bit types interleave depths 2w and 2w + 1 into word w's 4 pairs.
//
// Tile TM x TN (64x64 or 128x128), shared memory from smem_pool<POOL>, grid
// (ceil(cols / TN), ceil(rows / TM)); each warp owns MT m16 x NT n8 accumulator tiles.
template <Mma M, int TM, int TN, int KD, int POOL, bool AV = false, bool BV = false,
          bool EV = false, class SL, class FA, class GB, class MS>
__device__ __forceinline__ void gemm_tile_mma(int rows, int cols, int depth, SL sl, FA a_at,
                                              const GB& gb, MS make_store) {
    static_assert(KD == 16 || KD == 32, "16- or 32-deep slices");
    static_assert(mma_smem_words<M, TM, TN, KD, AV>() <= POOL, "the shared pool is too small");
    static_assert(!EV || mma_epi_words<TM, TN>() <= POOL, "the shared pool is too small");
    constexpr int WORDS = M == Mma::Tf32 ? KD : KD / 2;  // depth words per slice
    constexpr int PER = M == Mma::Tf32 ? 1 : 2;                // elements per word
    // Warps: 64x64 → 4 x 2 warps of 16x32; 128x128 → 2 x 4 warps of 64x32.
    constexpr int WARPS_M = TM == 64 ? 4 : 2, WARPS_N = 8 / WARPS_M;
    constexpr int MT = TM / WARPS_M / 16, NT = TN / WARPS_N / 8;
    // Staging: A words a_w of rows a_x + A_STEP·i; B words b_w + B_STEP·j of column b_x.
    constexpr int A_STEP = 256 / WORDS, A_ROWS = TM / A_STEP;  // rows per thread
    constexpr int B_STEP = 256 / TN, B_WORDS = WORDS / B_STEP;  // words per thread
    constexpr int NA = AV ? 1 : A_ROWS * PER, NB = B_WORDS * PER;  // elements per thread
    // AV: vectors of 4 words, VR per row, NV per thread.
    constexpr int VR = WORDS / 4, NV = AV ? TM * VR / 256 : 1;
    static_assert(!AV || TM * VR % 256 == 0, "whole vectors per thread");
    // BV: CG groups of 4 columns; each thread stages group tid % CG at NBV words.
    constexpr int CG = TN / 4, NBV = BV ? WORDS * CG / 256 : 1;
    static_assert(!BV || (AV && WORDS * CG % 256 == 0), "whole vectors per thread");
    unsigned* pool = smem_pool<POOL>();
    auto as = reinterpret_cast<unsigned (*)[TM + 8]>(pool);       // depth-major A
    auto av = reinterpret_cast<unsigned (*)[WORDS + 4]>(pool);    // row-major A (AV)
    auto bs = reinterpret_cast<unsigned (*)[TN + 8]>(pool + (AV ? TM * (WORDS + 4) : WORDS * (TM + 8)));
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
    const int r0 = blockIdx.y * TM, c0 = blockIdx.x * TN;
    const int wr = (warp / WARPS_N) * (TM / WARPS_M), wc = (warp % WARPS_N) * (TN / WARPS_N);
    const int a_w = tid % WORDS, a_x = tid / WORDS;
    const int b_x = tid % TN, b_w = tid / TN;
    const bool b_in = c0 + b_x < cols;
    const auto bc = gb.prep(b_in ? c0 + b_x : c0);
    const int b_g = tid % CG;  // BV: the thread's column group
    const bool bg_in = c0 + 4 * b_g < cols;
    const auto bgc = bv_prep<BV>(gb, bg_in ? c0 + 4 * b_g : c0);
    float ra[NA], rb[BV ? 1 : NB];
    Word4 rv[NV], rbv[NBV];
    auto fetch = [&](int d0) {
        if constexpr (AV) {
            #pragma unroll
            for (int i = 0; i < NV; ++i) {
                const int v = tid + 256 * i, row = r0 + v / VR;
                rv[i] = row < rows ? *a_at(row, sl, v % VR) : Word4{0u, 0u, 0u, 0u};
            }
        } else {
            #pragma unroll
            for (int i = 0; i < A_ROWS; ++i)
                #pragma unroll
                for (int e = 0; e < PER; ++e) {
                    const int row = r0 + a_x + A_STEP * i, l = PER * a_w + e;
                    ra[i * PER + e] = (row < rows && d0 + l < depth) ? a_at(row, sl, l) : 0.0f;
                }
        }
        if constexpr (BV) {
            const auto vrun = gb.vat(bgc, sl);
            #pragma unroll
            for (int i = 0; i < NBV; ++i) {
                const int w = (tid + 256 * i) / CG;
                if (!bg_in) {
                    rbv[i] = Word4{0u, 0u, 0u, 0u};
                } else if constexpr (M == Mma::Tf32) {
                    rbv[i] = gb.vload(vrun, w);
                } else {
                    const Word2 lo = gb.vload(vrun, 2 * w), hi = gb.vload(vrun, 2 * w + 1);
                    rbv[i] = Word4{lo.x, lo.y, hi.x, hi.y};
                }
            }
        } else {
            const auto run = gb.at(bc, sl);
            #pragma unroll
            for (int j = 0; j < B_WORDS; ++j)
                #pragma unroll
                for (int e = 0; e < PER; ++e) {
                    const int l = PER * (b_w + B_STEP * j) + e;
                    rb[j * PER + e] = (b_in && d0 + l < depth) ? gb.load(run, l) : 0.0f;
                }
        }
        sl.next();
    };
    float acc[MT][NT][4];
    zero_acc(acc);
    fetch(0);
    for (int d0 = 0; d0 < depth; d0 += KD) {
        if constexpr (AV) {
            #pragma unroll
            for (int i = 0; i < NV; ++i) {
                const int v = tid + 256 * i;
                *reinterpret_cast<Word4*>(&av[v / VR][4 * (v % VR)]) = rv[i];
            }
        } else {
            #pragma unroll
            for (int i = 0; i < A_ROWS; ++i)
                as[a_w][a_x + A_STEP * i] = pack_word<M>(ra[i * PER], ra[i * PER + PER - 1]);
        }
        if constexpr (BV) {
            #pragma unroll
            for (int i = 0; i < NBV; ++i) {
                const Word4 v = rbv[i];
                // 16-bit: v holds depth 2w's four columns in x, y (two per word, the first in
                // the low half) and depth 2w + 1's in z, w; word j pairs column j of both.
                const Word4 o =
                    M == Mma::Tf32
                        ? Word4{tf32_bits(__uint_as_float(v.x)), tf32_bits(__uint_as_float(v.y)),
                                tf32_bits(__uint_as_float(v.z)), tf32_bits(__uint_as_float(v.w))}
                        : Word4{(v.x & 0xffffu) | (v.z << 16), (v.x >> 16) | (v.z & 0xffff0000u),
                                (v.y & 0xffffu) | (v.w << 16), (v.y >> 16) | (v.w & 0xffff0000u)};
                *reinterpret_cast<Word4*>(&bs[(tid + 256 * i) / CG][4 * b_g]) = o;
            }
        } else {
            #pragma unroll
            for (int j = 0; j < B_WORDS; ++j)
                bs[b_w + B_STEP * j][b_x] = pack_word<M>(rb[j * PER], rb[j * PER + PER - 1]);
        }
        __syncthreads();
        if (d0 + KD < depth) fetch(d0 + KD);
        #pragma unroll
        for (int k0 = 0; k0 < WORDS; k0 += 8) {
            unsigned a[MT][4], b[NT][2];
            #pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int r = wr + i * 16 + g;
                a[i][0] = AV ? av[r][k0 + t] : as[k0 + t][r];
                a[i][1] = AV ? av[r + 8][k0 + t] : as[k0 + t][r + 8];
                a[i][2] = AV ? av[r][k0 + t + 4] : as[k0 + t + 4][r];
                a[i][3] = AV ? av[r + 8][k0 + t + 4] : as[k0 + t + 4][r + 8];
            }
            #pragma unroll
            for (int j = 0; j < NT; ++j) {
                b[j][0] = bs[k0 + t][wc + j * 8 + g];
                b[j][1] = bs[k0 + t + 4][wc + j * 8 + g];
            }
            mma_tile<M>(acc, a, b);
        }
        __syncthreads();
    }
    const auto store = make_store();
    if constexpr (EV) {
        // The loop's last barrier has freed the pool.
        epilogue_runs<TM, TN>(acc, reinterpret_cast<float*>(pool), r0, c0, wr, wc, rows, cols,
                              store);
    } else {
        #pragma unroll
        for (int i = 0; i < MT; ++i)
            #pragma unroll
            for (int j = 0; j < NT; ++j)
                #pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int row = r0 + wr + i * 16 + g + (q / 2) * 8;
                    const int col = c0 + wc + j * 8 + 2 * t + q % 2;
                    if (row < rows && col < cols) store(row, col, acc[i][j][q]);
                }
    }
}

// The cp.async ring's schedule, shared by the ring kernels: `issue(stage)` starts the copies of
// the next slice into a stage (advancing its own cursor), `compute(stage)` consumes one. The
// first STAGES - 1 slices are in flight before the loop; then each step waits for the oldest,
// and, past the barrier that frees the stage consumed last, puts the next one in flight before
// computing. Returns with every copy landed and the block past a barrier (the stages are free).
template <int STAGES, class IS, class CO>
__device__ __forceinline__ void cp_async_ring(int slices, IS issue, CO compute) {
    #pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < slices) issue(s);
        cp_async_commit();  // empty groups too, so the wait counts stay uniform
    }
    for (int k = 0; k < slices; ++k) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // slice k has landed for everyone; slice k - 1's stage is free
        if (k + STAGES - 1 < slices) issue((k + STAGES - 1) % STAGES);
        cp_async_commit();
        compute(k % STAGES);
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the ring
}

// gemm_tile_mma with a STAGES-deep cp.async ring in dynamic shared memory (GRADCAM_CONV_ASYNC=1
// for TF32; a tuning choice for BF16 and F16): operands go from global to shared memory without
// registers, and the loads of slice k + STAGES - 1 are in flight while the tensor cores work on
// slice k. 32-deep slices, whole ones only (the blocked depth order: depth a multiple of 32).
// A as gemm_tile_mma's AV: rows contiguous along the depth and in the tensor cores' format
// already (KRSC weights), `a_ptr(row, sl, q)` the address of words 4q..4q+3, moved by 16-byte
// copies into row-major stages (rows of WORDS + 4 words). B:
//   without BV (TF32 only): from a gatherer with `prep`, `at` and `ptr(run, l)` (an address, or
//     null for a zero), 4-byte copies of f32 patterns the tensor cores read truncated to TF32
//     (see tf32_in; so this path's results differ from the others' in the last bits);
//   with BV: 4 columns at a time, `gb.vprep(col)`, `gb.vat(prepared, sl)` and `gb.vptr(run, l)`
//     (the address of the 4 columns' elements at depth l, aligned to their size, or null):
//     16-byte copies of f32 (read truncated to TF32, as above), or 8-byte copies of 16-bit
//     elements, staged [depth][TN + 8] as they are and read as fragments by ldmatrix.trans
//     (no conversion anywhere: the same bits as gemm_tile_mma's).
// The epilogue is EV's (epilogue_runs, through the ring's memory). Dynamic shared memory:
// STAGES · async_stage_words<M, TM, TN>() words; block 256.
template <Mma M, int TM, int TN>
constexpr int async_stage_words() {
    constexpr int W = M == Mma::Tf32 ? 32 : 16;  // A's words per row and slice
    return TM * (W + 4) + (M == Mma::Tf32 ? 32 * (TN + 8) : 16 * (TN + 8));
}

template <Mma M, int TM, int TN, int STAGES, bool BV, class SL, class FA, class GB, class MS>
__device__ __forceinline__ void gemm_tile_mma_async(int rows, int cols, int depth, SL sl,
                                                    FA a_ptr, const GB& gb, MS make_store) {
    static_assert(M == Mma::Tf32 || BV, "16-bit B goes by vectors");
    static_assert(STAGES * async_stage_words<M, TM, TN>() >= mma_epi_words<TM, TN>(),
                  "the epilogue fits in the ring");
    constexpr int KD = 32, W = M == Mma::Tf32 ? 32 : 16, AP = W + 4;
    constexpr int STAGE = async_stage_words<M, TM, TN>();
    constexpr int WARPS_M = TM == 64 ? 4 : 2, WARPS_N = 8 / WARPS_M;
    constexpr int MT = TM / WARPS_M / 16, NT = TN / WARPS_N / 8;
    constexpr int VR = W / 4, NV = TM * VR / 256;  // A: 16-byte vectors per row, per thread
    constexpr int B_STEP = 256 / TN, B_WORDS = KD / B_STEP;  // B without BV
    constexpr int CG = TN / 4, NBV = KD * CG / 256;          // B with BV: column groups
    static_assert(NT % 2 == 0, "ldmatrix.x4 takes n-tiles in pairs");
    DYNAMIC_SHARED(unsigned, ring);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
    const int r0 = blockIdx.y * TM, c0 = blockIdx.x * TN;
    const int wr = (warp / WARPS_N) * (TM / WARPS_M), wc = (warp % WARPS_N) * (TN / WARPS_N);
    const int b_x = tid % TN, b_w = tid / TN;
    const bool b_in = c0 + b_x < cols;
    const auto bc = gb.prep(b_in ? c0 + b_x : c0);
    const int b_g = tid % CG;  // BV: the thread's column group (the same for all its copies)
    const bool bg_in = c0 + 4 * b_g < cols;
    const auto bgc = bv_prep<BV>(gb, bg_in ? c0 + 4 * b_g : c0);
    const void* any = a_ptr(r0, sl, 0);  // a valid address for the zero-filled copies
    auto as = [&](int st) { return ring + st * STAGE; };           // [TM][AP] words
    auto bs = [&](int st) { return ring + st * STAGE + TM * AP; };  // B's stage
    auto issue = [&](int st) {
        unsigned* sa = as(st);
        unsigned* sb = bs(st);
        #pragma unroll
        for (int i = 0; i < NV; ++i) {
            const int v = tid + 256 * i, row = r0 + v / VR;
            const bool ok = row < rows;
            cp_async<16>(&sa[(v / VR) * AP + 4 * (v % VR)], ok ? a_ptr(row, sl, v % VR) : any,
                         ok);
        }
        if constexpr (BV) {
            const auto vrun = gb.vat(bgc, sl);
            #pragma unroll
            for (int i = 0; i < NBV; ++i) {
                const int l = (tid + 256 * i) / CG;
                const auto p = bg_in ? gb.vptr(vrun, l) : nullptr;
                const void* src = p ? static_cast<const void*>(p) : any;
                if constexpr (M == Mma::Tf32)
                    cp_async<16>(&sb[l * (TN + 8) + 4 * b_g], src, p != nullptr);
                else  // 16-bit elements, rows of TN + 8: 4 columns are 2 words
                    cp_async<8>(&sb[(l * (TN + 8) + 4 * b_g) / 2], src, p != nullptr);
            }
        } else {
            const auto run = gb.at(bc, sl);
            #pragma unroll
            for (int j = 0; j < B_WORDS; ++j) {
                const int l = b_w + B_STEP * j;
                const auto p = b_in ? gb.ptr(run, l) : nullptr;
                cp_async<4>(&sb[l * (TN + 8) + b_x], p ? static_cast<const void*>(p) : any,
                            p != nullptr);
            }
        }
        sl.next();
    };
    float acc[MT][NT][4];
    zero_acc(acc);
    cp_async_ring<STAGES>(depth / KD, issue, [&](int st) {
        const unsigned* sa = as(st);
        const unsigned* sb = bs(st);
        #pragma unroll
        for (int kw = 0; kw < W; kw += 8) {  // 8 words: k8 (TF32) or k16 (16-bit) per mma
            unsigned a[MT][4], b[NT][2];
            #pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int r = wr + i * 16 + g;
                a[i][0] = sa[r * AP + kw + t];
                a[i][1] = sa[(r + 8) * AP + kw + t];
                a[i][2] = sa[r * AP + kw + t + 4];
                a[i][3] = sa[(r + 8) * AP + kw + t + 4];
            }
            if constexpr (M == Mma::Tf32) {
                #pragma unroll
                for (int j = 0; j < NT; ++j) {
                    b[j][0] = sb[(kw + t) * (TN + 8) + wc + j * 8 + g];
                    b[j][1] = sb[(kw + t + 4) * (TN + 8) + wc + j * 8 + g];
                }
            } else {
                // Lane 8q + i gives row i of matrix q: depths 2kw + 8(q & 1) + i, columns of
                // n-tile j + (q >> 1).
                const unsigned short* sb16 = reinterpret_cast<const unsigned short*>(sb);
                const int q = lane / 8, i = lane % 8, k = 2 * kw + 8 * (q & 1) + i;
                #pragma unroll
                for (int j = 0; j < NT; j += 2) {
                    unsigned r[4];
                    ldmatrix_x4<true>(r, &sb16[k * (TN + 8) + wc + (j + (q >> 1)) * 8]);
                    b[j][0] = r[0], b[j][1] = r[1], b[j + 1][0] = r[2], b[j + 1][1] = r[3];
                }
            }
            mma_tile<M>(acc, a, b);
        }
    });
    // The ring is free: the epilogue reuses it.
    epilogue_runs<TM, TN>(acc, reinterpret_cast<float*>(ring), r0, c0, wr, wc, rows, cols,
                          make_store());
}
