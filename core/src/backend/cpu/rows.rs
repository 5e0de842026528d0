//! Softmax, log-softmax and layer normalisation of every row (the last axis) in one pass per
//! row: the maximum, the sum of shifted exponentials and the result (or the mean, the mean
//! squared deviation and the result), where the composition of primitives took five to seven
//! kernels and as many intermediate tensors; the layer norm's Jacobian product (its
//! backward) in one pass per row where its composition took thirteen kernels; and the
//! backward rows of softmax and log-softmax (one row sum, then the result) where theirs took
//! four. Rows are split across threads for large inputs, and each task's loop is compiled
//! for AVX-512 where the CPU has it.

use num_traits::Float;
use rayon::prelude::*;

use super::{HALVES_WIDENED, PARALLEL_MIN, dense, dense_run, fast_math, host, of, with_wide_loops, wrap};
use crate::backend::RowOp;
use crate::storage::{CpuBuffer, RawTensor};

/// The element types of the row kernels: `Float`, and the `exp` the CPU backend uses for each
/// (the vectorised one for f32).
pub(super) trait RowFloat: Float + Send + Sync + 'static {
    fn fast_exp(self) -> Self;
}

impl RowFloat for f32 {
    #[inline(always)]
    fn fast_exp(self) -> f32 {
        fast_math::exp_f32(self)
    }
}

impl RowFloat for f64 {
    #[inline(always)]
    fn fast_exp(self) -> f64 {
        self.exp()
    }
}

/// Lanes of the partial sums (independent accumulators, so the loop vectorises).
const LANES: usize = 8;

/// The sum of `values(j)` for `j < n`, in `LANES` independent partial sums (the tail goes to
/// the first one).
#[inline(always)]
fn lane_sum<T: Float>(n: usize, values: impl Fn(usize) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let whole = n / LANES * LANES;
    for j in (0..whole).step_by(LANES) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = *a + values(j + k);
        }
    }
    for j in whole..n {
        acc[0] = acc[0] + values(j);
    }
    acc.iter().fold(T::zero(), |a, &b| a + b)
}

/// Elements whose exponentials are formed at once when they go to a scratch buffer (a
/// multiple of `LANES`, so the partial sums see the elements in the order [`lane_sum`] does).
pub(super) const CHUNK: usize = 256;

/// The maximum of a row, ignoring NaN (so the loop can be the vectorised `maxps`): a NaN
/// reaches the sum of exponentials and makes the whole row NaN, as a NaN maximum would.
#[inline(always)]
pub(super) fn lane_max<T: RowFloat>(row: &[T]) -> T {
    let mut acc = [T::neg_infinity(); LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    for &v in chunks.remainder() {
        acc[0] = if v > acc[0] { v } else { acc[0] };
    }
    acc.iter().fold(T::neg_infinity(), |m, &v| if v > m { v } else { m })
}

/// `sum(exp(x - shift))` over a row, in [`lane_sum`]'s order, with the exponentials formed in
/// `exps`: all of them when it is as long as the row, else `CHUNK` at a time in a scratch of
/// at least `min(row.len(), CHUNK)` elements.
#[inline(always)]
fn shifted_exp_sum<T: RowFloat>(row: &[T], shift: T, exps: &mut [T]) -> T {
    let whole = exps.len() >= row.len();
    let mut acc = [T::zero(); LANES];
    for (k, chunk) in row.chunks(CHUNK).enumerate() {
        let e = if whole {
            &mut exps[k * CHUNK..k * CHUNK + chunk.len()]
        } else {
            &mut exps[..chunk.len()]
        };
        for (o, &x) in e.iter_mut().zip(chunk) {
            *o = (x - shift).fast_exp();
        }
        let mut lanes = e.chunks_exact(LANES);
        for c in &mut lanes {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a = *a + v;
            }
        }
        for &v in lanes.remainder() {
            acc[0] = acc[0] + v;
        }
    }
    acc.iter().fold(T::zero(), |a, &b| a + b)
}

/// The log-softmax statistics of a row: its shift (the maximum when finite, else 0, as
/// `logsumexp`) and `ls = ln(sum(exp(x - shift)))`, so that
/// `log_softmax(x)[j] = (x[j] - shift) - ls`; the exponentials are formed in `exps` as
/// [`shifted_exp_sum`] says. The log-softmax
/// rows and the cross-entropy rows share it, so their values agree to the bit.
#[inline(always)]
pub(super) fn log_softmax_stats<T: RowFloat>(row: &[T], exps: &mut [T]) -> (T, T) {
    let m = lane_max(row);
    let shift = if m.is_finite() { m } else { T::zero() };
    (shift, shifted_exp_sum(row, shift, exps).ln())
}

