//! The layers of CNNs and transformers, as pytrees like [`crate::Linear`]: [`Conv2d`],
//! [`LayerNorm`], [`Embedding`], [`Dropout`], [`MultiHeadAttention`] and a pre-norm
//! [`TransformerBlock`]. Their forward passes are compositions of core ops, so they run on
//! every device and under every transform. Dropout takes an explicit key tensor
//! (`nabla::random::key(&[seed, step, rank])`); `None` is evaluation mode.

use nabla_core::random::fold_in;
use nabla_core::{Conv2dOptions, DType, Rng, Tensor, conv2d, scaled_dot_product_attention};
use nabla_derive::Tree;

use crate::init::Init;
use crate::layers::Linear;

/// A 2-D convolution over NCHW images with a bias: `w: [O, C / groups, KH, KW]`, `b: [O]`.
#[derive(Clone, Debug, Tree)]
pub struct Conv2d {
    /// Kernel, `[O, C / groups, KH, KW]`.
    pub w: Tensor,
    /// Bias, `[O]`.
    pub b: Tensor,
    /// Stride, padding, dilation, groups.
    #[tree(skip)]
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// `inputs` to `outputs` channels with a `kernel` window; weights He-normal over the fan-in
    /// `C / groups * KH * KW` (for ReLU networks), zero bias.
    pub fn new(
        inputs: usize,
        outputs: usize,
        kernel: (usize, usize),
        options: Conv2dOptions,
        rng: &mut Rng,
        dtype: DType,
    ) -> Conv2d {
        let per_group = inputs / options.groups.max(1);
        let fan_in = (per_group * kernel.0 * kernel.1).max(1);
        Conv2d {
            w: rng.normal(
                &[outputs, per_group, kernel.0, kernel.1],
                0.0,
                (2.0 / fan_in as f64).sqrt(),
                dtype,
            ),
            b: Tensor::zeros(&[outputs], dtype),
            options,
        }
    }

    /// `conv2d(x, w) + b` for `x: [N, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let o = self.b.shape()[0];
        conv2d(x, &self.w, self.options) + self.b.reshape([o, 1, 1])
    }
}

/// Layer normalisation over the last axis with a learned scale and shift.
#[derive(Clone, Debug, Tree)]
pub struct LayerNorm {
    /// Scale, `[d]` (ones at first).
    pub gamma: Tensor,
    /// Shift, `[d]` (zeros at first).
    pub beta: Tensor,
    /// Added to the variance.
    #[tree(skip)]
    pub eps: f64,
}

impl LayerNorm {
    /// A layer norm of width `d` (eps 1e-5, as PyTorch).
    pub fn new(d: usize, dtype: DType) -> LayerNorm {
        LayerNorm {
            gamma: Tensor::ones(&[d], dtype),
            beta: Tensor::zeros(&[d], dtype),
            eps: 1e-5,
        }
    }

    /// `layer_norm(x) * gamma + beta` over the last axis.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(-1, self.eps) * &self.gamma + &self.beta
    }
}

/// A table of `vocab` vectors of width `d`, looked up by integer ids.
#[derive(Clone, Debug, Tree)]
pub struct Embedding {
    /// `[vocab, d]`, normal with std 1 at first (PyTorch's default).
    pub table: Tensor,
}

impl Embedding {
    /// A table of `vocab` rows of width `d`.
    pub fn new(vocab: usize, d: usize, rng: &mut Rng, dtype: DType) -> Embedding {
        Embedding {
            table: rng.normal(&[vocab, d], 0.0, 1.0, dtype),
        }
    }

    /// The rows of `ids` (i64, any shape): `ids.shape ++ [d]`. An id outside the table is an
    /// error naming it (checked on the tensor's device).
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let d = self.table.shape()[1];
        let mut shape = ids.shape().to_vec();
        shape.push(d);
        self.table.take(&ids.reshape([ids.numel()]), 0).reshape(shape)
    }
}

/// Inverted dropout with a fixed rate; a configuration, not parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The probability of zeroing an element.
    pub rate: f64,
}

impl Dropout {
    /// `x` with elements dropped by `key`'s mask (training), or `x` itself when `key` is
    /// `None` (evaluation) or the rate is 0.
    pub fn forward(&self, x: &Tensor, key: Option<&Tensor>) -> Tensor {
        match key {
            Some(k) if self.rate > 0.0 => x.dropout(self.rate, k),
            _ => x.clone(),
        }
    }
}

