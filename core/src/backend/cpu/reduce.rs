//! Reduction kernels: the reduced axes are moved last and every output element folds one
//! contiguous run of input elements. Chunking is fixed (not thread-count dependent), so results
//! are identical on every machine.

use std::borrow::Cow;

use rayon::prelude::*;

use super::elementwise::copy_view;
use super::{HALVES_WIDENED, PARALLEL_MIN, dense_run, host, wrap};
use crate::backend::{ArgOp, ReduceOp};
use crate::layout::Layout;
use crate::storage::{CpuBuffer, IntoCpuBuffer, RawTensor};
use crate::with_cpu_buffer;

const FOLD_CHUNK: usize = 16384;

/// The columns one thread takes when a reduction over a few leading rows is split by columns.
const COLUMN_CHUNK: usize = 16384;

/// The view's elements with `axes` moved last, row-major (in place when they already are, as
/// for trailing axes of a contiguous view), plus the output count and run length.
fn runs<'a, T: Copy + Send + Sync>(data: &'a [T], layout: &Layout, axes: &[usize]) -> (Cow<'a, [T]>, usize, usize) {
    let rank = layout.rank();
    let mut perm: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
    perm.extend_from_slice(axes);
    let moved = layout.permute(&perm);
    let run: usize = axes.iter().map(|&a| layout.shape[a]).product();
    let outputs: usize = crate::shape::remove_axes(&layout.shape, axes).iter().product();
    let elements = if moved.is_contiguous() {
        Cow::Borrowed(dense_run(data, &moved))
    } else {
        Cow::Owned(copy_view(data, &moved))
    };
    (elements, outputs, run)
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
/// accumulated into one output row (vectorised along the columns, no transposing copy). A
/// large one is cut into blocks of `rows_per_block` rows, a count that depends on `cols` only,
/// each accumulated on a rayon thread into its own row, and those rows are then combined in
/// order: each thread streams whole rows, and the result does not depend on the threads.
/// (Splitting the columns across threads instead was slower for short rows: each then read
/// short strips of every row.) Rows of at least two `COLUMN_CHUNK`s are split by columns in
/// strips of `COLUMN_CHUNK`, long enough to stream.
fn reduce_leading_rows<T, F>(data: &[T], rows: usize, cols: usize, init: T, f: F) -> Vec<T>
where
    T: Copy + Send + Sync,
    F: Fn(T, T) -> T + Copy + Send + Sync,
{
    let accumulate = |block: &[T]| {
        let mut out = vec![init; cols];
        for row in block.chunks_exact(cols) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o = f(*o, x);
            }
        }
        out
    };
    let data = &data[..rows * cols];
    let rows_per_block = (PARALLEL_MIN / cols).max(1);
    if rows > 1 && cols >= 2 * COLUMN_CHUNK {
        // Long rows (a batch of weight-sized gradients): the threads take strips of columns,
        // each folding its strip of every row in row order (the order `accumulate` folds each
        // column in), with no partial rows to allocate and combine.
        let mut out = vec![init; cols];
        out.par_chunks_mut(COLUMN_CHUNK).enumerate().for_each(|(c, strip)| {
            let (start, len) = (c * COLUMN_CHUNK, strip.len());
            for row in data.chunks_exact(cols) {
                for (o, &x) in strip.iter_mut().zip(&row[start..start + len]) {
                    *o = f(*o, x);
                }
            }
        });
        return out;
    }
    if rows <= 2 * rows_per_block {
        return accumulate(data);
    }
    let partials: Vec<Vec<T>> = data.par_chunks(rows_per_block * cols).map(accumulate).collect();
    let mut blocks = partials.into_iter();
    let mut out = blocks.next().expect("at least one block");
    for block in blocks {
        for (o, x) in out.iter_mut().zip(block) {
            *o = f(*o, x);
        }
    }
    out
}

