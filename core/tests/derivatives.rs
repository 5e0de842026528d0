//! The derivative matrix: for every differentiable fixture case (every op over scalar,
//! vector, rank-3 and broadcasting shapes), JVPs against central finite differences in f64,
//! forward/reverse agreement <u, J v> = <J^T u, v>, and for every elementwise, row and
//! convolution op the second derivatives (vjp of vjp, jvp of vjp) against finite differences of
//! the first.

mod common;

use common::{Case, float_inputs, load_cases, of_floats};
use nabla_core as nb;
use nb::{DType, Rng, Tensor};

const EPS: f64 = 1e-6;

fn dot(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x * y).sum_all().item::<f64>()).sum()
}

fn random_like(rng: &mut Rng, xs: &[Tensor]) -> Vec<Tensor> {
    xs.iter().map(|x| rng.normal(x.shape(), 0.0, 1.0, DType::F64)).collect()
}

fn shifted(xs: &[Tensor], v: &[Tensor], s: f64) -> Vec<Tensor> {
    xs.iter().zip(v).map(|(x, d)| x + d * s).collect()
}

/// Central difference of `f` at `xs` along `v`.
fn fd(f: &dyn Fn(&[Tensor]) -> Vec<Tensor>, xs: &[Tensor], v: &[Tensor]) -> Vec<Tensor> {
    let plus = f(&shifted(xs, v, EPS));
    let minus = f(&shifted(xs, v, -EPS));
    plus.iter().zip(&minus).map(|(p, m)| (p - m) / (2.0 * EPS)).collect()
}

fn close(name: &str, what: &str, got: &[Tensor], want: &[Tensor]) {
    for (g, w) in got.iter().zip(want) {
        common::assert_close(name, what, g, w, 1e-5, 1e-6);
    }
}

/// Cases with derivatives, except those whose inputs sit on a jump (`"kink": true`), where
/// finite differences do not apply (their JAX derivatives are checked in `jax_reference.rs`).
fn differentiable(c: &Case) -> bool {
    c.raw.get("vjp").is_some_and(|v| !v.is_null()) && !c.params["kink"].as_bool().unwrap_or(false)
}

const ELEMENTWISE: &[&str] = &[
    "neg",
    "sign",
    "exp",
    "log",
    "log1p",
    "sqrt",
    "rsqrt",
    "square",
    "abs",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "relu",
    "gelu",
    "gelu_exact",
    "silu",
    "softplus",
    "add",
    "sub",
    "mul",
    "div",
    "pow",
    "maximum",
    "minimum",
    "pow_scalar",
    "where",
    "clamp",
];

/// Ops whose rules are written from their output over a whole row: their second derivatives
/// are checked too (the rule is differentiated through `out`).
const ROW_OPS: &[&str] = &["softmax", "log_softmax", "cross_entropy", "layer_norm"];

/// Convolutions: bilinear, so their second derivatives are the mixed ones (the weight
/// gradient's derivative with respect to the input and back), through the window primitives
/// for strides above 1 and the shifted-row products for stride 1.
const CONV_OPS: &[&str] = &["conv2d", "conv_transpose2d"];

#[test]
fn first_derivatives_match_finite_differences() {
    let mut rng = Rng::new(7);
    let mut checked = 0;
    for c in load_cases().iter().filter(|c| differentiable(c)) {
        let idx = float_inputs(&c.inputs);
        let xs: Vec<Tensor> = idx.iter().map(|&i| c.inputs[i].clone()).collect();
        let f = of_floats(&c.op, &c.params, &c.inputs);
        let v = random_like(&mut rng, &xs);
        let (outs, tangents) = nb::jvp_many(&f, &xs, &v);
        close(&c.name, "jvp vs finite differences", &tangents, &fd(&f, &xs, &v));
        let u = random_like(&mut rng, &outs);
        let (_, pullback) = nb::vjp_many(&f, &xs);
        let cts = pullback.call(&u);
        let (lhs, rhs) = (dot(&u, &tangents), dot(&cts, &v));
        assert!(
            (lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs()),
            "{}: <u, Jv> = {lhs} but <J^T u, v> = {rhs}",
            c.name
        );
        checked += 1;
    }
    assert!(checked > 300, "only {checked} differentiable cases");
    println!("first derivatives: {checked} cases");
}

#[test]
fn second_derivatives_of_elementwise_row_and_conv_ops_match_finite_differences() {
    let mut rng = Rng::new(11);
    let mut checked = 0;
    for c in load_cases().iter().filter(|c| {
        let op = c.op.as_str();
        differentiable(c) && (ELEMENTWISE.contains(&op) || ROW_OPS.contains(&op) || CONV_OPS.contains(&op))
    }) {
        let idx = float_inputs(&c.inputs);
        let xs: Vec<Tensor> = idx.iter().map(|&i| c.inputs[i].clone()).collect();
        let f = of_floats(&c.op, &c.params, &c.inputs);
        let u = random_like(&mut rng, &f(&xs));
        // g(x) = J(x)^T u, a function of the primals.
        let g = |x: &[Tensor]| nb::vjp_many(&f, x).1.call(&u);
        let v = random_like(&mut rng, &xs);
        let want = fd(&g, &xs, &v);
        // jvp of vjp
        let (_, t) = nb::jvp_many(g, &xs, &v);
        close(&c.name, "jvp of vjp vs finite differences", &t, &want);
        // vjp of vjp: <w, d g(x) v> = <d g(x)^T w, v>
        let w = random_like(&mut rng, &xs);
        let (_, pb) = nb::vjp_many(g, &xs);
        let back = pb.call(&w);
        let (lhs, rhs) = (dot(&w, &want), dot(&back, &v));
        assert!(
            (lhs - rhs).abs() <= 1e-5 * (1.0 + lhs.abs()),
            "{}: vjp of vjp: {lhs} vs {rhs}",
            c.name
        );
        checked += 1;
    }
    assert!(checked > 160, "only {checked} elementwise, row and conv cases");
    println!("second derivatives: {checked} cases");
}
