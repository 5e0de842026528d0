//! Convolutions and pooling over NCHW images. The windows of an image are one primitive over
//! the padded input ("im2col", `Backend::unfold_windows`, whose derivative is its transpose
//! "col2im", `Backend::fold_windows`); a convolution is one batched matmul of the flattened
//! kernel with them, and a pooling is a reduction over the window axis. So they run on every
//! device, and every derivative (of any order, under vmap and jit) follows from the rules of
//! the two window primitives, padding and matmul. Stride-1 convolutions over enough channels
//! skip the windows: each kernel tap is a shifted run of the flattened padded image, and the
//! product reads the runs in place (`ops::taps`; [`ConvAlgorithm`] chooses).
//! `conv_transpose2d` is the derivative of `conv2d` with respect to its input, applied to `x`.

use super::require_float;
use super::taps::tap_matmul;
use crate::backend::{TapGrid, Window2d};
use crate::tensor::Tensor;
use crate::trace::Rule;

/// How a convolution is computed. Every choice gives the same values up to rounding, on every
/// device, with the same derivatives of every order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvAlgorithm {
    /// Chosen from the device and the shapes: on the CPU, [`ConvAlgorithm::ShiftedRows`] for
    /// stride-1 convolutions with at least 8 input channels per group and at least 2^20
    /// multiply-adds per image and group, [`ConvAlgorithm::Windows`] otherwise (small products
    /// pay more for their per-image calls than the im2col copy costs; see
    /// `docs/benchmarks.md`, stop 23). On a GPU, windows: there the shifted rows are gathered by
    /// a generic strided copy, and have not been timed against the window kernels yet.
    #[default]
    Auto,
    /// im2col ("windows": every tap of every window copied out), then one batched matmul; any
    /// stride. The matrix is kept for the weight gradient.
    Windows,
    /// Stride 1 only: the padded images as rows of `Hp * Wp` pixels, each kernel tap a shifted
    /// run of the row, multiplied without building the im2col matrix (`Wp - OW` extra outputs
    /// per output row are computed and dropped).
    ShiftedRows,
}

/// Stride, zero padding, dilation and groups of a 2-D convolution (PyTorch's `Conv2d`
/// arguments; pairs are (height, width)), and the algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Step of the window.
    pub stride: (usize, usize),
    /// Zeros added on both sides.
    pub padding: (usize, usize),
    /// Step between the kernel's taps.
    pub dilation: (usize, usize),
    /// Channel groups: input and output channels split into this many independent parts.
    pub groups: usize,
    /// How to compute it ([`ConvAlgorithm::Auto`] unless a benchmark or test says otherwise).
    pub algorithm: ConvAlgorithm,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            algorithm: ConvAlgorithm::Auto,
        }
    }
}

/// Output extent of a window sweep, or `None` when the window does not fit or a kernel, stride
/// or dilation is zero.
fn out_extent(input: usize, pad: usize, kernel: usize, stride: usize, dilation: usize) -> Option<usize> {
    if stride == 0 || dilation == 0 {
        return None;
    }
    let span = kernel.checked_sub(1)?.checked_mul(dilation)?.checked_add(1)?;
    input
        .checked_add(pad.checked_mul(2)?)?
        .checked_sub(span)
        .map(|r| r / stride + 1)
}

fn require_nchw(op: &str, x: &Tensor) {
    require_float(op, x);
    if x.rank() != 4 {
        panic!(
            "{op}: needs an NCHW image batch of rank 4, got shape {:?} (add a batch axis with expand_dims(0))",
            x.shape()
        );
    }
}

/// The windows of `x` (`[N, C, H, W]`, already padded) as `[N, C, KH * KW, OH, OW]`, taps in
/// row-major order (`kh` major): one primitive (im2col), whose derivative is its transpose
/// [`fold`] (col2im).
fn patches(
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
    out: (usize, usize),
) -> Tensor {
    let window = Window2d {
        image: (x.shape()[2], x.shape()[3]),
        kernel,
        stride,
        dilation,
        out,
    };
    unfold(x, window)
}

/// im2col over the last two axes of `x`.
fn unfold(x: &Tensor, window: Window2d) -> Tensor {
    let raw = x.backend().unfold_windows(x.raw(), &window);
    Tensor::record(raw, &[x], || WindowRule { window, fold: false })
}

/// col2im, the transpose of [`unfold`]: the taps `[.., KH * KW, OH, OW]` added back into
/// `[.., H, W]` (the gradient of the windows' input; one pass, where the sum of one strided
/// embedding per tap took `KH * KW` full-size tensors).
fn fold(cols: &Tensor, window: Window2d) -> Tensor {
    let raw = cols.backend().fold_windows(cols.raw(), &window);
    Tensor::record(raw, &[cols], || WindowRule { window, fold: true })
}

/// The rules of `unfold` and `fold`: both are linear and each is the other's transpose, so
/// each one's VJP is the other and its JVP is itself.
struct WindowRule {
    window: Window2d,
    fold: bool,
}

