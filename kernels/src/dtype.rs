//! Element types of device buffers and how the generated C code reads, computes and writes them.

use std::fmt;

/// The element type of a device buffer, as the kernels see it.
///
/// `F16` and `BF16` are stored as `__half` / `__nv_bfloat16` and computed in `float`; every other
/// dtype computes in itself. `Bool` is one byte holding 0 or 1 (C++ `bool`, Rust `bool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelDType {
    /// 32-bit float (`float`).
    F32,
    /// 64-bit float (`double`).
    F64,
    /// IEEE half precision (`__half`, from `cuda_fp16.h`).
    F16,
    /// bfloat16 (`__nv_bfloat16`, from `cuda_bf16.h`).
    BF16,
    /// 64-bit signed integer (`long long`).
    I64,
    /// 32-bit signed integer (`int`).
    I32,
    /// 8-bit unsigned integer (`unsigned char`).
    U8,
    /// Boolean (`bool`, one byte).
    Bool,
}

impl KernelDType {
    /// Every dtype, in the order the catalogue lists them.
    pub const ALL: [KernelDType; 8] = [
        KernelDType::F32,
        KernelDType::F64,
        KernelDType::F16,
        KernelDType::BF16,
        KernelDType::I64,
        KernelDType::I32,
        KernelDType::U8,
        KernelDType::Bool,
    ];

    /// The floating-point dtypes.
    pub const FLOATS: [KernelDType; 4] = [KernelDType::F32, KernelDType::F64, KernelDType::F16, KernelDType::BF16];

    /// The short name used in entry points (`f32`, `bf16`, `i64`, `u8`, `bool`).
    pub fn name(self) -> &'static str {
        match self {
            KernelDType::F32 => "f32",
            KernelDType::F64 => "f64",
            KernelDType::F16 => "f16",
            KernelDType::BF16 => "bf16",
            KernelDType::I64 => "i64",
            KernelDType::I32 => "i32",
            KernelDType::U8 => "u8",
            KernelDType::Bool => "bool",
        }
    }

    /// The CUDA C type of one stored element.
    pub fn c_type(self) -> &'static str {
        match self {
            KernelDType::F32 => "float",
            KernelDType::F64 => "double",
            KernelDType::F16 => "__half",
            KernelDType::BF16 => "__nv_bfloat16",
            KernelDType::I64 => "long long",
            KernelDType::I32 => "int",
            KernelDType::U8 => "unsigned char",
            KernelDType::Bool => "bool",
        }
    }

    /// The CUDA C type arithmetic is done in: `float` for `F16` and `BF16`, the stored type for
    /// every other dtype.
    pub fn compute_type(self) -> &'static str {
        match self {
            KernelDType::F16 | KernelDType::BF16 => "float",
            other => other.c_type(),
        }
    }

    /// Size of one stored element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            KernelDType::F64 | KernelDType::I64 => 8,
            KernelDType::F32 | KernelDType::I32 => 4,
            KernelDType::F16 | KernelDType::BF16 => 2,
            KernelDType::U8 | KernelDType::Bool => 1,
        }
    }

    /// True for `F32`, `F64`, `F16` and `BF16`.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            KernelDType::F32 | KernelDType::F64 | KernelDType::F16 | KernelDType::BF16
        )
    }

    /// True for the integer dtypes `I64`, `I32` and `U8` (not `Bool`).
    pub fn is_int(self) -> bool {
        matches!(self, KernelDType::I64 | KernelDType::I32 | KernelDType::U8)
    }

    /// True for the signed integer dtypes `I64` and `I32`.
    pub fn is_signed_int(self) -> bool {
        matches!(self, KernelDType::I64 | KernelDType::I32)
    }

    /// True for numbers (floats and integers, not `Bool`).
    pub fn is_number(self) -> bool {
        self != KernelDType::Bool
    }

    /// True when the compute type is `float` or `double` (the floats).
    fn computes_in_float(self) -> bool {
        self.is_float()
    }

    /// The header that declares the stored type, when it is not a built-in C type.
    pub fn header(self) -> Option<&'static str> {
        match self {
            KernelDType::F16 => Some("cuda_fp16.h"),
            KernelDType::BF16 => Some("cuda_bf16.h"),
            _ => None,
        }
    }

    /// C expression converting `expr` (a stored element) to the compute type.
    pub fn to_compute(self, expr: &str) -> String {
        match self {
            KernelDType::F16 => format!("__half2float({expr})"),
            KernelDType::BF16 => format!("__bfloat162float({expr})"),
            _ => expr.to_string(),
        }
    }

    /// C expression converting `expr` (a value of the compute type) to a stored element,
    /// rounding to nearest for `F16` and `BF16`.
    pub fn from_compute(self, expr: &str) -> String {
        match self {
            KernelDType::F16 => format!("__float2half_rn({expr})"),
            KernelDType::BF16 => format!("__float2bfloat16_rn({expr})"),
            _ => expr.to_string(),
        }
    }

    /// C literal of the compute type for a small integer value (`0.0f`, `1.0`, `(long long)-1`,
    /// `true`).
    pub fn compute_literal(self, v: i32) -> String {
        match self {
            KernelDType::F32 | KernelDType::F16 | KernelDType::BF16 => format!("{v}.0f"),
            KernelDType::F64 => format!("{v}.0"),
            KernelDType::Bool => (v != 0).to_string(),
            _ => format!("(({}){v})", self.c_type()),
        }
    }

    /// C expression converting `expr`, a `double`, to a stored element with Rust's `as`
    /// semantics: rounding to nearest for floats, truncation toward zero with saturation for
    /// integers (NaN gives 0), non-zero (NaN included) is true for `Bool`.
    pub fn from_f64(self, expr: &str) -> String {
        match self {
            KernelDType::F64 => expr.to_string(),
            KernelDType::F32 => format!("((float)({expr}))"),
            KernelDType::F16 => format!("__double2half({expr})"),
            KernelDType::BF16 => format!("__double2bfloat16({expr})"),
            KernelDType::I64 => format!("nb_f64_to_i64({expr})"),
            KernelDType::I32 => format!("nb_f64_to_i32({expr})"),
            KernelDType::U8 => format!("nb_f64_to_u8({expr})"),
            KernelDType::Bool => format!("(({expr}) != 0.0)"),
        }
    }

    /// C expression converting `expr`, a stored element of `self`, to a stored element of `to`,
    /// with the CPU backend's semantics: as if through `f64` (floats and integers to floats round
    /// to nearest; floats to integers truncate toward zero and saturate, NaN gives 0), integers to
    /// integers wrap (Rust's `as`), anything non-zero (NaN included) is true, and `true` is 1.
    pub fn cast_expr(self, to: KernelDType, expr: &str) -> String {
        use KernelDType::*;
        if self == to {
            return expr.to_string();
        }
        if to == Bool {
            return format!("({} != {})", self.to_compute(expr), self.compute_literal(0));
        }
        if self == Bool {
            return to.from_compute(&format!(
                "(({expr}) ? {} : {})",
                to.compute_literal(1),
                to.compute_literal(0)
            ));
        }
        match (self, to) {
            // Between floats: exact widening, or one rounding to the narrower type.
            (F16 | BF16, F32) => self.to_compute(expr),
            (F32, F16 | BF16) => to.from_compute(expr),
            (F16, BF16) | (BF16, F16) => to.from_compute(&self.to_compute(expr)),
            (F64, _) if to.is_float() => to.from_f64(expr),
            (_, F64) if self.is_float() => format!("((double){})", self.to_compute(expr)),
            // Floats to integers: saturating truncation of the (exact) double value.
            (_, _) if self.is_float() => to.from_f64(&format!("((double){})", self.to_compute(expr))),
            // Integers to floats: through double, as the CPU backend does.
            (_, _) if to.is_float() => to.from_f64(&format!("((double)({expr}))")),
            // Integers to integers: two's complement wrapping.
            _ => format!("(({})({expr}))", to.c_type()),
        }
    }

    /// C literal of the compute type holding negative infinity (floats only).
    pub(crate) fn neg_infinity(self) -> &'static str {
        debug_assert!(self.computes_in_float());
        if self == KernelDType::F64 {
            "__longlong_as_double((long long)0xfff0000000000000ull)"
        } else {
            "__int_as_float((int)0xff800000u)"
        }
    }

    /// C literal of the compute type holding positive infinity (floats only).
    pub(crate) fn infinity(self) -> &'static str {
        debug_assert!(self.computes_in_float());
        if self == KernelDType::F64 {
            "__longlong_as_double((long long)0x7ff0000000000000ull)"
        } else {
            "__int_as_float((int)0x7f800000u)"
        }
    }

    /// C literal of the compute type holding a quiet NaN (floats only).
    pub(crate) fn nan(self) -> &'static str {
        debug_assert!(self.computes_in_float());
        if self == KernelDType::F64 {
            "__longlong_as_double((long long)0x7ff8000000000000ull)"
        } else {
            "__int_as_float((int)0x7fc00000u)"
        }
    }

    /// The name of a C math function for the compute type: `expf` for float, `exp` for double.
    pub(crate) fn math(self, name: &str) -> String {
        debug_assert!(self.computes_in_float());
        if self == KernelDType::F64 {
            name.to_string()
        } else {
            format!("{name}f")
        }
    }
}

