//! The TCP ring communicator on loopback: ranks are threads of this test, meeting through a
//! rendezvous store served in-process, each with its own sockets (exactly as separate
//! processes would have).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use nabla_dist::{Communicator, HostBufMut, ProcessGroup, TcpCommunicator, TcpOptions};
use nabla_launch::store::{BlockingStoreClient, ClientOptions, ServerConfig, StoreServer, Token};

/// A store on 127.0.0.1 served by its own runtime (kept alive by the returned value).
struct Store {
    _runtime: tokio::runtime::Runtime,
    _server: StoreServer,
    addr: String,
    token: Token,
}

fn store() -> Store {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let token = Token::generate().unwrap();
    let server = runtime
        .block_on(StoreServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            token.clone(),
            ServerConfig::default(),
        ))
        .unwrap();
    let addr = server.local_addr().to_string();
    Store {
        _runtime: runtime,
        _server: server,
        addr,
        token,
    }
}

fn options(store: &Store, rank: usize, world: usize, timeout: Duration) -> TcpOptions {
    TcpOptions {
        rank,
        world_size: world,
        local_rank: rank,
        local_world_size: world,
        store_addr: store.addr.clone(),
        token: store.token.clone(),
        run_id: "t".into(),
        listen_ip: None,
        timeout,
        shared_memory: true,
    }
}

/// Runs `f` on `world` ranks, each with its own TCP communicator; results by rank. Ranks are
/// threads of one process, so their ring neighbours share a host and use shared memory unless
/// `NABLA_TEST_TCP_ONLY` is set ([`on_ranks_with`] chooses explicitly).
fn on_ranks<T: Send>(world: usize, f: impl Fn(TcpCommunicator) -> T + Sync) -> Vec<T> {
    on_ranks_with(world, std::env::var("NABLA_TEST_TCP_ONLY").is_err(), f)
}

fn on_ranks_with<T: Send>(world: usize, shared_memory: bool, f: impl Fn(TcpCommunicator) -> T + Sync) -> Vec<T> {
    let s = store();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let (f, s) = (&f, &s);
                let o = TcpOptions {
                    shared_memory,
                    ..options(s, r, world, Duration::from_secs(30))
                };
                scope.spawn(move || f(TcpCommunicator::connect(o).unwrap()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank panicked")).collect()
    })
}

/// Values of rank `r` that make sums depend on every rank and on the order of additions.
fn values(r: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + r * 13) % 101) as f32 * 0.01 + 1.0 / (r + 1) as f32)
        .collect()
}

#[test]
fn all_reduce_sums_every_type_and_size_over_tcp_and_over_shared_memory() {
    for (world, shared_memory) in [(2, false), (3, false), (2, true), (3, true), (4, true)] {
        let sizes = [0usize, 1, 5, 1 << 18, (1 << 20) + 3];
        let results = on_ranks_with(world, shared_memory, |c| {
            let want = if shared_memory { ("shm", "shm") } else { ("tcp", "tcp") };
            assert_eq!(c.transports(), want);
            let r = c.rank();
            let mut out = Vec::new();
            for &len in &sizes {
                let mut f = values(r, len);
                c.all_reduce_sum(HostBufMut::F32(&mut f)).unwrap();
                let mut d: Vec<f64> = values(r, len).iter().map(|&x| x as f64 * 1.5).collect();
                c.all_reduce_sum(HostBufMut::F64(&mut d)).unwrap();
                let mut i: Vec<i64> = (0..len as i64).map(|i| i * (r as i64 + 1)).collect();
                c.all_reduce_sum(HostBufMut::I64(&mut i)).unwrap();
                out.push((f, d, i));
            }
            out
        });
        for (k, &len) in sizes.iter().enumerate() {
            let (f0, d0, i0) = &results[0][k];
            for (r, res) in results.iter().enumerate() {
                let (f, d, i) = &res[k];
                let same = f.iter().zip(f0).all(|(a, b)| a.to_bits() == b.to_bits())
                    && d.iter().zip(d0).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "world {world} len {len}: rank {r} differs from rank 0 in its bits"
                );
                assert_eq!(i, i0);
            }
            let ranks_sum: i64 = (1..=world as i64).sum();
            assert_eq!(*i0, (0..len as i64).map(|i| i * ranks_sum).collect::<Vec<_>>());
            let inputs: Vec<Vec<f32>> = (0..world).map(|r| values(r, len)).collect();
            for (j, (&got, &gotd)) in f0.iter().zip(d0).enumerate() {
                let want: f64 = inputs.iter().map(|v| v[j] as f64).sum();
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * want.abs(),
                    "f32 [{j}]: {got} vs {want}"
                );
                assert!(
                    (gotd - 1.5 * want).abs() <= 1e-6 * want.abs(),
                    "f64 [{j}]: {gotd} vs {}",
                    1.5 * want
                );
            }
        }
    }
}

