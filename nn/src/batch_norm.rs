//! Batch normalisation (PyTorch's `BatchNorm1d`/`BatchNorm2d`, Flax's `BatchNorm`): each
//! channel of a batch normalised with the mean and variance of that channel over the batch
//! while training, and with running averages of them at evaluation.
//!
//! The learned scale and shift are parameters ([`BatchNorm`], a pytree an optimizer updates);
//! the running averages are state ([`BatchStats`], a separate pytree that a training step takes
//! and returns, as Flax's `batch_stats` collection), so an optimizer never decays or moves them.
//! With data parallelism the statistics can be those of the global batch
//! ([`BatchNorm::forward_train_synced`] with `nb::dist::psum`: PyTorch's `SyncBatchNorm`).

use nabla_core::{DType, Tensor, concatenate};
use nabla_derive::Tree;

/// The learned part of a batch norm over `C` channels: `y = (x - mean) / sqrt(var + eps) *
/// gamma + beta` per channel, for inputs `[N, C, ...]` (channels on axis 1: `[N, C]` features
/// or `[N, C, H, W]` images).
#[derive(Clone, Debug, Tree)]
pub struct BatchNorm {
    /// Scale, `[C]` (ones at first).
    pub gamma: Tensor,
    /// Shift, `[C]` (zeros at first).
    pub beta: Tensor,
    /// Added to the variance (1e-5, as PyTorch).
    #[tree(skip)]
    pub eps: f64,
    /// The weight of a batch's statistics in the running averages (0.1, as PyTorch:
    /// `running = (1 - momentum) running + momentum batch`; Flax's `momentum` is `1 -` this).
    #[tree(skip)]
    pub momentum: f64,
}

/// The running averages of a [`BatchNorm`]'s batch statistics, used at evaluation: the mean
/// and the unbiased variance of each channel (zeros and ones at first, as PyTorch). Kept in
/// f32 for half-precision layers.
#[derive(Clone, Debug, Tree)]
pub struct BatchStats {
    /// Running mean, `[C]`.
    pub mean: Tensor,
    /// Running unbiased variance, `[C]`.
    pub var: Tensor,
}

/// The dtype statistics are computed and kept in: f32 for half-precision values.
fn stats_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

impl BatchNorm {
    /// A batch norm over `channels` channels with its running statistics (eps 1e-5, momentum
    /// 0.1).
    pub fn new(channels: usize, dtype: DType) -> (BatchNorm, BatchStats) {
        let layer = BatchNorm {
            gamma: Tensor::ones(&[channels], dtype),
            beta: Tensor::zeros(&[channels], dtype),
            eps: 1e-5,
            momentum: 0.1,
        };
        let stats = BatchStats {
            mean: Tensor::zeros(&[channels], stats_dtype(dtype)),
            var: Tensor::ones(&[channels], stats_dtype(dtype)),
        };
        (layer, stats)
    }

    /// Training mode: `x` normalised with its own batch statistics (the mean and biased
    /// variance of each channel over every axis but 1), and the running statistics updated
    /// with them (the variance unbiased). The statistics are differentiated through, as in
    /// every framework; the new running statistics are not traced.
    pub fn forward_train(&self, x: &Tensor, stats: &BatchStats) -> (Tensor, BatchStats) {
        self.train(x, stats, None)
    }

    /// Training mode with the statistics of the global batch: `sum_over_ranks` sums a tensor
    /// over the data-parallel ranks, differentiably (`|t| nb::dist::psum(&group, t)`), so that
    /// every rank normalises with the mean and variance of all ranks' examples and gets its
    /// share of their gradient (PyTorch's `SyncBatchNorm`). Two sums run forward (the sums with
    /// the example count, then the squared deviations) and two backward, per layer. Ranks may
    /// hold different numbers of examples; the running statistics come out equal on every rank.
    /// With the identity for `sum_over_ranks` it is [`BatchNorm::forward_train`]. The
    /// gradients are those of the global batch when every rank differentiates its share of
    /// the global loss and the gradients are summed, or with equal shards each shard's mean
    /// loss averaged by `DataParallel` (see `nb::dist::psum`). The global example count
    /// travels in the input's float dtype (exact up to 2^24 values per channel in f32) and is
    /// not checked on the host (that would stop a jitted step): a global batch of one value per
    /// channel gives an infinite running variance.
    pub fn forward_train_synced(
        &self,
        x: &Tensor,
        stats: &BatchStats,
        sum_over_ranks: &dyn Fn(&Tensor) -> Tensor,
    ) -> (Tensor, BatchStats) {
        self.train(x, stats, Some(sum_over_ranks))
    }

    /// Evaluation mode: `x` normalised with the running statistics.
    pub fn forward_eval(&self, x: &Tensor, stats: &BatchStats) -> Tensor {
        self.check("forward_eval", x, stats);
        let dtype = stats_dtype(x.dtype());
        let xc = x.cast(dtype);
        let shape = self.channel_shape(x);
        let mean = stats.mean.stop_gradient().cast(dtype).reshape(shape.clone());
        let rstd = (stats.var.stop_gradient().cast(dtype) + self.eps)
            .rsqrt()
            .reshape(shape.clone());
        self.scale_and_shift(&(xc - mean), &rstd, &shape).cast(x.dtype())
    }

