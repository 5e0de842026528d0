//! Ops: every op checks its inputs (panicking with a message that names the op, the shapes and
//! dtypes, and a fix), runs the backend kernel, and records its derivative rules when an input
//! is traced. Rules are written in these same public ops.

pub mod attention;
mod attention_fused;
pub mod binary;
pub mod cast;
pub mod compare;
pub mod conv;
pub mod create;
pub mod cross_entropy;
pub mod external;
pub mod index;
pub mod linalg;
pub mod nn;
pub mod norm;
mod norm_eval;
pub mod optim;
pub mod overload;
pub mod pool;
pub mod reduce;
pub mod reduce_all;
pub mod shape;
pub mod sync_norm;
pub(crate) mod taps;
pub mod unary;

use crate::dtype::DType;
use crate::layout::{Dims, Layout};
use crate::shape::{broadcast_shapes, try_broadcast_shapes};
use crate::storage::RawTensor;
use crate::tensor::{Tensor, union_batch};

/// Which axes a reduction covers: all of them, or a list (negative counts from the end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Axes {
    /// Every axis.
    All,
    /// These axes.
    List(Vec<isize>),
}

impl Axes {
    /// The list form, or `None` for all axes.
    pub fn as_option(&self) -> Option<&[isize]> {
        match self {
            Axes::All => None,
            Axes::List(v) => Some(v),
        }
    }
}

impl From<isize> for Axes {
    fn from(a: isize) -> Axes {
        Axes::List(vec![a])
    }
}
impl From<i32> for Axes {
    fn from(a: i32) -> Axes {
        Axes::List(vec![a as isize])
    }
}
impl From<usize> for Axes {
    fn from(a: usize) -> Axes {
        Axes::List(vec![a as isize])
    }
}
impl<const N: usize> From<[i32; N]> for Axes {
    fn from(a: [i32; N]) -> Axes {
        Axes::List(a.iter().map(|&x| x as isize).collect())
    }
}
impl<const N: usize> From<[isize; N]> for Axes {
    fn from(a: [isize; N]) -> Axes {
        Axes::List(a.to_vec())
    }
}
impl From<&[isize]> for Axes {
    fn from(a: &[isize]) -> Axes {
        Axes::List(a.to_vec())
    }
}
impl From<Vec<isize>> for Axes {
    fn from(a: Vec<isize>) -> Axes {
        Axes::List(a)
    }
}
impl From<Option<Vec<isize>>> for Axes {
    fn from(a: Option<Vec<isize>>) -> Axes {
        a.map_or(Axes::All, Axes::List)
    }
}

/// Panics unless `x` has a float dtype.
pub(crate) fn require_float(op: &str, x: &Tensor) {
    if !x.dtype().is_float() {
        panic!(
            "{op}: needs a float tensor (f32, f64, bf16 or f16), got {} with shape {:?}; cast it with .cast(DType::F32)",
            x.dtype(),
            x.shape()
        );
    }
}

