//! Softmax cross-entropy: [`cross_entropy`] and [`cross_entropy_with`] (PyTorch's keywords:
//! `ignore_index`, `label_smoothing`, `reduction`). Against integer labels the rows are one
//! fused primitive per direction: the loss of every row (`logsumexp(x) - x[label]`) and its backward
//! (`(softmax(x) - one_hot(label)) g`), where the composition (log-softmax rows, a gather, a
//! scatter and the log-softmax's backward) took about nine kernels per step. Each primitive's
//! rule is written in public ops: the backward's own derivatives (second and higher order)
//! come from its composition, traced again from the node's inputs, as the layer norm's do.

use super::index::{IndexRange, checked_index_tensor, one_hot};
use super::{Axes, require_float};
use crate::dtype::DType;
use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::transforms::custom::{composition_jvp, composition_vjp};

/// How a loss combines the losses of its examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The mean over the examples (over those not ignored, with `ignore_index`).
    #[default]
    Mean,
    /// The sum over the examples.
    Sum,
    /// One loss per example, shaped like the labels (integer labels) or like the logits
    /// without the class axis (probability labels); ignored examples give 0.
    None,
}

/// The options of [`cross_entropy_with`], PyTorch's keywords of `cross_entropy`. The default
/// is [`cross_entropy`]: no ignored label, no smoothing, the mean.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropyOptions {
    /// Examples with this integer label count for nothing: loss 0, no gradient, and not in the
    /// mean's denominator (PyTorch's default is `-100`, the padding of token sequences). Only
    /// for integer labels. When every example is ignored the mean is NaN, as in PyTorch.
    pub ignore_index: Option<i64>,
    /// In `[0, 1]`: the target becomes `(1 - s) one_hot + s / classes`, so each example's loss
    /// is `(1 - s) (lse - x[label]) + s (lse - mean(x))` (PyTorch's `label_smoothing`).
    pub label_smoothing: f64,
    /// How the examples' losses are combined.
    pub reduction: Reduction,
}

/// Mean softmax cross-entropy of `logits` `[.., classes]` against integer `labels` `[..]`
/// (i64) or one-hot / probability `labels` of the logits' shape (float).
///
/// Integer labels may count from the end (`-classes..0`, as `take_along_axis` accepts); one
/// out of range is an error naming it (on a GPU, at the next read). With integer labels the
/// loss rows are one fused kernel and their gradient another, where the composition took
/// about nine.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    cross_entropy_with(logits, labels, CrossEntropyOptions::default())
}

/// [`cross_entropy`] with PyTorch's options: an ignored label, label smoothing, and the
/// reduction (mean, sum, or one loss per example).
pub fn cross_entropy_with(logits: &Tensor, labels: &Tensor, options: CrossEntropyOptions) -> Tensor {
    require_float("cross_entropy", logits);
    if logits.rank() == 0 {
        panic!(
            "cross_entropy: the logits need a class axis (the last), got a scalar of {}; give them shape [.., classes]",
            logits.dtype()
        );
    }
    let s = options.label_smoothing;
    if !(0.0..=1.0).contains(&s) {
        panic!("cross_entropy: label_smoothing must be in [0, 1], got {s}");
    }
    let classes = logits.shape()[logits.rank() - 1];
    let (rows, kept) = if labels.dtype() == DType::I64 {
        integer_label_rows(logits, labels, options.ignore_index)
    } else {
        if let Some(i) = options.ignore_index {
            panic!(
                "cross_entropy: ignore_index ({i}) applies to integer labels; these are {} probabilities of shape {:?}",
                labels.dtype(),
                labels.shape()
            );
        }
        if labels.shape() != logits.shape() {
            panic!(
                "cross_entropy: float labels of shape {:?} must match the logits {:?} (one-hot or probabilities)",
                labels.shape(),
                logits.shape()
            );
        }
        let target = if s > 0.0 {
            labels * (1.0 - s) + s / classes as f64
        } else {
            labels.clone()
        };
        return reduce(
            -(target * logits.log_softmax(-1)).sum(-1, false),
            None,
            options.reduction,
        );
    };
    let rows = if s > 0.0 {
        // The uniform part of the target: mean over the classes of -log p = lse - mean(x).
        rows * (1.0 - s) + (logits.logsumexp(-1, false) - logits.mean(-1, false)) * s
    } else {
        rows
    };
    let rows = match &kept {
        Some(k) => k.where_(&rows, &rows.scalar_like(0.0)),
        None => rows,
    };
    reduce(rows, kept.as_ref(), options.reduction)
}

