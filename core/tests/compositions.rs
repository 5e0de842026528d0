//! The conformance matrix: for every differentiable op case, transform compositions
//! (jacobian by jacfwd and jacrev, vjp∘vjp, jvp∘vjp, vjp∘jvp, the Hessian by jacfwd∘jacrev and
//! jacrev∘jacfwd, vmap∘vjp, vmap∘jvp) against values JAX computes for the same functions and
//! inputs (`core/tests/fixtures/compositions.json`, written by `ci/gen_fixtures.py`, and
//! `layer_compositions.json`, by `ci/gen_layer_fixtures.py`), in f64 at
//! rtol 1e-10 and in f32 at rtol 1e-5.

mod common;

use std::collections::HashMap;

use common::{assert_close, float_inputs, load_cases, of_floats, tensor_from};
use nabla_core as nb;
use nb::{DType, Tensor};
use serde_json::Value;

/// The compositions of `ops_f64.json`'s cases and of `layer_ops.json`'s (written by
/// `ci/gen_layer_fixtures.py`).
fn load() -> Vec<Value> {
    ["compositions.json", "layer_compositions.json"]
        .iter()
        .flat_map(|file| {
            let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            let root: Value = serde_json::from_str(&text).expect("fixture JSON");
            root["cases"].as_array().unwrap().clone()
        })
        .collect()
}

fn list(v: &Value) -> Vec<Tensor> {
    v.as_array().unwrap().iter().map(tensor_from).collect()
}

struct Tolerance {
    rtol: f64,
    atol: f64,
}

/// Computes every composition for one case at one precision and compares with `want`;
/// returns the number of compared tensors.
fn check(
    name: &str,
    f: &dyn Fn(&[Tensor]) -> Vec<Tensor>,
    xs: &[Tensor],
    seeds: &Value,
    want: &Value,
    dtype: DType,
    tol: &Tolerance,
) -> usize {
    let cast = |t: Tensor| t.cast(dtype);
    let u = cast(tensor_from(&seeds["u"]));
    let v: Vec<Tensor> = list(&seeds["v"]).into_iter().map(cast).collect();
    let w: Vec<Tensor> = list(&seeds["w"]).into_iter().map(cast).collect();
    let c = cast(tensor_from(&seeds["c"]));
    let n = xs.len();
    let all: Vec<usize> = (0..n).collect();
    let mut count = 0;
    let mut cmp = |what: &str, got: &[Tensor], expected: Vec<Tensor>| {
        assert_eq!(got.len(), expected.len(), "{name}: {what}: count");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.dtype(), dtype, "{name}: {what}: dtype");
            assert_close(name, &format!("{what} ({dtype})"), g, e, tol.rtol, tol.atol);
            count += 1;
        }
    };
    let single = |a: &[Tensor]| f(a).remove(0);
    cmp(
        "jacobian by jacfwd",
        &nb::jacfwd_with(single, all.clone())(xs),
        list(&want["jacobian"]),
    );
    cmp(
        "jacobian by jacrev",
        &nb::jacrev_with(single, all.clone())(xs),
        list(&want["jacobian"]),
    );
    let h = |a: &[Tensor]| nb::vjp_many(f, a).1.call(std::slice::from_ref(&u));
    cmp("vjp of vjp", &nb::vjp_many(h, xs).1.call(&w), list(&want["vjp_vjp"]));
    cmp("jvp of vjp", &nb::jvp_many(h, xs, &v).1, list(&want["jvp_vjp"]));
    let k = |a: &[Tensor]| nb::jvp_many(f, a, &v).1;
    cmp(
        "vjp of jvp",
        &nb::vjp_many(k, xs).1.call(std::slice::from_ref(&u)),
        list(&want["vjp_jvp"]),
    );
    if !want["hessian"].is_null() {
        let s = |a: &[Tensor]| (single(a) * &c).sum_all();
        for (i, row) in want["hessian"].as_array().unwrap().iter().enumerate() {
            let fr = nb::jacfwd_with(|a: &[Tensor]| nb::jacrev_with(s, all.clone())(a).remove(i), all.clone())(xs);
            cmp("hessian by jacfwd of jacrev", &fr, list(row));
            let rf = nb::jacrev_with(|a: &[Tensor]| nb::jacfwd_with(s, all.clone())(a).remove(i), all.clone())(xs);
            cmp("hessian by jacrev of jacfwd", &rf, list(row));
        }
    }
    // Three examples, example k scaled by 1 + 0.05 k (in the working precision).
    let stack = |t: &Tensor| nb::stack(&(0..3).map(|k| t * (1.0 + 0.05 * k as f64)).collect::<Vec<_>>(), 0);
    let mut args: Vec<Tensor> = xs.iter().map(stack).collect();
    args.push(stack(&u));
    let got = nb::vmap_many(
        |a| nb::vjp_many(f, &a[..n]).1.call(&a[n..]),
        &args,
        &vec![Some(0); n + 1],
        &[0],
    );
    cmp("vmap of vjp", &got, list(&want["vmap_vjp"]));
    let mut args: Vec<Tensor> = xs.iter().map(stack).collect();
    args.extend(v.iter().map(stack));
    let got = nb::vmap_many(
        |a| nb::jvp_many(f, &a[..n], &a[n..]).1,
        &args,
        &vec![Some(0); 2 * n],
        &[0],
    );
    cmp("vmap of jvp", &got, vec![tensor_from(&want["vmap_jvp"])]);
    count
}

#[test]
fn compositions_match_jax_in_f64_and_f32() {
    let cases: HashMap<String, common::Case> = load_cases().into_iter().map(|c| (c.name.clone(), c)).collect();
    let fixtures = load();
    assert!(
        fixtures.len() > 300,
        "expected the full composition fixtures, found {}",
        fixtures.len()
    );
    let (mut n64, mut n32) = (0, 0);
    for fx in &fixtures {
        let name = fx["name"].as_str().unwrap();
        let case = &cases[name];
        let fidx = float_inputs(&case.inputs);
        let xs: Vec<Tensor> = fidx.iter().map(|&i| case.inputs[i].clone()).collect();
        let f = of_floats(&case.op, &case.params, &case.inputs);
        n64 += check(
            name,
            &f,
            &xs,
            fx,
            fx,
            DType::F64,
            &Tolerance {
                rtol: 1e-10,
                atol: 1e-10,
            },
        );
        let xs32: Vec<Tensor> = xs.iter().map(|x| x.cast(DType::F32)).collect();
        n32 += check(
            name,
            &f,
            &xs32,
            fx,
            &fx["f32"],
            DType::F32,
            &Tolerance { rtol: 1e-5, atol: 1e-5 },
        );
    }
    println!(
        "compositions: {} cases, {n64} f64 and {n32} f32 tensors compared with JAX",
        fixtures.len()
    );
}