impl WindowRule {
    /// `self`'s op (`transpose` false) or its transpose applied to `v`.
    fn apply(&self, v: &Tensor, transpose: bool) -> Tensor {
        if self.fold != transpose {
            fold(v, self.window)
        } else {
            unfold(v, self.window)
        }
    }
}

impl Rule for WindowRule {
    fn name(&self) -> String {
        let w = &self.window;
        format!(
            "{}(kernel={:?}, stride={:?}, dilation={:?})",
            if self.fold { "fold_windows" } else { "unfold_windows" },
            w.kernel,
            w.stride,
            w.dilation
        )
    }
    fn vjp(&self, _inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(self.apply(ct, true))]
    }
    fn jvp(&self, _inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        Some(self.apply(tangents[0].as_ref()?, false))
    }
}

/// The output size of a window op, or a panic that names the op and the sizes.
fn window_out(op: &str, x: &Tensor, kernel: (usize, usize), o: &Conv2dOptions) -> (usize, usize) {
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let oh = out_extent(h, o.padding.0, kernel.0, o.stride.0, o.dilation.0);
    let ow = out_extent(w, o.padding.1, kernel.1, o.stride.1, o.dilation.1);
    match (oh, ow) {
        // `out_extent` is `None` for a zero kernel, stride or dilation too.
        (Some(oh), Some(ow)) => (oh, ow),
        _ => panic!(
            "{op}: a {}x{} window (dilation {:?}, stride {:?}) does not fit an input of {h}x{w} padded by {:?}; \
             strides and dilations must be at least 1; use a smaller kernel, more padding or a larger image",
            kernel.0, kernel.1, o.dilation, o.stride, o.padding
        ),
    }
}

/// 2-D convolution (cross-correlation, as PyTorch and JAX): `x` `[N, C, H, W]`, `w`
/// `[O, C / groups, KH, KW]`, giving `[N, O, OH, OW]`; add a bias of shape `[O, 1, 1]` after.
pub fn conv2d(x: &Tensor, w: &Tensor, options: Conv2dOptions) -> Tensor {
    require_nchw("conv2d", x);
    require_nchw("conv2d (weight)", w);
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let g = options.groups;
    if g == 0 || !c.is_multiple_of(g) || !o.is_multiple_of(g) || cg * g != c {
        panic!(
            "conv2d: input {:?} ({c} channels) and weight {:?} ({o} outputs, {cg} inputs per group) do not fit \
             {g} group(s): the weight must be [O, C / groups, KH, KW] with C and O divisible by groups",
            x.shape(),
            w.shape()
        );
    }
    let (oh, ow) = window_out("conv2d", x, (kh, kw), &options);
    if shifted_rows(
        &options,
        (cg, o / g, kh * kw),
        (oh, x.shape()[3] + 2 * options.padding.1),
        x.device() == crate::device::Device::Cpu,
    ) {
        return conv2d_taps(x, w, options, (oh, ow));
    }
    let (ph, pw) = options.padding;
    let padded = if ph + pw > 0 {
        x.pad(&[(0, 0), (0, 0), (ph, ph), (pw, pw)])
    } else {
        x.clone()
    };
    // [N, C, KH*KW, OH, OW] -> [N, G, C/G * KH*KW, OH*OW]
    let cols =
        patches(&padded, (kh, kw), options.stride, options.dilation, (oh, ow)).reshape([n, g, cg * kh * kw, oh * ow]);
    // [O, C/G, KH, KW] -> [G, O/G, C/G * KH*KW]
    let wm = w.reshape([g, o / g, cg * kh * kw]);
    wm.matmul(&cols).reshape([n, o, oh, ow])
}

/// Whether [`conv2d`] takes the shifted rows: `channels` are (inputs per group, outputs per
/// group, taps), `rows` the output rows and the padded width, `cpu` whether the operands are
/// on the CPU. Panics when [`ConvAlgorithm::ShiftedRows`] is asked for a stride above 1.
fn shifted_rows(options: &Conv2dOptions, channels: (usize, usize, usize), rows: (usize, usize), cpu: bool) -> bool {
    let unit = options.stride == (1, 1);
    match options.algorithm {
        ConvAlgorithm::Windows => false,
        ConvAlgorithm::ShiftedRows if !unit => panic!(
            "conv2d: ConvAlgorithm::ShiftedRows needs stride (1, 1), got {:?}; use ConvAlgorithm::Auto or Windows",
            options.stride
        ),
        ConvAlgorithm::ShiftedRows => true,
        ConvAlgorithm::Auto => {
            let (inputs, outputs, taps) = channels;
            let work = inputs
                .saturating_mul(outputs)
                .saturating_mul(taps)
                .saturating_mul(rows.0 * rows.1);
            cpu && unit && inputs >= 8 && work >= 1 << 20
        }
    }
}

