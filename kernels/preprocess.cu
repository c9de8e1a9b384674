// Images go up as bytes: RGB8 (HWC) → bilinear resize (half-pixel centres, edges clamped, as
// cv2.resize INTER_LINEAR on float data) → ImageNet normalisation → CHW float, one image per
// launch (batch slot chosen by the output pointer).
//   preprocess_rgb8_f32: grid (ceil(oh·ow / 256)), block 256, one thread per output pixel.
#include "common.cuh"

__device__ __forceinline__ void axis(int d, int src, int dst, int* i0, int* i1, float* f) {
    // In double, as the CPU path computes it: the coordinate of a 4000-pixel image needs more
    // than f32's 24 bits to land on the same sub-pixel weight. Once per pixel, so cheap.
    double s = ((double)d + 0.5) * ((double)src / (double)dst) - 0.5;
    if (s < 0.0) s = 0.0;
    int a = (int)s;
    if (a > src - 1) a = src - 1;
    *i0 = a;
    *i1 = a + 1 < src ? a + 1 : src - 1;
    *f = a == src - 1 ? 0.0f : (float)(s - (double)a);
}

extern "C" __global__ void preprocess_rgb8_f32(const unsigned char* __restrict__ rgb,
                                               float* __restrict__ out, int h, int w, int oh,
                                               int ow) {
    const float mean[3] = {0.485f, 0.456f, 0.406f};
    const float std_[3] = {0.229f, 0.224f, 0.225f};
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= oh * ow) return;
    int y0, y1, x0, x1;
    float fy, fx;
    axis(p / ow, h, oh, &y0, &y1, &fy);
    axis(p % ow, w, ow, &x0, &x1, &fx);
    for (int c = 0; c < 3; ++c) {
        const float a = rgb[(y0 * w + x0) * 3 + c] / 255.0f, b = rgb[(y0 * w + x1) * 3 + c] / 255.0f;
        const float d = rgb[(y1 * w + x0) * 3 + c] / 255.0f, e = rgb[(y1 * w + x1) * 3 + c] / 255.0f;
        const float top = a * (1.0f - fx) + b * fx, bot = d * (1.0f - fx) + e * fx;
        out[(size_t)c * oh * ow + p] = (top * (1.0f - fy) + bot * fy - mean[c]) / std_[c];
    }
}
