//! `cond`, `scan` and `scan_with` against `jax.lax.cond` and `jax.lax.scan`
//! (`core/tests/fixtures/control_flow.json`, from `ci/gen_control_fixtures.py`): values,
//! gradients, Hessian-vector products and vmap; plus jit, the one-node trace of a scan, and
//! the refusal of captured traced values.

mod common;

use common::{panic_message, tensor_from};
use nabla_core as nb;
use nb::Tensor;
use serde_json::Value;

fn cases() -> Vec<Value> {
    let root: Value = serde_json::from_str(include_str!("fixtures/control_flow.json")).expect("fixture JSON");
    root["cases"].as_array().unwrap().clone()
}

fn list(v: &Value) -> Vec<Tensor> {
    v.as_array().unwrap().iter().map(tensor_from).collect()
}

/// The function of a case, in nabla.
fn function(name: &str) -> fn(&[Tensor]) -> Vec<Tensor> {
    match name {
        "scan_rnn" => |x| {
            let (h, ys) = nb::scan_with(
                |(w, u): &(Tensor, Tensor), h: &Tensor, x: &Tensor| {
                    let h2 = (x.matmul(w) + h.matmul(u)).tanh();
                    let y = &h2 * &h2;
                    (h2, y)
                },
                &(x[2].clone(), x[3].clone()),
                &x[0],
                &x[1],
            );
            vec![h, ys]
        },
        "scan_decay" => |x| {
            let (s, ys) = nb::scan(
                |s: &Tensor, x: &Tensor| {
                    let s2 = s * 0.9 + x.sin();
                    let y = &s2 * &s2;
                    (s2, y)
                },
                &x[0],
                &x[1],
            );
            vec![s, ys]
        },
        _ => |x| {
            vec![nb::cond(
                &x[0].gt_scalar(0.0),
                |x: &Tensor| x.sin() * 2.0,
                |x: &Tensor| x.powf(3.0),
                &x[1],
            )]
        },
    }
}

fn assert_all_close(what: &str, got: &[Tensor], want: &[Tensor]) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (g, w) in got.iter().zip(want) {
        common::assert_close(what, "", g, w, 1e-10, 1e-12);
    }
}

#[test]
fn cond_and_scan_match_jax_in_values_gradients_hessian_vector_products_and_vmap() {
    for c in cases() {
        let name = c["name"].as_str().unwrap().to_string();
        let f = function(&name);
        let inputs = list(&c["inputs"]);
        let (cs, vs) = (list(&c["c"]), list(&c["v"]));
        assert_all_close(&format!("{name} outputs"), &f(&inputs), &list(&c["outputs"]));
        let loss = |xs: &Vec<Tensor>| {
            f(xs)
                .iter()
                .zip(&cs)
                .map(|(o, c)| (o * c).sum_all())
                .reduce(|a, b| a + b)
                .unwrap()
        };
        assert_all_close(&format!("{name} grads"), &nb::grad(loss)(&inputs), &list(&c["grads"]));
        let gv = |xs: &Vec<Tensor>| {
            nb::grad(loss)(xs)
                .iter()
                .zip(&vs)
                .map(|(g, v)| (g * v).sum_all())
                .reduce(|a, b| a + b)
                .unwrap()
        };
        assert_all_close(&format!("{name} hvp"), &nb::grad(gv)(&inputs), &list(&c["hvp"]));
        // vmap over the batched argument (3 scaled copies), the others shared.
        let b = c["batched_arg"].as_u64().unwrap() as usize;
        let scales = Tensor::from_vec(vec![1.0f64, 1.1, 1.2], &[3]);
        let mut scale_shape = vec![3];
        scale_shape.extend(std::iter::repeat_n(1, inputs[b].rank()));
        let batch = scales.reshape(scale_shape) * &inputs[b];
        let mut args = inputs.clone();
        args[b] = batch;
        let mut in_axes = vec![None; inputs.len()];
        in_axes[b] = Some(0);
        let out_axes = vec![0; c["vmap_outputs"].as_array().unwrap().len()];
        let vmapped = nb::vmap_with(|a: &Vec<Tensor>| f(a), in_axes, out_axes)(&args);
        assert_all_close(&format!("{name} vmap"), &vmapped, &list(&c["vmap_outputs"]));
        println!("{name}: values, gradients, Hessian-vector product and vmap match JAX");
    }
}

