// Shared-memory tiled GEMMs whose operands are gathered by functors, so convolutions (implicit
// im2col) and linear layers share one inner loop. C[rows, cols] = A[rows, depth] ·
// B[depth, cols]; block 256 threads, grid (ceil(cols / 64), ceil(rows / 64)); 16-deep slices of
// A and B are staged in shared memory.
//   gemm_tile:      f32 FMAs; each thread owns a 4x4 piece of the 64x64 tile.
//   gemm_tile_mma:  tensor cores (mma.cuh); operands rounded to TF32 or BF16 as they are
//                   staged, f32 accumulation; each of the 8 warps owns a 16x32 piece (4 m16n8
//                   tiles); requires blockDim.x == 256 (the staging map below).
#pragma once

#include "mma.cuh"

#define TILE 64
#define DEPTH 16

template <class FA, class FB, class FS>
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
            const int d = i / TILE, t = i % TILE;
            as[d][t] = (r0 + t < rows && d0 + d < depth) ? a_at(r0 + t, d0 + d) : 0.0f;
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


// Operand types of the tensor-core tile.
enum class Mma { Tf32, Bf16 };

// B comes from a gatherer with `prep(col)`, run once for the column a thread stages (the same
// in every depth slice), and `load(prepared, d)` per element; A from `a_at(row, d)`. Staging
// runs A's depth and B's columns fastest across threads (contiguous in memory for weights and
// neighbouring output pixels), and the next slice's loads are issued before the tensor cores
// work on the current one. Shared memory holds one 32-bit word per TF32 element, or one per
// pair of BF16 elements along the depth (the m16n8k16 fragments take pairs), so both read
// their fragments with the same (k·72 + row) pattern: 32 distinct banks.
template <Mma M, class FA, class GB, class FS>
__device__ __forceinline__ void gemm_tile_mma(int rows, int cols, int depth, FA a_at, const GB& gb,
                                              FS store) {
    constexpr int WORDS = M == Mma::Tf32 ? DEPTH : DEPTH / 2;  // depth words per slice
    __shared__ unsigned as[WORDS][TILE + 8];
    __shared__ unsigned bs[WORDS][TILE + 8];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
    const int r0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    const int wr = (warp / 2) * 16, wc = (warp % 2) * 32;
    // Each thread stages 4 elements of A and 4 of B per slice: TF32 one word each (A rows
    // a_x + 16j at depth a_w; B depths b_w + 4j), BF16 two words of two (A rows a_x + 32j at
    // depths 2a_w, 2a_w+1; B depths 2(b_w + 4j), +1).
    constexpr int A_W = WORDS, A_STEP = 256 / WORDS;
    const int a_w = tid % A_W, a_x = tid / A_W;
    const int b_x = tid % TILE, b_w = tid / TILE;
    const bool b_in = c0 + b_x < cols;
    const auto bc = gb.prep(b_in ? c0 + b_x : c0);
    float ra[4], rb[4];
    auto fetch = [&](int d0) {
        for (int i = 0; i < 4; ++i) {
            int row, da, db;
            if (M == Mma::Tf32) {
                row = r0 + a_x + A_STEP * i, da = d0 + a_w, db = d0 + b_w + 4 * i;
            } else {
                row = r0 + a_x + A_STEP * (i / 2), da = d0 + 2 * a_w + i % 2;
                db = d0 + 2 * (b_w + 4 * (i / 2)) + i % 2;
            }
            ra[i] = (row < rows && da < depth) ? a_at(row, da) : 0.0f;
            rb[i] = (b_in && db < depth) ? gb.load(bc, db) : 0.0f;
        }
    };
    float acc[4][4];
    for (int j = 0; j < 4; ++j)
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
    fetch(0);
    for (int d0 = 0; d0 < depth; d0 += DEPTH) {
        if (M == Mma::Tf32) {
            for (int i = 0; i < 4; ++i) {
                as[a_w][a_x + A_STEP * i] = tf32_bits(ra[i]);
                bs[b_w + 4 * i][b_x] = tf32_bits(rb[i]);
            }
        } else {
            for (int j = 0; j < 2; ++j) {
                as[a_w][a_x + A_STEP * j] = bf16x2(ra[2 * j], ra[2 * j + 1]);
                bs[b_w + 4 * j][b_x] = bf16x2(rb[2 * j], rb[2 * j + 1]);
            }
        }
        __syncthreads();
        if (d0 + DEPTH < depth) fetch(d0 + DEPTH);
        for (int k0 = 0; k0 < WORDS; k0 += 8) {
            const unsigned a[4] = {as[k0 + t][wr + g], as[k0 + t][wr + g + 8], as[k0 + t + 4][wr + g],
                                   as[k0 + t + 4][wr + g + 8]};
            for (int j = 0; j < 4; ++j) {
                const unsigned b[2] = {bs[k0 + t][wc + j * 8 + g], bs[k0 + t + 4][wc + j * 8 + g]};
                if (M == Mma::Tf32)
                    mma_tf32_m16n8k8(acc[j], a, b);
                else
                    mma_bf16_m16n8k16(acc[j], a, b);
            }
        }
        __syncthreads();
    }
    for (int j = 0; j < 4; ++j)
        for (int i = 0; i < 4; ++i) {
            const int row = r0 + wr + g + (i / 2) * 8, col = c0 + wc + j * 8 + 2 * t + i % 2;
            if (row < rows && col < cols) store(row, col, acc[j][i]);
        }
}
