//! Scaled dot-product attention (with or without a boolean mask) as one primitive where the
//! backend has a fused kernel
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

/// The attention's settings, shared by its rules and compositions.
#[derive(Clone, Copy)]
struct Settings {
    scale: f64,
    causal: bool,
    /// Whether a boolean mask is an input (after `q`, `k` and `v`).
    masked: bool,
}

impl Settings {
    /// The mask among the inputs `q, k, v, [mask], ..` of a node with these settings.
    fn mask(self, inputs: &[Tensor]) -> Option<&Tensor> {
        self.masked.then(|| &inputs[3])
    }
}

/// `softmax(scale * q k^T) v` (causal: query `i` keeps keys `0..=i`; `mask`, bool and
/// broadcastable to `[.., Lq, Lk]`, keeps the keys where it is true) through the backend's
/// fused kernel, or `None` when it has none for these operands (the caller composes). The
/// operands are checked by the caller; their leading axes broadcast.
pub(super) fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    causal: bool,
) -> Option<Tensor> {
    let dv = v.shape()[v.rank() - 1];
    let mask = match mask {
        Some(m) => Some(full_mask(m, q, k, v)?),
        None => None,
    };
    let mut operands = vec![q, k, v];
    operands.extend(mask.as_ref());
    let views = broadcast_views(&operands)?;
    let raw = q
        .backend()
        .attention(&views[0], &views[1], &views[2], views.get(3), scale, causal)?;
    let settings = Settings {
        scale,
        causal,
        masked: mask.is_some(),
    };
    let packed = Tensor::record(raw, &operands, || AttentionRule(settings));
    Some(packed.slice_axis(-1, Some(0), Some(dv as isize), 1))
}

