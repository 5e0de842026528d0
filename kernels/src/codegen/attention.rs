//! Fused scaled dot-product attention over contiguous `[matrices, L, D]` operands, without a
//! `[Lq, Lk]` scores tensor, in three tiled passes (FlashAttention's recomputation, on the
//! CUDA cores):
//!
//! - **forward**: the output with each query's statistics, packed as `[Lq, Dv + 2]` (the
//!   output, the largest raw score `m` and `sum(exp(scale (s - m)))`), by an online softmax
//!   over the keys;
//! - **backward over queries**: the query gradients and each query's `sum(d_o * o)`;
//! - **backward over keys**: the key and value gradients, reading those sums (no atomics).
//!
//! Each block of [`THREADS`] threads owns consecutive rows of one matrix (queries, or keys in
//! the last pass). A group of lanes holds one or more rows in registers, a few dozen bytes of
//! each a lane ([`AttentionTuning`]), spread so that the lanes of a group read neighbouring 16-byte
//! vectors; the block walks the other operand in tiles of rows staged in shared memory, which
//! every group reads at once (a broadcast), each vector read serving all its rows. Dot products are summed across the group with
//! shuffles. The kernels are generated per head width class ([`HEAD_CLASSES`]: the wider of
//! `D` and `Dv`, rounded up), which fixes the group size, the rows per block and the tile.
//! A causal query `i` sees keys `0..=i`.
//!
//! A masked variant takes a boolean mask, a strided view of `[matrices, Lq, Lk]` (a key
//! padding mask broadcast over heads and queries is read in place, never expanded): its
//! layout locates each matrix, and its row and column strides the queries and keys within. A
//! query that keeps no key attends to nothing: output 0, statistics `(-inf, 0)`, and no
//! gradient.
//!
//! Floats of 32 and 64 bits only (the statistics would round in a half type), with `D` and
//! `Dv` up to [`MAX_HEAD`].

use super::Gen;
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::params::{ArgType, Param};

/// The head width classes the kernels are generated for: a call takes the smallest that holds
/// the wider of `D` and `Dv`.
pub const HEAD_CLASSES: [usize; 4] = [32, 64, 128, 256];

/// The largest head width (`D` and `Dv`) the kernels take.
pub const MAX_HEAD: usize = 256;

/// Threads per block of every attention kernel.
pub const THREADS: u32 = 128;

/// How the attention kernels spread rows over lanes: the bytes of a row one lane holds in
/// registers, and the rows a group of lanes holds (every staged vector a lane reads feeds that
/// many rows). Both trade registers, and so resident warps, against work per shared-memory
/// read and against per-row work repeated by every lane of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionTuning {
    /// Bytes of a row one lane holds: 32, 64 or 128.
    pub lane_bytes: usize,
    /// Rows a group of lanes holds: 1, 2 or 4.
    pub rows_per_group: usize,
}

impl AttentionTuning {
    /// The tuning the backend uses unless told otherwise (the fastest measured on an H200).
    pub const DEFAULT: AttentionTuning = AttentionTuning {
        lane_bytes: 128,
        rows_per_group: 1,
    };
}

impl Default for AttentionTuning {
    fn default() -> AttentionTuning {
        AttentionTuning::DEFAULT
    }
}

/// Bytes of shared memory the two staged tiles take at most.
const TILE_BYTES: usize = 32 * 1024;

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

/// One pass of the fused attention for `dtype` operands of one head width class, with or
/// without a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionSpec {
    pass: AttentionPass,
    dtype: KernelDType,
    masked: bool,
    head: usize,
    tuning: AttentionTuning,
}

