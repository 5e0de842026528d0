//! The window primitives behind convolutions and pooling (im2col `unfold_windows` and its
//! transpose col2im `fold_windows`): conv2d and its gradients against a direct f64 loop in
//! every float dtype, small and large enough to split across threads, with strides, dilations
//! and groups; one primitive each in a traced program; the same values under jit and vmap.
//! Their JAX values and finite differences (of every order) are in the fixture matrix
//! (`compositions.rs`, `derivatives.rs`, `jax_reference.rs`).

use nabla_core as nb;
use nb::{Conv2dOptions, ConvAlgorithm, DType, Tensor};

/// Values in `[-1, 1)` from a fixed integer hash.
fn inputs(n: usize, seed: u64) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ seed.wrapping_mul(0x2545_F491))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(23);
            (h % 2000) as f64 / 1000.0 - 1.0
        })
        .collect()
}

/// A convolution case: input `[N, C, H, W]`, weight `[O, C / groups, KH, KW]`, options.
struct Case {
    x: [usize; 4],
    w: [usize; 4],
    o: Conv2dOptions,
}

impl Case {
    fn out(&self) -> [usize; 4] {
        let ext = |n: usize, p: usize, k: usize, s: usize, d: usize| (n + 2 * p - d * (k - 1) - 1) / s + 1;
        let o = &self.o;
        [
            self.x[0],
            self.w[0],
            ext(self.x[2], o.padding.0, self.w[2], o.stride.0, o.dilation.0),
            ext(self.x[3], o.padding.1, self.w[3], o.stride.1, o.dilation.1),
        ]
    }

