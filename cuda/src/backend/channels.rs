//! Batch normalisation's fused kernels (`nabla_kernels::ChannelSpec`) over `x` `[A, C, B]`:
//! a partial pass of a block per chunk of a channel into a float (double for f64) workspace,
//! a finishing pass of a thread per channel, and for the backward passes one elementwise pass
//! from the channels' factors. Halves are read and written natively and computed in float.

use nabla_core::DType;
use nabla_core::storage::RawTensor;
use nabla_kernels::{ChannelOp, ChannelPass, ChannelSpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

/// The dimensions `(A, C, B)` of a `[A, C, B]` tensor.
fn dims(x: &RawTensor, op: &str) -> (i64, i64, i64) {
    match x.shape() {
        &[a, c, b] => (a as i64, c as i64, b as i64),
        s => panic!("internal error: {op} takes [A, C, B], got {s:?}"),
    }
}

/// The pass `pass` of `op` on `dtype`'s kernels.
fn channel_spec(op: ChannelOp, x: &RawTensor, pass: ChannelPass, name: &str) -> ChannelSpec {
    ChannelSpec::new(op, kernel_dtype(x.dtype()), pass).unwrap_or_else(|e| panic!("{name} on cuda: {e}"))
}

/// The partial pass of `op` over the element inputs `elements` (`[A, C, B]`, alike) and the
/// per-channel inputs `channels` (`[C]`), then its finishing pass with `bind` giving the
/// arguments the finish adds (its `out`, `factors`, `rstd`). Returns the workspace of
/// factors the finish wrote, when `factors` is asked for (`[C, 2]` float or double).
fn partial_and_finish<'m, A: DeviceApi>(
    be: &'m CudaBackend<A>,
    (op, last): (ChannelOp, ChannelPass),
    name: &str,
    inputs: &[(&'static str, &'m RawTensor)],
    finish_bind: impl Fn(&str) -> Option<LaunchArg<'m, A::Mem>>,
    (a, c, b): (i64, i64, i64),
) {
    let x = inputs[0].1;
    let plan = launch::channel_plan(c, a * b, be.api.sm_count());
    let partial_spec = channel_spec(op, x, ChannelPass::Partial, name);
    let bytes = (c * plan.splits) as usize * partial_spec.partial_width() * partial_spec.acc_type().size_in_bytes();
    let partial = be.allocate(bytes, &|| format!("the workspace of {name}"), || be.api.alloc(bytes));
    be.run(&partial_spec.into(), plan.partial, |p| {
        Some(match p.name {
            "partial" => LaunchArg::Ptr(&partial, 0),
            "a" => LaunchArg::I64(a),
            "c" => LaunchArg::I64(c),
            "b" => LaunchArg::I64(b),
            "splits" => LaunchArg::I64(plan.splits),
            other => be.run_ptr(inputs.iter().find(|(n, _)| *n == other)?.1),
        })
    });
    let finish = spec(ChannelSpec::new(op, kernel_dtype(x.dtype()), last), name);
    be.run(&finish, plan.finish, |p| {
        Some(match p.name {
            "partial" => LaunchArg::Ptr(&partial, 0),
            "c" => LaunchArg::I64(c),
            "count" => LaunchArg::I64(a * b),
            "splits" => LaunchArg::I64(plan.splits),
            other => finish_bind(other)?,
        })
    });
}

/// A workspace of `[2, C]` factors for `op`'s finishing pass to write.
fn factors_workspace<A: DeviceApi>(be: &CudaBackend<A>, op: ChannelOp, x: &RawTensor, c: i64, name: &str) -> A::Mem {
    let s = channel_spec(op, x, ChannelPass::Finish, name);
    let bytes = (c as usize * 2 * s.acc_type().size_in_bytes()).max(1);
    be.allocate(bytes, &|| format!("the factors of {name}"), || be.api.alloc(bytes))
}

