//! The functional API's gradient sync: all-reduce any gradient pytree, bucketed the same way
//! `DataParallel` buckets, and a data-parallel `value_and_grad`.
//!
//! Each bucket is packed with tensor ops and reduced by a step that `nb::jit` records in its
//! tape (`Tensor::apply_device_step` through a device transport such as NCCL, else
//! `Tensor::apply_external` on the host), so a jitted data-parallel step replays its
//! collectives, in order, on every call instead of reusing the first call's reduced gradients.

use std::sync::Arc;

use nabla_core::ops::external::{DeviceStepFn, ExternalFn};
use nabla_core::storage::CpuBuffer;
use nabla_core::{DType, Tensor, Tree};

use crate::bucket::{BUCKET_BYTES, FIRST_BUCKET_BYTES, plan};
use crate::comm::HostBufMut;
use crate::error::{DistError, Result};
use crate::group::ProcessGroup;
use crate::pack::{concat_bucket, unpack};
use crate::queue::BucketQueue;
use crate::shard::Shard;
use crate::worker::Worker;

/// The mean of `grads` over the ranks (every rank's tree weighted 1 / world size).
pub fn all_reduce_mean<P: Tree>(group: &ProcessGroup, grads: &P) -> Result<P> {
    all_reduce_weighted(group, grads, 1.0 / group.world_size() as f64)
}

/// The sum over the ranks of `weight` times each rank's `grads`: with `weight` the rank's share
/// of the global batch ([`Shard::weight`]), the gradient of the mean loss over the global batch
/// even when shards are uneven. Every rank must call it with trees of the same leaves.
pub fn all_reduce_weighted<P: Tree>(group: &ProcessGroup, grads: &P, weight: f64) -> Result<P> {
    let leaves = grads.leaves();
    crate::check::float_leaves("all_reduce", &leaves)?;
    if group.world_size() == 1 && weight == 1.0 {
        return Ok(grads.map_leaves(|t| t.stop_gradient()));
    }
    let sizes: Vec<(DType, usize)> = leaves.iter().map(|t| (t.dtype(), t.numel())).collect();
    let numels: Vec<usize> = leaves.iter().map(Tensor::numel).collect();
    let plan = plan(&sizes, FIRST_BUCKET_BYTES, BUCKET_BYTES);
    let mut out: Vec<Option<Tensor>> = vec![None; leaves.len()];
    for bucket in &plan.buckets {
        // Packed and cut back as DataParallel does (halves travel and are summed in f32).
        let grads: Vec<Option<Tensor>> = bucket.leaves.iter().map(|&l| Some(leaves[l].stop_gradient())).collect();
        let packed = concat_bucket(bucket, &grads, &numels, leaves[bucket.leaves[0]].device());
        let reduced = match group.device_communicator(packed.device()) {
            // A device transport sums where the bucket lives. Under `nb::jit` it runs as one
            // recorded step, so that every replay repeats the collective.
            Some(_) if nabla_core::jit::is_recording() => {
                packed.apply_device_step("all_reduce", device_reduce_step(group.clone(), weight))
            }
            Some(_) => device_reduce(group, &packed, weight)?,
            None => (packed * weight).apply_external("all_reduce", reduce_step(group.clone())),
        };
        let like: Vec<&Tensor> = bucket.leaves.iter().map(|&l| &leaves[l]).collect();
        for (&l, g) in bucket.leaves.iter().zip(unpack(bucket, &reduced, &like)) {
            out[l] = Some(g);
        }
    }
    Ok(grads.rebuild(out.into_iter().map(|t| t.expect("every leaf is in a bucket")).collect()))
}

/// The sum over the ranks of `weight` times `packed`, through the group's device transport.
/// The weighting makes the fresh buffer that the transport may sum in place (under `jit` the
/// packed bucket is also held by the tape).
fn device_reduce(group: &ProcessGroup, packed: &Tensor, weight: f64) -> Result<Tensor> {
    let reduced = group.device_all_reduce_sum(packed * weight)?;
    group.device_finish(reduced.device())?;
    Ok(reduced)
}

/// [`device_reduce`] as a step that `nb::jit` records and replays. A failed collective ends
/// the job, as in [`reduce_step`].
pub(crate) fn device_reduce_step(group: ProcessGroup, weight: f64) -> DeviceStepFn {
    Arc::new(move |packed: Tensor| device_reduce(&group, &packed, weight).unwrap_or_else(|e| panic!("{e}")))
}

