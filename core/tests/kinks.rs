//! Derivatives exactly at kinks, ties and singular points against JAX: abs/sign/relu at 0,
//! maximum/minimum and max/min with ties, argmax/argmin with ties, clamp at its bounds, `where`
//! around sqrt(0), sqrt/rsqrt/log/log1p/pow at their singular points, `x^0`, softplus for large
//! and infinite inputs, logsumexp with infinite entries, and prod with one, two and all zeros.
//! The reference values are in `core/tests/fixtures/kinks.json` (written by
//! `ci/gen_kink_fixtures.py`); every transform is compared: forward, vjp, grad, jvp, jacfwd,
//! jacrev, vjp∘vjp, jvp∘vjp, vjp∘jvp, the Hessian (jacfwd∘jacrev), vmap∘vjp and vmap∘jvp.
//! NaN must be NaN and an infinity the same infinity, as JAX has them.

mod common;

use common::{apply, float_inputs, tensor_from};
use nabla_core as nb;
use nb::{Axes, DType, GradOptions, Tensor};
use serde_json::Value;

const RTOL: f64 = 1e-10;
const ATOL: f64 = 1e-12;

fn load() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kinks.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let root: Value = serde_json::from_str(&text).expect("fixture JSON");
    root["cases"].as_array().unwrap().clone()
}

fn list(v: &Value) -> Vec<Tensor> {
    v.as_array().unwrap().iter().map(tensor_from).collect()
}

/// The fixture ops of `common::apply`, plus the compositions only this file uses.
fn run(op: &str, p: &Value, x: &[Tensor]) -> Vec<Tensor> {
    match op {
        "maximum_self" => vec![x[0].maximum(&x[0])],
        "recip_abs" => vec![x[0].scalar_like(1.0).div(&x[0].abs())],
        "recip_relu" => vec![x[0].scalar_like(1.0).div(&x[0].relu())],
        "where_sqrt" => {
            let zero = x[0].scalar_like(0.0);
            vec![x[0].gt_scalar(0.0).where_(&x[0].sqrt(), &zero)]
        }
        "where_safe_sqrt" => {
            let c = x[0].gt_scalar(0.0);
            let safe = c.where_(&x[0], &x[0].scalar_like(1.0));
            vec![c.where_(&safe.sqrt(), &x[0].scalar_like(0.0))]
        }
        _ => apply(op, p, x),
    }
}

/// Agreement with a JAX value: NaN for NaN, the same infinity for an infinity, else close.
fn agrees(got: f64, want: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got == want
    } else {
        got.is_finite() && (got - want).abs() <= ATOL + RTOL * want.abs()
    }
}

/// Collects every disagreement, so that one run lists them all.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    compared: usize,
}

impl Report {
    fn cmp(&mut self, case: &str, what: &str, got: &Tensor, want: &Tensor) {
        self.compared += 1;
        if got.shape() != want.shape() || got.dtype() != want.dtype() {
            self.failures.push(format!(
                "{case}: {what}: got shape {:?} ({}), want {:?} ({})",
                got.shape(),
                got.dtype(),
                want.shape(),
                want.dtype()
            ));
            return;
        }
        let bad = if want.dtype() == DType::I64 {
            got.to_vec::<i64>() != want.to_vec::<i64>()
        } else {
            let (g, w) = (got.to_vec::<f64>(), want.to_vec::<f64>());
            g.iter().zip(&w).any(|(&a, &b)| !agrees(a, b))
        };
        if bad {
            self.failures
                .push(format!("{case}: {what}:\n  got  {got}\n  want {want}"));
        }
    }

    fn cmp_all(&mut self, case: &str, what: &str, got: &[Tensor], want: &[Tensor]) {
        if got.len() != want.len() {
            self.failures
                .push(format!("{case}: {what}: {} tensors, want {}", got.len(), want.len()));
            return;
        }
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            self.cmp(case, &format!("{what} [{i}]"), g, w);
        }
    }

    fn finish(self, min_compared: usize) {
        assert!(
            self.failures.is_empty(),
            "{} disagreements with JAX:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        assert!(
            self.compared >= min_compared,
            "compared only {} tensors, expected at least {min_compared}",
            self.compared
        );
        println!("{} tensors agree with JAX", self.compared);
    }
}

