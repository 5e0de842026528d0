//! Normalisation and the other composites of transformer and CNN layers: `layer_norm` (a fused
//! row primitive over one axis, with its own rule), `rms_norm`, exact `gelu`, `remainder`
//! (NumPy's and JAX's `mod`), `triu` and `tril`. The composites are written in primitives, so
//! they run on every device and their derivatives (of any order, under vmap and jit) follow by
//! composition.

use super::shape::concatenate;
use super::{Axes, require_float};
use crate::dtype::DType;
use crate::shape::normalize_axis;
use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::transforms::custom::{composition_jvp, composition_vjp};

/// The fused layer-norm primitive over the last axis of `x`.
fn layer_norm_last(x: &Tensor, eps: f64) -> Tensor {
    let raw = x.backend().layer_norm_rows(x.raw(), eps);
    Tensor::record(raw, &[x], || LayerNormRule { eps })
}

/// The derivative rule of layer-norm rows, from the input `x` and the output `y`.
struct LayerNormRule {
    eps: f64,
}

impl LayerNormRule {
    /// `J v = rstd (v - mean(v) - y mean(v y))` along the last axis: one fused primitive when
    /// `x`, `y` and `v` are alike (the usual backward pass), else the composition (a vmapped
    /// cotangent over unbatched `x`, as jacrev makes).
    fn product(&self, x: &Tensor, y: &Tensor, v: &Tensor) -> Tensor {
        let alike = |t: &Tensor| t.shape() == x.shape() && t.dtype() == x.dtype() && t.batch() == x.batch();
        if alike(y) && alike(v) && x.device() == v.device() && x.device() == y.device() {
            layer_norm_backward(x, y, v, self.eps)
        } else {
            layer_norm_product(x, y, v, self.eps)
        }
    }
}

/// The layer norm's Jacobian product, composed of primitives, with `rstd` recomputed from `x`
/// (so that it is differentiable in `x`, `y` and `v` for higher derivatives).
fn layer_norm_product(x: &Tensor, y: &Tensor, v: &Tensor, eps: f64) -> Tensor {
    let centred = x - x.mean(-1, true);
    let rstd = (centred.square().mean(-1, true) + eps).rsqrt();
    rstd * (v - v.mean(-1, true) - y * (v * y).mean(-1, true))
}

/// [`layer_norm_product`] as one primitive (`Backend::layer_norm_rows_backward`).
fn layer_norm_backward(x: &Tensor, y: &Tensor, v: &Tensor, eps: f64) -> Tensor {
    let raw = x.backend().layer_norm_rows_backward(x.raw(), y.raw(), v.raw(), eps);
    Tensor::record(raw, &[x, y, v], || LayerNormBackwardRule { eps })
}

/// The derivatives of the fused Jacobian product (second and higher derivatives of a layer
/// norm): those of its composition, traced again from the node's inputs.
struct LayerNormBackwardRule {
    eps: f64,
}

impl Rule for LayerNormBackwardRule {
    fn name(&self) -> String {
        format!("layer_norm_backward(axis=-1, eps={})", self.eps)
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        composition_vjp(|t| layer_norm_product(&t[0], &t[1], &t[2], self.eps), inputs, ct)
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        composition_jvp(|t| layer_norm_product(&t[0], &t[1], &t[2], self.eps), inputs, tangents)
    }
}

impl Rule for LayerNormRule {
    fn name(&self) -> String {
        format!("layer_norm(axis=-1, eps={})", self.eps)
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(self.product(&inputs[0], out, ct))]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        Some(self.product(&inputs[0], out, tangents[0].as_ref()?))
    }
}

impl Tensor {
    /// `(x - mean) / sqrt(var + eps)` over `axes` (usually the last: `-1`), the normalisation
    /// of a layer norm without its scale and shift (`jax.nn.standardize`, PyTorch's
    /// `layer_norm` with no weight); the variance is the biased one.
    ///
    /// Over one axis it is one fused primitive (the axis is moved last as a view when it is not
    /// last), whose rule `rstd (v - mean(v) - y mean(v y))` serves as VJP and JVP (the Jacobian
    /// is symmetric); over several axes it is composed.
    pub fn layer_norm(&self, axes: impl Into<Axes>, eps: f64) -> Tensor {
        require_float("layer_norm", self);
        let axes = axes.into();
        let single = match &axes {
            Axes::List(list) if list.len() == 1 => Some(normalize_axis("layer_norm", list[0], self.rank())),
            Axes::All if self.rank() == 1 => Some(0),
            _ => None,
        };
        if let Some(a) = single {
            return self.along_last(a, |x| layer_norm_last(x, eps));
        }
        if let Axes::List(list) = &axes {
            let mut listed: Vec<usize> = list
                .iter()
                .map(|&a| normalize_axis("layer_norm", a, self.rank()))
                .collect();
            listed.sort_unstable();
            let distinct = listed.windows(2).all(|w| w[0] != w[1]);
            if distinct && self.rank() >= 2 && listed.len() == self.rank() - 1 {
                // Every axis but one: batch normalisation's standardisation.
                let kept = (0..self.rank())
                    .find(|a| !listed.contains(a))
                    .expect("one axis is left");
                return self.normalize_channels(kept as isize, eps).0;
            }
        }
        let centred = self - self.mean(axes.clone(), true);
        let var = centred.square().mean(axes, true);
        centred * (var + eps).rsqrt()
    }

