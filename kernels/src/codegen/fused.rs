//! Fused kernels: softmax, log-softmax and layer-norm rows and their backward rows, cross-entropy rows with integer labels, and the
//! Adam update.

use super::{Gen, grid_stride, group_loop, group_reduce_fn};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::ops::RowOp;
use crate::params::{ArgType, Param};

/// Refuses `dtype` for `kernel` unless it is a float.
pub(crate) fn floats_only(kernel: &str, dtype: KernelDType) -> Result<(), KernelError> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(KernelError::Unsupported {
            kernel: kernel.into(),
            dtype,
            accepted: "f32, f64, f16 or bf16",
        })
    }
}

/// The max and sum combiners of a row kernel and their group reductions.
fn row_reducers(entry: &str, d: KernelDType) -> String {
    let c = d.compute_type();
    let mut s = format!(
        "__device__ __forceinline__ {c} {entry}_max({c} a, {c} b) {{ return (a != a || a >= b) ? a : b; }}\n\
         __device__ __forceinline__ {c} {entry}_add({c} a, {c} b) {{ return a + b; }}\n"
    );
    s.push_str(&group_reduce_fn(
        &format!("{entry}_group_max"),
        c,
        &format!("{entry}_max"),
        d.neg_infinity(),
    ));
    s.push_str(&group_reduce_fn(
        &format!("{entry}_group_sum"),
        c,
        &format!("{entry}_add"),
        &d.compute_literal(0),
    ));
    s
}

/// The statements computing a row's maximum `m`, the shift, and `s = sum(exp(x - shift))`, for
/// row `t` of `x` at `base`, over its first `bound` entries (a C expression), with the group's
/// lanes. `finite_shift` shifts by 0 when the maximum is not finite (as `logsumexp` does on the
/// CPU).
fn row_stats(entry: &str, d: KernelDType, finite_shift: bool, bound: &str) -> String {
    let c = d.compute_type();
    let load = d.to_compute("x[base + j]");
    let exp = d.math("exp");
    let zero = d.compute_literal(0);
    let shift = if finite_shift {
        format!("m - m == {zero} ? m : {zero}")
    } else {
        "m".to_string()
    };
    format!(
        r#"    const long long base = t * cols;
    {c} m = {ninf};
    if (valid) {{
        for (long long j = gl; j < {bound}; j += gs) m = {entry}_max(m, {load});
    }}
    m = {entry}_group_max(m, group);
    const {c} shift = {shift};
    {c} s = {zero};
    if (valid) {{
        for (long long j = gl; j < {bound}; j += gs) s += {exp}({load} - shift);
    }}
    s = {entry}_group_sum(s, group);
"#,
        ninf = d.neg_infinity(),
    )
}

/// Softmax, log-softmax or layer normalisation of every row of a contiguous `[rows, cols]` input
/// (the last axis), or one of their backward rows (see [`RowOp`]), into a contiguous output: one
/// task (a group of threads, see [`crate::launch::row_plan`]) per row, softmax shifted by the
/// row's maximum, accumulated in float (double for f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowSpec {
    op: RowOp,
    dtype: KernelDType,
}

impl RowSpec {
    /// The row kernel `op` on `dtype` (floats).
    pub fn new(op: RowOp, dtype: KernelDType) -> Result<RowSpec, KernelError> {
        floats_only(op.name(), dtype)?;
        Ok(RowSpec { op, dtype })
    }

    /// The operation.
    pub fn op(&self) -> RowOp {
        self.op
    }

    /// The input and output dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    fn takes_eps(&self) -> bool {
        matches!(self.op, RowOp::LayerNorm | RowOp::LayerNormBackward)
    }

    fn takes_v(&self) -> bool {
        matches!(
            self.op,
            RowOp::LayerNormBackward | RowOp::SoftmaxBackward | RowOp::LogSoftmaxBackward
        )
    }
}

