// The emulator's launch entry point, called from Rust (src/backend/emu.rs).
#include "cuda_emu.h"

extern "C" int gradcam_emu_launch(void (*entry)(void**), unsigned gx, unsigned gy, unsigned gz,
                                  unsigned bx, unsigned by, unsigned bz, unsigned shmem,
                                  void** args) {
    if (bx * by * bz == 0 || bx * by * bz > 1024 || gx * gy * gz == 0) return 2;
    // CUDA's grid limits: 2^31 - 1 blocks along x, 65535 along y and z.
    if (gx > 2147483647u || gy > 65535u || gz > 65535u) return 2;
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

#ifdef GRADCAM_EMU_FAST_SWITCH
// gradcam_emu_switch(save_sp, load_sp): pushes the callee-saved registers, MXCSR and the x87
// control word (what the SysV ABI says a call preserves), stores the stack pointer in *save_sp,
// then loads load_sp and pops the same frame from there (see start_fiber for a new fiber's).
asm(R"(
    .text
    .globl gradcam_emu_switch
    .type gradcam_emu_switch, @function
gradcam_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gradcam_emu_switch, .-gradcam_emu_switch
    .section .note.GNU-stack, "", @progbits
)");
#endif
