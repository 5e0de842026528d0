//! Device transports: collectives on tensors where they live, with no host round trip. NCCL
//! (the `nccl` feature) is one; a [`crate::ProcessGroup`] carries at most one, for one device,
//! beside its host [`crate::Communicator`], and the gradient buckets of tensors on that device
//! go through it.

use nabla_core::{Device, Tensor};

use crate::comm::{CommResult, HostBufMut};
use crate::error::{DistError, Result};
use crate::group::ProcessGroup;

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
    /// place and return it. The result may be read only after [`join`].
    ///
    /// [`join`]: DeviceCommunicator::join
    ///
    /// [`device`]: DeviceCommunicator::device
    fn all_reduce_sum(&self, bucket: Tensor) -> CommResult<Tensor>;
    /// `t` as it is on `root`, on every rank (same conditions on `t`).
    fn broadcast(&self, t: Tensor, root: usize) -> CommResult<Tensor>;
    /// Orders the device's work queued from now on after every call queued so far (a
    /// transport that runs on a stream of its own, as NCCL does, overlaps the kernels queued
    /// after its calls until then). Does not wait on the host.
    fn join(&self) -> CommResult<()> {
        Ok(())
    }
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

/// The set-up of a transport that every rank must join together (NCCL's `ncclCommInitRank`
/// waits for all ranks): each rank reports whether it can go on (`local`: rank 0's carries the
/// `len` bytes the others need, such as NCCL's id), and either every rank gets rank 0's bytes,
/// or every rank gets one error naming each rank that cannot and why. So no rank enters the
/// joint step while another has already given up. Collective.
// Used by the nccl feature's set-up; compiled (and tested) in every build.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub(crate) fn agree_on_setup(
    group: &ProcessGroup,
    what: &str,
    local: std::result::Result<Vec<u8>, String>,
    len: usize,
) -> Result<Vec<u8>> {
    // Rank 0's bytes are checked before the agreement, so that a bad length fails every rank
    // together instead of leaving the others in the broadcast.
    let local = match local {
        Ok(b) if group.rank() == 0 && b.len() != len => Err(format!("made {} bytes to share, not {len}", b.len())),
        other => other,
    };
    let mine = match &local {
        Ok(_) => Vec::new(),
        Err(why) if why.is_empty() => b"failed".to_vec(),
        Err(why) => why.as_bytes().to_vec(),
    };
    let failures: Vec<String> = group
        .all_gather_bytes(&mine)?
        .into_iter()
        .enumerate()
        .filter(|(_, why)| !why.is_empty())
        .map(|(rank, why)| format!("rank {rank}: {}", String::from_utf8_lossy(&why)))
        .collect();
    if !failures.is_empty() {
        return Err(DistError::Environment(format!(
            "{what} could not start on {} of {} ranks; {}",
            failures.len(),
            group.world_size(),
            failures.join("; ")
        )));
    }
    let mut bytes = match local {
        Ok(b) if group.rank() == 0 => b,
        _ => vec![0; len],
    };
    group.broadcast(HostBufMut::U8(&mut bytes), 0)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThreadComm;

    fn on_ranks<T: Send>(n: usize, f: impl Fn(ProcessGroup) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = ThreadComm::world(n)
                .into_iter()
                .map(|c| {
                    let f = &f;
                    s.spawn(move || f(ProcessGroup::new(Box::new(c), std::time::Duration::from_secs(60), "t")))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_rank_gets_rank_0s_bytes_when_all_can_start() {
        let got = on_ranks(3, |g| {
            let local = Ok(if g.rank() == 0 { vec![7; 128] } else { Vec::new() });
            agree_on_setup(&g, "NCCL", local, 128).unwrap()
        });
        assert!(got.iter().all(|b| *b == vec![7; 128]));
    }

    #[test]
    fn one_rank_that_cannot_start_fails_every_rank_with_its_name_and_reason() {
        let got = on_ranks(3, |g| {
            let local = match g.rank() {
                0 => Ok(vec![1; 128]),
                1 => Err("libnccl.so.2: cannot open shared object file".to_string()),
                _ => Ok(Vec::new()),
            };
            agree_on_setup(&g, "NCCL", local, 128).unwrap_err().to_string()
        });
        for e in &got {
            assert!(e.contains("NCCL could not start on 1 of 3 ranks"), "{e}");
            assert!(e.contains("rank 1: libnccl.so.2: cannot open"), "{e}");
        }
    }

    #[test]
    fn rank_0_sharing_the_wrong_length_fails_every_rank_instead_of_hanging_them() {
        let got = on_ranks(2, |g| {
            let local = Ok(if g.rank() == 0 { vec![7; 5] } else { Vec::new() });
            agree_on_setup(&g, "NCCL", local, 128).unwrap_err().to_string()
        });
        for e in &got {
            assert!(e.contains("rank 0: made 5 bytes to share, not 128"), "{e}");
        }
    }
}