impl Gen for RowSpec {
    fn entry_name(&self) -> String {
        format!("nb_{}_{}", self.op, self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let mut p = vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("x", ArgType::In(self.dtype)),
            Param::new("rows", ArgType::I64),
            Param::new("cols", ArgType::I64),
        ];
        if self.op == RowOp::LayerNormBackward {
            p.push(Param::new("y", ArgType::In(self.dtype)));
        }
        if self.takes_v() {
            p.push(Param::new("v", ArgType::In(self.dtype)));
        }
        if self.takes_eps() {
            p.push(Param::new("eps", ArgType::F64));
        }
        if self.op == RowOp::CausalSoftmax {
            p.push(Param::new("lq", ArgType::I64));
        }
        p.push(Param::new("group", ArgType::I32));
        p
    }

    fn helpers(&self, entry: &str) -> String {
        match self.op {
            RowOp::LayerNorm => return layer_norm_helpers(entry, self.dtype, false),
            RowOp::LayerNormBackward => return layer_norm_helpers(entry, self.dtype, true),
            RowOp::SoftmaxBackward => return softmax_backward_helpers(entry, self.dtype, false),
            RowOp::LogSoftmaxBackward => return softmax_backward_helpers(entry, self.dtype, true),
            RowOp::Softmax | RowOp::LogSoftmax | RowOp::CausalSoftmax => {}
        }
        let d = self.dtype;
        let (t, c) = (d.c_type(), d.compute_type());
        let log_softmax = self.op == RowOp::LogSoftmax;
        let load = d.to_compute("x[base + j]");
        let value = if log_softmax {
            d.from_compute("v - lse")
        } else {
            d.from_compute(&format!("{}(v) / s", d.math("exp")))
        };
        let lse = if log_softmax {
            format!("        const {c} lse = {}(s);\n", d.math("log"))
        } else {
            String::new()
        };
        // A causal row keeps its first `n` entries (its query's index + 1) and zeroes the rest.
        let (lq_param, bound, zero_tail) = if self.op == RowOp::CausalSoftmax {
            (
                "long long lq, ",
                "    const long long n = t % lq + 1 < cols ? t % lq + 1 : cols;\n".to_string(),
                format!(
                    "        for (long long j = n + gl; j < cols; j += gs) out[base + j] = {};\n",
                    d.from_compute(&d.compute_literal(0))
                ),
            )
        } else {
            ("", "    const long long n = cols;\n".to_string(), String::new())
        };
        let mut s = row_reducers(entry, d);
        s.push_str(&format!(
            r#"// Row t, by the group's lanes gl, gl + gs, ... (every lane joins the reductions).
__device__ __forceinline__ void {entry}_row({t}* __restrict__ out, const {t}* __restrict__ x, long long cols, {lq_param}long long t, bool valid, int gl, int gs, int group) {{
{bound}{stats}    if (valid) {{
{lse}        for (long long j = gl; j < n; j += gs) {{
            const {c} v = {load} - shift;
            out[base + j] = {value};
        }}
{zero_tail}    }}
}}
"#,
            stats = row_stats(entry, d, log_softmax, "n"),
        ));
        s
    }

    fn body(&self, entry: &str) -> String {
        let eps = match self.op {
            RowOp::LayerNorm => format!("({})eps, ", self.dtype.compute_type()),
            RowOp::LayerNormBackward => format!("y, v, ({})eps, ", self.dtype.compute_type()),
            RowOp::SoftmaxBackward | RowOp::LogSoftmaxBackward => "v, ".to_string(),
            RowOp::CausalSoftmax => "lq, ".to_string(),
            RowOp::Softmax | RowOp::LogSoftmax => String::new(),
        };
        group_loop(
            "rows",
            &format!("{entry}_row(out, x, cols, {eps}t, valid, gl, gs, group);\n"),
        )
    }
}

