//! The transforms under nesting: perturbation confusion, higher derivatives, gradient
//! accumulation by `backward`, graph freeing, and the error messages of misuse.

mod common;

use common::panic_message;
use nabla_core as nb;
use nb::{BackwardOptions, DType, Tensor};

fn f64s(v: f64) -> Tensor {
    nb::tensor_of(v, DType::F64)
}

#[test]
fn perturbation_confusion_is_avoided() {
    // d/dx [ x * (d/dy x*y) ] = d/dx [x * x] = 2x; the classic bug gives 3x or x.
    let outer = nb::grad(|x: &Tensor| {
        let x_captured = x.clone();
        let inner = nb::grad(move |y: &Tensor| &x_captured * y);
        x * inner(&f64s(5.0))
    });
    for x in [1.0, 2.5, -3.0] {
        assert_eq!(outer(&f64s(x)).item::<f64>(), 2.0 * x);
    }
}

#[test]
fn fourth_derivative_of_x4_by_nested_grad() {
    let f = |x: &Tensor| x.powf(4.0);
    let d1 = nb::grad(f);
    let d2 = nb::grad(move |x: &Tensor| d1(x));
    let d1b = nb::grad(f);
    let d3 = nb::grad(move |x: &Tensor| nb::grad(|y: &Tensor| d1b(y))(x));
    let x = f64s(2.0);
    assert_eq!(nb::grad(f)(&x).item::<f64>(), 32.0);
    assert_eq!(d2(&x).item::<f64>(), 48.0);
    assert_eq!(d3(&x).item::<f64>(), 48.0);
    let d4 = nb::grad(|x: &Tensor| nb::grad(|y: &Tensor| nb::grad(|z: &Tensor| nb::grad(f)(z))(y))(x));
    assert_eq!(d4(&x).item::<f64>(), 24.0);
}

#[test]
fn forward_over_reverse_and_reverse_over_forward_agree() {
    // Hessian-vector product of f(x) = sum(sin(x) * x^2) three ways.
    let f = |x: &Tensor| (x.sin() * x.square()).sum_all();
    let x = nb::tensor_of([0.3, -1.2, 2.0], DType::F64);
    let v = nb::tensor_of([1.0, 0.5, -2.0], DType::F64);
    let (_, fwd_rev) = nb::jvp(|x| nb::grad(f)(x), &x, &v);
    let rev_fwd = nb::grad(|x: &Tensor| nb::jvp(f, x, &v).1)(&x);
    let (_, pb) = nb::vjp(|x| nb::grad(f)(x), &x);
    let rev_rev = pb(&v);
    // The exact Hessian is diagonal: d2/dx2 [x^2 sin x] = 2 sin x + 4x cos x - x^2 sin x.
    let exact: Vec<f64> = x
        .to_vec::<f64>()
        .iter()
        .zip(v.to_vec::<f64>())
        .map(|(&a, b)| (2.0 * a.sin() + 4.0 * a * a.cos() - a * a * a.sin()) * b)
        .collect();
    for got in [fwd_rev, rev_fwd, rev_rev] {
        for (g, e) in got.to_vec::<f64>().iter().zip(&exact) {
            assert!((g - e).abs() < 1e-12, "{g} vs {e}");
        }
    }
}

#[test]
fn backward_accumulates_across_calls_and_frees_the_graph() {
    let w = nb::tensor_of([1.0, 2.0, 3.0], DType::F64).requires_grad();
    let loss = (&w * &w).sum_all();
    nb::backward(
        std::slice::from_ref(&loss),
        &[loss.ones_like()],
        BackwardOptions {
            retain_graph: Some(true),
            show_graph: false,
        },
    );
    assert_eq!(w.grad().unwrap().to_vec::<f64>(), vec![2.0, 4.0, 6.0]);
    loss.backward();
    assert_eq!(w.grad().unwrap().to_vec::<f64>(), vec![4.0, 8.0, 12.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
    let freed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loss.backward()));
    let msg = *freed.expect_err("graph was freed").downcast::<String>().unwrap();
    assert!(msg.contains("already freed") && msg.contains("retain_graph"), "{msg}");
}

#[test]
fn backward_reaches_only_requires_grad_leaves() {
    let a = nb::tensor_of([1.0, 2.0], DType::F64).requires_grad();
    let b = nb::tensor_of([3.0, 4.0], DType::F64);
    let loss = (&a * &b).sum_all() + a.exp().sum_all();
    loss.backward();
    let g = a.grad().unwrap().to_vec::<f64>();
    assert!((g[0] - (3.0 + 1f64.exp())).abs() < 1e-12 && (g[1] - (4.0 + 2f64.exp())).abs() < 1e-12);
    assert!(!b.is_traced());
}

#[test]
fn untraced_results_carry_no_graph() {
    let x = nb::tensor([1.0, 2.0]);
    assert!(!(x.exp() * 2.0).is_traced());
    let (y, g) = nb::value_and_grad(|x: &Tensor| x.square().sum_all())(&x);
    assert!(
        !y.is_traced() && !g.is_traced(),
        "finished transforms must release their trace"
    );
}

#[test]
fn graph_printout_has_one_line_per_op() {
    let text = nb::trace_graph(
        |a| vec![(a[0].tanh() * &a[1]).sum(0, false)],
        &[nb::tensor([1.0, 2.0]), nb::tensor([3.0, 4.0])],
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[2].contains("= tanh(%") && lines[3].contains("= mul(%"), "{text}");
    assert!(lines.last().unwrap().starts_with("return %"), "{text}");
}

#[test]
fn misuse_gives_messages_that_name_the_problem() {
    let m = panic_message(|| {
        nb::grad(|x: &Tensor| x * 2.0)(&nb::tensor([1.0, 2.0]));
    });
    assert!(m.contains("grad") && m.contains("scalar") && m.contains("[2]"), "{m}");
    let m = panic_message(|| {
        nb::jvp(|x| x.exp(), &nb::tensor([1.0, 2.0]), &nb::tensor([1.0]));
    });
    assert!(
        m.contains("jvp") && m.contains("tangent 0") && m.contains("[1]") && m.contains("[2]"),
        "{m}"
    );
    let m = panic_message(|| {
        let (_, pb) = nb::vjp(|x| x.exp(), &nb::tensor([1.0, 2.0]));
        pb(&nb::tensor([1.0, 2.0, 3.0]));
    });
    assert!(
        m.contains("vjp") && m.contains("cotangent 0") && m.contains("[3]"),
        "{m}"
    );
}

#[test]
fn long_chains_are_differentiated_and_freed_without_stack_overflow() {
    let x = nb::tensor_of(1.0, DType::F64);
    let (out, pullback) = nb::vjp(
        |x| {
            let mut y = x.clone();
            for _ in 0..100_000 {
                y = &y * 1.0;
            }
            y
        },
        &x,
    );
    assert_eq!(out.item::<f64>(), 1.0);
    assert_eq!(pullback(&out.ones_like()).item::<f64>(), 1.0);
    drop(pullback); // drops a 100k-node chain
}
