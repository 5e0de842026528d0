"""Compute, with JAX in float64, the value of every example of Nabla's "Automatic
Differentiation" documentation page (grad, value_and_grad, vjp, jvp, jacfwd, jacrev) and of
our own examples of the rest of the API (examples/reference/more.rs, same names), and write
them to tests/fixtures/reference_examples.json.

The Rust side of each example is examples/reference/ (printed by
`cargo run --example seed_examples`); tests/reference_examples.rs checks its values against
this file. The names here and there are the same: "<section>/<variable>", where <section> is
the function documented and, for its second and third examples, "/decorator", "/multiple",
"/vector" or "/argnums"; <variable> is the Python variable the example assigns.

The page's examples assign results without printing them; JAX computes what they hold.
Nabla's own values are the same by construction (Nabla follows JAX's semantics), except
where docs/from-nabla.md says otherwise.

Run from the repository root:
    python3 -m venv .venv-jax && .venv-jax/bin/pip install jax
    .venv-jax/bin/python ci/gen_reference_examples.py
"""

import json
import os

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "reference_examples.json")


def tensor(value):
    """nb.tensor(value), in float64."""
    return jnp.asarray(value, dtype=jnp.float64)


def examples():
    """Yield (name, value) for every example, in the page's order."""
    # grad
    def my_loss(x):
        return x**2

    grad_fn = jax.grad(my_loss)
    yield "grad/grads", grad_fn(tensor(3.0))

    # grad, as a decorator
    @jax.grad
    def my_loss_grad(x):
        return x**2

    yield "grad/decorator/grads", my_loss_grad(tensor(3.0))

    # value_and_grad
    value_and_grad_fn = jax.value_and_grad(my_loss)
    value, grads = value_and_grad_fn(tensor(3.0))
    yield "value_and_grad/value", value
    yield "value_and_grad/grads", grads

    # value_and_grad, as a decorator
    @jax.value_and_grad
    def my_loss_vg(x):
        return x**2

    value, grads = my_loss_vg(tensor(3.0))
    yield "value_and_grad/decorator/value", value
    yield "value_and_grad/decorator/grads", grads

    # vjp
    def square(x):
        return x**2

    primals = tensor(3.0)
    y, vjp_fn = jax.vjp(square, primals)
    cotangent = tensor(1.0)
    (grad_x,) = vjp_fn(cotangent)
    yield "vjp/y", y
    yield "vjp/grad_x", grad_x

    # vjp, multiple inputs
    def f2(x, y):
        return x * y + x**2

    x = tensor(3.0)
    y = tensor(4.0)
    output, vjp_fn = jax.vjp(f2, x, y)
    cotangent = tensor(1.0)
    grad_x, grad_y = vjp_fn(cotangent)
    yield "vjp/multiple/output", output
    yield "vjp/multiple/grad_x", grad_x
    yield "vjp/multiple/grad_y", grad_y

    # jvp
    primals = (tensor(3.0),)
    tangents = (tensor(1.0),)
    y, y_dot = jax.jvp(square, primals, tangents)
    yield "jvp/y", y
    yield "jvp/y_dot", y_dot

    # jvp, multiple inputs
    primals = (tensor(3.0), tensor(4.0))
    tangents = (tensor(1.0), tensor(0.0))
    output, tangent_out = jax.jvp(f2, primals, tangents)
    yield "jvp/multiple/output", output
    yield "jvp/multiple/tangent_out", tangent_out

    def stacked(x):
        return jnp.stack([x[0] ** 2, x[0] * x[1], x[1] ** 2])

    for name, jac in (("jacfwd", jax.jacfwd), ("jacrev", jax.jacrev)):
        x = tensor([1.0, 2.0, 3.0])
        jac_fn = jac(square)
        yield f"{name}/jacobian", jac_fn(x)

        x = tensor([3.0, 4.0])
        yield f"{name}/vector/jacobian", jac(stacked)(x)

        x = tensor([1.0, 2.0])
        y = tensor([3.0, 4.0])
        yield f"{name}/argnums/jac_x", jac(f2, argnums=0)(x, y)
        jac_both = jac(f2, argnums=(0, 1))(x, y)
        yield f"{name}/argnums/jac_both[0]", jac_both[0]
        yield f"{name}/argnums/jac_both[1]", jac_both[1]


