//! `Tensor`: a cheap, clonable, thread-safe handle to an immutable value.

use std::sync::{Arc, Mutex};

use crate::backend::{Backend, backend_for};
use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::shape::numel;
use crate::storage::{CpuBuffer, IntoCpuBuffer, RawTensor};
use crate::trace::{GradSlot, Level, Node, Rule, next_id, union_levels};
use crate::transforms::backward::GradSyncHook;

/// An n-dimensional array of `f32`, `f64`, `i64` or `bool` on a [`Device`].
///
/// Cloning is cheap (a reference count). Ops run eagerly; when an input is being traced by a
/// transform (`vjp`, `jvp`, ...) or was marked with [`Tensor::requires_grad`], the op also
/// records a graph node, otherwise it records nothing.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    raw: RawTensor,
    /// vmap levels of the leading physical axes, sorted by id (empty outside `vmap`).
    batch: Vec<u64>,
    node: Option<Arc<Node>>,
}

/// The union of the inputs' vmap levels, sorted.
pub(crate) fn union_batch(inputs: &[&Tensor]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for t in inputs {
        for &l in &t.0.batch {
            if !out.contains(&l) {
                out.push(l);
            }
        }
    }
    out.sort_unstable();
    out
}

impl Tensor {
    /// Wraps a backend value as an untraced tensor.
    pub fn from_raw(raw: RawTensor) -> Tensor {
        Tensor(Arc::new(Inner {
            raw,
            batch: Vec::new(),
            node: None,
        }))
    }

    /// The vmap levels of the leading physical axes (empty outside `vmap`).
    pub(crate) fn batch(&self) -> &[u64] {
        &self.0.batch
    }

    /// True inside `vmap` for tensors that carry batch axes (their values cannot be read).
    pub fn is_batched(&self) -> bool {
        !self.0.batch.is_empty()
    }

    /// Number of leading physical axes that are vmap batch axes.
    pub(crate) fn nb(&self) -> usize {
        self.0.batch.len()
    }

    /// An op result with no derivative: carries the union of the inputs' vmap levels.
    pub(crate) fn untraced(raw: RawTensor, inputs: &[&Tensor]) -> Tensor {
        Tensor(Arc::new(Inner {
            raw,
            batch: union_batch(inputs),
            node: None,
        }))
    }

