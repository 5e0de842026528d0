//! `StoreClient`: the async client. It connects with retries until a deadline (ranks often start
//! before node 0's launcher listens), proves the token, checks the server's proof, then sends one
//! request at a time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::store::auth;
use crate::store::error::{Result, StoreError};
use crate::store::protocol::{
    ANSWER_LEN, DEFAULT_MAX_FRAME_BYTES, HELLO_LEN, MAGIC, PROTOCOL_VERSION, Request, Response, VERDICT_ACCEPTED,
    VERDICT_FULL, VERDICT_WRONG_TOKEN, check_key, decode_response, encode_request, read_frame,
};
use crate::store::state::Swap;
use crate::store::token::{Token, hex};

/// The first pause between connection attempts; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// The longest pause between connection attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest one connection attempt's handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of [`StoreClient::connect`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long to keep trying to reach the server. Default 300 s.
    pub connect_timeout: Duration,
    /// How long `get`, `wait` and `barrier` wait for their keys unless told otherwise. Default 300 s.
    pub wait_timeout: Duration,
    /// How long the server may take to answer a request that does not wait; also added to a
    /// wait's timeout before the client gives up on the answer. Default 30 s.
    pub io_timeout: Duration,
    /// The largest frame sent or accepted. Default 4 MiB, the server's default.
    pub max_frame_bytes: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(300),
            wait_timeout: Duration::from_secs(300),
            io_timeout: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// A connection to the rendezvous store. Requests go one at a time (the methods take
/// `&mut self`); open a second client to wait on one key while using the store for others.
///
/// After a connection failure or a protocol error every call fails; connect again.
pub struct StoreClient {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    server: SocketAddr,
    local: SocketAddr,
    options: ClientOptions,
    broken: Option<String>,
}

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreClient({} -> {})", self.local, self.server)
    }
}

/// Why one connection attempt failed: worth another try, or not.
enum Attempt {
    Retry(String),
    Fatal(StoreError),
}

/// Lists keys for a message: the first few, and how many more.
pub(crate) fn list_keys(keys: &[String]) -> String {
    let shown: Vec<String> = keys.iter().take(8).map(|k| format!("`{k}`")).collect();
    match keys.len() {
        n if n > 8 => format!("{} and {} more", shown.join(", "), n - 8),
        _ => shown.join(", "),
    }
}