/// The loss rows of integer labels (checked, with `ignore_index` replaced by class 0 before
/// the check) and the mask of the rows kept, when some label is ignored.
fn integer_label_rows(logits: &Tensor, labels: &Tensor, ignore_index: Option<i64>) -> (Tensor, Option<Tensor>) {
    let axis = logits.rank() - 1;
    let batch = &logits.shape()[..axis];
    if labels.shape() != batch {
        panic!(
            "cross_entropy: integer labels of shape {:?} must have the logits' shape without the class axis, {:?} (logits {:?})",
            labels.shape(),
            batch,
            logits.shape()
        );
    }
    let (labels, kept) = match ignore_index {
        Some(i) => {
            let kept = labels.ne_scalar(i as f64);
            (kept.where_(labels, &labels.scalar_like(0.0)), Some(kept))
        }
        None => (labels.clone(), None),
    };
    let range = IndexRange {
        n: logits.shape()[axis],
        wrap_negative: true,
    };
    let labels = checked_index_tensor("cross_entropy", &labels, range, logits.shape(), axis);
    (cross_entropy_rows(logits, &labels), kept)
}

/// The examples' losses combined as `reduction` says (the mean over the `kept` ones).
fn reduce(rows: Tensor, kept: Option<&Tensor>, reduction: Reduction) -> Tensor {
    match (reduction, kept) {
        (Reduction::None, _) => rows,
        (Reduction::Sum, _) => rows.sum(Axes::All, false),
        (Reduction::Mean, None) => rows.mean(Axes::All, false),
        (Reduction::Mean, Some(k)) => rows.sum(Axes::All, false) / k.cast(rows.dtype()).sum(Axes::All, false),
    }
}

/// The loss of every row of `x` (`[.., classes]`, float) against `labels` (i64, `x`'s shape
/// without the class axis, already checked and wrapped into `0..classes`): one primitive when
/// the two carry the same vmap levels, else the composition.
fn cross_entropy_rows(x: &Tensor, labels: &Tensor) -> Tensor {
    let rows = &x.raw().shape()[..x.raw().shape().len() - 1];
    if labels.batch() == x.batch() && labels.raw().shape() == rows && labels.device() == x.device() {
        let raw = x.backend().cross_entropy_rows(x.raw(), labels.raw());
        Tensor::record(raw, &[x, labels], || CrossEntropyRule)
    } else {
        -x.log_softmax(-1)
            .take_along_axis(&labels.expand_dims(-1), -1)
            .squeeze(-1)
    }
}

/// `(softmax(x) - one_hot(labels)) g` (the rows' cotangent `g` on the class axis): the fused
/// primitive when `x`, `labels` and `g` are alike (the usual backward pass), else the
/// composition (a vmapped cotangent over unbatched logits, as jacrev makes).
fn cross_entropy_backward(x: &Tensor, labels: &Tensor, g: &Tensor) -> Tensor {
    let rows = &x.raw().shape()[..x.raw().shape().len() - 1];
    let alike = |t: &Tensor| t.batch() == x.batch() && t.raw().shape() == rows && t.device() == x.device();
    if alike(labels) && alike(g) && g.dtype() == x.dtype() {
        let raw = x.backend().cross_entropy_rows_backward(x.raw(), labels.raw(), g.raw());
        Tensor::record(raw, &[x, labels, g], || CrossEntropyBackwardRule)
    } else {
        cross_entropy_backward_composed(x, labels, g)
    }
}

/// [`cross_entropy_backward`] composed of primitives (differentiable in `x` and `g`).
fn cross_entropy_backward_composed(x: &Tensor, labels: &Tensor, g: &Tensor) -> Tensor {
    let classes = *x.shape().last().expect("logits have a class axis");
    (x.softmax(-1) - one_hot(labels, classes, x.dtype())) * g.expand_dims(-1)
}

/// The rule of the loss rows: the VJP is the fused backward; the JVP is the gradient rows
/// (cotangent 1) against the tangent, summed over the classes.
struct CrossEntropyRule;

impl Rule for CrossEntropyRule {
    fn name(&self) -> String {
        "cross_entropy_rows".into()
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(cross_entropy_backward(&inputs[0], &inputs[1], ct)), None]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let t = tangents[0].as_ref()?;
        let ones = out.ones_like();
        Some((cross_entropy_backward(&inputs[0], &inputs[1], &ones) * t).sum(-1, false))
    }
}

/// The derivatives of the fused backward (second and higher derivatives of the loss): those of
/// its composition in `x` and `g`, traced again from the node's inputs; the labels have none.
struct CrossEntropyBackwardRule;

impl Rule for CrossEntropyBackwardRule {
    fn name(&self) -> String {
        "cross_entropy_rows_backward".into()
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let labels = &inputs[1];
        let mut d = composition_vjp(
            |t| cross_entropy_backward_composed(&t[0], labels, &t[1]),
            &[inputs[0].clone(), inputs[2].clone()],
            ct,
        )
        .into_iter();
        vec![d.next().flatten(), None, d.next().flatten()]
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let labels = &inputs[1];
        composition_jvp(
            |t| cross_entropy_backward_composed(&t[0], labels, &t[1]),
            &[inputs[0].clone(), inputs[2].clone()],
            &[tangents[0].clone(), tangents[2].clone()],
        )
    }
}