    /// Calls `f(n, o, c, y, x, oh, ow, i, j)` for every term `x[n, c, h, w] * w[o, c - g0, i, j]`
    /// of the output `[n, o, oh, ow]` whose pixel `(h, w)` lies inside the (unpadded) image.
    fn terms(&self, mut f: impl FnMut([usize; 4], [usize; 4], [usize; 4])) {
        let [n, oc, oh, ow] = self.out();
        let (cg, kh, kw) = (self.w[1], self.w[2], self.w[3]);
        let per_group = oc / self.o.groups;
        for b in 0..n {
            for o in 0..oc {
                let g = o / per_group;
                for y in 0..oh {
                    for x in 0..ow {
                        for c in 0..cg {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let h = (y * self.o.stride.0 + i * self.o.dilation.0) as isize
                                        - self.o.padding.0 as isize;
                                    let w = (x * self.o.stride.1 + j * self.o.dilation.1) as isize
                                        - self.o.padding.1 as isize;
                                    if h < 0 || w < 0 || h >= self.x[2] as isize || w >= self.x[3] as isize {
                                        continue;
                                    }
                                    f([b, g * cg + c, h as usize, w as usize], [o, c, i, j], [b, o, y, x]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Row-major offset of `idx` in `shape`.
fn at(shape: [usize; 4], idx: [usize; 4]) -> usize {
    ((idx[0] * shape[1] + idx[1]) * shape[2] + idx[2]) * shape[3] + idx[3]
}

/// The direct convolution and, for the cotangent `ct`, the gradients of `<conv(x, w), ct>`
/// with respect to `x` and `w`, all in f64.
fn reference(case: &Case, x: &[f64], w: &[f64], ct: &[f64]) -> [Vec<f64>; 3] {
    let (ys, xs, ws) = (case.out(), case.x, case.w);
    let mut y = vec![0.0; ys.iter().product()];
    let mut gx = vec![0.0; x.len()];
    let mut gw = vec![0.0; w.len()];
    case.terms(|xi, wi, yi| {
        let (xa, wa, ya) = (at(xs, xi), at(ws, wi), at(ys, yi));
        y[ya] += x[xa] * w[wa];
        gx[xa] += ct[ya] * w[wa];
        gw[wa] += ct[ya] * x[xa];
    });
    [y, gx, gw]
}

fn cases() -> Vec<Case> {
    let opts = |stride, padding, dilation, groups| Conv2dOptions {
        stride,
        padding,
        dilation,
        groups,
        algorithm: ConvAlgorithm::Auto,
    };
    vec![
        Case {
            x: [2, 3, 6, 5],
            w: [4, 3, 3, 3],
            o: opts((1, 1), (1, 1), (1, 1), 1),
        },
        Case {
            x: [1, 2, 9, 8],
            w: [3, 2, 2, 3],
            o: opts((2, 3), (0, 1), (2, 1), 1),
        },
        Case {
            x: [2, 4, 5, 7],
            w: [6, 2, 3, 1],
            o: opts((1, 2), (2, 0), (1, 1), 2),
        },
        // Large enough that im2col and col2im split the images across threads.
        Case {
            x: [4, 8, 24, 20],
            w: [8, 8, 3, 3],
            o: opts((1, 1), (1, 1), (1, 1), 1),
        },
        Case {
            x: [2, 6, 17, 19],
            w: [6, 1, 5, 3],
            o: opts((2, 1), (2, 1), (1, 2), 6),
        },
        // Stride 1 takes the shifted-row products (no im2col): dilated, grouped, unpadded,
        // one-column and 1x1 kernels, and one large enough to split each product across threads.
        Case {
            x: [2, 4, 7, 9],
            w: [6, 2, 2, 3],
            o: opts((1, 1), (0, 2), (2, 1), 2),
        },
        Case {
            x: [1, 3, 5, 4],
            w: [2, 3, 3, 1],
            o: opts((1, 1), (0, 0), (1, 1), 1),
        },
        Case {
            x: [2, 8, 4, 4],
            w: [5, 8, 1, 1],
            o: opts((1, 1), (0, 0), (1, 1), 1),
        },
        Case {
            x: [2, 8, 30, 33],
            w: [16, 4, 3, 3],
            o: opts((1, 1), (2, 2), (2, 2), 2),
        },
        // Strides above 1 without dilation take the shifted rows over the phase images: a
        // ResNet-like downsampling (Auto picks it for a constant input), a 7x7 stem at stride 2 with a kernel that is
        // not a multiple of the stride, strides above the kernel, a 1x1 kernel, padding past
        // the rows any output reads (cropped), and groups.
        Case {
            x: [2, 16, 32, 31],
            w: [64, 16, 3, 3],
            o: opts((2, 2), (1, 1), (1, 1), 1),
        },
        Case {
            x: [1, 3, 13, 12],
            w: [4, 3, 7, 7],
            o: opts((2, 2), (3, 3), (1, 1), 1),
        },
        Case {
            x: [2, 2, 11, 10],
            w: [3, 2, 2, 3],
            o: opts((3, 4), (1, 0), (1, 1), 1),
        },
        Case {
            x: [1, 4, 9, 7],
            w: [5, 4, 1, 1],
            o: opts((2, 3), (0, 0), (1, 1), 1),
        },
        Case {
            x: [1, 2, 12, 9],
            w: [4, 1, 3, 2],
            o: opts((3, 2), (1, 3), (1, 1), 2),
        },
    ]
}

/// The largest error allowed in `dtype` for a sum `want` of `terms` products of magnitude below
/// 1: the accumulation's rounding (in f32 for halves, f64 for f64), which grows like the
/// square root of the number of terms for random signs, plus roundings to `dtype` of the result
/// and of intermediates (im2col columns and their gradient are stored in `dtype`).
fn tolerance(dtype: DType, terms: usize, want: f64) -> f64 {
    let (accumulate, store) = match dtype {
        DType::F64 => (1.1e-16, 1.1e-16),
        DType::F32 => (6e-8, 6e-8),
        DType::F16 => (6e-8, 4.9e-4),
        _ => (6e-8, 3.9e-3),
    };
    let spread = (terms as f64).sqrt();
    2.0 * store * (want.abs() + spread) + 8.0 * accumulate * (want.abs() + 1.0) * spread
}

#[test]
fn conv2d_and_its_gradients_match_a_direct_loop_in_every_float_dtype() {
    for (k, case) in cases().iter().enumerate() {
        let (nx, nw, ny) = (
            case.x.iter().product::<usize>(),
            case.w.iter().product::<usize>(),
            case.out().iter().product::<usize>(),
        );
        // Terms summed per element: of an output value, of an input gradient, of a weight gradient.
        let taps = case.w[2] * case.w[3];
        let terms = [
            case.w[1] * taps,
            case.w[0] / case.o.groups * taps,
            case.x[0] * case.out()[2] * case.out()[3],
        ];
        let mut algorithms = vec![ConvAlgorithm::Auto, ConvAlgorithm::Windows];
        if case.o.stride == (1, 1) || case.o.dilation == (1, 1) {
            algorithms.push(ConvAlgorithm::ShiftedRows);
        }
        for (algorithm, dtype) in algorithms
            .into_iter()
            .flat_map(|a| [DType::F64, DType::F32, DType::F16, DType::BF16].map(|d| (a, d)))
        {
            // The reference sees the inputs as rounded to `dtype`.
            let round = |v: Vec<f64>, shape: &[usize]| Tensor::from_vec(v, shape).cast(dtype);
            let x = round(inputs(nx, 3 * k as u64), &case.x);
            let w = round(inputs(nw, 3 * k as u64 + 1), &case.w);
            let ct = round(inputs(ny, 3 * k as u64 + 2), &case.out());
            let as_f64 = |t: &Tensor| t.cast(DType::F64).to_vec::<f64>();
            let want = reference(case, &as_f64(&x), &as_f64(&w), &as_f64(&ct));
            let o = Conv2dOptions { algorithm, ..case.o };
            let (y, pullback) = nb::vjp(
                |p: &Vec<Tensor>| nb::conv2d(&p[0], &p[1], o),
                &vec![x.clone(), w.clone()],
            );
            let grads = pullback(&y.ones_like().mul(&ct));
            let got = [y, grads[0].clone(), grads[1].clone()];
            for ((what, n), (g, want)) in ["value", "x gradient", "w gradient"]
                .iter()
                .zip(terms)
                .zip(got.iter().zip(&want))
            {
                assert_eq!(g.dtype(), dtype, "case {k} {algorithm:?} {what}");
                for (i, (&a, &b)) in as_f64(g).iter().zip(want).enumerate() {
                    let tol = tolerance(dtype, n, b);
                    assert!(
                        (a - b).abs() <= tol,
                        "case {k} {algorithm:?} {dtype:?} {what}: element {i}: got {a}, want {b} (tolerance {tol})"
                    );
                }
            }
        }
    }
}

/// The trace of the gradient of `case`'s squared convolution computed with `algorithm`.
fn gradient_graph(case: &Case, algorithm: ConvAlgorithm) -> String {
    let x = Tensor::from_vec(inputs(case.x.iter().product(), 1), &case.x);
    let w = Tensor::from_vec(inputs(case.w.iter().product(), 2), &case.w);
    let o = Conv2dOptions { algorithm, ..case.o };
    nb::trace_graph(
        |xs| {
            let g = nb::grad(|p: &Vec<Tensor>| nb::conv2d(&p[0], &p[1], o).square().sum(nb::Axes::All, false));
            g(&xs.to_vec())
        },
        &[x, w],
    )
}

#[test]
fn the_windows_are_one_primitive_each_way_in_a_traced_gradient() {
    // Case 1 has strides (2, 3): im2col and col2im.
    let graph = gradient_graph(&cases()[1], ConvAlgorithm::Auto);
    assert_eq!(graph.matches("unfold_windows(").count(), 1, "{graph}");
    assert_eq!(graph.matches("fold_windows(").count() - 1, 1, "one fold: {graph}");
    // The padding is the only embedding: the windows' gradient is not one embedding per tap.
    assert_eq!(graph.matches("embed(").count(), 1, "{graph}");
    assert_eq!(graph.matches("tap_").count(), 0, "{graph}");
}

#[test]
fn stride_one_convolutions_and_their_gradients_are_shifted_row_products_without_windows() {
    // The value and the input gradient are one tap_matmul each, the weight gradient one
    // tap_outer, and no im2col matrix is built either way.
    let shifted = |graph: &str| {
        graph.matches("tap_matmul(").count() == 2
            && graph.matches("tap_outer(").count() == 1
            && graph.matches("fold_windows(").count() == 0
    };
    let graph = gradient_graph(&cases()[0], ConvAlgorithm::ShiftedRows);
    assert!(shifted(&graph), "{graph}");
    // Auto: windows for case 0 (3 input channels), shifted rows for a layer with 16 input
    // channels over 32x32 images (2.5 M multiply-adds per image).
    let graph = gradient_graph(&cases()[0], ConvAlgorithm::Auto);
    assert!(!shifted(&graph) && graph.contains("unfold_windows("), "{graph}");
    let layer = Case {
        x: [1, 16, 32, 32],
        w: [16, 16, 3, 3],
        o: Conv2dOptions {
            padding: (1, 1),
            ..Conv2dOptions::default()
        },
    };
    assert!(shifted(&gradient_graph(&layer, ConvAlgorithm::Auto)));
    // Windows is honoured at stride 1, and shifted rows are refused where strided and dilated.
    assert!(!shifted(&gradient_graph(&layer, ConvAlgorithm::Windows)));
    let x = Tensor::zeros(&[1, 1, 5, 5], DType::F32);
    let w = Tensor::zeros(&[1, 1, 3, 3], DType::F32);
    let o = Conv2dOptions {
        stride: (2, 1),
        dilation: (1, 2),
        algorithm: ConvAlgorithm::ShiftedRows,
        ..Conv2dOptions::default()
    };
    let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| nb::conv2d(&x, &w, o))).unwrap_err();
    let e = e.downcast::<String>().map(|s| *s).unwrap_or_default();
    assert!(
        e.contains("ShiftedRows needs stride (1, 1) or dilation (1, 1)")
            && e.contains("got stride (2, 1), dilation (1, 2)"),
        "{e}"
    );
}

#[test]
fn strided_convolutions_are_shifted_row_products_over_phase_images() {
    // Case 9, a 3x3 stride-2 downsampling: over its 4 phase images the value and the weight
    // gradient are one product each over every tap, the input gradient one product per phase
    // image over its own taps (4, 2, 2 and 1 of them).
    let shifted = |graph: &str| {
        graph.matches("tap_matmul(").count() == 5
            && graph.matches("tap_outer(").count() == 1
            && !graph.contains("unfold_windows(")
    };
    let graph = gradient_graph(&cases()[9], ConvAlgorithm::ShiftedRows);
    assert!(shifted(&graph), "{graph}");
    for taps in ["taps=(2, 2)", "taps=(2, 1)", "taps=(1, 2)", "taps=(1, 1)"] {
        assert!(
            graph.contains(&format!("tap_matmul({taps}, steps=(-17, -1)")),
            "{taps}: {graph}"
        );
    }
    assert!(graph.contains("phases=(2, 2), plane=306"), "{graph}");
    // Auto keeps the windows where the input is traced (its gradient may be asked for) and
    // takes the phase images where it is not, as for a network's input; a 1x1 kernel at
    // stride 2 (it reads one phase image of 4) and a dilated one keep the windows.
    assert!(gradient_graph(&cases()[9], ConvAlgorithm::Auto).contains("unfold_windows("));
    assert!(weight_gradient_graph(&cases()[9]).contains("phases=(2, 2), plane=306"));
    let pointwise = Case {
        x: [2, 16, 16, 16],
        w: [32, 16, 1, 1],
        o: Conv2dOptions {
            stride: (2, 2),
            ..Conv2dOptions::default()
        },
    };
    assert!(gradient_graph(&pointwise, ConvAlgorithm::Auto).contains("unfold_windows("));
    let forced = gradient_graph(&pointwise, ConvAlgorithm::ShiftedRows);
    assert!(
        !forced.contains("unfold_windows(") && forced.contains("phases=(2, 2)"),
        "{forced}"
    );
    assert!(gradient_graph(&cases()[4], ConvAlgorithm::Auto).contains("unfold_windows("));
    // A 3-channel 7x7 stem at stride 2, whose images are constants.
    let stem = Case {
        x: [1, 3, 40, 40],
        w: [16, 3, 7, 7],
        o: Conv2dOptions {
            stride: (2, 2),
            padding: (3, 3),
            ..Conv2dOptions::default()
        },
    };
    let graph = weight_gradient_graph(&stem);
    assert!(
        graph.contains("phases=(2, 2)") && graph.contains("tap_outer(") && !graph.contains("unfold_windows("),
        "{graph}"
    );
}

/// The trace of the gradient of `case`'s squared convolution (with `Auto`) with respect to
/// the weights alone, the input a constant.
fn weight_gradient_graph(case: &Case) -> String {
    let x = Tensor::from_vec(inputs(case.x.iter().product(), 1), &case.x);
    let w = Tensor::from_vec(inputs(case.w.iter().product(), 2), &case.w);
    let o = case.o;
    nb::trace_graph(
        |ws| {
            vec![nb::grad(|w: &Tensor| {
                nb::conv2d(&x, w, o).square().sum(nb::Axes::All, false)
            })(&ws[0])]
        },
        &[w],
    )
}

/// Asserts that `got` and `want` agree elementwise within `tol`.
fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    for (i, (a, b)) in got.to_vec::<f64>().iter().zip(want.to_vec::<f64>()).enumerate() {
        assert!((a - b).abs() <= tol, "{what}: element {i}: {a} vs {b}");
    }
}

#[test]
fn convolutions_under_jit_and_vmap_match_the_eager_ones() {
    // Case 1 goes through the windows (strides (2, 3)), case 5 through the shifted rows, cases
    // 10 and 13 through the shifted rows over phase images (a 7x7 kernel at stride 2; groups
    // and a cropped image at strides (3, 2)).
    for (k, algorithm) in [
        (1, ConvAlgorithm::Auto),
        (5, ConvAlgorithm::ShiftedRows),
        (10, ConvAlgorithm::ShiftedRows),
        (13, ConvAlgorithm::ShiftedRows),
    ] {
        let case = &cases()[k];
        let o = Conv2dOptions { algorithm, ..case.o };
        let w = Tensor::from_vec(inputs(case.w.iter().product(), 5), &case.w);
        let loss = |p: &Vec<Tensor>| nb::conv2d(&p[0], &p[1], o).tanh().sum(nb::Axes::All, false);
        let step = nb::Jit::new(move |p: &Vec<Tensor>| {
            let (v, g) = nb::value_and_grad(loss)(p);
            vec![v, g[0].clone(), g[1].clone()]
        });
        for seed in [7u64, 8, 9] {
            let x = Tensor::from_vec(inputs(case.x.iter().product(), seed), &case.x);
            let p = vec![x, w.clone()];
            let (v, g) = nb::value_and_grad(loss)(&p);
            let jitted = step.call(&p);
            for (what, (a, b)) in ["value", "x gradient", "w gradient"]
                .iter()
                .zip(jitted.iter().zip([&v, &g[0], &g[1]]))
            {
                assert_eq!(a.to_vec::<f64>(), b.to_vec::<f64>(), "case {k} jit call {seed}: {what}");
            }
        }
        assert_eq!((step.cache_info().compiled, step.cache_info().replays), (1, 2));
        // vmap over a leading batch of image batches, and over a batch of weights: the same
        // as one call per element.
        let mut batched = vec![3];
        batched.extend(case.x);
        let xs = Tensor::from_vec(inputs(batched.iter().product(), 11), &batched);
        let grads = nb::vmap(|x: &Tensor| nb::grad(|x: &Tensor| loss(&vec![x.clone(), w.clone()]))(x))(&xs);
        let mut batched = vec![3];
        batched.extend(case.w);
        let ws = Tensor::from_vec(inputs(batched.iter().product(), 12), &batched);
        let x = xs.index_axis(0, 0);
        let w_grads = nb::vmap(|w: &Tensor| nb::grad(|w: &Tensor| loss(&vec![x.clone(), w.clone()]))(w))(&ws);
        for b in 0..3 {
            let xb = xs.index_axis(0, b);
            let want = nb::grad(|x: &Tensor| loss(&vec![x.clone(), w.clone()]))(&xb);
            assert_close(
                &grads.index_axis(0, b),
                &want,
                1e-12,
                &format!("case {k} vmap over x, element {b}"),
            );
            let wb = ws.index_axis(0, b);
            let want = nb::grad(|w: &Tensor| loss(&vec![x.clone(), w.clone()]))(&wb);
            assert_close(
                &w_grads.index_axis(0, b),
                &want,
                1e-12,
                &format!("case {k} vmap over w, element {b}"),
            );
        }
    }
}

#[test]
fn zero_strides_dilations_and_kernels_are_refused_naming_the_window() {
    let x = Tensor::zeros(&[1, 1, 5, 5], DType::F32);
    let opts = |stride, dilation| Conv2dOptions {
        stride,
        dilation,
        ..Conv2dOptions::default()
    };
    for (w, o) in [
        (Tensor::zeros(&[1, 1, 3, 3], DType::F32), opts((0, 1), (1, 1))),
        (Tensor::zeros(&[1, 1, 3, 3], DType::F32), opts((1, 1), (1, 0))),
        (Tensor::zeros(&[1, 1, 0, 3], DType::F32), opts((1, 1), (1, 1))),
    ] {
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| nb::conv2d(&x, &w, o))).unwrap_err();
        let e = e.downcast::<String>().map(|s| *s).unwrap_or_default();
        assert!(
            e.starts_with("conv2d: a ") && e.contains("must be at least 1"),
            "{o:?}: {e}"
        );
    }
}