/// A case's op as a function of its float inputs (the others held fixed).
type OfFloats<'a> = Box<dyn Fn(&[Tensor]) -> Vec<Tensor> + 'a>;

/// One fixture case: its name, the function of its float inputs, and those inputs.
struct Kink<'a> {
    name: &'a str,
    fx: &'a Value,
    xs: Vec<Tensor>,
    f: OfFloats<'a>,
}

fn cases(fixtures: &[Value]) -> Vec<Kink<'_>> {
    fixtures
        .iter()
        .map(|fx| {
            let inputs = list(&fx["inputs"]);
            let idx = float_inputs(&inputs);
            let xs = idx.iter().map(|&i| inputs[i].clone()).collect();
            let (op, params) = (fx["op"].as_str().unwrap(), &fx["params"]);
            let f = Box::new(move |fs: &[Tensor]| {
                let mut all = inputs.clone();
                for (k, &i) in idx.iter().enumerate() {
                    all[i] = fs[k].clone();
                }
                run(op, params, &all)
            });
            Kink {
                name: fx["name"].as_str().unwrap(),
                fx,
                xs,
                f,
            }
        })
        .collect()
}

fn differentiable(fx: &Value) -> bool {
    fx.get("vjp").is_some_and(|v| !v.is_null())
}

#[test]
fn forward_and_first_derivatives_match_jax_at_kinks() {
    let fixtures = load();
    assert!(
        fixtures.len() >= 61,
        "expected the full kink fixtures, found {}",
        fixtures.len()
    );
    let mut r = Report::default();
    for k in cases(&fixtures) {
        let (name, fx, xs, f) = (k.name, k.fx, &k.xs, &k.f);
        let inputs = list(&fx["inputs"]);
        let out = run(fx["op"].as_str().unwrap(), &fx["params"], &inputs);
        r.cmp(name, "output", &out[0], &tensor_from(&fx["output"]));
        if !differentiable(fx) {
            continue;
        }
        let all: Vec<usize> = (0..xs.len()).collect();
        let u = tensor_from(&fx["u"]);
        let v = list(&fx["v"]);
        let vjp = nb::vjp_many(f, xs).1.call(std::slice::from_ref(&u));
        r.cmp_all(name, "vjp", &vjp, &list(&fx["vjp"]));
        let grad = nb::grad_with(
            |a: &[Tensor]| (f(a).remove(0) * &u).sum_all(),
            GradOptions {
                argnums: all.clone().into(),
                ..Default::default()
            },
        )(xs);
        r.cmp_all(name, "grad of sum(f * u)", &grad, &list(&fx["vjp"]));
        r.cmp_all(name, "jvp", &nb::jvp_many(f, xs, &v).1, &[tensor_from(&fx["jvp"])]);
        let single = |a: &[Tensor]| f(a).remove(0);
        r.cmp_all(
            name,
            "jacfwd",
            &nb::jacfwd_with(single, all.clone())(xs),
            &list(&fx["jacfwd"]),
        );
        r.cmp_all(name, "jacrev", &nb::jacrev_with(single, all)(xs), &list(&fx["jacrev"]));
    }
    r.finish(250);
}

