//! NCCL: collectives between GPUs of different ranks, on device memory, queued on the GPU's
//! stream with no host round trip.
//!
//! [`library`] opens libnccl (see [`library::LIBRARY_ENV`]); rank 0 makes a [`UniqueId`], the
//! ranks share its 128 bytes through a host transport (MPI, or the launcher's TCP group), and
//! each makes its [`NcclComm`]. The calls queue on the device's communication stream, after the
//! kernels queued before them (an event), so that the kernels queued after them run alongside;
//! [`NcclComm::join`] orders the kernels queued next after them, before anything reads a
//! result. Errors NCCL finds while a call runs come back from [`NcclComm::check`].

mod library;

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use nabla_core::storage::{DeviceBuffer, Storage};
use nabla_core::{DType, Device, Tensor};

use library::{IN_PROGRESS, RawComm, RawUniqueId, SUCCESS, SUM};
pub use library::{LIBRARY_ENV, NcclLibrary, NcclUnavailable, NcclVersion, candidates, library, open_first};

use crate::api::{ApiError, DeviceApi};
use crate::buffer::CudaBuffer;
use crate::driver::CudaDevice;

/// The 128 bytes that name one NCCL communicator: made by one rank, sent to all the others.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId(pub [u8; 128]);

impl std::fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UniqueId({:02x?}..)", &self.0[..8])
    }
}

impl NcclLibrary {
    /// A new communicator id (on the rank that creates the communicator). Needs no GPU.
    pub fn unique_id(&self) -> Result<UniqueId, ApiError> {
        let mut raw = RawUniqueId { bytes: [0; 128] };
        // SAFETY: an out-parameter of the declared size.
        let code = unsafe { (self.symbols.get_unique_id)(&mut raw) };
        self.result(code, None, "ncclGetUniqueId")?;
        Ok(UniqueId(raw.bytes))
    }

    /// `Ok` for success, else an error with NCCL's text (and the communicator's last error).
    fn result(&self, code: c_int, comm: Option<RawComm>, what: &str) -> Result<(), ApiError> {
        if code == SUCCESS {
            return Ok(());
        }
        let mut text = format!("{what} failed: {} (NCCL {code})", self.error_string(code));
        if let Some(comm) = comm {
            // SAFETY: a live communicator; the result is a C string owned by NCCL, or null.
            let last = unsafe { (self.symbols.get_last_error)(comm) };
            if !last.is_null() {
                // SAFETY: non-null, NUL-terminated.
                let last = unsafe { std::ffi::CStr::from_ptr(last) }.to_string_lossy();
                if !last.is_empty() {
                    text.push_str(&format!(": {last}"));
                }
            }
        }
        Err(ApiError::new(text))
    }
}

/// NCCL's code for a dtype, or `None` for those it cannot sum.
pub fn nccl_dtype(dtype: DType) -> Option<c_int> {
    Some(match dtype {
        DType::I64 => 4,
        DType::F16 => 6,
        DType::F32 => 7,
        DType::F64 => 8,
        DType::BF16 => 9,
        _ => return None,
    })
}

/// One rank's NCCL communicator, on one GPU.
pub struct NcclComm {
    library: &'static NcclLibrary,
    comm: RawComm,
    device: Arc<CudaDevice>,
    rank: usize,
    world: usize,
    // NCCL calls on one communicator must not run concurrently from several threads.
    calls: Mutex<()>,
    // What was queued since the last join (one lock, so a join never frees a buffer whose
    // call its marker does not cover).
    queued: Mutex<Queued>,
    // Set by `abort`: NCCL freed the communicator, so it must not be used or destroyed again.
    aborted: AtomicBool,
    // Held (shared) by `check` while it reads the communicator and (exclusively) by `abort`
    // while it frees it, so that a watchdog's check never reads a freed communicator.
    alive: RwLock<()>,
}

/// The calls queued on a communicator since its last join.
#[derive(Default)]
struct Queued {
    // The communication stream's marker after the last call (what `join` and `mark` wait for).
    last: Option<Arc<cudarc::driver::CudaEvent>>,
    // The buffers of those calls, kept alive until the join: memory is freed on the compute
    // stream, which is ordered after the calls only by a join, so a buffer dropped before its
    // join (an error path) must not return to the pool while NCCL may still use it.
    pending: Vec<Arc<dyn DeviceBuffer>>,
}

// SAFETY: the communicator handle is only used under `calls`, and NCCL allows a communicator to
// be used from any thread as long as calls do not overlap.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NcclComm(rank {} of {} on cuda:{}, {:?})",
            self.rank,
            self.world,
            self.device.ordinal(),
            self.library
        )
    }
}

