//! The seed's calls, runnable: grad, value_and_grad, vjp, jvp, nested derivatives and
//! PyTorch-style backward. Prints every result as `name = value`.
//!
//! Run: `cargo run --release --example seed_examples`

use nabla as nb;
use nb::{BackwardOptions, DType, GradOptions, Tensor, Tree};

fn show(name: &str, value: &Tensor) {
    let text = value.to_string().replace('\n', "\n    ");
    println!("{name} = {text}");
}

fn main() {
    // f(x) = x * y + x^2 at x = 3, y = 4 (the seed's first example).
    let y = nb::tensor(4.0);
    let f = |x: &Tensor| x * &y + x.powf(2.0);
    let x = nb::tensor(3.0);
    show("f(3)", &f(&x));
    show("grad(f)(3)", &nb::grad(f)(&x));

    let (value, g) =
        nb::value_and_grad(|x: &Tensor| (x.sin() * x + x.square()).sum_all())(&nb::tensor([0.0, 1.0, 2.0, 3.0]));
    show("value_and_grad(sum(sin(x)*x + x^2)).value", &value);
    show("value_and_grad(sum(sin(x)*x + x^2)).grad", &g);

    let (out, pullback) = nb::vjp(|x| x.exp() * 2.0, &nb::tensor([0.0, 1.0]));
    show("vjp(2 exp(x)).out", &out);
    show("vjp(2 exp(x)).pullback([1, 1])", &pullback(&nb::tensor([1.0, 1.0])));

    let (out, tangent) = nb::jvp(|x| x.tanh(), &nb::tensor([0.0, 0.5]), &nb::tensor([1.0, 1.0]));
    show("jvp(tanh).out", &out);
    show("jvp(tanh).tangent", &tangent);

    // Higher derivatives by composition: d^k/dx^k x^4 at x = 2 gives 32, 48, 48, 24.
    let p = |x: &Tensor| x.powf(4.0);
    let x2 = nb::tensor_of(2.0, DType::F64);
    show("d1 x^4 at 2", &nb::grad(p)(&x2));
    show("d2 x^4 at 2", &nb::grad(|x: &Tensor| nb::grad(p)(x))(&x2));
    show(
        "d3 x^4 at 2",
        &nb::grad(|x: &Tensor| nb::grad(|y: &Tensor| nb::grad(p)(y))(x))(&x2),
    );

    // Matrix-valued: gradient of a least-squares loss.
    let w = nb::tensor([[1.0, -1.0], [0.5, 2.0]]);
    let inputs = nb::tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]);
    let target = nb::tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]);
    let loss = |w: &Tensor| nb::mse(&inputs.matmul(w), &target);
    show("grad(mse(x @ w, t))", &nb::grad(loss)(&w));

    // PyTorch-style backward: gradients accumulate on requires_grad leaves.
    let leaf = nb::tensor([1.0, 2.0, 3.0]).requires_grad();
    let l = (&leaf * &leaf).sum_all();
    nb::backward(
        std::slice::from_ref(&l),
        &[l.ones_like()],
        BackwardOptions {
            retain_graph: Some(true),
            show_graph: true,
        },
    );
    show("leaf.grad after one backward", &leaf.grad().expect("backward ran"));
    l.backward();
    show("leaf.grad after two backwards", &leaf.grad().expect("backward ran"));

    // argnums: f(x, y) = x^2 y + sin(y), gradients with respect to (x, y) at (2, 3).
    let g2 = |a: &[Tensor]| &a[0] * &a[0] * &a[1] + a[1].sin();
    let args = [nb::tensor(2.0), nb::tensor(3.0)];
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
    let ((value, aux), g) =
        nb::value_and_grad_with_aux(|x: &Tensor| (x.square().sum_all(), x.mean_all()))(&nb::tensor([1.0, 2.0, 3.0]));
    show("value_and_grad(has_aux).value", &value);
    show("value_and_grad(has_aux).aux", &aux);
    show("value_and_grad(has_aux).grad", &g);

    // vjp over a tuple of primals gives one cotangent per primal.
    let (prod, pb) = nb::vjp(
        |(a, b): &(Tensor, Tensor)| a * b,
        &(nb::tensor([1.0, 2.0]), nb::tensor([3.0, 4.0])),
    );
    let (ga, gb) = pb(&prod.ones_like());
    show("vjp(a * b).grads[0]", &ga);
    show("vjp(a * b).grads[1]", &gb);

    // Jacobians (out.shape ++ in.shape) and the Hessian.
    let w = nb::tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]);
    let lin = |x: &Tensor| w.matmul(x).tanh();
    let x0 = nb::tensor([0.1, -0.2]);
    show("jacfwd(tanh(W x))", &nb::jacfwd(lin)(&x0));
    show("jacrev(tanh(W x))", &nb::jacrev(lin)(&x0));
    show(
        "hessian(sum(x^3))",
        &nb::hessian(|x: &Tensor| x.powf(3.0).sum_all())(&nb::tensor([1.0, 2.0])),
    );

    // vmap, and per-example gradients as vmap of grad.
    show("vmap(sum)(rows)", &nb::vmap(|r: &Tensor| r.sum_all())(&w));
    let wv = nb::tensor([0.5, -1.0]);
    let per_example = nb::vmap_many(
        |ex| vec![nb::grad(|w: &Tensor| ex[0].dot(w).square())(&wv)],
        std::slice::from_ref(&w),
        &[Some(0)],
        &[0],
    );
    show("per-example grads of (x . w)^2", &per_example[0]);

    // A parameter struct is a pytree: its gradient has the same type.
    #[derive(Tree)]
    struct Affine {
        w: Tensor,
        b: Tensor,
    }
    let p = Affine {
        w: nb::tensor([[1.0, 0.0], [0.0, 1.0]]),
        b: nb::tensor([0.5, -0.5]),
    };
    let gp = nb::grad(|p: &Affine| (x0.matmul(&p.w) + &p.b).square().sum_all())(&p);
    show("grad(params).w", &gp.w);
    show("grad(params).b", &gp.b);

    println!("traced program of sum(tanh(a) * b):");
    println!(
        "{}",
        nb::trace_graph(
            |a| vec![(a[0].tanh() * &a[1]).sum_all()],
            &[nb::tensor([1.0, 2.0]), nb::tensor([3.0, 4.0])]
        )
    );
}
