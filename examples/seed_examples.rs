//! The seed's calls, runnable: grad, value_and_grad, vjp, jvp, nested derivatives and
//! PyTorch-style backward. Prints every result as `name = value`.
//!
//! Run: `cargo run --release --example seed_examples`

use nabla as nb;
use nb::{BackwardOptions, DType, Tensor};

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

    println!("traced program of sum(tanh(a) * b):");
    println!(
        "{}",
        nb::trace_graph(
            |a| vec![(a[0].tanh() * &a[1]).sum_all()],
            &[nb::tensor([1.0, 2.0]), nb::tensor([3.0, 4.0])]
        )
    );
}
