//! Neural-network functions: silu and mse composed from primitives (their derivatives follow
//! by composition; cross-entropy is in `cross_entropy.rs`); gelu (and `gelu_exact`), one elementwise primitive whose
//! derivative is one primitive too; softmax and log-softmax, one fused row primitive each (a
//! single pass over every row, on every backend), with fused backward rows; and softplus, one primitive whose rule is
//! JAX's (the composition's own derivative is wrong at its kink, x = 0).

use super::{Axes, require_float};
use crate::backend::RowOp;
use crate::shape::normalize_axis;
use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::transforms::custom::{composition_jvp, composition_vjp};

impl Tensor {
    /// GELU, tanh approximation (JAX's default `approximate=True`):
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    /// One primitive (one pass), as is its derivative.
    pub fn gelu(&self) -> Tensor {
        require_float("gelu", self);
        super::unary::gelu(self, false)
    }

    /// SiLU (swish): `x * sigmoid(x)`.
    pub fn silu(&self) -> Tensor {
        require_float("silu", self);
        self * self.sigmoid()
    }

    /// `log(1 + e^x)`, computed without overflow as `relu(x) + log1p(e^-|x|)`. Its derivative is
    /// JAX's (`jax.nn.softplus` is `logaddexp(x, 0)`): `exp(x - softplus(x))` with `+inf` read
    /// as 0 on both sides, so 1/2 at 0 (the formula's kink) and 1 at `+inf`.
    pub fn softplus(&self) -> Tensor {
        require_float("softplus", self);
        let x = self.stop_gradient();
        let value = x.relu() + (-x.abs()).exp().log1p();
        Tensor::record(value.raw().clone(), &[self], || SoftplusRule)
    }

    /// Softmax along `axis`, shifted by the maximum for stability. One fused primitive over
    /// the last axis (another axis is moved last and back, as views); its derivative is
    /// `y * (g - sum(g * y))`.
    pub fn softmax(&self, axis: isize) -> Tensor {
        require_float("softmax", self);
        let a = normalize_axis("softmax", axis, self.rank());
        self.along_last(a, |x| rows(x, RowOp::Softmax))
    }

    /// Log-softmax along `axis`: `x - logsumexp(x)`. One fused primitive over the last axis;
    /// its VJP is `g - softmax(x) * sum(g)`.
    pub fn log_softmax(&self, axis: isize) -> Tensor {
        require_float("log_softmax", self);
        let a = normalize_axis("log_softmax", axis, self.rank());
        self.along_last(a, |x| rows(x, RowOp::LogSoftmax))
    }
}

/// Causal attention's softmax over the last axis of `x` (`[.., queries, keys]`): query `i`
/// (its index along the second-to-last axis) keeps keys `j <= i`, top-left aligned as
/// PyTorch's `is_causal`, and gets 0 for the others. One primitive: no mask tensor, no select,
/// and the masked exponentials are never formed.
pub(crate) fn causal_softmax(x: &Tensor) -> Tensor {
    require_float("causal softmax", x);
    if x.rank() < 2 {
        panic!(
            "causal softmax: needs scores of shape [.., queries, keys], got {:?}",
            x.shape()
        );
    }
    rows(x, RowOp::CausalSoftmax)
}

impl RowOp {
    /// The op whose backward rows are this one's (a causal softmax's are softmax's).
    fn backward_op(self) -> RowOp {
        match self {
            RowOp::CausalSoftmax => RowOp::Softmax,
            other => other,
        }
    }
}

/// The row primitive `op` over the last axis of `x`.
fn rows(x: &Tensor, op: RowOp) -> Tensor {
    let raw = x.backend().softmax_rows(op, x.raw());
    Tensor::record(raw, &[x], || RowRule(op))
}

/// The derivative rules of softmax and log-softmax rows, written from the output `y`.
struct RowRule(RowOp);

