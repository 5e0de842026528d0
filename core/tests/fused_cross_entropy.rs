//! Cross-entropy against integer labels, one fused primitive forward and one backward: the
//! loss and its gradient against an f64 loop in every float dtype (labels counted from either
//! end, rows on both sides of the size where the CPU splits rows across threads), the loss to
//! the bit of the composition, one node each way in a traced program, per-row cotangents
//! under vmap, the composition where labels and logits are batched differently, and jit
//! replays that check each new batch of labels. Derivatives of every order are in the fixture
//! matrix (`derivatives.rs`, `jax_reference.rs`).

mod common;

use common::hashed_values as inputs;
use nabla_core as nb;
use nb::{Axes, DType, Tensor};

/// Labels for `rows` rows of `cols` classes, every third counted from the end (negative).
fn labels(rows: usize, cols: usize) -> Vec<i64> {
    (0..rows)
        .map(|r| {
            let c = (r * 7 + 3) % cols;
            if r % 3 == 2 { c as i64 - cols as i64 } else { c as i64 }
        })
        .collect()
}

/// The loss of every row and the gradient of `sum(loss * g)`, in f64.
fn reference(x: &[f64], labels: &[i64], g: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut loss, mut grad) = (Vec::new(), Vec::new());
    for ((row, &l), &gr) in x.chunks(cols).zip(labels).zip(g) {
        let l = l.rem_euclid(cols as i64) as usize;
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let lse = row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + m;
        loss.push(lse - row[l]);
        grad.extend(
            row.iter()
                .enumerate()
                .map(|(j, v)| ((v - lse).exp() - (j == l) as u8 as f64) * gr),
        );
    }
    (loss, grad)
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 4e-6,
        DType::F16 => 4e-3,
        _ => 3e-2,
    }
}

fn check(name: &str, dtype: DType, got: &Tensor, want: &[f64], scale: f64) {
    assert_eq!(got.dtype(), dtype, "{name}: dtype");
    let got = got.cast(DType::F64).to_vec::<f64>();
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = tolerance(dtype) * (scale + w.abs());
        assert!(
            (g - w).abs() <= tol,
            "{name}: element {i}: got {g}, want {w} (tolerance {tol})"
        );
    }
}

#[test]
fn loss_and_gradient_match_an_f64_loop_in_every_float_dtype() {
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        for (rows, cols) in [(3usize, 7usize), (6, 17), (5000, 10), (2, 40_000)] {
            let x = Tensor::from_vec(inputs(rows * cols, (rows + cols) as u64), &[rows, cols]).cast(dtype);
            let l = labels(rows, cols);
            let y = Tensor::from_vec(l.clone(), &[rows]);
            let held = x.cast(DType::F64).to_vec::<f64>();
            // Per-row losses, and a cotangent that differs per row: vmap over the examples.
            let per_row = nb::vmap(|(x, y): &(Tensor, Tensor)| nb::cross_entropy(x, y));
            let g: Vec<f64> = (0..rows).map(|r| 0.5 + (r % 5) as f64 * 0.25).collect();
            let gt = Tensor::from_vec(g.clone(), &[rows]).cast(dtype);
            let (loss, pullback) = nb::vjp(|x: &Tensor| per_row(&(x.clone(), y.clone())), &x);
            let (want_loss, want_grad) = reference(&held, &l, &g, cols);
            let name = format!("[{rows}, {cols}] {dtype}");
            check(&format!("loss {name}"), dtype, &loss, &want_loss, 1.0);
            check(&format!("grad {name}"), dtype, &pullback(&gt), &want_grad, 1e-3);
            // The mean over rows, and its gradient (every row's cotangent 1 / rows).
            let mean = nb::cross_entropy(&x, &y);
            let m = want_loss.iter().sum::<f64>() / rows as f64;
            check(&format!("mean {name}"), dtype, &mean, &[m], 1.0);
            let g_mean = nb::grad(|x: &Tensor| nb::cross_entropy(x, &y))(&x);
            let (_, want) = reference(&held, &l, &vec![1.0 / rows as f64; rows], cols);
            check(
                &format!("grad of mean {name}"),
                dtype,
                &g_mean,
                &want,
                1.0 / rows as f64,
            );
        }
    }
}

#[test]
fn the_loss_is_the_compositions_to_the_bit() {
    for dtype in [DType::F64, DType::F32] {
        let (rows, cols) = (64, 33);
        let x = Tensor::from_vec(inputs(rows * cols, 4), &[4, 16, cols]).cast(dtype);
        let y = Tensor::from_vec(labels(rows, cols), &[4, 16]);
        let composed = -x
            .log_softmax(-1)
            .take_along_axis(&y.expand_dims(-1), -1)
            .mean(Axes::All, false);
        assert_eq!(
            nb::cross_entropy(&x, &y).cast(DType::F64).item::<f64>(),
            composed.cast(DType::F64).item::<f64>(),
            "{dtype}"
        );
    }
}

