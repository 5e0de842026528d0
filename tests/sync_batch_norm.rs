//! Synchronised batch normalisation (`BatchNorm::forward_train_synced` with
//! `nb::dist::cross_rank_sum`) over ranks that are threads: every rank's output, input gradient
//! and running statistics are those of one process holding the whole batch, and the parameter
//! gradients summed (or, with equal shards, averaged by `DataParallel` inside `backward`) are
//! the whole batch's; through the fused primitive (one collective each way), through the
//! composition (under `vmap`), and for second derivatives.

#[path = "../dist/tests/common/mod.rs"]
mod common;

use common::{max_diff, on_ranks, rows};
use nabla::dist::{DataParallel, cross_rank_sum};
use nabla::nn::{BatchNorm, BatchStats};
use nabla::{DType, Rng, Tensor, Tree};

/// A layer with a non-trivial scale and shift, its fresh statistics, images [10, 3, 4, 4] and
/// loss weights of their shape.
fn setup() -> (BatchNorm, BatchStats, Tensor, Tensor) {
    let (mut layer, stats) = BatchNorm::new(3, DType::F64);
    layer.gamma = Tensor::from_vec(vec![1.2, 0.8, -0.5], &[3]);
    layer.beta = Tensor::from_vec(vec![0.1, -0.3, 0.0], &[3]);
    let x = Rng::new(11).normal(&[10, 3, 4, 4], 0.5, 2.0, DType::F64);
    let w = Rng::new(12).normal(&[10, 3, 4, 4], 0.0, 1.0, DType::F64);
    (layer, stats, x, w)
}

/// The share of `sum(tanh(y) w) / n` that `x`'s rows carry.
fn share(y: &Tensor, w: &Tensor, n: usize) -> Tensor {
    (y.tanh() * w).sum_all() / n as f64
}

#[test]
fn uneven_shards_normalise_with_the_global_batch_and_sum_to_its_gradients() {
    let (layer, stats, x, w) = setup();
    let n = 10;
    let (y_all, stats_all) = layer.forward_train(&x, &stats);
    let (gx_all, gl_all) = nabla::grad(|(x, l): &(Tensor, BatchNorm)| share(&l.forward_train(x, &stats).0, &w, n))(&(
        x.clone(),
        layer.clone(),
    ));
    let bounds = [0, 2, 5, 10];
    let results = on_ranks(3, |group| {
        let r = group.rank();
        let (xs, ws) = (rows(&x, bounds[r]..bounds[r + 1]), rows(&w, bounds[r]..bounds[r + 1]));
        let sum = cross_rank_sum(&group);
        let (y, new) = layer.forward_train_synced(&xs, &stats, &sum);
        // Each rank differentiates its share of the global loss; the shares' gradients sum.
        let (gx, gl) =
            nabla::grad(|(x, l): &(Tensor, BatchNorm)| share(&l.forward_train_synced(x, &stats, &sum).0, &ws, n))(&(
                xs.clone(),
                layer.clone(),
            ));
        let gl = nabla::dist::all_reduce_weighted(&group, &gl, 1.0).unwrap();
        (y, new, gx, gl)
    });
    for (r, (y, new, gx, gl)) in results.iter().enumerate() {
        let range = bounds[r]..bounds[r + 1];
        assert!(max_diff(y, &rows(&y_all, range.clone())) < 1e-12, "rank {r}: output");
        assert!(max_diff(gx, &rows(&gx_all, range)) < 1e-12, "rank {r}: input gradient");
        assert!(max_diff(&new.mean, &stats_all.mean) < 1e-12, "rank {r}: running mean");
        assert!(
            max_diff(&new.var, &stats_all.var) < 1e-12,
            "rank {r}: running var (unbiased over 160 values)"
        );
        assert!(max_diff(&gl.gamma, &gl_all.gamma) < 1e-12, "rank {r}: gamma gradient");
        assert!(max_diff(&gl.beta, &gl_all.beta) < 1e-12, "rank {r}: beta gradient");
    }
    // Unsynced, a rank normalises its shard alone: another output.
    let (alone, _) = layer.forward_train(&rows(&x, 0..2), &stats);
    assert!(max_diff(&alone, &rows(&y_all, 0..2)) > 1e-2);
}

#[test]
fn under_data_parallel_backward_equal_shards_average_to_the_whole_batch_gradient() {
    // PyTorch's SyncBatchNorm under DDP: each rank's loss is the mean over its shard, and
    // DataParallel averages the gradients; psum's backward runs inside the sweep on the group
    // while the gradient buckets travel on the wrapper's duplicate of it.
    let (layer, stats, x, w) = setup();
    let gl_all = nabla::grad(|l: &BatchNorm| share(&l.forward_train(&x, &stats).0, &w, 10))(&layer);
    let results = on_ranks(2, |group| {
        let r = group.rank();
        let (dp, layer) = DataParallel::new(&group, &layer).unwrap();
        let tracked = dp.track(&layer);
        let (xs, ws) = (rows(&x, 5 * r..5 * r + 5), rows(&w, 5 * r..5 * r + 5));
        let (y, new) = tracked.forward_train_synced(&xs, &stats, &cross_rank_sum(&group));
        share(&y, &ws, 5).backward();
        (dp.grads(&tracked), new)
    });
    for (r, (g, new)) in results.iter().enumerate() {
        assert!(max_diff(&g.gamma, &gl_all.gamma) < 1e-12, "rank {r}: gamma");
        assert!(max_diff(&g.beta, &gl_all.beta) < 1e-12, "rank {r}: beta");
        assert_eq!(
            new.mean.to_vec::<f64>(),
            results[0].1.mean.to_vec::<f64>(),
            "rank {r}: same statistics"
        );
        assert_eq!(g.leaves().len(), 2);
    }
}

