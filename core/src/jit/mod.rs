//! `jit`: record a function's kernel calls once per input signature and replay them.
//!
//! The first call with a new signature (the leaves' dtypes, devices and shapes) runs the
//! function eagerly, on fresh contiguous copies of the inputs, while every kernel call is
//! recorded. Later calls
//! with that signature replay the recorded kernels on the new inputs: no tracing, derivative
//! rules, graph nodes or sweeps run, which is most of the cost of small ops. Kernels whose
//! arguments are all constants (captured tensors, literals) are folded at record time.
//!
//! As in JAX, the function must be pure in its tensor arguments: Rust control flow and side
//! effects (printing, RNG state in Rust variables, `backward` filling `.grad`) happen once, when
//! the signature is recorded. A function that reads tensor values computed from its inputs
//! (`item`, `to_vec`, printing), draws from an `Rng` or calls `backward` is not replayed: its
//! signature runs eagerly every time, and [`Jit::cache_info`] says why.

mod api;
mod recorder;
mod tape;

pub use api::{CacheInfo, Jit, jit};
pub(crate) use recorder::{host_step, intercept, paused};
pub use recorder::{is_recording, note_not_replayable};
pub(crate) use tape::HostFn;