def more():
    """Yield (name, value) for our own examples (examples/reference/more.rs), in its order."""
    vg = jax.value_and_grad(lambda x: jnp.sum(jnp.sin(x) * x + x**2))
    value, g = vg(tensor([0.0, 1.0, 2.0, 3.0]))
    yield "value_and_grad(sum(sin(x)*x + x^2)).value", value
    yield "value_and_grad(sum(sin(x)*x + x^2)).grad", g

    y, pullback = jax.vjp(lambda x: jnp.exp(x) * 2.0, tensor([0.0, 1.0]))
    yield "vjp(2 exp(x)).out", y
    yield "vjp(2 exp(x)).pullback([1, 1])", pullback(tensor([1.0, 1.0]))[0]

    y, t = jax.jvp(jnp.tanh, (tensor([0.0, 0.5]),), (tensor([1.0, 1.0]),))
    yield "jvp(tanh).out", y
    yield "jvp(tanh).tangent", t

    def p(x):
        return x**4

    x2 = tensor(2.0)
    yield "d1 x^4 at 2", jax.grad(p)(x2)
    yield "d2 x^4 at 2", jax.grad(jax.grad(p))(x2)
    yield "d3 x^4 at 2", jax.grad(jax.grad(jax.grad(p)))(x2)

    w = tensor([[1.0, -1.0], [0.5, 2.0]])
    inputs = tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    target = tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    yield "grad(mse(x @ w, t))", jax.grad(lambda w: jnp.mean((inputs @ w - target) ** 2))(w)

    # backward accumulates: one call gives the gradient, a second call adds it again.
    leaf_grad = jax.grad(lambda v: jnp.sum(v * v))(tensor([1.0, 2.0, 3.0]))
    yield "leaf.grad after one backward", leaf_grad
    yield "leaf.grad after two backwards", leaf_grad + leaf_grad

    gx, gy = jax.grad(lambda x, y: x * x * y + jnp.sin(y), argnums=(0, 1))(tensor(2.0), tensor(3.0))
    yield "grad(f, argnums=(0, 1))(2, 3)[0]", gx
    yield "grad(f, argnums=(0, 1))(2, 3)[1]", gy

    (value, aux), g = jax.value_and_grad(lambda x: (jnp.sum(x**2), jnp.mean(x)), has_aux=True)(
        tensor([1.0, 2.0, 3.0])
    )
    yield "value_and_grad(has_aux).value", value
    yield "value_and_grad(has_aux).aux", aux
    yield "value_and_grad(has_aux).grad", g

    w = tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    x0 = tensor([0.1, -0.2])
    yield "jacfwd(tanh(W x))", jax.jacfwd(lambda x: jnp.tanh(w @ x))(x0)
    yield "jacrev(tanh(W x))", jax.jacrev(lambda x: jnp.tanh(w @ x))(x0)
    yield "hessian(sum(x^3))", jax.hessian(lambda x: jnp.sum(x**3))(tensor([1.0, 2.0]))

    yield "vmap(sum)(rows)", jax.vmap(jnp.sum)(w)
    wv = tensor([0.5, -1.0])
    yield "per-example grads of (x . w)^2", jax.vmap(lambda ex: jax.grad(lambda v: jnp.dot(ex, v) ** 2)(wv))(w)

    params = {"w": tensor([[1.0, 0.0], [0.0, 1.0]]), "b": tensor([0.5, -0.5])}
    gp = jax.grad(lambda p: jnp.sum((x0 @ p["w"] + p["b"]) ** 2))(params)
    yield "grad(params).w", gp["w"]
    yield "grad(params).b", gp["b"]


def main():
    rows = []
    for name, value in list(examples()) + list(more()):
        value = jnp.asarray(value)
        assert value.dtype == jnp.float64, (name, value.dtype)
        rows.append({"name": name, "shape": list(value.shape), "data": [float(v) for v in value.ravel()]})
    doc = {
        "jax_version": jax.__version__,
        "dtype": "f64",
        "generator": "ci/gen_reference_examples.py",
        "examples": rows,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(rows)} examples to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