/// A reduction over every axis but one middle axis of a contiguous view (a bias's or a batch
/// norm's gradient: `[N, C, H, W]` over `N, H, W`), read in place: seen as `[A, C, B]`, output
/// `c` folds its `A` runs of `B` elements in order, channels split across threads, where the
/// general path copied the view with the axes moved last first. `None` for other reductions.
fn reduce_around_one_axis<T, F>(data: &[T], layout: &Layout, axes: &[usize], init: T, f: F) -> Option<Vec<T>>
where
    T: Copy + Send + Sync,
    F: Fn(T, T) -> T + Copy + Send + Sync,
{
    let rank = layout.rank();
    if !layout.is_contiguous() || rank < 3 || axes.len() + 1 != rank {
        return None;
    }
    let kept = (0..rank).find(|a| !axes.contains(a))?;
    let shape = &layout.shape;
    let (a, c, b) = (
        shape[..kept].iter().product::<usize>(),
        shape[kept],
        shape[kept + 1..].iter().product::<usize>(),
    );
    // Short runs (many small partial results added in order) and few channels (too little to
    // split across threads) go the general way, which folds one long run per output.
    if a < 2 || b < 64 || c < rayon::current_num_threads() {
        return None;
    }
    let elements = dense_run(data, layout);
    let channel = |ch: usize| {
        (0..a).fold(init, |acc, i| {
            let start = (i * c + ch) * b;
            f(acc, fold_run(&elements[start..start + b], init, f))
        })
    };
    Some(if elements.len() >= PARALLEL_MIN && c > 1 {
        (0..c).into_par_iter().map(channel).collect()
    } else {
        (0..c).map(channel).collect()
    })
}

fn reduce_typed<T, F>(data: &[T], layout: &Layout, axes: &[usize], init: T, f: F) -> Vec<T>
where
    T: Copy + Send + Sync,
    F: Fn(T, T) -> T + Copy + Send + Sync,
{
    let rank = layout.rank();
    let leading = axes.iter().enumerate().all(|(i, &a)| i == a);
    if leading && layout.is_contiguous() {
        let elements = dense_run(data, layout);
        if axes.len() == rank {
            // Every axis of a contiguous view: one fold over the buffer run, no copy.
            return vec![fold_run(elements, init, f)];
        }
        let rows: usize = layout.shape[..axes.len()].iter().product();
        let cols: usize = layout.shape[axes.len()..].iter().product();
        if !axes.is_empty() && rows > 0 && cols > 1 {
            return reduce_leading_rows(elements, rows, cols, init, f);
        }
    }
    if let Some(out) = reduce_around_one_axis(data, layout, axes, init, f) {
        return out;
    }
    let (elements, outputs, run) = runs(data, layout, axes);
    if run == 0 {
        return vec![init; outputs];
    }
    if outputs * run >= PARALLEL_MIN && outputs > 1 {
        elements.par_chunks(run).map(|c| fold_run(c, init, f)).collect()
    } else {
        elements.chunks(run).map(|c| fold_run(c, init, f)).collect()
    }
}

