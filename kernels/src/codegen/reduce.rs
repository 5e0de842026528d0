//! Reductions over any set of axes (one or two passes) and arg-max/min along one axis.

use super::{Gen, group_loop, group_reduce_fn};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::ops::{ArgOp, ReduceOp};
use crate::params::{AccType, ArgType, Param};

/// Which pass of a reduction a [`ReduceSpec`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceStage {
    /// One pass: each task (a group of threads) reduces all `n_red` elements of one output.
    Single,
    /// First of two passes: output `o`'s elements are cut into `splits` chunks, and each task
    /// writes one chunk's accumulator to `partial[o * splits + s]`.
    Partial,
    /// Second of two passes: each task reduces one row of `splits` partials into an output.
    Finish,
}

impl ReduceStage {
    /// Every stage, in catalogue order.
    pub const ALL: [ReduceStage; 3] = [ReduceStage::Single, ReduceStage::Partial, ReduceStage::Finish];

    fn suffix(self) -> &'static str {
        match self {
            ReduceStage::Single => "",
            ReduceStage::Partial => "_partial",
            ReduceStage::Finish => "_finish",
        }
    }
}

/// A reduction of a strided input over any axes into a contiguous output (see
/// [`crate::ReduceLayouts`] for the `outer`/`inner` layouts and [`crate::launch::reduce_plan`]
/// for choosing the stage, `group` and `splits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReduceSpec {
    op: ReduceOp,
    dtype: KernelDType,
    stage: ReduceStage,
}

impl ReduceSpec {
    /// The reduction `op` of `dtype` elements (every dtype; bool reduces with or/and as the CPU
    /// backend). Floats accumulate in their compute type (f16 and bf16 in float); integers
    /// wrap.
    pub fn new(op: ReduceOp, dtype: KernelDType, stage: ReduceStage) -> Result<ReduceSpec, KernelError> {
        Ok(ReduceSpec { op, dtype, stage })
    }

    /// The reduction.
    pub fn op(&self) -> ReduceOp {
        self.op
    }

    /// The input and output dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// Which pass this kernel is.
    pub fn stage(&self) -> ReduceStage {
        self.stage
    }

    /// The accumulator type (the element type of the partials between two passes).
    pub fn acc_type(&self) -> AccType {
        use KernelDType::*;
        let sum_like = matches!(self.op, ReduceOp::Sum | ReduceOp::Prod);
        match self.dtype {
            F32 | F16 | BF16 => AccType::F32,
            F64 => AccType::F64,
            I64 if sum_like => AccType::U64,
            I64 => AccType::I64,
            I32 if sum_like => AccType::U32,
            I32 => AccType::I32,
            U8 => AccType::U32,
            Bool => AccType::I32,
        }
    }

    fn identity(&self) -> String {
        let d = self.dtype;
        let acc = self.acc_type().c_type();
        if d.is_float() {
            return match self.op {
                ReduceOp::Sum => d.compute_literal(0),
                ReduceOp::Prod => d.compute_literal(1),
                ReduceOp::Max => d.neg_infinity().to_string(),
                ReduceOp::Min => d.infinity().to_string(),
            };
        }
        let s = match (self.op, d) {
            (ReduceOp::Sum, _) => "0",
            (ReduceOp::Prod, _) => "1",
            (ReduceOp::Max, KernelDType::I64) => "-9223372036854775807LL - 1",
            (ReduceOp::Min, KernelDType::I64) => "9223372036854775807LL",
            (ReduceOp::Max, KernelDType::I32) => "-2147483647 - 1",
            (ReduceOp::Min, KernelDType::I32) => "2147483647",
            (ReduceOp::Max, KernelDType::U8) => "0",
            (ReduceOp::Min, KernelDType::U8) => "255",
            (ReduceOp::Max, _) => "0",
            (ReduceOp::Min, _) => "1",
        };
        format!("({acc})({s})")
    }

    fn combine(&self) -> &'static str {
        if self.dtype == KernelDType::Bool {
            return match self.op {
                ReduceOp::Sum | ReduceOp::Max => "a | b",
                ReduceOp::Prod | ReduceOp::Min => "a & b",
            };
        }
        let float = self.dtype.is_float();
        match self.op {
            ReduceOp::Sum => "a + b",
            ReduceOp::Prod => "a * b",
            // NaN propagates as on the CPU (`a.is_nan() || a >= b`).
            ReduceOp::Max if float => "(a != a || a >= b) ? a : b",
            ReduceOp::Min if float => "(a != a || a <= b) ? a : b",
            ReduceOp::Max => "a >= b ? a : b",
            ReduceOp::Min => "a <= b ? a : b",
        }
    }

    /// A stored element `v` as an accumulator.
    fn load(&self, v: &str) -> String {
        if self.dtype.is_float() {
            self.dtype.to_compute(v)
        } else {
            format!("({}){v}", self.acc_type().c_type())
        }
    }

    /// An accumulator `acc` as a stored element.
    fn store(&self, acc: &str) -> String {
        let d = self.dtype;
        match d {
            KernelDType::Bool => format!("{acc} != 0"),
            _ if d.is_float() => d.from_compute(acc),
            _ => format!("({}){acc}", d.c_type()),
        }
    }
}

