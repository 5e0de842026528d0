"""Generate JAX reference fixtures for the nabla-rs core tests.

Writes core/tests/fixtures/ops_f64.json: {"jax_version": ..., "cases": [...]},
one case per line.  Each case holds an op name, its params, the inputs, the
forward output (computed by JAX in float64 on CPU) and, for differentiable ops,
a VJP (random cotangent -> input grads) and a JVP (random tangents -> output
tangent).  Only f64 inputs are differentiated; i64/bool inputs get null.

Tensors are {"dtype": "f64"|"i64"|"bool", "shape": [...], "data": [row-major]}.
Ops with several outputs (split) use "outputs", "cotangents" and
"output_tangents" instead of "output", "cotangent" and "output_tangent".

Inputs stay away from kinks and singular points on purpose (abs/sign/relu away from
0, no ties for max/min/argmax, clamp away from its bounds, prod's inputs away from
zero, sqrt/log on positive values), so that finite differences apply; the values
exactly at those points are in core/tests/fixtures/kinks.json, written by
ci/gen_kink_fixtures.py.

Inputs, cotangents and tangents come from numpy.random.default_rng seeded with
the CRC32 of the case name and are rounded to 6 decimals, so the file is
deterministic and the JSON inputs are exact.  The JAX version used is recorded
in the output's "jax_version" field.

The same run also writes core/tests/fixtures/compositions.json with reference
values of transform compositions for every differentiable single-output case
of ops_f64.json (same "name"; split is skipped).  Let xs be the case's f64
inputs (in order) and g(*xs) the op with the i64/bool inputs and params held
fixed, output y.  Fresh random arrays (rng seeded with the CRC32 of
name + "#compositions", drawn in this order, uniform in [-1, 1), rounded to 6
decimals) are: u (shape of y), v (one per x), w (one per x), c (shape of y).
Each case line is
    {"name", "u", "v": [..], "w": [..], "c",
     "jacobian": [J_i]                 jax.jacfwd(g, argnums=all)(*xs), J_i: y.shape + x_i.shape
     "vjp_vjp": [..]                   h(*xs) = vjp(g, *xs)[1](u); vjp(h, *xs)[1](tuple(w))
     "jvp_vjp": [..]                   jvp(h, xs, v)[1]
     "vjp_jvp": [..]                   k(*xs) = jvp(g, xs, v)[1]; vjp(k, *xs)[1](u)
     "hessian": [[H_ij]]               hessian of sum(g(*xs) * c), H_ij: x_i.shape + x_j.shape
     "vmap_vjp": [..]                  vmap over 3 examples of vjp(g, *xs_k)[1](u_k), leading axis 3
     "vmap_jvp": T                     vmap over 3 examples of jvp(g, xs_k, v_k)[1], leading axis 3
     "f32": {same 7 keys}}
where example k (k = 0, 1, 2) uses xs_k = x * s_k, u_k = u * s_k, v_k = v * s_k
with s_k = 1.0 + 0.05 * k (a float64 multiply).  The "f32" object repeats all
seven transforms with JAX in float32: xs, u, v, w, c are cast to float32 first
(round to nearest) and, for the vmap examples, the float32 arrays are multiplied
by float32(s_k) in float32.  Its tensors have dtype "f32"; their data are the
exact float32 values written as JSON floats.  If the file would exceed
COMPOSITIONS_MAX_BYTES, the "hessian" of the largest cases (both f64 and f32)
is set to null, largest first, until it fits.

Run from the repository root:
    python3 -m venv .venv-jax && .venv-jax/bin/pip install jax numpy
    .venv-jax/bin/python ci/gen_fixtures.py
"""

import collections
import json
import os
import zlib

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.scipy.special import logsumexp  # noqa: E402

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core", "tests", "fixtures", "ops_f64.json")
COMPOSITIONS_PATH = os.path.join(os.path.dirname(OUT_PATH), "compositions.json")
COMPOSITIONS_MAX_BYTES = 8_000_000

CASES = []
# (name, g, f64 primals) for every differentiable single-output case, in CASES order
COMPOSABLE = []

