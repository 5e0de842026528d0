//! The `Backend` trait: the kernels every device must provide, and the registry that maps a
//! [`Device`] to its backend. The CPU backend is built in; other crates register theirs.

pub mod cpu;
pub mod taps;

pub use taps::TapGrid;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::device::Device;
use crate::dtype::DType;
use crate::storage::{CpuBuffer, RawTensor};

/// Elementwise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `e^x`
    Exp,
    /// natural logarithm
    Log,
    /// `log(1 + x)`
    Log1p,
    /// square root
    Sqrt,
    /// `1 / sqrt(x)`
    Rsqrt,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// hyperbolic tangent
    Tanh,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// absolute value
    Abs,
    /// -1, 0 or 1
    Sign,
    /// `max(x, 0)`
    Relu,
    /// logical not (bool)
    Not,
    /// the error function `2/sqrt(pi) * integral from 0 to x of e^(-t^2)`
    Erf,
    /// largest integer not above `x`
    Floor,
    /// smallest integer not below `x`
    Ceil,
    /// nearest integer, ties to even (as NumPy and JAX)
    Round,
    /// integer part (toward zero)
    Trunc,
    /// GELU, tanh approximation: `0.5 x (1 + tanh(c (x + 0.044715 x^3)))`, `c = sqrt(2/pi)`
    Gelu,
    /// the derivative of [`UnaryOp::Gelu`]: `0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 0.044715 x^2)`
    /// with `t` the tanh above
    GeluDerivative,
    /// GELU without approximation: `0.5 x (1 + erf(x / sqrt(2)))`
    GeluExact,
    /// the derivative of [`UnaryOp::GeluExact`]: `0.5 (1 + erf(x / sqrt(2))) + x e^(-x^2/2) / sqrt(2 pi)`
    GeluExactDerivative,
}

/// `sqrt(2 / pi)`, the scale inside GELU's tanh approximation (computed as JAX computes it).
pub fn gelu_tanh_scale() -> f64 {
    (2.0 / std::f64::consts::PI).sqrt()
}

/// The cubic coefficient inside GELU's tanh approximation.
pub const GELU_CUBIC: f64 = 0.044715;

/// `1 / sqrt(2 pi)`, the standard normal density's scale (in the exact GELU's derivatives).
pub const NORMAL_DENSITY_SCALE: f64 = 0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;

/// Elementwise functions of two operands of the same shape and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b`
    Pow,
    /// larger of the two
    Maximum,
    /// smaller of the two
    Minimum,
    /// logical and (bool)
    And,
    /// logical or (bool)
    Or,
    /// logical exclusive or (bool)
    Xor,
}

/// Elementwise comparisons; the result is bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
}

/// Reductions over axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// sum
    Sum,
    /// product
    Prod,
    /// maximum
    Max,
    /// minimum
    Min,
}

/// Index-of-extremum reductions over one axis; the result is i64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArgOp {
    /// index of the first maximum
    ArgMax,
    /// index of the first minimum
    ArgMin,
}

/// Normalisations of every row (the last axis), fused into one pass over the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowOp {
    /// `exp(x - max) / sum(exp(x - max))`
    Softmax,
    /// `x - log(sum(exp(x)))`, shifted by the row's maximum when it is finite
    LogSoftmax,
    /// Softmax of the entries `j <= i` of every row, `i` the row's index along the
    /// second-to-last axis (a query's position), and 0 for the others: causal attention's
    /// masked softmax, top-left aligned, without a mask tensor (the input has at least two
    /// axes). Its backward rows are softmax's.
    CausalSoftmax,
}

/// The constant scalars of Adam (or AdamW) updates, as [`Backend::adam_update`] takes them; the
/// step number, which changes every update, is a tensor beside them (so that a `jit` replay
/// reads the current one).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the square root of the second moment.
    pub eps: f64,
    /// Weight decay (0 for none).
    pub weight_decay: f64,
    /// AdamW: decay the weights directly (`p - lr wd p`) instead of adding `wd p` to the
    /// gradient.
    pub decoupled: bool,
}

