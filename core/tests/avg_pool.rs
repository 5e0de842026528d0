//! Average pooling read in place (`Backend::pool_sum` on the CPU): values and gradients against
//! a direct f64 loop in every float dtype, over padded (windows of padding alone included),
//! overlapping and uneven windows and images large enough to split across threads; against
//! an independent implementation (a depthwise convolution with constant weights) in value,
//! gradient, JVP, Hessian-vector product and under vmap; the traced graph (the window sum
//! and its transpose, no window tensor); and jit replays bit-equal to eager.

mod common;

use common::hashed_values as inputs;
use nabla_core as nb;
use nb::{Conv2dOptions, DType, Tensor};

/// Kernel, stride and padding of one pooling.
type Pool = ((usize, usize), (usize, usize), (usize, usize));

/// The pooled values and the gradient of `sum(y * ct)` by a direct loop: the mean of every
/// window over the image padded with zeros (the padding counts in the divisor).
fn reference(x: &[f64], shape: [usize; 4], (k, s, p): Pool, ct: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let [n, c, h, w] = shape;
    let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
    let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
    let taps = (k.0 * k.1) as f64;
    let (mut y, mut dx) = (Vec::new(), vec![0.0; x.len()]);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut sum = 0.0;
                let g = ct[y.len()] / taps;
                for i in 0..k.0 {
                    for j in 0..k.1 {
                        let (r, q) = (
                            (oy * s.0 + i) as isize - p.0 as isize,
                            (ox * s.1 + j) as isize - p.1 as isize,
                        );
                        if r < 0 || q < 0 || r >= h as isize || q >= w as isize {
                            continue;
                        }
                        let at = plane * h * w + r as usize * w + q as usize;
                        sum += x[at];
                        dx[at] += g;
                    }
                }
                y.push(sum / taps);
            }
        }
    }
    (y, dx)
}

fn pools() -> Vec<([usize; 4], Pool)> {
    vec![
        ([2, 3, 7, 9], ((3, 3), (2, 2), (1, 1))),
        ([1, 2, 6, 6], ((2, 2), (2, 2), (0, 0))),
        ([2, 2, 5, 7], ((3, 2), (1, 2), (2, 1))),
        ([1, 1, 4, 5], ((1, 1), (1, 1), (0, 0))),
        // Padding as wide as the kernel: the corner windows hold padding alone (zero).
        ([1, 2, 3, 4], ((2, 2), (1, 2), (2, 2))),
        // Overlapping windows (stride 1): every pixel gets the cotangents of several windows.
        ([2, 1, 6, 5], ((3, 3), (1, 1), (1, 1))),
        // The stem's pooling shape over enough planes to run on several threads.
        ([4, 8, 64, 64], ((3, 3), (2, 2), (1, 1))),
    ]
}

