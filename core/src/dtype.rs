//! Element types a tensor can hold.

use std::fmt;

pub use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit float, the default float type.
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer (indices, labels).
    I64,
    /// Boolean (masks, comparison results).
    Bool,
    /// IEEE 754 half precision (5 exponent bits, 10 mantissa bits). The CPU computes each op
    /// in f32 and rounds the result; the GPU computes natively.
    F16,
    /// bfloat16 (8 exponent bits, 7 mantissa bits: f32's range at a quarter of its
    /// precision), the usual mixed-precision training type. Computed as [`DType::F16`] is.
    BF16,
}

impl DType {
    /// Every dtype, in declaration order (for tests and tables).
    pub const ALL: [DType; 6] = [DType::F32, DType::F64, DType::I64, DType::Bool, DType::F16, DType::BF16];

    /// True for the floating dtypes (`F32`, `F64`, `F16`, `BF16`), the ones that carry
    /// gradients.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// True for the 16-bit floats, which the CPU backend computes in f32.
    pub fn is_half(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }

    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::F16 | DType::BF16 => 2,
            DType::Bool => 1,
        }
    }

    /// The NumPy-style name (`float32`, `float64`, `int64`, `bool`, `float16`, `bfloat16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::Bool => "bool",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// The short name used in messages and `Display` (`f32`, `bf16`, ...).
    pub fn short_name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::Bool => "bool",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The dtype two operands are promoted to, as in JAX and PyTorch: the wider float wins;
    /// f16 with bf16 gives f32 (neither holds the other); any float beats i64, which beats
    /// bool.
    pub fn promote(a: DType, b: DType) -> DType {
        if a == b {
            return a;
        }
        match (a, b) {
            (DType::F64, _) | (_, DType::F64) => DType::F64,
            (DType::F32, _) | (_, DType::F32) => DType::F32,
            (DType::F16, DType::BF16) | (DType::BF16, DType::F16) => DType::F32,
            (DType::F16, _) | (_, DType::F16) => DType::F16,
            (DType::BF16, _) | (_, DType::BF16) => DType::BF16,
            (DType::I64, _) | (_, DType::I64) => DType::I64,
            _ => DType::Bool,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// Evaluates `$body` with the type alias `$t` naming the Rust element type of the [`DType`]
/// `$dtype` (`f32` for `DType::F32`, [`bf16`] for `DType::BF16`, ...): one generic body instead
/// of a match arm per dtype.
#[macro_export]
macro_rules! with_element_type {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::DType::F64 => {
                type $t = f64;
                $body
            }
            $crate::DType::I64 => {
                type $t = i64;
                $body
            }
            $crate::DType::Bool => {
                type $t = bool;
                $body
            }
            $crate::DType::F16 => {
                type $t = $crate::dtype::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $t = $crate::dtype::bf16;
                $body
            }
        }
    };
}

/// A Rust element type that maps to a [`DType`]: `f32`, `f64`, `i64`, `bool`, [`f16`],
/// [`bf16`].
pub trait Element: Copy + Send + Sync + fmt::Debug + PartialEq + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// Converts to `f64` (bool: 0 or 1).
    fn to_f64(self) -> f64;
    /// Converts from `f64` (bool: non-zero is true; i64: truncation toward zero; halves:
    /// rounding to nearest even).
    fn from_f64(v: f64) -> Self;
    /// Appends the little-endian bytes of the value (bool: one byte, 0 or 1).
    fn write_le(self, out: &mut Vec<u8>);
    /// The value from exactly `size_in_bytes` little-endian bytes; `None` when the bytes are
    /// no value of the type (a bool byte other than 0 or 1).
    fn read_le(bytes: &[u8]) -> Option<Self>;
}

macro_rules! element_via_as {
    ($($t:ty => $d:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_le_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}
element_via_as!(f32 => F32, f64 => F64, i64 => I64);

macro_rules! element_half {
    ($($t:ty => $d:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_le_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}
element_half!(f16 => F16, bf16 => BF16);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn to_f64(self) -> f64 {
        if self { 1.0 } else { 0.0 }
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn read_le(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_is_symmetric_and_follows_jax_for_halves() {
        for a in DType::ALL {
            for b in DType::ALL {
                assert_eq!(DType::promote(a, b), DType::promote(b, a), "{a} with {b}");
            }
        }
        assert_eq!(DType::promote(DType::F16, DType::BF16), DType::F32);
        assert_eq!(DType::promote(DType::BF16, DType::F32), DType::F32);
        assert_eq!(DType::promote(DType::BF16, DType::I64), DType::BF16);
        assert_eq!(DType::promote(DType::F16, DType::Bool), DType::F16);
    }

    #[test]
    fn half_conversions_round_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values (1 and 1 + 2^-7): ties go to even.
        assert_eq!(bf16::from_f64(1.0 + 1.0 / 256.0).to_f64(), 1.0);
        assert_eq!(bf16::from_f64(1.0 + 3.0 / 256.0).to_f64(), 1.0 + 4.0 / 256.0);
        assert_eq!(f16::from_f64(65504.0).to_f64(), 65504.0);
        assert!(f16::from_f64(1e6).to_f64().is_infinite());
    }
}
