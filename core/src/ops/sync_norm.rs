//! Batch normalisation with the statistics of the global batch, over data-parallel ranks
//! (PyTorch's `SyncBatchNorm`): [`Tensor::batch_norm_synced`] and [`CrossRankSum`], the
//! differentiable cross-rank sum it is given (`nb::dist::cross_rank_sum`).
//!
//! Where the backend has batch norm's kernels it is one primitive: the local moments (the
//! fused kernel), one collective of `2 C + 1` f64 values (the ranks' sums, their sums of
//! squared deviations about their own means plus `n mean^2`, and their counts), and the output
//! in one pass; its backward is the local sums `sum(g x_hat)`, `sum(g)` (one kernel), one
//! collective of `2 C` values, and the input gradient (one kernel). The scale's and shift's
//! gradients are this rank's sums: data parallelism adds them over the ranks. Elsewhere,
//! under `vmap`, and for higher derivatives it is the composition (two collectives forward:
//! the sums with the counts, then the squared deviations about the global mean).

use std::fmt;
use std::sync::Arc;

use super::norm::{AROUND_CHANNELS, cotangent_alike, scale_and_shift_value, unpack_batch_norm_grads};
use super::require_float;
use super::shape::concatenate;
use crate::dtype::DType;
use crate::shape::normalize_axis;
use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::transforms::custom::{composition_jvp, composition_vjp};

/// A differentiable sum of a tensor over the data-parallel ranks, every rank calling it with
/// the same shape and dtype in the same order (`nb::dist::cross_rank_sum(&group)` binds
/// `nb::dist::psum` to a group). Cheap to clone; the ops that take it keep it for their
/// backward pass, which sums again.
#[derive(Clone)]
pub struct CrossRankSum(Arc<dyn Fn(&Tensor) -> Tensor + Send + Sync>);

impl CrossRankSum {
    /// The sum `sum` (differentiable: its derivative is itself, as `psum`'s).
    pub fn new(sum: impl Fn(&Tensor) -> Tensor + Send + Sync + 'static) -> CrossRankSum {
        CrossRankSum(Arc::new(sum))
    }

    /// One process: the identity.
    pub fn identity() -> CrossRankSum {
        CrossRankSum::new(Tensor::clone)
    }

    /// `x` summed over the ranks.
    pub fn sum(&self, x: &Tensor) -> Tensor {
        (self.0)(x)
    }
}

impl fmt::Debug for CrossRankSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CrossRankSum")
    }
}

impl Tensor {
    /// Batch normalisation in training mode with the statistics of the global batch: `(x -
    /// mean) / sqrt(var + eps) * gamma + beta` per index of `axis` (the channels), the mean
    /// and biased variance taken over every other axis of every rank's `x` (ranks may hold
    /// different numbers of examples). Returns the output, the global mean and biased variance
    /// (`[C]`, not traced) and the global number of values per channel (a 0-d tensor, not
    /// traced, in this tensor's dtype: for the unbiased running variance).
    ///
    /// The derivative is that of the sum of every rank's loss (see `nb::dist::psum`): the
    /// input's gradient uses the cotangent sums of every rank; `gamma`'s and `beta`'s are this
    /// rank's share. See the module's docs for the collectives; every rank must take the same
    /// path (the same backend), since the fused and the composed forms make different
    /// collectives.
    pub fn batch_norm_synced(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        axis: isize,
        eps: f64,
        sum: &CrossRankSum,
    ) -> (Tensor, Tensor, Tensor, Tensor) {
        require_float("batch_norm_synced", self);
        let a = normalize_axis("batch_norm_synced", axis, self.rank());
        self.check_scale_and_shift("batch_norm_synced", gamma, beta, a);
        let shape = self.shape().to_vec();
        let plain = !self.is_batched() && !gamma.is_batched() && !beta.is_batched();
        if plain && let Some((x, mean, var)) = self.fused_moments(a) {
            let (y, mean, var, count) = fused_synced_forward(&x, gamma, beta, (&mean, &var), eps, sum);
            return (y.reshape(shape), mean, var, count);
        }
        let x = self.grouped_around(a);
        let (y, mean, var, count) = synced_composed(&x, gamma, beta, eps, sum);
        let stop = |t: Tensor| t.stop_gradient();
        (y.reshape(shape), stop(mean), stop(var), stop(count))
    }
}

