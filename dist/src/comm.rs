//! The `Communicator` trait that every transport implements (single process, MPI; NCCL and a
//! TCP ring plug in here), and the host buffers its collectives work on.

use nabla_core::DType;

/// A host buffer a collective reads.
#[derive(Clone, Copy, Debug)]
pub enum HostBuf<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// 64-bit floats.
    F64(&'a [f64]),
    /// 64-bit integers.
    I64(&'a [i64]),
    /// Bytes (broadcast and gather only; sums of bytes are refused).
    U8(&'a [u8]),
}

/// A host buffer a collective writes.
#[derive(Debug)]
pub enum HostBufMut<'a> {
    /// 32-bit floats.
    F32(&'a mut [f32]),
    /// 64-bit floats.
    F64(&'a mut [f64]),
    /// 64-bit integers.
    I64(&'a mut [i64]),
    /// Bytes (broadcast and gather only; sums of bytes are refused).
    U8(&'a mut [u8]),
}

macro_rules! buf_common {
    ($t:ty) => {
        impl $t {
            /// Number of elements.
            pub fn len(&self) -> usize {
                match self {
                    Self::F32(s) => s.len(),
                    Self::F64(s) => s.len(),
                    Self::I64(s) => s.len(),
                    Self::U8(s) => s.len(),
                }
            }
            /// True when the buffer holds no element.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }
            /// Size in bytes.
            pub fn bytes(&self) -> usize {
                self.len() * self.elem_bytes()
            }
            /// Bytes per element.
            pub fn elem_bytes(&self) -> usize {
                match self {
                    Self::F32(_) => 4,
                    Self::F64(_) | Self::I64(_) => 8,
                    Self::U8(_) => 1,
                }
            }
            /// The element type's name, for messages.
            pub fn type_name(&self) -> &'static str {
                match self {
                    Self::F32(_) => "f32",
                    Self::F64(_) => "f64",
                    Self::I64(_) => "i64",
                    Self::U8(_) => "u8",
                }
            }
        }
    };
}
buf_common!(HostBuf<'_>);
buf_common!(HostBufMut<'_>);

impl HostBufMut<'_> {
    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> HostBuf<'_> {
        match self {
            Self::F32(s) => HostBuf::F32(s),
            Self::F64(s) => HostBuf::F64(s),
            Self::I64(s) => HostBuf::I64(s),
            Self::U8(s) => HostBuf::U8(s),
        }
    }

    /// Copies `src` (same type and length) into this buffer.
    pub fn copy_from(&mut self, src: HostBuf<'_>) -> Result<(), String> {
        match (self, src) {
            (Self::F32(d), HostBuf::F32(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (Self::F64(d), HostBuf::F64(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (Self::I64(d), HostBuf::I64(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (Self::U8(d), HostBuf::U8(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (d, s) => {
                return Err(format!(
                    "send buffer of {} {} and receive buffer of {} {} differ",
                    s.len(),
                    s.type_name(),
                    d.len(),
                    d.type_name()
                ));
            }
        }
        Ok(())
    }
}

/// An owned host buffer (what buckets travel in).
#[derive(Clone, Debug, PartialEq)]
pub enum HostVec {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
}

impl HostVec {
    /// Zeros of `dtype` (f32 or f64).
    pub fn zeros(dtype: DType, len: usize) -> HostVec {
        match dtype {
            DType::F64 => HostVec::F64(vec![0.0; len]),
            _ => HostVec::F32(vec![0.0; len]),
        }
    }
    /// Borrowed read-only.
    pub fn as_buf(&self) -> HostBuf<'_> {
        match self {
            HostVec::F32(v) => HostBuf::F32(v),
            HostVec::F64(v) => HostBuf::F64(v),
        }
    }
    /// Borrowed writable.
    pub fn as_buf_mut(&mut self) -> HostBufMut<'_> {
        match self {
            HostVec::F32(v) => HostBufMut::F32(v),
            HostVec::F64(v) => HostBufMut::F64(v),
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_buf().len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a transport's call reports on failure (the process group adds rank, operation and
/// sequence number).
pub type CommResult<T> = std::result::Result<T, String>;

/// One transport between the ranks of a process group. Implementations: [`crate::SingleProcess`]
/// and, with the `mpi` feature, `MpiCommunicator`. Users call these through
/// [`crate::ProcessGroup`], which numbers every call, watches it for timeouts and turns
/// failures into [`crate::DistError`]s that name the rank and the call.
///
/// Every rank must make the same calls on a communicator in the same order (as in MPI); a
/// second, independent stream of calls needs its own communicator from
/// [`Communicator::duplicate`].
pub trait Communicator: Send + Sync {
    /// The transport's name (`single`, `mpi`).
    fn name(&self) -> &'static str;
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Rank among the ranks on this node.
    fn local_rank(&self) -> usize;
    /// Number of ranks on this node.
    fn local_world_size(&self) -> usize;
    /// Sums `buf` elementwise over all ranks, in place; every rank ends with the same values.
    fn all_reduce_sum(&self, buf: HostBufMut<'_>) -> CommResult<()>;
    /// Sums `send` over all ranks into `recv` (same type and length). The default copies and
    /// reduces in place; transports with a cheaper out-of-place form override it.
    fn all_reduce_sum_into(&self, send: HostBuf<'_>, mut recv: HostBufMut<'_>) -> CommResult<()> {
        recv.copy_from(send)?;
        self.all_reduce_sum(recv)
    }
    /// Overwrites `buf` on every rank with its value on `root`.
    fn broadcast(&self, buf: HostBufMut<'_>, root: usize) -> CommResult<()>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> CommResult<()>;
    /// Every rank's `mine`, indexed by rank (for small payloads: metadata, checks).
    fn all_gather_bytes(&self, mine: &[u8]) -> CommResult<Vec<Vec<u8>>>;
    /// A new communicator over the same ranks whose calls are ordered independently of this
    /// one's (MPI_Comm_dup). Collective: every rank calls it.
    fn duplicate(&self) -> CommResult<Box<dyn Communicator>>;
    /// Ends every rank of the job with `code` (MPI_Abort); for failures that would otherwise
    /// leave other ranks waiting forever.
    fn abort(&self, code: i32) -> !;
}