    /// Batch normalisation's training pass without its scale and shift: this tensor
    /// standardised per index of `axis` (the channels: 1 for `[N, C, H, W]`) over every other
    /// axis, `(x - mean) / sqrt(var + eps)` with the biased variance (what `layer_norm` over
    /// every axis but `axis` computes), with the channels' means and biased variances, `[C]`
    /// each and not traced (what running averages are made of).
    ///
    /// On a backend with the fused kernels (the CPU and CUDA) it is one primitive: the
    /// statistics in two passes (one on the GPU), and a backward pass `rstd (v - mean(v) - y
    /// mean(v y))` in two more, where the composition took about a dozen kernels; elsewhere,
    /// and under `vmap`, it is composed.
    /// Derivatives of every order either way.
    pub fn normalize_channels(&self, axis: isize, eps: f64) -> (Tensor, Tensor, Tensor) {
        require_float("normalize_channels", self);
        let a = normalize_axis("normalize_channels", axis, self.rank());
        let shape = self.shape().to_vec();
        let channels = shape[a];
        if !self.is_batched()
            && let Some((x, mean, var)) = self.fused_moments(a)
        {
            let rstd = (&var + eps).rsqrt();
            let value = scale_and_shift_value(&x, &mean, &rstd, &rstd.zeros_like());
            let y = Tensor::record(value.raw().clone(), &[&x], || ChannelNormRule { eps, rstd });
            return (y.reshape(shape), mean, var);
        }
        let axes: Vec<isize> = (0..self.rank() as isize).filter(|&k| k != a as isize).collect();
        let mean = self.mean(axes.clone(), true);
        let centred = self - &mean;
        let var = centred.square().mean(axes, true);
        let y = centred * (&var + eps).rsqrt();
        (
            y,
            mean.stop_gradient().reshape([channels]),
            var.stop_gradient().reshape([channels]),
        )
    }

    /// Batch normalisation in training mode: `normalize_channels(axis, eps) * gamma + beta`
    /// per channel (`gamma` and `beta` `[C]`, this tensor's dtype), with the channels' means
    /// and biased variances (`[C]`, not traced).
    ///
    /// On a backend with the fused kernels (the CPU and CUDA) it is one primitive of `x`,
    /// `gamma` and `beta`: the statistics in two passes and the output in one; its backward gives all three
    /// gradients from two passes (`s1 = sum(g)`, `s2 = sum(g x_hat)`, then `dx = gamma rstd (g -
    /// s1 / n - x_hat s2 / n)`, `dgamma = s2`, `dbeta = s1`). Elsewhere, under `vmap`, and for
    /// higher derivatives it is the composition.
    pub fn batch_norm(&self, gamma: &Tensor, beta: &Tensor, axis: isize, eps: f64) -> (Tensor, Tensor, Tensor) {
        require_float("batch_norm", self);
        let a = normalize_axis("batch_norm", axis, self.rank());
        let shape = self.shape().to_vec();
        let channels = shape[a];
        self.check_scale_and_shift("batch_norm", gamma, beta, a);
        let plain = !self.is_batched() && !gamma.is_batched() && !beta.is_batched();
        if plain && let Some((x, mean, var)) = self.fused_moments(a) {
            let rstd = (&var + eps).rsqrt();
            let value = scale_and_shift_value(&x, &mean, &(&rstd * gamma.stop_gradient()), &beta.stop_gradient());
            let rule = BatchNormRule {
                eps,
                mean: mean.clone(),
                rstd,
            };
            let y = Tensor::record(value.raw().clone(), &[&x, gamma, beta], || rule);
            return (y.reshape(shape), mean, var);
        }
        let (standardised, mean, var) = self.normalize_channels(axis, eps);
        let mut per_channel = vec![1; self.rank()];
        per_channel[a] = channels;
        let y = standardised * gamma.reshape(per_channel.clone()) + beta.reshape(per_channel);
        (y, mean, var)
    }

