//! `cross_entropy_with`'s options against PyTorch (`ci/gen_cross_entropy_fixtures.py` wrote
//! `fixtures/cross_entropy_options.json`): ignore_index, label smoothing and the three
//! reductions, integer and probability labels, classes on the last axis of rank 2 and 3 logits;
//! the loss and the gradient of `sum(loss * weight)`, in f64 and f32. Then the messages for
//! misuse, and that the fused rows still serve the options (one node each way).

use nabla_core as nb;
use nb::{CrossEntropyOptions, DType, Reduction, Tensor};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn shape(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect()
}

fn options(c: &Value) -> CrossEntropyOptions {
    CrossEntropyOptions {
        ignore_index: c["ignore_index"].as_i64(),
        label_smoothing: c["label_smoothing"].as_f64().unwrap(),
        reduction: match c["reduction"].as_str().unwrap() {
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            _ => Reduction::None,
        },
    }
}

fn close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "{name}: element {i}: got {g}, want {w}");
    }
}

#[test]
fn options_match_pytorch_in_f64_and_f32() {
    let text = include_str!("fixtures/cross_entropy_options.json");
    let fixtures: Value = serde_json::from_str(text).unwrap();
    let cases = fixtures["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let x64 = Tensor::from_vec(floats(&c["logits"]["data"]), &shape(&c["logits"]));
        let labels = if c["labels"]["dtype"] == "i64" {
            let v: Vec<i64> = c["labels"]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            Tensor::from_vec(v, &shape(&c["labels"]))
        } else {
            Tensor::from_vec(floats(&c["labels"]["data"]), &shape(&c["labels"]))
        };
        let opts = options(c);
        let want_loss = floats(&c["loss"]["data"]);
        let want_grad = floats(&c["grad"]);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            let x = x64.cast(dtype);
            let labels = if labels.dtype() == DType::I64 {
                labels.clone()
            } else {
                labels.cast(dtype)
            };
            let w = Tensor::from_vec(floats(&c["weight"]), &shape(&c["loss"])).cast(dtype);
            let loss = nb::cross_entropy_with(&x, &labels, opts);
            assert_eq!(loss.shape(), &shape(&c["loss"])[..], "{name}: loss shape");
            let what = format!("{name} {dtype}");
            close(
                &format!("{what} loss"),
                &loss.cast(DType::F64).to_vec::<f64>(),
                &want_loss,
                tol,
            );
            let g =
                nb::grad(|x: &Tensor| (nb::cross_entropy_with(x, &labels, opts) * &w).sum(nb::Axes::All, false))(&x);
            close(
                &format!("{what} grad"),
                &g.cast(DType::F64).to_vec::<f64>(),
                &want_grad,
                tol,
            );
        }
    }
}

#[test]
fn the_default_options_are_cross_entropy() {
    let x = Tensor::from_vec((0..12).map(|v| (v as f64 * 0.7).sin()).collect::<Vec<_>>(), &[4, 3]);
    let y = Tensor::from_vec(vec![0i64, 2, -1, 1], &[4]);
    let a = nb::cross_entropy(&x, &y).item::<f64>();
    let b = nb::cross_entropy_with(&x, &y, CrossEntropyOptions::default()).item::<f64>();
    assert_eq!(a, b);
    // Sum is rows times the mean; none gives the rows.
    let opts = |reduction| CrossEntropyOptions {
        reduction,
        ..Default::default()
    };
    let sum = nb::cross_entropy_with(&x, &y, opts(Reduction::Sum)).item::<f64>();
    assert!((sum - 4.0 * a).abs() < 1e-12);
    let rows = nb::cross_entropy_with(&x, &y, opts(Reduction::None));
    assert_eq!(rows.shape(), &[4]);
    assert!((rows.to_vec::<f64>().iter().sum::<f64>() - sum).abs() < 1e-12);
}

#[test]
fn ignored_rows_keep_the_fused_rows_one_node_each_way() {
    let x = Tensor::from_vec((0..20).map(|v| (v as f64 * 0.3).cos()).collect::<Vec<_>>(), &[4, 5]);
    let y = Tensor::from_vec(vec![1i64, -100, 4, 0], &[4]);
    let opts = CrossEntropyOptions {
        ignore_index: Some(-100),
        ..Default::default()
    };
    let graph = nb::trace_graph(
        |xs| {
            let (l, g) = nb::value_and_grad(|x: &Tensor| nb::cross_entropy_with(x, &y, opts))(&xs[0]);
            vec![l, g]
        },
        &[x],
    );
    assert_eq!(graph.matches("= cross_entropy_rows(").count(), 1, "{graph}");
    assert_eq!(graph.matches("cross_entropy_rows_backward").count(), 1, "{graph}");
}

fn panic_message(f: impl FnOnce() -> Tensor) -> String {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("should panic");
    err.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[test]
fn misuse_is_refused_with_a_message() {
    let x = Tensor::zeros(&[2, 3], DType::F32);
    let y = Tensor::from_vec(vec![0i64, 1], &[2]);
    let smooth = |s| CrossEntropyOptions {
        label_smoothing: s,
        ..Default::default()
    };
    let m = panic_message(|| nb::cross_entropy_with(&x, &y, smooth(1.5)));
    assert!(m.contains("label_smoothing must be in [0, 1], got 1.5"), "{m}");
    let probs = Tensor::zeros(&[2, 3], DType::F32);
    let ignoring = CrossEntropyOptions {
        ignore_index: Some(-100),
        ..Default::default()
    };
    let m = panic_message(|| nb::cross_entropy_with(&x, &probs, ignoring));
    assert!(m.contains("ignore_index (-100) applies to integer labels"), "{m}");
    // A label that is neither a class nor the ignored one is still an error.
    let bad = Tensor::from_vec(vec![0i64, -7], &[2]);
    let m = panic_message(|| nb::cross_entropy_with(&x, &bad, ignoring));
    assert!(m.contains("cross_entropy: index -7 is out of range"), "{m}");
}
