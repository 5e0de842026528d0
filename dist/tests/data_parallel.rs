//! DataParallel over ranks that are threads (the transport-independent logic; the same
//! scenarios run over MPI in `ci/test_dist`).

mod common;

use common::{batch, loss, max_diff, on_ranks, params, rows};
use nabla_core::{Tensor, Tree};
use nabla_dist::{DataParallel, DataParallelConfig, Shard};

/// The single-process reference: gradient of the mean loss over the whole global batch.
fn reference_grads(p: &[Tensor], x: &Tensor, y: &Tensor) -> Vec<Tensor> {
    nabla_core::grad(|p: &Vec<Tensor>| loss(p, x, y))(&p.to_vec())
}

#[test]
fn uneven_shards_average_to_the_global_batch_gradient_and_ranks_agree_bitwise() {
    let global = 7; // 3 + 2 + 2 over three ranks
    let (x, y) = batch(global, 1);
    let want = reference_grads(&params(0), &x, &y);
    let results = on_ranks(3, |group| {
        // Ranks start from different values: DataParallel::new broadcasts rank 0's.
        let (dp, p) = DataParallel::new(&group, &params(group.rank() as u64)).unwrap();
        let shard = Shard::of(global, group.rank(), group.world_size());
        dp.set_shard_sizes(shard.len, shard.global);
        let tracked = dp.track(&p);
        loss(&tracked, &rows(&x, shard.range()), &rows(&y, shard.range())).backward();
        (dp.grads(&tracked), dp.last_sync())
    });
    for (rank, (grads, stats)) in results.iter().enumerate() {
        assert_eq!(stats.buckets, 1, "rank {rank}: {stats:?}");
        for (i, (g, w)) in grads.iter().zip(&want).enumerate() {
            assert!(max_diff(g, w) < 1e-12, "rank {rank}: {g} vs {w}");
            assert_eq!(
                g.to_vec::<f64>(),
                results[0].0[i].to_vec::<f64>(),
                "rank {rank} differs from rank 0"
            );
        }
    }
}

#[test]
fn buckets_start_during_the_sweep_in_order_and_unused_leaves_get_zeros() {
    let (x, y) = batch(6, 2);
    let results = on_ranks(2, |group| {
        // Tiny buckets: every leaf its own bucket, so the last layer's starts before the sweep ends.
        let config = DataParallelConfig {
            first_bucket_bytes: 8,
            bucket_bytes: 8,
            overlap: true,
        };
        let mut p = params(0);
        p.push(Tensor::from_vec(vec![1.0f64, 2.0], &[2])); // a leaf the loss never uses
        let (dp, p) = DataParallel::with_config(&group, &p, config).unwrap();
        let shard = Shard::of(6, group.rank(), 2);
        let tracked = dp.track(&p);
        loss(&tracked[..3], &rows(&x, shard.range()), &rows(&y, shard.range())).backward();
        (dp.grads(&tracked), dp.last_sync())
    });
    let want = reference_grads(&params(0), &x, &y);
    for (grads, stats) in &results {
        assert_eq!(stats.buckets, 4, "{stats:?}");
        assert!(stats.started_during_sweep >= 2, "no overlap: {stats:?}");
        assert_eq!(grads[3].to_vec::<f64>(), vec![0.0, 0.0]);
        for (g, w) in grads.iter().zip(&want) {
            assert!(max_diff(g, w) < 1e-12);
        }
    }
}

#[test]
fn no_sync_accumulation_over_micro_batches_equals_one_big_batch() {
    let k = 3;
    let micro = 4;
    let (x, y) = batch(2 * k * micro, 3);
    let want = reference_grads(&params(0), &x, &y);
    let results = on_ranks(2, |group| {
        let (dp, p) = DataParallel::new(&group, &params(0)).unwrap();
        let tracked = dp.track(&p);
        // Global batch = k micro-batches of 2 * micro examples; this rank's half of each.
        for step in 0..k {
            let start = step * 2 * micro + group.rank() * micro;
            let xs = rows(&x, start..start + micro);
            let ys = rows(&y, start..start + micro);
            let scaled = loss(&tracked, &xs, &ys) * (1.0 / k as f64);
            if step + 1 < k {
                let _guard = dp.no_sync();
                scaled.backward();
                assert_eq!(dp.last_sync().buckets, 0, "no sync inside no_sync");
            } else {
                scaled.backward();
            }
        }
        dp.grads(&tracked)
    });
    for grads in &results {
        for (g, w) in grads.iter().zip(&want) {
            assert!(max_diff(g, w) < 1e-12, "{g} vs {w}");
        }
    }
}