#[test]
fn the_fused_primitive_runs_where_the_backend_has_the_kernels() {
    let (layer, stats, x, _) = setup();
    let results = on_ranks(2, |group| {
        let sum = cross_rank_sum(&group);
        nabla::trace_graph(
            |t| vec![layer.forward_train_synced(&t[0], &stats, &sum).0],
            &[rows(&x, 5 * group.rank()..5 * group.rank() + 5)],
        )
    });
    for graph in results {
        assert!(graph.contains("batch_norm_synced(axis=1"), "{graph}");
        // One node: no composed statistics (their sums and squares) in the graph.
        assert!(!graph.contains("square"), "{graph}");
    }
}

#[test]
fn second_derivatives_on_uneven_shards_are_the_whole_batch_ones() {
    // Forward over reverse (a Hessian-vector product in x) and reverse over reverse (the
    // gradient of the gradient's norm in gamma): both go through the composition, with its
    // collectives, on every rank.
    let (layer, stats, x, w) = setup();
    let n = 10;
    let v = Rng::new(13).normal(&[10, 3, 4, 4], 0.0, 1.0, DType::F64);
    let loss = |x: &Tensor, l: &BatchNorm, w: &Tensor, y: &dyn Fn(&Tensor, &BatchNorm) -> Tensor| share(&y(x, l), w, n);
    let local = |x: &Tensor, l: &BatchNorm| l.forward_train(x, &stats).0;
    let hvp_all = nabla::jvp(
        |x: &Tensor| nabla::grad(|x: &Tensor| loss(x, &layer, &w, &local))(x),
        &x,
        &v,
    )
    .1;
    let gg_all = nabla::grad(|l: &BatchNorm| {
        let g = nabla::grad(|x: &Tensor| loss(x, l, &w, &local))(&x);
        g.square().sum_all()
    })(&layer);
    let bounds = [0, 3, 4, 10];
    let results = on_ranks(3, |group| {
        let r = group.rank();
        let range = bounds[r]..bounds[r + 1];
        let (xs, ws, vs) = (rows(&x, range.clone()), rows(&w, range.clone()), rows(&v, range));
        let sum = cross_rank_sum(&group);
        let synced = |x: &Tensor, l: &BatchNorm| l.forward_train_synced(x, &stats, &sum).0;
        let hvp = nabla::jvp(
            |x: &Tensor| nabla::grad(|x: &Tensor| loss(x, &layer, &ws, &synced))(x),
            &xs,
            &vs,
        )
        .1;
        // The squared norm of the whole input gradient is the sum of the ranks' parts.
        let gg = nabla::grad(|l: &BatchNorm| {
            let g = nabla::grad(|x: &Tensor| loss(x, l, &ws, &synced))(&xs);
            g.square().sum_all()
        })(&layer);
        (hvp, nabla::dist::all_reduce_weighted(&group, &gg, 1.0).unwrap())
    });
    for (r, (hvp, gg)) in results.iter().enumerate() {
        assert!(
            max_diff(hvp, &rows(&hvp_all, bounds[r]..bounds[r + 1])) < 1e-11,
            "rank {r}: hvp"
        );
        assert!(max_diff(&gg.gamma, &gg_all.gamma) < 1e-11, "rank {r}: gamma");
        assert!(max_diff(&gg.beta, &gg_all.beta) < 1e-11, "rank {r}: beta");
    }
}

#[test]
fn under_vmap_the_composition_gives_the_fused_values() {
    // vmap over a leading axis of two batches: the op composes (two collectives each way).
    let (layer, stats, x, _) = setup();
    let xs = nabla::stack(&[x.clone(), &x * 0.5 + 1.0], 0);
    let results = on_ranks(2, |group| {
        let r = group.rank();
        let sum = cross_rank_sum(&group);
        let mine = xs.slice_axis(1, Some(5 * r as isize), Some(5 * r as isize + 5), 1);
        let batched = nabla::vmap(|x: &Tensor| layer.forward_train_synced(x, &stats, &sum).0)(&mine);
        let fused: Vec<Tensor> = (0..2)
            .map(|b| layer.forward_train_synced(&mine.index_axis(0, b), &stats, &sum).0)
            .collect();
        (batched, nabla::stack(&fused, 0))
    });
    for (r, (batched, fused)) in results.iter().enumerate() {
        assert!(max_diff(batched, fused) < 1e-12, "rank {r}");
    }
}
