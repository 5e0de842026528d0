//! `jit`: a replayed program gives what the function gives, on new values (so nothing that
//! depends on the inputs is baked in), for every fixture op and for their pullbacks; and the
//! cache, constant folding, fallbacks and composition with the other transforms behave.

mod common;

use common::{apply, assert_close, float_inputs, load_cases, of_floats, panic_message};
use nabla_core as nb;
use nb::{Jit, Tensor};

/// Input `x` of call `k`: floats scaled (keeps every domain), others unchanged.
fn values(x: &Tensor, k: usize) -> Tensor {
    if x.dtype().is_float() {
        x * (1.0 + 0.07 * k as f64)
    } else {
        x.clone()
    }
}

fn assert_same(name: &str, what: &str, got: &[Tensor], want: &[Tensor]) {
    assert_eq!(got.len(), want.len(), "{name}: {what}: output count");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.dtype(), w.dtype(), "{name}: {what} {j}: dtype");
        assert_close(name, &format!("{what} {j}"), g, w, 1e-15, 0.0);
    }
}

#[test]
fn jit_of_every_op_replays_on_new_values() {
    let cases = load_cases();
    for c in &cases {
        let f = Jit::new(|xs: &Vec<Tensor>| apply(&c.op, &c.params, xs));
        for k in 0..3 {
            let xs: Vec<Tensor> = c.inputs.iter().map(|x| values(x, k)).collect();
            assert_same(
                &c.name,
                &format!("call {k}"),
                &f.call(&xs),
                &apply(&c.op, &c.params, &xs),
            );
        }
        let info = f.cache_info();
        assert_eq!(info.compiled, 1, "{}: one signature, one program ({info:?})", c.name);
        assert_eq!(
            (info.replays, info.eager_calls),
            (2, 1),
            "{}: recorded once, replayed twice",
            c.name
        );
    }
    println!("jit: {} cases recorded once and replayed on new values", cases.len());
}

#[test]
fn jit_of_pullbacks_replays_on_new_values() {
    let mut checked = 0;
    for c in load_cases()
        .iter()
        .filter(|c| c.raw.get("vjp").is_some_and(|v| !v.is_null()))
    {
        let fidx = float_inputs(&c.inputs);
        let f = of_floats(&c.op, &c.params, &c.inputs);
        // Primals and output cotangents in, primal cotangents out: a whole backward pass.
        let pull = |xs: &Vec<Tensor>| {
            let (outs, back) = nb::vjp_many(&f, xs);
            back.call(&outs.iter().map(|o| o.ones_like() * 0.5).collect::<Vec<_>>())
        };
        let j = Jit::new(pull);
        for k in 0..3 {
            let xs: Vec<Tensor> = fidx.iter().map(|&i| values(&c.inputs[i], k)).collect();
            assert_same(&c.name, &format!("pullback, call {k}"), &j.call(&xs), &pull(&xs));
        }
        assert_eq!(j.cache_info().replays, 2, "{}: pullback replayed", c.name);
        checked += 1;
    }
    assert!(checked > 300, "only {checked} differentiable cases");
    println!("jit of vjp: {checked} cases");
}

#[test]
fn each_signature_gets_its_own_program() {
    let f = Jit::new(|x: &Tensor| (x * 2.0).sum_all());
    let a = nb::tensor([1.0f32, 2.0, 3.0]);
    let b = nb::tensor([1.0f32, 2.0]);
    let c = Tensor::from_vec(vec![1.0f64, 2.0], &[2]);
    let m = nb::tensor([[1.0f32, 2.0], [3.0, 4.0]]);
    assert_eq!(f.call(&a).item::<f32>(), 12.0);
    assert_eq!(f.call(&b).item::<f32>(), 6.0);
    assert_eq!(f.call(&c).item::<f64>(), 6.0);
    assert_eq!(f.call(&m).item::<f32>(), 20.0);
    // Same shape, other layouts: a transposed view and a slice of a larger buffer replay the
    // matrix's program (they are read as contiguous copies).
    let m_t = nb::tensor([[1.0f32, 3.0], [2.0, 4.0]]).transpose();
    assert_eq!(f.call(&m_t).item::<f32>(), 20.0);
    let big = nb::tensor([[0.0f32, 0.0], [1.0, 2.0], [3.0, 5.0]]);
    assert_eq!(f.call(&big.slice_axis(0, Some(1), None, 1)).item::<f32>(), 22.0);
    assert_eq!(f.call(&(&a + 1.0)).item::<f32>(), 18.0);
    let info = f.cache_info();
    assert_eq!(info.compiled, 4, "{info:?}");
    assert_eq!(info.replays, 3, "{info:?}");
}