# ----------------------------------------------------------------------------- helpers


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def rnd(a):
    """Round to 6 decimals and turn -0.0 into 0.0."""
    return np.round(np.asarray(a, dtype=np.float64), 6) + 0.0


def uniform(rng, shape, lo=-2.0, hi=2.0):
    return rnd(rng.uniform(lo, hi, size=shape))


def away_from_zero(rng, shape, lo=0.1, hi=2.0):
    """Values with lo <= |x| <= hi (keeps abs/sign/relu off their kink)."""
    mag = rng.uniform(lo, hi, size=shape)
    sgn = np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0)
    return rnd(mag * sgn)


def distinct(rng, shape, scale=0.37):
    """Values with pairwise gaps >= 0.1*scale (no ties for max/min/argmax)."""
    n = int(np.prod(shape, dtype=np.int64))
    v = (rng.permutation(n) + rng.uniform(0.1, 0.9, size=n)) * scale - n * scale / 2
    return rnd(v.reshape(shape))


def shape_str(shape):
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def shapes_str(shapes):
    return "_".join(shape_str(s) for s in shapes)


def tensor(a):
    a = np.asarray(a)
    if a.dtype == np.float64:
        dt = "f64"
    elif a.dtype == np.int64:
        dt = "i64"
    elif a.dtype == np.bool_:
        dt = "bool"
    else:
        raise TypeError(f"unexpected dtype {a.dtype}")
    data = a.reshape(-1).tolist()
    if dt == "f64":
        assert all(np.isfinite(data)), "non-finite value"
    return {"dtype": dt, "shape": list(a.shape), "data": data}


def add_case(name, op, params, inputs, fn, diff=True):
    """fn(*inputs) -> array or list of arrays. Differentiates w.r.t. f64 inputs."""
    assert all(c["name"] != name for c in CASES), f"duplicate case name {name}"
    rng = rng_for(name + "#tangents")
    inputs = [np.asarray(x) for x in inputs]
    float_idx = [i for i, x in enumerate(inputs) if x.dtype == np.float64]

    def g(*float_args):
        args = [jnp.asarray(x) for x in inputs]
        for i, v in zip(float_idx, float_args):
            args[i] = v
        return fn(*args)

    out = g(*[jnp.asarray(inputs[i]) for i in float_idx])
    multi = isinstance(out, (list, tuple))
    outs = list(out) if multi else [out]
    case = {"name": name, "op": op, "params": params, "inputs": [tensor(x) for x in inputs]}
    if multi:
        case["outputs"] = [tensor(o) for o in outs]
    else:
        case["output"] = tensor(out)

    case["vjp"] = None
    case["jvp"] = None
    if diff:
        assert all(np.asarray(o).dtype == np.float64 for o in outs)
        primals = [inputs[i] for i in float_idx]
        # VJP
        _, vjp_fn = jax.vjp(g, *primals)
        cts = [uniform(rng, np.shape(o), -1.0, 1.0) for o in outs]
        grads = vjp_fn(list(cts) if multi else cts[0])
        grad_list = [None] * len(inputs)
        for i, gr in zip(float_idx, grads):
            grad_list[i] = tensor(gr)
        vjp = {"cotangents": [tensor(c) for c in cts]} if multi else {"cotangent": tensor(cts[0])}
        vjp["grads"] = grad_list
        case["vjp"] = vjp
        # JVP
        tans = [uniform(rng, x.shape, -1.0, 1.0) for x in primals]
        _, out_t = jax.jvp(g, tuple(primals), tuple(tans))
        tan_list = [None] * len(inputs)
        for i, t in zip(float_idx, tans):
            tan_list[i] = tensor(t)
        jvp = {"tangents": tan_list}
        if multi:
            jvp["output_tangents"] = [tensor(t) for t in out_t]
        else:
            jvp["output_tangent"] = tensor(out_t)
        case["jvp"] = jvp
        if not multi:
            COMPOSABLE.append((name, g, [np.asarray(p) for p in primals]))
    CASES.append(case)


# ----------------------------------------------------------------------------- op families

UNARY_SHAPES = [[], [5], [2, 3], [2, 3, 4]]
BINARY_SHAPES = [([], []), ([3], []), ([], [3]), ([2, 3], [3]), ([2, 1], [1, 3]), ([2, 3, 4], [3, 1]), ([4], [4])]


