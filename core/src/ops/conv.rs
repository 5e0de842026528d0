//! Convolutions and pooling over NCHW images. The windows of an image are one primitive over
//! the padded input ("im2col", `Backend::unfold_windows`, whose derivative is its transpose
//! "col2im", `Backend::fold_windows`); a convolution is one batched matmul of the flattened
//! kernel with them, and a pooling is a reduction over the window axis. So they run on every
//! device, and every derivative (of any order, under vmap and jit) follows from the rules of
//! the two window primitives, padding and matmul. Convolutions over enough channels skip the
//! windows: each kernel tap is a shifted run of the flattened padded image (of its phase
//! images when strided), and the product reads the runs in place (`ops::taps`;
//! [`ConvAlgorithm`] chooses).
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
    /// Chosen from the device and the shapes. On the CPU, [`ConvAlgorithm::ShiftedRows`] for
    /// products of at least 2^20 multiply-adds per image and group that are deep enough:
    /// stride-1 convolutions with at least 8 input channels per group; strided undilated ones
    /// of an input that is not traced (a network's input images, or inference: nobody can ask
    /// for the input gradient, whose products per phase image are slower than col2im) with at
    /// least 64 multiply-adds per output (input channels times taps) and a kernel at least as
    /// large as the stride. Otherwise [`ConvAlgorithm::Windows`]: small products pay more for
    /// their per-image calls than the im2col copy costs (`docs/benchmarks.md`, stops 23 and
    /// 27). On a GPU, windows: there the shifted rows are gathered by generic strided copies,
    /// and have not been timed against the window kernels yet.
    #[default]
    Auto,
    /// im2col ("windows": every tap of every window copied out), then one batched matmul; any
    /// stride and dilation. The matrix is kept for the weight gradient.
    Windows,
    /// The padded images as rows of `Hp * Wp` pixels, each kernel tap a shifted run of the row,
    /// multiplied without building the im2col matrix (`Wp - OW` extra outputs per output row
    /// are computed and dropped). At a stride above 1 the padded image is first split into its
    /// `sh * sw` phase images (`x[a::sh, b::sw]`, one copy) and each tap reads its own; the
    /// input gradient is then one product per phase image. Any stride, or any dilation, not
    /// both.
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