impl NcclComm {
    /// Joins communicator `id` as `rank` of `world`, on `device`. Collective: every rank calls
    /// it with the same id, and it returns once all have.
    pub fn init(
        library: &'static NcclLibrary,
        device: Arc<CudaDevice>,
        id: &UniqueId,
        rank: usize,
        world: usize,
    ) -> Result<NcclComm, ApiError> {
        if rank >= world {
            return Err(ApiError::new(format!(
                "NCCL: rank {rank} is outside a world of {world}"
            )));
        }
        device.bind_to_thread()?;
        let mut comm: RawComm = std::ptr::null_mut();
        // SAFETY: `comm` is an out-parameter; the id is passed by value as NCCL declares; the
        // device's context is current on this thread, so NCCL uses that GPU.
        let code = unsafe {
            (library.symbols.comm_init_rank)(&mut comm, world as c_int, RawUniqueId { bytes: id.0 }, rank as c_int)
        };
        library.result(
            code,
            None,
            &format!("ncclCommInitRank (rank {rank} of {world} on cuda:{})", device.ordinal()),
        )?;
        Ok(NcclComm {
            library,
            comm,
            device,
            rank,
            world,
            calls: Mutex::new(()),
            queued: Mutex::new(Queued::default()),
            aborted: AtomicBool::new(false),
            alive: RwLock::new(()),
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        Device::Cuda(self.device.ordinal())
    }

    /// Sums `t` over all ranks, in place, queued on the communication stream after the kernels
    /// queued so far. `t` must be a contiguous tensor on this communicator's device whose
    /// buffer nothing else holds (a freshly packed bucket): tensors are values, so writing into
    /// a shared buffer would change other tensors. Call [`NcclComm::join`] before reading `t`.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<(), ApiError> {
        let all_reduce = self.library.symbols.all_reduce;
        // SAFETY: in-place (send == receive) is allowed by NCCL.
        self.enqueue(t, "ncclAllReduce", |ptr, count, dtype, stream| unsafe {
            all_reduce(ptr as *const _, ptr as *mut _, count, dtype, SUM, self.comm, stream)
        })
    }

    /// Overwrites `t` on every rank with its value on `root`, in place (same conditions on `t`
    /// as [`NcclComm::all_reduce_sum`]); joined, so `t` may be read at once.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), ApiError> {
        if root >= self.world {
            return Err(ApiError::new(format!(
                "NCCL broadcast: root {root} is outside a world of {}",
                self.world
            )));
        }
        let broadcast = self.library.symbols.broadcast;
        // SAFETY: in-place (send == receive) is allowed by NCCL.
        self.enqueue(t, "ncclBroadcast", |ptr, count, dtype, stream| unsafe {
            broadcast(
                ptr as *const _,
                ptr as *mut _,
                count,
                dtype,
                root as c_int,
                self.comm,
                stream,
            )
        })?;
        self.join()
    }

    /// Orders the kernels and copies queued from now on after every call queued so far, so
    /// that they see the calls' results. Does not wait on the host.
    pub fn join(&self) -> Result<(), ApiError> {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(marker) = &queued.last {
            // On failure the buffers stay held: freeing them unordered would be worse.
            self.device.compute_after(marker)?;
        }
        // Frees of these buffers now come after the calls in the compute stream's order.
        queued.pending.clear();
        Ok(())
    }

    /// Queues one in-place call on `t` (`call` gets its device address, element count, NCCL
    /// dtype and the stream), after checking `t` and with the device's context current. The
    /// communication stream first waits for the compute stream, so the call comes after the
    /// kernels that wrote `t`; `operand` has checked that the address range lies inside a live
    /// allocation. The buffer is freed on the compute stream once its last tensor drops, which
    /// comes after a `join` (the reader unpacks the result only then).
    fn enqueue(
        &self,
        t: &Tensor,
        what: &str,
        call: impl FnOnce(u64, usize, c_int, library::RawStream) -> c_int,
    ) -> Result<(), ApiError> {
        self.usable()?;
        let (ptr, count, dtype, buffer) = self.operand(t, what)?;
        let _calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        self.device.bind_to_thread()?;
        self.device.comm_after_compute()?;
        let code = call(ptr, count, dtype, self.device.raw_comm_stream());
        self.library.result(code, Some(self.comm), what)?;
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        // Held before the marker, so that even a failed marker leaves the buffer alive.
        queued.pending.push(buffer);
        queued.last = Some(Arc::new(self.device.record_comm_event()?));
        Ok(())
    }

    /// An error once [`NcclComm::abort`] has run.
    fn usable(&self) -> Result<(), ApiError> {
        if self.aborted.load(Ordering::SeqCst) {
            return Err(ApiError::new(format!(
                "NCCL: the communicator of rank {} of {} was aborted",
                self.rank, self.world
            )));
        }
        Ok(())
    }

