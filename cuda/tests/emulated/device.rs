//! A [`DeviceApi`] whose "GPU" is the kernels' C++ emulator (`kernels/tests/emulate`): memory
//! is host bytes, every launch runs the generated kernel's source on the CPU, and the GEMM is
//! a plain loop with cuBLAS's column-major semantics. With it, everything the CUDA backend
//! decides runs here, without a GPU.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, OnceLock};

use nabla_core::{DType, Device};
use nabla_cuda::{ApiError, CudaBackend, DeviceApi, GemmCall, HostRead, LaunchArg};
use nabla_kernels::launch::LaunchDims;
use nabla_kernels::{ArgType, KernelSpec};

#[path = "../../../kernels/tests/emulate/harness.rs"]
#[allow(dead_code)]
mod harness;

/// Emulated device memory (its block goes back to the pool, if the device has one, when
/// dropped).
#[derive(Debug)]
pub struct HostMem(Mutex<Vec<u8>>, Option<Arc<Pool>>);

impl HostMem {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        if let Some(pool) = &self.1 {
            let n = self.bytes().len();
            pool.live.fetch_sub(n, SeqCst);
            pool.cached.fetch_add(n, SeqCst);
        }
    }
}

/// A device memory of `capacity` bytes with a caching pool that never reuses a block: freed
/// blocks stay cached (counted against the capacity) until `release_cached`, so an allocation
/// that fits only once the cache is returned exercises the backend's retry.
#[derive(Debug, Default)]
pub struct Pool {
    /// Bytes the device has.
    pub capacity: usize,
    /// Bytes of live allocations.
    pub live: AtomicUsize,
    /// Bytes freed and kept by the pool.
    pub cached: AtomicUsize,
    /// Calls of `release_cached`.
    pub releases: AtomicUsize,
}

impl EmulatedGpu {
    /// A new emulated GPU, with a memory of `capacity` bytes when given (else unbounded).
    pub fn new(capacity: Option<usize>) -> EmulatedGpu {
        EmulatedGpu {
            launches: Mutex::new(Vec::new()),
            downloads: AtomicUsize::new(0),
            pool: capacity.map(|capacity| {
                Arc::new(Pool {
                    capacity,
                    ..Pool::default()
                })
            }),
        }
    }

    /// `bytes` as emulated memory, within the pool's capacity when there is one.
    fn take(&self, bytes: Vec<u8>) -> Result<HostMem, ApiError> {
        let Some(pool) = &self.pool else {
            return Ok(HostMem(Mutex::new(bytes), None));
        };
        let used = pool.live.load(SeqCst) + pool.cached.load(SeqCst);
        if used + bytes.len() > pool.capacity {
            return Err(ApiError::out_of_memory(format!(
                "allocating {} bytes: emulated CUDA_ERROR_OUT_OF_MEMORY",
                bytes.len()
            )));
        }
        pool.live.fetch_add(bytes.len(), SeqCst);
        Ok(HostMem(Mutex::new(bytes), Some(pool.clone())))
    }
}

/// The emulated GPU (two "SMs", so that launch sizes stay small and split reductions happen
/// at small sizes).
pub struct EmulatedGpu {
    /// Launches made, for tests that count them.
    pub launches: Mutex<Vec<String>>,
    /// Reads from the device (each a synchronisation on a real GPU).
    pub downloads: AtomicUsize,
    /// The memory's capacity and cache, when it is bounded.
    pub pool: Option<Arc<Pool>>,
}

impl DeviceApi for EmulatedGpu {
    type Mem = HostMem;

    fn ordinal(&self) -> usize {
        0
    }

    fn sm_count(&self) -> u32 {
        2
    }

    fn alloc(&self, bytes: usize) -> Result<HostMem, ApiError> {
        // Not zero: a kernel that forgets to write its output shows up.
        self.take(vec![0xA5; bytes])
    }

    fn alloc_zeroed(&self, bytes: usize) -> Result<HostMem, ApiError> {
        self.take(vec![0; bytes])
    }

    fn upload(&self, bytes: &[u8]) -> Result<HostMem, ApiError> {
        self.take(bytes.to_vec())
    }