    /// The backend value (storage and layout).
    pub fn raw(&self) -> &RawTensor {
        &self.0.raw
    }

    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.0.node.as_ref()
    }

    /// The backend that computes this tensor's device.
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        backend_for(self.device())
    }

    /// Result of an op: records a node when an input is traced by a recording level; the
    /// result carries the union of the inputs' vmap levels.
    pub(crate) fn record<R: Rule + 'static>(raw: RawTensor, inputs: &[&Tensor], rule: impl FnOnce() -> R) -> Tensor {
        Tensor::record_batched(raw, union_batch(inputs), inputs, rule)
    }

    /// Like [`Tensor::record`] with the result's vmap levels given explicitly.
    pub(crate) fn record_batched<R: Rule + 'static>(
        raw: RawTensor,
        batch: Vec<u64>,
        inputs: &[&Tensor],
        rule: impl FnOnce() -> R,
    ) -> Tensor {
        let levels = if inputs.iter().all(|t| t.0.node.is_none()) {
            Default::default()
        } else {
            union_levels(
                inputs
                    .iter()
                    .filter_map(|t| t.0.node.as_ref().map(|n| n.levels.as_slice())),
            )
        };
        if levels.is_empty() {
            return Tensor(Arc::new(Inner { raw, batch, node: None }));
        }
        let node = Node {
            id: next_id(),
            rule: rule(),
            inputs: Mutex::new(Some(inputs.iter().map(|t| (*t).clone()).collect())),
            levels,
            grad: None,
        };
        let node: Arc<Node> = Arc::new(node);
        Tensor(Arc::new(Inner {
            raw,
            batch,
            node: Some(node),
        }))
    }

    /// A new leaf of `level` with this tensor's value. When this tensor is itself traced by an
    /// enclosing level, the leaf stays connected to it (as an identity op), so an outer
    /// transform sees through the inner one.
    pub(crate) fn leaf_of(&self, level: &Arc<Level>, grad: Option<GradSlot>) -> Tensor {
        let outer = self
            .0
            .node
            .as_ref()
            .map(|n| union_levels(std::iter::once(n.levels.as_slice())))
            .unwrap_or_default();
        let mut levels = outer.clone();
        levels.push(level.clone());
        levels.sort_by_key(|l| l.id());
        let inputs: crate::trace::Inputs = if outer.is_empty() {
            smallvec::smallvec![]
        } else {
            smallvec::smallvec![self.clone()]
        };
        let node = Node {
            id: next_id(),
            rule: LeafRule,
            inputs: Mutex::new(Some(inputs)),
            levels,
            grad,
        };
        let node: Arc<Node> = Arc::new(node);
        Tensor(Arc::new(Inner {
            raw: self.0.raw.clone(),
            batch: self.0.batch.clone(),
            node: Some(node),
        }))
    }

    /// The same value with no trace: gradients do not flow through it (JAX's
    /// `stop_gradient`, PyTorch's `detach`).
    pub fn stop_gradient(&self) -> Tensor {
        if self.0.node.is_none() {
            return self.clone();
        }
        Tensor(Arc::new(Inner {
            raw: self.0.raw.clone(),
            batch: self.0.batch.clone(),
            node: None,
        }))
    }

    /// Alias of [`Tensor::stop_gradient`].
    pub fn detach(&self) -> Tensor {
        self.stop_gradient()
    }

    /// When this handle is the last owner of a node, takes that node's inputs (so that the node
    /// can be dropped without recursion).
    pub(crate) fn into_unique_node_inputs(self) -> Option<crate::trace::Inputs> {
        let inner = Arc::into_inner(self.0)?;
        let mut node = inner.node?;
        let node = Arc::get_mut(&mut node)?;
        match node.inputs.get_mut() {
            Ok(inputs) => inputs.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// True when this tensor carries a recorded graph node.
    pub fn is_traced(&self) -> bool {
        self.0.node.is_some()
    }

    /// Id of the graph node, if any (stable for the tensor's lifetime; used in printouts).
    pub fn node_id(&self) -> Option<u64> {
        self.0.node.as_ref().map(|n| n.id)
    }

    /// The extent of every axis (inside `vmap`: of one example, without the batch axes).
    pub fn shape(&self) -> &[usize] {
        &self.0.raw.layout.shape[self.0.batch.len()..]
    }

    /// Number of axes (0 for a scalar).
    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(self.shape())
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.raw.dtype()
    }

    /// The device holding the storage.
    pub fn device(&self) -> Device {
        self.0.raw.device()
    }

    /// The strided layout of the view (shape, strides, offset), including vmap batch axes
    /// first.
    pub fn layout(&self) -> &Layout {
        &self.0.raw.layout
    }

    /// True when both tensors view the same storage buffer (no copy was made between them).
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        use crate::storage::Storage;
        match (&self.0.raw.storage, &other.0.raw.storage) {
            (Storage::Cpu(a), Storage::Cpu(b)) => a.identity() == b.identity(),
            (Storage::Device(a), Storage::Device(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// A contiguous host buffer with the elements in row-major order.
    pub fn to_host_buffer(&self) -> CpuBuffer {
        if !self.0.batch.is_empty() {
            panic!(
                "reading the values of a tensor inside vmap is not possible (shape {:?} per example, \
                 batched by {} vmap level(s)); return it from the mapped function instead",
                self.shape(),
                self.0.batch.len()
            );
        }
        self.backend().to_host(&self.0.raw)
    }

    /// The elements in row-major order, converted to `T` (floats to integers truncate).
    pub fn to_vec<T: Element>(&self) -> Vec<T> {
        let t = if self.dtype() == T::DTYPE {
            self.clone()
        } else {
            self.cast(T::DTYPE)
        };
        let buf = t.to_host_buffer();
        buf.as_any()
            .downcast_ref::<Vec<T>>()
            .expect("cast produced the requested dtype")
            .clone()
    }

    /// The single element of a one-element tensor; panics naming the shape otherwise.
    pub fn item<T: Element>(&self) -> T {
        if self.numel() != 1 {
            panic!(
                "item: the tensor has shape {:?} ({} elements); item needs exactly one element \
                 (reduce it with sum/mean or index it first)",
                self.shape(),
                self.numel()
            );
        }
        self.to_vec::<T>()[0]
    }

    /// A tensor from a flat row-major vector and a shape; the dtype comes from `T`. Panics when
    /// the length does not match the shape (see [`Tensor::try_from_vec`]).
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Tensor
    where
        Vec<T>: IntoCpuBuffer,
    {
        Tensor::try_from_vec(data, shape).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Tensor::from_vec`], returning an error instead of panicking.
    pub fn try_from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor>
    where
        Vec<T>: IntoCpuBuffer,
    {
        if data.len() != numel(shape) {
            return Err(Error::ShapeMismatch {
                op: "from_vec",
                detail: format!(
                    "{} elements cannot fill shape {:?} ({} elements)",
                    data.len(),
                    shape,
                    numel(shape)
                ),
            });
        }
        Ok(Tensor::from_raw(RawTensor::from_cpu(data.into_cpu_buffer(), shape)))
    }

    /// Copies the tensor to `device` (no-op when it is there already). Gradients flow through.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let target = crate::backend::try_backend_for(device)?;
        let host = self.backend().to_host(&self.0.raw);
        let raw = target.from_host(host, &self.0.raw.layout.shape, device);
        Ok(Tensor::record(raw, &[self], || crate::ops::cast::ToDevice {
            from: self.device(),
            to: device,
        }))
    }

    /// This tensor on `device`, for constants that ops build on the host (index ranges, the
    /// identity of a Jacobian basis) to meet their operand's device. Panics only when no
    /// backend is registered for `device`, which cannot happen for the device of a tensor
    /// that exists.
    pub(crate) fn on(&self, device: Device) -> Tensor {
        self.to_device(device).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A new leaf that accumulates gradients in [`Tensor::grad`] when `backward` runs
    /// (PyTorch's `requires_grad_()`); ops on it are recorded until `backward` frees them.
    pub fn requires_grad(&self) -> Tensor {
        self.grad_leaf(None)
    }

    /// Like [`Tensor::requires_grad`], with a [`GradSyncHook`] that `backward` tells as soon
    /// as this leaf's gradient is final, and once more when its sweep is over. This is how a
    /// data-parallel wrapper (`nb::dist::DataParallel`) all-reduces gradients during the
    /// backward sweep; the hook belongs to the leaves it was given to, not to the process.
    pub fn requires_grad_with_hook(&self, hook: Arc<dyn GradSyncHook>) -> Tensor {
        self.grad_leaf(Some(hook))
    }

    fn grad_leaf(&self, hook: Option<Arc<dyn GradSyncHook>>) -> Tensor {
        if !self.dtype().is_float() {
            panic!(
                "requires_grad: only float tensors carry gradients; this one is {}",
                self.dtype()
            );
        }
        let slot = GradSlot {
            value: Mutex::new(None),
            hook,
        };
        self.leaf_of(&crate::transforms::backward::autograd_level(), Some(slot))
    }

    /// True for leaves created by [`Tensor::requires_grad`].
    pub fn is_grad_leaf(&self) -> bool {
        self.0.node.as_ref().is_some_and(|n| n.grad.is_some())
    }

    pub(crate) fn grad_slot(&self) -> Option<&GradSlot> {
        self.0.node.as_ref()?.grad.as_ref()
    }

    /// The gradient accumulated by `backward` calls so far, if any.
    pub fn grad(&self) -> Option<Tensor> {
        self.grad_slot()?.lock().clone()
    }

    /// Replaces the accumulated gradient (`None` clears it). For code that post-processes
    /// gradients in place of the user, such as a data-parallel all-reduce or gradient
    /// clipping. Panics when this tensor is not a `requires_grad` leaf, or when `grad` has
    /// another shape or dtype than the leaf.
    pub fn set_grad(&self, grad: Option<Tensor>) {
        let Some(slot) = self.grad_slot() else {
            panic!(
                "set_grad: this tensor ({:?}, {}) is not a requires_grad leaf; only leaves carry .grad",
                self.shape(),
                self.dtype()
            )
        };
        if let Some(g) = &grad
            && (g.shape() != self.shape() || g.dtype() != self.dtype() || g.device() != self.device())
        {
            panic!(
                "set_grad: gradient {:?} ({}, {}) does not match its leaf {:?} ({}, {})",
                g.shape(),
                g.dtype(),
                g.device(),
                self.shape(),
                self.dtype(),
                self.device()
            );
        }
        *slot.lock() = grad.map(|g| g.stop_gradient());
    }

    /// Clears the accumulated gradient (PyTorch's `zero_grad`).
    pub fn zero_grad(&self) {
        if let Some(slot) = self.grad_slot() {
            *slot.lock() = None;
        }
    }

    /// The hook this leaf was registered with by [`Tensor::requires_grad_with_hook`].
    pub(crate) fn grad_hook(&self) -> Option<&Arc<dyn GradSyncHook>> {
        self.grad_slot()?.hook.as_ref()
    }
}

/// Identity rule of a transform's leaf (connects it to its primal when that is traced).
pub(crate) struct LeafRule;

impl Rule for LeafRule {
    fn name(&self) -> String {
        "leaf".into()
    }
    fn vjp(&self, _inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(ct.clone())]
    }
    fn jvp(&self, _inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        tangents.first().cloned().flatten()
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(shape={:?}, dtype={}, device={}",
            self.shape(),
            self.dtype(),
            self.device()
        )?;
        if let Some(id) = self.node_id() {
            write!(f, ", node=%{id}")?;
        }
        write!(f, ")\n{self}")
    }
}
