//! Batch normalisation's standardisation (`normalize_channels`, and `layer_norm` over every axis
//! but one) against a plain f64 loop: every float dtype, the statistics it returns, shapes with
//! one run per channel, one value per run, and large ones split across threads; its fused
//! backward (one primitive, against an f64 loop) and second derivatives equal to the
//! composition's; vmap; reductions over every axis but one read in place; and batch norm with
//! given statistics (`batch_norm_eval`) as one pass.

mod common;

use common::hashed_values as inputs;
use nabla_core as nb;
use nb::{DType, Tensor};

/// `(A, C, B)` of `shape` around `axis`.
fn grouped(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// The standardised values, the means and the biased variances of every channel, in f64.
fn reference(x: &[f64], (a, c, b): (usize, usize, usize), eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let at = |i: usize, ch: usize, j: usize| (i * c + ch) * b + j;
    let n = (a * b) as f64;
    let mut y = vec![0.0; x.len()];
    let (mut means, mut vars) = (Vec::new(), Vec::new());
    for ch in 0..c {
        let idx: Vec<usize> = (0..a).flat_map(|i| (0..b).map(move |j| at(i, ch, j))).collect();
        let mean = idx.iter().map(|&k| x[k]).sum::<f64>() / n;
        let var = idx.iter().map(|&k| (x[k] - mean).powi(2)).sum::<f64>() / n;
        for &k in &idx {
            y[k] = (x[k] - mean) / (var + eps).sqrt();
        }
        means.push(mean);
        vars.push(var);
    }
    (y, means, vars)
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 4e-3,
        _ => 3e-2,
    }
}

fn close(name: &str, got: &Tensor, want: &[f64], tol: f64) {
    let got = got.cast(DType::F64).to_vec::<f64>();
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{name}: element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn channels_are_standardised_as_an_f64_loop_in_every_float_dtype() {
    // Images, one run per channel, one value per run (features), and large enough to split.
    let cases: [(&[usize], usize); 5] = [
        (&[4, 3, 5, 5], 1),
        (&[1, 3, 40], 1),
        (&[7, 2], 1),
        (&[8, 16, 4096], 1),
        (&[3, 4, 6], 2),
    ];
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        for (shape, axis) in cases {
            let n: usize = shape.iter().product();
            let x = Tensor::from_vec(inputs(n, 3), shape).cast(dtype);
            let held = x.cast(DType::F64).to_vec::<f64>();
            let (want, means, vars) = reference(&held, grouped(shape, axis), 1e-5);
            let (y, mean, var) = x.normalize_channels(axis as isize, 1e-5);
            let name = format!("{shape:?} axis {axis} {dtype}");
            assert_eq!((y.dtype(), y.shape()), (dtype, shape), "{name}");
            close(&format!("{name}: y"), &y, &want, tolerance(dtype));
            close(&format!("{name}: mean"), &mean, &means, tolerance(dtype));
            close(&format!("{name}: var"), &var, &vars, tolerance(dtype));
            assert!(!mean.is_traced() && !var.is_traced());
            // layer_norm over every other axis computes the same (over one other axis, through
            // its row primitive, so rounded apart in halves).
            let others: Vec<isize> = (0..shape.len() as isize).filter(|&k| k != axis as isize).collect();
            close(
                &format!("{name}: layer_norm"),
                &x.layer_norm(others, 1e-5),
                &want,
                tolerance(dtype),
            );
        }
    }
}

/// The gradient of `sum(w * y)`: `rstd (w - mean(w) - y mean(w y))` per channel, in f64.
fn backward_reference(x: &[f64], w: &[f64], (a, c, b): (usize, usize, usize), eps: f64) -> Vec<f64> {
    let (y, _, vars) = reference(x, (a, c, b), eps);
    let n = (a * b) as f64;
    let mut out = vec![0.0; x.len()];
    for (ch, var) in vars.iter().enumerate() {
        let idx: Vec<usize> = (0..a).flat_map(|i| (0..b).map(move |j| (i * c + ch) * b + j)).collect();
        let mw = idx.iter().map(|&k| w[k]).sum::<f64>() / n;
        let mwy = idx.iter().map(|&k| w[k] * y[k]).sum::<f64>() / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for &k in &idx {
            out[k] = rstd * (w[k] - mw - y[k] * mwy);
        }
    }
    out
}