impl AttentionSpec {
    /// The pass `pass` for `dtype` (f32 or f64) and heads of width up to `head` (the wider of
    /// `D` and `Dv`, at most [`MAX_HEAD`]), taking a boolean mask when `masked`.
    pub fn new(
        pass: AttentionPass,
        dtype: KernelDType,
        masked: bool,
        head: usize,
    ) -> Result<AttentionSpec, KernelError> {
        let kernel = || format!("attention {}", pass.name());
        if !matches!(dtype, KernelDType::F32 | KernelDType::F64) {
            return Err(KernelError::Unsupported {
                kernel: kernel(),
                dtype,
                accepted: "f32 or f64",
            });
        }
        let Some(&head) = HEAD_CLASSES.iter().find(|&&c| c >= head.max(1)) else {
            return Err(KernelError::Unsupported {
                kernel: format!("{} with heads of width {head}", kernel()),
                dtype,
                accepted: "heads of width 1 to 256",
            });
        };
        Ok(AttentionSpec {
            pass,
            dtype,
            masked,
            head,
            tuning: AttentionTuning::DEFAULT,
        })
    }

    /// This pass with rows spread as `tuning` says, or an error naming what the head width
    /// class does not allow (a row over more than 32 lanes, or a lane holding less than one
    /// 16-byte vector).
    pub fn with_tuning(self, tuning: AttentionTuning) -> Result<AttentionSpec, KernelError> {
        let t = AttentionSpec { tuning, ..self };
        let lanes_ok = [32, 64, 128].contains(&tuning.lane_bytes) && t.per_lane() <= self.head && t.group() <= 32;
        if !lanes_ok || ![1, 2, 4].contains(&tuning.rows_per_group) {
            return Err(KernelError::Unsupported {
                kernel: format!(
                    "attention {} for heads up to {} with {tuning:?}",
                    self.pass.name(),
                    self.head
                ),
                dtype: self.dtype,
                accepted: "32, 64 or 128 bytes a lane (a row over 1 to 32 lanes) and 1, 2 or 4 rows a group",
            });
        }
        Ok(t)
    }

    /// The pass.
    pub fn pass(&self) -> AttentionPass {
        self.pass
    }

    /// The operands' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// The head width class: the widest `D` and `Dv` these kernels take.
    pub fn head(&self) -> usize {
        self.head
    }

    fn elem(&self) -> usize {
        self.dtype.size_in_bytes()
    }

    /// Row elements per lane.
    fn per_lane(&self) -> usize {
        self.tuning.lane_bytes / self.elem()
    }

    /// Elements in one 16-byte vector.
    fn vector(&self) -> usize {
        16 / self.elem()
    }

    /// Lanes that hold one row.
    fn group(&self) -> usize {
        self.head / self.per_lane()
    }

    /// Groups in a block.
    fn groups(&self) -> usize {
        THREADS as usize / self.group()
    }

    /// Rows (queries, or keys in the last pass) each block owns: group `g`'s rows are `g`,
    /// `g + groups`, ...
    pub fn rows_per_block(&self) -> usize {
        self.groups() * self.tuning.rows_per_group
    }

    /// Rows of the other operand staged per tile: as many as the shared memory budget holds,
    /// up to 32 (tiles of 64 measured the same on the H200 for the default tuning, and slower
    /// for the others).
    fn tile(&self) -> usize {
        (TILE_BYTES / (2 * self.head * self.elem())).min(32)
    }
}