def gen_unary():
    sym = lambda r, s: uniform(r, s, -2.0, 2.0)  # noqa: E731
    pos = lambda r, s: uniform(r, s, 0.5, 2.0)  # noqa: E731
    kink = lambda r, s: away_from_zero(r, s)  # noqa: E731
    ops = {
        "neg": (jnp.negative, sym),
        "exp": (jnp.exp, sym),
        "log": (jnp.log, pos),
        "log1p": (jnp.log1p, lambda r, s: uniform(r, s, -0.5, 2.0)),
        "sqrt": (jnp.sqrt, pos),
        "rsqrt": (jax.lax.rsqrt, pos),
        "square": (jnp.square, sym),
        "abs": (jnp.abs, kink),
        "sign": (jnp.sign, kink),
        "sin": (jnp.sin, lambda r, s: uniform(r, s, -3.0, 3.0)),
        "cos": (jnp.cos, lambda r, s: uniform(r, s, -3.0, 3.0)),
        "tanh": (jnp.tanh, lambda r, s: uniform(r, s, -3.0, 3.0)),
        "sigmoid": (jax.nn.sigmoid, lambda r, s: uniform(r, s, -4.0, 4.0)),
        "relu": (jax.nn.relu, kink),
        "gelu": (lambda x: jax.nn.gelu(x, approximate=True), lambda r, s: uniform(r, s, -3.0, 3.0)),
        "silu": (jax.nn.silu, lambda r, s: uniform(r, s, -4.0, 4.0)),
        "softplus": (jax.nn.softplus, lambda r, s: uniform(r, s, -4.0, 4.0)),
    }
    for op, (fn, dom) in ops.items():
        for s in UNARY_SHAPES:
            name = f"{op}/{shape_str(s)}"
            add_case(name, op, {}, [dom(rng_for(name), s)], fn)


def gen_binary():
    def pair_apart(r, sa, sb):
        # retry until every broadcast pair differs by > 0.1 (no ties for max/min)
        while True:
            a, b = uniform(r, sa), uniform(r, sb)
            if np.all(np.abs(a - b) > 0.1):
                return a, b

    ops = {
        "add": (jnp.add, lambda r, sa, sb: (uniform(r, sa), uniform(r, sb))),
        "sub": (jnp.subtract, lambda r, sa, sb: (uniform(r, sa), uniform(r, sb))),
        "mul": (jnp.multiply, lambda r, sa, sb: (uniform(r, sa), uniform(r, sb))),
        "div": (jnp.divide, lambda r, sa, sb: (uniform(r, sa), away_from_zero(r, sb, 0.5, 2.0))),
        "pow": (jnp.power, lambda r, sa, sb: (uniform(r, sa, 0.5, 2.0), uniform(r, sb, -2.0, 2.0))),
        "maximum": (jnp.maximum, pair_apart),
        "minimum": (jnp.minimum, pair_apart),
    }
    for op, (fn, dom) in ops.items():
        for sa, sb in BINARY_SHAPES:
            name = f"{op}/{shapes_str([sa, sb])}"
            add_case(name, op, {}, list(dom(rng_for(name), sa, sb)), fn)
    for e in (3.0, -0.5):
        for s in ([], [5], [2, 3, 4]):
            name = f"pow_scalar/{shape_str(s)}_e{e:g}"
            x = uniform(rng_for(name), s, 0.5, 2.0)
            add_case(name, "pow_scalar", {"exponent": e}, [x], lambda x, e=e: jnp.power(x, e))