macro_rules! float_reduce {
    ($t:ty, $op:expr_2021, $d:expr_2021, $l:expr_2021, $axes:expr_2021) => {
        match $op {
            ReduceOp::Sum => reduce_typed::<$t, _>($d, $l, $axes, 0.0, |a, b| a + b),
            ReduceOp::Prod => reduce_typed::<$t, _>($d, $l, $axes, 1.0, |a, b| a * b),
            ReduceOp::Max => reduce_typed::<$t, _>($d, $l, $axes, <$t>::NEG_INFINITY, |a, b| {
                if a.is_nan() || a >= b { a } else { b }
            }),
            ReduceOp::Min => {
                reduce_typed::<$t, _>(
                    $d,
                    $l,
                    $axes,
                    <$t>::INFINITY,
                    |a, b| if a.is_nan() || a <= b { a } else { b },
                )
            }
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
        CpuBuffer::F32(d) => wrap(float_reduce!(f32, op, d, &x.layout, axes), &shape),
        CpuBuffer::F64(d) => wrap(float_reduce!(f64, op, d, &x.layout, axes), &shape),
        CpuBuffer::I64(d) => {
            let l = &x.layout;
            let out = match op {
                ReduceOp::Sum => reduce_typed::<i64, _>(d, l, axes, 0, |a, b| a.wrapping_add(b)),
                ReduceOp::Prod => reduce_typed::<i64, _>(d, l, axes, 1, |a, b| a.wrapping_mul(b)),
                ReduceOp::Max => reduce_typed::<i64, _>(d, l, axes, i64::MIN, |a, b| a.max(b)),
                ReduceOp::Min => reduce_typed::<i64, _>(d, l, axes, i64::MAX, |a, b| a.min(b)),
            };
            wrap(out, &shape)
        }
        CpuBuffer::Bool(d) => {
            let l = &x.layout;
            let out = match op {
                ReduceOp::Max | ReduceOp::Sum => reduce_typed::<bool, _>(d, l, axes, false, |a, b| a | b),
                ReduceOp::Min | ReduceOp::Prod => reduce_typed::<bool, _>(d, l, axes, true, |a, b| a & b),
            };
            wrap(out, &shape)
        }
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
    }
}

fn arg_typed<T: Copy + PartialOrd + Send + Sync>(data: &[T], layout: &Layout, axis: usize, max: bool) -> Vec<i64> {
    let (data, _, run) = runs(data, layout, &[axis]);
    if run == 0 {
        panic!(
            "argmax/argmin: the reduced axis {axis} has extent 0 (shape {:?})",
            layout.shape
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
    let out = with_cpu_buffer!(host(x), d => arg_typed(d, &x.layout, axis, max));
    RawTensor::from_cpu(out.into_cpu_buffer(), &shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums of integers in f64 are exact, so any fold order gives the loop's value.
    fn check(layout: &Layout, data: &[f64], axes: &[usize]) {
        let x = RawTensor::from_cpu(CpuBuffer::F64(std::sync::Arc::new(data.to_vec())), &[data.len()])
            .with_layout(layout.clone());
        let got = match host(&reduce(ReduceOp::Sum, &x, axes)) {
            CpuBuffer::F64(v) => v.to_vec(),
            other => panic!("sum of f64 gave {}", other.dtype()),
        };
        let shape = &layout.shape;
        let mut out_shape = shape.to_vec();
        for &a in axes {
            out_shape[a] = 1;
        }
        let mut want = vec![0.0; out_shape.iter().product()];
        let n: usize = shape.iter().product();
        for i in 0..n {
            // Element i's index, its buffer offset and its output position.
            let (mut rest, mut off, mut pos, mut scale) = (i, layout.offset as isize, 0, 1);
            for d in (0..shape.len()).rev() {
                let k = rest % shape[d];
                rest /= shape[d];
                off += k as isize * layout.strides[d];
                if !axes.contains(&d) {
                    pos += k * scale;
                }
                scale *= out_shape[d];
            }
            want[pos] += data[off as usize];
        }
        assert_eq!(got, want, "sum over {axes:?} of {layout:?}");
    }

    #[test]
    fn sums_over_any_axes_of_any_view_match_an_element_loop() {
        let data: Vec<f64> = (0..70 * 33 * 600).map(|v| (v % 1009) as f64).collect();
        let shape = [70, 33, 600];
        let dense = Layout::contiguous(&shape);
        // Leading axes (rows accumulated), trailing axes (in place), inner
        // and mixed axes, all axes, none.
        for axes in [&[0][..], &[0, 1], &[2], &[1, 2], &[1], &[0, 2], &[0, 1, 2], &[]] {
            check(&dense, &data, axes);
        }
        // A transposed view (copied in tiles) and a small one (sequential).
        let t = Layout::contiguous(&[600, 33, 70]).permute(&[2, 1, 0]);
        for axes in [&[0][..], &[2], &[0, 1]] {
            check(&t, &data, axes);
        }
        check(&Layout::contiguous(&[5, 300]), &data, &[0]);
        check(&Layout::new(&[4, 0], &[1, 1], 0), &data, &[0]);
    }
}
