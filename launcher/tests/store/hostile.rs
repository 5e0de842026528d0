//! Hostile traffic, each while a good client keeps being served: garbage, a frame that declares
//! 4 GiB, stalled peers, floods of connections.

use std::time::{Duration, Instant};

use nabla_launch::store::{ClientOptions, ServerConfig, StoreClient, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{options, raw_authenticated, raw_hello, read_to_close, serve, serve_with, still_served};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_refused_and_closed() {
    let f = serve().await;
    let addr = f.server.local_addr();
    let mut good = f.client().await;
    good.set("k", b"v").await.unwrap();

    // Before the handshake: an HTTP request, and four bytes that would declare 4 GiB.
    for (i, junk) in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0xff; 4][..]]
        .into_iter()
        .enumerate()
    {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut hello = [0u8; 37];
        s.read_exact(&mut hello).await.unwrap();
        let t = Instant::now();
        s.write_all(junk).await.unwrap();
        if junk.len() < 5 {
            s.write_all(&[0]).await.unwrap();
        }
        let after = read_to_close(&mut s).await;
        assert!(after.is_empty(), "the server answered garbage with {after:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "closed after {:?}", t.elapsed());
        let line = f
            .logged
            .find(&[&s.local_addr().unwrap().to_string(), "not the store's handshake"])
            .await;
        assert!(line.is_some(), "case {i}: no log line: {:?}", f.logged.lines());
        still_served(&mut good, &format!("garbage-{i}")).await;
    }

    // After the handshake: 64 KiB of random bytes where a frame should be.
    let mut s = raw_authenticated(addr, &f.token).await;
    let mut junk = vec![0u8; 64 << 10];
    getrandom::fill(&mut junk).unwrap();
    junk[..5].copy_from_slice(&[0, 0, 0, 40, 9]); // a plausible length, then a version no one speaks
    let _ = s.write_all(&junk).await; // the server may close before all of it is written
    read_to_close(&mut s).await;
    assert!(
        f.logged
            .find(&[&s.local_addr().unwrap().to_string(), "closed:"])
            .await
            .is_some()
    );
    still_served(&mut good, "garbage-after-auth").await;
    assert_eq!(good.get("k").await.unwrap(), b"v");
    assert!(f.server.stats().closed_for_errors >= 3);
}

/// Peak virtual memory of this process in bytes (Linux), the measure that an allocation of the
/// declared 4 GiB would raise even if its pages were never touched.
fn vm_peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmPeak:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_declaring_4_gib_is_refused_without_allocating_it() {
    let f = serve().await;
    let addr = f.server.local_addr();
    let mut good = f.client().await;
    let before = vm_peak();
    for i in 0..3 {
        let mut s = raw_authenticated(addr, &f.token).await;
        let t = Instant::now();
        // The length field says 4 GiB - 1, then a valid version and kind, then nothing more.
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 1]).await.unwrap();
        let answer = read_to_close(&mut s).await;
        let took = t.elapsed();
        assert!(took < Duration::from_secs(2), "closed after {took:?}");
        // The ERROR response says why.
        let text = String::from_utf8_lossy(&answer);
        assert!(answer.get(5) == Some(&0x87), "no ERROR response: {answer:?}");
        assert!(
            text.contains("declares 4294967295 bytes, over the limit of 4194304"),
            "{text}"
        );
        still_served(&mut good, &format!("4gib-{i}")).await;
    }
    if let (Some(a), Some(b)) = (before, vm_peak()) {
        // Other tests' threads raise the peak a little (stacks, malloc arenas: under 1 GiB on
        // this machine); one allocation of the declared size would raise it by 4 GiB.
        assert!(b - a < 2 << 30, "peak virtual memory grew by {} MiB", (b - a) >> 20);
    }
    assert!(f.logged.find(&["declares 4294967295 bytes"]).await.is_some());
}

