//! Softmax cross-entropy of every row against integer labels, forward (the loss of each row)
//! and backward (`(softmax - one_hot) * g` of each row), one pass over a row's logits for its
//! statistics and one for the result. The composition (log-softmax rows, a gather, a scatter
//! and the log-softmax's backward) took about nine kernels and a tensor of the logits' size
//! per step. The row statistics are the log-softmax rows' own ([`log_softmax_stats`]), so the
//! loss is the composition's to the bit. Rows are split across threads for large inputs, and
//! run in the AVX-512 build of their loops when the CPU has it.

use rayon::prelude::*;

use super::rows::{CHUNK, RowFloat, log_softmax_stats};
use super::with_wide_loops;
use super::{PARALLEL_MIN, dense, dense_run, host, wrap};
use crate::storage::{CpuBuffer, RawTensor};

/// The scratch [`log_softmax_stats`] needs for rows of `cols` (allocated once per task: a
/// buffer on the stack zeroed per row cost more than a short row's work).
fn scratch_len(cols: usize) -> usize {
    cols.min(CHUNK)
}

/// The class of a label that the op layer checked and wrapped; `None` (a NaN row) if one
/// arrives out of range all the same.
#[inline(always)]
fn class(label: i64, cols: usize) -> Option<usize> {
    usize::try_from(label).ok().filter(|&c| c < cols)
}

/// The loss of one row: `ls - (x[label] - shift)`.
#[inline(always)]
fn loss_row<T: RowFloat>(row: &[T], label: i64, scratch: &mut [T]) -> T {
    let Some(c) = class(label, row.len()) else {
        return T::nan();
    };
    let (shift, ls) = log_softmax_stats(row, scratch);
    ls - (row[c] - shift)
}

/// The gradient of one row's loss times `g`: `(softmax(x) - one_hot(label)) * g`, into `out`.
#[inline(always)]
fn grad_row<T: RowFloat>(row: &[T], label: i64, g: T, out: &mut [T]) {
    let Some(c) = class(label, row.len()) else {
        out.iter_mut().for_each(|o| *o = T::nan());
        return;
    };
    // exp(x - shift) / exp(ls), times g: the softmax rows' form.
    let (_, ls) = log_softmax_stats(row, out);
    let scale = g / ls.exp();
    out.iter_mut().for_each(|o| *o = *o * scale);
    out[c] = out[c] - g;
}

/// Rows per parallel task: about `PARALLEL_MIN` elements each, or all rows in one task when
/// the input is small.
fn rows_per_task(rows: usize, cols: usize) -> usize {
    if rows * cols >= PARALLEL_MIN {
        (PARALLEL_MIN / cols.max(1)).max(1)
    } else {
        rows.max(1)
    }
}

/// The loss of every row of the contiguous `x` (`labels.len()` rows of `cols`).
fn losses<T: RowFloat>(x: &[T], labels: &[i64], cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); labels.len()];
    if cols == 0 {
        out.iter_mut().for_each(|o| *o = T::nan());
        return out;
    }
    let per = rows_per_task(labels.len(), cols);
    out.par_chunks_mut(per)
        .zip(labels.par_chunks(per).zip(x.par_chunks(per * cols)))
        .for_each(|(o, (l, x))| {
            let mut scratch = vec![T::zero(); scratch_len(cols)];
            with_wide_loops(
                #[inline(always)]
                || {
                    for ((o, &l), row) in o.iter_mut().zip(l).zip(x.chunks(cols)) {
                        *o = loss_row(row, l, &mut scratch);
                    }
                },
            )
        });
    out
}

/// The gradient of every row of the contiguous `x`, each times its `g`.
fn grads<T: RowFloat>(x: &[T], labels: &[i64], g: &[T], cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    if cols == 0 {
        return out;
    }
    let per = rows_per_task(labels.len(), cols);
    out.par_chunks_mut(per * cols)
        .zip(
            x.par_chunks(per * cols)
                .zip(labels.par_chunks(per).zip(g.par_chunks(per))),
        )
        .for_each(|(o, (x, (l, g)))| {
            with_wide_loops(
                #[inline(always)]
                || {
                    for (((orow, row), &l), &g) in o.chunks_mut(cols).zip(x.chunks(cols)).zip(l).zip(g) {
                        grad_row(row, l, g, orow);
                    }
                },
            )
        });
    out
}

/// The contiguous i64 labels of a dense tensor.
fn labels_of(labels: &RawTensor) -> &[i64] {
    match host(labels) {
        CpuBuffer::I64(d) => dense_run(d, &labels.layout),
        other => unreachable!("cross_entropy rows: labels arrive as i64, got {}", other.dtype()),
    }
}

