//! The data-parallel benchmark: run it under `mpirun -np 2` with a binary built with
//! `--features mpi` (a benchmark, not a test; numbers go to docs/benchmarks.md).
//!
//! 1. All-reduce bandwidth through our layer (`ProcessGroup`, with its sequence numbers and
//!    watchdog) against raw `MPI_Allreduce` of the same bytes, in the same run, at 1, 16 and
//!    64 MiB of f32.
//! 2. The data-parallel step time (forward, backward, gradient sync) of an MLP with 5.2M
//!    parameters: communication off, on without overlap, and on with overlap; and how much of
//!    the communication time the overlap hides.
//!
//! `cargo build --release --features mpi --example bench_dist &&
//!  mpirun -np 2 target/release/examples/bench_dist [--json]`

#[path = "timing/mod.rs"]
mod timing;

use nabla as nb;
use nb::dist::{DataParallel, DataParallelConfig, HostBuf, HostBufMut, ProcessGroup};
use nb::nn::{Activation, Mlp};
use nb::{DType, Rng, Tensor};

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let group = nb::dist::init().expect("nb::dist::init");
    if group.world_size() < 2 {
        eprintln!("bench_dist: run it under mpirun -np 2 (or more), built with --features mpi");
        std::process::exit(2);
    }
    let main_rank = group.is_main();
    let mut rows = Vec::new();
    for mib in [1usize, 16, 64] {
        let (in_place, ours, raw) = bandwidth(&group, mib);
        rows.push(serde_json::json!({"case": format!("all_reduce_{mib}MiB"),
            "ours_ms": ours, "raw_mpi_ms": raw, "ours_in_place_ms": in_place,
            "ours_GBps": mib as f64 / 1024.0 / (ours / 1e3),
            "ours_throughput_over_raw": raw / ours}));
    }
    let step = step_times(&group);
    rows.push(step);
    if main_rank {
        println!(
            "ranks: {}, compute threads per rank: {}, transport: {}",
            group.world_size(),
            nb::dist::threads::current(),
            group.backend()
        );
        if json {
            rows.iter().for_each(|r| println!("{r}"));
        } else {
            print_table(&rows);
        }
    }
}

