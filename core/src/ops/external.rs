//! Steps that run outside a backend's kernels, such as a collective across processes: on a
//! tensor's values on the host ([`Tensor::apply_external`]), or on the tensor where it lives
//! ([`Tensor::apply_device_step`], for a transport such as NCCL that works on device memory).
//! Under `jit` such a step is recorded in the tape as one step and runs again, in order, on
//! every replay, so a replayed program never reuses the first call's result as a constant.
//!
//! A step that is a linear map with a known transpose, such as a sum across processes, can
//! also be differentiated: [`Tensor::apply_linear_step`] records it as an op whose rules apply
//! the map to tangents and its transpose to cotangents.

use std::sync::Arc;

use crate::backend::Backend;
use crate::jit::{HostFn, host_step, paused};
use crate::storage::{CpuBuffer, RawTensor};
use crate::tensor::Tensor;
use crate::trace::Rule;

/// A function from a tensor's values (in row-major order) to new values of the same dtype and
/// length.
pub type ExternalFn = Arc<dyn Fn(CpuBuffer) -> CpuBuffer + Send + Sync>;

/// A function from a tensor to a tensor of the same shape, dtype and device, run where the
/// tensor lives (see [`Tensor::apply_device_step`]).
pub type DeviceStepFn = Arc<dyn Fn(Tensor) -> Tensor + Send + Sync>;

/// A linear map from a plain (untraced, unbatched) tensor to a tensor of the same shape, dtype
/// and device (see [`Tensor::apply_linear_step`]).
pub type LinearStepFn = Arc<dyn Fn(&Tensor) -> Tensor + Send + Sync>;

/// The derivative rules of a linear step: its tangent is the map of the tangent, and its
/// cotangent the transpose of the cotangent.
struct LinearStepRule {
    what: Arc<str>,
    map: LinearStepFn,
    transpose: LinearStepFn,
}

impl Rule for LinearStepRule {
    fn name(&self) -> String {
        self.what.to_string()
    }
    fn vjp(&self, _inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let what = format!("{} (transpose)", self.what);
        vec![Some(ct.apply_linear_step(
            &what,
            self.transpose.clone(),
            self.map.clone(),
        ))]
    }
    fn jvp(&self, _inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let t = tangents[0].as_ref()?;
        Some(t.apply_linear_step(&self.what, self.map.clone(), self.transpose.clone()))
    }
}

impl Tensor {
    /// A tensor of this shape, dtype and device holding `f` applied to this tensor's values.
    ///
    /// For steps the backend does not know, such as an all-reduce across ranks
    /// (`nb::dist` builds on it). Under [`crate::jit`] the step is part of the recorded tape
    /// and runs again on every replay. `what` names the step in error messages. Panics when
    /// the tensor is traced or batched (the step has no derivative rule: apply it to
    /// gradients, not inside a transform), or when `f` returns another dtype or length.
    pub fn apply_external(&self, what: &str, f: ExternalFn) -> Tensor {
        self.check_plain_value(what);
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
        let raw = host_step(self.device(), self.raw(), step, true);
        Tensor::untraced(raw, &[self])
    }

    /// `f` applied to this tensor where it lives, with no round trip through the host: for
    /// steps that work on device memory themselves, such as an NCCL all-reduce. `f` gets an
    /// untraced tensor of this one's values and must return one of the same shape, dtype and
    /// device; it may launch kernels and queue work without waiting for it. Its input may share
    /// its buffer with other tensors (under `jit`, with the recorded program), so `f` must not
    /// write into it: an in-place transport works on a fresh copy (any op's result is one).
    ///
    /// Under [`crate::jit`] the whole of `f` is one recorded step, never folded into a constant
    /// (even on constant inputs): the kernels it launches are not recorded one by one, and
    /// every replay calls `f` again on the new values, in order with the other kernels. Its
    /// result is made contiguous when it is not, so that a replay reads it with the recorded
    /// layout. Panics like [`Tensor::apply_external`] on traced or batched tensors, and when
    /// `f` returns another shape, dtype or device.
    pub fn apply_device_step(&self, what: &str, f: DeviceStepFn) -> Tensor {
        self.check_plain_value(what);
        let what: Arc<str> = what.into();
        let step: HostFn = Arc::new(move |backend: &dyn Backend, raw: &RawTensor| {
            let out = paused(|| f(Tensor::from_raw(raw.clone())));
            if out.shape() != raw.shape() || out.dtype() != raw.dtype() || out.device() != raw.device() {
                panic!(
                    "{what}: the step returned shape {:?} ({}, {}) for an input of shape {:?} ({}, {})",
                    out.shape(),
                    out.dtype(),
                    out.device(),
                    raw.shape(),
                    raw.dtype(),
                    raw.device()
                );
            }
            let layout = out.raw().layout();
            if layout.is_contiguous() && layout.offset() == 0 {
                out.raw().clone()
            } else {
                backend.contiguous(out.raw())
            }
        });
        let raw = host_step(self.device(), self.raw(), step, true);
        Tensor::untraced(raw, &[self])
    }

    /// `map` applied to this tensor, differentiated as the linear map it is: the tangent of the
    /// result is `map` of the tangent, and the cotangent of this tensor is `transpose` of the
    /// result's cotangent, in every transform and at every order (JAX differentiates `psum`
    /// this way; `nb::dist::psum`, the differentiable sum across processes, is built on it).
    ///
    /// `map` and `transpose` get a plain tensor (untraced) and must return one of the same
    /// shape, dtype and device; they usually run the step through
    /// [`Tensor::apply_external`] or [`Tensor::apply_device_step`], so that `jit` replays it.
    /// Under `vmap` they get the whole batched value (mapped axes first), so `map` must act on
    /// every mapped slice alike, as an elementwise sum across processes does. Panics, naming
    /// `what`, when `map` returns another shape, dtype or device. Nothing checks that `map` is
    /// linear or that `transpose` is its transpose: derivatives are only as right as they are.
    pub fn apply_linear_step(&self, what: &str, map: LinearStepFn, transpose: LinearStepFn) -> Tensor {
        let plain = Tensor::from_raw(self.raw().clone());
        let out = map(&plain);
        if out.shape() != plain.shape() || out.dtype() != plain.dtype() || out.device() != plain.device() {
            panic!(
                "{what}: the linear step returned shape {:?} ({}, {}) for an input of shape {:?} ({}, {})",
                out.shape(),
                out.dtype(),
                out.device(),
                plain.shape(),
                plain.dtype(),
                plain.device()
            );
        }
        let what: Arc<str> = what.into();
        Tensor::record_batched(out.raw().clone(), self.batch().to_vec(), &[self], move || {
            LinearStepRule { what, map, transpose }
        })
    }

    /// Refuses, naming `what`, a tensor that a step without a derivative rule cannot take.
    fn check_plain_value(&self, what: &str) {
        if self.is_traced() || self.is_batched() {
            panic!(
                "{what}: this step runs outside the traced program and has no derivative rule; \
                 apply it to values that are not traced or batched (stop_gradient first, or call it \
                 outside grad/vjp/vmap) — got a tensor of shape {:?} ({})",
                self.shape(),
                self.dtype()
            );
        }
    }
}
