//! The CUDA backend on the emulated GPU: every fixture op, its VJP and its JVP computed on
//! `Device::Cuda(0)` must match the CPU backend. The kernels run through the C++ emulator
//! (`kernels/tests/emulate`), so this checks, without a GPU, every choice the backend makes:
//! kernel, variant, arguments, layouts, launch sizes, split reductions and the cuBLAS call.
//!
//! `ci/gpu-check` runs this same test binary on a real GPU with `NABLA_GPU_CHECK=1`.

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[path = "emulated/device.rs"]
mod device;

use std::sync::Arc;

use nabla_core as nb;
use nabla_kernels::AttentionTuning;
use nb::{DType, Device, Tensor};

const GPU: Device = Device::Cuda(0);

fn on_gpu(xs: &[Tensor]) -> Vec<Tensor> {
    xs.iter().map(|t| t.to_device(GPU).unwrap()).collect()
}

/// `got` (from the device) against `want` (CPU): same shape and dtype, values within `rtol`.
fn same(name: &str, what: &str, got: &[Tensor], want: &[Tensor]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{name}: {what}: {} results, want {}", got.len(), want.len()));
    }
    for (g, w) in got.iter().zip(want) {
        if g.device() != GPU {
            return Err(format!("{name}: {what}: the result is on {}, not {GPU}", g.device()));
        }
        let g = g.to_device(Device::Cpu).unwrap();
        if g.dtype() != w.dtype() || g.shape() != w.shape() {
            return Err(format!(
                "{name}: {what}: got {:?} {}, want {:?} {}",
                g.shape(),
                g.dtype(),
                w.shape(),
                w.dtype()
            ));
        }
        let (gv, wv) = (g.to_vec::<f64>(), w.to_vec::<f64>());
        for (i, (a, b)) in gv.iter().zip(&wv).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-12 + 1e-10 * b.abs();
            if !ok {
                return Err(format!("{name}: {what}: element {i}: got {a}, want {b}"));
            }
        }
    }
    Ok(())
}

fn message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast::<String>()
        .map(|s| *s)
        .or_else(|e| e.downcast::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn every_fixture_op_and_its_derivatives_match_the_cpu_on_the_emulated_gpu() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let mut failures: Vec<String> = Vec::new();
    let mut checked = 0;
    for c in common::load_cases() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), String> {
            let want = common::apply(&c.op, &c.params, &c.inputs);
            let got = common::apply(&c.op, &c.params, &on_gpu(&c.inputs));
            same(&c.name, "output", &got, &want)?;
            let fidx = common::float_inputs(&c.inputs);
            if fidx.is_empty() {
                return Ok(());
            }
            let gpu_inputs = on_gpu(&c.inputs);
            let f_cpu = common::of_floats(&c.op, &c.params, &c.inputs);
            let f_gpu = common::of_floats(&c.op, &c.params, &gpu_inputs);
            let p_cpu: Vec<Tensor> = fidx.iter().map(|&i| c.inputs[i].clone()).collect();
            let p_gpu = on_gpu(&p_cpu);
            if let Some(v) = c.raw.get("vjp").filter(|v| !v.is_null()) {
                let cts: Vec<Tensor> = match v.get("cotangents") {
                    Some(list) => list.as_array().unwrap().iter().map(common::tensor_from).collect(),
                    None => vec![common::tensor_from(&v["cotangent"])],
                };
                let want = nb::vjp_many(&f_cpu, &p_cpu).1.call(&cts);
                let got = nb::vjp_many(&f_gpu, &p_gpu).1.call(&on_gpu(&cts));
                same(&c.name, "vjp", &got, &want)?;
            }
            if let Some(j) = c.raw.get("jvp").filter(|v| !v.is_null()) {
                let ts: Vec<Tensor> = fidx.iter().map(|&i| common::tensor_from(&j["tangents"][i])).collect();
                let (_, want) = nb::jvp_many(&f_cpu, &p_cpu, &ts);
                let (_, got) = nb::jvp_many(&f_gpu, &p_gpu, &on_gpu(&ts));
                same(&c.name, "jvp", &got, &want)?;
            }
            Ok(())
        }));
        match result {
            Ok(Ok(())) => checked += 1,
            Ok(Err(e)) => failures.push(e),
            Err(p) => failures.push(format!("{}: panicked: {}", c.name, message(p))),
        }
    }
    println!("emulated GPU: {checked} cases match the CPU");
    for f in &failures {
        println!("  FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} cases differ on the emulated GPU (listed above)",
        failures.len()
    );
    assert!(checked > 300, "only {checked} cases");
}

