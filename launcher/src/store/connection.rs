//! One connection on the server: the handshake, then requests answered in turn until the client
//! leaves or breaks the protocol. Every way it ends is bounded in time and memory, and every
//! refusal is logged with the peer's address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::store::auth;
use crate::store::error::StoreError;
use crate::store::protocol::{
    ANSWER_LEN, HELLO_LEN, MAGIC, PROTOCOL_VERSION, Request, Response, VERDICT_ACCEPTED, VERDICT_FULL,
    VERDICT_WRONG_TOKEN, decode_request, encode_response, read_frame,
};
use crate::store::server::Shared;
use crate::store::token::hex;

/// Which counter of [`ServerStats`](crate::store::ServerStats) a refusal adds to.
#[derive(Clone, Copy)]
enum Kind {
    WrongToken,
    Full,
    Error,
}

/// Why a handshake ended without a client.
struct Refusal {
    message: String,
    kind: Kind,
}

fn refuse(message: impl Into<String>) -> Refusal {
    Refusal {
        message: message.into(),
        kind: Kind::Error,
    }
}

/// Serves the connection from `peer` until it ends. `pending` is this connection's place among
/// the handshakes in progress, given back once the client is in.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, pending: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let config = &shared.config;
    let log = |msg: &str| config.log.log(&format!("nabla-launch store: {peer}: {msg}"));

    let handshake = tokio::time::timeout(config.handshake_timeout, handshake(&mut rd, &mut wr, &shared)).await;
    let _served = match handshake {
        Ok(Ok(permit)) => permit,
        Ok(Err(refusal)) => {
            let counter = match refusal.kind {
                Kind::WrongToken => &shared.counters.auth_failures,
                Kind::Full => &shared.counters.refused,
                Kind::Error => &shared.counters.closed_for_errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            log(&refusal.message);
            return;
        }
        Err(_) => {
            shared.counters.closed_for_errors.fetch_add(1, Ordering::Relaxed);
            log(&format!(
                "closed: no answer to the challenge within {:.1} s (a peer without the job's token, or a stalled one)",
                config.handshake_timeout.as_secs_f64()
            ));
            return;
        }
    };
    drop(pending);

    loop {
        let frame = match read_frame(&mut rd, config.max_frame_bytes, config.frame_timeout, None).await {
            Ok(None) => return,
            Ok(Some(frame)) => frame,
            Err(e) => return close_for(&shared, &mut wr, &log, e).await,
        };
        if shared.closed.load(Ordering::SeqCst) {
            return; // the server was dropped: close without an answer
        }
        let request = match decode_request(&frame) {
            Ok(r) => r,
            Err(e) => return close_for(&shared, &mut wr, &log, e).await,
        };
        let Some(response) = answer(request, &shared, &mut rd).await else {
            return; // the client left while its get or wait was pending
        };
        let bytes = encode_response(&response, config.max_frame_bytes);
        match tokio::time::timeout(config.frame_timeout, wr.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return log(&format!("closed: sending a response failed: {e}")),
            Err(_) => {
                shared.counters.closed_for_errors.fetch_add(1, Ordering::Relaxed);
                return log(&format!(
                    "closed: the client did not take a response within {:.1} s",
                    config.frame_timeout.as_secs_f64()
                ));
            }
        }
    }
}