/// The scalars of one SGD update (PyTorch's `torch.optim.SGD` without dampening): the gradient
/// `g + weight_decay * p`, the velocity `momentum * v + g`, and the step along the velocity,
/// or along `g + momentum * v'` with Nesterov momentum (along `g` without momentum).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 for none: no velocity).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 penalty added to the gradient (0 for none).
    pub weight_decay: f64,
}

/// The geometry of a 2-D sliding window over the last two axes of an image (`im2col` and
/// `col2im`): tap `(i, j)` of window `(oh, ow)` reads pixel `(i * dilation.0 + oh * stride.0,
/// j * dilation.1 + ow * stride.1)`; taps are numbered `i * kernel.1 + j`. Pairs are (height,
/// width). The windows fit the image (padding is applied before).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// Height and width of the image the windows slide over.
    pub image: (usize, usize),
    /// Taps of a window.
    pub kernel: (usize, usize),
    /// Step between windows.
    pub stride: (usize, usize),
    /// Step between the taps of one window.
    pub dilation: (usize, usize),
    /// Windows along each axis.
    pub out: (usize, usize),
}

impl Window2d {
    /// Taps per window, `kernel.0 * kernel.1` (saturating: [`Window2d::fits`] refuses the
    /// sizes where it would overflow).
    pub fn taps(&self) -> usize {
        self.kernel.0.saturating_mul(self.kernel.1)
    }

    /// Whether every tap of every window lies inside the image, and there is at least one
    /// window and one tap (what the backends' window kernels require).
    pub fn fits(&self) -> bool {
        let fits_axis = |image: usize, k: usize, s: usize, d: usize, o: usize| {
            let last = (k.wrapping_sub(1))
                .checked_mul(d)
                .zip((o.wrapping_sub(1)).checked_mul(s));
            k > 0 && o > 0 && s > 0 && d > 0 && last.and_then(|(a, b)| a.checked_add(b)).is_some_and(|l| l < image)
        };
        let sizes = [
            self.image.0,
            self.image.1,
            self.kernel.0,
            self.kernel.1,
            self.out.0,
            self.out.1,
        ];
        fits_axis(self.image.0, self.kernel.0, self.stride.0, self.dilation.0, self.out.0)
            && fits_axis(self.image.1, self.kernel.1, self.stride.1, self.dilation.1, self.out.1)
            && sizes.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).is_some()
    }

    /// Panics naming `op` unless the windows fit (see [`Window2d::fits`]) and `shape` ends
    /// with `trailing` (the image's or the columns' extents): for backends, whose callers
    /// (the op layer) check this first.
    pub fn require(&self, op: &str, shape: &[usize], trailing: &[usize]) {
        if !self.fits() || !shape.ends_with(trailing) {
            panic!("internal error: {op} of shape {shape:?} does not match the window {self:?}");
        }
    }

    /// The extents of the image inside `padding`, where `image` is the padded extents
    /// (pooling's windows, read in place, see [`Backend::pool_sum`]).
    pub fn unpadded(&self, padding: &Padding2d) -> (usize, usize) {
        (
            self.image.0.saturating_sub(padding.before.0 + padding.after.0),
            self.image.1.saturating_sub(padding.before.1 + padding.after.1),
        )
    }

    /// The trailing extents of the input and of the output of [`Backend::pool_sum`] (the image
    /// inside `padding`, and the windows; swapped with `transpose`).
    pub fn pool_sum_extents(&self, padding: &Padding2d, transpose: bool) -> ([usize; 2], [usize; 2]) {
        let (h, w) = self.unpadded(padding);
        let (image, windows) = ([h, w], [self.out.0, self.out.1]);
        if transpose { (windows, image) } else { (image, windows) }
    }

    /// Whether every window holds at least one pixel of the image inside `padding` (and the
    /// image has pixels): what max pooling read in place needs, since padding is never chosen.
    pub fn every_window_holds_a_pixel(&self, padding: &Padding2d) -> bool {
        let (h, w) = self.unpadded(padding);
        // Window `o` covers padded rows `o * stride..o * stride + kernel`; the image is rows
        // `before..before + extent`. The first window reaches past the padding before, the
        // last starts inside the image.
        let axis = |extent: usize, before: usize, kernel: usize, stride: usize, out: usize| {
            extent > 0
                && kernel > before
                && out
                    .checked_sub(1)
                    .and_then(|last| last.checked_mul(stride))
                    .is_some_and(|start| start < before + extent)
        };
        axis(h, padding.before.0, self.kernel.0, self.stride.0, self.out.0)
            && axis(w, padding.before.1, self.kernel.1, self.stride.1, self.out.1)
    }

    /// Panics unless `shape` and `padding` fit [`Backend::pool_sum`] of this window (`transpose`
    /// as there): for backends, whose op layer checks this first. Returns the trailing extents
    /// of the input and the output.
    pub fn require_pool_sum(&self, shape: &[usize], padding: &Padding2d, transpose: bool) -> ([usize; 2], [usize; 2]) {
        let (from, to) = self.pool_sum_extents(padding, transpose);
        self.require("pool_sum", shape, &from);
        let (before, after) = (padding.before, padding.after);
        if before.0 + after.0 > self.image.0 || before.1 + after.1 > self.image.1 || self.dilation != (1, 1) {
            panic!("internal error: pool_sum with padding {padding:?} of the window {self:?}");
        }
        (from, to)
    }

    /// Panics unless `shape` and `padding` fit [`Backend::pool_argmax`] of this window (every
    /// window holds a pixel): for backends, whose op layer checks this first. Returns the
    /// image's extents inside the padding.
    pub fn require_pool_argmax(&self, shape: &[usize], padding: &Padding2d) -> (usize, usize) {
        let image = self.unpadded(padding);
        self.require("pool_argmax", shape, &[image.0, image.1]);
        if !self.every_window_holds_a_pixel(padding) || self.dilation != (1, 1) {
            panic!(
                "internal error: pool_argmax with padding {padding:?} of the window {self:?}: a window holds \
                 padding alone"
            );
        }
        image
    }

    /// The pixel `(row, column)` that tap `(i, j)` of window `(oh, ow)` reads.
    pub fn pixel(&self, (i, j): (usize, usize), (oh, ow): (usize, usize)) -> (usize, usize) {
        (
            i * self.dilation.0 + oh * self.stride.0,
            j * self.dilation.1 + ow * self.stride.1,
        )
    }
}

