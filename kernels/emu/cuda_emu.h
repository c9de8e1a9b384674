// The CUDA execution model on the CPU, for tests: kernels/*.cu compile as C++ with this
// header forced in (build.rs). Blocks run one at a time; each CUDA thread of a block is a
// fiber (ucontext) and the scheduler switches only at barriers, so __syncthreads, warp
// shuffles and votes, static and dynamic __shared__ memory and atomics behave as on a GPU
// for race-free kernels. Slow by design; never used for real work.
// Versions: C++17, glibc ucontext; follows the CUDA 13 programming guide's semantics for the
// intrinsics below (full-warp masks only).
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Switching between thread fibers: on x86-64 a few instructions (emu/launch.cpp) that save the
// callee-saved registers and the stack pointer; elsewhere ucontext, whose swapcontext costs two
// system calls a switch (warp shuffles switch often: the tensor-core twins shuffle 32 times).
#if defined(__x86_64__) && !defined(GRADCAM_EMU_UCONTEXT)
#define GRADCAM_EMU_FAST_SWITCH 1
extern "C" void gradcam_emu_switch(void** save_sp, void* load_sp);
#endif

namespace emu {

enum State { RUN, AT_BARRIER, AT_WARP, DONE };

struct Fiber {
#ifdef GRADCAM_EMU_FAST_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    std::vector<char> stack;
    uint3 tid;
    State state;
};

struct Sched {
#ifdef GRADCAM_EMU_FAST_SWITCH
    void* main_sp;
#else
    ucontext_t main;
#endif
    std::vector<Fiber> fibers;
    size_t current = 0;
    void (*entry)(void**) = nullptr;
    void** args = nullptr;
    // Per warp: values written at a shuffle, and the snapshot taken when the warp is released.
    std::vector<uint64_t> slots, snapshot;
    std::vector<unsigned char> shared;  // dynamic shared memory of the running block
};

inline Sched& sched() {
    static thread_local Sched s;
    return s;
}

inline thread_local uint3 g_threadIdx, g_blockIdx;
inline thread_local dim3 g_blockDim, g_gridDim;

inline unsigned linear_tid() {
    return g_threadIdx.x + g_blockDim.x * (g_threadIdx.y + g_blockDim.y * g_threadIdx.z);
}

// From the running fiber back to the scheduler, and from the scheduler into fiber f.
inline void to_scheduler(Fiber& f) {
#ifdef GRADCAM_EMU_FAST_SWITCH
    gradcam_emu_switch(&f.sp, sched().main_sp);
#else
    swapcontext(&f.ctx, &sched().main);
#endif
}
inline void to_fiber(Fiber& f) {
#ifdef GRADCAM_EMU_FAST_SWITCH
    gradcam_emu_switch(&sched().main_sp, f.sp);
#else
    swapcontext(&sched().main, &f.ctx);
#endif
}

inline void yield_as(State s) {
    Sched& sc = sched();
    Fiber& f = sc.fibers[sc.current];
    f.state = s;
    to_scheduler(f);
}

inline void trampoline() {
    Sched& sc = sched();
    sc.entry(sc.args);
    Fiber& f = sc.fibers[sc.current];
    f.state = DONE;
#ifdef GRADCAM_EMU_FAST_SWITCH
    to_scheduler(f);  // a finished fiber is never resumed
    abort();
#endif
}

// A fresh fiber that starts in trampoline() on its own stack.
inline void start_fiber(Fiber& f) {
#ifdef GRADCAM_EMU_FAST_SWITCH
    // The frame gradcam_emu_switch pops: MXCSR and x87 control word (defaults), six callee-saved
    // registers, then trampoline's address for its `ret`, 16-byte aligned so that trampoline
    // starts with the stack a called function expects.
    uintptr_t ret_at = ((uintptr_t)(f.stack.data() + f.stack.size()) - 64) & ~(uintptr_t)15;
    uint64_t* frame = (uint64_t*)(ret_at - 56);
    memset(frame, 0, 64);
    const uint32_t mxcsr = 0x1f80;
    const uint16_t fpu_cw = 0x037f;
    memcpy(frame, &mxcsr, 4);
    memcpy((char*)frame + 4, &fpu_cw, 2);
    void (*entry)() = trampoline;
    memcpy((void*)ret_at, &entry, 8);
    f.sp = frame;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &sched().main;
    makecontext(&f.ctx, trampoline, 0);
#endif
}

// Runs one block to completion; returns false on a deadlock (threads waiting at barriers
// that can never be released, e.g. __syncthreads under divergent control flow).
inline bool run_block(unsigned shmem) {
    Sched& sc = sched();
    const unsigned n = g_blockDim.x * g_blockDim.y * g_blockDim.z;
    const unsigned warps = (n + 31) / 32;
    sc.fibers.resize(n);
    sc.slots.assign(warps * 32, 0);
    sc.snapshot.assign(warps * 32, 0);
    sc.shared.assign(shmem + 16, 0);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = sc.fibers[i];
        f.stack.resize(256 * 1024);
        f.tid = uint3{i % g_blockDim.x, (i / g_blockDim.x) % g_blockDim.y,
                      i / (g_blockDim.x * g_blockDim.y)};
        f.state = RUN;
        start_fiber(f);
    }
    for (;;) {
        bool ran = false;
        for (unsigned i = 0; i < n; ++i) {
            if (sc.fibers[i].state != RUN) continue;
            ran = true;
            sc.current = i;
            g_threadIdx = sc.fibers[i].tid;
            to_fiber(sc.fibers[i]);
        }
        bool done = true, all_barrier = true, released = false;
        for (auto& f : sc.fibers) {
            if (f.state != DONE) done = false;
            if (f.state != DONE && f.state != AT_BARRIER) all_barrier = false;
        }
        if (done) return true;
        bool any_barrier = false;
        for (auto& f : sc.fibers) any_barrier |= f.state == AT_BARRIER;
        if (all_barrier && any_barrier) {
            for (auto& f : sc.fibers)
                if (f.state == AT_BARRIER) f.state = RUN;
            released = true;
        }
        for (unsigned w = 0; w < warps; ++w) {
            bool all = true, any = false;
            for (unsigned l = w * 32; l < n && l < w * 32 + 32; ++l) {
                State s = sc.fibers[l].state;
                if (s != DONE && s != AT_WARP) all = false;
                any |= s == AT_WARP;
            }
            if (all && any) {
                memcpy(&sc.snapshot[w * 32], &sc.slots[w * 32], 32 * sizeof(uint64_t));
                for (unsigned l = w * 32; l < n && l < w * 32 + 32; ++l)
                    if (sc.fibers[l].state == AT_WARP) sc.fibers[l].state = RUN;
                released = true;
            }
        }
        if (!ran && !released) return false;
    }
}

