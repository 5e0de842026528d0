//! Steps that run outside a backend's kernels on a tensor's values, such as a collective
//! across processes. Under `jit` such a step is recorded in the tape and runs again, in order,
//! on every replay, so a replayed program never reuses the first call's result as a constant.

use std::sync::Arc;

use crate::backend::Backend;
use crate::jit::{HostFn, host_step};
use crate::storage::{CpuBuffer, RawTensor};
use crate::tensor::Tensor;

/// A function from a tensor's values (in row-major order) to new values of the same dtype and
/// length.
pub type ExternalFn = Arc<dyn Fn(CpuBuffer) -> CpuBuffer + Send + Sync>;

impl Tensor {
    /// A tensor of this shape, dtype and device holding `f` applied to this tensor's values.
    ///
    /// For steps the backend does not know, such as an all-reduce across ranks
    /// (`nb::dist` builds on it). Under [`crate::jit`] the step is part of the recorded tape
    /// and runs again on every replay. `what` names the step in error messages. Panics when
    /// the tensor is traced or batched (the step has no derivative rule: apply it to
    /// gradients, not inside a transform), or when `f` returns another dtype or length.
    pub fn apply_external(&self, what: &str, f: ExternalFn) -> Tensor {
        if self.is_traced() || self.is_batched() {
            panic!(
                "{what}: this step runs outside the traced program and has no derivative rule; \
                 apply it to values that are not traced or batched (stop_gradient first, or call it \
                 outside grad/vjp/vmap) — got a tensor of shape {:?} ({})",
                self.shape(),
                self.dtype()
            );
        }
        let what: Arc<str> = what.into();
        let step: HostFn = Arc::new(move |backend: &dyn Backend, raw: &RawTensor| {
            let input = backend.to_host(raw);
            let (dtype, len) = (input.dtype(), input.len());
            let out = f(input);
            if out.dtype() != dtype || out.len() != len {
                panic!(
                    "{what}: the step returned {} {} values for an input of {len} {dtype} values",
                    out.len(),
                    out.dtype()
                );
            }
            backend.from_host(out, &raw.layout.shape, raw.device())
        });
        let raw = host_step(self.device(), self.raw(), step);
        Tensor::untraced(raw, &[self])
    }
}
