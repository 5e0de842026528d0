//! Fused scaled dot-product attention over contiguous `[matrices, L, D]` operands, without a
//! `[Lq, Lk]` scores tensor: the forward (one warp per query, keys taken 32 at a time, one per
//! lane, with an online softmax; the output packed with each query's statistics as `[Lq, Dv +
//! 2]`: the output, the maximum raw score `m` and `sum(exp(scale (s - m)))`), and the backward
//! in two passes without atomics: one warp per query writes the query gradient and each
//! query's `sum(d_o * o)`, then one warp per key accumulates that key's and its value's
//! gradients over the queries that see it. Both recompute the probabilities from the forward's
//! statistics (FlashAttention's recomputation). A causal query `i` sees keys `0..=i`.
//!
//! A masked variant takes a boolean mask, a strided view of `[matrices, Lq, Lk]` (a key
//! padding mask broadcast over heads and queries is read in place, never expanded): its
//! layout locates each matrix, and its row and column strides the queries and keys within. A
//! query that keeps no key attends to nothing: output 0, statistics `(-inf, 0)`, and no
//! gradient.
//!
//! Floats of 32 and 64 bits only (the statistics would round in a half type), with `D` and
//! `Dv` up to [`MAX_HEAD`] (each lane holds up to eight of a row's elements).

use super::Gen;
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::params::{ArgType, Param};

/// The largest head width (`D` and `Dv`) the kernels take: 8 elements per lane.
pub const MAX_HEAD: usize = 256;

/// The three launches of the fused attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionPass {
    /// The output and the statistics, `[matrices, Lq, Dv + 2]`.
    Forward,
    /// The query gradients (into the packed gradients' first `Lq * D` of every matrix) and
    /// each query's `sum(d_o * o)` (into `row_dots`).
    BackwardQueries,
    /// The key and value gradients (the packed gradients' last `Lk * D + Lk * Dv`), reading
    /// `row_dots`.
    BackwardKeys,
}

impl AttentionPass {
    /// Every pass, in launch order.
    pub const ALL: [AttentionPass; 3] = [
        AttentionPass::Forward,
        AttentionPass::BackwardQueries,
        AttentionPass::BackwardKeys,
    ];

    fn name(self) -> &'static str {
        match self {
            AttentionPass::Forward => "forward",
            AttentionPass::BackwardQueries => "backward_queries",
            AttentionPass::BackwardKeys => "backward_keys",
        }
    }
}

/// One pass of the fused attention for `dtype` operands, with or without a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionSpec {
    pass: AttentionPass,
    dtype: KernelDType,
    masked: bool,
}

impl AttentionSpec {
    /// The pass `pass` for `dtype` (f32 or f64), taking a boolean mask when `masked`.
    pub fn new(pass: AttentionPass, dtype: KernelDType, masked: bool) -> Result<AttentionSpec, KernelError> {
        if !matches!(dtype, KernelDType::F32 | KernelDType::F64) {
            return Err(KernelError::Unsupported {
                kernel: format!("attention {}", pass.name()),
                dtype,
                accepted: "f32 or f64",
            });
        }
        Ok(AttentionSpec { pass, dtype, masked })
    }

    /// The pass.
    pub fn pass(&self) -> AttentionPass {
        self.pass
    }