    /// The error a queued call ended with, if any (a peer that failed or left, a network
    /// error); `Ok` while calls are still running well. Never waits, and may be called while
    /// another thread is inside a call (NCCL allows it; watchdogs do it).
    pub fn check(&self) -> Result<(), ApiError> {
        let _alive = self.alive.read().unwrap_or_else(|e| e.into_inner());
        self.usable()?;
        let mut async_code: c_int = SUCCESS;
        // SAFETY: a live communicator and an out-parameter.
        let code = unsafe { (self.library.symbols.comm_get_async_error)(self.comm, &mut async_code) };
        self.library.result(code, Some(self.comm), "ncclCommGetAsyncError")?;
        if async_code == IN_PROGRESS {
            return Ok(());
        }
        self.library.result(async_code, Some(self.comm), "an NCCL collective")
    }

    /// A marker of this communicator's calls so far: [`NcclMark::poll`] says when they have
    /// all run (for a watchdog that must not block).
    pub fn mark(&self) -> Result<NcclMark, ApiError> {
        let last = self.queued.lock().unwrap_or_else(|e| e.into_inner()).last.clone();
        let event = match last {
            Some(marker) => marker,
            None => Arc::new(self.device.record_comm_event()?),
        };
        Ok(NcclMark { event })
    }

    /// Stops every call of this communicator, so that a rank whose peer died can exit instead of
    /// waiting forever. The communicator is unusable afterwards.
    pub fn abort(&self) {
        // Once only: ncclCommAbort frees the communicator.
        if self.aborted.swap(true, Ordering::SeqCst) {
            return;
        }
        // Not the calls' lock: the point is to stop a call that holds it. A check (quick, and
        // what watchdog threads run) finishes first.
        let _alive = self.alive.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: a live communicator; ncclCommAbort may be called while a collective runs.
        unsafe { (self.library.symbols.comm_abort)(self.comm) };
    }

    /// The device address, element count, NCCL dtype and buffer of `t`, after checking that it
    /// can be reduced in place.
    fn operand(&self, t: &Tensor, op: &str) -> Result<(u64, usize, c_int, Arc<dyn DeviceBuffer>), ApiError> {
        let refuse = |why: String| {
            Err(ApiError::new(format!(
                "{op}: a {:?} {} tensor on {} {why}",
                t.shape(),
                t.dtype(),
                t.device()
            )))
        };
        if t.device() != self.device() {
            return refuse(format!("is not on this communicator's device {}", self.device()));
        }
        let Some(dtype) = nccl_dtype(t.dtype()) else {
            return refuse("cannot be summed by NCCL (f32, f64, f16, bf16 and i64 can)".into());
        };
        if !t.layout().is_contiguous() {
            return refuse("is a strided view; reduce a contiguous copy".into());
        }
        let Storage::Device(buffer) = t.raw().storage() else {
            return refuse("has host storage".into());
        };
        // Clones of a tensor share one buffer reference; more than one means that another tensor
        // (a view, a reshape) sees this memory. The references this communicator holds for calls
        // not yet joined do not count: the stream orders a second call on the same buffer.
        let held = {
            let queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            queued.pending.iter().filter(|p| Arc::ptr_eq(p, buffer)).count()
        };
        if Arc::strong_count(buffer) > 1 + held {
            return refuse("shares its buffer with other tensors; reduce a fresh copy".into());
        }
        let Some(cuda) = buffer.as_any().downcast_ref::<CudaBuffer<CudaDevice>>() else {
            return refuse("was not made by the CUDA backend".into());
        };
        let offset = t.layout().offset() * t.dtype().size_in_bytes();
        Ok((
            self.device.device_ptr(&cuda.mem, offset),
            t.numel(),
            dtype,
            buffer.clone(),
        ))
    }
}

/// Work queued on a device up to a point (see [`NcclComm::mark`]).
pub struct NcclMark {
    event: Arc<cudarc::driver::CudaEvent>,
}

impl NcclMark {
    /// `Ok(true)` once the marked work has all run, `Ok(false)` while it runs, or the error the
    /// device reported. Never waits.
    pub fn poll(&self) -> Result<bool, ApiError> {
        self.event
            .context()
            .bind_to_thread()
            .map_err(|e| ApiError::new(format!("making the CUDA context current: {e:?}")))?;
        self.event
            .try_is_complete()
            .map_err(|e| ApiError::new(format!("waiting for queued device work: {e:?}")))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let _ = self.device.bind_to_thread();
        // The pending buffers (dropped after this) are freed on the compute stream: after the
        // calls that use them.
        let _ = self.join();
        if self.aborted.load(Ordering::SeqCst) {
            return;
        }
        // After a failure (a peer gone), ncclCommDestroy could wait forever for the calls.
        if self.check().is_err() {
            self.abort();
            return;
        }
        // SAFETY: the last use of a live communicator; NCCL waits for its queued calls.
        unsafe { (self.library.symbols.comm_destroy)(self.comm) };
    }
}
