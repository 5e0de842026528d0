//! Device memory as core sees it: a [`DeviceBuffer`] holding one allocation of a [`DeviceApi`].

use std::any::Any;
use std::fmt;

use nabla_core::storage::DeviceBuffer;
use nabla_core::{DType, Device};

use crate::api::DeviceApi;

/// One device allocation of `len` elements of `dtype`, on `device`.
pub struct CudaBuffer<A: DeviceApi> {
    pub(crate) mem: A::Mem,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
    pub(crate) device: Device,
}

impl<A: DeviceApi> fmt::Debug for CudaBuffer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CudaBuffer({} x {} on {}: {:?})",
            self.len, self.dtype, self.device, self.mem
        )
    }
}

impl<A: DeviceApi> DeviceBuffer for CudaBuffer<A> {
    fn device(&self) -> Device {
        self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
