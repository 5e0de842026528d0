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
    /// Number of elements the buffer holds.
    fn len(&self) -> usize;
    /// True when the buffer holds no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

impl Storage {
    /// Number of elements in the buffer.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(b) => b.len(),
            Storage::Device(b) => b.len(),
        }
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A backend-level value: a storage buffer seen through a strided layout. Kernels take and
/// return these; they know nothing of tracing or vmap.
///
/// Invariant, relied on by the kernels' unchecked reads: every index the layout addresses lies
/// inside the buffer. It holds by construction: the fields are private to the crate, values
/// from outside come through [`RawTensor::new`] (which checks) or [`RawTensor::from_cpu`]
/// (contiguous, length checked), and the crate's view ops only narrow a layout that fits.
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// The shared buffer.
    pub(crate) storage: Storage,
    /// How the view maps indices into the buffer.
    pub(crate) layout: Layout,
}

impl RawTensor {
    /// `storage` seen through `layout`, after proving that the smallest and largest index the
    /// layout reaches lie inside the buffer; an error names both otherwise.
    pub fn new(storage: Storage, layout: Layout) -> crate::error::Result<RawTensor> {
        if !layout.fits(storage.len()) {
            let reach = match layout.index_range() {
                Some((lo, hi)) => format!("indices {lo}..={hi}"),
                None => format!("offset {}", layout.offset),
            };
            return Err(crate::error::Error::ShapeMismatch {
                op: "RawTensor::new",
                detail: format!(
                    "a layout of shape {:?}, strides {:?} and offset {} reaches {reach}, outside a buffer of {} \
                     elements",
                    layout.shape,
                    layout.strides,
                    layout.offset,
                    storage.len()
                ),
            });
        }
        Ok(RawTensor { storage, layout })
    }

    /// A contiguous host tensor owning `buf`, with shape `shape`. Panics when the buffer's
    /// length is not the shape's element count.
    pub fn from_cpu(buf: CpuBuffer, shape: &[usize]) -> RawTensor {
        let layout = Layout::contiguous(shape);
        if layout.numel() != buf.len() {
            panic!(
                "RawTensor::from_cpu: shape {shape:?} needs {} elements, the buffer has {}",
                layout.numel(),
                buf.len()
            );
        }
        RawTensor {
            storage: Storage::Cpu(buf),
            layout,
        }
    }

    /// The shared buffer.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// How the view maps indices into the buffer.
    pub fn layout(&self) -> &Layout {
        &self.layout
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

    /// The same storage under another layout, which the caller (a view op of this crate)
    /// derived by narrowing this one, so it fits the buffer too.
    pub(crate) fn with_layout(&self, layout: Layout) -> RawTensor {
        debug_assert!(
            layout.fits(self.storage.len()),
            "internal error: a view layout {layout:?} leaves a buffer of {} elements",
            self.storage.len()
        );
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