template <typename T>
inline T warp_exchange(T v, unsigned src_lane_in_warp, bool in_range) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 64 bits");
    Sched& sc = sched();
    unsigned t = linear_tid();
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    sc.slots[t] = bits;
    yield_as(AT_WARP);
    if (!in_range) return v;
    T out;
    uint64_t got = sc.snapshot[(t / 32) * 32 + src_lane_in_warp];
    memcpy(&out, &got, sizeof(T));
    return out;
}

// Calls a kernel with its arguments unpacked from `void** args` (as cuLaunchKernel takes them).
template <typename... A, size_t... I>
inline void call_unpacked(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
inline void call(void (*k)(A...), void** args) {
    call_unpacked(k, args, std::index_sequence_for<A...>{});
}

}  // namespace emu

#define threadIdx (emu::g_threadIdx)
#define blockIdx (emu::g_blockIdx)
#define blockDim (emu::g_blockDim)
#define gridDim (emu::g_gridDim)
#define warpSize 32
#define __global__
#define __device__ inline
#define __forceinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static thread_local

inline void __syncthreads() { emu::yield_as(emu::AT_BARRIER); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_exchange<int>(0, 0, false); }

template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    unsigned lane = emu::linear_tid() % 32;
    unsigned seg = lane - lane % width;
    return emu::warp_exchange(v, lane + delta, lane + delta < seg + width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    unsigned lane = emu::linear_tid() % 32;
    unsigned src = lane ^ mask;
    return emu::warp_exchange(v, src, src / width == lane / width);
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    unsigned lane = emu::linear_tid() % 32;
    return emu::warp_exchange(v, lane - lane % width + (unsigned)src % width, true);
}

inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}

// Round-to-nearest products and sums that the compiler may not fuse into an FMA (C++17 in
// ISO mode does not contract on the host anyway).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }

inline unsigned __float_as_uint(float x) {
    unsigned u;
    memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

inline float atomicAdd(float* p, float v) {
    float old = *p;
    *p = old + v;
    return old;
}
inline int atomicAdd(int* p, int v) {
    int old = *p;
    *p = old + v;
    return old;
}

// Dynamic shared memory of the running block (see DYNAMIC_SHARED in common.cuh).
inline void* emu_dynamic_shared() { return emu::sched().shared.data(); }
