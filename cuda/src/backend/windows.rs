//! Sliding 2-D windows: the generated `nb_unfold_*` (im2col, one thread per column element)
//! and `nb_fold_*` (col2im, one thread per pixel adding its taps in order, no atomics) kernels,
//! and pooling read in place (`nb_pool_sum_*`, `nb_pool_sum_transpose_*`, `nb_pool_argmax_*`:
//! no padded copy), one launch each over a dense copy of the input when it is a view.

use nabla_core::DType;
use nabla_core::backend::{Padding2d, Window2d};
use nabla_core::storage::RawTensor;
use nabla_kernels::{FoldSpec, KernelError, KernelSpec, PoolOp, PoolSpec, UnfoldSpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

pub(super) fn unfold_windows<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor, win: &Window2d) -> RawTensor {
    win.require("unfold_windows", x.shape(), &[win.image.0, win.image.1]);
    let mut shape = x.shape()[..x.shape().len() - 2].to_vec();
    let images = shape.iter().product();
    shape.extend([win.taps(), win.out.0, win.out.1]);
    let s = UnfoldSpec::new(kernel_dtype(x.dtype())).map(KernelSpec::from);
    let out = be.empty(&shape, x.dtype());
    window_kernel(be, s, "unfold_windows", x, (out, images), win, Pooling::None)
}

pub(super) fn fold_windows<A: DeviceApi>(be: &CudaBackend<A>, cols: &RawTensor, win: &Window2d) -> RawTensor {
    win.require("fold_windows", cols.shape(), &[win.taps(), win.out.0, win.out.1]);
    let mut shape = cols.shape()[..cols.shape().len() - 3].to_vec();
    let images = shape.iter().product();
    shape.extend([win.image.0, win.image.1]);
    let s = FoldSpec::new(kernel_dtype(cols.dtype())).map(KernelSpec::from);
    let out = be.empty(&shape, cols.dtype());
    window_kernel(be, s, "fold_windows", cols, (out, images), win, Pooling::None)
}

/// Average pooling's scaled window sums of `x` `[.., H, W]` inside `padding` zeros, or
/// (`transpose`) their transpose from `[.., OH, OW]` to `[.., H, W]` (see
/// `Backend::pool_sum`).
pub(super) fn pool_sum<A: DeviceApi>(
    be: &CudaBackend<A>,
    x: &RawTensor,
    win: &Window2d,
    padding: &Padding2d,
    scale: f64,
    transpose: bool,
) -> RawTensor {
    let (_, to) = win.require_pool_sum(x.shape(), padding, transpose);
    let mut shape = x.shape()[..x.shape().len() - 2].to_vec();
    let images = shape.iter().product();
    shape.extend(to);
    let op = if transpose { PoolOp::SumTranspose } else { PoolOp::Sum };
    let s = PoolSpec::new(op, kernel_dtype(x.dtype())).map(KernelSpec::from);
    let out = be.empty(&shape, x.dtype());
    window_kernel(be, s, op.name(), x, (out, images), win, Pooling::Sum(*padding, scale))
}

/// Max pooling's choice: the flat position in `x` `[.., H, W]` of the first maximum of every
/// window over `x` inside `padding` (see `Backend::pool_argmax`), `[.., OH * OW]` i64.
pub(super) fn pool_argmax<A: DeviceApi>(
    be: &CudaBackend<A>,
    x: &RawTensor,
    win: &Window2d,
    padding: &Padding2d,
) -> RawTensor {
    win.require_pool_argmax(x.shape(), padding);
    let mut shape = x.shape()[..x.shape().len() - 2].to_vec();
    let images = shape.iter().product();
    shape.push(win.out.0 * win.out.1);
    let s = PoolSpec::new(PoolOp::Argmax, kernel_dtype(x.dtype())).map(KernelSpec::from);
    let out = be.empty(&shape, DType::I64);
    window_kernel(be, s, "pool_argmax", x, (out, images), win, Pooling::Argmax(*padding))
}

/// The pooling arguments of a window kernel: none (im2col, col2im), or the padding read in
/// place and, for the sums, their factor.
#[derive(Clone, Copy)]
enum Pooling {
    None,
    Sum(Padding2d, f64),
    Argmax(Padding2d),
}

/// Launches the window kernel `s` from `x` into `out` holding `images` images (the product of
/// the leading axes), one thread per output element. Pooling kernels take the unpadded
/// image's extents as `height` and `width` and the padding before it as `pad_h` and `pad_w`
/// (they bound-check every tap, so the padding after the image needs no argument).
fn window_kernel<A: DeviceApi>(
    be: &CudaBackend<A>,
    s: Result<KernelSpec, KernelError>,
    name: &str,
    x: &RawTensor,
    (out, images): (RawTensor, usize),
    win: &Window2d,
    pooling: Pooling,
) -> RawTensor {
    let x = be.dense(x);
    let (padding, scale) = match pooling {
        Pooling::None => (Padding2d::symmetric((0, 0)), 1.0),
        Pooling::Sum(padding, scale) => (padding, scale),
        Pooling::Argmax(padding) => (padding, 1.0),
    };
    let image = win.unpadded(&padding);
    let n = out.layout().numel() as i64;
    if n == 0 {
        return out;
    }
    let s = spec(s, name);
    be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| {
        let v = |v: usize| LaunchArg::I64(v as i64);
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "x" | "cols" | "v" => be.run_ptr(&x),
            "batches" => v(images),
            "height" => v(image.0),
            "width" => v(image.1),
            "kernel_h" => v(win.kernel.0),
            "kernel_w" => v(win.kernel.1),
            "stride_h" => v(win.stride.0),
            "stride_w" => v(win.stride.1),
            "dilation_h" => v(win.dilation.0),
            "dilation_w" => v(win.dilation.1),
            "out_h" => v(win.out.0),
            "out_w" => v(win.out.1),
            "pad_h" => v(padding.before.0),
            "pad_w" => v(padding.before.1),
            "scale" => LaunchArg::F64(scale),
            _ => return None,
        })
    });
    out
}