/// The apply pass of `op` writing `out` (its first `A * C * B` elements) from `inputs` and the
/// channels' factors (`[2, C]` float or double at a byte offset of a buffer).
fn apply<'m, A: DeviceApi>(
    be: &'m CudaBackend<A>,
    op: ChannelOp,
    name: &str,
    out: &'m RawTensor,
    inputs: &[(&'static str, &'m RawTensor)],
    (factors, offset): (&'m A::Mem, usize),
    (a, c, b): (i64, i64, i64),
) {
    let n = a * c * b;
    let s = spec(
        ChannelSpec::new(op, kernel_dtype(out.dtype()), ChannelPass::Apply),
        name,
    );
    be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| {
        Some(match p.name {
            "out" => be.run_ptr(out),
            "factors" => LaunchArg::Ptr(factors, offset),
            "c" => LaunchArg::I64(c),
            "b" => LaunchArg::I64(b),
            "n" => LaunchArg::I64(n),
            other => be.run_ptr(inputs.iter().find(|(k, _)| *k == other)?.1),
        })
    });
}

/// Batch norm's input gradient into `out` from `x`, `g`, `mean`, `rstd`, `gamma` and the
/// channels' factors (`[2, C]`: `mean(g x_hat)`, `mean(g)`).
fn batch_norm_apply<'m, A: DeviceApi>(
    be: &'m CudaBackend<A>,
    name: &str,
    out: &'m RawTensor,
    [x, g, mean, rstd, gamma]: [&'m RawTensor; 5],
    factors: (&'m A::Mem, usize),
    d: (i64, i64, i64),
) {
    let inputs = [("x", x), ("g", g), ("mean", mean), ("rstd", rstd), ("gamma", gamma)];
    apply(be, ChannelOp::BatchNormBackward, name, out, &inputs, factors, d);
}

/// The mean and biased variance of every channel of `x` `[A, C, B]`, as `[2, C]` in its dtype.
pub(super) fn channel_moments<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor) -> RawTensor {
    let name = "batch norm statistics";
    let x = be.contiguous_view(x);
    let d = dims(&x, name);
    let out = be.empty(&[2, d.1 as usize], x.dtype());
    if d.1 == 0 {
        return out;
    }
    let finish_bind = |p: &str| (p == "out").then(|| be.run_ptr(&out));
    partial_and_finish(
        be,
        (ChannelOp::Moments, ChannelPass::Finish),
        name,
        &[("x", &*x)],
        finish_bind,
        d,
    );
    out
}

/// `rstd (v - mean(v) - y mean(v y))` per channel of `[A, C, B]`.
pub(super) fn channel_norm_backward<A: DeviceApi>(
    be: &CudaBackend<A>,
    y: &RawTensor,
    v: &RawTensor,
    rstd: &RawTensor,
) -> RawTensor {
    let name = "batch norm standardisation backward";
    let (y, v, rstd) = (be.contiguous_view(y), be.contiguous_view(v), be.contiguous_view(rstd));
    let d = dims(&y, name);
    let out = be.empty(y.shape(), y.dtype());
    if d.0 * d.1 * d.2 == 0 {
        return out;
    }
    let op = ChannelOp::NormBackward;
    let factors = factors_workspace(be, op, &y, d.1, name);
    let finish_bind = |p: &str| (p == "factors").then_some(LaunchArg::Ptr(&factors, 0));
    partial_and_finish(
        be,
        (op, ChannelPass::Finish),
        name,
        &[("y", &*y), ("v", &*v)],
        finish_bind,
        d,
    );
    apply(
        be,
        op,
        name,
        &out,
        &[("y", &*y), ("v", &*v), ("rstd", &*rstd)],
        (&factors, 0),
        d,
    );
    out
}

/// Batch normalisation's backward pass over `x` `[A, C, B]`: `dx`, `dgamma`, `dbeta` packed as
/// `[A * C * B + 2 C]`.
pub(super) fn batch_norm_backward<A: DeviceApi>(
    be: &CudaBackend<A>,
    x: &RawTensor,
    g: &RawTensor,
    mean: &RawTensor,
    rstd: &RawTensor,
    gamma: &RawTensor,
) -> RawTensor {
    let name = "batch_norm backward";
    let (x, g) = (be.contiguous_view(x), be.contiguous_view(g));
    let (mean, rstd, gamma) = (
        be.contiguous_view(mean),
        be.contiguous_view(rstd),
        be.contiguous_view(gamma),
    );
    let d = dims(&x, name);
    let n = (d.0 * d.1 * d.2) as usize;
    let out = be.empty(&[n + 2 * d.1 as usize], x.dtype());
    if d.1 == 0 {
        return out;
    }
    let op = ChannelOp::BatchNormBackward;
    let factors = factors_workspace(be, op, &x, d.1, name);
    let finish_bind = |p: &str| {
        Some(match p {
            "out" => be.run_ptr(&out),
            "factors" => LaunchArg::Ptr(&factors, 0),
            "rstd" => be.run_ptr(&rstd),
            _ => return None,
        })
    };
    partial_and_finish(
        be,
        (op, ChannelPass::Finish),
        name,
        &[("x", &*x), ("g", &*g), ("mean", &*mean)],
        finish_bind,
        d,
    );
    if n > 0 {
        batch_norm_apply(be, name, &out, [&*x, &*g, &*mean, &*rstd, &*gamma], (&factors, 0), d);
    }
    out
}

