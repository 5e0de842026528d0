//! Reduction kernels: the reduced axes are moved last and every output element folds one
//! contiguous run of input elements. Chunking is fixed (not thread-count dependent), so results
//! are identical on every machine.

use ndarray::ArrayViewD;
use rayon::prelude::*;

use super::{HALVES_WIDENED, PARALLEL_MIN, host, to_vec, view, wrap};
use crate::backend::{ArgOp, ReduceOp};
use crate::storage::{CpuBuffer, IntoCpuBuffer, RawTensor};
use crate::with_cpu_buffer;

const FOLD_CHUNK: usize = 16384;

/// The view's elements with `axes` moved last, row-major, plus the output count and run length.
fn runs<T: Copy>(v: &ArrayViewD<T>, axes: &[usize]) -> (Vec<T>, usize, usize) {
    let rank = v.ndim();
    let mut perm: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
    perm.extend_from_slice(axes);
    let p = v.clone().permuted_axes(perm);
    let run: usize = axes.iter().map(|&a| v.shape()[a]).product();
    let outputs: usize = crate::shape::remove_axes(v.shape(), axes).iter().product();
    let data = to_vec(&p);
    (data, outputs, run)
}

fn fold_run<T: Copy + Send + Sync, F: Fn(T, T) -> T + Copy + Send + Sync>(run: &[T], init: T, f: F) -> T {
    if run.len() >= PARALLEL_MIN {
        let parts: Vec<T> = run
            .par_chunks(FOLD_CHUNK)
            .map(|c| c.iter().fold(init, |a, &b| f(a, b)))
            .collect();
        parts.into_iter().fold(init, f)
    } else {
        // Several accumulators break the dependency chain (the compiler vectorises this).
        let mut acc = [init; 8];
        let mut chunks = run.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                acc[i] = f(acc[i], c[i]);
            }
        }
        let mut total = init;
        for a in acc {
            total = f(total, a);
        }
        chunks.remainder().iter().fold(total, |a, &b| f(a, b))
    }
}

/// Reduction of the leading `k` axes of a row-major view seen as `[rows, cols]`: rows are
/// accumulated into one output row (vectorised along the columns, no transposing copy).
fn reduce_leading_rows<T, F>(data: &[T], rows: usize, cols: usize, init: T, f: F) -> Vec<T>
where
    T: Copy + Send + Sync,
    F: Fn(T, T) -> T + Copy + Send + Sync,
{
    let mut out = vec![init; cols];
    for row in data.chunks_exact(cols.max(1)).take(rows) {
        for (o, &x) in out.iter_mut().zip(row) {
            *o = f(*o, x);
        }
    }
    out
}

fn reduce_typed<T, F>(v: &ArrayViewD<T>, axes: &[usize], init: T, f: F) -> Vec<T>
where
    T: Copy + Send + Sync,
    F: Fn(T, T) -> T + Copy + Send + Sync,
{
    let leading = axes.iter().enumerate().all(|(i, &a)| i == a);
    if let (true, Some(data)) = (leading && axes.len() == v.ndim(), v.as_slice()) {
        // Every axis of a contiguous view: one fold over the buffer run, no copy.
        return vec![fold_run(data, init, f)];
    }
    if let (true, Some(data), false) = (leading, v.as_slice(), axes.is_empty() || axes.len() == v.ndim()) {
        let rows: usize = v.shape()[..axes.len()].iter().product();
        let cols: usize = v.shape()[axes.len()..].iter().product();
        if rows > 0 && cols > 1 {
            return reduce_leading_rows(data, rows, cols, init, f);
        }
    }
    let (data, outputs, run) = runs(v, axes);
    if run == 0 {
        return vec![init; outputs];
    }
    if outputs * run >= PARALLEL_MIN && outputs > 1 {
        data.par_chunks(run).map(|c| fold_run(c, init, f)).collect()
    } else {
        data.chunks(run).map(|c| fold_run(c, init, f)).collect()
    }
}

macro_rules! float_reduce {
    ($t:ty, $op:expr_2021, $v:expr_2021, $axes:expr_2021) => {
        match $op {
            ReduceOp::Sum => reduce_typed::<$t, _>($v, $axes, 0.0, |a, b| a + b),
            ReduceOp::Prod => reduce_typed::<$t, _>($v, $axes, 1.0, |a, b| a * b),
            ReduceOp::Max => {
                reduce_typed::<$t, _>(
                    $v,
                    $axes,
                    <$t>::NEG_INFINITY,
                    |a, b| if a.is_nan() || a >= b { a } else { b },
                )
            }
            ReduceOp::Min => reduce_typed::<$t, _>(
                $v,
                $axes,
                <$t>::INFINITY,
                |a, b| if a.is_nan() || a <= b { a } else { b },
            ),
        }
    };
}

/// Reduction kernel, keeping reduced axes as extent 1.
pub(super) fn reduce(op: ReduceOp, x: &RawTensor, axes: &[usize]) -> RawTensor {
    let mut shape = x.shape().to_vec();
    for &a in axes {
        shape[a] = 1;
    }
    match host(x) {
        CpuBuffer::F32(d) => wrap(float_reduce!(f32, op, &view(d, &x.layout), axes), &shape),
        CpuBuffer::F64(d) => wrap(float_reduce!(f64, op, &view(d, &x.layout), axes), &shape),
        CpuBuffer::I64(d) => {
            let v = view(d, &x.layout);
            let out = match op {
                ReduceOp::Sum => reduce_typed::<i64, _>(&v, axes, 0, |a, b| a.wrapping_add(b)),
                ReduceOp::Prod => reduce_typed::<i64, _>(&v, axes, 1, |a, b| a.wrapping_mul(b)),
                ReduceOp::Max => reduce_typed::<i64, _>(&v, axes, i64::MIN, |a, b| a.max(b)),
                ReduceOp::Min => reduce_typed::<i64, _>(&v, axes, i64::MAX, |a, b| a.min(b)),
            };
            wrap(out, &shape)
        }
        CpuBuffer::Bool(d) => {
            let v = view(d, &x.layout);
            let out = match op {
                ReduceOp::Max | ReduceOp::Sum => reduce_typed::<bool, _>(&v, axes, false, |a, b| a | b),
                ReduceOp::Min | ReduceOp::Prod => reduce_typed::<bool, _>(&v, axes, true, |a, b| a & b),
            };
            wrap(out, &shape)
        }
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
    }
}

fn arg_typed<T: Copy + PartialOrd + Send + Sync>(v: &ArrayViewD<T>, axis: usize, max: bool) -> Vec<i64> {
    let (data, _, run) = runs(v, &[axis]);
    if run == 0 {
        panic!(
            "argmax/argmin: the reduced axis {axis} has extent 0 (shape {:?})",
            v.shape()
        );
    }
    data.chunks(run)
        .map(|c| {
            let mut best = 0usize;
            for (i, &val) in c.iter().enumerate().skip(1) {
                // NaN never compares greater, so the first element wins ties, as in NumPy.
                let better = if max { val > c[best] } else { val < c[best] };
                if better {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

/// Index-of-extremum kernel, keeping `axis` as extent 1.
pub(super) fn arg_reduce(op: ArgOp, x: &RawTensor, axis: usize) -> RawTensor {
    let mut shape = x.shape().to_vec();
    shape[axis] = 1;
    let max = op == ArgOp::ArgMax;
    let out = with_cpu_buffer!(host(x), d => arg_typed(&view(d, &x.layout), axis, max));
    RawTensor::from_cpu(out.into_cpu_buffer(), &shape)
}