    /// The operands' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for AttentionSpec {
    fn entry_name(&self) -> String {
        let masked = if self.masked { "_masked" } else { "" };
        format!("nb_attention_{}{masked}_{}", self.pass.name(), self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        let d = self.dtype;
        let mut p = match self.pass {
            AttentionPass::Forward => vec![Param::new("out", ArgType::Out(d))],
            AttentionPass::BackwardQueries => vec![
                Param::new("grads", ArgType::Out(d)),
                Param::new("row_dots", ArgType::Out(d)),
            ],
            AttentionPass::BackwardKeys => vec![
                Param::new("grads", ArgType::Out(d)),
                Param::new("row_dots", ArgType::In(d)),
            ],
        };
        p.extend(["q", "k", "v"].map(|n| Param::new(n, ArgType::In(d))));
        if self.pass != AttentionPass::Forward {
            p.extend(["packed", "d_o"].map(|n| Param::new(n, ArgType::In(d))));
        }
        if self.masked {
            p.push(Param::new("mask", ArgType::In(KernelDType::Bool)));
            p.push(Param::new("mask_layout", ArgType::Layout));
            p.extend(["mask_rs", "mask_cs"].map(|n| Param::new(n, ArgType::I64)));
        }
        p.extend(["matrices", "lq", "lk", "dim", "dv"].map(|n| Param::new(n, ArgType::I64)));
        p.push(Param::new("scale", ArgType::F64));
        p.push(Param::new("causal", ArgType::I32));
        p
    }

    fn helpers(&self, entry: &str) -> String {
        let c = self.dtype.compute_type();
        format!(
            "__device__ __forceinline__ {c} {entry}_max({c} a, {c} b) {{ return (a != a || a >= b) ? a : b; }}\n\
             __device__ __forceinline__ {c} {entry}_warp_max({c} v) {{\n    \
                 for (int o = 16; o > 0; o >>= 1) v = {entry}_max(v, __shfl_xor_sync(0xffffffffu, v, o));\n    \
                 return v;\n}}\n\
             __device__ __forceinline__ {c} {entry}_warp_sum({c} v) {{\n    \
                 for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);\n    \
                 return v;\n}}\n"
        )
    }

    fn body(&self, entry: &str) -> String {
        let d = self.dtype;
        let c = d.compute_type();
        let exp = d.math("exp");
        let ninf = d.neg_infinity();
        let zero = d.compute_literal(0);
        let one = d.compute_literal(1);
        let head = format!(
            r#"    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    const long long first_task = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const {c} sc = ({c})scale;
    const long long width = dv + 2;
"#
        );
        // The packed gradients of one matrix: dq, dk, dv.
        let head = if self.pass == AttentionPass::Forward {
            head
        } else {
            head + "    const long long per_matrix = lq * dim + lk * dim + lk * dv;\n"
        };
        // The mask: query i's row `mrow` (forward and query pass) or key j's column `mcol`
        // (key pass) in matrix b, and whether it keeps the pair.
        let (mrow, kept_j, mcol, kept_i) = if self.masked {
            let base = "mask + nb_offset(mask_layout, b * lq * lk)";
            (
                format!("        const bool* mrow = {base} + i * mask_rs;\n"),
                "mrow[j * mask_cs]",
                format!("        const bool* mcol = {base} + j * mask_cs;\n"),
                "mcol[i * mask_rs]",
            )
        } else {
            (String::new(), "true", String::new(), "true")
        };
        // A warp per query `i` of matrix `b` (task `t`), which sees `keys` keys: its row of q,
        // the matrix's keys and values, and its mask row.
        let query_task = format!(
            r#"    for (long long t = first_task; t < matrices * lq; t += warps) {{
        const long long b = t / lq;
        const long long i = t - b * lq;
        const long long keys = causal ? (i + 1 < lk ? i + 1 : lk) : lk;
        const auto* qi = q + t * dim;
        const auto* kb = k + b * lk * dim;
        const auto* vb = v + b * lk * dv;
{mrow}"#
        );
        let loop_body = match self.pass {
            AttentionPass::Forward => format!(
                r#"{query_task}        {c} m = {ninf};
        {c} l = {zero};
        {c} acc[8];
        for (int r = 0; r < 8; ++r) acc[r] = {zero};
        for (long long j0 = 0; j0 < keys; j0 += 32) {{
            const long long j = j0 + lane;
            {c} s = {ninf};
            if (j < keys && {kept_j}) {{
                {c} dot = {zero};
                for (long long p = 0; p < dim; ++p) dot += ({c})qi[p] * ({c})kb[j * dim + p];
                s = dot;
            }}
            const {c} m_new = {entry}_max(m, {entry}_warp_max(s));
            const {c} alpha = m == {ninf} ? {zero} : {exp}((m - m_new) * sc);
            // A score of -inf (a dropped key, or an infinite operand) weighs nothing, even
            // while every score so far is -inf (m_new = -inf would make the difference NaN).
            const {c} pj = (j < keys && s != {ninf}) ? {exp}((s - m_new) * sc) : {zero};
            l = l * alpha + {entry}_warp_sum(pj);
            for (int r = 0; r < 8; ++r) acc[r] *= alpha;
            const int n = keys - j0 < 32 ? (int)(keys - j0) : 32;
            for (int jj = 0; jj < n; ++jj) {{
                const {c} p = __shfl_sync(0xffffffffu, pj, jj);
                const auto* vr = vb + (j0 + jj) * dv;
                for (int r = 0; r < 8; ++r) {{
                    const long long col = lane + 32 * r;
                    if (col < dv) acc[r] += p * ({c})vr[col];
                }}
            }}
            m = m_new;
        }}
        auto* o = out + t * width;
        // l = 0: the query kept no key and attends to nothing.
        const {c} inv = l > {zero} ? {one} / l : {zero};
        for (int r = 0; r < 8; ++r) {{
            const long long col = lane + 32 * r;
            if (col < dv) o[col] = acc[r] * inv;
        }}
        if (lane == 0) {{
            o[dv] = m;
            o[dv + 1] = l;
        }}
    }}
"#
            ),
            AttentionPass::BackwardQueries => format!(
                r#"{query_task}        const auto* doi = d_o + t * dv;
        const auto* pk = packed + t * width;
        // sum(d_o * o): softmax's backward subtracts it (FlashAttention's form).
        {c} dd = {zero};
        for (long long col = lane; col < dv; col += 32) dd += ({c})doi[col] * ({c})pk[col];
        dd = {entry}_warp_sum(dd);
        const {c} m = pk[dv];
        // A sum of 0: the query kept no key, and has no gradient.
        const bool empty = ({c})pk[dv + 1] == {zero};
        const {c} inv = empty ? {zero} : {one} / ({c})pk[dv + 1];
        {c} dq[8];
        for (int r = 0; r < 8; ++r) dq[r] = {zero};
        for (long long j0 = 0; j0 < keys; j0 += 32) {{
            const long long j = j0 + lane;
            {c} ds = {zero};
            if (j < keys && !empty && {kept_j}) {{
                {c} s = {zero};
                for (long long p = 0; p < dim; ++p) s += ({c})qi[p] * ({c})kb[j * dim + p];
                const {c} pj = {exp}((s - m) * sc) * inv;
                {c} dp = {zero};
                for (long long col = 0; col < dv; ++col) dp += ({c})doi[col] * ({c})vb[j * dv + col];
                ds = pj * (dp - dd) * sc;
            }}
            const int n = keys - j0 < 32 ? (int)(keys - j0) : 32;
            for (int jj = 0; jj < n; ++jj) {{
                const {c} g = __shfl_sync(0xffffffffu, ds, jj);
                const auto* kr = kb + (j0 + jj) * dim;
                for (int r = 0; r < 8; ++r) {{
                    const long long col = lane + 32 * r;
                    if (col < dim) dq[r] += g * ({c})kr[col];
                }}
            }}
        }}
        auto* gq = grads + b * per_matrix + i * dim;
        for (int r = 0; r < 8; ++r) {{
            const long long col = lane + 32 * r;
            if (col < dim) gq[col] = dq[r];
        }}
        if (lane == 0) row_dots[t] = dd;
    }}
"#
            ),
            AttentionPass::BackwardKeys => format!(
                r#"    for (long long t = first_task; t < matrices * lk; t += warps) {{
        const long long b = t / lk;
        const long long j = t - b * lk;
        const auto* kj = k + t * dim;
        const auto* vj = v + t * dv;
        const long long row0 = b * lq;
{mcol}        {c} dk[8];
        {c} dvv[8];
        for (int r = 0; r < 8; ++r) {{
            dk[r] = {zero};
            dvv[r] = {zero};
        }}
        // The queries that see key j: i >= j when causal.
        for (long long i0 = causal ? j : 0; i0 < lq; i0 += 32) {{
            const long long i = i0 + lane;
            {c} pi = {zero};
            {c} ds = {zero};
            const auto* pk = packed + (row0 + i) * width;
            if (i < lq && ({c})pk[dv + 1] != {zero} && {kept_i}) {{
                const auto* qi = q + (row0 + i) * dim;
                const auto* doi = d_o + (row0 + i) * dv;
                {c} s = {zero};
                for (long long p = 0; p < dim; ++p) s += ({c})qi[p] * ({c})kj[p];
                pi = {exp}((s - ({c})pk[dv]) * sc) * ({one} / ({c})pk[dv + 1]);
                {c} dp = {zero};
                for (long long col = 0; col < dv; ++col) dp += ({c})doi[col] * ({c})vj[col];
                ds = pi * (dp - ({c})row_dots[row0 + i]) * sc;
            }}
            const int n = lq - i0 < 32 ? (int)(lq - i0) : 32;
            for (int ii = 0; ii < n; ++ii) {{
                const {c} p = __shfl_sync(0xffffffffu, pi, ii);
                const {c} g = __shfl_sync(0xffffffffu, ds, ii);
                const auto* qr = q + (row0 + i0 + ii) * dim;
                const auto* dor = d_o + (row0 + i0 + ii) * dv;
                for (int r = 0; r < 8; ++r) {{
                    const long long col = lane + 32 * r;
                    if (col < dim) dk[r] += g * ({c})qr[col];
                    if (col < dv) dvv[r] += p * ({c})dor[col];
                }}
            }}
        }}
        auto* gk = grads + b * per_matrix + lq * dim + j * dim;
        auto* gv = grads + b * per_matrix + lq * dim + lk * dim + j * dv;
        for (int r = 0; r < 8; ++r) {{
            const long long col = lane + 32 * r;
            if (col < dim) gk[col] = dk[r];
            if (col < dv) gv[col] = dvv[r];
        }}
    }}
"#
            ),
        };
        format!("{head}{loop_body}")
    }
}