#[test]
fn second_derivatives_and_vmap_match_jax_at_kinks() {
    let fixtures = load();
    let mut r = Report::default();
    for k in cases(&fixtures) {
        let (name, fx, xs, f) = (k.name, k.fx, &k.xs, &k.f);
        if !differentiable(fx) {
            continue;
        }
        let n = xs.len();
        let all: Vec<usize> = (0..n).collect();
        let (u, c) = (tensor_from(&fx["u"]), tensor_from(&fx["c"]));
        let (v, w) = (list(&fx["v"]), list(&fx["w"]));
        let h = |a: &[Tensor]| nb::vjp_many(f, a).1.call(std::slice::from_ref(&u));
        r.cmp_all(
            name,
            "vjp of vjp",
            &nb::vjp_many(h, xs).1.call(&w),
            &list(&fx["vjp_vjp"]),
        );
        r.cmp_all(name, "jvp of vjp", &nb::jvp_many(h, xs, &v).1, &list(&fx["jvp_vjp"]));
        let kf = |a: &[Tensor]| nb::jvp_many(f, a, &v).1;
        r.cmp_all(
            name,
            "vjp of jvp",
            &nb::vjp_many(kf, xs).1.call(std::slice::from_ref(&u)),
            &list(&fx["vjp_jvp"]),
        );
        let s = |a: &[Tensor]| (f(a).remove(0) * &c).sum_all();
        for (i, row) in fx["hessian"].as_array().unwrap().iter().enumerate() {
            let got = nb::jacfwd_with(|a: &[Tensor]| nb::jacrev_with(s, all.clone())(a).remove(i), all.clone())(xs);
            r.cmp_all(name, &format!("hessian row {i} (jacfwd of jacrev)"), &got, &list(row));
        }
        if n == 1 {
            let got = nb::hessian(|x: &Tensor| s(std::slice::from_ref(x)))(&xs[0]);
            r.cmp(name, "nb::hessian", &got, &list(&fx["hessian"][0])[0]);
        }
        // Two examples: as is, and every input, cotangent and tangent flipped over all axes
        // (the tangents and cotangents also doubled).
        let pair = |t: &Tensor, scale: f64| nb::stack(&[t.clone(), t.flip(Axes::All) * scale], 0);
        let mut args: Vec<Tensor> = xs.iter().map(|x| pair(x, 1.0)).collect();
        args.push(pair(&u, 2.0));
        let got = nb::vmap_many(
            |a| nb::vjp_many(f, &a[..n]).1.call(&a[n..]),
            &args,
            &vec![Some(0); n + 1],
            &[0],
        );
        r.cmp_all(name, "vmap of vjp", &got, &list(&fx["vmap_vjp"]));
        let mut args: Vec<Tensor> = xs.iter().map(|x| pair(x, 1.0)).collect();
        args.extend(v.iter().map(|t| pair(t, 2.0)));
        let got = nb::vmap_many(
            |a| nb::jvp_many(f, &a[..n], &a[n..]).1,
            &args,
            &vec![Some(0); 2 * n],
            &[0],
        );
        r.cmp_all(name, "vmap of jvp", &got, &[tensor_from(&fx["vmap_jvp"])]);
    }
    r.finish(300);
}

/// The issue's own examples, spelled out.
#[test]
fn abs_gradient_at_zero_and_prod_gradient_with_zeros_are_jax_values() {
    let x = Tensor::from_vec(vec![-1.0, 0.0, 2.0], &[3]);
    let g = nb::grad(|x: &Tensor| x.abs().sum_all())(&x);
    assert_eq!(g.to_vec::<f64>(), vec![-1.0, 1.0, 1.0]);

    let one_zero = Tensor::from_vec(vec![2.0, 0.0, 3.0], &[3]);
    let g = nb::grad(|x: &Tensor| x.prod(Axes::All, false))(&one_zero);
    assert_eq!(g.to_vec::<f64>(), vec![0.0, 6.0, 0.0]);
    let two_zeros = Tensor::from_vec(vec![2.0, 0.0, 3.0, 0.0], &[4]);
    let g = nb::grad(|x: &Tensor| x.prod(Axes::All, false))(&two_zeros);
    assert_eq!(g.to_vec::<f64>(), vec![0.0; 4]);
    let h = nb::hessian(|x: &Tensor| x.prod(Axes::All, false))(&two_zeros);
    // d2/dx1 dx3 of x0 x1 x2 x3 is x0 x2 = 6; every other entry has a zero factor.
    let mut want = vec![0.0; 16];
    want[4 + 3] = 6.0;
    want[3 * 4 + 1] = 6.0;
    assert_eq!(h.to_vec::<f64>(), want);

    // An empty reduced axis: the product is 1 and the gradient is empty.
    let empty = Tensor::zeros(&[0, 3], DType::F64);
    let (out, pullback) = nb::vjp(|x: &Tensor| x.prod(0, false), &empty);
    assert_eq!(out.to_vec::<f64>(), vec![1.0; 3]);
    assert_eq!(pullback(&out).shape(), &[0, 3]);
    let (_, t) = nb::jvp(|x: &Tensor| x.prod(0, false), &empty, &empty);
    assert_eq!(t.to_vec::<f64>(), vec![0.0; 3]);
}
