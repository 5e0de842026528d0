//! The built-in CPU backend: ndarray views over shared host buffers, our AVX-512 sgemm (or the
//! gemm crate) for matmul, rayon for large elementwise and reduction kernels.

mod adam;
mod attention;
mod channels;
mod cross_entropy;
mod elementwise;
mod fast_math;
mod gelu;
mod index;
mod matmul;
pub mod memory;
mod pool;
mod reduce;
mod rows;
mod sgd;
mod taps;
mod walk;
mod windows;
// The AVX-512 intrinsics are stable since Rust 1.89 (the workspace's `rust-version`).
#[cfg(target_arch = "x86_64")]
mod sgemm_avx512;

use std::sync::{Arc, OnceLock};

use ndarray::{ArrayViewD, Axis, IxDyn, ShapeBuilder};

use crate::backend::{
    AdamStep, ArgOp, Backend, BinaryOp, CmpOp, Padding2d, ReduceOp, RowOp, SgdStep, TapGrid, UnaryOp, Window2d,
};
use crate::device::Device;
use crate::dtype::DType;
use crate::layout::Layout;
use crate::storage::{CpuBuffer, IntoCpuBuffer, RawTensor, Storage};

/// Element count from which kernels split their work across threads.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// What a kernel says if an f16 or bf16 buffer reaches code that only the widened (f32) form
/// should reach.
pub(crate) const HALVES_WIDENED: &str = "internal error: f16/bf16 reach the CPU kernels widened to f32";

/// The f32 form of a half tensor (exact), in which the CPU computes f16 and bf16 ops; other
/// dtypes pass through unchanged.
fn widen(x: &RawTensor) -> std::borrow::Cow<'_, RawTensor> {
    if x.dtype().is_half() {
        std::borrow::Cow::Owned(elementwise::cast(x, DType::F32))
    } else {
        std::borrow::Cow::Borrowed(x)
    }
}

/// `x` itself when contiguous, else a contiguous copy (for kernels that walk a flat run).
fn dense(x: &RawTensor) -> std::borrow::Cow<'_, RawTensor> {
    if x.layout.is_contiguous() {
        std::borrow::Cow::Borrowed(x)
    } else {
        std::borrow::Cow::Owned(elementwise::contiguous(x))
    }
}

/// The elements of a contiguous view `layout` of `data`, its buffer (what [`dense`] gives is
/// walked through this).
fn dense_run<'a, T>(data: &'a [T], layout: &Layout) -> &'a [T] {
    debug_assert!(layout.is_contiguous(), "dense_run of a strided view {layout:?}");
    match layout.numel() {
        // An empty view's offset may lie past the buffer's end.
        0 => &[],
        n => &data[layout.offset..layout.offset + n],
    }
}

/// `v` rounded once to the float type `T` (float-to-float conversions always succeed).
fn of<T: num_traits::Float>(v: f64) -> T {
    T::from(v).expect("a float converts to a float")
}

/// `out` rounded back to `dtype` when that is a half (the f32 result of a widened kernel).
fn narrow(out: RawTensor, dtype: DType) -> RawTensor {
    if dtype.is_half() && out.dtype() != dtype {
        elementwise::cast(&out, dtype)
    } else {
        out
    }
}

/// `f` run in a function compiled with AVX-512F when the CPU has it (and `NABLA_CPU_NO_AVX512`
/// is unset), as the GEMM is chosen: `f` and what it calls with `#[inline(always)]` are inlined
/// into that function and vectorise with 16 f32 lanes where the baseline build has SSE's 4.
/// Nothing is reassociated or contracted, so both builds give the same bits.
#[inline(always)]
fn with_wide_loops<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if sgemm_avx512::available() {
        // SAFETY: the CPU has AVX-512F (checked at run time by `available`).
        return unsafe { run_avx512(f) };
    }
    f()
}

/// `f` compiled with AVX-512F (through inlining).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The CPU backend (stateless).
#[derive(Debug, Default)]
pub struct CpuBackend;

/// The shared CPU backend instance.
pub fn cpu_backend() -> Arc<dyn Backend> {
    static CPU: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    CPU.get_or_init(|| {
        memory::keep_freed_memory();
        Arc::new(CpuBackend)
    })
    .clone()
}