/// `f` on the CPU and on the emulated GPU, compared.
fn check_both(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Vec<Tensor>) {
    let want = f(inputs);
    let got = f(&on_gpu(inputs));
    same(name, "result", &got, &want).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn split_reductions_views_matmul_layouts_and_halves_match_the_cpu() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let mut rng = nb::Rng::new(3);
    // 20000 elements into one output: a partial pass and a finishing pass (two "SMs").
    let big = rng.normal(&[20000], 0.0, 1.0, DType::F64);
    check_both("split sum", &[big], |x| {
        vec![x[0].sum_all(), x[0].max_all(), x[0].argmax(Some(0), false)]
    });
    // The emulator logs its launches (the real GPU is checked on values alone).
    if !device::real_gpu() {
        let launched = device::emulated_backend().api().launches.lock().unwrap().clone();
        assert!(
            launched.iter().any(|k| k == "nb_reduce_sum_f64_partial"),
            "no split reduction ran"
        );
        assert!(launched.iter().any(|k| k == "nb_reduce_sum_f64_finish"));
    }
    let wide = rng.normal(&[3, 9000], 0.0, 1.0, DType::F64);
    check_both("split row sums", &[wide], |x| {
        vec![x[0].sum(1, true), x[0].min(1, false)]
    });
    // Matmul: plain, a transposed operand (cuBLAS op T), batched, a broadcast batch, a row
    // slice (leading dimension larger than the width), and a view that needs a copy.
    let a = rng.normal(&[4, 6], 0.0, 1.0, DType::F64);
    let b = rng.normal(&[6, 5], 0.0, 1.0, DType::F64);
    let bt = rng.normal(&[5, 6], 0.0, 1.0, DType::F64);
    let ab = rng.normal(&[3, 4, 6], 0.0, 1.0, DType::F64);
    check_both("matmul", &[a.clone(), b.clone(), bt, ab], |x| {
        vec![
            x[0].matmul(&x[1]),
            x[0].matmul(&x[2].transpose()),
            x[2].transpose().transpose().matmul(&x[0].transpose()),
            x[3].matmul(&x[1]),
            x[0].slice_axis(1, Some(1), Some(5), 1)
                .matmul(&x[1].slice_axis(0, Some(0), Some(4), 1)),
            x[0].slice_axis(1, Some(0), None, 2)
                .matmul(&x[1].slice_axis(0, Some(0), None, 2)),
        ]
    });
    // bf16 and f16: kernels compute in float, cuBLAS accumulates in f32; compared to the CPU
    // (which also computes in f32 and rounds once) they agree within a unit of the last place
    // at most, so compare after rounding both to f32 within bf16's precision.
    for half in [DType::BF16, DType::F16] {
        let x = rng.normal(&[8, 16], 0.0, 1.0, DType::F32).cast(half);
        let w = rng.normal(&[16, 4], 0.0, 0.3, DType::F32).cast(half);
        let f = |t: &[Tensor]| vec![(t[0].matmul(&t[1]).tanh() * 2.0).sum(0, false), t[0].exp().mean_all()];
        let want = f(&[x.clone(), w.clone()]);
        let got = f(&on_gpu(&[x, w]));
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.dtype(), half);
            let (g, w) = (g.to_device(Device::Cpu).unwrap().to_vec::<f64>(), w.to_vec::<f64>());
            for (a, b) in g.iter().zip(&w) {
                assert!(
                    (a - b).abs() <= 2.0 * 2f64.powi(-8) * b.abs().max(1.0),
                    "{half}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn a_training_step_on_the_emulated_gpu_gives_the_cpu_gradients() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let mut rng = nb::Rng::new(5);
    let params = vec![
        rng.normal(&[10, 16], 0.0, 0.3, DType::F64),
        Tensor::zeros(&[16], DType::F64),
        rng.normal(&[16, 3], 0.0, 0.3, DType::F64),
    ];
    let x = rng.normal(&[12, 10], 0.0, 1.0, DType::F64);
    let labels = Tensor::from_vec((0..12).map(|i| i % 3).collect::<Vec<i64>>(), &[12]);
    let step = |p: &Vec<Tensor>, x: &Tensor, y: &Tensor| {
        nb::value_and_grad(|p: &Vec<Tensor>| {
            let h = (x.matmul(&p[0]) + &p[1]).relu();
            nb::cross_entropy(&h.matmul(&p[2]), y)
        })(p)
    };
    let (loss_cpu, g_cpu) = step(&params, &x, &labels);
    let gp = on_gpu(&params);
    let (loss_gpu, g_gpu) = step(&gp, &x.to_device(GPU).unwrap(), &labels.to_device(GPU).unwrap());
    same("mlp loss", "loss", &[loss_gpu], &[loss_cpu]).unwrap();
    same("mlp grads", "grads", &g_gpu, &g_cpu).unwrap();
    // The same step recorded once with jit and replayed on the device for a new batch.
    let jitted = nb::Jit::new(|(p, x, y): &(Vec<Tensor>, Tensor, Tensor)| step(p, x, y));
    let x2 = rng.normal(&[12, 10], 0.0, 1.0, DType::F64);
    for xb in [&x, &x2] {
        let (l_cpu, g_cpu) = step(&params, xb, &labels);
        let (l_gpu, g_gpu) = jitted.call(&(gp.clone(), xb.to_device(GPU).unwrap(), labels.to_device(GPU).unwrap()));
        same("jitted mlp", "loss", &[l_gpu], &[l_cpu]).unwrap();
        same("jitted mlp", "grads", &g_gpu, &g_cpu).unwrap();
    }
}

#[test]
fn cross_entropy_options_on_the_emulated_gpu_give_the_cpu_values() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let mut rng = nb::Rng::new(9);
    let opts = nb::CrossEntropyOptions {
        ignore_index: Some(-100),
        label_smoothing: 0.1,
        reduction: nb::Reduction::Mean,
    };
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        let x = rng.normal(&[7, 300], 0.0, 2.0, dtype);
        let y = Tensor::from_vec(vec![3i64, -100, 299, 0, -1, -100, 150], &[7]);
        let step = |x: &Tensor, y: &Tensor| nb::value_and_grad(|x: &Tensor| nb::cross_entropy_with(x, y, opts))(x);
        let (l_cpu, g_cpu) = step(&x, &y);
        let (l_gpu, g_gpu) = step(&x.to_device(GPU).unwrap(), &y.to_device(GPU).unwrap());
        let name = format!("cross_entropy_with {dtype}");
        let tol = if dtype == DType::BF16 { 2e-2 } else { 1e-5 };
        for (got, want) in [(&l_gpu, &l_cpu), (&g_gpu, &g_cpu)] {
            assert_eq!(got.device(), GPU, "{name}");
            let got = got.to_device(Device::Cpu).unwrap().cast(DType::F64).to_vec::<f64>();
            for (a, b) in got.iter().zip(want.cast(DType::F64).to_vec::<f64>()) {
                assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{name}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn device_errors_surface_at_the_next_read_naming_the_value() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let a = Tensor::from_vec(vec![7i64, 8, 9], &[3]).to_device(GPU).unwrap();
    let b = Tensor::from_vec(vec![1i64, 0, 3], &[3]).to_device(GPU).unwrap();
    // The kernel only records the error; the read (a synchronisation) reports it.
    let q = &a / &b;
    let msg = common::panic_message(|| {
        let _ = q.to_vec::<i64>();
    });
    assert!(msg.contains("division by zero") && msg.contains("cuda:0"), "{msg}");
    // The record is cleared: the next read is clean.
    assert_eq!((&a / &a).to_vec::<i64>(), vec![1, 1, 1]);
    // Waiting for the device (as timing code does) reports it too, without a read.
    let _q = &a / &b;
    let msg = common::panic_message(|| nb::synchronize(GPU).unwrap());
    assert!(msg.contains("division by zero") && msg.contains("cuda:0"), "{msg}");
    nb::synchronize(GPU).unwrap();
    nb::synchronize(Device::Cpu).unwrap();
}

#[test]
fn indices_are_checked_on_the_device_and_reported_at_the_next_read() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let x = Tensor::from_vec((0..15).map(|v| v as f64).collect(), &[5, 3])
        .to_device(GPU)
        .unwrap();
    let good = Tensor::from_vec(vec![0i64, 4, -1], &[3]).to_device(GPU).unwrap();
    let bad = Tensor::from_vec(vec![0i64, 7, -1], &[3]).to_device(GPU).unwrap();
    let reads = || {
        (!device::real_gpu()).then(|| {
            device::emulated_backend()
                .api()
                .downloads
                .load(std::sync::atomic::Ordering::SeqCst)
        })
    };
    let before = reads();
    let picked = x.take(&good, 0);
    let _queued_after = x.take(&bad, 0);
    // Neither take waited for the indices (no read from the device).
    assert_eq!(reads(), before, "take read its indices back from the device");
    // The first read reports the bad index of the take queued before it, whichever result it
    // reads (as CUDA reports a kernel's fault at the next synchronisation).
    let first = common::panic_message(|| {
        let _ = picked.to_vec::<f64>();
    });
    assert!(first.contains("index 7 is out of range"), "{first}");
    // The record is cleared: the good result reads clean now, with one synchronisation (the
    // value and the error record are copied together).
    let before_clean_read = reads();
    assert_eq!(
        picked.to_vec::<f64>(),
        vec![0.0, 1.0, 2.0, 12.0, 13.0, 14.0, 12.0, 13.0, 14.0]
    );
    if let (Some(a), Some(b)) = (before_clean_read, reads()) {
        assert_eq!(b - a, 1, "reading one value synchronised {} times", b - a);
    }
    let wrong = x.take(&bad, 0);
    let msg = common::panic_message(|| {
        let _ = wrong.to_vec::<f64>();
    });
    // The CPU's message, with the device named.
    let cpu_msg = common::panic_message(|| {
        let _ = x
            .to_device(Device::Cpu)
            .unwrap()
            .take(&bad.to_device(Device::Cpu).unwrap(), 0);
    });
    assert!(
        msg.starts_with(&cpu_msg) && msg.contains("cuda:0"),
        "device: {msg}\ncpu: {cpu_msg}"
    );
    // Integer labels of cross_entropy and one_hot are checked the same way.
    let logits = Tensor::zeros(&[2, 3], DType::F64).to_device(GPU).unwrap();
    let labels = Tensor::from_vec(vec![1i64, 3], &[2]).to_device(GPU).unwrap();
    let msg = common::panic_message(|| {
        let _ = nb::cross_entropy(&logits, &labels).item::<f64>();
    });
    assert!(
        msg.contains("index 3 is out of range") && msg.contains("extent 3"),
        "{msg}"
    );
}

#[test]
fn random_draws_and_dropout_are_the_same_on_the_device_as_on_the_cpu() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let key = nb::random::key(&[42, 7, 1]);
    for dtype in [DType::F64, DType::F32, DType::BF16, DType::F16] {
        let cpu = nb::random::uniform(&key, &[3, 700], 0.0, 1.0, dtype, Device::Cpu);
        let gpu = nb::random::uniform(&key, &[3, 700], 0.0, 1.0, dtype, GPU);
        assert_eq!(gpu.device(), GPU);
        // Bit for bit: the same hash, the same rounding.
        assert_eq!(
            gpu.to_device(Device::Cpu).unwrap().to_host_buffer().to_le_bytes(),
            cpu.to_host_buffer().to_le_bytes(),
            "{dtype}"
        );
    }
    let x = Tensor::from_vec((0..1000).map(|v| v as f64 / 100.0).collect(), &[10, 100]);
    check_both("dropout", &[x], |t| {
        let k = nb::random::key(&[3]);
        vec![
            t[0].dropout(0.3, &k),
            nb::grad(|x: &Tensor| x.dropout(0.3, &k).square().sum_all())(&t[0]),
        ]
    });
}

#[test]
fn data_parallel_buckets_of_device_leaves_are_packed_on_the_device_and_copied_once_each() {
    use nabla_dist::{DataParallel, DataParallelConfig, ProcessGroup, Shard, ThreadComm};
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let mut rng = nb::Rng::new(9);
    // An f64 bucket and an f32 bucket (which also carries the bf16 leaf).
    let params = vec![
        rng.normal(&[6, 5], 0.0, 0.4, DType::F64),
        rng.normal(&[5], 0.0, 0.1, DType::F32),
        rng.normal(&[5, 2], 0.0, 0.4, DType::F64).cast(DType::BF16),
    ];
    let x = rng.normal(&[8, 6], 0.0, 1.0, DType::F64);
    let y = rng.normal(&[8, 2], 0.0, 1.0, DType::F64);
    let loss = |p: &[Tensor], x: &Tensor, y: &Tensor| {
        let h = (x.matmul(&p[0]) + p[1].cast(DType::F64)).tanh();
        (h.matmul(&p[2].cast(DType::F64)) - y).square().mean_all()
    };
    // Two ranks as threads; each returns its averaged gradients (on the leaves' device).
    let run = |device: Device| -> Vec<Vec<Tensor>> {
        let comms = ThreadComm::world(2);
        std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    let (params, x, y) = (&params, &x, &y);
                    s.spawn(move || {
                        let group = ProcessGroup::new(Box::new(c), std::time::Duration::from_secs(120), "world");
                        let on = |t: &Tensor| t.to_device(device).unwrap();
                        let p: Vec<Tensor> = params.iter().map(on).collect();
                        let (dp, p) = DataParallel::with_config(&group, &p, DataParallelConfig::default()).unwrap();
                        let shard = Shard::of(8, group.rank(), 2);
                        let r = |t: &Tensor| {
                            on(&t.slice_axis(
                                0,
                                Some(shard.range().start as isize),
                                Some(shard.range().end as isize),
                                1,
                            ))
                        };
                        let tracked = dp.track(&p);
                        loss(&tracked, &r(x), &r(y)).backward();
                        assert_eq!(dp.last_sync().buckets, 2);
                        dp.grads(&tracked)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let want = run(Device::Cpu);
    let downloads_before = (!device::real_gpu()).then(|| {
        device::emulated_backend()
            .api()
            .downloads
            .load(std::sync::atomic::Ordering::SeqCst)
    });
    let got = run(GPU);
    if let Some(before) = downloads_before {
        let after = device::emulated_backend()
            .api()
            .downloads
            .load(std::sync::atomic::Ordering::SeqCst);
        // Reads per rank: one per bucket for the host transport (none per leaf), and one per
        // leaf for the parameters' broadcast; each read is one synchronisation (the values and
        // the device error record copied together).
        let reads_per_rank = 2 + 3;
        assert_eq!(
            after - before,
            2 * reads_per_rank,
            "device copies during a data-parallel step"
        );
    }
    for (rank, (g, w)) in got.iter().zip(&want).enumerate() {
        same(&format!("rank {rank}"), "data-parallel grads", g, w).unwrap();
    }
}

#[test]
fn batch_norm_of_device_tensors_local_and_synchronised_gives_the_cpu_values_and_gradients() {
    use nabla_dist::{ProcessGroup, ThreadComm, cross_rank_sum};
    use nabla_nn::BatchNorm;
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let mut rng = nb::Rng::new(13);
    let x = rng.normal(&[6, 3, 2, 2], 0.5, 1.5, DType::F64);
    let w = rng.normal(&[6, 3, 2, 2], 0.0, 1.0, DType::F64);
    let (mut layer, stats) = BatchNorm::new(3, DType::F64);
    layer.gamma = Tensor::from_vec(vec![1.5, 0.5, -1.0], &[3]);
    // Two ranks as threads with shards of 2 and 4 images; each returns its output, its input's
    // gradient, the layer's gradient (its share: summed over the ranks later) and the new
    // running statistics.
    let run = |device: Device| -> Vec<Vec<Tensor>> {
        let on = |t: &Tensor| t.to_device(device).unwrap();
        let comms = ThreadComm::world(2);
        std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    let (x, w, layer, stats) = (&x, &w, &layer, &stats);
                    s.spawn(move || {
                        let group = ProcessGroup::new(Box::new(c), std::time::Duration::from_secs(120), "world");
                        let (a, b) = if group.rank() == 0 { (0, 2) } else { (2, 6) };
                        let xs = on(&x.slice_axis(0, Some(a), Some(b), 1));
                        let ws = on(&w.slice_axis(0, Some(a), Some(b), 1));
                        let layer = nb::Tree::map_leaves(layer, on);
                        let stats = nb::Tree::map_leaves(stats, on);
                        let sum = cross_rank_sum(&group);
                        let f = |(x, l): &(Tensor, BatchNorm)| {
                            let (y, new) = l.forward_train_synced(x, &stats, &sum);
                            ((&y * &ws).tanh().sum_all() / 6.0, (y, new))
                        };
                        let ((_, (y, new)), (gx, gl)) = nb::value_and_grad_with_aux(f)(&(xs.clone(), layer.clone()));
                        // The same layer over this rank's shard alone (fused on the CPU, composed
                        // on the GPU).
                        let local = |(x, l): &(Tensor, BatchNorm)| {
                            let (y, new) = l.forward_train(x, &stats);
                            ((&y * &ws).tanh().sum_all(), (y, new))
                        };
                        let ((_, (yl, newl)), (gxl, gll)) = nb::value_and_grad_with_aux(local)(&(xs, layer));
                        vec![
                            y, gx, gl.gamma, gl.beta, new.mean, new.var, yl, gxl, gll.gamma, gll.beta, newl.mean,
                            newl.var,
                        ]
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let want = run(Device::Cpu);
    let launched = || (!device::real_gpu()).then(|| device::emulated_backend().api().launches.lock().unwrap().clone());
    let before = launched();
    let got = run(GPU);
    if let (Some(before), Some(after)) = (before, launched()) {
        // The synchronised form's fused backward: this rank's sums, then the input gradient.
        let new = &after[before.len()..];
        for kernel in [
            "nb_channel_batch_norm_backward_f64_sums",
            "nb_channel_batch_norm_backward_f64_apply",
        ] {
            assert!(new.iter().any(|k| k == kernel), "{kernel} was not launched: {new:?}");
        }
    }
    for (rank, (g, w)) in got.iter().zip(&want).enumerate() {
        same(&format!("rank {rank}"), "synchronised batch norm", g, w).unwrap();
    }
}

#[test]
fn init_opens_one_gpu_per_process() {
    if !device::real_gpu() {
        println!("SKIPPED init_opens_one_gpu_per_process: needs a GPU (NABLA_GPU_CHECK=1, as ci/gpu-check runs it)");
        return;
    }
    let _one_at_a_time = device::setup();
    let first = nabla_cuda::init(0).unwrap();
    let again = nabla_cuda::init(0).unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "a second init(0) must return the backend opened first"
    );
    let Err(e) = nabla_cuda::init(1) else {
        panic!("init(1) after init(0) must be refused")
    };
    let e = e.to_string();
    assert!(e.contains("already uses cuda:0") && e.contains("one GPU per"), "{e}");
}

#[test]
fn ramps_identities_one_hot_and_jacobians_are_made_on_the_device() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let bits = |t: &Tensor| t.to_host_buffer().to_le_bytes();
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64, DType::Bool] {
        for (start, stop, step) in [
            (0.0, 10.0, 1.0),
            (-2.5, 3.0, 0.1),
            (7.0, -5.0, -3.0),
            (1e6, 1e6 + 5.0, 0.7),
        ] {
            let want = Tensor::arange(start, stop, step, dtype);
            let got = Tensor::arange_on(start, stop, step, dtype, GPU);
            assert_eq!(got.device(), GPU);
            assert_eq!(bits(&got), bits(&want), "arange({start}, {stop}, {step}) in {dtype}");
        }
        assert_eq!(
            bits(&Tensor::eye_on(5, dtype, GPU)),
            bits(&Tensor::eye(5, dtype)),
            "eye in {dtype}"
        );
    }
    let labels = Tensor::from_vec(vec![3i64, 0, 9, 3], &[4]);
    let hot = nb::one_hot(&labels.to_device(GPU).unwrap(), 10, DType::F32);
    assert_eq!(bits(&hot), bits(&nb::one_hot(&labels, 10, DType::F32)));
    // A Jacobian's basis is made where the primal lives.
    let x = Tensor::from_vec(vec![0.5f64, -1.0, 2.0], &[3]);
    let f = |x: &Tensor| (x * x).sin();
    let want = nb::jacrev(f)(&x);
    let got = nb::jacrev(f)(&x.to_device(GPU).unwrap());
    assert_eq!(got.device(), GPU);
    let (g, w) = (got.to_vec::<f64>(), want.to_vec::<f64>());
    assert!(
        g.iter().zip(&w).all(|(a, b)| (a - b).abs() <= 1e-15 * b.abs().max(1.0)),
        "{g:?} vs {w:?}"
    );
    if !device::real_gpu() {
        let launched = device::emulated_backend().api().launches.lock().unwrap().clone();
        assert!(
            launched.iter().any(|k| k == "nb_arange_i64"),
            "no ramp was made on the device"
        );
    }
}

#[test]
fn out_of_memory_releases_the_cached_blocks_then_fails_naming_the_request() {
    if device::real_gpu() || !device::available() {
        println!(
            "SKIPPED out_of_memory_releases_the_cached_blocks_then_fails_naming_the_request: runs on the \
             emulator only (it needs a device of 5 KiB), and needs a C++ compiler for it"
        );
        return;
    }
    use nb::Backend;
    use std::sync::atomic::Ordering::SeqCst;
    // A device of 4 KiB past the error record; its pool never reuses a freed block.
    let record = 8 * nabla_kernels::ERROR_RECORD_WORDS;
    let gpu = Arc::new(device::EmulatedGpu::new(Some(record + 4096)));
    let be = nabla_cuda::CudaBackend::new(gpu.clone()).unwrap();
    let pool = gpu.pool.clone().unwrap();
    let fill = |n: usize| be.full(&[n], DType::F32, 1.5, GPU);
    let (a, b, c) = (fill(256), fill(256), fill(256));
    drop((a, b));
    assert_eq!(
        (pool.live.load(SeqCst), pool.cached.load(SeqCst)),
        (record + 1024, 2048)
    );
    // 2560 bytes fit only once the 2048 cached bytes go back to the device: one release.
    let d = fill(640);
    assert_eq!(pool.releases.load(SeqCst), 1);
    assert_eq!(pool.cached.load(SeqCst), 0);
    let host = nb::storage::RawTensor::from_cpu(be.to_host(&d), &[640]);
    let values = Tensor::from_raw(host).to_vec::<f32>();
    assert!(values.iter().all(|&v| v == 1.5) && values.len() == 640);
    // 4096 more bytes do not fit at all: a second release, then a message naming the request,
    // the device's memory and what to do.
    let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fill(1024))).unwrap_err();
    let e = message(e);
    assert_eq!(pool.releases.load(SeqCst), 2);
    for part in [
        "out of memory on cuda:0",
        "4096 B for [1024] f32",
        "free of",
        "smaller batch",
    ] {
        assert!(e.contains(part), "missing {part:?} in: {e}");
    }
    drop((c, d));
}

#[test]
fn a_request_larger_than_the_real_gpu_fails_naming_it_and_the_device_stays_usable() {
    if !device::real_gpu() {
        println!(
            "SKIPPED a_request_larger_than_the_real_gpu_fails_naming_it_and_the_device_stays_usable: real GPU \
             only (under ci/gpu-check; the emulator's version is out_of_memory_releases_the_cached_blocks_...)"
        );
        return;
    }
    let _guard = device::setup();
    // 200 GiB of f32: more than any GPU has, so the retry after releasing the cache fails too,
    // without touching the device's memory.
    let n = 50usize << 30;
    let e = std::panic::catch_unwind(|| Tensor::full_on(&[n], 1.0, DType::F32, GPU)).unwrap_err();
    let e = message(e);
    for part in [
        "out of memory on cuda:0",
        "for [53687091200] f32",
        "free of",
        "smaller batch",
    ] {
        assert!(e.contains(part), "missing {part:?} in: {e}");
    }
    // Out of memory is not a sticky error: the device still computes.
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).to_device(GPU).unwrap();
    assert_eq!((&x * 2.0).to_vec::<f32>(), vec![2.0, 4.0, 6.0]);
}

#[test]
fn contiguous_views_are_read_from_their_offset_without_a_copy_kernel() {
    if device::real_gpu() || !device::available() {
        println!(
            "SKIPPED contiguous_views_are_read_from_their_offset_without_a_copy_kernel: counts the \
             emulator's launches (and needs a C++ compiler for it)"
        );
        return;
    }
    let _one_at_a_time = device::setup();
    let launches = || device::emulated_backend().api().launches.lock().unwrap().len();
    let x = Tensor::from_vec((0..12).map(f64::from).collect::<Vec<_>>(), &[4, 3])
        .to_device(GPU)
        .unwrap();
    let before = launches();
    // Row 2 is contiguous at offset 6; reading it launches nothing.
    assert_eq!(x.i(2).to_vec::<f64>(), vec![6.0, 7.0, 8.0]);
    assert_eq!(launches(), before, "no copy kernel for a contiguous view");
    // A column is strided: it is copied on the device first, and reads right.
    assert_eq!(x.transpose().i(1).to_vec::<f64>(), vec![1.0, 4.0, 7.0, 10.0]);
    assert_eq!(launches(), before + 1);
}

#[test]
fn scalar_operands_are_filled_on_the_device_once() {
    if device::real_gpu() || !device::available() {
        println!(
            "SKIPPED scalar_operands_are_filled_on_the_device_once: counts the emulator's launches \
             (and needs a C++ compiler for it)"
        );
        return;
    }
    let _one_at_a_time = device::setup();
    let fills = || {
        let launched = device::emulated_backend().api().launches.lock().unwrap().clone();
        launched.iter().filter(|n| n.starts_with("nb_fill_")).count()
    };
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).to_device(GPU).unwrap();
    // A value no other test uses, so the first use fills it.
    let before = fills();
    let a = &x * 0.123_456_7;
    let b = (&x + 0.123_456_7) * 0.123_456_7;
    assert_eq!(fills() - before, 1, "one fill for one (dtype, value)");
    let c = x.cast(DType::F64) * 0.123_456_7;
    assert_eq!(fills() - before, 2, "another dtype is another constant");
    // One-element shapes share the constant too, and every result is right.
    let one = Tensor::full_on(&[1, 1], 0.123_456_7, DType::F32, GPU);
    assert_eq!(fills() - before, 2);
    assert_eq!(one.shape(), &[1, 1]);
    let cpu = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_vec::<f64>();
    let k = 0.123_456_7f32 as f64;
    for (got, want) in cpu(&a).iter().zip([k, 2.0 * k, 3.0 * k]) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert!((cpu(&b)[0] - (1.0 + k) * k).abs() < 1e-6);
    assert!((cpu(&c)[2] - 3.0 * 0.123_456_7).abs() < 1e-12);
    assert_eq!(cpu(&one), vec![k]);
}

