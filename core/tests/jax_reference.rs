//! Forward values, VJPs and JVPs of every op against JAX reference values (f64), from the
//! fixtures that `ci/gen_fixtures.py` writes.

mod common;

use common::{apply, assert_close, float_inputs, load_cases, of_floats, tensor_from};
use nabla_core as nb;
use nb::Tensor;

const RTOL: f64 = 1e-10;
const ATOL: f64 = 1e-12;

#[test]
fn forward_values_match_jax() {
    let cases = load_cases();
    assert!(
        cases.len() > 300,
        "expected the full fixture set, found {} cases",
        cases.len()
    );
    for c in &cases {
        let got = apply(&c.op, &c.params, &c.inputs);
        assert_eq!(got.len(), c.outputs.len(), "{}: number of outputs", c.name);
        for (g, w) in got.iter().zip(&c.outputs) {
            let want_dtype = w.dtype();
            assert_eq!(g.dtype(), want_dtype, "{}: dtype", c.name);
            assert_close(&c.name, "output", g, w, RTOL, ATOL);
        }
    }
    println!("forward: {} cases checked against JAX", cases.len());
}

#[test]
fn vjp_and_jvp_match_jax() {
    let (mut nv, mut nj) = (0, 0);
    for c in load_cases() {
        let fidx = float_inputs(&c.inputs);
        let primals: Vec<Tensor> = fidx.iter().map(|&i| c.inputs[i].clone()).collect();
        let f = of_floats(&c.op, &c.params, &c.inputs);
        if let Some(v) = c.raw.get("vjp").filter(|v| !v.is_null()) {
            let cts: Vec<Tensor> = match v.get("cotangents") {
                Some(list) => list.as_array().unwrap().iter().map(tensor_from).collect(),
                None => vec![tensor_from(&v["cotangent"])],
            };
            let (_, pullback) = nb::vjp_many(&f, &primals);
            let grads = pullback.call(&cts);
            let want: Vec<&serde_json::Value> = v["grads"].as_array().unwrap().iter().collect();
            for (k, &i) in fidx.iter().enumerate() {
                assert_close(
                    &c.name,
                    &format!("vjp grad {i}"),
                    &grads[k],
                    &tensor_from(want[i]),
                    RTOL,
                    ATOL,
                );
            }
            nv += 1;
        }
        if let Some(j) = c.raw.get("jvp").filter(|v| !v.is_null()) {
            let ts: Vec<Tensor> = fidx.iter().map(|&i| tensor_from(&j["tangents"][i])).collect();
            let (_, tout) = nb::jvp_many(&f, &primals, &ts);
            let want: Vec<Tensor> = match j.get("output_tangents") {
                Some(list) => list.as_array().unwrap().iter().map(tensor_from).collect(),
                None => vec![tensor_from(&j["output_tangent"])],
            };
            for (g, w) in tout.iter().zip(&want) {
                assert_close(&c.name, "jvp", g, w, RTOL, ATOL);
            }
            nj += 1;
        }
    }
    assert!(nv > 250 && nj > 250, "too few derivative cases: {nv} vjp, {nj} jvp");
    println!("derivatives: {nv} vjp and {nj} jvp cases checked against JAX");
}

#[test]
fn f32_forward_values_match_jax_within_f32_precision() {
    let mut checked = 0;
    for c in load_cases() {
        let inputs: Vec<Tensor> = c
            .inputs
            .iter()
            .map(|t| {
                if t.dtype() == nb::DType::F64 {
                    t.cast(nb::DType::F32)
                } else {
                    t.clone()
                }
            })
            .collect();
        let got = apply(&c.op, &c.params, &inputs);
        for (g, w) in got.iter().zip(&c.outputs) {
            let float_in = c.inputs.iter().any(|t| t.dtype() == nb::DType::F64);
            let want_dtype = if w.dtype() == nb::DType::F64 && float_in {
                nb::DType::F32
            } else {
                w.dtype()
            };
            assert_eq!(g.dtype(), want_dtype, "{}: f32 dtype", c.name);
            assert_close(&c.name, "f32 output", g, w, 1e-5, 1e-5);
        }
        checked += 1;
    }
    println!("forward f32: {checked} cases");
}
