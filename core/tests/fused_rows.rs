//! The fused softmax and log-softmax rows against a plain f64 loop: every float dtype, short
//! and long rows on both sides of the size where the CPU splits rows across threads, strided
//! inputs, masked (`-inf`) entries and non-finite rows, and that each call is one primitive in
//! a traced program; and their fused backward rows (one primitive, against an f64 loop, with
//! second derivatives equal to the composition's). Derivatives are in the fixture matrix (`derivatives.rs`, `jax_reference.rs`).

mod common;

use common::hashed_values as inputs;
use nabla_core as nb;
use nb::{DType, Tensor};

/// Softmax or log-softmax of every row of `x` (`cols` per row), in f64.
fn reference(x: &[f64], cols: usize, log: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let shift = if m.is_finite() || !log { m } else { 0.0 };
        let s: f64 = row.iter().map(|&v| (v - shift).exp()).sum();
        out.extend(row.iter().map(|&v| {
            if log {
                (v - shift) - s.ln()
            } else {
                (v - shift).exp() / s
            }
        }));
    }
    out
}

/// The largest error allowed for a value of magnitude `v` in `dtype`.
fn tolerance(dtype: DType, v: f64) -> f64 {
    let eps = match dtype {
        DType::F64 => 1e-13,
        DType::F32 => 2e-6,
        DType::F16 => 2e-3,
        _ => 1.6e-2,
    };
    eps * (1.0 + v.abs())
}

fn check(name: &str, dtype: DType, got: &Tensor, want: &[f64]) {
    assert_eq!(got.dtype(), dtype, "{name}: dtype");
    let got = got.cast(DType::F64).to_vec::<f64>();
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tolerance(dtype, w);
        assert!(ok, "{name}: element {i}: got {g}, want {w}");
    }
}

#[test]
fn rows_match_an_f64_loop_in_every_float_dtype_at_every_size() {
    // Short rows, a tail after the 8 lanes, one column, many rows (split across threads), and
    // rows longer than a thread's share.
    let shapes: [&[usize]; 6] = [&[3, 7], &[2, 3, 17], &[64, 1], &[5000, 10], &[2, 40_000], &[4, 0]];
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        for shape in shapes {
            let n: usize = shape.iter().product();
            let cols = *shape.last().unwrap();
            let x64 = Tensor::from_vec(inputs(n, n as u64), shape);
            let x = x64.cast(dtype);
            // The reference sees the values the dtype holds.
            let held = x.cast(DType::F64).to_vec::<f64>();
            for log in [false, true] {
                let got = if log { x.log_softmax(-1) } else { x.softmax(-1) };
                let name = format!("{}{shape:?} {dtype}", if log { "log_softmax" } else { "softmax" });
                check(&name, dtype, &got, &reference(&held, cols.max(1), log));
            }
        }
    }
}

#[test]
fn strided_inputs_and_other_axes_give_the_rows_of_a_copy() {
    let x = Tensor::from_vec(inputs(6 * 5 * 4, 3), &[6, 5, 4]);
    for log in [false, true] {
        let f = |t: &Tensor, axis: isize| if log { t.log_softmax(axis) } else { t.softmax(axis) };
        // A transposed view and a reversed view against their contiguous copies.
        let t = x.permute(&[2, 0, 1]);
        let want = f(&(&t + 0.0), -1).to_vec::<f64>();
        assert_eq!(f(&t, -1).to_vec::<f64>(), want, "permuted view, log {log}");
        let r = x.flip(2);
        assert_eq!(f(&r, -1).to_vec::<f64>(), f(&(&r + 0.0), -1).to_vec::<f64>(), "flipped");
        // Along axis 1: the rows of the tensor with that axis moved last, moved back.
        let moved = f(&x.moveaxis(1, -1), -1).moveaxis(-1, 1);
        assert_eq!(f(&x, 1).to_vec::<f64>(), moved.to_vec::<f64>(), "axis 1, log {log}");
        assert_eq!(f(&x, 1).shape(), &[6, 5, 4]);
    }
}

