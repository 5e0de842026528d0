//! Batch normalisation's fused kernels over a contiguous `x` `[A, C, B]` (channel `ch` is the
//! `A` runs of `B` values at `(a * C + ch) * B`): the channels' means and biased variances, the
//! Jacobian product of the per-channel standardisation, and batch normalisation's backward
//! pass with its parameter gradients.
//!
//! Each is cut in passes (see [`ChannelPass`]): a `Partial` pass in which a block reduces one
//! chunk of one channel's `A * B` values (so that few channels still fill the GPU), a `Finish`
//! pass of one thread per channel combining the chunks, and for the backward passes an `Apply`
//! pass writing every element from its channel's factors. The statistics are merged as
//! (count, mean, sum of squared deviations) triples (Chan et al.'s pairwise update), so the
//! variance is read in one pass without the cancellation of `E[x^2] - E[x]^2`.

use super::Gen;
use super::fused::floats_only;
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::ops::ChannelOp;
use crate::params::{AccType, ArgType, Param};

/// Which pass of a channel kernel a [`ChannelSpec`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelPass {
    /// Task `t = ch * splits + s` (a block) reduces chunk `s` of channel `ch`'s values into
    /// `partial[t * width ..]` ([`ChannelSpec::partial_width`] accumulators).
    Partial,
    /// One thread per channel combines its `splits` partials: into the moments `[2, C]`, or
    /// into the two per-channel factors of the `Apply` pass (`factors` `[2, C]`), and for
    /// batch norm also the gradients of the scale and shift.
    Finish,
    /// Every element of the backward pass from its channel's factors (not for the moments):
    /// `factors` `[2, C]`, the means of the product sum then of the plain sum (`mean(v y)`,
    /// `mean(v)`; for batch norm `mean(g x_hat)`, `mean(g)`), from the `Finish` pass or, for
    /// synchronised batch norm, from the sums of every rank.
    Apply,
    /// Batch norm only: one thread per channel combines its partials into `sums` `[2, C]`,
    /// `sum(g x_hat)` then `sum(g)` (this process's sums, for the ranks to add).
    Sums,
}

impl ChannelPass {
    /// Every pass, in catalogue order.
    pub const ALL: [ChannelPass; 4] = [
        ChannelPass::Partial,
        ChannelPass::Finish,
        ChannelPass::Apply,
        ChannelPass::Sums,
    ];

    fn name(self) -> &'static str {
        match self {
            ChannelPass::Partial => "partial",
            ChannelPass::Finish => "finish",
            ChannelPass::Apply => "apply",
            ChannelPass::Sums => "sums",
        }
    }
}

/// One pass of a per-channel kernel of batch normalisation (see the module's docs and
/// [`crate::launch::channel_plan`] for the launches and the workspace sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelSpec {
    op: ChannelOp,
    dtype: KernelDType,
    pass: ChannelPass,
}

impl ChannelSpec {
    /// Pass `pass` of `op` on `dtype` (floats; the moments have no `Apply` pass, only batch
    /// norm's backward has a `Sums` pass, and the scale and shift is only an `Apply` pass).
    pub fn new(op: ChannelOp, dtype: KernelDType, pass: ChannelPass) -> Result<ChannelSpec, KernelError> {
        floats_only(op.name(), dtype)?;
        let refused = match pass {
            _ if op == ChannelOp::ScaleShift && pass != ChannelPass::Apply => {
                Some("the scale and shift is an apply pass only")
            }
            ChannelPass::Apply => (op == ChannelOp::Moments).then_some("the moments have no apply pass"),
            ChannelPass::Sums => {
                (op != ChannelOp::BatchNormBackward).then_some("only batch norm's backward has a sums pass")
            }
            ChannelPass::Partial | ChannelPass::Finish => None,
        };
        if let Some(why) = refused {
            return Err(KernelError::Unsupported {
                kernel: format!("{} {}", op.name(), pass.name()),
                dtype,
                accepted: why,
            });
        }
        Ok(ChannelSpec { op, dtype, pass })
    }

    /// The operation.
    pub fn op(&self) -> ChannelOp {
        self.op
    }

    /// The pass.
    pub fn pass(&self) -> ChannelPass {
        self.pass
    }

    /// The type of the partials and factors: `double` for f64, else `float`.
    pub fn acc_type(&self) -> AccType {
        if self.dtype == KernelDType::F64 {
            AccType::F64
        } else {
            AccType::F32
        }
    }

    /// Accumulators per partial: 3 for the moments (count, mean, squared deviations), 2 for
    /// the backward passes' sums.
    pub fn partial_width(&self) -> usize {
        if self.op == ChannelOp::Moments { 3 } else { 2 }
    }