    /// This tensor seen as `[A, C, B]` around `axis` (`C` its extent), with the channels' means
    /// and biased variances (`[C]`, untraced) from the backend's fused kernel; `None` where the
    /// backend has none.
    pub(super) fn fused_moments(&self, axis: usize) -> Option<(Tensor, Tensor, Tensor)> {
        let x = self.grouped_around(axis);
        let moments = Tensor::untraced(x.backend().channel_moments(x.raw())?, &[&x]);
        let (mean, var) = (moments.index_axis(0, 0), moments.index_axis(0, 1));
        Some((x, mean, var))
    }

    /// This tensor seen as `[A, C, B]` around `axis` (`C` its extent).
    pub(super) fn grouped_around(&self, axis: usize) -> Tensor {
        let shape = self.shape();
        self.reshape([
            shape[..axis].iter().product(),
            shape[axis],
            shape[axis + 1..].iter().product(),
        ])
    }

    /// Refuses, naming `op`, a `gamma` or `beta` that is not one value per channel of `axis`
    /// in this tensor's dtype and device.
    pub(super) fn check_scale_and_shift(&self, op: &str, gamma: &Tensor, beta: &Tensor, axis: usize) {
        self.check_per_channel(op, &[("gamma", gamma), ("beta", beta)], axis);
    }

    /// Refuses, naming `op` and the tensor, any of `named` that is not one value per channel
    /// of `axis` in this tensor's dtype and device.
    pub(super) fn check_per_channel(&self, op: &str, named: &[(&str, &Tensor)], axis: usize) {
        let channels = self.shape()[axis];
        for &(name, t) in named {
            if t.shape() != [channels] || t.dtype() != self.dtype() || t.device() != self.device() {
                panic!(
                    "{op}: {name} must be [{channels}] {} on {} (one value per channel of axis {axis} of {:?}), \
                     got {:?} {} on {}",
                    self.dtype(),
                    self.device(),
                    self.shape(),
                    t.shape(),
                    t.dtype(),
                    t.device()
                );
            }
        }
    }

    /// `x / sqrt(mean(x^2) + eps)` over `axes` (RMSNorm without its scale).
    pub fn rms_norm(&self, axes: impl Into<Axes>, eps: f64) -> Tensor {
        require_float("rms_norm", self);
        self * (self.square().mean(axes, true) + eps).rsqrt()
    }

    /// GELU without the approximation: `x Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))` (JAX's
    /// `gelu(approximate=False)`, PyTorch's default), computed as `0.5 x erfc(-x / sqrt(2))`,
    /// which keeps its relative precision for negative `x` where `1 + erf` cancels.
    /// One primitive (one pass), as is its derivative.
    pub fn gelu_exact(&self) -> Tensor {
        require_float("gelu_exact", self);
        super::unary::gelu(self, true)
    }

    /// The remainder of floor division, with the sign of the divisor: `x - floor(x / y) * y`
    /// (NumPy's and JAX's `mod`/`remainder`, PyTorch's `remainder`), broadcasting. Integers use
    /// floor division; for floats the derivative is 1 in `x` and `-floor(x / y)` in `y`, as in
    /// JAX.
    pub fn remainder(&self, y: &Tensor) -> Tensor {
        if self.dtype() == DType::Bool || y.dtype() == DType::Bool {
            panic!(
                "remainder: not defined for bool tensors (shapes {:?} and {:?}); cast to a number dtype first",
                self.shape(),
                y.shape()
            );
        }
        let q = self / y;
        let q = if q.dtype().is_float() { q.floor() } else { q };
        self - q * y
    }

    /// The upper triangle of the last two axes: elements with `column - row >= k` kept, the
    /// others zero (`k = 0`: the diagonal and above; `k = 1`: strictly above).
    pub fn triu(&self, k: i64) -> Tensor {
        self.triangle("triu", |offsets| offsets.ge_scalar(k as f64))
    }

    /// The lower triangle of the last two axes: elements with `column - row <= k` kept, the
    /// others zero (`k = 0`: the diagonal and below; `k = -1`: strictly below).
    pub fn tril(&self, k: i64) -> Tensor {
        self.triangle("tril", |offsets| offsets.le_scalar(k as f64))
    }