/// The all-reduce as a step over host values. A failed collective ends the job (the panic
/// hook of `init` aborts every rank), since the ranks can no longer agree.
pub(crate) fn reduce_step(group: ProcessGroup) -> ExternalFn {
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
/// both averaged over the ranks with the shard's weight. Returns the global mean loss and its
/// gradient.
///
/// Eagerly, each bucket's all-reduce starts on a communication thread as soon as the reverse
/// sweep has finished its leaves (the pullback reports them), so communication overlaps the rest
/// of the sweep, as in `DataParallel`. While `nb::jit` records, it takes the recordable path
/// instead ([`all_reduce_weighted`] after the sweep), so replays repeat the collectives.
pub fn value_and_grad<P: Tree, F: Fn(&P) -> Tensor>(
    group: &ProcessGroup,
    f: F,
) -> impl Fn(&P, Shard) -> Result<(Tensor, P)> {
    let group = group.clone();
    // Its own duplicate of the group and communication thread, made at the first call (every
    // rank makes that call at the same point): the sweep may run user code (a custom rule)
    // that uses the caller's group, whose calls must not interleave with the buckets'.
    let own: std::sync::OnceLock<(ProcessGroup, Worker)> = std::sync::OnceLock::new();
    move |params: &P, shard: Shard| {
        if group.world_size() == 1 {
            let local = nabla_core::value_and_grad(&f)(params);
            return all_reduce_weighted(&group, &local, shard.weight());
        }
        let (dup, worker) = match own.get() {
            Some(o) => o,
            None => {
                let dup = group.duplicate("value_and_grad")?;
                let worker = Worker::start(dup.clone());
                own.get_or_init(|| (dup, worker))
            }
        };
        if nabla_core::jit::is_recording() {
            let local = nabla_core::value_and_grad(&f)(params);
            return all_reduce_weighted(dup, &local, shard.weight());
        }
        overlapped(worker, &f, params, shard.weight())
    }
}

/// The eager path of [`value_and_grad`]: buckets start during the pullback's sweep.
fn overlapped<P: Tree>(worker: &Worker, f: &dyn Fn(&P) -> Tensor, params: &P, weight: f64) -> Result<(Tensor, P)> {
    let leaves = params.leaves();
    crate::check::float_leaves("value_and_grad", &leaves)?;
    let (outs, pullback) = nabla_core::vjp_many(|ls| vec![f(&params.rebuild(ls.to_vec()))], &leaves);
    let loss = outs[0].clone();
    if loss.rank() != 0 || !loss.dtype().is_float() {
        return Err(DistError::Usage(format!(
            "value_and_grad: the function must return a float scalar, got shape {:?} ({})",
            loss.shape(),
            loss.dtype()
        )));
    }
    // The loss travels as one more leaf (the last, so in the first bucket): ready at once.
    let mut all: Vec<Tensor> = leaves.clone();
    all.push(loss.clone());
    let sizes: Vec<(DType, usize)> = all.iter().map(|t| (t.dtype(), t.numel())).collect();
    let mut queue = BucketQueue::new(plan(&sizes, FIRST_BUCKET_BYTES, BUCKET_BYTES), &all);
    let grads: std::cell::RefCell<Vec<Option<Tensor>>> = std::cell::RefCell::new(vec![None; all.len()]);
    grads.borrow_mut()[leaves.len()] = Some(loss.stop_gradient());
    queue.mark_ready(leaves.len());
    let mut report = |i: usize, g: &Tensor| {
        grads.borrow_mut()[i] = Some(g.clone());
        queue.mark_ready(i);
        let grads = grads.borrow();
        queue.launch_ready(worker, weight, |l| grads[l].clone());
    };
    // The pullback runs once: the graph is freed as the sweep goes.
    pullback.call_reporting_once(&[loss.ones_like()], &mut report);
    queue.mark_all_ready();
    let grads = grads.into_inner();
    queue.launch_ready(worker, weight, |l| grads[l].clone());
    let mut out: Vec<Option<Tensor>> = vec![None; all.len()];
    queue.drain(worker, &all, |l, g| out[l] = Some(g))?;
    let loss = out.pop().flatten().expect("the loss was reduced");
    Ok((
        loss,
        params.rebuild(out.into_iter().map(|g| g.expect("every leaf is in a bucket")).collect()),
    ))
}
