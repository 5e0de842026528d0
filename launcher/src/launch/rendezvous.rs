//! The launchers' use of the store: node 0 serves it, every launcher connects, checks that the
//! nodes agree on the job, and meets the others at each round's rendezvous to learn the world.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::launch::args::Config;
use crate::launch::keys;
use crate::launch::output::Sink;
use crate::launch::signals::Signals;
use crate::store::{ClientOptions, Logger, ServerConfig, StoreClient, StoreError, StoreServer, Token};

/// How long one wait for keys lasts before the launcher looks at signals and abort notices again.
pub const POLL: Duration = Duration::from_millis(150);
/// How long a request that does not wait may take before the store counts as gone.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The ranks of a round: how many in all, and where this node's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// Ranks in the job (the sum of the nodes' counts).
    pub size: usize,
    /// The global rank of this node's local rank 0 (the sum of the lower nodes' counts).
    pub base_rank: usize,
    /// Each node's rank count.
    pub counts: Vec<usize>,
}

impl World {
    /// The world from every node's count, seen from node `node`.
    pub fn from_counts(counts: Vec<usize>, node: usize) -> World {
        World {
            size: counts.iter().sum(),
            base_rank: counts[..node].iter().sum(),
            counts,
        }
    }
}

/// Why talking to the store or the rendezvous did not work out.
#[derive(Debug)]
pub enum Trouble {
    /// The launcher got this signal while waiting.
    Signal(i32),
    /// Another launcher ended the job (the reason it posted).
    Aborted(String),
    /// Not every node came in time (the message names the missing ones).
    Timeout(String),
    /// The store went away or failed (the message says so).
    Lost(String),
    /// A setup error: the store cannot listen, the nodes disagree, a node rank taken twice.
    Setup(String),
}

/// This launcher's connection to the job's store, and node 0's server.
pub struct Store {
    client: StoreClient,
    /// Node 0 serves the store for as long as this lives.
    server: Option<StoreServer>,
    /// `host:port` of the store, for messages.
    addr: String,
    port: u16,
    node_rank: usize,
    nnodes: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({}, node {} of {})", self.addr, self.node_rank, self.nnodes)
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    let bare = bare_host(host);
    if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    }
}

/// The host without the brackets an IPv6 address may have been given with.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Waits for `fut`, unless a signal comes first.
async fn or_signal<T>(signals: &mut Signals, fut: impl Future<Output = T>) -> Result<T, Trouble> {
    tokio::select! {
        v = fut => Ok(v),
        sig = signals.recv() => Err(Trouble::Signal(sig)),
    }
}

impl Store {
    /// Node 0: binds the store on `--master-addr`:`--master-port` (resolved; exactly that
    /// address). Every node: connects (trying until `--rdzv-timeout`), checks that node 0 was
    /// started with the same `--nnodes` and `--max-restarts`, and claims its node rank.
    pub async fn open(config: &Config, token: &Token, signals: &mut Signals, sink: &Sink) -> Result<Store, Trouble> {
        let host = bare_host(&config.master_addr);
        let mut server = None;
        let (addr, port) = if config.node_rank == 0 {
            let bind = resolve(host, config.master_port, signals).await?;
            let log_sink = sink.clone();
            let server_config = ServerConfig {
                log: Logger::new(move |line| log_sink.note_now(line)),
                ..ServerConfig::default()
            };
            let s = StoreServer::bind(bind, token.clone(), server_config)
                .await
                .map_err(|e| Trouble::Setup(format!("{e} (check --master-addr and --master-port)")))?;
            let local = s.local_addr();
            server = Some(s);
            (local.to_string(), local.port())
        } else {
            (host_port(host, config.master_port), config.master_port)
        };
        let options = ClientOptions {
            connect_timeout: config.rdzv_timeout,
            wait_timeout: config.rdzv_timeout,
            io_timeout: IO_TIMEOUT,
            ..ClientOptions::default()
        };
        let client = or_signal(signals, StoreClient::connect(&addr, token, options))
            .await?
            .map_err(|e| Trouble::Setup(e.to_string()))?;
        let mut store = Store {
            client,
            server,
            addr,
            port,
            node_rank: config.node_rank,
            nnodes: config.nnodes,
        };
        store.agree(config).await?;
        Ok(store)
    }

