//! Index families: gather and scatter-add in the `[B, P, N, Q]` form, concatenation and
//! strided embedding.

use super::{Gen, grid_stride};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::params::{ArgType, Param};
use crate::spec::Variant;

/// The `[B, P, N, Q]` dimension arguments and the index checking arguments shared by gather and
/// scatter-add.
fn bpnq_params() -> [Param; 7] {
    [
        Param::new("batches", ArgType::I64),
        Param::new("pre", ArgType::I64),
        Param::new("n", ArgType::I64),
        Param::new("post", ArgType::I64),
        Param::new("count", ArgType::I64),
        Param::new("wrap_negative", ArgType::I32),
        Param::new("err", ArgType::ErrorRecord),
    ]
}

/// The loop over the `[B, P, I, Q]` elements of the gathered side: decomposes `e` into
/// `(b, p, k, q)`, reads and checks the index `j = idx[b, k]`, and runs `ok` with it in range
/// (`bad` otherwise).
fn bpiq_loop(code: &str, ok: &str, bad: &str) -> String {
    let body = format!(
        r#"const long long q = e % post;
long long r = e / post;
const long long k = r % count;
r /= count;
const long long p = r % pre;
const long long b = r / pre;
long long j = idx[b * count + k];
if (wrap_negative && j < 0) j += n;
if (j < 0 || j >= n) {{
    nb_report(err, {code}, idx[b * count + k], n);
{bad}}} else {{
{ok}}}
"#,
        ok = super::indent(ok, 4),
        bad = super::indent(bad, 4),
    );
    format!(
        "    const long long total = batches * pre * count * post;\n    for (long long e = nb_first(); e < total; e += nb_step()) {{\n{}    }}\n",
        super::indent(&body, 8)
    )
}

/// `out[b, p, k, q] = x[b, p, idx[b, k], q]` with `x: [B, P, N, Q]`, `idx: [B, I]` (i64) and
/// `out: [B, P, I, Q]`, all contiguous. Indices are checked on the device: with
/// `wrap_negative`, `-N..0` counts from the end; an index out of range is reported to the error
/// record (kind `GatherIndex`) and its elements are written as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatherSpec {
    dtype: KernelDType,
}

impl GatherSpec {
    /// The gather of `dtype` elements (every dtype).
    pub fn new(dtype: KernelDType) -> Result<GatherSpec, KernelError> {
        Ok(GatherSpec { dtype })
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for GatherSpec {
    fn entry_name(&self) -> String {
        format!("nb_gather_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let mut p = vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("x", ArgType::In(self.dtype)),
            Param::new("idx", ArgType::In(KernelDType::I64)),
        ];
        p.extend(bpnq_params());
        p
    }

    fn body(&self, _entry: &str) -> String {
        let zero = self.dtype.from_compute(&self.dtype.compute_literal(0));
        bpiq_loop(
            "NB_ERR_GATHER_INDEX",
            "out[e] = x[((b * pre + p) * n + j) * post + q];\n",
            &format!("out[e] = {zero};\n"),
        )
    }
}

/// `out[b, p, idx[b, k], q] += upd[b, p, k, q]` with atomics, `out: [B, P, N, Q]` holding the
/// base (copy it in first), `upd: [B, P, I, Q]`, `idx: [B, I]`, all contiguous. Repeated
/// indices accumulate (in no fixed order for floats). Index checking as in [`GatherSpec`] (kind
/// `ScatterIndex`; the update is skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScatterAddSpec {
    dtype: KernelDType,
}

impl ScatterAddSpec {
    /// The scatter-add of `dtype` elements: floats and the signed integers (the dtypes with a
    /// native `atomicAdd` on sm_90: f16 and bf16 use the sm_70/sm_80 atomics, i64 adds as
    /// `unsigned long long`).
    pub fn new(dtype: KernelDType) -> Result<ScatterAddSpec, KernelError> {
        if !(dtype.is_float() || dtype.is_signed_int()) {
            return Err(KernelError::Unsupported {
                kernel: "scatter_add".into(),
                dtype,
                accepted: "f32, f64, f16, bf16, i64 or i32",
            });
        }
        Ok(ScatterAddSpec { dtype })
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for ScatterAddSpec {
    fn entry_name(&self) -> String {
        format!("nb_scatter_add_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let mut p = vec![
            Param::new("out", ArgType::InOut(self.dtype)),
            Param::new("upd", ArgType::In(self.dtype)),
            Param::new("idx", ArgType::In(KernelDType::I64)),
        ];
        p.extend(bpnq_params());
        p
    }

    fn body(&self, _entry: &str) -> String {
        let target = "out + ((b * pre + p) * n + j) * post + q";
        let add = match self.dtype {
            KernelDType::I64 => {
                format!("atomicAdd((unsigned long long*)({target}), (unsigned long long)upd[e]);\n")
            }
            _ => format!("atomicAdd({target}, upd[e]);\n"),
        };
        bpiq_loop("NB_ERR_SCATTER_INDEX", &add, "")
    }
}

/// One input of a concatenation copied into its slot of the contiguous output: input element
/// `i` goes to `(i / slot_len) * out_row + slot_start + i % slot_len` (see
/// [`crate::ConcatSlot`]). Launched once per input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConcatSpec {
    dtype: KernelDType,
    variant: Variant,
}

impl ConcatSpec {
    /// The concatenation copy of `dtype` elements (every dtype), from a strided or contiguous
    /// input.
    pub fn new(dtype: KernelDType, variant: Variant) -> Result<ConcatSpec, KernelError> {
        Ok(ConcatSpec { dtype, variant })
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// Strided or contiguous input.
    pub fn variant(&self) -> Variant {
        self.variant
    }
}

impl Gen for ConcatSpec {
    fn entry_name(&self) -> String {
        format!("nb_concat_{}{}", self.dtype, self.variant.suffix())
    }

