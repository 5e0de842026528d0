//! The MPI communicator (cargo feature `mpi`), over the `mpi` crate's bindings to the
//! system's MPI library (Open MPI, MPICH, Intel MPI).
//!
//! MPI is initialised once per process with `MPI_THREAD_MULTIPLE`, because a data-parallel
//! wrapper reduces buckets on its own thread, on its own duplicated communicator, while the
//! main thread computes. A library that grants less is refused with a message (serialising
//! every call through one lock would deadlock two ranks whose threads hold it in different
//! collectives). The runtime is finalised at exit or when the last communicator is dropped.

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use mpi::Threading;
use mpi::ffi;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::AsRaw;

use crate::comm::{CommResult, Communicator, HostBuf, HostBufMut};

unsafe extern "C" {
    /// `MPI_IN_PLACE` of the library we link (from `csrc/mpi_in_place.c`).
    fn nabla_mpi_in_place() -> *mut c_void;
    /// The C library's `atexit`.
    fn atexit(f: extern "C" fn()) -> c_int;
}

/// Finalises MPI when the process exits normally while a communicator is still alive (the world
/// group of `nb::dist::init` lives until exit): without MPI_Finalize, `mpirun` reports every
/// rank as failed.
extern "C" fn finalize_at_exit() {
    let mut finalized: c_int = 0;
    // SAFETY: MPI_Finalized may be called at any time, even after MPI_Finalize.
    unsafe {
        ffi::MPI_Finalized(&mut finalized);
        if finalized == 0 {
            ffi::MPI_Finalize();
        }
    }
}

/// The initialised MPI library; finalised when dropped.
struct Runtime {
    universe: Mutex<Option<mpi::environment::Universe>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropping the universe calls MPI_Finalize.
        self.universe.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

fn runtime_slot() -> &'static Mutex<Option<std::sync::Weak<Runtime>>> {
    static SLOT: OnceLock<Mutex<Option<std::sync::Weak<Runtime>>>> = OnceLock::new();
    SLOT.get_or_init(|| Mutex::new(None))
}

/// A communicator over MPI (a duplicate of `MPI_COMM_WORLD` or of another MPI communicator).
pub struct MpiCommunicator {
    comm: SimpleCommunicator,
    raw: ffi::MPI_Comm,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    runtime: Arc<Runtime>,
}

// SAFETY: MPI handles are plain values that the MPI library lets any thread use: `world`
// refuses a library that did not grant MPI_THREAD_MULTIPLE.
unsafe impl Send for MpiCommunicator {}
// SAFETY: as for Send: all access goes through MPI calls, which are thread-safe under
// MPI_THREAD_MULTIPLE.
unsafe impl Sync for MpiCommunicator {}

fn check(rc: c_int, what: &str) -> CommResult<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what} returned MPI error code {rc}"))
    }
}

impl MpiCommunicator {
    /// Initialises MPI (once per process) and returns a communicator over all its ranks.
    pub fn world() -> CommResult<MpiCommunicator> {
        let mut slot = runtime_slot().lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().and_then(|w| w.upgrade()).is_some() || mpi::is_initialized() {
            return Err(
                "MPI is already initialised in this process; call nb::dist::init() once and clone the group".into(),
            );
        }
        let (universe, granted) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or("MPI_Init_thread failed (or MPI was already finalised in this process)")?;
        if granted != Threading::Multiple {
            drop(universe);
            return Err(format!(
                "the MPI library ({}) grants threading level {granted:?}, but nabla-dist needs MPI_THREAD_MULTIPLE \
                 (gradients are all-reduced on a communication thread while the sweep runs); use an MPI built with \
                 thread support (Open MPI 4 and MPICH are, by default)",
                Self::library_version().lines().next().unwrap_or("")
            ));
        }
        // SAFETY: registers a plain function; it runs at normal exit.
        if unsafe { atexit(finalize_at_exit) } != 0 {
            eprintln!("nabla-dist: could not register MPI_Finalize at exit; mpirun may report a failure at the end");
        }
        let world = universe.world();
        let runtime = Arc::new(Runtime {
            universe: Mutex::new(Some(universe)),
        });
        *slot = Some(Arc::downgrade(&runtime));
        drop(slot);
        Self::from_comm(world, runtime)
    }

    fn from_comm(comm: SimpleCommunicator, runtime: Arc<Runtime>) -> CommResult<MpiCommunicator> {
        let (rank, size, local_rank, local_size) = {
            let rank = comm.rank() as usize;
            let node = comm.split_shared(rank as c_int);
            (rank, comm.size() as usize, node.rank() as usize, node.size() as usize)
        };
        let raw = comm.as_raw();
        Ok(MpiCommunicator {
            comm,
            raw,
            rank,
            size,
            local_rank,
            local_size,
            runtime,
        })
    }

    /// The MPI library's version string (`Open MPI v4.1.4, ...`), for messages.
    pub fn library_version() -> String {
        mpi::environment::library_version()
            .map(|v| v.replace('\0', "").trim().to_string())
            .unwrap_or_else(|_| "unknown MPI library".into())
    }
}

/// The pointer, element count and MPI datatype of a buffer.
fn raw_parts(buf: &HostBuf<'_>) -> (*const c_void, c_int, ffi::MPI_Datatype) {
    // SAFETY: the RSMPI_* datatype handles are constants set up by the mpi crate's C shim.
    let (ptr, ty) = unsafe {
        match buf {
            HostBuf::F32(s) => (s.as_ptr() as *const c_void, ffi::RSMPI_FLOAT),
            HostBuf::F64(s) => (s.as_ptr() as *const c_void, ffi::RSMPI_DOUBLE),
            HostBuf::I64(s) => (s.as_ptr() as *const c_void, ffi::RSMPI_INT64_T),
            HostBuf::U8(s) => (s.as_ptr() as *const c_void, ffi::RSMPI_UINT8_T),
        }
    };
    (ptr, buf.len() as c_int, ty)
}

