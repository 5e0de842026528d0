//! [`CudaBackend`]: core's `Backend` trait on one GPU. Each method picks the generated kernel
//! (`nabla-kernels`) for the operation and dtypes, binds its arguments by name, sizes the
//! launch with `nabla_kernels::launch`, and queues it; results stay on the device until a
//! value is read. Matmul goes to cuBLAS ([`matmul`]); softmax, log-softmax and layer-norm rows
//! run the fused row kernel ([`rows`]), the Adam update the fused Adam kernel ([`adam`]), and
//! im2col/col2im one window kernel each ([`windows`]).
//!
//! Errors the kernels find (an index out of range, an integer division by zero) go to a
//! device error record that [`Backend::to_host`] reads when it synchronises: the first one
//! becomes a panic naming the op and the value, as on the CPU, one synchronisation later.
//! Index checks run on the device too ([`Backend::check_indices`]): the message of each check
//! site is kept on the host, and the kernel reports the site's number with the index.

mod adam;
mod attention;
mod channels;
mod cross_entropy;
mod elementwise;
mod index;
mod matmul;
mod reduce;
mod rows;
mod sgd;
mod windows;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nabla_core::backend::{
    AdamStep, ArgOp, Backend, BinaryOp, CmpOp, IndexCheck, Padding2d, ReduceOp, RowOp, SgdStep, UnaryOp, Window2d,
};
use nabla_core::layout::Layout;
use nabla_core::storage::{CpuBuffer, RawTensor, Storage};
use nabla_core::{DType, Device};
use nabla_kernels::launch::LaunchDims;
use nabla_kernels::{
    ArgType, DeviceError, DeviceErrorKind, ERROR_RECORD_WORDS, KernelDType, KernelLayout, KernelSpec, Param,
};

use crate::api::{DeviceApi, HostRead, LaunchArg};
use crate::buffer::CudaBuffer;

/// The backend of one GPU, over a [`DeviceApi`].
pub struct CudaBackend<A: DeviceApi> {
    api: Arc<A>,
    device: Device,
    /// The device error record every checking kernel writes to.
    err: A::Mem,
    /// Serialises reading and clearing the error record.
    err_lock: Mutex<()>,
    /// The messages of the index-check sites, by site number minus one (a site is one
    /// message: an op, an axis and a shape), so that a device report names the op.
    sites: Mutex<Vec<String>>,
    /// One-element constants already on the device, by dtype and value bits: `x * 0.5` makes a
    /// scalar operand, and tensors are immutable, so one device copy serves every use (a fill
    /// launch and an allocation saved each time).
    scalars: Mutex<HashMap<(DType, u64), RawTensor>>,
    /// How the fused attention kernels spread rows over lanes.
    attention_tuning: Mutex<nabla_kernels::AttentionTuning>,
}

/// The most scalars [`CudaBackend`] keeps (the cache starts over when full: learning-rate
/// schedules make a new value every step).
const MAX_CACHED_SCALARS: usize = 512;

/// The kernel dtype of a core dtype.
pub(crate) fn kernel_dtype(d: DType) -> KernelDType {
    match d {
        DType::F32 => KernelDType::F32,
        DType::F64 => KernelDType::F64,
        DType::I64 => KernelDType::I64,
        DType::Bool => KernelDType::Bool,
        DType::F16 => KernelDType::F16,
        DType::BF16 => KernelDType::BF16,
    }
}

/// `bytes` for messages: `512 B`, `8.0 MiB`, `1.50 GiB`.
pub(crate) fn human_bytes(bytes: usize) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    const GIB: f64 = (1u64 << 30) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else if b >= MIB {
        format!("{:.1} MiB", b / MIB)
    } else {
        format!("{bytes} B")
    }
}

/// A kernel spec that the generator refused, as the panic core's contract expects (the op
/// layer has already checked dtypes, so this names a gap of the CUDA backend).
pub(crate) fn spec<S: Into<KernelSpec>>(r: Result<S, nabla_kernels::KernelError>, op: &str) -> KernelSpec {
    r.map(Into::into)
        .unwrap_or_else(|e| panic!("{op} on cuda: {e}; move the tensor to the CPU for this op"))
}

