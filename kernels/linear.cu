// Fully connected layers on the shared tiled GEMM, f32, bf16 or f16 storage (<t>), f32
// arithmetic.
//   linear_fwd_<t>:      y = F.linear(x, w, b)   x [N, in], w [out, in] → [N, out]
//                        grid (ceil(N / 64), ceil(out / 64), splits), block 256
//   linear_bwd_data_<t>: dx = dy @ w             dy [N, out] → [N, in]
//                        grid (ceil(N / 64), ceil(in / 64), splits), block 256; for bf16 and
//                        f16 (tensor cores, see below) grid (ceil(in / 64), ceil(N / 64), splits)
//   linear_sum_<t>:      y[e] = Σ_z part[z][e] (+ b[e % cols]), z in order; grid-stride
// Split K: at batch 64 a layer such as VGG's fc6 (25088 → 4096) has only 64 output tiles for
// 132 SMs, so the depth is cut into `splits` chunks of `chunk` (a multiple of 16) whose f32
// partial products go to `part` [splits][N][cols] and are summed by linear_sum in a fixed
// order (deterministic, unlike atomics). With part null (one split) the GEMM writes y itself.
#include "common.cuh"
#include "gemm_tile.cuh"

// 16-bit storage: the products of two bf16 (f16) values are exact in f32, so the tensor cores
// (gemm_tile_mma, f32 accumulation) compute what the f32 tiles do, in another summation order,
// several times faster (VGG's fc6 reads 205 MB of weights per batch: memory-bound there).
// Slices of 32 features; B's column `col` is row `col` of a [cols][depth] operand (stride
// `ld_b`), or element `col` of each depth row of a [depth][cols] one (stride 1 along columns).
struct LinSlice {
    int d0;
    __device__ void next() { d0 += 32; }
};
template <class T>
struct LinGather {
    const T* base;
    int col_stride, depth_stride;
    __device__ const T* prep(int col) const { return base + (size_t)col * col_stride; }
    __device__ const T* at(const T* p, const LinSlice& sl) const {
        return p + (size_t)sl.d0 * depth_stride;
    }
    __device__ float load(const T* run, int l) const { return ld(run, (size_t)l * depth_stride); }
};
template <class T, class FA, class FS>
__device__ __forceinline__ void linear_mma(int rows, int cols, int depth, FA a_at,
                                           const LinGather<T>& gb, FS store) {
    constexpr Mma M = mma_of<T>;
    constexpr int POOL = mma_smem_words<M, 64, 64, 32>();
    gemm_tile_mma<M, 64, 64, 32, POOL>(rows, cols, depth, LinSlice{0}, a_at, gb,
                                       [&]() { return store; });
}

template <class T>
__device__ __forceinline__ void linear_fwd(const T* __restrict__ x, const T* __restrict__ w,
                                           const T* __restrict__ bias, T* __restrict__ y,
                                           float* __restrict__ part, int n, int in, int out,
                                           int chunk) {
    const int j0 = blockIdx.z * chunk, len = in - j0 < chunk ? in - j0 : chunk;
    auto a_at = [&](int o, int j) { return ld(w, (size_t)o * in + j0 + j); };
    auto b_at = [&](int j, int i) { return ld(x, (size_t)i * in + j0 + j); };
    float* p = part ? part + (size_t)blockIdx.z * n * out : nullptr;
    auto store = [&](int o, int i, float v) {
        if (p)
            p[(size_t)i * out + o] = v;
        else
            st(y, (size_t)i * out + o, bias ? v + ld(bias, o) : v);
    };
    if constexpr (sizeof(T) == 2) {
        // A: the weights' rows (features contiguous); B: the inputs' rows.
        auto a_mma = [&](int o, const LinSlice& sl, int l) { return a_at(o, sl.d0 + l); };
        linear_mma(out, n, len, a_mma, LinGather<T>{x + j0, in, 1}, store);
    } else {
        gemm_tile<true, true>(out, n, len, a_at, b_at, store);
    }
}

