"""Generate JAX reference values of derivatives at kinks, ties and singular points.

Writes core/tests/fixtures/kinks.json: {"jax_version": ..., "cases": [...]}, one
case per line, read by core/tests/kinks.rs.  ci/gen_fixtures.py keeps its inputs
away from these points on purpose (abs/sign/relu away from 0, max/min/argmax
without ties, clamp away from its bounds, prod away from zero, sqrt/log on
[0.5, 2]); this file puts them exactly there, so that a derivative rule that
disagrees with JAX at a kink fails a test.

Each case is computed by JAX in float64 on CPU:
    {"name", "op", "params",
     "inputs":  [T]        the op's inputs (f64, or i64/bool held fixed)
     "output":  T          forward value
     -- the rest only for differentiable cases (null otherwise); xs are the f64
     -- inputs in order, g(*xs) the op with params and other inputs fixed, y = g(*xs)
     "u":  T (shape of y)  cotangent        "v": [T] tangents (one per x)
     "w":  [T] (per x)     second cotangent "c": T (shape of y), Hessian weights
     "vjp":      [T]       jax.vjp(g, *xs)[1](u)
     "jvp":      T         jax.jvp(g, xs, v)[1]
     "jacfwd":   [J_i]     jax.jacfwd(g, argnums=all)(*xs), J_i: y.shape + x_i.shape
     "jacrev":   [J_i]     jax.jacrev(g, argnums=all)(*xs)
     "vjp_vjp":  [T]       h(*xs) = vjp(g, *xs)[1](u); vjp(h, *xs)[1](tuple(w))
     "jvp_vjp":  [T]       jvp(h, xs, v)[1]
     "vjp_jvp":  [T]       k(*xs) = jvp(g, xs, v)[1]; vjp(k, *xs)[1](u)
     "hessian":  [[H_ij]]  jax.hessian(s, argnums=all)(*xs), s = sum(g(*xs) * c),
                           H_ij: x_i.shape + x_j.shape (jacfwd of jacrev)
     "vmap_vjp": [T]       vmap over 2 examples of vjp(g, *xs_k)[1](u_k), leading axis 2
     "vmap_jvp": T         vmap over 2 examples of jvp(g, xs_k, v_k)[1], leading axis 2}
Example 0 is (xs, u, v); example 1 flips every x, u and v over all their axes
and doubles u and v, so both examples sit on the same kinks (flipping all axes
keeps the pairs that broadcasting forms, hence the ties).

Tensors are {"dtype": "f64"|"i64"|"bool", "shape": [...], "data": [row-major]};
f64 data that are not finite are written as the strings "nan", "inf" and "-inf"
(JSON has no such numbers).  u, v, w and c come from numpy.random.default_rng
seeded with the CRC32 of the case name, as +-[0.5, 1.5) rounded to 6 decimals:
never zero, so a rule that answers g or -g (abs at 0) is told apart.

Exponents: pow_scalar with an integral exponent is JAX's `x ** n` with a Python
int n (lax.integer_pow: derivative 0 for n = 0, even at x = 0); otherwise it is
jnp.power(x, p) (lax.pow).  nabla's powf follows the same split.

Run from the repository root (about 3 minutes on 2 cores):
    python3 -m venv .venv-jax && .venv-jax/bin/pip install jax numpy
    .venv-jax/bin/python ci/gen_kink_fixtures.py
"""

import json
import math
import os
import zlib

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.scipy.special import logsumexp  # noqa: E402

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core", "tests", "fixtures", "kinks.json")
INF = math.inf
NAN = math.nan

CASES = []


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def seeds(rng, shape):
    """Values in +-[0.5, 1.5), rounded to 6 decimals: never zero."""
    mag = rng.uniform(0.5, 1.5, size=shape)
    sgn = np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0)
    return np.round(mag * sgn, 6)


