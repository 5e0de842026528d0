//! Tracing: the graph nodes recorded when an op has a traced input, the trace levels that say
//! which transform a node belongs to, and the sweeps that walk the recorded graph.
//!
//! Every transform call (`vjp`, `jvp`) opens a fresh [`Level`]; its leaves are new tensors whose
//! node belongs to that level. An op records a node when at least one input belongs to an open
//! level; the node belongs to the union of its inputs' open levels. A level closes when the
//! traced function returns, so the derivative rules run during a sweep are recorded only by the
//! levels that are still open (the enclosing transforms): that is what makes `grad(grad(f))`
//! work, and what keeps perturbations of nested calls apart.

mod ids;
mod level;
mod node;
pub(crate) mod sweep;

pub(crate) use ids::{IdMap, IdSet};
pub use level::Level;
pub(crate) use level::{next_id, union_levels};
pub use node::Rule;
pub(crate) use node::{GradSlot, Inputs, Node};