#[test]
fn the_backward_pass_is_one_primitive_matching_an_f64_loop() {
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        for shape in [&[4usize, 3, 5, 5][..], &[9, 4], &[8, 16, 4096]] {
            let n: usize = shape.iter().product();
            let x = Tensor::from_vec(inputs(n, 5), shape).cast(dtype);
            let w = Tensor::from_vec(inputs(n, 6), shape).cast(dtype);
            let g = nb::grad(|x: &Tensor| (x.normalize_channels(1, 1e-5).0 * &w).sum_all())(&x);
            let (xh, wh) = (x.cast(DType::F64).to_vec::<f64>(), w.cast(DType::F64).to_vec::<f64>());
            let want = backward_reference(&xh, &wh, grouped(shape, 1), 1e-5);
            close(
                &format!("backward {shape:?} {dtype}"),
                &g,
                &want,
                4.0 * tolerance(dtype),
            );
        }
    }
    let x = Tensor::from_vec(inputs(60, 7), &[5, 3, 4]);
    let graph = nb::trace_graph(
        |xs| {
            vec![nb::grad(|x: &Tensor| {
                x.normalize_channels(1, 1e-5).0.square().sum_all()
            })(&xs[0])]
        },
        &[x],
    );
    assert!(graph.contains("normalize_channels_backward(axis=1"), "{graph}");
    assert!(!graph.contains("rsqrt"), "the composition is not traced: {graph}");
}

/// The standardisation composed of primitives, for comparison.
fn composed(x: &Tensor) -> Tensor {
    let axes = vec![0isize, 2];
    let centred = x - x.mean(axes.clone(), true);
    &centred * (centred.square().mean(axes, true) + 1e-5).rsqrt()
}

#[test]
fn second_derivatives_and_vmap_agree_with_the_composition() {
    let x = Tensor::from_vec(inputs(60, 8), &[5, 3, 4]);
    let w = Tensor::from_vec(inputs(60, 9), &[5, 3, 4]);
    let v = Tensor::from_vec(inputs(60, 10), &[5, 3, 4]);
    let fused_loss = |x: &Tensor| (x.normalize_channels(1, 1e-5).0 * &w).tanh().sum_all();
    let composed_loss = |x: &Tensor| (composed(x) * &w).tanh().sum_all();
    let a = nb::jvp(nb::grad(fused_loss), &x, &v).1;
    let b = nb::jvp(nb::grad(composed_loss), &x, &v).1;
    close("Hessian-vector product", &a, &b.to_vec::<f64>(), 1e-11);
    let rr = nb::grad(|x: &Tensor| (nb::grad(fused_loss)(x) * &v).sum_all())(&x);
    close("reverse over reverse", &rr, &b.to_vec::<f64>(), 1e-11);
    let fused = |x: &Tensor| x.normalize_channels(1, 1e-5).0;
    // Under vmap each example is standardised on its own (the composed path).
    let xs = Tensor::from_vec(inputs(120, 11), &[2, 5, 3, 4]);
    let mapped = nb::vmap(|x: &Tensor| x.normalize_channels(1, 1e-5).0)(&xs);
    for k in 0..2 {
        let one = xs.index_axis(0, k);
        close(
            &format!("vmap example {k}"),
            &mapped.index_axis(0, k),
            &fused(&one).to_vec::<f64>(),
            1e-12,
        );
    }
}

#[test]
fn reductions_over_every_axis_but_one_match_an_f64_loop() {
    // Around axis 1 the runs are long enough to be read in place; around axis 2 they are not.
    let shape = [6usize, 5, 8, 9];
    let n: usize = shape.iter().product();
    let values = inputs(n, 12);
    let x = Tensor::from_vec(values.clone(), &shape);
    for (axis, axes) in [(1usize, vec![0isize, 2, 3]), (2, vec![0, 1, 3])] {
        let (a, c, b) = grouped(&shape, axis);
        let mut sums = vec![0.0; c];
        let mut maxes = vec![f64::NEG_INFINITY; c];
        for i in 0..a {
            for ch in 0..c {
                for j in 0..b {
                    let v = values[(i * c + ch) * b + j];
                    sums[ch] += v;
                    maxes[ch] = maxes[ch].max(v);
                }
            }
        }
        close(
            &format!("sum around axis {axis}"),
            &x.sum(axes.clone(), false),
            &sums,
            1e-12,
        );
        assert_eq!(
            x.max(axes.clone(), false).to_vec::<f64>(),
            maxes,
            "max around axis {axis}"
        );
        let big = Tensor::from_vec(inputs(16 * 64 * 1024, 13), &[16, 64, 1024]).cast(DType::F32);
        let got = big.sum(vec![0isize, 2], false).to_vec::<f32>();
        let want = big.cast(DType::F64).sum(vec![0isize, 2], false).to_vec::<f64>();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() < 1e-2 + 1e-6 * w.abs(),
                "large f32 sum: {g} vs {w}"
            );
        }
    }
}

