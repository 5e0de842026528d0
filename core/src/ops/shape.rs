//! Shape ops. All of them are views (layout changes sharing the storage) except `concatenate`,
//! `pad` and a `reshape` of non-contiguous data, which copy, as in NumPy.

use super::{aligned_layouts, batch_extents, physical, require_same_device};
use crate::dtype::DType;
use crate::layout::Dims;
use crate::shape::{normalize_axes, normalize_axis, numel, try_broadcast_shapes};
use crate::tensor::Tensor;
use crate::trace::Rule;

/// A target shape for [`Tensor::reshape`]: unsigned extents, or signed ones where one `-1` is
/// inferred from the element count.
pub trait ShapeArg {
    /// The signed extents (`-1` for the inferred one).
    fn extents(&self) -> Extents;
}

/// Signed target extents of a reshape, inline for up to 6 axes.
pub type Extents = smallvec::SmallVec<[i64; 6]>;

macro_rules! shape_arg {
    ($($t:ty),*) => {$(
        impl ShapeArg for &[$t] {
            fn extents(&self) -> Extents { self.iter().map(|&v| v as i64).collect() }
        }
        impl<const N: usize> ShapeArg for [$t; N] {
            fn extents(&self) -> Extents { self.iter().map(|&v| v as i64).collect() }
        }
        impl<const N: usize> ShapeArg for &[$t; N] {
            fn extents(&self) -> Extents { self.iter().map(|&v| v as i64).collect() }
        }
        impl ShapeArg for Vec<$t> {
            fn extents(&self) -> Extents { self.iter().map(|&v| v as i64).collect() }
        }
        impl ShapeArg for &Vec<$t> {
            fn extents(&self) -> Extents { self.iter().map(|&v| v as i64).collect() }
        }
    )*};
}
shape_arg!(usize, isize, i32, i64);

fn resolve_shape(from: &[usize], ext: &[i64]) -> Dims {
    let total = numel(from);
    let infer: smallvec::SmallVec<[usize; 2]> = (0..ext.len()).filter(|&i| ext[i] == -1).collect();
    if infer.len() > 1 || ext.iter().any(|&e| e < -1) {
        panic!("reshape: invalid target {ext:?}: extents must be >= 0 with at most one -1");
    }
    let known: usize = ext.iter().filter(|&&e| e >= 0).map(|&e| e as usize).product();
    let mut out: Dims = ext.iter().map(|&e| e.max(0) as usize).collect();
    if let Some(&i) = infer.first() {
        if known == 0 || !total.is_multiple_of(known) {
            panic!("reshape: cannot infer -1 in {ext:?} for {total} elements (shape {from:?})");
        }
        out[i] = total / known;
    }
    if numel(&out) != total {
        panic!(
            "reshape: cannot reshape {from:?} ({total} elements) into {ext:?} ({} elements)",
            numel(&out)
        );
    }
    out
}

struct ReshapeRule {
    from: Vec<usize>,
}
impl Rule for ReshapeRule {
    fn name(&self) -> String {
        format!("reshape(from={:?})", self.from)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(ct.reshape(&self.from))]
    }
    fn jvp(&self, _i: &[Tensor], out: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(t[0].as_ref()?.reshape(out.shape()))
    }
}

struct PermuteRule {
    perm: Vec<usize>,
}
impl Rule for PermuteRule {
    fn name(&self) -> String {
        format!("permute({:?})", self.perm)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let mut inv = vec![0; self.perm.len()];
        for (i, &p) in self.perm.iter().enumerate() {
            inv[p] = i;
        }
        vec![Some(ct.permute(&inv))]
    }
    fn jvp(&self, _i: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(t[0].as_ref()?.permute(&self.perm))
    }
}

struct BroadcastRule {
    from: Vec<usize>,
}
impl Rule for BroadcastRule {
    fn name(&self) -> String {
        format!("broadcast_to(from={:?})", self.from)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(ct.sum_to_shape(&self.from))]
    }
    fn jvp(&self, _i: &[Tensor], out: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(t[0].as_ref()?.broadcast_to(out.shape()))
    }
}

/// Strided slice with positive steps over every axis; its transpose is `embed`.
struct SliceRule {
    starts: Vec<usize>,
    steps: Vec<usize>,
    from: Vec<usize>,
}
impl Rule for SliceRule {
    fn name(&self) -> String {
        format!("slice(starts={:?}, steps={:?})", self.starts, self.steps)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(ct.embed(&self.from, &self.starts, &self.steps))]
    }
    fn jvp(&self, _i: &[Tensor], out: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(t[0].as_ref()?.strided_slice(&self.starts, &self.steps, out.shape()))
    }
}