impl Gen for ReduceSpec {
    fn entry_name(&self) -> String {
        format!("nb_reduce_{}_{}{}", self.op, self.dtype, self.stage.suffix())
    }

    fn params(&self) -> Vec<Param> {
        let (d, acc) = (self.dtype, self.acc_type());
        match self.stage {
            ReduceStage::Single | ReduceStage::Partial => {
                let mut p = vec![if self.stage == ReduceStage::Single {
                    Param::new("out", ArgType::Out(d))
                } else {
                    Param::new("partial", ArgType::AccOut(acc))
                }];
                p.extend([
                    Param::new("x", ArgType::In(d)),
                    Param::new("outer", ArgType::Layout),
                    Param::new("inner", ArgType::Layout),
                    Param::new("n_out", ArgType::I64),
                    Param::new("n_red", ArgType::I64),
                ]);
                if self.stage == ReduceStage::Partial {
                    p.push(Param::new("splits", ArgType::I64));
                }
                p.push(Param::new("group", ArgType::I32));
                p
            }
            ReduceStage::Finish => vec![
                Param::new("out", ArgType::Out(d)),
                Param::new("partial", ArgType::AccIn(acc)),
                Param::new("n_out", ArgType::I64),
                Param::new("splits", ArgType::I64),
                Param::new("group", ArgType::I32),
            ],
        }
    }

    fn helpers(&self, entry: &str) -> String {
        let acc = self.acc_type().c_type();
        let ident = self.identity();
        let mut s = format!(
            "__device__ __forceinline__ {acc} {entry}_combine({acc} a, {acc} b) {{ return {}; }}\n",
            self.combine()
        );
        s.push_str(&group_reduce_fn(
            &format!("{entry}_group"),
            acc,
            &format!("{entry}_combine"),
            &ident,
        ));
        if self.stage == ReduceStage::Finish {
            s.push_str(&format!(
                r#"// Reduces partials [t * splits, (t + 1) * splits) with lanes gl, gl + gs, ...
__device__ __forceinline__ {acc} {entry}_task(const {acc}* __restrict__ partial, long long splits, long long t, int gl, int gs) {{
    {acc} acc = {ident};
    for (long long r = gl; r < splits; r += gs) acc = {entry}_combine(acc, partial[t * splits + r]);
    return acc;
}}
"#
            ));
        } else {
            let t = self.dtype.c_type();
            let load = self.load("x[base + nb_offset(inner, r)]");
            s.push_str(&format!(
                r#"// Reduces chunk t % splits of output t / splits with lanes gl, gl + gs, ...
__device__ __forceinline__ {acc} {entry}_task(const {t}* __restrict__ x, const NbLayout& outer, const NbLayout& inner, long long n_red, long long splits, long long t, int gl, int gs) {{
    const long long o = t / splits;
    const long long chunk = (n_red + splits - 1) / splits;
    const long long lo = (t - o * splits) * chunk;
    const long long hi = lo + chunk < n_red ? lo + chunk : n_red;
    const long long base = nb_offset(outer, o);
    {acc} acc = {ident};
    for (long long r = lo + gl; r < hi; r += gs) acc = {entry}_combine(acc, {load});
    return acc;
}}
"#
            ));
        }
        s
    }

    fn body(&self, entry: &str) -> String {
        let acc = self.acc_type().c_type();
        let ident = self.identity();
        let (tasks, call, write) = match self.stage {
            ReduceStage::Single => (
                "n_out",
                format!("{entry}_task(x, outer, inner, n_red, 1, t, gl, gs)"),
                format!("out[t] = {};", self.store("acc")),
            ),
            ReduceStage::Partial => (
                "tasks",
                format!("{entry}_task(x, outer, inner, n_red, splits, t, gl, gs)"),
                "partial[t] = acc;".to_string(),
            ),
            ReduceStage::Finish => (
                "n_out",
                format!("{entry}_task(partial, splits, t, gl, gs)"),
                format!("out[t] = {};", self.store("acc")),
            ),
        };
        let stmts = format!(
            "{acc} acc = valid ? {call} : {ident};\nacc = {entry}_group(acc, group);\nif (valid && gl == 0) {write}\n"
        );
        let mut s = String::new();
        if self.stage == ReduceStage::Partial {
            s.push_str("    const long long tasks = n_out * splits;\n");
        }
        s.push_str(&group_loop(tasks, &stmts));
        s
    }
}

