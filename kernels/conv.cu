// Convolutions as implicit GEMMs: the im2col matrix is never formed; each tile gathers its
// patch elements straight from the input (zero in the padding).
//   conv2d_fwd_<t>:      y = F.conv2d(x, w, b, stride, padding, dilation, groups)
//                        [+ residual] [then ReLU]: a ResNet block's last conv, its skip add
//                        and the ReLU after it in one pass (residual and bias may be null)
//                        GEMM per group: [K/g] x [N·OH·OW], depth C/g·R·S
//   conv2d_fwd_onhwc_<t>[_t128] (tf32, bf16, f16): the same with y (and residual) stored
//                        channels-last, for a first conv that feeds channels-last ones
//                        (GRADCAM_CONV_NHWC=1; see conv_nhwc.cu)
//   conv2d_bwd_data_<t>: dx = torch.nn.grad.conv2d_input(x.shape, w, dy, ...)
//                        GEMM per group: [C/g] x [N·H·W], depth K/g·R·S
// <t> = f32 (f32 tensors, FMAs), tf32 (f32 tensors, TF32 tensor cores: torch's allow_tf32
// convolutions), bf16 (bf16 tensors, BF16 tensor cores) or f16 (f16 tensors, F16 tensor cores);
// f32 accumulation in all four.
// Launch: grid (ceil(cols / 64), ceil(rows / 64), groups), block 256 (see gemm_tile.cuh);
// the _t128 tensor-core entries take 128x128 tiles (grid by 128).
#include "common.cuh"
#include "gemm_tile.cuh"

// Depth orders. Flat: d = (channel, tap row, tap column), the weights' own order, for any
// shape; each element decodes its d; 16-deep slices. Blocked, when the summed channels (C/g
// forward, K/g backward) are a multiple of the slice (32 on the tensor cores, 16 for the f32
// FMAs): slice q covers channels KD·(q / RS) .. + KD at tap q % RS, so the tap and its bounds
// checks are decoded once per slice and column, and the elements of a run are one channel
// stride apart. Consecutive slices walk the taps of one channel block, so weights and input
// rows come back from cache.
#define FLAT_KD 16
#define TAP_KD 32
struct FlatSlice {
    int d0;
    __device__ void next() { d0 += FLAT_KD; }
};
// Slices of `kd` channels (TAP_KD on the tensor cores, DEPTH = 16 for the f32 FMAs).
struct TapSlice {
    int ch0, tap, ry, sx, rs, s, kd;
    __device__ void next() {
        ++tap, ++sx;
        if (sx == s) sx = 0, ++ry;
        if (tap == rs) tap = 0, ry = 0, ch0 += kd;
    }
};

