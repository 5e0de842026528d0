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
/// from `base + (i / phases.0) * steps.0 + (j / phases.1) * steps.1 + phase * plane` (steps may
/// be negative), where `phase = (i % phases.0) * phases.1 + j % phases.1`. Without phases
/// (`phases = (1, 1)`) tap `(i, j)` starts at `base + i * steps.0 + j * steps.1`. With them
/// the row holds `phases.0 * phases.1` phase images `plane` elements apart (a strided
/// convolution's padded image split by `x[a::sh, b::sw]`), and tap `(i, j)` reads image `(i %
/// sh, j % sw)` at the shift of tap `(i / sh, j / sw)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TapGrid {
    /// Start of tap `(0, 0)`.
    pub base: usize,
    /// Taps along each of the two grid axes.
    pub counts: (usize, usize),
    /// Distance between neighbouring taps of one phase along each grid axis.
    pub steps: (isize, isize),
    /// Elements each tap reads (the columns of the product).
    pub len: usize,
    /// Phase images along each grid axis (the stride of a strided convolution), `(1, 1)` for
    /// none.
    pub phases: (usize, usize),
    /// Distance between neighbouring phase images (unused without phases).
    pub plane: isize,
}

impl TapGrid {
    /// A grid without phases: tap `(i, j)` starts at `base + i * steps.0 + j * steps.1`.
    pub fn shifts(base: usize, counts: (usize, usize), steps: (isize, isize), len: usize) -> Self {
        TapGrid {
            base,
            counts,
            steps,
            len,
            phases: (1, 1),
            plane: 0,
        }
    }

    /// The number of taps.
    pub fn taps(&self) -> usize {
        self.counts.0 * self.counts.1
    }

    /// The number of phase images.
    pub fn phase_count(&self) -> usize {
        self.phases.0 * self.phases.1
    }

    /// Where tap `t` starts.
    pub fn start(&self, t: usize) -> isize {
        let (i, j) = (t / self.counts.1.max(1), t % self.counts.1.max(1));
        let (ph, pw) = (self.phases.0.max(1), self.phases.1.max(1));
        let phase = (i % ph) * pw + j % pw;
        self.base as isize
            + (i / ph) as isize * self.steps.0
            + (j / pw) as isize * self.steps.1
            + phase as isize * self.plane
    }

    /// The taps of phase image `(a, b)` (`a < phases.0`, `b < phases.1`) as a grid without
    /// phases over that image (its starts relative to the image's): taps `(a + p * phases.0, b +
    /// q * phases.1)` of `self`, in the same row-major order.
    pub fn phase(&self, a: usize, b: usize) -> TapGrid {
        let count = |n: usize, first: usize, step: usize| n.saturating_sub(first).div_ceil(step);
        TapGrid::shifts(
            self.base,
            (
                count(self.counts.0, a, self.phases.0),
                count(self.counts.1, b, self.phases.1),
            ),
            self.steps,
            self.len,
        )
    }

    /// The least and greatest start over the taps, `None` without taps.
    pub fn start_range(&self) -> Option<(isize, isize)> {
        let starts = (0..self.taps()).map(|t| self.start(t));
        Some((starts.clone().min()?, starts.max()?))
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

/// The implicit matrix `cols(x)` `[.., C * T, len]` (contiguous): without phases one strided
/// copy of an overlapping view of `x`; with them one strided view per tap, joined.
pub fn tap_columns<B: Backend + ?Sized>(be: &B, x: &RawTensor, taps: &TapGrid) -> RawTensor {
    let l = x.layout();
    let r = l.rank();
    let (c, sc, sl) = (l.shape()[r - 2], l.strides()[r - 2], l.strides()[r - 1]);
    let view = |shape: &[usize], strides: &[isize], start: isize| {
        let mut full_shape = l.shape()[..r - 2].to_vec();
        let mut full_strides = l.strides()[..r - 2].to_vec();
        full_shape.extend(shape);
        full_strides.extend(strides);
        let offset = usize::try_from(l.offset() as isize + start * sl)
            .expect("internal error: the first tap lies inside the row");
        RawTensor::new(x.storage().clone(), Layout::new(&full_shape, &full_strides, offset))
            .expect("internal error: the taps of a row lie inside it")
    };
    let cols = if taps.phase_count() == 1 {
        let shape = [c, taps.counts.0, taps.counts.1, taps.len];
        be.contiguous(&view(
            &shape,
            &[sc, taps.steps.0 * sl, taps.steps.1 * sl, sl],
            taps.base as isize,
        ))
    } else {
        let runs: Vec<RawTensor> = (0..taps.taps())
            .map(|t| view(&[c, 1, taps.len], &[sc, 0, sl], taps.start(t)))
            .collect();
        be.concat(&runs.iter().collect::<Vec<_>>(), r - 1)
    };
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
