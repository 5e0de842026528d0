//! Sliding 2-D windows: the generated `nb_unfold_*` (im2col, one thread per column element)
//! and `nb_fold_*` (col2im, one thread per pixel adding its taps in order, no atomics) kernels,
//! one launch each over a dense copy of the input when it is a view.

use nabla_core::backend::Window2d;
use nabla_core::storage::RawTensor;
use nabla_kernels::{FoldSpec, KernelError, KernelSpec, UnfoldSpec, launch};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

pub(super) fn unfold_windows<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor, win: &Window2d) -> RawTensor {
    win.require("unfold_windows", x.shape(), &[win.image.0, win.image.1]);
    let mut shape = x.shape()[..x.shape().len() - 2].to_vec();
    let images = shape.iter().product();
    shape.extend([win.taps(), win.out.0, win.out.1]);
    let s = UnfoldSpec::new(kernel_dtype(x.dtype())).map(KernelSpec::from);
    window_kernel(be, s, "unfold_windows", x, (&shape, images), win)
}

pub(super) fn fold_windows<A: DeviceApi>(be: &CudaBackend<A>, cols: &RawTensor, win: &Window2d) -> RawTensor {
    win.require("fold_windows", cols.shape(), &[win.taps(), win.out.0, win.out.1]);
    let mut shape = cols.shape()[..cols.shape().len() - 3].to_vec();
    let images = shape.iter().product();
    shape.extend([win.image.0, win.image.1]);
    let s = FoldSpec::new(kernel_dtype(cols.dtype())).map(KernelSpec::from);
    window_kernel(be, s, "fold_windows", cols, (&shape, images), win)
}

/// Launches the window kernel `s` from `x` into a new tensor of `shape` holding `images`
/// images (the product of the leading axes), one thread per output element.
fn window_kernel<A: DeviceApi>(
    be: &CudaBackend<A>,
    s: Result<KernelSpec, KernelError>,
    name: &str,
    x: &RawTensor,
    (shape, images): (&[usize], usize),
    win: &Window2d,
) -> RawTensor {
    let x = be.dense(x);
    let out = be.empty(shape, x.dtype());
    let n = out.layout().numel() as i64;
    if n == 0 {
        return out;
    }
    let s = spec(s, name);
    be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| {
        let v = |v: usize| LaunchArg::I64(v as i64);
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "x" | "cols" => be.run_ptr(&x),
            "batches" => v(images),
            "height" => v(win.image.0),
            "width" => v(win.image.1),
            "kernel_h" => v(win.kernel.0),
            "kernel_w" => v(win.kernel.1),
            "stride_h" => v(win.stride.0),
            "stride_w" => v(win.stride.1),
            "dilation_h" => v(win.dilation.0),
            "dilation_w" => v(win.dilation.1),
            "out_h" => v(win.out.0),
            "out_w" => v(win.out.1),
            _ => return None,
        })
    });
    out
}
