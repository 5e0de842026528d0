//! The TCP communicator's all-reduce bandwidth against MPI's, on the same machine, in the same
//! run (a benchmark, not a test; numbers go to docs/benchmarks.md).
//!
//! Runs under `mpirun -np N` with a binary built with `--features mpi`. Rank 0 serves a
//! rendezvous store and sends its address and token to the others over MPI; every rank then
//! also joins two rings (one over TCP only, one where neighbours on this host use shared
//! memory), and the three transports take turns on the same buffers (1, 16 and 64 MiB of
//! f32), so that drift in the machine's load hits all of them.
//!
//! `cargo build --release --features mpi --example bench_tcp &&
//!  mpirun -np 2 target/release/examples/bench_tcp` (Open MPI uses shared memory between
//! ranks on one machine; add `--mca btl self,tcp` to make MPI use TCP too).

/// The median of some timings.
#[cfg(feature = "mpi")]
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

#[cfg(feature = "mpi")]
fn main() {
    use nabla as nb;
    use nabla_launch::store::{ServerConfig, StoreServer, Token};
    use nb::dist::{HostBufMut, ProcessGroup, TcpCommunicator, TcpOptions};
    use std::time::Duration;

    let mpi = nb::dist::init().expect("nb::dist::init");
    let (rank, world) = (mpi.rank(), mpi.world_size());
    if world < 2 {
        eprintln!("bench_tcp: run it under mpirun -np 2 (or more)");
        std::process::exit(2);
    }
    // Rank 0 serves the store on loopback; its address and the token travel over MPI.
    let mut server = None;
    let mut hello = vec![0u8; 256];
    if rank == 0 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let token = Token::generate().expect("a token");
        let store = runtime
            .block_on(StoreServer::bind(
                "127.0.0.1:0".parse().expect("an address"),
                token.clone(),
                ServerConfig::default(),
            ))
            .expect("the store");
        let text = format!("{} {}", store.local_addr(), token.expose());
        hello[..text.len()].copy_from_slice(text.as_bytes());
        server = Some((runtime, store));
    }
    mpi.broadcast(HostBufMut::U8(&mut hello), 0).expect("broadcast");
    let text = String::from_utf8_lossy(&hello).trim_end_matches('\0').to_string();
    let (addr, token) = text.split_once(' ').expect("address and token");
    let ring = |shared_memory: bool, name: &str| {
        let c = TcpCommunicator::connect(TcpOptions {
            rank,
            world_size: world,
            local_rank: mpi.local_rank(),
            local_world_size: mpi.local_world_size(),
            store_addr: addr.to_string(),
            token: Token::from_text(token).expect("the token"),
            run_id: name.into(),
            listen_ip: None,
            timeout: Duration::from_secs(120),
            shared_memory,
        })
        .expect("the TCP ring");
        ProcessGroup::new(Box::new(c), Duration::from_secs(300), name)
    };
    let tcp = ring(false, "tcp");
    let shm = ring(true, "shm");
    let mut rows = Vec::new();
    for mib in [1usize, 16, 64] {
        let n = mib * (1 << 20) / 4;
        let mut buf = vec![1.0f32; n];
        let runs = if mib >= 64 { 9 } else { 21 };
        let (mut t_tcp, mut t_shm, mut t_mpi) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs + 2 {
            for (group, times) in [(&tcp, &mut t_tcp), (&shm, &mut t_shm), (&mpi, &mut t_mpi)] {
                mpi.barrier().expect("barrier");
                let t = std::time::Instant::now();
                group.all_reduce_sum(HostBufMut::F32(&mut buf)).expect("all-reduce");
                if i >= 2 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        rows.push((mib, median(&mut t_tcp), median(&mut t_shm), median(&mut t_mpi)));
    }
    if rank == 0 {
        println!("ranks: {world}; the three transports in place on the same f32 buffers, medians, turns alternating");
        println!(
            "| all-reduce | ring over TCP ms | ring, shared memory ms | MPI ms | TCP / MPI | shm / MPI | ring GB/s (shm) |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (mib, t, s, m) in rows {
            let gbps = mib as f64 / 1024.0 / (s / 1e3);
            println!(
                "| {mib} MiB | {t:.3} | {s:.3} | {m:.3} | {:.2} | {:.2} | {gbps:.2} |",
                m / t,
                m / s
            );
        }
    }
    mpi.barrier().expect("barrier");
    drop(tcp);
    drop(shm);
    drop(server);
}

#[cfg(not(feature = "mpi"))]
fn main() {
    eprintln!(
        "bench_tcp compares the TCP communicator with MPI: build it with --features mpi and run it under mpirun -np 2"
    );
    std::process::exit(2);
}
