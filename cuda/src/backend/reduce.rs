//! Reductions: one launch when the outputs fill the GPU, else a partial pass over chunks of
//! each run into an f32/f64 workspace and a finishing pass (`nabla_kernels::launch::reduce_plan`).

use nabla_core::DType;
use nabla_core::backend::{ArgOp, ReduceOp};
use nabla_core::storage::RawTensor;
use nabla_kernels as k;
use nabla_kernels::{ArgReduceSpec, ReduceLayouts, ReduceSpec, ReduceStage, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

fn reduce_op(op: ReduceOp) -> k::ReduceOp {
    match op {
        ReduceOp::Sum => k::ReduceOp::Sum,
        ReduceOp::Prod => k::ReduceOp::Prod,
        ReduceOp::Max => k::ReduceOp::Max,
        ReduceOp::Min => k::ReduceOp::Min,
    }
}

fn layouts(x: &RawTensor, axes: &[usize], op: &str) -> ReduceLayouts {
    let l = x.layout();
    ReduceLayouts::new(l.shape(), l.strides(), l.offset(), axes).unwrap_or_else(|e| {
        panic!(
            "{op} on cuda: the view {:?} (strides {:?}) does not fit the kernels: {e}",
            l.shape(),
            l.strides()
        )
    })
}

pub(super) fn reduce<A: DeviceApi>(be: &CudaBackend<A>, op: ReduceOp, x: &RawTensor, axes: &[usize]) -> RawTensor {
    let name = format!("{op:?}");
    let x = be.fitting(x);
    let mut shape = x.shape().to_vec();
    for &a in axes {
        shape[a] = 1;
    }
    let out = be.empty(&shape, x.dtype());
    let r = layouts(&x, axes, &name);
    if r.n_out == 0 {
        return out;
    }
    let kd = kernel_dtype(x.dtype());
    let sms = be.api.sm_count();
    let plan = launch::reduce_plan(r.n_out, r.n_red, r.reduced_unit_stride(), sms);
    let xmem = &be.buf(&x).mem;
    if plan.splits == 1 {
        let s = spec(ReduceSpec::new(reduce_op(op), kd, ReduceStage::Single), &name);
        be.run(&s, plan.main, |p| {
            Some(match p.name {
                "out" => be.run_ptr(&out),
                "x" => LaunchArg::Ptr(xmem, 0),
                "outer" => LaunchArg::Layout(r.outer),
                "inner" => LaunchArg::Layout(r.inner),
                "n_out" => LaunchArg::I64(r.n_out),
                "n_red" => LaunchArg::I64(r.n_red),
                "group" => LaunchArg::I32(plan.group as i32),
                _ => return None,
            })
        });
        return out;
    }
    let partial_spec =
        ReduceSpec::new(reduce_op(op), kd, ReduceStage::Partial).unwrap_or_else(|e| panic!("{name} on cuda: {e}"));
    let acc_bytes = (r.n_out * plan.splits) as usize * partial_spec.acc_type().size_in_bytes();
    let partial = be.allocate(acc_bytes, &|| format!("the workspace of {name}"), || {
        be.api.alloc(acc_bytes)
    });
    be.run(&partial_spec.into(), plan.main, |p| {
        Some(match p.name {
            "partial" => LaunchArg::Ptr(&partial, 0),
            "x" => LaunchArg::Ptr(xmem, 0),
            "outer" => LaunchArg::Layout(r.outer),
            "inner" => LaunchArg::Layout(r.inner),
            "n_out" => LaunchArg::I64(r.n_out),
            "n_red" => LaunchArg::I64(r.n_red),
            "splits" => LaunchArg::I64(plan.splits),
            "group" => LaunchArg::I32(plan.group as i32),
            _ => return None,
        })
    });
    let (dims, group) = plan.finish.expect("a split plan has a finishing pass");
    let s = spec(ReduceSpec::new(reduce_op(op), kd, ReduceStage::Finish), &name);
    be.run(&s, dims, |p| {
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "partial" => LaunchArg::Ptr(&partial, 0),
            "n_out" => LaunchArg::I64(r.n_out),
            "splits" => LaunchArg::I64(plan.splits),
            "group" => LaunchArg::I32(group as i32),
            _ => return None,
        })
    });
    out
}

pub(super) fn arg_reduce<A: DeviceApi>(be: &CudaBackend<A>, op: ArgOp, x: &RawTensor, axis: usize) -> RawTensor {
    let x = be.fitting(x);
    if x.shape()[axis] == 0 {
        panic!(
            "argmax/argmin: the reduced axis {axis} has extent 0 (shape {:?})",
            x.shape()
        );
    }
    let kop = match op {
        ArgOp::ArgMax => k::ArgOp::ArgMax,
        ArgOp::ArgMin => k::ArgOp::ArgMin,
    };
    let mut shape = x.shape().to_vec();
    shape[axis] = 1;
    let out = be.empty(&shape, DType::I64);
    let r = layouts(&x, &[axis], "argmax/argmin");
    if r.n_out == 0 {
        return out;
    }
    let red_stride = x.layout().strides()[axis] as i64;
    let (dims, group) = launch::arg_reduce_plan(r.n_out, r.n_red, be.api.sm_count());
    let s = spec(ArgReduceSpec::new(kop, kernel_dtype(x.dtype())), "argmax/argmin");
    let xmem = &be.buf(&x).mem;
    be.run(&s, dims, |p| {
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "x" => LaunchArg::Ptr(xmem, 0),
            "outer" => LaunchArg::Layout(r.outer),
            "n_out" => LaunchArg::I64(r.n_out),
            "n_red" => LaunchArg::I64(r.n_red),
            "red_stride" => LaunchArg::I64(red_stride),
            "group" => LaunchArg::I32(group as i32),
            _ => return None,
        })
    });
    out
}
