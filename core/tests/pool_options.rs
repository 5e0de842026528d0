//! Pooling with PyTorch's `ceil_mode`, `count_include_pad = false`, `divisor_override` and
//! max pooling's `dilation` (`max_pool2d_with`,
//! `avg_pool2d_with`): values and gradients against a direct loop written after PyTorch's CPU
//! kernels (its output-size rule, its window bounds and divisors) in every float dtype, the
//! in-place kernels against the window-tensor path (under vmap), jit replays bit-equal to
//! eager, and the refusal of averages over windows without pixels. The JAX reference cases
//! (with their derivative rows) are in `fixtures/layer_ops.json`.

mod common;

use common::hashed_values as inputs;
use nabla_core as nb;
use nb::{DType, Pool2dOptions, Tensor};

/// Windows along one axis, as PyTorch's `pooling_output_shape` (a window of `k` taps `d` apart).
fn torch_out(n: usize, pad: usize, k: usize, s: usize, d: usize, ceil: bool) -> usize {
    let room = (n + 2 * pad - d * (k - 1) - 1) as f64 / s as f64;
    let mut out = if ceil { room.ceil() } else { room.floor() } as usize + 1;
    if ceil && (out - 1) * s >= n + pad {
        out -= 1;
    }
    out
}

/// The pooled values and the gradient of `sum(y * ct)` by a direct loop (PyTorch's window
/// bounds: a window spans `[start, min(start + k, n + pad))` for the divisor that counts the
/// padding, and the image pixels inside it for the values).
fn reference(
    x: &[f64],
    shape: [usize; 4],
    k: (usize, usize),
    o: Pool2dOptions,
    max: bool,
    ct: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let [n, c, h, w] = shape;
    let (s, p) = (o.stride, o.padding);
    let d = o.dilation;
    let oh = torch_out(h, p.0, k.0, s.0, d.0, o.ceil_mode);
    let ow = torch_out(w, p.1, k.1, s.1, d.1, o.ceil_mode);
    // The taps of a window starting at `start` along an axis of `n` pixels that hit pixels.
    let taps = |start: isize, k: usize, d: usize, n: usize| {
        (0..k)
            .map(move |i| start + (i * d) as isize)
            .filter(move |&r| r >= 0 && r < n as isize)
    };
    let (mut y, mut dx) = (Vec::new(), vec![0.0; x.len()]);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (r0, c0) = ((oy * s.0) as isize - p.0 as isize, (ox * s.1) as isize - p.1 as isize);
                let (top, left) = (r0, c0);
                let r1 = (r0 + k.0 as isize).min((h + p.0) as isize);
                let c1 = (c0 + k.1 as isize).min((w + p.1) as isize);
                let padded_size = ((r1 - r0) * (c1 - c0)) as f64;
                let (r0, c0) = (r0.max(0), c0.max(0));
                let (r1, c1) = (r1.min(h as isize), c1.min(w as isize));
                let at = |r: isize, q: isize| plane * h * w + r as usize * w + q as usize;
                let g = ct[y.len()];
                if max {
                    // The first largest tap in row-major order.
                    let mut best: Option<usize> = None;
                    for r in taps(top, k.0, d.0, h) {
                        for q in taps(left, k.1, d.1, w) {
                            if best.is_none_or(|b| x[at(r, q)] > x[b]) {
                                best = Some(at(r, q));
                            }
                        }
                    }
                    let best = best.expect("every window holds a pixel");
                    y.push(x[best]);
                    dx[best] += g;
                } else {
                    let divisor = match o.divisor_override {
                        Some(d) => d as f64,
                        None if o.count_include_pad => padded_size,
                        None => ((r1 - r0) * (c1 - c0)) as f64,
                    };
                    let mut sum = 0.0;
                    for r in r0..r1 {
                        for q in c0..c1 {
                            sum += x[at(r, q)];
                            dx[at(r, q)] += g / divisor;
                        }
                    }
                    y.push(sum / divisor);
                }
            }
        }
    }
    (y, dx)
}

