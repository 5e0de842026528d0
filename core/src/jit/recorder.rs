//! Recording: while a jitted function runs for the first time with a new input signature,
//! every backend handed out on this thread is wrapped so that each kernel call is appended to
//! a [`Tape`] along with where its arguments came from.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::tape::{Call, HostFn, Ref, Step, Tape};
use crate::backend::{
    AdamStep, ArgOp, Backend, BinaryOp, CmpOp, Padding2d, ReduceOp, RowOp, SgdStep, UnaryOp, Window2d,
};
use crate::device::Device;
use crate::dtype::DType;
use crate::layout::Layout;
use crate::storage::{CpuBuffer, RawTensor, Storage};

/// A key for a storage buffer: the address of its shared allocation. Every recorded buffer is
/// kept alive until recording ends, so an address cannot be reused for another buffer.
fn storage_key(s: &Storage) -> usize {
    match s {
        Storage::Cpu(b) => b.identity().1,
        Storage::Device(d) => Arc::as_ptr(d) as *const u8 as usize,
    }
}

/// The program being recorded.
pub(crate) struct Recorder {
    refs: HashMap<usize, Ref>,
    steps: Vec<Step>,
    consts: Vec<Storage>,
    /// Step results, held so that their addresses stay unique while recording.
    alive: Vec<Storage>,
    /// Why the program cannot be replayed, when it cannot (the first reason found).
    not_replayable: Option<String>,
}

impl Recorder {
    /// A recorder whose inputs are the given (distinct) storages: leaf `i` is `Ref::Input(i)`.
    pub(crate) fn new(inputs: &[Storage]) -> Recorder {
        let mut refs = HashMap::new();
        for (i, s) in inputs.iter().enumerate() {
            refs.entry(storage_key(s)).or_insert(Ref::Input(i));
        }
        Recorder {
            refs,
            steps: Vec::new(),
            consts: Vec::new(),
            alive: inputs.to_vec(),
            not_replayable: None,
        }
    }

    /// Marks the program as not replayable; the first reason given is the one kept (`why` is
    /// not called after that).
    fn refuse(&mut self, why: impl FnOnce() -> String) {
        if self.not_replayable.is_none() {
            self.not_replayable = Some(why());
        }
    }

    /// Where `s` comes from; a buffer seen for the first time is a constant.
    pub(crate) fn source(&mut self, s: &Storage) -> Ref {
        let key = storage_key(s);
        if let Some(r) = self.refs.get(&key) {
            return *r;
        }
        let r = Ref::Const(self.consts.len());
        self.consts.push(s.clone());
        self.refs.insert(key, r);
        r
    }

    /// Appends a kernel call; a call on constants only is folded (its result is a constant),
    /// unless it is an effect (a collective, which every replay must repeat on every rank).
    fn record(&mut self, call: Call, args: &[&RawTensor], out: &RawTensor, backend: &Arc<dyn Backend>, effect: bool) {
        let sources: SmallVec<[(Ref, Layout); 3]> = args
            .iter()
            .map(|a| (self.source(&a.storage), a.layout.clone()))
            .collect();
        if !effect && sources.iter().all(|(r, _)| matches!(r, Ref::Const(_))) {
            self.source(&out.storage);
            return;
        }
        let r = Ref::Step(self.steps.len());
        self.refs.insert(storage_key(&out.storage), r);
        self.alive.push(out.storage.clone());
        self.steps.push(Step {
            call,
            args: sources,
            backend: backend.clone(),
            last_uses: SmallVec::new(),
        });
    }

    /// The finished program with `outputs` as its results, or why it cannot be replayed.
    pub(crate) fn finish(mut self, outputs: &[RawTensor]) -> Result<Tape, String> {
        if let Some(why) = self.not_replayable.take() {
            return Err(why);
        }
        let outputs = outputs
            .iter()
            .map(|o| (self.source(&o.storage), o.layout.clone()))
            .collect();
        let mut tape = Tape {
            steps: self.steps,
            consts: self.consts,
            outputs,
        };
        tape.plan_frees();
        Ok(tape)
    }
}

thread_local! {
    /// The recorder of the jit call being traced on this thread, if any.
    static ACTIVE: RefCell<Option<Arc<Mutex<Recorder>>>> = const { RefCell::new(None) };
}

/// Makes `rec` the active recorder of this thread until the guard is dropped (also on panic).
pub(crate) fn activate(rec: Arc<Mutex<Recorder>>) -> ActiveGuard {
    ACTIVE.with(|a| *a.borrow_mut() = Some(rec));
    ActiveGuard
}

