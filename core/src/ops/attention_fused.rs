//! Scaled dot-product attention as one primitive where the backend has a fused kernel
//! ([`crate::backend::Backend::attention`]): no `[.., Lq, Lk]` scores tensor is formed
//! forward or backward. The primitive's output packs the attention output with each query's
//! softmax statistics (`[.., Lq, Dv + 2]`: the maximum raw score and the sum of exponentials,
//! which its backward reads); the op hands out the output part. Its VJP is a second fused primitive; every derivative beyond that (JVPs,
//! second derivatives) is the derivative of the composition in [`composed_packed`] and
//! [`composed_backward`], traced again from the node's inputs.

use super::{aligned_layouts, physical};
use crate::shape::try_broadcast_shapes;
use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::transforms::custom::{composition_jvp, composition_vjp};

/// `softmax(scale * q k^T) v` (causal: query `i` keeps keys `0..=i`) through the backend's
/// fused kernel, or `None` when it has none for these operands (the caller composes). The
/// operands are checked by the caller; their leading axes broadcast.
pub(super) fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Option<Tensor> {
    let dv = v.shape()[v.rank() - 1];
    let views = broadcast_views(&[q, k, v])?;
    let raw = q.backend().attention(&views[0], &views[1], &views[2], scale, causal)?;
    let packed = Tensor::record(raw, &[q, k, v], || AttentionRule { scale, causal });
    Some(packed.slice_axis(-1, Some(0), Some(dv as isize), 1))
}

/// The physical views of `ts` (each `[.., rows, cols]`) with their vmap and logical leading
/// axes aligned and broadcast to one shape, or `None` when the logical leading axes do not
/// broadcast.
fn broadcast_views(ts: &[&Tensor]) -> Option<Vec<crate::storage::RawTensor>> {
    let rank = ts.iter().map(|t| t.rank()).max()?;
    let (layouts, _) = aligned_layouts(ts, Some(rank));
    let pr = layouts[0].rank();
    let mut lead = layouts[0].shape[..pr - 2].to_vec();
    for l in &layouts[1..] {
        lead = try_broadcast_shapes(&lead, &l.shape[..pr - 2])?;
    }
    Some(
        ts.iter()
            .zip(&layouts)
            .map(|(t, l)| {
                let matrix = &l.shape[pr - 2..];
                t.raw().with_layout(l.broadcast_to(&physical(&lead, matrix)))
            })
            .collect(),
    )
}

/// The derivatives of the fused attention, whose output packs `[o, max, sum]` along the last
/// axis.
struct AttentionRule {
    scale: f64,
    causal: bool,
}

impl Rule for AttentionRule {
    fn name(&self) -> String {
        format!("attention(causal={})", self.causal)
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        // Only the output part of the packed node reaches the user: the statistics are read
        // by the backward below, whose own rule gives them no cotangent, so the last two
        // columns of `ct` are zero.
        let dv = out.shape()[out.rank() - 1] - 2;
        let d_o = ct.slice_axis(-1, Some(0), Some(dv as isize), 1);
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        let grads = attention_backward(q, k, v, out, &d_o, self.scale, self.causal);
        split_gradients(&grads, [q, k, v]).into_iter().map(Some).collect()
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let (scale, causal) = (self.scale, self.causal);
        composition_jvp(
            |t| composed_packed(&t[0], &t[1], &t[2], scale, causal),
            inputs,
            tangents,
        )
    }
}

/// The gradients of `q`, `k` and `v` packed along the last axis (`[.., Lq * D + Lk * D + Lk *
/// Dv]`, see [`crate::backend::Backend::attention_backward`]): through the backend's fused
/// kernel, or the composition when it has none for these operands.
fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    packed: &Tensor,
    d_o: &Tensor,
    scale: f64,
    causal: bool,
) -> Tensor {
    let fused = broadcast_views(&[q, k, v, packed, d_o]).and_then(|views| {
        q.backend()
            .attention_backward(&views[0], &views[1], &views[2], &views[3], &views[4], scale, causal)
    });
    match fused {
        Some(raw) => Tensor::record(raw, &[q, k, v, packed, d_o], || AttentionBackwardRule { scale, causal }),
        None => composed_backward(q, k, v, d_o, scale, causal),
    }
}

/// `grads` (`[.., Lq * D + Lk * D + Lk * Dv]`) cut into the gradients of `q`, `k` and `v`,
/// each summed back over the leading axes its operand broadcast along.
fn split_gradients(grads: &Tensor, operands: [&Tensor; 3]) -> Vec<Tensor> {
    let lead = &grads.shape()[..grads.rank() - 1];
    let mut start = 0;
    operands
        .iter()
        .map(|x| {
            let matrix = &x.shape()[x.rank() - 2..];
            let len = matrix[0] * matrix[1];
            let part = grads.slice_axis(-1, Some(start as isize), Some((start + len) as isize), 1);
            start += len;
            let shape: Vec<usize> = lead.iter().chain(matrix).copied().collect();
            part.reshape(shape.as_slice()).sum_to_shape(x.shape())
        })
        .collect()
}