/// The index of the first maximum (minimum) along one axis of a strided input, as i64, into a
/// contiguous output. A NaN first along the axis gives 0 and later NaNs are skipped, as the CPU
/// backend's scan (`x[i] > x[best]`) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgReduceSpec {
    op: ArgOp,
    dtype: KernelDType,
}

impl ArgReduceSpec {
    /// The arg-reduction `op` of `dtype` elements (every dtype; `false < true`).
    pub fn new(op: ArgOp, dtype: KernelDType) -> Result<ArgReduceSpec, KernelError> {
        Ok(ArgReduceSpec { op, dtype })
    }

    /// The operation.
    pub fn op(&self) -> ArgOp {
        self.op
    }

    /// The input dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// The C type values are compared in.
    fn value_type(&self) -> &'static str {
        match self.dtype {
            KernelDType::U8 => "unsigned int",
            KernelDType::Bool => "int",
            d => d.compute_type(),
        }
    }
}

impl Gen for ArgReduceSpec {
    fn entry_name(&self) -> String {
        format!("nb_{}_{}", self.op, self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("out", ArgType::Out(KernelDType::I64)),
            Param::new("x", ArgType::In(self.dtype)),
            Param::new("outer", ArgType::Layout),
            Param::new("n_out", ArgType::I64),
            Param::new("n_red", ArgType::I64),
            Param::new("red_stride", ArgType::I64),
            Param::new("group", ArgType::I32),
        ]
    }

    fn helpers(&self, entry: &str) -> String {
        let v = self.value_type();
        let t = self.dtype.c_type();
        let better = if self.op == ArgOp::ArgMax { ">" } else { "<" };
        let nan_rules = if self.dtype.is_float() {
            r#"    // The CPU scan keeps index 0 when x[0] is NaN (nothing compares greater) and never
    // moves to a later NaN.
    const bool an = a.v != a.v, bn = b.v != b.v;
    if (an && a.i == 0) return a;
    if (bn && b.i == 0) return b;
    if (an) return b;
    if (bn) return a;
"#
        } else {
            ""
        };
        let load = if self.dtype.is_float() {
            self.dtype.to_compute("x[base + r * red_stride]")
        } else {
            format!("({v})x[base + r * red_stride]")
        };
        format!(
            r#"struct {entry}_pair {{
    {v} v;
    long long i; // -1: no element yet
}};
__device__ __forceinline__ {entry}_pair {entry}_combine({entry}_pair a, {entry}_pair b) {{
    if (a.i < 0) return b;
    if (b.i < 0) return a;
{nan_rules}    if (b.v {better} a.v || (b.v == a.v && b.i < a.i)) return b;
    return a;
}}
__device__ __forceinline__ {entry}_pair {entry}_shfl({entry}_pair p, int o) {{
    {entry}_pair q;
    q.v = __shfl_xor_sync(0xffffffffu, p.v, o);
    q.i = __shfl_xor_sync(0xffffffffu, p.i, o);
    return q;
}}
__device__ __forceinline__ {entry}_pair {entry}_group({entry}_pair p, int group) {{
    if (group <= 32) {{
        for (int o = group >> 1; o > 0; o >>= 1) p = {entry}_combine(p, {entry}_shfl(p, o));
        return p;
    }}
    __shared__ {v} pv[32];
    __shared__ long long pi[32];
    for (int o = 16; o > 0; o >>= 1) p = {entry}_combine(p, {entry}_shfl(p, o));
    const int lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) {{
        pv[threadIdx.x >> 5] = p.v;
        pi[threadIdx.x >> 5] = p.i;
    }}
    __syncthreads();
    if (lane < (int)(blockDim.x >> 5)) {{
        p.v = pv[lane];
        p.i = pi[lane];
    }} else {{
        p.i = -1;
    }}
    for (int o = 16; o > 0; o >>= 1) p = {entry}_combine(p, {entry}_shfl(p, o));
    return p;
}}
// Scans output t's elements with lanes gl, gl + gs, ...
__device__ __forceinline__ {entry}_pair {entry}_task(const {t}* __restrict__ x, const NbLayout& outer, long long n_red, long long red_stride, long long t, int gl, int gs) {{
    {entry}_pair p;
    p.v = 0;
    p.i = -1;
    const long long base = nb_offset(outer, t);
    for (long long r = gl; r < n_red; r += gs) {{
        {entry}_pair q;
        q.v = {load};
        q.i = r;
        p = {entry}_combine(p, q);
    }}
    return p;
}}
"#
        )
    }

    fn body(&self, entry: &str) -> String {
        let stmts = format!(
            r#"{entry}_pair p;
p.v = 0;
p.i = -1;
if (valid) p = {entry}_task(x, outer, n_red, red_stride, t, gl, gs);
p = {entry}_group(p, group);
if (valid && gl == 0) out[t] = p.i;
"#
        );
        group_loop("n_out", &stmts)
    }
}
