//! Device memory of one GPU, owned by us rather than by cudarc's `CudaSlice`, so that the way
//! it is obtained can be chosen when the device opens:
//!
//! - **stream-ordered pool** (`cuMemAllocAsync`/`cuMemFreeAsync` on the compute stream, the
//!   device's default pool kept warm by a release threshold of "never"): the default wherever
//!   the device reports memory pools and a probe allocation works;
//! - **cached** (`cuMemAlloc` once per size class, blocks reused through [`BlockCache`]):
//!   wherever the pool is missing or the probe fails. cudarc uses the pool whenever the device
//!   reports one, with no fallback, and virtual GPUs and sandboxes exist where it does not work.
//!
//! `NABLA_CUDA_ALLOCATOR=pool` or `=cached` chooses one by hand.

use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self as cu, CUdevice_attribute};
use cudarc::driver::{CudaContext, CudaStream, result};

use crate::api::ApiError;
use crate::block_cache::{BlockCache, size_class};

use super::driver_err;

/// The environment variable that picks the allocator by hand (`pool` or `cached`).
pub const ALLOCATOR_VAR: &str = "NABLA_CUDA_ALLOCATOR";

/// How device memory is obtained.
enum Strategy {
    /// The driver's stream-ordered pool.
    StreamOrdered,
    /// `cuMemAlloc` behind our free lists.
    Cached(Mutex<BlockCache>),
}

/// Hands out and takes back the device memory of one context, in the compute stream's order.
pub(crate) struct Allocator {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    strategy: Strategy,
    why: String,
}

/// `bytes` of device memory (at least one), returned to its allocator when dropped: the
/// address is reused only by work queued after that point on the compute stream.
pub struct DeviceMemory {
    ptr: u64,
    bytes: usize,
    owner: Arc<Allocator>,
}

impl std::fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceMemory({} bytes at {:#x})", self.bytes, self.ptr)
    }
}

impl DeviceMemory {
    /// The device address of the first byte.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The bytes asked for (the block under them may be larger).
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// True for a request of no bytes (which still gets a valid address: at least one byte is
    /// allocated).
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        self.owner.free(self.ptr, self.bytes);
    }
}

impl Allocator {
    /// The allocator for `ctx`'s device, ordered on `stream`: the one `NABLA_CUDA_ALLOCATOR`
    /// names, else the pool when it works, else the cache.
    pub(crate) fn open(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>) -> Result<Arc<Allocator>, ApiError> {
        let chosen = std::env::var(ALLOCATOR_VAR).unwrap_or_default();
        let (strategy, why) = match chosen.trim() {
            "pool" => {
                probe_pool(ctx, stream).map_err(|e| {
                    ApiError::new(format!(
                        "{ALLOCATOR_VAR}=pool, but the stream-ordered pool does not work here: {e} \
                         (unset it, or set it to `cached`, to use cuMemAlloc behind a cache)"
                    ))
                })?;
                (Strategy::StreamOrdered, format!("{ALLOCATOR_VAR}=pool"))
            }
            "cached" => (cached(), format!("{ALLOCATOR_VAR}=cached")),
            "" => match probe_pool(ctx, stream) {
                Ok(()) => (Strategy::StreamOrdered, "the device's pool works".to_string()),
                Err(e) => (cached(), format!("the stream-ordered pool is not usable: {e}")),
            },
            other => {
                return Err(ApiError::new(format!(
                    "{ALLOCATOR_VAR}={other:?} is not an allocator: use `pool` (cuMemAllocAsync) or \
                     `cached` (cuMemAlloc behind a cache), or leave it unset to choose the pool when it works"
                )));
            }
        };
        Ok(Arc::new(Allocator {
            ctx: ctx.clone(),
            stream: stream.clone(),
            strategy,
            why,
        }))
    }

    /// Which allocator this is and why it was chosen (for logs).
    pub(crate) fn describe(&self) -> String {
        match &self.strategy {
            Strategy::StreamOrdered => format!("stream-ordered pool (cuMemAllocAsync; {})", self.why),
            Strategy::Cached(cache) => format!(
                "cached cuMemAlloc ({}; {} bytes cached now)",
                self.why,
                lock(cache).cached_bytes()
            ),
        }
    }

