//! Softmax and log-softmax rows: the generated fused row kernel (`nabla_kernels::RowSpec`), one
//! group of threads per row of the last axis, over a dense copy of the input when it is a view.

use nabla_core::backend::RowOp;
use nabla_core::storage::RawTensor;
use nabla_kernels as k;
use nabla_kernels::{RowSpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

pub(super) fn softmax_rows<A: DeviceApi>(be: &CudaBackend<A>, op: RowOp, x: &RawTensor) -> RawTensor {
    let (kop, name) = match op {
        RowOp::Softmax => (k::RowOp::Softmax, "softmax"),
        RowOp::LogSoftmax => (k::RowOp::LogSoftmax, "log_softmax"),
    };
    let x = be.dense(x);
    let out = be.empty(x.shape(), x.dtype());
    let cols = x.shape().last().copied().unwrap_or(1) as i64;
    let n = x.layout().numel() as i64;
    if n == 0 || cols == 0 {
        return out;
    }
    let rows = n / cols;
    let (dims, group) = launch::row_plan(rows, cols, be.api.sm_count());
    let s = spec(RowSpec::new(kop, kernel_dtype(x.dtype())), name);
    be.run(&s, dims, |p| {
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "x" => be.run_ptr(&x),
            "rows" => LaunchArg::I64(rows),
            "cols" => LaunchArg::I64(cols),
            "group" => LaunchArg::I32(group as i32),
            _ => return None,
        })
    });
    out
}