#[test]
fn masked_entries_get_zero_probability_and_zero_gradient() {
    let ninf = f64::NEG_INFINITY;
    let x = Tensor::from_vec(vec![1.0, ninf, 2.0, ninf, 0.5, 0.5, 0.5, 0.5], &[2, 4]);
    let p = x.softmax(-1).to_vec::<f64>();
    assert_eq!((p[1], p[3]), (0.0, 0.0));
    let want = reference(&x.to_vec::<f64>(), 4, false);
    check("masked softmax", DType::F64, &x.softmax(-1), &want);
    let lp = x.log_softmax(-1).to_vec::<f64>();
    assert_eq!((lp[1], lp[3]), (ninf, ninf));
    // The gradient of a weighted sum is finite, and zero at the masked entries.
    let w = Tensor::from_vec(vec![0.3, 1.0, -2.0, 0.7, 1.0, 2.0, 3.0, 4.0], &[2, 4]);
    let g = nb::grad(|x: &Tensor| (x.softmax(-1) * &w).sum(nb::Axes::All, false))(&x).to_vec::<f64>();
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    assert_eq!((g[1], g[3]), (0.0, 0.0));
}

#[test]
fn non_finite_rows_give_nan_as_jax_does() {
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    // A row of -inf only (everything masked) and a row with a NaN are NaN throughout, as
    // jax.nn.softmax gives; other rows are untouched.
    let x = Tensor::from_vec(vec![f64::NEG_INFINITY, f64::NEG_INFINITY, 1.0, nan, 0.0, 0.0], &[3, 2]);
    for log in [false, true] {
        let y = if log { x.log_softmax(-1) } else { x.softmax(-1) }.to_vec::<f64>();
        assert!(y[..4].iter().all(|v| v.is_nan()), "log {log}: {y:?}");
        let half = if log { -(2f64.ln()) } else { 0.5 };
        assert_eq!(&y[4..], &[half, half], "log {log}");
    }
    // +inf: log-softmax shifts by 0 as logsumexp does, so the finite entries are -inf.
    let y = Tensor::from_vec(vec![inf, 1.0], &[2]).log_softmax(0).to_vec::<f64>();
    assert!(y[0].is_nan() && y[1] == f64::NEG_INFINITY, "{y:?}");
}

#[test]
fn each_call_is_one_primitive_in_a_traced_program() {
    let x = Tensor::from_vec(inputs(12, 5), &[3, 4]);
    let graph = nb::trace_graph(|xs| vec![xs[0].softmax(-1), xs[0].log_softmax(-1)], &[x]);
    assert_eq!(graph.matches("softmax(axis=-1)").count(), 2, "{graph}");
    assert_eq!(
        graph.lines().filter(|l| l.contains(") : ")).count(),
        3,
        "leaf and two ops: {graph}"
    );
}

#[test]
fn rows_under_vmap_and_jit_match_the_eager_rows() {
    let x = Tensor::from_vec(inputs(4 * 3 * 6, 9), &[4, 3, 6]);
    let eager = x.log_softmax(-1).to_vec::<f64>();
    let per_example = nb::vmap(|t: &Tensor| t.log_softmax(-1))(&x);
    assert_eq!(per_example.to_vec::<f64>(), eager);
    // Along the example's first axis: the batch axis stays in front of the moved axis.
    let along0 = nb::vmap(|t: &Tensor| t.softmax(0))(&x);
    assert_eq!(along0.to_vec::<f64>(), x.softmax(1).to_vec::<f64>());
    let f = nb::Jit::new(|t: &Tensor| t.softmax(-1));
    for seed in [1u64, 2, 3] {
        let y = Tensor::from_vec(inputs(4 * 3 * 6, seed), &[4, 3, 6]);
        assert_eq!(f.call(&y).to_vec::<f64>(), y.softmax(-1).to_vec::<f64>(), "call {seed}");
    }
    assert_eq!((f.cache_info().compiled, f.cache_info().replays), (1, 2));
}

/// Layer normalisation of every row of `x` (`cols` per row), in f64.
fn layer_norm_reference(x: &[f64], cols: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        out.extend(row.iter().map(|v| (v - mean) / (var + eps).sqrt()));
    }
    out
}

