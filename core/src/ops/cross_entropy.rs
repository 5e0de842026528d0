//! Softmax cross-entropy rows against integer labels as one fused primitive per direction:
//! the loss of every row (`logsumexp(x) - x[label]`) and its backward
//! (`(softmax(x) - one_hot(label)) g`), where the composition (log-softmax rows, a gather, a
//! scatter and the log-softmax's backward) took about nine kernels per step. Each primitive's
//! rule is written in public ops: the backward's own derivatives (second and higher order)
//! come from its composition, traced again from the node's inputs, as the layer norm's do.

use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::transforms::jvp::jvp_many;
use crate::transforms::vjp::vjp_many;

use super::index::one_hot;

/// The loss of every row of `x` (`[.., classes]`, float) against `labels` (i64, `x`'s shape
/// without the class axis, already checked and wrapped into `0..classes`): one primitive when
/// the two carry the same vmap levels, else the composition.
pub(super) fn cross_entropy_rows(x: &Tensor, labels: &Tensor) -> Tensor {
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
        let labels = inputs[1].clone();
        let (_, pullback) = vjp_many(
            |t| vec![cross_entropy_backward_composed(&t[0], &labels, &t[1])],
            &[inputs[0].clone(), inputs[2].clone()],
        );
        let mut d = pullback.call(std::slice::from_ref(ct)).into_iter();
        vec![d.next(), None, d.next()]
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let labels = inputs[1].clone();
        let primals = [inputs[0].clone(), inputs[2].clone()];
        let tx = tangents[0].clone().unwrap_or_else(|| inputs[0].zeros_like());
        let tg = tangents[2].clone().unwrap_or_else(|| inputs[2].zeros_like());
        let (_, out) = jvp_many(
            |t| vec![cross_entropy_backward_composed(&t[0], &labels, &t[1])],
            &primals,
            &[tx, tg],
        );
        out.into_iter().next()
    }
}
