// A shared-memory tiled f32 GEMM whose operands are gathered by functors, so convolutions
// (implicit im2col) and linear layers share one inner loop. C[rows, cols] = A[rows, depth] ·
// B[depth, cols]; block 256 threads, grid (ceil(cols / 64), ceil(rows / 64)); each thread owns a
// 4x4 piece of a 64x64 tile; 16-deep slices of A and B are staged in shared memory.
#pragma once

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