/// The challenge-response; on success, this connection's place among those served.
async fn handshake(
    rd: &mut BufReader<OwnedReadHalf>,
    wr: &mut OwnedWriteHalf,
    shared: &Shared,
) -> Result<OwnedSemaphorePermit, Refusal> {
    let server_nonce = auth::nonce().map_err(|e| refuse(format!("closed: {e}")))?;
    let mut hello = [0u8; HELLO_LEN];
    hello[..4].copy_from_slice(MAGIC);
    hello[4] = PROTOCOL_VERSION;
    hello[5..].copy_from_slice(&server_nonce);
    wr.write_all(&hello)
        .await
        .map_err(|e| refuse(format!("closed: sending the challenge failed: {e}")))?;

    let mut answer = [0u8; ANSWER_LEN];
    // The magic and version first, so that garbage is refused as soon as it arrives.
    rd.read_exact(&mut answer[..5]).await.map_err(|_| {
        refuse("closed: the peer left without answering the challenge (no token; a port scan or a client of another program)")
    })?;
    if &answer[..4] != MAGIC {
        return Err(refuse(format!(
            "closed: the peer sent bytes that are not the store's handshake (starting {}): garbage, or a client of \
             another protocol",
            hex(&answer[..5])
        )));
    }
    if answer[4] != PROTOCOL_VERSION {
        return Err(refuse(format!(
            "closed: the peer speaks store protocol version {}, this server version {PROTOCOL_VERSION}; use the same \
             nabla-launch build on every node",
            answer[4]
        )));
    }
    rd.read_exact(&mut answer[5..])
        .await
        .map_err(|_| refuse("closed: the peer left inside its answer to the challenge"))?;
    if !auth::client_proof_ok(&shared.token, &server_nonce, &answer[5..37]) {
        let _ = wr.write_all(&[VERDICT_WRONG_TOKEN]).await;
        return Err(Refusal {
            message: "refused: wrong token (the peer does not hold this job's rendezvous token); closed before \
                      reading anything else"
                .into(),
            kind: Kind::WrongToken,
        });
    }
    let client_nonce: [u8; auth::NONCE_LEN] = answer[37..].try_into().expect("32 bytes");
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        let _ = wr.write_all(&[VERDICT_FULL]).await;
        return Err(Refusal {
            message: format!(
                "refused: already serving {} connections (ServerConfig::max_connections); the client may retry",
                shared.config.max_connections
            ),
            kind: Kind::Full,
        });
    };
    let mut verdict = [0u8; 1 + auth::MAC_LEN];
    verdict[0] = VERDICT_ACCEPTED;
    verdict[1..].copy_from_slice(&auth::server_proof(&shared.token, &client_nonce, &server_nonce));
    wr.write_all(&verdict)
        .await
        .map_err(|e| refuse(format!("closed: sending the verdict failed: {e}")))?;
    Ok(permit)
}

/// Logs why the connection closes, tells the client in an ERROR response (best effort, bounded
/// in time), and returns, which closes it.
async fn close_for(shared: &Shared, wr: &mut OwnedWriteHalf, log: &impl Fn(&str), error: StoreError) {
    shared.counters.closed_for_errors.fetch_add(1, Ordering::Relaxed);
    log(&format!("closed: {error}"));
    let bytes = encode_response(&Response::Error(error.to_string()), shared.config.max_frame_bytes);
    let _ = tokio::time::timeout(shared.config.frame_timeout, wr.write_all(&bytes)).await;
}

/// Resolves when the client closes its side (or the connection fails); never when it sends more.
async fn peer_closed(rd: &mut BufReader<OwnedReadHalf>) {
    if let Ok(b) = rd.fill_buf().await
        && !b.is_empty()
    {
        // The client sent its next request early: keep it buffered and stop watching.
        std::future::pending::<()>().await;
    }
}

/// The response to `request`; `None` when the client left while it waited.
async fn answer(request: Request, shared: &Shared, rd: &mut BufReader<OwnedReadHalf>) -> Option<Response> {
    let state = &shared.state;
    let deadline = |wait: std::time::Duration| Instant::now() + wait.min(shared.config.max_wait);
    Some(match request {
        Request::Set { key, value } => match state.set(&key, value) {
            Ok(()) => Response::Done,
            Err(m) => Response::Error(m),
        },
        Request::Get { key, wait } => {
            let until = deadline(wait);
            tokio::select! {
                v = state.get(&key, until) => match v {
                    Some(v) => Response::Value(v),
                    None => Response::Timeout { missing: vec![key] },
                },
                _ = peer_closed(rd) => return None,
            }
        }
        Request::TryGet { key } => match state.try_get(&key) {
            Some(v) => Response::Value(v),
            None => Response::Absent,
        },
        Request::Add { key, delta } => match state.add(&key, delta) {
            Ok(n) => Response::Int(n),
            Err(m) => Response::Error(m),
        },
        Request::CompareAndSet { key, expected, new } => match state.compare_and_set(&key, expected.as_deref(), new) {
            Ok(s) => Response::Swap {
                swapped: s.swapped,
                current: s.current,
            },
            Err(m) => Response::Error(m),
        },
        Request::Wait { keys, wait } => {
            let until = deadline(wait);
            tokio::select! {
                r = state.wait(&keys, until) => match r {
                    Ok(()) => Response::Done,
                    Err(missing) => Response::Timeout { missing },
                },
                _ = peer_closed(rd) => return None,
            }
        }
        Request::Delete { key } => Response::Deleted(state.delete(&key)),
    })
}
