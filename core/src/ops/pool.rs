//! 2-D pooling over NCHW images: max pooling and average pooling, with PyTorch's `ceil_mode`,
//! `count_include_pad`, `divisor_override` and (max pooling) `dilation` (PyTorch's
//! `max_pool2d` and `avg_pool2d`, Flax's `max_pool` and `avg_pool`).
//!
//! Where the backend has the kernels (`Backend::pool_argmax`, `Backend::pool_sum`: the CPU and
//! CUDA) the windows are read in place: max pooling takes the values at the windows' first
//! maxima, so its gradient is one scatter; average pooling is a linear window sum whose
//! gradient is its transpose, one pass each. Elsewhere, and for max pooling under `vmap`, they
//! reduce the window tensor (im2col).
//!
//! `ceil_mode` adds windows that run past the image's end into extra padding after it (never
//! one that starts in that padding, PyTorch's rule), so the padding after the image can exceed
//! the padding before it ([`Padding2d`]). An average whose windows do not all count the whole
//! kernel (`count_include_pad = false`, or a `ceil_mode` window past the padding) divides its
//! window sums by the window sums of ones over the counted pixels; one with a
//! `divisor_override` divides them by that number. Max pooling with a `dilation` reduces the
//! window tensor (the in-place kernels read adjacent taps).

use super::conv::{patches, require_nchw};
use crate::backend::{Padding2d, Window2d};
use crate::tensor::Tensor;
use crate::trace::Rule;

/// Stride, zero padding and rounding of a 2-D pooling (PyTorch's `max_pool2d` and `avg_pool2d`
/// arguments; pairs are (height, width)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dOptions {
    /// Step between windows (PyTorch's default is the kernel).
    pub stride: (usize, usize),
    /// Padding on both sides of the image: `-inf` for max pooling, zeros for average pooling.
    pub padding: (usize, usize),
    /// Step between the taps of a window (PyTorch's `dilation`, max pooling only: average
    /// pooling refuses anything but `(1, 1)`, as PyTorch's has no such option).
    pub dilation: (usize, usize),
    /// Round the number of windows up, adding a last window that runs past the image's end
    /// (when it starts inside the image or the padding before it), instead of down.
    pub ceil_mode: bool,
    /// Average pooling divides by the whole window, padding included (`true`, PyTorch's
    /// default), or by the pixels of the image in the window (`false`). Max pooling ignores it.
    pub count_include_pad: bool,
    /// Average pooling divides every window's sum by this number instead (PyTorch's
    /// `divisor_override`; `count_include_pad` then plays no part). Max pooling ignores it.
    pub divisor_override: Option<usize>,
}

impl Pool2dOptions {
    /// `stride` and `padding`, rounding down, and averages counting the padding (PyTorch's
    /// defaults).
    pub fn new(stride: (usize, usize), padding: (usize, usize)) -> Pool2dOptions {
        Pool2dOptions {
            stride,
            padding,
            dilation: (1, 1),
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        }
    }

    /// These options with taps `dilation` apart (max pooling only).
    pub fn dilation(self, dilation: (usize, usize)) -> Pool2dOptions {
        Pool2dOptions { dilation, ..self }
    }

    /// These options with `ceil_mode` set.
    pub fn ceil_mode(self, ceil_mode: bool) -> Pool2dOptions {
        Pool2dOptions { ceil_mode, ..self }
    }

    /// These options with `count_include_pad` set.
    pub fn count_include_pad(self, count_include_pad: bool) -> Pool2dOptions {
        Pool2dOptions {
            count_include_pad,
            ..self
        }
    }

    /// These options with averages dividing every window's sum by `divisor` (which must not
    /// be zero: the pooling refuses it).
    pub fn divisor_override(self, divisor: usize) -> Pool2dOptions {
        Pool2dOptions {
            divisor_override: Some(divisor),
            ..self
        }
    }
}

