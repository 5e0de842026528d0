//! Device transports: collectives on tensors where they live, with no host round trip. NCCL
//! (the `nccl` feature) is one; a [`crate::ProcessGroup`] carries at most one, for one device,
//! beside its host [`crate::Communicator`], and the gradient buckets of tensors on that device
//! go through it.

use nabla_core::{Device, Tensor};

use crate::comm::CommResult;

/// Collectives on tensors of one device, between the same ranks (in the same order) as the
/// host communicator of the group that carries it.
///
/// Calls may return before the device has done the work: the device orders it after the work
/// that produced the input and before any that reads the result, and [`check`] reports a failure
/// found while it ran.
///
/// [`check`]: DeviceCommunicator::check
pub trait DeviceCommunicator: Send + Sync {
    /// The transport's name (`nccl`).
    fn name(&self) -> &'static str;
    /// The device whose tensors it reduces.
    fn device(&self) -> Device;
    /// The sum of `bucket` over all ranks. `bucket` is a contiguous tensor on [`device`] whose
    /// buffer nothing else holds (a freshly packed bucket), so an implementation may sum in
    /// place and return it.
    ///
    /// [`device`]: DeviceCommunicator::device
    fn all_reduce_sum(&self, bucket: Tensor) -> CommResult<Tensor>;
    /// `t` as it is on `root`, on every rank (same conditions on `t`).
    fn broadcast(&self, t: Tensor, root: usize) -> CommResult<Tensor>;
    /// The error a queued call ended with, if any.
    fn check(&self) -> CommResult<()> {
        Ok(())
    }
    /// A poll of whether everything queued on this transport so far has run: `Ok(true)` when
    /// it has, `Ok(false)` while it runs, `Err` when it failed. It must never wait. The group's
    /// watchdog polls it from its own thread after each call and ends the job, naming the rank
    /// and the call, when it fails or is not done within the group's timeout (a dead or stalled
    /// peer would otherwise hang the next read of the device). `None`: not watched.
    fn completion(&self) -> Option<DevicePoll> {
        None
    }
}

/// See [`DeviceCommunicator::completion`].
pub type DevicePoll = Box<dyn Fn() -> CommResult<bool> + Send>;