/// Median milliseconds of an all-reduce of `mib` MiB of f32: ours in place, ours from a send
/// buffer into a receive buffer, and raw MPI_Allreduce of the same two buffers.
fn bandwidth(group: &ProcessGroup, mib: usize) -> (f64, f64, f64) {
    let n = mib * (1 << 20) / 4;
    let mut ours_buf = vec![1.0f32; n];
    let send = vec![1.0f32; n];
    let mut recv = vec![0.0f32; n];
    let runs = if mib >= 64 { 7 } else { 15 };
    let in_place_ms = timing::median_ms(2, runs, || {
        group.barrier().unwrap();
        group.all_reduce_sum(HostBufMut::F32(&mut ours_buf)).unwrap();
    });
    // The two out-of-place forms alternate, so that drift in the machine's load hits both.
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for i in 0..runs + 2 {
        group.barrier().unwrap();
        let t = std::time::Instant::now();
        group
            .all_reduce_sum_into(HostBuf::F32(&send), HostBufMut::F32(&mut recv))
            .unwrap();
        let a = t.elapsed().as_secs_f64() * 1e3;
        group.barrier().unwrap();
        let t = std::time::Instant::now();
        raw_all_reduce(&send, &mut recv);
        let b = t.elapsed().as_secs_f64() * 1e3;
        if i >= 2 {
            ours.push(a);
            raw.push(b);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        v[v.len() / 2]
    };
    (in_place_ms, median(&mut ours), median(&mut raw))
}

#[cfg(feature = "mpi")]
fn raw_all_reduce(send: &[f32], recv: &mut [f32]) {
    use nb::dist::mpi::ffi;
    // SAFETY: both buffers hold send.len() f32s and live for the blocking call.
    unsafe {
        ffi::MPI_Allreduce(
            send.as_ptr() as *const std::ffi::c_void,
            recv.as_mut_ptr() as *mut std::ffi::c_void,
            send.len() as i32,
            ffi::RSMPI_FLOAT,
            ffi::RSMPI_SUM,
            ffi::RSMPI_COMM_WORLD,
        );
    }
}

#[cfg(not(feature = "mpi"))]
fn raw_all_reduce(_send: &[f32], _recv: &mut [f32]) {
    unreachable!("init gives a multi-rank group only with the mpi feature")
}

/// Bucket size of the step benchmark.
const BUCKET_MIB: usize = 4;

/// Step times of a 5.2M-parameter MLP: no sync, sync after the sweep, sync overlapped.
fn step_times(group: &ProcessGroup) -> serde_json::Value {
    let widths = [1024, 2048, 1536, 10];
    let model = Mlp::new(&widths, &[Activation::Relu], &mut Rng::new(0), DType::F32);
    let params: usize = nb::Tree::leaves(&model).iter().map(Tensor::numel).sum();
    let mut rng = Rng::new(1 + group.rank() as u64);
    let x = rng.normal(&[64, widths[0]], 0.0, 1.0, DType::F32);
    let y = rng.uniform(&[64], 0.0, 10.0, DType::F32).cast(DType::I64);
    let runs = 15;
    let local = timing::median_ms(2, runs, || {
        group.barrier().unwrap();
        let m = nb::Tree::map_leaves(&model, |t| t.requires_grad());
        nb::cross_entropy(&m.forward(&x), &y).backward();
    });
    let mut stats = Vec::new();
    let mut synced = |overlap: bool| {
        // 4 MiB buckets: with the default 25 MiB, this model's two big matrices would share one
        // bucket that can only start when the sweep is over.
        let config = DataParallelConfig {
            overlap,
            bucket_bytes: BUCKET_MIB << 20,
            ..Default::default()
        };
        let (dp, m) = DataParallel::with_config(group, &model, config).unwrap();
        let ms = timing::median_ms(2, runs, || {
            group.barrier().unwrap();
            let t = dp.track(&m);
            nb::cross_entropy(&t.forward(&x), &y).backward();
        });
        stats.push(dp.last_sync());
        ms
    };
    let after = synced(false);
    let overlapped = synced(true);
    let comm = after - local;
    let hidden = if comm > 0.0 { (after - overlapped) / comm } else { 0.0 };
    serde_json::json!({
        "case": "dp_step_mlp",
        "params": params,
        "batch_per_rank": 64,
        "no_comm_ms": local,
        "sync_after_sweep_ms": after,
        "sync_overlapped_ms": overlapped,
        "comm_ms_exposed_without_overlap": comm,
        "fraction_of_comm_hidden_by_overlap": hidden,
        "bucket_mib": BUCKET_MIB,
        "buckets": stats[1].buckets,
        "buckets_started_during_sweep": stats[1].started_during_sweep,
        "comm_thread_ms_overlapped": stats[1].comm_seconds * 1e3,
        "wait_after_sweep_ms_overlapped": stats[1].wait_seconds * 1e3,
        "wait_after_sweep_ms_no_overlap": stats[0].wait_seconds * 1e3,
    })
}

/// The human-readable form of the rows.
fn print_table(rows: &[serde_json::Value]) {
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "\n| all-reduce (f32) | ours in place ms | ours send->recv ms | raw MPI send->recv ms | ours / raw throughput | ours GB/s |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows
        .iter()
        .filter(|r| r["case"].as_str().unwrap_or("").starts_with("all_reduce"))
    {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
            r["case"].as_str().unwrap_or(""),
            f(r, "ours_in_place_ms"),
            f(r, "ours_ms"),
            f(r, "raw_mpi_ms"),
            f(r, "ours_throughput_over_raw"),
            f(r, "ours_GBps")
        );
    }
    if let Some(s) = rows.iter().find(|r| r["case"] == "dp_step_mlp") {
        println!(
            "\ndata-parallel step, MLP of {} parameters, batch {} per rank, {} MiB buckets ({} buckets):",
            s["params"], s["batch_per_rank"], s["bucket_mib"], s["buckets"]
        );
        println!("| communication | step ms |");
        println!("| --- | --- |");
        println!("| off (local backward only) | {:.2} |", f(s, "no_comm_ms"));
        println!(
            "| on, all buckets after the sweep | {:.2} |",
            f(s, "sync_after_sweep_ms")
        );
        println!(
            "| on, buckets overlapped with the sweep | {:.2} |",
            f(s, "sync_overlapped_ms")
        );
        println!(
            "communication exposed without overlap: {:.2} ms; share of it the overlap hides: {:.0} %",
            f(s, "comm_ms_exposed_without_overlap"),
            100.0 * f(s, "fraction_of_comm_hidden_by_overlap")
        );
    }
}
