"""JAX reference fixtures for the ops of CNN and transformer layers (issue 12), in the format of
ci/gen_fixtures.py (whose helpers this reuses): writes core/tests/fixtures/layer_ops.json, which
the core tests load next to ops_f64.json, so every case also runs through the derivative
matrix, the bf16/f16 rows and the emulated GPU.

Cases: erf; floor, ceil, round and trunc (with round's ties at .5, which go to even, and their
zero derivatives); exact gelu; remainder (NumPy's and JAX's mod) with negative operands; triu
and tril for several diagonals; layer_norm and rms_norm over the last axis or the last two.

Run from the repository root (seconds):
    python3 -m venv .venv-jax && .venv-jax/bin/pip install jax numpy
    .venv-jax/bin/python ci/gen_layer_fixtures.py
"""

import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as g  # noqa: E402  (sets jax_enable_x64 and the CPU platform)

jax = g.jax
jnp = g.jnp
np = g.np

OUT_PATH = os.path.join(os.path.dirname(g.OUT_PATH), "layer_ops.json")


def gen_elementwise():
    shapes = [[], [5], [2, 3], [2, 3, 4]]
    for s in shapes:
        name = f"erf/{g.shape_str(s)}"
        g.add_case(name, "erf", {}, [g.uniform(g.rng_for(name), s, -2.5, 2.5)], jax.scipy.special.erf)
        name = f"gelu_exact/{g.shape_str(s)}"
        g.add_case(name, "gelu_exact", {}, [g.uniform(g.rng_for(name), s, -3.0, 3.0)],
                   lambda x: jax.nn.gelu(x, approximate=False))
    # Step functions: inputs away from integers (and from .5 for round), plus fixed cases at
    # the ties of round.
    for op, fn in (("floor", jnp.floor), ("ceil", jnp.ceil), ("round", jnp.round), ("trunc", jnp.trunc)):
        for s in shapes:
            name = f"{op}/{g.shape_str(s)}"
            r = g.rng_for(name)
            whole = r.integers(-3, 4, size=s).astype(np.float64)
            frac = r.uniform(0.1, 0.4, size=s) * np.where(r.uniform(size=s) < 0.5, -1.0, 1.0)
            g.add_case(name, op, {}, [g.rnd(whole + frac)], fn)
    ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
    # "kink": the inputs sit on the jumps, so finite differences do not apply there; JAX's
    # derivatives (zeros) are still checked.
    g.add_case("round/ties", "round", {"kink": True}, [ties], jnp.round)


def gen_remainder():
    # Operands of both signs, every quotient away from integers (where mod jumps): x is built
    # as (integer + fraction) times its divisor. x has the broadcast shape.
    for sx, sy in [([], []), ([5], []), ([2, 3], [3]), ([2, 3], [2, 1]), ([4], [4])]:
        name = f"remainder/{g.shapes_str([sx, sy])}"
        r = g.rng_for(name)
        y = g.away_from_zero(r, sy, 0.5, 2.0)
        q = r.integers(-3, 4, size=sx) + r.uniform(0.15, 0.85, size=sx)
        x = g.rnd(q * np.broadcast_to(y, sx))
        g.add_case(name, "remainder", {}, [x, y], jnp.remainder)
    name = "remainder/i64"
    a = np.array([7, -7, 7, -7, 0, 5], dtype=np.int64)
    b = np.array([3, 3, -3, -3, 2, 5], dtype=np.int64)
    g.add_case(name, "remainder", {}, [a, b], jnp.remainder, diff=False)


def gen_triangles():
    for op, fn in (("triu", jnp.triu), ("tril", jnp.tril)):
        for s, k in [([3, 4], 0), ([3, 4], 1), ([3, 4], -1), ([4, 3], 2), ([2, 3, 4], 0), ([1, 1], 0)]:
            name = f"{op}/{g.shape_str(s)}_k{k}"
            g.add_case(name, op, {"k": k}, [g.uniform(g.rng_for(name), s)], lambda x, fn=fn, k=k: fn(x, k=k))


def gen_norms():
    def layer_norm(x, axes, eps):
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)
        return (x - mean) / jnp.sqrt(var + eps)

    def rms_norm(x, axes, eps):
        return x / jnp.sqrt(jnp.mean(x * x, axis=axes, keepdims=True) + eps)

    for op, fn in (("layer_norm", layer_norm), ("rms_norm", rms_norm)):
        for s, axes in [([4, 5], [-1]), ([2, 3, 4], [-1]), ([2, 3, 4], [-2, -1]), ([6], [-1])]:
            name = f"{op}/{g.shape_str(s)}_ax{'_'.join(str(a) for a in axes)}"
            eps = 1e-5
            g.add_case(name, op, {"axes": axes, "eps": eps}, [g.uniform(g.rng_for(name), s, -2.0, 2.0)],
                       lambda x, fn=fn, axes=tuple(axes), eps=eps: fn(x, axes, eps))


def main():
    for gen in (gen_elementwise, gen_remainder, gen_triangles, gen_norms):
        gen()
    lines = [json.dumps(c, separators=(",", ":"), allow_nan=False) for c in g.CASES]
    with open(OUT_PATH, "w") as f:
        f.write('{"jax_version":' + json.dumps(jax.__version__) + ',"cases":[\n')
        f.write(",\n".join(lines))
        f.write("\n]}\n")
    counts = collections.Counter(c["op"] for c in g.CASES)
    for op, n in counts.items():
        print(f"{op:16s} {n}")
    print(f"{len(g.CASES)} cases -> {os.path.normpath(OUT_PATH)} (jax {jax.__version__})")


if __name__ == "__main__":
    main()