/// The fused forward over `x` `[A, C, B]` with this rank's moments: one collective of the
/// f64 sums, the output in one pass, recorded with [`SyncedBatchNormRule`].
fn fused_synced_forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
    sum: &CrossRankSum,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let c = gamma.shape()[0];
    let dtype = x.dtype();
    let n = (x.numel() / c.max(1)) as f64;
    // Per rank: n mean, n (var + mean^2) (its sum of squares, from the stable moments), n.
    let (m, v) = (mean.cast(DType::F64), var.cast(DType::F64));
    let local = concatenate(
        &[
            &m * n,
            (v + m.square()) * n,
            Tensor::full_on(&[1], n, DType::F64, x.device()),
        ],
        0,
    );
    let totals = sum.sum(&local).stop_gradient();
    let part = |k: usize, len: usize| totals.slice_axis(0, Some(k as isize), Some((k + len) as isize), 1);
    let count = part(2 * c, 1).reshape(Vec::<usize>::new());
    let mean = part(0, c) / &count;
    // In f64 the difference of the two sums loses about (mean / std)^2 ulps of the variance.
    let var = (part(c, c) / &count - mean.square()).maximum_scalar(0.0);
    let (mean, var) = (mean.cast(dtype), var.cast(dtype));
    let rstd = (&var + eps).rsqrt();
    let value = scale_and_shift_value(x, &mean, &(&rstd * gamma.stop_gradient()), &beta.stop_gradient());
    let rule = SyncedBatchNormRule {
        eps,
        mean: mean.clone(),
        rstd,
        count: count.clone(),
        sum: sum.clone(),
    };
    let y = Tensor::record(value.raw().clone(), &[x, gamma, beta], || rule);
    let count = count.cast(dtype);
    (y, mean, var, count)
}

/// The statistics of the global batch of `x` `[A, C, B]`, composed of primitives with two
/// collectives (differentiable in `x`): the mean `[C]`, the biased variance `[C]` and the
/// count (0-d).
fn synced_stats_composed(x: &Tensor, eps: f64, sum: &CrossRankSum) -> (Tensor, Tensor, Tensor, Tensor) {
    let axes = &AROUND_CHANNELS[..];
    let c = x.shape()[1];
    // The channel sums and this rank's count travel in one collective.
    let n = Tensor::full_on(&[1], (x.numel() / c.max(1)) as f64, x.dtype(), x.device());
    let totals = sum.sum(&concatenate(&[x.sum(axes, false), n], 0));
    let count = totals.slice_axis(0, Some(c as isize), None, 1);
    let mean = totals.slice_axis(0, Some(0), Some(c as isize), 1) / &count;
    let centred = x - mean.reshape([1, c, 1]);
    let var = sum.sum(&centred.square().sum(axes, false)) / &count;
    let rstd = (&var + eps).rsqrt().reshape([1, c, 1]);
    (mean, var, count.reshape(Vec::<usize>::new()), centred * rstd)
}

/// Synchronised batch norm of `x` `[A, C, B]` composed of primitives: the output, the mean,
/// the biased variance and the count (differentiable).
fn synced_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    sum: &CrossRankSum,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let c = gamma.shape()[0];
    let (mean, var, count, x_hat) = synced_stats_composed(x, eps, sum);
    let y = x_hat * gamma.reshape([1, c, 1]) + beta.reshape([1, c, 1]);
    (y, mean, var, count)
}

