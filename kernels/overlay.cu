// From the CAM map straight to the overlay picture at the original image size, without
// materialising the upsampled map: pytorch-grad-cam's normalise, JET and show_cam_on_image.
// Its c /= max(c) needs the blended maximum before any byte is written, and min-max needs the
// upsampled map's extremes first, so three light passes recompute the same bilinear sample.
// Each is one launch per batch whatever the images' sizes: image n's pixels lie at desc[n].off
// in the upload buffer, and its overlay at the same offset in `out`.
//   overlay_minmax_f32: per image [min, max] of the map upsampled to (oh, ow)
//                       grid (N), block 256
//   overlay_max_f32:    per image max over pixels and channels of
//                       c = 0.5·JET[uint8(255·m)]/255 + 0.5·img/255
//                       grid (N), block 256
//   overlay_rgb8:       out = uint8(255 · c / max(c))
//                       grid (ceil(max oh·ow / 256), N), block 256
// map [N, h, w] f32; pixels RGB8 (HWC) per desc; jet [256·3] u8 (RGB); out like pixels.
#include "common.cuh"

__device__ __forceinline__ float blend(const float* m, int h, int w, int oh, int ow, int p, int ch,
                                       float lo, float range, const unsigned char* img,
                                       const unsigned char* jet) {
    const float v = (bilinear_sample(m, h, w, oh, ow, p) - lo) / range;
    const int idx = (int)(unsigned char)(int)(255.0f * v);
    return 0.5f * ((float)jet[idx * 3 + ch] / 255.0f) + 0.5f * ((float)img[p * 3 + ch] / 255.0f);
}

extern "C" __global__ void overlay_minmax_f32(const float* __restrict__ map,
                                              const ImageDesc* __restrict__ desc,
                                              float* __restrict__ mm, int h, int w) {
    const ImageDesc d = desc[blockIdx.x];
    const float* m = map + (size_t)blockIdx.x * h * w;
    block_minmax([&](int p) { return bilinear_sample(m, h, w, d.h, d.w, p); }, d.h * d.w, mm + blockIdx.x * 2);
}

extern "C" __global__ void overlay_max_f32(const float* __restrict__ map, const float* __restrict__ mm,
                                           const unsigned char* __restrict__ pixels,
                                           const ImageDesc* __restrict__ desc,
                                           const unsigned char* __restrict__ jet,
                                           float* __restrict__ cmax, int h, int w) {
    __shared__ float scratch[32];
    const int n = blockIdx.x;
    const ImageDesc d = desc[n];
    const int oh = d.h, ow = d.w;
    const float* m = map + (size_t)n * h * w;
    const unsigned char* im = pixels + d.off;
    const float lo = mm[n * 2], range = mm[n * 2 + 1] - lo + 1e-7f;
    float best = 0.0f;
    for (int p = threadIdx.x; p < oh * ow; p += blockDim.x)
        for (int ch = 0; ch < 3; ++ch) best = fmaxf(best, blend(m, h, w, oh, ow, p, ch, lo, range, im, jet));
    best = block_max(best, scratch);
    if (threadIdx.x == 0) cmax[n] = best;
}

extern "C" __global__ void overlay_rgb8(const float* __restrict__ map, const float* __restrict__ mm,
                                        const unsigned char* __restrict__ pixels,
                                        const ImageDesc* __restrict__ desc,
                                        const unsigned char* __restrict__ jet,
                                        const float* __restrict__ cmax, unsigned char* __restrict__ out,
                                        int h, int w) {
    const int n = blockIdx.y;
    const ImageDesc d = desc[n];
    const int oh = d.h, ow = d.w;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= oh * ow) return;  // a smaller image of a mixed batch
    const float* m = map + (size_t)n * h * w;
    const unsigned char* im = pixels + d.off;
    const float lo = mm[n * 2], range = mm[n * 2 + 1] - lo + 1e-7f;
    for (int ch = 0; ch < 3; ++ch) {
        const float c = blend(m, h, w, oh, ow, p, ch, lo, range, im, jet);
        out[d.off + (size_t)p * 3 + ch] = (unsigned char)(int)(255.0f * (c / cmax[n]));
    }
}