impl<A: DeviceApi> CudaBackend<A> {
    /// The backend of `api`'s device, with a zeroed error record.
    pub fn new(api: Arc<A>) -> Result<CudaBackend<A>, crate::api::ApiError> {
        let err = api.alloc_zeroed(8 * ERROR_RECORD_WORDS)?;
        let device = Device::Cuda(api.ordinal());
        Ok(CudaBackend {
            api,
            device,
            err,
            err_lock: Mutex::new(()),
            sites: Mutex::new(Vec::new()),
            scalars: Mutex::new(HashMap::new()),
            attention_tuning: Mutex::new(attention::tuning_from_env()),
        })
    }

    /// Makes the fused attention kernels spread rows over lanes as `tuning` says, for the calls
    /// that follow (head classes it does not fit keep the default). It starts as
    /// `NABLA_ATTENTION_TUNING=LANE_BYTES,ROWS` says, else the default: for comparing tunings.
    pub fn set_attention_tuning(&self, tuning: nabla_kernels::AttentionTuning) {
        *self.attention_tuning.lock().unwrap_or_else(|e| e.into_inner()) = tuning;
    }

    /// The fused attention kernels' tuning ([`CudaBackend::set_attention_tuning`]).
    pub fn attention_tuning(&self) -> nabla_kernels::AttentionTuning {
        *self.attention_tuning.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device API underneath.
    pub fn api(&self) -> &Arc<A> {
        &self.api
    }

    /// The buffer of a tensor of this device (panics naming both devices otherwise: the op
    /// layer checks devices, so this is an internal error).
    pub(crate) fn buf<'a>(&self, x: &'a RawTensor) -> &'a CudaBuffer<A> {
        match x.storage() {
            Storage::Device(b) => match b.as_any().downcast_ref::<CudaBuffer<A>>() {
                Some(c) if c.device == self.device => c,
                _ => panic!(
                    "internal error: the cuda backend of {} got a buffer of {}",
                    self.device,
                    b.device()
                ),
            },
            Storage::Cpu(_) => panic!("internal error: the cuda backend of {} got a host tensor", self.device),
        }
    }

    /// A new contiguous tensor of `shape` and `dtype` whose memory the caller's kernel writes.
    pub(crate) fn empty(&self, shape: &[usize], dtype: DType) -> RawTensor {
        let n: usize = shape.iter().product();
        let bytes = (n * dtype.size_in_bytes()).max(1);
        let mem = self.allocate(bytes, &|| format!("{shape:?} {dtype}"), || self.api.alloc(bytes));
        self.wrap(mem, shape, dtype)
    }

    /// The memory `attempt` allocates (`bytes`, for `what`). When the device is out of memory,
    /// the pool's cached blocks are released and the allocation is tried once more; a second
    /// failure panics with the request, the device's free and total memory, and what to do.
    pub(crate) fn allocate(
        &self,
        bytes: usize,
        what: &dyn Fn() -> String,
        attempt: impl Fn() -> Result<A::Mem, crate::api::ApiError>,
    ) -> A::Mem {
        let first = match attempt() {
            Ok(mem) => return mem,
            Err(e) => e,
        };
        if !first.is_out_of_memory() {
            panic!(
                "cuda: allocating {} for {} on {}: {first}",
                human_bytes(bytes),
                what(),
                self.device
            );
        }
        if let Err(e) = self.api.release_cached() {
            panic!("cuda: out of memory on {} and {e}", self.device);
        }
        match attempt() {
            Ok(mem) => mem,
            Err(e) if e.is_out_of_memory() => {
                let state = match self.api.memory_info() {
                    Some((free, total)) => format!("{} free of {}", human_bytes(free), human_bytes(total)),
                    None => "free memory unknown".to_string(),
                };
                panic!(
                    "cuda: out of memory on {}: {} for {} does not fit ({state}, after returning the \
                     cached blocks to the device). The tensors still alive hold the rest: use a smaller \
                     batch, recompute activations with checkpoint (remat), or drop tensors you no \
                     longer need ({e})",
                    self.device,
                    human_bytes(bytes),
                    what()
                )
            }
            Err(e) => panic!(
                "cuda: allocating {} for {} on {}: {e}",
                human_bytes(bytes),
                what(),
                self.device
            ),
        }
    }

    /// A contiguous tensor of `shape` over `mem`.
    pub(crate) fn wrap(&self, mem: A::Mem, shape: &[usize], dtype: DType) -> RawTensor {
        let len = shape.iter().product();
        let buf = CudaBuffer::<A> {
            mem,
            dtype,
            len,
            device: self.device,
        };
        RawTensor::new(Storage::Device(Arc::new(buf)), Layout::contiguous(shape))
            .expect("a contiguous layout fits its own buffer")
    }

    /// The kernel layout of a view, when it fits [`nabla_kernels::MAX_DIMS`] axes after
    /// merging.
    pub(crate) fn layout_of(x: &RawTensor) -> Option<KernelLayout> {
        let l = x.layout();
        KernelLayout::new(l.shape(), l.strides(), l.offset()).ok()
    }

    /// `x` itself when its layout fits a kernel layout, else a contiguous copy made through the
    /// host (a view of more than eight axes that do not merge: rare, and correct if slow).
    pub(crate) fn fitting<'a>(&self, x: &'a RawTensor) -> Cow<'a, RawTensor> {
        if Self::layout_of(x).is_some() {
            return Cow::Borrowed(x);
        }
        let host = self.to_host(x);
        Cow::Owned(self.from_host(host, x.shape(), self.device))
    }

    /// `x` itself when it is contiguous (a pointer advanced to its offset reads it, as
    /// [`CudaBackend::run_ptr`] gives), else a contiguous copy.
    pub(crate) fn contiguous_view<'a>(&self, x: &'a RawTensor) -> Cow<'a, RawTensor> {
        if x.layout().is_contiguous() {
            Cow::Borrowed(x)
        } else {
            Cow::Owned(self.contiguous(x))
        }
    }

    /// `x` as a contiguous tensor starting at its buffer's start (a copy when it is not).
    pub(crate) fn dense<'a>(&self, x: &'a RawTensor) -> Cow<'a, RawTensor> {
        if x.layout().is_contiguous() && x.layout().offset() == 0 {
            Cow::Borrowed(x)
        } else {
            Cow::Owned(self.contiguous(x))
        }
    }

    /// Queues `spec` with `dims`, binding each parameter by name through `bind` (the error
    /// record is bound here). Panics naming the kernel when the device refuses.
    pub(crate) fn run<'m>(
        &'m self,
        spec: &KernelSpec,
        dims: LaunchDims,
        bind: impl Fn(&Param) -> Option<LaunchArg<'m, A::Mem>>,
    ) {
        let args: Vec<LaunchArg<'m, A::Mem>> = spec
            .params()
            .iter()
            .map(|p| {
                let arg = match p.ty {
                    ArgType::ErrorRecord => LaunchArg::Ptr(&self.err, 0),
                    _ => bind(p).unwrap_or_else(|| {
                        panic!(
                            "internal error: no argument bound for {} of {}",
                            p.name,
                            spec.entry_name()
                        )
                    }),
                };
                if !arg.fits(p.ty) {
                    panic!(
                        "internal error: {} of {} is a {:?} parameter, bound to an argument of another C type",
                        p.name,
                        spec.entry_name(),
                        p.ty
                    );
                }
                arg
            })
            .collect();
        self.api
            .launch(spec, dims, &args)
            .unwrap_or_else(|e| panic!("cuda: launching {} on {}: {e}", spec.entry_name(), self.device));
    }

    /// The pointer argument of a contiguous view: its buffer, advanced to its offset.
    pub(crate) fn run_ptr<'m>(&self, x: &'m RawTensor) -> LaunchArg<'m, A::Mem> {
        let b = self.buf(x);
        LaunchArg::Ptr(&b.mem, x.layout().offset() * x.dtype().size_in_bytes())
    }

    /// The site number of `message` (numbered from 1 in order of first use).
    fn site(&self, message: &str) -> i64 {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let k = match sites.iter().position(|m| m == message) {
            Some(k) => k,
            None => {
                sites.push(message.to_string());
                sites.len() - 1
            }
        };
        k as i64 + 1
    }

    /// Reads the device error record (synchronising) and panics with the first error found,
    /// after clearing it so that later calls start clean.
    fn check_device_errors(&self) {
        let _guard = self.err_lock.lock().unwrap_or_else(|e| e.into_inner());
        let record = self
            .api
            .download(&self.err, 0, 8 * ERROR_RECORD_WORDS)
            .unwrap_or_else(|e| panic!("cuda: reading the device error record on {}: {e}", self.device));
        self.report_device_errors(&record);
    }

    /// Copies `len` bytes of `mem` from `offset` to the host together with the device error
    /// record (one synchronisation for both), then reports the record as
    /// [`CudaBackend::check_device_errors`] does.
    fn download_checked(&self, mem: &A::Mem, offset: usize, len: usize, what: impl Fn() -> String) -> Vec<u8> {
        let _guard = self.err_lock.lock().unwrap_or_else(|e| e.into_inner());
        let reads = [
            HostRead { mem, offset, len },
            HostRead {
                mem: &self.err,
                offset: 0,
                len: 8 * ERROR_RECORD_WORDS,
            },
        ];
        let mut bytes = self
            .api
            .download_many(&reads)
            .unwrap_or_else(|e| panic!("cuda: copying {} from {}: {e}", what(), self.device));
        let record = bytes.pop().expect("the error record was read");
        self.report_device_errors(&record);
        bytes.pop().expect("the value was read")
    }

    /// Panics with the first error in the device error record `bytes`, after clearing the
    /// record on the device. The caller holds `err_lock`.
    fn report_device_errors(&self, bytes: &[u8]) {
        let mut record = [0u64; ERROR_RECORD_WORDS];
        for (k, w) in record.iter_mut().enumerate() {
            *w = u64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().expect("8 bytes"));
        }
        let found = DeviceError::decode(&record);
        if !matches!(found, Ok(None)) {
            self.api
                .zero(&self.err)
                .unwrap_or_else(|e| panic!("cuda: clearing the device error record on {}: {e}", self.device));
        }
        match found {
            Ok(None) => {}
            Ok(Some(e)) if e.kind == DeviceErrorKind::IndexOutOfRange => {
                let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
                let message = match sites.get((e.site as usize).wrapping_sub(1)) {
                    Some(m) => m.replace("{index}", &e.value.to_string()),
                    None => e.to_string(),
                };
                panic!(
                    "{message} (found on {} by a kernel queued before this read)",
                    self.device
                )
            }
            Ok(Some(e)) => panic!("{e} (found on {} by a kernel queued before this read)", self.device),
            Err(code) => panic!("internal error: unknown device error code {code} on {}", self.device),
        }
    }
}

