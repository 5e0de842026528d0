//! Indexing: take (gather), take_along_axis, one_hot, scatter_add (the transpose of take).

use super::require_same_device;
use crate::dtype::DType;
use crate::shape::{normalize_axis, numel};
use crate::tensor::Tensor;
use crate::trace::Rule;

/// `x` seen as `[1, pre, n, post]` around `axis`, plus (pre, n, post).
fn around_axis(x: &Tensor, axis: usize) -> (Tensor, usize, usize, usize) {
    let pre = numel(&x.shape()[..axis]);
    let post = numel(&x.shape()[axis + 1..]);
    let n = x.shape()[axis];
    (x.reshape([1, pre, n, post]), pre, n, post)
}

/// Indices as a flat i64 tensor with negatives wrapped, checked against `n`.
fn checked_indices(op: &str, idx: &Tensor, n: usize, x_shape: &[usize], axis: usize) -> Tensor {
    if idx.dtype() != DType::I64 {
        panic!(
            "{op}: indices must be i64, got {} with shape {:?}; cast them with .cast(DType::I64)",
            idx.dtype(),
            idx.shape()
        );
    }
    let flat = idx.stop_gradient().reshape([1, idx.numel()]);
    let values = flat.to_vec::<i64>();
    let ni = n as i64;
    if let Some(&bad) = values.iter().find(|&&v| v < -ni || v >= ni) {
        panic!("{op}: index {bad} is out of range for axis {axis} of extent {n} (shape {x_shape:?})");
    }
    if values.iter().any(|&v| v < 0) {
        let wrapped: Vec<i64> = values.iter().map(|&v| if v < 0 { v + ni } else { v }).collect();
        return Tensor::from_vec(wrapped, &[1, values.len()])
            .to_device(idx.device())
            .expect("same device as idx");
    }
    flat
}

struct TakeRule {
    axis: usize,
}
impl Rule for TakeRule {
    fn name(&self) -> String {
        format!("take(axis={})", self.axis)
    }
    fn vjp(&self, inputs: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let (x, idx) = (&inputs[0], &inputs[1]);
        vec![Some(x.zeros_like().scatter_add(idx, ct, self.axis as isize)), None]
    }
    fn jvp(&self, inputs: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(t[0].as_ref()?.take(&inputs[1], self.axis as isize))
    }
}

struct ScatterAddRule {
    axis: usize,
}
impl Rule for ScatterAddRule {
    fn name(&self) -> String {
        format!("scatter_add(axis={})", self.axis)
    }
    fn vjp(&self, inputs: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(ct.clone()), None, Some(ct.take(&inputs[1], self.axis as isize))]
    }
    fn jvp(&self, inputs: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        let tx = t[0].clone().unwrap_or_else(|| inputs[0].zeros_like());
        let tu = t[2].clone().unwrap_or_else(|| inputs[2].zeros_like());
        Some(tx.scatter_add(&inputs[1], &tu, self.axis as isize))
    }
}

impl Tensor {
    /// Elements picked along `axis` by integer indices (NumPy's `take`): the result has shape
    /// `x.shape[..axis] ++ idx.shape ++ x.shape[axis+1..]`. Negative indices count from the end;
    /// out-of-range indices panic.
    pub fn take(&self, idx: &Tensor, axis: isize) -> Tensor {
        require_same_device("take", self, idx);
        let a = normalize_axis("take", axis, self.rank());
        let (x4, pre, n, post) = around_axis(self, a);
        let flat = checked_indices("take", idx, n, self.shape(), a);
        let raw = self.backend().gather(x4.raw(), flat.raw());
        let mut shape = self.shape()[..a].to_vec();
        shape.extend_from_slice(idx.shape());
        shape.extend_from_slice(&self.shape()[a + 1..]);
        debug_assert_eq!(numel(&shape), pre * idx.numel() * post);
        let raw = raw.with_layout(crate::layout::Layout::contiguous(&shape));
        if self.dtype().is_float() {
            Tensor::record(raw, &[self, idx], || TakeRule { axis: a })
        } else {
            Tensor::from_raw(raw)
        }
    }

    /// `self` with `updates` added at the positions `idx` selects along `axis` (JAX's
    /// `x.at[idx].add(updates)`); repeated indices accumulate. `updates` has the shape `take`
    /// would return.
    pub fn scatter_add(&self, idx: &Tensor, updates: &Tensor, axis: isize) -> Tensor {
        require_same_device("scatter_add", self, updates);
        let a = normalize_axis("scatter_add", axis, self.rank());
        let mut expected = self.shape()[..a].to_vec();
        expected.extend_from_slice(idx.shape());
        expected.extend_from_slice(&self.shape()[a + 1..]);
        if updates.shape() != expected.as_slice() {
            panic!(
                "scatter_add: updates have shape {:?}, expected {:?} (x {:?}, indices {:?}, axis {a})",
                updates.shape(),
                expected,
                self.shape(),
                idx.shape()
            );
        }
        let updates = if updates.dtype() == self.dtype() {
            updates.clone()
        } else {
            updates.cast(self.dtype())
        };
        let (x4, pre, n, post) = around_axis(self, a);
        let flat = checked_indices("scatter_add", idx, n, self.shape(), a);
        let u4 = updates.reshape([1, pre, idx.numel(), post]);
        let raw = self.backend().scatter_add(x4.raw(), flat.raw(), u4.raw());
        let raw = raw.with_layout(crate::layout::Layout::contiguous(self.shape()));
        if self.dtype().is_float() {
            Tensor::record(raw, &[self, idx, &updates], || ScatterAddRule { axis: a })
        } else {
            Tensor::from_raw(raw)
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
        let wrapped = ib.lt_scalar(0.0).where_(&(&ib + n as f64), &ib);
        let offsets = (Tensor::arange(0.0, rows as f64, 1.0, DType::I64) * n as f64).reshape([rows, 1]);
        let flat_idx = wrapped.reshape([rows, k]) + offsets;
        let picked = xb.reshape([rows * n]).take(&flat_idx.reshape([rows * k]), 0);
        picked.reshape(&rows_shape).moveaxis(-1, a as isize)
    }
}

/// One-hot encoding of integer labels: shape `labels.shape ++ [num_classes]`, `dtype` floats.
pub fn one_hot(labels: &Tensor, num_classes: usize, dtype: DType) -> Tensor {
    if labels.dtype() != DType::I64 {
        panic!(
            "one_hot: labels must be i64, got {} with shape {:?}",
            labels.dtype(),
            labels.shape()
        );
    }
    let classes = Tensor::arange(0.0, num_classes as f64, 1.0, DType::I64);
    labels.expand_dims(-1).eq(&classes).cast(dtype)
}
