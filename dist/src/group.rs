//! `ProcessGroup`: what users hold. It wraps a [`Communicator`] with a sequence number per
//! call, a timeout watchdog and errors that name the rank and the call, and adds typed
//! helpers (tensors, pytrees) over the raw buffer collectives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nabla_core::storage::{CpuBuffer, RawTensor};
use nabla_core::{Tensor, Tree};

use crate::comm::{Communicator, HostBuf, HostBufMut};
use crate::device_comm::DeviceCommunicator;
use crate::error::{DistError, Result};
use crate::single::SingleProcess;
use crate::watchdog;

/// The default time a collective may take before the watchdog ends the job.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A group of ranks that make the same calls in the same order: the handle every data-parallel
/// piece takes. Cheap to clone (clones share the sequence counter).
#[derive(Clone)]
pub struct ProcessGroup {
    comm: Arc<dyn Communicator>,
    seq: Arc<AtomicU64>,
    timeout: Duration,
    name: Arc<str>,
    device_comm: Option<Arc<dyn DeviceCommunicator>>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProcessGroup(`{}`, {}{} rank {} of {}, local {} of {})",
            self.name,
            self.comm.name(),
            match &self.device_comm {
                Some(d) => format!(" + {} on {}", d.name(), d.device()),
                None => String::new(),
            },
            self.rank(),
            self.world_size(),
            self.local_rank(),
            self.local_world_size()
        )
    }
}

impl ProcessGroup {
    /// A group over `comm`, whose collectives end the job after `timeout`.
    pub fn new(comm: Box<dyn Communicator>, timeout: Duration, name: &str) -> ProcessGroup {
        ProcessGroup {
            comm: Arc::from(comm),
            seq: Arc::new(AtomicU64::new(0)),
            timeout,
            name: name.into(),
            device_comm: None,
        }
    }

    /// The same group with `device_comm` for the tensors of its device: gradient buckets and
    /// broadcasts of those tensors go through it instead of through the host. It must span the
    /// same ranks as this group.
    pub fn with_device_communicator(mut self, device_comm: Arc<dyn DeviceCommunicator>) -> ProcessGroup {
        self.device_comm = Some(device_comm);
        self
    }

    /// The device transport for tensors on `device`, if the group has one.
    pub fn device_communicator(&self, device: nabla_core::Device) -> Option<&Arc<dyn DeviceCommunicator>> {
        self.device_comm.as_ref().filter(|d| d.device() == device)
    }

    /// Sums `bucket` over all ranks through the device transport of its device (which must
    /// exist; see [`ProcessGroup::device_communicator`]). Numbered like every collective; a
    /// failure names the rank and the call.
    pub(crate) fn device_all_reduce_sum(&self, bucket: Tensor) -> Result<Tensor> {
        let dc = self
            .device_communicator(bucket.device())
            .expect("internal error: a device all-reduce without a device transport")
            .clone();
        self.device_call(&*dc, "all_reduce_sum", bytes_of(&bucket), |dc| {
            dc.all_reduce_sum(bucket)
        })
    }

    /// Runs one numbered call of `dc` on `bytes` of data, turns its failure into an error
    /// naming the rank and the call, and hands the queued work to the watchdog.
    fn device_call(
        &self,
        dc: &dyn DeviceCommunicator,
        op: &'static str,
        bytes: usize,
        call: impl FnOnce(&dyn DeviceCommunicator) -> crate::comm::CommResult<Tensor>,
    ) -> Result<Tensor> {
        let seq = self.next_seq();
        let out = call(dc).map_err(|m| self.collective_error(op, seq, bytes, m))?;
        self.watch_device(dc, op, seq, bytes);
        Ok(out)
    }