/// The row function of layer normalisation: the mean, then the mean squared deviation (two
/// passes, as the CPU computes it), then `(x - mean) / sqrt(var + eps)`; or, for `backward`,
/// with that `rstd`, the means of `v` and `v y` and `rstd (v - mean(v) - y mean(v y))`.
fn layer_norm_helpers(entry: &str, d: KernelDType, backward: bool) -> String {
    let (t, c) = (d.c_type(), d.compute_type());
    let load = d.to_compute("x[base + j]");
    let zero = d.compute_literal(0);
    let one = d.compute_literal(1);
    let sqrt = d.math("sqrt");
    let (extra_params, finish) = if backward {
        let (vj, yj) = (d.to_compute("v[base + j]"), d.to_compute("y[base + j]"));
        let value = d.from_compute(&format!("r * ({vj} - mv - {yj} * mvy)"));
        (
            format!("const {t}* __restrict__ y, const {t}* __restrict__ v, "),
            format!(
                r#"    {c} sv = {zero}, svy = {zero};
    if (valid) {{
        for (long long j = gl; j < cols; j += gs) {{
            sv += {vj};
            svy += {vj} * {yj};
        }}
    }}
    sv = {entry}_group_sum(sv, group);
    svy = {entry}_group_sum(svy, group);
    const {c} mv = sv / ({c})cols;
    const {c} mvy = svy / ({c})cols;
    if (valid) {{
        for (long long j = gl; j < cols; j += gs) out[base + j] = {value};
    }}
"#
            ),
        )
    } else {
        let value = d.from_compute("(v - mean) * r");
        (
            String::new(),
            format!(
                r#"    if (valid) {{
        for (long long j = gl; j < cols; j += gs) {{
            const {c} v = {load};
            out[base + j] = {value};
        }}
    }}
"#
            ),
        )
    };
    let mut s = row_reducers(entry, d);
    s.push_str(&format!(
        r#"// Row t, by the group's lanes gl, gl + gs, ... (every lane joins the reductions).
__device__ __forceinline__ void {entry}_row({t}* __restrict__ out, const {t}* __restrict__ x, long long cols, {extra_params}{c} eps, long long t, bool valid, int gl, int gs, int group) {{
    const long long base = t * cols;
    {c} s = {zero};
    if (valid) {{
        for (long long j = gl; j < cols; j += gs) s += {load};
    }}
    s = {entry}_group_sum(s, group);
    const {c} mean = s / ({c})cols;
    {c} q = {zero};
    if (valid) {{
        for (long long j = gl; j < cols; j += gs) {{
            const {c} v = {load} - mean;
            q += v * v;
        }}
    }}
    q = {entry}_group_sum(q, group);
    const {c} r = {one} / {sqrt}(q / ({c})cols + eps);
{finish}}}
"#
    ));
    s
}

/// The row function of the softmax's Jacobian product `x (v - sum(x v))` (`x` the softmax's
/// output), or, for `log`, of the log-softmax's VJP `v - exp(x) sum(v)` (`x` the log-softmax's
/// output): one sum over the row, then the result.
fn softmax_backward_helpers(entry: &str, d: KernelDType, log: bool) -> String {
    let (t, c) = (d.c_type(), d.compute_type());
    let (xj, vj) = (d.to_compute("x[base + j]"), d.to_compute("v[base + j]"));
    let (summand, value) = if log {
        (
            vj.clone(),
            d.from_compute(&format!("{vj} - {}({xj}) * s", d.math("exp"))),
        )
    } else {
        (format!("{xj} * {vj}"), d.from_compute(&format!("{xj} * ({vj} - s)")))
    };
    let mut s = row_reducers(entry, d);
    s.push_str(&format!(
        r#"// Row t, by the group's lanes gl, gl + gs, ... (every lane joins the reductions).
__device__ __forceinline__ void {entry}_row({t}* __restrict__ out, const {t}* __restrict__ x, long long cols, const {t}* __restrict__ v, long long t, bool valid, int gl, int gs, int group) {{
    const long long base = t * cols;
    {c} s = {zero};
    if (valid) {{
        for (long long j = gl; j < cols; j += gs) s += {summand};
    }}
    s = {entry}_group_sum(s, group);
    if (valid) {{
        for (long long j = gl; j < cols; j += gs) out[base + j] = {value};
    }}
}}
"#,
        zero = d.compute_literal(0),
    ));
    s
}