/// Batch norm composed of primitives over `[A, C, B]`.
fn batch_norm_composed(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
    let c = gamma.shape()[0];
    composed(x) * gamma.reshape([1, c, 1]) + beta.reshape([1, c, 1])
}

#[test]
fn batch_norm_with_scale_and_shift_is_one_primitive_each_way_and_matches_the_composition() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
        for shape in [[5usize, 3, 4], [8, 16, 4096]] {
            let n: usize = shape.iter().product();
            let x = Tensor::from_vec(inputs(n, 14), &shape).cast(dtype);
            let w = Tensor::from_vec(inputs(n, 15), &shape).cast(dtype);
            let gamma = Tensor::from_vec(inputs(shape[1], 16), &[shape[1]]).cast(dtype);
            let beta = Tensor::from_vec(inputs(shape[1], 17), &[shape[1]]).cast(dtype);
            let args = (x.clone(), gamma.clone(), beta.clone());
            let fused = |a: &(Tensor, Tensor, Tensor)| (a.0.batch_norm(&a.1, &a.2, 1, 1e-5).0 * &w).sum_all();
            let plain = |a: &(Tensor, Tensor, Tensor)| (batch_norm_composed(&a.0, &a.1, &a.2) * &w).sum_all();
            let name = format!("{shape:?} {dtype}");
            let (y, mean, var) = x.batch_norm(&gamma, &beta, 1, 1e-5);
            close(
                &format!("{name}: y"),
                &y,
                &batch_norm_composed(&x, &gamma, &beta).cast(DType::F64).to_vec::<f64>(),
                tol,
            );
            let (_, means, vars) = reference(&x.cast(DType::F64).to_vec::<f64>(), grouped(&shape, 1), 1e-5);
            close(&format!("{name}: mean"), &mean, &means, tol);
            close(&format!("{name}: var"), &var, &vars, tol);
            let (g, h) = (nb::grad(fused)(&args), nb::grad(plain)(&args));
            for (what, a, b) in [("x", &g.0, &h.0), ("gamma", &g.1, &h.1), ("beta", &g.2, &h.2)] {
                let scale = 1.0 + b.abs().max_all().cast(DType::F64).item::<f64>();
                close(
                    &format!("{name}: d{what}"),
                    a,
                    &b.cast(DType::F64).to_vec::<f64>(),
                    tol * scale,
                );
            }
        }
    }
    let x = Tensor::from_vec(inputs(60, 18), &[5, 3, 4]);
    let (gamma, beta) = (
        Tensor::from_vec(vec![1.5, -0.5, 2.0], &[3]),
        Tensor::from_vec(vec![0.1, 0.2, 0.3], &[3]),
    );
    let graph = nb::trace_graph(
        |xs| {
            vec![nb::grad(|x: &Tensor| {
                x.batch_norm(&gamma, &beta, 1, 1e-5).0.square().sum_all()
            })(&xs[0])]
        },
        std::slice::from_ref(&x),
    );
    assert!(graph.contains("batch_norm_backward(axis=1"), "{graph}");
    assert!(!graph.contains("rsqrt"), "the composition is not traced: {graph}");
    // Second order, forward over reverse and reverse over reverse, against the composition.
    let w = Tensor::from_vec(inputs(60, 19), &[5, 3, 4]);
    let v = Tensor::from_vec(inputs(60, 20), &[5, 3, 4]);
    let fused = |x: &Tensor| (x.batch_norm(&gamma, &beta, 1, 1e-5).0 * &w).tanh().sum_all();
    let plain = |x: &Tensor| (batch_norm_composed(x, &gamma, &beta) * &w).tanh().sum_all();
    let want = nb::jvp(nb::grad(plain), &x, &v).1.to_vec::<f64>();
    close("batch norm Hv", &nb::jvp(nb::grad(fused), &x, &v).1, &want, 1e-11);
    let rr = nb::grad(|x: &Tensor| (nb::grad(fused)(x) * &v).sum_all())(&x);
    close("batch norm reverse over reverse", &rr, &want, 1e-11);
    // Under vmap each example is normalised on its own (the composed path).
    let xs = Tensor::from_vec(inputs(120, 21), &[2, 5, 3, 4]);
    let mapped = nb::vmap(|x: &Tensor| x.batch_norm(&gamma, &beta, 1, 1e-5).0)(&xs);
    for k in 0..2 {
        let one = xs.index_axis(0, k);
        close(
            &format!("batch norm vmap {k}"),
            &mapped.index_axis(0, k),
            &batch_norm_composed(&one, &gamma, &beta).to_vec::<f64>(),
            1e-12,
        );
    }
}

