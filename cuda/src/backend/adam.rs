//! The Adam update: the parameter and both moments are copied into one `[3, ..shape]` output by
//! a concatenation (a copy launch per part), then the generated `nb_adam_*` kernel updates the
//! three rows in place from the gradient: four launches, where the composed update took a dozen.

use nabla_core::backend::AdamStep;
use nabla_core::storage::RawTensor;
use nabla_kernels::{AdamSpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

/// `x` with a leading axis of extent 1 (a view).
fn lifted(x: &RawTensor) -> RawTensor {
    RawTensor::new(x.storage().clone(), x.layout().expand_dims(0))
        .expect("a new unit axis keeps the view inside its buffer")
}

pub(super) fn adam_update<A: DeviceApi>(
    be: &CudaBackend<A>,
    param: &RawTensor,
    grad: &RawTensor,
    m: &RawTensor,
    v: &RawTensor,
    count: &RawTensor,
    step: &AdamStep,
) -> RawTensor {
    let (p1, m1, v1) = (lifted(param), lifted(m), lifted(v));
    let out = super::index::concat(be, &[&p1, &m1, &v1], 0);
    let n = param.layout().numel();
    if n == 0 {
        return out;
    }
    let (grad, count) = (be.dense(grad), be.dense(count));
    let dtype = param.dtype();
    let s = spec(AdamSpec::new(kernel_dtype(dtype)), "adam_update");
    let row = |k: usize| {
        let offset = k * n * dtype.size_in_bytes();
        LaunchArg::Ptr(&be.buf(&out).mem, offset)
    };
    be.run(&s, launch::elementwise(n as i64, be.api.sm_count()), |p| {
        Some(match p.name {
            "param" => row(0),
            "m" => row(1),
            "v" => row(2),
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