template <class T>
__device__ __forceinline__ void linear_bwd_data(const T* __restrict__ dy, const T* __restrict__ w,
                                                T* __restrict__ dx, float* __restrict__ part,
                                                int n, int in, int out, int chunk) {
    const int o0 = blockIdx.z * chunk, len = out - o0 < chunk ? out - o0 : chunk;
    auto a_at = [&](int j, int o) { return ld(w, (size_t)(o0 + o) * in + j); };
    auto b_at = [&](int o, int i) { return ld(dy, (size_t)i * out + o0 + o); };
    float* p = part ? part + (size_t)blockIdx.z * n * in : nullptr;
    auto store = [&](int j, int i, float v) {
        if (p)
            p[(size_t)i * in + j] = v;
        else
            st(dx, (size_t)i * in + j, v);
    };
    if constexpr (sizeof(T) == 2) {
        // Transposed roles, so both operands are read along their contiguous side: A the
        // gradients' rows [N][out] (rows N), B the weights' columns (cols in, depth out at
        // stride in); grid (ceil(in / 64), ceil(N / 64), splits).
        auto a_mma = [&](int i, const LinSlice& sl, int l) { return b_at(sl.d0 + l, i); };
        auto store_t = [&](int i, int j, float v) { store(j, i, v); };
        linear_mma(n, in, len, a_mma, LinGather<T>{w + (size_t)o0 * in, 1, in}, store_t);
    } else {
        gemm_tile<false, true>(in, n, len, a_at, b_at, store);
    }
}

template <class T>
__device__ __forceinline__ void linear_sum(const float* __restrict__ part,
                                           const T* __restrict__ bias, T* __restrict__ y,
                                           int splits, int count, int cols) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < count; e += gridDim.x * blockDim.x) {
        float v = 0.0f;
        for (int z = 0; z < splits; ++z) v += part[(size_t)z * count + e];
        st(y, e, bias ? v + ld(bias, e % cols) : v);
    }
}

extern "C" __global__ void linear_fwd_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ y,
                                          float* __restrict__ part, int n, int in, int out,
                                          int chunk) {
    linear_fwd(x, w, bias, y, part, n, in, out, chunk);
}
extern "C" __global__ void linear_fwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                           const bf16* __restrict__ bias, bf16* __restrict__ y,
                                           float* __restrict__ part, int n, int in, int out,
                                           int chunk) {
    linear_fwd(x, w, bias, y, part, n, in, out, chunk);
}
extern "C" __global__ void linear_fwd_f16(const f16* __restrict__ x, const f16* __restrict__ w,
                                          const f16* __restrict__ bias, f16* __restrict__ y,
                                          float* __restrict__ part, int n, int in, int out,
                                          int chunk) {
    linear_fwd(x, w, bias, y, part, n, in, out, chunk);
}
extern "C" __global__ void linear_bwd_data_f32(const float* __restrict__ dy,
                                               const float* __restrict__ w, float* __restrict__ dx,
                                               float* __restrict__ part, int n, int in, int out,
                                               int chunk) {
    linear_bwd_data(dy, w, dx, part, n, in, out, chunk);
}
extern "C" __global__ void linear_bwd_data_bf16(const bf16* __restrict__ dy,
                                                const bf16* __restrict__ w, bf16* __restrict__ dx,
                                                float* __restrict__ part, int n, int in, int out,
                                                int chunk) {
    linear_bwd_data(dy, w, dx, part, n, in, out, chunk);
}
extern "C" __global__ void linear_bwd_data_f16(const f16* __restrict__ dy,
                                               const f16* __restrict__ w, f16* __restrict__ dx,
                                               float* __restrict__ part, int n, int in, int out,
                                               int chunk) {
    linear_bwd_data(dy, w, dx, part, n, in, out, chunk);
}
extern "C" __global__ void linear_sum_f32(const float* __restrict__ part,
                                          const float* __restrict__ bias, float* __restrict__ y,
                                          int splits, int count, int cols) {
    linear_sum(part, bias, y, splits, count, cols);
}
extern "C" __global__ void linear_sum_bf16(const float* __restrict__ part,
                                           const bf16* __restrict__ bias, bf16* __restrict__ y,
                                           int splits, int count, int cols) {
    linear_sum(part, bias, y, splits, count, cols);
}
extern "C" __global__ void linear_sum_f16(const float* __restrict__ part,
                                          const f16* __restrict__ bias, f16* __restrict__ y,
                                          int splits, int count, int cols) {
    linear_sum(part, bias, y, splits, count, cols);
}
