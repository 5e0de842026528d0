//! Scaled dot-product attention (one fused primitive where the backend has one, see
//! `attention_fused.rs`, else composed), the cumulative sum and the cumulative product, as
//! compositions of primitives (the product through `scan`).

use super::require_float;
use crate::shape::{normalize_axis, try_broadcast_shapes};
use crate::tensor::Tensor;

/// `softmax(q k^T / sqrt(d) + mask) v` over the last two axes: `q` `[..., Lq, D]`, `k`
/// `[..., Lk, D]`, `v` `[..., Lk, Dv]`, giving `[..., Lq, Dv]` (leading axes broadcast, e.g.
/// batch and heads). `mask` (bool, broadcastable to `[..., Lq, Lk]`) keeps the positions where
/// it is true, as PyTorch's boolean `attn_mask`; `causal` keeps key `j <= i` for query `i`
/// (top-left aligned, PyTorch's `is_causal`). A query that keeps no key attends to nothing:
/// its output row is 0 and it passes no gradient (as PyTorch 2.15 gives; not the NaN
/// of a plain softmax over `-inf` scores).
///
/// On a backend with a fused attention kernel (the CPU and the GPU, in f32 and f64, with or
/// without a mask; bf16 and f16 compute in f32 through it) this is one primitive each way, which never forms the `[..., Lq, Lk]` scores; other
/// dtypes and backends compose products and softmax rows.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, causal: bool) -> Tensor {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        require_float("scaled_dot_product_attention", t);
        if t.rank() < 2 {
            panic!(
                "scaled_dot_product_attention: {name} needs at least 2 axes [..., L, D], got shape {:?}",
                t.shape()
            );
        }
    }
    let d = q.shape()[q.rank() - 1];
    if k.shape()[k.rank() - 1] != d || k.shape()[k.rank() - 2] != v.shape()[v.rank() - 2] {
        panic!(
            "scaled_dot_product_attention: q {:?}, k {:?} and v {:?} do not fit: q and k need the same last \
             extent (D), k and v the same number of keys",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let lead = |t: &Tensor| t.shape()[..t.rank() - 2].to_vec();
    let Some(batch) = try_broadcast_shapes(&lead(q), &lead(k)).and_then(|b| try_broadcast_shapes(&b, &lead(v))) else {
        panic!(
            "scaled_dot_product_attention: the leading (batch) axes of q {:?}, k {:?} and v {:?} do not broadcast",
            q.shape(),
            k.shape(),
            v.shape()
        );
    };
    for (name, t) in [("k", k), ("v", v)] {
        if t.dtype() != q.dtype() {
            panic!(
                "scaled_dot_product_attention: dtypes differ: q {:?} ({}) and {name} {:?} ({}); cast one operand",
                q.shape(),
                q.dtype(),
                t.shape(),
                t.dtype()
            );
        }
        super::require_same_device("scaled_dot_product_attention", q, t);
    }
    if let Some(m) = mask {
        if m.dtype() != crate::DType::Bool {
            panic!(
                "scaled_dot_product_attention: the mask must be bool (true keeps a key), got {:?} ({}); \
                 compare a float mask with .gt_scalar(0.5), or add it to the scores yourself",
                m.shape(),
                m.dtype()
            );
        }
        super::require_same_device("scaled_dot_product_attention", q, m);
        let (lq, lk) = (q.shape()[q.rank() - 2], k.shape()[k.rank() - 2]);
        let scores: Vec<usize> = batch.iter().copied().chain([lq, lk]).collect();
        let full = try_broadcast_shapes(&scores, m.shape());
        if full.is_none_or(|f| f[f.len() - 2..] != [lq, lk]) {
            panic!(
                "scaled_dot_product_attention: a mask of shape {:?} does not broadcast to the scores {scores:?} \
                 (batch.., queries, keys); a key padding mask is [batch, 1, 1, {lk}]",
                m.shape()
            );
        }
    }
    if matches!(q.dtype(), crate::DType::BF16 | crate::DType::F16) {
        // Halves compute in f32 (as PyTorch's and cuDNN's attention accumulate), through the
        // fused kernels, and round the output once; the casts carry the gradients back.
        let wide = |t: &Tensor| t.cast(crate::DType::F32);
        return scaled_dot_product_attention(&wide(q), &wide(k), &wide(v), mask, causal).cast(q.dtype());
    }
    let scale = 1.0 / (d as f64).sqrt();
    if let Some(o) = super::attention_fused::fused_attention(q, k, v, mask, scale, causal) {
        return o;
    }
    super::attention_fused::composed_probabilities(q, k, mask, scale, causal).matmul(v)
}

/// The length up to which a running sum is one product with a triangular matrix of ones;
/// longer axes are cut into blocks of this length (see [`Tensor::cumsum`]).
const CUMSUM_BLOCK: usize = 64;

impl Tensor {
    /// Running sums along `axis` (`jnp.cumsum`): element `i` is the sum of elements `0..=i`.
    /// A composition of matmul and adds, so it runs on every device and differentiates as
    /// they do: up to 64 elements, one product with a triangular matrix of ones; beyond, the
    /// axis is cut into blocks of 64, summed within each block that way, and each block gets
    /// the running sum of the blocks before it (computed the same way, recursively). The work
    /// is `O(64 n)`, not `O(n^2)`.
    pub fn cumsum(&self, axis: isize) -> Tensor {
        require_float("cumsum", self);
        let a = normalize_axis("cumsum", axis, self.rank().max(1));
        if self.rank() == 0 {
            return self.clone();
        }
        self.along_last(a, |x| cumsum_last(x, CUMSUM_BLOCK))
    }
}

/// Running sums along the last axis of `x`, in blocks of `block`.
fn cumsum_last(x: &Tensor, block: usize) -> Tensor {
    let n = *x.shape().last().expect("rank >= 1");
    // Ones where row <= column: x @ ones_upper sums every prefix.
    let ones_upper = |n: usize| {
        Tensor::diagonal_offsets(n, n, x.device())
            .ge_scalar(0.0)
            .cast(x.dtype())
    };
    if n <= block {
        return x.matmul(&ones_upper(n));
    }
    let blocks = n.div_ceil(block);
    let lead = &x.shape()[..x.rank() - 1];
    let padding = padding_last(x.rank(), (0, blocks * block - n));
    let blocked_shape: Vec<usize> = lead.iter().copied().chain([blocks, block]).collect();
    // [.., blocks, block]: running sums inside each block.
    let within = x
        .pad(&padding)
        .reshape(blocked_shape.as_slice())
        .matmul(&ones_upper(block));
    // The running sum of the block totals, shifted by one block: what comes before each block.
    let totals = within.index_axis(-1, block as isize - 1);
    let before = cumsum_last(&totals, block)
        .pad(&padding_last(totals.rank(), (1, 0)))
        .slice_axis(-1, Some(0), Some(blocks as isize), 1);
    let out_shape: Vec<usize> = lead.iter().copied().chain([blocks * block]).collect();
    debug_assert_eq!(before.shape(), &blocked_shape[..blocked_shape.len() - 1]);
    (within + before.expand_dims(-1))
        .reshape(out_shape.as_slice())
        .slice_axis(-1, Some(0), Some(n as isize), 1)
}

/// Padding widths that pad only the last of `rank` axes, by `widths`.
fn padding_last(rank: usize, widths: (usize, usize)) -> Vec<(usize, usize)> {
    let mut padding = vec![(0, 0); rank];
    padding[rank - 1] = widths;
    padding
}

impl Tensor {
    /// Running products along `axis` (`jnp.cumprod`): element `i` is the product of elements
    /// `0..=i`. A [`crate::scan`] over the axis, so zeros and negative values have exact
    /// derivatives (the product rule, as JAX) and it runs on every device.
    pub fn cumprod(&self, axis: isize) -> Tensor {
        require_float("cumprod", self);
        if self.rank() == 0 {
            return self.clone();
        }
        let a = normalize_axis("cumprod", axis, self.rank());
        let moved = self.moveaxis(a as isize, 0);
        let ones = moved.index_axis(0, 0).ones_like();
        let (_, prods) = crate::transforms::control::scan(
            |c: &Tensor, x: &Tensor| {
                let p = c * x;
                (p.clone(), p)
            },
            &ones,
            &moved,
        );
        prods.moveaxis(0, a as isize)
    }
}
