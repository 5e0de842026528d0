//! Batch normalisation with given statistics (evaluation mode: the running averages), as one
//! pass where the backend has batch norm's output kernel (`Backend::channel_scale_shift`, the
//! CPU and CUDA), where the broadcast composition took three or four.

use super::norm::scale_and_shift_value;
use super::require_float;
use crate::shape::normalize_axis;
use crate::tensor::Tensor;
use crate::trace::Rule;

impl Tensor {
    /// Batch normalisation with the given per-channel statistics (PyTorch's
    /// `F.batch_norm(training=False)`, a batch norm layer at evaluation): `(x - mean) /
    /// sqrt(var + eps) * gamma + beta` per index of `axis` (the channels: 1 for `[N, C, H, W]`),
    /// with `mean`, `var`, `gamma` and `beta` `[C]` in this tensor's dtype and on its device.
    ///
    /// Differentiable in all five, to any order, under `vmap` and `jit`. Unless something is
    /// vmapped it is one node (the scale `gamma / sqrt(var + eps)` is computed first, `[C]`),
    /// whose value is one pass over `x` where the backend has batch norm's output kernel (the
    /// CPU and CUDA; elsewhere the broadcast ops compute it); the input gradient is one more
    /// pass, and the statistics' and the scale's gradients are per-channel sums. Under `vmap`
    /// it is the broadcast composition.
    ///
    /// # Panics
    /// When this tensor is not a float tensor, `axis` is out of range, or one of the statistics
    /// or parameters is not `[C]` of this tensor's dtype and device (the message names it).
    pub fn batch_norm_eval(
        &self,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        axis: isize,
        eps: f64,
    ) -> Tensor {
        require_float("batch_norm_eval", self);
        let a = normalize_axis("batch_norm_eval", axis, self.rank());
        self.check_per_channel(
            "batch_norm_eval",
            &[("mean", mean), ("var", var), ("gamma", gamma), ("beta", beta)],
            a,
        );
        let scale = (var + eps).rsqrt() * gamma;
        let plain = [self, mean, &scale, beta].iter().all(|t| !t.is_batched());
        if plain {
            let x = self.grouped_around(a);
            let value = scale_and_shift_value(&x, mean, &scale, beta);
            let y = Tensor::record(value.raw().clone(), &[&x, mean, &scale, beta], || ChannelAffineRule);
            return y.reshape(self.shape().to_vec());
        }
        let mut per_channel = vec![1; self.rank()];
        per_channel[a] = self.shape()[a];
        let c = |t: &Tensor| t.reshape(per_channel.clone());
        (self - c(mean)) * c(&scale) + c(beta)
    }
}

/// The rule of `y = (x - mean) scale + shift` per channel of `x` `[A, C, B]` (inputs `x`,
/// `mean`, `scale`, `shift`; the last three `[C]`), in broadcast ops and sums over `A` and `B`.
struct ChannelAffineRule;

/// `t` (`[C]`) seen as `[1, C, 1]`, to broadcast against `[A, C, B]`.
fn channel(t: &Tensor) -> Tensor {
    t.reshape([1, t.numel(), 1])
}

/// The sum of `t` (`[A, C, B]`) over every axis but the channels', `[C]`.
fn per_channel_sum(t: &Tensor) -> Tensor {
    t.sum(vec![0, 2], false)
}

impl Rule for ChannelAffineRule {
    fn name(&self) -> String {
        "channel_affine(axis=1)".to_string()
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        self.vjp_wanted(inputs, out, ct, &[true; 4])
    }
    fn vjp_wanted(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor, wanted: &[bool]) -> Vec<Option<Tensor>> {
        let (x, mean, scale) = (&inputs[0], &inputs[1], &inputs[2]);
        let shift_grad = (wanted[1] || wanted[3]).then(|| per_channel_sum(ct));
        vec![
            wanted[0].then(|| ct * channel(scale)),
            wanted[1].then(|| -(shift_grad.as_ref().expect("summed above") * scale)),
            wanted[2].then(|| per_channel_sum(&(ct * (x - channel(mean))))),
            wanted[3].then(|| shift_grad.expect("summed above")),
        ]
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let (x, mean, scale) = (&inputs[0], &inputs[1], &inputs[2]);
        let mut terms: Vec<Tensor> = Vec::new();
        let centred_tangent = match (&tangents[0], &tangents[1]) {
            (Some(tx), Some(tm)) => Some(tx - channel(tm)),
            (Some(tx), None) => Some(tx.clone()),
            (None, Some(tm)) => Some(-channel(tm)),
            (None, None) => None,
        };
        if let Some(t) = centred_tangent {
            terms.push(t * channel(scale));
        }
        if let Some(ts) = &tangents[2] {
            terms.push((x - channel(mean)) * channel(ts));
        }
        if let Some(tb) = &tangents[3] {
            terms.push(channel(tb));
        }
        let sum = terms.into_iter().reduce(|a, b| a + b)?;
        Some(sum.broadcast_to(x.shape()))
    }
}
