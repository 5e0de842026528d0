//! 2-D pooling over NCHW images: max pooling and average pooling (PyTorch's `max_pool2d` and
//! `avg_pool2d` with `count_include_pad=True`, Flax's `max_pool` and `avg_pool`).
//!
//! Where the backend has the kernels (`Backend::pool_argmax`, `Backend::pool_sum`: the CPU and
//! CUDA) the windows are read in place: max pooling takes the values at the windows' first
//! maxima, so its gradient is one scatter; average pooling is a linear window sum whose
//! gradient is its transpose, one pass each. Elsewhere, and for max pooling under `vmap`, they
//! reduce the window tensor (im2col).

use super::conv::{Conv2dOptions, patches, require_nchw, window_out};
use crate::backend::Window2d;
use crate::tensor::Tensor;
use crate::trace::Rule;

/// The windows along each axis of a pooling of NCHW `x` (checked, naming `op`).
fn pool_out(
    op: &str,
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> (usize, usize) {
    require_nchw(op, x);
    let o = Conv2dOptions {
        stride,
        padding,
        ..Conv2dOptions::default()
    };
    window_out(op, x, kernel, &o)
}

/// The padded windows of a pooling, `[N, C, KH * KW, OH, OW]`, padding filled with `fill`.
fn pool_windows(
    op: &str,
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    fill: f64,
) -> Tensor {
    let out = pool_out(op, x, kernel, stride, padding);
    let (ph, pw) = padding;
    let padded = if ph + pw > 0 && fill == 0.0 {
        x.pad(&[(0, 0), (0, 0), (ph, ph), (pw, pw)])
    } else if ph + pw > 0 {
        let widths = [(0, 0), (0, 0), (ph, ph), (pw, pw)];
        let inside = x.ones_like().pad(&widths).gt_scalar(0.5);
        inside.where_(&x.pad(&widths), &x.scalar_like(fill))
    } else {
        x.clone()
    };
    patches(&padded, kernel, stride, (1, 1), out)
}

/// Max pooling over `kernel` windows of NCHW `x` (padding counts as `-inf`). At ties the
/// gradient goes to the first maximum of the window in row-major order, as JAX's
/// `reduce_window` max and PyTorch's `max_pool2d`.
pub fn max_pool2d(x: &Tensor, kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Tensor {
    if let Some(pooled) = max_pool_in_place(x, kernel, stride, padding) {
        return pooled;
    }
    let windows = pool_windows("max_pool2d", x, kernel, stride, padding, f64::NEG_INFINITY);
    let first_max = windows.argmax(Some(2), true);
    windows.take_along_axis(&first_max, 2).squeeze([2])
}

/// Max pooling where the backend finds the windows' maxima in place (`Backend::pool_argmax`: the
/// CPU and CUDA): the values taken from the flattened `x` at the chosen positions, so the
/// gradient is one scatter of the cotangent to them, and no padded copy or window tensor is
/// built. `None` under vmap, for padding not below the kernel (a window could hold padding
/// alone), for an image without pixels, and where the backend has no kernel.
fn max_pool_in_place(
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Option<Tensor> {
    let out = pool_out("max_pool2d", x, kernel, stride, padding);
    let &[n, c, h, w] = x.shape() else {
        unreachable!("require_nchw checked the rank")
    };
    if x.is_batched() || padding.0 >= kernel.0 || padding.1 >= kernel.1 || h == 0 || w == 0 {
        return None;
    }
    let window = Window2d {
        image: (h + 2 * padding.0, w + 2 * padding.1),
        kernel,
        stride,
        dilation: (1, 1),
        out,
    };
    let positions = Tensor::untraced(x.backend().pool_argmax(x.raw(), &window, padding)?, &[x]);
    let values = x
        .reshape([n * c * h * w])
        .take_in_range(&positions.reshape([n * c * out.0 * out.1]), 0);
    Some(values.reshape([n, c, out.0, out.1]))
}

/// Average pooling over `kernel` windows of NCHW `x`; padding counts as zeros in the average
/// (PyTorch's default `count_include_pad=True`, Flax's `avg_pool`).
pub fn avg_pool2d(x: &Tensor, kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Tensor {
    let out = pool_out("avg_pool2d", x, kernel, stride, padding);
    let &[.., h, w] = x.shape() else {
        unreachable!("require_nchw checked the rank")
    };
    let pooling = WindowSum {
        window: Window2d {
            image: (h + 2 * padding.0, w + 2 * padding.1),
            kernel,
            stride,
            dilation: (1, 1),
            out,
        },
        padding,
        scale: 1.0 / (kernel.0 * kernel.1) as f64,
    };
    pooling
        .apply(x, false)
        .unwrap_or_else(|| pool_windows("avg_pool2d", x, kernel, stride, padding, 0.0).mean(2, false))
}

/// Average pooling as a linear map read in place by the backend (`Backend::pool_sum`): `scale`
/// times every window's sum over the image padded with zeros, and its transpose.
#[derive(Clone, Copy, Debug)]
struct WindowSum {
    /// The windows over the padded image.
    window: Window2d,
    /// Zeros on each side of the image.
    padding: (usize, usize),
    /// The factor of every sum (`1 / taps` for the average).
    scale: f64,
}

impl WindowSum {
    /// The window sums of `x` `[N, C, H, W]` (`transpose` false) or the transpose of the map
    /// applied to `x` `[N, C, OH, OW]`; `None` where the backend has no kernel.
    fn apply(self, x: &Tensor, transpose: bool) -> Option<Tensor> {
        let raw = x
            .backend()
            .pool_sum(x.raw(), &self.window, self.padding, self.scale, transpose)?;
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
        format!(
            "{}(kernel={:?}, stride={:?}, padding={:?}, scale={})",
            if self.transpose {
                "window_sum_transpose"
            } else {
                "window_sum"
            },
            w.kernel,
            w.stride,
            self.sum.padding,
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