/// The JVP of a bilinear `f(a, b)` (matmul, the shifted-row products): `f(ta, b) + f(a, tb)`
/// over the tangents given, `None` without any.
pub(crate) fn bilinear_jvp(
    inputs: &[Tensor],
    tangents: &[Option<Tensor>],
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> Option<Tensor> {
    let left = tangents[0].as_ref().map(|ta| f(ta, &inputs[1]));
    let right = tangents[1].as_ref().map(|tb| f(&inputs[0], tb));
    match (left, right) {
        (Some(l), Some(r)) => Some(l + r),
        (l, r) => l.or(r),
    }
}

/// Panics unless both tensors are on one device.
pub(crate) fn require_same_device(op: &str, a: &Tensor, b: &Tensor) {
    if a.device() != b.device() {
        panic!(
            "{op}: operands are on different devices: lhs {:?} ({}) on {}, rhs {:?} ({}) on {}; \
             move one with .to_device(..)",
            a.shape(),
            a.dtype(),
            a.device(),
            b.shape(),
            b.dtype(),
            b.device()
        );
    }
}

/// Both operands cast to their promoted dtype.
pub(crate) fn promote_pair(a: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
    let d = DType::promote(a.dtype(), b.dtype());
    let ca = if a.dtype() == d { a.clone() } else { a.cast(d) };
    let cb = if b.dtype() == d { b.clone() } else { b.cast(d) };
    (ca, cb)
}

/// Physical layouts of `ts` with one batch prefix: the union of their vmap levels, extent 1 where
/// a tensor lacks a level. With `logical_rank`, the logical parts are also padded with leading
/// extent-1 axes to that rank (NumPy broadcasting then works on the physical shapes).
pub(crate) fn aligned_layouts(ts: &[&Tensor], logical_rank: Option<usize>) -> (Vec<Layout>, Vec<u64>) {
    let levels = union_batch(ts);
    let layouts = ts
        .iter()
        .map(|t| {
            let mut l = t.layout().clone();
            for (i, lv) in levels.iter().enumerate() {
                if !t.batch().contains(lv) {
                    l = l.expand_dims(i);
                }
            }
            if let Some(rank) = logical_rank {
                for _ in t.rank()..rank {
                    l = l.expand_dims(levels.len());
                }
            }
            l
        })
        .collect();
    (layouts, levels)
}

/// The operands as views of one broadcast physical shape (logical shapes broadcast as in NumPy,
/// batch axes by vmap level). Panics naming `op` when the logical shapes are incompatible.
pub(crate) fn broadcast_aligned(op: &str, ts: &[&Tensor]) -> Vec<RawTensor> {
    if ts.iter().all(|t| t.shape() == ts[0].shape() && t.nb() == 0) {
        // The common case outside vmap: one shape, nothing to align.
        return ts.iter().map(|t| t.raw().clone()).collect();
    }
    let mut logical: Vec<usize> = Vec::new();
    for t in ts {
        logical = broadcast_shapes(op, &logical, t.shape());
    }
    let (layouts, _) = aligned_layouts(ts, Some(logical.len()));
    let mut physical = layouts[0].shape.to_vec();
    for l in &layouts[1..] {
        physical = try_broadcast_shapes(&physical, &l.shape).expect("batch axes of one vmap level have one size");
    }
    ts.iter()
        .zip(layouts)
        .map(|(t, l)| t.raw().with_layout(l.broadcast_to(&physical)))
        .collect()
}

/// The physical extents of the batch axes of `t`.
pub(crate) fn batch_extents(t: &Tensor) -> &[usize] {
    &t.layout().shape[..t.nb()]
}

/// `batch ++ logical`, a physical shape.
pub(crate) fn physical(batch: &[usize], logical: &[usize]) -> Dims {
    let mut v = Dims::from_slice(batch);
    v.extend_from_slice(logical);
    v
}

impl Tensor {
    /// `f`, an op over the last axis, applied along axis `a` (already normalised): the axis is
    /// moved last and back, both views, when it is not last already.
    pub(crate) fn along_last(&self, a: usize, f: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        if a + 1 == self.rank() {
            return f(self);
        }
        f(&self.moveaxis(a as isize, -1)).moveaxis(-1, a as isize)
    }

    /// A scalar of this tensor's dtype and device.
    pub fn scalar_like(&self, value: f64) -> Tensor {
        Tensor::full_on(&[], value, self.dtype(), self.device())
    }

    /// Zeros of this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Tensor {
        Tensor::full_on(self.shape(), 0.0, self.dtype(), self.device())
    }

    /// Ones of this tensor's shape, dtype and device.
    pub fn ones_like(&self) -> Tensor {
        Tensor::full_on(self.shape(), 1.0, self.dtype(), self.device())
    }

    /// Sums away the axes that broadcasting added or stretched, giving `shape` (the transpose
    /// of `broadcast_to(shape)`).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Tensor {
        if self.shape() == shape {
            return self.clone();
        }
        let lead = self.rank() - shape.len();
        let mut axes: Vec<isize> = (0..lead as isize).collect();
        for (i, &s) in shape.iter().enumerate() {
            if s == 1 && self.shape()[lead + i] != 1 {
                axes.push((lead + i) as isize);
            }
        }
        let summed = if axes.is_empty() {
            self.clone()
        } else {
            self.sum(axes, true)
        };
        summed.reshape(shape)
    }
}
