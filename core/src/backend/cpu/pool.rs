//! Max pooling's window maxima found in place: the position of the first maximum of every
//! window, reading the image where it lies (no padded copy, no im2col matrix), images split
//! across threads. The op layer gathers the values at these positions, so the gradient is a
//! scatter of the cotangent to them.

use rayon::prelude::*;

use super::{HALVES_WIDENED, PARALLEL_MIN, dense, host, wrap};
use crate::backend::Window2d;
use crate::storage::{CpuBuffer, RawTensor};

/// Whether `v` takes the place of the window's maximum so far, `best`: greater, or the first
/// NaN (a window holding NaN pools to NaN, as PyTorch's `max_pool2d`).
fn better<T: PartialOrd + Copy>(v: T, best: T, is_nan: impl Fn(T) -> bool) -> bool {
    v > best || (is_nan(v) && !is_nan(best))
}

/// The positions (`base` plus the offset in `image`, `[H, W]` row-major) of the first maximum
/// of every window into `out` (`[OH * OW]`), each window's taps read in row-major order.
/// `win.image` is the padded extents; padding is never chosen, and every window holds at
/// least one pixel of the image (the caller's padding is below the kernel).
fn argmax_image<T: PartialOrd + Copy>(
    image: &[T],
    base: usize,
    out: &mut [i64],
    win: &Window2d,
    padding: (usize, usize),
    is_nan: impl Fn(T) -> bool + Copy,
) {
    let (h, w) = (win.image.0 - 2 * padding.0, win.image.1 - 2 * padding.1);
    // The image's rows or columns that a window starting at padded `start` covers.
    let inside = |start: usize, pad: usize, kernel: usize, extent: usize| {
        let lo = start.saturating_sub(pad);
        let hi = (start + kernel).saturating_sub(pad).min(extent);
        (lo, hi)
    };
    let mut slots = out.iter_mut();
    for oy in 0..win.out.0 {
        let (r0, r1) = inside(oy * win.stride.0, padding.0, win.kernel.0, h);
        for ox in 0..win.out.1 {
            let (c0, c1) = inside(ox * win.stride.1, padding.1, win.kernel.1, w);
            // The maximum first, then the first pixel equal to it: both loops free of
            // data-dependent branches (a branch on "new maximum" is mispredicted about every
            // third tap on random data). A window holding NaN takes the slow loop.
            let (mut value, mut nan) = (image[r0 * w + c0], false);
            for r in r0..r1 {
                for &v in &image[r * w + c0..r * w + c1] {
                    value = if v > value { v } else { value };
                    nan |= is_nan(v);
                }
            }
            let mut best = r0 * w + c0;
            if nan {
                'window: for r in r0..r1 {
                    for (j, &v) in image[r * w + c0..r * w + c1].iter().enumerate() {
                        if better(v, image[best], is_nan) {
                            best = r * w + c0 + j;
                            if is_nan(v) {
                                break 'window;
                            }
                        }
                    }
                }
            } else {
                for r in (r0..r1).rev() {
                    for (j, &v) in image[r * w + c0..r * w + c1].iter().enumerate().rev() {
                        best = if v == value { r * w + c0 + j } else { best };
                    }
                }
            }
            *slots.next().expect("one slot per window") = (base + best) as i64;
        }
    }
}

/// [`argmax_image`] over every image of `data` (`images` planes of `plane` values).
fn argmax_all<T: PartialOrd + Copy + Send + Sync>(
    data: &[T],
    plane: usize,
    per: usize,
    win: &Window2d,
    padding: (usize, usize),
    is_nan: impl Fn(T) -> bool + Copy + Send + Sync,
) -> Vec<i64> {
    let images = data.len() / plane.max(1);
    let mut out = vec![0i64; images * per];
    if per == 0 {
        return out;
    }
    // Images `first..` of `d` into `o`.
    let each = |first: usize, o: &mut [i64], d: &[T]| {
        o.chunks_mut(per)
            .zip(d.chunks(plane))
            .enumerate()
            .for_each(|(k, (o, d))| argmax_image(d, (first + k) * plane, o, win, padding, is_nan));
    };
    if data.len() >= PARALLEL_MIN && images > 1 {
        let task = (PARALLEL_MIN / plane.max(1)).max(1);
        out.par_chunks_mut(per * task)
            .zip(data.par_chunks(plane * task))
            .enumerate()
            .for_each(|(t, (o, d))| each(t * task, o, d));
    } else {
        each(0, &mut out, data);
    }
    out
}

/// The position in `x` `[.., H, W]` (f32 or f64, contiguous order; halves arrive widened) of
/// the first maximum of every window over `x` padded by `padding` (`win.image` the padded
/// extents), `[.., OH * OW]` i64.
pub(super) fn pool_argmax(x: &RawTensor, win: &Window2d, padding: (usize, usize)) -> RawTensor {
    let image = (
        win.image.0.saturating_sub(2 * padding.0),
        win.image.1.saturating_sub(2 * padding.1),
    );
    win.require("pool_argmax", &x.layout.shape, &[image.0, image.1]);
    if padding.0 >= win.kernel.0 || padding.1 >= win.kernel.1 {
        panic!(
            "internal error: pool_argmax with padding {padding:?} not below the kernel {:?}",
            win.kernel
        );
    }
    let x = dense(x);
    let shape = &x.layout.shape;
    let mut out_shape = shape[..shape.len() - 2].to_vec();
    let per = win.out.0 * win.out.1;
    out_shape.push(per);
    let plane = image.0 * image.1;
    let len = shape.iter().product::<usize>();
    let start = x.layout.offset;
    let positions = match host(&x) {
        CpuBuffer::F32(d) => argmax_all(&d[start..start + len], plane, per, win, padding, f32::is_nan),
        CpuBuffer::F64(d) => argmax_all(&d[start..start + len], plane, per, win, padding, f64::is_nan),
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
        other => unreachable!("pool_argmax of {}: the op layer accepts floats only", other.dtype()),
    };
    wrap(positions, &out_shape)
}
