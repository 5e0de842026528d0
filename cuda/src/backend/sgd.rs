//! The SGD update: the generated `nb_sgd_*` / `nb_sgd_momentum_*` kernel reads the parameter,
//! the gradient and the velocity once and writes the new parameter (and velocity) into one
//! `[k, ..shape]` output: one launch where the composed update took up to eight.

use nabla_core::backend::SgdStep;
use nabla_core::storage::RawTensor;
use nabla_kernels::{SgdSpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

pub(super) fn sgd_update<A: DeviceApi>(
    be: &CudaBackend<A>,
    param: &RawTensor,
    grad: &RawTensor,
    velocity: Option<&RawTensor>,
    step: &SgdStep,
) -> RawTensor {
    let mut shape = vec![if velocity.is_some() { 2 } else { 1 }];
    shape.extend_from_slice(param.shape());
    let dtype = param.dtype();
    let out = be.empty(&shape, dtype);
    let n = param.layout().numel();
    if n == 0 {
        return out;
    }
    let (param, grad) = (be.dense(param), be.dense(grad));
    let velocity = velocity.map(|v| be.dense(v));
    let s = spec(SgdSpec::new(kernel_dtype(dtype), velocity.is_some()), "sgd_update");
    be.run(&s, launch::elementwise(n as i64, be.api.sm_count()), |p| {
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "param" => be.run_ptr(&param),
            "grad" => be.run_ptr(&grad),
            "velocity" => be.run_ptr(velocity.as_ref()?),
            "n" => LaunchArg::I64(n as i64),
            "lr" => LaunchArg::F64(step.lr),
            "momentum" => LaunchArg::F64(step.momentum),
            "weight_decay" => LaunchArg::F64(step.weight_decay),
            "nesterov" => LaunchArg::I32(step.nesterov as i32),
            _ => return None,
        })
    });
    out
}
