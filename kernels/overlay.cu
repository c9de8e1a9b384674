// From the CAM map straight to the overlay picture at the original image size, without
// materialising the upsampled map: pytorch-grad-cam's normalise, colormap and show_cam_on_image
// (`lut`: one of OpenCV's colormaps, JET by default; `wi`: the image weight, 0.5 by default,
// and `wh` = 1 - wi, both rounded from double on the host as numpy does).
// Its c /= max(c) needs the blended maximum before any byte is written, and min-max needs the
// upsampled map's extremes first, so three light passes recompute the same bilinear sample.
// Each is one launch per batch whatever the images' sizes: image n's pixels lie at desc[n].off
// in the upload buffer, and its overlay at the same offset in `out`.
//   overlay_minmax_f32: per image [min, max] of the map upsampled to (oh, ow)
//                       grid (N), block 256
//   overlay_max_f32:    per image max over pixels and channels of
//                       c = wh·lut[uint8(255·m)]/255 + wi·img/255
//                       grid (N), block 256
//   overlay_rgb8:       out = uint8(255 · c / max(c)), 0 where max(c) is 0 (a black image
//                       under a colormap starting at black)
//                       grid (ceil(max oh·ow / 256), N), block 256
// map [N, h, w] f32; pixels RGB8 (HWC) per desc; lut [256·3] u8 (RGB); out like pixels.
#include "common.cuh"

__device__ __forceinline__ float blend(const float* m, int h, int w, int oh, int ow, int p, int ch,
                                       float lo, float range, const unsigned char* img,
                                       const unsigned char* lut, float wh, float wi) {
    const float v = (bilinear_sample(m, h, w, oh, ow, p) - lo) / range;
    const int idx = (int)(unsigned char)(int)(255.0f * v);
    // Unfused, as numpy computes it: NVRTC would otherwise make one product an FMA's addend
    // (exact while both weights were 0.5, 1 ulp off numpy for other weights).
    return __fadd_rn(__fmul_rn(wh, (float)lut[idx * 3 + ch] / 255.0f),
                     __fmul_rn(wi, (float)img[p * 3 + ch] / 255.0f));
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
                                           const unsigned char* __restrict__ lut,
                                           float* __restrict__ cmax, int h, int w, float wh, float wi) {
    __shared__ float scratch[32];
    const int n = blockIdx.x;
    const ImageDesc d = desc[n];
    const int oh = d.h, ow = d.w;
    const float* m = map + (size_t)n * h * w;
    const unsigned char* im = pixels + d.off;
    const float lo = mm[n * 2], range = mm[n * 2 + 1] - lo + 1e-7f;
    float best = 0.0f;
    for (int p = threadIdx.x; p < oh * ow; p += blockDim.x)
        for (int ch = 0; ch < 3; ++ch) best = fmaxf(best, blend(m, h, w, oh, ow, p, ch, lo, range, im, lut, wh, wi));
    best = block_max(best, scratch);
    if (threadIdx.x == 0) cmax[n] = best;
}

extern "C" __global__ void overlay_rgb8(const float* __restrict__ map, const float* __restrict__ mm,
                                        const unsigned char* __restrict__ pixels,
                                        const ImageDesc* __restrict__ desc,
                                        const unsigned char* __restrict__ lut,
                                        const float* __restrict__ cmax, unsigned char* __restrict__ out,
                                        int h, int w, float wh, float wi) {
    const int n = blockIdx.y;
    const ImageDesc d = desc[n];
    const int oh = d.h, ow = d.w;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= oh * ow) return;  // a smaller image of a mixed batch
    const float* m = map + (size_t)n * h * w;
    const unsigned char* im = pixels + d.off;
    const float lo = mm[n * 2], range = mm[n * 2 + 1] - lo + 1e-7f;
    const float top = cmax[n];
    for (int ch = 0; ch < 3; ++ch) {
        const float c = blend(m, h, w, oh, ow, p, ch, lo, range, im, lut, wh, wi);
        out[d.off + (size_t)p * 3 + ch] = top > 0.0f ? (unsigned char)(int)(255.0f * (c / top)) : 0;
    }
}
