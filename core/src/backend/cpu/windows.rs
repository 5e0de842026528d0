//! Sliding 2-D windows (im2col and col2im) in one pass each, images split across threads:
//! `unfold` copies a run of the image per window row, `fold` adds every tap's window rows back
//! into one image plane (which stays in cache), taps in row-major order.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{HALVES_WIDENED, PARALLEL_MIN, dense, host, wrap};
use crate::backend::Window2d;
use crate::storage::{CpuBuffer, RawTensor};
use crate::with_cpu_buffer;

/// The leading extents of `x` (everything before the last `trailing` axes) and their product.
fn leading(shape: &[usize], trailing: usize) -> (&[usize], usize) {
    let lead = &shape[..shape.len() - trailing];
    (lead, product(lead))
}

/// The product of `sizes`, or a panic when it overflows (the buffers below are sized by it).
fn product(sizes: &[usize]) -> usize {
    sizes
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .unwrap_or_else(|| panic!("window sizes {sizes:?} overflow usize"))
}

/// Images per task: enough elements per task to be worth a thread, at least one image.
fn images_per_task(per_image: usize) -> usize {
    (PARALLEL_MIN / per_image.max(1)).max(1)
}

/// The image offsets of the first pixel of every row of `OW` taps of one image's columns, in
/// the columns' order (tap `(i, j)` major, then window row): row `k` of `[KH * KW * OH, OW]`
/// reads the pixels `start_k + x * stride.1`.
fn row_starts(win: &Window2d) -> impl Iterator<Item = usize> + '_ {
    let (kh, kw) = win.kernel;
    (0..kh * kw).flat_map(move |k| {
        (0..win.out.0).map(move |y| {
            let (r, c) = win.pixel((k / kw, k % kw), (y, 0));
            r * win.image.1 + c
        })
    })
}

/// The windows of one image plane `src` (`[H, W]`) into `dst` (`[KH * KW, OH, OW]`), writing
/// every element of `dst` once.
fn unfold_image<T: Copy>(src: &[T], dst: &mut [MaybeUninit<T>], win: &Window2d) {
    let (ow, step) = (win.out.1, win.stride.1);
    let mut rows = dst.chunks_exact_mut(ow.max(1));
    for start in row_starts(win) {
        let out = rows.next().expect("the columns hold KH * KW * OH rows of OW");
        if step == 1 {
            // A run of the image row: a vectorised copy (the strided form below is scalar).
            for (o, &v) in out.iter_mut().zip(&src[start..start + ow]) {
                o.write(v);
            }
        } else {
            for (x, o) in out.iter_mut().enumerate() {
                o.write(src[start + x * step]);
            }
        }
    }
}

/// Adds the taps `src` (`[KH * KW, OH, OW]`) of one image into `dst` (`[H, W]`, zeros), tap by
/// tap in row-major order.
fn fold_image<T: Copy + std::ops::AddAssign>(src: &[T], dst: &mut [T], win: &Window2d) {
    let (ow, step) = (win.out.1, win.stride.1);
    let mut rows = src.chunks_exact(ow.max(1));
    for start in row_starts(win) {
        let taps = rows.next().expect("the columns hold KH * KW * OH rows of OW");
        if step == 1 {
            for (o, &t) in dst[start..start + ow].iter_mut().zip(taps) {
                *o += t;
            }
        } else {
            for (x, &t) in taps.iter().enumerate() {
                dst[start + x * step] += t;
            }
        }
    }
}

/// Runs `f(src_image, dst_image)` over matching images of `src` and `dst`, in parallel for
/// large inputs.
fn per_image<S: Sync, D: Send>(
    src: &[S],
    src_len: usize,
    dst: &mut [D],
    dst_len: usize,
    f: impl Fn(&[S], &mut [D]) + Sync,
) {
    if dst_len == 0 {
        return;
    }
    assert!(src_len > 0, "internal error: window images of no elements");
    let per = images_per_task(src_len.max(dst_len));
    if dst.len() >= PARALLEL_MIN && dst.len() > dst_len {
        dst.par_chunks_mut(dst_len * per)
            .zip(src.par_chunks(src_len * per))
            .for_each(|(d, s)| d.chunks_mut(dst_len).zip(s.chunks(src_len)).for_each(|(d, s)| f(s, d)));
    } else {
        dst.chunks_mut(dst_len)
            .zip(src.chunks(src_len))
            .for_each(|(d, s)| f(s, d));
    }
}

/// col2im of every image of `src` (`per` column elements each) into `images` zeroed planes
/// of `plane` elements.
fn fold_all<T: Copy + Default + std::ops::AddAssign + Send + Sync>(
    src: &[T],
    per: usize,
    images: usize,
    plane: usize,
    win: &Window2d,
) -> Vec<T> {
    let mut out = vec![T::default(); product(&[images, plane])];
    per_image(src, per, &mut out, plane, |s, o| fold_image(s, o, win));
    out
}

/// im2col of `x` `[.., H, W]` into `[.., KH * KW, OH, OW]` (any dtype).
pub(super) fn unfold_windows(x: &RawTensor, win: &Window2d) -> RawTensor {
    win.require("unfold_windows", &x.layout.shape, &[win.image.0, win.image.1]);
    let x = dense(x);
    let (lead, images) = leading(&x.layout.shape, 2);
    let mut shape = lead.to_vec();
    shape.extend([win.taps(), win.out.0, win.out.1]);
    let (plane, cols) = (
        product(&[win.image.0, win.image.1]),
        product(&[win.taps(), win.out.0, win.out.1]),
    );
    let start = x.layout.offset;
    with_cpu_buffer!(host(&x), d => {
        let src = &d[start..start + product(&[images, plane])];
        let total = product(&[images, cols]);
        let mut out = Vec::with_capacity(total);
        per_image(src, plane, &mut out.spare_capacity_mut()[..total], cols, |s, o| unfold_image(s, o, win));
        // SAFETY: `unfold_image` wrote every element of each image's `cols` outputs (one row
        // of `OW` per tap and window row, `KH * KW * OH` rows), and the images cover `total`.
        unsafe { out.set_len(total) };
        wrap(out, &shape)
    })
}

/// col2im of `cols` `[.., KH * KW, OH, OW]` (f32 or f64; halves arrive widened) into
/// `[.., H, W]`.
pub(super) fn fold_windows(cols: &RawTensor, win: &Window2d) -> RawTensor {
    win.require("fold_windows", &cols.layout.shape, &[win.taps(), win.out.0, win.out.1]);
    let cols = dense(cols);
    let (lead, images) = leading(&cols.layout.shape, 3);
    let mut shape = lead.to_vec();
    shape.extend([win.image.0, win.image.1]);
    let (plane, per) = (
        product(&[win.image.0, win.image.1]),
        product(&[win.taps(), win.out.0, win.out.1]),
    );
    let start = cols.layout.offset;
    let src_len = product(&[images, per]);
    match host(&cols) {
        CpuBuffer::F32(d) => wrap(fold_all(&d[start..start + src_len], per, images, plane, win), &shape),
        CpuBuffer::F64(d) => wrap(fold_all(&d[start..start + src_len], per, images, plane, win), &shape),
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
        other => unreachable!("fold_windows of {}: the op layer accepts floats only", other.dtype()),
    }
}
