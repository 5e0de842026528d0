//! The blocking client, from plain threads (as `nb::dist::init` would use it).

use std::time::{Duration, Instant};

use nabla_launch::store::{BlockingStoreClient, ServerConfig, StoreError, StoreServer, Token};

use crate::common::options;

#[test]
fn blocking_clients_rendezvous_from_plain_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let token = Token::generate().unwrap();
    let dir = std::env::temp_dir().join(format!("nabla-store-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    let _ = std::fs::remove_file(&token_file);
    token.write_file(&token_file).unwrap();
    let server = runtime
        .block_on(StoreServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            token.clone(),
            ServerConfig::default(),
        ))
        .unwrap();
    let addr = server.local_addr().to_string();

    let ranks: Vec<_> = (0..4)
        .map(|rank| {
            let (addr, token_file) = (addr.clone(), token_file.clone());
            std::thread::spawn(move || {
                let mut c = BlockingStoreClient::connect_with_token_file(&addr, &token_file, options()).unwrap();
                if rank == 0 {
                    std::thread::sleep(Duration::from_millis(200));
                    c.set("nccl/unique_id", &[42u8; 128]).unwrap();
                }
                let t = Instant::now();
                let id = c.get("nccl/unique_id").unwrap();
                c.barrier("init", 4).unwrap();
                assert!((1..=4).contains(&c.add("ranks", 1).unwrap()));
                (id, t.elapsed())
            })
        })
        .collect();
    for (rank, r) in ranks.into_iter().enumerate() {
        let (id, waited) = r.join().unwrap();
        assert_eq!(id, vec![42u8; 128], "rank {rank}");
        if rank > 0 {
            assert!(
                waited >= Duration::from_millis(100),
                "rank {rank} got the id before it was set"
            );
        }
    }
    let mut c = BlockingStoreClient::connect(&addr, &token, options()).unwrap();
    assert_eq!(c.get("ranks").unwrap(), b"4");
    assert!(c.try_get("nothing").unwrap().is_none());
    assert!(c.delete("ranks").unwrap());
    assert!(matches!(
        c.get_within("ranks", Duration::from_millis(100)),
        Err(StoreError::Timeout(_))
    ));

    // Inside async code the blocking client says to use the async one instead of stalling it.
    let e = runtime
        .block_on(async { BlockingStoreClient::connect(&addr, &token, options()) })
        .unwrap_err();
    assert!(e.to_string().contains("use StoreClient there"), "{e}");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
