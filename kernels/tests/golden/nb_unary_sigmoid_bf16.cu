// nabla-kernels: nb_unary_sigmoid_bf16 (generated CUDA C; do not edit)
#include <cuda_bf16.h>

#ifndef NB_PRELUDE
#define NB_PRELUDE

// A strided view of a buffer (nabla_kernels::KernelLayout): element i of the view, counted in
// row-major order, is at buffer index nb_offset(layout, i). Strides are in elements.
#define NB_MAX_DIMS 8
struct NbLayout {
    int ndim;
    int pad;
    long long shape[NB_MAX_DIMS];
    long long strides[NB_MAX_DIMS];
    long long offset;
};

// Buffer index of element i (0 <= i < numel) of l: the innermost axis is peeled first, and the
// outermost needs no division. Divides in 32 bits when i and the extent fit (far cheaper).
__device__ __forceinline__ long long nb_offset(const NbLayout& l, long long i) {
    long long off = l.offset;
#pragma unroll
    for (int d = NB_MAX_DIMS - 1; d > 0; --d) {
        if (d < l.ndim) {
            const long long n = l.shape[d];
            const long long q = ((unsigned long long)(i | n) >> 32) == 0
                ? (long long)((unsigned)i / (unsigned)n)
                : i / n;
            off += (i - q * n) * l.strides[d];
            i = q;
        }
    }
    if (l.ndim > 0) off += i * l.strides[0];
    return off;
}

// First index and step of a grid-stride loop, in 64 bits.
__device__ __forceinline__ long long nb_first() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long nb_step() { return (long long)gridDim.x * blockDim.x; }

// The device error record (nabla_kernels::DeviceError): code, value, extent. The first report
// wins; err may be null.
#define NB_ERR_GATHER_INDEX 1ull
#define NB_ERR_SCATTER_INDEX 2ull
#define NB_ERR_INT_DIV_ZERO 3ull
#define NB_ERR_INT_NEG_POW 4ull
#define NB_ERR_LABEL 5ull
#define NB_ERR_INDEX 6ull
__device__ __forceinline__ void nb_report(unsigned long long* err, unsigned long long code, long long value, long long extent) {
    if (err != nullptr && atomicCAS(err, 0ull, code) == 0ull) {
        err[1] = (unsigned long long)value;
        err[2] = (unsigned long long)extent;
    }
}

// double to integers with Rust's `as` semantics: truncation toward zero, saturation, NaN is 0.
__device__ __forceinline__ long long nb_f64_to_i64(double v) {
    if (v != v) return 0;
    if (v <= -9223372036854775808.0) return -9223372036854775807LL - 1;
    if (v >= 9223372036854775808.0) return 9223372036854775807LL;
    return (long long)v;
}
__device__ __forceinline__ int nb_f64_to_i32(double v) {
    if (v != v) return 0;
    if (v <= -2147483648.0) return -2147483647 - 1;
    if (v >= 2147483647.0) return 2147483647;
    return (int)v;
}
__device__ __forceinline__ unsigned char nb_f64_to_u8(double v) {
    if (v != v || v <= 0.0) return 0;
    if (v >= 255.0) return 255;
    return (unsigned char)v;
}

#endif // NB_PRELUDE

extern "C" __global__ void nb_unary_sigmoid_bf16(
    __nv_bfloat16* __restrict__ out,
    const __nv_bfloat16* __restrict__ x,
    const NbLayout x_layout,
    const long long n) {
    for (long long i = nb_first(); i < n; i += nb_step()) {
        const __nv_bfloat16 x_v = x[nb_offset(x_layout, i)];
        const float c = __bfloat162float(x_v);
        out[i] = __float2bfloat16_rn((c >= 0.0f ? 1.0f / (1.0f + expf(-c)) : expf(c) / (1.0f + expf(c))));
    }
}
