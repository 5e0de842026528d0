//! Normalisation and the other composites of transformer and CNN layers: `layer_norm`,
//! `rms_norm`, exact `gelu`, `remainder` (NumPy's and JAX's `mod`), `triu` and `tril`. Each is
//! written in primitives, so it runs on every device and its derivatives (of any order, under
//! vmap and jit) follow by composition.

use super::{Axes, require_float};
use crate::dtype::DType;
use crate::tensor::Tensor;

impl Tensor {
    /// `(x - mean) / sqrt(var + eps)` over `axes` (usually the last: `-1`), the normalisation
    /// of a layer norm without its scale and shift (`jax.nn.standardize`, PyTorch's
    /// `layer_norm` with no weight); the variance is the biased one.
    pub fn layer_norm(&self, axes: impl Into<Axes>, eps: f64) -> Tensor {
        require_float("layer_norm", self);
        let axes = axes.into();
        let centred = self - self.mean(axes.clone(), true);
        let var = centred.square().mean(axes, true);
        centred * (var + eps).rsqrt()
    }

    /// `x / sqrt(mean(x^2) + eps)` over `axes` (RMSNorm without its scale).
    pub fn rms_norm(&self, axes: impl Into<Axes>, eps: f64) -> Tensor {
        require_float("rms_norm", self);
        self * (self.square().mean(axes, true) + eps).rsqrt()
    }

    /// GELU without the approximation: `0.5 x (1 + erf(x / sqrt(2)))` (JAX's
    /// `gelu(approximate=False)`, PyTorch's default).
    pub fn gelu_exact(&self) -> Tensor {
        require_float("gelu_exact", self);
        self * 0.5 * ((self * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0)
    }

    /// The remainder of floor division, with the sign of the divisor: `x - floor(x / y) * y`
    /// (NumPy's and JAX's `mod`/`remainder`, PyTorch's `remainder`), broadcasting. Integers use
    /// floor division; for floats the derivative is 1 in `x` and `-floor(x / y)` in `y`, as in
    /// JAX.
    pub fn remainder(&self, y: &Tensor) -> Tensor {
        if self.dtype() == DType::Bool || y.dtype() == DType::Bool {
            panic!(
                "remainder: not defined for bool tensors (shapes {:?} and {:?}); cast to a number dtype first",
                self.shape(),
                y.shape()
            );
        }
        let q = self / y;
        let q = if q.dtype().is_float() { q.floor() } else { q };
        self - q * y
    }

    /// The upper triangle of the last two axes: elements with `column - row >= k` kept, the
    /// others zero (`k = 0`: the diagonal and above; `k = 1`: strictly above).
    pub fn triu(&self, k: i64) -> Tensor {
        self.triangle("triu", |offsets| offsets.ge_scalar(k as f64))
    }

    /// The lower triangle of the last two axes: elements with `column - row <= k` kept, the
    /// others zero (`k = 0`: the diagonal and below; `k = -1`: strictly below).
    pub fn tril(&self, k: i64) -> Tensor {
        self.triangle("tril", |offsets| offsets.le_scalar(k as f64))
    }

    /// The elements where `keep(column - row)` (a bool mask made on this tensor's device),
    /// the others zero.
    fn triangle(&self, op: &str, keep: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let rank = self.rank();
        if rank < 2 {
            panic!(
                "{op}: needs at least 2 axes (the matrix is the last two), got shape {:?}",
                self.shape()
            );
        }
        let (m, n) = (self.shape()[rank - 2], self.shape()[rank - 1]);
        let mask = keep(&Tensor::diagonal_offsets(m, n, self.device()));
        mask.where_(self, &self.scalar_like(0.0))
    }
}