#[test]
fn layer_norm_rows_match_an_f64_loop_along_any_one_axis() {
    let shapes: [&[usize]; 5] = [&[3, 7], &[2, 3, 17], &[5000, 10], &[2, 40_000], &[4, 0]];
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        for shape in shapes {
            let n: usize = shape.iter().product();
            let cols = *shape.last().unwrap();
            let x = Tensor::from_vec(inputs(n, n as u64 + 1), shape).cast(dtype);
            let held = x.cast(DType::F64).to_vec::<f64>();
            let want = layer_norm_reference(&held, cols.max(1), 1e-5);
            // Normalised values reach about 3 in magnitude: halves are checked relative to that.
            check(
                &format!("layer_norm{shape:?} {dtype}"),
                dtype,
                &x.layer_norm(-1, 1e-5),
                &want,
            );
        }
    }
    // Another axis: the rows of the tensor with that axis moved last, moved back; several axes
    // take the composition.
    let x = Tensor::from_vec(inputs(6 * 5 * 4, 8), &[6, 5, 4]);
    let moved = x.moveaxis(1, -1).layer_norm(-1, 1e-5).moveaxis(-1, 1);
    assert_eq!(x.layer_norm(1, 1e-5).to_vec::<f64>(), moved.to_vec::<f64>());
    let both = x.layer_norm([1, 2], 1e-5);
    let flat = x.reshape([6, 20]).layer_norm(-1, 1e-5).reshape([6, 5, 4]);
    for (a, b) in both.to_vec::<f64>().iter().zip(flat.to_vec::<f64>()) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    let graph = nb::trace_graph(|xs| vec![xs[0].layer_norm(-1, 1e-5)], &[x]);
    assert!(graph.contains("layer_norm(axis=-1, eps=0.00001)"), "{graph}");
    assert_eq!(graph.lines().filter(|l| l.contains(") : ")).count(), 2, "{graph}");
}

/// The layer norm's Jacobian product `rstd (v - mean(v) - y mean(v y))` of every row, in f64.
fn layer_norm_backward_reference(x: &[f64], v: &[f64], cols: usize, eps: f64) -> Vec<f64> {
    let y = layer_norm_reference(x, cols, eps);
    let mut out = Vec::with_capacity(x.len());
    for ((xr, vr), yr) in x.chunks(cols).zip(v.chunks(cols)).zip(y.chunks(cols)) {
        let mean = xr.iter().sum::<f64>() / cols as f64;
        let var = xr.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let mv = vr.iter().sum::<f64>() / cols as f64;
        let mvy = vr.iter().zip(yr).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        out.extend(vr.iter().zip(yr).map(|(a, b)| rstd * (a - mv - b * mvy)));
    }
    out
}

#[test]
fn layer_norm_backward_is_one_primitive_matching_an_f64_loop() {
    let shapes: [&[usize]; 4] = [&[3, 7], &[2, 3, 17], &[5000, 10], &[4, 0]];
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        for shape in shapes {
            let n: usize = shape.iter().product();
            let cols = *shape.last().unwrap();
            let x = Tensor::from_vec(inputs(n, n as u64 + 5), shape).cast(dtype);
            let w = Tensor::from_vec(inputs(n, n as u64 + 6), shape).cast(dtype);
            let g = nb::grad(|x: &Tensor| (x.layer_norm(-1, 1e-5) * &w).sum(nb::Axes::All, false))(&x);
            let (xh, wh) = (x.cast(DType::F64).to_vec::<f64>(), w.cast(DType::F64).to_vec::<f64>());
            let want = layer_norm_backward_reference(&xh, &wh, cols.max(1), 1e-5);
            check(&format!("layer_norm backward{shape:?} {dtype}"), dtype, &g, &want);
        }
    }
    // A strided cotangent (a transposed view) gives the rows of its contiguous copy.
    let x = Tensor::from_vec(inputs(6 * 5, 9), &[6, 5]);
    let w = Tensor::from_vec(inputs(5 * 6, 10), &[5, 6]).transpose();
    let grad_with = |w: &Tensor| nb::grad(|x: &Tensor| (x.layer_norm(-1, 1e-5) * w).sum(nb::Axes::All, false))(&x);
    assert_eq!(grad_with(&w).to_vec::<f64>(), grad_with(&(&w + 0.0)).to_vec::<f64>());
    // The backward pass is one node: the traced gradient holds the fused primitive, not the
    // thirteen ops of the composition.
    let graph = nb::trace_graph(
        |xs| {
            vec![nb::grad(|x: &Tensor| {
                x.layer_norm(-1, 1e-5).square().sum(nb::Axes::All, false)
            })(&xs[0])]
        },
        &[x],
    );
    assert!(graph.contains("layer_norm_backward(axis=-1, eps=0.00001)"), "{graph}");
    assert!(!graph.contains("rsqrt"), "the composition is not traced: {graph}");
}