/// Batch norm with given statistics, composed of broadcast ops (the reference).
fn batch_norm_eval_composed(x: &Tensor, stats: &[Tensor], axis: usize) -> Tensor {
    let mut shape = vec![1; x.rank()];
    shape[axis] = x.shape()[axis];
    let c = |t: &Tensor| t.reshape(shape.clone());
    (x - c(&stats[0])) * (c(&stats[1]) + 1e-5).rsqrt() * c(&stats[2]) + c(&stats[3])
}

#[test]
fn batch_norm_eval_is_one_pass_and_matches_the_composition_in_value_and_gradients() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5), (DType::BF16, 3e-2)] {
        for (shape, axis) in [(vec![5usize, 3, 4], 1usize), (vec![8, 16, 4096], 1), (vec![6, 7], 0)] {
            let n: usize = shape.iter().product();
            let c = shape[axis];
            let x = Tensor::from_vec(inputs(n, 30), &shape).cast(dtype);
            let w = Tensor::from_vec(inputs(n, 31), &shape).cast(dtype);
            // mean, var (positive), gamma, beta.
            let stats: Vec<Tensor> = (0..4)
                .map(|k| {
                    let v = Tensor::from_vec(inputs(c, 32 + k as u64), &[c]);
                    if k == 1 { v.abs() + 0.5 } else { v }.cast(dtype)
                })
                .collect();
            let name = format!("{shape:?} axis {axis} {dtype}");
            let fused = |x: &Tensor, s: &[Tensor]| x.batch_norm_eval(&s[0], &s[1], &s[2], &s[3], axis as isize, 1e-5);
            let want = batch_norm_eval_composed(
                &x.cast(DType::F64),
                &stats.iter().map(|s| s.cast(DType::F64)).collect::<Vec<_>>(),
                axis,
            );
            close(&format!("{name}: y"), &fused(&x, &stats), &want.to_vec::<f64>(), tol);
            if dtype == DType::BF16 {
                continue;
            }
            let mut args = vec![x.clone()];
            args.extend(stats.iter().cloned());
            let g = nb::grad(|a: &Vec<Tensor>| (fused(&a[0], &a[1..]) * &w).sum_all())(&args);
            let h = nb::grad(|a: &Vec<Tensor>| (batch_norm_eval_composed(&a[0], &a[1..], axis) * &w).sum_all())(&args);
            for (k, (a, b)) in g.iter().zip(&h).enumerate() {
                let scale = 1.0 + b.abs().max_all().cast(DType::F64).item::<f64>();
                close(
                    &format!("{name}: gradient {k}"),
                    a,
                    &b.cast(DType::F64).to_vec::<f64>(),
                    tol * scale,
                );
            }
        }
    }
    // One primitive forward, and its input gradient one broadcast product: no rsqrt of the
    // input's size and no subtraction of the means in the traced graph.
    let x = Tensor::from_vec(inputs(60, 36), &[5, 3, 4]);
    let s: Vec<Tensor> = [
        vec![0.1, -0.2, 0.3],
        vec![1.0, 2.0, 0.5],
        vec![1.5, -0.5, 2.0],
        vec![0.1, 0.2, 0.3],
    ]
    .into_iter()
    .map(|v| Tensor::from_vec(v, &[3]))
    .collect();
    let graph = nb::trace_graph(
        |xs| {
            vec![nb::grad(|x: &Tensor| {
                x.batch_norm_eval(&s[0], &s[1], &s[2], &s[3], 1, 1e-5)
                    .square()
                    .sum_all()
            })(&xs[0])]
        },
        std::slice::from_ref(&x),
    );
    assert!(graph.contains("channel_affine(axis=1)"), "{graph}");
    assert!(!graph.contains(" sub"), "the composition is not traced: {graph}");
    // Under vmap (composed) each example alike.
    let xs = Tensor::from_vec(inputs(120, 37), &[2, 5, 3, 4]);
    let mapped = nb::vmap(|x: &Tensor| x.batch_norm_eval(&s[0], &s[1], &s[2], &s[3], 1, 1e-5))(&xs);
    for k in 0..2 {
        let one = xs.index_axis(0, k);
        close(
            &format!("batch_norm_eval vmap {k}"),
            &mapped.index_axis(0, k),
            &batch_norm_eval_composed(&one, &s, 1).to_vec::<f64>(),
            1e-12,
        );
    }
}
