//! Softmax, log-softmax and layer-norm rows, and their backward rows: the generated fused row kernel
//! (`nabla_kernels::RowSpec`), one group of threads per row of the last axis, over a dense copy
//! of the input when it is a view.

use nabla_core::backend::RowOp;
use nabla_core::storage::RawTensor;
use nabla_kernels as k;
use nabla_kernels::{RowSpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

pub(super) fn softmax_rows<A: DeviceApi>(be: &CudaBackend<A>, op: RowOp, x: &RawTensor) -> RawTensor {
    match op {
        RowOp::Softmax => row_kernel(be, k::RowOp::Softmax, "softmax", x, None, 0.0),
        RowOp::LogSoftmax => row_kernel(be, k::RowOp::LogSoftmax, "log_softmax", x, None, 0.0),
        RowOp::CausalSoftmax => row_kernel(be, k::RowOp::CausalSoftmax, "causal softmax", x, None, 0.0),
    }
}

pub(super) fn layer_norm_rows<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor, eps: f64) -> RawTensor {
    row_kernel(be, k::RowOp::LayerNorm, "layer_norm", x, None, eps)
}

pub(super) fn layer_norm_rows_backward<A: DeviceApi>(
    be: &CudaBackend<A>,
    x: &RawTensor,
    y: &RawTensor,
    v: &RawTensor,
    eps: f64,
) -> RawTensor {
    let (y, v) = (be.dense(y), be.dense(v));
    row_kernel(
        be,
        k::RowOp::LayerNormBackward,
        "layer_norm backward",
        x,
        Some((&y, &v)),
        eps,
    )
}

/// The backward rows of softmax or log-softmax from the output `y` and the cotangent `v`.
pub(super) fn softmax_rows_backward<A: DeviceApi>(
    be: &CudaBackend<A>,
    op: RowOp,
    y: &RawTensor,
    v: &RawTensor,
) -> RawTensor {
    let (kop, name) = match op {
        // A causal row's masked entries have y = 0, so softmax's backward gives them 0.
        RowOp::Softmax | RowOp::CausalSoftmax => (k::RowOp::SoftmaxBackward, "softmax backward"),
        RowOp::LogSoftmax => (k::RowOp::LogSoftmaxBackward, "log_softmax backward"),
    };
    // These kernels read `y` as their `x` and take no `y` parameter.
    let (y, v) = (be.dense(y), be.dense(v));
    row_kernel(be, kop, name, &y, Some((&y, &v)), 0.0)
}

/// The row kernel `kop` over every row of `x` (`y` and `v`, dense, and `eps` bind only where
/// the kernel takes them).
fn row_kernel<A: DeviceApi>(
    be: &CudaBackend<A>,
    kop: k::RowOp,
    name: &str,
    x: &RawTensor,
    yv: Option<(&RawTensor, &RawTensor)>,
    eps: f64,
) -> RawTensor {
    let x = be.dense(x);
    let out = be.empty(x.shape(), x.dtype());
    let cols = x.shape().last().copied().unwrap_or(1) as i64;
    let n = x.layout().numel() as i64;
    if n == 0 || cols == 0 {
        return out;
    }
    let rows = n / cols;
    // The causal softmax's queries per matrix (the second-to-last extent).
    let lq = x.shape().len().checked_sub(2).map_or(1, |a| x.shape()[a]) as i64;
    let (dims, group) = launch::row_plan(rows, cols, be.api.sm_count());
    let s = spec(RowSpec::new(kop, kernel_dtype(x.dtype())), name);
    be.run(&s, dims, |p| {
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "x" => be.run_ptr(&x),
            "y" => be.run_ptr(yv?.0),
            "v" => be.run_ptr(yv?.1),
            "rows" => LaunchArg::I64(rows),
            "cols" => LaunchArg::I64(cols),
            "eps" => LaunchArg::F64(eps),
            "lq" => LaunchArg::I64(lq),
            "group" => LaunchArg::I32(group as i32),
            _ => return None,
        })
    });
    out
}