    /// Checks the job's shape against node 0's and claims this node's rank.
    async fn agree(&mut self, config: &Config) -> Result<(), Trouble> {
        let ours = format!("nnodes={} max_restarts={}", config.nnodes, config.max_restarts);
        let lost = |e: StoreError| Trouble::Setup(e.to_string());
        if self.node_rank == 0 {
            self.client.set(keys::CONFIG, ours.as_bytes()).await.map_err(lost)?;
        } else {
            let theirs = self.client.get_within(keys::CONFIG, IO_TIMEOUT).await.map_err(lost)?;
            let theirs = String::from_utf8_lossy(&theirs).into_owned();
            if theirs != ours {
                let why = format!(
                    "node {} was started with {ours} but node 0 with {theirs}; give every launcher the same --nnodes \
                     and --max-restarts",
                    self.node_rank
                );
                let _ = self.client.set(keys::ABORT, why.as_bytes()).await;
                return Err(Trouble::Setup(why));
            }
        }
        let me = format!("host {} pid {}", crate::launch::job::hostname(), std::process::id());
        let swap = self
            .client
            .compare_and_set(&keys::claim(self.node_rank), None, me.as_bytes())
            .await
            .map_err(lost)?;
        if !swap.swapped {
            let other = String::from_utf8_lossy(&swap.current.unwrap_or_default()).into_owned();
            return Err(Trouble::Setup(format!(
                "another launcher ({other}) already joined the job at {} as --node-rank {}; give each node's \
                 launcher its own --node-rank (or, if an earlier job still runs on this port, wait for it to end or \
                 use another --master-port)",
                self.addr, self.node_rank
            )));
        }
        Ok(())
    }

    /// The port the store listens on (the ranks' MASTER_PORT).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store's `host:port`, for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether this launcher serves the store.
    pub fn serves(&self) -> bool {
        self.server.is_some()
    }

    /// The connection, for the supervisor's requests.
    pub fn client(&mut self) -> &mut StoreClient {
        &mut self.client
    }

    /// `node 0's store at ADDR went away (why)`.
    pub fn lost(&self, e: &StoreError) -> String {
        format!("node 0's store at {} went away ({e})", self.addr)
    }

    /// Round `k`'s rendezvous: posts this node's rank count, waits (up to `timeout`) for every
    /// node's, and returns the world. Looks at signals and abort notices every [`POLL`].
    pub async fn rendezvous(
        &mut self,
        k: u32,
        nproc: usize,
        timeout: Duration,
        signals: &mut Signals,
    ) -> Result<World, Trouble> {
        let lost = |s: &Store, e: StoreError| Trouble::Lost(s.lost(&e));
        if let Err(e) = self
            .client
            .set(&keys::node(k, self.node_rank), nproc.to_string().as_bytes())
            .await
        {
            return Err(lost(self, e));
        }
        let names: Vec<String> = (0..self.nnodes).map(|n| keys::node(k, n)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(sig) = signals.pending() {
                return Err(Trouble::Signal(sig));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.wait_within(&refs, left.min(POLL)).await {
                Ok(()) => break,
                Err(StoreError::Timeout(_)) => {}
                Err(e) => return Err(lost(self, e)),
            }
            match self.client.try_get(keys::ABORT).await {
                Ok(Some(why)) => return Err(Trouble::Aborted(String::from_utf8_lossy(&why).into_owned())),
                Ok(None) => {}
                Err(e) => return Err(lost(self, e)),
            }
            if Instant::now() >= deadline {
                let missing = match self.missing(k).await {
                    Ok(m) => m,
                    Err(e) => return Err(lost(self, e)),
                };
                return Err(Trouble::Timeout(format!(
                    "the rendezvous of round {k} waited {:.0} s and node(s) {} of {} never came; start their \
                     launchers with --nnodes {} --master-addr/--master-port pointing at {} and the job's token file \
                     (or raise --rdzv-timeout)",
                    timeout.as_secs_f64(),
                    list(&missing),
                    self.nnodes,
                    self.nnodes,
                    self.addr
                )));
            }
        }
        let mut counts = Vec::with_capacity(self.nnodes);
        for (n, key) in names.iter().enumerate() {
            let value = match self.client.try_get(key).await {
                Ok(v) => v.unwrap_or_default(),
                Err(e) => return Err(lost(self, e)),
            };
            let count = std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&c| c > 0)
                .ok_or_else(|| {
                    Trouble::Setup(format!(
                        "node {n}'s entry `{key}` in the store is not a rank count; is another program using the store?"
                    ))
                })?;
            counts.push(count);
        }
        Ok(World::from_counts(counts, self.node_rank))
    }

