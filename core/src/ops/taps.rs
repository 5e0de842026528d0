//! The shifted-row products behind stride-1 convolutions ([`TapGrid`], `Backend::tap_matmul`
//! and `Backend::tap_outer`) as traced ops. Both are bilinear, and their derivatives close over
//! the two of them: the gradient with respect to the rows is a `tap_matmul` of the transposed
//! weights with the padded cotangent over the reversed taps ([`tap_transpose`]), the gradient
//! with respect to the weights is a `tap_outer`, and a `tap_outer`'s gradients are a
//! `tap_matmul` and a `tap_transpose`. So derivatives of any order, under vmap and jit, need no
//! other kernel, and no im2col matrix is kept for the backward pass.

use super::{aligned_layouts, bilinear_jvp, physical};
use crate::backend::{Backend, TapGrid};
use crate::shape::try_broadcast_shapes;
use crate::storage::RawTensor;
use crate::tensor::Tensor;
use crate::trace::Rule;

/// `w [.., O, C * T] x cols(x [.., C, L])`, `[.., O, taps.len]`; leading axes broadcast.
pub(crate) fn tap_matmul(w: &Tensor, x: &Tensor, taps: TapGrid) -> Tensor {
    let raw = product("tap_matmul", w, x, taps, |be, a, b| be.tap_matmul(a, b, &taps));
    Tensor::record(raw, &[w, x], || TapRule { taps, outer: false })
}

/// `dy [.., O, len] x cols(x [.., C, L])^T`, `[.., O, C * T]`; leading axes broadcast.
pub(crate) fn tap_outer(dy: &Tensor, x: &Tensor, taps: TapGrid) -> Tensor {
    let raw = product("tap_outer", dy, x, taps, |be, a, b| be.tap_outer(a, b, &taps));
    Tensor::record(raw, &[dy, x], || TapRule { taps, outer: true })
}

/// The transpose of `tap_matmul` in its rows: `dx[.., c, q] = sum over o, t of w[.., o, c * T
/// + t] * dy[.., o, q - start(t)]`, `[.., C, row]`: a `tap_matmul` of `w` with its output and
/// input axes swapped and `dy` padded by the taps' spread, over the taps reversed.
pub(crate) fn tap_transpose(w: &Tensor, dy: &Tensor, taps: TapGrid, row: usize) -> Tensor {
    if taps.phase_count() > 1 {
        return phase_transpose(w, dy, taps, row);
    }
    let (lo, hi) = taps.start_range().expect("a convolution has taps");
    let padded = pad_last(dy, hi as usize, row - lo as usize - taps.len);
    reversed_product(w, &padded, taps, hi, row)
}

/// `t` with `before` and `after` zeros added along its last axis.
fn pad_last(t: &Tensor, before: usize, after: usize) -> Tensor {
    let mut widths = vec![(0, 0); t.rank()];
    widths[t.rank() - 1] = (before, after);
    t.pad(&widths)
}

/// The product of [`tap_transpose`] over a row of `row` elements: `w` with its output and
/// input axes swapped, times the taps (without phases) reversed over `padded`, the cotangent
/// with `hi` (at least the greatest start) zeros in front and enough behind.
fn reversed_product(w: &Tensor, padded: &Tensor, taps: TapGrid, hi: isize, row: usize) -> Tensor {
    let (o, k) = last_two(w);
    let t = taps.taps();
    let lead = &w.shape()[..w.rank() - 2];
    let mut split = lead.to_vec();
    split.extend([o, k / t, t]);
    let mut flat = lead.to_vec();
    flat.extend([k / t, o * t]);
    let wt = w.reshape(split).swap_axes(-3, -2).reshape(flat);
    let reversed = TapGrid::shifts(
        (hi - taps.base as isize) as usize,
        taps.counts,
        (-taps.steps.0, -taps.steps.1),
        row,
    );
    tap_matmul(&wt, padded, reversed)
}

/// [`tap_transpose`] over phase images: each image's gradient is the transpose over its own
/// taps alone (a position of one image is read by no tap of another, so one product over every
/// tap would multiply mostly zeros), and the images' gradients are stacked into the row. The
/// cotangent is padded once, by the spread of image `(0, 0)`, whose taps reach farthest. Needs
/// steps of at least 0, `row = phase_count * plane` and every tap's run inside its own image;
/// an image without taps gets zeros.
fn phase_transpose(w: &Tensor, dy: &Tensor, taps: TapGrid, row: usize) -> Tensor {
    let (sh, sw) = taps.phases;
    let plane = usize::try_from(taps.plane).unwrap_or(0);
    let (_, hi) = taps.phase(0, 0).start_range().expect("a convolution has taps");
    if plane == 0
        || row != taps.phase_count() * plane
        || taps.steps.0 < 0
        || taps.steps.1 < 0
        || hi as usize + taps.len > plane
    {
        panic!("internal error: the transpose of taps {taps:?} over a row of {row} elements, not whole phase images");
    }
    let padded = pad_last(dy, hi as usize, plane - taps.base - taps.len);
    let (o, k) = last_two(w);
    let c = k / taps.taps();
    let lead = &w.shape()[..w.rank() - 2];
    let mut grid = lead.to_vec();
    grid.extend([o, c, taps.counts.0, taps.counts.1]);
    let w = w.reshape(grid);
    let images: Vec<Option<Tensor>> = (0..sh * sw)
        .map(|phase| {
            let (a, b) = (phase / sw, phase % sw);
            let sub = taps.phase(a, b);
            (sub.taps() > 0).then(|| {
                let mut flat = lead.to_vec();
                flat.extend([o, c * sub.taps()]);
                let wp = w
                    .slice_axis(-2, Some(a as isize), None, sh as isize)
                    .slice_axis(-1, Some(b as isize), None, sw as isize)
                    .reshape(flat);
                reversed_product(&wp, &padded, sub, hi, plane)
            })
        })
        .collect();
    let zeros = images[0]
        .as_ref()
        .expect("internal error: phase image (0, 0) holds tap (0, 0)")
        .zeros_like();
    let images: Vec<Tensor> = images.into_iter().map(|g| g.unwrap_or_else(|| zeros.clone())).collect();
    let stacked = crate::ops::shape::stack(&images, -2);
    let mut shape = stacked.shape()[..stacked.rank() - 3].to_vec();
    shape.extend([c, row]);
    stacked.reshape(shape)
}

