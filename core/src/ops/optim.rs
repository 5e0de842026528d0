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

/// One SGD update (PyTorch's `torch.optim.SGD` without dampening; the formula on
/// [`crate::SgdStep`]): `(param', velocity')` from the parameter, its gradient and, with
/// momentum, the velocity (all of one shape and float dtype on one device; pass `None` when
/// `step.momentum` is 0, and zeros for the first step with momentum, as PyTorch's first
/// velocity is the gradient). Plain values take one fused kernel where the backend has one;
/// traced or batched ones take the composition of ops, which gives the same values (bit for
/// bit in f32 and f64: both kernels round every operation on its own) and has derivatives.
pub fn sgd_update(
    param: &Tensor,
    grad: &Tensor,
    velocity: Option<&Tensor>,
    step: &crate::SgdStep,
) -> (Tensor, Option<Tensor>) {
    if !param.dtype().is_float() {
        panic!(
            "sgd_update: the parameter is {:?} {}; SGD updates float parameters (f32, f64, bf16 or f16)",
            param.shape(),
            param.dtype()
        );
    }
    let mut operands = vec![("param", param), ("grad", grad)];
    operands.extend(velocity.map(|v| ("velocity", v)));
    for &(name, t) in &operands[1..] {
        if !t.dtype().is_float() || t.dtype() != param.dtype() || t.shape() != param.shape() {
            panic!(
                "sgd_update: {name} is {:?} {} but the parameter is {:?} {}; the gradient and the \
                 velocity must have the parameter's shape and float dtype (make the velocity with \
                 zeros_like(param))",
                t.shape(),
                t.dtype(),
                param.shape(),
                param.dtype()
            );
        }
        require_same_device("sgd_update", param, t);
    }
    if velocity.is_some() == (step.momentum == 0.0) {
        panic!(
            "sgd_update: momentum {} {} a velocity; pass Some(velocity) exactly when the momentum is not 0",
            step.momentum,
            if velocity.is_some() { "does not use" } else { "needs" }
        );
    }
    let plain = operands.iter().all(|(_, t)| !t.is_traced() && !t.is_batched());
    let fused = plain
        .then(|| {
            param
                .backend()
                .sgd_update(param.raw(), grad.raw(), velocity.map(|v| v.raw()), step)
        })
        .flatten();
    match fused {
        Some(raw) => {
            let stacked = Tensor::from_raw(raw);
            (stacked.i(0), velocity.map(|_| stacked.i(1)))
        }
        None => sgd_composed(param, grad, velocity, step),
    }
}

/// The SGD update in public ops, rounded after every op in the fused kernel's order.
fn sgd_composed(p: &Tensor, g: &Tensor, v: Option<&Tensor>, s: &crate::SgdStep) -> (Tensor, Option<Tensor>) {
    let g = if s.weight_decay != 0.0 {
        g + p * s.weight_decay
    } else {
        g.clone()
    };
    match v {
        None => (p - &g * s.lr, None),
        Some(v) => {
            let v1 = v * s.momentum + &g;
            let d = if s.nesterov { &g + &v1 * s.momentum } else { v1.clone() };
            (p - d * s.lr, Some(v1))
        }
    }
}
