//! Authentication: a wrong token or none reads and writes nothing, is closed and logged with
//! the peer's address; the client refuses a server that cannot prove the token.

use std::time::{Duration, Instant};

use nabla_launch::store::{ClientOptions, StoreClient, StoreError, Token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{options, raw_answer, raw_hello, read_to_close, serve, still_served};

/// A SET frame of `key` = `value`, as the protocol module documents it.
fn set_frame(key: &str, value: &[u8]) -> Vec<u8> {
    let mut body = vec![1u8, 0x01];
    body.extend_from_slice(&(key.len() as u16).to_be_bytes());
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(&(value.len() as u32).to_be_bytes());
    body.extend_from_slice(value);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_reads_and_writes_nothing_and_is_logged() {
    let f = serve().await;
    let addr = f.server.local_addr();
    let mut good = f.client().await;
    good.set("secret/nccl_id", &[1u8; 128]).await.unwrap();

    // The real client with another job's token: an Auth error at once, no retries.
    let other = Token::generate().unwrap();
    let slow = ClientOptions {
        connect_timeout: Duration::from_secs(20),
        ..options()
    };
    let t = Instant::now();
    let e = StoreClient::connect(&f.addr(), &other, slow).await.unwrap_err();
    assert!(matches!(e, StoreError::Auth(_)), "{e}");
    assert!(e.to_string().contains("refused this client's token"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A raw client with a wrong proof that sends a SET and a GET right behind its answer.
    let (mut s, nonce) = raw_hello(addr).await;
    let mut attack = raw_answer(b"not the token, but long enough to be one", &nonce);
    attack.extend_from_slice(&set_frame("secret/nccl_id", b"overwritten"));
    attack.extend_from_slice(&set_frame("planted", b"x"));
    let _ = s.write_all(&attack).await;
    let got = read_to_close(&mut s).await;
    assert_eq!(
        got,
        vec![0],
        "the refused client received more than the wrong-token verdict"
    );
    let peer = s.local_addr().unwrap().to_string();
    let line = f.logged.find(&[&peer, "wrong token"]).await;
    assert!(line.is_some(), "no log line names {peer}: {:?}", f.logged.lines());

    // No token at all: connects, reads the challenge, and leaves (or says nothing).
    let (mut s, _) = raw_hello(addr).await;
    let peer = s.local_addr().unwrap().to_string();
    s.shutdown().await.unwrap();
    read_to_close(&mut s).await;
    assert!(
        f.logged
            .find(&[&peer, "without answering the challenge"])
            .await
            .is_some()
    );
    // An empty proof of the right shape (all zeros).
    let (mut s, _) = raw_hello(addr).await;
    let mut zeros = b"NBST\x01".to_vec();
    zeros.extend_from_slice(&[0u8; 64]);
    s.write_all(&zeros).await.unwrap();
    assert_eq!(read_to_close(&mut s).await, vec![0]);

    // The key space is as the good client left it.
    assert_eq!(good.get("secret/nccl_id").await.unwrap(), vec![1u8; 128]);
    assert_eq!(good.try_get("planted").await.unwrap(), None);
    let stats = f.server.stats();
    assert_eq!(stats.keys, 1, "only the good client's key: {stats:?}");
    assert_eq!(stats.auth_failures, 3, "{stats:?}");
    still_served(&mut good, "after-attacks").await;
    assert_eq!(f.server.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_server_without_the_token() {
    let token = Token::generate().unwrap();
    // An impostor that speaks the handshake but cannot prove the token: it accepts anyone.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let impostor = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut hello = b"NBST\x01".to_vec();
        hello.extend_from_slice(&[3u8; 32]);
        s.write_all(&hello).await.unwrap();
        let mut answer = [0u8; 69];
        s.read_exact(&mut answer).await.unwrap();
        let mut verdict = vec![1u8];
        verdict.extend_from_slice(&[9u8; 32]);
        s.write_all(&verdict).await.unwrap();
        // What the client sends after that: nothing.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let e = StoreClient::connect(&addr.to_string(), &token, options())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Auth(_)), "{e}");
    assert!(
        e.to_string().contains("could not prove that it holds the job's token"),
        "{e}"
    );
    assert!(
        impostor.await.unwrap().is_empty(),
        "the client sent data to an impostor"
    );

    // Something that is not a store at all.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6 and some more bytes\r\n").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let e = StoreClient::connect(&addr.to_string(), &token, options())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not a nabla-launch store"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_is_refused_on_both_sides() {
    let f = serve().await;
    let (mut s, nonce) = raw_hello(f.server.local_addr()).await;
    let mut answer = raw_answer(f.token.expose().as_bytes(), &nonce);
    answer[4] = 2;
    s.write_all(&answer).await.unwrap();
    assert!(read_to_close(&mut s).await.is_empty());
    let peer = s.local_addr().unwrap().to_string();
    assert!(f.logged.find(&[&peer, "protocol version 2"]).await.is_some());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut hello = b"NBST\x07".to_vec();
        hello.extend_from_slice(&[0u8; 32]);
        let _ = s.write_all(&hello).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let e = StoreClient::connect(&addr.to_string(), &f.token, options())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("speaks protocol version 7"), "{e}");
    let _ = TcpStream::connect(f.server.local_addr()).await.unwrap();
}
