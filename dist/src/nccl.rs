//! NCCL as the device transport of a [`ProcessGroup`] (the `nccl` feature): gradient buckets
//! and parameter broadcasts of GPU tensors are summed on the GPUs, with no host round trip.
//!
//! ```no_run
//! let group = nabla_dist::init()?;
//! let backend = nabla_cuda::init(group.local_rank()).expect("a GPU per local rank");
//! let group = nabla_dist::with_nccl(group, &backend)?;
//! // DataParallel / value_and_grad on this group now reduce cuda tensors through NCCL.
//! # Ok::<(), nabla_dist::DistError>(())
//! ```

use std::sync::Arc;

use nabla_core::{Device, Tensor};
use nabla_cuda::nccl::{self, NcclComm, UniqueId};
use nabla_cuda::{CudaBackend, CudaDevice, DeviceApi};

use crate::comm::CommResult;
use crate::device_comm::{DeviceCommunicator, DevicePoll, agree_on_setup};
use crate::error::{DistError, Result};
use crate::group::ProcessGroup;

/// One rank's NCCL communicator as a [`DeviceCommunicator`].
pub struct NcclCommunicator {
    comm: Arc<NcclComm>,
}

impl DeviceCommunicator for NcclCommunicator {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn device(&self) -> Device {
        self.comm.device()
    }

    fn all_reduce_sum(&self, bucket: Tensor) -> CommResult<Tensor> {
        self.comm.all_reduce_sum(&bucket).map_err(|e| e.to_string())?;
        Ok(bucket)
    }

    fn broadcast(&self, t: Tensor, root: usize) -> CommResult<Tensor> {
        self.comm.broadcast(&t, root).map_err(|e| e.to_string())?;
        Ok(t)
    }

    fn join(&self) -> CommResult<()> {
        self.comm.join().map_err(|e| e.to_string())
    }

    fn check(&self) -> CommResult<()> {
        self.comm.check().map_err(|e| e.to_string())
    }

    fn completion(&self) -> Option<DevicePoll> {
        // Without a mark (the driver refused an event) the call is not watched; its failure
        // still shows at the next read or check.
        let mark = self.comm.mark().ok()?;
        let comm = self.comm.clone();
        Some(Box::new(move || {
            comm.check().map_err(|e| e.to_string())?;
            mark.poll().map_err(|e| e.to_string())
        }))
    }
}

/// `group` with an NCCL communicator over the same ranks, on `backend`'s GPU, as its device
/// transport. Collective: every rank calls it. Rank 0 makes the communicator's id and the host
/// transport carries it to the others; if any rank cannot open NCCL, every rank gets an error
/// naming the ranks and the reason (none is left waiting in NCCL's set-up).
pub fn with_nccl(group: ProcessGroup, backend: &CudaBackend<CudaDevice>) -> Result<ProcessGroup> {
    let device: Arc<CudaDevice> = backend.api().clone();
    let opened = nccl::library();
    // Rank 0 also makes the id, so that its failure to do so is reported like a missing library.
    let local = match (&opened, group.rank()) {
        (Ok(lib), 0) => lib.unique_id().map(|id| id.0.to_vec()).map_err(|e| e.to_string()),
        (Ok(_), _) => Ok(Vec::new()),
        (Err(e), _) => Err(e.to_string()),
    };
    let bytes = agree_on_setup(&group, "NCCL", local, 128)?;
    let library = opened.expect("every rank opened NCCL");
    let id = UniqueId(bytes.try_into().expect("128 bytes"));
    let comm = NcclComm::init(library, device.clone(), &id, group.rank(), group.world_size()).map_err(|e| {
        DistError::Environment(format!(
            "rank {} of {}: NCCL on cuda:{}: {e}",
            group.rank(),
            group.world_size(),
            device.ordinal()
        ))
    })?;
    Ok(group.with_device_communicator(Arc::new(NcclCommunicator { comm: Arc::new(comm) })))
}
