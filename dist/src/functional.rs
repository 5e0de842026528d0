//! The functional API's gradient sync: all-reduce any gradient pytree, bucketed the same way
//! `DataParallel` buckets, and a data-parallel `value_and_grad`.
//!
//! Each bucket is packed with tensor ops and reduced by a step that `nb::jit` records in its
//! tape (`Tensor::apply_external`), so a jitted data-parallel step replays its collectives, in
//! order, on every call instead of reusing the first call's reduced gradients.

use std::sync::Arc;

use nabla_core::ops::external::ExternalFn;
use nabla_core::storage::CpuBuffer;
use nabla_core::{DType, Tensor, Tree};

use crate::bucket::{plan, BUCKET_BYTES, FIRST_BUCKET_BYTES};
use crate::comm::HostBufMut;
use crate::error::{DistError, Result};
use crate::group::ProcessGroup;
use crate::shard::Shard;

/// The mean of `grads` over the ranks (every rank's tree weighted 1 / world size).
pub fn all_reduce_mean<P: Tree>(group: &ProcessGroup, grads: &P) -> Result<P> {
    all_reduce_weighted(group, grads, 1.0 / group.world_size() as f64)
}

/// The sum over the ranks of `weight` times each rank's `grads`: with `weight` the rank's share
/// of the global batch ([`Shard::weight`]), the gradient of the mean loss over the global batch
/// even when shards are uneven. Every rank must call it with trees of the same leaves.
pub fn all_reduce_weighted<P: Tree>(group: &ProcessGroup, grads: &P, weight: f64) -> Result<P> {
    let leaves = grads.leaves();
    for (i, t) in leaves.iter().enumerate() {
        if !matches!(t.dtype(), DType::F32 | DType::F64) {
            return Err(DistError::Usage(format!(
                "all_reduce: leaf {i} ({:?}) is {}; only f32 and f64 values are reduced",
                t.shape(),
                t.dtype()
            )));
        }
    }
    if group.world_size() == 1 && weight == 1.0 {
        return Ok(grads.map_leaves(|t| t.stop_gradient()));
    }
    let sizes: Vec<(DType, usize)> = leaves.iter().map(|t| (t.dtype(), t.numel())).collect();
    let plan = plan(&sizes, FIRST_BUCKET_BYTES, BUCKET_BYTES);
    let mut out: Vec<Option<Tensor>> = vec![None; leaves.len()];
    for bucket in &plan.buckets {
        let parts: Vec<Tensor> = bucket
            .leaves
            .iter()
            .map(|&l| leaves[l].stop_gradient().reshape([-1]))
            .collect();
        let packed = nabla_core::concatenate(&parts, 0) * weight;
        let reduced = packed.apply_external("all_reduce", reduce_step(group.clone()));
        for (k, &l) in bucket.leaves.iter().enumerate() {
            let start = bucket.offsets[k] as isize;
            let stop = start + leaves[l].numel() as isize;
            out[l] = Some(
                reduced
                    .slice_axis(0, Some(start), Some(stop), 1)
                    .reshape(leaves[l].shape()),
            );
        }
    }
    Ok(grads.rebuild(out.into_iter().map(|t| t.expect("every leaf is in a bucket")).collect()))
}

/// The all-reduce as a step over host values. A failed collective ends the job (the panic
/// hook of `init` aborts every rank), since the ranks can no longer agree.
fn reduce_step(group: ProcessGroup) -> ExternalFn {
    Arc::new(move |buf: CpuBuffer| {
        let fail = |e: DistError| -> ! { panic!("{e}") };
        match buf {
            CpuBuffer::F32(v) => {
                let mut v = Arc::unwrap_or_clone(v);
                group
                    .all_reduce_sum(HostBufMut::F32(&mut v))
                    .unwrap_or_else(|e| fail(e));
                CpuBuffer::F32(Arc::new(v))
            }
            CpuBuffer::F64(v) => {
                let mut v = Arc::unwrap_or_clone(v);
                group
                    .all_reduce_sum(HostBufMut::F64(&mut v))
                    .unwrap_or_else(|e| fail(e));
                CpuBuffer::F64(Arc::new(v))
            }
            other => panic!("all_reduce: {} values are not reduced", other.dtype()),
        }
    })
}

/// A data-parallel `value_and_grad`: on each rank, the loss and gradients of `f` on its shard,
/// then both averaged over the ranks with the shard's weight (one bucketed all-reduce that
/// carries the loss with the gradients). Returns the global mean loss and its gradient.
pub fn value_and_grad<P: Tree, F: Fn(&P) -> Tensor>(
    group: &ProcessGroup,
    f: F,
) -> impl Fn(&P, Shard) -> Result<(Tensor, P)> {
    let group = group.clone();
    move |params: &P, shard: Shard| {
        let local = nabla_core::value_and_grad(&f)(params);
        all_reduce_weighted(&group, &local, shard.weight())
    }
}