def gen_compare_logical():
    ops = {"eq": jnp.equal, "ne": jnp.not_equal, "lt": jnp.less, "le": jnp.less_equal,
           "gt": jnp.greater, "ge": jnp.greater_equal}
    for op, fn in ops.items():
        for sa, sb in BINARY_SHAPES:
            name = f"{op}/{shapes_str([sa, sb])}"
            r = rng_for(name)
            # small grid of values -> plenty of exact ties
            a = r.integers(-2, 3, size=sa).astype(np.float64) / 2
            b = r.integers(-2, 3, size=sb).astype(np.float64) / 2
            add_case(name, op, {}, [a, b], fn, diff=False)
    ops = {"logical_and": jnp.logical_and, "logical_or": jnp.logical_or, "logical_xor": jnp.logical_xor}
    for op, fn in ops.items():
        for sa, sb in [([], []), ([3], []), ([2, 3], [3]), ([2, 1], [1, 3]), ([2, 3, 4], [3, 1])]:
            name = f"{op}/{shapes_str([sa, sb])}"
            r = rng_for(name)
            add_case(name, op, {}, [r.uniform(size=sa) < 0.5, r.uniform(size=sb) < 0.5], fn, diff=False)
    for s in ([], [4], [2, 3, 4]):
        name = f"logical_not/{shape_str(s)}"
        add_case(name, "logical_not", {}, [rng_for(name).uniform(size=s) < 0.5], jnp.logical_not, diff=False)


def gen_where_clamp():
    for sc, sa, sb in [([2, 3], [3], []), ([], [2, 3], [2, 3]), ([2, 3, 4], [2, 3, 4], [3, 1]), ([4], [4], [4]),
                       ([2, 1], [1, 3], [2, 3])]:
        name = f"where/{shapes_str([sc, sa, sb])}"
        r = rng_for(name)
        add_case(name, "where", {}, [r.uniform(size=sc) < 0.5, uniform(r, sa), uniform(r, sb)], jnp.where)
    for lo, hi in [(-0.5, 0.5), (-1.0, 0.25)]:
        for s in ([], [5], [2, 3, 4]):
            name = f"clamp/{shape_str(s)}_{lo:g}_{hi:g}"
            r = rng_for(name)
            x = uniform(r, s)
            while np.any(np.abs(x - lo) < 0.05) or np.any(np.abs(x - hi) < 0.05):
                x = uniform(r, s)
            add_case(name, "clamp", {"min": lo, "max": hi}, [x], lambda x, lo=lo, hi=hi: jnp.clip(x, lo, hi))


def gen_reductions():
    combos = [
        ([2, 3, 4], None, False), ([2, 3, 4], None, True), ([2, 3, 4], [0], False), ([2, 3, 4], [-1], True),
        ([2, 3, 4], [0, 2], False), ([2, 3, 4], [1], True), ([2, 3, 4], [1], False), ([2, 3, 4], [0, 2], True),
        ([5], None, False), ([5], [0], True), ([], None, False),
    ]
    ops = {
        "sum": (jnp.sum, uniform),
        "mean": (jnp.mean, uniform),
        "max": (jnp.max, distinct),
        "min": (jnp.min, distinct),
        "prod": (jnp.prod, lambda r, s: away_from_zero(r, s, 0.5, 1.5)),
        "var": (jnp.var, uniform),
        "logsumexp": (logsumexp, uniform),
    }
    for op, (fn, dom) in ops.items():
        for s, axes, kd in combos:
            ax_s = "all" if axes is None else "ax" + ",".join(map(str, axes))
            name = f"{op}/{shape_str(s)}_{ax_s}{'_kd' if kd else ''}"
            ax = None if axes is None else tuple(axes)
            add_case(name, op, {"axes": axes, "keepdims": kd}, [dom(rng_for(name), s)],
                     lambda x, fn=fn, ax=ax, kd=kd: fn(x, axis=ax, keepdims=kd))
    for op, fn in (("argmax", jnp.argmax), ("argmin", jnp.argmin)):
        for s, axis, kd in [([2, 3, 4], 0, False), ([2, 3, 4], 1, True), ([2, 3, 4], -1, False),
                            ([2, 3, 4], None, False), ([2, 3, 4], None, True), ([5], 0, False), ([], None, False)]:
            name = f"{op}/{shape_str(s)}_{'all' if axis is None else 'ax' + str(axis)}{'_kd' if kd else ''}"
            add_case(name, op, {"axis": axis, "keepdims": kd}, [distinct(rng_for(name), s)],
                     lambda x, fn=fn, axis=axis, kd=kd: fn(x, axis=axis, keepdims=kd), diff=False)