    fn params(&self) -> Vec<Param> {
        let mut p = vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("x", ArgType::In(self.dtype)),
        ];
        if self.variant == Variant::Strided {
            p.push(Param::new("x_layout", ArgType::Layout));
        }
        p.extend([
            Param::new("n", ArgType::I64),
            Param::new("slot_len", ArgType::I64),
            Param::new("out_row", ArgType::I64),
            Param::new("slot_start", ArgType::I64),
        ]);
        p
    }

    fn body(&self, _entry: &str) -> String {
        let src = match self.variant {
            Variant::Strided => "x[nb_offset(x_layout, i)]",
            Variant::Contiguous => "x[i]",
        };
        grid_stride(&format!(
            "const long long row = i / slot_len;\nout[row * out_row + slot_start + (i - row * slot_len)] = {src};\n"
        ))
    }
}

/// A strided input written at strided positions of the output: `out[nb_offset(out_layout, i)] =
/// x[nb_offset(x_layout, i)]`. For `embed`, fill the output with zeros first and pass
/// [`crate::KernelLayout::embed_target`] as `out_layout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EmbedSpec {
    dtype: KernelDType,
}

impl EmbedSpec {
    /// The strided write of `dtype` elements (every dtype).
    pub fn new(dtype: KernelDType) -> Result<EmbedSpec, KernelError> {
        Ok(EmbedSpec { dtype })
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for EmbedSpec {
    fn entry_name(&self) -> String {
        format!("nb_embed_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("out_layout", ArgType::Layout),
            Param::new("x", ArgType::In(self.dtype)),
            Param::new("x_layout", ArgType::Layout),
            Param::new("n", ArgType::I64),
        ]
    }

    fn body(&self, _entry: &str) -> String {
        grid_stride("out[nb_offset(out_layout, i)] = x[nb_offset(x_layout, i)];\n")
    }
}

/// Indices checked and wrapped on the device, the host's check without a synchronisation:
/// `out[i] = idx[i]`, plus `extent` when it is negative and `wrap_negative` is set, for `i < n`
/// (both contiguous i64). An index outside the accepted range (`0..extent`, or `-extent..extent`
/// with wrapping) is reported to the error record (kind `IndexOutOfRange`, with `site` in word
/// 3 so that the backend can name the op and the axis) and written as 0, so that the op using
/// it stays in bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexCheckSpec;

impl IndexCheckSpec {
    /// The index check (i64 indices only).
    pub fn new() -> Result<IndexCheckSpec, KernelError> {
        Ok(IndexCheckSpec)
    }
}

impl Gen for IndexCheckSpec {
    fn entry_name(&self) -> String {
        "nb_check_index_i64".into()
    }

    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("out", ArgType::Out(KernelDType::I64)),
            Param::new("idx", ArgType::In(KernelDType::I64)),
            Param::new("n", ArgType::I64),
            Param::new("extent", ArgType::I64),
            Param::new("wrap_negative", ArgType::I32),
            Param::new("site", ArgType::I64),
            Param::new("err", ArgType::ErrorRecord),
        ]
    }

    fn helpers(&self, _entry: &str) -> String {
        r#"#ifndef NB_REPORT_SITE
#define NB_REPORT_SITE
// nb_report with the check site in word 3.
__device__ __forceinline__ void nb_report_site(unsigned long long* err, unsigned long long code, long long value, long long extent, long long site) {
    if (err != nullptr && atomicCAS(err, 0ull, code) == 0ull) {
        err[1] = (unsigned long long)value;
        err[2] = (unsigned long long)extent;
        err[3] = (unsigned long long)site;
    }
}
#endif
"#
        .into()
    }

    fn body(&self, _entry: &str) -> String {
        grid_stride(
            "long long j = idx[i];\nif (wrap_negative && j < 0) j += extent;\nif (j < 0 || j >= extent) {\n    nb_report_site(err, NB_ERR_INDEX, idx[i], extent, site);\n    out[i] = 0;\n} else {\n    out[i] = j;\n}\n",
        )
    }
}
