//! The bf16 and f16 rows of the op matrix. Every fixture case runs with its float inputs
//! rounded to the half type, and is checked against the same op in f64 at those same rounded
//! inputs: values, VJPs and JVPs. The result must come back in the half type, and agree within
//! the half type's precision (the CPU computes each op in f32 and rounds its result, so a
//! composite of k ops may be off by about k units in the last place).

mod common;

use common::{apply, float_inputs, load_cases, of_floats, tensor_from};
use nabla_core as nb;
use nb::{DType, Tensor};

/// Unit roundoff of each half type (half the distance from 1 to the next value).
fn unit_roundoff(d: DType) -> f64 {
    match d {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        other => panic!("not a half type: {other}"),
    }
}

/// Rounds a float tensor to `half` (other dtypes unchanged).
fn to_half(t: &Tensor, half: DType) -> Tensor {
    if t.dtype().is_float() { t.cast(half) } else { t.clone() }
}

/// `got` (a half tensor) against `want` (f64): elementwise within `ulps` units of roundoff of
/// the element's magnitude plus a quarter of the larger of 1 and the tensor's largest
/// magnitude. The floor is there because a result that cancels (a sum of terms, or `1 - y^2`
/// in tanh's rule) is only as accurate as its terms, which the fixtures keep near 1. A wrong
/// rule or a lost dtype is off by far more.
fn assert_half_close(name: &str, what: &str, got: &Tensor, want: &Tensor, half: DType, ulps: f64) {
    assert_eq!(got.shape(), want.shape(), "{name}: {what}: shape");
    let (g, w) = (got.to_vec::<f64>(), want.to_vec::<f64>());
    let largest = w.iter().filter(|v| v.is_finite()).fold(0.0f64, |m, v| m.max(v.abs()));
    let u = unit_roundoff(half);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if b.is_nan() {
            assert!(a.is_nan(), "{name}: {what} ({half}): element {i}: got {a}, want NaN");
            continue;
        }
        if b.is_infinite() || b.abs() > 6e4 && half == DType::F16 {
            // Past f16's range the half result is infinite; the f64 one need not be.
            continue;
        }
        let tol = ulps * u * (b.abs() + 0.25 * largest.max(1.0));
        assert!(
            (a - b).abs() <= tol,
            "{name}: {what} ({half}): element {i}: got {a}, want {b} (tolerance {tol:e})\n got {got}\nwant {want}"
        );
    }
}

/// How many roundings a case may accumulate: elementwise primitives round once, composites
/// (softmax, norms, losses, matmul sums) more.
fn ulps_for(op: &str) -> f64 {
    match op {
        "neg" | "abs" | "relu" | "sign" | "add" | "sub" | "mul" | "div" | "maximum" | "minimum" | "where" => 2.0,
        "exp" | "log" | "log1p" | "sqrt" | "rsqrt" | "sin" | "cos" | "tanh" | "sigmoid" | "square" | "clamp" => 3.0,
        _ => 24.0,
    }
}

/// A case's inputs with the floats rounded to `half`, and the same rounded values in f64 (the
/// reference runs on those, so that only the op's own rounding is measured).
fn rounded_and_exact(inputs: &[Tensor], half: DType) -> (Vec<Tensor>, Vec<Tensor>) {
    let rounded: Vec<Tensor> = inputs.iter().map(|t| to_half(t, half)).collect();
    let exact = rounded
        .iter()
        .map(|t| {
            if t.dtype() == half {
                t.cast(DType::F64)
            } else {
                t.clone()
            }
        })
        .collect();
    (rounded, exact)
}

/// Float outputs of a case only (integer and bool outputs are exact and checked elsewhere).
fn float_outputs(ts: Vec<Tensor>) -> Vec<(usize, Tensor)> {
    ts.into_iter()
        .enumerate()
        .filter(|(_, t)| t.dtype().is_float())
        .collect()
}

#[test]
fn half_forward_values_match_f64_at_the_rounded_inputs() {
    for half in [DType::BF16, DType::F16] {
        let mut checked = 0;
        for c in load_cases() {
            if !c.inputs.iter().any(|t| t.dtype().is_float()) {
                continue;
            }
            let (rounded, exact) = rounded_and_exact(&c.inputs, half);
            let got = apply(&c.op, &c.params, &rounded);
            let want = apply(&c.op, &c.params, &exact);
            for ((k, g), (_, w)) in float_outputs(got).into_iter().zip(float_outputs(want)) {
                assert_eq!(g.dtype(), half, "{}: output {k} dtype", c.name);
                assert_half_close(&c.name, "output", &g, &w, half, ulps_for(&c.op));
            }
            checked += 1;
        }
        assert!(checked > 300, "{half}: only {checked} cases");
        println!("{half} forward: {checked} cases");
    }
}

