//! Storage buffers and the backend-level value (`RawTensor`) that kernels consume and produce.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::device::Device;
use crate::dtype::{DType, Element, bf16, f16};
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
    /// IEEE half-precision elements.
    F16(Arc<Vec<f16>>),
    /// bfloat16 elements.
    BF16(Arc<Vec<bf16>>),
}

/// Evaluates `$body` with `$d` bound to the typed vector (`&Arc<Vec<T>>` when matching a
/// reference) of whichever variant the [`CpuBuffer`] `$buf` is. Code that is generic over the
/// element type uses this, so a new dtype is one new line here, not an edit at every site.
#[macro_export]
macro_rules! with_cpu_buffer {
    ($buf:expr, $d:ident => $body:expr) => {
        match $buf {
            $crate::storage::CpuBuffer::F32($d) => $body,
            $crate::storage::CpuBuffer::F64($d) => $body,
            $crate::storage::CpuBuffer::I64($d) => $body,
            $crate::storage::CpuBuffer::Bool($d) => $body,
            $crate::storage::CpuBuffer::F16($d) => $body,
            $crate::storage::CpuBuffer::BF16($d) => $body,
        }
    };
}

impl CpuBuffer {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuBuffer::F32(_) => DType::F32,
            CpuBuffer::F64(_) => DType::F64,
            CpuBuffer::I64(_) => DType::I64,
            CpuBuffer::Bool(_) => DType::Bool,
            CpuBuffer::F16(_) => DType::F16,
            CpuBuffer::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements in the buffer (not in a view of it).
    pub fn len(&self) -> usize {
        with_cpu_buffer!(self, v => v.len())
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address of the shared vector: equal for two buffers exactly when they are one
    /// allocation (clones of one `Arc`) of one dtype.
    pub fn identity(&self) -> (DType, usize) {
        (self.dtype(), with_cpu_buffer!(self, v => Arc::as_ptr(v) as usize))
    }

    /// The elements as little-endian bytes, in order (bool: one byte each, 0 or 1): the
    /// portable form checkpoints and digests use.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.dtype().size_in_bytes());
        with_cpu_buffer!(self, v => v.iter().for_each(|&x| x.write_le(&mut out)));
        out
    }

    /// A buffer of `dtype` from little-endian bytes (the inverse of [`CpuBuffer::to_le_bytes`]).
    /// The error names the problem: a length that is not a whole number of elements, or the
    /// index of an element whose bytes are no value of the dtype.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Result<CpuBuffer, String> {
        let size = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return Err(format!(
                "{} bytes are not a whole number of {dtype} elements ({size} bytes each)",
                bytes.len()
            ));
        }
        crate::with_element_type!(dtype, T => {
            let mut v: Vec<T> = Vec::with_capacity(bytes.len() / size);
            for (k, chunk) in bytes.chunks_exact(size).enumerate() {
                match T::read_le(chunk) {
                    Some(x) => v.push(x),
                    None => return Err(format!("element {k} is the bytes {chunk:?}, no {dtype} value")),
                }
            }
            Ok(v.into_cpu_buffer())
        })
    }

    /// The typed vector as `Any`, for downcasting to `Vec<T>`.
    pub fn as_any(&self) -> &dyn Any {
        with_cpu_buffer!(self, v => v.as_ref() as &dyn Any)
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

/// Conversion of a typed vector into a [`CpuBuffer`] (implemented for every element type).
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
into_cpu!(f16, F16);
into_cpu!(bf16, BF16);
