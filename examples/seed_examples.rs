//! Every example of Nabla's "Automatic Differentiation" page (grad, value_and_grad, vjp, jvp,
//! jacfwd, jacrev) ported one to one, then our own examples of the rest of the API (higher
//! derivatives, backward, argnums, has_aux, Hessian, vmap, pytrees), then printed traced
//! programs. Prints every result as `name = value`; the values are checked against JAX by
//! `tests/reference_examples.rs`, and `docs/from-nabla.md` sets each beside its Python.
//!
//! Run: `cargo run --release --example seed_examples`

mod reference;

use nabla as nb;
use nb::{BackwardOptions, DType, Tensor};

fn show(name: &str, value: &Tensor) {
    let text = value.to_string().replace('\n', "\n    ");
    println!("{name} = {text}");
}

fn main() {
    // Nabla's nb.tensor(3.0) is f32, as ours is.
    println!("# The examples of Nabla's autodiff page");
    for (name, value) in reference::nabla_page_examples(DType::F32) {
        show(&name, &value);
    }
    println!("# More of the API");
    for (name, value) in reference::more_examples(DType::F32) {
        show(&name, &value);
    }

    println!("# backward with show_graph (prints the program it sweeps), then .grad");
    let leaf = nb::tensor([1.0, 2.0, 3.0]).requires_grad();
    let l = (&leaf * &leaf).sum_all();
    let options = BackwardOptions {
        retain_graph: None,
        show_graph: true,
    };
    nb::backward(std::slice::from_ref(&l), &[l.ones_like()], options);
    show("leaf.grad", &leaf.grad().expect("backward ran"));

    println!("# The traced program of sum(tanh(a) * b)");
    println!(
        "{}",
        nb::trace_graph(
            |a| vec![(a[0].tanh() * &a[1]).sum_all()],
            &[nb::tensor([1.0, 2.0]), nb::tensor([3.0, 4.0])]
        )
    );
}