/// Zeros with the input written at strided positions (pad is its step-1 case).
struct EmbedRule {
    starts: Vec<usize>,
    steps: Vec<usize>,
}
impl Rule for EmbedRule {
    fn name(&self) -> String {
        format!("embed(starts={:?}, steps={:?})", self.starts, self.steps)
    }
    fn vjp(&self, inputs: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(ct.strided_slice(&self.starts, &self.steps, inputs[0].shape()))]
    }
    fn jvp(&self, _i: &[Tensor], out: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(t[0].as_ref()?.embed(out.shape(), &self.starts, &self.steps))
    }
}

struct FlipRule {
    axes: Vec<usize>,
}
impl Rule for FlipRule {
    fn name(&self) -> String {
        format!("flip({:?})", self.axes)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(ct.flip_axes(&self.axes))]
    }
    fn jvp(&self, _i: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(t[0].as_ref()?.flip_axes(&self.axes))
    }
}

struct ConcatRule {
    axis: usize,
}
impl Rule for ConcatRule {
    fn name(&self) -> String {
        format!("concatenate(axis={})", self.axis)
    }
    fn vjp(&self, inputs: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let mut at = 0;
        inputs
            .iter()
            .map(|x| {
                let len = x.shape()[self.axis];
                let part = ct.slice_axis(self.axis as isize, Some(at as isize), Some((at + len) as isize), 1);
                at += len;
                Some(part)
            })
            .collect()
    }
    fn jvp(&self, inputs: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        let parts = crate::transforms::custom::dense_tangents(inputs, t);
        Some(concatenate(&parts, self.axis as isize))
    }
}

/// One axis of a slice: Python's `start:stop:step` (missing ends are `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sl {
    /// First index (negative counts from the end).
    pub start: Option<isize>,
    /// One past the last index (negative counts from the end).
    pub stop: Option<isize>,
    /// Step, non-zero; negative walks backwards.
    pub step: isize,
}

impl Sl {
    /// The whole axis (`:`).
    pub fn all() -> Sl {
        Sl {
            start: None,
            stop: None,
            step: 1,
        }
    }
    /// `start:stop`.
    pub fn range(start: isize, stop: isize) -> Sl {
        Sl {
            start: Some(start),
            stop: Some(stop),
            step: 1,
        }
    }
    /// `start:stop:step` with optional ends.
    pub fn new(start: Option<isize>, stop: Option<isize>, step: isize) -> Sl {
        Sl { start, stop, step }
    }
}

impl From<std::ops::Range<i32>> for Sl {
    fn from(r: std::ops::Range<i32>) -> Sl {
        Sl::range(r.start as isize, r.end as isize)
    }
}
impl From<std::ops::RangeFull> for Sl {
    fn from(_: std::ops::RangeFull) -> Sl {
        Sl::all()
    }
}
impl From<std::ops::RangeFrom<i32>> for Sl {
    fn from(r: std::ops::RangeFrom<i32>) -> Sl {
        Sl::new(Some(r.start as isize), None, 1)
    }
}
impl From<std::ops::RangeTo<i32>> for Sl {
    fn from(r: std::ops::RangeTo<i32>) -> Sl {
        Sl::new(None, Some(r.end as isize), 1)
    }
}

/// Python's `slice.indices` for a positive or negative step: (first index, count).
fn slice_bounds(s: Sl, len: usize) -> (isize, usize) {
    if s.step == 0 {
        panic!("slice: step must be non-zero");
    }
    let n = len as isize;
    let norm = |v: isize, lo: isize, hi: isize| (if v < 0 { v + n } else { v }).clamp(lo, hi);
    if s.step > 0 {
        let start = s.start.map_or(0, |v| norm(v, 0, n));
        let stop = s.stop.map_or(n, |v| norm(v, 0, n));
        let count = if stop > start {
            (stop - start + s.step - 1) / s.step
        } else {
            0
        };
        (start, count as usize)
    } else {
        let start = s.start.map_or(n - 1, |v| norm(v, -1, n - 1));
        let stop = s.stop.map_or(-1, |v| norm(v, -1, n - 1));
        let count = if start > stop {
            (start - stop + (-s.step) - 1) / (-s.step)
        } else {
            0
        };
        (start, count as usize)
    }
}