/// Shapes, kernels and options where the options change the result.
fn cases() -> Vec<([usize; 4], (usize, usize), Pool2dOptions)> {
    let o = Pool2dOptions::new;
    vec![
        // ceil_mode adds a last window over the image's last row and column.
        ([1, 2, 5, 5], (2, 2), o((2, 2), (0, 0)).ceil_mode(true)),
        // ... past the padding too (only along the height).
        ([2, 1, 6, 7], (3, 3), o((2, 2), (1, 1)).ceil_mode(true)),
        // A last window that would start in the padding after the image is dropped.
        ([1, 1, 5, 5], (2, 2), o((2, 2), (1, 1)).ceil_mode(true)),
        ([1, 2, 5, 6], (3, 2), o((2, 1), (1, 1)).count_include_pad(false)),
        (
            [2, 1, 6, 5],
            (3, 3),
            o((2, 2), (1, 0)).ceil_mode(true).count_include_pad(false),
        ),
        (
            [1, 1, 4, 9],
            (1, 3),
            o((1, 3), (0, 1)).ceil_mode(true).count_include_pad(false),
        ),
        // divisor_override: every window's sum over one divisor, whatever it counts.
        ([1, 2, 5, 6], (3, 2), o((2, 1), (1, 1)).divisor_override(5)),
        (
            [2, 1, 6, 5],
            (3, 3),
            o((2, 2), (1, 0))
                .ceil_mode(true)
                .count_include_pad(false)
                .divisor_override(2),
        ),
        // The stem's pooling over enough planes to run on several threads.
        (
            [4, 8, 56, 56],
            (3, 3),
            o((2, 2), (1, 1)).ceil_mode(true).count_include_pad(false),
        ),
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

fn pool(x: &Tensor, k: (usize, usize), o: Pool2dOptions, max: bool) -> Tensor {
    if max {
        nb::max_pool2d_with(x, k, o)
    } else {
        nb::avg_pool2d_with(x, k, o)
    }
}

#[test]
fn pooling_with_options_and_its_gradient_match_pytorchs_rules_in_every_float_dtype() {
    for (shape, k, o) in cases() {
        let len: usize = shape.iter().product();
        for max in [true, false] {
            for dtype in [DType::F64, DType::F32, DType::BF16, DType::F16] {
                let x = Tensor::from_vec(inputs(len, 1), &shape).cast(dtype);
                let xs = x.cast(DType::F64).to_vec::<f64>();
                let y = pool(&x, k, o, max);
                let ct = Tensor::from_vec(inputs(y.numel(), 2), y.shape()).cast(dtype);
                let (want_y, want_dx) = reference(&xs, shape, k, o, max, &ct.cast(DType::F64).to_vec::<f64>());
                let what = format!("{} {shape:?} {k:?} {o:?} {dtype}", if max { "max" } else { "avg" });
                let oh = torch_out(shape[2], o.padding.0, k.0, o.stride.0, 1, o.ceil_mode);
                let ow = torch_out(shape[3], o.padding.1, k.1, o.stride.1, 1, o.ceil_mode);
                assert_eq!(y.shape(), &[shape[0], shape[1], oh, ow], "{what}: shape");
                let tol = match dtype {
                    DType::F64 => 1e-13,
                    DType::F32 => 1e-6,
                    _ => 2e-2,
                };
                close(&format!("{what}: y"), &y, &want_y, tol);
                // Halves may choose another maximum where rounding ties two values.
                if max && tol > 1e-6 {
                    continue;
                }
                let dx = nb::grad(|x: &Tensor| (pool(x, k, o, max) * &ct).sum_all())(&x);
                close(&format!("{what}: dx"), &dx, &want_dx, tol);
            }
        }
    }
}

#[test]
fn floor_mode_counting_the_padding_is_the_plain_pooling() {
    let x = Tensor::from_vec(inputs(2 * 3 * 7 * 9, 3), &[2, 3, 7, 9]);
    let o = Pool2dOptions::new((2, 2), (1, 1));
    for max in [true, false] {
        let plain = if max {
            nb::max_pool2d(&x, (3, 3), (2, 2), (1, 1))
        } else {
            nb::avg_pool2d(&x, (3, 3), (2, 2), (1, 1))
        };
        assert_eq!(pool(&x, (3, 3), o, max).to_vec::<f64>(), plain.to_vec::<f64>());
        // ceil_mode changes nothing where the windows already end at the padding's end.
        assert_eq!(
            pool(&x, (3, 3), o.ceil_mode(true), max).to_vec::<f64>(),
            plain.to_vec::<f64>()
        );
    }
}

#[test]
fn vmap_reduces_the_window_tensor_to_the_same_values_and_jit_replays_them_exactly() {
    for (shape, k, o) in cases().into_iter().take(6) {
        let len: usize = shape.iter().product();
        for max in [true, false] {
            let what = format!("{} {shape:?} {k:?} {o:?}", if max { "max" } else { "avg" });
            let loss = move |x: &Tensor| pool(x, k, o, max).tanh().sum_all();
            // vmap: max pooling takes the window tensor's path, average pooling its kernels
            // over the leading axes; both against the eager pooling of each image batch.
            let xs = Tensor::from_vec(inputs(3 * len, 5), &[3, shape[0], shape[1], shape[2], shape[3]]);
            let mapped = nb::vmap(move |x: &Tensor| pool(x, k, o, max))(&xs);
            let grads = nb::vmap(nb::grad(loss))(&xs);
            for i in 0..3 {
                let one = xs.index_axis(0, i);
                close(
                    &format!("{what}: vmap {i}"),
                    &mapped.index_axis(0, i),
                    &pool(&one, k, o, max).to_vec::<f64>(),
                    1e-15,
                );
                close(
                    &format!("{what}: vmap grad {i}"),
                    &grads.index_axis(0, i),
                    &nb::grad(loss)(&one).to_vec::<f64>(),
                    1e-14,
                );
            }
            let step = nb::Jit::new(move |x: &Tensor| {
                let (v, g) = nb::value_and_grad(loss)(x);
                vec![v, g]
            });
            for seed in [7u64, 8] {
                let x = Tensor::from_vec(inputs(len, seed), &shape).cast(DType::F32);
                let (v, g) = nb::value_and_grad(loss)(&x);
                let jitted = step.call(&x);
                assert_eq!(
                    jitted[0].to_vec::<f32>(),
                    v.to_vec::<f32>(),
                    "{what}: jit {seed}: value"
                );
                assert_eq!(
                    jitted[1].to_vec::<f32>(),
                    g.to_vec::<f32>(),
                    "{what}: jit {seed}: gradient"
                );
            }
        }
    }
}

#[test]
fn an_average_over_a_window_of_padding_alone_without_counting_the_padding_is_refused() {
    let x = Tensor::from_vec(inputs(9, 1), &[1, 1, 3, 3]);
    let o = Pool2dOptions::new((1, 1), (2, 2)).count_include_pad(false);
    let msg = common::panic_message(|| drop(nb::avg_pool2d_with(&x, (2, 2), o)));
    assert!(msg.contains("avg_pool2d") && msg.contains("count_include_pad"), "{msg}");
    assert!(msg.contains("[1, 1, 3, 3]"), "names the shape: {msg}");
    // Counting the padding, the same windows average to zero.
    let y = nb::avg_pool2d_with(&x, (2, 2), o.count_include_pad(true));
    assert_eq!(y.to_vec::<f64>()[0], 0.0);
}

#[test]
fn a_divisor_override_of_zero_is_refused_and_any_other_divides_every_window() {
    let x = Tensor::from_vec(inputs(9, 1), &[1, 1, 3, 3]);
    let o = Pool2dOptions::new((1, 1), (2, 2)).count_include_pad(false);
    let msg = common::panic_message(|| drop(nb::avg_pool2d_with(&x, (2, 2), o.divisor_override(0))));
    assert!(msg.contains("avg_pool2d") && msg.contains("divisor_override"), "{msg}");
    assert!(msg.contains("[1, 1, 3, 3]"), "names the shape: {msg}");
    // With a divisor, windows of padding alone average to zero (no 0/0 to refuse), and the
    // others are their sums over the divisor.
    let y = nb::avg_pool2d_with(&x, (2, 2), o.divisor_override(3)).to_vec::<f64>();
    let sums = nb::avg_pool2d_with(&x, (2, 2), o.count_include_pad(true)).to_vec::<f64>();
    assert_eq!(y[0], 0.0);
    for (i, (a, s)) in y.iter().zip(&sums).enumerate() {
        assert!(
            (a - s * 4.0 / 3.0).abs() <= 1e-12 * (1.0 + s.abs()),
            "window {i}: {a} against {s} * 4 / 3"
        );
    }
}

/// Max pooling with taps `dilation` apart: shapes, kernels and options.
fn dilated_cases() -> Vec<([usize; 4], (usize, usize), Pool2dOptions)> {
    let o = Pool2dOptions::new;
    vec![
        ([1, 2, 7, 7], (3, 3), o((1, 1), (0, 0)).dilation((2, 2))),
        ([2, 1, 9, 8], (2, 3), o((2, 1), (1, 1)).dilation((3, 2))),
        ([1, 1, 8, 9], (3, 2), o((2, 3), (1, 1)).dilation((2, 1)).ceil_mode(true)),
    ]
}

#[test]
fn max_pooling_with_dilation_and_its_gradient_match_pytorchs_rules_under_vmap_and_jit() {
    for (shape, k, o) in dilated_cases() {
        let len: usize = shape.iter().product();
        for dtype in [DType::F64, DType::F32] {
            let x = Tensor::from_vec(inputs(len, 4), &shape).cast(dtype);
            let y = nb::max_pool2d_with(&x, k, o);
            let ct = Tensor::from_vec(inputs(y.numel(), 5), y.shape()).cast(dtype);
            let xs = x.cast(DType::F64).to_vec::<f64>();
            let (want_y, want_dx) = reference(&xs, shape, k, o, true, &ct.cast(DType::F64).to_vec::<f64>());
            let what = format!("max {shape:?} {k:?} {o:?} {dtype}");
            let oh = torch_out(shape[2], o.padding.0, k.0, o.stride.0, o.dilation.0, o.ceil_mode);
            let ow = torch_out(shape[3], o.padding.1, k.1, o.stride.1, o.dilation.1, o.ceil_mode);
            assert_eq!(y.shape(), &[shape[0], shape[1], oh, ow], "{what}: shape");
            let tol = if dtype == DType::F64 { 1e-13 } else { 1e-6 };
            close(&format!("{what}: y"), &y, &want_y, tol);
            let loss = move |x: &Tensor| (nb::max_pool2d_with(x, k, o) * &ct).sum_all();
            close(&format!("{what}: dx"), &nb::grad(loss)(&x), &want_dx, tol);
            // vmap over the batch gives each image's pooling; a jit replay gives eager's bits.
            let batched = nb::vmap(move |x: &Tensor| nb::max_pool2d_with(&x.expand_dims(0), k, o).squeeze([0]))(&x);
            assert_eq!(batched.to_vec::<f64>(), y.to_vec::<f64>(), "{what}: vmap");
            let jitted = nb::jit(move |x: &Tensor| nb::max_pool2d_with(x, k, o));
            for _ in 0..2 {
                assert_eq!(jitted(&x).to_vec::<f64>(), y.to_vec::<f64>(), "{what}: jit");
            }
        }
    }
}

#[test]
fn average_pooling_refuses_a_dilation() {
    let x = Tensor::from_vec(inputs(25, 1), &[1, 1, 5, 5]);
    let o = Pool2dOptions::new((1, 1), (0, 0)).dilation((2, 1));
    let msg = common::panic_message(|| drop(nb::avg_pool2d_with(&x, (2, 2), o)));
    assert!(
        msg.contains("avg_pool2d") && msg.contains("dilation") && msg.contains("[1, 1, 5, 5]"),
        "{msg}"
    );
}