/// Multi-head self-attention over `[batch, length, d]`: projections to `heads` heads of width
/// `d / heads`, scaled dot-product attention per head, and an output projection.
#[derive(Clone, Debug, Tree)]
pub struct MultiHeadAttention {
    /// Query projection `[d, d]`.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub out: Linear,
    /// Number of heads.
    #[tree(skip)]
    pub heads: usize,
}

impl MultiHeadAttention {
    /// `heads` heads over width `d` (`d` divisible by `heads`).
    pub fn new(d: usize, heads: usize, rng: &mut Rng, dtype: DType) -> MultiHeadAttention {
        if heads == 0 || !d.is_multiple_of(heads) {
            panic!("MultiHeadAttention::new: width {d} is not divisible by {heads} heads");
        }
        let mut proj = || Linear::new(d, d, Init::GlorotUniform, rng, dtype);
        MultiHeadAttention {
            q: proj(),
            k: proj(),
            v: proj(),
            out: proj(),
            heads,
        }
    }

    /// Self-attention of `x: [batch, length, d]`; `causal` lets position `i` see `0..=i` only;
    /// `mask` (bool, broadcastable to `[batch, heads, length, length]`) keeps where true.
    pub fn forward(&self, x: &Tensor, causal: bool, mask: Option<&Tensor>) -> Tensor {
        if x.rank() != 3 {
            panic!(
                "MultiHeadAttention: needs x of shape [batch, length, d], got {:?}",
                x.shape()
            );
        }
        let (b, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let h = self.heads;
        let split = |t: Tensor| t.reshape([b, l, h, d / h]).swap_axes(1, 2);
        let (q, k, v) = (
            split(self.q.forward(x)),
            split(self.k.forward(x)),
            split(self.v.forward(x)),
        );
        let o = scaled_dot_product_attention(&q, &k, &v, mask, causal);
        self.out.forward(&o.swap_axes(1, 2).reshape([b, l, d]))
    }
}

/// A pre-norm transformer block: `x + attention(norm(x))`, then `h + mlp(norm(h))` with a GELU
/// MLP of width `4 d`, dropout on both branches.
#[derive(Clone, Debug, Tree)]
pub struct TransformerBlock {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attention: MultiHeadAttention,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// MLP input layer, `[d, 4 d]`.
    pub up: Linear,
    /// MLP output layer, `[4 d, d]`.
    pub down: Linear,
    /// Dropout on the two residual branches.
    #[tree(skip)]
    pub dropout: Dropout,
}

impl TransformerBlock {
    /// A block of width `d` with `heads` heads and dropout `rate`.
    pub fn new(d: usize, heads: usize, rate: f64, rng: &mut Rng, dtype: DType) -> TransformerBlock {
        TransformerBlock {
            norm1: LayerNorm::new(d, dtype),
            attention: MultiHeadAttention::new(d, heads, rng, dtype),
            norm2: LayerNorm::new(d, dtype),
            up: Linear::new(d, 4 * d, Init::HeNormal, rng, dtype),
            down: Linear::new(4 * d, d, Init::GlorotUniform, rng, dtype),
            dropout: Dropout { rate },
        }
    }

    /// The block on `x: [batch, length, d]`; `key` (training) drives both dropouts, which get
    /// keys of their own folded from it.
    pub fn forward(&self, x: &Tensor, causal: bool, key: Option<&Tensor>) -> Tensor {
        self.forward_masked(x, causal, None, key)
    }

    /// [`TransformerBlock::forward`] with an attention mask (bool, broadcastable to `[batch,
    /// heads, length, length]`, true keeps a key): for a padded batch, a key padding mask
    /// `[batch, 1, 1, length]`, and-ed with a query padding mask `[batch, 1, length, 1]` if
    /// padded queries should attend to nothing (their attention output is then 0).
    pub fn forward_masked(&self, x: &Tensor, causal: bool, mask: Option<&Tensor>, key: Option<&Tensor>) -> Tensor {
        let keys = key.map(|k| (fold_in(k, 1), fold_in(k, 2)));
        let a = self.attention.forward(&self.norm1.forward(x), causal, mask);
        let h = x + self.dropout.forward(&a, keys.as_ref().map(|k| &k.0));
        let m = self
            .down
            .forward(&self.up.forward(&self.norm2.forward(&h)).gelu_exact());
        &h + self.dropout.forward(&m, keys.as_ref().map(|k| &k.1))
    }
}