/// The last two logical extents of `t` (rank 2 or more).
fn last_two(t: &Tensor) -> (usize, usize) {
    let r = t.rank();
    (t.shape()[r - 2], t.shape()[r - 1])
}

/// Runs `kernel` on `lhs` (`[.., m, inner]`) and `x` (`[.., C, L]`) as views of one broadcast
/// physical leading shape, after checking the operands (the callers are this crate's ops).
fn product(
    op: &str,
    lhs: &Tensor,
    x: &Tensor,
    taps: TapGrid,
    kernel: impl Fn(&dyn Backend, &RawTensor, &RawTensor) -> RawTensor,
) -> RawTensor {
    let outer = op == "tap_outer";
    let fits = lhs.rank() >= 2 && x.rank() >= 2 && lhs.dtype() == x.dtype() && {
        let ((_, inner), (c, row)) = (last_two(lhs), last_two(x));
        taps.fits(row) && inner == if outer { taps.len } else { c * taps.taps() }
    };
    if !fits {
        panic!(
            "internal error: {op} of {:?} ({}) and rows {:?} ({}) over taps {taps:?}",
            lhs.shape(),
            lhs.dtype(),
            x.shape(),
            x.dtype()
        );
    }
    let (layouts, _) = aligned_layouts(&[lhs, x], Some(lhs.rank().max(x.rank())));
    let pr = layouts[0].rank();
    let lead = try_broadcast_shapes(&layouts[0].shape[..pr - 2], &layouts[1].shape[..pr - 2]).unwrap_or_else(|| {
        panic!(
            "internal error: {op}: the leading axes of {:?} and {:?} do not broadcast",
            lhs.shape(),
            x.shape()
        )
    });
    let (m, inner) = last_two(lhs);
    let va = lhs
        .raw()
        .with_layout(layouts[0].broadcast_to(&physical(&lead, &[m, inner])));
    let vx = x
        .raw()
        .with_layout(layouts[1].broadcast_to(&physical(&lead, &[last_two(x).0, last_two(x).1])));
    kernel(&*lhs.backend(), &va, &vx)
}

/// The rules of both products. Each is bilinear; for `tap_matmul(w, x)` the cotangent `g`
/// gives `w: tap_outer(g, x)` and `x: tap_transpose(w, g)`; for `tap_outer(dy, x)` it gives
/// `dy: tap_matmul(g, x)` and `x: tap_transpose(g, dy)`.
struct TapRule {
    taps: TapGrid,
    outer: bool,
}

impl TapRule {
    /// The op itself on other operands.
    fn apply(&self, a: &Tensor, x: &Tensor) -> Tensor {
        if self.outer {
            tap_outer(a, x, self.taps)
        } else {
            tap_matmul(a, x, self.taps)
        }
    }
}

impl Rule for TapRule {
    fn name(&self) -> String {
        let t = &self.taps;
        let phases = if t.phase_count() > 1 {
            format!(", phases={:?}, plane={}", t.phases, t.plane)
        } else {
            String::new()
        };
        format!(
            "{}(taps={:?}, steps={:?}, base={}, len={}{phases})",
            if self.outer { "tap_outer" } else { "tap_matmul" },
            t.counts,
            t.steps,
            t.base,
            t.len
        )
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        self.vjp_wanted(inputs, out, ct, &[true, true])
    }
    fn vjp_wanted(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor, wanted: &[bool]) -> Vec<Option<Tensor>> {
        let (a, x) = (&inputs[0], &inputs[1]);
        let row = x.shape()[x.rank() - 1];
        let ga = wanted[0].then(|| {
            let g = if self.outer {
                tap_matmul(ct, x, self.taps)
            } else {
                tap_outer(ct, x, self.taps)
            };
            g.sum_to_shape(a.shape())
        });
        let gx = wanted[1].then(|| {
            let g = if self.outer {
                tap_transpose(ct, a, self.taps, row)
            } else {
                tap_transpose(a, ct, self.taps, row)
            };
            g.sum_to_shape(x.shape())
        });
        vec![ga, gx]
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        bilinear_jvp(inputs, t, |a, x| self.apply(a, x))
    }
}
