//! The Adam update of one parameter as one kernel ([`crate::Backend::adam_update`]) where the
//! values are plain, and as the same formula in differentiable ops where they are traced or
//! batched (differentiating through an optimizer step, or `vmap` over parameter sets).

use super::require_same_device;
use crate::backend::AdamStep;
use crate::tensor::Tensor;

/// One Adam (or AdamW) update: `(param', m', v')` from the parameter, its gradient and the two
/// moments, all of one shape and float dtype on one device, at step `count` (a one-element i64
/// tensor on that device, 1 for the first update; the formula is on
/// [`crate::Backend::adam_update`]). The step number is a tensor so that a `jit` replay of a
/// training step uses the current one. Plain values take one fused kernel; traced or batched
/// ones take the composition of ops, which gives the same values and has derivatives.
pub fn adam_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    count: &Tensor,
    step: &AdamStep,
) -> (Tensor, Tensor, Tensor) {
    let operands = [("param", param), ("grad", grad), ("m", m), ("v", v)];
    for (name, t) in operands {
        if !t.dtype().is_float() || t.dtype() != param.dtype() || t.shape() != param.shape() {
            panic!(
                "adam_update: {name} is {:?} {} but the parameter is {:?} {}; the gradient and both \
                 moments must have the parameter's shape and float dtype (make the moments with \
                 zeros_like(param))",
                t.shape(),
                t.dtype(),
                param.shape(),
                param.dtype()
            );
        }
        require_same_device("adam_update", param, t);
    }
    if count.dtype() != crate::DType::I64 || count.numel() != 1 {
        panic!(
            "adam_update: the step count must be one i64 element (1 for the first update), got {:?} {}",
            count.shape(),
            count.dtype()
        );
    }
    require_same_device("adam_update (step count)", param, count);
    if operands.iter().any(|(_, t)| t.is_traced() || t.is_batched()) || count.is_batched() {
        return composed(param, grad, m, v, count, step);
    }
    let count = count.reshape([1_usize]);
    let stacked =
        Tensor::from_raw(
            param
                .backend()
                .adam_update(param.raw(), grad.raw(), m.raw(), v.raw(), count.raw(), step),
        );
    (stacked.i(0), stacked.i(1), stacked.i(2))
}

/// `1 - beta^t` in f64, rounded once to `dtype`.
fn bias_correction(beta: f64, t: &Tensor, dtype: crate::DType) -> Tensor {
    (t.scalar_like(1.0) - t.scalar_like(beta).pow(t)).cast(dtype)
}

/// The update in public ops, rounded after every op in the fused kernel's order.
fn composed(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, count: &Tensor, s: &AdamStep) -> (Tensor, Tensor, Tensor) {
    // A scalar, so that the result keeps the parameter's shape whatever the count's shape.
    let t = count
        .stop_gradient()
        .reshape(Vec::<usize>::new())
        .cast(crate::DType::F64);
    let (c1, c2) = (
        bias_correction(s.beta1, &t, p.dtype()),
        bias_correction(s.beta2, &t, p.dtype()),
    );
    let g = if s.weight_decay != 0.0 && !s.decoupled {
        g + p * s.weight_decay
    } else {
        g.clone()
    };
    let m1 = m * s.beta1 + &g * (1.0 - s.beta1);
    let v1 = v * s.beta2 + g.square() * (1.0 - s.beta2);
    let mut q = p - (&m1 / &c1) / ((&v1 / &c2).sqrt() + s.eps) * s.lr;
    if s.decoupled && s.weight_decay != 0.0 {
        q = q - p * (s.lr * s.weight_decay);
    }
    (q, m1, v1)
}