    /// The elements where `keep(column - row)` (a bool mask made on this tensor's device),
    /// the others zero.
    fn triangle(&self, op: &str, keep: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let rank = self.rank();
        if rank < 2 {
            panic!(
                "{op}: needs at least 2 axes (the matrix is the last two), got shape {:?}",
                self.shape()
            );
        }
        let (m, n) = (self.shape()[rank - 2], self.shape()[rank - 1]);
        let mask = keep(&Tensor::diagonal_offsets(m, n, self.device()));
        mask.where_(self, &self.scalar_like(0.0))
    }
}

/// The derivative rule of the fused per-channel standardisation of `x` `[A, C, B]` (channels on
/// axis 1), from the input, the output `y` and the forward's `rstd` (untraced, `[C]`: the
/// fused backward reads it; the composition recomputes it from `x`, so that higher
/// derivatives see its dependence on `x`).
struct ChannelNormRule {
    eps: f64,
    rstd: Tensor,
}

impl ChannelNormRule {
    /// `J v = rstd (v - mean(v) - y mean(v y))` per channel: one fused primitive when `x`, `y`
    /// and `v` are alike (the usual backward pass), else the composition.
    fn product(&self, x: &Tensor, y: &Tensor, v: &Tensor) -> Tensor {
        let alike = |t: &Tensor| {
            t.shape() == x.shape() && t.dtype() == x.dtype() && !t.is_batched() && t.device() == x.device()
        };
        if alike(y)
            && alike(v)
            && !x.is_batched()
            && let Some(raw) = x.backend().channel_norm_backward(y.raw(), v.raw(), self.rstd.raw())
        {
            return Tensor::record(raw, &[x, y, v], || ChannelNormBackwardRule { eps: self.eps });
        }
        channel_norm_product(x, y, v, self.eps)
    }
}

impl Rule for ChannelNormRule {
    fn name(&self) -> String {
        format!("normalize_channels(axis=1, eps={})", self.eps)
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(self.product(&inputs[0], out, ct))]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        Some(self.product(&inputs[0], out, tangents[0].as_ref()?))
    }
}

/// The axes of `[A, C, B]` that a channel's statistics run over.
pub(super) const AROUND_CHANNELS: [isize; 2] = [0, 2];

/// `x - mean` and `1 / sqrt(var + eps)` per channel of `x` `[A, C, B]`, composed of primitives
/// (differentiable in `x`, for the rules' compositions).
fn centred_and_rstd(x: &Tensor, eps: f64) -> (Tensor, Tensor) {
    let centred = x - x.mean(&AROUND_CHANNELS[..], true);
    let rstd = (centred.square().mean(&AROUND_CHANNELS[..], true) + eps).rsqrt();
    (centred, rstd)
}

/// The per-channel standardisation's Jacobian product over `[A, C, B]`, composed of
/// primitives, with `rstd` recomputed from `x` (differentiable in `x`, `y` and `v`).
fn channel_norm_product(x: &Tensor, y: &Tensor, v: &Tensor, eps: f64) -> Tensor {
    let axes = &AROUND_CHANNELS[..];
    let (_, rstd) = centred_and_rstd(x, eps);
    rstd * (v - v.mean(axes, true) - y * (v * y).mean(axes, true))
}

/// The derivatives of the fused Jacobian product (second and higher derivatives of a batch
/// norm): those of its composition.
struct ChannelNormBackwardRule {
    eps: f64,
}

impl Rule for ChannelNormBackwardRule {
    fn name(&self) -> String {
        format!("normalize_channels_backward(axis=1, eps={})", self.eps)
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        composition_vjp(|t| channel_norm_product(&t[0], &t[1], &t[2], self.eps), inputs, ct)
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        composition_jvp(
            |t| channel_norm_product(&t[0], &t[1], &t[2], self.eps),
            inputs,
            tangents,
        )
    }
}