impl<A: DeviceApi> Backend for CudaBackend<A> {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn unary(&self, op: UnaryOp, x: &RawTensor) -> RawTensor {
        elementwise::unary(self, op, x)
    }

    fn binary(&self, op: BinaryOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
        elementwise::binary(self, op, a, b)
    }

    fn compare(&self, op: CmpOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
        elementwise::compare(self, op, a, b)
    }

    fn select(&self, cond: &RawTensor, a: &RawTensor, b: &RawTensor) -> RawTensor {
        elementwise::select(self, cond, a, b)
    }

    fn reduce(&self, op: ReduceOp, x: &RawTensor, axes: &[usize]) -> RawTensor {
        reduce::reduce(self, op, x, axes)
    }

    fn arg_reduce(&self, op: ArgOp, x: &RawTensor, axis: usize) -> RawTensor {
        reduce::arg_reduce(self, op, x, axis)
    }

    fn matmul(&self, a: &RawTensor, b: &RawTensor) -> RawTensor {
        matmul::matmul(self, a, b)
    }

    fn softmax_rows(&self, op: RowOp, x: &RawTensor) -> RawTensor {
        rows::softmax_rows(self, op, x)
    }

    fn layer_norm_rows(&self, x: &RawTensor, eps: f64) -> RawTensor {
        rows::layer_norm_rows(self, x, eps)
    }

