//! Max pooling with the windows' maxima found in place (`Backend::pool_argmax` on the CPU):
//! values and gradients against a direct f64 loop in every float dtype, over padded,
//! overlapping and uneven windows and images large enough to split across threads; NaN and
//! ties; the traced graph (a take of the chosen positions, no window tensor); jit replays that
//! choose again; and vmap (the composed path) equal to the eager result.

mod common;

use common::hashed_values as inputs;
use nabla_core as nb;
use nb::{DType, Tensor};

/// Kernel, stride and padding of one pooling.
type Pool = ((usize, usize), (usize, usize), (usize, usize));

/// The pooled values and the gradient of `sum(y * ct)` by a direct loop: each window's first
/// maximum in row-major order over the pixels of the image (padding never counts), the first
/// NaN when the window holds one.
fn reference(x: &[f64], shape: [usize; 4], (k, s, p): Pool, ct: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let [n, c, h, w] = shape;
    let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
    let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
    let (mut y, mut dx) = (Vec::new(), vec![0.0; x.len()]);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<usize> = None;
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
                        let better = match best {
                            None => true,
                            Some(b) => x[at] > x[b] || (x[at].is_nan() && !x[b].is_nan()),
                        };
                        if better {
                            best = Some(at);
                        }
                    }
                }
                let b = best.expect("every window holds a pixel");
                dx[b] += ct[y.len()];
                y.push(x[b]);
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
        // Overlapping windows (stride 1): a pixel that is the maximum of several windows
        // gathers all their cotangents.
        ([2, 1, 6, 5], ((3, 3), (1, 1), (1, 1))),
        // The ResNet stem's pooling over enough planes to run on several threads.
        ([4, 8, 64, 64], ((3, 3), (2, 2), (1, 1))),
    ]
}