// 4 elements of storage type S as raw bits in one vector (16 bytes of f32, 8 of 16-bit values).
template <class S>
struct Vec4 {
    using T = Word2;
};
template <>
struct Vec4<float> {
    using T = Word4;
};
// The 4 elements at p (aligned to their size, read-only for the kernel) by one load: 16 bytes,
// or 8. Stated in PTX: written in C++, the compiler splits the load when the elements are used
// one by one (the shifts and roundings that follow).
__device__ __forceinline__ Word4 load4(const float* p) {
#ifdef GRADCAM_EMU
    return *reinterpret_cast<const Word4*>(p);
#else
    Word4 v;
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
#endif
}
template <class S>
__device__ __forceinline__ Word2 load4(const S* p) {
#ifdef GRADCAM_EMU
    return *reinterpret_cast<const Word2*>(p);
#else
    Word2 v;
    asm("ld.global.nc.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
#endif
}
// 4 elements at p as f32, and back, by one access (16 bytes of f32, 8 of 16-bit values; p
// aligned to that, see quad_aligned; read-only for the kernel when loaded).
__device__ __forceinline__ void ld4f(const float* p, float v[4]) {
    const Word4 w = load4(p);
    v[0] = __uint_as_float(w.x), v[1] = __uint_as_float(w.y);
    v[2] = __uint_as_float(w.z), v[3] = __uint_as_float(w.w);
}
template <class S>
__device__ __forceinline__ void ld4f(const S* p, float v[4]) {
    const Word2 w = load4(p);
    const Float2 lo = unpack2(p, w.x), hi = unpack2(p, w.y);
    v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
}
__device__ __forceinline__ void st4f(float* p, const float v[4]) {
    *reinterpret_cast<Word4*>(p) = Word4{__float_as_uint(v[0]), __float_as_uint(v[1]),
                                         __float_as_uint(v[2]), __float_as_uint(v[3])};
}
template <class S>
__device__ __forceinline__ void st4f(S* p, const float v[4]) {
    *reinterpret_cast<Word2*>(p) = Word2{pack2(p, v[0], v[1]), pack2(p, v[2], v[3])};
}
template <class S>
__device__ __forceinline__ bool quad_aligned(const S* p) {
    return ((unsigned long long)p & (4 * sizeof(S) - 1)) == 0;
}
__device__ __forceinline__ unsigned raw_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned raw_bits(bf16 v) { return v.bits; }
__device__ __forceinline__ unsigned raw_bits(f16 v) { return v.bits; }
// Elements 0..3 of v moved one place up, `e` in at place 0 (a tap one column to the left), or
// down with `e` at place 3 (one to the right).
__device__ __forceinline__ Word4 shift_in_left(Word4 v, unsigned e) {
    return Word4{e, v.x, v.y, v.z};
}
__device__ __forceinline__ Word4 shift_in_right(Word4 v, unsigned e) {
    return Word4{v.y, v.z, v.w, e};
}
__device__ __forceinline__ Word2 shift_in_left(Word2 v, unsigned e) {
    return Word2{e | (v.x << 16), (v.x >> 16) | (v.y << 16)};
}
__device__ __forceinline__ Word2 shift_in_right(Word2 v, unsigned e) {
    return Word2{(v.x >> 16) | (v.y << 16), (v.y >> 16) | (e << 16)};
}

// The im2col column of output pixel `col` (conv2d_fwd): its image's channel group and the
// input position under the kernel's top-left tap, computed once per column a thread stages.
template <class S>
struct FwdGather {
    const S* x;
    int c, h, wd, ohw, ow, sh, sw, ph, pw, dh, dw, c0;
    FastDiv rs, s;
    struct Col {
        const S* img;
        int iy0, ix0;
    };
    struct Run {
        Col cl;
        int d0;
    };
    __device__ Col prep(int col) const {
        const int ni = col / ohw, p = col - ni * ohw, oy = p / ow, ox = p - oy * ow;
        return Col{x + ((size_t)ni * c + c0) * h * wd, oy * sh - ph, ox * sw - pw};
    }
    // Flat order: element d = (channel, tap row, tap column) of the column; zero in the padding.
    __device__ Run at(const Col& cl, const FlatSlice& sl) const { return Run{cl, sl.d0}; }
    __device__ float load(const Run& rn, int l) const {
        const int d = rn.d0 + l;
        const int ci = rs.div(d), t = rs.mod(d, ci), ry = s.div(t), sx = s.mod(t, ry);
        const int iy = rn.cl.iy0 + ry * dh, ix = rn.cl.ix0 + sx * dw;
        if (iy < 0 || iy >= h || ix < 0 || ix >= wd) return 0.0f;
        return ld(rn.cl.img, ((size_t)ci * h + iy) * wd + ix);
    }
    // Blocked order: the run is the slice's channels at one input pixel (null in the padding).
    __device__ const S* at(const Col& cl, const TapSlice& sl) const {
        const int iy = cl.iy0 + sl.ry * dh, ix = cl.ix0 + sl.sx * dw;
        if (iy < 0 || iy >= h || ix < 0 || ix >= wd) return nullptr;
        return cl.img + ((size_t)sl.ch0 * h + iy) * wd + ix;
    }
    __device__ float load(const S* run, int l) const {
        return run ? ld(run, (size_t)l * h * wd) : 0.0f;
    }
    __device__ const S* ptr(const S* run, int l) const {
        return run ? run + (size_t)l * h * wd : nullptr;
    }
    // Columns 4 at a time (gemm_tile_mma's BV), for two shapes (the host checks): 1x1, stride
    // 1, no padding, H·W a multiple of 4 (4 neighbouring pixels of one image, contiguous at
    // every channel); or stride 1, no dilation, OW a multiple of 4 with taps at most one
    // column off (3x3, padding 1): 4 neighbouring pixels of one output row, read as the
    // aligned vector under them and the one element the tap's shift brings in from a side
    // (zero past the image's edge). Rows above or below the image read as zeros.
    struct VCol {
        const S* img;
        int oy, ox;
    };
    struct VRun {
        const S* at;  // channel ch0, the input row under the tap, column ox (null: padding)
        int d;        // the tap's column shift, -1..1
        bool left, right;  // the element shifted in exists (inside the row)
    };
    __device__ VCol vprep(int col) const {
        const int ni = col / ohw, p = col - ni * ohw, oy = p / ow;
        return VCol{x + ((size_t)ni * c + c0) * h * wd, oy, p - oy * ow};
    }
    __device__ VRun vat(const VCol& vc, const TapSlice& sl) const {
        const int iy = vc.oy + sl.ry - ph;
        if (iy < 0 || iy >= h) return VRun{nullptr, 0, false, false};
        return VRun{vc.img + ((size_t)sl.ch0 * h + iy) * wd + vc.ox, sl.sx - pw, vc.ox > 0,
                    vc.ox + 4 < wd};
    }
    // The address of the 4 columns' elements at depth l, for the cp.async ring's vector copies:
    // 1x1 convs with stride 1 and no padding only (the host checks), where no tap shifts them.
    __device__ const S* vptr(const VRun& rn, int l) const {
        return rn.at ? rn.at + (size_t)l * h * wd : nullptr;
    }
    __device__ typename Vec4<S>::T vload(const VRun& rn, int l) const {
        using V = typename Vec4<S>::T;
        if (!rn.at) return V{};
        const S* p = rn.at + (size_t)l * h * wd;
        const V cur = load4(p);
        if (rn.d == 0) return cur;
        if (rn.d < 0) return shift_in_left(cur, rn.left ? raw_bits(p[-1]) : 0u);
        return shift_in_right(cur, rn.right ? raw_bits(p[4]) : 0u);
    }
};

// The same for input pixel `col` of conv2d_bwd_data: the output gradients its taps reach.
template <class S>
struct BwdGather {
    const S* dy;
    int k, oh, ow, hw, wd, ph, pw, dh, dw, k0;
    FastDiv rs, s, sh, sw;
    struct Col {
        const S* img;
        int ty0, tx0;
    };
    struct Run {
        Col cl;
        int d0;
    };
    __device__ Col prep(int col) const {
        const int ni = col / hw, p = col - ni * hw, iy = p / wd, ix = p - iy * wd;
        return Col{dy + ((size_t)ni * k + k0) * oh * ow, iy + ph, ix + pw};
    }
    // The output pixel that tap (ry, sx) of input pixel (ty0, tx0) lands on, or -1.
    __device__ int reach(const Col& cl, int ry, int sx) const {
        const int ty = cl.ty0 - ry * dh, tx = cl.tx0 - sx * dw;
        if (ty < 0 || tx < 0) return -1;
        const int oy = sh.div(ty), ox = sw.div(tx);
        if (sh.mod(ty, oy) || sw.mod(tx, ox) || oy >= oh || ox >= ow) return -1;
        return oy * ow + ox;
    }
    __device__ Run at(const Col& cl, const FlatSlice& sl) const { return Run{cl, sl.d0}; }
    __device__ float load(const Run& rn, int l) const {
        const int d = rn.d0 + l;
        const int ko = rs.div(d), t = rs.mod(d, ko), ry = s.div(t), sx = s.mod(t, ry);
        const int o = reach(rn.cl, ry, sx);
        return o < 0 ? 0.0f : ld(rn.cl.img, (size_t)ko * oh * ow + o);
    }
    __device__ const S* at(const Col& cl, const TapSlice& sl) const {
        const int o = reach(cl, sl.ry, sl.sx);
        return o < 0 ? nullptr : cl.img + (size_t)sl.ch0 * oh * ow + o;
    }
    __device__ float load(const S* run, int l) const {
        return run ? ld(run, (size_t)l * oh * ow) : 0.0f;
    }
};

// S: storage type; T: 0 = f32 FMAs, 1 = TF32 tensor cores, 2 = BF16 or F16 tensor cores (as S
// is bf16 or f16), 3 = TF32 tensor cores fed by a 3-stage cp.async ring (KRSC weights, C/g a
// multiple of 32: the host checks; experimental, GRADCAM_CONV_ASYNC=1; dynamic shared memory
// 3 · async_stage_words<TS, TS>() · 4 bytes); TS: the tensor-core tile's side (64 or 128).
// KRSC (T = 1, 2): w holds the weights as conv_weight_krsc made them ([K][R][S][C/g], TF32
// rounded for T = 1) and C/g is a multiple of 32 (the host checks): each weight row of a slice
// is 32 contiguous channels, staged by 16-byte vectors (gemm_tile_mma's AV), and the output
// leaves through shared memory by runs of pixels (EV). VB (with KRSC):
// input pixels staged 4 at a time too (BV; the shapes of FwdGather::vprep, the host checks).
// ONHWC (plain weights, groups 1): y and residual channels-last ([N][OH][OW][K]), for a
// network's first conv (3 input channels) that feeds channels-last ones; TF32 stores its
// output rounded to TF32, as conv_nhwc.cu's epilogue does (what those convs read).
template <class S, int T, int TS = 64, bool KRSC = false, bool VB = false, bool ONHWC = false>
__device__ __forceinline__ void conv2d_fwd(const S* __restrict__ x, const S* __restrict__ w,
                                           const S* __restrict__ bias,
                                           const S* __restrict__ residual, S* __restrict__ y,
                                           int n, int c, int h, int wd, int k, int r, int s, int oh,
                                           int ow, int sh, int sw, int ph, int pw, int dh, int dw,
                                           int groups, int relu) {
    const int g = blockIdx.z, cg = c / groups, kg = k / groups, rs = r * s, ohw = oh * ow;
    const int depth = cg * rs;
    const FwdGather<S> gb{x,  c,  h,  wd, ohw,    ow,          sh,         sw,
                          ph, pw, dh, dw, g * cg, FastDiv(rs), FastDiv(s)};
    const S* wg = w + (size_t)g * kg * depth;
    auto store = [&]() {
        const FastDiv per_image(ohw);  // columns → (image, pixel)
        return [&, per_image](int m, int col, float v) {
            const int ko = g * kg + m, ni = per_image.div(col);
            const size_t at = ONHWC ? (size_t)col * k + ko
                                    : ((size_t)ni * k + ko) * ohw + per_image.mod(col, ni);
            if (bias) v += ld(bias, ko);
            if (residual) v += ld(residual, at);
            if (relu) v = nan_relu(v);
            if (ONHWC && T == 1) v = __uint_as_float(tf32_bits(v));
            st(y, at, v);
        };
    };
    if (T == 0) {  // f32 FMAs, 16-deep slices (FLAT_KD)
        if (cg % DEPTH == 0) {
            auto a_at = [&](int m, const TapSlice& sl, int l) {
                return ld(wg, ((size_t)m * cg + sl.ch0 + l) * rs + sl.tap);
            };
            gemm_tile_gather<true>(kg, n * ohw, depth, TapSlice{0, 0, 0, 0, rs, s, DEPTH}, a_at,
                                   gb, store);
        } else {
            auto a_at = [&](int m, const FlatSlice& sl, int l) {
                return ld(wg, (size_t)m * depth + sl.d0 + l);
            };
            gemm_tile_gather<true>(kg, n * ohw, depth, FlatSlice{0}, a_at, gb, store);
        }
        return;
    }
    // KRSC weights: words 4q.. of row m's slice (32 channels at one tap, contiguous).
    auto a_vec = [&](int m, const TapSlice& sl, int q) {
        return reinterpret_cast<const Word4*>(wg + ((size_t)m * rs + sl.tap) * cg + sl.ch0) + q;
    };
    // The epilogue by runs of 8 neighbouring pixels of one output channel (gemm_tile_mma's
    // EV): 4 at a time by one access (16 bytes f32, 8 of 16-bit values) for the output and
    // the residual when they are in one image and aligned, else one by one; the image and
    // pixel of the run's first column are decoded once.
    auto store_runs = [&]() {
        const FastDiv per_image(ohw);
        return [&, per_image](int m, int col, const float(&v)[8], int count) {
            const int ko = g * kg + m;
            const float b = bias ? ld(bias, ko) : 0.0f;
            auto finish = [&](float u, float res) {  // the element epilogue's order
                if (bias) u += b;
                if (residual) u += res;
                return relu ? nan_relu(u) : u;
            };
            int ni = per_image.div(col), p = per_image.mod(col, ni);
            #pragma unroll
            for (int q = 0; q < 8; q += 4) {
                const size_t at = ((size_t)ni * k + ko) * ohw + p;
                if (q + 4 <= count && p + 4 <= ohw && quad_aligned(y + at) &&
                    (!residual || quad_aligned(residual + at))) {
                    float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    if (residual) ld4f(residual + at, o);
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) o[e] = finish(v[q + e], o[e]);
                    st4f(y + at, o);
                    p += 4;
                } else {
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        if (q + e >= count) break;
                        const size_t ae = ((size_t)ni * k + ko) * ohw + p;
                        st(y, ae, finish(v[q + e], residual ? ld(residual, ae) : 0.0f));
                        if (++p == ohw) p = 0, ++ni;
                    }
                }
                if (p == ohw) p = 0, ++ni;
            }
        };
    };
    const TapSlice first{0, 0, 0, 0, rs, s, TAP_KD};
    if constexpr (T == 3) {
        constexpr Mma MA = sizeof(S) == 4 ? Mma::Tf32 : mma_of<S>;
        gemm_tile_mma_async<MA, TS, TS, 3, VB>(kg, n * ohw, depth, first, a_vec, gb, store_runs);
    } else {
        constexpr Mma M = T == 1 ? Mma::Tf32 : mma_of<S>;
        static_assert(T != 2 || sizeof(S) == 2, "16-bit tiles pack 16-bit storage as it is");
        if constexpr (KRSC) {
            constexpr int OPS = mma_smem_words<M, TS, TS, TAP_KD, true>();
            constexpr int EPI = mma_epi_words<TS, TS>(), POOL = OPS > EPI ? OPS : EPI;
            gemm_tile_mma<M, TS, TS, TAP_KD, POOL, true, VB, true>(kg, n * ohw, depth, first,
                                                                   a_vec, gb, store_runs);
            return;
        }
        constexpr int POOL = mma_smem_words<M, TS, TS, TAP_KD>();  // the larger of the two orders
        if (cg % TAP_KD == 0) {
            auto a_at = [&](int m, const TapSlice& sl, int l) {
                return ld(wg, ((size_t)m * cg + sl.ch0 + l) * rs + sl.tap);
            };
            gemm_tile_mma<M, TS, TS, TAP_KD, POOL>(kg, n * ohw, depth, first, a_at, gb, store);
        } else {
            auto a_at = [&](int m, const FlatSlice& sl, int l) {
                return ld(wg, (size_t)m * depth + sl.d0 + l);
            };
            gemm_tile_mma<M, TS, TS, FLAT_KD, POOL>(kg, n * ohw, depth, FlatSlice{0}, a_at, gb,
                                                    store);
        }
    }
}

