//! The seam between the backend's planning and the device: [`DeviceApi`] is what the backend
//! asks of a GPU (memory, copies, kernel launches, a GEMM), and nothing more. The real
//! implementation is [`crate::driver::CudaDevice`] (cudarc); the tests implement it over the
//! kernels' C++ emulator, so every decision the backend makes (which kernel, which arguments,
//! which layouts and launch sizes, how a matmul maps onto cuBLAS) runs without a GPU.

use std::fmt;

use nabla_core::DType;
use nabla_kernels::{ArgType, KernelLayout, KernelSpec, launch::LaunchDims};

/// A failure of the device or of a library (allocation, launch, copy, compilation, cuBLAS),
/// with what was being done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    message: String,
    out_of_memory: bool,
}

impl ApiError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            out_of_memory: false,
        }
    }

    /// An allocation the device could not satisfy (`CUDA_ERROR_OUT_OF_MEMORY`): the backend
    /// releases the memory pool's cached blocks and tries once more before giving up.
    pub fn out_of_memory(message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            out_of_memory: true,
        }
    }

    /// True for [`ApiError::out_of_memory`].
    pub fn is_out_of_memory(&self) -> bool {
        self.out_of_memory
    }

    /// What failed, and what was being done.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// One argument of a kernel launch, matching one [`nabla_kernels::Param`] of the entry point.
pub enum LaunchArg<'a, M> {
    /// A device buffer, `offset` bytes in (views of a buffer start at their offset).
    Ptr(&'a M, usize),
    /// A null pointer (an optional buffer left out).
    Null,
    /// A strided layout by value.
    Layout(KernelLayout),
    /// A `long long` by value.
    I64(i64),
    /// An `int` by value.
    I32(i32),
    /// A `double` by value.
    F64(f64),
}

impl<M> LaunchArg<'_, M> {
    /// Whether this argument has the C type of a parameter of type `ty`: `cuLaunchKernel`
    /// reads as many bytes as the parameter's C type has, so an `int` bound to a `long long`
    /// would read four bytes of garbage (and the emulator, which copies by the C type too,
    /// would not show it).
    pub fn fits(&self, ty: ArgType) -> bool {
        match self {
            LaunchArg::Ptr(..) | LaunchArg::Null => matches!(
                ty,
                ArgType::In(_)
                    | ArgType::Out(_)
                    | ArgType::InOut(_)
                    | ArgType::AccIn(_)
                    | ArgType::AccOut(_)
                    | ArgType::ErrorRecord
            ),
            LaunchArg::Layout(_) => ty == ArgType::Layout,
            LaunchArg::I64(_) => ty == ArgType::I64,
            LaunchArg::I32(_) => ty == ArgType::I32,
            LaunchArg::F64(_) => ty == ArgType::F64,
        }
    }
}

/// One operand of a GEMM: a buffer, the byte offset of its first matrix, whether cuBLAS
/// should transpose it, its leading dimension and the element stride between batch entries.
pub struct GemmOperand<'a, M> {
    /// The buffer.
    pub mem: &'a M,
    /// Byte offset of the first matrix.
    pub offset: usize,
    /// `op(X) = X^T` when true (cuBLAS's `CUBLAS_OP_T`).
    pub transpose: bool,
    /// Leading dimension in elements (column-major).
    pub ld: i64,
    /// Elements between consecutive matrices of the batch (0 broadcasts one matrix).
    pub batch_stride: i64,
}

/// A strided-batched GEMM in cuBLAS's column-major convention: for every batch entry,
/// `C = op(A) op(B)` with `op(A)` of `m x k`, `op(B)` of `k x n` and `C` of `m x n`
/// (leading dimension `ldc`). Half types accumulate in f32.
pub struct GemmCall<'a, M> {
    /// Element type of A, B and C.
    pub dtype: DType,
    /// Rows of `op(A)` and C.
    pub m: i64,
    /// Columns of `op(B)` and C.
    pub n: i64,
    /// The shared dimension.
    pub k: i64,
    /// The left operand.
    pub a: GemmOperand<'a, M>,
    /// The right operand.
    pub b: GemmOperand<'a, M>,
    /// The output buffer (written from its start).
    pub c: &'a M,
    /// Leading dimension of C.
    pub ldc: i64,
    /// Elements between consecutive C matrices.
    pub c_stride: i64,
    /// Number of matrices.
    pub batch: i64,
}

/// A range of device memory to copy to the host ([`DeviceApi::download_many`]).
pub struct HostRead<'a, M> {
    /// The allocation.
    pub mem: &'a M,
    /// Byte offset of the range.
    pub offset: usize,
    /// Bytes to copy.
    pub len: usize,
}

/// What the backend needs from one GPU. All work is ordered on one stream; only
/// [`DeviceApi::download`] and [`DeviceApi::synchronize`] wait for it.
pub trait DeviceApi: Send + Sync + 'static {
    /// A device allocation (freed, stream-ordered, when dropped).
    type Mem: Send + Sync + fmt::Debug + 'static;

    /// The CUDA ordinal of the device.
    fn ordinal(&self) -> usize;
    /// Streaming multiprocessors (launch sizes scale with it).
    fn sm_count(&self) -> u32;
    /// `bytes` of uninitialised device memory.
    fn alloc(&self, bytes: usize) -> Result<Self::Mem, ApiError>;
    /// `bytes` of zeroed device memory.
    fn alloc_zeroed(&self, bytes: usize) -> Result<Self::Mem, ApiError>;
    /// A new allocation holding a copy of `bytes`.
    fn upload(&self, bytes: &[u8]) -> Result<Self::Mem, ApiError>;
    /// The bytes of every range in `reads`, in order, after the compute work queued before has
    /// finished (and what was joined into it: a collective's result is read after its join).
    /// All of them are copied behind one wait, so a value and the device error record cost
    /// one synchronisation.
    fn download_many(&self, reads: &[HostRead<'_, Self::Mem>]) -> Result<Vec<Vec<u8>>, ApiError>;
    /// `len` bytes of `mem` from `offset`, as [`DeviceApi::download_many`] reads them.
    fn download(&self, mem: &Self::Mem, offset: usize, len: usize) -> Result<Vec<u8>, ApiError> {
        let mut out = self.download_many(&[HostRead { mem, offset, len }])?;
        Ok(out.pop().expect("one range read"))
    }
    /// Overwrites `mem` with zeros (stream-ordered).
    fn zero(&self, mem: &Self::Mem) -> Result<(), ApiError>;
    /// Queues `spec` with `args` (one per [`KernelSpec::params`], in order).
    fn launch(&self, spec: &KernelSpec, dims: LaunchDims, args: &[LaunchArg<'_, Self::Mem>]) -> Result<(), ApiError>;
    /// Queues a strided-batched GEMM.
    fn gemm(&self, call: &GemmCall<'_, Self::Mem>) -> Result<(), ApiError>;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<(), ApiError>;
    /// Waits for queued work, then returns the memory pool's cached free blocks to the device,
    /// so that an allocation of a size the cache does not hold can be mapped (what PyTorch's
    /// caching allocator does before it reports out of memory). The default has no cache.
    fn release_cached(&self) -> Result<(), ApiError> {
        Ok(())
    }
    /// `(free, total)` bytes of device memory, for out-of-memory messages (`None` when the
    /// device cannot say).
    fn memory_info(&self) -> Option<(usize, usize)> {
        None
    }
}
