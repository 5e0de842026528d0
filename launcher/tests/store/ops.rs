//! Every operation, blocking get/wait and their timeouts, concurrent adds, the barrier, connect
//! retry.

use std::time::{Duration, Instant};

use nabla_launch::store::{ClientOptions, ServerConfig, StoreClient, StoreError, StoreServer, Swap};

use crate::common::{options, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation() {
    let f = serve().await;
    let mut c = f.client().await;
    c.set("nccl/unique_id", &[7u8; 128]).await.unwrap();
    assert_eq!(c.get("nccl/unique_id").await.unwrap(), vec![7u8; 128]);
    assert_eq!(c.try_get("nccl/unique_id").await.unwrap(), Some(vec![7u8; 128]));
    assert_eq!(c.try_get("absent").await.unwrap(), None);
    c.set("nccl/unique_id", b"").await.unwrap(); // replaced; empty values are values
    assert_eq!(c.get("nccl/unique_id").await.unwrap(), b"");

    assert_eq!(c.add("count", 5).await.unwrap(), 5);
    assert_eq!(c.add("count", -2).await.unwrap(), 3);
    assert_eq!(c.get("count").await.unwrap(), b"3");

    let swap = |swapped, current: Option<&[u8]>| Swap {
        swapped,
        current: current.map(<[u8]>::to_vec),
    };
    assert_eq!(
        c.compare_and_set("leader", Some(b"x"), b"n1").await.unwrap(),
        swap(false, None)
    );
    assert_eq!(
        c.compare_and_set("leader", None, b"n1").await.unwrap(),
        swap(true, Some(b"n1"))
    );
    assert_eq!(
        c.compare_and_set("leader", None, b"n2").await.unwrap(),
        swap(false, Some(b"n1"))
    );
    assert_eq!(
        c.compare_and_set("leader", Some(b"n2"), b"n3").await.unwrap(),
        swap(false, Some(b"n1"))
    );
    assert_eq!(
        c.compare_and_set("leader", Some(b"n1"), b"n3").await.unwrap(),
        swap(true, Some(b"n3"))
    );

    c.wait(&["count", "leader"]).await.unwrap();
    assert!(c.delete("leader").await.unwrap());
    assert!(!c.delete("leader").await.unwrap());
    assert_eq!(c.try_get("leader").await.unwrap(), None);
    assert_eq!(f.server.stats().keys, 2);
    assert_eq!(f.server.stats().connections, 1);

    // A value of 1 MiB goes through; one over the frame limit is refused before it is sent, and
    // the client stays usable.
    let big = vec![0xabu8; 1 << 20];
    c.set("big", &big).await.unwrap();
    assert_eq!(c.get("big").await.unwrap(), big);
    let e = c.set("huge", &vec![0u8; 5 << 20]).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Usage(_)) && e.to_string().contains("frame limit"),
        "{e}"
    );
    let e = c.set("", b"x").await.unwrap_err();
    assert!(e.to_string().contains("must not be empty"), "{e}");
    // add on a key that does not hold an integer: the server refuses, the connection goes on.
    let e = c.add("big", 1).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Server(_)) && e.to_string().contains("not a decimal integer"),
        "{e}"
    );
    assert_eq!(c.add("count", 1).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_wait_block_until_another_client_sets() {
    let f = serve().await;
    let mut waiter = f.client().await;
    let mut setter = f.client().await;
    let t = Instant::now();
    let set_later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        setter.set("rdzv/node1", b"10.0.0.2:5000").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        setter.set("rdzv/node2", b"10.0.0.3:5000").await.unwrap();
        setter
    });
    assert_eq!(waiter.get("rdzv/node1").await.unwrap(), b"10.0.0.2:5000");
    let got_at = t.elapsed();
    assert!(
        got_at >= Duration::from_millis(180),
        "get returned before the key was set ({got_at:?})"
    );
    waiter.wait(&["rdzv/node1", "rdzv/node2"]).await.unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(380),
        "wait returned before both keys were set ({waited:?})"
    );
    assert!(waited < Duration::from_secs(3), "wait took {waited:?}");
    set_later.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_wait_time_out_and_the_client_goes_on() {
    let f = serve().await;
    let mut c = f.client().await;
    let t = Instant::now();
    let e = c.get_within("never", Duration::from_millis(300)).await.unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, StoreError::Timeout(_)), "{e}");
    assert!(e.to_string().contains("`never`"), "{e}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );

    c.set("here", b"1").await.unwrap();
    let t = Instant::now();
    let e = c
        .wait_within(&["here", "missing/a", "missing/b"], Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(290));
    let msg = e.to_string();
    assert!(
        msg.contains("`missing/a`, `missing/b`") && !msg.contains("`here`"),
        "{msg}"
    );
    // The default wait timeout applies to get.
    c.set_wait_timeout(Duration::from_millis(100));
    assert!(matches!(c.get("never").await, Err(StoreError::Timeout(_))));
    // A timeout is an answer, not a failure: the connection is still good.
    assert_eq!(c.get("here").await.unwrap(), b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_adding_to_one_key_end_with_the_exact_sum() {
    let f = serve().await;
    const CLIENTS: i64 = 32;
    const ADDS: i64 = 50;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut c = f.client().await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..ADDS {
                seen.push(c.add("counter", i + 1).await.unwrap());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let sum = ADDS * CLIENTS * (CLIENTS + 1) / 2;
    let mut c = f.client().await;
    assert_eq!(c.add("counter", 0).await.unwrap(), sum);
    // Every add saw a distinct total (no two adds interleaved), and the last one saw the sum.
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len() as i64, CLIENTS * ADDS);
    assert_eq!(*all.last().unwrap(), sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_lets_all_through_together_and_names_the_missing() {
    let f = serve().await;
    let mut tasks = Vec::new();
    let t = Instant::now();
    for i in 0..8u64 {
        let mut c = f.client().await;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            c.barrier("start", 8).await.unwrap();
            Instant::now()
        }));
    }
    for task in tasks {
        // Nobody passes before the last (started at 140 ms) arrives.
        let passed = task.await.unwrap().duration_since(t);
        assert!(passed >= Duration::from_millis(130), "passed the barrier at {passed:?}");
    }
    let mut c = f.client().await;
    let e = c.barrier("start", 8).await.unwrap_err();
    assert!(e.to_string().contains("arrival 9 of 8"), "{e}");

    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut c = f.client().await;
        tasks.push(tokio::spawn(async move {
            c.barrier_within("short", 4, Duration::from_millis(300)).await
        }));
    }
    for task in tasks {
        let e = task.await.unwrap().unwrap_err();
        assert!(matches!(e, StoreError::Timeout(_)), "{e}");
        assert!(e.to_string().contains("3 of 4 participants arrived"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retries_until_the_server_listens() {
    let token = nabla_launch::store::Token::generate().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (a, tk) = (addr.clone(), token.clone());
    let t = Instant::now();
    let connecting = tokio::spawn(async move { StoreClient::connect(&a, &tk, options()).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!connecting.is_finished());
    let server = StoreServer::bind(addr.parse().unwrap(), token, ServerConfig::default())
        .await
        .unwrap();
    let mut c = connecting.await.unwrap().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(400));
    c.set("k", b"v").await.unwrap();
    drop(server);

    // Nothing listening: a Connect error at the deadline that names the address.
    let quick = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        ..options()
    };
    let t = Instant::now();
    let e = StoreClient::connect(&addr, &nabla_launch::store::Token::generate().unwrap(), quick)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Connect(_)), "{e}");
    assert!(e.to_string().contains(&addr), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let e = StoreClient::connect("localhost", &nabla_launch::store::Token::generate().unwrap(), options())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no port"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_fails_its_clients_cleanly() {
    let f = serve().await;
    let mut c = f.client().await;
    c.set("k", b"v").await.unwrap();
    drop(f.server);
    let e = c.get("k").await.unwrap_err();
    assert!(matches!(e, StoreError::Connection(_)), "{e}");
    let e = c.get("k").await.unwrap_err();
    assert!(e.to_string().contains("failed earlier"), "{e}");
}