fn short_timeouts() -> ServerConfig {
    ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        frame_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peers_are_closed_after_the_timeout() {
    let f = serve_with(short_timeouts()).await;
    let addr = f.server.local_addr();
    let mut good = f.client().await;

    // Connects and never answers the challenge.
    let t = Instant::now();
    let (mut silent, _) = raw_hello(addr).await;
    // Answers the challenge, then starts a frame and stops after two bytes.
    let mut half = raw_authenticated(addr, &f.token).await;
    half.write_all(&[0, 0]).await.unwrap();
    // Declares a 100-byte frame and sends 10.
    let mut short = raw_authenticated(addr, &f.token).await;
    short
        .write_all(&[0, 0, 0, 100, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    // While they stall, the good client is served at once.
    still_served(&mut good, "during-stall").await;
    for s in [&mut silent, &mut half, &mut short] {
        read_to_close(s).await;
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290),
        "closed after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    let silent_addr = silent.local_addr().unwrap().to_string();
    assert!(
        f.logged
            .find(&[&silent_addr, "no answer to the challenge within 0.3 s"])
            .await
            .is_some()
    );
    assert!(
        f.logged.find(&["not finished within 0.3 s"]).await.is_some(),
        "{:?}",
        f.logged.lines()
    );
    still_served(&mut good, "after-stall").await;
    assert_eq!(f.server.stats().pending_handshakes, 0);
    assert_eq!(f.server.stats().connections, 1);

    // A client that is authenticated may stay idle between frames as long as it likes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_served(&mut good, "after-idle").await;
}

/// How many connections this process may hold open at once, with room for the rest.
fn connection_budget(wanted: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    // Both ends live in this process; leave room for other tests.
    wanted.min(limit.saturating_sub(400) / 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_refused_without_disturbing_served_clients() {
    let f = serve().await;
    let addr = f.server.local_addr();
    let mut good = f.client().await;
    let n = connection_budget(2000);
    assert!(n >= 300, "only {n} connections allowed by the file limit");
    let t = Instant::now();
    let mut flood = Vec::with_capacity(n);
    for i in 0..n {
        match TcpStream::connect(addr).await {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connection {i} of the flood failed to connect: {e}"),
        }
        if i % 500 == 0 {
            still_served(&mut good, &format!("flood-{i}")).await;
        }
    }
    let opened = t.elapsed();
    still_served(&mut good, "flood-all-open").await;
    let stats = f.server.stats();
    assert!(stats.pending_handshakes <= 256, "{stats:?}");
    assert!(stats.refused as usize >= n - 256 - 10, "{stats:?}");
    assert!(f.logged.find(&["handshakes already in progress"]).await.is_some());
    drop(flood);
    // Once the flood is gone, new clients get in again.
    let mut fresh = StoreClient::connect(&f.addr(), &f.token, options()).await.unwrap();
    still_served(&mut fresh, "after-flood").await;
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "opened in {opened:?}, all in {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_connection_limit_wait_their_turn() {
    let f = serve_with(ServerConfig {
        max_connections: 3,
        ..ServerConfig::default()
    })
    .await;
    let mut served = Vec::new();
    for _ in 0..3 {
        served.push(f.client().await);
    }
    let quick = ClientOptions {
        connect_timeout: Duration::from_millis(400),
        ..options()
    };
    let e = StoreClient::connect(&f.addr(), &f.token, quick).await.unwrap_err();
    assert!(matches!(e, StoreError::Connect(_)), "{e}");
    assert!(e.to_string().contains("as many connections as it may"), "{e}");
    assert!(f.server.stats().refused >= 1);
    for (i, c) in served.iter_mut().enumerate() {
        still_served(c, &format!("full-{i}")).await;
    }
    // One leaves; a waiting client gets its place.
    let waiting = {
        let (addr, token) = (f.addr(), f.token.clone());
        tokio::spawn(async move { StoreClient::connect(&addr, &token, options()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    served.pop();
    let mut c = waiting.await.unwrap().unwrap();
    still_served(&mut c, "took-the-place").await;
}
