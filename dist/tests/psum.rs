//! `psum`, the differentiable sum across ranks (ranks as threads): its value, its derivatives
//! in both modes (the cotangent of every rank's input is the sum of the ranks' cotangents, as
//! in JAX), a cross-rank standardisation whose gradients equal the single-process ones on the
//! whole batch, half precision, and replays under `jit`.

mod common;

use common::{max_diff, on_ranks, rows};
use nabla_core::{DType, Jit, Tensor};
use nabla_dist::psum;

/// Rank `r`'s values: `[r + 1, 2 (r + 1), ..]`, four of them.
fn rank_values(r: usize) -> Tensor {
    Tensor::from_vec((1..=4).map(|i| (i * (r + 1)) as f64).collect(), &[4])
}

#[test]
fn psum_sums_over_the_ranks_and_sends_cotangents_and_tangents_through_the_same_sum() {
    let results = on_ranks(3, |group| {
        let r = group.rank();
        let x = rank_values(r);
        let value = psum(&group, &x);
        // Each rank weights the sum with its own w_r: the gradient of w_r . psum(x) with respect
        // to x_r is psum(w), the same on every rank.
        let w = Tensor::from_vec(vec![1.0 + r as f64, -1.0, 0.5 * r as f64, 2.0], &[4]);
        let g = nabla_core::grad(|x: &Tensor| (psum(&group, x) * &w).sum_all())(&x);
        let t = Tensor::from_vec(vec![r as f64, 1.0, 0.0, -1.0], &[4]);
        let (_, tangent) = nabla_core::jvp(|x: &Tensor| psum(&group, x) * 2.0, &x, &t);
        (value.to_vec::<f64>(), g.to_vec::<f64>(), tangent.to_vec::<f64>())
    });
    for (r, (value, g, tangent)) in results.iter().enumerate() {
        assert_eq!(value, &vec![6.0, 12.0, 18.0, 24.0], "rank {r}: value");
        assert_eq!(g, &vec![6.0, -3.0, 1.5, 6.0], "rank {r}: gradient is psum(w)");
        assert_eq!(tangent, &vec![6.0, 6.0, 0.0, -6.0], "rank {r}: tangent is 2 psum(t)");
    }
}

/// `x` standardised with the mean and variance of all of `x`'s rows (the batch statistics of a
/// normalisation), weighted by `w`: its loss summed over rows.
fn standardised_loss(x: &Tensor, w: &Tensor, sum: &dyn Fn(&Tensor) -> Tensor, count: f64) -> Tensor {
    let mean = sum(&x.sum(0, true)) / count;
    let centred = x - &mean;
    let var = sum(&centred.square().sum(0, true)) / count;
    ((centred * (var + 1e-5).rsqrt()).tanh() * w).sum_all()
}

#[test]
fn statistics_summed_across_ranks_give_the_gradients_of_the_whole_batch() {
    let n = 10;
    let x = nabla_core::Rng::new(3).normal(&[n, 3], 0.5, 2.0, DType::F64);
    let w = nabla_core::Rng::new(4).normal(&[n, 3], 0.0, 1.0, DType::F64);
    let local = |t: &Tensor| t.clone();
    let whole = nabla_core::grad(|x: &Tensor| standardised_loss(x, &w, &local, n as f64))(&x);
    // Uneven shards of 3, 3 and 4 rows: each rank differentiates its rows' share of the loss;
    // the cotangents of the statistics travel back through psum.
    let bounds = [0, 3, 6, 10];
    let parts = on_ranks(3, |group| {
        let r = group.rank();
        let (xs, ws) = (rows(&x, bounds[r]..bounds[r + 1]), rows(&w, bounds[r]..bounds[r + 1]));
        let sum = |t: &Tensor| psum(&group, t);
        nabla_core::grad(|x: &Tensor| standardised_loss(x, &ws, &sum, n as f64))(&xs)
    });
    let joined = nabla_core::concatenate(&parts, 0);
    assert!(max_diff(&joined, &whole) < 1e-12, "{}", max_diff(&joined, &whole));
    // Without the sum across ranks, each shard would be standardised alone: a different result.
    let alone = nabla_core::grad(|x: &Tensor| standardised_loss(x, &rows(&w, 0..3), &local, 3.0))(&rows(&x, 0..3));
    assert!(max_diff(&alone, &rows(&whole, 0..3)) > 1e-3);
}

#[test]
fn half_precision_is_summed_in_f32_and_comes_back_in_its_dtype() {
    let results = on_ranks(2, |group| {
        let x = Tensor::from_vec(vec![1.0f32 + 2f32.powi(-8) * group.rank() as f32, 256.0], &[2]).cast(DType::BF16);
        let s = psum(&group, &x);
        (s.dtype(), s.cast(DType::F32).to_vec::<f32>())
    });
    for (dtype, values) in results {
        assert_eq!(dtype, DType::BF16);
        assert_eq!(values, vec![2.0, 512.0]);
    }
}

#[test]
fn psum_in_a_jitted_step_runs_on_every_replay() {
    let results = on_ranks(2, |group| {
        let step = Jit::new(|x: &Tensor| nabla_core::grad(|x: &Tensor| psum(&group, x).square().sum_all())(x));
        let mut out = Vec::new();
        for k in 0..3 {
            let x = Tensor::from_vec(vec![(k + group.rank()) as f64, 1.0], &[2]);
            out.push(step.call(&x).to_vec::<f64>());
        }
        let info = step.cache_info();
        assert!(info.eager.is_empty() && info.replays == 2, "{info:?}");
        out
    });
    for values in results {
        // d/dx_r of |psum(x)|^2 summed over ranks' losses: 2 psum(psum(x)) = 2 * 2 * psum(x).
        let want: Vec<Vec<f64>> = (0..3).map(|k| vec![4.0 * (2 * k + 1) as f64, 8.0]).collect();
        assert_eq!(values, want);
    }
}

#[test]
fn psum_refuses_integers_by_name() {
    let group = nabla_dist::ProcessGroup::single();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        psum(&group, &Tensor::from_vec(vec![1i64, 2], &[2]))
    }));
    let msg = err.unwrap_err();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("psum") && msg.contains("i64") && msg.contains("[2]"),
        "{msg}"
    );
}