impl Rule for RowRule {
    fn name(&self) -> String {
        match self.0 {
            RowOp::Softmax => "softmax(axis=-1)".into(),
            RowOp::LogSoftmax => "log_softmax(axis=-1)".into(),
            RowOp::CausalSoftmax => "causal_softmax(axis=-1)".into(),
        }
    }
    fn vjp(&self, _inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        // Softmax: the Jacobian `diag(y) - y y^T` is symmetric, so the VJP is the JVP's
        // formula; a causal row's masked entries (y = 0) get 0 from it. Log-softmax:
        // `J = I - 1 p^T` with `p = exp(y)`, so `g^T J = g - p sum(g)`.
        vec![Some(rows_backward(self.0.backward_op(), out, ct))]
    }
    fn jvp(&self, _inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let t = tangents[0].as_ref()?;
        Some(match self.0 {
            RowOp::Softmax | RowOp::CausalSoftmax => rows_backward(RowOp::Softmax, out, t),
            // `J t = t - sum(p t)`.
            RowOp::LogSoftmax => t - (out.exp() * t).sum(-1, true),
        })
    }
}

/// The backward rows of `op` (see [`rows_backward_composed`]): one fused primitive when `y`
/// and `v` are alike (the usual backward pass), else the composition (a vmapped cotangent over
/// unbatched rows, as jacrev makes).
fn rows_backward(op: RowOp, y: &Tensor, v: &Tensor) -> Tensor {
    let alike = v.shape() == y.shape() && v.dtype() == y.dtype() && v.batch() == y.batch() && v.device() == y.device();
    if alike {
        let raw = y.backend().softmax_rows_backward(op, y.raw(), v.raw());
        Tensor::record(raw, &[y, v], || RowsBackwardRule(op))
    } else {
        rows_backward_composed(op, y, v)
    }
}

/// Softmax: `(diag(y) - y y^T) v = y v - y sum(y v)`; log-softmax: `v - exp(y) sum(v)`; along
/// the last axis, composed of primitives (so differentiable in `y` and `v`).
fn rows_backward_composed(op: RowOp, y: &Tensor, v: &Tensor) -> Tensor {
    match op {
        RowOp::Softmax | RowOp::CausalSoftmax => {
            let yv = y * v;
            &yv - y * yv.sum(-1, true)
        }
        RowOp::LogSoftmax => v - y.exp() * v.sum(-1, true),
    }
}

/// The derivatives of the fused backward rows (second and higher derivatives of softmax and
/// log-softmax): those of the composition, traced again from the node's inputs.
struct RowsBackwardRule(RowOp);

impl Rule for RowsBackwardRule {
    fn name(&self) -> String {
        match self.0 {
            RowOp::Softmax | RowOp::CausalSoftmax => "softmax_backward(axis=-1)".into(),
            RowOp::LogSoftmax => "log_softmax_backward(axis=-1)".into(),
        }
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        composition_vjp(|t| rows_backward_composed(self.0, &t[0], &t[1]), inputs, ct)
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        composition_jvp(|t| rows_backward_composed(self.0, &t[0], &t[1]), inputs, tangents)
    }
}

/// softplus as one primitive, with the derivative of JAX's `logaddexp` rule.
struct SoftplusRule;

/// `x` with `+inf` replaced by 0 (JAX's `_replace_inf` in the `logaddexp` rule).
fn replace_posinf(x: &Tensor) -> Tensor {
    x.eq_scalar(f64::INFINITY).where_(&x.scalar_like(0.0), x)
}

impl SoftplusRule {
    /// `g * exp(x - softplus(x))`, that is `g * sigmoid(x)`, written as JAX writes it.
    fn scale(x: &Tensor, out: &Tensor, g: &Tensor) -> Tensor {
        g * (replace_posinf(x) - replace_posinf(out)).exp()
    }
}

impl Rule for SoftplusRule {
    fn name(&self) -> String {
        "softplus".into()
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(SoftplusRule::scale(&inputs[0], out, ct))]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        Some(SoftplusRule::scale(&inputs[0], out, tangents[0].as_ref()?))
    }
}

/// Mean squared error `mean((pred - target)^2)`.
pub fn mse(pred: &Tensor, target: &Tensor) -> Tensor {
    if pred.shape() != target.shape() {
        panic!(
            "mse: prediction {:?} and target {:?} must have one shape",
            pred.shape(),
            target.shape()
        );
    }
    (pred - target).square().mean(Axes::All, false)
}