/// Zero (or never chosen) padding around the last two axes of an image, `(height, width)` on
/// each side: before (top, left) and after (bottom, right). Pooling with PyTorch's `ceil_mode`
/// pads more after than before, so that the last window fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Padding2d {
    /// Rows above and columns left of the image.
    pub before: (usize, usize),
    /// Rows below and columns right of the image.
    pub after: (usize, usize),
}

impl Padding2d {
    /// The same padding on both sides.
    pub fn symmetric(padding: (usize, usize)) -> Padding2d {
        Padding2d {
            before: padding,
            after: padding,
        }
    }
}

/// An index check: the accepted range of some indices, and the message for one outside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IndexCheck {
    /// The extent of the indexed axis.
    pub extent: usize,
    /// Whether `-extent..0` is accepted too (counting from the end).
    pub wrap_negative: bool,
    /// The message for an index outside the range, with `{index}` where the index goes.
    pub message: String,
}

impl IndexCheck {
    /// The message for the offending index `index`.
    pub fn describe(&self, index: i64) -> String {
        self.message.replace("{index}", &index.to_string())
    }

    /// `index` wrapped into `0..extent`, or `None` when it is outside the accepted range.
    pub fn wrap(&self, index: i64) -> Option<i64> {
        let n = self.extent as i64;
        match index {
            i if (0..n).contains(&i) => Some(i),
            i if self.wrap_negative && (-n..0).contains(&i) => Some(i + n),
            _ => None,
        }
    }
}