/// The loss of every row of `x` (f32 or f64; halves arrive widened) against `labels` (i64 in
/// `0..classes`, `x`'s shape without the last axis), shaped like `labels`.
pub(super) fn cross_entropy_rows(x: &RawTensor, labels: &RawTensor) -> RawTensor {
    let (x, labels) = (dense(x), dense(labels));
    let cols = x.layout.shape.last().copied().unwrap_or(1);
    let l = labels_of(&labels);
    let shape = &labels.layout.shape;
    match host(&x) {
        CpuBuffer::F32(d) => wrap(losses(dense_run(d, &x.layout), l, cols), shape),
        CpuBuffer::F64(d) => wrap(losses(dense_run(d, &x.layout), l, cols), shape),
        other => unreachable!(
            "cross_entropy rows of {}: the op layer passes f32 or f64 (halves widened)",
            other.dtype()
        ),
    }
}

/// `(softmax(x) - one_hot(labels)) * g` of every row (`g` shaped like `labels`, of `x`'s
/// dtype), shaped like `x`.
pub(super) fn cross_entropy_rows_backward(x: &RawTensor, labels: &RawTensor, g: &RawTensor) -> RawTensor {
    let (x, labels, g) = (dense(x), dense(labels), dense(g));
    let cols = x.layout.shape.last().copied().unwrap_or(1);
    let l = labels_of(&labels);
    let shape = &x.layout.shape;
    match (host(&x), host(&g)) {
        (CpuBuffer::F32(d), CpuBuffer::F32(gd)) => {
            wrap(grads(dense_run(d, &x.layout), l, dense_run(gd, &g.layout), cols), shape)
        }
        (CpuBuffer::F64(d), CpuBuffer::F64(gd)) => {
            wrap(grads(dense_run(d, &x.layout), l, dense_run(gd, &g.layout), cols), shape)
        }
        (a, b) => unreachable!(
            "cross_entropy backward rows of {} with a {} cotangent: the op layer passes one float dtype (halves widened)",
            a.dtype(),
            b.dtype()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of 1 to 700 classes with masked (-inf), NaN and +inf entries.
    fn rows() -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = [1usize, 7, 8, 9, 255, 256, 257, 700]
            .iter()
            .map(|&n| (0..n).map(|j| ((j * 37 % 101) as f32 - 50.0) * 0.21).collect())
            .collect();
        out.push(vec![1.0, f32::NEG_INFINITY, 2.0]);
        out.push(vec![1.0, f32::NAN, 2.0]);
        out.push(vec![f32::INFINITY, 0.0, 2.0]);
        out
    }

    #[test]
    fn the_avx512_and_baseline_row_loops_give_the_same_bits() {
        #[cfg(target_arch = "x86_64")]
        {
            if !is_x86_feature_detected!("avx512f") {
                eprintln!("SKIPPED: this CPU has no AVX-512F, so there is no second path to compare");
                return;
            }
            for row in rows() {
                let label = (row.len() / 2) as i64;
                // SAFETY: AVX-512F is present (checked above).
                let mut scratch = vec![0.0f32; scratch_len(row.len())];
                let wide = unsafe { super::super::run_avx512(|| loss_row(&row, label, &mut scratch)) };
                let base = loss_row(&row, label, &mut scratch);
                assert_eq!(wide.to_bits(), base.to_bits(), "loss of {row:?}");
                let (mut gw, mut gb) = (vec![0.0f32; row.len()], vec![0.0f32; row.len()]);
                // SAFETY: as above.
                unsafe { super::super::run_avx512(|| grad_row(&row, label, 0.37, &mut gw)) };
                grad_row(&row, label, 0.37, &mut gb);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&gw), bits(&gb), "gradient of {row:?}");
            }
        }
    }

    #[test]
    fn non_finite_rows_give_what_the_log_softmax_gives() {
        let rows = rows();
        let n = rows.len();
        let loss_row = |row: &[f32], label: i64| loss_row(row, label, &mut [0.0f32; CHUNK]);
        // Masked entry: a finite loss; NaN anywhere: NaN; +inf off the label: +inf.
        assert!(loss_row(&rows[n - 3], 2).is_finite());
        assert!(loss_row(&rows[n - 2], 0).is_nan());
        assert_eq!(loss_row(&rows[n - 1], 1), f32::INFINITY);
        let mut g = vec![0.0f32; 3];
        grad_row(&rows[n - 3], 0, 1.0, &mut g);
        assert_eq!(g[1], 0.0, "a masked class gets no gradient: {g:?}");
        // A label out of range (the op layer checks them first) gives a NaN row.
        assert!(loss_row(&rows[0], 5).is_nan());
    }
}
