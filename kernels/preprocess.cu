// Images go up as bytes: RGB8 (HWC) → bilinear resize (half-pixel centres, edges clamped, as
// cv2.resize INTER_LINEAR on float data) → the model's normalisation (x - mean) / std, ImageNet's
// unless its metadata says otherwise (m0..m2, s0..s2) → CHW float. One launch per
// batch whatever the images' sizes: blockIdx.y picks the image, whose offset and size come from
// the ImageDesc table uploaded with the pixels.
//   preprocess_rgb8_<t>: grid (ceil(oh·ow / 256), N), block 256, one thread per output pixel;
//                        output [N, 3, oh, ow] stored f32, bf16 or f16.
// aug_smooth's copies of the preprocessed batch stay on the device (see Backend::aug_copies;
// also Ablation-CAM's repeated values, plain copies):
//   aug_copy_<t>: grid (ceil(copies·N·C·H·W / 256)), block 256, one launch per run of copies
//                 alike: copies t0..t0+copies of out [T·N, C, H, W] are x mirrored left to
//                 right when asked, times `factor` (passed as its f32 bits: launch arguments
//                 are integers). 1-D with 64-bit indices: N·C passes grid.y's 65535 for a
//                 ResNet's activations.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void preprocess_rgb8(const unsigned char* __restrict__ pixels,
                                                const ImageDesc* __restrict__ desc,
                                                T* __restrict__ out, int oh, int ow, float m0,
                                                float m1, float m2, float s0, float s1, float s2) {
    const float mean[3] = {m0, m1, m2};
    const float std_[3] = {s0, s1, s2};
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= oh * ow) return;
    const ImageDesc d = desc[blockIdx.y];
    const unsigned char* rgb = pixels + d.off;
    const int h = d.h, w = d.w;
    out += (size_t)blockIdx.y * 3 * oh * ow;
    int y0, y1, x0, x1;
    float fy, fx;
    bilinear_axis(p / ow, h, oh, &y0, &y1, &fy);
    bilinear_axis(p % ow, w, ow, &x0, &x1, &fx);
    for (int c = 0; c < 3; ++c) {
        const float a = rgb[(y0 * w + x0) * 3 + c] / 255.0f, b = rgb[(y0 * w + x1) * 3 + c] / 255.0f;
        const float e = rgb[(y1 * w + x0) * 3 + c] / 255.0f, f = rgb[(y1 * w + x1) * 3 + c] / 255.0f;
        const float top = a * (1.0f - fx) + b * fx, bot = e * (1.0f - fx) + f * fx;
        st(out, (size_t)c * oh * ow + p, (top * (1.0f - fy) + bot * fy - mean[c]) / std_[c]);
    }
}

template <class T>
__device__ __forceinline__ void aug_copy(const T* __restrict__ x, T* __restrict__ out, int nc,
                                         int h, int w, int t0, int copies, int mirror,
                                         int factor_bits) {
    const size_t per = (size_t)nc * h * w;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= per * copies) return;
    const float factor = __uint_as_float((unsigned)factor_bits);
    const size_t e = idx % per;
    const int xx = (int)(e % w);
    const size_t src = mirror ? e - xx + (w - 1 - xx) : e;
    st(out, (size_t)t0 * per + idx, ld(x, src) * factor);
}

extern "C" __global__ void preprocess_rgb8_f32(const unsigned char* __restrict__ pixels,
                                               const ImageDesc* __restrict__ desc,
                                               float* __restrict__ out, int oh, int ow, float m0,
                                               float m1, float m2, float s0, float s1, float s2) {
    preprocess_rgb8(pixels, desc, out, oh, ow, m0, m1, m2, s0, s1, s2);
}
extern "C" __global__ void preprocess_rgb8_bf16(const unsigned char* __restrict__ pixels,
                                                const ImageDesc* __restrict__ desc,
                                                bf16* __restrict__ out, int oh, int ow, float m0,
                                                float m1, float m2, float s0, float s1, float s2) {
    preprocess_rgb8(pixels, desc, out, oh, ow, m0, m1, m2, s0, s1, s2);
}
extern "C" __global__ void preprocess_rgb8_f16(const unsigned char* __restrict__ pixels,
                                               const ImageDesc* __restrict__ desc,
                                               f16* __restrict__ out, int oh, int ow, float m0,
                                               float m1, float m2, float s0, float s1, float s2) {
    preprocess_rgb8(pixels, desc, out, oh, ow, m0, m1, m2, s0, s1, s2);
}
#define AUG_ARGS int nc, int h, int w, int t0, int copies, int mirror, int factor_bits
extern "C" __global__ void aug_copy_f32(const float* __restrict__ x, float* __restrict__ out, AUG_ARGS) {
    aug_copy(x, out, nc, h, w, t0, copies, mirror, factor_bits);
}
extern "C" __global__ void aug_copy_bf16(const bf16* __restrict__ x, bf16* __restrict__ out, AUG_ARGS) {
    aug_copy(x, out, nc, h, w, t0, copies, mirror, factor_bits);
}
extern "C" __global__ void aug_copy_f16(const f16* __restrict__ x, f16* __restrict__ out, AUG_ARGS) {
    aug_copy(x, out, nc, h, w, t0, copies, mirror, factor_bits);
}
