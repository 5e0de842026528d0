//! Typed errors of the store. Every message says what happened and, where there is one, what to
//! do about it.

/// An error of the rendezvous store, its client or its token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server cannot listen on the address it was given.
    #[error("nabla-launch store: listen: {0}")]
    Bind(String),
    /// The server could not be reached before the connect deadline.
    #[error("nabla-launch store: connect: {0}")]
    Connect(String),
    /// One side does not hold the job's token (or the peer is not a store at all).
    #[error("nabla-launch store: authentication: {0}")]
    Auth(String),
    /// The peer sent bytes that are not the store's protocol, or a frame over the size limit.
    #[error("nabla-launch store: protocol: {0}")]
    Protocol(String),
    /// A `get`, `wait` or barrier did not see its keys in time, or the server did not answer.
    #[error("nabla-launch store: timeout: {0}")]
    Timeout(String),
    /// The server refused the request (a value that is not an integer for `add`, the store full).
    #[error("nabla-launch store: the server refused the request: {0}")]
    Server(String),
    /// The connection failed or was closed; the client cannot be used any more.
    #[error("nabla-launch store: connection: {0}")]
    Connection(String),
    /// Reading, writing or making a token failed.
    #[error("nabla-launch store: token: {0}")]
    Token(String),
    /// A call with arguments that cannot work (a key too long, a value over the frame limit).
    #[error("nabla-launch store: {0}")]
    Usage(String),
}

/// The result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