#[test]
fn broadcast_gather_barrier_and_duplicates_work_on_three_ranks() {
    let results = on_ranks(3, |c| {
        let r = c.rank();
        let mut got = Vec::new();
        for root in 0..3 {
            let mut b: Vec<u8> = vec![r as u8; 1_000_003];
            c.broadcast(HostBufMut::U8(&mut b), root).unwrap();
            got.push(b.iter().all(|&x| x == root as u8));
            let mut f = vec![r as f64; 17];
            c.broadcast(HostBufMut::F64(&mut f), root).unwrap();
            got.push(f == vec![root as f64; 17]);
        }
        let gathered = c.all_gather_bytes(&vec![b'a' + r as u8; r * 3]).unwrap();
        let dup = c.duplicate().unwrap();
        c.barrier().unwrap();
        let mut x = vec![1i64; 4];
        dup.all_reduce_sum(HostBufMut::I64(&mut x)).unwrap();
        let mut y = vec![2i64; 4];
        c.all_reduce_sum(HostBufMut::I64(&mut y)).unwrap();
        (got, gathered, x, y)
    });
    for (got, gathered, x, y) in results {
        assert!(got.iter().all(|&ok| ok), "a broadcast delivered other values: {got:?}");
        assert_eq!(gathered, vec![vec![], vec![b'b'; 3], vec![b'c'; 6]]);
        assert_eq!(x, vec![3; 4]);
        assert_eq!(y, vec![6; 4]);
    }
}

#[test]
fn ranks_that_make_different_calls_get_an_error_naming_both() {
    let errors = on_ranks(2, |c| {
        let mut b = vec![0f32; 10 + 10 * c.rank()];
        c.all_reduce_sum(HostBufMut::F32(&mut b)).unwrap_err()
    });
    for e in errors {
        assert!(e.contains("different collectives"), "{e}");
        assert!(
            e.contains("all_reduce_sum call #1 of 10 f32") && e.contains("of 20 f32"),
            "{e}"
        );
    }
}

