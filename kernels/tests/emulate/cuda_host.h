// A host emulation of the CUDA features the generated kernels use, to test what they compute
// without a GPU (tests/emulate.rs). Every CUDA thread of a block is a fiber (ucontext) run by
// one OS thread, and blocks run one after another. __syncthreads and warp shuffles are yields:
// each round resumes every fiber up to its next synchronisation point, so the group
// reductions run as written, deterministically. The emulator aborts when the threads of a
// block do not all reach the same __syncthreads, or the lanes of a warp the same shuffle.
// __shared__ variables become statics (one block runs at a time). __half and __nv_bfloat16
// are 16-bit patterns converted with round-to-nearest-even.
//
// It checks semantics (index arithmetic, group loops, NaN rules, conversions), not the
// device's memory model or performance.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static

// The 16-byte vector types (the attention kernels read shared memory through them).
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};

struct nb_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline nb_dim3 threadIdx, blockIdx, blockDim, gridDim;

struct NbFiber {
    ucontext_t ctx;
    unsigned tid = 0;
    bool done = false;
    unsigned long long syncs = 0, shuffles = 0;
};
inline ucontext_t nb_scheduler;
inline std::vector<NbFiber> nb_fibers;
inline NbFiber* nb_current = nullptr;
inline const std::function<void()>* nb_kernel = nullptr;
inline unsigned long long nb_slots[1024];

[[noreturn]] inline void nb_fail(const std::string& why) {
    std::fprintf(stderr, "emulator: %s\n", why.c_str());
    std::abort();
}

inline void nb_yield() { swapcontext(&nb_current->ctx, &nb_scheduler); }

inline void __syncthreads() {
    nb_current->syncs++;
    nb_yield();
}

template <class T>
T __shfl_xor_sync(unsigned, T v, int o) {
    static_assert(sizeof(T) <= 8, "shuffles move up to 8 bytes");
    const unsigned me = threadIdx.x;
    const unsigned src = (me & ~31u) | ((me & 31u) ^ (unsigned)o);
    std::memcpy(&nb_slots[me], &v, sizeof(T));
    nb_current->shuffles++;
    nb_yield(); // every lane has written
    if (src >= nb_fibers.size() || nb_fibers[src].shuffles != nb_current->shuffles)
        nb_fail("thread " + std::to_string(me) + " shuffles with lane " + std::to_string(src) +
                ", which is not at the same shuffle (a shuffle that is not warp-uniform)");
    T r;
    std::memcpy(&r, &nb_slots[src], sizeof(T));
    nb_yield(); // every lane has read
    return r;
}

// Lane `src` of this thread's warp's `v` (every lane of the warp must call it).
template <class T>
T __shfl_sync(unsigned, T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffles move up to 8 bytes");
    const unsigned me = threadIdx.x;
    const unsigned src = (me & ~31u) | ((unsigned)src_lane & 31u);
    std::memcpy(&nb_slots[me], &v, sizeof(T));
    nb_current->shuffles++;
    nb_yield(); // every lane has written
    if (src >= nb_fibers.size() || nb_fibers[src].shuffles != nb_current->shuffles)
        nb_fail("thread " + std::to_string(me) + " reads lane " + std::to_string(src) +
                ", which is not at the same shuffle (a shuffle that is not warp-uniform)");
    T r;
    std::memcpy(&r, &nb_slots[src], sizeof(T));
    nb_yield(); // every lane has read
    return r;
}

inline void nb_fiber_main() {
    (*nb_kernel)();
    nb_current->done = true;
}

