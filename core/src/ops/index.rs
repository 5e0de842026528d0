//! Indexing: take (gather), take_along_axis, one_hot, scatter_add (the transpose of take).

use super::{aligned_layouts, physical, require_same_device};
use std::sync::Arc;

use crate::backend::{Backend, IndexCheck};
use crate::dtype::DType;
use crate::jit::{HostFn, host_step};
use crate::layout::Layout;
use crate::shape::{normalize_axis, numel, try_broadcast_shapes};
use crate::storage::{CpuBuffer, RawTensor};
use crate::tensor::Tensor;
use crate::trace::Rule;

/// (pre, n, post): the element counts before, along and after `axis` of a logical shape.
fn around_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (numel(&shape[..axis]), shape[axis], numel(&shape[axis + 1..]))
}

/// `t` (with aligned physical `layout`) broadcast to the batch extents `batch`, made contiguous
/// and viewed as `dims`.
fn contiguous_as(t: &Tensor, layout: &Layout, batch: &[usize], dims: &[usize]) -> RawTensor {
    let view = t.raw().with_layout(layout.broadcast_to(&physical(batch, t.shape())));
    let c = if view.layout.is_contiguous() {
        view
    } else {
        t.backend().contiguous(&view)
    };
    let l = c.layout.reshape(dims).expect("contiguous");
    c.with_layout(l)
}

/// The common batch extents of aligned layouts with `nb` batch axes.
fn common_batch(layouts: &[Layout], nb: usize) -> Vec<usize> {
    let mut bt = layouts[0].shape[..nb].to_vec();
    for l in &layouts[1..] {
        bt = try_broadcast_shapes(&bt, &l.shape[..nb]).expect("batch axes of one vmap level have one size");
    }
    bt
}

/// The indices an op accepts along an axis of extent `n`: `0..n`, and `-n..0` (counted from
/// the end) when `wrap_negative`.
#[derive(Clone, Copy)]
pub(super) struct IndexRange {
    pub(super) n: usize,
    pub(super) wrap_negative: bool,
}

/// `idx` checked against `range` (the message names `op`, the bad index, `axis`, the extent and
/// `x_shape`) with negative indices wrapped, as a tensor of `idx`'s shape and vmap levels.
pub(super) fn checked_index_tensor(
    op: &'static str,
    idx: &Tensor,
    range: IndexRange,
    x_shape: &[usize],
    axis: usize,
) -> Tensor {
    let (layouts, levels) = aligned_layouts(&[idx], None);
    let bt = common_batch(&layouts, levels.len());
    let raw = checked_indices(op, idx, &layouts[0], &bt, range, x_shape, axis);
    // The checked indices are a fresh contiguous buffer: shape it like `idx` (with its batch
    // axes).
    let layout = raw
        .layout
        .reshape(&physical(&bt, idx.shape()))
        .expect("checked indices are contiguous");
    Tensor::untraced(raw.with_layout(layout), &[idx])
}

/// Indices as a contiguous `[batches, count]` i64 raw tensor with negatives wrapped, checked
/// against the extent `n`. The values are read on the host in a step that `jit` replays, so a
/// recorded program checks every new batch of indices too.
fn checked_indices(
    op: &'static str,
    idx: &Tensor,
    layout: &Layout,
    batch: &[usize],
    range: IndexRange,
    x_shape: &[usize],
    axis: usize,
) -> RawTensor {
    let IndexRange { n, wrap_negative } = range;
    if idx.dtype() != DType::I64 {
        panic!(
            "{op}: indices must be i64, got {} with shape {:?}; cast them with .cast(DType::I64)",
            idx.dtype(),
            idx.shape()
        );
    }
    let dims = [numel(batch), idx.numel()];
    let raw = contiguous_as(idx, layout, batch, &dims);
    let device = idx.device();
    let accepted = if wrap_negative {
        format!("{} ..= {}", -(n as i64), n as i64 - 1)
    } else {
        format!("0 ..= {}", n as i64 - 1)
    };
    let check = IndexCheck {
        extent: n,
        wrap_negative,
        message: format!(
            "{op}: index {{index}} is out of range for axis {axis} of extent {n} (shape {x_shape:?}); accepted: {accepted}"
        ),
    };
    let check: HostFn = Arc::new(move |backend: &dyn Backend, raw: &RawTensor| {
        // A device backend checks on the device, reporting at the next read.
        if let Some(out) = backend.check_indices(raw, &check) {
            return out;
        }
        let CpuBuffer::I64(values) = backend.to_host(raw) else {
            unreachable!("checked i64")
        };
        // Always a fresh contiguous buffer (at offset 0), wrapped or not: returning the input's
        // own view would make a jit replay reuse the recorded layout on the other kind of
        // result.
        let wrapped: Vec<i64> = values
            .iter()
            .map(|&v| check.wrap(v).unwrap_or_else(|| panic!("{}", check.describe(v))))
            .collect();
        backend.from_host(CpuBuffer::I64(Arc::new(wrapped)), &raw.layout.shape, device)
    });
    host_step(device, &raw, check, false)
}