impl fmt::Display for KernelDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        let names: Vec<_> = KernelDType::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["f32", "f64", "f16", "bf16", "i64", "i32", "u8", "bool"]);
        assert_eq!(KernelDType::BF16.c_type(), "__nv_bfloat16");
        assert_eq!(KernelDType::BF16.compute_type(), "float");
        assert_eq!(KernelDType::I64.compute_type(), "long long");
        assert_eq!(KernelDType::F16.header(), Some("cuda_fp16.h"));
        assert_eq!(KernelDType::U8.header(), None);
    }

    #[test]
    fn casts_go_through_the_right_conversions() {
        use KernelDType::*;
        assert_eq!(F32.cast_expr(F32, "v"), "v");
        assert_eq!(F16.cast_expr(F32, "v"), "__half2float(v)");
        assert_eq!(F64.cast_expr(BF16, "v"), "__double2bfloat16(v)");
        assert_eq!(F32.cast_expr(I64, "v"), "nb_f64_to_i64(((double)v))");
        assert_eq!(I64.cast_expr(F32, "v"), "((float)(((double)(v))))");
        assert_eq!(I64.cast_expr(U8, "v"), "((unsigned char)(v))");
        assert_eq!(BF16.cast_expr(Bool, "v"), "(__bfloat162float(v) != 0.0f)");
        assert_eq!(Bool.cast_expr(F16, "v"), "__float2half_rn(((v) ? 1.0f : 0.0f))");
        assert_eq!(Bool.cast_expr(I32, "v"), "((v) ? ((int)1) : ((int)0))");
    }
}
