//! Indexing kernels: gather, scatter-add, concatenation and strided embedding.

use std::borrow::Cow;
use std::sync::Arc;

use ndarray::{Axis, IxDyn, Slice};

use super::elementwise::copy_view;
use super::{dense_run, host, view, wrap};
use crate::layout::Layout;
use crate::storage::{CpuBuffer, IntoCpuBuffer, RawTensor};
use crate::with_cpu_buffer;

/// Outputs of at least this many elements are copied on several threads (smaller ones are not
/// worth the hand-off).
const PARALLEL_FROM: usize = 1 << 16;

fn indices(idx: &RawTensor) -> Cow<'_, [i64]> {
    match host(idx) {
        CpuBuffer::I64(d) => in_order(d, &idx.layout),
        _ => unreachable!("indices are i64: checked by the op layer"),
    }
}

/// The elements of the view `layout` of `data` in row-major order: borrowed where the view is
/// contiguous (an embedding table is not copied to gather a few rows), copied otherwise.
fn in_order<'a, T: Copy + Send + Sync>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    if layout.is_contiguous() {
        Cow::Borrowed(dense_run(data, layout))
    } else {
        Cow::Owned(copy_view(data, layout))
    }
}

fn gather_typed<T: Copy>(x: &[T], dims: [usize; 4], idx: &[i64], i_len: usize) -> Vec<T> {
    let [bn, p, n, q] = dims;
    let mut out = Vec::with_capacity(bn * p * i_len * q);
    for b in 0..bn {
        let rows = &idx[b * i_len..(b + 1) * i_len];
        for pp in 0..p {
            let base = (b * p + pp) * n;
            if q == 1 {
                // Single elements (max pooling's values, take_along_axis): no slice per index.
                out.extend(rows.iter().map(|&row| x[base + row as usize]));
                continue;
            }
            for &row in rows {
                let start = (base + row as usize) * q;
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
    with_cpu_buffer!(host(x), d => wrap(gather_typed(&in_order(d, &x.layout), dims, &ids, i_len), &shape))
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
        let rows = &idx[b * i_len..(b + 1) * i_len];
        for pp in 0..p {
            let dst = &mut base[(b * p + pp) * n * q..(b * p + pp + 1) * n * q];
            let src = &upd[(b * p + pp) * i_len * q..(b * p + pp + 1) * i_len * q];
            if q == 0 {
                continue;
            }
            if q == 1 {
                for (&row, &u) in rows.iter().zip(src) {
                    let at = &mut dst[row as usize];
                    *at = *at + u;
                }
                continue;
            }
            for (&row, u) in rows.iter().zip(src.chunks_exact(q)) {
                for (d, &u) in dst[row as usize * q..(row as usize + 1) * q].iter_mut().zip(u) {
                    *d = *d + u;
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
            let mut out = copy_view(b, &base.layout);
            scatter_typed(&mut out, dims, &ids, &in_order(u, &upd.layout), i_len);
            wrap(out, &shape)
        }
        (CpuBuffer::F64(b), CpuBuffer::F64(u)) => {
            let mut out = copy_view(b, &base.layout);
            scatter_typed(&mut out, dims, &ids, &in_order(u, &upd.layout), i_len);
            wrap(out, &shape)
        }
        (CpuBuffer::I64(b), CpuBuffer::I64(u)) => {
            let mut out = copy_view(b, &base.layout);
            scatter_typed(&mut out, dims, &ids, &in_order(u, &upd.layout), i_len);
            wrap(out, &shape)
        }
        _ => unreachable!("scatter_add dtypes are checked by the op layer; halves arrive widened to f32"),
    }
}

/// `upd[b, p, i, q]` added at `[b, p, idx[b, i], q]` of zeros `[B, P, n, Q]`: the zeros are a
/// fresh zeroed allocation (pages the kernel hands out zeroed), not a copy of a base.
pub(super) fn scatter_add_to_zeros(n: usize, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
    let [b, p, _, q] = dims4(upd);
    let dims = [b, p, n, q];
    let ids = indices(idx);
    let i_len = idx.shape()[1];
    match host(upd) {
        CpuBuffer::F32(u) => {
            let mut out = vec![0f32; b * p * n * q];
            scatter_typed(&mut out, dims, &ids, &in_order(u, &upd.layout), i_len);
            wrap(out, &dims)
        }
        CpuBuffer::F64(u) => {
            let mut out = vec![0f64; b * p * n * q];
            scatter_typed(&mut out, dims, &ids, &in_order(u, &upd.layout), i_len);
            wrap(out, &dims)
        }
        CpuBuffer::I64(u) => {
            let mut out = vec![0i64; b * p * n * q];
            scatter_typed(&mut out, dims, &ids, &in_order(u, &upd.layout), i_len);
            wrap(out, &dims)
        }
        _ => unreachable!("scatter_add dtypes are checked by the op layer; halves arrive widened to f32"),
    }
}

/// Copies `parts` joined along `axis` into `out`'s spare capacity, one block of the output per
/// index of the axes before `axis` (`block` elements: each part's slab for that index, in
/// order), on several threads when the output is large. Every element is written once, so
/// nothing is zero-filled first.
fn concat_into<T: Copy + Send + Sync>(
    parts: &[ndarray::ArrayViewD<'_, T>],
    axis: usize,
    outer_shape: &[usize],
    block: usize,
    out: &mut [std::mem::MaybeUninit<T>],
) {
    let slabs: Vec<usize> = parts.iter().map(|p| p.shape()[axis..].iter().product()).collect();
    let fill = |(o, dst): (usize, &mut [std::mem::MaybeUninit<T>])| {
        // The multi-index of output block `o` over the axes before `axis` (row-major).
        let mut idx = vec![0usize; outer_shape.len()];
        let mut rest = o;
        for (ax, &d) in outer_shape.iter().enumerate().rev() {
            idx[ax] = rest % d;
            rest /= d;
        }
        let mut at = 0;
        for (p, &len) in parts.iter().zip(&slabs) {
            let mut v = p.view();
            for (ax, &i) in idx.iter().enumerate() {
                v.collapse_axis(Axis(ax), i);
            }
            let mut slot = dst[at..at + len].iter_mut();
            for lane in v.rows() {
                match lane.as_slice() {
                    Some(row) => row.iter().zip(&mut slot).for_each(|(s, d)| {
                        d.write(*s);
                    }),
                    None => lane.iter().zip(&mut slot).for_each(|(s, d)| {
                        d.write(*s);
                    }),
                }
            }
            at += len;
        }
    };
    if out.len() >= PARALLEL_FROM {
        use rayon::prelude::*;
        out.par_chunks_mut(block).enumerate().for_each(fill);
    } else {
        out.chunks_mut(block).enumerate().for_each(fill);
    }
}

fn concat_typed<T: Copy + Default + Send + Sync>(
    parts: Vec<ndarray::ArrayViewD<'_, T>>,
    axis: usize,
) -> (Vec<T>, Vec<usize>) {
    let mut shape = parts[0].shape().to_vec();
    shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
    let total: usize = shape.iter().product();
    let block: usize = shape[axis..].iter().product();
    let mut out: Vec<T> = Vec::with_capacity(total);
    if total > 0 {
        concat_into(
            &parts,
            axis,
            &shape[..axis],
            block,
            &mut out.spare_capacity_mut()[..total],
        );
        // SAFETY: `concat_into` wrote all `total` elements: each block of the output is the
        // parts' slabs for that index, whose sizes add up to `block`.
        unsafe { out.set_len(total) };
    }
    (out, shape)
}

/// Joins tensors whose buffers hold `T`, the element type of the first one's `_first`
/// (every part has the first part's dtype: checked by the op layer).
fn concat_as<T: Copy + Default + Send + Sync + 'static>(
    xs: &[&RawTensor],
    axis: usize,
    _first: &Arc<Vec<T>>,
) -> RawTensor
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

/// Writes `x` into `target` (zeros of `x`'s rank, a view of the output) at the positions
/// `starts[ax] + steps[ax] * i` of each axis.
fn embed_into<T: Copy>(
    x: ndarray::ArrayViewD<'_, T>,
    mut target: ndarray::ArrayViewMutD<'_, T>,
    starts: &[usize],
    steps: &[usize],
) {
    for ax in 0..target.ndim() {
        let len = x.shape()[ax];
        let end = starts[ax] + steps[ax] * len.saturating_sub(1) + usize::from(len > 0);
        target.slice_axis_inplace(
            Axis(ax),
            Slice::new(starts[ax] as isize, Some(end as isize), steps[ax] as isize),
        );
    }
    target.assign(&x);
}

fn embed_typed<T: Copy + Default + Send + Sync>(
    x: ndarray::ArrayViewD<'_, T>,
    shape: &[usize],
    starts: &[usize],
    steps: &[usize],
) -> Vec<T> {
    let total: usize = shape.iter().product();
    let mut out = vec![T::default(); total];
    // One output row (an index of the first axis) per task when the output is large: the
    // backward pass of every slice (and so of convolutions' im2col) is an embed.
    let row: usize = shape.iter().skip(1).product();
    if shape.len() >= 2 && total >= PARALLEL_FROM && row > 0 {
        use rayon::prelude::*;
        out.par_chunks_mut(row).enumerate().for_each(|(r, dst)| {
            let Some(offset) = r.checked_sub(starts[0]) else { return };
            let i = offset / steps[0];
            if offset % steps[0] != 0 || i >= x.shape()[0] {
                return;
            }
            let target = ndarray::ArrayViewMutD::from_shape(IxDyn(&shape[1..]), dst).expect("a row of the output");
            embed_into(x.index_axis(Axis(0), i), target, &starts[1..], &steps[1..]);
        });
    } else if total > 0 {
        let target = ndarray::ArrayViewMutD::from_shape(IxDyn(shape), &mut out[..]).expect("the output");
        embed_into(x, target, starts, steps);
    }
    out
}

/// Zeros of `shape` with `x` written at the strided positions.
pub(super) fn embed(x: &RawTensor, shape: &[usize], starts: &[usize], steps: &[usize]) -> RawTensor {
    with_cpu_buffer!(host(x), d => wrap(embed_typed(view(d, &x.layout), shape, starts, steps), shape))
}