fn close(what: &str, got: &Tensor, want: &[f64], tol: f64) {
    let got = got.cast(DType::F64).to_vec::<f64>();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn pool(x: &Tensor, (k, s, p): Pool) -> Tensor {
    nb::max_pool2d(x, k, s, p)
}

#[test]
fn max_pooling_and_its_gradient_match_a_direct_loop_in_every_float_dtype() {
    for (shape, opts) in pools() {
        let len: usize = shape.iter().product();
        for dtype in [DType::F64, DType::F32, DType::BF16, DType::F16] {
            let x = Tensor::from_vec(inputs(len, 1), &shape).cast(dtype);
            let xs = x.cast(DType::F64).to_vec::<f64>();
            let y = pool(&x, opts);
            let ct = Tensor::from_vec(inputs(y.numel(), 2), y.shape()).cast(dtype);
            let (want_y, want_dx) = reference(&xs, shape, opts, &ct.cast(DType::F64).to_vec::<f64>());
            let what = format!("{shape:?} {opts:?} {dtype}");
            // The values are elements of x: exact in every dtype.
            close(&format!("{what}: y"), &y, &want_y, 0.0);
            let dx = nb::grad(|x: &Tensor| (pool(x, opts) * &ct).sum_all())(&x);
            // Overlapping windows add cotangents in the dtype.
            let tol = if dtype.is_half() { 2e-2 } else { 1e-6 };
            close(&format!("{what}: dx"), &dx, &want_dx, tol);
        }
    }
}

#[test]
fn nan_wins_its_window_and_ties_go_to_the_first_maximum() {
    // Plane 0: a NaN after a larger value; plane 1: every value equal.
    let mut values = inputs(32, 3);
    values[5] = f64::NAN;
    values[16..].iter_mut().for_each(|v| *v = 0.25);
    let x = Tensor::from_vec(values.clone(), &[1, 2, 4, 4]);
    let opts = ((2, 2), (2, 2), (0, 0));
    let y = pool(&x, opts).to_vec::<f64>();
    assert!(y[0].is_nan(), "the window holding the NaN pools to NaN: {y:?}");
    assert!(y[1..4].iter().all(|v| !v.is_nan()), "{y:?}");
    assert!(y[4..].iter().all(|&v| v == 0.25), "{y:?}");
    let dx = nb::grad(|x: &Tensor| pool(x, opts).sum_all())(&x).to_vec::<f64>();
    assert_eq!(dx[5], 1.0, "the NaN's position gets the cotangent");
    // Ties: each window's top-left pixel.
    let tied: Vec<f64> = dx[16..].to_vec();
    let mut want = vec![0.0; 16];
    for at in [0, 2, 8, 10] {
        want[at] = 1.0;
    }
    assert_eq!(tied, want);
}

#[test]
fn the_gradient_is_a_take_of_the_chosen_positions_without_windows() {
    let x = Tensor::from_vec(inputs(2 * 3 * 7 * 9, 4), &[2, 3, 7, 9]);
    let opts = pools()[0].1;
    let graph = nb::trace_graph(
        |xs| vec![nb::grad(|x: &Tensor| pool(x, opts).square().sum_all())(&xs[0])],
        std::slice::from_ref(&x),
    );
    assert!(graph.contains("take(axis=0)"), "{graph}");
    assert!(graph.contains("scatter_add_to_zeros(axis=0)"), "{graph}");
    assert!(!graph.contains("unfold"), "no window tensor: {graph}");
    // Second derivatives: the gradient of the gradient (a take of the scattered cotangent).
    let v = Tensor::from_vec(inputs(x.numel(), 5), x.shape());
    let hv = nb::jvp(nb::grad(|x: &Tensor| pool(x, opts).square().sum_all()), &x, &v).1;
    let y_positions = nb::grad(|x: &Tensor| pool(x, opts).sum_all())(&x).to_vec::<f64>();
    // d/dx sum(y^2) = 2 y at the chosen positions, so H v = 2 v there (each position chosen
    // by one window here: stride 2 and a 3x3 window can choose a pixel twice, so compare
    // against the count of windows choosing it).
    let want: Vec<f64> = v
        .to_vec::<f64>()
        .iter()
        .zip(&y_positions)
        .map(|(v, count)| 2.0 * v * count)
        .collect();
    close("Hv", &hv, &want, 1e-12);
}

#[test]
fn jit_replays_choose_again_and_vmap_matches_the_eager_pooling() {
    let (shape, opts) = pools()[0];
    let len: usize = shape.iter().product();
    let loss = move |x: &Tensor| pool(x, opts).tanh().sum_all();
    let step = nb::Jit::new(move |x: &Tensor| {
        let (v, g) = nb::value_and_grad(loss)(x);
        vec![v, g]
    });
    for seed in [6u64, 7, 8] {
        let x = Tensor::from_vec(inputs(len, seed), &shape);
        let (v, g) = nb::value_and_grad(loss)(&x);
        let jitted = step.call(&x);
        assert_eq!(jitted[0].to_vec::<f64>(), v.to_vec::<f64>(), "jit call {seed}: value");
        assert_eq!(
            jitted[1].to_vec::<f64>(),
            g.to_vec::<f64>(),
            "jit call {seed}: gradient"
        );
    }
    let xs = Tensor::from_vec(inputs(3 * len, 9), &[3, shape[0], shape[1], shape[2], shape[3]]);
    let mapped = nb::vmap(|x: &Tensor| pool(x, opts))(&xs);
    let grads = nb::vmap(nb::grad(loss))(&xs);
    for k in 0..3 {
        let one = xs.index_axis(0, k);
        assert_eq!(
            mapped.index_axis(0, k).to_vec::<f64>(),
            pool(&one, opts).to_vec::<f64>(),
            "vmap {k}"
        );
        close(
            &format!("vmap grad {k}"),
            &grads.index_axis(0, k),
            &nb::grad(loss)(&one).to_vec::<f64>(),
            1e-12,
        );
    }
}