impl StoreClient {
    /// Connects to the store at `addr` (`host:port`) and authenticates with `token`, trying again
    /// (50 ms, doubling to 1 s apart) until `options.connect_timeout` has passed while the server
    /// is not yet listening, refuses the connection or is full. A wrong token on either side
    /// fails at once.
    pub async fn connect(addr: &str, token: &Token, options: ClientOptions) -> Result<StoreClient> {
        if !addr.contains(':') {
            return Err(StoreError::Usage(format!(
                "the store address {addr:?} has no port; write it as host:port (for example node0:29400)"
            )));
        }
        let deadline = Instant::now() + options.connect_timeout;
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let last = match Self::attempt(addr, token, &options, deadline).await {
                Ok(client) => return Ok(client),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => why,
            };
            let now = Instant::now();
            if now + delay >= deadline {
                return Err(StoreError::Connect(format!(
                    "could not reach the store at {addr} within {:.1} s ({attempts} attempts; last: {last}). Check \
                     that node 0's launcher is running and that the address and port are right",
                    options.connect_timeout.as_secs_f64()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// One try: resolve, connect, handshake.
    async fn attempt(
        addr: &str,
        token: &Token,
        options: &ClientOptions,
        deadline: Instant,
    ) -> std::result::Result<StoreClient, Attempt> {
        let left = deadline.saturating_duration_since(Instant::now());
        let resolved = tokio::time::timeout(left, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| Attempt::Retry(format!("resolving {addr} took too long")))?
            .map_err(|e| Attempt::Retry(format!("cannot resolve {addr}: {e}")))?;
        let mut last = format!("{addr} resolves to no address");
        for server in resolved {
            let left = deadline.saturating_duration_since(Instant::now());
            let stream = match tokio::time::timeout(left, TcpStream::connect(server)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = format!("connecting to {server}: {e}");
                    continue;
                }
                Err(_) => {
                    last = format!("connecting to {server} took too long");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let local = stream
                .local_addr()
                .map_err(|e| Attempt::Retry(format!("connection to {server}: {e}")))?;
            let (rd, wr) = stream.into_split();
            let mut client = StoreClient {
                rd: BufReader::new(rd),
                wr,
                server,
                local,
                options: options.clone(),
                broken: None,
            };
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(HANDSHAKE_TIMEOUT);
            return match tokio::time::timeout(left, client.handshake(token)).await {
                Ok(Ok(())) => Ok(client),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Attempt::Retry(format!(
                    "{server} accepted the connection but did not finish the handshake in time"
                ))),
            };
        }
        Err(Attempt::Retry(last))
    }

    async fn handshake(&mut self, token: &Token) -> std::result::Result<(), Attempt> {
        let server = self.server;
        let gone = |e: std::io::Error| {
            Attempt::Retry(format!(
                "{server} closed the connection during the handshake ({e}); it may be busy"
            ))
        };
        let mut hello = [0u8; HELLO_LEN];
        self.rd.read_exact(&mut hello).await.map_err(gone)?;
        if &hello[..4] != MAGIC {
            return Err(Attempt::Fatal(StoreError::Protocol(format!(
                "{server} is not a nabla-launch store (it sent {}...); check the address and port",
                hex(&hello[..4])
            ))));
        }
        if hello[4] != PROTOCOL_VERSION {
            return Err(Attempt::Fatal(StoreError::Protocol(format!(
                "the store at {server} speaks protocol version {}, this client version {PROTOCOL_VERSION}; use the \
                 same nabla-launch build on every node",
                hello[4]
            ))));
        }
        let server_nonce: [u8; auth::NONCE_LEN] = hello[5..].try_into().expect("32 bytes");
        let client_nonce = auth::nonce().map_err(Attempt::Fatal)?;
        let mut answer = [0u8; ANSWER_LEN];
        answer[..4].copy_from_slice(MAGIC);
        answer[4] = PROTOCOL_VERSION;
        answer[5..37].copy_from_slice(&auth::client_proof(token, &server_nonce));
        answer[37..].copy_from_slice(&client_nonce);
        self.wr.write_all(&answer).await.map_err(gone)?;
        let mut verdict = [0u8; 1];
        self.rd.read_exact(&mut verdict).await.map_err(gone)?;
        match verdict[0] {
            VERDICT_ACCEPTED => {}
            VERDICT_WRONG_TOKEN => {
                return Err(Attempt::Fatal(StoreError::Auth(format!(
                    "the store at {server} refused this client's token: it is not this job's token. Give every node \
                     the same token (--rdzv-token-file)"
                ))));
            }
            VERDICT_FULL => {
                return Err(Attempt::Retry(format!(
                    "the store at {server} serves as many connections as it may"
                )));
            }
            v => {
                return Err(Attempt::Fatal(StoreError::Protocol(format!(
                    "{server} answered the handshake with {v:#04x}, which is no verdict; is it a nabla-launch store?"
                ))));
            }
        }
        let mut proof = [0u8; auth::MAC_LEN];
        self.rd.read_exact(&mut proof).await.map_err(gone)?;
        if !auth::server_proof_ok(token, &client_nonce, &server_nonce, &proof) {
            return Err(Attempt::Fatal(StoreError::Auth(format!(
                "the server at {server} accepted this client but could not prove that it holds the job's token: \
                 something other than this job's store answers on that address; nothing was sent to it"
            ))));
        }
        Ok(())
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// This end's address (what the server's log lines name).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How long `get`, `wait` and `barrier` wait unless told otherwise.
    pub fn wait_timeout(&self) -> Duration {
        self.options.wait_timeout
    }

    /// Changes how long `get`, `wait` and `barrier` wait unless told otherwise.
    pub fn set_wait_timeout(&mut self, timeout: Duration) {
        self.options.wait_timeout = timeout;
    }

    /// Sends `request` and reads its response; `wait` is how long the server may wait for keys.
    async fn call(&mut self, request: Request, wait: Duration) -> Result<Response> {
        if let Some(why) = &self.broken {
            return Err(StoreError::Connection(format!(
                "this client's connection to {} failed earlier ({why}); connect again",
                self.server
            )));
        }
        let frame = encode_request(&request, self.options.max_frame_bytes)?;
        let op = request.name();
        let result = self.exchange(&frame, wait).await;
        let outcome = match result {
            Ok(frame) => decode_response(&frame),
            Err(e) => Err(e),
        };
        match outcome {
            Err(e) => {
                let why = format!("{op}: {e}");
                self.broken = Some(why.clone());
                Err(match e {
                    StoreError::Timeout(_) => {
                        StoreError::Timeout(format!("{why}; the server at {} is stuck", self.server))
                    }
                    StoreError::Protocol(_) => StoreError::Protocol(why),
                    _ => StoreError::Connection(format!("{why} (the server at {} went away?)", self.server)),
                })
            }
            Ok(Response::Error(m)) => Err(StoreError::Server(format!("{op}: {m}"))),
            Ok(r) => Ok(r),
        }
    }

    async fn exchange(&mut self, frame: &[u8], wait: Duration) -> Result<Vec<u8>> {
        let io = self.options.io_timeout;
        match tokio::time::timeout(io, self.wr.write_all(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StoreError::Connection(format!("sending failed: {e}"))),
            Err(_) => {
                return Err(StoreError::Timeout(format!(
                    "sending took over {:.1} s",
                    io.as_secs_f64()
                )));
            }
        }
        let answer_within = wait.saturating_add(io);
        match read_frame(&mut self.rd, self.options.max_frame_bytes, io, Some(answer_within)).await? {
            Some(frame) => Ok(frame),
            None => Err(StoreError::Connection("the server closed the connection".into())),
        }
    }

    fn unexpected(&mut self, op: &str, r: Response) -> StoreError {
        let why = format!("{op}: the server answered with {r:?}, which does not answer {op}");
        self.broken = Some(why.clone());
        StoreError::Protocol(why)
    }

    /// Sets `key` to `value` (replacing any value), waking every `get` and `wait` for it.
    pub async fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        let r = self
            .call(
                Request::Set {
                    key: key.into(),
                    value: value.to_vec(),
                },
                Duration::ZERO,
            )
            .await?;
        match r {
            Response::Done => Ok(()),
            r => Err(self.unexpected("set", r)),
        }
    }

    /// The value of `key`, waiting for it to be set for up to [`wait_timeout`](Self::wait_timeout).
    pub async fn get(&mut self, key: &str) -> Result<Vec<u8>> {
        self.get_within(key, self.options.wait_timeout).await
    }

    /// The value of `key`, waiting for it to be set for up to `timeout`.
    pub async fn get_within(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        check_key(key)?;
        match self
            .call(
                Request::Get {
                    key: key.into(),
                    wait: timeout,
                },
                timeout,
            )
            .await?
        {
            Response::Value(v) => Ok(v),
            Response::Timeout { .. } => Err(StoreError::Timeout(format!(
                "get of `{key}` waited {:.1} s and no one set it; check that the process that sets it started, \
                 with the same store address and token",
                timeout.as_secs_f64()
            ))),
            r => Err(self.unexpected("get", r)),
        }
    }

    /// The value of `key` if it is set now, without waiting.
    pub async fn try_get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        match self.call(Request::TryGet { key: key.into() }, Duration::ZERO).await? {
            Response::Value(v) => Ok(Some(v)),
            Response::Absent => Ok(None),
            r => Err(self.unexpected("try_get", r)),
        }
    }

    /// Adds `delta` to the integer under `key` (0 when absent) atomically and returns the new
    /// value. The value is stored as decimal text, so `get` reads `b"42"`.
    pub async fn add(&mut self, key: &str, delta: i64) -> Result<i64> {
        check_key(key)?;
        match self
            .call(Request::Add { key: key.into(), delta }, Duration::ZERO)
            .await?
        {
            Response::Int(n) => Ok(n),
            r => Err(self.unexpected("add", r)),
        }
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: if the key is absent), atomically.
    /// Returns whether it did and the value stored afterwards.
    pub async fn compare_and_set(&mut self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<Swap> {
        check_key(key)?;
        let request = Request::CompareAndSet {
            key: key.into(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        match self.call(request, Duration::ZERO).await? {
            Response::Swap { swapped, current } => Ok(Swap { swapped, current }),
            r => Err(self.unexpected("compare_and_set", r)),
        }
    }

    /// Waits until every key in `keys` is set, for up to [`wait_timeout`](Self::wait_timeout).
    pub async fn wait(&mut self, keys: &[&str]) -> Result<()> {
        self.wait_within(keys, self.options.wait_timeout).await
    }

    /// Waits until every key in `keys` is set, for up to `timeout`. The timeout error lists the
    /// keys still missing.
    pub async fn wait_within(&mut self, keys: &[&str], timeout: Duration) -> Result<()> {
        for k in keys {
            check_key(k)?;
        }
        let request = Request::Wait {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            wait: timeout,
        };
        match self.call(request, timeout).await? {
            Response::Done => Ok(()),
            Response::Timeout { missing } => Err(StoreError::Timeout(format!(
                "wait for {} key(s) waited {:.1} s; still missing: {}. Check that the processes that set them \
                 started, with the same store address and token",
                keys.len(),
                timeout.as_secs_f64(),
                list_keys(&missing)
            ))),
            r => Err(self.unexpected("wait", r)),
        }
    }

    /// Removes `key`; true when it existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool> {
        check_key(key)?;
        match self.call(Request::Delete { key: key.into() }, Duration::ZERO).await? {
            Response::Deleted(existed) => Ok(existed),
            r => Err(self.unexpected("delete", r)),
        }
    }
}