/// Writes `op` of `row` into `out` (one row); the shifted exponentials go to `out` first.
#[inline(always)]
fn softmax_row<T: RowFloat>(op: RowOp, row: &[T], out: &mut [T]) {
    match op {
        RowOp::Softmax => {
            let s = shifted_exp_sum(row, lane_max(row), out);
            out.iter_mut().for_each(|o| *o = *o / s);
        }
        RowOp::LogSoftmax => {
            let (shift, ls) = log_softmax_stats(row, out);
            for (o, &x) in out.iter_mut().zip(row) {
                *o = (x - shift) - ls;
            }
        }
        RowOp::CausalSoftmax => unreachable!("causal rows know their index: see causal_softmax_rows"),
    }
}

/// Causal softmax of every row of the contiguous `data` (`cols` per row, `lq` rows per matrix):
/// row `r` is query `i = r % lq`, whose first `min(i + 1, cols)` entries get the softmax and
/// the rest stay 0. Rows split across threads as [`all_rows`] splits them.
fn causal_rows<T: RowFloat>(data: &[T], cols: usize, lq: usize) -> Vec<T> {
    let mut out = vec![T::zero(); data.len()];
    if cols == 0 || lq == 0 {
        return out;
    }
    let rows_per_task = if data.len() >= PARALLEL_MIN {
        (PARALLEL_MIN / cols).max(1)
    } else {
        data.len() / cols
    };
    let span = rows_per_task.max(1) * cols;
    out.par_chunks_mut(span).enumerate().for_each(|(task, o)| {
        let first = task * rows_per_task.max(1);
        with_wide_loops(
            #[inline(always)]
            || {
                for (r, orow) in o.chunks_mut(cols).enumerate() {
                    let row = first + r;
                    let keep = (row % lq + 1).min(cols);
                    let x = &data[row * cols..row * cols + keep];
                    softmax_row(RowOp::Softmax, x, &mut orow[..keep]);
                }
            },
        )
    });
    out
}

/// The mean of a row and `1 / sqrt(var + eps)`: the mean, then the mean squared deviation
/// (two passes). The forward and the backward share it, so both see the same `rstd`.
#[inline(always)]
fn row_moments<T: Float>(row: &[T], eps: T) -> (T, T) {
    let n = T::from(row.len()).expect("a length converts to a float");
    let mean = lane_sum(row.len(), |j| row[j]) / n;
    let var = lane_sum(row.len(), |j| {
        let d = row[j] - mean;
        d * d
    }) / n;
    (mean, T::one() / (var + eps).sqrt())
}

/// Layer normalisation of one row: `(x - mean) / sqrt(var + eps)`.
#[inline(always)]
fn layer_norm_row<T: Float>(row: &[T], eps: T, out: &mut [T]) {
    let (mean, r) = row_moments(row, eps);
    for (o, &x) in out.iter_mut().zip(row) {
        *o = (x - mean) * r;
    }
}

/// The layer norm's Jacobian product of one row: `rstd (v - mean(v) - y mean(v y))`, with
/// `rstd` from `x` as [`layer_norm_row`] forms it.
#[inline(always)]
fn layer_norm_backward_row<T: Float>(x: &[T], y: &[T], v: &[T], eps: T, out: &mut [T]) {
    let n = T::from(x.len()).expect("a length converts to a float");
    let (_, r) = row_moments(x, eps);
    let mean_v = lane_sum(v.len(), |j| v[j]) / n;
    let mean_vy = lane_sum(v.len(), |j| v[j] * y[j]) / n;
    for ((o, &vj), &yj) in out.iter_mut().zip(v).zip(y) {
        *o = r * (vj - mean_v - yj * mean_vy);
    }
}