    fn layer_norm_rows_backward(&self, x: &RawTensor, y: &RawTensor, v: &RawTensor, eps: f64) -> RawTensor {
        rows::layer_norm_rows_backward(self, x, y, v, eps)
    }

    fn channel_moments(&self, x: &RawTensor) -> Option<RawTensor> {
        Some(channels::channel_moments(self, x))
    }

    fn channel_scale_shift(
        &self,
        x: &RawTensor,
        mean: &RawTensor,
        scale: &RawTensor,
        shift: &RawTensor,
    ) -> Option<RawTensor> {
        Some(channels::channel_scale_shift(self, x, [mean, scale, shift]))
    }

    fn channel_norm_backward(&self, y: &RawTensor, v: &RawTensor, rstd: &RawTensor) -> Option<RawTensor> {
        Some(channels::channel_norm_backward(self, y, v, rstd))
    }

    fn batch_norm_backward(
        &self,
        x: &RawTensor,
        g: &RawTensor,
        mean: &RawTensor,
        rstd: &RawTensor,
        gamma: &RawTensor,
    ) -> Option<RawTensor> {
        Some(channels::batch_norm_backward(self, x, g, mean, rstd, gamma))
    }

    fn batch_norm_backward_sums(
        &self,
        x: &RawTensor,
        g: &RawTensor,
        mean: &RawTensor,
        rstd: &RawTensor,
    ) -> Option<RawTensor> {
        Some(channels::batch_norm_backward_sums(self, x, g, mean, rstd))
    }