template <class S, int T, int TS = 64>
__device__ __forceinline__ void conv2d_bwd_data(const S* __restrict__ dy, const S* __restrict__ w,
                                                S* __restrict__ dx,
                                                int n, int c, int h, int wd, int k, int r, int s,
                                                int oh, int ow, int sh, int sw, int ph, int pw,
                                                int dh, int dw, int groups) {
    const int g = blockIdx.z, cg = c / groups, kg = k / groups, rs = r * s, hw = h * wd;
    const BwdGather<S> gb{dy,     k,           oh,         ow,          hw, wd, ph, pw, dh, dw,
                          g * kg, FastDiv(rs), FastDiv(s), FastDiv(sh), FastDiv(sw)};
    // Weights of group g as [K/g][C/g][R·S]; the GEMM's A is their transpose per tap.
    const S* wg = w + (size_t)g * kg * cg * rs;
    auto store = [&]() {
        const FastDiv per_image(hw);
        return [&, per_image](int ci, int col, float v) {
            const int ni = per_image.div(col);
            st(dx, ((size_t)ni * c + g * cg + ci) * hw + per_image.mod(col, ni), v);
        };
    };
    if (T == 0) {  // f32 FMAs, 16-deep slices (FLAT_KD)
        if (kg % DEPTH == 0) {
            auto a_at = [&](int ci, const TapSlice& sl, int l) {
                return ld(wg, ((size_t)(sl.ch0 + l) * cg + ci) * rs + sl.tap);
            };
            gemm_tile_gather<false>(cg, n * hw, kg * rs, TapSlice{0, 0, 0, 0, rs, s, DEPTH}, a_at,
                                    gb, store);
        } else {
            auto a_at = [&](int ci, const FlatSlice& sl, int l) {
                const int d = sl.d0 + l, ko = gb.rs.div(d);
                return ld(wg, ((size_t)ko * cg + ci) * rs + gb.rs.mod(d, ko));
            };
            gemm_tile_gather<false>(cg, n * hw, kg * rs, FlatSlice{0}, a_at, gb, store);
        }
        return;
    }
    constexpr Mma M = T == 1 ? Mma::Tf32 : mma_of<S>;
    static_assert(T != 2 || sizeof(S) == 2, "16-bit tiles pack 16-bit storage as it is");
    constexpr int POOL = mma_smem_words<M, TS, TS, TAP_KD>();  // the larger of the two orders
    if (kg % TAP_KD == 0) {
        auto a_at = [&](int ci, const TapSlice& sl, int l) {
            return ld(wg, ((size_t)(sl.ch0 + l) * cg + ci) * rs + sl.tap);
        };
        const TapSlice first{0, 0, 0, 0, rs, s, TAP_KD};
        gemm_tile_mma<M, TS, TS, TAP_KD, POOL>(cg, n * hw, kg * rs, first, a_at, gb, store);
    } else {
        auto a_at = [&](int ci, const FlatSlice& sl, int l) {
            const int d = sl.d0 + l, ko = gb.rs.div(d);
            return ld(wg, ((size_t)ko * cg + ci) * rs + gb.rs.mod(d, ko));
        };
        gemm_tile_mma<M, TS, TS, FLAT_KD, POOL>(cg, n * hw, kg * rs, FlatSlice{0}, a_at, gb, store);
    }
}