/// Batch normalisation of `x` `[A, C, B]` composed of primitives (what the fused primitive
/// computes, for its derivatives).
fn batch_norm_composed(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Tensor {
    let c = gamma.shape()[0];
    let (centred, rstd) = centred_and_rstd(x, eps);
    centred * rstd * gamma.reshape([1, c, 1]) + beta.reshape([1, c, 1])
}

/// The backward pass of [`batch_norm_composed`] at the cotangent `g`, packed as the fused
/// kernel packs it: `dx` flattened, then `dgamma`, then `dbeta`.
fn batch_norm_backward_composed(x: &Tensor, g: &Tensor, gamma: &Tensor, eps: f64) -> Tensor {
    let c = gamma.shape()[0];
    let axes = &AROUND_CHANNELS[..];
    let n = (x.numel() / c.max(1)) as f64;
    let (centred, rstd) = centred_and_rstd(x, eps);
    let x_hat = centred * &rstd;
    let s1 = g.sum(axes, true);
    let s2 = (g * &x_hat).sum(axes, true);
    let dx = gamma.reshape([1, c, 1]) * rstd * (g - &s1 / n - x_hat * (&s2 / n));
    concatenate(&[dx.reshape([x.numel()]), s2.reshape([c]), s1.reshape([c])], 0)
}

/// The value `(x - mean) scale + shift` per channel of `x` `[A, C, B]` (not traced: the
/// callers record it under their own rule), `mean`, `scale` and `shift` `[C]`: one pass where
/// the backend has the kernel.
pub(super) fn scale_and_shift_value(x: &Tensor, mean: &Tensor, scale: &Tensor, shift: &Tensor) -> Tensor {
    let c = mean.numel();
    let raw = x
        .backend()
        .channel_scale_shift(x.raw(), mean.raw(), scale.raw(), shift.raw());
    match raw {
        Some(raw) => Tensor::untraced(raw, &[x]),
        None => {
            let per_channel = |t: &Tensor| t.stop_gradient().reshape([1, c, 1]);
            (x.stop_gradient() - per_channel(mean)) * per_channel(scale) + per_channel(shift)
        }
    }
}

/// True when the cotangent `ct` is laid out as `x` (the usual backward pass, which the fused
/// kernels take): same shape, dtype and device, not batched.
pub(super) fn cotangent_alike(x: &Tensor, ct: &Tensor) -> bool {
    ct.shape() == x.shape() && ct.dtype() == x.dtype() && !ct.is_batched() && ct.device() == x.device()
}

/// The wanted gradients of `x`, `gamma` and `beta` from a fused batch norm backward's `packed`
/// `[dx flattened, dgamma, dbeta]`.
pub(super) fn unpack_batch_norm_grads(
    packed: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let (n, c) = (x.numel(), gamma.numel());
    let part = |start: usize, len: usize| packed.slice_axis(0, Some(start as isize), Some((start + len) as isize), 1);
    vec![
        wanted[0].then(|| part(0, n).reshape(x.shape().to_vec())),
        wanted[1].then(|| part(n, c)),
        wanted[2].then(|| part(n + c, c)),
    ]
}

/// The derivative rule of the fused batch norm of `x` `[A, C, B]`, `gamma` and `beta`, with the
/// forward's statistics (untraced, `[C]`) for the fused backward.
struct BatchNormRule {
    eps: f64,
    mean: Tensor,
    rstd: Tensor,
}

impl Rule for BatchNormRule {
    fn name(&self) -> String {
        format!("batch_norm(axis=1, eps={})", self.eps)
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        self.vjp_wanted(inputs, out, ct, &[true, true, true])
    }
    fn vjp_wanted(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor, wanted: &[bool]) -> Vec<Option<Tensor>> {
        let (x, gamma) = (&inputs[0], &inputs[1]);
        let fused = cotangent_alike(x, ct)
            .then(|| {
                x.backend()
                    .batch_norm_backward(x.raw(), ct.raw(), self.mean.raw(), self.rstd.raw(), gamma.raw())
            })
            .flatten();
        let packed = match fused {
            Some(raw) => Tensor::record(raw, &[x, ct, gamma], || BatchNormBackwardRule { eps: self.eps }),
            None => return composition_vjp(|t| batch_norm_composed(&t[0], &t[1], &t[2], self.eps), inputs, ct),
        };
        unpack_batch_norm_grads(&packed, x, gamma, wanted)
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        composition_jvp(|t| batch_norm_composed(&t[0], &t[1], &t[2], self.eps), inputs, tangents)
    }
}

/// The derivatives of the fused batch norm backward (second and higher derivatives): those of
/// its composition.
struct BatchNormBackwardRule {
    eps: f64,
}

impl Rule for BatchNormBackwardRule {
    fn name(&self) -> String {
        format!("batch_norm_backward(axis=1, eps={})", self.eps)
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        composition_vjp(
            |t| batch_norm_backward_composed(&t[0], &t[1], &t[2], self.eps),
            inputs,
            ct,
        )
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        composition_jvp(
            |t| batch_norm_backward_composed(&t[0], &t[1], &t[2], self.eps),
            inputs,
            tangents,
        )
    }
}