impl Tensor {
    /// The same elements under a new shape (one extent may be `-1`). A view when the data is
    /// contiguous, a copy otherwise (as NumPy).
    pub fn reshape(&self, shape: impl ShapeArg) -> Tensor {
        let target = resolve_shape(self.shape(), &shape.extents());
        if target.as_slice() == self.shape() {
            return self.clone();
        }
        let target_physical = physical(batch_extents(self), &target);
        let raw = match self.layout().reshape(&target_physical) {
            Some(l) => self.raw().with_layout(l),
            None => {
                let c = self.backend().contiguous(self.raw());
                let l = c.layout.reshape(&target_physical).expect("contiguous");
                c.with_layout(l)
            }
        };
        Tensor::record(raw, &[self], || ReshapeRule {
            from: self.shape().to_vec(),
        })
    }

    /// All elements as a 1-D tensor.
    pub fn flatten(&self) -> Tensor {
        self.reshape([self.numel()])
    }

    /// Axes reordered: axis `i` of the result is axis `perm[i]` of `self` (a view).
    pub fn permute(&self, perm: &[usize]) -> Tensor {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank()
            || perm
                .iter()
                .any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            panic!(
                "permute: {perm:?} is not a permutation of the {} axes of shape {:?}",
                self.rank(),
                self.shape()
            );
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return self.clone();
        }
        let nb = self.nb();
        let physical_perm: Vec<usize> = (0..nb).chain(perm.iter().map(|&p| p + nb)).collect();
        let raw = self.raw().with_layout(self.layout().permute(&physical_perm));
        Tensor::record(raw, &[self], || PermuteRule { perm: perm.to_vec() })
    }

    /// Axes reversed (NumPy's `.T`).
    pub fn transpose(&self) -> Tensor {
        let perm: Vec<usize> = (0..self.rank()).rev().collect();
        self.permute(&perm)
    }

    /// Axes `a` and `b` exchanged (negative counts from the end).
    pub fn swap_axes(&self, a: isize, b: isize) -> Tensor {
        let (a, b) = (
            normalize_axis("swap_axes", a, self.rank()),
            normalize_axis("swap_axes", b, self.rank()),
        );
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Axis `src` moved to position `dst`.
    pub fn moveaxis(&self, src: isize, dst: isize) -> Tensor {
        let (s, d) = (
            normalize_axis("moveaxis", src, self.rank()),
            normalize_axis("moveaxis", dst, self.rank()),
        );
        let mut perm: Vec<usize> = (0..self.rank()).filter(|&a| a != s).collect();
        perm.insert(d, s);
        self.permute(&perm)
    }

    /// A view with NumPy broadcasting to `shape` (no copy).
    pub fn broadcast_to(&self, shape: &[usize]) -> Tensor {
        if self.shape() == shape {
            return self.clone();
        }
        match try_broadcast_shapes(self.shape(), shape) {
            Some(s) if s == shape => {}
            _ => panic!(
                "broadcast_to: cannot broadcast shape {:?} to {:?} (each axis must match or be 1)",
                self.shape(),
                shape
            ),
        }
        let mut layout = self.layout().clone();
        for _ in self.rank()..shape.len() {
            layout = layout.expand_dims(self.nb());
        }
        let raw = self
            .raw()
            .with_layout(layout.broadcast_to(&physical(batch_extents(self), shape)));
        Tensor::record(raw, &[self], || BroadcastRule {
            from: self.shape().to_vec(),
        })
    }

    /// A new axis of extent 1 at `axis` (negative counts from the end of the result).
    pub fn expand_dims(&self, axis: isize) -> Tensor {
        let a = normalize_axis("expand_dims", axis, self.rank() + 1);
        let raw = self.raw().with_layout(self.layout().expand_dims(a + self.nb()));
        Tensor::record(raw, &[self], || ReshapeRule {
            from: self.shape().to_vec(),
        })
    }

    /// Removes the listed axes, which must have extent 1 (`Axes::All`: every extent-1 axis).
    pub fn squeeze(&self, axes: impl Into<super::Axes>) -> Tensor {
        let axes = axes.into();
        let list: Vec<usize> = match axes.as_option() {
            None => (0..self.rank()).filter(|&a| self.shape()[a] == 1).collect(),
            Some(_) => normalize_axes("squeeze", axes.as_option(), self.rank()),
        };
        if let Some(&a) = list.iter().find(|&&a| self.shape()[a] != 1) {
            panic!(
                "squeeze: axis {a} of shape {:?} has extent {}, not 1",
                self.shape(),
                self.shape()[a]
            );
        }
        let mut layout = self.layout().clone();
        for &a in list.iter().rev() {
            layout = layout.squeeze_axis(a + self.nb());
        }
        Tensor::record(self.raw().with_layout(layout), &[self], || ReshapeRule {
            from: self.shape().to_vec(),
        })
    }

    /// Strided slice with positive steps on every axis, giving `lens` elements per axis.
    pub(crate) fn strided_slice(&self, starts: &[usize], steps: &[usize], lens: &[usize]) -> Tensor {
        if starts.iter().all(|&s| s == 0) && steps.iter().all(|&s| s == 1) && lens == self.shape() {
            return self.clone();
        }
        let mut layout = self.layout().clone();
        for ax in 0..self.rank() {
            layout = layout.slice_axis(ax + self.nb(), starts[ax], steps[ax] as isize, lens[ax]);
        }
        Tensor::record(self.raw().with_layout(layout), &[self], || SliceRule {
            starts: starts.to_vec(),
            steps: steps.to_vec(),
            from: self.shape().to_vec(),
        })
    }

    /// Zeros of `shape` with `self` written at `starts + steps * i` (the transpose of slicing).
    pub(crate) fn embed(&self, shape: &[usize], starts: &[usize], steps: &[usize]) -> Tensor {
        if shape == self.shape() {
            return self.clone();
        }
        let nb = self.nb();
        let physical_starts: Vec<usize> = std::iter::repeat_n(0, nb).chain(starts.iter().copied()).collect();
        let physical_steps: Vec<usize> = std::iter::repeat_n(1, nb).chain(steps.iter().copied()).collect();
        let target = physical(batch_extents(self), shape);
        let raw = self
            .backend()
            .embed(self.raw(), &target, &physical_starts, &physical_steps);
        Tensor::record(raw, &[self], || EmbedRule {
            starts: starts.to_vec(),
            steps: steps.to_vec(),
        })
    }

    /// Reverses the order of elements along `axes` (a view with negative strides).
    pub fn flip(&self, axes: impl Into<super::Axes>) -> Tensor {
        let axes = normalize_axes("flip", axes.into().as_option(), self.rank());
        self.flip_axes(&axes)
    }

    fn flip_axes(&self, axes: &[usize]) -> Tensor {
        if axes.is_empty() {
            return self.clone();
        }
        let mut layout = self.layout().clone();
        for &a in axes {
            let p = a + self.nb();
            let n = layout.shape[p];
            layout = layout.slice_axis(p, n.saturating_sub(1), -1, n);
        }
        Tensor::record(self.raw().with_layout(layout), &[self], || FlipRule {
            axes: axes.to_vec(),
        })
    }

    /// Python slicing `x[s0, s1, ...]`, one [`Sl`] per leading axis (a view).
    pub fn slice(&self, specs: &[Sl]) -> Tensor {
        if specs.len() > self.rank() {
            panic!(
                "slice: {} slices given for a tensor of rank {} (shape {:?})",
                specs.len(),
                self.rank(),
                self.shape()
            );
        }
        let mut flips = vec![];
        let mut starts = vec![0; self.rank()];
        let mut steps = vec![1; self.rank()];
        let mut lens = self.shape().to_vec();
        for (ax, &s) in specs.iter().enumerate() {
            let n = self.shape()[ax];
            let (start, count) = slice_bounds(s, n);
            if s.step < 0 {
                flips.push(ax);
                starts[ax] = if count == 0 {
                    0
                } else {
                    (n as isize - 1 - start) as usize
                };
            } else {
                starts[ax] = if count == 0 { 0 } else { start as usize };
            }
            steps[ax] = s.step.unsigned_abs();
            lens[ax] = count;
        }
        self.flip_axes(&flips).strided_slice(&starts, &steps, &lens)
    }

    /// Python slicing `start:stop:step` along one axis.
    pub fn slice_axis(&self, axis: isize, start: Option<isize>, stop: Option<isize>, step: isize) -> Tensor {
        let axis = normalize_axis("slice_axis", axis, self.rank());
        let mut specs = vec![Sl::all(); axis + 1];
        specs[axis] = Sl::new(start, stop, step);
        self.slice(&specs)
    }

    /// Integer indexing on the first axis, `x[i]` (negative counts from the end); drops the axis.
    pub fn i(&self, index: isize) -> Tensor {
        self.index_axis(0, index)
    }

    /// Integer indexing along `axis`, dropping it.
    pub fn index_axis(&self, axis: isize, index: isize) -> Tensor {
        let axis = normalize_axis("index", axis, self.rank());
        let n = self.shape()[axis] as isize;
        if index < -n || index >= n {
            panic!(
                "index: index {index} is out of range for axis {axis} of extent {n} (shape {:?})",
                self.shape()
            );
        }
        let i = if index < 0 { index + n } else { index };
        self.slice_axis(axis as isize, Some(i), Some(i + 1), 1)
            .squeeze([axis as isize])
    }

    /// Zero padding: `widths[a] = (before, after)` elements added on each side of axis `a`.
    pub fn pad(&self, widths: &[(usize, usize)]) -> Tensor {
        if widths.len() != self.rank() {
            panic!(
                "pad: {} (before, after) pairs given for a tensor of rank {} (shape {:?})",
                widths.len(),
                self.rank(),
                self.shape()
            );
        }
        let shape: Vec<usize> = self.shape().iter().zip(widths).map(|(&s, &(b, a))| s + b + a).collect();
        let starts: Vec<usize> = widths.iter().map(|w| w.0).collect();
        self.embed(&shape, &starts, &vec![1; self.rank()])
    }

    /// Splits into `sections` equal parts along `axis` (views).
    pub fn split(&self, sections: usize, axis: isize) -> Vec<Tensor> {
        let a = normalize_axis("split", axis, self.rank());
        let n = self.shape()[a];
        if sections == 0 || !n.is_multiple_of(sections) {
            panic!(
                "split: axis {a} of shape {:?} (extent {n}) cannot be split into {sections} equal sections",
                self.shape()
            );
        }
        let len = n / sections;
        (0..sections)
            .map(|i| self.slice_axis(a as isize, Some((i * len) as isize), Some(((i + 1) * len) as isize), 1))
            .collect()
    }
}