// w.permute(0, 2, 3, 1) per group, [K][C/g][R][S] → [K][R][S][C/g] (KRSC), rounded to TF32
// when `tf32`: the weights of the KRSC convolutions, made once when a model is loaded.
template <class S>
__device__ __forceinline__ void conv_weight_krsc(const S* __restrict__ w, S* __restrict__ out,
                                                 int k, int cg, int rs, int tf32) {
    const int n = k * cg * rs;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int c = i % cg, t = (i / cg) % rs, m = i / (cg * rs);
        const float v = ld(w, ((size_t)m * cg + c) * rs + t);
        st(out, i, tf32 ? __uint_as_float(tf32_bits(v)) : v);
    }
}

// The entry points: one per op and type (the emulator's table and the launcher find them by
// name, so no macros for the names).
#define CONV2D_FWD_PARAMS(S)                                                                    \
    const S *__restrict__ x, const S *__restrict__ w, const S *__restrict__ bias,              \
        const S *__restrict__ residual, S *__restrict__ y, int n, int c, int h, int wd, int k, \
        int r, int s, int oh, int ow, int sh, int sw, int ph, int pw, int dh, int dw,          \
        int groups, int relu
#define CONV2D_FWD_ARGS \
    x, w, bias, residual, y, n, c, h, wd, k, r, s, oh, ow, sh, sw, ph, pw, dh, dw, groups, relu