/// The indices of `take` or `scatter_add` as a contiguous `[batches, count]` i64 raw tensor:
/// checked against the extent `n` with negatives wrapped (the message names `op` and, from
/// `x`, the shape and axis) when `checked`, else as they are (a kernel's, known in range).
fn index_rows(
    op: &'static str,
    idx: &Tensor,
    layout: &Layout,
    batch: &[usize],
    n: usize,
    (x_shape, axis): (&[usize], usize),
    checked: bool,
) -> RawTensor {
    if checked {
        let range = IndexRange { n, wrap_negative: true };
        return checked_indices(op, idx, layout, batch, range, x_shape, axis);
    }
    assert_eq!(
        idx.dtype(),
        DType::I64,
        "internal error: {op} of {} indices",
        idx.dtype()
    );
    contiguous_as(idx, layout, batch, &[numel(batch), idx.numel()])
}

/// The rule of `take` (`checked`: the indices were checked; `false` for indices a kernel
/// produced in range, whose derivatives skip the check too).
struct TakeRule {
    axis: usize,
    checked: bool,
}
impl Rule for TakeRule {
    fn name(&self) -> String {
        format!("take(axis={})", self.axis)
    }
    fn vjp(&self, inputs: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let (x, idx) = (&inputs[0], &inputs[1]);
        let zeros = (x.shape(), x.dtype());
        vec![
            Some(scatter_add_to_zeros(zeros, idx, ct, self.axis, self.checked)),
            None,
        ]
    }
    fn jvp(&self, inputs: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(t[0].as_ref()?.take_with(&inputs[1], self.axis, self.checked))
    }
}

/// The rule of `scatter_add` (`checked` as [`TakeRule`]'s).
struct ScatterAddRule {
    axis: usize,
    checked: bool,
}
impl Rule for ScatterAddRule {
    fn name(&self) -> String {
        format!("scatter_add(axis={})", self.axis)
    }
    fn vjp(&self, inputs: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![
            Some(ct.clone()),
            None,
            Some(ct.take_with(&inputs[1], self.axis, self.checked)),
        ]
    }
    fn jvp(&self, inputs: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        let tx = t[0].clone().unwrap_or_else(|| inputs[0].zeros_like());
        let tu = t[2].clone().unwrap_or_else(|| inputs[2].zeros_like());
        Some(tx.scatter_add_with(&inputs[1], &tu, self.axis, self.checked))
    }
}

/// `updates` checked against the shape that `take` along `a` by `idx` gives from a tensor of
/// `shape`, in `dtype`.
fn scatter_updates(shape: &[usize], dtype: DType, idx: &Tensor, updates: &Tensor, a: usize) -> Tensor {
    let mut expected = shape[..a].to_vec();
    expected.extend_from_slice(idx.shape());
    expected.extend_from_slice(&shape[a + 1..]);
    if updates.shape() != expected.as_slice() {
        panic!(
            "scatter_add: updates have shape {:?}, expected {:?} (x {:?}, indices {:?}, axis {a})",
            updates.shape(),
            expected,
            shape,
            idx.shape()
        );
    }
    if updates.dtype() == dtype {
        updates.clone()
    } else {
        updates.cast(dtype)
    }
}

