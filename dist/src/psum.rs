//! The differentiable sum across processes (JAX's `psum`): what synchronised batch
//! normalisation and other cross-rank statistics are built from.
//!
//! Its derivative is itself: with every rank's loss depending on the sum, the cotangent of a
//! rank's input is the sum of every rank's cotangent of the result, so the backward pass runs
//! the same collective again. Every rank must therefore call it, and differentiate through it,
//! in the same order (as for every collective).

use std::sync::Arc;

use nabla_core::ops::external::LinearStepFn;
use nabla_core::{CrossRankSum, DType, Tensor};

use crate::functional::{device_reduce_step, reduce_step};
use crate::group::ProcessGroup;

/// The elementwise sum of `x` over the ranks of `group`, differentiable in every mode:
/// `grad`, `jvp`, `backward` and higher orders send tangents and cotangents through the same
/// collective, and `jit` replays it on every call.
///
/// Tensors on a device with a device transport (NCCL) are summed there; others on the host.
/// Half-precision values are summed in f32 and rounded once. Every rank must call it with a
/// tensor of the same shape and dtype. At world size 1 it is the identity.
///
/// Its derivative is right for the sum of every rank's loss. So differentiate, on each rank,
/// that rank's share of the global loss and sum the gradients over the ranks; or weight every
/// rank alike: with equal shards, the mean loss of each shard and `DataParallel`'s mean over
/// the ranks (PyTorch's `SyncBatchNorm` under DDP). With uneven shards, `DataParallel`'s
/// per-shard weights ([`crate::DataParallel::set_shard_sizes`]) would weight the cross-rank
/// terms wrongly. Under `DataParallel`, psum's backward collectives run inside the sweep on
/// the group given here, while host gradient buckets travel on the wrapper's own duplicate of
/// its group (its worker thread). A device transport (NCCL) is shared by the duplicates; its
/// buckets and psum's collectives are both issued from the sweep's thread, in sweep order,
/// which is what keeps them apart: keep it that way.
///
/// # Panics
/// On a non-float tensor, and when the collective fails: the ranks can no longer agree, so the
/// job ends (the panic names the rank, the call and the group).
pub fn psum(group: &ProcessGroup, x: &Tensor) -> Tensor {
    if !x.dtype().is_float() {
        panic!(
            "psum: {} values of shape {:?} cannot be summed across ranks; cast them to a float dtype",
            x.dtype(),
            x.shape()
        );
    }
    if group.world_size() == 1 {
        return x.clone();
    }
    let step = sum_step(group.clone());
    x.apply_linear_step("psum", step.clone(), step)
}

/// [`psum`] over `group` as a [`CrossRankSum`]: for the ops that sum again in their backward
/// pass (`BatchNorm::forward_train_synced`, `Tensor::batch_norm_synced`). The group is cloned
/// into it.
pub fn cross_rank_sum(group: &ProcessGroup) -> CrossRankSum {
    let group = group.clone();
    CrossRankSum::new(move |t| psum(&group, t))
}

/// The sum over the ranks of a plain tensor, as a step `jit` records: through the group's
/// device transport where it has one for the tensor's device, else on the host.
fn sum_step(group: ProcessGroup) -> LinearStepFn {
    Arc::new(move |t: &Tensor| {
        let half = matches!(t.dtype(), DType::BF16 | DType::F16);
        let wide = if half { t.cast(DType::F32) } else { t.clone() };
        let summed = match group.device_communicator(wide.device()) {
            Some(_) => wide.apply_device_step("psum", device_reduce_step(group.clone(), 1.0)),
            None => wide.apply_external("psum", reduce_step(group.clone())),
        };
        if half { summed.cast(t.dtype()) } else { summed }
    })
}