    fn batch_norm_backward_input(
        &self,
        x: &RawTensor,
        g: &RawTensor,
        mean: &RawTensor,
        rstd: &RawTensor,
        gamma: &RawTensor,
        means: &RawTensor,
    ) -> Option<RawTensor> {
        Some(channels::batch_norm_backward_input(
            self,
            (x, g),
            (mean, rstd, gamma),
            means,
        ))
    }

    fn attention(
        &self,
        q: &RawTensor,
        k: &RawTensor,
        v: &RawTensor,
        mask: Option<&RawTensor>,
        scale: f64,
        causal: bool,
    ) -> Option<RawTensor> {
        attention::attention(self, q, k, v, mask, scale, causal)
    }

    fn attention_backward(
        &self,
        q: &RawTensor,
        k: &RawTensor,
        v: &RawTensor,
        mask: Option<&RawTensor>,
        packed: &RawTensor,
        d_o: &RawTensor,
        scale: f64,
        causal: bool,
    ) -> Option<RawTensor> {
        attention::attention_backward(self, q, k, v, mask, packed, d_o, scale, causal)
    }

    fn softmax_rows_backward(&self, op: RowOp, y: &RawTensor, v: &RawTensor) -> RawTensor {
        rows::softmax_rows_backward(self, op, y, v)
    }

    fn cross_entropy_rows(&self, x: &RawTensor, labels: &RawTensor) -> RawTensor {
        cross_entropy::cross_entropy_rows(self, x, labels)
    }

    fn cross_entropy_rows_backward(&self, x: &RawTensor, labels: &RawTensor, g: &RawTensor) -> RawTensor {
        cross_entropy::cross_entropy_rows_backward(self, x, labels, g)
    }

    fn sgd_update(
        &self,
        param: &RawTensor,
        grad: &RawTensor,
        velocity: Option<&RawTensor>,
        step: &SgdStep,
    ) -> Option<RawTensor> {
        Some(sgd::sgd_update(self, param, grad, velocity, step))
    }

    fn adam_update(
        &self,
        param: &RawTensor,
        grad: &RawTensor,
        m: &RawTensor,
        v: &RawTensor,
        count: &RawTensor,
        step: &AdamStep,
    ) -> RawTensor {
        adam::adam_update(self, param, grad, m, v, count, step)
    }

    fn unfold_windows(&self, x: &RawTensor, window: &Window2d) -> RawTensor {
        windows::unfold_windows(self, x, window)
    }

    fn fold_windows(&self, cols: &RawTensor, window: &Window2d) -> RawTensor {
        windows::fold_windows(self, cols, window)
    }

    fn pool_sum(
        &self,
        x: &RawTensor,
        window: &Window2d,
        padding: &Padding2d,
        scale: f64,
        transpose: bool,
    ) -> Option<RawTensor> {
        Some(windows::pool_sum(self, x, window, padding, scale, transpose))
    }