def number(x):
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def tensor(a):
    a = np.asarray(a)
    if a.dtype == np.float64:
        return {"dtype": "f64", "shape": list(a.shape), "data": [number(x) for x in a.reshape(-1).tolist()]}
    if a.dtype == np.int64:
        return {"dtype": "i64", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
    if a.dtype == np.bool_:
        return {"dtype": "bool", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
    raise TypeError(f"unexpected dtype {a.dtype}")


def ftensor(a, where):
    a = np.asarray(a)
    if a.dtype != np.float64:
        raise TypeError(f"{where}: dtype {a.dtype}, expected float64")
    return tensor(a)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def add_case(name, op, params, inputs, fn, diff=True):
    """fn(*inputs) -> array; differentiated w.r.t. the f64 inputs when diff."""
    assert all(c["name"] != name for c in CASES), f"duplicate case name {name}"
    inputs = [np.asarray(x) for x in inputs]
    float_idx = [i for i, x in enumerate(inputs) if x.dtype == np.float64]

    def g(*float_args):
        args = [jnp.asarray(x) for x in inputs]
        for i, val in zip(float_idx, float_args):
            args[i] = val
        return fn(*args)

    xs = [jnp.asarray(inputs[i]) for i in float_idx]
    y = g(*xs)
    case = {"name": name, "op": op, "params": params, "inputs": [tensor(x) for x in inputs],
            "output": tensor(np.asarray(y))}
    if not diff:
        CASES.append(case)
        return
    n = len(xs)
    argnums = tuple(range(n))
    rng = rng_for(name)
    u = jnp.asarray(seeds(rng, y.shape))
    v = [jnp.asarray(seeds(rng, x.shape)) for x in xs]
    w = [jnp.asarray(seeds(rng, x.shape)) for x in xs]
    c = jnp.asarray(seeds(rng, y.shape))
    case.update({"u": tensor(u), "v": [tensor(t) for t in v], "w": [tensor(t) for t in w], "c": tensor(c)})
    ten = lambda a, key: ftensor(a, f"{name} {key}")  # noqa: E731

    case["vjp"] = [ten(t, "vjp") for t in jax.vjp(g, *xs)[1](u)]
    case["jvp"] = ten(jax.jvp(g, tuple(xs), tuple(v))[1], "jvp")
    case["jacfwd"] = [ten(j, "jacfwd") for j in jax.jacfwd(g, argnums=argnums)(*xs)]
    case["jacrev"] = [ten(j, "jacrev") for j in jax.jacrev(g, argnums=argnums)(*xs)]

    def h(*a):
        return tuple(jax.vjp(g, *a)[1](u))

    case["vjp_vjp"] = [ten(t, "vjp_vjp") for t in jax.vjp(h, *xs)[1](tuple(w))]
    case["jvp_vjp"] = [ten(t, "jvp_vjp") for t in jax.jvp(h, tuple(xs), tuple(v))[1]]

    def k(*a):
        return jax.jvp(g, a, tuple(v))[1]

    case["vjp_jvp"] = [ten(t, "vjp_jvp") for t in jax.vjp(k, *xs)[1](u)]

    def s(*a):
        return jnp.sum(g(*a) * c)

    hess = jax.hessian(s, argnums=argnums)(*xs)
    case["hessian"] = [[ten(hess[i][j], "hessian") for j in range(n)] for i in range(n)]

    flip = lambda a: jnp.flip(a)  # noqa: E731  (all axes)
    bx = [jnp.stack([x, flip(x)]) for x in xs]
    bu = jnp.stack([u, flip(u) * 2.0])
    bv = [jnp.stack([t, flip(t) * 2.0]) for t in v]
    vv = jax.vmap(lambda *a: tuple(jax.vjp(g, *a[:n])[1](a[n])))(*bx, bu)
    case["vmap_vjp"] = [ten(t, "vmap_vjp") for t in vv]
    case["vmap_jvp"] = ten(jax.vmap(lambda *a: jax.jvp(g, a[:n], a[n:])[1])(*bx, *bv), "vmap_jvp")
    CASES.append(case)


# ----------------------------------------------------------------------------- cases

SIGNED = f64([-1.0, 0.0, 2.0, -0.0])


def gen_elementwise():
    for op, fn in (("abs", jnp.abs), ("sign", jnp.sign), ("relu", jax.nn.relu)):
        add_case(f"{op}/at0", op, {}, [SIGNED], fn)
    add_case("abs/2x3_zeros", "abs", {}, [f64([[0.0, -2.0, 0.0], [3.0, 0.0, -0.5]])], jnp.abs)
    # An infinite cotangent reaches the kink (d(1/y)/dy = -inf at y = 0): JAX's selections give
    # -inf (abs) and 0 (relu) there, where a product with sign(x) or a 0/1 mask gives NaN.
    add_case("abs/recip_at0", "recip_abs", {}, [f64([-1.0, 0.0, 2.0])], lambda x: 1.0 / jnp.abs(x))
    add_case("relu/recip_at0", "recip_relu", {}, [f64([-1.0, 0.0, 2.0])], lambda x: 1.0 / jax.nn.relu(x))
    add_case("sqrt/at0", "sqrt", {}, [f64([0.0, 1.0, 4.0])], jnp.sqrt)
    add_case("rsqrt/at0", "rsqrt", {}, [f64([0.0, 1.0, 4.0])], jax.lax.rsqrt)
    add_case("log/at0", "log", {}, [f64([0.0, 1.0, 2.0, -1.0])], jnp.log)
    add_case("log1p/at-1", "log1p", {}, [f64([-1.0, 0.0, 1.0])], jnp.log1p)
    add_case("softplus/large", "softplus", {}, [f64([-1000.0, -30.0, 0.0, 30.0, 1000.0, INF, -INF])],
             jax.nn.softplus)
    add_case("softplus/at0", "softplus", {}, [f64([0.0, -0.0, 1e-300])], jax.nn.softplus)


def gen_binary():
    for op, fn in (("maximum", jnp.maximum), ("minimum", jnp.minimum)):
        add_case(f"{op}/ties", op, {}, [f64([1.0, 0.0, -1.0, 2.0, 0.5]), f64([1.0, 0.0, 0.0, 3.0, 0.5])], fn)
        add_case(f"{op}/ties_2x3_3", op, {}, [f64([[0.0, 1.0, 2.0], [1.0, 1.0, 0.0]]), f64([0.0, 1.0, 2.0])], fn)
    # Both arguments the same tensor: each side gets half.
    add_case("maximum/self", "maximum_self", {}, [f64([-1.0, 0.0, 2.0])], lambda x: jnp.maximum(x, x))
    for lo, hi, x in ((-0.5, 0.5, [-0.5, 0.5, 0.0, -1.0, 1.0]), (0.3, 0.3, [0.3, 0.2, 0.4])):
        add_case(f"clamp/bounds_{lo:g}_{hi:g}", "clamp", {"min": lo, "max": hi}, [f64(x)],
                 lambda x, lo=lo, hi=hi: jnp.clip(x, lo, hi))
    # pow(x, y) at x = 0 (and a negative base), every partial derivative.
    add_case("pow/at0", "pow", {}, [f64([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -1.0, 1.0]),
                                    f64([0.0, 1.0, 2.0, 0.5, -1.0, 0.0, 2.0, 0.0])], jnp.power)
    for e in (0.0, 1.0, 2.0, 3.0, -1.0, 0.5, 1.5):
        x = f64([0.0, 1.5, -2.0]) if e == int(e) else f64([0.0, 1.5])
        if e == int(e):
            fn = lambda x, n=int(e): x ** n  # noqa: E731  (lax.integer_pow)
        else:
            fn = lambda x, e=e: jnp.power(x, e)  # noqa: E731  (lax.pow)
        add_case(f"pow_scalar/at0_e{e:g}", "pow_scalar", {"exponent": e}, [x], fn)


def gen_where():
    x = f64([0.0, 1.0, 4.0, -1.0])
    # The unselected branch's NaN/inf derivative leaks through as 0 * inf (JAX does the same).
    add_case("where/sqrt_at0", "where_sqrt", {}, [x], lambda x: jnp.where(x > 0, jnp.sqrt(x), 0.0))
    # The double-where idiom keeps it finite.
    add_case("where/safe_sqrt_at0", "where_safe_sqrt", {}, [x],
             lambda x: jnp.where(x > 0, jnp.sqrt(jnp.where(x > 0, x, 1.0)), 0.0))
    add_case("where/ties", "where", {}, [np.array([True, False, True]), f64([1.0, 2.0, 0.0]), f64([1.0, 2.0, 0.0])],
             jnp.where)


def gen_reductions():
    ties = f64([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    ties3 = f64([[[1.0, 1.0], [0.0, 1.0], [1.0, -1.0]], [[0.0, 0.0], [0.0, 0.0], [-1.0, -1.0]]])
    for op, fn in (("max", jnp.max), ("min", jnp.min)):
        for x, axes, kd in ((ties, [1], False), (ties, None, False), (ties, [0], True), (ties3, [0, 2], False),
                            (ties3, [1], True)):
            shape = "x".join(map(str, x.shape))
            ax = "all" if axes is None else "ax" + ",".join(map(str, axes))
            add_case(f"{op}/ties_{shape}_{ax}{'_kd' if kd else ''}", op, {"axes": axes, "keepdims": kd}, [x],
                     lambda x, fn=fn, a=None if axes is None else tuple(axes), kd=kd: fn(x, axis=a, keepdims=kd))
    for op, fn in (("argmax", jnp.argmax), ("argmin", jnp.argmin)):
        for axis, kd in ((1, False), (None, False), (0, True)):
            add_case(f"{op}/ties_2x3_{'all' if axis is None else 'ax' + str(axis)}{'_kd' if kd else ''}", op,
                     {"axis": axis, "keepdims": kd}, [ties],
                     lambda x, fn=fn, axis=axis, kd=kd: fn(x, axis=axis, keepdims=kd), diff=False)
    lse = f64([[-INF, 0.0, 1.0], [-INF, -INF, -INF], [-INF, -INF, 2.0]])
    for x, axes, kd, tag in ((lse, [1], False, "3x3_ax1"), (lse, [0], True, "3x3_ax0_kd"),
                             (f64([-INF, 0.0, 1.0]), None, False, "3_all"),
                             (f64([[INF, 0.0], [1.0, 2.0]]), [1], False, "posinf_2x2_ax1")):
        add_case(f"logsumexp/neginf_{tag}", "logsumexp", {"axes": axes, "keepdims": kd}, [x],
                 lambda x, a=None if axes is None else tuple(axes), kd=kd: logsumexp(x, axis=a, keepdims=kd))
    zeros = f64([[1.0, 0.0, 3.0], [2.0, 0.0, 0.0], [1.5, 2.0, 3.0]])
    zeros3 = f64([[[0.0, 2.0], [1.5, 0.0], [3.0, 1.0]], [[2.0, 0.5], [0.0, 1.0], [1.0, -2.0]]])
    for x, axes, kd, tag in ((zeros, [1], False, "3x3_ax1"), (zeros, None, False, "3x3_all"),
                             (zeros, [0], True, "3x3_ax0_kd"), (zeros3, [0, 2], False, "2x3x2_ax0,2"),
                             (zeros3, [1], True, "2x3x2_ax1_kd"), (zeros3, None, True, "2x3x2_all_kd"),
                             (f64([0.5, 0.0, 2.0, 3.0, -1.5]), None, False, "one_zero_5"),
                             (f64([0.0, 1.5, 2.0, 0.0, -1.0, 3.0, 0.5]), [0], False, "two_zeros_7"),
                             (f64([0.0, 0.0]), None, False, "all_zeros_2"),
                             (f64([0.0]), [0], False, "one_elem"),
                             (f64([1.5, -2.0, 0.5, 3.0]), None, False, "no_zero_4")):
        add_case(f"prod/zeros_{tag}", "prod", {"axes": axes, "keepdims": kd}, [x],
                 lambda x, a=None if axes is None else tuple(axes), kd=kd: jnp.prod(x, axis=a, keepdims=kd))


def main():
    for gen in (gen_elementwise, gen_binary, gen_where, gen_reductions):
        gen()
    lines = [json.dumps(c, separators=(",", ":"), allow_nan=False) for c in CASES]
    with open(OUT_PATH, "w") as f:
        f.write('{"jax_version":' + json.dumps(jax.__version__) + ',"cases":[\n')
        f.write(",\n".join(lines))
        f.write("\n]}\n")
    print(f"{len(CASES)} cases, {os.path.getsize(OUT_PATH)} bytes -> {os.path.normpath(OUT_PATH)}")
    print(f"jax {jax.__version__}")


if __name__ == "__main__":
    main()
