"""JAX reference values for cond and scan (jax.lax.cond, jax.lax.scan): writes
core/tests/fixtures/control_flow.json, read by core/tests/control_flow.rs.

Each case holds the inputs, the outputs, the gradient of a fixed random linear functional L of
the outputs (L = sum(out_k * c_k)) with respect to every input, a Hessian-vector product (the
gradient of <grad L, v> for a random direction v), and the outputs under vmap over a batch of
3 (scaled copies of the batched input). Everything in float64.

Run from the repository root (seconds):
    .venv-jax/bin/python ci/gen_control_fixtures.py
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as g  # noqa: E402  (sets jax_enable_x64 and the CPU platform)

jax = g.jax
jnp = g.jnp
np = g.np

OUT_PATH = os.path.join(os.path.dirname(g.OUT_PATH), "control_flow.json")


def t(a):
    return g.tensor(np.asarray(a, dtype=np.float64))


def case(name, fn, inputs, batched_arg):
    """fn(*inputs) -> tuple of outputs; batched_arg: the input vmapped over (scaled by 1, 1.1, 1.2)."""
    r = g.rng_for(name)
    outs = fn(*inputs)
    cs = [g.uniform(r, np.shape(o), -1.0, 1.0) for o in outs]
    vs = [g.uniform(r, np.shape(x), -1.0, 1.0) for x in inputs]

    def loss(*xs):
        return sum(jnp.sum(o * c) for o, c in zip(fn(*xs), cs))

    argnums = tuple(range(len(inputs)))
    grads = jax.grad(loss, argnums)(*inputs)

    def gv(*xs):
        gr = jax.grad(loss, argnums)(*xs)
        return sum(jnp.sum(a * v) for a, v in zip(gr, vs))

    hvp = jax.grad(gv, argnums)(*inputs)
    scales = jnp.array([1.0, 1.1, 1.2])
    batch = scales.reshape((3,) + (1,) * np.ndim(inputs[batched_arg])) * inputs[batched_arg]

    def one(b):
        xs = list(inputs)
        xs[batched_arg] = b
        return fn(*xs)

    vmapped = jax.vmap(one)(batch)
    return {
        "name": name,
        "inputs": [t(x) for x in inputs],
        "outputs": [t(o) for o in outs],
        "c": [t(c) for c in cs],
        "v": [t(v) for v in vs],
        "grads": [t(x) for x in grads],
        "hvp": [t(x) for x in hvp],
        "batched_arg": batched_arg,
        "vmap_outputs": [t(o) for o in vmapped],
    }


def rnn(h0, xs, w, u):
    def step(h, x):
        h2 = jnp.tanh(x @ w + h @ u)
        return h2, h2 * h2

    return jax.lax.scan(step, h0, xs)


def decay(s0, xs):
    def step(s, x):
        s2 = s * 0.9 + jnp.sin(x)
        return s2, s2 * s2

    return jax.lax.scan(step, s0, xs)


def branches(p, x):
    return (jax.lax.cond(p > 0, lambda x: jnp.sin(x) * 2.0, lambda x: x ** 3, x),)


def main():
    r = g.rng_for("control")
    cases = [
        case("scan_rnn", rnn, [g.uniform(r, [3], -1, 1), g.uniform(r, [5, 2], -1, 1),
                               g.uniform(r, [2, 3], -1, 1), g.uniform(r, [3, 3], -0.5, 0.5)], 1),
        case("scan_decay", decay, [np.float64(0.3), g.uniform(r, [6], -2, 2)], 1),
        case("cond_true", branches, [np.float64(0.5), g.uniform(r, [4], -1, 1)], 1),
        case("cond_false", branches, [np.float64(-0.5), g.uniform(r, [4], -1, 1)], 1),
        # vmap over the predicate's input: the batch (-0.5, -0.55, -0.6) all take false;
        # vmap over a sign-changing batch is checked in the Rust test against both branches.
        case("cond_vmap_pred", branches, [np.float64(-0.5), g.uniform(r, [4], -1, 1)], 0),
    ]
    with open(OUT_PATH, "w") as f:
        json.dump({"jax_version": jax.__version__, "cases": cases}, f, separators=(",", ":"))
    print(f"{len(cases)} cases -> {os.path.normpath(OUT_PATH)} (jax {jax.__version__})")


if __name__ == "__main__":
    main()
