//! Where a tensor's storage lives.

use std::fmt;

/// The device holding a tensor's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, computed by the built-in ndarray/gemm backend.
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal, computed by a backend registered with
    /// [`register_backend`](crate::backend::register_backend) (the `nabla-cuda` crate).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
