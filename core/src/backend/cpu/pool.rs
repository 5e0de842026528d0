//! Pooling read in place, without a padded copy or an im2col matrix, images split across
//! threads:
//! - max pooling's choice: the position of the first maximum of every window (the op layer
//!   gathers the values at these positions, so the gradient is a scatter of the cotangent to
//!   them);
//! - average pooling's scaled window sums, and their transpose (the gradient), taps added in
//!   row-major order from zero in both (the CUDA kernels' order, so the same sums).

use rayon::prelude::*;

use super::{HALVES_WIDENED, PARALLEL_MIN, dense, dense_run, host, wrap};
use crate::backend::{Padding2d, Window2d};
use crate::storage::{CpuBuffer, RawTensor};

/// Whether `v` takes the place of the window's maximum so far, `best`: greater, or the first
/// NaN (a window holding NaN pools to NaN, as PyTorch's `max_pool2d`).
fn better<T: PartialOrd + Copy>(v: T, best: T, is_nan: impl Fn(T) -> bool) -> bool {
    v > best || (is_nan(v) && !is_nan(best))
}

/// The positions (`base` plus the offset in `image`, `[H, W]` row-major) of the first maximum
/// of every window into `out` (`[OH * OW]`), each window's taps read in row-major order.
/// `win.image` is the padded extents; padding is never chosen, and every window holds at
/// least one pixel of the image (checked by the caller).
fn argmax_image<T: PartialOrd + Copy>(
    image: &[T],
    base: usize,
    out: &mut [i64],
    win: &Window2d,
    padding: &Padding2d,
    is_nan: impl Fn(T) -> bool + Copy,
) {
    let (h, w) = win.unpadded(padding);
    // The image's rows or columns that a window starting at padded `start` covers.
    let inside = |start: usize, pad: usize, kernel: usize, extent: usize| {
        let lo = start.saturating_sub(pad);
        let hi = (start + kernel).saturating_sub(pad).min(extent);
        (lo, hi)
    };
    let mut slots = out.iter_mut();
    for oy in 0..win.out.0 {
        let (r0, r1) = inside(oy * win.stride.0, padding.before.0, win.kernel.0, h);
        for ox in 0..win.out.1 {
            let (c0, c1) = inside(ox * win.stride.1, padding.before.1, win.kernel.1, w);
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

/// `each(image, base, out)` over the `images` images of `data` (`plane` values each, the image
/// at flat position `base`), each writing its `per` outputs into a fresh buffer of `fill`s.
/// Images without pixels leave their outputs `fill`.
fn per_image<T: Sync, U: Copy + Send>(
    data: &[T],
    (images, plane, per): (usize, usize, usize),
    fill: U,
    each: impl Fn(&[T], usize, &mut [U]) + Sync,
) -> Vec<U> {
    let mut out = vec![fill; images * per];
    if per == 0 || plane == 0 {
        return out;
    }
    // Images `first..` of `d` into `o`.
    let run = |first: usize, o: &mut [U], d: &[T]| {
        o.chunks_mut(per)
            .zip(d.chunks(plane))
            .enumerate()
            .for_each(|(k, (o, d))| each(d, (first + k) * plane, o));
    };
    if data.len() >= PARALLEL_MIN && images > 1 {
        let task = (PARALLEL_MIN / plane.max(1)).max(1);
        out.par_chunks_mut(per * task)
            .zip(data.par_chunks(plane * task))
            .enumerate()
            .for_each(|(t, (o, d))| run(t * task, o, d));
    } else {
        run(0, &mut out, data);
    }
    out
}

/// The position in `x` `[.., H, W]` (f32 or f64, contiguous order; halves arrive widened) of
/// the first maximum of every window over `x` inside `padding` (`win.image` the padded
/// extents), `[.., OH * OW]` i64.
pub(super) fn pool_argmax(x: &RawTensor, win: &Window2d, padding: &Padding2d) -> RawTensor {
    let image = win.require_pool_argmax(&x.layout.shape, padding);
    let x = dense(x);
    let shape = &x.layout.shape;
    let mut out_shape = shape[..shape.len() - 2].to_vec();
    let per = win.out.0 * win.out.1;
    out_shape.push(per);
    let sizes = (shape[..shape.len() - 2].iter().product(), image.0 * image.1, per);
    let positions = match host(&x) {
        CpuBuffer::F32(d) => per_image(dense_run(d, &x.layout), sizes, 0i64, |img, base, o| {
            argmax_image(img, base, o, win, padding, f32::is_nan)
        }),
        CpuBuffer::F64(d) => per_image(dense_run(d, &x.layout), sizes, 0i64, |img, base, o| {
            argmax_image(img, base, o, win, padding, f64::is_nan)
        }),
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
        other => unreachable!("pool_argmax of {}: the op layer accepts floats only", other.dtype()),
    };
    wrap(positions, &out_shape)
}

/// The image columns `c0 + k * step` (for `k` in `0..len`) that windows `lo..lo + len` read
/// at tap column `j`: the windows whose tap lies inside a row of `width` pixels, with `pad`
/// padding before it (`None` when there are none).
fn tap_columns(j: usize, pad: usize, step: usize, width: usize, windows: usize) -> Option<(usize, usize, usize)> {
    // Window `x` reads column `x * step + j - pad`: inside for `lo <= x < hi`.
    let lo = pad.saturating_sub(j).div_ceil(step);
    let hi = ((width + pad).checked_sub(j + 1)? / step + 1).min(windows);
    (lo < hi).then(|| (lo, lo * step + j - pad, hi - lo))
}

/// The image row that window row `y` reads at tap row `i` (`None` in the padding).
fn tap_row(y: usize, i: usize, win: &Window2d, pad: usize, height: usize) -> Option<usize> {
    (y * win.stride.0 + i).checked_sub(pad).filter(|&r| r < height)
}

/// The scaled sums of the windows of one image `src` (`[H, W]`) into `dst` (`[OH, OW]`):
/// every window's taps added in row-major order from zero, then scaled.
fn sum_image<T>(src: &[T], dst: &mut [T], win: &Window2d, padding: &Padding2d, scale: T)
where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let (h, w) = win.unpadded(padding);
    let step = win.stride.1;
    for (y, acc) in dst.chunks_exact_mut(win.out.1).enumerate() {
        acc.fill(T::default());
        for i in 0..win.kernel.0 {
            let Some(r) = tap_row(y, i, win, padding.before.0, h) else {
                continue;
            };
            let row = &src[r * w..(r + 1) * w];
            for j in 0..win.kernel.1 {
                let Some((lo, c0, len)) = tap_columns(j, padding.before.1, step, w, win.out.1) else {
                    continue;
                };
                let acc = &mut acc[lo..lo + len];
                if step == 1 {
                    for (a, &v) in acc.iter_mut().zip(&row[c0..c0 + len]) {
                        *a = *a + v;
                    }
                } else {
                    for (a, &v) in acc.iter_mut().zip(row[c0..].iter().step_by(step)) {
                        *a = *a + v;
                    }
                }
            }
        }
        for a in acc {
            *a = *a * scale;
        }
    }
}

/// The transpose of [`sum_image`]: every pixel of `dst` (`[H, W]`) the scaled sum of `src`
/// (`[OH, OW]`) over the windows covering it. The window rows are visited last to first, so
/// that every pixel receives its windows' values in row-major tap order, from zero (the CUDA
/// kernel's order).
fn sum_transpose_image<T>(src: &[T], dst: &mut [T], win: &Window2d, padding: &Padding2d, scale: T)
where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let (h, w) = win.unpadded(padding);
    let step = win.stride.1;
    dst.fill(T::default());
    for (y, vals) in src.chunks_exact(win.out.1).enumerate().rev() {
        for i in 0..win.kernel.0 {
            let Some(r) = tap_row(y, i, win, padding.before.0, h) else {
                continue;
            };
            let row = &mut dst[r * w..(r + 1) * w];
            for j in 0..win.kernel.1 {
                let Some((lo, c0, len)) = tap_columns(j, padding.before.1, step, w, win.out.1) else {
                    continue;
                };
                let vals = &vals[lo..lo + len];
                if step == 1 {
                    for (o, &v) in row[c0..c0 + len].iter_mut().zip(vals) {
                        *o = *o + v;
                    }
                } else {
                    for (o, &v) in row[c0..].iter_mut().step_by(step).zip(vals) {
                        *o = *o + v;
                    }
                }
            }
        }
    }
    for o in dst {
        *o = *o * scale;
    }
}

/// Average pooling's scaled window sums of `x` `[.., H, W]` inside `padding` zeros
/// (`win.image` the padded extents), `[.., OH, OW]`; or, with `transpose`, their transpose
/// from `x` `[.., OH, OW]` to `[.., H, W]` (f32 or f64; halves arrive widened).
pub(super) fn pool_sum(x: &RawTensor, win: &Window2d, padding: &Padding2d, scale: f64, transpose: bool) -> RawTensor {
    let (from, to) = win.require_pool_sum(&x.layout.shape, padding, transpose);
    let x = dense(x);
    let shape = &x.layout.shape;
    let mut out_shape = shape[..shape.len() - 2].to_vec();
    out_shape.extend(to);
    let sizes = (
        shape[..shape.len() - 2].iter().product(),
        from[0] * from[1],
        to[0] * to[1],
    );
    match host(&x) {
        CpuBuffer::F32(d) => {
            let scale = scale as f32;
            let out = per_image(dense_run(d, &x.layout), sizes, 0f32, |img, _, o| match transpose {
                false => sum_image(img, o, win, padding, scale),
                true => sum_transpose_image(img, o, win, padding, scale),
            });
            wrap(out, &out_shape)
        }
        CpuBuffer::F64(d) => {
            let out = per_image(dense_run(d, &x.layout), sizes, 0f64, |img, _, o| match transpose {
                false => sum_image(img, o, win, padding, scale),
                true => sum_transpose_image(img, o, win, padding, scale),
            });
            wrap(out, &out_shape)
        }
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
        other => unreachable!("pool_sum of {}: the op layer accepts floats only", other.dtype()),
    }
}