#[test]
fn ranks_with_different_models_are_told_which_leaves_differ() {
    let errors = on_ranks(2, |group| {
        let mut p = params(0);
        if group.rank() == 1 {
            p[1] = Tensor::zeros(&[6], nabla_core::DType::F64);
        }
        DataParallel::new(&group, &p).err().map(|e| e.to_string())
    });
    for e in errors {
        let e = e.expect("a mismatch is an error on every rank");
        assert!(e.contains("leaf 1: rank 0 has [5] f64, rank 1 has [6] f64"), "{e}");
    }
}

#[test]
fn two_models_have_their_own_hooks() {
    let (x, y) = batch(4, 4);
    on_ranks(2, |group| {
        let (dp_a, a) = DataParallel::new(&group, &params(0)).unwrap();
        let (dp_b, b) = DataParallel::new(&group, &params(1)).unwrap();
        let ta = dp_a.track(&a);
        let tb = dp_b.track(&b);
        // Only model a is in this graph: only a syncs.
        loss(&ta, &x, &y).backward();
        assert_eq!(dp_a.last_sync().buckets, 1);
        assert_eq!(dp_b.last_sync().buckets, 0);
        assert!(tb.iter().all(|t| t.grad().is_none()));
        // An evaluation graph with no DataParallel leaves syncs nothing.
        let eval = params(2).into_iter().map(|t| t.requires_grad()).collect::<Vec<_>>();
        loss(&eval, &x, &y).backward();
        assert!(eval[0].grad().is_some());
    });
}

#[test]
fn functional_all_reduce_weighted_equals_the_global_gradient() {
    let global = 5;
    let (x, y) = batch(global, 5);
    let want = reference_grads(&params(0), &x, &y);
    let results = on_ranks(3, |group| {
        let shard = Shard::of(global, group.rank(), 3);
        let p = params(0);
        let dp_vg = nabla_dist::value_and_grad(&group, |p: &Vec<Tensor>| {
            loss(p, &rows(&x, shard.range()), &rows(&y, shard.range()))
        });
        dp_vg(&p, shard).unwrap()
    });
    let want_loss = loss(&params(0), &x, &y).item::<f64>();
    for (l, g) in &results {
        assert!((l.item::<f64>() - want_loss).abs() < 1e-12);
        for (a, b) in g.iter().zip(&want) {
            assert!(max_diff(a, b) < 1e-12);
        }
        assert_eq!(g.leaves()[0].to_vec::<f64>(), results[0].1[0].to_vec::<f64>());
    }
}

#[test]
fn a_jitted_data_parallel_step_replays_its_all_reduce_every_step() {
    // 20 SGD steps, the whole step (local gradient, all-reduce, update) under nb::jit, against
    // the same steps run eagerly: the replayed collective must see each step's gradients.
    let global = 6;
    let (x, y) = batch(global, 6);
    let (x, y) = (&x, &y);
    let run = |jitted: bool| {
        on_ranks(2, move |group| {
            let shard = Shard::of(global, group.rank(), 2);
            let (xs, ys) = (rows(x, shard.range()), rows(y, shard.range()));
            let step = |p: &Vec<Tensor>| -> Vec<Tensor> {
                let g = nabla_core::grad(|p: &Vec<Tensor>| loss(p, &xs, &ys))(p);
                let g = nabla_dist::all_reduce_weighted(&group, &g, shard.weight()).unwrap();
                p.iter().zip(&g).map(|(w, g)| w - &(g * 0.1)).collect()
            };
            let jit = nabla_core::Jit::new(step);
            let mut p = params(0);
            for _ in 0..20 {
                p = if jitted { jit.call(&p) } else { step(&p) };
            }
            if jitted {
                let info = jit.cache_info();
                assert!(info.eager.is_empty(), "the step should replay: {info:?}");
                assert_eq!(info.replays, 19, "{info:?}");
            }
            p
        })
    };
    let eager = run(false);
    let jitted = run(true);
    for (a, b) in eager.iter().zip(&jitted) {
        for (s, t) in a.iter().zip(b) {
            assert_eq!(s.to_vec::<f64>(), t.to_vec::<f64>());
        }
    }
    // And the steps did move the parameters (20 identical steps would be a constant replay).
    assert!(max_diff(&eager[0][0], &params(0)[0]) > 1e-3);
}

