//! Typed errors for calls that touch the outside world (devices, files, construction from data).
//! Math misuse (mismatched shapes in an op) panics instead, naming the op, as JAX and ndarray do.

/// Errors returned by fallible nabla calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Data and shape disagree.
    #[error("{op}: {detail}")]
    ShapeMismatch {
        /// The call that failed.
        op: &'static str,
        /// What was expected and what was given.
        detail: String,
    },
    /// No backend is available for a device.
    #[error("device {device} is unavailable: {reason}")]
    DeviceUnavailable {
        /// The requested device.
        device: crate::Device,
        /// Why, and what to do.
        reason: String,
    },
}

/// `Result` with the nabla [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
