//! Shifted-row products, the primitives of stride-1 convolutions without an im2col matrix.
//!
//! A [`TapGrid`] names `T` shifted windows ("taps") of one row of `L` elements. With `x`
//! `[.., C, L]`, the implicit matrix `cols(x)` `[.., C * T, len]` has row `c * T + t` equal to
//! `x[.., c, start(t) .. start(t) + len]`: for a convolution over padded images flattened to
//! rows of `L = Hp * Wp` pixels, tap `(i, j)` starting at `i * dilation.0 * Wp + j * dilation.1`,
//! `cols` is the im2col matrix over output positions `oh * Wp + ow` (the `Wp - OW` positions past
//! each output row are computed and dropped by the caller). `tap_matmul` is `w x cols(x)` and
//! `tap_outer` is `dy x cols(x)^T`; backends fuse the gather into the product (the CPU packs
//! `cols` panels straight from `x`), and the composed forms here (one strided copy, then a
//! matmul) serve every other backend and dtype.

use super::Backend;
use crate::layout::Layout;
use crate::storage::RawTensor;

/// `T = counts.0 * counts.1` taps of a row, tap `t = i * counts.1 + j` reading `len` elements
/// from `base + i * steps.0 + j * steps.1` (steps may be negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TapGrid {
    /// Start of tap `(0, 0)`.
    pub base: usize,
    /// Taps along each of the two grid axes.
    pub counts: (usize, usize),
    /// Distance between neighbouring taps along each grid axis.
    pub steps: (isize, isize),
    /// Elements each tap reads (the columns of the product).
    pub len: usize,
}

impl TapGrid {
    /// The number of taps.
    pub fn taps(&self) -> usize {
        self.counts.0 * self.counts.1
    }

    /// Where tap `t` starts.
    pub fn start(&self, t: usize) -> isize {
        let (i, j) = (t / self.counts.1.max(1), t % self.counts.1.max(1));
        self.base as isize + i as isize * self.steps.0 + j as isize * self.steps.1
    }

    /// The least and greatest start over the taps, `None` without taps.
    pub fn start_range(&self) -> Option<(isize, isize)> {
        if self.taps() == 0 {
            return None;
        }
        let (last_i, last_j) = (self.counts.0 as isize - 1, self.counts.1 as isize - 1);
        let spread = |n: isize, step: isize| if step < 0 { (n * step, 0) } else { (0, n * step) };
        let (lo0, hi0) = spread(last_i, self.steps.0);
        let (lo1, hi1) = spread(last_j, self.steps.1);
        Some((self.base as isize + lo0 + lo1, self.base as isize + hi0 + hi1))
    }

    /// Whether every tap reads inside a row of `row` elements.
    pub fn fits(&self, row: usize) -> bool {
        match self.start_range() {
            None => true,
            Some((lo, hi)) => lo >= 0 && (hi as usize).checked_add(self.len).is_some_and(|end| end <= row),
        }
    }

    /// Panics naming `op` unless the taps fit the rows of `x` `[.., C, L]` and `w` has
    /// `C * T` columns (for backends, whose callers, the op layer, check this first).
    pub fn require(&self, op: &str, x: &[usize], depth: usize) {
        let r = x.len();
        if r < 2 || !self.fits(x[r - 1]) || depth != x[r - 2] * self.taps() {
            panic!("internal error: {op} of rows {x:?} and depth {depth} does not match the taps {self:?}");
        }
    }
}

/// The implicit matrix `cols(x)` `[.., C * T, len]` (contiguous), gathered by one strided copy
/// of an overlapping view of `x`.
pub fn tap_columns<B: Backend + ?Sized>(be: &B, x: &RawTensor, taps: &TapGrid) -> RawTensor {
    let l = x.layout();
    let r = l.rank();
    let (c, sc, sl) = (l.shape()[r - 2], l.strides()[r - 2], l.strides()[r - 1]);
    let mut shape = l.shape()[..r - 2].to_vec();
    let mut strides = l.strides()[..r - 2].to_vec();
    shape.extend([c, taps.counts.0, taps.counts.1, taps.len]);
    strides.extend([sc, taps.steps.0 * sl, taps.steps.1 * sl, sl]);
    let offset = l.offset() as isize + taps.base as isize * sl;
    let offset = usize::try_from(offset).expect("internal error: the first tap lies inside the row");
    let view = RawTensor::new(x.storage().clone(), Layout::new(&shape, &strides, offset))
        .expect("internal error: the taps of a row lie inside it");
    let cols = be.contiguous(&view);
    let mut flat = l.shape()[..r - 2].to_vec();
    flat.extend([c * taps.taps(), taps.len]);
    cols.with_layout(Layout::contiguous(&flat))
}

/// [`Backend::tap_matmul`] as a gather and a matmul.
pub fn tap_matmul_composed<B: Backend + ?Sized>(be: &B, w: &RawTensor, x: &RawTensor, taps: &TapGrid) -> RawTensor {
    be.matmul(w, &tap_columns(be, x, taps))
}

/// [`Backend::tap_outer`] as a gather and a matmul with the transposed columns.
pub fn tap_outer_composed<B: Backend + ?Sized>(be: &B, dy: &RawTensor, x: &RawTensor, taps: &TapGrid) -> RawTensor {
    let cols = tap_columns(be, x, taps);
    let r = cols.layout().rank();
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    be.matmul(dy, &cols.with_layout(cols.layout().permute(&perm)))
}