pub(super) fn require_nchw(op: &str, x: &Tensor) {
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
pub(super) fn patches(
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
pub(super) fn window_out(op: &str, x: &Tensor, kernel: (usize, usize), o: &Conv2dOptions) -> (usize, usize) {
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
    let cpu = x.device() == crate::device::Device::Cpu;
    let shape = Extents {
        channels: (cg, o / g),
        kernel: (kh, kw),
        image: (x.shape()[2], x.shape()[3]),
        out: (oh, ow),
    };
    match plan(&options, &shape, cpu, x.is_traced()) {
        Plan::ShiftedRows => return conv2d_taps(x, w, options, (oh, ow)),
        Plan::Phases(phases) => return conv2d_phases(x, w, options, &phases, (oh, ow)),
        Plan::Windows => {}
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

/// The extents of a convolution that choose its algorithm.
struct Extents {
    /// Input and output channels per group.
    channels: (usize, usize),
    /// The kernel's taps along each axis.
    kernel: (usize, usize),
    /// The input image, before padding.
    image: (usize, usize),
    /// The output image.
    out: (usize, usize),
}

/// How [`conv2d`] computes a convolution.
enum Plan {
    /// im2col and one batched matmul.
    Windows,
    /// Stride 1: the shifted rows of the padded image ([`conv2d_taps`]).
    ShiftedRows,
    /// Strided: the shifted rows of its phase images ([`conv2d_phases`]).
    Phases(Phases),
}

/// How [`conv2d`] with `options` over `shape` is computed; `cpu` says whether the operands are
/// on the CPU, `input_traced` whether the input is traced (so its gradient may be asked for).
/// Panics when [`ConvAlgorithm::ShiftedRows`] is asked for what it cannot do: a stride above 1
/// with a dilation above 1.
fn plan(options: &Conv2dOptions, shape: &Extents, cpu: bool, input_traced: bool) -> Plan {
    let unit = options.stride == (1, 1);
    let phases = (!unit)
        .then(|| Phases::new(options, shape.kernel, shape.image, shape.out))
        .flatten();
    // Strided shifted rows are taken only where the phases exist.
    match (shifted_rows(options, shape, cpu, input_traced, phases.as_ref()), phases) {
        (false, _) => Plan::Windows,
        (true, None) => Plan::ShiftedRows,
        (true, Some(p)) => Plan::Phases(p),
    }
}

/// Whether [`plan`] takes the shifted rows (`phases`: the phase images of a strided
/// convolution, where they exist).
fn shifted_rows(
    options: &Conv2dOptions,
    shape: &Extents,
    cpu: bool,
    input_traced: bool,
    phases: Option<&Phases>,
) -> bool {
    let unit = options.stride == (1, 1);
    let (kernel, out) = (shape.kernel, shape.out);
    match options.algorithm {
        ConvAlgorithm::Windows => false,
        ConvAlgorithm::ShiftedRows if !unit && phases.is_none() => panic!(
            "conv2d: ConvAlgorithm::ShiftedRows needs stride (1, 1) or dilation (1, 1) and padding smaller than the \
             padded image, got stride {:?}, dilation {:?}, padding {:?}; use ConvAlgorithm::Auto or Windows",
            options.stride, options.dilation, options.padding
        ),
        ConvAlgorithm::ShiftedRows => true,
        ConvAlgorithm::Auto => {
            let (inputs, outputs) = shape.channels;
            // The product the shifted rows compute: per output row, every position of a padded
            // row (of a phase image when strided), over inputs and taps.
            let row = match phases {
                None if unit => shape.image.1 + 2 * options.padding.1,
                None => return false,
                Some(p) => p.image.1,
            };
            let depth = inputs * kernel.0 * kernel.1;
            let work = depth.saturating_mul(outputs).saturating_mul(out.0 * row);
            // Strided: an input whose gradient nobody can ask for (its gradient, one product
            // per phase image, lost to the windows' col2im: docs/benchmarks.md, stop 27), deep
            // enough products, and a kernel that reads every phase image (a 1x1 kernel at
            // stride 2 reads a quarter of the split image; its windows are a subsampling copy).
            let deep = if unit {
                inputs >= 8
            } else {
                !input_traced && depth >= 64 && kernel.0 >= options.stride.0 && kernel.1 >= options.stride.1
            };
            cpu && deep && work >= 1 << 20
        }
    }
}

/// A strided convolution's padded image split into its phase images ("space to depth"): with
/// stride `(sh, sw)`, image `(a, b)` is `x[a::sh, b::sw]`, and kernel tap `(i, j)` reads image
/// `(i % sh, j % sw)` at the stride-1 shift of tap `(i / sh, j / sw)`, so output `(oh, ow)` is
/// a stride-1 sum of shifted rows ([`TapGrid`] with phases).
struct Phases {
    /// The stride.
    stride: (usize, usize),
    /// Extent of each phase image: the output, the spread of the taps of phase `(0, 0)` (the
    /// most taps) and, where the last tap reads past a row, one more row of zeros (as
    /// [`conv2d_taps`]).
    image: (usize, usize),
}

impl Phases {
    /// The phases of a strided convolution, or `None` when dilated or padded so far that the
    /// phase images would start past the padding (then the windows serve).
    fn new(
        options: &Conv2dOptions,
        kernel: (usize, usize),
        image: (usize, usize),
        out: (usize, usize),
    ) -> Option<Self> {
        let (sh, sw) = options.stride;
        let taps = (kernel.0.div_ceil(sh), kernel.1.div_ceil(sw));
        let tail = usize::from(taps.1 > 1);
        let phases = Phases {
            stride: (sh, sw),
            image: (out.0 + taps.0 - 1 + tail, out.1 + taps.1 - 1),
        };
        let (ph, pw) = options.padding;
        let inside = phases.image.0 * sh > ph && phases.image.1 * sw > pw && image.0 > 0 && image.1 > 0;
        (options.dilation == (1, 1) && inside).then_some(phases)
    }
}

/// A strided [`conv2d`] as one shifted-row product over its phase images ([`Phases`]): the
/// padded image is cropped or padded to `image * stride` pixels each way (rows no output reads
/// are dropped) and split into `[N, C, sh * sw * image]` rows by one copy; the kernel is used as
/// it is, each tap reading its phase image. No im2col matrix and no zero taps.
fn conv2d_phases(x: &Tensor, w: &Tensor, options: Conv2dOptions, p: &Phases, (oh, ow): (usize, usize)) -> Tensor {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let ((sh, sw), (hq, wq)) = (p.stride, p.image);
    let (ph, pw) = options.padding;
    // Rows and columns of x inside the `hq * sh` by `wq * sw` padded image.
    let (keep_h, keep_w) = (h.min(hq * sh - ph), wd.min(wq * sw - pw));
    let cropped = if (keep_h, keep_w) == (h, wd) {
        x.clone()
    } else {
        x.slice_axis(2, Some(0), Some(keep_h as isize), 1)
            .slice_axis(3, Some(0), Some(keep_w as isize), 1)
    };
    let padded = cropped.pad(&[(0, 0), (0, 0), (ph, hq * sh - ph - keep_h), (pw, wq * sw - pw - keep_w)]);
    let g = options.groups;
    let rows = padded
        .reshape([n, c, hq, sh, wq, sw])
        .permute(&[0, 1, 3, 5, 2, 4])
        .reshape([n, g, cg, sh * sw * hq * wq]);
    let taps = TapGrid {
        phases: (sh, sw),
        plane: (hq * wq) as isize,
        ..TapGrid::shifts(0, (kh, kw), (wq as isize, 1), oh * wq)
    };
    let wm = w.reshape([g, o / g, cg * kh * kw]);
    crop_columns(tap_matmul(&wm, &rows, taps).reshape([n, o, oh, wq]), ow)
}

/// `y` `[N, O, OH, W]` cut to its first `ow` columns.
fn crop_columns(y: Tensor, ow: usize) -> Tensor {
    if y.shape()[3] == ow {
        y
    } else {
        y.slice_axis(3, Some(0), Some(ow as isize), 1)
    }
}

/// A stride-1 [`conv2d`] without an im2col matrix: the padded images are flattened to rows of
/// `Hp * Wp` pixels, tap `(i, j)` of the kernel is the row shifted by `i * dilation.0 * Wp + j *
/// dilation.1`, and the output is computed at positions `oh * Wp + ow` for every `ow < Wp`
/// (`Wp - OW` of them per row are dropped after: 3.5 % extra work for a 3x3 kernel over 56x56
/// images). Where the last tap would read past the row, one more row of zeros is padded below.
fn conv2d_taps(x: &Tensor, w: &Tensor, options: Conv2dOptions, out: (usize, usize)) -> Tensor {
    let kw = w.shape()[3];
    let (ph, pw) = options.padding;
    let tail = usize::from(kw > 1);
    let padded = if ph + pw + tail > 0 {
        x.pad(&[(0, 0), (0, 0), (ph, ph + tail), (pw, pw)])
    } else {
        x.clone()
    };
    taps_over_padded(&padded, w, options.groups, options.dilation, out)
}

/// The shifted-row product of padded images `[N, C, Hp, Wp]` with `w` `[O, C / groups, KH,
/// KW]` at stride 1, cropped to `(oh, ow)`; the rows must hold every tap's run of `oh * Wp`
/// positions (the callers pad them).
fn taps_over_padded(
    padded: &Tensor,
    w: &Tensor,
    g: usize,
    (dh, dw): (usize, usize),
    (oh, ow): (usize, usize),
) -> Tensor {
    let (n, hp, wp) = (padded.shape()[0], padded.shape()[2], padded.shape()[3]);
    let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let taps = TapGrid::shifts(0, (kh, kw), ((dh * wp) as isize, dw as isize), oh * wp);
    let rows = padded.reshape([n, g, cg, hp * wp]);
    let wm = w.reshape([g, o / g, cg * kh * kw]);
    crop_columns(tap_matmul(&wm, &rows, taps).reshape([n, o, oh, wp]), ow)
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
