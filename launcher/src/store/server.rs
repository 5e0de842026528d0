//! `StoreServer`: listens on exactly the address it was given and serves each connection in its
//! own task, within the limits of its [`ServerConfig`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::store::config::{Logger, ServerConfig};
use crate::store::connection;
use crate::store::error::{Result, StoreError};
use crate::store::state::State;
use crate::store::token::Token;

/// The listen backlog asked of the kernel (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Counters the connections add to.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) auth_failures: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) closed_for_errors: AtomicU64,
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) state: State,
    pub(crate) token: Token,
    pub(crate) config: ServerConfig,
    /// Places for authenticated connections.
    pub(crate) connections: Arc<Semaphore>,
    /// Places for connections in the handshake.
    pub(crate) pending: Arc<Semaphore>,
    pub(crate) counters: Counters,
    /// Set when the server is dropped: connections answer nothing more (the task abort that
    /// closes them happens a moment later, on a worker thread).
    pub(crate) closed: AtomicBool,
}

/// A snapshot of a server's activity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStats {
    /// Authenticated connections being served.
    pub connections: usize,
    /// Connections in the handshake.
    pub pending_handshakes: usize,
    /// Keys held.
    pub keys: usize,
    /// Connections refused for a wrong token.
    pub auth_failures: u64,
    /// Connections refused because the server was full (handshakes or connections).
    pub refused: u64,
    /// Connections closed for garbage, an oversized or malformed frame, or a stall.
    pub closed_for_errors: u64,
}

/// The rendezvous store's server. It runs on the tokio runtime that called [`StoreServer::bind`]
/// and stops, closing every connection, when dropped.
pub struct StoreServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for StoreServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreServer({})", self.local_addr)
    }
}

fn check(config: &ServerConfig) -> Result<()> {
    let bad = |what: &str| Err(StoreError::Usage(format!("ServerConfig: {what}")));
    if config.max_connections == 0 || config.max_pending_handshakes == 0 {
        return bad("max_connections and max_pending_handshakes must be at least 1");
    }
    if config.max_frame_bytes < 1024 {
        return bad("max_frame_bytes must be at least 1024");
    }
    if config.handshake_timeout.is_zero() || config.frame_timeout.is_zero() {
        return bad("handshake_timeout and frame_timeout must be more than zero");
    }
    Ok(())
}

impl StoreServer {
    /// Listens on exactly `addr` (`0.0.0.0` or `[::]` only when that is what is given; port 0
    /// picks a free port, see [`local_addr`](Self::local_addr)) and serves clients that prove
    /// they hold `token`. Must be called inside a tokio runtime, which the server then runs on.
    pub async fn bind(addr: SocketAddr, token: Token, config: ServerConfig) -> Result<StoreServer> {
        check(&config)?;
        let cannot = |e: std::io::Error| {
            StoreError::Bind(format!(
                "cannot listen on {addr}: {e}; is another store (another job) on this port, or is {} not an \
                 address of this machine? Pick another port or address",
                addr.ip()
            ))
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(cannot)?;
        // Lets a restarted launcher listen again while old connections linger in TIME_WAIT.
        socket.set_reuseaddr(true).map_err(cannot)?;
        socket.bind(addr).map_err(cannot)?;
        let listener = socket.listen(LISTEN_BACKLOG).map_err(cannot)?;
        let local_addr = listener.local_addr().map_err(cannot)?;
        let shared = Arc::new(Shared {
            state: State::new(config.max_store_bytes),
            token,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            pending: Arc::new(Semaphore::new(config.max_pending_handshakes)),
            config,
            counters: Counters::default(),
            closed: AtomicBool::new(false),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(StoreServer {
            local_addr,
            shared,
            accept,
        })
    }

    /// The address the server listens on (the given one, with the port filled in).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the server is doing now, and what it has refused so far.
    pub fn stats(&self) -> ServerStats {
        let s = &self.shared;
        ServerStats {
            connections: s.config.max_connections - s.connections.available_permits(),
            pending_handshakes: s.config.max_pending_handshakes - s.pending.available_permits(),
            keys: s.state.len(),
            auth_failures: s.counters.auth_failures.load(Ordering::Relaxed),
            refused: s.counters.refused.load(Ordering::Relaxed),
            closed_for_errors: s.counters.closed_for_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops listening and closes every connection (what dropping the server does).
    pub fn shutdown(self) {}
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        // The accept task owns the listener and the connection tasks (a JoinSet), so aborting
        // it ends them all, but only once a worker thread gets to it: until then the flag keeps
        // the connections from answering requests sent after the drop.
        self.shared.closed.store(true, Ordering::SeqCst);
        self.accept.abort();
    }
}

/// A log line at most once a second; the lines in between are counted.
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn log(&mut self, logger: &Logger, line: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            logger.log(&format!(
                "{line} (and {} similar lines in the last second)",
                self.suppressed
            ));
        } else {
            logger.log(line);
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut tasks = JoinSet::new();
    let mut full = Throttled {
        last: None,
        suppressed: 0,
    };
    let mut failed = Throttled {
        last: None,
        suppressed: 0,
    };
    let log = shared.config.log.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match shared.pending.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tasks.spawn(connection::serve(stream, peer, shared.clone(), permit));
                    }
                    Err(_) => {
                        drop(stream);
                        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                        full.log(&log, &format!(
                            "nabla-launch store: {peer}: closed: {} handshakes already in progress \
                             (ServerConfig::max_pending_handshakes)",
                            shared.config.max_pending_handshakes
                        ));
                    }
                },
                Err(e) => {
                    failed.log(&log, &format!(
                        "nabla-launch store: accepting a connection failed: {e} (out of file descriptors? raise \
                         `ulimit -n`); still listening"
                    ));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done
                    && e.is_panic() {
                        log.log(&format!("nabla-launch store: a connection task panicked ({e}); still serving the others"));
                    }
            }
        }
    }
}
