//! `BatchNorm` against PyTorch's `batch_norm` (fixtures from ci/gen_batch_norm_fixtures.py, f64):
//! the training output, the running statistics after a step, the gradients of the input, the
//! scale and the shift, and evaluation with the updated statistics. Then gradients and a
//! Hessian-vector product against finite differences, half precision, jit replays, and the
//! messages for inputs that do not fit.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use common::panic_message;
use nabla_core::{self as nb, DType, Jit, Rng, Tensor};
use nabla_nn::{BatchNorm, BatchStats};
use serde_json::Value;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    (a.cast(DType::F64) - b.cast(DType::F64)).abs().max_all().item::<f64>()
}

fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data: Vec<f64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap())
        .collect();
    Tensor::from_vec(data, &shape)
}

fn cases() -> Vec<Value> {
    let text = include_str!("fixtures/batch_norm.json");
    let all: Value = serde_json::from_str(text).unwrap();
    all["cases"].as_array().unwrap().clone()
}

/// The layer and statistics of a fixture case.
fn layer_of(case: &Value) -> (BatchNorm, BatchStats) {
    let i = &case["inputs"];
    let layer = BatchNorm {
        gamma: tensor(&i["gamma"]),
        beta: tensor(&i["beta"]),
        eps: case["eps"].as_f64().unwrap(),
        momentum: case["momentum"].as_f64().unwrap(),
    };
    let stats = BatchStats {
        mean: tensor(&i["running_mean"]),
        var: tensor(&i["running_var"]),
    };
    (layer, stats)
}

#[test]
fn training_and_evaluation_match_pytorch() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let (layer, stats) = layer_of(&case);
        let (i, o) = (&case["inputs"], &case["outputs"]);
        let (x, w) = (tensor(&i["x"]), tensor(&i["weights"]));
        let (y, new) = layer.forward_train(&x, &stats);
        assert!(max_diff(&y, &tensor(&o["y"])) < 1e-12, "{name}: y");
        assert!(
            max_diff(&new.mean, &tensor(&o["new_mean"])) < 1e-12,
            "{name}: running mean"
        );
        assert!(
            max_diff(&new.var, &tensor(&o["new_var"])) < 1e-12,
            "{name}: running var"
        );
        assert!(!new.mean.is_traced() && !new.var.is_traced());
        let loss = |(x, layer): &(Tensor, BatchNorm)| (layer.forward_train(x, &stats).0 * &w).sum_all();
        let (gx, gl) = nb::grad(loss)(&(x.clone(), layer.clone()));
        assert!(max_diff(&gx, &tensor(&o["grad_x"])) < 1e-11, "{name}: grad x");
        assert!(
            max_diff(&gl.gamma, &tensor(&o["grad_gamma"])) < 1e-11,
            "{name}: grad gamma"
        );
        assert!(
            max_diff(&gl.beta, &tensor(&o["grad_beta"])) < 1e-11,
            "{name}: grad beta"
        );
        let y_eval = layer.forward_eval(&tensor(&i["x_eval"]), &new);
        assert!(max_diff(&y_eval, &tensor(&o["y_eval"])) < 1e-12, "{name}: eval");
        // The synced form with the identity as the sum over ranks is the same computation.
        let (ys, news) = layer.forward_train_synced(&x, &stats, &nabla_core::CrossRankSum::identity());
        assert!(
            max_diff(&ys, &y) < 1e-12 && max_diff(&news.var, &new.var) < 1e-12,
            "{name}: synced"
        );
    }
}

#[test]
fn gradients_and_second_derivatives_match_finite_differences() {
    let mut rng = Rng::new(5);
    let x = rng.normal(&[3, 2, 2, 2], 0.3, 1.2, DType::F64);
    let w = rng.normal(&[3, 2, 2, 2], 0.0, 1.0, DType::F64);
    let (mut layer, stats) = BatchNorm::new(2, DType::F64);
    layer.gamma = Tensor::from_vec(vec![1.3, 0.7], &[2]);
    // A loss that is not linear in y, so that the Hessian is not only the normalisation's.
    let f = |x: &Tensor| (layer.forward_train(x, &stats).0 * &w).tanh().sum_all();
    let g = nb::grad(f)(&x);
    let v = rng.normal(&[3, 2, 2, 2], 0.0, 1.0, DType::F64);
    let h = 1e-6;
    let fd = (f(&(&x + &(&v * h))) - f(&(&x - &(&v * h)))) / (2.0 * h);
    let directional = (&g * &v).sum_all();
    assert!(
        max_diff(&fd, &directional) < 1e-7,
        "gradient . v: {} vs {}",
        fd.item::<f64>(),
        directional.item::<f64>()
    );
    // Hessian-vector products, forward over reverse and reverse over reverse, against a
    // central difference of the gradient.
    let (_, hv) = nb::jvp(nb::grad(f), &x, &v);
    let hv_rev = nb::grad(|x: &Tensor| (nb::grad(f)(x) * &v).sum_all())(&x);
    let fd_hv = (nb::grad(f)(&(&x + &(&v * h))) - nb::grad(f)(&(&x - &(&v * h)))) / (2.0 * h);
    assert!(max_diff(&hv, &fd_hv) < 1e-6, "Hv: {}", max_diff(&hv, &fd_hv));
    assert!(
        max_diff(&hv_rev, &hv) < 1e-10,
        "Hv both ways: {}",
        max_diff(&hv_rev, &hv)
    );
}