/// Ends recording on this thread when dropped.
pub(crate) struct ActiveGuard;

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| *a.borrow_mut() = None);
    }
}

/// `backend`, wrapped to record its calls when this thread is recording (the backend
/// registry passes every backend it hands out through here).
pub(crate) fn intercept(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    ACTIVE.with(|a| match a.borrow().as_ref() {
        None => backend,
        Some(rec) => Arc::new(RecordingBackend {
            inner: backend,
            rec: rec.clone(),
        }),
    })
}

/// Marks the program being recorded on this thread (if any) as not replayable, for the reason
/// `why` gives: the signature then runs eagerly on every call, and [`super::Jit::cache_info`]
/// shows the reason. Called where a function does something a replay of kernels would not
/// repeat (drawing random numbers, filling `.grad` slots in `backward`); library code whose
/// results depend on Rust state that is not a tensor argument calls it too (better: make that
/// state a tensor, as Adam's step count is). Outside a recording it does nothing (and `why` is not called).
pub fn note_not_replayable(why: impl FnOnce() -> String) {
    if let Some(rec) = ACTIVE.with(|a| a.borrow().clone()) {
        rec.lock().unwrap_or_else(|e| e.into_inner()).refuse(why);
    }
}

/// True while a `jit` recording is running on this thread (library code that would do work a
/// replay cannot repeat, such as starting collectives on another thread, takes a recordable
/// path instead).
pub fn is_recording() -> bool {
    ACTIVE.with(|a| a.borrow().is_some())
}

/// Runs `f` with this thread's recording (if any) paused: the kernels it launches are not
/// recorded one by one (a step that records itself as a whole runs them again on replay).
pub(crate) fn paused<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Mutex<Recorder>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let rec = self.0.take();
            ACTIVE.with(|a| *a.borrow_mut() = rec);
        }
    }
    let _restore = Restore(ACTIVE.with(|a| a.borrow_mut().take()));
    f()
}

/// Runs the host step `f` on `x` with `device`'s backend; while recording, the step is
/// recorded so that a replay runs it on the new values (it is never a reason to stop
/// replaying, unlike reading values with `to_host`). An `effect` (a collective) is recorded
/// even when `x` is a constant, so that every replay runs it again; other steps on constants
/// are folded like kernels.
pub(crate) fn host_step(device: Device, x: &RawTensor, f: HostFn, effect: bool) -> RawTensor {
    let backend = crate::backend::registered_backend(device).unwrap_or_else(|e| panic!("{e}"));
    let out = f(backend.as_ref(), x);
    if let Some(rec) = ACTIVE.with(|a| a.borrow().clone()) {
        rec.lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(Call::Host(f), &[x], &out, &backend, effect);
    }
    out
}

/// A backend that runs `inner` and records every call into `rec`.
struct RecordingBackend {
    inner: Arc<dyn Backend>,
    rec: Arc<Mutex<Recorder>>,
}

impl RecordingBackend {
    fn log(&self, call: Call, args: &[&RawTensor], out: RawTensor) -> RawTensor {
        self.rec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(call, args, &out, &self.inner, false);
        out
    }

    /// Registers a result that depends on no input (created from nothing or from the host).
    fn constant(&self, out: RawTensor) -> RawTensor {
        self.rec.lock().unwrap_or_else(|e| e.into_inner()).source(&out.storage);
        out
    }
}

