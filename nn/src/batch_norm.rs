//! Batch normalisation (PyTorch's `BatchNorm1d`/`BatchNorm2d`, Flax's `BatchNorm`): each
//! channel of a batch normalised with the mean and variance of that channel over the batch
//! while training, and with running averages of them at evaluation.
//!
//! The learned scale and shift are parameters ([`BatchNorm`], a pytree an optimizer updates);
//! the running averages are state ([`BatchStats`], a separate pytree that a training step takes
//! and returns, as Flax's `batch_stats` collection), so an optimizer never decays or moves them.
//! With data parallelism the statistics can be those of the global batch
//! ([`BatchNorm::forward_train_synced`] with `nb::dist::cross_rank_sum`: PyTorch's
//! `SyncBatchNorm`).

use nabla_core::{CrossRankSum, DType, Tensor};
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
    /// over the data-parallel ranks, differentiably (`nb::dist::cross_rank_sum(&group)`), so
    /// that every rank normalises with the mean and variance of all ranks' examples and gets
    /// its share of their gradient (PyTorch's `SyncBatchNorm`; `Tensor::batch_norm_synced`).
    /// One collective runs forward and one backward per layer where the backend has batch
    /// norm's kernels (the CPU and CUDA), two each way otherwise. Ranks may hold different
    /// numbers of examples; the running statistics come out equal on every rank. With
    /// `CrossRankSum::identity()` it is [`BatchNorm::forward_train`]. The gradients are those
    /// of the global batch when every rank differentiates its share of the global loss and the
    /// gradients are summed, or with equal shards each shard's mean loss averaged by
    /// `DataParallel` (see `nb::dist::psum`). The global example count is not checked on the
    /// host (that would stop a jitted step): a global batch of one value per channel gives an
    /// infinite running variance.
    pub fn forward_train_synced(
        &self,
        x: &Tensor,
        stats: &BatchStats,
        sum_over_ranks: &CrossRankSum,
    ) -> (Tensor, BatchStats) {
        self.train(x, stats, Some(sum_over_ranks))
    }

    /// Evaluation mode: `x` normalised with the running statistics.
    pub fn forward_eval(&self, x: &Tensor, stats: &BatchStats) -> Tensor {
        self.check("forward_eval", x, stats);
        let dtype = stats_dtype(x.dtype());
        let (mean, var) = (stats.mean.stop_gradient(), stats.var.stop_gradient());
        let (gamma, beta) = (self.gamma.cast(dtype), self.beta.cast(dtype));
        x.cast(dtype)
            .batch_norm_eval(&mean.cast(dtype), &var.cast(dtype), &gamma, &beta, 1, self.eps)
            .cast(x.dtype())
    }

    /// The shared training pass: statistics of this process's batch (`None`) or of every
    /// rank's, summed with `sum`.
    fn train(&self, x: &Tensor, stats: &BatchStats, sum: Option<&CrossRankSum>) -> (Tensor, BatchStats) {
        let what = if sum.is_some() {
            "forward_train_synced"
        } else {
            "forward_train"
        };
        self.check(what, x, stats);
        let dtype = stats_dtype(x.dtype());
        let xc = x.cast(dtype);
        let (gamma, beta) = (self.gamma.cast(dtype), self.beta.cast(dtype));
        // The output, the batch's mean and biased variance ([C], not traced), and the unbiased
        // variance's factor n / (n - 1).
        let (y, mean, var, unbias) = match sum {
            None => {
                let local_count = x.numel() / self.gamma.numel().max(1);
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
                let (y, mean, var, count) = xc.batch_norm_synced(&gamma, &beta, 1, self.eps, sum);
                let unbias = &count / (&count - 1.0);
                (y, mean, var, unbias)
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