/// Zeros of `shape` and `dtype` with `updates` added at `idx` along `a`, without a base to
/// copy (the gradient of a take; `Backend::scatter_add_to_zeros`). Differentiable in
/// `updates`.
fn scatter_add_to_zeros(
    (shape, dtype): (&[usize], DType),
    idx: &Tensor,
    updates: &Tensor,
    a: usize,
    checked: bool,
) -> Tensor {
    let updates = scatter_updates(shape, dtype, idx, updates, a);
    let (pre, n, post) = around_axis(shape, a);
    let (layouts, levels) = aligned_layouts(&[idx, &updates], None);
    let bt = common_batch(&layouts, levels.len());
    let flat = index_rows("scatter_add", idx, &layouts[0], &bt, n, (shape, a), checked);
    let u4 = contiguous_as(&updates, &layouts[1], &bt, &[numel(&bt), pre, idx.numel(), post]);
    let raw = updates.backend().scatter_add_to_zeros(n, &flat, &u4);
    let raw = raw.with_layout(Layout::contiguous(&physical(&bt, shape)));
    let shape = shape.to_vec();
    if dtype.is_float() {
        Tensor::record(raw, &[idx, &updates], || ScatterToZerosRule {
            axis: a,
            checked,
            shape,
        })
    } else {
        Tensor::untraced(raw, &[idx, &updates])
    }
}

/// The rule of [`scatter_add_to_zeros`] (inputs: the indices, the updates): linear in the
/// updates, whose VJP is the take of the cotangent.
struct ScatterToZerosRule {
    axis: usize,
    checked: bool,
    /// The shape of the zeros.
    shape: Vec<usize>,
}

impl Rule for ScatterToZerosRule {
    fn name(&self) -> String {
        format!("scatter_add_to_zeros(axis={})", self.axis)
    }
    fn vjp(&self, inputs: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![None, Some(ct.take_with(&inputs[0], self.axis, self.checked))]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        let zeros = (self.shape.as_slice(), out.dtype());
        Some(scatter_add_to_zeros(
            zeros,
            &inputs[0],
            t[1].as_ref()?,
            self.axis,
            self.checked,
        ))
    }
}

impl Tensor {
    /// Elements picked along `axis` by integer indices (NumPy's `take`): the result has shape
    /// `x.shape[..axis] ++ idx.shape ++ x.shape[axis+1..]`. Negative indices count from the end;
    /// out-of-range indices panic.
    pub fn take(&self, idx: &Tensor, axis: isize) -> Tensor {
        require_same_device("take", self, idx);
        let a = normalize_axis("take", axis, self.rank());
        self.take_with(idx, a, true)
    }

    /// [`Tensor::take`] of indices that a kernel produced, known to lie in `0..n` along
    /// `axis` (max pooling's chosen positions): no check, and no check in its derivatives.
    pub(crate) fn take_in_range(&self, idx: &Tensor, axis: usize) -> Tensor {
        self.take_with(idx, axis, false)
    }

    /// [`Tensor::take`] along the normalised `axis`, the indices checked (and negatives
    /// wrapped) when `checked`.
    fn take_with(&self, idx: &Tensor, a: usize, checked: bool) -> Tensor {
        let (pre, n, post) = around_axis(self.shape(), a);
        let (layouts, levels) = aligned_layouts(&[self, idx], None);
        let bt = common_batch(&layouts, levels.len());
        let x4 = contiguous_as(self, &layouts[0], &bt, &[numel(&bt), pre, n, post]);
        let flat = index_rows("take", idx, &layouts[1], &bt, n, (self.shape(), a), checked);
        let raw = self.backend().gather(&x4, &flat);
        let mut shape = self.shape()[..a].to_vec();
        shape.extend_from_slice(idx.shape());
        shape.extend_from_slice(&self.shape()[a + 1..]);
        let raw = raw.with_layout(Layout::contiguous(&physical(&bt, &shape)));
        if self.dtype().is_float() {
            Tensor::record(raw, &[self, idx], || TakeRule { axis: a, checked })
        } else {
            Tensor::untraced(raw, &[self, idx])
        }
    }

    /// `self` with `updates` added at the positions `idx` selects along `axis` (JAX's
    /// `x.at[idx].add(updates)`); repeated indices accumulate. `updates` has the shape `take`
    /// would return.
    pub fn scatter_add(&self, idx: &Tensor, updates: &Tensor, axis: isize) -> Tensor {
        require_same_device("scatter_add", self, updates);
        let a = normalize_axis("scatter_add", axis, self.rank());
        self.scatter_add_with(idx, updates, a, true)
    }

