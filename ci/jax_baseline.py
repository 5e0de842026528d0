"""Reference timings of the benchmark cases in JAX (CPU), for side-by-side comparison.

Set-up once:  python3 -m venv .venv-jax && .venv-jax/bin/pip install jax
Run:          .venv-jax/bin/python ci/jax_baseline.py [--json out.json]   (ci/bench runs it)

Every case: warm-up first, then the median of many runs, with block_until_ready on outputs.
The cases (names, shapes, functions) are the ones the project's own benchmark must print too, so
that the two tables can be put side by side from one run on one machine.
"""
import argparse, json, os, statistics, time

import numpy as np
import jax
import jax.numpy as jnp

jax.config.update("jax_platforms", "cpu")


def median_ms(fn, warm=10, runs=100):
    for _ in range(warm):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def per_call_us(fn, calls=1000, loops=5):
    for _ in range(20):
        jax.block_until_ready(fn())
    reps = []
    for _ in range(loops):
        t = time.perf_counter()
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        reps.append((time.perf_counter() - t) / calls)
    return statistics.median(reps) * 1e6


rng = np.random.default_rng(0)


def mlp_case(batch):
    """value_and_grad of a 784-512-512-10 MLP (tanh, relu), softmax cross-entropy, float32."""
    def layer(i, o):
        return (jnp.asarray((rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32)),
                jnp.zeros((o,), jnp.float32))
    params = [layer(784, 512), layer(512, 512), layer(512, 10)]
    x = jnp.asarray(rng.standard_normal((batch, 784)).astype(np.float32))
    y = jax.nn.one_hot(rng.integers(0, 10, size=(batch,)), 10, dtype=jnp.float32)

    def loss(params, x, y):
        (w1, b1), (w2, b2), (w3, b3) = params
        h = jnp.tanh(x @ w1 + b1)
        h = jax.nn.relu(h @ w2 + b2)
        logp = jax.nn.log_softmax(h @ w3 + b3, axis=-1)
        return -jnp.mean(jnp.sum(y * logp, axis=-1))

    vg = jax.value_and_grad(loss)
    return vg, jax.jit(vg), (params, x, y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []

    for batch in (128,):
        eager, jitted, a = mlp_case(batch)
        rows.append((f"mlp_step_b{batch}", "jax.jit", "ms", median_ms(lambda: jitted(*a), 10, 200)))
        rows.append((f"mlp_step_b{batch}", "jax eager", "ms", median_ms(lambda: eager(*a), 5, 50)))

    g = jax.grad(lambda x: jnp.sum(jnp.sin(x) * x + x ** 2))
    xs = jnp.arange(4, dtype=jnp.float32)
    gj = jax.jit(g)
    rows.append(("tiny_grad", "jax.jit", "us/call", per_call_us(lambda: gj(xs))))
    rows.append(("tiny_grad", "jax eager", "us/call", per_call_us(lambda: g(xs), calls=200)))

    n = 256
    W = jnp.asarray((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32))
    xv = jnp.asarray(rng.standard_normal((n,)).astype(np.float32))
    f = lambda x: jnp.tanh(W @ x)
    for name, tr in (("jacfwd_256", jax.jacfwd), ("jacrev_256", jax.jacrev)):
        fn = tr(f)
        rows.append((name, "jax.jit", "ms", median_ms(lambda: jax.jit(fn)(xv), 10, 300)))
        rows.append((name, "jax eager", "ms", median_ms(lambda: fn(xv), 5, 50)))

    a = jnp.asarray(rng.standard_normal((1024, 1024)).astype(np.float32))
    b = jnp.asarray(rng.standard_normal((1024, 1024)).astype(np.float32))
    mm = jax.jit(lambda a, b: a @ b)
    rows.append(("matmul_1024", "jax.jit", "ms", median_ms(lambda: mm(a, b), 5, 50)))

    print(f"jax {jax.__version__}, {os.cpu_count()} cpus")
    print(f"{'case':<16} {'system':<10} {'value':>10} unit")
    for case, system, unit, v in rows:
        print(f"{case:<16} {system:<10} {v:>10.3f} {unit}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([dict(case=c, system=s, unit=u, value=v) for c, s, u, v in rows], fh, indent=1)


if __name__ == "__main__":
    main()