def gen_linalg():
    for op, fn, pairs in [
        ("matmul", jnp.matmul, [([3], [3]), ([2, 3], [3]), ([3], [3, 4]), ([2, 3], [3, 4]), ([5, 2, 3], [3, 4]),
                               ([5, 2, 3], [5, 3, 4]), ([2, 1, 2, 3], [4, 3, 2]), ([2, 3, 2, 3], [3, 4]),
                               ([5, 2, 3], [1, 3, 4]), ([5, 2, 3], [1, 1, 3, 4]), ([2, 3], [1, 3, 4])]),
        ("dot", jnp.dot, [([3], [3]), ([2, 3], [3, 4]), ([2, 3], [3])]),
        ("outer", jnp.outer, [([3], [4]), ([1], [2])]),
    ]:
        for sa, sb in pairs:
            name = f"{op}/{shapes_str([sa, sb])}"
            r = rng_for(name)
            add_case(name, op, {}, [uniform(r, sa, -1.0, 1.0), uniform(r, sb, -1.0, 1.0)], fn)


def gen_shape_ops():
    def one(op, s, params, fn, tag):
        name = f"{op}/{shape_str(s)}_{tag}"
        add_case(name, op, params, [uniform(rng_for(name), s)], fn)

    for s, new in [([2, 3, 4], [6, 4]), ([2, 3, 4], [4, -1]), ([2, 3, 4], [-1]), ([6], [2, 3]), ([], [1, 1]),
                   ([1], []), ([2, 3], [3, 1, 2])]:
        one("reshape", s, {"shape": new}, lambda x, new=new: jnp.reshape(x, new), shape_str(new).replace("-1", "m1"))
    for s, axes in [([2, 3], None), ([2, 3, 4], None), ([2, 3, 4], [1, 0, 2]), ([2, 3, 4], [2, 0, 1]), ([5], None),
                    ([], None)]:
        one("transpose", s, {"axes": axes}, lambda x, axes=axes: jnp.transpose(x, axes),
            "rev" if axes is None else "".join(map(str, axes)))
    for s, new in [([3], [2, 3]), ([], [2, 3]), ([2, 1], [2, 4]), ([3, 1], [2, 3, 4]), ([1, 3, 1], [2, 3, 4]),
                   ([4], [4])]:
        one("broadcast_to", s, {"shape": new}, lambda x, new=new: jnp.broadcast_to(x, new), shape_str(new))
    for s, axis in [([2, 3], 0), ([2, 3], 1), ([2, 3], 2), ([2, 3], -1), ([], 0), ([2, 3, 4], -2)]:
        one("expand_dims", s, {"axis": axis}, lambda x, axis=axis: jnp.expand_dims(x, axis), f"ax{axis}")
    for s, axes in [([1, 3], [0]), ([2, 1, 4], [1]), ([1, 3, 1], [0, 2]), ([1], [0]), ([2, 1, 1], [-1])]:
        one("squeeze", s, {"axes": axes}, lambda x, axes=axes: jnp.squeeze(x, tuple(axes)),
            "ax" + ",".join(map(str, axes)))
    for s in ([2, 3, 4], [], [5], [2, 3]):
        one("flatten", s, {}, jnp.ravel, "flat")
    for s, ranges in [
        ([5], [[1, 4, 1]]), ([5], [[None, None, -1]]), ([5], [[None, None, 2]]), ([6], [[-2, None, 1]]),
        ([6], [[4, 0, -2]]), ([2, 3, 4], [[None, None, 1], [1, 3, 1]]),
        ([2, 3, 4], [[1, 2, 1], [None, None, -1], [0, 4, 2]]), ([3, 4], [[-1, None, -1], [None, -1, 1]]),
        ([2, 3, 4], [[0, 1, 1]]),
    ]:
        idx = tuple(slice(*r) for r in ranges)
        tag = ";".join(":".join("" if v is None else str(v) for v in r) for r in ranges)
        one("slice", s, {"ranges": ranges}, lambda x, idx=idx: x[idx], tag)
    for s, axes in [([5], [0]), ([2, 3, 4], [0, 2]), ([2, 3], [-1]), ([2, 3, 4], [0, 1, 2])]:
        one("flip", s, {"axes": axes}, lambda x, axes=axes: jnp.flip(x, tuple(axes)), "ax" + ",".join(map(str, axes)))
    for s, widths in [([3], [[1, 2]]), ([2, 3], [[0, 1], [2, 0]]), ([2, 3, 4], [[1, 0], [0, 0], [1, 1]]),
                      ([2, 2], [[1, 1], [1, 1]])]:
        one("pad", s, {"widths": widths}, lambda x, w=widths: jnp.pad(x, w),
            ",".join(f"{a}-{b}" for a, b in widths))
    for s, i in [([4, 3], 1), ([4, 3], -1), ([5], 2), ([2, 3, 4], -2), ([2, 3, 4], 0)]:
        one("index", s, {"index": i}, lambda x, i=i: x[i], f"i{i}")