/// `mask` broadcast to `[lead.., Lq, Lk]` (a view), `lead` the leading axes of `q`, `k`, `v`
/// and the mask together; `None` when it is not bool or does not broadcast so.
fn full_mask(mask: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor) -> Option<Tensor> {
    if mask.dtype() != crate::DType::Bool {
        return None;
    }
    let lead = |t: &Tensor| t.shape()[..t.rank() - 2].to_vec();
    let qkv = try_broadcast_shapes(&try_broadcast_shapes(&lead(q), &lead(k))?, &lead(v))?;
    let (lq, lk) = (q.shape()[q.rank() - 2], k.shape()[k.rank() - 2]);
    let scores: Vec<usize> = qkv.into_iter().chain([lq, lk]).collect();
    let full = try_broadcast_shapes(&scores, mask.shape())?;
    (full[full.len() - 2..] == [lq, lk]).then(|| mask.broadcast_to(&full))
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

/// The derivatives of the fused attention (inputs `q, k, v` and the mask when there is one),
/// whose output packs `[o, max, sum]` along the last axis.
struct AttentionRule(Settings);

impl Rule for AttentionRule {
    fn name(&self) -> String {
        format!("attention(causal={})", self.0.causal)
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        // Only the output part of the packed node reaches the user: the statistics are read
        // by the backward below, whose own rule gives them no cotangent, so the last two
        // columns of `ct` are zero.
        let dv = out.shape()[out.rank() - 1] - 2;
        let d_o = ct.slice_axis(-1, Some(0), Some(dv as isize), 1);
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        let mask = self.0.mask(inputs);
        let grads = attention_backward([q, k, v], mask, out, &d_o, self.0);
        let mut cts: Vec<Option<Tensor>> = split_gradients(&grads, [q, k, v]).into_iter().map(Some).collect();
        cts.extend(mask.map(|_| None));
        cts
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let (settings, mask) = (self.0, self.0.mask(inputs).cloned());
        composition_jvp(
            |t| composed_packed(&t[0], &t[1], &t[2], mask.as_ref(), settings),
            &inputs[..3],
            &tangents[..3],
        )
    }
}

/// The gradients of `q`, `k` and `v` packed along the last axis (`[.., Lq * D + Lk * D + Lk *
/// Dv]`, see [`crate::backend::Backend::attention_backward`]): through the backend's fused
/// kernel, or the composition when it has none for these operands.
fn attention_backward(
    [q, k, v]: [&Tensor; 3],
    mask: Option<&Tensor>,
    packed: &Tensor,
    d_o: &Tensor,
    settings: Settings,
) -> Tensor {
    let mut operands = vec![q, k, v];
    operands.extend(mask);
    operands.extend([packed, d_o]);
    let fused = broadcast_views(&operands).and_then(|views| {
        let (mask_view, rest) = match mask {
            Some(_) => (Some(&views[3]), &views[4..]),
            None => (None, &views[3..]),
        };
        q.backend().attention_backward(
            &views[0],
            &views[1],
            &views[2],
            mask_view,
            &rest[0],
            &rest[1],
            settings.scale,
            settings.causal,
        )
    });
    match fused {
        Some(raw) => Tensor::record(raw, &operands, || AttentionBackwardRule(settings)),
        None => composed_backward(q, k, v, mask, d_o, settings),
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
/// [`composed_backward`], a function of `q`, `k`, `v` and `d_o` (the mask, when there is one,
/// is a constant). The packed forward output is an input only for the statistics it holds,
/// which are functions of `q` and `k`, so its cotangent is none: the composition already
/// differentiates through them.
struct AttentionBackwardRule(Settings);

impl AttentionBackwardRule {
    /// The inputs the composition differentiates (`q, k, v, d_o`), and the mask.
    fn used(&self, inputs: &[Tensor]) -> (Vec<Tensor>, Option<Tensor>) {
        let n = inputs.len();
        assert_eq!(
            n,
            5 + usize::from(self.0.masked),
            "internal error: attention_backward(masked={}) recorded with {n} inputs",
            self.0.masked
        );
        let mask = self.0.mask(inputs).cloned();
        let used = vec![
            inputs[0].clone(),
            inputs[1].clone(),
            inputs[2].clone(),
            inputs[n - 1].clone(),
        ];
        (used, mask)
    }
}

impl Rule for AttentionBackwardRule {
    fn name(&self) -> String {
        format!("attention_backward(causal={})", self.0.causal)
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let settings = self.0;
        let (used, mask) = self.used(inputs);
        let g = composition_vjp(
            |t| composed_backward(&t[0], &t[1], &t[2], mask.as_ref(), &t[3], settings),
            &used,
            ct,
        );
        // q, k, v, (mask), packed, d_o.
        let mut out: Vec<Option<Tensor>> = g[..3].to_vec();
        out.extend(std::iter::repeat_n(None, inputs.len() - 4));
        out.push(g[3].clone());
        out
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let settings = self.0;
        let (used, mask) = self.used(inputs);
        let n = inputs.len();
        let used_tangents = [&tangents[0], &tangents[1], &tangents[2], &tangents[n - 1]].map(Clone::clone);
        composition_jvp(
            |t| composed_backward(&t[0], &t[1], &t[2], mask.as_ref(), &t[3], settings),
            &used,
            &used_tangents,
        )
    }
}

/// `x` (`[.., Lq, Lk]`, e.g. scores or their gradient) with `fill` where the mask or causality
/// drops a key.
fn kept_or(x: Tensor, mask: Option<&Tensor>, causal: bool, fill: f64) -> Tensor {
    let x = match mask {
        Some(m) => m.where_(&x, &x.scalar_like(fill)),
        None => x,
    };
    if !causal {
        return x;
    }
    let (lq, lk) = (x.shape()[x.rank() - 2], x.shape()[x.rank() - 1]);
    let keep = Tensor::diagonal_offsets(lq, lk, x.device()).le_scalar(0.0);
    keep.where_(&x, &x.scalar_like(fill))
}

/// The attention probabilities `softmax(scale * q k^T)` (zero where the mask or causality
/// drops a key, and in every row of a query that keeps no key), composed of primitives:
/// the op's composed path, and the function the fused primitive's derivatives differentiate.
pub(super) fn composed_probabilities(
    q: &Tensor,
    k: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    causal: bool,
) -> Tensor {
    // The scale goes on the queries, `[.., Lq, D]`, not on the scores, `[.., Lq, Lk]`: the
    // same product (up to rounding), with a quarter of the elementwise work at D = 64, Lk = 256.
    let scores = (q * scale).matmul(&k.swap_axes(-1, -2));
    let Some(mask) = mask else {
        // Causal: key j is kept for query i when j <= i, inside the softmax's one pass; every
        // query keeps key 0.
        return if causal {
            super::nn::causal_softmax(&scores)
        } else {
            scores.softmax(-1)
        };
    };
    let kept = kept_or(scores, Some(mask), causal, f64::NEG_INFINITY);
    let p = kept.softmax(-1);
    if kept.shape().last() == Some(&0) {
        return p;
    }
    // A query that keeps no key attends to nothing (its softmax row is NaN): 0, as PyTorch's
    // safe softmax gives. The `where` passes such a row no gradient.
    let attends = kept.max(-1, true).gt_scalar(f64::NEG_INFINITY);
    attends.where_(&p, &p.scalar_like(0.0))
}

/// What the fused primitive computes, `[o, max, sum]` packed along the last axis, composed of
/// primitives (its JVP is this function's).
fn composed_packed(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, s: Settings) -> Tensor {
    let p = composed_probabilities(q, k, mask, s.scale, s.causal);
    // The statistics are of the unscaled scores, as the kernel keeps them (a JVP's extra
    // product; the fused forward never runs this).
    let kept = kept_or(q.matmul(&k.swap_axes(-1, -2)), mask, s.causal, f64::NEG_INFINITY);
    let max = kept.max(-1, true);
    // A query that keeps no key: (-inf, 0), as the kernels store it.
    let sum = ((&kept - &max) * s.scale).exp().sum(-1, true);
    let sum = max.gt_scalar(f64::NEG_INFINITY).where_(&sum, &sum.scalar_like(0.0));
    let o = p.matmul(v);
    let mut column = o.shape().to_vec();
    *column.last_mut().expect("rank >= 2") = 1;
    super::shape::concatenate(&[o, max.broadcast_to(&column), sum.broadcast_to(&column)], -1)
}

/// The VJP of attention for the output cotangent `d_o`, packed as the fused backward packs it,
/// composed of primitives: `dv = p^T d_o`, `ds = scale p (d_o v^T - sum(p d_o v^T))` (the
/// scale of `scale q k^T` folded in; 0 where `p` is), `dq = ds k`, `dk = ds^T q`.
fn composed_backward(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, d_o: &Tensor, s: Settings) -> Tensor {
    let p = composed_probabilities(q, k, mask, s.scale, s.causal);
    let dp = d_o.matmul(&v.swap_axes(-1, -2));
    let pdp = &p * &dp;
    let ds = (&pdp - &p * pdp.sum(-1, true)) * s.scale;
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