#[test]
fn cond_under_vmap_lets_each_example_take_its_own_branch() {
    let ps = Tensor::from_vec(vec![-0.5f64, 0.5, 1.0, -2.0], &[4]);
    let x = Tensor::from_vec(vec![0.3f64, -0.7], &[2]);
    let f = |args: &(Tensor, Tensor)| {
        nb::cond(
            &args.0.gt_scalar(0.0),
            |x: &Tensor| x.sin() * 2.0,
            |x: &Tensor| x.powf(3.0),
            &args.1,
        )
    };
    let got = nb::vmap_with(f, vec![Some(0), None], vec![0])(&(ps.clone(), x.clone()));
    for (k, p) in ps.to_vec::<f64>().into_iter().enumerate() {
        let want = if p > 0.0 { x.sin() * 2.0 } else { x.powf(3.0) };
        assert_eq!(
            got.index_axis(0, k as isize).to_vec::<f64>(),
            want.to_vec::<f64>(),
            "example {k}"
        );
    }
}

#[test]
fn a_scan_is_one_node_of_the_trace_and_replays_under_jit() {
    let step = |h: &Tensor, x: &Tensor| {
        let h2 = (h * 0.5 + x).tanh();
        (h2.clone(), h2)
    };
    let xs = Tensor::from_vec((0..40).map(|v| v as f64 / 40.0).collect(), &[20, 2]);
    let h0 = Tensor::from_vec(vec![0.1f64, -0.2], &[2]);
    let graph = nb::trace_graph(
        |a| {
            let (h, ys) = nb::scan(step, &a[0], &a[1]);
            vec![h, ys]
        },
        &[h0.clone(), xs.clone()],
    );
    assert_eq!(graph.matches("scan(20 steps)").count(), 1, "{graph}");
    assert!(
        !graph.contains("tanh"),
        "the steps were unrolled into the trace:\n{graph}"
    );
    let loss = |a: &(Tensor, Tensor)| {
        let (h, ys) = nb::scan(step, &a.0, &a.1);
        h.sum_all() + ys.square().sum_all()
    };
    let eager = nb::grad(loss)(&(h0.clone(), xs.clone()));
    let jitted = nb::jit(nb::grad(loss));
    for _ in 0..2 {
        let (gh, gx) = jitted(&(h0.clone(), xs.clone()));
        assert_eq!(gh.to_vec::<f64>(), eager.0.to_vec::<f64>());
        assert_eq!(gx.to_vec::<f64>(), eager.1.to_vec::<f64>());
    }
}

#[test]
fn a_step_that_captures_a_traced_parameter_is_refused_with_a_way_out() {
    let xs = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3]);
    let msg = panic_message(|| {
        let _ = nb::grad(|w: &Tensor| {
            let w = w.clone();
            nb::scan(
                move |c: &Tensor, x: &Tensor| (c * &w + x, c.clone()),
                &Tensor::from_vec(vec![0.0f64], &[]),
                &xs,
            )
            .0
        })(&Tensor::from_vec(vec![0.5f64], &[]));
    });
    assert!(msg.contains("captures") && msg.contains("scan_with"), "{msg}");
    let msg = panic_message(|| {
        let _ = nb::grad(|w: &Tensor| {
            let w2 = w.clone();
            nb::checkpoint(move |x: &Tensor| (x * &w2).sum_all())(&xs)
        })(&Tensor::from_vec(vec![0.5f64], &[]));
    });
    assert!(msg.contains("checkpoint") && msg.contains("captures"), "{msg}");
}
