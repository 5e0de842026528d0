//! Multi-rank checks of `nb::dist` for `ci/test_dist` and `ci/test_launch`, run under
//! `mpirun -np N` (a binary built with `--features mpi`) or `nabla-launch --nproc-per-node N`. Each scenario asserts on every rank and exits non-zero on
//! failure; the fault scenarios are expected to take the job down, which the script checks.
//!
//! Scenarios: `collectives`, `steps`, `panic`, `mismatch`, `stall`, `exit`, `sigkill`.

use std::time::Duration;

use nabla as nb;
use nb::dist::{DataParallel, DataParallelConfig, HostBufMut, ProcessGroup, Shard};
use nb::nn::{Activation, Mlp, Optimizer, Sgd};
use nb::{DType, Rng, Tensor, Tree};

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let group = nb::dist::init().unwrap_or_else(|e| {
        eprintln!("dist_check: {e}");
        std::process::exit(2)
    });
    match scenario.as_str() {
        "collectives" => collectives(&group),
        "steps" => steps(&group),
        "panic" => panic_mid_step(&group),
        "mismatch" => mismatch(&group),
        "stall" => stall(&group),
        "exit" => leave_mid_step(&group, Leave::Exit3),
        "sigkill" => leave_mid_step(&group, Leave::SigKill),
        other => {
            eprintln!(
                "dist_check: unknown scenario {other:?}; one of collectives, steps, panic, mismatch, stall, exit, sigkill"
            );
            std::process::exit(2)
        }
    }
    println!(
        "dist_check {scenario}: rank {} of {}: ok",
        group.rank(),
        group.world_size()
    );
}

fn collectives(g: &ProcessGroup) {
    let (r, n) = (g.rank(), g.world_size());
    assert!(n >= 2, "run under mpirun -np 2 or more");
    let mut v: Vec<f32> = (0..1000).map(|i| (i * (r + 1)) as f32).collect();
    g.all_reduce_sum(HostBufMut::F32(&mut v)).unwrap();
    let tri = (n * (n + 1) / 2) as f32;
    assert!(
        v.iter().enumerate().all(|(i, &x)| x == i as f32 * tri),
        "in-place f32 sum"
    );
    let mut d = vec![r as f64 + 0.5; 7];
    g.all_reduce_sum(HostBufMut::F64(&mut d)).unwrap();
    assert_eq!(d[6], (0..n).map(|k| k as f64 + 0.5).sum::<f64>());
    let mut b = vec![r as i64; 3];
    g.broadcast(HostBufMut::I64(&mut b), n - 1).unwrap();
    assert_eq!(b, vec![(n - 1) as i64; 3]);
    let all = g.all_gather_bytes(format!("rank{r}").repeat(r + 1).as_bytes()).unwrap();
    for (k, bytes) in all.iter().enumerate() {
        assert_eq!(bytes, format!("rank{k}").repeat(k + 1).as_bytes());
    }
    g.barrier().unwrap();
    let dup = g.duplicate("dup").unwrap();
    assert_eq!((dup.rank(), dup.world_size()), (r, n));
    assert!(g.local_rank() < g.local_world_size());
    let e = g.broadcast(HostBufMut::I64(&mut b), n).unwrap_err().to_string();
    assert!(e.contains("root"), "{e}");
}

fn model(seed: u64) -> Mlp {
    Mlp::new(&[8, 16, 4], &[Activation::Relu], &mut Rng::new(seed), DType::F32)
}

