//! custom_vjp and custom_jvp on the examples of JAX's documentation ("Custom derivative rules
//! for JAX-transformable Python functions"); the expected values are the closed forms of those
//! examples, evaluated in f64 here.

use nabla_core as nb;
use nb::{DType, Tensor, custom_jvp, custom_vjp};

fn s(x: f64) -> Tensor {
    Tensor::from_vec(vec![x], &[])
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
}

/// JAX's `log1pexp`: log(1 + exp(x)), whose autodiff gives NaN at large x; the custom JVP
/// `t * (1 - 1 / (1 + exp(x)))` is stable.
fn log1pexp() -> impl Fn(&Tensor) -> Tensor {
    custom_jvp(
        |x: &Tensor| (x.exp() + 1.0).log(),
        |x: &Tensor, t: &Tensor| t * &((x.exp() + 1.0).powf(-1.0) * -1.0 + 1.0),
    )
}

#[test]
fn custom_jvp_log1pexp_is_stable_in_every_mode_and_order() {
    let f = log1pexp();
    // In f32, plain autodiff of the same formula gives NaN at 100 (exp overflows: 0 * inf);
    // the rule gives 1, as in JAX's example.
    let x32 = Tensor::from_vec(vec![100.0f32], &[]);
    let plain = nb::grad(|x: &Tensor| (x.exp() + 1.0).log())(&x32).item::<f32>();
    assert!(plain.is_nan(), "{plain}");
    assert_eq!(nb::grad(&f)(&x32).item::<f32>(), 1.0);
    close(nb::grad(&f)(&s(100.0)).item::<f64>(), 1.0);
    close(nb::jvp(&f, &s(100.0), &s(1.0)).1.item::<f64>(), 1.0);
    close(nb::jacfwd(&f)(&s(100.0)).item::<f64>(), 1.0);
    // Second order (reverse over reverse, forward over reverse): sigmoid'(x) = s (1 - s).
    let sig = 1.0 / (1.0 + (-0.5f64).exp());
    close(nb::grad(nb::grad(&f))(&s(0.5)).item::<f64>(), sig * (1.0 - sig));
    close(nb::hessian(&f)(&s(0.5)).item::<f64>(), sig * (1.0 - sig));
    // vmap of grad, and jit of grad.
    let xs = Tensor::from_vec(vec![0.0f64, 3.0, 100.0], &[3]);
    let g = nb::vmap(nb::grad(&f))(&xs).to_vec::<f64>();
    for (gi, xi) in g.iter().zip([0.0f64, 3.0, 100.0]) {
        close(*gi, 1.0 - 1.0 / (1.0 + xi.exp()));
    }
    let jitted = nb::jit(nb::grad(log1pexp()));
    close(jitted(&s(2.0)).item::<f64>(), 1.0 - 1.0 / (1.0 + 2.0f64.exp()));
    close(jitted(&s(-1.0)).item::<f64>(), 1.0 - 1.0 / (1.0 + (-1.0f64).exp()));
}

#[test]
fn custom_jvp_of_two_arguments_gives_jax_s_grad() {
    // f(x, y) = sin(x) y with the JVP cos(x) x_dot y + sin(x) y_dot: grad at (2, 3).
    let f = custom_jvp(
        |a: &(Tensor, Tensor)| a.0.sin() * &a.1,
        |a: &(Tensor, Tensor), t: &(Tensor, Tensor)| a.0.cos() * &t.0 * &a.1 + a.0.sin() * &t.1,
    );
    let (gx, gy) = nb::grad(&f)(&(s(2.0), s(3.0)));
    close(gx.item::<f64>(), 2.0f64.cos() * 3.0);
    close(gy.item::<f64>(), 2.0f64.sin());
}

#[test]
fn custom_vjp_replaces_the_reverse_rule_and_keeps_second_order() {
    // JAX's example: f(x, y) = sin(x) y; fwd saves (cos x, sin x, y); bwd (cos x g y, sin x g).
    let f = custom_vjp(
        |a: &(Tensor, Tensor)| (a.0.sin() * &a.1, (a.0.cos(), a.0.sin(), a.1.clone())),
        |r: &(Tensor, Tensor, Tensor), g: &Tensor| (&r.0 * g * &r.2, &r.1 * g),
    );
    let (gx, gy) = nb::grad(&f)(&(s(3.0), s(4.0)));
    close(gx.item::<f64>(), 3.0f64.cos() * 4.0);
    close(gy.item::<f64>(), 3.0f64.sin());
    // Residuals computed from the inputs keep their derivatives: d/dx (cos x * y) = -sin x * y.
    let gxx = nb::grad(|a: &(Tensor, Tensor)| nb::grad(&f)(a).0)(&(s(3.0), s(4.0)));
    close(gxx.0.item::<f64>(), -(3.0f64.sin()) * 4.0);
    close(gxx.1.item::<f64>(), 3.0f64.cos());
}

#[test]
fn custom_vjp_gradient_clipping_and_vmap() {
    // JAX's clip_gradient: identity forward, cotangent clipped to [-0.5, 0.5] backward.
    let clip = custom_vjp(|x: &Tensor| (x.clone(), ()), |_: &(), g: &Tensor| g.clamp(-0.5, 0.5));
    let f = |x: &Tensor| (clip(&(x * 3.0)) * 2.0).sum_all();
    // d/dx: 2 -> clipped to 0.5 -> times 3.
    let x = Tensor::from_vec(vec![0.1f64, -2.0, 5.0], &[3]);
    assert_eq!(nb::grad(f)(&x).to_vec::<f64>(), vec![1.5, 1.5, 1.5]);
    let rows = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[2, 2]);
    let per_row = nb::vmap(nb::grad(|r: &Tensor| (clip(r) * r).sum_all()))(&rows);
    // d/dr (clip(r) * r) = clip'(ct = r) + clip(r) = clamp(r, -.5, .5) + r.
    assert_eq!(per_row.to_vec::<f64>(), vec![1.5, 2.5, 3.5, 4.5]);
}

#[test]
fn forward_mode_through_a_custom_vjp_is_refused_plainly() {
    let f = custom_vjp(|x: &Tensor| (x.sin(), x.cos()), |c: &Tensor, g: &Tensor| c * g);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| nb::jvp(&f, &s(1.0), &s(1.0)))).unwrap_err();
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|m| m.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("custom_vjp: forward-mode differentiation"), "{msg}");
    // Values pass through untouched, untraced.
    close(f(&s(1.0)).item::<f64>(), 1.0f64.sin());
    assert_eq!(f(&Tensor::ones(&[2], DType::F32)).dtype(), DType::F32);
}