/// An ndarray view of `data` under `layout` (negative and zero strides allowed).
pub(crate) fn view<'a, T>(data: &'a [T], layout: &Layout) -> ArrayViewD<'a, T> {
    let numel = layout.numel();
    if layout.is_contiguous() {
        // The common case: a row-major run of the buffer (no stride arithmetic, no unsafe).
        return ArrayViewD::from_shape(IxDyn(&layout.shape), dense_run(data, layout))
            .expect("contiguous layout fits its run");
    }
    let rank = layout.rank();
    let mut base = layout.offset as isize;
    let mut strides: smallvec::SmallVec<[usize; 6]> = smallvec::SmallVec::with_capacity(rank);
    for i in 0..rank {
        let s = layout.strides[i];
        if s < 0 && layout.shape[i] > 0 {
            base += s * (layout.shape[i] as isize - 1);
        }
        strides.push(s.unsigned_abs());
    }
    if numel == 0 {
        return ArrayViewD::from_shape(IxDyn(&layout.shape), &[]).expect("empty view");
    }
    // The invariant below makes this hold; checking it costs a loop over the axes and keeps
    // a broken invariant from becoming an out-of-bounds read.
    assert!(
        base >= 0 && layout.fits(data.len()),
        "internal error: layout {layout:?} leaves a buffer of {} elements",
        data.len()
    );
    // SAFETY: `RawTensor`'s invariant (checked by `RawTensor::new` for layouts from outside
    // the crate, kept by the crate's view ops, which only narrow a fitting layout) says every
    // index the layout reaches lies inside `data`; the view is read-only, so aliasing through
    // zero strides is allowed.
    let mut v = unsafe {
        ArrayViewD::from_shape_ptr(
            IxDyn(&layout.shape).strides(IxDyn(&strides)),
            data.as_ptr().add(base as usize),
        )
    };
    for i in 0..rank {
        if layout.strides[i] < 0 {
            v.invert_axis(Axis(i));
        }
    }
    v
}

/// The host buffer of a CPU tensor (panics for other devices: the dispatcher prevents that).
pub(crate) fn host(x: &RawTensor) -> &CpuBuffer {
    match &x.storage {
        Storage::Cpu(b) => b,
        Storage::Device(b) => panic!("cpu backend received a tensor on {}", b.device()),
    }
}