def gen_multi():
    for shapes, axis in [([[2, 3]] * 3, 0), ([[2, 3]] * 3, 1), ([[2, 3]] * 2, -1), ([[]] * 2, 0), ([[4]] * 2, 1),
                         ([[2, 3, 4]] * 4, 2)]:
        name = f"stack/{shapes_str(shapes)}_ax{axis}"
        r = rng_for(name)
        add_case(name, "stack", {"axis": axis}, [uniform(r, s) for s in shapes],
                 lambda *xs, axis=axis: jnp.stack(xs, axis))
    for shapes, axis in [([[2, 3], [1, 3]], 0), ([[2, 3], [2, 2], [2, 1]], 1), ([[2, 3, 4], [2, 3, 4]], -1),
                         ([[3], [2]], 0), ([[2, 3, 4], [2, 1, 4]], 1)]:
        name = f"concatenate/{shapes_str(shapes)}_ax{axis}"
        r = rng_for(name)
        add_case(name, "concatenate", {"axis": axis}, [uniform(r, s) for s in shapes],
                 lambda *xs, axis=axis: jnp.concatenate(xs, axis))
    for s, sec, axis in [([6], 3, 0), ([2, 6], 2, 1), ([4, 3], 2, 0), ([2, 3, 4], 2, -1), ([2, 3, 4], 3, 1),
                         ([4], 1, 0)]:
        name = f"split/{shape_str(s)}_{sec}_ax{axis}"
        add_case(name, "split", {"sections": sec, "axis": axis}, [uniform(rng_for(name), s)],
                 lambda x, sec=sec, axis=axis: jnp.split(x, sec, axis))


def gen_indexing():
    i64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    for s, idx, axis in [([5], [4, 0, 2], 0), ([5, 3], [[1, 1], [4, 0]], 0), ([2, 3, 4], [3, 0, 3, 1, 2], 2),
                         ([2, 3, 4], 2, 1), ([4, 3], [2, 0, 0, 1], -1)]:
        idx = i64(idx)
        name = f"take/{shapes_str([s, list(idx.shape)])}_ax{axis}"
        add_case(name, "take", {"axis": axis}, [uniform(rng_for(name), s), idx],
                 lambda x, i, axis=axis: jnp.take(x, i, axis=axis))
    for s, si, axis in [([3, 4], [3, 2], 1), ([3, 4], [2, 4], 0), ([2, 3, 4], [2, 3, 1], 2), ([2, 3, 4], [2, 5, 4], 1),
                        ([5], [7], 0)]:
        name = f"take_along_axis/{shapes_str([s, si])}_ax{axis}"
        r = rng_for(name)
        idx = i64(r.integers(0, s[axis], size=si))
        add_case(name, "take_along_axis", {"axis": axis}, [uniform(r, s), idx],
                 lambda x, i, axis=axis: jnp.take_along_axis(x, i, axis=axis))
    for si, n in [([4], 5), ([2, 3], 4), ([], 3)]:
        name = f"one_hot/{shape_str(si)}_n{n}"
        labels = i64(rng_for(name).integers(0, n, size=si))
        add_case(name, "one_hot", {"num_classes": n}, [labels],
                 lambda l, n=n: jax.nn.one_hot(l, n, dtype=jnp.float64), diff=False)
    for s, idx in [([5, 3], [1, 3, 1, 0]), ([5, 3], [4, 4, 4, 2, 0, 2]), ([5, 3], [2]), ([6], [5, 0, 5, 1, 5]),
                   ([4, 2, 2], [3, 0, 3])]:
        idx = i64(idx)
        name = f"scatter_add/{shape_str(s)}_k{len(idx)}"
        r = rng_for(name)
        add_case(name, "scatter_add", {"axis": 0}, [uniform(r, s), idx, uniform(r, [len(idx)] + s[1:])],
                 lambda x, i, u: x.at[i].add(u))