#[test]
fn half_vjps_and_jvps_match_f64_at_the_rounded_inputs() {
    for half in [DType::BF16, DType::F16] {
        let (mut nv, mut nj) = (0, 0);
        for c in load_cases() {
            let fidx = float_inputs(&c.inputs);
            if fidx.is_empty() {
                continue;
            }
            let (rounded, exact) = rounded_and_exact(&c.inputs, half);
            let f_half = of_floats(&c.op, &c.params, &rounded);
            let f_exact = of_floats(&c.op, &c.params, &exact);
            let p_half: Vec<Tensor> = fidx.iter().map(|&i| rounded[i].clone()).collect();
            let p_exact: Vec<Tensor> = fidx.iter().map(|&i| exact[i].clone()).collect();
            // A derivative rule is itself a composite (and a broadcast operand's gradient a sum).
            let ulps = 24.0f64.max(2.0 * ulps_for(&c.op));
            if let Some(v) = c.raw.get("vjp").filter(|v| !v.is_null()) {
                let cts: Vec<Tensor> = match v.get("cotangents") {
                    Some(list) => list.as_array().unwrap().iter().map(tensor_from).collect(),
                    None => vec![tensor_from(&v["cotangent"])],
                };
                let ct_half: Vec<Tensor> = cts.iter().map(|t| to_half(t, half)).collect();
                let ct_exact: Vec<Tensor> = ct_half.iter().map(|t| t.cast(DType::F64)).collect();
                let g_half = nb::vjp_many(&f_half, &p_half).1.call(&ct_half);
                let g_exact = nb::vjp_many(&f_exact, &p_exact).1.call(&ct_exact);
                for (k, (g, w)) in g_half.iter().zip(&g_exact).enumerate() {
                    assert_eq!(g.dtype(), half, "{}: vjp grad {k} dtype", c.name);
                    assert_half_close(&c.name, &format!("vjp grad {k}"), g, w, half, ulps);
                }
                nv += 1;
            }
            if let Some(j) = c.raw.get("jvp").filter(|v| !v.is_null()) {
                let t_half: Vec<Tensor> = fidx
                    .iter()
                    .map(|&i| tensor_from(&j["tangents"][i]).cast(half))
                    .collect();
                let t_exact: Vec<Tensor> = t_half.iter().map(|t| t.cast(DType::F64)).collect();
                let (_, out_half) = nb::jvp_many(&f_half, &p_half, &t_half);
                let (_, out_exact) = nb::jvp_many(&f_exact, &p_exact, &t_exact);
                for (g, w) in out_half.iter().zip(&out_exact) {
                    if !w.dtype().is_float() {
                        continue;
                    }
                    assert_eq!(g.dtype(), half, "{}: jvp dtype", c.name);
                    assert_half_close(&c.name, "jvp", g, w, half, ulps);
                }
                nj += 1;
            }
        }
        assert!(
            nv > 250 && nj > 250,
            "{half}: too few derivative cases: {nv} vjp, {nj} jvp"
        );
        println!("{half} derivatives: {nv} vjp and {nj} jvp cases");
    }
}

#[test]
fn mixed_precision_promotes_like_jax_and_grads_keep_each_leaf_dtype() {
    let w = Tensor::from_vec(vec![0.5f32, -1.25, 2.0], &[3]).cast(DType::BF16);
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]);
    // bf16 * f32 is f32 (JAX and PyTorch); a Rust scalar keeps the tensor's dtype.
    assert_eq!((&w * &x).dtype(), DType::F32);
    assert_eq!((&w * 3.0).dtype(), DType::BF16);
    assert_eq!(DType::promote(DType::F16, DType::BF16), DType::F32);
    let loss = |args: &(Tensor, Tensor)| (&args.0 * &args.1).square().sum_all();
    let (gw, gx) = nb::grad(loss)(&(w.clone(), x.clone()));
    let grads = [gw, gx];
    assert_eq!(grads[0].dtype(), DType::BF16);
    assert_eq!(grads[1].dtype(), DType::F32);
    // d/dw sum (w x)^2 = 2 w x^2, exact in bf16 for these values.
    assert_eq!(grads[0].to_vec::<f64>(), vec![1.0, -10.0, 36.0]);
}

#[test]
fn half_tensors_print_convert_and_refuse_what_they_cannot_do() {
    let t = Tensor::from_vec(vec![nb::bf16::from_f32(1.5), nb::bf16::from_f32(-0.1)], &[2]);
    assert_eq!(t.dtype(), DType::BF16);
    let shown = format!("{t}");
    assert!(shown.contains("1.5") && shown.contains("-0.1"), "{shown}");
    // -0.1 is not a bf16 value: its nearest is -0.10009765625.
    assert_eq!(t.to_vec::<f64>()[1], -0.10009765625);
    assert_eq!(t.cast(DType::F16).cast(DType::BF16).to_vec::<f64>(), t.to_vec::<f64>());
    // Large values overflow f16 but not bf16.
    let big = Tensor::from_vec(vec![1e5f32], &[1]);
    assert!(big.cast(DType::F16).to_vec::<f64>()[0].is_infinite());
    assert_eq!(big.cast(DType::BF16).to_vec::<f64>()[0], 99840.0);
    // Integer-only and bool-only ops name the dtype they got.
    let msg = common::panic_message(|| {
        let _ = t.logical_not();
    });
    assert!(msg.contains("bf16"), "{msg}");
}

#[test]
fn half_reductions_accumulate_in_f32() {
    // 4096 ones: a bf16 accumulator stalls at 256 (256 + 1 rounds back to 256); f32 does not.
    let ones = Tensor::ones(&[4096], DType::BF16);
    assert_eq!(ones.sum_all().dtype(), DType::BF16);
    assert_eq!(ones.sum_all().item::<f64>(), 4096.0);
    let m = Tensor::ones(&[64, 64], DType::F16);
    assert_eq!(m.matmul(&m).to_vec::<f64>()[0], 64.0);
}