/// The kernels of one device family. Inputs arrive checked: shapes agree (binary operands are
/// already broadcast views of one shape), dtypes agree, axes are in range. Outputs are new
/// contiguous tensors on the same device.
pub trait Backend: Send + Sync {
    /// A short name for messages (`cpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// Elementwise function of one operand; same dtype out (bool for `Not`).
    fn unary(&self, op: UnaryOp, x: &RawTensor) -> RawTensor;
    /// Elementwise function of two operands of one shape and dtype.
    fn binary(&self, op: BinaryOp, a: &RawTensor, b: &RawTensor) -> RawTensor;
    /// Elementwise comparison of two operands of one shape and dtype, giving bool.
    fn compare(&self, op: CmpOp, a: &RawTensor, b: &RawTensor) -> RawTensor;
    /// `cond ? a : b` elementwise; all three of one shape, `cond` bool.
    fn select(&self, cond: &RawTensor, a: &RawTensor, b: &RawTensor) -> RawTensor;
    /// Reduces `axes` (sorted, distinct) keeping them as extent-1 axes.
    fn reduce(&self, op: ReduceOp, x: &RawTensor, axes: &[usize]) -> RawTensor;
    /// Index of the extremum along `axis`, keeping it as an extent-1 axis; i64.
    fn arg_reduce(&self, op: ArgOp, x: &RawTensor, axis: usize) -> RawTensor;
    /// `[..., m, k] x [..., k, n] -> [..., m, n]`; the leading (batch) extents are equal.
    fn matmul(&self, a: &RawTensor, b: &RawTensor) -> RawTensor;
    /// Softmax or log-softmax of every row of a float tensor (the last axis), in one pass:
    /// shifted by the row's maximum (log-softmax shifts by 0 when the maximum is not finite,
    /// as `logsumexp` does), accumulated in f32 for halves and f64 for f64. Same shape and
    /// dtype out, contiguous.
    fn softmax_rows(&self, op: RowOp, x: &RawTensor) -> RawTensor;
    /// `(x - mean) / sqrt(var + eps)` of every row of a float tensor (the last axis), in one
    /// pass per row: the mean, then the mean squared deviation (two passes over the row, as
    /// the composition computes it), accumulated in f32 for halves. Same shape and dtype out,
    /// contiguous.
    fn layer_norm_rows(&self, x: &RawTensor, eps: f64) -> RawTensor;
    /// The layer norm's Jacobian product `rstd (v - mean(v) - y mean(v y))` of every row (its
    /// VJP and JVP: the Jacobian is symmetric), with `rstd = 1 / sqrt(var(x) + eps)` formed as
    /// [`Backend::layer_norm_rows`] forms it and `y` that function's output; `x`, `y` and `v`
    /// of one shape and float dtype. One pass per row where the composition took thirteen
    /// kernels. Same shape and dtype out, contiguous.
    fn layer_norm_rows_backward(&self, x: &RawTensor, y: &RawTensor, v: &RawTensor, eps: f64) -> RawTensor;
    /// The backward rows of [`Backend::softmax_rows`], from its output `y` and a cotangent `v`
    /// of one shape and float dtype: `y (v - sum(y v))` for softmax (its Jacobian product,
    /// symmetric, so the VJP and the JVP) and `v - exp(y) sum(v)` for log-softmax (its VJP),
    /// the row sum accumulated in f32 for halves. One pass per row where the composition took
    /// four kernels. Same shape and dtype out, contiguous.
    fn softmax_rows_backward(&self, op: RowOp, y: &RawTensor, v: &RawTensor) -> RawTensor;
    /// Softmax cross-entropy of every row of the float `x` (the last axis: the classes) against
    /// `labels` (i64, `x`'s shape without the last axis, already checked and wrapped into
    /// `0..classes`): `logsumexp(x_r) - x_r[label_r]`, with the shift and the sum of the
    /// log-softmax rows ([`Backend::softmax_rows`]), accumulated in f32 for halves. One pass
    /// per row. The shape of `labels` and the dtype of `x` out, contiguous.
    fn cross_entropy_rows(&self, x: &RawTensor, labels: &RawTensor) -> RawTensor;
    /// The VJP of [`Backend::cross_entropy_rows`]: `(softmax(x_r) - one_hot(label_r)) g[r]` of
    /// every row, with `g` (the rows' cotangent, shaped like `labels`, of `x`'s dtype). One
    /// pass per row where the composition took about six kernels. The shape and dtype of `x`
    /// out, contiguous.
    fn cross_entropy_rows_backward(&self, x: &RawTensor, labels: &RawTensor, g: &RawTensor) -> RawTensor;
    /// One Adam update of a parameter, all four operands of one shape and float dtype, at step
    /// `t` (`count`: one i64 element on this device, 1 for the first update):
    /// `g' = g + wd p` (unless decoupled), `m' = b1 m + (1 - b1) g'`,
    /// `v' = b2 v + (1 - b2) g'^2`, `p' = p - lr (m' / bias1) / (sqrt(v' / bias2) + eps)`, then
    /// `p' -= lr wd p` when decoupled, with `bias_k = 1 - b_k^t` (`powf` in f64). Each scalar
    /// is formed in f64 and rounded once, and each operation is rounded in the compute type
    /// (f32 for halves) in that order. Returns `[3, ..shape]`: `p'`, `m'` and `v'` stacked,
    /// contiguous.
    fn adam_update(
        &self,
        param: &RawTensor,
        grad: &RawTensor,
        m: &RawTensor,
        v: &RawTensor,
        count: &RawTensor,
        step: &AdamStep,
    ) -> RawTensor;
    /// One SGD update of a parameter in one pass: `[p']` without `velocity`, `[p', v']` with it,
    /// stacked as `[k, ..shape]` contiguous (the formula on [`SgdStep`]), each operation rounded
    /// in the element type in that order (f32 for halves). `param`, `grad` and `velocity` are
    /// one shape and float dtype. `None`, the default, where the backend has no kernel: the op
    /// then composes elementwise ops.
    fn sgd_update(
        &self,
        _param: &RawTensor,
        _grad: &RawTensor,
        _velocity: Option<&RawTensor>,
        _step: &SgdStep,
    ) -> Option<RawTensor> {
        None
    }
    /// im2col: every tap of every window of `x` `[.., H, W]` (`H, W` = `window.image`), as
    /// `[.., KH * KW, OH, OW]` contiguous; any dtype.
    fn unfold_windows(&self, x: &RawTensor, window: &Window2d) -> RawTensor;
    /// Max pooling's choice: the position in `x` `[.., H, W]` (float; counted in the order of its
    /// elements, row-major) of the first maximum of every window over `x` inside `padding`
    /// (`window.image` is the padded extents, dilation 1, and every window holds a pixel, see
    /// [`Window2d::every_window_holds_a_pixel`]; padding is never chosen; the first NaN of a
    /// window is its maximum), `[.., OH * OW]` i64 contiguous. `None`, the default, where the
    /// backend has no kernel: the op then takes the maximum over the window tensor (im2col).
    fn pool_argmax(&self, _x: &RawTensor, _window: &Window2d, _padding: &Padding2d) -> Option<RawTensor> {
        None
    }
    /// Average pooling's window sums read in place: `scale` times the sum of every window of `x`
    /// `[.., H, W]` (float) inside `padding` zeros (`window.image` is the padded extents,
    /// dilation 1), `[.., OH, OW]` contiguous, taps added in row-major order from
    /// zero (in f32 for halves); with `transpose`, the transpose of that map, from `x` `[.., OH,
    /// OW]` to `[.., H, W]`: every pixel `scale` times the sum of the windows covering it, in
    /// tap order. The two are each other's gradient. `None`, the default, where the backend has
    /// no kernel (a backend implements both or neither): the op then averages the window tensor
    /// (im2col).
    fn pool_sum(
        &self,
        _x: &RawTensor,
        _window: &Window2d,
        _padding: &Padding2d,
        _scale: f64,
        _transpose: bool,
    ) -> Option<RawTensor> {
        None
    }
    /// col2im, the transpose of [`Backend::unfold_windows`]: `cols` `[.., KH * KW, OH, OW]`
    /// (float) added back into `[.., H, W]` contiguous, every pixel the sum of the taps that read
    /// it, added from zero in tap order (row-major `(i, j)`) in f32 for halves.
    fn fold_windows(&self, cols: &RawTensor, window: &Window2d) -> RawTensor;
    /// `w` `[.., O, C * T]` times the implicit matrix of the taps of `x` `[.., C, L]` (see
    /// [`TapGrid`]): `out[.., o, j] = sum over c, t of w[.., o, c * T + t] * x[.., c,
    /// start(t) + j]`, `[.., O, len]` contiguous. Floats; the leading axes are already
    /// broadcast to one shape and the taps fit the rows. The default gathers the matrix and
    /// multiplies ([`taps::tap_matmul_composed`]).
    fn tap_matmul(&self, w: &RawTensor, x: &RawTensor, taps: &TapGrid) -> RawTensor {
        taps::tap_matmul_composed(self, w, x, taps)
    }
    /// `dy` `[.., O, len]` times the transposed implicit matrix of the taps of `x` `[.., C,
    /// L]`: `out[.., o, c * T + t] = sum over j of dy[.., o, j] * x[.., c, start(t) + j]`, `[..,
    /// O, C * T]` contiguous (a convolution's weight gradient per image). As
    /// [`Backend::tap_matmul`] otherwise.
    fn tap_outer(&self, dy: &RawTensor, x: &RawTensor, taps: &TapGrid) -> RawTensor {
        taps::tap_outer_composed(self, dy, x, taps)
    }
    /// Fused scaled dot-product attention of every matrix of `q` `[.., Lq, D]`, `k` `[.., Lk,
    /// D]` and `v` `[.., Lk, Dv]` (float, one dtype, the leading axes already broadcast to one
    /// shape): `softmax(scale * q k^T) v`, where a causal query `i` keeps keys `0..=i`
    /// (top-left aligned) and `mask` (bool `[.., Lq, Lk]`, a view of that leading shape,
    /// broadcast where it was) keeps the keys where it is true, packed as `[.., Lq, Dv + 2]`
    /// contiguous: the output, then each query's softmax statistics over the keys it keeps, the maximum `m` of its raw scores
    /// `q k^T` and `sum(exp(scale (s - m)))` (what [`Backend::attention_backward`] reads to
    /// form the probabilities again; a query that keeps no key gets output 0 and statistics
    /// `(-inf, 0)`). No `[.., Lq, Lk]` tensor is formed. `None`, the default, where the backend has
    /// no fused kernel for these operands: the op layer then composes the attention from
    /// products and softmax rows.
    fn attention(
        &self,
        _q: &RawTensor,
        _k: &RawTensor,
        _v: &RawTensor,
        _mask: Option<&RawTensor>,
        _scale: f64,
        _causal: bool,
    ) -> Option<RawTensor> {
        None
    }
    /// The VJP of [`Backend::attention`]: from `q`, `k`, `v`, `mask`, its packed output `packed` and the
    /// output's cotangent `d_o` `[.., Lq, Dv]` (one leading shape), the gradients of `q`, `k`
    /// and `v` of every matrix, packed as `[.., Lq * D + Lk * D + Lk * Dv]` contiguous (each
    /// row-major). `None`, the default, where [`Backend::attention`] gives `None`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        _q: &RawTensor,
        _k: &RawTensor,
        _v: &RawTensor,
        _mask: Option<&RawTensor>,
        _packed: &RawTensor,
        _d_o: &RawTensor,
        _scale: f64,
        _causal: bool,
    ) -> Option<RawTensor> {
        None
    }
    /// The mean and biased variance of every channel `c` of `x` `[A, C, B]` (float) over its
    /// `A * B` values (batch normalisation's statistics), as `[2, C]` contiguous in `x`'s
    /// dtype: the means, then the variances (computed from the deviations, in f32 for
    /// halves). `None`, the default, where the backend has no fused kernel: the op layer then
    /// composes them from reductions.
    fn channel_moments(&self, _x: &RawTensor) -> Option<RawTensor> {
        None
    }
    /// `(x - mean) scale + shift` per channel of `x` `[A, C, B]` (float), with `mean`, `scale`
    /// and `shift` `[C]` in its dtype (batch normalisation's output, one pass where the
    /// broadcast ops took two or three); contiguous out. `None`, the default, where the backend
    /// has no fused kernel.
    fn channel_scale_shift(
        &self,
        _x: &RawTensor,
        _mean: &RawTensor,
        _scale: &RawTensor,
        _shift: &RawTensor,
    ) -> Option<RawTensor> {
        None
    }
    /// The Jacobian product of the per-channel standardisation `y = (x - mean) rstd` of a
    /// `[A, C, B]` tensor at `v` (its VJP and JVP: the Jacobian is symmetric): `rstd (v -
    /// mean(v) - y mean(v y))` per channel, from the output `y`, `v` (one shape and float
    /// dtype) and the channels' `rstd` `[C]` (that dtype); contiguous out. `None`, the default,
    /// where [`Backend::channel_moments`] gives `None`.
    fn channel_norm_backward(&self, _y: &RawTensor, _v: &RawTensor, _rstd: &RawTensor) -> Option<RawTensor> {
        None
    }
    /// Batch normalisation's backward pass over `x` `[A, C, B]` with the output's cotangent `g`
    /// (one shape and float dtype), the channels' `mean`, `rstd` and scale `gamma` (`[C]`,
    /// that dtype), for `y = (x - mean) rstd gamma + beta`: with `x_hat = (x - mean) rstd`,
    /// `s1 = sum(g)` and `s2 = sum(g x_hat)` per channel, packed as `[A * C * B + 2 C]`
    /// contiguous: `dx = gamma rstd (g - s1 / n - x_hat s2 / n)`, then `dgamma = s2`, then
    /// `dbeta = s1`. `None`, the default, where the backend has no fused kernel.
    fn batch_norm_backward(
        &self,
        _x: &RawTensor,
        _g: &RawTensor,
        _mean: &RawTensor,
        _rstd: &RawTensor,
        _gamma: &RawTensor,
    ) -> Option<RawTensor> {
        None
    }
    /// Batch normalisation's per-channel sums over this process's `x` `[A, C, B]` with the
    /// output's cotangent `g` (one shape and float dtype) and the channels' `mean` and `rstd`
    /// (`[C]`, that dtype): `sum(g x_hat)` then `sum(g)` per channel, with `x_hat = (x - mean)
    /// rstd`, as `[2, C]` contiguous in f32 (f64 for f64 inputs), so that ranks can add them
    /// before [`Backend::batch_norm_backward_input`] (synchronised batch norm). `None`, the
    /// default, where the backend has no fused kernel.
    fn batch_norm_backward_sums(
        &self,
        _x: &RawTensor,
        _g: &RawTensor,
        _mean: &RawTensor,
        _rstd: &RawTensor,
    ) -> Option<RawTensor> {
        None
    }
    /// Batch normalisation's input gradient over `x` `[A, C, B]` with the cotangent `g`, the
    /// channels' `mean`, `rstd` and `gamma` (as for [`Backend::batch_norm_backward`]) and
    /// per-channel `means` `[2, C]` (f32, f64 for f64 inputs: `mean(g x_hat)` then `mean(g)` over
    /// the batch the statistics came from, which may span ranks): `dx = gamma rstd (g - means[1] -
    /// x_hat means[0])`, contiguous in `x`'s dtype. `None`, the default, where the backend has no
    /// fused kernel.
    fn batch_norm_backward_input(
        &self,
        _x: &RawTensor,
        _g: &RawTensor,
        _mean: &RawTensor,
        _rstd: &RawTensor,
        _gamma: &RawTensor,
        _means: &RawTensor,
    ) -> Option<RawTensor> {
        None
    }
    /// Converts elements to `dtype`.
    fn cast(&self, x: &RawTensor, dtype: DType) -> RawTensor;
    /// A contiguous copy.
    fn contiguous(&self, x: &RawTensor) -> RawTensor;
    /// `out[b, p, i, q] = x[b, p, idx[b, i], q]` with `x: [B, P, N, Q]`, `idx: [B, I]` (i64,
    /// already in `0..N`).
    fn gather(&self, x: &RawTensor, idx: &RawTensor) -> RawTensor;
    /// `base` plus `upd[b, p, i, q]` added at `[b, p, idx[b, i], q]`; shapes as in `gather`.
    fn scatter_add(&self, base: &RawTensor, idx: &RawTensor, upd: &RawTensor) -> RawTensor;
    /// [`Backend::scatter_add`] into zeros of `[B, P, n, Q]` (`upd` `[B, P, I, Q]`): the
    /// gradient of a take, which needs no base tensor to copy. The default fills the zeros
    /// and scatters into them.
    fn scatter_add_to_zeros(&self, n: usize, idx: &RawTensor, upd: &RawTensor) -> RawTensor {
        let s = upd.shape();
        let zeros = self.full(&[s[0], s[1], n, s[3]], upd.dtype(), 0.0, upd.device());
        self.scatter_add(&zeros, idx, upd)
    }
    /// Joins tensors of equal shapes except along `axis`.
    fn concat(&self, xs: &[&RawTensor], axis: usize) -> RawTensor;
    /// Zeros of `shape` with `x` written at `starts[a] + steps[a] * i` along every axis `a`
    /// (steps positive): the transpose of strided slicing.
    fn embed(&self, x: &RawTensor, shape: &[usize], starts: &[usize], steps: &[usize]) -> RawTensor;
    /// A tensor of `shape` filled with `value` (converted to `dtype`).
    fn full(&self, shape: &[usize], dtype: DType, value: f64, device: Device) -> RawTensor;
    /// `start + i * step` for `i < n`, computed in f64 (one rounding per operation, no fused
    /// multiply-add) and converted to `dtype` as [`Backend::cast`] converts f64: every backend
    /// gives the same values (`arange`, and the index ramps of `one_hot` and `take_along_axis`).
    fn arange(&self, n: usize, start: f64, step: f64, dtype: DType, device: Device) -> RawTensor;
    /// `shape` uniform samples in `[0, 1)` of the float `dtype`, from `key` (an i64 tensor of
    /// one element, on this backend's device): element `i` is a hash of (key, i), identical on
    /// every backend, so a draw does not depend on the device.
    fn random_uniform(&self, key: &RawTensor, shape: &[usize], dtype: DType) -> RawTensor;
    /// Copies a host buffer onto `device`.
    #[allow(clippy::wrong_self_convention)]
    fn from_host(&self, buf: CpuBuffer, shape: &[usize], device: Device) -> RawTensor;
    /// Copies a tensor into a contiguous host buffer.
    fn to_host(&self, x: &RawTensor) -> CpuBuffer;
    /// Checks and wraps i64 indices on the device, without waiting for them: `idx` against
    /// `check`'s range, as a new contiguous tensor with negatives wrapped; an index out of
    /// range is reported (with [`IndexCheck::describe`]) when the host next reads a value from
    /// the device. `None`, the default, means the backend checks no indices itself and the
    /// caller reads them on the host (the CPU, where reading is free).
    fn check_indices(&self, _idx: &RawTensor, _check: &IndexCheck) -> Option<RawTensor> {
        None
    }
    /// Waits for all work queued on this backend's device, and reports a device error found
    /// meanwhile as a read would (a panic naming it). The default does nothing: the CPU does
    /// its work as it is asked.
    fn synchronize(&self) {}
}