/// Parameters bit-identical on every rank after every step, with both APIs, with uneven
/// shards; `no_sync` accumulation equal to one big batch.
fn steps(g: &ProcessGroup) {
    let (r, n) = (g.rank(), g.world_size());
    let mut rng = Rng::new(7);
    let global = 3 * n + 1; // uneven over any n >= 2
    let opt = Optimizer::Sgd(Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    });
    for backward_api in [false, true] {
        // Ranks start from different parameters: DataParallel::new broadcasts rank 0's.
        let (dp, mut m) = DataParallel::with_config(
            g,
            &model(r as u64),
            DataParallelConfig {
                first_bucket_bytes: 256,
                bucket_bytes: 512,
                overlap: true,
            },
        )
        .unwrap();
        let mut state = opt.init(&m);
        for step in 0..30 {
            let x = rng.normal(&[global, 8], 0.0, 1.0, DType::F32);
            let y = rng.uniform(&[global], 0.0, 4.0, DType::F32).cast(DType::I64);
            let s = Shard::of(global, r, n);
            let rows = |t: &Tensor| t.slice_axis(0, Some(s.start as isize), Some((s.start + s.len) as isize), 1);
            let grads = if backward_api {
                dp.set_shard_sizes(s.len, s.global);
                let tracked = dp.track(&m);
                nb::cross_entropy(&tracked.forward(&rows(&x)), &rows(&y)).backward();
                assert!(dp.last_sync().buckets > 1, "several buckets: {:?}", dp.last_sync());
                dp.grads(&tracked)
            } else {
                let local = nb::grad(|m: &Mlp| nb::cross_entropy(&m.forward(&rows(&x)), &rows(&y)))(&m);
                nb::dist::all_reduce_weighted(g, &local, s.weight()).unwrap()
            };
            let (m2, s2) = opt.update(&m, &grads, &state, 0.1);
            m = m2;
            state = s2;
            let digest = nb::nn::digest::digest_hex(&m.leaves());
            let all = g.all_gather_bytes(digest.as_bytes()).unwrap();
            assert!(
                all.iter().all(|d| d == digest.as_bytes()),
                "step {step} (backward api: {backward_api}): parameters differ across ranks"
            );
        }
    }
    // no_sync over k micro-batches equals one global batch k times as big.
    let k = 3;
    let (dp, m) = DataParallel::new(g, &model(0)).unwrap();
    let x = rng.normal(&[k * n * 2, 8], 0.0, 1.0, DType::F32);
    let y = rng.uniform(&[k * n * 2], 0.0, 4.0, DType::F32).cast(DType::I64);
    let tracked = dp.track(&m);
    for micro in 0..k {
        let start = (micro * n + r) * 2;
        let xs = x.slice_axis(0, Some(start as isize), Some(start as isize + 2), 1);
        let ys = y.slice_axis(0, Some(start as isize), Some(start as isize + 2), 1);
        let loss = nb::cross_entropy(&tracked.forward(&xs), &ys) * (1.0 / k as f64);
        if micro + 1 < k {
            let _no_sync = dp.no_sync();
            loss.backward();
        } else {
            loss.backward();
        }
    }
    let accumulated = dp.grads(&tracked);
    let big = nb::grad(|m: &Mlp| nb::cross_entropy(&m.forward(&x), &y))(&m);
    for (a, b) in accumulated.leaves().iter().zip(big.leaves()) {
        let d = a
            .to_vec::<f32>()
            .iter()
            .zip(b.to_vec::<f32>())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "no_sync accumulation differs from one big batch by {d}");
    }
}

/// Rank 1 panics in its third step; the others are then waiting in a collective.
fn panic_mid_step(g: &ProcessGroup) {
    let (dp, m) = DataParallel::new(g, &model(0)).unwrap();
    let x = Rng::new(1).normal(&[4, 8], 0.0, 1.0, DType::F32);
    for step in 0..1000 {
        if step == 2 && g.rank() == 1 {
            panic!("deliberate failure in step {step}");
        }
        let tracked = dp.track(&m);
        tracked.forward(&x).sum_all().backward();
    }
}

/// How rank 1 leaves in [`leave_mid_step`].
#[derive(Clone, Copy, PartialEq)]
enum Leave {
    /// `exit(3)`.
    Exit3,
    /// Killed by SIGKILL (sent by `kill`, as an out-of-memory killer would).
    SigKill,
}

/// Rank 1 leaves in its third step; the others are then in, or about to enter, a collective.
fn leave_mid_step(g: &ProcessGroup, how: Leave) {
    let (dp, m) = DataParallel::new(g, &model(0)).unwrap();
    let x = Rng::new(1).normal(&[4, 8], 0.0, 1.0, DType::F32);
    for step in 0..100_000 {
        if step == 2 && g.rank() == 1 {
            if how == Leave::Exit3 {
                eprintln!("dist_check: rank 1 exits with status 3 in step {step}");
                std::process::exit(3);
            }
            eprintln!("dist_check: rank 1 sends itself SIGKILL in step {step}");
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(60));
        }
        let tracked = dp.track(&m);
        tracked.forward(&x).sum_all().backward();
    }
}

/// Rank 1 builds a model with a different hidden width.
fn mismatch(g: &ProcessGroup) {
    let m = if g.rank() == 1 {
        Mlp::new(&[8, 15, 4], &[Activation::Relu], &mut Rng::new(0), DType::F32)
    } else {
        model(0)
    };
    match DataParallel::new(g, &m) {
        Ok(_) => panic!("the mismatch was not noticed"),
        Err(e) => {
            eprintln!("rank {}: {e}", g.rank());
            std::process::exit(3);
        }
    }
}

/// Rank 1 stops calling collectives; rank 0's next one must trip the watchdog.
fn stall(g: &ProcessGroup) {
    let g = g.clone().with_timeout(Duration::from_secs(2));
    g.barrier().unwrap();
    if g.rank() == 1 {
        std::thread::sleep(Duration::from_secs(60));
    }
    let mut v = vec![1.0f32; 4096];
    g.all_reduce_sum(HostBufMut::F32(&mut v)).unwrap();
}
