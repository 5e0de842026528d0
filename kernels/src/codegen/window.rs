//! Sliding 2-D windows over the last two axes of a contiguous `[B, H, W]` image: `unfold`
//! (im2col) copies every tap of every window into `[B, KH * KW, OH, OW]`, and `fold` (col2im)
//! adds such taps back into `[B, H, W]`. Each is the other's transpose: together they are a
//! convolution's input side and its input gradient, one launch each.
//!
//! Tap `(i, j)` of window `(oh, ow)` reads pixel `(i * dilation_h + oh * stride_h, j *
//! dilation_w + ow * stride_w)`; taps are numbered `i * KW + j`. The window must fit the
//! image (the caller pads first).

use super::Gen;
use super::fused::floats_only;
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::params::{ArgType, Param};

/// The geometry arguments shared by both kernels, in launch order.
fn geometry_params() -> [Param; 11] {
    [
        "batches",
        "height",
        "width",
        "kernel_h",
        "kernel_w",
        "stride_h",
        "stride_w",
        "dilation_h",
        "dilation_w",
        "out_h",
        "out_w",
    ]
    .map(|name| Param::new(name, ArgType::I64))
}

/// im2col: `out[b, i * KW + j, oh, ow] = x[b, i * dilation_h + oh * stride_h, j * dilation_w +
/// ow * stride_w]`, with `x` `[B, H, W]` and `out` `[B, KH * KW, OH, OW]`, both contiguous. One
/// thread per output element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnfoldSpec {
    dtype: KernelDType,
}

impl UnfoldSpec {
    /// The window copy of `dtype` elements (every dtype).
    pub fn new(dtype: KernelDType) -> Result<UnfoldSpec, KernelError> {
        Ok(UnfoldSpec { dtype })
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for UnfoldSpec {
    fn entry_name(&self) -> String {
        format!("nb_unfold_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let mut p = vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("x", ArgType::In(self.dtype)),
        ];
        p.extend(geometry_params());
        p
    }

    fn body(&self, _entry: &str) -> String {
        r#"    const long long taps = kernel_h * kernel_w;
    const long long total = batches * taps * out_h * out_w;
    for (long long e = nb_first(); e < total; e += nb_step()) {
        const long long ow = e % out_w;
        long long r = e / out_w;
        const long long oh = r % out_h;
        r /= out_h;
        const long long k = r % taps;
        const long long b = r / taps;
        const long long h = (k / kernel_w) * dilation_h + oh * stride_h;
        const long long w = (k % kernel_w) * dilation_w + ow * stride_w;
        out[e] = x[(b * height + h) * width + w];
    }
"#
        .into()
    }
}

/// col2im: `out[b, h, w]` is the sum of `cols[b, i * KW + j, oh, ow]` over the taps `(i, j)`
/// and windows `(oh, ow)` that read pixel `(h, w)`, with `cols` `[B, KH * KW, OH, OW]` and `out`
/// `[B, H, W]`, both contiguous. One thread per output pixel, adding its taps in row-major
/// order `(i, j)` from zero (the CPU backend's order, so the same sums), in float for halves
/// and double for f64. No atomics: deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FoldSpec {
    dtype: KernelDType,
}

impl FoldSpec {
    /// The window sum of `dtype` elements (floats).
    pub fn new(dtype: KernelDType) -> Result<FoldSpec, KernelError> {
        floats_only("fold", dtype)?;
        Ok(FoldSpec { dtype })
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for FoldSpec {
    fn entry_name(&self) -> String {
        format!("nb_fold_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let mut p = vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("cols", ArgType::In(self.dtype)),
        ];
        p.extend(geometry_params());
        p
    }

    fn body(&self, _entry: &str) -> String {
        let d = self.dtype;
        let c = d.compute_type();
        format!(
            r#"    const long long taps = kernel_h * kernel_w;
    const long long total = batches * height * width;
    for (long long e = nb_first(); e < total; e += nb_step()) {{
        const long long w = e % width;
        const long long r = e / width;
        const long long h = r % height;
        const long long b = r / height;
        {c} acc = ({c})0;
        for (long long i = 0; i < kernel_h; ++i) {{
            const long long dh = h - i * dilation_h;
            if (dh < 0) break;
            if (dh % stride_h != 0) continue;
            const long long oh = dh / stride_h;
            if (oh >= out_h) continue;
            for (long long j = 0; j < kernel_w; ++j) {{
                const long long dw = w - j * dilation_w;
                if (dw < 0) break;
                if (dw % stride_w != 0) continue;
                const long long ow = dw / stride_w;
                if (ow >= out_w) continue;
                acc = acc + {load};
            }}
        }}
        out[e] = {store};
    }}
"#,
            load = d.to_compute("cols[((b * taps + i * kernel_w + j) * out_h + oh) * out_w + ow]"),
            store = d.from_compute("acc"),
        )
    }
}
