//! The autodiff API as users meet it: pytrees and `#[derive(Tree)]`, tuples of primals,
//! `has_aux`, `argnums`, Jacobians and Hessians, per-example gradients, and clear errors.

use std::collections::BTreeMap;

use nabla as nb;
use nb::{DType, GradOptions, Tensor, Tree};

fn t64<const N: usize>(v: [f64; N]) -> Tensor {
    nb::tensor_of(v, DType::F64)
}

fn close(a: &Tensor, b: &Tensor) {
    assert_eq!(a.shape(), b.shape());
    for (x, y) in a.to_vec::<f64>().iter().zip(b.to_vec::<f64>()) {
        assert!((x - y).abs() <= 1e-9 * (1.0 + y.abs()), "{a}\nvs\n{b}");
    }
}

fn panic_message(f: impl FnOnce()) -> String {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a panic");
    match err.downcast::<String>() {
        Ok(s) => *s,
        Err(e) => e.downcast::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

#[derive(Tree)]
struct Linear {
    w: Tensor,
    b: Tensor,
    #[tree(skip)]
    name: String,
}

#[derive(Tree)]
struct Model {
    layers: Vec<Linear>,
    scale: Option<Tensor>,
}

fn forward(m: &Model, x: &Tensor) -> Tensor {
    let mut h = x.clone();
    for l in &m.layers {
        h = (h.matmul(&l.w) + &l.b).tanh();
    }
    match &m.scale {
        Some(s) => h * s,
        None => h,
    }
}

#[test]
fn grad_of_a_derived_struct_returns_the_same_struct() {
    let mut rng = nb::Rng::new(1);
    let layer = |i: usize, o: usize, rng: &mut nb::Rng| Linear {
        w: rng.normal(&[i, o], 0.0, 0.5, DType::F64),
        b: rng.normal(&[o], 0.0, 0.1, DType::F64),
        name: format!("{i}x{o}"),
    };
    let model = Model {
        layers: vec![layer(3, 4, &mut rng), layer(4, 2, &mut rng)],
        scale: Some(t64([2.0])),
    };
    let x = rng.normal(&[5, 3], 0.0, 1.0, DType::F64);
    let loss = |m: &Model| forward(m, &x).square().mean_all();
    let g: Model = nb::grad(loss)(&model);
    assert_eq!(g.layers.len(), 2);
    assert_eq!(g.layers[1].name, "4x2");
    assert_eq!(g.layers[0].w.shape(), &[3, 4]);
    assert!(g.scale.is_some());
    // Check one leaf against a finite difference.
    let eps = 1e-6;
    let bump = |d: f64| {
        let mut leaves = model.leaves();
        leaves[1] = &leaves[1] + &(Tensor::from_vec(vec![d, 0.0, 0.0, 0.0], &[4]));
        loss(&model.rebuild(leaves)).item::<f64>()
    };
    let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
    assert!((g.layers[0].b.to_vec::<f64>()[0] - fd).abs() < 1e-6);
}

#[test]
fn containers_are_trees() {
    let mut m = BTreeMap::new();
    m.insert("a".to_string(), t64([1.0, 2.0]));
    m.insert("b".to_string(), t64([3.0]));
    let g = nb::grad(|m: &BTreeMap<String, Tensor>| (&m["a"] * &m["a"]).sum_all() + m["b"].sum_all() * 3.0)(&m);
    close(&g["a"], &t64([2.0, 4.0]));
    close(&g["b"], &t64([3.0]));
    let arr = [t64([1.0]), t64([2.0])];
    let g = nb::grad(|a: &[Tensor; 2]| (&a[0] * &a[1]).sum_all())(&arr);
    close(&g[0], &t64([2.0]));
    close(&g[1], &t64([1.0]));
}

#[test]
fn vjp_returns_one_cotangent_per_primal_of_a_tuple() {
    let (x, y) = (t64([1.0, 2.0]), t64([3.0, 4.0]));
    let (out, pullback) = nb::vjp(|(x, y): &(Tensor, Tensor)| x * y, &(x.clone(), y.clone()));
    close(&out, &t64([3.0, 8.0]));
    let (gx, gy) = pullback(&t64([1.0, 1.0]));
    close(&gx, &y);
    close(&gy, &x);
    // A single primal in a 1-tuple gives a 1-tuple, as JAX's vjp_fn does.
    let (_, pb) = nb::vjp(|(x,): &(Tensor,)| x.sin(), &(x.clone(),));
    let (g,) = pb(&t64([1.0, 1.0]));
    close(&g, &x.cos());
    // Pytree outputs: the cotangent has the output's structure.
    let (_, pb) = nb::vjp(|x: &Tensor| (x.exp(), x.square()), &x);
    close(&pb(&(t64([1.0, 0.0]), t64([0.0, 1.0]))), &t64([1f64.exp(), 4.0]));
}

#[test]
fn has_aux_variants_return_the_aux_untouched() {
    let x = t64([1.0, 2.0]);
    let f = |x: &Tensor| ((x * x).sum_all(), (x * 10.0, t64([7.0])));
    let ((v, (a, b)), g) = nb::value_and_grad_with_aux(f)(&x);
    assert_eq!(v.item::<f64>(), 5.0);
    close(&a, &t64([10.0, 20.0]));
    close(&b, &t64([7.0]));
    close(&g, &t64([2.0, 4.0]));
    assert!(!a.is_traced());
    let (g2, _) = nb::grad_with_aux(f)(&x);
    close(&g2, &g);
    let (out, pb, aux) = nb::vjp_with_aux(|x: &Tensor| (x.exp(), x.sum_all()), &x);
    close(&pb(&out.ones_like()), &x.exp());
    assert_eq!(aux.item::<f64>(), 3.0);
    let (_, t, aux) = nb::jvp_with_aux(|x: &Tensor| (x.sin(), x.cos()), &x, &x.ones_like());
    close(&t, &x.cos());
    close(&aux, &x.cos());
}

#[test]
fn argnums_select_positional_arguments() {
    let f = |a: &[Tensor]| (&a[0] * &a[1] + a[2].sin()).sum_all();
    let args = [t64([1.0, 2.0]), t64([3.0, 4.0]), t64([0.5, 0.25])];
    let g = nb::grad_with(
        f,
        GradOptions {
            argnums: 1.into(),
            ..Default::default()
        },
    )(&args);
    assert_eq!(g.len(), 1);
    close(&g[0], &args[0]);
    let g = nb::grad_with(
        f,
        GradOptions {
            argnums: [2, 0].into(),
            ..Default::default()
        },
    )(&args);
    close(&g[0], &args[2].cos());
    close(&g[1], &args[1]);
    let (v, g) = nb::value_and_grad_with(f, GradOptions::default())(&args);
    close(&g[0], &args[1]);
    assert!((v.item::<f64>() - (3.0 + 8.0 + 0.5f64.sin() + 0.25f64.sin())).abs() < 1e-12);
    let ((_, aux), g) =
        nb::value_and_grad_with_aux_with(|a: &[Tensor]| (a[0].sum_all(), a[1].clone()), GradOptions::default())(&args);
    close(&aux, &args[1]);
    close(&g[0], &t64([1.0, 1.0]));
    // Ignored options are accepted.
    let opts = GradOptions {
        holomorphic: false,
        reduce_axes: vec![],
        mode: Some("reverse".into()),
        ..Default::default()
    };
    assert_eq!(nb::grad_with(f, opts)(&args).len(), 1);
    // Integer arguments: an error by default, zeros with allow_int.
    let with_int = [t64([1.0]), nb::tensor([3])];
    let h = |a: &[Tensor]| (&a[0] * &a[1].cast(DType::F64)).sum_all();
    let m = panic_message(|| {
        nb::grad_with(
            h,
            GradOptions {
                argnums: [0, 1].into(),
                ..Default::default()
            },
        )(&with_int);
    });
    assert!(
        m.contains("input leaf 1 has dtype i64") && m.contains("allow_int"),
        "{m}"
    );
    let g = nb::grad_with(
        h,
        GradOptions {
            argnums: [0, 1].into(),
            allow_int: true,
            ..Default::default()
        },
    )(&with_int);
    close(&g[0], &t64([3.0]));
    assert_eq!(g[1].to_vec::<i64>(), vec![0]);
    let m = panic_message(|| {
        nb::grad_with(
            f,
            GradOptions {
                argnums: 3.into(),
                ..Default::default()
            },
        )(&args);
    });
    assert!(
        m.contains("argnums") && m.contains("argument 3") && m.contains("3 argument"),
        "{m}"
    );
}

fn loop_jacobian(f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor) -> Tensor {
    // Row by row with single vjp passes: the slow reference.
    let out = f(x);
    let m = out.numel();
    let rows: Vec<Tensor> = (0..m)
        .map(|i| {
            let mut e = vec![0.0; m];
            e[i] = 1.0;
            let (_, pb) = nb::vjp(|x: &Tensor| f(x), x);
            pb(&Tensor::from_vec(e, out.shape()))
        })
        .collect();
    let mut shape = out.shape().to_vec();
    shape.extend_from_slice(x.shape());
    nb::stack(&rows, 0).reshape(shape)
}

#[test]
fn jacobians_have_out_then_in_shape_and_match_single_passes() {
    let w = nb::Rng::new(3).normal(&[4, 3], 0.0, 1.0, DType::F64);
    let f = |x: &Tensor| w.matmul(x).tanh();
    let x = t64([0.1, -0.4, 0.7]);
    let jf = nb::jacfwd(f)(&x);
    let jr = nb::jacrev(f)(&x);
    assert_eq!(jf.shape(), &[4, 3]);
    close(&jf, &loop_jacobian(&f, &x));
    close(&jr, &jf);
    // Matrix input and output.
    let g = |m: &Tensor| m.matmul(&m.transpose()).sin();
    let m = nb::Rng::new(4).normal(&[2, 3], 0.0, 1.0, DType::F64);
    let jf = nb::jacfwd(g)(&m);
    assert_eq!(jf.shape(), &[2, 2, 2, 3]);
    close(&jf, &nb::jacrev(g)(&m));
    close(&jf, &loop_jacobian(&g, &m));
    // Positional, with argnums.
    let h = |a: &[Tensor]| &a[0] * &a[1];
    let js = nb::jacrev_with(h, [0, 1])(&[t64([1.0, 2.0]), t64([3.0, 4.0])]);
    close(&js[0], &nb::tensor_of([[3.0, 0.0], [0.0, 4.0]], DType::F64));
    close(&js[1], &nb::tensor_of([[1.0, 0.0], [0.0, 2.0]], DType::F64));
    close(&nb::jacfwd_with(h, 1)(&[t64([1.0, 2.0]), t64([3.0, 4.0])])[0], &js[1]);
}

/// A boxed scalar-valued function of one tensor.
type ScalarFn = Box<dyn Fn(&Tensor) -> Tensor>;

#[test]
fn all_four_hessian_compositions_agree() {
    let funcs: Vec<ScalarFn> = vec![
        Box::new(|x: &Tensor| (x.sin() * x.square()).sum_all()),
        Box::new(|x: &Tensor| x.logsumexp(0, false)),
        Box::new(|x: &Tensor| (x.outer(x).tanh() * 0.5).sum_all() + x.powf(3.0).sum_all()),
        Box::new(|x: &Tensor| x.softmax(0).i(1)),
    ];
    let x = t64([0.3, -0.8, 1.1]);
    for f in &funcs {
        let ff = |x: &Tensor| nb::jacfwd(|y: &Tensor| nb::jacfwd(|z: &Tensor| f(z))(y))(x);
        let fr = |x: &Tensor| nb::jacfwd(|y: &Tensor| nb::jacrev(|z: &Tensor| f(z))(y))(x);
        let rf = |x: &Tensor| nb::jacrev(|y: &Tensor| nb::jacfwd(|z: &Tensor| f(z))(y))(x);
        let rr = |x: &Tensor| nb::jacrev(|y: &Tensor| nb::jacrev(|z: &Tensor| f(z))(y))(x);
        let h = nb::hessian(|z: &Tensor| f(z))(&x);
        assert_eq!(h.shape(), &[3, 3]);
        for other in [ff(&x), fr(&x), rf(&x), rr(&x)] {
            close(&other, &h);
        }
        // Symmetric, and its rows are the gradients' derivatives (finite differences).
        close(&h, &h.transpose());
        let eps = 1e-6;
        let grad = nb::grad(|z: &Tensor| f(z));
        let fd_col = (grad(&(&x + &t64([eps, 0.0, 0.0]))) - grad(&(&x - &t64([eps, 0.0, 0.0])))) / (2.0 * eps);
        for (a, b) in h
            .slice_axis(1, Some(0), Some(1), 1)
            .flatten()
            .to_vec::<f64>()
            .iter()
            .zip(fd_col.to_vec::<f64>())
        {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}

#[test]
fn per_example_gradients_with_vmap_of_grad() {
    let w = t64([0.5, -1.0]);
    let xs = nb::tensor_of([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], DType::F64);
    let ys = t64([1.0, 0.0, 2.0]);
    // The documented pattern: map the gradient of the per-example loss over the batch.
    let per_example = nb::vmap_many(
        |ex| vec![nb::grad(|w: &Tensor| (ex[0].dot(w) - &ex[1]).square())(&w)],
        &[xs.clone(), ys.clone()],
        &[Some(0), Some(0)],
        &[0],
    );
    assert_eq!(per_example[0].shape(), &[3, 2]);
    for i in 0..3 {
        let xi = xs.i(i);
        let want = nb::grad(|w: &Tensor| (xi.dot(w) - ys.i(i)).square())(&w);
        close(&per_example[0].i(i), &want);
    }
    // Typed vmap over a tuple pytree.
    let sums = nb::vmap(|(a, b): &(Tensor, Tensor)| (a * b).sum_all())(&(xs.clone(), xs.clone()));
    close(&sums, &t64([5.0, 25.0, 61.0]));
}

#[test]
fn structure_and_shape_mistakes_are_named() {
    let m = panic_message(|| {
        nb::jvp(
            |p: &(Tensor, Tensor)| &p.0 * &p.1,
            &(t64([1.0]), t64([2.0])),
            &(t64([1.0]), t64([1.0, 2.0])),
        );
    });
    assert!(
        m.contains("jvp: tangent 1 has shape [2]") && m.contains("expected [1]"),
        "{m}"
    );
    let m = panic_message(|| {
        nb::vmap_many(
            |x| vec![x[0].clone()],
            &[t64([1.0, 2.0]), t64([1.0, 2.0, 3.0])],
            &[Some(0), Some(0)],
            &[0],
        );
    });
    assert!(
        m.contains("vmap: inconsistent sizes") && m.contains("argument 1 has 3"),
        "{m}"
    );
    let m = panic_message(|| {
        nb::value_and_grad(|x: &Tensor| x.exp())(&t64([1.0, 2.0]));
    });
    assert!(m.contains("must return a scalar") && m.contains("[2]"), "{m}");
}

#[test]
fn jacobian_options_and_vmap_axes() {
    let h = |a: &[Tensor]| &a[0] * &a[1].sum_all();
    let args = [t64([1.0, 2.0]), t64([3.0, 4.0, 5.0])];
    // Argnums::All is Nabla's jacfwd default (argnums=None).
    let js = nb::jacfwd_with(h, nb::Argnums::All)(&args);
    assert_eq!((js[0].shape(), js[1].shape()), (&[2, 2][..], &[2, 3][..]));
    close(&js[1], &nb::tensor_of([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], DType::F64));
    // allow_int: an integer argument gets a zero block instead of an error.
    let hi = |a: &[Tensor]| &a[0] * a[1].cast(DType::F64).sum_all();
    let with_int = [t64([1.0, 2.0]), nb::tensor([3, 4])];
    let m = panic_message(|| {
        nb::jacrev_with(hi, [0, 1])(&with_int);
    });
    assert!(m.contains("jacrev") && m.contains("allow_int"), "{m}");
    let js = nb::jacrev_with(
        hi,
        GradOptions {
            argnums: [0, 1].into(),
            allow_int: true,
            ..Default::default()
        },
    )(&with_int);
    close(&js[0], &nb::tensor_of([[7.0, 0.0], [0.0, 7.0]], DType::F64));
    assert_eq!(js[1].shape(), &[2, 2]);
    assert_eq!(js[1].sum_all().item::<f64>(), 0.0);
    // vmap_with: shared (None) leaves and an output axis other than 0.
    let xs = nb::tensor_of([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], DType::F64);
    let out =
        nb::vmap_with(|(x, s): &(Tensor, Tensor)| x * s, vec![Some(0), None], vec![1])(&(xs.clone(), t64([10.0])));
    assert_eq!(out.shape(), &[2, 3]);
    close(&out, &(xs.transpose() * 10.0));
}