#[test]
fn half_precision_inputs_keep_f32_statistics_and_agree_with_f32() {
    let x = Rng::new(7).normal(&[8, 4, 3, 3], 1.0, 2.0, DType::F32);
    let (layer, stats) = BatchNorm::new(4, DType::F32);
    let (half, half_stats) = BatchNorm::new(4, DType::BF16);
    assert_eq!((half.gamma.dtype(), half_stats.mean.dtype()), (DType::BF16, DType::F32));
    let (y, new) = layer.forward_train(&x, &stats);
    let (yh, newh) = half.forward_train(&x.cast(DType::BF16), &half_stats);
    assert_eq!(
        (yh.dtype(), newh.mean.dtype(), newh.var.dtype()),
        (DType::BF16, DType::F32, DType::F32)
    );
    // The input's rounding to bf16 (8 bits) dominates: outputs within a few of its units.
    assert!(max_diff(&yh, &y) < 0.05, "{}", max_diff(&yh, &y));
    assert!(max_diff(&newh.mean, &new.mean) < 0.01 && max_diff(&newh.var, &new.var) < 0.02);
    let eval = half.forward_eval(&x.cast(DType::BF16), &newh);
    assert_eq!(eval.dtype(), DType::BF16);
    assert!(max_diff(&eval, &layer.forward_eval(&x, &new)) < 0.05);
}

#[test]
fn a_jitted_training_step_updates_the_statistics_on_every_replay() {
    let (layer, stats) = BatchNorm::new(3, DType::F64);
    let step = |(layer, stats, x): &(BatchNorm, BatchStats, Tensor)| {
        let ((_, new), g) = nb::value_and_grad_with_aux(|l: &BatchNorm| {
            let (y, new) = l.forward_train(x, stats);
            (y.square().mean_all(), new)
        })(layer);
        (g, new)
    };
    let jitted = Jit::new(step);
    let (mut eager_stats, mut jit_stats) = (stats.clone(), stats.clone());
    for k in 0..4 {
        let x = Rng::new(k).normal(&[5, 3], k as f64, 1.0 + k as f64, DType::F64);
        let (ge, ne) = step(&(layer.clone(), eager_stats.clone(), x.clone()));
        let (gj, nj) = jitted.call(&(layer.clone(), jit_stats.clone(), x));
        assert!(max_diff(&ge.gamma, &gj.gamma) < 1e-12, "step {k}: gamma gradient");
        assert!(
            max_diff(&ne.mean, &nj.mean) < 1e-12 && max_diff(&ne.var, &nj.var) < 1e-12,
            "step {k}: stats"
        );
        (eager_stats, jit_stats) = (ne, nj);
    }
    assert_eq!(jitted.cache_info().replays, 3);
    // Four batches with means 0..3 moved the running mean off zero.
    assert!(eager_stats.mean.max_all().item::<f64>() > 0.5);
}

#[test]
fn inputs_that_do_not_fit_are_refused_with_their_shapes() {
    let (layer, stats) = BatchNorm::new(3, DType::F32);
    let msg = panic_message(|| {
        layer.forward_train(&Tensor::zeros(&[4, 5, 2, 2], DType::F32), &stats);
    });
    assert!(
        msg.contains("forward_train") && msg.contains("[4, 5, 2, 2]") && msg.contains("[N, 3, ...]"),
        "{msg}"
    );
    let msg = panic_message(|| {
        layer.forward_train(&Tensor::zeros(&[1, 3], DType::F32), &stats);
    });
    assert!(
        msg.contains("1 value per channel") && msg.contains("at least 2"),
        "{msg}"
    );
    let msg = panic_message(|| {
        layer.forward_eval(&Tensor::zeros(&[3], DType::F32), &stats);
    });
    assert!(msg.contains("forward_eval") && msg.contains("[3]"), "{msg}");
    let wrong = BatchStats {
        mean: Tensor::zeros(&[4], DType::F32),
        var: stats.var.clone(),
    };
    let msg = panic_message(|| {
        layer.forward_eval(&Tensor::zeros(&[2, 3], DType::F32), &wrong);
    });
    assert!(msg.contains("stats.mean") && msg.contains("[4]"), "{msg}");
}