/// The gradient of `sum(w * softmax(x))` (`y (w - sum(y w))`) or of `sum(w * log_softmax(x))`
/// (`w - exp(y) sum(w)`) of every row, in f64 from the f64 rows.
fn softmax_backward_reference(x: &[f64], w: &[f64], cols: usize, log: bool) -> Vec<f64> {
    let y = reference(x, cols, false);
    let mut out = Vec::with_capacity(x.len());
    for (yr, wr) in y.chunks(cols).zip(w.chunks(cols)) {
        if log {
            let s: f64 = wr.iter().sum();
            out.extend(yr.iter().zip(wr).map(|(p, g)| g - p * s));
        } else {
            let s: f64 = yr.iter().zip(wr).map(|(p, g)| p * g).sum();
            out.extend(yr.iter().zip(wr).map(|(p, g)| p * (g - s)));
        }
    }
    out
}

#[test]
fn softmax_backward_rows_are_one_primitive_matching_an_f64_loop() {
    let shapes: [&[usize]; 4] = [&[3, 7], &[2, 3, 17], &[5000, 10], &[4, 0]];
    for log in [false, true] {
        let rows = |x: &Tensor| if log { x.log_softmax(-1) } else { x.softmax(-1) };
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            for shape in shapes {
                let n: usize = shape.iter().product();
                let cols = *shape.last().unwrap();
                let x = Tensor::from_vec(inputs(n, n as u64 + 15), shape).cast(dtype);
                let w = Tensor::from_vec(inputs(n, n as u64 + 16), shape).cast(dtype);
                let g = nb::grad(|x: &Tensor| (rows(x) * &w).sum(nb::Axes::All, false))(&x);
                let (xh, wh) = (x.cast(DType::F64).to_vec::<f64>(), w.cast(DType::F64).to_vec::<f64>());
                let want = softmax_backward_reference(&xh, &wh, cols.max(1), log);
                check(&format!("backward of log={log} {shape:?} {dtype}"), dtype, &g, &want);
            }
        }
        // The backward pass is one node, and its own derivative (the Hessian-vector product
        // through it) agrees with the composition's.
        let x = Tensor::from_vec(inputs(24, 21), &[4, 6]);
        let graph = nb::trace_graph(
            |xs| {
                vec![nb::grad(|x: &Tensor| rows(x).square().sum(nb::Axes::All, false))(
                    &xs[0],
                )]
            },
            std::slice::from_ref(&x),
        );
        let name = if log {
            "log_softmax_backward(axis=-1)"
        } else {
            "softmax_backward(axis=-1)"
        };
        assert!(graph.contains(name), "{graph}");
        assert!(
            !graph.contains("sum"),
            "the composition's row sum is not traced: {graph}"
        );
        let second = nb::grad(|x: &Tensor| {
            nb::grad(|x: &Tensor| rows(x).square().sum(nb::Axes::All, false))(x)
                .sin()
                .sum(nb::Axes::All, false)
        })(&x);
        let composed = nb::grad(|x: &Tensor| {
            nb::grad(|x: &Tensor| {
                let y = if log {
                    x - x.logsumexp(-1, true)
                } else {
                    x.exp() / x.exp().sum(-1, true)
                };
                y.square().sum(nb::Axes::All, false)
            })(x)
            .sin()
            .sum(nb::Axes::All, false)
        })(&x);
        check(
            &format!("second derivative, log={log}"),
            DType::F64,
            &second,
            &composed.to_vec::<f64>(),
        );
    }
}