fn close(what: &str, got: &Tensor, want: &[f64], tol: f64) {
    let got = got.cast(DType::F64).to_vec::<f64>();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn pool(x: &Tensor, (k, s, p): Pool) -> Tensor {
    nb::avg_pool2d(x, k, s, p)
}

/// The same pooling as a depthwise convolution with weights `1 / taps` (another code path:
/// the convolution's kernels, not the window sums).
fn pool_by_conv(x: &Tensor, (k, s, p): Pool) -> Tensor {
    let c = x.shape()[1];
    let w = Tensor::full(&[c, 1, k.0, k.1], 1.0 / (k.0 * k.1) as f64, x.dtype());
    let options = Conv2dOptions {
        stride: s,
        padding: p,
        groups: c,
        ..Conv2dOptions::default()
    };
    nb::conv2d(x, &w, options)
}

#[test]
fn average_pooling_and_its_gradient_match_a_direct_loop_in_every_float_dtype() {
    for (shape, opts) in pools() {
        let len: usize = shape.iter().product();
        for dtype in [DType::F64, DType::F32, DType::BF16, DType::F16] {
            let x = Tensor::from_vec(inputs(len, 1), &shape).cast(dtype);
            let xs = x.cast(DType::F64).to_vec::<f64>();
            let y = pool(&x, opts);
            let ct = Tensor::from_vec(inputs(y.numel(), 2), y.shape()).cast(dtype);
            let (want_y, want_dx) = reference(&xs, shape, opts, &ct.cast(DType::F64).to_vec::<f64>());
            let what = format!("{shape:?} {opts:?} {dtype}");
            // Halves add in f32 and round once.
            let tol = match dtype {
                DType::F64 => 1e-13,
                DType::F32 => 1e-6,
                _ => 1e-2,
            };
            close(&format!("{what}: y"), &y, &want_y, tol);
            let dx = nb::grad(|x: &Tensor| (pool(x, opts) * &ct).sum_all())(&x);
            close(&format!("{what}: dx"), &dx, &want_dx, tol);
        }
    }
}

#[test]
fn derivatives_of_every_order_and_vmap_match_a_depthwise_convolution() {
    for (shape, opts) in pools().into_iter().take(6) {
        let len: usize = shape.iter().product();
        let x = Tensor::from_vec(inputs(len, 3), &shape);
        let v = Tensor::from_vec(inputs(len, 4), &shape);
        let what = format!("{shape:?} {opts:?}");
        close(
            &format!("{what}: y"),
            &pool(&x, opts),
            &pool_by_conv(&x, opts).to_vec::<f64>(),
            1e-12,
        );
        // A nonlinear loss, so that the second derivatives are not zero.
        let loss = move |x: &Tensor| pool(x, opts).tanh().sum_all();
        let loss_conv = move |x: &Tensor| pool_by_conv(x, opts).tanh().sum_all();
        let g = nb::grad(loss)(&x);
        close(
            &format!("{what}: grad"),
            &g,
            &nb::grad(loss_conv)(&x).to_vec::<f64>(),
            1e-12,
        );
        let (_, t) = nb::jvp(|x: &Tensor| pool(x, opts), &x, &v);
        let (_, t_conv) = nb::jvp(|x: &Tensor| pool_by_conv(x, opts), &x, &v);
        close(&format!("{what}: jvp"), &t, &t_conv.to_vec::<f64>(), 1e-12);
        let hv = nb::jvp(nb::grad(loss), &x, &v).1;
        let hv_conv = nb::jvp(nb::grad(loss_conv), &x, &v).1;
        close(&format!("{what}: Hv"), &hv, &hv_conv.to_vec::<f64>(), 1e-12);
        // vmap over a leading axis of three images.
        let xs = Tensor::from_vec(inputs(3 * len, 5), &[3, shape[0], shape[1], shape[2], shape[3]]);
        let mapped = nb::vmap(|x: &Tensor| pool(x, opts))(&xs);
        let grads = nb::vmap(nb::grad(loss))(&xs);
        for k in 0..3 {
            let one = xs.index_axis(0, k);
            close(
                &format!("{what}: vmap {k}"),
                &mapped.index_axis(0, k),
                &pool(&one, opts).to_vec::<f64>(),
                0.0,
            );
            close(
                &format!("{what}: vmap grad {k}"),
                &grads.index_axis(0, k),
                &nb::grad(loss_conv)(&one).to_vec::<f64>(),
                1e-12,
            );
        }
    }
}

#[test]
fn the_gradient_is_the_transposed_window_sum_and_jit_replays_it_exactly() {
    let (shape, opts) = pools()[0];
    let len: usize = shape.iter().product();
    let x = Tensor::from_vec(inputs(len, 6), &shape);
    let graph = nb::trace_graph(
        |xs| vec![nb::grad(|x: &Tensor| pool(x, opts).square().sum_all())(&xs[0])],
        std::slice::from_ref(&x),
    );
    assert!(graph.contains("window_sum("), "{graph}");
    assert!(graph.contains("window_sum_transpose("), "{graph}");
    assert!(!graph.contains("unfold"), "no window tensor: {graph}");
    let loss = move |x: &Tensor| pool(x, opts).tanh().sum_all();
    let step = nb::Jit::new(move |x: &Tensor| {
        let (v, g) = nb::value_and_grad(loss)(x);
        vec![v, g]
    });
    for seed in [7u64, 8, 9] {
        let x = Tensor::from_vec(inputs(len, seed), &shape).cast(DType::F32);
        let (v, g) = nb::value_and_grad(loss)(&x);
        let jitted = step.call(&x);
        assert_eq!(jitted[0].to_vec::<f32>(), v.to_vec::<f32>(), "jit call {seed}: value");
        assert_eq!(
            jitted[1].to_vec::<f32>(),
            g.to_vec::<f32>(),
            "jit call {seed}: gradient"
        );
    }
}

#[test]
fn images_without_pixels_pool_to_zeros_and_minus_infinity() {
    // Zero rows: every window is padding. Average pooling counts it as zeros; max pooling (the
    // window tensor's path) gives -inf, as padding counts as -inf.
    let x = Tensor::zeros(&[1, 2, 0, 4], DType::F32);
    let y = nb::avg_pool2d(&x, (2, 2), (1, 1), (1, 1));
    assert_eq!(y.shape(), &[1, 2, 1, 5]);
    assert!(y.to_vec::<f32>().iter().all(|&v| v == 0.0), "{:?}", y.to_vec::<f32>());
    let g = nb::grad(|x: &Tensor| nb::avg_pool2d(x, (2, 2), (1, 1), (1, 1)).sum_all())(&x);
    assert_eq!(g.shape(), &[1, 2, 0, 4]);
    let m = nb::max_pool2d(&x, (2, 2), (1, 1), (1, 1));
    assert_eq!(m.shape(), &[1, 2, 1, 5]);
    assert!(
        m.to_vec::<f32>().iter().all(|&v| v == f32::NEG_INFINITY),
        "{:?}",
        m.to_vec::<f32>()
    );
}