#[test]
fn arguments_sharing_a_buffer_stay_separate_inputs() {
    let f = Jit::new(|(x, y): &(Tensor, Tensor)| x * y);
    let a = nb::tensor([1.0f32, 2.0]);
    let b = nb::tensor([3.0f32, 4.0]);
    assert_eq!(f.call(&(a.clone(), a.clone())).to_vec::<f32>(), vec![1.0, 4.0]);
    assert_eq!(f.call(&(a.clone(), b.clone())).to_vec::<f32>(), vec![3.0, 8.0]);
    assert_eq!(f.call(&(b.clone(), b.clone())).to_vec::<f32>(), vec![9.0, 16.0]);
    assert_eq!(f.cache_info().compiled, 1);
    assert_eq!(f.cache_info().replays, 2);
}

#[test]
fn a_captured_tensor_passed_as_the_argument_stays_a_constant() {
    let w = nb::tensor([2.0f32, 3.0]);
    let f = Jit::new(|x: &Tensor| x * &w);
    // Recorded with w itself as the argument: the captured w must not become "the input".
    assert_eq!(f.call(&w).to_vec::<f32>(), vec![4.0, 9.0]);
    let y = nb::tensor([10.0f32, 100.0]);
    assert_eq!(f.call(&y).to_vec::<f32>(), vec![20.0, 300.0]);
    assert_eq!(f.cache_info().replays, 1);
}

#[test]
fn random_draws_inside_the_function_fall_back_to_eager() {
    let rng = std::sync::Mutex::new(nb::Rng::new(7));
    let f = Jit::new(|x: &Tensor| x + rng.lock().unwrap().uniform(&[2], 0.0, 1.0, nb::DType::F32));
    let x = nb::tensor([0.0f32, 0.0]);
    let (a, b) = (f.call(&x).to_vec::<f32>(), f.call(&x).to_vec::<f32>());
    assert_ne!(a, b, "each call draws new numbers, as it does eagerly");
    let info = f.cache_info();
    assert_eq!(info.compiled, 0);
    assert!(info.eager[0].contains("draws random numbers"), "{}", info.eager[0]);
}

#[test]
fn captured_tensors_are_constants_and_constant_work_is_folded() {
    let w = nb::tensor([1.0f32, 10.0, 100.0]);
    let f = Jit::new(|x: &Tensor| {
        // `w.exp().log()` depends on no input: it runs once, when recording.
        x * w.exp().log() + nb::tensor([0.5f32, 0.5, 0.5])
    });
    let x1 = nb::tensor([1.0f32, 1.0, 1.0]);
    let x2 = nb::tensor([2.0f32, 3.0, 4.0]);
    f.call(&x1);
    let got = f.call(&x2).to_vec::<f32>();
    let want = (&x2 * w.exp().log() + 0.5).to_vec::<f32>();
    assert_eq!(got, want);
}

#[test]
fn reading_values_inside_the_function_falls_back_to_eager_and_says_why() {
    let f = Jit::new(|x: &Tensor| {
        // Rust control flow on a value: a replay could not follow it.
        if x.sum_all().item::<f32>() > 0.0 {
            x * 2.0
        } else {
            x * -1.0
        }
    });
    assert_eq!(f.call(&nb::tensor([1.0f32, 2.0])).to_vec::<f32>(), vec![2.0, 4.0]);
    assert_eq!(f.call(&nb::tensor([-1.0f32, -2.0])).to_vec::<f32>(), vec![1.0, 2.0]);
    let info = f.cache_info();
    assert_eq!(info.compiled, 0);
    assert_eq!(info.eager.len(), 1);
    assert!(info.eager[0].contains("read the values"), "{}", info.eager[0]);
    assert_eq!((info.replays, info.eager_calls), (0, 2));
}

#[test]
fn index_checks_run_on_every_replay() {
    let f = Jit::new(|(x, i): &(Tensor, Tensor)| x.take(i, 0));
    let x = nb::tensor([10.0f32, 20.0, 30.0]);
    let i = |v: [i64; 2]| Tensor::from_vec(v.to_vec(), &[2]);
    assert_eq!(f.call(&(x.clone(), i([0, 2]))).to_vec::<f32>(), vec![10.0, 30.0]);
    // Negative indices are wrapped per call, not baked in.
    assert_eq!(f.call(&(x.clone(), i([-1, 1]))).to_vec::<f32>(), vec![30.0, 20.0]);
    assert_eq!(f.cache_info().replays, 1);
    let msg = panic_message(|| {
        f.call(&(x.clone(), i([0, 3])));
    });
    assert!(
        msg.contains("take: index 3 is out of range for axis 0 of extent 3"),
        "{msg}"
    );
}