    fn pool_argmax(&self, x: &RawTensor, window: &Window2d, padding: &Padding2d) -> Option<RawTensor> {
        Some(windows::pool_argmax(self, x, window, padding))
    }

    fn cast(&self, x: &RawTensor, dtype: DType) -> RawTensor {
        elementwise::cast(self, x, dtype)
    }

    fn contiguous(&self, x: &RawTensor) -> RawTensor {
        elementwise::copy(self, x)
    }

    fn gather(&self, x: &RawTensor, idx: &RawTensor) -> RawTensor {
        index::gather(self, x, idx)
    }

    fn scatter_add(&self, base: &RawTensor, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
        index::scatter_add(self, base, idx, upd)
    }

    fn scatter_add_to_zeros(&self, n: usize, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
        index::scatter_add_to_zeros(self, n, idx, upd)
    }

    fn concat(&self, xs: &[&RawTensor], axis: usize) -> RawTensor {
        index::concat(self, xs, axis)
    }

    fn embed(&self, x: &RawTensor, shape: &[usize], starts: &[usize], steps: &[usize]) -> RawTensor {
        index::embed(self, x, shape, starts, steps)
    }

    fn full(&self, shape: &[usize], dtype: DType, value: f64, device: Device) -> RawTensor {
        assert_eq!(
            device, self.device,
            "internal error: full on {device} asked of the backend of {}",
            self.device
        );
        if shape.iter().product::<usize>() != 1 {
            return elementwise::fill(self, shape, dtype, value);
        }
        let key = (dtype, value.to_bits());
        let mut cache = self.scalars.lock().unwrap_or_else(|e| e.into_inner());
        let scalar = match cache.get(&key) {
            Some(t) => t.clone(),
            None => {
                if cache.len() >= MAX_CACHED_SCALARS {
                    cache.clear();
                }
                let t = elementwise::fill(self, &[], dtype, value);
                cache.insert(key, t.clone());
                t
            }
        };
        RawTensor::new(scalar.storage().clone(), Layout::contiguous(shape))
            .expect("one element fits a one-element buffer")
    }

    fn arange(&self, n: usize, start: f64, step: f64, dtype: DType, device: Device) -> RawTensor {
        assert_eq!(
            device, self.device,
            "internal error: arange on {device} asked of the backend of {}",
            self.device
        );
        elementwise::arange(self, n, start, step, dtype)
    }

    fn random_uniform(&self, key: &RawTensor, shape: &[usize], dtype: DType) -> RawTensor {
        elementwise::random_uniform(self, key, shape, dtype)
    }

    fn from_host(&self, buf: CpuBuffer, shape: &[usize], device: Device) -> RawTensor {
        assert_eq!(
            device, self.device,
            "internal error: a copy to {device} asked of the backend of {}",
            self.device
        );
        let dtype = buf.dtype();
        let bytes = buf.to_le_bytes();
        let what = || format!("a copy of {shape:?} {dtype} from the host");
        let mem = if bytes.is_empty() {
            self.allocate(1, &what, || self.api.alloc(1))
        } else {
            self.allocate(bytes.len(), &what, || self.api.upload(&bytes))
        };
        self.wrap(mem, shape, dtype)
    }

    fn check_indices(&self, idx: &RawTensor, check: &IndexCheck) -> Option<RawTensor> {
        Some(index::check_indices(self, idx, check, self.site(&check.message)))
    }

    fn synchronize(&self) {
        self.api
            .synchronize()
            .unwrap_or_else(|e| panic!("cuda: waiting for {}: {e}", self.device));
        self.check_device_errors();
    }

    fn to_host(&self, x: &RawTensor) -> CpuBuffer {
        // A contiguous view (a row of a stacked result, say) is copied from its offset; only
        // other views take a copy kernel first.
        let x = self.contiguous_view(x);
        let dtype = x.dtype();
        let bytes = x.layout().numel() * dtype.size_in_bytes();
        let offset = x.layout().offset() * dtype.size_in_bytes();
        let data = self.download_checked(&self.buf(&x).mem, offset, bytes, || format!("{:?} {dtype}", x.shape()));
        CpuBuffer::from_le_bytes(dtype, &data)
            .unwrap_or_else(|e| panic!("cuda: the device returned a bad {dtype} buffer: {e}"))
    }
}