#define CONV2D_BWD_PARAMS(S)                                                                   \
    const S *__restrict__ dy, const S *__restrict__ w, S *__restrict__ dx, int n, int c, int h,     \
        int wd, int k, int r, int s, int oh, int ow, int sh, int sw, int ph, int pw, int dh, int dw, \
        int groups
#define CONV2D_BWD_ARGS dy, w, dx, n, c, h, wd, k, r, s, oh, ow, sh, sw, ph, pw, dh, dw, groups


extern "C" __global__ void conv2d_fwd_f32(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 0>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void TWO_PER_SM conv2d_fwd_tf32(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 1>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void TWO_PER_SM conv2d_fwd_bf16(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 2>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void TWO_PER_SM conv2d_fwd_f16(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 2>(CONV2D_FWD_ARGS);
}
// 128x128 tiles for the tensor-core paths: grid (ceil(cols / 128), ceil(rows / 128), groups).
// Channels-last output (ONHWC): a network's first conv feeding channels-last convs.
extern "C" __global__ void TWO_PER_SM conv2d_fwd_onhwc_tf32(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 1, 64, false, false, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void TWO_PER_SM conv2d_fwd_onhwc_bf16(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 2, 64, false, false, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void TWO_PER_SM conv2d_fwd_onhwc_f16(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 2, 64, false, false, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_onhwc_tf32_t128(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 1, 128, false, false, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_onhwc_bf16_t128(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 2, 128, false, false, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_onhwc_f16_t128(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 2, 128, false, false, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_tf32_t128(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 1, 128>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_bf16_t128(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 2, 128>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_f16_t128(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 2, 128>(CONV2D_FWD_ARGS);
}
// The experimental cp.async entries (64x64 and 128x128 tiles).
extern "C" __global__ void TWO_PER_SM conv2d_fwd_tf32_async(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 3>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_tf32_t128_async(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 3, 128>(CONV2D_FWD_ARGS);
}
// The ring with input pixels 4 at a time (16-byte copies of f32, 8-byte of 16-bit values):
// 1x1 convs with stride 1, no padding and H·W a multiple of 4, on KRSC weights.
extern "C" __global__ void TWO_PER_SM conv2d_fwd_tf32_async_vec(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 3, 64, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_tf32_t128_async_vec(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 3, 128, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void THREE_PER_SM conv2d_fwd_bf16_async_vec(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 3, 64, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_bf16_t128_async_vec(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 3, 128, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void THREE_PER_SM conv2d_fwd_f16_async_vec(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 3, 64, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_f16_t128_async_vec(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 3, 128, true, true>(CONV2D_FWD_ARGS);
}
// KRSC weights (see conv_weight_krsc_<t>): C/g a multiple of 32.
extern "C" __global__ void THREE_PER_SM conv2d_fwd_tf32_krsc(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 1, 64, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_tf32_t128_krsc(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 1, 128, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void THREE_PER_SM conv2d_fwd_bf16_krsc(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 2, 64, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_bf16_t128_krsc(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 2, 128, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void THREE_PER_SM conv2d_fwd_f16_krsc(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 2, 64, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_f16_t128_krsc(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 2, 128, true>(CONV2D_FWD_ARGS);
}
// KRSC weights and input pixels 4 at a time: 1x1 convs with stride 1, no padding and H·W a
// multiple of 4, or stride 1, no dilation, taps at most one column off (3x3, padding 1) and OW
// a multiple of 4.
extern "C" __global__ void THREE_PER_SM conv2d_fwd_tf32_vec(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 1, 64, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_tf32_t128_vec(CONV2D_FWD_PARAMS(float)) {
    conv2d_fwd<float, 1, 128, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void THREE_PER_SM conv2d_fwd_bf16_vec(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 2, 64, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_bf16_t128_vec(CONV2D_FWD_PARAMS(bf16)) {
    conv2d_fwd<bf16, 2, 128, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void THREE_PER_SM conv2d_fwd_f16_vec(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 2, 64, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv2d_fwd_f16_t128_vec(CONV2D_FWD_PARAMS(f16)) {
    conv2d_fwd<f16, 2, 128, true, true>(CONV2D_FWD_ARGS);
}
extern "C" __global__ void conv_weight_krsc_f32(const float* __restrict__ w, float* __restrict__ out,
                                                int k, int cg, int rs, int tf32) {
    conv_weight_krsc(w, out, k, cg, rs, tf32);
}
extern "C" __global__ void conv_weight_krsc_bf16(const bf16* __restrict__ w, bf16* __restrict__ out,
                                                 int k, int cg, int rs, int tf32) {
    conv_weight_krsc(w, out, k, cg, rs, tf32);
}
extern "C" __global__ void conv_weight_krsc_f16(const f16* __restrict__ w, f16* __restrict__ out,
                                                int k, int cg, int rs, int tf32) {
    conv_weight_krsc(w, out, k, cg, rs, tf32);
}
extern "C" __global__ void conv2d_bwd_data_f32(CONV2D_BWD_PARAMS(float)) {
    conv2d_bwd_data<float, 0>(CONV2D_BWD_ARGS);
}
extern "C" __global__ void TWO_PER_SM conv2d_bwd_data_tf32(CONV2D_BWD_PARAMS(float)) {
    conv2d_bwd_data<float, 1>(CONV2D_BWD_ARGS);
}
extern "C" __global__ void TWO_PER_SM conv2d_bwd_data_bf16(CONV2D_BWD_PARAMS(bf16)) {
    conv2d_bwd_data<bf16, 2>(CONV2D_BWD_ARGS);
}
extern "C" __global__ void TWO_PER_SM conv2d_bwd_data_f16(CONV2D_BWD_PARAMS(f16)) {
    conv2d_bwd_data<f16, 2>(CONV2D_BWD_ARGS);
}
extern "C" __global__ void conv2d_bwd_data_tf32_t128(CONV2D_BWD_PARAMS(float)) {
    conv2d_bwd_data<float, 1, 128>(CONV2D_BWD_ARGS);
}
extern "C" __global__ void conv2d_bwd_data_bf16_t128(CONV2D_BWD_PARAMS(bf16)) {
    conv2d_bwd_data<bf16, 2, 128>(CONV2D_BWD_ARGS);
}
extern "C" __global__ void conv2d_bwd_data_f16_t128(CONV2D_BWD_PARAMS(f16)) {
    conv2d_bwd_data<f16, 2, 128>(CONV2D_BWD_ARGS);
}