#[test]
fn jit_composes_with_the_transforms() {
    let f = |x: &Tensor| (x.sin() * x).sum_all();
    let jf = Jit::new(f);
    let x = nb::tensor([0.5f64, 1.5, -2.0]);
    jf.call(&x);
    // Inside grad / vmap the function runs as it is (its arguments are traced or batched).
    let g = nb::grad(|x: &Tensor| jf.call(x))(&x);
    assert_eq!(g.to_vec::<f64>(), nb::grad(f)(&x).to_vec::<f64>());
    let xs = nb::tensor([[0.5f64, 1.5, -2.0], [1.0, 2.0, 3.0]]);
    let v = nb::vmap(|x: &Tensor| jf.call(x))(&xs);
    assert_eq!(v.to_vec::<f64>(), nb::vmap(f)(&xs).to_vec::<f64>());
    // jit of grad replays the whole backward pass.
    let jg = Jit::new(nb::grad(f));
    jg.call(&x);
    let y = nb::tensor([1.0f64, 2.0, 3.0]);
    assert_eq!(jg.call(&y).to_vec::<f64>(), nb::grad(f)(&y).to_vec::<f64>());
    assert_eq!(jg.cache_info().replays, 1);
    // A jit inside a recording jit is part of the outer program.
    let outer = Jit::new(|x: &Tensor| jf.call(x) * 2.0);
    outer.call(&x);
    assert_eq!(outer.call(&y).item::<f64>(), f(&y).item::<f64>() * 2.0);
    assert_eq!(outer.cache_info().replays, 1);
}

#[test]
fn a_panic_while_recording_leaves_nothing_recording() {
    let f = Jit::new(|x: &Tensor| {
        let y = x * 2.0;
        if y.shape()[0] == 3 {
            panic!("user error");
        }
        y
    });
    let msg = panic_message(|| {
        f.call(&nb::tensor([1.0f32, 2.0, 3.0]));
    });
    assert!(msg.contains("user error"));
    // Later eager ops and jit calls work as usual.
    let z = nb::tensor([1.0f32, 2.0]) * 3.0;
    assert_eq!(z.to_vec::<f32>(), vec![3.0, 6.0]);
    assert_eq!(f.call(&nb::tensor([1.0f32, 2.0])).to_vec::<f32>(), vec![2.0, 4.0]);
    assert_eq!(f.call(&nb::tensor([5.0f32, 2.0])).to_vec::<f32>(), vec![10.0, 4.0]);
    assert_eq!(f.cache_info().replays, 1);
}

#[test]
fn backward_inside_the_function_falls_back_to_eager() {
    let f = Jit::new(|x: &Tensor| {
        let w = x.requires_grad();
        (&w * &w).sum_all().backward();
        w.grad().expect("filled by backward")
    });
    assert_eq!(f.call(&nb::tensor([1.0f32, 2.0])).to_vec::<f32>(), vec![2.0, 4.0]);
    assert_eq!(f.call(&nb::tensor([3.0f32, 4.0])).to_vec::<f32>(), vec![6.0, 8.0]);
    let info = f.cache_info();
    assert_eq!(info.compiled, 0);
    assert!(info.eager[0].contains("calls backward"), "{}", info.eager[0]);
}

/// A function of one tensor (a transformed function, boxed to put several in one list).
type TensorFn<'a> = dyn Fn(&Tensor) -> Tensor + 'a;

#[test]
fn jit_of_jacobians_hessians_and_vmapped_gradients_replays_them() {
    let w = Tensor::from_vec(vec![0.5f64, -1.0, 2.0, 1.5, 0.25, -0.5], &[2, 3]);
    let f = |x: &Tensor| w.matmul(x).tanh();
    let scalar = |x: &Tensor| (x.sin() * x.exp()).sum_all();
    let x1 = Tensor::from_vec(vec![0.3f64, -0.7, 1.1], &[3]);
    let x2 = Tensor::from_vec(vec![-1.2f64, 0.4, 0.9], &[3]);
    let xs = Tensor::from_vec((0..12).map(|i| 0.1 * i as f64 - 0.5).collect(), &[4, 3]);
    let xs2 = &xs * 1.3;
    let cases: Vec<(&str, Box<TensorFn<'_>>, &Tensor, &Tensor)> = vec![
        ("jacfwd", Box::new(nb::jacfwd(f)), &x1, &x2),
        ("jacrev", Box::new(nb::jacrev(f)), &x1, &x2),
        ("hessian", Box::new(nb::hessian(scalar)), &x1, &x2),
        ("vmap of grad", Box::new(nb::vmap(nb::grad(scalar))), &xs, &xs2),
    ];
    for (name, eager, first, second) in cases {
        let jitted = Jit::new(|x: &Tensor| eager(x));
        jitted.call(first);
        let (got, want) = (jitted.call(second), eager(second));
        assert_close(name, "replay", &got, &want, 1e-15, 0.0);
        assert_eq!(jitted.cache_info().replays, 1, "{name}");
    }
}
