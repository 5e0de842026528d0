//! The shared C code every translation unit starts with. Each piece sits behind its own include
//! guard, so translation units can also be concatenated into one module.

use crate::error::DeviceErrorKind;

/// The layout struct, the index mapping, grid-stride helpers, the error record and the
/// saturating conversions from `double`.
pub(crate) fn common() -> String {
    let mut codes = String::new();
    for k in DeviceErrorKind::ALL {
        codes.push_str(&format!("#define {} {}ull\n", k.macro_name(), k.code()));
    }
    format!(
        r#"#ifndef NB_PRELUDE
#define NB_PRELUDE

// A strided view of a buffer (nabla_kernels::KernelLayout): element i of the view, counted in
// row-major order, is at buffer index nb_offset(layout, i). Strides are in elements.
#define NB_MAX_DIMS 8
struct NbLayout {{
    int ndim;
    int pad;
    long long shape[NB_MAX_DIMS];
    long long strides[NB_MAX_DIMS];
    long long offset;
}};

// Buffer index of element i (0 <= i < numel) of l: the innermost axis is peeled first, and the
// outermost needs no division. Divides in 32 bits when i and the extent fit (far cheaper).
__device__ __forceinline__ long long nb_offset(const NbLayout& l, long long i) {{
    long long off = l.offset;
#pragma unroll
    for (int d = NB_MAX_DIMS - 1; d > 0; --d) {{
        if (d < l.ndim) {{
            const long long n = l.shape[d];
            const long long q = ((unsigned long long)(i | n) >> 32) == 0
                ? (long long)((unsigned)i / (unsigned)n)
                : i / n;
            off += (i - q * n) * l.strides[d];
            i = q;
        }}
    }}
    if (l.ndim > 0) off += i * l.strides[0];
    return off;
}}

// First index and step of a grid-stride loop, in 64 bits.
__device__ __forceinline__ long long nb_first() {{ return (long long)blockIdx.x * blockDim.x + threadIdx.x; }}
__device__ __forceinline__ long long nb_step() {{ return (long long)gridDim.x * blockDim.x; }}

// The device error record (nabla_kernels::DeviceError): code, value, extent. The first report
// wins; err may be null.
{codes}__device__ __forceinline__ void nb_report(unsigned long long* err, unsigned long long code, long long value, long long extent) {{
    if (err != nullptr && atomicCAS(err, 0ull, code) == 0ull) {{
        err[1] = (unsigned long long)value;
        err[2] = (unsigned long long)extent;
    }}
}}

// double to integers with Rust's `as` semantics: truncation toward zero, saturation, NaN is 0.
__device__ __forceinline__ long long nb_f64_to_i64(double v) {{
    if (v != v) return 0;
    if (v <= -9223372036854775808.0) return -9223372036854775807LL - 1;
    if (v >= 9223372036854775808.0) return 9223372036854775807LL;
    return (long long)v;
}}
__device__ __forceinline__ int nb_f64_to_i32(double v) {{
    if (v != v) return 0;
    if (v <= -2147483648.0) return -2147483647 - 1;
    if (v >= 2147483647.0) return 2147483647;
    return (int)v;
}}
__device__ __forceinline__ unsigned char nb_f64_to_u8(double v) {{
    if (v != v || v <= 0.0) return 0;
    if (v >= 255.0) return 255;
    return (unsigned char)v;
}}

#endif // NB_PRELUDE
"#
    )
}

/// Integer floor division and power for one integer dtype (`long long`, `int` or
/// `unsigned char`), reporting division by zero and negative exponents to the error record.
pub(crate) fn int_helpers(name: &str, t: &str, u: &str, signed: bool) -> String {
    let guard = format!("NB_INT_HELPERS_{}", name.to_uppercase());
    let (div, cap, neg_check) = if signed {
        (
            format!(
                r#"    // Wraps at the minimum divided by -1 (the CPU backend panics there).
    if (b == -1) return ({t})(({u})0 - ({u})a);
    {t} q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0))) q -= 1;
    return q;"#
            ),
            // The CPU backend caps an i64 exponent at u32::MAX.
            if t == "long long" {
                "    const unsigned long long k0 = e > 4294967295LL ? 4294967295ull : (unsigned long long)e;\n"
            } else {
                "    const unsigned long long k0 = (unsigned long long)e;\n"
            },
            format!(
                "    if (e < 0) {{\n        nb_report(err, NB_ERR_INT_NEG_POW, (long long)e, 0);\n        return ({t})0;\n    }}\n"
            ),
        )
    } else {
        (
            "    return a / b;".to_string(),
            "    const unsigned long long k0 = (unsigned long long)e;\n",
            String::new(),
        )
    };
    format!(
        r#"#ifndef {guard}
#define {guard}
// Floor division (Python's //), as the CPU backend; division by zero reports and gives 0.
__device__ __forceinline__ {t} nb_floordiv_{name}({t} a, {t} b, unsigned long long* err) {{
    if (b == 0) {{
        nb_report(err, NB_ERR_INT_DIV_ZERO, (long long)a, 0);
        return ({t})0;
    }}
{div}
}}
// a to the power e by squaring, wrapping (the CPU backend's wrapping_pow).
__device__ __forceinline__ {t} nb_ipow_{name}({t} a, {t} e, unsigned long long* err) {{
{neg_check}{cap}    unsigned long long k = k0;
    {u} base = ({u})a;
    {u} r = 1;
    while (k != 0) {{
        if (k & 1ull) r *= base;
        base *= base;
        k >>= 1;
    }}
    return ({t})r;
}}
#endif // {guard}
"#
    )
}