/// Softmax cross-entropy of every row of contiguous `[rows, classes]` logits against i64
/// labels `[rows]`, forward and backward in one kernel: `loss[r] = logsumexp(x_r) - x_r[label_r]`
/// when `loss` is not null, and `grad[r, c] = (softmax(x_r)[c] - (c == label_r)) * g[r]` when
/// `grad` is not null (`g`: the per-row cotangent, read only then). With `wrap_negative`,
/// labels in `-classes..0` count from the end (as the CPU's `take_along_axis` does); a label
/// out of range is reported to the error record (kind `LabelOutOfRange`, with the label as
/// given) and gives NaN in that row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrossEntropySpec {
    dtype: KernelDType,
}

impl CrossEntropySpec {
    /// The cross-entropy rows of `dtype` logits (floats).
    pub fn new(dtype: KernelDType) -> Result<CrossEntropySpec, KernelError> {
        floats_only("cross_entropy", dtype)?;
        Ok(CrossEntropySpec { dtype })
    }

    /// The logits' (and loss and gradient) dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for CrossEntropySpec {
    fn entry_name(&self) -> String {
        format!("nb_cross_entropy_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("loss", ArgType::Out(self.dtype)),
            Param::new("grad", ArgType::Out(self.dtype)),
            Param::new("x", ArgType::In(self.dtype)),
            Param::new("labels", ArgType::In(KernelDType::I64)),
            Param::new("g", ArgType::In(self.dtype)),
            Param::new("rows", ArgType::I64),
            Param::new("cols", ArgType::I64),
            Param::new("wrap_negative", ArgType::I32),
            Param::new("group", ArgType::I32),
            Param::new("err", ArgType::ErrorRecord),
        ]
    }

    fn helpers(&self, entry: &str) -> String {
        let d = self.dtype;
        let (t, c) = (d.c_type(), d.compute_type());
        let (zero, one) = (d.compute_literal(0), d.compute_literal(1));
        let exp = d.math("exp");
        let log = d.math("log");
        let nan = d.nan();
        let at_label = d.to_compute("x[base + label]");
        let at_j = d.to_compute("x[base + j]");
        let scale = d.to_compute("g[t]");
        // `ls - (x - shift)` and `exp((x - shift) - ls)`: the rounding of the CPU's
        // log-softmax rows, so both devices give the composition's values.
        let loss = d.from_compute(&format!("ok ? ls - ({at_label} - shift) : {nan}"));
        let grad = d.from_compute(&format!(
            "ok ? ({exp}(({at_j} - shift) - ls) - (j == label ? {one} : {zero})) * scale : {nan}"
        ));
        let mut s = row_reducers(entry, d);
        s.push_str(&format!(
            r#"// Row t, by the group's lanes gl, gl + gs, ... (every lane joins the reductions).
__device__ __forceinline__ void {entry}_row({t}* __restrict__ loss, {t}* __restrict__ grad, const {t}* __restrict__ x, const long long* __restrict__ labels, const {t}* __restrict__ g, long long cols, int wrap_negative, unsigned long long* err, long long t, bool valid, int gl, int gs, int group) {{
{stats}    if (!valid) return;
    const {c} ls = {log}(s);
    long long label = labels[t];
    if (wrap_negative && label < 0) label += cols;
    const bool ok = label >= 0 && label < cols;
    if (gl == 0) {{
        if (!ok) nb_report(err, NB_ERR_LABEL, labels[t], cols);
        if (loss != nullptr) loss[t] = {loss};
    }}
    if (grad != nullptr) {{
        const {c} scale = {scale};
        for (long long j = gl; j < cols; j += gs) grad[base + j] = {grad};
    }}
}}
"#,
            stats = row_stats(entry, d, true, "cols"),
        ));
        s
    }

