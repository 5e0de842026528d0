//! [`CudaDevice`]: the [`DeviceApi`] of one GPU through cudarc. One stream orders all kernels
//! and copies (a second one carries NCCL's collectives, ordered against it by events),
//! so cudarc's per-buffer event tracking is turned off (it would add two events per launch);
//! memory comes from [`memory::Allocator`]: the device's stream-ordered pool, kept warm, or
//! where that pool does not work, `cuMemAlloc` behind our own cache.

mod compile;
mod memory;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{CudaBlas, result as blas, sys as blas_sys};
use cudarc::driver::sys::{self as cu, CUdevice_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use nabla_core::DType;
use nabla_kernels::launch::LaunchDims;
use nabla_kernels::{KernelLayout, KernelSpec};

use compile::Compiler;
use memory::Allocator;
pub use memory::{ALLOCATOR_VAR, DeviceMemory};

use crate::api::{ApiError, DeviceApi, GemmCall, HostRead, LaunchArg};

/// A [`KernelLayout`] passed by value to a kernel.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct LayoutArg(KernelLayout);

// SAFETY: `KernelLayout` is `repr(C)` plain data (ints), the struct the kernels declare.
unsafe impl DeviceRepr for LayoutArg {}

/// One argument's value, owned until the launch has read it.
enum Value {
    Ptr(u64),
    Layout(LayoutArg),
    I64(i64),
    I32(i32),
    F64(f64),
}

/// One GPU: its context, its stream, cuBLAS on that stream, the compiled kernels, and a second
/// stream for communication (NCCL), so that collectives run beside the kernels.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    comm_stream: Arc<CudaStream>,
    blas: CudaBlas,
    memory: Arc<Allocator>,
    sm_count: u32,
    compiler: Compiler,
    functions: Mutex<HashMap<KernelSpec, CudaFunction>>,
}

// SAFETY: the cuBLAS handle is only used with the device's one stream; calls are serialised
// by the stream's order, and cuBLAS handles may be used from any thread.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> ApiError + '_ {
    move |e| {
        let message = format!("{what}: {e:?}");
        if e.0 == cu::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            ApiError::out_of_memory(message)
        } else {
            ApiError::new(message)
        }
    }
}

