//! Gradient clipping by the global norm (PyTorch's `clip_grad_norm_`, optax's
//! `clip_by_global_norm`), the usual guard of transformer training against a spike in a
//! step's gradient.

use nabla_core::{DType, Tensor, Tree};

/// `grads` scaled so that their global L2 norm (over every leaf together) is at most
/// `max_norm`, and that norm before clipping.
///
/// As PyTorch: every leaf is multiplied by `min(1, max_norm / (norm + 1e-6))`, so gradients
/// under the limit come back unchanged. The norm is computed in f64 when a leaf is f64 and in
/// f32 otherwise (half-precision leaves included), and everything stays on the leaves'
/// device with no read back to the host, so it runs inside `jit` and costs no
/// synchronisation. A NaN norm makes every clipped gradient NaN and an infinite one makes the
/// finite entries 0 and the infinite ones NaN (PyTorch's default behaviour); check the
/// returned norm to skip such a step. The leaves must be on one device.
///
/// # Panics
/// When `max_norm` is not finite and above 0, or a leaf is not a float.
pub fn clip_by_global_norm<P: Tree>(grads: &P, max_norm: f64) -> (P, Tensor) {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        panic!("clip_by_global_norm: max_norm must be finite and above 0, got {max_norm}");
    }
    let leaves = grads.leaves();
    if let Some(bad) = leaves.iter().find(|g| !g.dtype().is_float()) {
        panic!(
            "clip_by_global_norm: gradients are floats; got a leaf of shape {:?} ({})",
            bad.shape(),
            bad.dtype()
        );
    }
    let acc = if leaves.iter().any(|g| g.dtype() == DType::F64) {
        DType::F64
    } else {
        DType::F32
    };
    let norm = match leaves.first() {
        None => return (grads.map_leaves(Tensor::clone), Tensor::zeros(&[], acc)),
        Some(first) => {
            let squares = leaves.iter().map(|g| g.cast(acc).square().sum_all());
            let zero = Tensor::full_on(&[], 0.0, acc, first.device());
            squares.fold(zero, |total, s| total + s).sqrt()
        }
    };
    let factor = (max_norm / (&norm + 1e-6)).minimum_scalar(1.0);
    let clipped = grads.map_leaves(|g| g * factor.cast(g.dtype()));
    (clipped, norm)
}
