//! The Adam update of one parameter as one kernel ([`crate::Backend::adam_update`]) where the
//! values are plain, and as the same formula in differentiable ops where they are traced or
//! batched (differentiating through an optimizer step, or `vmap` over parameter sets).

use super::require_same_device;
use crate::backend::AdamStep;
use crate::tensor::Tensor;

/// One Adam (or AdamW) update: `(param', m', v')` from the parameter, its gradient and the two
/// moments, all of one shape and float dtype on one device (the formula is on
/// [`crate::Backend::adam_update`]). Plain values take one fused kernel; traced or batched ones
/// take the composition of ops, which gives the same values and has derivatives.
pub fn adam_update(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, step: &AdamStep) -> (Tensor, Tensor, Tensor) {
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
    if operands.iter().any(|(_, t)| t.is_traced() || t.is_batched()) {
        return composed(param, grad, m, v, step);
    }
    let stacked = Tensor::from_raw(
        param
            .backend()
            .adam_update(param.raw(), grad.raw(), m.raw(), v.raw(), step),
    );
    (stacked.i(0), stacked.i(1), stacked.i(2))
}

/// The update in public ops, rounded after every op in the fused kernel's order.
fn composed(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: &AdamStep) -> (Tensor, Tensor, Tensor) {
    let g = if s.weight_decay != 0.0 && !s.decoupled {
        g + p * s.weight_decay
    } else {
        g.clone()
    };
    let m1 = m * s.beta1 + &g * (1.0 - s.beta1);
    let v1 = v * s.beta2 + g.square() * (1.0 - s.beta2);
    let mut q = p - (&m1 / s.bias1) / ((&v1 / s.bias2).sqrt() + s.eps) * s.lr;
    if s.decoupled && s.weight_decay != 0.0 {
        q = q - p * (s.lr * s.weight_decay);
    }
    (q, m1, v1)
}