    /// The nodes whose round-`k` rendezvous key is absent.
    async fn missing(&mut self, k: u32) -> Result<Vec<usize>, StoreError> {
        let mut missing = Vec::new();
        for n in 0..self.nnodes {
            if self.client.try_get(&keys::node(k, n)).await?.is_none() {
                missing.push(n);
            }
        }
        Ok(missing)
    }

    /// Posts a failure notice for round `k` (first one wins) and returns the winning notice. With
    /// `abort`, also marks the job as not to be restarted (before the notice, so that whoever sees
    /// the notice sees the mark).
    pub async fn post_failure(&mut self, k: u32, notice: &str, abort: bool) -> Result<String, StoreError> {
        if abort {
            self.client.set(keys::ABORT, notice.as_bytes()).await?;
        }
        let swap = self
            .client
            .compare_and_set(&keys::failed(k), None, notice.as_bytes())
            .await?;
        Ok(match swap.current {
            Some(v) if !swap.swapped => String::from_utf8_lossy(&v).into_owned(),
            _ => notice.to_string(),
        })
    }

    /// Whether the job was marked as not to be restarted.
    pub async fn aborted(&mut self) -> Result<bool, StoreError> {
        Ok(self.client.try_get(keys::ABORT).await?.is_some())
    }

    /// Leaves the job after round `k`: says so in the store, and on node 0 keeps serving until
    /// every other node that joined round `k` (and is not in `lost`) has left too, for up to
    /// `linger` (a second signal cuts it short).
    pub async fn leave(&mut self, k: u32, lost: &[usize], linger: Duration, signals: &mut Signals) {
        if self.client.set(&keys::left(k, self.node_rank), b"1").await.is_err() || self.node_rank != 0 {
            return;
        }
        let mut names = Vec::new();
        for n in 1..self.nnodes {
            if lost.contains(&n) {
                continue;
            }
            match self.client.try_get(&keys::node(k, n)).await {
                Ok(Some(_)) => names.push(keys::left(k, n)),
                Ok(None) => {}
                Err(_) => return,
            }
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let deadline = Instant::now() + linger;
        while !refs.is_empty() && signals.pending().is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.wait_within(&refs, left.min(POLL)).await {
                Err(StoreError::Timeout(_)) if !left.is_zero() => {}
                _ => return,
            }
        }
    }
}

/// Resolves the master address for node 0's store; the first address is the one bound.
async fn resolve(host: &str, port: u16, signals: &mut Signals) -> Result<SocketAddr, Trouble> {
    let found = or_signal(signals, tokio::net::lookup_host((host, port)))
        .await?
        .map_err(|e| {
            Trouble::Setup(format!(
                "--master-addr {host}: cannot resolve it ({e}); give node 0's host name or IP address"
            ))
        })?;
    let mut found: Vec<SocketAddr> = found.collect();
    // Prefer IPv4 when a name has both, as most clusters' networks are.
    found.sort_by_key(|a| !a.is_ipv4());
    found
        .into_iter()
        .next()
        .ok_or_else(|| Trouble::Setup(format!("--master-addr {host}: resolves to no address")))
}

/// `1, 3 and 4`.
fn list(nodes: &[usize]) -> String {
    let shown: Vec<String> = nodes.iter().map(usize::to_string).collect();
    match shown.split_last() {
        None => "none".into(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worlds_with_different_counts_per_node() {
        let w = World::from_counts(vec![2, 3, 1], 2);
        assert_eq!((w.size, w.base_rank), (6, 5));
        let w = World::from_counts(vec![4], 0);
        assert_eq!((w.size, w.base_rank), (4, 0));
    }

    #[test]
    fn host_ports_and_lists() {
        assert_eq!(host_port("node0", 29500), "node0:29500");
        assert_eq!(host_port("::1", 5), "[::1]:5");
        assert_eq!(host_port("[::1]", 5), "[::1]:5");
        assert_eq!(list(&[1]), "1");
        assert_eq!(list(&[1, 3, 4]), "1, 3 and 4");
    }
}