// Runs `kernel` on a grid of `grid` blocks of `block` threads.
inline void nb_launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    if (block == 0 || block > 1024) nb_fail("bad block size");
    gridDim.x = grid;
    blockDim.x = block;
    nb_kernel = &kernel;
    const size_t stack = 64 * 1024;
    std::unique_ptr<char[]> stacks(new char[block * stack]); // not zeroed: only used pages fault
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = b;
        nb_fibers.assign(block, NbFiber());
        for (unsigned t = 0; t < block; ++t) {
            NbFiber& f = nb_fibers[t];
            f.tid = t;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = stacks.get() + t * stack;
            f.ctx.uc_stack.ss_size = stack;
            f.ctx.uc_link = &nb_scheduler;
            makecontext(&f.ctx, nb_fiber_main, 0);
        }
        for (bool running = true; running;) {
            running = false;
            for (NbFiber& f : nb_fibers) {
                if (f.done) continue;
                running = true;
                nb_current = &f;
                threadIdx.x = f.tid;
                swapcontext(&nb_scheduler, &f.ctx);
            }
        }
        for (const NbFiber& f : nb_fibers) {
            if (f.syncs != nb_fibers[0].syncs)
                nb_fail("thread " + std::to_string(f.tid) + " reached " + std::to_string(f.syncs) +
                        " __syncthreads, thread 0 " + std::to_string(nb_fibers[0].syncs));
            if (f.shuffles != nb_fibers[f.tid & ~31u].shuffles)
                nb_fail("lane " + std::to_string(f.tid) + " made a different number of shuffles than its warp");
        }
        nb_current = nullptr;
    }
}

// 16-bit floats: sign, `ebits` exponent bits, `mant` fraction bits.
inline unsigned short nb_emu_round(double x, int mant, int ebits) {
    const int bias = (1 << (ebits - 1)) - 1;
    const unsigned short sign = std::signbit(x) ? 0x8000 : 0;
    const unsigned short inf = (unsigned short)(((1 << ebits) - 1) << mant);
    if (std::isnan(x)) return sign | inf | (unsigned short)(1 << (mant - 1));
    const double a = std::fabs(x);
    if (std::isinf(a)) return sign | inf;
    if (a == 0.0) return sign;
    int e;
    std::frexp(a, &e);
    int E = e - 1 < 1 - bias ? 1 - bias : e - 1;
    const double v = std::nearbyint(a / std::ldexp(1.0, E - mant)) * std::ldexp(1.0, E - mant);
    if (v == 0.0) return sign;
    std::frexp(v, &e);
    E = e - 1;
    if (E > bias) return sign | inf;
    if (E < 1 - bias) return sign | (unsigned short)(v / std::ldexp(1.0, 1 - bias - mant));
    const unsigned m = (unsigned)((v / std::ldexp(1.0, E) - 1.0) * (double)(1 << mant));
    return sign | (unsigned short)((E + bias) << mant) | (unsigned short)m;
}

inline double nb_emu_decode(unsigned short b, int mant, int ebits) {
    const int bias = (1 << (ebits - 1)) - 1;
    const double s = (b & 0x8000) ? -1.0 : 1.0;
    const int E = (b >> mant) & ((1 << ebits) - 1);
    const int m = b & ((1 << mant) - 1);
    if (E == (1 << ebits) - 1) return m ? NAN : s * INFINITY;
    if (E == 0) return s * std::ldexp((double)m, 1 - bias - mant);
    return s * std::ldexp((double)((1 << mant) + m), E - bias - mant);
}

struct __half {
    unsigned short bits;
};
struct __nv_bfloat16 {
    unsigned short bits;
};
inline float __half2float(__half h) { return (float)nb_emu_decode(h.bits, 10, 5); }
inline __half __float2half_rn(float f) { return __half{nb_emu_round(f, 10, 5)}; }
// Double arithmetic rounded once per operation (the host compiler does not fuse these).
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline __half __double2half(double d) { return __half{nb_emu_round(d, 10, 5)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return (float)nb_emu_decode(h.bits, 7, 8); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{nb_emu_round(f, 7, 8)}; }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16{nb_emu_round(d, 7, 8)}; }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline double __longlong_as_double(long long i) {
    double d;
    std::memcpy(&d, &i, 8);
    return d;
}

// Atomics: fibers switch only at synchronisation points, so plain read-modify-writes are atomic.
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
    const unsigned long long old = *p;
    if (old == cmp) *p = v;
    return old;
}
inline __half nb_emu_add(__half a, __half b) { return __float2half_rn(__half2float(a) + __half2float(b)); }
inline __nv_bfloat16 nb_emu_add(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __float2bfloat16_rn(__bfloat162float(a) + __bfloat162float(b));
}
template <class T>
T nb_emu_add(T a, T b) {
    return a + b;
}
template <class T>
T atomicAdd(T* p, T v) {
    const T old = *p;
    *p = nb_emu_add(old, v);
    return old;
}