/// Causal attention runs one causal-softmax primitive (no mask tensor, no select): its values
/// and gradients equal those of the same attention with an explicit lower-triangular mask,
/// for as many queries as keys, fewer and more, in f64 and f32, under vmap, and its backward
/// pass is softmax's fused rows.
#[test]
fn causal_attention_is_one_softmax_primitive_equal_to_the_masked_one() {
    let attention = |t: &(Tensor, Tensor, Tensor), causal: bool| {
        let (lq, lk) = (t.0.shape()[t.0.rank() - 2], t.1.shape()[t.1.rank() - 2]);
        let rows = Tensor::arange(0.0, lq as f64, 1.0, DType::I64).reshape([lq, 1]);
        let cols = Tensor::arange(0.0, lk as f64, 1.0, DType::I64).reshape([1, lk]);
        let mask = cols.le(&rows);
        if causal {
            nb::scaled_dot_product_attention(&t.0, &t.1, &t.2, None, true)
        } else {
            nb::scaled_dot_product_attention(&t.0, &t.1, &t.2, Some(&mask), false)
        }
    };
    for dtype in [DType::F64, DType::F32] {
        for (lq, lk) in [(5usize, 5usize), (3, 7), (7, 3), (1, 1)] {
            let make = |n: usize, len: usize, seed: u64| {
                Tensor::from_vec(inputs(2 * 3 * len * n, seed), &[2, 3, len, n]).cast(dtype)
            };
            let qkv = (make(4, lq, 31), make(4, lk, 32), make(6, lk, 33));
            let what = format!("{dtype} lq {lq} lk {lk}");
            let want = attention(&qkv, false).cast(DType::F64).to_vec::<f64>();
            check(&format!("values {what}"), dtype, &attention(&qkv, true), &want);
            let loss =
                |causal: bool| move |t: &(Tensor, Tensor, Tensor)| attention(t, causal).sin().sum(nb::Axes::All, false);
            let (gc, gm) = (nb::grad(loss(true))(&qkv), nb::grad(loss(false))(&qkv));
            for (name, c, m) in [("dq", &gc.0, &gm.0), ("dk", &gc.1, &gm.1), ("dv", &gc.2, &gm.2)] {
                check(&format!("{name} {what}"), dtype, c, &m.cast(DType::F64).to_vec::<f64>());
            }
            // vmap over the leading axis gives each slice's attention.
            let batched = nb::vmap(|t: &(Tensor, Tensor, Tensor)| attention(t, true))(&qkv);
            check(&format!("vmap {what}"), dtype, &batched, &want);
        }
    }
    let qkv = (
        Tensor::from_vec(inputs(24, 41), &[1, 6, 4]),
        Tensor::from_vec(inputs(24, 42), &[1, 6, 4]),
        Tensor::from_vec(inputs(24, 43), &[1, 6, 4]),
    );
    // The composed attention (what runs where the backend has no fused attention kernel for
    // the operands, and what the fused primitive's JVP differentiates) forms its probabilities
    // with the causal softmax primitive, not a softmax of masked scores (the graph's `where`s
    // build the primitive's packed statistics).
    let graph = nb::trace_graph(
        |xs| {
            let t = (xs[0].clone(), xs[1].clone(), xs[2].clone());
            let loss = |t: &(Tensor, Tensor, Tensor)| attention(t, true).square().sum(nb::Axes::All, false);
            vec![nb::jvp(loss, &t, &t).1]
        },
        &[qkv.0, qkv.1, qkv.2],
    );
    assert!(graph.contains("causal_softmax(axis=-1)"), "{graph}");
    assert!(graph.contains("softmax_backward(axis=-1)"), "{graph}");
    assert!(!graph.contains("= softmax(axis=-1)"), "no masked softmax: {graph}");
}