/// The backward pass of [`synced_composed`]'s output at the cotangent `g`, packed as the fused
/// one: `dx` flattened (from every rank's cotangent sums), then this rank's `dgamma`, `dbeta`.
fn synced_backward_composed(x: &Tensor, g: &Tensor, gamma: &Tensor, eps: f64, sum: &CrossRankSum) -> Tensor {
    let axes = &AROUND_CHANNELS[..];
    let c = gamma.shape()[0];
    let (_, var, count, x_hat) = synced_stats_composed(x, eps, sum);
    let rstd = (var + eps).rsqrt().reshape([1, c, 1]);
    let (s_gx, s_g) = ((g * &x_hat).sum(axes, false), g.sum(axes, false));
    let totals = sum.sum(&concatenate(&[s_gx.clone(), s_g.clone()], 0)) / &count;
    let (m_gx, m_g) = (
        totals.slice_axis(0, Some(0), Some(c as isize), 1).reshape([1, c, 1]),
        totals.slice_axis(0, Some(c as isize), None, 1).reshape([1, c, 1]),
    );
    let dx = gamma.reshape([1, c, 1]) * rstd * (g - m_g - x_hat * m_gx);
    concatenate(&[dx.reshape([x.numel()]), s_gx, s_g], 0)
}

/// The derivative rule of the fused synchronised batch norm of `x` `[A, C, B]`, `gamma` and
/// `beta`, with the forward's global statistics (untraced) and the cross-rank sum.
struct SyncedBatchNormRule {
    eps: f64,
    mean: Tensor,
    rstd: Tensor,
    /// The global count, 0-d f64.
    count: Tensor,
    sum: CrossRankSum,
}

impl SyncedBatchNormRule {
    /// The forward as a composition of its inputs (for the fallbacks).
    fn composed(&self, t: &[Tensor]) -> Tensor {
        synced_composed(&t[0], &t[1], &t[2], self.eps, &self.sum).0
    }

    /// `[dx, dgamma, dbeta]` from the fused kernels around one collective, when the backend
    /// has them.
    fn fused_backward(&self, x: &Tensor, ct: &Tensor, gamma: &Tensor) -> Option<Tensor> {
        let be = x.backend();
        let sums = be.batch_norm_backward_sums(x.raw(), ct.raw(), self.mean.raw(), self.rstd.raw())?;
        let local = Tensor::untraced(sums, &[x]);
        let means = self.sum.sum(&local).stop_gradient() / self.count.cast(local.dtype());
        let dx = be
            .batch_norm_backward_input(
                x.raw(),
                ct.raw(),
                self.mean.raw(),
                self.rstd.raw(),
                gamma.raw(),
                means.raw(),
            )
            .expect("a backend with batch norm's sums has its input gradient");
        let dx = Tensor::untraced(dx, &[x]);
        let packed = concatenate(
            &[dx.reshape([x.numel()]), local.reshape([local.numel()]).cast(x.dtype())],
            0,
        );
        let (eps, sum) = (self.eps, self.sum.clone());
        Some(Tensor::record(packed.raw().clone(), &[x, ct, gamma], || {
            SyncedBatchNormBackwardRule { eps, sum }
        }))
    }
}

impl Rule for SyncedBatchNormRule {
    fn name(&self) -> String {
        format!("batch_norm_synced(axis=1, eps={})", self.eps)
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        self.vjp_wanted(inputs, out, ct, &[true, true, true])
    }
    fn vjp_wanted(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor, wanted: &[bool]) -> Vec<Option<Tensor>> {
        let (x, gamma) = (&inputs[0], &inputs[1]);
        match cotangent_alike(x, ct)
            .then(|| self.fused_backward(x, ct, gamma))
            .flatten()
        {
            Some(packed) => unpack_batch_norm_grads(&packed, x, gamma, wanted),
            None => composition_vjp(|t| self.composed(t), inputs, ct),
        }
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        composition_jvp(|t| self.composed(t), inputs, tangents)
    }
}

/// The derivatives of the fused synchronised backward pass (second and higher derivatives):
/// those of its composition.
struct SyncedBatchNormBackwardRule {
    eps: f64,
    sum: CrossRankSum,
}

impl SyncedBatchNormBackwardRule {
    fn composed(&self, t: &[Tensor]) -> Tensor {
        synced_backward_composed(&t[0], &t[1], &t[2], self.eps, &self.sum)
    }
}

impl Rule for SyncedBatchNormBackwardRule {
    fn name(&self) -> String {
        format!("batch_norm_synced_backward(axis=1, eps={})", self.eps)
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        composition_vjp(|t| self.composed(t), inputs, ct)
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        composition_jvp(|t| self.composed(t), inputs, tangents)
    }
}