fn raw_parts_mut(buf: &mut HostBufMut<'_>) -> (*mut c_void, c_int, ffi::MPI_Datatype) {
    let (ptr, n, ty) = raw_parts(&buf.as_ref());
    (ptr as *mut c_void, n, ty)
}

fn count_fits(buf: &HostBuf<'_>) -> CommResult<()> {
    if buf.len() > c_int::MAX as usize {
        return Err(format!(
            "{} elements exceed MPI's count limit ({}); split the buffer",
            buf.len(),
            c_int::MAX
        ));
    }
    Ok(())
}

fn no_byte_sums(buf: &HostBuf<'_>) -> CommResult<()> {
    if let HostBuf::U8(_) = buf {
        return Err("sums of bytes are not supported; use i64".into());
    }
    Ok(())
}

impl Communicator for MpiCommunicator {
    fn name(&self) -> &'static str {
        "mpi"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_world_size(&self) -> usize {
        self.local_size
    }

    fn all_reduce_sum(&self, mut buf: HostBufMut<'_>) -> CommResult<()> {
        no_byte_sums(&buf.as_ref())?;
        count_fits(&buf.as_ref())?;
        let (ptr, n, ty) = raw_parts_mut(&mut buf);
        // SAFETY: `ptr` points at `n` elements of type `ty` that we borrow mutably for the call;
        // MPI_IN_PLACE tells MPI to read and write that one buffer.
        let rc = unsafe { ffi::MPI_Allreduce(nabla_mpi_in_place(), ptr, n, ty, ffi::RSMPI_SUM, self.raw) };
        check(rc, "MPI_Allreduce")
    }

    fn all_reduce_sum_into(&self, send: HostBuf<'_>, mut recv: HostBufMut<'_>) -> CommResult<()> {
        no_byte_sums(&send)?;
        count_fits(&send)?;
        if send.len() != recv.len() || send.type_name() != recv.type_name() {
            return Err(format!(
                "send buffer of {} {} and receive buffer of {} {} differ",
                send.len(),
                send.type_name(),
                recv.len(),
                recv.type_name()
            ));
        }
        let (sptr, n, ty) = raw_parts(&send);
        let (rptr, _, _) = raw_parts_mut(&mut recv);
        // SAFETY: both buffers hold `n` elements of `ty`, are distinct borrows, and live for
        // the whole (blocking) call.
        let rc = unsafe { ffi::MPI_Allreduce(sptr, rptr, n, ty, ffi::RSMPI_SUM, self.raw) };
        check(rc, "MPI_Allreduce")
    }

    fn broadcast(&self, mut buf: HostBufMut<'_>, root: usize) -> CommResult<()> {
        count_fits(&buf.as_ref())?;
        let (ptr, n, ty) = raw_parts_mut(&mut buf);
        // SAFETY: `ptr` points at `n` elements of `ty`, borrowed mutably for the blocking call.
        let rc = unsafe { ffi::MPI_Bcast(ptr, n, ty, root as c_int, self.raw) };
        check(rc, "MPI_Bcast")
    }

    fn barrier(&self) -> CommResult<()> {
        // SAFETY: a valid communicator handle.
        check(unsafe { ffi::MPI_Barrier(self.raw) }, "MPI_Barrier")
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> CommResult<Vec<Vec<u8>>> {
        let mut lens = vec![0i64; self.size];
        let my_len = [mine.len() as i64];
        {
            // SAFETY: one i64 sent per rank into `size` i64 slots.
            let rc = unsafe {
                ffi::MPI_Allgather(
                    my_len.as_ptr() as *const c_void,
                    1,
                    ffi::RSMPI_INT64_T,
                    lens.as_mut_ptr() as *mut c_void,
                    1,
                    ffi::RSMPI_INT64_T,
                    self.raw,
                )
            };
            check(rc, "MPI_Allgather")?;
        }
        let total: i64 = lens.iter().sum();
        if total > c_int::MAX as i64 {
            return Err(format!(
                "all_gather_bytes: {total} bytes in all exceed MPI's count limit"
            ));
        }
        let counts: Vec<c_int> = lens.iter().map(|&l| l as c_int).collect();
        let mut displs = Vec::with_capacity(self.size);
        let mut at = 0;
        for &c in &counts {
            displs.push(at);
            at += c;
        }
        let mut all = vec![0u8; total as usize];
        {
            // SAFETY: `all` holds the sum of `counts` bytes, laid out at `displs`.
            let rc = unsafe {
                ffi::MPI_Allgatherv(
                    mine.as_ptr() as *const c_void,
                    mine.len() as c_int,
                    ffi::RSMPI_UINT8_T,
                    all.as_mut_ptr() as *mut c_void,
                    counts.as_ptr(),
                    displs.as_ptr(),
                    ffi::RSMPI_UINT8_T,
                    self.raw,
                )
            };
            check(rc, "MPI_Allgatherv")?;
        }
        Ok(counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
            .collect())
    }

    fn duplicate(&self) -> CommResult<Box<dyn Communicator>> {
        let dup = { self.comm.duplicate() };
        Ok(Box::new(Self::from_comm(dup, self.runtime.clone())?))
    }

    fn abort(&self, code: i32) -> ! {
        // SAFETY: MPI_Abort may be called from any thread; it does not return on success.
        unsafe {
            ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code as c_int);
        }
        std::process::abort()
    }
}
