//! 2-D pooling read in place: the windows of a contiguous `[B, H, W]` image padded by `(PH,
//! PW)` on each side, without a padded copy or an im2col matrix. Window `(oh, ow)` covers the
//! padded pixels `(oh * SH + i, ow * SW + j)` for taps `(i, j)` in `KH x KW`, that is the image
//! pixel `(oh * SH + i - PH, ow * SW + j - PW)` where it lies inside the image; padding adds
//! nothing to a sum and is never a maximum.
//!
//! - [`PoolOp::Sum`]: `out[b, oh, ow] = scale * sum of the window's pixels` (average pooling
//!   with `scale = 1 / (KH * KW)`), taps added in row-major order from zero.
//! - [`PoolOp::SumTranspose`]: its transpose, `out[b, h, w] = scale * sum of v[b, oh, ow]`
//!   over the windows covering pixel `(h, w)`, taps in row-major order (one thread per pixel,
//!   no atomics: deterministic). It is the sum's gradient, and the sum is its gradient.
//! - [`PoolOp::Argmax`]: max pooling's choice, the flat position `b * H * W + h * W + w` (i64)
//!   of the first maximum of every window in row-major tap order; the first NaN of a window
//!   is its maximum (PyTorch's rule). The padding must be below the kernel and the image not
//!   empty, so that every window holds a pixel.

use super::Gen;
use super::fused::floats_only;
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::params::{ArgType, Param};

/// Which pooling kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoolOp {
    /// The scaled sum over every window (one thread per window).
    Sum,
    /// The transpose of [`PoolOp::Sum`] (one thread per pixel).
    SumTranspose,
    /// The position of every window's first maximum (one thread per window).
    Argmax,
}

impl PoolOp {
    /// Every pooling kernel.
    pub const ALL: [PoolOp; 3] = [PoolOp::Sum, PoolOp::SumTranspose, PoolOp::Argmax];

    /// The name in entry points (`pool_sum`, `pool_sum_transpose`, `pool_argmax`).
    pub fn name(self) -> &'static str {
        match self {
            PoolOp::Sum => "pool_sum",
            PoolOp::SumTranspose => "pool_sum_transpose",
            PoolOp::Argmax => "pool_argmax",
        }
    }
}

/// One pooling kernel over one float dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    op: PoolOp,
    dtype: KernelDType,
}

impl PoolSpec {
    /// The kernel `op` over `dtype` elements (floats).
    pub fn new(op: PoolOp, dtype: KernelDType) -> Result<PoolSpec, KernelError> {
        floats_only(op.name(), dtype)?;
        Ok(PoolSpec { op, dtype })
    }

    /// The kernel.
    pub fn op(&self) -> PoolOp {
        self.op
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for PoolSpec {
    fn entry_name(&self) -> String {
        format!("nb_{}_{}", self.op.name(), self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let d = self.dtype;
        let mut p = match self.op {
            PoolOp::Sum => vec![Param::new("out", ArgType::Out(d)), Param::new("x", ArgType::In(d))],
            PoolOp::SumTranspose => vec![Param::new("out", ArgType::Out(d)), Param::new("v", ArgType::In(d))],
            PoolOp::Argmax => vec![
                Param::new("out", ArgType::Out(KernelDType::I64)),
                Param::new("x", ArgType::In(d)),
            ],
        };
        p.extend(
            [
                "batches", "height", "width", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w",
                "out_h", "out_w",
            ]
            .map(|name| Param::new(name, ArgType::I64)),
        );
        if self.op != PoolOp::Argmax {
            p.push(Param::new("scale", ArgType::F64));
        }
        p
    }

    fn body(&self, _entry: &str) -> String {
        let d = self.dtype;
        let c = d.compute_type();
        // The thread's window (for the sum and the argmax): its batch `b` and first padded
        // pixel `(y0, x0)`, shifted into the image.
        let window = r#"        const long long ow = e % out_w;
        const long long r = e / out_w;
        const long long oh = r % out_h;
        const long long b = r / out_h;
        const long long y0 = oh * stride_h - pad_h;
        const long long x0 = ow * stride_w - pad_w;
        const float_plane_t* plane = x + b * height * width;
"#
        .replace("float_plane_t", d.c_type());
        let taps = "        for (long long i = 0; i < kernel_h; ++i) {
            const long long y = y0 + i;
            if (y < 0 || y >= height) continue;
            for (long long j = 0; j < kernel_w; ++j) {
                const long long xx = x0 + j;
                if (xx < 0 || xx >= width) continue;
";
        match self.op {
            PoolOp::Sum => format!(
                r#"    const long long total = batches * out_h * out_w;
    for (long long e = nb_first(); e < total; e += nb_step()) {{
{window}        {c} acc = ({c})0;
{taps}                acc = acc + {load};
            }}
        }}
        out[e] = {store};
    }}
"#,
                load = d.to_compute("plane[y * width + xx]"),
                store = d.from_compute(&format!("({c})(acc * ({c})scale)")),
            ),
            PoolOp::SumTranspose => format!(
                r#"    const long long total = batches * height * width;
    for (long long e = nb_first(); e < total; e += nb_step()) {{
        const long long w = e % width;
        const long long r = e / width;
        const long long h = r % height;
        const long long b = r / height;
        {c} acc = ({c})0;
        for (long long i = 0; i < kernel_h; ++i) {{
            const long long dh = h + pad_h - i;
            if (dh < 0) break;
            if (dh % stride_h != 0) continue;
            const long long oh = dh / stride_h;
            if (oh >= out_h) continue;
            for (long long j = 0; j < kernel_w; ++j) {{
                const long long dw = w + pad_w - j;
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
                load = d.to_compute("v[(b * out_h + oh) * out_w + ow]"),
                store = d.from_compute(&format!("({c})(acc * ({c})scale)")),
            ),
            PoolOp::Argmax => format!(
                r#"    const long long total = batches * out_h * out_w;
    for (long long e = nb_first(); e < total; e += nb_step()) {{
{window}        long long best = -1;
        {c} top = ({c})0;
        bool done = false;
{taps}                const {c} v = {load};
                if (best < 0 || v > top || v != v) {{
                    best = y * width + xx;
                    top = v;
                    if (v != v) {{ done = true; break; }}
                }}
            }}
            if (done) break;
        }}
        out[e] = b * height * width + (best < 0 ? 0 : best);
    }}
"#,
                load = d.to_compute("plane[y * width + xx]"),
            ),
        }
    }
}
