//! Indexing kernels: gather, scatter-add, concatenation and strided embedding.

use std::sync::Arc;

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::{host, to_vec, view, wrap};
use crate::storage::{CpuBuffer, IntoCpuBuffer, RawTensor};
use crate::with_cpu_buffer;

fn indices(idx: &RawTensor) -> Vec<i64> {
    match host(idx) {
        CpuBuffer::I64(d) => to_vec(&view(d, &idx.layout)),
        _ => unreachable!("indices are i64: checked by the op layer"),
    }
}

fn gather_typed<T: Copy>(x: &[T], dims: [usize; 4], idx: &[i64], i_len: usize) -> Vec<T> {
    let [bn, p, n, q] = dims;
    let mut out = Vec::with_capacity(bn * p * i_len * q);
    for b in 0..bn {
        for pp in 0..p {
            let base = (b * p + pp) * n;
            for i in 0..i_len {
                let row = idx[b * i_len + i] as usize;
                let start = (base + row) * q;
                out.extend_from_slice(&x[start..start + q]);
            }
        }
    }
    out
}

fn dims4(x: &RawTensor) -> [usize; 4] {
    let s = x.shape();
    [s[0], s[1], s[2], s[3]]
}

/// `out[b, p, i, q] = x[b, p, idx[b, i], q]`.
pub(super) fn gather(x: &RawTensor, idx: &RawTensor) -> RawTensor {
    let dims = dims4(x);
    let ids = indices(idx);
    let i_len = idx.shape()[1];
    let shape = [dims[0], dims[1], i_len, dims[3]];
    with_cpu_buffer!(host(x), d => wrap(gather_typed(&to_vec(&view(d, &x.layout)), dims, &ids, i_len), &shape))
}

fn scatter_typed<T: Copy + std::ops::Add<Output = T>>(
    base: &mut [T],
    dims: [usize; 4],
    idx: &[i64],
    upd: &[T],
    i_len: usize,
) {
    let [bn, p, n, q] = dims;
    for b in 0..bn {
        for pp in 0..p {
            for i in 0..i_len {
                let row = idx[b * i_len + i] as usize;
                let dst = ((b * p + pp) * n + row) * q;
                let src = ((b * p + pp) * i_len + i) * q;
                for j in 0..q {
                    base[dst + j] = base[dst + j] + upd[src + j];
                }
            }
        }
    }
}

/// `base` with `upd[b, p, i, q]` added at `[b, p, idx[b, i], q]`.
pub(super) fn scatter_add(base: &RawTensor, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
    let dims = dims4(base);
    let ids = indices(idx);
    let i_len = idx.shape()[1];
    let shape = base.shape().to_vec();
    match (host(base), host(upd)) {
        (CpuBuffer::F32(b), CpuBuffer::F32(u)) => {
            let mut out = to_vec(&view(b, &base.layout));
            scatter_typed(&mut out, dims, &ids, &to_vec(&view(u, &upd.layout)), i_len);
            wrap(out, &shape)
        }
        (CpuBuffer::F64(b), CpuBuffer::F64(u)) => {
            let mut out = to_vec(&view(b, &base.layout));
            scatter_typed(&mut out, dims, &ids, &to_vec(&view(u, &upd.layout)), i_len);
            wrap(out, &shape)
        }
        (CpuBuffer::I64(b), CpuBuffer::I64(u)) => {
            let mut out = to_vec(&view(b, &base.layout));
            scatter_typed(&mut out, dims, &ids, &to_vec(&view(u, &upd.layout)), i_len);
            wrap(out, &shape)
        }
        _ => unreachable!("scatter_add dtypes are checked by the op layer; halves arrive widened to f32"),
    }
}

fn concat_typed<T: Copy + Default>(parts: Vec<ndarray::ArrayViewD<'_, T>>, axis: usize) -> (Vec<T>, Vec<usize>) {
    let mut shape = parts[0].shape().to_vec();
    shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
    let mut out = ArrayD::<T>::default(IxDyn(&shape));
    let mut at = 0;
    for p in &parts {
        let len = p.shape()[axis];
        out.slice_axis_mut(Axis(axis), Slice::from(at..at + len)).assign(p);
        at += len;
    }
    (out.into_raw_vec_and_offset().0, shape)
}

/// Joins tensors whose buffers hold `T`, the element type of the first one's `_first`
/// (every part has the first part's dtype: checked by the op layer).
fn concat_as<T: Copy + Default + 'static>(xs: &[&RawTensor], axis: usize, _first: &Arc<Vec<T>>) -> RawTensor
where
    Vec<T>: IntoCpuBuffer,
{
    let parts = xs
        .iter()
        .map(|x| {
            let data: &Vec<T> = host(x)
                .as_any()
                .downcast_ref()
                .unwrap_or_else(|| unreachable!("concat dtypes are checked by the op layer"));
            view(data, &x.layout)
        })
        .collect();
    let (out, shape) = concat_typed(parts, axis);
    RawTensor::from_cpu(out.into_cpu_buffer(), &shape)
}

/// Joins tensors along `axis`.
pub(super) fn concat(xs: &[&RawTensor], axis: usize) -> RawTensor {
    with_cpu_buffer!(host(xs[0]), first => concat_as(xs, axis, first))
}

fn embed_typed<T: Copy + Default>(
    x: ndarray::ArrayViewD<'_, T>,
    shape: &[usize],
    starts: &[usize],
    steps: &[usize],
) -> Vec<T> {
    let mut out = ArrayD::<T>::default(IxDyn(shape));
    {
        let mut target = out.view_mut();
        for ax in 0..shape.len() {
            let len = x.shape()[ax];
            let end = starts[ax] + steps[ax] * len.saturating_sub(1) + usize::from(len > 0);
            target.slice_axis_inplace(
                Axis(ax),
                Slice::new(starts[ax] as isize, Some(end as isize), steps[ax] as isize),
            );
        }
        target.assign(&x);
    }
    out.into_raw_vec_and_offset().0
}

/// Zeros of `shape` with `x` written at the strided positions.
pub(super) fn embed(x: &RawTensor, shape: &[usize], starts: &[usize], steps: &[usize]) -> RawTensor {
    with_cpu_buffer!(host(x), d => wrap(embed_typed(view(d, &x.layout), shape, starts, steps), shape))
}
