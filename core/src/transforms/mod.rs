//! The transforms: `vjp` and `jvp` (trace, then sweep), `grad` and `value_and_grad` built on
//! `vjp`, PyTorch-style `backward`, and a printout of a traced program.

pub mod api;
pub mod backward;
pub mod control;
pub mod custom;
pub mod graph;
pub mod jacobian;
pub mod jvp;
pub mod positional;
pub mod remat;
pub mod vjp;
pub mod vmap;

use crate::tensor::Tensor;
use crate::trace::union_levels;

/// `t` without its graph node when no enclosing transform is still tracing it (so results do
/// not keep a finished trace alive); unchanged otherwise.
pub(crate) fn release_finished(t: &Tensor) -> Tensor {
    match t.node() {
        Some(n) if union_levels(std::iter::once(n.levels.as_slice())).is_empty() => t.stop_gradient(),
        _ => t.clone(),
    }
}

/// Panics unless `given` matches `expected` in shape and dtype; `what` names the argument.
pub(crate) fn check_like(op: &str, what: &str, i: usize, given: &Tensor, expected: &Tensor) {
    if given.shape() != expected.shape() || given.dtype() != expected.dtype() {
        panic!(
            "{op}: {what} {i} has shape {:?} ({}), expected {:?} ({}) to match the corresponding {}",
            given.shape(),
            given.dtype(),
            expected.shape(),
            expected.dtype(),
            if what.starts_with("cotangent") {
                "output"
            } else {
                "primal"
            }
        );
    }
}