def gen_composites():
    for op, fn in (("softmax", jax.nn.softmax), ("log_softmax", jax.nn.log_softmax)):
        for s, axis in [([2, 5], -1), ([2, 5], 0), ([3, 4, 5], -1), ([3, 4, 5], 1), ([5], 0)]:
            name = f"{op}/{shape_str(s)}_ax{axis}"
            add_case(name, op, {"axis": axis}, [uniform(rng_for(name), s, -3.0, 3.0)],
                     lambda x, fn=fn, axis=axis: fn(x, axis=axis))

    def xent(logits, labels):
        lp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=-1))

    for s in ([4, 5], [1, 3], [6, 2]):
        name = f"cross_entropy/{shape_str(s)}"
        r = rng_for(name)
        labels = r.integers(0, s[1], size=[s[0]]).astype(np.int64)
        add_case(name, "cross_entropy", {}, [uniform(r, s, -3.0, 3.0), labels], xent)
    for s in ([], [4], [2, 3], [2, 3, 4]):
        name = f"mse/{shape_str(s)}"
        r = rng_for(name)
        add_case(name, "mse", {}, [uniform(r, s), uniform(r, s)], lambda p, t: jnp.mean((p - t) ** 2))


# ----------------------------------------------------------------------------- compositions

COMPOSITION_KEYS = ("jacobian", "vjp_vjp", "jvp_vjp", "vjp_jvp", "hessian", "vmap_vjp", "vmap_jvp")
VMAP_SCALES = [1.0 + 0.05 * k for k in range(3)]


def ftensor(a, dt, where):
    """Float tensor of dtype dt ("f64" | "f32"); fails loudly on a wrong dtype or NaN/inf."""
    a = np.asarray(a)
    want = np.float64 if dt == "f64" else np.float32
    if a.dtype != want:
        raise TypeError(f"{where}: dtype {a.dtype}, expected {want.__name__}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: non-finite value")
    data = a.reshape(-1).astype(np.float64).tolist()
    return {"dtype": dt, "shape": list(a.shape), "data": data}


def compositions(g, xs, u, v, w, c, dt, where):
    """The seven transform compositions of g at xs, computed in the dtype of xs."""
    n = len(xs)
    argnums = tuple(range(n))
    xs = [jnp.asarray(x) for x in xs]
    u, c = jnp.asarray(u), jnp.asarray(c)
    v = [jnp.asarray(t) for t in v]
    w = [jnp.asarray(t) for t in w]
    ten = lambda a, key: ftensor(a, dt, f"{where} {key}")  # noqa: E731
    out = {}

    out["jacobian"] = [ten(j, "jacobian") for j in jax.jacfwd(g, argnums=argnums)(*xs)]

    def h(*a):
        return tuple(jax.vjp(g, *a)[1](u))

    out["vjp_vjp"] = [ten(t, "vjp_vjp") for t in jax.vjp(h, *xs)[1](tuple(w))]
    out["jvp_vjp"] = [ten(t, "jvp_vjp") for t in jax.jvp(h, tuple(xs), tuple(v))[1]]

    def k(*a):
        return jax.jvp(g, a, tuple(v))[1]

    out["vjp_jvp"] = [ten(t, "vjp_jvp") for t in jax.vjp(k, *xs)[1](u)]

    def s(*a):
        return jnp.sum(g(*a) * c)

    hess = jax.hessian(s, argnums=argnums)(*xs)
    out["hessian"] = [[ten(hess[i][j], "hessian") for j in range(n)] for i in range(n)]

    sc = [np.asarray(f, dtype=np.float64 if dt == "f64" else np.float32) for f in VMAP_SCALES]
    bx = [jnp.stack([x * f for f in sc]) for x in xs]
    bu = jnp.stack([u * f for f in sc])
    bv = [jnp.stack([t * f for f in sc]) for t in v]
    vv = jax.vmap(lambda *a: tuple(jax.vjp(g, *a[:n])[1](a[n])))(*bx, bu)
    out["vmap_vjp"] = [ten(t, "vmap_vjp") for t in vv]
    out["vmap_jvp"] = ten(jax.vmap(lambda *a: jax.jvp(g, a[:n], a[n:])[1])(*bx, *bv), "vmap_jvp")
    return out


