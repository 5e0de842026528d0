//! The API edges a user trial met: Jacobians of functions with several outputs, Hessians of
//! pytrees and by argnums, one spelling of argnums, vmap's in_axes per argument.

use nabla_core as nb;
use nb::Tensor;

fn v(x: &[f64]) -> Tensor {
    Tensor::from_vec(x.to_vec(), &[x.len()])
}

fn diag(d: &[f64]) -> Vec<f64> {
    let n = d.len();
    (0..n * n)
        .map(|k| if k / n == k % n { d[k / n] } else { 0.0 })
        .collect()
}

/// f(x, y) = sum(x * x * y): d2f/dx2 = diag(2y), d2f/dxdy = diag(2x), d2f/dy2 = 0.
fn f(a: &[Tensor]) -> Tensor {
    (&a[0] * &a[0] * &a[1]).sum_all()
}

#[test]
fn all_second_derivatives_in_one_line_as_in_jax() {
    let (x, y) = (v(&[1.0, -2.0, 3.0]), v(&[0.5, 4.0, -1.0]));
    let args = [x.clone(), y.clone()];
    let h = nb::jacfwd_many_with(nb::jacrev_with(f, [0, 1]), [0, 1])(&args);
    let h2 = nb::hessian_with(f, [0, 1])(&args);
    let want = [
        [diag(&[1.0, 8.0, -2.0]), diag(&[2.0, -4.0, 6.0])],
        [diag(&[2.0, -4.0, 6.0]), vec![0.0; 9]],
    ];
    for i in 0..2 {
        for j in 0..2 {
            assert_eq!(h[i][j].shape(), &[3, 3]);
            assert_eq!(h[i][j].to_vec::<f64>(), want[i][j], "jacfwd(jacrev) block {i}{j}");
            assert_eq!(h2[i][j].to_vec::<f64>(), want[i][j], "hessian_with block {i}{j}");
        }
    }
    // The typed form over a pytree argument.
    let ht = nb::hessian_tree(|p: &(Tensor, Tensor)| f(&[p.0.clone(), p.1.clone()]))(&(x, y));
    assert_eq!(ht.len(), 2);
    assert_eq!(ht[0].0.to_vec::<f64>(), want[0][0]);
    assert_eq!(ht[0].1.to_vec::<f64>(), want[0][1]);
    assert_eq!(ht[1].0.to_vec::<f64>(), want[1][0]);
    assert_eq!(ht[1].1.to_vec::<f64>(), want[1][1]);
}

#[test]
fn jacobians_of_pytree_outputs_match_the_single_output_ones() {
    let x = v(&[0.3, -1.2]);
    let g = |x: &Tensor| (x.sin(), (x * x).sum_all());
    for (multi, single_a, single_b) in [
        (
            nb::jacfwd_multi(g)(&x),
            nb::jacfwd(|x: &Tensor| x.sin())(&x),
            nb::jacfwd(|x: &Tensor| (x * x).sum_all())(&x),
        ),
        (
            nb::jacrev_multi(g)(&x),
            nb::jacrev(|x: &Tensor| x.sin())(&x),
            nb::jacrev(|x: &Tensor| (x * x).sum_all())(&x),
        ),
    ] {
        assert_eq!(multi.len(), 2);
        assert_eq!(multi[0].shape(), &[2, 2]);
        assert_eq!(multi[1].shape(), &[2]);
        assert_eq!(multi[0].to_vec::<f64>(), single_a.to_vec::<f64>());
        assert_eq!(multi[1].to_vec::<f64>(), single_b.to_vec::<f64>());
    }
}

#[test]
fn argnums_reads_the_same_in_every_positional_transform() {
    let args = [v(&[1.0, 2.0]), v(&[3.0, 4.0])];
    let g = nb::grad_with(f, [0, 1])(&args);
    assert_eq!(g[0].to_vec::<f64>(), vec![6.0, 16.0]);
    assert_eq!(g[1].to_vec::<f64>(), vec![1.0, 4.0]);
    let (val, g1) = nb::value_and_grad_with(f, 1)(&args);
    assert_eq!(val.item::<f64>(), 19.0);
    assert_eq!(g1[0].to_vec::<f64>(), vec![1.0, 4.0]);
    let j = nb::jacrev_with(f, [1])(&args);
    assert_eq!(j[0].to_vec::<f64>(), vec![1.0, 4.0]);
    // The options struct still works where more than argnums is needed.
    let g = nb::grad_with(
        f,
        nb::GradOptions {
            argnums: [0].into(),
            ..Default::default()
        },
    )(&args);
    assert_eq!(g[0].to_vec::<f64>(), vec![6.0, 16.0]);
}

#[test]
fn vmap_in_axes_per_argument_of_a_tuple() {
    // Two arguments: a batch of rows (mapped) and a (weight, bias) pair shared by every row.
    let xs = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[2, 2]);
    let w = Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 2.0], &[2, 2]);
    let b = v(&[10.0, 20.0]);
    let layer = |a: &(Tensor, (Tensor, Tensor))| a.0.matmul(&a.1.0) + &a.1.1;
    let per_argument = nb::vmap_with(layer, vec![Some(0), None], vec![0])(&(xs.clone(), (w.clone(), b.clone())));
    let per_leaf = nb::vmap_with(layer, vec![Some(0), None, None], vec![0])(&(xs.clone(), (w.clone(), b.clone())));
    assert_eq!(per_argument.to_vec::<f64>(), vec![11.0, 24.0, 13.0, 28.0]);
    assert_eq!(per_argument.to_vec::<f64>(), per_leaf.to_vec::<f64>());
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        nb::vmap_with(layer, vec![Some(0), None, None, None], vec![0])(&(xs, (w, b)));
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("4 in_axes given; the argument has 3 leaves and 2 top-level arguments"),
        "{msg}"
    );
}

#[test]
fn a_closure_borrowing_locals_works_as_the_tail_of_a_block() {
    // Under edition 2021 this block failed with E0597 (`b` does not live long enough): the
    // temporaries of a tail expression outlived the block's locals. Edition 2024 drops them first.
    let g = {
        let a = Tensor::from_vec(vec![1.0f64, 2.0], &[1, 2]);
        let b = Tensor::from_vec(vec![0.5f64, -1.0], &[2, 1]);
        nb::grad(|a: &Tensor| a.matmul(&b).tanh().sum_all())(&a)
    };
    let t = (0.5f64 - 2.0).tanh();
    let d = 1.0 - t * t;
    assert_eq!(g.to_vec::<f64>(), vec![0.5 * d, -d]);
}
