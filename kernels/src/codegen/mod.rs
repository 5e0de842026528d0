//! Source generation: the pieces every family uses, and the assembly of one translation unit.

pub(crate) mod attention;
pub(crate) mod channels;
pub(crate) mod elementwise;
pub(crate) mod fused;
pub(crate) mod index;
pub(crate) mod pool;
pub(crate) mod prelude;
pub(crate) mod random;
pub(crate) mod reduce;
pub(crate) mod window;

use crate::dtype::KernelDType;
use crate::params::{ArgType, Param};

/// What a kernel spec provides to become a translation unit.
pub(crate) trait Gen {
    /// The `extern "C"` name of the entry point.
    fn entry_name(&self) -> String;
    /// The entry point's arguments, in order.
    fn params(&self) -> Vec<Param>;
    /// Device code placed before the entry point: guarded shared helpers and helpers named
    /// after `entry` (so that translation units can be concatenated).
    fn helpers(&self, _entry: &str) -> String {
        String::new()
    }
    /// The statements of the entry point.
    fn body(&self, entry: &str) -> String;
}

/// The headers a kernel with these parameters needs, in a fixed order.
pub(crate) fn headers(params: &[Param]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for h in ["cuda_fp16.h", "cuda_bf16.h"] {
        let used = params.iter().any(|p| match p.ty {
            ArgType::In(d) | ArgType::Out(d) | ArgType::InOut(d) => d.header() == Some(h),
            _ => false,
        });
        if used {
            out.push(h);
        }
    }
    out
}

/// The complete translation unit of `g`.
pub(crate) fn assemble(g: &dyn Gen) -> String {
    let entry = g.entry_name();
    let params = g.params();
    let mut s = format!("// nabla-kernels: {entry} (generated CUDA C; do not edit)\n");
    for h in headers(&params) {
        s.push_str(&format!("#include <{h}>\n"));
    }
    s.push('\n');
    s.push_str(&prelude::common());
    let helpers = g.helpers(&entry);
    if !helpers.is_empty() {
        s.push('\n');
        s.push_str(&helpers);
    }
    s.push('\n');
    let decls: Vec<String> = params.iter().map(|p| format!("    {}", p.c_decl())).collect();
    s.push_str(&format!(
        "extern \"C\" __global__ void {entry}(\n{}) {{\n",
        decls.join(",\n")
    ));
    s.push_str(&g.body(&entry));
    s.push_str("}\n");
    s
}

/// Indents every non-empty line of `code` by `n` spaces.
pub(crate) fn indent(code: &str, n: usize) -> String {
    if code.is_empty() {
        return String::new();
    }
    let pad = " ".repeat(n);
    code.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A grid-stride loop over `i` in `0..n` running `stmts`.
pub(crate) fn grid_stride(stmts: &str) -> String {
    format!(
        "    for (long long i = nb_first(); i < n; i += nb_step()) {{\n{}    }}\n",
        indent(stmts, 8)
    )
}

/// A loop handing out `tasks` (a C expression) to groups of `group` threads: `group` is a power
/// of two up to 32 (groups within a warp; the loop is uniform per warp so shuffles are safe) or
/// equal to `blockDim.x` (one task per block at a time). `stmts` run with `t` (the task),
/// `valid` (false for the idle groups of the last warp, which must still join the shuffles),
/// `gl` (lane within the group) and `gs` (group size). `blockDim.x` must be a multiple of 32.
pub(crate) fn group_loop(tasks: &str, stmts: &str) -> String {
    format!(
        r#"    if (group > 32) {{
        for (long long t = blockIdx.x; t < {tasks}; t += gridDim.x) {{
            const bool valid = true;
            const int gl = threadIdx.x;
            const int gs = blockDim.x;
{block}        }}
    }} else {{
        const int lane = threadIdx.x & 31;
        const long long per_warp = 32 / group;
        const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
        const long long warp = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        for (long long t0 = warp * per_warp; t0 < {tasks}; t0 += warps * per_warp) {{
            const long long t = t0 + lane / group;
            const bool valid = t < {tasks};
            const int gl = lane & (group - 1);
            const int gs = group;
{warp}        }}
    }}
"#,
        block = indent(stmts, 12),
        warp = indent(stmts, 12),
    )
}

/// A device function `name(v, group)` combining `v` over a group of threads with `combine`
/// (every lane gets the result): xor shuffles within a group of up to 32 lanes, or shuffles
/// then shared memory over the whole block. `acc` is the C type, `identity` the value idle
/// warps contribute.
pub(crate) fn group_reduce_fn(name: &str, acc: &str, combine: &str, identity: &str) -> String {
    format!(
        r#"__device__ __forceinline__ {acc} {name}({acc} v, int group) {{
    if (group <= 32) {{
        for (int o = group >> 1; o > 0; o >>= 1) v = {combine}(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }}
    __shared__ {acc} partial[32];
    for (int o = 16; o > 0; o >>= 1) v = {combine}(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? partial[lane] : {identity};
    for (int o = 16; o > 0; o >>= 1) v = {combine}(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}}
"#
    )
}

/// `(name, dtype)` pairs of inputs as parameters: the buffer, then its layout when `strided`.
pub(crate) fn input_params(inputs: &[(&'static str, &'static str, KernelDType)], strided: bool) -> Vec<Param> {
    let mut out = Vec::new();
    for &(name, layout, d) in inputs {
        out.push(Param::new(name, ArgType::In(d)));
        if strided {
            out.push(Param::new(layout, ArgType::Layout));
        }
    }
    out
}