/// `row` applied to every row of the contiguous `data` with rows of `cols` elements (into a
/// zeroed output of the same length).
fn all_rows<T: RowFloat>(data: &[T], cols: usize, f: &impl RowFn) -> Vec<T> {
    let mut out = vec![T::zero(); data.len()];
    if cols == 0 {
        return out;
    }
    if data.len() >= PARALLEL_MIN {
        // Whole rows per task, about PARALLEL_MIN elements each.
        let rows_per_task = (PARALLEL_MIN / cols).max(1);
        out.par_chunks_mut(rows_per_task * cols)
            .zip(data.par_chunks(rows_per_task * cols))
            .for_each(|(o, x)| {
                with_wide_loops(
                    #[inline(always)]
                    || {
                        for (orow, xrow) in o.chunks_mut(cols).zip(x.chunks(cols)) {
                            f.row(xrow, orow);
                        }
                    },
                )
            });
    } else {
        with_wide_loops(
            #[inline(always)]
            || {
                for (orow, xrow) in out.chunks_mut(cols).zip(data.chunks(cols)) {
                    f.row(xrow, orow);
                }
            },
        )
    }
    out
}

/// A row function for both CPU float types (halves arrive widened to f32).
trait RowFn: Sync {
    fn row<T: RowFloat>(&self, row: &[T], out: &mut [T]);
}

/// Softmax or log-softmax rows.
impl RowFn for RowOp {
    #[inline(always)]
    fn row<T: RowFloat>(&self, row: &[T], out: &mut [T]) {
        softmax_row(*self, row, out)
    }
}

/// Layer-norm rows with this `eps`.
struct LayerNorm(f64);

impl RowFn for LayerNorm {
    #[inline(always)]
    fn row<T: RowFloat>(&self, row: &[T], out: &mut [T]) {
        let eps = of(self.0);
        layer_norm_row(row, eps, out)
    }
}

/// `f` of every row of `x` (f32 or f64), as a new contiguous tensor of `x`'s shape; `what`
/// names the op for internal errors.
fn map_rows(x: &RawTensor, f: &impl RowFn, what: &str) -> RawTensor {
    let x = dense(x);
    let shape = &x.layout.shape;
    let cols = shape.last().copied().unwrap_or(1);
    match host(&x) {
        CpuBuffer::F32(d) => wrap(all_rows(dense_run(d, &x.layout), cols, f), shape),
        CpuBuffer::F64(d) => wrap(all_rows(dense_run(d, &x.layout), cols, f), shape),
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
        other => unreachable!("{what} of {} rows: the op layer accepts floats only", other.dtype()),
    }
}

/// `op` of every row of `x` (f32 or f64; halves arrive widened).
pub(super) fn softmax_rows(op: RowOp, x: &RawTensor) -> RawTensor {
    let what = match op {
        RowOp::Softmax => "softmax",
        RowOp::LogSoftmax => "log_softmax",
        RowOp::CausalSoftmax => {
            let x = dense(x);
            let shape = &x.layout.shape;
            let rank = shape.len();
            assert!(rank >= 2, "causal softmax rows need [.., queries, keys], got {shape:?}");
            let (lq, cols) = (shape[rank - 2], shape[rank - 1]);
            return match host(&x) {
                CpuBuffer::F32(d) => wrap(causal_rows(dense_run(d, &x.layout), cols, lq), shape),
                CpuBuffer::F64(d) => wrap(causal_rows(dense_run(d, &x.layout), cols, lq), shape),
                CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
                other => unreachable!(
                    "causal softmax of {} rows: the op layer accepts floats only",
                    other.dtype()
                ),
            };
        }
    };
    map_rows(x, &op, what)
}

/// Layer normalisation of every row of `x` (f32 or f64; halves arrive widened).
pub(super) fn layer_norm_rows(x: &RawTensor, eps: f64) -> RawTensor {
    map_rows(x, &LayerNorm(eps), "layer_norm")
}