#[test]
fn value_and_grad_under_jit_replays_and_matches_eager_overlapped() {
    let global = 6;
    let (x, y) = batch(global, 8);
    let results = on_ranks(2, |group| {
        let shard = Shard::of(global, group.rank(), 2);
        let (xs, ys) = (rows(&x, shard.range()), rows(&y, shard.range()));
        let vg = nabla_dist::value_and_grad(&group, |p: &Vec<Tensor>| loss(p, &xs, &ys));
        let eager = vg(&params(0), shard).unwrap();
        let jitted = nabla_core::Jit::new(|p: &Vec<Tensor>| vg(p, shard).unwrap());
        let a = jitted.call(&params(0));
        let b = jitted.call(&params(3));
        let b_eager = vg(&params(3), shard).unwrap();
        assert_eq!(jitted.cache_info().replays, 1, "{:?}", jitted.cache_info());
        (eager, a, b, b_eager)
    });
    let want = reference_grads(&params(0), &x, &y);
    for (eager, a, b, b_eager) in &results {
        for (g, w) in eager.1.iter().zip(&want) {
            assert!(max_diff(g, w) < 1e-12);
        }
        assert!((eager.0.item::<f64>() - a.0.item::<f64>()).abs() < 1e-12);
        for (p, q) in a.1.iter().zip(&eager.1) {
            assert!(max_diff(p, q) < 1e-12);
        }
        for (p, q) in b.1.iter().zip(&b_eager.1) {
            assert!(max_diff(p, q) < 1e-12, "the replay saw the new parameters");
        }
    }
}

#[test]
fn a_timeout_too_long_for_the_clock_means_no_deadline() {
    let sums = on_ranks(2, |group| {
        let g = group.with_timeout(std::time::Duration::MAX);
        let mut v = vec![1.0f32; 3];
        g.all_reduce_sum(nabla_dist::HostBufMut::F32(&mut v)).unwrap();
        v
    });
    assert_eq!(sums[0], vec![2.0; 3]);
    assert_eq!(Shard::of(0, 0, 2).weight(), 0.0);
}

#[test]
fn half_precision_leaves_are_summed_in_f32_and_come_back_in_their_dtype() {
    use nabla_core::DType;
    // w1 in bf16, b1 in f16, w2 in f32: one f32 bucket carries all three.
    let cast = |p: Vec<Tensor>| vec![p[0].cast(DType::BF16), p[1].cast(DType::F16), p[2].cast(DType::F32)];
    let global = 8;
    let (x, y) = batch(global, 3);
    // x @ w1 in bf16, + b1 (f16) promotes to f32, the rest in f32.
    let (x, y) = (x.cast(DType::BF16), y.cast(DType::F32));
    let p0 = cast(params(0));
    // The reference: one process over the whole batch, in the same dtypes.
    let want = nabla_core::grad(|p: &Vec<Tensor>| loss(p, &x, &y))(&p0);
    let results = on_ranks(2, |group| {
        let (dp, p) = DataParallel::new(&group, &p0).unwrap();
        let shard = Shard::of(global, group.rank(), group.world_size());
        let tracked = dp.track(&p);
        loss(&tracked, &rows(&x, shard.range()), &rows(&y, shard.range())).backward();
        (dp.grads(&tracked), dp.last_sync())
    });
    for (rank, (grads, stats)) in results.iter().enumerate() {
        assert_eq!(stats.buckets, 1, "rank {rank}: {stats:?}");
        for (i, (g, w)) in grads.iter().zip(&want).enumerate() {
            assert_eq!(g.dtype(), p0[i].dtype(), "rank {rank}: leaf {i} dtype");
            // Two half-precision shard gradients averaged in f32 and rounded once: within a
            // few bf16/f16 units of roundoff of the one-process gradient.
            let scale = w.abs().max_all().item::<f64>().max(1e-3);
            assert!(max_diff(g, w) <= 0.03 * scale, "rank {rank}: leaf {i}: {g} vs {w}");
            assert_eq!(
                g.to_vec::<f64>(),
                results[0].0[i].to_vec::<f64>(),
                "rank {rank} differs from rank 0"
            );
        }
    }
}