impl CudaDevice {
    /// Opens device `ordinal`: a context, a stream, cuBLAS, the memory allocator. Call
    /// [`crate::check`] first: it is what makes a missing library an error instead of
    /// cudarc's panic.
    pub fn open(ordinal: usize) -> Result<CudaDevice, ApiError> {
        let ctx = CudaContext::new(ordinal).map_err(driver_err("creating a CUDA context"))?;
        // SAFETY: called before any allocation or stream of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("creating a stream"))?;
        let comm_stream = ctx
            .new_stream()
            .map_err(driver_err("creating the communication stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| ApiError::new(format!("starting cuBLAS: {e:?}")))?;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("reading the SM count"))? as u32;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("reading the compute capability"))?;
        let mut driver = 0;
        // SAFETY: an out-parameter of a plain driver query on an initialised driver.
        unsafe { cu::cuDriverGetVersion(&mut driver) };
        let memory = Allocator::open(&ctx, &stream)?;
        Ok(CudaDevice {
            ctx,
            stream,
            comm_stream,
            blas,
            memory,
            sm_count,
            compiler: Compiler::new(major, minor, driver),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The architecture kernels are compiled for (`sm_90` on an H100/H200).
    pub fn arch(&self) -> &str {
        self.compiler.arch()
    }

    /// Compiles `specs` into the disk kernel cache on `threads` threads (NVRTC is thread-safe),
    /// so that their first launches load a binary instead of compiling one by one (about 0.2 s
    /// each). Kernels already cached are skipped. Returns how many were compiled; the first
    /// error stops it. Without a disk cache (`NABLA_KERNEL_CACHE=""`) there is nothing to warm.
    pub fn precompile(&self, specs: &[KernelSpec], threads: usize) -> Result<usize, ApiError> {
        if !self.compiler.has_disk_cache() {
            return Ok(0);
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let compiled = std::sync::atomic::AtomicUsize::new(0);
        let failed: Mutex<Option<ApiError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= specs.len() || failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                            return;
                        }
                        match self.compiler.cubin(&specs[i], false) {
                            Ok((_, true)) => {}
                            Ok((_, false)) => {
                                compiled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(compiled.into_inner()),
        }
    }

    /// How kernels are compiled here: architecture, NVRTC and driver versions, the CUDA
    /// headers' directory and the disk cache (for logs and bug reports).
    pub fn compiler_info(&self) -> String {
        self.compiler.describe()
    }

    /// The loaded function of `spec`: from memory, else from the disk cache or NVRTC.
    fn function(&self, spec: &KernelSpec) -> Result<CudaFunction, ApiError> {
        let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(spec) {
            return Ok(f.clone());
        }
        let load = |cubin: Vec<u8>| {
            self.ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(driver_err(&format!("loading {}", spec.entry_name())))
        };
        let module = match self.compiler.cubin(spec, false)? {
            (cubin, false) => load(cubin)?,
            // A cached binary the driver refuses (damaged, or from another toolchain) is
            // compiled again rather than failing for good.
            (cubin, true) => match load(cubin) {
                Ok(m) => m,
                Err(_) => load(self.compiler.cubin(spec, true)?.0)?,
            },
        };
        let f = module
            .load_function(&spec.entry_name())
            .map_err(driver_err(&format!("finding {}", spec.entry_name())))?;
        map.insert(*spec, f.clone());
        Ok(f)
    }

    /// How device memory is allocated here, and why (for logs and bug reports).
    pub fn allocator_info(&self) -> String {
        self.memory.describe()
    }

    fn ptr(&self, mem: &DeviceMemory, offset: usize) -> u64 {
        mem.ptr() + offset as u64
    }

    /// The device address `offset` bytes into `mem` (for libraries that take raw pointers).
    pub(crate) fn device_ptr(&self, mem: &DeviceMemory, offset: usize) -> u64 {
        self.ptr(mem, offset)
    }

    /// Makes this device's context current on the calling thread (libraries such as NCCL use
    /// the current context).
    pub(crate) fn bind_to_thread(&self) -> Result<(), ApiError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("making the CUDA context current"))
    }

    /// Makes the communication stream wait for the work queued on the compute stream so far
    /// (a collective's input is ready when the kernels that made it have run).
    pub(crate) fn comm_after_compute(&self) -> Result<(), ApiError> {
        let ready = self
            .stream
            .record_event(None)
            .map_err(driver_err("recording an event"))?;
        // Destroying `ready` after the wait is queued is allowed: CUDA frees it once it fired.
        self.comm_stream
            .wait(&ready)
            .map_err(driver_err("ordering the communication stream"))
    }

    /// A marker of the work queued on the communication stream so far.
    pub(crate) fn record_comm_event(&self) -> Result<cudarc::driver::CudaEvent, ApiError> {
        self.comm_stream
            .record_event(None)
            .map_err(driver_err("recording an event on the communication stream"))
    }

    /// Makes the compute stream wait for `marker` (a collective's output is read only after
    /// the collective has run).
    pub(crate) fn compute_after(&self, marker: &cudarc::driver::CudaEvent) -> Result<(), ApiError> {
        self.stream
            .wait(marker)
            .map_err(driver_err("ordering the compute stream"))
    }

    /// The communication stream, as the raw handle libraries take.
    pub(crate) fn raw_comm_stream(&self) -> *mut std::ffi::c_void {
        self.comm_stream.cu_stream() as *mut std::ffi::c_void
    }
}

impl DeviceApi for CudaDevice {
    type Mem = DeviceMemory;

    fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    fn sm_count(&self) -> u32 {
        self.sm_count
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceMemory, ApiError> {
        // Uninitialised: every kernel writes all of its output before anything reads it.
        self.memory.alloc(bytes)
    }

    fn alloc_zeroed(&self, bytes: usize) -> Result<DeviceMemory, ApiError> {
        let mem = self.memory.alloc(bytes)?;
        self.zero(&mem)?;
        Ok(mem)
    }

    fn upload(&self, bytes: &[u8]) -> Result<DeviceMemory, ApiError> {
        let mem = self.memory.alloc(bytes.len())?;
        // SAFETY: `mem` holds `bytes.len()` bytes; a copy from pageable host memory returns
        // once the driver has staged `bytes`, so they may be dropped after it.
        unsafe { cudarc::driver::result::memcpy_htod_async(mem.ptr(), bytes, self.stream.cu_stream()) }
            .map_err(driver_err(&format!("copying {} bytes to the device", bytes.len())))?;
        Ok(mem)
    }

    fn download_many(&self, reads: &[HostRead<'_, DeviceMemory>]) -> Result<Vec<Vec<u8>>, ApiError> {
        self.bind_to_thread()?;
        let mut out = Vec::with_capacity(reads.len());
        for r in reads {
            assert!(
                r.offset + r.len <= r.mem.len(),
                "internal error: reading {} bytes at {} from {:?}",
                r.len,
                r.offset,
                r.mem
            );
            let mut bytes = vec![0u8; r.len];
            if r.len == 0 {
                out.push(bytes);
                continue;
            }
            // SAFETY: the range lies inside `r.mem`; `bytes` is read only after the
            // synchronisation below.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(
                    &mut bytes,
                    self.ptr(r.mem, r.offset),
                    self.stream.cu_stream(),
                )
            }
            .map_err(driver_err(&format!("copying {} bytes from the device", r.len)))?;
            out.push(bytes);
        }
        // The compute stream only: a collective's result is ordered into it by a join, and
        // waiting for the communication stream too would wait for the collectives still
        // running (overlapped with the backward sweep), on every read of any value.
        self.stream
            .synchronize()
            .map_err(driver_err("synchronising the stream"))?;
        Ok(out)
    }

    fn release_cached(&self) -> Result<(), ApiError> {
        self.memory.release_cached()
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        self.bind_to_thread().ok()?;
        cudarc::driver::result::mem_get_info().ok()
    }

    fn zero(&self, mem: &DeviceMemory) -> Result<(), ApiError> {
        self.bind_to_thread()?;
        let p = self.ptr(mem, 0);
        // SAFETY: `p` addresses `mem.len()` bytes of live device memory of this context.
        unsafe { cudarc::driver::result::memset_d8_async(p, 0, mem.len(), self.stream.cu_stream()) }
            .map_err(driver_err("clearing device memory"))
    }

    fn launch(
        &self,
        spec: &KernelSpec,
        dims: LaunchDims,
        args: &[LaunchArg<'_, DeviceMemory>],
    ) -> Result<(), ApiError> {
        let f = self.function(spec)?;
        let values: Vec<Value> = args
            .iter()
            .map(|a| match a {
                LaunchArg::Ptr(m, off) => Value::Ptr(self.ptr(m, *off)),
                LaunchArg::Null => Value::Ptr(0),
                LaunchArg::Layout(l) => Value::Layout(LayoutArg(*l)),
                LaunchArg::I64(v) => Value::I64(*v),
                LaunchArg::I32(v) => Value::I32(*v),
                LaunchArg::F64(v) => Value::F64(*v),
            })
            .collect();
        let mut b = self.stream.launch_builder(&f);
        for v in &values {
            match v {
                Value::Ptr(p) => b.arg(p),
                Value::Layout(l) => b.arg(l),
                Value::I64(x) => b.arg(x),
                Value::I32(x) => b.arg(x),
                Value::F64(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (dims.grid, 1, 1),
            block_dim: (dims.block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments follow the entry point's generated parameter list (the backend
        // binds them by name from `spec.params()`), and every buffer outlives the launch in
        // stream order (frees are queued on the same stream).
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(driver_err(&format!("launching {}", spec.entry_name())))
    }

    fn gemm(&self, call: &GemmCall<'_, DeviceMemory>) -> Result<(), ApiError> {
        use blas_sys::cublasComputeType_t as Compute;
        use blas_sys::cudaDataType as T;
        let (ty, compute) = match call.dtype {
            DType::F32 => (T::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F),
            DType::F64 => (T::CUDA_R_64F, Compute::CUBLAS_COMPUTE_64F),
            DType::F16 => (T::CUDA_R_16F, Compute::CUBLAS_COMPUTE_32F),
            DType::BF16 => (T::CUDA_R_16BF, Compute::CUBLAS_COMPUTE_32F),
            other => return Err(ApiError::new(format!("cuBLAS has no {other} GEMM"))),
        };
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        // alpha and beta are in the compute type.
        let (one32, zero32, one64, zero64) = (1f32, 0f32, 1f64, 0f64);
        let (alpha, beta): (*const std::ffi::c_void, *const std::ffi::c_void) = if call.dtype == DType::F64 {
            (&one64 as *const f64 as _, &zero64 as *const f64 as _)
        } else {
            (&one32 as *const f32 as _, &zero32 as *const f32 as _)
        };
        // cuBLAS uses the calling thread's current context.
        self.bind_to_thread()?;
        let a = self.ptr(call.a.mem, call.a.offset);
        let b = self.ptr(call.b.mem, call.b.offset);
        let c = self.ptr(call.c, 0);
        // SAFETY: the backend sized every operand for these dimensions, leading dimensions and
        // strides (see `backend::matmul`), and the handle runs on this device's stream.
        unsafe {
            blas::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(call.a.transpose),
                op(call.b.transpose),
                call.m as i32,
                call.n as i32,
                call.k as i32,
                alpha,
                a as *const std::ffi::c_void,
                ty,
                call.a.ld as i32,
                call.a.batch_stride,
                b as *const std::ffi::c_void,
                ty,
                call.b.ld as i32,
                call.b.batch_stride,
                beta,
                c as *mut std::ffi::c_void,
                ty,
                call.ldc as i32,
                call.c_stride,
                call.batch as i32,
                compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| ApiError::new(format!("cublasGemmStridedBatchedEx: {e:?}")))
    }

    fn synchronize(&self) -> Result<(), ApiError> {
        self.stream
            .synchronize()
            .map_err(driver_err("synchronising the stream"))?;
        self.comm_stream
            .synchronize()
            .map_err(driver_err("synchronising the communication stream"))
    }
}