    /// The shared training pass: statistics of this process's batch (`None`: one fused
    /// primitive on the CPU, `Tensor::batch_norm`) or summed over the ranks with `sum`.
    fn train(&self, x: &Tensor, stats: &BatchStats, sum: Option<&dyn Fn(&Tensor) -> Tensor>) -> (Tensor, BatchStats) {
        let what = if sum.is_some() {
            "forward_train_synced"
        } else {
            "forward_train"
        };
        self.check(what, x, stats);
        let dtype = stats_dtype(x.dtype());
        let xc = x.cast(dtype);
        let shape = self.channel_shape(x);
        let channels = shape[0];
        let local_count = x.numel() / channels.max(1);
        let (gamma, beta) = (self.gamma.cast(dtype), self.beta.cast(dtype));
        // The output, the batch's mean and biased variance ([C], not traced), and the unbiased
        // variance's factor n / (n - 1).
        let (y, mean, var, unbias) = match sum {
            None => {
                if local_count < 2 {
                    panic!(
                        "BatchNorm::forward_train: an input of shape {:?} has {local_count} value per channel; \
                         batch statistics need at least 2 (use a larger batch, or forward_eval)",
                        x.shape()
                    );
                }
                let (y, mean, var) = xc.batch_norm(&gamma, &beta, 1, self.eps);
                let n = local_count as f64;
                let unbias = Tensor::full_on(&[], n / (n - 1.0), dtype, x.device());
                (y, mean, var, unbias)
            }
            Some(sum) => {
                let axes: Vec<isize> = (0..x.rank() as isize).filter(|&a| a != 1).collect();
                // The channel sums and this rank's example count travel in one collective.
                let count = Tensor::full_on(&[1], local_count as f64, dtype, x.device());
                let totals = sum(&concatenate(&[xc.sum(axes.clone(), false), count], 0));
                let count = totals.slice_axis(0, Some(channels as isize), None, 1);
                let total = totals.slice_axis(0, Some(0), Some(channels as isize), 1);
                let mean = (total / &count).reshape(shape.clone());
                let centred = &xc - &mean;
                let var = (sum(&centred.square().sum(axes, false)) / &count).reshape(shape.clone());
                let y =
                    centred * (&var + self.eps).rsqrt() * gamma.reshape(shape.clone()) + beta.reshape(shape.clone());
                let count = count.stop_gradient();
                let unbias = &count / (&count - 1.0);
                let flat = |t: &Tensor| t.stop_gradient().reshape([channels]);
                (y, flat(&mean), flat(&var), unbias)
            }
        };
        let y = y.cast(x.dtype());
        let m = self.momentum;
        let update = |running: &Tensor, batch: Tensor| {
            let running = running.stop_gradient();
            (running.cast(dtype) * (1.0 - m) + batch * m).cast(running.dtype())
        };
        let new = BatchStats {
            mean: update(&stats.mean, mean),
            var: update(&stats.var, var * unbias),
        };
        (y, new)
    }

    /// `centred * rstd * gamma + beta`, with the per-channel factors multiplied first.
    fn scale_and_shift(&self, centred: &Tensor, rstd: &Tensor, shape: &[usize]) -> Tensor {
        let dtype = centred.dtype();
        let factor = rstd * self.gamma.cast(dtype).reshape(shape.to_vec());
        centred * factor + self.beta.cast(dtype).reshape(shape.to_vec())
    }

    /// `[C, 1, ...]`: a per-channel vector's shape against `x`.
    fn channel_shape(&self, x: &Tensor) -> Vec<usize> {
        let mut shape = vec![1; x.rank() - 1];
        shape[0] = x.shape()[1];
        shape
    }

    /// Refuses, naming the call, inputs without channels on axis 1 that match the layer's.
    fn check(&self, what: &str, x: &Tensor, stats: &BatchStats) {
        let channels = self.gamma.numel();
        if x.rank() < 2 || x.shape()[1] != channels || !x.dtype().is_float() {
            panic!(
                "BatchNorm::{what}: expected a float input [N, {channels}, ...] (channels on axis 1), got shape {:?} ({}); \
                 move the channels to axis 1 (x.permute) or build the layer for {} channels",
                x.shape(),
                x.dtype(),
                x.shape().get(1).copied().unwrap_or(0)
            );
        }
        for (name, t) in [
            ("beta", &self.beta),
            ("stats.mean", &stats.mean),
            ("stats.var", &stats.var),
        ] {
            if t.shape() != [channels] {
                panic!(
                    "BatchNorm::{what}: {name} has shape {:?}, gamma has [{channels}]: the layer and its statistics must \
                     have one value per channel",
                    t.shape()
                );
            }
        }
    }
}