/// The windows along one axis of `input` pixels and the padding after them, or `None` when
/// the window does not fit or the kernel or stride is zero. With `ceil` the count rounds up,
/// but a last window starting past the image and the padding before it is dropped (PyTorch's
/// `pooling_output_shape`).
fn pool_extent(
    input: usize,
    pad: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    ceil: bool,
) -> Option<(usize, usize)> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    // The rows a window spans, first tap to last.
    let kernel = (kernel - 1).checked_mul(dilation)?.checked_add(1)?;
    let end = input.checked_add(pad)?;
    let room = end.checked_add(pad)?.checked_sub(kernel)?;
    let mut out = if ceil { room.div_ceil(stride) } else { room / stride } + 1;
    if ceil && (out - 1) * stride >= end {
        out -= 1;
    }
    let after = ((out - 1) * stride + kernel).saturating_sub(end).max(pad);
    Some((out, after))
}

/// The windows of a pooling of NCHW `x` over the padded image, and the padding (checked,
/// naming `op`).
fn pool_geometry(op: &str, x: &Tensor, kernel: (usize, usize), o: &Pool2dOptions) -> (Window2d, Padding2d) {
    require_nchw(op, x);
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let rows = pool_extent(h, o.padding.0, kernel.0, o.stride.0, o.dilation.0, o.ceil_mode);
    let cols = pool_extent(w, o.padding.1, kernel.1, o.stride.1, o.dilation.1, o.ceil_mode);
    let (Some((oh, after_h)), Some((ow, after_w))) = (rows, cols) else {
        panic!(
            "{op}: a {}x{} window (stride {:?}, dilation {:?}) does not fit an input of {h}x{w} padded by {:?}; \
             strides and dilations must be at least 1; use a smaller kernel or dilation, more padding or a larger image",
            kernel.0, kernel.1, o.stride, o.dilation, o.padding
        )
    };
    let padding = Padding2d {
        before: o.padding,
        after: (after_h, after_w),
    };
    let window = Window2d {
        image: (h + o.padding.0 + after_h, w + o.padding.1 + after_w),
        kernel,
        stride: o.stride,
        dilation: o.dilation,
        out: (oh, ow),
    };
    (window, padding)
}

/// The padded windows of a pooling, `[N, C, KH * KW, OH, OW]`, padding filled with `fill`.
fn pool_windows(x: &Tensor, window: &Window2d, padding: &Padding2d, fill: f64) -> Tensor {
    let (before, after) = (padding.before, padding.after);
    let widths = [(0, 0), (0, 0), (before.0, after.0), (before.1, after.1)];
    let padded = if widths.iter().all(|&(b, a)| b + a == 0) {
        x.clone()
    } else if fill == 0.0 {
        x.pad(&widths)
    } else {
        let inside = x.ones_like().pad(&widths).gt_scalar(0.5);
        inside.where_(&x.pad(&widths), &x.scalar_like(fill))
    };
    patches(&padded, window.kernel, window.stride, window.dilation, window.out)
}

