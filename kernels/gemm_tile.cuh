// Shared-memory tiled GEMMs whose operands are gathered by functors, so convolutions (implicit
// im2col) and linear layers share one inner loop. C[rows, cols] = A[rows, depth] ·
// B[depth, cols]; block 256 threads, grid (ceil(cols / 64), ceil(rows / 64)); 16-deep slices of
// A and B are staged in shared memory.
//   gemm_tile:      f32 FMAs; each thread owns a 4x4 piece of the 64x64 tile.
//   gemm_tile_tf32: tensor cores (mma.cuh); operands rounded to TF32 as they are staged, f32
//                   accumulation; each of the 8 warps owns a 16x32 piece (4 m16n8 tiles);
//                   requires blockDim.x == 256 (the staging map below).
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


// B comes from a gatherer with `prep(col)`, run once for the column a thread stages (the same
// in every depth slice), and `load(prepared, d)` per element; A from `a_at(row, d)`. Staging
// runs A's depth and B's columns fastest across threads (contiguous in memory for weights and
// neighbouring output pixels), and the next slice's loads are issued before the tensor cores
// work on the current one.
template <class FA, class GB, class FS>
__device__ __forceinline__ void gemm_tile_tf32(int rows, int cols, int depth, FA a_at,
                                               const GB& gb, FS store) {
    // Rows padded to 72 words: a fragment load reads (k0 + t)·72 + g, 32 distinct banks.
    __shared__ unsigned as[DEPTH][TILE + 8];
    __shared__ unsigned bs[DEPTH][TILE + 8];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
    const int r0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    const int wr = (warp / 2) * 16, wc = (warp % 2) * 32;
    const int a_d = tid % DEPTH, a_x = tid / DEPTH;  // A rows a_x + 16j
    const int b_x = tid % TILE, b_d = tid / TILE;    // B depths b_d + 4j
    const bool b_in = c0 + b_x < cols;
    const auto bc = gb.prep(b_in ? c0 + b_x : c0);
    float ra[4], rb[4];
    auto fetch = [&](int d0) {
        for (int j = 0; j < 4; ++j) {
            const int row = r0 + a_x + 16 * j, da = d0 + a_d, db = d0 + b_d + 4 * j;
            ra[j] = (row < rows && da < depth) ? a_at(row, da) : 0.0f;
            rb[j] = (b_in && db < depth) ? gb.load(bc, db) : 0.0f;
        }
    };
    float acc[4][4];
    for (int j = 0; j < 4; ++j)
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
    fetch(0);
    for (int d0 = 0; d0 < depth; d0 += DEPTH) {
        for (int j = 0; j < 4; ++j) {
            as[a_d][a_x + 16 * j] = tf32_bits(ra[j]);
            bs[b_d + 4 * j][b_x] = tf32_bits(rb[j]);
        }
        __syncthreads();
        if (d0 + DEPTH < depth) fetch(d0 + DEPTH);
        for (int k0 = 0; k0 < DEPTH; k0 += 8) {
            const unsigned a[4] = {as[k0 + t][wr + g], as[k0 + t][wr + g + 8], as[k0 + t + 4][wr + g],
                                   as[k0 + t + 4][wr + g + 8]};
            for (int j = 0; j < 4; ++j) {
                const unsigned b[2] = {bs[k0 + t][wc + j * 8 + g], bs[k0 + t + 4][wc + j * 8 + g]};
                mma_tf32_m16n8k8(acc[j], a, b);
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
