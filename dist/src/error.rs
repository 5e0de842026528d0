//! Typed errors of the dist layer. Every message names the rank and, for collectives, the
//! operation, its sequence number and its size, so that a log line is enough to find the
//! failing call.

/// An error of the dist layer.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The environment describes a process group this binary cannot join, or describes it
    /// inconsistently.
    #[error("nabla-dist init: {0}")]
    Environment(String),
    /// A collective failed.
    #[error(
        "nabla-dist: rank {rank} of {world}: {op} (sequence #{seq}, {bytes} bytes) on group `{group}` failed: {message}"
    )]
    Collective {
        /// This process's rank.
        rank: usize,
        /// The world size.
        world: usize,
        /// The operation (`all_reduce_sum`, `broadcast`, ...).
        op: &'static str,
        /// The group's sequence number of the call (the same on every rank for the same call).
        seq: u64,
        /// Bytes this rank contributed.
        bytes: usize,
        /// The group's name.
        group: String,
        /// What went wrong.
        message: String,
    },
    /// Ranks disagree on something they must share (data-parallel leaves, buffer sizes).
    #[error("nabla-dist: ranks disagree: {0}")]
    Mismatch(String),
    /// A call with arguments that cannot work (a root outside the group, mixed dtypes, ...).
    #[error("nabla-dist: {0}")]
    Usage(String),
}

/// The result type of the dist layer.
pub type Result<T, E = DistError> = std::result::Result<T, E>;