    /// The element inputs of the `Partial` pass (read at the element's offset), then the
    /// per-channel ones.
    fn partial_inputs(&self) -> (&'static [&'static str], &'static [&'static str]) {
        match self.op {
            ChannelOp::Moments => (&["x"], &[]),
            ChannelOp::NormBackward => (&["y", "v"], &[]),
            ChannelOp::BatchNormBackward => (&["x", "g"], &["mean"]),
            ChannelOp::ScaleShift => unreachable!("the scale and shift has no partial pass"),
        }
    }
}

impl Gen for ChannelSpec {
    fn entry_name(&self) -> String {
        format!("nb_channel_{}_{}_{}", self.op, self.dtype, self.pass.name())
    }

    fn params(&self) -> Vec<Param> {
        let (d, acc) = (self.dtype, self.acc_type());
        let input = |n: &'static str| Param::new(n, ArgType::In(d));
        let i64s = |names: &[&'static str]| names.iter().map(|&n| Param::new(n, ArgType::I64)).collect::<Vec<_>>();
        let mut p = Vec::new();
        match self.pass {
            ChannelPass::Partial => {
                p.push(Param::new("partial", ArgType::AccOut(acc)));
                let (elements, channels) = self.partial_inputs();
                p.extend(elements.iter().chain(channels).map(|&n| input(n)));
                p.extend(i64s(&["a", "c", "b", "splits"]));
            }
            ChannelPass::Finish => {
                match self.op {
                    ChannelOp::Moments => p.push(Param::new("out", ArgType::Out(d))),
                    ChannelOp::NormBackward => p.push(Param::new("factors", ArgType::AccOut(acc))),
                    ChannelOp::BatchNormBackward => {
                        p.push(Param::new("out", ArgType::Out(d)));
                        p.push(Param::new("factors", ArgType::AccOut(acc)));
                    }
                    ChannelOp::ScaleShift => unreachable!("the scale and shift has no finishing pass"),
                }
                p.push(Param::new("partial", ArgType::AccIn(acc)));
                if self.op == ChannelOp::BatchNormBackward {
                    p.push(input("rstd"));
                }
                p.extend(i64s(&["c", "count", "splits"]));
            }
            ChannelPass::Apply => {
                p.push(Param::new("out", ArgType::Out(d)));
                let inputs: &[&'static str] = match self.op {
                    ChannelOp::BatchNormBackward => &["x", "g", "mean", "rstd", "gamma"],
                    ChannelOp::ScaleShift => &["x", "mean", "scale", "shift"],
                    _ => &["y", "v", "rstd"],
                };
                p.extend(inputs.iter().map(|&n| input(n)));
                if self.op != ChannelOp::ScaleShift {
                    p.push(Param::new("factors", ArgType::AccIn(acc)));
                }
                p.extend(i64s(&["c", "b", "n"]));
            }
            ChannelPass::Sums => {
                p.push(Param::new("sums", ArgType::AccOut(acc)));
                p.push(Param::new("partial", ArgType::AccIn(acc)));
                p.push(input("rstd"));
                p.extend(i64s(&["c", "splits"]));
            }
        }
        p
    }

    fn helpers(&self, entry: &str) -> String {
        let a = self.acc_type().c_type();
        match self.pass {
            ChannelPass::Partial => format!(
                r#"// Offset in [A, C, B] of value k of channel ch (run k / b, position k % b).
__device__ __forceinline__ long long {entry}_at(long long k, long long ch, long long c, long long b) {{
    const long long q = ((unsigned long long)(k | b) >> 32) == 0 ? (long long)((unsigned)k / (unsigned)b) : k / b;
    return (q * c + ch) * b + (k - q * b);
}}
{merge}// Accumulators v[0..width) of every thread of the block summed into thread 0's.
__device__ __forceinline__ void {entry}_block_sum({a}* v, int width) {{
    __shared__ {a} shared[2][32];
    for (int j = 0; j < width; ++j)
        for (int o = 16; o > 0; o >>= 1) v[j] += __shfl_xor_sync(0xffffffffu, v[j], o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        for (int j = 0; j < width; ++j) shared[j][threadIdx.x >> 5] = v[j];
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            for (int j = 0; j < width; ++j) v[j] += shared[j][w];
}}
// The (count, mean, squared deviations) triples of the block's threads merged into thread 0's.
__device__ __forceinline__ void {entry}_block_merge({a}& n, {a}& m, {a}& q) {{
    __shared__ {a} shared[3][32];
    for (int o = 16; o > 0; o >>= 1) {{
        const {a} n2 = __shfl_xor_sync(0xffffffffu, n, o);
        const {a} m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const {a} q2 = __shfl_xor_sync(0xffffffffu, q, o);
        {entry}_merge(n, m, q, n2, m2, q2);
    }}
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {{
        shared[0][threadIdx.x >> 5] = n;
        shared[1][threadIdx.x >> 5] = m;
        shared[2][threadIdx.x >> 5] = q;
    }}
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {entry}_merge(n, m, q, shared[0][w], shared[1][w], shared[2][w]);
}}
"#,
                merge = merge_fn(entry),
            ),
            ChannelPass::Finish if self.op == ChannelOp::Moments => merge_fn(entry),
            ChannelPass::Finish | ChannelPass::Sums => String::new(),
            ChannelPass::Apply => format!(
                r#"// Channel of element i of [A, C, B].
__device__ __forceinline__ long long {entry}_channel(long long i, long long c, long long b) {{
    const long long q = ((unsigned long long)(i | b) >> 32) == 0 ? (long long)((unsigned)i / (unsigned)b) : i / b;
    return ((unsigned long long)(q | c) >> 32) == 0 ? (long long)((unsigned)q % (unsigned)c) : q % c;
}}
"#
            ),
        }
    }

    fn body(&self, entry: &str) -> String {
        match self.pass {
            ChannelPass::Partial => self.partial_body(entry),
            ChannelPass::Finish => self.finish_body(entry),
            ChannelPass::Apply => self.apply_body(entry),
            ChannelPass::Sums => self.sums_body(),
        }
    }
}

impl ChannelSpec {
    /// Each block takes tasks `t = ch * splits + s`: chunk `s` of channel `ch`'s values, read
    /// by its threads in turn (consecutive threads, consecutive offsets within a run).
    fn partial_body(&self, entry: &str) -> String {
        let d = self.dtype;
        let a = self.acc_type().c_type();
        let load = |name: &str, at: &str| format!("({a}){}", d.to_compute(&format!("{name}[{at}]")));
        let (setup, step, reduce, width) = match self.op {
            ChannelOp::ScaleShift => unreachable!("the scale and shift has no partial pass"),
            ChannelOp::Moments => (
                format!("{a} n = 0, m = 0, q = 0;"),
                format!(
                    "const {a} v = {};\n            n += ({a})1;\n            const {a} dv = v - m;\n            m += dv / n;\n            q += dv * (v - m);",
                    load("x", "o")
                ),
                format!("{entry}_block_merge(n, m, q);\n        {a} acc[3] = {{n, m, q}};"),
                3,
            ),
            ChannelOp::NormBackward => (
                format!("{a} acc[2] = {{0, 0}};"),
                format!(
                    "const {a} vv = {};\n            acc[0] += vv;\n            acc[1] += vv * {};",
                    load("v", "o"),
                    load("y", "o")
                ),
                format!("{entry}_block_sum(acc, 2);"),
                2,
            ),
            ChannelOp::BatchNormBackward => (
                format!("const {a} mu = {};\n        {a} acc[2] = {{0, 0}};", load("mean", "ch")),
                format!(
                    "const {a} gv = {};\n            acc[0] += gv;\n            acc[1] += gv * ({} - mu);",
                    load("g", "o"),
                    load("x", "o")
                ),
                format!("{entry}_block_sum(acc, 2);"),
                2,
            ),
        };
        format!(
            r#"    const long long count = a * b;
    const long long chunk = (count + splits - 1) / splits;
    for (long long t = blockIdx.x; t < c * splits; t += gridDim.x) {{
        const long long ch = t / splits;
        const long long k0 = (t % splits) * chunk;
        const long long k1 = k0 + chunk < count ? k0 + chunk : count;
        {setup}
        for (long long k = k0 + threadIdx.x; k < k1; k += blockDim.x) {{
            const long long o = {entry}_at(k, ch, c, b);
            {step}
        }}
        {reduce}
        if (threadIdx.x == 0)
            for (int j = 0; j < {width}; ++j) partial[t * {width} + j] = acc[j];
    }}
"#
        )
    }

    /// One thread per channel: the partials combined in double.
    fn finish_body(&self, entry: &str) -> String {
        let d = self.dtype;
        let a = self.acc_type().c_type();
        let per_channel = match self.op {
            ChannelOp::ScaleShift => unreachable!("the scale and shift has no finishing pass"),
            ChannelOp::Moments => format!(
                r#"        double n = 0, m = 0, q = 0;
        for (long long s = 0; s < splits; ++s) {{
            const {a}* p = partial + (ch * splits + s) * 3;
            {entry}_merge(n, m, q, (double)p[0], (double)p[1], (double)p[2]);
        }}
        // No values: the mean and the variance are NaN (0 / 0), as on the CPU.
        const double mean = count == 0 ? {nan} : m;
        out[ch] = {mean};
        out[c + ch] = {var};
"#,
                mean = d.from_f64("mean"),
                nan = KernelDType::F64.nan(),
                var = d.from_f64("q / (double)count"),
            ),
            ChannelOp::NormBackward | ChannelOp::BatchNormBackward => {
                let scale = if self.op == ChannelOp::BatchNormBackward {
                    format!(
                        "        s2 *= (double){};\n        out[count * c + ch] = {};\n        out[count * c + c + ch] = {};\n",
                        d.to_compute("rstd[ch]"),
                        d.from_f64("s2"),
                        d.from_f64("s1")
                    )
                } else {
                    String::new()
                };
                format!(
                    r#"{sums}{scale}        factors[ch] = ({a})(s2 / (double)count);
        factors[c + ch] = ({a})(s1 / (double)count);
"#,
                    sums = PARTIAL_SUMS,
                )
            }
        };
        format!("    for (long long ch = nb_first(); ch < c; ch += nb_step()) {{\n{per_channel}    }}\n")
    }

    /// One thread per channel: this process's sums `sum(g x_hat)`, `sum(g)` from the partials.
    fn sums_body(&self) -> String {
        let a = self.acc_type().c_type();
        format!(
            r#"    for (long long ch = nb_first(); ch < c; ch += nb_step()) {{
{sums}        sums[ch] = ({a})(s2 * (double){rstd});
        sums[c + ch] = ({a})s1;
    }}
"#,
            rstd = self.dtype.to_compute("rstd[ch]"),
            sums = PARTIAL_SUMS,
        )
    }