    fn body(&self, entry: &str) -> String {
        group_loop(
            "rows",
            &format!("{entry}_row(loss, grad, x, labels, g, cols, wrap_negative, err, t, valid, gl, gs, group);\n"),
        )
    }
}

/// One Adam (or AdamW) step over `n` contiguous elements of `param`, `m`, `v` and `grad`,
/// written to `out` (`[3, n]`: the new parameter, then the new moments), in one pass, with the CPU optimiser's formula: `g += wd * p` unless decoupled; `m = b1 m + (1 - b1)
/// g`; `v = b2 v + (1 - b2) g^2`; `p -= lr (m / bias1) / (sqrt(v / bias2) + eps)`; then
/// `p -= lr wd p_old` when decoupled. `bias1 = 1 - b1^t` and `bias2 = 1 - b2^t` are formed in
/// double from the step number `t = count[0]` (device memory, so that a replayed step reads
/// the current one). Computed in float (double for f64); the state has the parameter's dtype.
/// Out of place, so one launch reads each operand once and writes each result once (updating
/// in place needed a copy of the three inputs first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdamSpec {
    dtype: KernelDType,
}

impl AdamSpec {
    /// The Adam step for `dtype` parameters (floats).
    pub fn new(dtype: KernelDType) -> Result<AdamSpec, KernelError> {
        floats_only("adam", dtype)?;
        Ok(AdamSpec { dtype })
    }

    /// The dtype of the parameters, the moments and the gradient.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for AdamSpec {
    fn entry_name(&self) -> String {
        format!("nb_adam_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let d = self.dtype;
        vec![
            Param::new("out", ArgType::Out(d)),
            Param::new("param", ArgType::In(d)),
            Param::new("m", ArgType::In(d)),
            Param::new("v", ArgType::In(d)),
            Param::new("grad", ArgType::In(d)),
            Param::new("n", ArgType::I64),
            Param::new("lr", ArgType::F64),
            Param::new("beta1", ArgType::F64),
            Param::new("beta2", ArgType::F64),
            Param::new("eps", ArgType::F64),
            Param::new("weight_decay", ArgType::F64),
            Param::new("count", ArgType::In(KernelDType::I64)),
            Param::new("decoupled", ArgType::I32),
        ]
    }

    fn body(&self, _entry: &str) -> String {
        let d = self.dtype;
        let c = d.compute_type();
        let sqrt = d.math("sqrt");
        let stmts = format!(
            r#"const {c} p = {p};
{c} g = {g};
if (coupled_wd) g = g + p * wd;
const {c} m1 = {m} * b1 + g * one_minus_b1;
const {c} v1 = {v} * b2 + g * g * one_minus_b2;
{c} q = p - (m1 / c1) / ({sqrt}(v1 / c2) + eps_c) * lr_c;
if (decoupled_wd) q = q - p * lr_wd;
out[i] = {sq};
out[n + i] = {sm};
out[2 * n + i] = {sv};
"#,
            p = d.to_compute("param[i]"),
            g = d.to_compute("grad[i]"),
            m = d.to_compute("m[i]"),
            v = d.to_compute("v[i]"),
            sq = d.from_compute("q"),
            sm = d.from_compute("m1"),
            sv = d.from_compute("v1"),
        );
        format!(
            r#"    // Scalars are formed in double, as the CPU optimiser forms them, then rounded once.
    const {c} lr_c = ({c})lr;
    const {c} b1 = ({c})beta1;
    const {c} b2 = ({c})beta2;
    const {c} one_minus_b1 = ({c})(1.0 - beta1);
    const {c} one_minus_b2 = ({c})(1.0 - beta2);
    const {c} eps_c = ({c})eps;
    const {c} wd = ({c})weight_decay;
    const {c} lr_wd = ({c})(lr * weight_decay);
    const double t = (double)count[0];
    const {c} c1 = ({c})(1.0 - pow(beta1, t));
    const {c} c2 = ({c})(1.0 - pow(beta2, t));
    const bool coupled_wd = weight_decay != 0.0 && !decoupled;
    const bool decoupled_wd = weight_decay != 0.0 && decoupled;
{}"#,
            grid_stride(&stmts)
        )
    }
}

/// The SGD update of one parameter (PyTorch's `torch.optim.SGD` without dampening): with
/// `g' = g + weight_decay * p`, the velocity `v' = momentum * v + g'` and the step along `v'`,
/// or along `g' + momentum * v'` with `nesterov` (along `g'` without momentum), `p' = p - lr *
/// step`. Writes `out[i] = p'` and, with momentum, `out[n + i] = v'`: one launch reads each
/// operand once. Scalars are rounded once from double; the arithmetic is in float (double for
/// f64) in the CPU's order, each operation rounded on its own (no FMA), so f32 and f64 results
/// are the composition's bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SgdSpec {
    dtype: KernelDType,
    momentum: bool,
}