/// Wraps a freshly computed contiguous vector as a tensor.
pub(crate) fn wrap<T: 'static>(data: Vec<T>, shape: &[usize]) -> RawTensor
where
    Vec<T>: IntoCpuBuffer,
{
    RawTensor::from_cpu(data.into_cpu_buffer(), shape)
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn unary(&self, op: UnaryOp, x: &RawTensor) -> RawTensor {
        narrow(elementwise::unary(op, &widen(x)), x.dtype())
    }

    fn binary(&self, op: BinaryOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
        narrow(elementwise::binary(op, &widen(a), &widen(b)), a.dtype())
    }

    fn compare(&self, op: CmpOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
        elementwise::compare(op, &widen(a), &widen(b))
    }

    fn select(&self, cond: &RawTensor, a: &RawTensor, b: &RawTensor) -> RawTensor {
        elementwise::select(cond, a, b)
    }

    fn reduce(&self, op: ReduceOp, x: &RawTensor, axes: &[usize]) -> RawTensor {
        // Halves accumulate in f32 and round once at the end.
        narrow(reduce::reduce(op, &widen(x), axes), x.dtype())
    }

    fn arg_reduce(&self, op: ArgOp, x: &RawTensor, axis: usize) -> RawTensor {
        reduce::arg_reduce(op, x, axis)
    }

    fn matmul(&self, a: &RawTensor, b: &RawTensor) -> RawTensor {
        narrow(matmul::matmul(&widen(a), &widen(b)), a.dtype())
    }

    fn softmax_rows(&self, op: RowOp, x: &RawTensor) -> RawTensor {
        // Halves compute in f32 and round once.
        narrow(rows::softmax_rows(op, &widen(x)), x.dtype())
    }

    fn layer_norm_rows(&self, x: &RawTensor, eps: f64) -> RawTensor {
        narrow(rows::layer_norm_rows(&widen(x), eps), x.dtype())
    }

    fn layer_norm_rows_backward(&self, x: &RawTensor, y: &RawTensor, v: &RawTensor, eps: f64) -> RawTensor {
        narrow(
            rows::layer_norm_rows_backward(&widen(x), &widen(y), &widen(v), eps),
            x.dtype(),
        )
    }

    fn softmax_rows_backward(&self, op: RowOp, y: &RawTensor, v: &RawTensor) -> RawTensor {
        narrow(rows::softmax_rows_backward(op, &widen(y), &widen(v)), y.dtype())
    }

    fn channel_moments(&self, x: &RawTensor) -> Option<RawTensor> {
        Some(narrow(channels::channel_moments(&widen(x)), x.dtype()))
    }

    fn channel_scale_shift(
        &self,
        x: &RawTensor,
        mean: &RawTensor,
        scale: &RawTensor,
        shift: &RawTensor,
    ) -> Option<RawTensor> {
        let out = channels::channel_scale_shift(&widen(x), &widen(mean), &widen(scale), &widen(shift));
        Some(narrow(out, x.dtype()))
    }

    fn batch_norm_backward(
        &self,
        x: &RawTensor,
        g: &RawTensor,
        mean: &RawTensor,
        rstd: &RawTensor,
        gamma: &RawTensor,
    ) -> Option<RawTensor> {
        Some(narrow(
            channels::batch_norm_backward(&widen(x), &widen(g), &widen(mean), &widen(rstd), &widen(gamma)),
            x.dtype(),
        ))
    }

    fn batch_norm_backward_sums(
        &self,
        x: &RawTensor,
        g: &RawTensor,
        mean: &RawTensor,
        rstd: &RawTensor,
    ) -> Option<RawTensor> {
        // Kept wide (f32 for halves), as the ranks add them.
        Some(channels::batch_norm_backward_sums(
            &widen(x),
            &widen(g),
            &widen(mean),
            &widen(rstd),
        ))
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
        let (mean, rstd, gamma) = (widen(mean), widen(rstd), widen(gamma));
        Some(narrow(
            channels::batch_norm_backward_input(&widen(x), &widen(g), (&mean, &rstd, &gamma), means),
            x.dtype(),
        ))
    }

    fn channel_norm_backward(&self, y: &RawTensor, v: &RawTensor, rstd: &RawTensor) -> Option<RawTensor> {
        Some(narrow(
            channels::channel_norm_backward(&widen(y), &widen(v), &widen(rstd)),
            y.dtype(),
        ))
    }

    fn cross_entropy_rows(&self, x: &RawTensor, labels: &RawTensor) -> RawTensor {
        narrow(cross_entropy::cross_entropy_rows(&widen(x), labels), x.dtype())
    }

    fn cross_entropy_rows_backward(&self, x: &RawTensor, labels: &RawTensor, g: &RawTensor) -> RawTensor {
        narrow(
            cross_entropy::cross_entropy_rows_backward(&widen(x), labels, &widen(g)),
            x.dtype(),
        )
    }

    fn sgd_update(
        &self,
        param: &RawTensor,
        grad: &RawTensor,
        velocity: Option<&RawTensor>,
        step: &SgdStep,
    ) -> Option<RawTensor> {
        let v = velocity.map(widen);
        let out = sgd::sgd_update(&widen(param), &widen(grad), v.as_deref(), step);
        Some(narrow(out, param.dtype()))
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
        // Halves compute in f32 and round once.
        let out = adam::adam_update(&widen(param), &widen(grad), &widen(m), &widen(v), count, step);
        narrow(out, param.dtype())
    }

    fn pool_argmax(&self, x: &RawTensor, window: &Window2d, padding: &Padding2d) -> Option<RawTensor> {
        Some(pool::pool_argmax(&widen(x), window, padding))
    }
    fn unfold_windows(&self, x: &RawTensor, window: &Window2d) -> RawTensor {
        windows::unfold_windows(x, window)
    }

    fn tap_matmul(&self, w: &RawTensor, x: &RawTensor, taps: &TapGrid) -> RawTensor {
        narrow(taps::tap_matmul(self, &widen(w), &widen(x), taps), w.dtype())
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
        // Halves compose (their statistics would round to the half type).
        attention::attention(q, k, v, mask, scale, causal)
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
        attention::attention_backward(q, k, v, mask, packed, d_o, scale, causal)
    }

    fn tap_outer(&self, dy: &RawTensor, x: &RawTensor, taps: &TapGrid) -> RawTensor {
        narrow(taps::tap_outer(self, &widen(dy), &widen(x), taps), dy.dtype())
    }

    fn pool_sum(
        &self,
        x: &RawTensor,
        window: &Window2d,
        padding: &Padding2d,
        scale: f64,
        transpose: bool,
    ) -> Option<RawTensor> {
        // Halves add in f32 and round once.
        Some(narrow(
            pool::pool_sum(&widen(x), window, padding, scale, transpose),
            x.dtype(),
        ))
    }

    fn fold_windows(&self, cols: &RawTensor, window: &Window2d) -> RawTensor {
        // Halves add in f32 and round once.
        narrow(windows::fold_windows(&widen(cols), window), cols.dtype())
    }

    fn cast(&self, x: &RawTensor, dtype: DType) -> RawTensor {
        elementwise::cast(x, dtype)
    }

    fn contiguous(&self, x: &RawTensor) -> RawTensor {
        elementwise::contiguous(x)
    }

    fn gather(&self, x: &RawTensor, idx: &RawTensor) -> RawTensor {
        index::gather(x, idx)
    }

    fn scatter_add(&self, base: &RawTensor, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
        narrow(index::scatter_add(&widen(base), idx, &widen(upd)), base.dtype())
    }

    fn scatter_add_to_zeros(&self, n: usize, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
        narrow(index::scatter_add_to_zeros(n, idx, &widen(upd)), upd.dtype())
    }

    fn concat(&self, xs: &[&RawTensor], axis: usize) -> RawTensor {
        index::concat(xs, axis)
    }

    fn embed(&self, x: &RawTensor, shape: &[usize], starts: &[usize], steps: &[usize]) -> RawTensor {
        index::embed(x, shape, starts, steps)
    }

    fn full(&self, shape: &[usize], dtype: DType, value: f64, _device: Device) -> RawTensor {
        let n = crate::shape::numel(shape);
        match dtype {
            DType::F32 => wrap(vec![value as f32; n], shape),
            DType::F64 => wrap(vec![value; n], shape),
            DType::I64 => wrap(vec![value as i64; n], shape),
            DType::Bool => wrap(vec![value != 0.0; n], shape),
            DType::F16 => wrap(vec![crate::dtype::f16::from_f64(value); n], shape),
            DType::BF16 => wrap(vec![crate::dtype::bf16::from_f64(value); n], shape),
        }
    }

    fn arange(&self, n: usize, start: f64, step: f64, dtype: DType, _device: Device) -> RawTensor {
        let values = wrap((0..n).map(|i| start + i as f64 * step).collect::<Vec<f64>>(), &[n]);
        self.cast(&values, dtype)
    }

    fn random_uniform(&self, key: &RawTensor, shape: &[usize], dtype: DType) -> RawTensor {
        let CpuBuffer::I64(k) = host(key) else {
            unreachable!("random keys are i64: checked by the op layer")
        };
        let k = k[key.layout.offset] as u64;
        let n = crate::shape::numel(shape) as u64;
        let u: Vec<f64> = (0..n).map(|i| crate::random::unit(k, i)).collect();
        elementwise::cast(&wrap(u, shape), dtype)
    }

    fn from_host(&self, buf: CpuBuffer, shape: &[usize], _device: Device) -> RawTensor {
        RawTensor::from_cpu(buf, shape)
    }

    fn to_host(&self, x: &RawTensor) -> CpuBuffer {
        let buf = host(x);
        if x.layout.is_contiguous() && x.layout.offset == 0 && buf.len() == x.layout.numel() {
            return buf.clone();
        }
        host(&elementwise::contiguous(x)).clone()
    }
}
