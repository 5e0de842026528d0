//! Uniform random numbers on the device, bit-identical to the CPU's: element `i` of a draw
//! with key `k` is `mix(k ^ mix(i * 0x9E3779B97F4A7C15 + 1)) >> 11` scaled to `[0, 1)` in double
//! (exact), then rounded to the output dtype — the hash of `nabla_core::Rng` and of core's
//! `random::uniform`. The key is read from device memory, so a recorded program replays with
//! the key its caller passes.

use super::{Gen, grid_stride};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::params::{ArgType, Param};

/// `out[i] = unit(key[0], i)` for `i < n`, in `[0, 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RandomUniformSpec {
    dtype: KernelDType,
}

impl RandomUniformSpec {
    /// The uniform draw into `dtype` (floats).
    pub fn new(dtype: KernelDType) -> Result<RandomUniformSpec, KernelError> {
        if !dtype.is_float() {
            return Err(KernelError::Unsupported {
                kernel: "random_uniform".into(),
                dtype,
                accepted: "f32, f64, f16 or bf16",
            });
        }
        Ok(RandomUniformSpec { dtype })
    }

    /// The output dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for RandomUniformSpec {
    fn entry_name(&self) -> String {
        format!("nb_random_uniform_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("n", ArgType::I64),
            Param::new("key", ArgType::In(KernelDType::I64)),
        ]
    }

    fn helpers(&self, _entry: &str) -> String {
        r#"#ifndef NB_MIX64
#define NB_MIX64
// SplitMix64's finaliser.
__device__ __forceinline__ unsigned long long nb_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
#endif
"#
        .into()
    }

    fn body(&self, _entry: &str) -> String {
        let store = self.dtype.from_f64("u");
        format!(
            "    const unsigned long long k = (unsigned long long)key[0];\n{}",
            grid_stride(&format!(
                "const unsigned long long h = nb_mix64(k ^ nb_mix64((unsigned long long)i * 0x9E3779B97F4A7C15ull + 1ull));\n\
                 const double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);\n\
                 out[i] = {store};\n"
            ))
        )
    }
}