type Registry = RwLock<HashMap<&'static str, Arc<dyn Backend>>>;

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| RwLock::new(HashMap::new()))
}

fn family(device: Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
    }
}

/// Registers the backend that computes tensors of `device`'s family (all CUDA ordinals share
/// one backend). Called by device crates at initialisation.
pub fn register_backend(device: Device, backend: Arc<dyn Backend>) {
    registry()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(family(device), backend);
}

/// The backend for `device`, or an error saying that none is registered. While a `jit` call
/// records on this thread, the backend comes wrapped in its recorder.
pub fn try_backend_for(device: Device) -> crate::error::Result<Arc<dyn Backend>> {
    registered_backend(device).map(crate::jit::intercept)
}

/// The registered backend for `device` itself (never wrapped by a `jit` recorder).
pub(crate) fn registered_backend(device: Device) -> crate::error::Result<Arc<dyn Backend>> {
    if device == Device::Cpu {
        return Ok(cpu::cpu_backend());
    }
    registry()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(family(device))
        .cloned()
        .ok_or_else(|| crate::error::Error::DeviceUnavailable {
            device,
            reason: "no backend is registered for it; enable and initialise the nabla-cuda backend".into(),
        })
}

/// Waits until `device` has done all the work queued on it (`torch.cuda.synchronize()`), for
/// timing GPU code; a device error found meanwhile is reported as a read reports it. A no-op
/// on the CPU. Errors when no backend is registered for `device`.
pub fn synchronize(device: Device) -> crate::error::Result<()> {
    registered_backend(device)?.synchronize();
    Ok(())
}

/// The backend for `device`; panics with a hint when none is registered.
pub fn backend_for(device: Device) -> Arc<dyn Backend> {
    try_backend_for(device).unwrap_or_else(|e| panic!("{e}"))
}
