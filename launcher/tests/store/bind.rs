//! The server listens on exactly the address it was given.

use std::net::SocketAddr;
use std::time::Duration;

use nabla_launch::store::{ServerConfig, StoreError, StoreServer, Token};
use tokio::net::TcpStream;

use crate::common::serve;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_binds_only_the_given_address() {
    let f = serve().await;
    let local = f.server.local_addr();
    assert_eq!(local.ip().to_string(), "127.0.0.1");
    assert_ne!(local.port(), 0);
    TcpStream::connect(local).await.unwrap();
    // 127.0.0.2 is this machine too (all of 127/8 is loopback on Linux), but not the address
    // given: a server on 0.0.0.0 would answer there, ours must not.
    let other: SocketAddr = format!("127.0.0.2:{}", local.port()).parse().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(other)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "the store answered on {other}, an address it was not given"
    );

    // The same address and port again is refused with a message that says what to do.
    let e = StoreServer::bind(local, Token::generate().unwrap(), ServerConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Bind(_)), "{e}");
    assert!(
        e.to_string().contains(&local.to_string()) && e.to_string().contains("another port"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_loopback_server_is_on_ipv6_loopback_only() {
    let Ok(server) = StoreServer::bind(
        "[::1]:0".parse().unwrap(),
        Token::generate().unwrap(),
        ServerConfig::default(),
    )
    .await
    else {
        eprintln!("no IPv6 loopback on this machine; skipped");
        return;
    };
    let local = server.local_addr();
    assert_eq!(local.ip().to_string(), "::1");
    let v4: SocketAddr = format!("127.0.0.1:{}", local.port()).parse().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(v4)).await;
    assert!(!matches!(r, Ok(Ok(_))), "the store on [::1] answered on {v4}");
}