impl SgdSpec {
    /// The SGD step for `dtype` parameters (floats), with a velocity when `momentum`.
    pub fn new(dtype: KernelDType, momentum: bool) -> Result<SgdSpec, KernelError> {
        floats_only("sgd", dtype)?;
        Ok(SgdSpec { dtype, momentum })
    }

    /// The dtype of the parameter, the gradient and the velocity.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// Whether the kernel reads and writes a velocity.
    pub fn momentum(&self) -> bool {
        self.momentum
    }
}

impl Gen for SgdSpec {
    fn entry_name(&self) -> String {
        let kind = if self.momentum { "sgd_momentum" } else { "sgd" };
        format!("nb_{kind}_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let d = self.dtype;
        let mut p = vec![
            Param::new("out", ArgType::Out(d)),
            Param::new("param", ArgType::In(d)),
            Param::new("grad", ArgType::In(d)),
        ];
        if self.momentum {
            p.push(Param::new("velocity", ArgType::In(d)));
        }
        p.extend([
            Param::new("n", ArgType::I64),
            Param::new("lr", ArgType::F64),
            Param::new("momentum", ArgType::F64),
            Param::new("weight_decay", ArgType::F64),
            Param::new("nesterov", ArgType::I32),
        ]);
        p
    }

    fn body(&self, _entry: &str) -> String {
        let d = self.dtype;
        let c = d.compute_type();
        // Every operation rounded on its own (`*_rn` intrinsics: NVRTC would otherwise contract
        // a multiply and an add into one FMA), so f32 and f64 results equal the composition's.
        let (mul, add, sub) = if c == "double" {
            ("__dmul_rn", "__dadd_rn", "__dsub_rn")
        } else {
            ("__fmul_rn", "__fadd_rn", "__fsub_rn")
        };
        let update = if self.momentum {
            format!(
                r#"const {c} v1 = {add}({mul}({v}, mu), g);
const {c} step = nesterov ? {add}(g, {mul}(v1, mu)) : v1;
out[i] = {sq};
out[n + i] = {sv};
"#,
                v = d.to_compute("velocity[i]"),
                sq = d.from_compute(&format!("{sub}(p, {mul}(step, lr_c))")),
                sv = d.from_compute("v1"),
            )
        } else {
            format!("out[i] = {};\n", d.from_compute(&format!("{sub}(p, {mul}(g, lr_c))")))
        };
        let stmts = format!(
            r#"const {c} p = {p};
{c} g = {g};
if (decay) g = {add}(g, {mul}(p, wd));
{update}"#,
            p = d.to_compute("param[i]"),
            g = d.to_compute("grad[i]"),
        );
        format!(
            r#"    // Scalars are formed in double, as the CPU optimiser forms them, then rounded once.
    const {c} lr_c = ({c})lr;
    const {c} mu = ({c})momentum;
    const {c} wd = ({c})weight_decay;
    const bool decay = weight_decay != 0.0;
    (void)mu;
{}"#,
            grid_stride(&stmts)
        )
    }
}
