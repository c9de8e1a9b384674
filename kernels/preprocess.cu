// Images go up as bytes: RGB8 (HWC) → bilinear resize (half-pixel centres, edges clamped, as
// cv2.resize INTER_LINEAR on float data) → ImageNet normalisation → CHW float, one image per
// launch (batch slot chosen by the output pointer).
//   preprocess_rgb8_<t>: grid (ceil(oh·ow / 256)), block 256, one thread per output pixel;
//                        output stored f32, bf16 or f16.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void preprocess_rgb8(const unsigned char* __restrict__ rgb,
                                                T* __restrict__ out, int h, int w, int oh, int ow) {
    const float mean[3] = {0.485f, 0.456f, 0.406f};
    const float std_[3] = {0.229f, 0.224f, 0.225f};
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= oh * ow) return;
    int y0, y1, x0, x1;
    float fy, fx;
    bilinear_axis(p / ow, h, oh, &y0, &y1, &fy);
    bilinear_axis(p % ow, w, ow, &x0, &x1, &fx);
    for (int c = 0; c < 3; ++c) {
        const float a = rgb[(y0 * w + x0) * 3 + c] / 255.0f, b = rgb[(y0 * w + x1) * 3 + c] / 255.0f;
        const float d = rgb[(y1 * w + x0) * 3 + c] / 255.0f, e = rgb[(y1 * w + x1) * 3 + c] / 255.0f;
        const float top = a * (1.0f - fx) + b * fx, bot = d * (1.0f - fx) + e * fx;
        st(out, (size_t)c * oh * ow + p, (top * (1.0f - fy) + bot * fy - mean[c]) / std_[c]);
    }
}

extern "C" __global__ void preprocess_rgb8_f32(const unsigned char* __restrict__ rgb,
                                               float* __restrict__ out, int h, int w, int oh,
                                               int ow) {
    preprocess_rgb8(rgb, out, h, w, oh, ow);
}
extern "C" __global__ void preprocess_rgb8_bf16(const unsigned char* __restrict__ rgb,
                                                bf16* __restrict__ out, int h, int w, int oh,
                                                int ow) {
    preprocess_rgb8(rgb, out, h, w, oh, ow);
}
extern "C" __global__ void preprocess_rgb8_f16(const unsigned char* __restrict__ rgb,
                                               f16* __restrict__ out, int h, int w, int oh,
                                               int ow) {
    preprocess_rgb8(rgb, out, h, w, oh, ow);
}