/// The layer norm's Jacobian product of every row (`x`, `y`, `v` of one shape, f32 or f64;
/// halves arrive widened): rows split across threads as the forward's are.
pub(super) fn layer_norm_rows_backward(x: &RawTensor, y: &RawTensor, v: &RawTensor, eps: f64) -> RawTensor {
    let (x, y, v) = (dense(x), dense(y), dense(v));
    let shape = &x.layout.shape;
    let cols = shape.last().copied().unwrap_or(1);
    match (host(&x), host(&y), host(&v)) {
        (CpuBuffer::F32(xd), CpuBuffer::F32(yd), CpuBuffer::F32(vd)) => {
            let runs = [
                dense_run(xd, &x.layout),
                dense_run(yd, &y.layout),
                dense_run(vd, &v.layout),
            ];
            let eps = of::<f32>(eps);
            let out = zipped_rows(
                runs,
                cols,
                #[inline(always)]
                |[x, y, v], o| layer_norm_backward_row(x, y, v, eps, o),
            );
            wrap(out, shape)
        }
        (CpuBuffer::F64(xd), CpuBuffer::F64(yd), CpuBuffer::F64(vd)) => {
            let runs = [
                dense_run(xd, &x.layout),
                dense_run(yd, &y.layout),
                dense_run(vd, &v.layout),
            ];
            let out = zipped_rows(
                runs,
                cols,
                #[inline(always)]
                |[x, y, v], o| layer_norm_backward_row(x, y, v, eps, o),
            );
            wrap(out, shape)
        }
        (a, b, c) => unreachable!(
            "layer_norm backward rows of {}, {} and {}: the op layer passes one float dtype (halves widened)",
            a.dtype(),
            b.dtype(),
            c.dtype()
        ),
    }
}

/// The backward rows of softmax (`y (v - sum(y v))`) or log-softmax (`v - exp(y) sum(v)`) from
/// the forward's output `y` and the cotangent `v` (one shape, f32 or f64; halves arrive
/// widened), the row sums in `lane_sum`'s order.
pub(super) fn softmax_rows_backward(op: RowOp, y: &RawTensor, v: &RawTensor) -> RawTensor {
    let (y, v) = (dense(y), dense(v));
    let shape = &y.layout.shape;
    let cols = shape.last().copied().unwrap_or(1);
    match (host(&y), host(&v)) {
        (CpuBuffer::F32(yd), CpuBuffer::F32(vd)) => wrap(
            softmax_backward_typed(op, dense_run(yd, &y.layout), dense_run(vd, &v.layout), cols),
            shape,
        ),
        (CpuBuffer::F64(yd), CpuBuffer::F64(vd)) => wrap(
            softmax_backward_typed(op, dense_run(yd, &y.layout), dense_run(vd, &v.layout), cols),
            shape,
        ),
        (a, b) => unreachable!(
            "softmax backward rows of {} and {}: the op layer passes one float dtype (halves widened)",
            a.dtype(),
            b.dtype()
        ),
    }
}

fn softmax_backward_typed<T: RowFloat>(op: RowOp, y: &[T], v: &[T], cols: usize) -> Vec<T> {
    match op {
        // A causal row's masked entries have y = 0, so softmax's formula gives them 0.
        RowOp::Softmax | RowOp::CausalSoftmax => zipped_rows(
            [y, v],
            cols,
            #[inline(always)]
            |[y, v], o| {
                let s = lane_sum(y.len(), |j| y[j] * v[j]);
                for ((o, &yj), &vj) in o.iter_mut().zip(y).zip(v) {
                    *o = yj * (vj - s);
                }
            },
        ),
        RowOp::LogSoftmax => zipped_rows(
            [y, v],
            cols,
            #[inline(always)]
            |[y, v], o| {
                let s = lane_sum(v.len(), |j| v[j]);
                for ((o, &yj), &vj) in o.iter_mut().zip(y).zip(v) {
                    *o = vj - yj.fast_exp() * s;
                }
            },
        ),
    }
}

/// `row` of the matching rows of `N` runs of one length (rows of `cols` elements) into a new
/// run: rows split across threads in tasks of about `PARALLEL_MIN` elements, each task's loop
/// compiled for AVX-512 where the CPU has it.
fn zipped_rows<T: Float + Send + Sync, const N: usize>(
    runs: [&[T]; N],
    cols: usize,
    row: impl Fn([&[T]; N], &mut [T]) + Sync,
) -> Vec<T> {
    let len = runs.first().map_or(0, |r| r.len());
    let mut out = vec![T::zero(); len];
    if cols == 0 {
        return out;
    }
    let rows_per_task = if len >= PARALLEL_MIN {
        (PARALLEL_MIN / cols).max(1)
    } else {
        len / cols
    };
    let span = rows_per_task.max(1) * cols;
    out.par_chunks_mut(span).enumerate().for_each(|(task, o)| {
        let start = task * span;
        with_wide_loops(
            #[inline(always)]
            || {
                for (r, orow) in o.chunks_mut(cols).enumerate() {
                    let at = start + r * cols;
                    row(runs.map(|x| &x[at..at + cols]), orow);
                }
            },
        )
    });
    out
}