#[test]
fn each_direction_is_one_node_in_a_traced_program() {
    let x = Tensor::from_vec(inputs(4 * 5, 2), &[4, 5]);
    let y = Tensor::from_vec(labels(4, 5), &[4]);
    let graph = nb::trace_graph(
        |xs| {
            let (loss, g) = nb::value_and_grad(|x: &Tensor| nb::cross_entropy(x, &y))(&xs[0]);
            vec![loss, g]
        },
        &[x],
    );
    assert_eq!(graph.matches("= cross_entropy_rows(").count(), 1, "{graph}");
    assert_eq!(graph.matches("cross_entropy_rows_backward").count(), 1, "{graph}");
    for composed in ["log_softmax", "scatter", "one_hot", "take_along_axis"] {
        assert!(!graph.contains(composed), "no {composed} in the fused program: {graph}");
    }
}

#[test]
fn labels_batched_unlike_the_logits_take_the_composition_with_the_same_values() {
    // Logits per example, one set of labels for all: the rows are not aligned, so the op
    // composes; the values are those of a loop over the examples.
    let xs = Tensor::from_vec(inputs(3 * 4 * 6, 5), &[3, 4, 6]);
    let y = Tensor::from_vec(labels(4, 6), &[4]);
    let f = |x: &Tensor| nb::cross_entropy(x, &y);
    let batched = nb::vmap(f)(&xs).to_vec::<f64>();
    let looped: Vec<f64> = (0..3).map(|b| f(&xs.i(b)).item::<f64>()).collect();
    for (a, b) in batched.iter().zip(&looped) {
        assert!((a - b).abs() <= 1e-12, "{batched:?} vs {looped:?}");
    }
    // jacrev of the per-row losses: a vmapped cotangent over unbatched logits.
    let x = xs.i(0);
    let rows = |x: &Tensor| nb::vmap(|(x, y): &(Tensor, Tensor)| nb::cross_entropy(x, y))(&(x.clone(), y.clone()));
    let jac = nb::jacrev(rows)(&x);
    assert_eq!(jac.shape(), &[4, 4, 6]);
    let (_, want) = reference(&x.to_vec::<f64>(), &labels(4, 6), &[1.0; 4], 6);
    let jac = jac.to_vec::<f64>();
    for r in 0..4 {
        for r2 in 0..4 {
            for c in 0..6 {
                let w = if r == r2 { want[r * 6 + c] } else { 0.0 };
                let got = jac[(r * 4 + r2) * 6 + c];
                assert!((got - w).abs() <= 1e-12, "d loss[{r}] / d x[{r2}, {c}]: {got} vs {w}");
            }
        }
    }
}

#[test]
fn a_jit_replay_checks_each_new_batch_of_labels() {
    let step = nb::Jit::new(|(x, y): &(Tensor, Tensor)| nb::value_and_grad(|x: &Tensor| nb::cross_entropy(x, y))(x));
    let x = Tensor::from_vec(inputs(3 * 4, 6), &[3, 4]);
    for l in [[0i64, 1, 2], [3, -1, -4]] {
        let y = Tensor::from_vec(l.to_vec(), &[3]);
        let (loss, g) = step.call(&(x.clone(), y.clone()));
        let (want_loss, want_g) = nb::value_and_grad(|x: &Tensor| nb::cross_entropy(x, &y))(&x);
        assert_eq!(loss.item::<f64>(), want_loss.item::<f64>(), "labels {l:?}");
        assert_eq!(g.to_vec::<f64>(), want_g.to_vec::<f64>(), "labels {l:?}");
    }
    assert_eq!(step.cache_info().replays, 1);
    let bad = Tensor::from_vec(vec![0i64, 4, 1], &[3]);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step.call(&(x.clone(), bad))))
        .expect_err("label 4 of 4 classes");
    let m = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        m.contains("cross_entropy: index 4 is out of range for axis 1 of extent 4"),
        "{m}"
    );
}

#[test]
fn a_scalar_of_logits_is_refused_with_a_message() {
    let err = std::panic::catch_unwind(|| {
        nb::cross_entropy(&Tensor::from_vec(vec![1.0f32], &[]), &Tensor::from_vec(vec![0i64], &[]))
    })
    .expect_err("no class axis");
    let m = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(m.contains("cross_entropy: the logits need a class axis"), "{m}");
}
