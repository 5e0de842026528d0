#![doc = include_str!("../README.md")]
//!
//! The facade crate re-exports `nabla-core` and the `#[derive(Tree)]` macro.

pub use nabla_core::*;
/// The CUDA backend (feature `cuda`): `nb::cuda::init(0)` registers GPU 0 for
/// `Device::Cuda(0)` tensors.
#[cfg(feature = "cuda")]
pub use nabla_cuda as cuda;
pub use nabla_derive::Tree;
/// Data parallelism: process groups from the environment, communicators (MPI with the `mpi`
/// feature), `DataParallel` gradient sync inside `backward`, and the functional all-reduce.
pub use nabla_dist as dist;
/// Training pieces: layers, initialisers, metrics, optimizers, schedules, data, checkpoints.
pub use nabla_nn as nn;
