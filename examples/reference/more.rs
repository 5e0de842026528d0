//! Our own examples of the rest of the API (the page has none for them): a vector gradient,
//! pullbacks and tangents of vector functions, higher derivatives, a matrix gradient, PyTorch-style
//! `backward`, `argnums` and `has_aux` on scalars, Jacobians of `tanh(W x)`, a Hessian, `vmap`,
//! per-example gradients and a parameter struct.

use nabla as nb;
use nb::{BackwardOptions, DType, GradOptions, Tensor, Tree};

use super::Named;

/// A parameter struct is a pytree: its gradient has the same type.
#[derive(Tree)]
struct Affine {
    w: Tensor,
    b: Tensor,
}

/// Every example's results, with inputs created in `dtype`.
pub fn more_examples(dtype: DType) -> Vec<Named> {
    let d = dtype;
    let mut out: Vec<Named> = Vec::new();
    let mut show = |name: &str, value: &Tensor| out.push((name.to_string(), value.clone()));

    let (value, g) =
        nb::value_and_grad(|x: &Tensor| (x.sin() * x + x.square()).sum_all())(&nb::tensor_of([0.0, 1.0, 2.0, 3.0], d));
    show("value_and_grad(sum(sin(x)*x + x^2)).value", &value);
    show("value_and_grad(sum(sin(x)*x + x^2)).grad", &g);

    let (y, pullback) = nb::vjp(|x| x.exp() * 2.0, &nb::tensor_of([0.0, 1.0], d));
    show("vjp(2 exp(x)).out", &y);
    show(
        "vjp(2 exp(x)).pullback([1, 1])",
        &pullback(&nb::tensor_of([1.0, 1.0], d)),
    );

    let (y, tangent) = nb::jvp(
        |x| x.tanh(),
        &nb::tensor_of([0.0, 0.5], d),
        &nb::tensor_of([1.0, 1.0], d),
    );
    show("jvp(tanh).out", &y);
    show("jvp(tanh).tangent", &tangent);

    // Higher derivatives by composition: d^k/dx^k x^4 at x = 2 gives 32, 48, 48.
    let p = |x: &Tensor| x.powf(4.0);
    let x2 = nb::tensor_of(2.0, d);
    show("d1 x^4 at 2", &nb::grad(p)(&x2));
    show("d2 x^4 at 2", &nb::grad(|x: &Tensor| nb::grad(p)(x))(&x2));
    show(
        "d3 x^4 at 2",
        &nb::grad(|x: &Tensor| nb::grad(|y: &Tensor| nb::grad(p)(y))(x))(&x2),
    );

    // Matrix-valued: the gradient of a least-squares loss.
    let w = nb::tensor_of([[1.0, -1.0], [0.5, 2.0]], d);
    let inputs = nb::tensor_of([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], d);
    let target = nb::tensor_of([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], d);
    let loss = |w: &Tensor| nb::mse(&inputs.matmul(w), &target);
    show("grad(mse(x @ w, t))", &nb::grad(loss)(&w));

    // PyTorch-style backward: gradients accumulate on requires_grad leaves. (seed_examples
    // also shows show_graph; its printout is not a value.)
    let leaf = nb::tensor_of([1.0, 2.0, 3.0], d).requires_grad();
    let l = (&leaf * &leaf).sum_all();
    let keep = BackwardOptions {
        retain_graph: Some(true),
        show_graph: false,
    };
    nb::backward(std::slice::from_ref(&l), &[l.ones_like()], keep);
    show("leaf.grad after one backward", &leaf.grad().expect("backward ran"));
    l.backward();
    show("leaf.grad after two backwards", &leaf.grad().expect("backward ran"));

    // argnums: f(x, y) = x^2 y + sin(y), gradients with respect to (x, y) at (2, 3).
    let g2 = |a: &[Tensor]| &a[0] * &a[0] * &a[1] + a[1].sin();
    let args = [nb::tensor_of(2.0, d), nb::tensor_of(3.0, d)];
    let grads = nb::grad_with(
        g2,
        GradOptions {
            argnums: [0, 1].into(),
            ..Default::default()
        },
    )(&args);
    show("grad(f, argnums=(0, 1))(2, 3)[0]", &grads[0]);
    show("grad(f, argnums=(0, 1))(2, 3)[1]", &grads[1]);

    // has_aux: the auxiliary output comes back untouched.
    let ((value, aux), g) = nb::value_and_grad_with_aux(|x: &Tensor| (x.square().sum_all(), x.mean_all()))(
        &nb::tensor_of([1.0, 2.0, 3.0], d),
    );
    show("value_and_grad(has_aux).value", &value);
    show("value_and_grad(has_aux).aux", &aux);
    show("value_and_grad(has_aux).grad", &g);

    // Jacobians (out.shape ++ in.shape) and the Hessian.
    let w = nb::tensor_of([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], d);
    let lin = |x: &Tensor| w.matmul(x).tanh();
    let x0 = nb::tensor_of([0.1, -0.2], d);
    show("jacfwd(tanh(W x))", &nb::jacfwd(lin)(&x0));
    show("jacrev(tanh(W x))", &nb::jacrev(lin)(&x0));
    show(
        "hessian(sum(x^3))",
        &nb::hessian(|x: &Tensor| x.powf(3.0).sum_all())(&nb::tensor_of([1.0, 2.0], d)),
    );

    // vmap, and per-example gradients as vmap of grad.
    show("vmap(sum)(rows)", &nb::vmap(|r: &Tensor| r.sum_all())(&w));
    let wv = nb::tensor_of([0.5, -1.0], d);
    let per_example = nb::vmap_many(
        |ex| vec![nb::grad(|w: &Tensor| ex[0].dot(w).square())(&wv)],
        std::slice::from_ref(&w),
        &[Some(0)],
        &[0],
    );
    show("per-example grads of (x . w)^2", &per_example[0]);

    let p = Affine {
        w: nb::tensor_of([[1.0, 0.0], [0.0, 1.0]], d),
        b: nb::tensor_of([0.5, -0.5], d),
    };
    let gp = nb::grad(|p: &Affine| (x0.matmul(&p.w) + &p.b).square().sum_all())(&p);
    show("grad(params).w", &gp.w);
    show("grad(params).b", &gp.b);
    out
}