/// A stride-1 [`conv2d`] without an im2col matrix: the padded images are flattened to rows of
/// `Hp * Wp` pixels, tap `(i, j)` of the kernel is the row shifted by `i * dilation.0 * Wp + j *
/// dilation.1`, and the output is computed at positions `oh * Wp + ow` for every `ow < Wp`
/// (`Wp - OW` of them per row are dropped after: 3.5 % extra work for a 3x3 kernel over 56x56
/// images). Where the last tap would read past the row, one more row of zeros is padded below.
fn conv2d_taps(x: &Tensor, w: &Tensor, options: Conv2dOptions, (oh, ow): (usize, usize)) -> Tensor {
    let (n, h, wd) = (x.shape()[0], x.shape()[2], x.shape()[3]);
    let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let g = options.groups;
    let (ph, pw) = options.padding;
    let (dh, dw) = options.dilation;
    let tail = usize::from(kw > 1);
    let (hp, wp) = (h + 2 * ph + tail, wd + 2 * pw);
    let padded = if ph + pw + tail > 0 {
        x.pad(&[(0, 0), (0, 0), (ph, ph + tail), (pw, pw)])
    } else {
        x.clone()
    };
    let taps = TapGrid {
        base: 0,
        counts: (kh, kw),
        steps: ((dh * wp) as isize, dw as isize),
        len: oh * wp,
    };
    let rows = padded.reshape([n, g, cg, hp * wp]);
    let wm = w.reshape([g, o / g, cg * kh * kw]);
    let out = tap_matmul(&wm, &rows, taps).reshape([n, o, oh, wp]);
    if ow == wp {
        out
    } else {
        out.slice_axis(3, Some(0), Some(ow as isize), 1)
    }
}

/// Transposed 2-D convolution (PyTorch's `conv_transpose2d`): `x` `[N, C, H, W]`, `w`
/// `[C, O / groups, KH, KW]`, giving `[N, O, OH, OW]` with `OH = (H - 1) * stride - 2 * padding
/// + dilation * (KH - 1) + output_padding + 1`. It is the derivative of [`conv2d`] (with the
/// same `w` and options) with respect to its input, applied to `x`.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, options: Conv2dOptions, output_padding: (usize, usize)) -> Tensor {
    require_nchw("conv_transpose2d", x);
    require_nchw("conv_transpose2d (weight)", w);
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (wc, og, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let g = options.groups;
    if g == 0 || wc != c || !c.is_multiple_of(g) {
        panic!(
            "conv_transpose2d: input {:?} ({c} channels) and weight {:?} do not fit {g} group(s): the weight must be \
             [C, O / groups, KH, KW] with C divisible by groups",
            x.shape(),
            w.shape()
        );
    }
    if output_padding.0 >= options.stride.0.max(options.dilation.0)
        || output_padding.1 >= options.stride.1.max(options.dilation.1)
    {
        panic!(
            "conv_transpose2d: output_padding {output_padding:?} must be smaller than the stride {:?} or the dilation {:?}",
            options.stride, options.dilation
        );
    }
    let extent = |i: usize, s: usize, p: usize, d: usize, k: usize, op: usize| {
        ((i - 1) * s + d * (k - 1) + op + 1).checked_sub(2 * p)
    };
    let (Some(oh), Some(ow)) = (
        extent(
            h,
            options.stride.0,
            options.padding.0,
            options.dilation.0,
            kh,
            output_padding.0,
        ),
        extent(
            wd,
            options.stride.1,
            options.padding.1,
            options.dilation.1,
            kw,
            output_padding.1,
        ),
    ) else {
        panic!(
            "conv_transpose2d: padding {:?} removes more than the {h}x{wd} input spreads to",
            options.padding
        );
    };
    // conv2d is linear in its input: the point the derivative is taken at does not matter.
    let input = Tensor::full_on(&[n, og * g, oh, ow], 0.0, w.dtype(), x.device());
    let (_, pullback) = crate::transforms::api::vjp(|inp: &Tensor| conv2d(inp, w, options), &input);
    pullback(x)
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
    require_nchw(op, x);
    let o = Conv2dOptions {
        stride,
        padding,
        ..Conv2dOptions::default()
    };
    let out = window_out(op, x, kernel, &o);
    let (ph, pw) = padding;
    let padded = if ph + pw > 0 {
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
    let windows = pool_windows("max_pool2d", x, kernel, stride, padding, f64::NEG_INFINITY);
    let first_max = windows.argmax(Some(2), true);
    windows.take_along_axis(&first_max, 2).squeeze([2])
}

/// Average pooling over `kernel` windows of NCHW `x`; padding counts as zeros in the average
/// (PyTorch's default `count_include_pad=True`, Flax's `avg_pool`).
pub fn avg_pool2d(x: &Tensor, kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Tensor {
    pool_windows("avg_pool2d", x, kernel, stride, padding, 0.0).mean(2, false)
}
