//! Helpers: a server on 127.0.0.1 with its log lines captured, clients with short timeouts, and
//! a raw client written from the documented wire format (for traffic the real client never sends).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use nabla_launch::store::{ClientOptions, Logger, ServerConfig, StoreClient, StoreServer, Token};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Log lines a server wrote.
#[derive(Clone, Default)]
pub struct Logged(Arc<Mutex<Vec<String>>>);

impl Logged {
    pub fn logger(&self) -> Logger {
        let lines = self.0.clone();
        Logger::new(move |line| lines.lock().unwrap().push(line.to_string()))
    }
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    /// The first line containing every one of `parts`, waiting up to 3 s for it (the server
    /// logs from its own task).
    pub async fn find(&self, parts: &[&str]) -> Option<String> {
        for _ in 0..300 {
            if let Some(l) = self.lines().into_iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

pub struct Fixture {
    pub server: StoreServer,
    pub token: Token,
    pub logged: Logged,
}

impl Fixture {
    pub fn addr(&self) -> String {
        self.server.local_addr().to_string()
    }
    pub async fn client(&self) -> StoreClient {
        StoreClient::connect(&self.addr(), &self.token, options())
            .await
            .unwrap()
    }
}

/// A server on 127.0.0.1 (a free port) with `config`, logging into [`Logged`].
pub async fn serve_with(mut config: ServerConfig) -> Fixture {
    let logged = Logged::default();
    config.log = logged.logger();
    let token = Token::generate().unwrap();
    let server = StoreServer::bind("127.0.0.1:0".parse().unwrap(), token.clone(), config)
        .await
        .unwrap();
    Fixture { server, token, logged }
}

pub async fn serve() -> Fixture {
    serve_with(ServerConfig::default()).await
}

/// Client options with timeouts short enough for tests.
pub fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        wait_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

pub const CLIENT_CONTEXT: &[u8] = b"nabla-launch store v1: the client holds the job token";

/// A connection that has read the server's HELLO; returns it with the server nonce.
pub async fn raw_hello(addr: SocketAddr) -> (TcpStream, [u8; 32]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = [0u8; 37];
    s.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello[..5], b"NBST\x01", "HELLO is not as documented");
    (s, hello[5..].try_into().unwrap())
}

/// The ANSWER to `nonce` with the key `key`, as the protocol module documents it.
pub fn raw_answer(key: &[u8], nonce: &[u8; 32]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(nonce);
    mac.update(CLIENT_CONTEXT);
    let mut answer = b"NBST\x01".to_vec();
    answer.extend_from_slice(&mac.finalize().into_bytes());
    answer.extend_from_slice(&[7u8; 32]);
    answer
}

/// A raw connection through an accepted handshake, ready for frames.
pub async fn raw_authenticated(addr: SocketAddr, token: &Token) -> TcpStream {
    let (mut s, nonce) = raw_hello(addr).await;
    s.write_all(&raw_answer(token.expose().as_bytes(), &nonce))
        .await
        .unwrap();
    let mut verdict = [0u8; 33];
    s.read_exact(&mut verdict).await.unwrap();
    assert_eq!(verdict[0], 1, "the server did not accept the right token");
    s
}

/// Reads until the peer closes (or 5 s pass: then panics); returns what arrived.
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the server did not close the connection within 5 s");
    got
}

/// Checks that `client` is still served: a set and a get of a fresh key, each in under 2 s.
pub async fn still_served(client: &mut StoreClient, tag: &str) {
    let key = format!("alive/{tag}");
    let t = std::time::Instant::now();
    client.set(&key, tag.as_bytes()).await.unwrap();
    assert_eq!(client.get(&key).await.unwrap(), tag.as_bytes());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a served client waited {:?}",
        t.elapsed()
    );
}
