//! nabla-dist: data-parallel training for nabla-rs (`nb::dist` in the facade crate).
//!
//! Every rank runs the same program on its shard of each global batch; the gradients are
//! averaged over the ranks before the optimizer step, so every rank keeps identical parameters.
//!
//! - [`init`] finds the process group from the environment (`mpirun`, Hydra, `srun`,
//!   `nabla-launch`, or a single process), sizes the compute threads for the node and installs a panic hook that
//!   takes the whole job down.
//! - [`ProcessGroup`] numbers and watches every collective ([`Communicator`] is the transport
//!   underneath: [`SingleProcess`], [`TcpCommunicator`] (a ring over TCP for ranks that
//!   `nabla-launch` starts), [`ThreadComm`] (ranks as threads, for tests), and MPI with the `mpi`
//!   feature).
//! - [`DataParallel`] all-reduces gradients inside `backward`, bucket by bucket while the
//!   sweep goes on (PyTorch's DDP); [`all_reduce_mean`] / [`all_reduce_weighted`] and
//!   [`value_and_grad`] do the same for the functional API, and replay under `nb::jit`.
//! - [`psum`] sums a tensor over the ranks inside a traced function, differentiably;
//!   [`cross_rank_sum`] binds it to a group for the ops that sum again backward (synchronised
//!   batch normalisation).
//! - [`Shard`] splits a global batch and weights uneven shards exactly.

mod bucket;
mod check;
mod comm;
mod data_parallel;
mod device_comm;
pub mod env;
mod error;
mod functional;
mod group;
mod init;
#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "nccl")]
mod nccl;
mod pack;
mod psum;
mod queue;
mod shard;
mod single;
mod tcp;
mod thread_comm;
pub mod threads;
mod watchdog;
mod worker;

pub use bucket::{BUCKET_BYTES, Bucket, BucketPlan, FIRST_BUCKET_BYTES, plan as plan_buckets};
pub use comm::{CommResult, Communicator, HostBuf, HostBufMut, HostVec};
pub use data_parallel::{DataParallel, DataParallelConfig, NoSync, SyncStats};
pub use device_comm::{DeviceCommunicator, DevicePoll};
pub use error::{DistError, Result};
pub use functional::{all_reduce_mean, all_reduce_weighted, value_and_grad};
pub use group::{DEFAULT_TIMEOUT, ProcessGroup};
pub use init::{InitOptions, init, init_with};
/// The `mpi` crate this build links, for code that needs raw MPI next to ours (the benchmark
/// compares against raw `MPI_Allreduce` through it).
#[cfg(feature = "mpi")]
pub use mpi;
#[cfg(feature = "mpi")]
pub use mpi_comm::MpiCommunicator;
#[cfg(feature = "nccl")]
pub use nccl::{NcclCommunicator, with_nccl};
pub use psum::{cross_rank_sum, psum};
pub use shard::Shard;
pub use single::SingleProcess;
pub use tcp::{TcpCommunicator, TcpOptions};
pub use thread_comm::ThreadComm;
