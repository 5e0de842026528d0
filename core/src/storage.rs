//! Storage buffers and the backend-level value (`RawTensor`) that kernels consume and produce.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::device::Device;
use crate::dtype::DType;
use crate::layout::Layout;

/// A host buffer, shared between all views of it.
#[derive(Clone, Debug)]
pub enum CpuBuffer {
    /// f32 elements.
    F32(Arc<Vec<f32>>),
    /// f64 elements.
    F64(Arc<Vec<f64>>),
    /// i64 elements.
    I64(Arc<Vec<i64>>),
    /// bool elements.
    Bool(Arc<Vec<bool>>),
}

impl CpuBuffer {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuBuffer::F32(_) => DType::F32,
            CpuBuffer::F64(_) => DType::F64,
            CpuBuffer::I64(_) => DType::I64,
            CpuBuffer::Bool(_) => DType::Bool,
        }
    }

    /// Number of elements in the buffer (not in a view of it).
    pub fn len(&self) -> usize {
        match self {
            CpuBuffer::F32(v) => v.len(),
            CpuBuffer::F64(v) => v.len(),
            CpuBuffer::I64(v) => v.len(),
            CpuBuffer::Bool(v) => v.len(),
        }
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A buffer owned by a non-CPU backend (for example device memory of the CUDA backend).
pub trait DeviceBuffer: Send + Sync + fmt::Debug {
    /// The device that holds the memory.
    fn device(&self) -> Device;
    /// The dtype of the elements.
    fn dtype(&self) -> DType;
    /// Downcasting hook for the backend that created the buffer.
    fn as_any(&self) -> &dyn Any;
}

/// Where the elements of a tensor live.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuBuffer),
    /// Memory of a registered device backend.
    Device(Arc<dyn DeviceBuffer>),
}

/// A backend-level value: a storage buffer seen through a strided layout. Kernels take and
/// return these; they know nothing of tracing or vmap.
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// The shared buffer.
    pub storage: Storage,
    /// How the view maps indices into the buffer.
    pub layout: Layout,
}

impl RawTensor {
    /// A contiguous host tensor owning `buf`, with shape `shape`.
    pub fn from_cpu(buf: CpuBuffer, shape: &[usize]) -> RawTensor {
        RawTensor {
            storage: Storage::Cpu(buf),
            layout: Layout::contiguous(shape),
        }
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Cpu(b) => b.dtype(),
            Storage::Device(b) => b.dtype(),
        }
    }

    /// The device holding the storage.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Device(b) => b.device(),
        }
    }

    /// The shape of the view.
    pub fn shape(&self) -> &[usize] {
        &self.layout.shape
    }

    /// The same storage under another layout.
    pub fn with_layout(&self, layout: Layout) -> RawTensor {
        RawTensor {
            storage: self.storage.clone(),
            layout,
        }
    }
}

/// Conversion of a typed vector into a [`CpuBuffer`] (implemented for the four element types).
pub trait IntoCpuBuffer {
    /// Moves the vector into a shared host buffer.
    fn into_cpu_buffer(self) -> CpuBuffer;
}

macro_rules! into_cpu {
    ($t:ty, $v:ident) => {
        impl IntoCpuBuffer for Vec<$t> {
            fn into_cpu_buffer(self) -> CpuBuffer {
                CpuBuffer::$v(Arc::new(self))
            }
        }
    };
}
into_cpu!(f32, F32);
into_cpu!(f64, F64);
into_cpu!(i64, I64);
into_cpu!(bool, Bool);
