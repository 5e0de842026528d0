//! The server's limits and timeouts, and where its log lines go.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::store::protocol::DEFAULT_MAX_FRAME_BYTES;

/// Where the server's log lines go (stderr unless a test or the launcher says otherwise).
/// Lines have no trailing newline and start with `nabla-launch store:`.
#[derive(Clone)]
pub struct Logger(Arc<dyn Fn(&str) + Send + Sync>);

impl Logger {
    /// Lines to standard error.
    pub fn stderr() -> Logger {
        Logger(Arc::new(|line| eprintln!("{line}")))
    }

    /// Lines to `sink`.
    pub fn new(sink: impl Fn(&str) + Send + Sync + 'static) -> Logger {
        Logger(Arc::new(sink))
    }

    /// Writes one line.
    pub fn log(&self, line: &str) {
        (self.0)(line)
    }
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Logger")
    }
}

/// Limits and timeouts of a [`StoreServer`](crate::store::StoreServer). The defaults suit a
/// job of thousands of ranks on a cluster network.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// How long a new connection has to complete the handshake (answer the challenge). Default
    /// 10 s.
    pub handshake_timeout: Duration,
    /// How long the rest of a frame may take once its first byte arrived, and how long writing a
    /// response may take. An authenticated client may stay idle between frames. Default 10 s.
    pub frame_timeout: Duration,
    /// The largest frame accepted (its length field). Default 4 MiB.
    pub max_frame_bytes: u32,
    /// Connections still in the handshake at once; more are closed at once, without a word.
    /// Default 256.
    pub max_pending_handshakes: usize,
    /// Authenticated connections served at once; more get the "too many connections" verdict
    /// and are closed (their clients retry until their deadline). Default 4096.
    pub max_connections: usize,
    /// Key and value bytes the store holds at most; a `set` past it is refused. Default 256 MiB.
    pub max_store_bytes: usize,
    /// The longest a `get` or `wait` may wait, whatever the client asks. Default 24 hours.
    pub max_wait: Duration,
    /// Where log lines go. Default stderr.
    pub log: Logger,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(10),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_pending_handshakes: 256,
            max_connections: 4096,
            max_store_bytes: 256 << 20,
            max_wait: Duration::from_secs(24 * 3600),
            log: Logger::stderr(),
        }
    }
}