    /// Every element from its channel's `rstd` and factors (the means of the two sums).
    fn apply_body(&self, entry: &str) -> String {
        let d = self.dtype;
        let c = d.compute_type();
        let load = |name: &str, at: &str| d.to_compute(&format!("{name}[{at}]"));
        if self.op == ChannelOp::ScaleShift {
            let value = d.from_compute(&format!(
                "({} - {}) * {} + {}",
                load("x", "i"),
                load("mean", "ch"),
                load("scale", "ch"),
                load("shift", "ch")
            ));
            return format!(
                r#"    for (long long i = nb_first(); i < n; i += nb_step()) {{
        const long long ch = {entry}_channel(i, c, b);
        out[i] = {value};
    }}
"#
            );
        }
        let value = match self.op {
            ChannelOp::BatchNormBackward => format!(
                "const {c} x_hat = ({} - {}) * r;\n        out[i] = {};",
                load("x", "i"),
                load("mean", "ch"),
                d.from_compute(&format!(
                    "{} * r * ({} - f0 - x_hat * f1)",
                    load("gamma", "ch"),
                    load("g", "i")
                ))
            ),
            _ => format!(
                "out[i] = {};",
                d.from_compute(&format!("r * ({} - f0 - {} * f1)", load("v", "i"), load("y", "i")))
            ),
        };
        format!(
            r#"    for (long long i = nb_first(); i < n; i += nb_step()) {{
        const long long ch = {entry}_channel(i, c, b);
        const {c} r = {rstd};
        const {c} f1 = ({c})factors[ch];
        const {c} f0 = ({c})factors[c + ch];
        {value}
    }}
"#,
            rstd = load("rstd", "ch"),
        )
    }
}

/// The statements summing channel `ch`'s `splits` pairs of partials into `s1` and `s2`
/// (double), for the finishing and sums passes.
const PARTIAL_SUMS: &str = "        double s1 = 0, s2 = 0;
        for (long long s = 0; s < splits; ++s) {
            s1 += (double)partial[(ch * splits + s) * 2];
            s2 += (double)partial[(ch * splits + s) * 2 + 1];
        }
";

/// `{entry}_merge(n, m, q, n2, m2, q2)`: the (count, mean, sum of squared deviations) of a set
/// merged with another's (Chan et al.), for float or double.
fn merge_fn(entry: &str) -> String {
    format!(
        r#"template <class T>
__device__ __forceinline__ void {entry}_merge(T& n, T& m, T& q, T n2, T m2, T q2) {{
    if (n2 == (T)0) return;
    const T total = n + n2;
    const T d = m2 - m;
    const T f = n2 / total;
    m += d * f;
    q += q2 + d * d * n * f;
    n = total;
}}
"#
    )
}
