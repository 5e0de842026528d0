//! Softmax, log-softmax and layer normalisation of every row (the last axis) in one pass per
//! row: the maximum, the sum of shifted exponentials and the result (or the mean, the mean
//! squared deviation and the result), where the composition of primitives took five to seven
//! kernels and as many intermediate tensors. Rows are split across threads for large inputs.

use rayon::prelude::*;

use super::{HALVES_WIDENED, PARALLEL_MIN, fast_math, host, wrap};
use crate::backend::RowOp;
use crate::storage::{CpuBuffer, RawTensor};

/// The float arithmetic a row needs, for f32 (the vectorised `exp`) and f64.
trait RowFloat:
    Copy + Send + Sync + PartialOrd + 'static + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    fn sqrt(self) -> Self;
    fn of_usize(n: usize) -> Self;
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn add(self, other: Self) -> Self;
    fn div(self, other: Self) -> Self;
    fn is_nan(self) -> bool;
    fn is_finite(self) -> bool;
}

impl RowFloat for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn of_usize(n: usize) -> f32 {
        n as f32
    }
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    fn exp(self) -> f32 {
        fast_math::exp_f32(self)
    }
    fn ln(self) -> f32 {
        f32::ln(self)
    }
    fn add(self, other: f32) -> f32 {
        self + other
    }
    fn div(self, other: f32) -> f32 {
        self / other
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
}

impl RowFloat for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn of_usize(n: usize) -> f64 {
        n as f64
    }
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    fn ln(self) -> f64 {
        f64::ln(self)
    }
    fn add(self, other: f64) -> f64 {
        self + other
    }
    fn div(self, other: f64) -> f64 {
        self / other
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
}

/// Lanes of the partial sums (independent accumulators, so the loop vectorises).
const LANES: usize = 8;

/// The maximum of a row, NaN if any element is NaN (as the reduction kernels).
fn row_max<T: RowFloat>(row: &[T]) -> T {
    let mut m = T::NEG_INFINITY;
    for &v in row {
        if v.is_nan() {
            return v;
        }
        if v > m {
            m = v;
        }
    }
    m
}

/// Writes `op` of `row` into `out` (one row).
fn one_row<T: RowFloat>(op: RowOp, row: &[T], out: &mut [T]) {
    let m = row_max(row);
    let shift = match op {
        RowOp::Softmax => m,
        // logsumexp's shift: 0 when the maximum is infinite or NaN.
        RowOp::LogSoftmax if m.is_finite() => m,
        RowOp::LogSoftmax => T::ZERO,
    };
    // The shifted exponentials go to `out` first (softmax divides them in place).
    let mut acc = [T::ZERO; LANES];
    let mut chunks = out.chunks_exact_mut(LANES).zip(row.chunks_exact(LANES));
    for (o, x) in &mut chunks {
        for k in 0..LANES {
            o[k] = (x[k] - shift).exp();
            acc[k] = acc[k].add(o[k]);
        }
    }
    let tail = row.len() / LANES * LANES;
    for j in tail..row.len() {
        out[j] = (row[j] - shift).exp();
        acc[0] = acc[0].add(out[j]);
    }
    let s = acc.iter().fold(T::ZERO, |a, &b| a.add(b));
    match op {
        RowOp::Softmax => out.iter_mut().for_each(|o| *o = o.div(s)),
        RowOp::LogSoftmax => {
            let lse = s.ln();
            for (o, &x) in out.iter_mut().zip(row) {
                *o = (x - shift) - lse;
            }
        }
    }
}

/// `row` applied to every row of the contiguous `data` with rows of `cols` elements (into a
/// zeroed output of the same length).
fn all_rows<T: RowFloat>(data: &[T], cols: usize, row: impl Fn(&[T], &mut [T]) + Sync) -> Vec<T> {
    let mut out = vec![T::ZERO; data.len()];
    if cols == 0 {
        return out;
    }
    if data.len() >= PARALLEL_MIN {
        // Whole rows per task, about PARALLEL_MIN elements each.
        let rows_per_task = (PARALLEL_MIN / cols).max(1);
        out.par_chunks_mut(rows_per_task * cols)
            .zip(data.par_chunks(rows_per_task * cols))
            .for_each(|(o, x)| {
                for (orow, xrow) in o.chunks_mut(cols).zip(x.chunks(cols)) {
                    row(xrow, orow);
                }
            });
    } else {
        for (orow, xrow) in out.chunks_mut(cols).zip(data.chunks(cols)) {
            row(xrow, orow);
        }
    }
    out
}

/// The sum of `values(j)` for `j < n`, in `LANES` independent partial sums.
fn lane_sum<T: RowFloat>(n: usize, values: impl Fn(usize) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let whole = n / LANES * LANES;
    for j in (0..whole).step_by(LANES) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = a.add(values(j + k));
        }
    }
    for j in whole..n {
        acc[0] = acc[0].add(values(j));
    }
    acc.iter().fold(T::ZERO, |a, &b| a.add(b))
}

/// Layer normalisation of one row: the mean, the mean squared deviation, then
/// `(x - mean) / sqrt(var + eps)`.
fn layer_norm_row<T: RowFloat>(row: &[T], eps: T, out: &mut [T]) {
    let n = T::of_usize(row.len());
    let mean = lane_sum(row.len(), |j| row[j]).div(n);
    let var = lane_sum(row.len(), |j| {
        let d = row[j] - mean;
        d * d
    })
    .div(n);
    let r = T::ONE.div(var.add(eps).sqrt());
    for (o, &x) in out.iter_mut().zip(row) {
        *o = (x - mean) * r;
    }
}

/// `x` itself when contiguous, else a contiguous copy.
fn dense(x: &RawTensor) -> std::borrow::Cow<'_, RawTensor> {
    if x.layout.is_contiguous() {
        std::borrow::Cow::Borrowed(x)
    } else {
        std::borrow::Cow::Owned(super::elementwise::contiguous(x))
    }
}

/// Layer normalisation of every row of `x` (f32 or f64; halves arrive widened).
pub(super) fn layer_norm_rows(x: &RawTensor, eps: f64) -> RawTensor {
    let x = dense(x);
    let shape = &x.layout.shape;
    let cols = shape.last().copied().unwrap_or(1);
    let (start, n) = (x.layout.offset, x.layout.numel());
    match host(&x) {
        CpuBuffer::F32(d) => {
            let eps = eps as f32;
            wrap(
                all_rows(&d[start..start + n], cols, |r, o| layer_norm_row(r, eps, o)),
                shape,
            )
        }
        CpuBuffer::F64(d) => wrap(
            all_rows(&d[start..start + n], cols, |r, o| layer_norm_row(r, eps, o)),
            shape,
        ),
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
        other => unreachable!("layer_norm of {} rows: the op layer accepts floats only", other.dtype()),
    }
}

/// `op` of every row of `x` (f32 or f64; halves arrive widened).
pub(super) fn softmax_rows(op: RowOp, x: &RawTensor) -> RawTensor {
    let x = dense(x);
    let shape = &x.layout.shape;
    let cols = shape.last().copied().unwrap_or(1);
    let (start, n) = (x.layout.offset, x.layout.numel());
    match host(&x) {
        CpuBuffer::F32(d) => wrap(all_rows(&d[start..start + n], cols, |r, o| one_row(op, r, o)), shape),
        CpuBuffer::F64(d) => wrap(all_rows(&d[start..start + n], cols, |r, o| one_row(op, r, o)), shape),
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
        other => unreachable!("{op:?} of {} rows: the op layer accepts floats only", other.dtype()),
    }
}