def gen_compositions():
    cases = []
    for name, g, xs in COMPOSABLE:
        y_shape = np.shape(g(*[jnp.asarray(x) for x in xs]))
        rng = rng_for(name + "#compositions")
        u = uniform(rng, y_shape, -1.0, 1.0)
        v = [uniform(rng, x.shape, -1.0, 1.0) for x in xs]
        w = [uniform(rng, x.shape, -1.0, 1.0) for x in xs]
        c = uniform(rng, y_shape, -1.0, 1.0)
        case = {"name": name, "u": tensor(u), "v": [tensor(t) for t in v], "w": [tensor(t) for t in w],
                "c": tensor(c)}
        case.update(compositions(g, xs, u, v, w, c, "f64", name))
        f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
        case["f32"] = compositions(g, [f32(x) for x in xs], f32(u), [f32(t) for t in v], [f32(t) for t in w],
                                   f32(c), "f32", name + " f32")
        cases.append(case)

    dumps = lambda c: json.dumps(c, separators=(",", ":"), allow_nan=False)  # noqa: E731
    head = '{"jax_version":' + json.dumps(jax.__version__) + ',"cases":[\n'
    tail = "\n]}\n"
    lines = [dumps(c) for c in cases]
    total = lambda: len(head) + len(tail) + sum(len(l) for l in lines) + 2 * (len(lines) - 1)  # noqa: E731,E741
    dropped = []
    if total() > COMPOSITIONS_MAX_BYTES:
        order = sorted(range(len(cases)), key=lambda i: -len(dumps(cases[i]["hessian"])))
        for i in order:
            if total() <= COMPOSITIONS_MAX_BYTES:
                break
            cases[i]["hessian"] = None
            cases[i]["f32"]["hessian"] = None
            lines[i] = dumps(cases[i])
            dropped.append(cases[i]["name"])
    with open(COMPOSITIONS_PATH, "w") as f:
        f.write(head)
        f.write(",\n".join(lines))
        f.write(tail)

    counts = collections.Counter()
    for c in cases:
        for part, tag in ((c, ""), (c["f32"], "f32.")):
            for key in COMPOSITION_KEYS:
                if part[key] is not None:
                    counts[tag + key] += 1
    for key, n in counts.items():
        print(f"{key:16s} {n}")
    if dropped:
        print(f"hessian dropped (size cap {COMPOSITIONS_MAX_BYTES} bytes) for {len(dropped)} cases: {', '.join(dropped)}")
    print(f"{len(cases)} composition cases, {os.path.getsize(COMPOSITIONS_PATH)} bytes -> "
          f"{os.path.normpath(COMPOSITIONS_PATH)}")


def main():
    for gen in (gen_unary, gen_binary, gen_compare_logical, gen_where_clamp, gen_reductions, gen_linalg,
                gen_shape_ops, gen_multi, gen_indexing, gen_composites):
        gen()
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    lines = [json.dumps(c, separators=(",", ":"), allow_nan=False) for c in CASES]
    with open(OUT_PATH, "w") as f:
        f.write('{"jax_version":' + json.dumps(jax.__version__) + ',"cases":[\n')
        f.write(",\n".join(lines))
        f.write("\n]}\n")
    counts = collections.Counter(c["op"] for c in CASES)
    for op, n in counts.items():
        print(f"{op:16s} {n}")
    print(f"{len(CASES)} cases, {len(counts)} ops, {os.path.getsize(OUT_PATH)} bytes -> {os.path.normpath(OUT_PATH)}")
    print(f"jax {jax.__version__}")
    gen_compositions()


if __name__ == "__main__":
    main()