    fn download_many(&self, reads: &[HostRead<'_, HostMem>]) -> Result<Vec<Vec<u8>>, ApiError> {
        // One synchronisation, however many ranges it copies.
        self.downloads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(reads
            .iter()
            .map(|r| r.mem.bytes()[r.offset..r.offset + r.len].to_vec())
            .collect())
    }

    fn zero(&self, mem: &HostMem) -> Result<(), ApiError> {
        mem.bytes().fill(0);
        Ok(())
    }

    fn launch(&self, spec: &KernelSpec, dims: LaunchDims, args: &[LaunchArg<'_, HostMem>]) -> Result<(), ApiError> {
        self.launches.lock().unwrap().push(spec.entry_name());
        let params = spec.params();
        let hargs: Vec<harness::Arg> = args
            .iter()
            .map(|a| match a {
                LaunchArg::Ptr(m, off) => harness::Arg::Buf(m.bytes()[*off..].to_vec()),
                LaunchArg::Null => harness::Arg::Null,
                LaunchArg::Layout(l) => harness::Arg::layout(l),
                LaunchArg::I64(v) => harness::Arg::i64(*v),
                LaunchArg::I32(v) => harness::Arg::i32(*v),
                LaunchArg::F64(v) => harness::Arg::f64(*v),
            })
            .collect();
        let outs = harness::run(spec, dims.grid, dims.block, hargs);
        for ((p, a), out) in params.iter().zip(args).zip(outs) {
            let writes = matches!(
                p.ty,
                ArgType::Out(_) | ArgType::InOut(_) | ArgType::AccOut(_) | ArgType::ErrorRecord
            );
            if let (true, LaunchArg::Ptr(m, off), Some(bytes)) = (writes, a, out) {
                let mut dst = m.bytes();
                let end = *off + bytes.len();
                dst[*off..end].copy_from_slice(&bytes);
            }
        }
        Ok(())
    }

    fn gemm(&self, c: &GemmCall<'_, HostMem>) -> Result<(), ApiError> {
        let size = c.dtype.size_in_bytes();
        let read = |m: &HostMem| decode(c.dtype, &m.bytes());
        let (a, b) = (read(c.a.mem), read(c.b.mem));
        let mut out = vec![0f64; (c.c_stride * (c.batch - 1) + c.ldc * c.n) as usize];
        // Element (i, j) of op(X) for a column-major X with leading dimension ld.
        let at = |x: &[f64], o: &nabla_cuda::GemmOperand<'_, HostMem>, batch: i64, i: i64, j: i64| {
            let base = (o.offset / size) as i64 + batch * o.batch_stride;
            let (r, col) = if o.transpose { (j, i) } else { (i, j) };
            x[(base + r + col * o.ld) as usize]
        };
        for bt in 0..c.batch {
            for i in 0..c.m {
                for j in 0..c.n {
                    let mut acc = 0f64;
                    for l in 0..c.k {
                        acc += at(&a, &c.a, bt, i, l) * at(&b, &c.b, bt, l, j);
                    }
                    out[(bt * c.c_stride + i + j * c.ldc) as usize] = acc;
                }
            }
        }
        let bytes = encode(c.dtype, &out);
        let mut dst = c.c.bytes();
        dst[..bytes.len()].copy_from_slice(&bytes);
        Ok(())
    }

    fn synchronize(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn release_cached(&self) -> Result<(), ApiError> {
        if let Some(pool) = &self.pool {
            pool.cached.store(0, SeqCst);
            pool.releases.fetch_add(1, SeqCst);
        }
        Ok(())
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        let pool = self.pool.as_ref()?;
        let used = pool.live.load(SeqCst) + pool.cached.load(SeqCst);
        Some((pool.capacity.saturating_sub(used), pool.capacity))
    }
}

fn decode(d: DType, bytes: &[u8]) -> Vec<f64> {
    let whole = &bytes[..bytes.len() / d.size_in_bytes() * d.size_in_bytes()];
    let buf = nabla_core::storage::CpuBuffer::from_le_bytes(d, whole).unwrap();
    let t = nabla_core::Tensor::from_raw(nabla_core::storage::RawTensor::from_cpu(
        buf,
        &[whole.len() / d.size_in_bytes()],
    ));
    t.to_vec::<f64>()
}

fn encode(d: DType, v: &[f64]) -> Vec<u8> {
    nabla_core::Tensor::from_vec(v.to_vec(), &[v.len()])
        .cast(d)
        .to_host_buffer()
        .to_le_bytes()
}

/// True when `ci/gpu-check` runs these tests on a real GPU (`NABLA_GPU_CHECK=1`) instead of
/// the emulator.
pub fn real_gpu() -> bool {
    std::env::var("NABLA_GPU_CHECK").is_ok_and(|v| v == "1")
}

/// True when the device under test can run: the real GPU when asked for (its absence is then a
/// failure, not a skip), else the emulator (a C++ compiler is needed; the tests say so when
/// there is none).
pub fn available() -> bool {
    real_gpu() || harness::available()
}

/// Makes `Device::Cuda(0)` the device under test: the real GPU through `nabla_cuda::init` under
/// `ci/gpu-check`, the emulated one otherwise. The guard serialises the tests: they share one
/// device, whose error record reports at the next read whichever kernel found the error.
pub fn setup() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    static REAL: OnceLock<()> = OnceLock::new();
    if real_gpu() {
        REAL.get_or_init(|| {
            nabla_cuda::init(0).unwrap_or_else(|e| panic!("NABLA_GPU_CHECK=1 but the GPU cannot be used: {e}"));
        });
    } else {
        emulated_backend();
    }
    guard
}

/// The emulated backend, registered for `Device::Cuda(0)` once per test process. Panics under
/// `ci/gpu-check`: registering it there would silently move every later test off the GPU.
pub fn emulated_backend() -> Arc<CudaBackend<EmulatedGpu>> {
    assert!(
        !real_gpu(),
        "internal test error: the emulator was asked for while NABLA_GPU_CHECK=1 (guard the call with !real_gpu())"
    );
    static BE: OnceLock<Arc<CudaBackend<EmulatedGpu>>> = OnceLock::new();
    BE.get_or_init(|| {
        let gpu = Arc::new(EmulatedGpu::new(None));
        let be = Arc::new(CudaBackend::new(gpu).unwrap());
        nabla_core::register_backend(Device::Cuda(0), be.clone());
        be
    })
    .clone()
}
