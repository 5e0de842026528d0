//! vmap over every fixture op: the mapped result equals the per-example results stacked, with
//! mapped and unmapped (shared) arguments, mapped axes first and last; and vmap composed with
//! vjp and jvp (per-example gradients) against per-example transforms.

mod common;

use common::{Case, apply, assert_close, float_inputs, load_cases, of_floats};
use nabla_core as nb;
use nb::Tensor;

const B: usize = 3;

/// Example `k` of input `x`: floats scaled (keeps every domain), others unchanged.
fn example(x: &Tensor, k: usize) -> Tensor {
    if x.dtype().is_float() {
        x * (1.0 + 0.05 * k as f64)
    } else {
        x.clone()
    }
}

/// Which inputs are mapped, and along which axis, for case number `n`.
fn plan(c: &Case, n: usize) -> Vec<Option<isize>> {
    let mut axes: Vec<Option<isize>> = c
        .inputs
        .iter()
        .map(|x| {
            if !x.dtype().is_float() && n % 2 == 1 {
                None
            } else if n % 3 == 2 {
                Some(-1)
            } else {
                Some(0)
            }
        })
        .collect();
    if axes.iter().all(|a| a.is_none()) {
        axes[0] = Some(0);
    }
    axes
}

fn stacked(x: &Tensor, axis: Option<isize>) -> Tensor {
    match axis {
        None => x.clone(),
        Some(a) => nb::stack(&(0..B).map(|k| example(x, k)).collect::<Vec<_>>(), a),
    }
}

#[test]
fn vmap_of_every_op_equals_stacked_examples() {
    let cases = load_cases();
    for (n, c) in cases.iter().enumerate() {
        let axes = plan(c, n);
        let args: Vec<Tensor> = c.inputs.iter().zip(&axes).map(|(x, &a)| stacked(x, a)).collect();
        let n_out = c.outputs.len();
        let got = nb::vmap_many(|xs| apply(&c.op, &c.params, xs), &args, &axes, &vec![0; n_out]);
        let per_example: Vec<Vec<Tensor>> = (0..B)
            .map(|k| {
                let xs: Vec<Tensor> = c.inputs.iter().map(|x| example(x, k)).collect();
                apply(&c.op, &c.params, &xs)
            })
            .collect();
        for j in 0..n_out {
            let want = nb::stack(&per_example.iter().map(|o| o[j].clone()).collect::<Vec<_>>(), 0);
            assert_eq!(got[j].dtype(), want.dtype(), "{}: vmap dtype", c.name);
            assert_close(
                &c.name,
                &format!("vmap output {j} (in_axes {axes:?})"),
                &got[j],
                &want,
                1e-12,
                1e-12,
            );
        }
    }
    println!("vmap: {} cases", cases.len());
}

#[test]
fn vmap_of_vjp_and_jvp_give_per_example_derivatives() {
    let mut checked = 0;
    for c in load_cases()
        .iter()
        .filter(|c| c.raw.get("vjp").is_some_and(|v| !v.is_null()))
    {
        let fidx = float_inputs(&c.inputs);
        let primals: Vec<Tensor> = fidx.iter().map(|&i| c.inputs[i].clone()).collect();
        let f = of_floats(&c.op, &c.params, &c.inputs);
        let outs = f(&primals);
        let cts: Vec<Tensor> = outs.iter().map(|o| o.ones_like() * 0.5 + o.zeros_like()).collect();
        // Per-example cotangents k * ct, per-example primals: vmap over both.
        let batched_primals: Vec<Tensor> = primals.iter().map(|p| stacked(p, Some(0))).collect();
        let batched_cts: Vec<Tensor> = cts.iter().map(|ct| stacked(ct, Some(0))).collect();
        let np = primals.len();
        let mut args = batched_primals.clone();
        args.extend(batched_cts.iter().cloned());
        let grads = nb::vmap_many(
            |xs| nb::vjp_many(&f, &xs[..np]).1.call(&xs[np..]),
            &args,
            &vec![Some(0); args.len()],
            &vec![0; np],
        );
        let tangents_out = nb::vmap_many(
            |xs| nb::jvp_many(&f, &xs[..np], &xs[..np]).1,
            &batched_primals,
            &vec![Some(0); np],
            &vec![0; outs.len()],
        );
        for k in 0..B {
            let xs: Vec<Tensor> = primals.iter().map(|p| example(p, k)).collect();
            let ck: Vec<Tensor> = cts.iter().map(|ct| example(ct, k)).collect();
            let want = nb::vjp_many(&f, &xs).1.call(&ck);
            for (g, w) in grads.iter().zip(&want) {
                assert_close(&c.name, "vmap of vjp", &g.i(k as isize), w, 1e-12, 1e-12);
            }
            let want_t = nb::jvp_many(&f, &xs, &xs).1;
            for (g, w) in tangents_out.iter().zip(&want_t) {
                assert_close(&c.name, "vmap of jvp", &g.i(k as isize), w, 1e-12, 1e-12);
            }
        }
        checked += 1;
    }
    println!("vmap of vjp/jvp: {checked} cases");
}

#[test]
fn vjp_of_vmap_sums_over_shared_arguments() {
    // d/dw sum_i (x_i . w)^2 with x mapped and w shared.
    let x = nb::tensor_of([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], nb::DType::F64);
    let w = nb::tensor_of([0.5, -1.0], nb::DType::F64);
    let g = nb::grad(|w: &Tensor| {
        nb::vmap_many(
            |xs| vec![xs[0].dot(&xs[1]).square()],
            &[x.clone(), w.clone()],
            &[Some(0), None],
            &[0],
        )[0]
        .sum_all()
    })(&w);
    let want = nb::grad(|w: &Tensor| x.matmul(w).square().sum_all())(&w);
    assert_close("vjp of vmap", "grad", &g, &want, 1e-12, 0.0);
}

#[test]
fn nested_vmap_is_an_outer_product_of_maps() {
    let a = nb::tensor_of([1.0, 2.0, 3.0], nb::DType::F64);
    let b = nb::tensor_of([10.0, 20.0], nb::DType::F64);
    let out = nb::vmap_many(
        |xs| {
            let bx = xs[1].clone();
            nb::vmap_many(
                |ys| vec![&ys[0] * &ys[1] + 1.0],
                &[xs[0].clone(), bx],
                &[None, Some(0)],
                &[0],
            )
        },
        &[a.clone(), b.clone()],
        &[Some(0), None],
        &[0],
    );
    assert_eq!(out[0].shape(), &[3, 2]);
    assert_eq!(out[0].to_vec::<f64>(), vec![11.0, 21.0, 21.0, 41.0, 31.0, 61.0]);
}