/// Max pooling over `kernel` windows of NCHW `x` (padding counts as `-inf`): PyTorch's
/// `max_pool2d(x, kernel, stride, padding)`. See [`max_pool2d_with`].
pub fn max_pool2d(x: &Tensor, kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Tensor {
    max_pool2d_with(x, kernel, Pool2dOptions::new(stride, padding))
}

/// Max pooling over `kernel` windows of NCHW `x` with `options` (padding counts as `-inf`;
/// `count_include_pad` is ignored). At ties the gradient goes to the first maximum of the
/// window in row-major order, as JAX's `reduce_window` max and PyTorch's `max_pool2d`; a
/// window holding NaN pools to NaN.
pub fn max_pool2d_with(x: &Tensor, kernel: (usize, usize), options: Pool2dOptions) -> Tensor {
    let (window, padding) = pool_geometry("max_pool2d", x, kernel, &options);
    if let Some(pooled) = max_pool_in_place(x, &window, &padding) {
        return pooled;
    }
    let windows = pool_windows(x, &window, &padding, f64::NEG_INFINITY);
    let first_max = windows.argmax(Some(2), true);
    windows.take_along_axis(&first_max, 2).squeeze([2])
}

/// Max pooling where the backend finds the windows' maxima in place (`Backend::pool_argmax`: the
/// CPU and CUDA): the values taken from the flattened `x` at the chosen positions, so the
/// gradient is one scatter of the cotangent to them, and no padded copy or window tensor is
/// built. `None` under vmap, where a window holds padding alone (see
/// [`Window2d::every_window_holds_a_pixel`]), and where the backend has no kernel.
fn max_pool_in_place(x: &Tensor, window: &Window2d, padding: &Padding2d) -> Option<Tensor> {
    let &[n, c, ..] = x.shape() else {
        unreachable!("require_nchw checked the rank")
    };
    // The backends' kernels read windows of adjacent taps.
    if x.is_batched() || window.dilation != (1, 1) || !window.every_window_holds_a_pixel(padding) {
        return None;
    }
    let positions = Tensor::untraced(x.backend().pool_argmax(x.raw(), window, padding)?, &[x]);
    let (oh, ow) = window.out;
    let values = x
        .reshape([x.numel()])
        .take_in_range(&positions.reshape([n * c * oh * ow]), 0);
    Some(values.reshape([n, c, oh, ow]))
}

/// Average pooling over `kernel` windows of NCHW `x`; padding counts as zeros in the average
/// (PyTorch's `avg_pool2d(x, kernel, stride, padding)`, Flax's `avg_pool`). See
/// [`avg_pool2d_with`].
pub fn avg_pool2d(x: &Tensor, kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Tensor {
    avg_pool2d_with(x, kernel, Pool2dOptions::new(stride, padding))
}

/// Average pooling over `kernel` windows of NCHW `x` with `options`: every window's sum (padding
/// adds zeros) divided by its count, the whole kernel, or with `ceil_mode` the taps inside the
/// padded image, or with `count_include_pad = false` the taps on the image's pixels (as
/// PyTorch's `avg_pool2d`). Panics, as PyTorch refuses it, where `count_include_pad = false`
/// leaves a window with no pixel to divide by.
pub fn avg_pool2d_with(x: &Tensor, kernel: (usize, usize), options: Pool2dOptions) -> Tensor {
    if options.dilation != (1, 1) {
        panic!(
            "avg_pool2d: dilation {:?} for a {}x{} window over an input of shape {:?}; average pooling takes \
             adjacent taps only (as PyTorch's avg_pool2d): leave dilation at (1, 1), or use max_pool2d_with",
            options.dilation,
            kernel.0,
            kernel.1,
            x.shape()
        );
    }
    let (window, padding) = pool_geometry("avg_pool2d", x, kernel, &options);
    if let Some(divisor) = options.divisor_override {
        if divisor == 0 {
            panic!(
                "avg_pool2d: divisor_override is 0 for a {}x{} window over an input of shape {:?}; \
                 give a positive divisor, or leave it unset to divide by the window",
                kernel.0,
                kernel.1,
                x.shape()
            );
        }
        let sums = window_sums(x, &window, &padding, false);
        return sums.div(&sums.scalar_like(divisor as f64));
    }
    if !options.count_include_pad && !window.every_window_holds_a_pixel(&padding) {
        panic!(
            "avg_pool2d: with count_include_pad = false a {}x{} window (stride {:?}) holds padding alone over an \
             input of shape {:?} padded by {:?}, and would average zero pixels; use padding at most half the kernel \
             (PyTorch's limit) or count_include_pad = true",
            kernel.0,
            kernel.1,
            options.stride,
            x.shape(),
            options.padding
        );
    }
    let Some((ones_extent, ones_padding)) = counted_pixels(&window, &padding, &options) else {
        return window_sums(x, &window, &padding, true);
    };
    let ones = Tensor::full_on(&[1, 1, ones_extent.0, ones_extent.1], 1.0, x.dtype(), x.device());
    window_sums(x, &window, &padding, false).div(&window_sums(&ones, &window, &ones_padding, false))
}

/// The pixels an average counts, when some window counts fewer than the whole kernel: the
/// extents of a ones image whose window sums inside the returned padding are the divisors (the
/// image itself without `count_include_pad`, else the image with its padding before and after
/// it, as wide as `options.padding`). `None` where every window counts the whole kernel.
fn counted_pixels(
    window: &Window2d,
    padding: &Padding2d,
    options: &Pool2dOptions,
) -> Option<((usize, usize), Padding2d)> {
    let (h, w) = window.unpadded(padding);
    let (before, after) = (padding.before, padding.after);
    let counted = if options.count_include_pad {
        // The ceil_mode padding beyond the symmetric padding is not counted.
        let extra = (after.0 - before.0, after.1 - before.1);
        let extent = (h + 2 * before.0, w + 2 * before.1);
        (
            extent,
            Padding2d {
                before: (0, 0),
                after: extra,
            },
        )
    } else {
        ((h, w), *padding)
    };
    let (extent, ones_padding) = counted;
    // Every window counts the whole kernel when every window lies inside the counted pixels.
    let inside = |first: usize, extent: usize, kernel: usize, stride: usize, out: usize| {
        first == 0 && (out - 1) * stride + kernel <= extent
    };
    let whole = inside(
        ones_padding.before.0,
        extent.0,
        window.kernel.0,
        window.stride.0,
        window.out.0,
    ) && inside(
        ones_padding.before.1,
        extent.1,
        window.kernel.1,
        window.stride.1,
        window.out.1,
    );
    (!whole).then_some(counted)
}

/// The sum (or with `mean` the mean) of every window of `x` inside `padding` zeros, `[N, C, OH,
/// OW]`: read in place where the backend has the kernel, else reduced from the window tensor.
fn window_sums(x: &Tensor, window: &Window2d, padding: &Padding2d, mean: bool) -> Tensor {
    let sum = WindowSum {
        window: *window,
        padding: *padding,
        scale: if mean { 1.0 / window.taps() as f64 } else { 1.0 },
    };
    sum.apply(x, false).unwrap_or_else(|| {
        let windows = pool_windows(x, window, padding, 0.0);
        if mean {
            windows.mean(2, false)
        } else {
            windows.sum(2, false)
        }
    })
}

/// Average pooling as a linear map read in place by the backend (`Backend::pool_sum`): `scale`
/// times every window's sum over the image padded with zeros, and its transpose.
#[derive(Clone, Copy, Debug)]
struct WindowSum {
    /// The windows over the padded image.
    window: Window2d,
    /// Zeros around the image.
    padding: Padding2d,
    /// The factor of every sum (`1 / taps` for the average).
    scale: f64,
}

impl WindowSum {
    /// The window sums of `x` `[N, C, H, W]` (`transpose` false) or the transpose of the map
    /// applied to `x` `[N, C, OH, OW]`; `None` where the backend has no kernel.
    fn apply(self, x: &Tensor, transpose: bool) -> Option<Tensor> {
        let raw = x
            .backend()
            .pool_sum(x.raw(), &self.window, &self.padding, self.scale, transpose)?;
        Some(Tensor::record(raw, &[x], || WindowSumRule { sum: self, transpose }))
    }

    /// [`WindowSum::apply`] where the backend's kernel is known to exist (derivatives of a
    /// value it computed).
    fn apply_known(self, x: &Tensor, transpose: bool) -> Tensor {
        self.apply(x, transpose)
            .unwrap_or_else(|| panic!("internal error: the {} backend lost its window-sum kernel", x.device()))
    }
}

/// The rule of a window sum or its transpose: both linear, each the other's VJP, each its own
/// JVP.
struct WindowSumRule {
    sum: WindowSum,
    transpose: bool,
}

impl Rule for WindowSumRule {
    fn name(&self) -> String {
        let w = &self.sum.window;
        let p = &self.sum.padding;
        format!(
            "{}(kernel={:?}, stride={:?}, padding={:?}, scale={})",
            if self.transpose {
                "window_sum_transpose"
            } else {
                "window_sum"
            },
            w.kernel,
            w.stride,
            if p.before == p.after {
                format!("{:?}", p.before)
            } else {
                format!("{:?}..{:?}", p.before, p.after)
            },
            self.sum.scale
        )
    }
    fn vjp(&self, _inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(self.sum.apply_known(ct, !self.transpose))]
    }
    fn jvp(&self, _inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        Some(self.sum.apply_known(tangents[0].as_ref()?, self.transpose))
    }
}
