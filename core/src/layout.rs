//! Strided layouts: how a logical index maps into a flat storage buffer.
//!
//! Views (transpose, broadcast, slicing with steps, flips, expand/squeeze and reshapes of
//! contiguous data) only change the layout and share the storage, as NumPy does.

use smallvec::SmallVec;

use crate::shape::{contiguous_strides, numel};

/// Axis extents, stored inline for up to 6 axes (no allocation for typical tensors).
pub type Dims = SmallVec<[usize; 6]>;
/// Axis strides in elements, stored inline for up to 6 axes.
pub type Strides = SmallVec<[isize; 6]>;

/// Shape, strides (in elements, possibly zero or negative) and offset of a view into a buffer.
///
/// The fields are private to the crate: a layout reaches a buffer only through
/// [`crate::storage::RawTensor::new`], which proves that every index it addresses lies inside
/// the buffer, or through the crate's view ops, which only narrow a layout that already fits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Extent of every axis.
    pub(crate) shape: Dims,
    /// Step in elements between neighbours along every axis.
    pub(crate) strides: Strides,
    /// Index in the buffer of the element at index `[0, 0, ...]`.
    pub(crate) offset: usize,
}

impl Layout {
    /// A layout with the given extents, strides (in elements) and offset. Any values are
    /// accepted here; [`crate::storage::RawTensor::new`] checks them against a buffer. Panics
    /// when `shape` and `strides` differ in length.
    pub fn new(shape: &[usize], strides: &[isize], offset: usize) -> Layout {
        if shape.len() != strides.len() {
            panic!(
                "Layout::new: shape {shape:?} has {} axes but strides {strides:?} have {}",
                shape.len(),
                strides.len()
            );
        }
        Layout {
            shape: Dims::from_slice(shape),
            strides: Strides::from_slice(strides),
            offset,
        }
    }

    /// Extent of every axis.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Step in elements between neighbours along every axis.
    pub fn strides(&self) -> &[isize] {
        &self.strides
    }

    /// Index in the buffer of the element at index `[0, 0, ...]`.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The smallest and largest buffer index the layout addresses: `None` when it addresses
    /// none (some extent is 0) or when the range does not fit in `i128` (computed with checked
    /// arithmetic, so no overflow can make a huge layout look small).
    pub fn index_range(&self) -> Option<(i128, i128)> {
        if self.shape.contains(&0) {
            return None;
        }
        let (mut lo, mut hi) = (self.offset as i128, self.offset as i128);
        for (&d, &s) in self.shape.iter().zip(&self.strides) {
            let reach = (d as i128 - 1).checked_mul(s as i128)?;
            if reach < 0 {
                lo = lo.checked_add(reach)?;
            } else {
                hi = hi.checked_add(reach)?;
            }
        }
        Some((lo, hi))
    }

    /// True when every index the layout addresses lies in `0..len` (and its element count is
    /// a valid `isize`, as the kernels' index arithmetic needs).
    pub fn fits(&self, len: usize) -> bool {
        let count = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if count.is_none_or(|n| n > isize::MAX as usize) {
            return false;
        }
        if self.shape.contains(&0) {
            return self.offset <= len;
        }
        match self.index_range() {
            None => false,
            Some((lo, hi)) => lo >= 0 && hi < len as i128,
        }
    }

    /// A row-major layout starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout {
            shape: Dims::from_slice(shape),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Rank (number of axes).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// True when the view is row-major with no gaps (axes of extent 1 may have any stride).
    /// An empty view (an axis of extent 0) addresses nothing and is contiguous whatever its
    /// strides, as [`Layout::contiguous`] of an empty shape is.
    pub fn is_contiguous(&self) -> bool {
        if self.shape.contains(&0) {
            return true;
        }
        let mut expected = 1isize;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] == 1 {
                continue;
            }
            if self.strides[i] != expected {
                return false;
            }
            expected *= self.shape[i] as isize;
        }
        true
    }

    /// Axes reordered: axis `i` of the result is axis `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Layout {
        Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }

    /// Broadcast (right-aligned, extents 1 become `shape`'s extents with stride 0).
    /// The caller has checked compatibility.
    pub fn broadcast_to(&self, shape: &[usize]) -> Layout {
        let lead = shape.len() - self.rank();
        let mut strides: Strides = smallvec::smallvec![0isize; shape.len()];
        for i in 0..self.rank() {
            if self.shape[i] == shape[lead + i] {
                strides[lead + i] = self.strides[i];
            }
        }
        Layout {
            shape: shape.into(),
            strides,
            offset: self.offset,
        }
    }

    /// Keeps elements `start, start + step, ...` (`len` of them) along `axis`; `step` may be negative.
    pub fn slice_axis(&self, axis: usize, start: usize, step: isize, len: usize) -> Layout {
        let mut out = self.clone();
        // An empty view (this axis, or another one, of extent 0) addresses nothing: it keeps
        // its offset, which may not move past the end of an empty buffer.
        if len > 0 && !self.shape.contains(&0) {
            out.offset = (self.offset as isize + start as isize * self.strides[axis]) as usize;
        }
        out.shape[axis] = len;
        out.strides[axis] = self.strides[axis] * step;
        out
    }

    /// Inserts an axis of extent 1 at `axis`.
    pub fn expand_dims(&self, axis: usize) -> Layout {
        let mut out = self.clone();
        out.shape.insert(axis, 1);
        out.strides.insert(axis, 0);
        out
    }

    /// Removes the axis `axis`, which must have extent 1.
    pub fn squeeze_axis(&self, axis: usize) -> Layout {
        let mut out = self.clone();
        out.shape.remove(axis);
        out.strides.remove(axis);
        out
    }

    /// The same elements under a new shape, when that needs no copy (contiguous data).
    pub fn reshape(&self, shape: &[usize]) -> Option<Layout> {
        if self.is_contiguous() {
            Some(Layout {
                shape: shape.into(),
                strides: contiguous_strides(shape),
                offset: self.offset,
            })
        } else {
            None
        }
    }
}