impl Backend for RecordingBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn unary(&self, op: UnaryOp, x: &RawTensor) -> RawTensor {
        self.log(Call::Unary(op), &[x], self.inner.unary(op, x))
    }
    fn binary(&self, op: BinaryOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
        self.log(Call::Binary(op), &[a, b], self.inner.binary(op, a, b))
    }
    fn compare(&self, op: CmpOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
        self.log(Call::Compare(op), &[a, b], self.inner.compare(op, a, b))
    }
    fn select(&self, cond: &RawTensor, a: &RawTensor, b: &RawTensor) -> RawTensor {
        self.log(Call::Select, &[cond, a, b], self.inner.select(cond, a, b))
    }
    fn reduce(&self, op: ReduceOp, x: &RawTensor, axes: &[usize]) -> RawTensor {
        self.log(Call::Reduce(op, axes.to_vec()), &[x], self.inner.reduce(op, x, axes))
    }
    fn arg_reduce(&self, op: ArgOp, x: &RawTensor, axis: usize) -> RawTensor {
        self.log(Call::ArgReduce(op, axis), &[x], self.inner.arg_reduce(op, x, axis))
    }
    fn matmul(&self, a: &RawTensor, b: &RawTensor) -> RawTensor {
        self.log(Call::Matmul, &[a, b], self.inner.matmul(a, b))
    }
    fn softmax_rows(&self, op: RowOp, x: &RawTensor) -> RawTensor {
        self.log(Call::Rows(op), &[x], self.inner.softmax_rows(op, x))
    }
    fn layer_norm_rows(&self, x: &RawTensor, eps: f64) -> RawTensor {
        self.log(Call::LayerNorm(eps), &[x], self.inner.layer_norm_rows(x, eps))
    }
    fn layer_norm_rows_backward(&self, x: &RawTensor, y: &RawTensor, v: &RawTensor, eps: f64) -> RawTensor {
        self.log(
            Call::LayerNormBackward(eps),
            &[x, y, v],
            self.inner.layer_norm_rows_backward(x, y, v, eps),
        )
    }
    fn channel_moments(&self, x: &RawTensor) -> Option<RawTensor> {
        let out = self.inner.channel_moments(x)?;
        Some(self.log(Call::ChannelMoments, &[x], out))
    }
    fn batch_norm_backward(
        &self,
        x: &RawTensor,
        g: &RawTensor,
        mean: &RawTensor,
        rstd: &RawTensor,
        gamma: &RawTensor,
    ) -> Option<RawTensor> {
        let out = self.inner.batch_norm_backward(x, g, mean, rstd, gamma)?;
        Some(self.log(Call::BatchNormBackward, &[x, g, mean, rstd, gamma], out))
    }
    fn channel_scale_shift(
        &self,
        x: &RawTensor,
        mean: &RawTensor,
        scale: &RawTensor,
        shift: &RawTensor,
    ) -> Option<RawTensor> {
        let out = self.inner.channel_scale_shift(x, mean, scale, shift)?;
        Some(self.log(Call::ChannelScaleShift, &[x, mean, scale, shift], out))
    }
    fn batch_norm_backward_sums(
        &self,
        x: &RawTensor,
        g: &RawTensor,
        mean: &RawTensor,
        rstd: &RawTensor,
    ) -> Option<RawTensor> {
        let out = self.inner.batch_norm_backward_sums(x, g, mean, rstd)?;
        Some(self.log(Call::BatchNormSums, &[x, g, mean, rstd], out))
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
        let out = self.inner.batch_norm_backward_input(x, g, mean, rstd, gamma, means)?;
        Some(self.log(Call::BatchNormInput, &[x, g, mean, rstd, gamma, means], out))
    }
    fn channel_norm_backward(&self, y: &RawTensor, v: &RawTensor, rstd: &RawTensor) -> Option<RawTensor> {
        let out = self.inner.channel_norm_backward(y, v, rstd)?;
        Some(self.log(Call::ChannelNormBackward, &[y, v, rstd], out))
    }
    fn softmax_rows_backward(&self, op: RowOp, y: &RawTensor, v: &RawTensor) -> RawTensor {
        self.log(
            Call::RowsBackward(op),
            &[y, v],
            self.inner.softmax_rows_backward(op, y, v),
        )
    }
    fn cross_entropy_rows(&self, x: &RawTensor, labels: &RawTensor) -> RawTensor {
        self.log(
            Call::CrossEntropy,
            &[x, labels],
            self.inner.cross_entropy_rows(x, labels),
        )
    }
    fn cross_entropy_rows_backward(&self, x: &RawTensor, labels: &RawTensor, g: &RawTensor) -> RawTensor {
        self.log(
            Call::CrossEntropyBackward,
            &[x, labels, g],
            self.inner.cross_entropy_rows_backward(x, labels, g),
        )
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
        let out = self.inner.attention(q, k, v, mask, scale, causal)?;
        let mut args = vec![q, k, v];
        args.extend(mask);
        let masked = mask.is_some();
        Some(self.log(Call::Attention { scale, causal, masked }, &args, out))
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
        let out = self
            .inner
            .attention_backward(q, k, v, mask, packed, d_o, scale, causal)?;
        let mut args = vec![q, k, v];
        args.extend(mask);
        args.extend([packed, d_o]);
        let masked = mask.is_some();
        Some(self.log(Call::AttentionBackward { scale, causal, masked }, &args, out))
    }
    fn sgd_update(
        &self,
        param: &RawTensor,
        grad: &RawTensor,
        velocity: Option<&RawTensor>,
        step: &SgdStep,
    ) -> Option<RawTensor> {
        let out = self.inner.sgd_update(param, grad, velocity, step)?;
        let mut args = vec![param, grad];
        args.extend(velocity);
        let call = Call::Sgd {
            step: *step,
            velocity: velocity.is_some(),
        };
        Some(self.log(call, &args, out))
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
        let out = self.inner.adam_update(param, grad, m, v, count, step);
        self.log(Call::Adam(*step), &[param, grad, m, v, count], out)
    }
    fn pool_argmax(&self, x: &RawTensor, window: &Window2d, padding: &Padding2d) -> Option<RawTensor> {
        let out = self.inner.pool_argmax(x, window, padding)?;
        Some(self.log(Call::PoolArgmax(*window, *padding), &[x], out))
    }
    fn pool_sum(
        &self,
        x: &RawTensor,
        window: &Window2d,
        padding: &Padding2d,
        scale: f64,
        transpose: bool,
    ) -> Option<RawTensor> {
        let out = self.inner.pool_sum(x, window, padding, scale, transpose)?;
        let call = Call::PoolSum {
            window: *window,
            padding: *padding,
            scale,
            transpose,
        };
        Some(self.log(call, &[x], out))
    }
    fn unfold_windows(&self, x: &RawTensor, window: &Window2d) -> RawTensor {
        self.log(Call::Unfold(*window), &[x], self.inner.unfold_windows(x, window))
    }
    fn fold_windows(&self, cols: &RawTensor, window: &Window2d) -> RawTensor {
        self.log(Call::Fold(*window), &[cols], self.inner.fold_windows(cols, window))
    }
    fn cast(&self, x: &RawTensor, dtype: DType) -> RawTensor {
        self.log(Call::Cast(dtype), &[x], self.inner.cast(x, dtype))
    }
    fn contiguous(&self, x: &RawTensor) -> RawTensor {
        self.log(Call::Contiguous, &[x], self.inner.contiguous(x))
    }
    fn gather(&self, x: &RawTensor, idx: &RawTensor) -> RawTensor {
        self.log(Call::Gather, &[x, idx], self.inner.gather(x, idx))
    }
    fn scatter_add_to_zeros(&self, n: usize, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
        let out = self.inner.scatter_add_to_zeros(n, idx, upd);
        self.log(Call::ScatterAddToZeros(n), &[idx, upd], out)
    }
    fn scatter_add(&self, base: &RawTensor, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
        self.log(
            Call::ScatterAdd,
            &[base, idx, upd],
            self.inner.scatter_add(base, idx, upd),
        )
    }
    fn concat(&self, xs: &[&RawTensor], axis: usize) -> RawTensor {
        self.log(Call::Concat(axis), xs, self.inner.concat(xs, axis))
    }
    fn embed(&self, x: &RawTensor, shape: &[usize], starts: &[usize], steps: &[usize]) -> RawTensor {
        let call = Call::Embed {
            shape: shape.to_vec(),
            starts: starts.to_vec(),
            steps: steps.to_vec(),
        };
        self.log(call, &[x], self.inner.embed(x, shape, starts, steps))
    }
    fn random_uniform(&self, key: &RawTensor, shape: &[usize], dtype: DType) -> RawTensor {
        self.log(
            Call::RandomUniform(shape.to_vec(), dtype),
            &[key],
            self.inner.random_uniform(key, shape, dtype),
        )
    }
    fn full(&self, shape: &[usize], dtype: DType, value: f64, device: Device) -> RawTensor {
        self.constant(self.inner.full(shape, dtype, value, device))
    }
    fn from_host(&self, buf: CpuBuffer, shape: &[usize], device: Device) -> RawTensor {
        self.constant(self.inner.from_host(buf, shape, device))
    }
    fn arange(&self, n: usize, start: f64, step: f64, dtype: DType, device: Device) -> RawTensor {
        self.constant(self.inner.arange(n, start, step, dtype, device))
    }
    fn synchronize(&self) {
        self.inner.synchronize()
    }
    fn to_host(&self, x: &RawTensor) -> CpuBuffer {
        let mut rec = self.rec.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(rec.source(&x.storage), Ref::Const(_)) {
            rec.refuse(|| {
                format!(
                    "the function read the values of a tensor of shape {:?} computed from its inputs \
                     (item, to_vec, printing, or an op that checks indices on the host), so Rust \
                     control flow may depend on them",
                    x.layout.shape
                )
            });
        }
        drop(rec);
        self.inner.to_host(x)
    }
}