    /// `bytes` of uninitialised memory (at least one byte is allocated).
    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceMemory, ApiError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("making the CUDA context current"))?;
        let what = || format!("allocating {bytes} bytes");
        let ptr = match &self.strategy {
            // SAFETY: an allocation on this context's live stream.
            Strategy::StreamOrdered => {
                unsafe { result::malloc_async(self.stream.cu_stream(), bytes.max(1)) }.map_err(driver_err(&what()))?
            }
            Strategy::Cached(cache) => {
                let class = size_class(bytes);
                let reused = lock(cache).take(class);
                match reused {
                    Some(ptr) => ptr,
                    // SAFETY: a plain allocation on the current context.
                    None => unsafe { result::malloc_sync(class) }.map_err(driver_err(&what()))?,
                }
            }
        };
        Ok(DeviceMemory {
            ptr,
            bytes,
            owner: self.clone(),
        })
    }

    fn free(&self, ptr: u64, bytes: usize) {
        match &self.strategy {
            // SAFETY: `ptr` came from `malloc_async` on this stream and nothing else owns it;
            // work queued before on the stream still reads it before the free runs.
            Strategy::StreamOrdered => self
                .ctx
                .record_err(unsafe { result::free_async(ptr, self.stream.cu_stream()) }),
            // Reused only by work queued later on the same stream.
            Strategy::Cached(cache) => lock(cache).give(size_class(bytes), ptr),
        }
    }

    /// Waits for the stream, then returns the cached free blocks to the device (before an
    /// out-of-memory retry, so that a size the cache does not hold can be mapped).
    pub(crate) fn release_cached(&self) -> Result<(), ApiError> {
        self.stream
            .synchronize()
            .map_err(driver_err("synchronising the stream"))?;
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("making the CUDA context current"))?;
        match &self.strategy {
            Strategy::StreamOrdered => {
                // SAFETY: plain driver calls on this context's device; trimming keeps the
                // blocks that live allocations use.
                let code = unsafe {
                    let mut pool = std::ptr::null_mut();
                    match cu::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()) {
                        cu::CUresult::CUDA_SUCCESS => cu::cuMemPoolTrimTo(pool, 0),
                        other => other,
                    }
                };
                match code {
                    cu::CUresult::CUDA_SUCCESS => Ok(()),
                    other => Err(ApiError::new(format!(
                        "releasing the memory pool's cached blocks: {other:?}"
                    ))),
                }
            }
            Strategy::Cached(cache) => {
                let blocks = lock(cache).drain();
                for (ptr, class) in blocks {
                    // SAFETY: a cached block is owned by no tensor, and the stream has finished
                    // the work that used it.
                    unsafe { result::free_sync(ptr) }
                        .map_err(driver_err(&format!("returning a cached block of {class} bytes")))?;
                }
                Ok(())
            }
        }
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        if let Strategy::Cached(cache) = &self.strategy {
            let blocks = lock(cache).drain();
            if blocks.is_empty() {
                return;
            }
            self.ctx.record_err(self.stream.synchronize());
            if self.ctx.bind_to_thread().is_ok() {
                for (ptr, _) in blocks {
                    // SAFETY: as in `release_cached`; every `DeviceMemory` is gone (each held
                    // this allocator alive).
                    self.ctx.record_err(unsafe { result::free_sync(ptr) });
                }
            }
        }
    }
}

fn cached() -> Strategy {
    Strategy::Cached(Mutex::new(BlockCache::new()))
}

fn lock(cache: &Mutex<BlockCache>) -> std::sync::MutexGuard<'_, BlockCache> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the device's stream-ordered pool works: it must be reported, and an allocation,
/// a free and a synchronisation through it must succeed. On success the pool's release
/// threshold is raised so that freed blocks stay cached for reuse.
fn probe_pool(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>) -> Result<(), String> {
    let reported = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
        .map_err(|e| format!("reading CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: {e:?}"))?;
    if reported == 0 {
        return Err("the device reports no memory pools".into());
    }
    ctx.bind_to_thread().map_err(|e| format!("{e:?}"))?;
    // SAFETY: a one-byte allocation and its free on this context's live stream.
    unsafe {
        let ptr = result::malloc_async(stream.cu_stream(), 1).map_err(|e| format!("cuMemAllocAsync: {e:?}"))?;
        result::free_async(ptr, stream.cu_stream()).map_err(|e| format!("cuMemFreeAsync: {e:?}"))?;
    }
    stream
        .synchronize()
        .map_err(|e| format!("synchronising after cuMemAllocAsync: {e:?}"))?;
    // SAFETY: plain driver calls on this context's device.
    unsafe {
        let mut pool = std::ptr::null_mut();
        if cu::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == cu::CUresult::CUDA_SUCCESS {
            let mut keep: u64 = u64::MAX;
            cu::cuMemPoolSetAttribute(
                pool,
                cu::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut keep as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
    Ok(())
}
