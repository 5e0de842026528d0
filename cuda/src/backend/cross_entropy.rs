//! Softmax cross-entropy rows against integer labels: the generated fused kernel
//! (`nabla_kernels::CrossEntropySpec`), one group of threads per row, writing the loss of each
//! row (forward) or the gradient of each row times its cotangent (backward), over dense copies
//! of the operands when they are views.

use nabla_core::storage::RawTensor;
use nabla_kernels::{CrossEntropySpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

/// What one launch writes: the losses, or the gradient from the rows' cotangent `g`.
enum Output<'a> {
    Loss(&'a RawTensor),
    Grad { out: &'a RawTensor, g: &'a RawTensor },
}

/// The loss of every row of `x` against `labels` (checked and wrapped by the op layer; the
/// kernel still reports one out of range), shaped like `labels`.
pub(super) fn cross_entropy_rows<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor, labels: &RawTensor) -> RawTensor {
    let out = be.empty(labels.shape(), x.dtype());
    launch_rows(be, x, labels, Output::Loss(&out));
    out
}

/// `(softmax(x) - one_hot(labels)) * g` of every row, shaped like `x`.
pub(super) fn cross_entropy_rows_backward<A: DeviceApi>(
    be: &CudaBackend<A>,
    x: &RawTensor,
    labels: &RawTensor,
    g: &RawTensor,
) -> RawTensor {
    let g = be.dense(g);
    let out = be.empty(x.shape(), x.dtype());
    launch_rows(be, x, labels, Output::Grad { out: &out, g: &g });
    out
}

/// One launch of the cross-entropy kernel over the rows of `x`.
fn launch_rows<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor, labels: &RawTensor, output: Output) {
    let (x, labels) = (be.dense(x), be.dense(labels));
    let cols = x.shape().last().copied().unwrap_or(1) as i64;
    let rows = labels.layout().numel() as i64;
    if rows == 0 || cols == 0 {
        return;
    }
    let (dims, group) = launch::row_plan(rows, cols, be.api.sm_count());
    let s = spec(CrossEntropySpec::new(kernel_dtype(x.dtype())), "cross_entropy");
    be.run(&s, dims, |p| {
        Some(match (p.name, &output) {
            ("loss", Output::Loss(out)) | ("grad", Output::Grad { out, .. }) => be.run_ptr(out),
            ("g", Output::Grad { g, .. }) => be.run_ptr(g),
            ("loss" | "grad" | "g", _) => LaunchArg::Null,
            ("x", _) => be.run_ptr(&x),
            ("labels", _) => be.run_ptr(&labels),
            ("rows", _) => LaunchArg::I64(rows),
            ("cols", _) => LaunchArg::I64(cols),
            ("wrap_negative", _) => LaunchArg::I32(0),
            ("group", _) => LaunchArg::I32(group as i32),
            _ => return None,
        })
    });
}