/// Joins tensors along an existing axis (a copy). Shapes must agree on every other axis.
pub fn concatenate(tensors: &[Tensor], axis: isize) -> Tensor {
    let Some(first) = tensors.first() else {
        panic!("concatenate: needs at least one tensor")
    };
    let a = normalize_axis("concatenate", axis, first.rank().max(1));
    let dtype = tensors.iter().map(|t| t.dtype()).fold(first.dtype(), DType::promote);
    for (i, t) in tensors.iter().enumerate() {
        require_same_device("concatenate", first, t);
        let same = t.rank() == first.rank() && (0..t.rank()).all(|d| d == a || t.shape()[d] == first.shape()[d]);
        if !same || first.rank() == 0 {
            panic!(
                "concatenate: tensor {i} has shape {:?}, incompatible with {:?} along axis {a} \
                 (all axes but the joined one must match; scalars cannot be joined, use stack)",
                t.shape(),
                first.shape()
            );
        }
    }
    let cast: Vec<Tensor> = tensors
        .iter()
        .map(|t| if t.dtype() == dtype { t.clone() } else { t.cast(dtype) })
        .collect();
    if cast.len() == 1 {
        return cast[0].clone();
    }
    let refs: Vec<&Tensor> = cast.iter().collect();
    // Bring every part to one batch prefix; extents other than the joined axis must then agree.
    let (layouts, levels) = aligned_layouts(&refs, None);
    let nb = levels.len();
    let mut common = layouts[0].shape.clone();
    for l in &layouts {
        for (c, &e) in common[..nb].iter_mut().zip(&l.shape[..nb]) {
            *c = (*c).max(e);
        }
    }
    let raws: Vec<crate::storage::RawTensor> = cast
        .iter()
        .zip(&layouts)
        .map(|(t, l)| {
            let mut target = common.clone();
            target[nb + a] = l.shape[nb + a];
            t.raw().with_layout(l.broadcast_to(&target))
        })
        .collect();
    let raw_refs: Vec<&crate::storage::RawTensor> = raws.iter().collect();
    let raw = first.backend().concat(&raw_refs, nb + a);
    if dtype.is_float() {
        Tensor::record(raw, &refs, || ConcatRule { axis: a })
    } else {
        Tensor::untraced(raw, &refs)
    }
}

/// Joins tensors of one shape along a new axis.
pub fn stack(tensors: &[Tensor], axis: isize) -> Tensor {
    let Some(first) = tensors.first() else {
        panic!("stack: needs at least one tensor")
    };
    for (i, t) in tensors.iter().enumerate() {
        if t.shape() != first.shape() {
            panic!(
                "stack: tensor {i} has shape {:?}, tensor 0 has {:?}; all must match",
                t.shape(),
                first.shape()
            );
        }
    }
    let a = normalize_axis("stack", axis, first.rank() + 1) as isize;
    let expanded: Vec<Tensor> = tensors.iter().map(|t| t.expand_dims(a)).collect();
    concatenate(&expanded, a)
}
