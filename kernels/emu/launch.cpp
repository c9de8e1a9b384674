// The emulator's launch entry point, called from Rust (src/backend/emu.rs).
#include "cuda_emu.h"

extern "C" int gradcam_emu_launch(void (*entry)(void**), unsigned gx, unsigned gy, unsigned gz,
                                  unsigned bx, unsigned by, unsigned bz, unsigned shmem,
                                  void** args) {
    if (bx * by * bz == 0 || bx * by * bz > 1024 || gx * gy * gz == 0) return 2;
    emu::g_gridDim = dim3(gx, gy, gz);
    emu::g_blockDim = dim3(bx, by, bz);
    emu::Sched& sc = emu::sched();
    sc.entry = entry;
    sc.args = args;
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                emu::g_blockIdx = uint3{x, y, z};
                if (!emu::run_block(shmem)) return 1;
            }
    return 0;
}