#[test]
fn a_peer_that_dies_mid_collective_is_an_error_at_once_not_a_hang() {
    let started = Instant::now();
    let results = on_ranks(3, |c| {
        if c.rank() == 1 {
            // Dropping the communicator closes its sockets, as the death of the process would.
            drop(c);
            return None;
        }
        let mut b = vec![1f32; 4 << 20];
        Some(c.all_reduce_sum(HostBufMut::F32(&mut b)).unwrap_err())
    });
    for e in results.into_iter().flatten() {
        assert!(e.contains("rank 1"), "the error does not name the dead rank: {e}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_stalled_peer_fails_the_call_after_the_timeout() {
    let s = store();
    let world = 2;
    let timeout = Duration::from_millis(1500);
    std::thread::scope(|scope| {
        let stalled = scope.spawn(|| {
            let c = TcpCommunicator::connect(options(&s, 1, world, timeout)).unwrap();
            std::thread::sleep(Duration::from_secs(4));
            drop(c);
        });
        let c = TcpCommunicator::connect(options(&s, 0, world, timeout)).unwrap();
        let t = Instant::now();
        let mut b = vec![1f32; 16];
        let e = c.all_reduce_sum(HostBufMut::F32(&mut b)).unwrap_err();
        let took = t.elapsed();
        assert!(
            e.contains("rank 1 sent no data") && e.contains("all_reduce_sum call #1"),
            "{e}"
        );
        assert!(took >= timeout && took < Duration::from_secs(4), "took {took:?}");
        let again = c.all_reduce_sum(HostBufMut::F32(&mut b)).unwrap_err();
        assert!(again.contains("out of step"), "{again}");
        stalled.join().unwrap();
    });
}

#[test]
fn wrong_tokens_reach_neither_the_store_nor_the_ring() {
    let s = store();
    let wrong = Token::generate().unwrap();
    let quick = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    assert!(BlockingStoreClient::connect(&s.addr, &wrong, quick.clone()).is_err());
    std::thread::scope(|scope| {
        let rank0 = scope.spawn(|| TcpCommunicator::connect(options(&s, 0, 2, Duration::from_secs(30))).unwrap());
        // An intruder that knows rank 0's ring address (read here with the real token) but not
        // the token itself tries to join the ring as rank 1.
        let mut reader = BlockingStoreClient::connect(&s.addr, &s.token, quick).unwrap();
        let addr = String::from_utf8(reader.get("nabla-dist/ring/t/world/addr/0").unwrap()).unwrap();
        let mut intruder = TcpStream::connect(&addr).unwrap();
        intruder.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let refused = nabla_launch::peer::connect(&mut intruder, &wrong, &[1u8; nabla_launch::peer::HELLO_LEN]);
        assert!(refused.is_err(), "a peer with another token joined the ring");
        // The right rank 1 still gets in, and the ring works.
        let rank1 = scope.spawn(|| TcpCommunicator::connect(options(&s, 1, 2, Duration::from_secs(30))).unwrap());
        let (c0, c1) = (rank0.join().unwrap(), rank1.join().unwrap());
        let sums = std::thread::scope(|inner| {
            let a = inner.spawn(|| {
                let mut b = vec![1i64; 3];
                c0.all_reduce_sum(HostBufMut::I64(&mut b)).unwrap();
                b
            });
            let mut b = vec![2i64; 3];
            c1.all_reduce_sum(HostBufMut::I64(&mut b)).unwrap();
            (a.join().unwrap(), b)
        });
        assert_eq!(sums, (vec![3; 3], vec![3; 3]));
    });
}

#[test]
fn a_process_group_over_tcp_numbers_its_calls_and_moves_tensors() {
    // The typed helpers of ProcessGroup on the TCP transport (the ones DataParallel uses).
    let results = on_ranks(2, |c| {
        let g = ProcessGroup::new(Box::new(c), Duration::from_secs(60), "world");
        let t = nabla_core::Tensor::from_vec(vec![g.rank() as f64 + 1.0; 5], &[5]);
        let from_1 = g.broadcast_tensor(&t, 1).unwrap();
        let mut sum = t.to_vec::<f64>();
        g.all_reduce_sum(HostBufMut::F64(&mut sum)).unwrap();
        (g.backend(), g.calls(), from_1.to_vec::<f64>(), sum)
    });
    for (backend, calls, from_1, sum) in results {
        assert_eq!(backend, "tcp");
        assert!(calls >= 2, "{calls} calls counted");
        assert_eq!(from_1, vec![2.0; 5]);
        assert_eq!(sum, vec![3.0; 5]);
    }
}

#[test]
fn a_ring_mixing_shared_memory_and_tcp_links_sums_like_the_others() {
    // Rank 1 declines shared memory (as a rank on another host would look): its neighbours
    // each have one shared-memory and one TCP direction, the case of a node's boundary ranks.
    let s = store();
    let world = 3;
    let results: Vec<((&str, &str), Vec<f64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let s = &s;
                scope.spawn(move || {
                    let o = TcpOptions {
                        shared_memory: r != 1,
                        ..options(s, r, world, Duration::from_secs(30))
                    };
                    let c = TcpCommunicator::connect(o).unwrap();
                    let mut b: Vec<f64> = (0..300_001).map(|i| (i % 97) as f64 * (r + 1) as f64).collect();
                    for _ in 0..3 {
                        c.all_reduce_sum(HostBufMut::F64(&mut b)).unwrap();
                    }
                    (c.transports(), b)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[0].0, ("tcp", "shm"));
    assert_eq!(results[1].0, ("tcp", "tcp"));
    assert_eq!(results[2].0, ("shm", "tcp"));
    // Three sums of (1 + 2 + 3) times the start: 6, then 18, then 54 times.
    let want: Vec<f64> = (0..300_001).map(|i| (i % 97) as f64 * 6.0 * 9.0).collect();
    for (_, b) in &results {
        assert_eq!(b, &want);
    }
}