    /// [`Tensor::scatter_add`] along the normalised `axis`, the indices checked (and
    /// negatives wrapped) when `checked`.
    fn scatter_add_with(&self, idx: &Tensor, updates: &Tensor, a: usize, checked: bool) -> Tensor {
        let updates = scatter_updates(self.shape(), self.dtype(), idx, updates, a);
        let (pre, n, post) = around_axis(self.shape(), a);
        let (layouts, levels) = aligned_layouts(&[self, idx, &updates], None);
        let bt = common_batch(&layouts, levels.len());
        let batches = numel(&bt);
        let x4 = contiguous_as(self, &layouts[0], &bt, &[batches, pre, n, post]);
        let flat = index_rows("scatter_add", idx, &layouts[1], &bt, n, (self.shape(), a), checked);
        let u4 = contiguous_as(&updates, &layouts[2], &bt, &[batches, pre, idx.numel(), post]);
        let raw = self.backend().scatter_add(&x4, &flat, &u4);
        let raw = raw.with_layout(Layout::contiguous(&physical(&bt, self.shape())));
        if self.dtype().is_float() {
            Tensor::record(raw, &[self, idx, &updates], || ScatterAddRule { axis: a, checked })
        } else {
            Tensor::untraced(raw, &[self, idx, &updates])
        }
    }

    /// NumPy's `take_along_axis`: `out[.., i, ..] = x[.., idx[.., i, ..], ..]` along `axis`;
    /// `idx` has the rank of `x` and broadcasts against it on the other axes.
    pub fn take_along_axis(&self, idx: &Tensor, axis: isize) -> Tensor {
        if idx.rank() != self.rank() {
            panic!(
                "take_along_axis: indices of shape {:?} must have the rank of x {:?}",
                idx.shape(),
                self.shape()
            );
        }
        let a = normalize_axis("take_along_axis", axis, self.rank());
        let xm = self.moveaxis(a as isize, -1);
        let im = idx.moveaxis(a as isize, -1);
        let n = xm.shape()[xm.rank() - 1];
        let mut rows_shape = crate::shape::broadcast_shapes(
            "take_along_axis",
            &xm.shape()[..xm.rank() - 1],
            &im.shape()[..im.rank() - 1],
        );
        let k = im.shape()[im.rank() - 1];
        let mut xs = rows_shape.clone();
        xs.push(n);
        let xb = xm.broadcast_to(&xs);
        rows_shape.push(k);
        let ib = im.broadcast_to(&rows_shape);
        let rows = numel(&rows_shape) / k.max(1);
        // Checked against the axis's own extent (not rows x n), negatives wrapped, before the
        // row offsets make them flat indices.
        let range = IndexRange { n, wrap_negative: true };
        let wrapped = checked_index_tensor("take_along_axis", &ib, range, self.shape(), a);
        let offsets =
            (Tensor::arange_on(0.0, rows as f64, 1.0, DType::I64, wrapped.device()) * n as f64).reshape([rows, 1]);
        let flat_idx = wrapped.reshape([rows, k]) + offsets;
        let picked = xb.reshape([rows * n]).take(&flat_idx.reshape([rows * k]), 0);
        picked.reshape(&rows_shape).moveaxis(-1, a as isize)
    }
}

/// One-hot encoding of integer labels: shape `labels.shape ++ [num_classes]`, `dtype` floats.
/// A label outside `0..num_classes` panics naming it (JAX's `one_hot` gives a row of zeros
/// instead, which hides wrong labels).
pub fn one_hot(labels: &Tensor, num_classes: usize, dtype: DType) -> Tensor {
    if labels.dtype() != DType::I64 {
        panic!(
            "one_hot: labels must be i64, got {} with shape {:?}",
            labels.dtype(),
            labels.shape()
        );
    }
    let range = IndexRange {
        n: num_classes,
        wrap_negative: false,
    };
    let labels = checked_index_tensor("one_hot", labels, range, &[num_classes], 0);
    let classes = Tensor::arange_on(0.0, num_classes as f64, 1.0, DType::I64, labels.device());
    labels.expand_dims(-1).eq(&classes).cast(dtype)
}