/// The derivatives of the fused backward (second derivatives of attention): those of
/// [`composed_backward`], a function of `q`, `k`, `v` and `d_o`. The packed forward output
/// is an input only for the statistics it holds, which are functions of `q` and `k`, so its
/// cotangent is none: the composition already differentiates through them.
struct AttentionBackwardRule {
    scale: f64,
    causal: bool,
}

impl AttentionBackwardRule {
    /// The inputs the composition reads (all but the packed forward output).
    fn used(inputs: &[Tensor]) -> Vec<Tensor> {
        vec![
            inputs[0].clone(),
            inputs[1].clone(),
            inputs[2].clone(),
            inputs[4].clone(),
        ]
    }
}

impl Rule for AttentionBackwardRule {
    fn name(&self) -> String {
        format!("attention_backward(causal={})", self.causal)
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let (scale, causal) = (self.scale, self.causal);
        let mut g = composition_vjp(
            |t| composed_backward(&t[0], &t[1], &t[2], &t[3], scale, causal),
            &Self::used(inputs),
            ct,
        );
        g.insert(3, None);
        g
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let (scale, causal) = (self.scale, self.causal);
        let used_tangents = [&tangents[0], &tangents[1], &tangents[2], &tangents[4]].map(Clone::clone);
        composition_jvp(
            |t| composed_backward(&t[0], &t[1], &t[2], &t[3], scale, causal),
            &Self::used(inputs),
            &used_tangents,
        )
    }
}

/// The attention probabilities `softmax(scale * q k^T)` (causal: zero past the diagonal),
/// composed of primitives.
fn composed_probabilities(q: &Tensor, k: &Tensor, scale: f64, causal: bool) -> (Tensor, Tensor) {
    let scores = (q * scale).matmul(&k.swap_axes(-1, -2));
    let p = if causal {
        super::nn::causal_softmax(&scores)
    } else {
        scores.softmax(-1)
    };
    (scores, p)
}

/// What the fused primitive computes, `[o, max, sum]` packed along the last axis, composed of
/// primitives (its JVP is this function's).
fn composed_packed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Tensor {
    let (_, p) = composed_probabilities(q, k, scale, causal);
    // The statistics are of the unscaled scores, as the kernel keeps them (a JVP's extra
    // product; the fused forward never runs this).
    let raw = q.matmul(&k.swap_axes(-1, -2));
    let kept = if causal {
        let (lq, lk) = (raw.shape()[raw.rank() - 2], raw.shape()[raw.rank() - 1]);
        let keep = Tensor::diagonal_offsets(lq, lk, raw.device()).le_scalar(0.0);
        keep.where_(&raw, &raw.scalar_like(f64::NEG_INFINITY))
    } else {
        raw
    };
    let max = kept.max(-1, true);
    let sum = ((&kept - &max) * scale).exp().sum(-1, true);
    let o = p.matmul(v);
    let mut column = o.shape().to_vec();
    *column.last_mut().expect("rank >= 2") = 1;
    super::shape::concatenate(&[o, max.broadcast_to(&column), sum.broadcast_to(&column)], -1)
}

/// The VJP of attention for the output cotangent `d_o`, packed as the fused backward packs it,
/// composed of primitives: `dv = p^T d_o`, `ds = scale p (d_o v^T - sum(p d_o v^T))` (the
/// scale of `scale q k^T` folded in), `dq = ds k`, `dk = ds^T q`.
fn composed_backward(q: &Tensor, k: &Tensor, v: &Tensor, d_o: &Tensor, scale: f64, causal: bool) -> Tensor {
    let (_, p) = composed_probabilities(q, k, scale, causal);
    let dp = d_o.matmul(&v.swap_axes(-1, -2));
    let pdp = &p * &dp;
    let ds = (&pdp - &p * pdp.sum(-1, true)) * scale;
    let parts = [
        ds.matmul(k),
        ds.swap_axes(-1, -2).matmul(q),
        p.swap_axes(-1, -2).matmul(d_o),
    ];
    let lead = parts
        .iter()
        .map(|t| t.shape()[..t.rank() - 2].to_vec())
        .reduce(|a, b| try_broadcast_shapes(&a, &b).expect("the operands' leading axes broadcast"))
        .expect("three parts");
    let flat: Vec<Tensor> = parts
        .iter()
        .map(|t| {
            let matrix = &t.shape()[t.rank() - 2..];
            let shape: Vec<usize> = lead.iter().chain(matrix).copied().collect();
            let flat: Vec<usize> = lead.iter().copied().chain([matrix[0] * matrix[1]]).collect();
            t.broadcast_to(&shape).reshape(flat.as_slice())
        })
        .collect();
    super::shape::concatenate(&flat, -1)
}