    /// Hands the work `dc` has queued so far to the watchdog (see
    /// [`DeviceCommunicator::completion`]): device calls return once queued, so they are
    /// watched until the device says they have run.
    fn watch_device(&self, dc: &dyn DeviceCommunicator, op: &'static str, seq: u64, bytes: usize) {
        if self.world_size() == 1 {
            return;
        }
        let Some(done) = dc.completion() else { return };
        let (rank, world, name, timeout, device) = (
            self.rank(),
            self.world_size(),
            self.name.clone(),
            self.timeout,
            dc.device(),
        );
        let describe = move |ending: watchdog::Ending<'_>| {
            let what = format!(
                "nabla-dist: rank {rank} of {world}: {op} (sequence #{seq}, {bytes} bytes) on group `{name}`, queued on {device},"
            );
            match ending {
                watchdog::Ending::TimedOut => format!(
                    "{what} did not finish within {timeout:?}: another rank has died or stopped calling collectives (or \
                     calls them in another order). Aborting the job. Raise the limit with NABLA_DIST_TIMEOUT=<seconds>."
                ),
                watchdog::Ending::Failed(e) => format!("{what} failed: {e}. Aborting the job."),
            }
        };
        watchdog::watch_device(&self.comm, self.timeout, describe, done);
    }

    /// Orders the device's next work after the device collectives queued so far (so their
    /// results may be read), and reports a failure one of them ended with.
    pub(crate) fn device_finish(&self, device: nabla_core::Device) -> Result<()> {
        match self.device_communicator(device) {
            Some(dc) => dc
                .join()
                .and_then(|()| dc.check())
                .map_err(|m| self.collective_error("device collective", self.calls(), 0, m)),
            None => Ok(()),
        }
    }

    /// The group of one process (every collective is the identity).
    pub fn single() -> ProcessGroup {
        ProcessGroup::new(Box::new(SingleProcess), DEFAULT_TIMEOUT, "world")
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    /// Rank among this node's ranks (which GPU to bind).
    pub fn local_rank(&self) -> usize {
        self.comm.local_rank()
    }
    /// Number of ranks on this node.
    pub fn local_world_size(&self) -> usize {
        self.comm.local_world_size()
    }
    /// The transport's name (`single`, `mpi`).
    pub fn backend(&self) -> &'static str {
        self.comm.name()
    }
    /// The group's name (in error messages).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The collective timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// The same group with another collective timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> ProcessGroup {
        self.timeout = timeout;
        self
    }
    /// True for rank 0 (the one that prints and writes checkpoints).
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }
    /// Number of collectives called on this group so far.
    pub fn calls(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Runs one numbered, watched collective.
    fn call<R>(
        &self,
        op: &'static str,
        bytes: usize,
        f: impl FnOnce(&dyn Communicator) -> Result<R, String>,
    ) -> Result<R> {
        let seq = self.next_seq();
        let _watch = (self.world_size() > 1).then(|| {
            let (rank, world, name, timeout) = (self.rank(), self.world_size(), self.name.clone(), self.timeout);
            watchdog::watch(&self.comm, self.timeout, move || {
                format!(
                    "nabla-dist: rank {rank} of {world}: {op} (sequence #{seq}, {bytes} bytes) on group `{name}` did not \
                     finish within {timeout:?}: another rank has died or stopped calling collectives (or calls them \
                     in another order). Aborting the job. Raise the limit with NABLA_DIST_TIMEOUT=<seconds>."
                )
            })
        });
        f(&*self.comm).map_err(|message| self.collective_error(op, seq, bytes, message))
    }

    /// The next call's sequence number.
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The error of call `seq` that failed with `message`.
    fn collective_error(&self, op: &'static str, seq: u64, bytes: usize, message: String) -> DistError {
        DistError::Collective {
            rank: self.rank(),
            world: self.world_size(),
            op,
            seq,
            bytes,
            group: self.name.to_string(),
            message,
        }
    }

    /// Sums `buf` over all ranks, in place.
    pub fn all_reduce_sum(&self, buf: HostBufMut<'_>) -> Result<()> {
        self.call("all_reduce_sum", buf.bytes(), |c| c.all_reduce_sum(buf))
    }

    /// Sums `send` over all ranks into `recv`.
    pub fn all_reduce_sum_into(&self, send: HostBuf<'_>, recv: HostBufMut<'_>) -> Result<()> {
        self.call("all_reduce_sum", send.bytes(), |c| c.all_reduce_sum_into(send, recv))
    }

    /// Overwrites `buf` with its value on `root`.
    pub fn broadcast(&self, buf: HostBufMut<'_>, root: usize) -> Result<()> {
        self.check_root(root)?;
        self.call("broadcast", buf.bytes(), |c| c.broadcast(buf, root))
    }

    /// An error unless `root` is a rank of this group.
    fn check_root(&self, root: usize) -> Result<()> {
        if root >= self.world_size() {
            return Err(DistError::Usage(format!(
                "broadcast: root {root} is outside a group of {} ranks",
                self.world_size()
            )));
        }
        Ok(())
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        self.call("barrier", 0, |c| c.barrier())
    }

    /// Every rank's `mine`, indexed by rank.
    pub fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.call("all_gather_bytes", mine.len(), |c| c.all_gather_bytes(mine))
    }

    /// A group over the same ranks whose calls are ordered independently of this one's (a
    /// data-parallel wrapper reduces on its own group, on its own thread). Collective.
    pub fn duplicate(&self, name: &str) -> Result<ProcessGroup> {
        let comm = self.call("duplicate", 0, |c| c.duplicate())?;
        let mut dup = ProcessGroup::new(comm, self.timeout, name);
        // The device transport only queues work, in the order the ranks call it, so a
        // duplicate shares it.
        dup.device_comm = self.device_comm.clone();
        Ok(dup)
    }

    /// Ends the whole job with `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    /// Rank 0's value of `t` on every rank (a new tensor of the same shape, dtype and device).
    pub fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if self.world_size() == 1 {
            return Ok(t.clone());
        }
        if let Some(dc) = self.device_communicator(t.device()).filter(|_| t.dtype().is_float()) {
            self.check_root(root)?;
            // A fresh buffer (the product), as the device transport asks.
            let fresh = t.stop_gradient() * 1.0;
            return self.device_call(&**dc, "broadcast", bytes_of(t), |dc| dc.broadcast(fresh, root));
        }
        // Broadcast moves bits, so every dtype travels as its little-endian bytes.
        let mut bytes = t.to_host_buffer().to_le_bytes();
        self.broadcast(HostBufMut::U8(&mut bytes), root)?;
        let buf = CpuBuffer::from_le_bytes(t.dtype(), &bytes)
            .map_err(|e| DistError::Usage(format!("broadcast_tensor: the root sent a bad {}: {e}", t.dtype())))?;
        let out = Tensor::from_raw(RawTensor::from_cpu(buf, t.shape()));
        out.to_device(t.device())
            .map_err(|e| DistError::Usage(format!("broadcast_tensor: {e}")))
    }

    /// Every leaf of `tree` replaced by its value on `root` (how data-parallel training starts
    /// every rank from the same parameters). Checks first that all ranks hold the same leaves.
    pub fn broadcast_tree<P: Tree>(&self, tree: &P, root: usize) -> Result<P> {
        if self.world_size() == 1 {
            return Ok(tree.map_leaves(|t| t.clone()));
        }
        let leaves = tree.leaves();
        crate::check::same_leaves_on_all_ranks(self, &leaves, "broadcast_tree")?;
        let out = leaves
            .iter()
            .map(|t| self.broadcast_tensor(t, root))
            .collect::<Result<Vec<_>>>()?;
        Ok(tree.rebuild(out))
    }
}

/// The size of `t`'s elements, for messages.
fn bytes_of(t: &Tensor) -> usize {
    t.numel() * t.dtype().size_in_bytes()
}
