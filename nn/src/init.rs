//! Seeded weight initialisers (Glorot/Xavier, He/Kaiming, LeCun), uniform and normal.

use nabla_core::{DType, Rng, Tensor};

/// How to draw initial weights of a `[fan_in, fan_out]` matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Uniform in `±sqrt(6 / (fan_in + fan_out))` (Glorot & Bengio 2010).
    GlorotUniform,
    /// Normal with std `sqrt(2 / (fan_in + fan_out))`.
    GlorotNormal,
    /// Uniform in `±sqrt(6 / fan_in)` (He et al. 2015), for ReLU layers.
    HeUniform,
    /// Normal with std `sqrt(2 / fan_in)`.
    HeNormal,
    /// Uniform in `±sqrt(3 / fan_in)` (LeCun 1998), for tanh/SELU layers.
    LecunUniform,
    /// Normal with std `sqrt(1 / fan_in)`.
    LecunNormal,
    /// All zeros (biases).
    Zeros,
}

impl Init {
    /// Draws a tensor of `shape` (the first axis is fan-in, the last fan-out; a 1-D shape is
    /// both) from `rng`. Normal variants are plain (not truncated) normals.
    pub fn sample(self, rng: &mut Rng, shape: &[usize], dtype: DType) -> Tensor {
        let fan_in = shape.first().copied().unwrap_or(1).max(1) as f64;
        let fan_out = shape.last().copied().unwrap_or(1).max(1) as f64;
        let uniform = |rng: &mut Rng, limit: f64| rng.uniform(shape, -limit, limit, dtype);
        let normal = |rng: &mut Rng, std: f64| rng.normal(shape, 0.0, std, dtype);
        match self {
            Init::GlorotUniform => uniform(rng, (6.0 / (fan_in + fan_out)).sqrt()),
            Init::GlorotNormal => normal(rng, (2.0 / (fan_in + fan_out)).sqrt()),
            Init::HeUniform => uniform(rng, (6.0 / fan_in).sqrt()),
            Init::HeNormal => normal(rng, (2.0 / fan_in).sqrt()),
            Init::LecunUniform => uniform(rng, (3.0 / fan_in).sqrt()),
            Init::LecunNormal => normal(rng, (1.0 / fan_in).sqrt()),
            Init::Zeros => Tensor::zeros(shape, dtype),
        }
    }
}