#[test]
fn the_adam_update_on_the_device_matches_the_cpu() {
    if !device::available() {
        println!("SKIPPED the_adam_update_on_the_device_matches_the_cpu: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        for (weight_decay, decoupled) in [(0.0, false), (0.1, false), (0.1, true)] {
            let s = nb::AdamStep {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay,
                decoupled,
            };
            let count = Tensor::from_vec(vec![5i64], &[]);
            let n = 37;
            let t = |k: usize| {
                let v: Vec<f64> = (0..n).map(|i| ((i * 7 + k * 13) % 23) as f64 / 11.0 - 1.0).collect();
                Tensor::from_vec(v, &[n]).cast(dtype)
            };
            // A strided gradient (every other element of a longer tensor).
            let long =
                Tensor::from_vec((0..2 * n).map(|i| (i % 9) as f64 - 4.0).collect::<Vec<_>>(), &[2 * n]).cast(dtype);
            let (p, g, m, v) = (t(0), long.slice_axis(0, None, None, 2), t(2), t(3).abs());
            let (q, m1, v1) = nb::adam_update(&p, &g, &m, &v, &count, &s);
            let on = on_gpu(&[p, g, m, v, count]);
            let launched =
                || (!device::real_gpu()).then(|| device::emulated_backend().api().launches.lock().unwrap().clone());
            let before = launched();
            let (gq, gm, gv) = nb::adam_update(&on[0], &on[1], &on[2], &on[3], &on[4], &s);
            let name = format!("adam_update {dtype} wd {weight_decay} decoupled {decoupled}");
            if let (Some(before), Some(after)) = (before, launched()) {
                // One launch reads the four operands and writes the three results, where the
                // composed update took a dozen (and a copy then an update in place took four).
                let kinds: Vec<&str> = after[before.len()..]
                    .iter()
                    .map(|k| k.split('_').nth(1).unwrap())
                    .collect();
                assert_eq!(kinds, ["adam"], "{name}: {:?}", &after[before.len()..]);
            }
            let cpu = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_vec::<f64>();
            let tol = if dtype == DType::BF16 { 8e-3 } else { 1e-6 };
            for (got, want) in [(&gq, &q), (&gm, &m1), (&gv, &v1)] {
                assert_eq!(got.device(), GPU, "{name}");
                for (a, b) in cpu(got).iter().zip(want.to_vec::<f64>()) {
                    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{name}: {a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn automatic_convolutions_keep_the_windows_on_the_device() {
    if !device::available() {
        println!(
            "SKIPPED automatic_convolutions_keep_the_windows_on_the_device: no C++ compiler to build the kernel emulator"
        );
        return;
    }
    let _one_at_a_time = device::setup();
    // A layer that ConvAlgorithm::Auto computes with the shifted rows on the CPU (16 input
    // channels, 2.5 M multiply-adds per image).
    let mut rng = nb::Rng::new(3);
    let x = rng.normal(&[1, 16, 32, 32], 0.0, 1.0, DType::F32);
    let w = rng.normal(&[16, 16, 3, 3], 0.0, 0.1, DType::F32);
    let opts = nb::Conv2dOptions {
        padding: (1, 1),
        ..nb::Conv2dOptions::default()
    };
    let graph = |xs: &[Tensor]| {
        nb::trace_graph(
            |p| vec![nb::conv2d(&p[0], &p[1], opts).square().sum(nb::Axes::All, false)],
            xs,
        )
    };
    let on_cpu = graph(&[x.clone(), w.clone()]);
    assert!(
        on_cpu.contains("tap_matmul(") && !on_cpu.contains("unfold_windows("),
        "{on_cpu}"
    );
    let on_device = graph(&on_gpu(&[x.clone(), w.clone()]));
    assert!(
        on_device.contains("unfold_windows(") && !on_device.contains("tap_matmul("),
        "{on_device}"
    );
    // Asked for, the shifted rows run on the device too and give the CPU's values (in f64,
    // where the two summation orders agree to the comparison's 1e-10).
    let shifted = nb::Conv2dOptions {
        algorithm: nb::ConvAlgorithm::ShiftedRows,
        ..opts
    };
    let (x, w) = (x.cast(DType::F64), w.cast(DType::F64));
    let want = nb::conv2d(&x, &w, shifted);
    let got = nb::conv2d(&x.to_device(GPU).unwrap(), &w.to_device(GPU).unwrap(), shifted);
    same("conv2d (shifted rows)", "output", &[got], &[want]).unwrap();
    // Strided, over phase images (the device gathers every tap's run and joins them), with
    // both gradients.
    let strided = nb::Conv2dOptions {
        stride: (2, 2),
        ..shifted
    };
    let value_and_grads = |x: &Tensor, w: &Tensor| {
        let loss = |p: &(Tensor, Tensor)| nb::conv2d(&p.0, &p.1, strided).sin().sum_all();
        let (v, g) = nb::value_and_grad(loss)(&(x.clone(), w.clone()));
        vec![v, g.0, g.1]
    };
    let want = value_and_grads(&x, &w);
    let got = value_and_grads(&x.to_device(GPU).unwrap(), &w.to_device(GPU).unwrap());
    same("conv2d (shifted rows, stride 2)", "value and gradients", &got, &want).unwrap();
}

/// Attention of `x = [q, k, v, ..]` and the gradients of `sum(sin(attention))` with respect
/// to `q`, `k` and `v`.
fn attention_and_gradients(x: &[Tensor], mask: Option<&Tensor>, causal: bool) -> Vec<Tensor> {
    let t = (x[0].clone(), x[1].clone(), x[2].clone());
    let loss = |t: &(Tensor, Tensor, Tensor)| {
        nb::scaled_dot_product_attention(&t.0, &t.1, &t.2, mask, causal)
            .sin()
            .sum_all()
    };
    let g = nb::grad(loss)(&t);
    vec![
        nb::scaled_dot_product_attention(&t.0, &t.1, &t.2, mask, causal),
        g.0,
        g.1,
        g.2,
    ]
}

#[test]
fn fused_attention_kernels_match_the_cpu_with_several_key_chunks_and_lane_slots() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let mut rng = nb::Rng::new(12);
    // Keys in two and three tiles (the online softmax rescales), queries in several blocks,
    // every head width class (32, 64, 128 and 256: a row's lanes, the rows per block and the
    // tile change with it), widths that fill no vector, fewer and more queries than keys, keys
    // shared by the heads.
    for causal in [false, true] {
        for (lq, lk, dim, dv) in [
            (37, 70, 40, 33),
            (70, 37, 8, 5),
            (33, 33, 33, 40),
            (19, 45, 70, 100),
            (5, 40, 130, 21),
        ] {
            let q = rng.normal(&[2, 2, lq, dim], 0.0, 1.0, DType::F64);
            let k = rng.normal(&[2, 1, lk, dim], 0.0, 1.0, DType::F64);
            let v = rng.normal(&[2, 1, lk, dv], 0.0, 1.0, DType::F64);
            let name = format!("attention lq {lq} lk {lk} dim {dim} dv {dv} causal {causal}");
            check_both(&name, &[q, k, v], |x| attention_and_gradients(x, None, causal));
        }
    }
    // Masks, read in place by the masked kernels: key padding broadcast over heads and
    // queries, an arbitrary [Lq, Lk] mask and its transposed view (strided rows), and one
    // value per query with an empty query (it attends to nothing), causal and not.
    let (lq, lk) = (37, 70);
    let bools = |values: Vec<f64>, shape: &[usize]| Tensor::from_vec(values, shape).gt_scalar(0.5);
    let padding = bools(
        (0..2 * lk).map(|i| if i >= lk + 45 { 0.0 } else { 1.0 }).collect(),
        &[2, 1, 1, lk],
    );
    let keep = rng.uniform(&[lq, lk], 0.0, 1.0, DType::F64).gt_scalar(0.3);
    // Its columns, a contiguous [Lk, Lq] tensor, read back through a transposed view; and its
    // rows reversed, read back through a flipped view (a negative key stride).
    let columns = keep.swap_axes(0, 1).logical_not().logical_not();
    let reversed = keep.flip(-1).logical_not().logical_not();
    let per_query = bools((0..lq).map(|i| if i == 5 { 0.0 } else { 1.0 }).collect(), &[lq, 1]);
    let view = |name: &str, m: &Tensor| match name {
        "transposed" => m.swap_axes(0, 1),
        "flipped" => m.flip(-1),
        _ => m.clone(),
    };
    let masks = [
        ("padding", &padding),
        ("arbitrary", &keep),
        ("transposed", &columns),
        ("flipped", &reversed),
        ("per query", &per_query),
    ];
    for causal in [false, true] {
        for (mask_name, mask) in masks {
            let q = rng.normal(&[2, 2, lq, 40], 0.0, 1.0, DType::F64);
            let k = rng.normal(&[2, 1, lk, 40], 0.0, 1.0, DType::F64);
            let v = rng.normal(&[2, 1, lk, 33], 0.0, 1.0, DType::F64);
            let name = format!("attention with a {mask_name} mask, causal {causal}");
            check_both(&name, &[q, k, v, mask.clone()], |x| {
                attention_and_gradients(x, Some(&view(mask_name, &x[3])), causal)
            });
        }
    }
    // f32 (the GPU's kernels against the CPU's fused kernel, which sum in other orders), with
    // and without a key padding mask.
    for mask in [None, Some(&padding)] {
        let q = rng.normal(&[2, 2, 37, 40], 0.0, 1.0, DType::F32);
        let k = rng.normal(&[2, 2, 70, 40], 0.0, 1.0, DType::F32);
        let v = rng.normal(&[2, 2, 70, 33], 0.0, 1.0, DType::F32);
        let inputs = [q, k, v];
        let want = attention_and_gradients(&inputs, mask, true);
        let gpu_mask = mask.map(|m| m.to_device(GPU).unwrap());
        let got = attention_and_gradients(&on_gpu(&inputs), gpu_mask.as_ref(), true);
        for (what, (g, w)) in ["values", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            assert_eq!((g.device(), g.dtype()), (GPU, DType::F32), "f32 attention {what}");
            let (g, w) = (g.to_device(Device::Cpu).unwrap().to_vec::<f64>(), w.to_vec::<f64>());
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 + 1e-5 * b.abs(),
                    "f32 attention (mask {}) {what}: element {i}: got {a}, want {b}",
                    mask.is_some()
                );
            }
        }
    }
    // Every other way of spreading rows over lanes (a row over fewer or more lanes, several
    // rows a group), on the head classes each fits, masked and not.
    let set_tuning = |t: AttentionTuning| {
        if device::real_gpu() {
            nabla_cuda::init(0).unwrap().set_attention_tuning(t);
        } else {
            device::emulated_backend().set_attention_tuning(t);
        }
    };
    for (lane_bytes, rows_per_group) in [(32, 1), (64, 1), (64, 2), (32, 4), (128, 2)] {
        set_tuning(AttentionTuning {
            lane_bytes,
            rows_per_group,
        });
        // The key padding mask has 70 keys.
        for (lq, lk, dim, dv, masked) in [
            (37, 70, 40, 33, false),
            (37, 70, 40, 33, true),
            (70, 37, 8, 5, false),
            (19, 45, 70, 100, false),
        ] {
            let q = rng.normal(&[2, 2, lq, dim], 0.0, 1.0, DType::F64);
            let k = rng.normal(&[2, 1, lk, dim], 0.0, 1.0, DType::F64);
            let v = rng.normal(&[2, 1, lk, dv], 0.0, 1.0, DType::F64);
            let name = format!(
                "attention lq {lq} lk {lk} dim {dim} dv {dv}, {lane_bytes} bytes a lane, \
                 {rows_per_group} rows a group, masked {masked}"
            );
            let mut inputs = vec![q, k, v];
            if masked {
                inputs.push(padding.clone());
            }
            check_both(&name, &inputs, |x| attention_and_gradients(x, x.get(3), true));
        }
    }
    set_tuning(AttentionTuning::DEFAULT);
    if !device::real_gpu() {
        let launched = device::emulated_backend().api().launches.lock().unwrap().clone();
        for name in [
            "nb_attention_forward_h64_l32r4_f64",
            "nb_attention_backward_keys_masked_h64_l128r2_f64",
        ] {
            assert!(launched.iter().any(|n| n == name), "{name} did not run");
        }
        for pass in ["forward", "backward_queries", "backward_keys"] {
            for variant in ["", "_masked"] {
                for dtype in ["f32", "f64"] {
                    let entry = format!("nb_attention_{pass}{variant}_h*_{dtype}");
                    let ran = launched.iter().any(|name| {
                        let prefix = format!("nb_attention_{pass}{variant}_h");
                        name.strip_prefix(&prefix)
                            .and_then(|rest| rest.strip_suffix(&format!("_{dtype}")))
                            .is_some_and(|head| head.parse::<usize>().is_ok())
                    });
                    assert!(ran, "{entry} did not run");
                }
            }
        }
    }
}

#[test]
fn batch_norm_and_channel_standardisation_run_the_fused_kernels_on_the_device() {
    if !device::available() {
        println!("SKIPPED: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    let launched = || (!device::real_gpu()).then(|| device::emulated_backend().api().launches.lock().unwrap().clone());
    let mut rng = nb::Rng::new(29);
    // [N, C, H, W]; channels of 4200 values (split in two chunks on the emulated GPU); and
    // [N, C] (runs of one value).
    for shape in [vec![6usize, 3, 2, 2], vec![2, 3, 2100], vec![5, 4]] {
        let c = shape[1];
        for dtype in [DType::F64, DType::F32, DType::BF16] {
            let name = format!("{shape:?} {dtype}");
            let x = (rng.normal(&shape, 3.0, 1.5, DType::F64)).cast(dtype);
            let w = rng.normal(&shape, 0.0, 1.0, DType::F64).cast(dtype);
            let t = rng.normal(&shape, 0.0, 1.0, DType::F64).cast(dtype);
            let gamma = rng.normal(&[c], 1.0, 0.5, DType::F64).cast(dtype);
            let beta = rng.normal(&[c], 0.0, 0.5, DType::F64).cast(dtype);
            // Values, statistics, the three gradients of a weighted sum, and the
            // standardisation's value, gradient and tangent.
            let results = |xs: &[Tensor]| -> Vec<Tensor> {
                let (x, w, t, gamma, beta) = (&xs[0], &xs[1], &xs[2], &xs[3], &xs[4]);
                let (y, mean, var) = x.batch_norm(gamma, beta, 1, 1e-5);
                let loss = |p: &(Tensor, Tensor, Tensor)| (p.0.batch_norm(&p.1, &p.2, 1, 1e-5).0 * w).sum_all();
                let (gx, gg, gb) = nb::grad(loss)(&(x.clone(), gamma.clone(), beta.clone()));
                let (z, ..) = x.normalize_channels(1, 1e-5);
                let gz = nb::grad(|x: &Tensor| (x.normalize_channels(1, 1e-5).0 * w).sum_all())(x);
                let (_, tz) = nb::jvp(|x: &Tensor| x.normalize_channels(1, 1e-5).0, x, t);
                vec![y, mean, var, gx, gg, gb, z, gz, tz]
            };
            let want = results(&[x.clone(), w.clone(), t.clone(), gamma.clone(), beta.clone()]);
            let before = launched();
            let got = results(&on_gpu(&[x, w, t, gamma, beta]));
            if let (Some(before), Some(after)) = (before, launched()) {
                let new = &after[before.len()..];
                for kernel in [
                    format!("nb_channel_moments_{dtype}_partial"),
                    format!("nb_channel_scale_shift_{dtype}_apply"),
                    format!("nb_channel_batch_norm_backward_{dtype}_apply"),
                    format!("nb_channel_norm_backward_{dtype}_apply"),
                ] {
                    assert!(new.contains(&kernel), "{name}: {kernel} was not launched: {new:?}");
                }
            }
            let tol = match dtype {
                DType::F64 => 1e-10,
                DType::F32 => 2e-4,
                _ => 5e-2,
            };
            let labels = ["y", "mean", "var", "dx", "dgamma", "dbeta", "z", "dz", "jvp z"];
            for ((g, w), label) in got.iter().zip(&want).zip(labels) {
                assert_eq!(g.device(), GPU, "{name}: {label}");
                assert_eq!((g.shape(), g.dtype()), (w.shape(), w.dtype()), "{name}: {label}");
                let gv = g.to_device(Device::Cpu).unwrap().to_vec::<f64>();
                let wv = w.to_vec::<f64>();
                let scale = wv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (i, (a, b)) in gv.iter().zip(&wv).enumerate() {
                    assert!(
                        (a - b).abs() <= tol * scale.max(1.0),
                        "{name}: {label}[{i}]: got {a}, want {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn pooling_reads_the_windows_in_place_on_the_device_in_every_float_dtype() {
    if device::real_gpu() || !device::available() {
        println!(
            "SKIPPED pooling_reads_the_windows_in_place_on_the_device_in_every_float_dtype: counts \
             the emulator's launches (and needs a C++ compiler for it)"
        );
        return;
    }
    let _one_at_a_time = device::setup();
    let launched = || device::emulated_backend().api().launches.lock().unwrap().clone();
    let shape = [2usize, 3, 7, 9];
    let values: Vec<f64> = (0..shape.iter().product::<usize>())
        .map(|i| ((i * 37 + 11) % 29) as f64 / 7.0 - 2.0)
        .collect();
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let x = Tensor::from_vec(values.clone(), &shape).cast(dtype);
        let loss = |x: &Tensor| {
            let a = nb::avg_pool2d(x, (3, 3), (2, 2), (1, 1));
            let m = nb::max_pool2d(x, (3, 2), (1, 2), (1, 1));
            (a.square().sum_all() + m.square().sum_all()).cast(DType::F64)
        };
        let (want_v, want_g) = nb::value_and_grad(loss)(&x);
        let before = launched().len();
        let (v, g) = nb::value_and_grad(loss)(&x.to_device(GPU).unwrap());
        let names: Vec<String> = launched()[before..].to_vec();
        for kernel in ["nb_pool_sum_", "nb_pool_sum_transpose_", "nb_pool_argmax_"] {
            assert!(
                names.iter().any(|n| n.starts_with(kernel)),
                "{dtype}: no {kernel}* launch in {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.starts_with("nb_unfold_")),
            "{dtype}: no window tensor: {names:?}"
        );
        let tol = if dtype.is_half() { 1e-2 } else { 1e-6 };
        let cpu = |t: &Tensor| t.to_device(Device::Cpu).unwrap().cast(DType::F64).to_vec::<f64>();
        let (gv, wv) = (cpu(&v)[0], want_v.to_vec::<f64>()[0]);
        assert!((gv - wv).abs() <= tol * wv.abs(), "{dtype}: loss {gv} vs {wv}");
        for (i, (a, b)) in cpu(&g).iter().zip(cpu(&want_g)).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{dtype}: gradient {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn the_sgd_update_on_the_device_matches_the_cpu() {
    if !device::available() {
        println!("SKIPPED the_sgd_update_on_the_device_matches_the_cpu: no C++ compiler to build the kernel emulator");
        return;
    }
    let _one_at_a_time = device::setup();
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        for (momentum, nesterov, weight_decay) in [
            (0.0, false, 0.0),
            (0.0, false, 1e-3),
            (0.9, false, 5e-4),
            (0.9, true, 5e-4),
        ] {
            let s = nb::SgdStep {
                lr: 0.05,
                momentum,
                nesterov,
                weight_decay,
            };
            let n = 37;
            let t = |k: usize| {
                let v: Vec<f64> = (0..n).map(|i| ((i * 7 + k * 13) % 23) as f64 / 11.0 - 1.0).collect();
                Tensor::from_vec(v, &[n]).cast(dtype)
            };
            // A strided gradient on the CPU (moved to the device as its values).
            let long =
                Tensor::from_vec((0..2 * n).map(|i| (i % 9) as f64 - 4.0).collect::<Vec<_>>(), &[2 * n]).cast(dtype);
            let (p, g, v) = (t(0), long.slice_axis(0, None, None, 2), t(2));
            let v = (momentum != 0.0).then_some(v);
            let (q, v1) = nb::sgd_update(&p, &g, v.as_ref(), &s);
            let on = on_gpu(&[p, g]);
            let on_v = v.as_ref().map(|v| v.to_device(GPU).unwrap());
            let launched =
                || (!device::real_gpu()).then(|| device::emulated_backend().api().launches.lock().unwrap().clone());
            let before = launched();
            let (gq, gv) = nb::sgd_update(&on[0], &on[1], on_v.as_ref(), &s);
            let name = format!("sgd_update {dtype} momentum {momentum} nesterov {nesterov} wd {weight_decay}");
            if let (Some(before), Some(after)) = (before, launched()) {
                // One launch reads the operands and writes the results.
                let kinds: Vec<&str> = after[before.len()..]
                    .iter()
                    .map(|k| k.split('_').nth(1).unwrap())
                    .collect();
                assert_eq!(kinds, ["sgd"], "{name}: {:?}", &after[before.len()..]);
            }
            let cpu = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_vec::<f64>();
            let tol = if dtype == DType::BF16 { 8e-3 } else { 1e-6 };
            let mut pairs = vec![(&gq, &q)];
            if let (Some(a), Some(b)) = (&gv, &v1) {
                pairs.push((a, b));
            }
            assert_eq!(gv.is_some(), v1.is_some(), "{name}");
            for (got, want) in pairs {
                assert_eq!(got.device(), GPU, "{name}");
                for (a, b) in cpu(got).iter().zip(want.to_vec::<f64>()) {
                    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{name}: {a} vs {b}");
                }
            }
        }
    }
}
