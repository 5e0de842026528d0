//! The examples of Nabla's "Automatic Differentiation" page (grad, value_and_grad, vjp, jvp,
//! jacfwd, jacrev), in its order and with its inputs. Each Python line is quoted above its Rust
//! port; `docs/from-nabla.md` sets them side by side with the values.
//!
//! Nabla calls `f(*primals)`; the Rust functions of one pytree argument take the tuple of
//! those arguments instead, so `nb.vjp(f, x, y)` is `nb::vjp(|(x, y)| ..., &(x, y))`, and a
//! single argument is a 1-tuple, whose pullback returns a 1-tuple as Nabla's `vjp_fn` does.

use nabla as nb;
use nb::{DType, Tensor};

use super::Named;

/// Every example's results, named `<section>/<variable>` (`<section>` is the function and, for
/// its later examples, `/decorator`, `/multiple`, `/vector` or `/argnums`; `<variable>` is the
/// Python variable). Inputs are created in `dtype` (Nabla's `nb.tensor(3.0)` is f32).
pub fn nabla_page_examples(dtype: DType) -> Vec<Named> {
    let d = dtype;
    let mut out: Vec<Named> = Vec::new();
    let mut show = |name: &str, value: &Tensor| out.push((name.to_string(), value.clone()));

    // grad
    // >>> def my_loss(x):
    // ...     return x**2
    let my_loss = |x: &Tensor| x.powf(2.0);
    // >>> grad_fn = nb.grad(my_loss)
    let grad_fn = nb::grad(my_loss);
    // >>> grads = grad_fn(nb.tensor(3.0))
    let grads = grad_fn(&nb::tensor_of(3.0, d));
    show("grad/grads", &grads);

    // grad, usage as a decorator: the name is bound to the gradient function.
    // >>> @nb.grad
    // ... def my_loss(x):
    // ...     return x**2
    let my_loss = nb::grad(|x: &Tensor| x.powf(2.0));
    // >>> grads = my_loss(nb.tensor(3.0)) # Returns gradient, not function value
    let grads = my_loss(&nb::tensor_of(3.0, d));
    show("grad/decorator/grads", &grads);

    // value_and_grad
    // >>> def my_loss(x):
    // ...     return x**2
    let my_loss = |x: &Tensor| x.powf(2.0);
    // >>> value_and_grad_fn = nb.value_and_grad(my_loss)
    let value_and_grad_fn = nb::value_and_grad(my_loss);
    // >>> value, grads = value_and_grad_fn(nb.tensor(3.0))
    let (value, grads) = value_and_grad_fn(&nb::tensor_of(3.0, d));
    show("value_and_grad/value", &value);
    show("value_and_grad/grads", &grads);

    // value_and_grad, usage as a decorator.
    // >>> @nb.value_and_grad
    // ... def my_loss(x):
    // ...     return x**2
    let my_loss = nb::value_and_grad(|x: &Tensor| x.powf(2.0));
    // >>> value, grads = my_loss(nb.tensor(3.0))
    let (value, grads) = my_loss(&nb::tensor_of(3.0, d));
    show("value_and_grad/decorator/value", &value);
    show("value_and_grad/decorator/grads", &grads);

    // vjp
    // >>> def f(x):
    // ...     return x ** 2
    let f = |(x,): &(Tensor,)| x.powf(2.0);
    // >>> primals = nb.tensor(3.0)
    let primals = nb::tensor_of(3.0, d);
    // >>> y, vjp_fn = nb.vjp(f, primals)
    let (y, vjp_fn) = nb::vjp(f, &(primals,));
    // >>> cotangent = nb.tensor(1.0)
    let cotangent = nb::tensor_of(1.0, d);
    // >>> (grad_x,) = vjp_fn(cotangent)
    let (grad_x,) = vjp_fn(&cotangent);
    show("vjp/y", &y);
    show("vjp/grad_x", &grad_x);

    // vjp, multiple inputs
    // >>> def f(x, y):
    // ...     return x * y + x ** 2
    let f = |(x, y): &(Tensor, Tensor)| x * y + x.powf(2.0);
    // >>> x = nb.tensor(3.0)
    // >>> y = nb.tensor(4.0)
    let (x, y) = (nb::tensor_of(3.0, d), nb::tensor_of(4.0, d));
    // >>> output, vjp_fn = nb.vjp(f, x, y)
    let (output, vjp_fn) = nb::vjp(f, &(x, y));
    // >>> cotangent = nb.tensor(1.0)
    let cotangent = nb::tensor_of(1.0, d);
    // >>> grad_x, grad_y = vjp_fn(cotangent)
    let (grad_x, grad_y) = vjp_fn(&cotangent);
    show("vjp/multiple/output", &output);
    show("vjp/multiple/grad_x", &grad_x);
    show("vjp/multiple/grad_y", &grad_y);

    // jvp
    // >>> def f(x):
    // ...     return x ** 2
    let f = |(x,): &(Tensor,)| x.powf(2.0);
    // >>> primals = (nb.tensor(3.0),)
    // >>> tangents = (nb.tensor(1.0),)
    let primals = (nb::tensor_of(3.0, d),);
    let tangents = (nb::tensor_of(1.0, d),);
    // >>> y, y_dot = nb.jvp(f, primals, tangents)
    let (y, y_dot) = nb::jvp(f, &primals, &tangents);
    show("jvp/y", &y);
    show("jvp/y_dot", &y_dot);

    // jvp, multiple inputs
    // >>> def f(x, y):
    // ...     return x * y + x ** 2
    let f = |(x, y): &(Tensor, Tensor)| x * y + x.powf(2.0);
    // >>> primals = (nb.tensor(3.0), nb.tensor(4.0))
    // >>> tangents = (nb.tensor(1.0), nb.tensor(0.0))
    let primals = (nb::tensor_of(3.0, d), nb::tensor_of(4.0, d));
    let tangents = (nb::tensor_of(1.0, d), nb::tensor_of(0.0, d));
    // >>> output, tangent_out = nb.jvp(f, primals, tangents)
    let (output, tangent_out) = nb::jvp(f, &primals, &tangents);
    show("jvp/multiple/output", &output);
    show("jvp/multiple/tangent_out", &tangent_out);

    // jacfwd
    // >>> def f(x):
    // ...     return x ** 2
    let f = |x: &Tensor| x.powf(2.0);
    // >>> x = nb.tensor([1.0, 2.0, 3.0])
    let x = nb::tensor_of([1.0, 2.0, 3.0], d);
    // >>> jac_fn = nb.jacfwd(f)
    let jac_fn = nb::jacfwd(f);
    // >>> jacobian = jac_fn(x)
    let jacobian = jac_fn(&x);
    show("jacfwd/jacobian", &jacobian);

    // jacfwd, vector-valued function
    // >>> def f(x):
    // ...     return nb.stack([x[0] ** 2, x[0] * x[1], x[1] ** 2])
    let f = |x: &Tensor| nb::stack(&[x.i(0).powf(2.0), x.i(0) * x.i(1), x.i(1).powf(2.0)], 0);
    // >>> x = nb.tensor([3.0, 4.0])
    let x = nb::tensor_of([3.0, 4.0], d);
    // >>> jacobian = nb.jacfwd(f)(x)
    let jacobian = nb::jacfwd(f)(&x);
    show("jacfwd/vector/jacobian", &jacobian);

    // jacfwd, multiple arguments with argnums (one Jacobian per named argument, in a Vec)
    // >>> def f(x, y):
    // ...     return x * y + x ** 2
    let f = |a: &[Tensor]| &a[0] * &a[1] + a[0].powf(2.0);
    // >>> x = nb.tensor([1.0, 2.0])
    // >>> y = nb.tensor([3.0, 4.0])
    let (x, y) = (nb::tensor_of([1.0, 2.0], d), nb::tensor_of([3.0, 4.0], d));
    // >>> jac_x = nb.jacfwd(f, argnums=0)(x, y)
    let jac_x = nb::jacfwd_with(f, 0)(&[x.clone(), y.clone()]);
    show("jacfwd/argnums/jac_x", &jac_x[0]);
    // >>> jac_both = nb.jacfwd(f, argnums=(0, 1))(x, y)
    let jac_both = nb::jacfwd_with(f, [0, 1])(&[x, y]);
    show("jacfwd/argnums/jac_both[0]", &jac_both[0]);
    show("jacfwd/argnums/jac_both[1]", &jac_both[1]);

    // jacrev
    // >>> def f(x):
    // ...     return x ** 2
    let f = |x: &Tensor| x.powf(2.0);
    // >>> x = nb.tensor([1.0, 2.0, 3.0])
    let x = nb::tensor_of([1.0, 2.0, 3.0], d);
    // >>> jac_fn = nb.jacrev(f)
    let jac_fn = nb::jacrev(f);
    // >>> jacobian = jac_fn(x)
    let jacobian = jac_fn(&x);
    show("jacrev/jacobian", &jacobian);

    // jacrev, vector-valued function
    // >>> def f(x):
    // ...     return nb.stack([x[0] ** 2, x[0] * x[1], x[1] ** 2])
    let f = |x: &Tensor| nb::stack(&[x.i(0).powf(2.0), x.i(0) * x.i(1), x.i(1).powf(2.0)], 0);
    // >>> x = nb.tensor([3.0, 4.0])
    let x = nb::tensor_of([3.0, 4.0], d);
    // >>> jacobian = nb.jacrev(f)(x)
    let jacobian = nb::jacrev(f)(&x);
    show("jacrev/vector/jacobian", &jacobian);

    // jacrev, multiple arguments with argnums (one Jacobian per named argument, in a Vec)
    // >>> def f(x, y):
    // ...     return x * y + x ** 2
    let f = |a: &[Tensor]| &a[0] * &a[1] + a[0].powf(2.0);
    // >>> x = nb.tensor([1.0, 2.0])
    // >>> y = nb.tensor([3.0, 4.0])
    let (x, y) = (nb::tensor_of([1.0, 2.0], d), nb::tensor_of([3.0, 4.0], d));
    // >>> jac_x = nb.jacrev(f, argnums=0)(x, y)
    let jac_x = nb::jacrev_with(f, 0)(&[x.clone(), y.clone()]);
    show("jacrev/argnums/jac_x", &jac_x[0]);
    // >>> jac_both = nb.jacrev(f, argnums=(0, 1))(x, y)
    let jac_both = nb::jacrev_with(f, [0, 1])(&[x, y]);
    show("jacrev/argnums/jac_both[0]", &jac_both[0]);
    show("jacrev/argnums/jac_both[1]", &jac_both[1]);

    out
}