impl Gen for AttentionSpec {
    fn entry_name(&self) -> String {
        let masked = if self.masked { "_masked" } else { "" };
        let t = self.tuning;
        let tuning = if t == AttentionTuning::DEFAULT {
            String::new()
        } else {
            format!("_l{}r{}", t.lane_bytes, t.rows_per_group)
        };
        format!(
            "nb_attention_{}{masked}_h{}{tuning}_{}",
            self.pass.name(),
            self.head,
            self.dtype
        )
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

    /// The row helpers. A lane `gl` of a group holds `per_lane` elements of each of its rows
    /// (row `x`'s at `r + x * per_lane`): element `e` of vector `t` is the row's element
    /// `(gl + group t) vector + e`.
    fn helpers(&self, entry: &str) -> String {
        let c = self.dtype.compute_type();
        let vt = if self.dtype == KernelDType::F32 {
            "float4"
        } else {
            "double2"
        };
        let (g, v, h, tile, f) = (self.group(), self.vector(), self.head, self.tile(), self.per_lane());
        let (nv, rows) = (f / v, self.tuning.rows_per_group);
        let zero = self.dtype.compute_literal(0);
        let fields = ["x", "y", "z", "w"];
        // One partial sum per vector element: four short chains of dependent FMAs rather than
        // one long one.
        let dot: String = (0..v)
            .map(|e| {
                format!(
                    "            part[x * {v} + {e}] += r[x * {f} + t * {v} + {e}] * w.{};\n",
                    fields[e]
                )
            })
            .collect();
        let dot_sum: String = (0..v).map(|e| format!(" + part[x * {v} + {e}]")).collect();
        let axpy: String = (0..v)
            .map(|e| format!("            r[x * {f} + t * {v} + {e}] += a[x] * w.{};\n", fields[e]))
            .collect();
        format!(
            r#"__device__ __forceinline__ {c} {entry}_max({c} a, {c} b) {{ return (a != a || a >= b) ? a : b; }}
// The sum of v over the {g} lanes of a group (identical in every lane).
__device__ __forceinline__ {c} {entry}_group_sum({c} v) {{
    for (int o = {g} / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}}
// out[x]: this lane's share of the dot product of its row x with a staged row.
__device__ __forceinline__ void {entry}_dot(const {c}* r, const {c}* row, int gl, {c}* out) {{
    {c} part[{rows} * {v}];
#pragma unroll
    for (int x = 0; x < {rows} * {v}; ++x) part[x] = {zero};
#pragma unroll
    for (int t = 0; t < {nv}; ++t) {{
        const {vt} w = *reinterpret_cast<const {vt}*>(row + (gl + {g} * t) * {v});
#pragma unroll
        for (int x = 0; x < {rows}; ++x) {{
{dot}        }}
    }}
#pragma unroll
    for (int x = 0; x < {rows}; ++x) out[x] = {zero}{dot_sum};
}}
// Row x += a[x] * (this lane's slice of a staged row).
__device__ __forceinline__ void {entry}_axpy({c}* r, const {c}* a, const {c}* row, int gl) {{
#pragma unroll
    for (int t = 0; t < {nv}; ++t) {{
        const {vt} w = *reinterpret_cast<const {vt}*>(row + (gl + {g} * t) * {v});
#pragma unroll
        for (int x = 0; x < {rows}; ++x) {{
{axpy}        }}
    }}
}}
// This lane's slice of a row of n elements at src (zeros past n, or when !valid).
__device__ __forceinline__ void {entry}_load({c}* r, const {c}* src, long long n, bool valid, int gl) {{
#pragma unroll
    for (int t = 0; t < {nv}; ++t) {{
#pragma unroll
        for (int e = 0; e < {v}; ++e) {{
            const long long i = (long long)(gl + {g} * t) * {v} + e;
            r[t * {v} + e] = (valid && i < n) ? src[i] : {zero};
        }}
    }}
}}
// Writes this lane's slice of a row of n elements, times s.
__device__ __forceinline__ void {entry}_store({c}* dst, const {c}* r, {c} s, long long n, int gl) {{
#pragma unroll
    for (int t = 0; t < {nv}; ++t) {{
#pragma unroll
        for (int e = 0; e < {v}; ++e) {{
            const long long i = (long long)(gl + {g} * t) * {v} + e;
            if (i < n) dst[i] = r[t * {v} + e] * s;
        }}
    }}
}}
// Rows r0 .. r0 + {tile} of a [rows, n] matrix into a [{tile}, {h}] tile (zeros outside), by the block.
__device__ __forceinline__ void {entry}_stage({c}* tile, const {c}* src, long long r0, long long rows, long long n) {{
    for (int e = threadIdx.x; e < {tile} * {h}; e += blockDim.x) {{
        const int rr = e / {h};
        const int p = e - rr * {h};
        const long long r = r0 + rr;
        tile[e] = (r < rows && p < n) ? src[r * n + p] : {zero};
    }}
}}
"#
        )
    }

    fn body(&self, entry: &str) -> String {
        let d = self.dtype;
        let c = d.compute_type();
        let vt = if d == KernelDType::F32 { "float4" } else { "double2" };
        let exp = d.math("exp");
        let ninf = d.neg_infinity();
        let zero = d.compute_literal(0);
        let one = d.compute_literal(1);
        let (g, v, h, tile, f) = (self.group(), self.vector(), self.head, self.tile(), self.per_lane());
        let (rows, groups, per_block) = (self.tuning.rows_per_group, self.groups(), self.rows_per_block());
        let all = rows * f;
        let extent = if self.pass == AttentionPass::BackwardKeys {
            "lk"
        } else {
            "lq"
        };
        // Matrix b's mask, and whether it keeps the pair (i, j) (read only when the rest of
        // the condition holds).
        let (mask_base, kept) = if self.masked {
            (
                "        const bool* mb = mask + nb_offset(mask_layout, b * lq * lk);\n",
                " && mb[i * mask_rs + j * mask_cs]",
            )
        } else {
            ("", "")
        };
        // Query x's index inside the score loops, which only the mask reads.
        let row_i = if self.masked {
            format!("                    const long long i = r0 + slot + x * {groups};\n")
        } else {
            String::new()
        };
        let head = format!(
            r#"    const int gl = (threadIdx.x & 31) & ({g} - 1);
    const long long slot = threadIdx.x / {g};
    const {c} sc = ({c})scale;
    __shared__ {vt} stage_a_v[{tile} * {h} / {v}];
    __shared__ {vt} stage_b_v[{tile} * {h} / {v}];
    {c}* stage_a = reinterpret_cast<{c}*>(stage_a_v);
    {c}* stage_b = reinterpret_cast<{c}*>(stage_b_v);
    const long long per_block = {per_block};
    const long long blocks_per_matrix = ({extent} + per_block - 1) / per_block;
    for (long long blk = blockIdx.x; blk < matrices * blocks_per_matrix; blk += gridDim.x) {{
        const long long b = blk / blocks_per_matrix;
        const long long r0 = (blk - b * blocks_per_matrix) * per_block;
{mask_base}"#
        );
        // The queries' passes: this group's queries (query x is i = r0 + slot + x groups),
        // the keys each sees, and the keys the block stages.
        let query_rows = format!(
            r#"        const long long last = (r0 + per_block < lq ? r0 + per_block : lq) - 1;
        const long long key_end = causal ? (last + 1 < lk ? last + 1 : lk) : lk;
        const {c}* kb = k + b * lk * dim;
        const {c}* vb = v + b * lk * dv;
        bool valid[{rows}];
        long long keys[{rows}];
        {c} qr[{all}];
        for (int x = 0; x < {rows}; ++x) {{
            const long long i = r0 + slot + x * {groups};
            valid[x] = i < lq;
            keys[x] = causal ? (i + 1 < lk ? i + 1 : lk) : lk;
            {entry}_load(qr + x * {f}, q + (b * lq + i) * dim, dim, valid[x], gl);
        }}
"#
        );
        let key_tiles = format!(
            r#"        for (long long j0 = 0; j0 < key_end; j0 += {tile}) {{
            __syncthreads();
            {entry}_stage(stage_a, kb, j0, lk, dim);
            {entry}_stage(stage_b, vb, j0, lk, dv);
            __syncthreads();
            // The last tile stops at the last key (the bound is the same for the whole block).
            const int tile_keys = key_end - j0 < {tile} ? (int)(key_end - j0) : {tile};
            for (int jj = 0; jj < tile_keys; ++jj) {{
                const long long j = j0 + jj;
                const {c}* kr = stage_a + jj * {h};
                const {c}* vr = stage_b + jj * {h};
"#
        );
        let pass = match self.pass {
            AttentionPass::Forward => format!(
                r#"{query_rows}        {c} acc[{all}];
        for (int x = 0; x < {all}; ++x) acc[x] = {zero};
        {c} m[{rows}];
        {c} l[{rows}];
        for (int x = 0; x < {rows}; ++x) {{
            m[x] = {ninf};
            l[x] = {zero};
        }}
{key_tiles}                {c} part[{rows}];
                {entry}_dot(qr, kr, gl, part);
                {c} p[{rows}];
                for (int x = 0; x < {rows}; ++x) {{
{row_i}                    const {c} dot = {entry}_group_sum(part[x]);
                    const {c} s = (valid[x] && j < keys[x]{kept}) ? dot : {ninf};
                    // A new largest score rescales what was summed so far.
                    if (s > m[x]) {{
                        const {c} alpha = {exp}((m[x] - s) * sc);
                        l[x] *= alpha;
                        for (int y = 0; y < {f}; ++y) acc[x * {f} + y] *= alpha;
                        m[x] = s;
                    }}
                    // A score of -inf (a dropped key) weighs nothing, even while m is -inf.
                    p[x] = s == {ninf} ? {zero} : {exp}((s - m[x]) * sc);
                    l[x] += p[x];
                }}
                {entry}_axpy(acc, p, vr, gl);
            }}
        }}
        for (int x = 0; x < {rows}; ++x) {{
            if (valid[x]) {{
                {c}* o = out + (b * lq + r0 + slot + x * {groups}) * (dv + 2);
                // l = 0: the query kept no key and attends to nothing.
                {entry}_store(o, acc + x * {f}, l[x] > {zero} ? {one} / l[x] : {zero}, dv, gl);
                if (gl == 0) {{
                    o[dv] = m[x];
                    o[dv + 1] = l[x];
                }}
            }}
        }}
"#
            ),
            AttentionPass::BackwardQueries => format!(
                r#"{query_rows}        {c} dor[{all}];
        {c} dd[{rows}];
        {c} m[{rows}];
        {c} inv[{rows}];
        bool live[{rows}];
        for (int x = 0; x < {rows}; ++x) {{
            const long long i = r0 + slot + x * {groups};
            const {c}* pk = packed + (b * lq + i) * (dv + 2);
            {entry}_load(dor + x * {f}, d_o + (b * lq + i) * dv, dv, valid[x], gl);
            // sum(d_o * o): softmax's backward subtracts it (FlashAttention's form).
            {c} orow[{f}];
            {entry}_load(orow, pk, dv, valid[x], gl);
            {c} part = {zero};
            for (int y = 0; y < {f}; ++y) part += dor[x * {f} + y] * orow[y];
            dd[x] = {entry}_group_sum(part);
            m[x] = valid[x] ? pk[dv] : {zero};
            const {c} lsum = valid[x] ? pk[dv + 1] : {zero};
            // A sum of 0: the query kept no key, and has no gradient.
            live[x] = valid[x] && lsum != {zero};
            inv[x] = live[x] ? {one} / lsum : {zero};
        }}
        {c} dq[{all}];
        for (int x = 0; x < {all}; ++x) dq[x] = {zero};
{key_tiles}                {c} part_s[{rows}];
                {c} part_p[{rows}];
                {entry}_dot(qr, kr, gl, part_s);
                {entry}_dot(dor, vr, gl, part_p);
                {c} ds[{rows}];
                for (int x = 0; x < {rows}; ++x) {{
{row_i}                    const {c} s = {entry}_group_sum(part_s[x]);
                    const {c} dp = {entry}_group_sum(part_p[x]);
                    ds[x] = (live[x] && j < keys[x]{kept}) ? {exp}((s - m[x]) * sc) * inv[x] * (dp - dd[x]) * sc : {zero};
                }}
                {entry}_axpy(dq, ds, kr, gl);
            }}
        }}
        const long long per_matrix = lq * dim + lk * dim + lk * dv;
        for (int x = 0; x < {rows}; ++x) {{
            if (valid[x]) {{
                const long long i = r0 + slot + x * {groups};
                {entry}_store(grads + b * per_matrix + i * dim, dq + x * {f}, {one}, dim, gl);
                if (gl == 0) row_dots[b * lq + i] = dd[x];
            }}
        }}
"#
            ),
            AttentionPass::BackwardKeys => format!(
                r#"        bool valid[{rows}];
        {c} kr[{all}];
        {c} vr[{all}];
        for (int x = 0; x < {rows}; ++x) {{
            const long long j = r0 + slot + x * {groups};
            valid[x] = j < lk;
            {entry}_load(kr + x * {f}, k + (b * lk + j) * dim, dim, valid[x], gl);
            {entry}_load(vr + x * {f}, v + (b * lk + j) * dv, dv, valid[x], gl);
        }}
        {c} dk[{all}];
        {c} dvv[{all}];
        for (int x = 0; x < {all}; ++x) {{
            dk[x] = {zero};
            dvv[x] = {zero};
        }}
        const {c}* qb = q + b * lq * dim;
        const {c}* dob = d_o + b * lq * dv;
        const {c}* pb = packed + b * lq * (dv + 2);
        const {c}* rd = row_dots + b * lq;
        __shared__ {c} q_max[{tile}];
        __shared__ {c} q_sum[{tile}];
        __shared__ {c} q_dot[{tile}];
        // The queries that see the block's keys: i >= r0 when causal.
        for (long long i0 = causal ? r0 : 0; i0 < lq; i0 += {tile}) {{
            __syncthreads();
            {entry}_stage(stage_a, qb, i0, lq, dim);
            {entry}_stage(stage_b, dob, i0, lq, dv);
            for (int e = threadIdx.x; e < {tile}; e += blockDim.x) {{
                const long long i = i0 + e;
                q_max[e] = i < lq ? pb[i * (dv + 2) + dv] : {zero};
                q_sum[e] = i < lq ? pb[i * (dv + 2) + dv + 1] : {zero};
                q_dot[e] = i < lq ? rd[i] : {zero};
            }}
            __syncthreads();
            const int tile_queries = lq - i0 < {tile} ? (int)(lq - i0) : {tile};
            for (int ii = 0; ii < tile_queries; ++ii) {{
                const long long i = i0 + ii;
                const {c}* qr = stage_a + ii * {h};
                const {c}* dor = stage_b + ii * {h};
                {c} part_s[{rows}];
                {c} part_p[{rows}];
                {entry}_dot(kr, qr, gl, part_s);
                {entry}_dot(vr, dor, gl, part_p);
                {c} p[{rows}];
                {c} ds[{rows}];
                for (int x = 0; x < {rows}; ++x) {{
                    const long long j = r0 + slot + x * {groups};
                    const {c} s = {entry}_group_sum(part_s[x]);
                    const {c} dp = {entry}_group_sum(part_p[x]);
                    const bool use = valid[x] && i < lq && q_sum[ii] != {zero} && (!causal || i >= j){kept};
                    p[x] = use ? {exp}((s - q_max[ii]) * sc) * ({one} / q_sum[ii]) : {zero};
                    ds[x] = use ? p[x] * (dp - q_dot[ii]) * sc : {zero};
                }}
                {entry}_axpy(dk, ds, qr, gl);
                {entry}_axpy(dvv, p, dor, gl);
            }}
        }}
        const long long per_matrix = lq * dim + lk * dim + lk * dv;
        for (int x = 0; x < {rows}; ++x) {{
            if (valid[x]) {{
                const long long j = r0 + slot + x * {groups};
                {entry}_store(grads + b * per_matrix + lq * dim + j * dim, dk + x * {f}, {one}, dim, gl);
                {entry}_store(grads + b * per_matrix + lq * dim + lk * dim + j * dv, dvv + x * {f}, {one}, dv, gl);
            }}
        }}
"#
            ),
        };
        format!("{head}{pass}    }}\n")
    }
}