/// `sum(g x_hat)` then `sum(g)` per channel of `x` `[A, C, B]`, as `[2, C]` f32 (f64 for f64).
pub(super) fn batch_norm_backward_sums<A: DeviceApi>(
    be: &CudaBackend<A>,
    x: &RawTensor,
    g: &RawTensor,
    mean: &RawTensor,
    rstd: &RawTensor,
) -> RawTensor {
    let name = "batch_norm backward sums";
    let (x, g, mean, rstd) = (
        be.contiguous_view(x),
        be.contiguous_view(g),
        be.contiguous_view(mean),
        be.contiguous_view(rstd),
    );
    let d = dims(&x, name);
    let acc = if x.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let sums = be.empty(&[2, d.1 as usize], acc);
    if d.1 == 0 {
        return sums;
    }
    let finish_bind = |p: &str| {
        Some(match p {
            "sums" => be.run_ptr(&sums),
            "rstd" => be.run_ptr(&rstd),
            _ => return None,
        })
    };
    let inputs = [("x", &*x), ("g", &*g), ("mean", &*mean)];
    partial_and_finish(
        be,
        (ChannelOp::BatchNormBackward, ChannelPass::Sums),
        name,
        &inputs,
        finish_bind,
        d,
    );
    sums
}

/// Batch normalisation's input gradient over `x` `[A, C, B]` from the channels' `means` `[2,
/// C]` (f32, f64 for f64).
pub(super) fn batch_norm_backward_input<A: DeviceApi>(
    be: &CudaBackend<A>,
    (x, g): (&RawTensor, &RawTensor),
    (mean, rstd, gamma): (&RawTensor, &RawTensor, &RawTensor),
    means: &RawTensor,
) -> RawTensor {
    let name = "batch_norm backward input";
    let (x, g, means) = (be.contiguous_view(x), be.contiguous_view(g), be.contiguous_view(means));
    let (mean, rstd, gamma) = (
        be.contiguous_view(mean),
        be.contiguous_view(rstd),
        be.contiguous_view(gamma),
    );
    let d = dims(&x, name);
    let out = be.empty(x.shape(), x.dtype());
    if d.0 * d.1 * d.2 > 0 {
        let bytes = means.layout().offset() * means.dtype().size_in_bytes();
        let factors = (&be.buf(&means).mem, bytes);
        batch_norm_apply(be, name, &out, [&*x, &*g, &*mean, &*rstd, &*gamma], factors, d);
    }
    out
}

/// `(x - mean) scale + shift` per channel of `x` `[A, C, B]`, in its dtype.
pub(super) fn channel_scale_shift<A: DeviceApi>(
    be: &CudaBackend<A>,
    x: &RawTensor,
    [mean, scale, shift]: [&RawTensor; 3],
) -> RawTensor {
    let name = "batch norm output";
    let x = be.contiguous_view(x);
    let (mean, scale, shift) = (
        be.contiguous_view(mean),
        be.contiguous_view(scale),
        be.contiguous_view(shift),
    );
    let (a, c, b) = dims(&x, name);
    let out = be.empty(x.shape(), x.dtype());
    let n = a * c * b;
    if n > 0 {
        let s = spec(
            ChannelSpec::new(ChannelOp::ScaleShift, kernel_dtype(x.dtype()), ChannelPass::Apply),
            name,
        );
        be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| {
            Some(match p.name {
                "out" => be.run_ptr(&out),
                "x" => be.run_ptr(&x),
                "mean" => be.run_ptr(&mean),
                "scale" => be.run_ptr(&scale),
                "shift" => be.run_ptr(&shift),
                "c" => LaunchArg::I64(c),
                "b" => LaunchArg::I64(b),
                "n" => LaunchArg::I64(n),
                _ => return None,
            })
        });
    }
    out
}
