//! The Adam update: the generated `nb_adam_*` kernel reads the parameter, both moments and the
//! gradient once and writes the new three into one `[3, ..shape]` output: one launch, where the
//! composed update took a dozen (and a copy of the three into the output, then an update in
//! place, took four and twice the memory traffic).

use nabla_core::backend::AdamStep;
use nabla_core::storage::RawTensor;
use nabla_kernels::{AdamSpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

pub(super) fn adam_update<A: DeviceApi>(
    be: &CudaBackend<A>,
    param: &RawTensor,
    grad: &RawTensor,
    m: &RawTensor,
    v: &RawTensor,
    count: &RawTensor,
    step: &AdamStep,
) -> RawTensor {
    let mut shape = vec![3];
    shape.extend_from_slice(param.shape());
    let dtype = param.dtype();
    let out = be.empty(&shape, dtype);
    let n = param.layout().numel();
    if n == 0 {
        return out;
    }
    let (param, m, v) = (be.dense(param), be.dense(m), be.dense(v));
    let (grad, count) = (be.dense(grad), be.dense(count));
    let s = spec(AdamSpec::new(kernel_dtype(dtype)), "adam_update");
    be.run(&s, launch::elementwise(n as i64, be.api.sm_count()), |p| {
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "param" => be.run_ptr(&param),
            "m" => be.run_ptr(&m),
            "v" => be.run_ptr(&v),
            "grad" => be.run_ptr(&grad),
            "n" => LaunchArg::I64(n as i64),
            "lr" => LaunchArg::F64(step.lr),
            "beta1" => LaunchArg::F64(step.beta1),
            "beta2" => LaunchArg::F64(step.beta2),
            "eps" => LaunchArg::F64(step.eps),
            "weight_decay" => LaunchArg::F64(step.weight_decay),
            "count" => be.run_ptr(&count),
            "decoupled" => LaunchArg::I32(step.decoupled as i32),
            _ => return None,
        })
    });
    out
}
