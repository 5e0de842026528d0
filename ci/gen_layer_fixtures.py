"""JAX reference fixtures for the ops of CNN and transformer layers (issue 12), in the format of
ci/gen_fixtures.py (whose helpers this reuses): writes core/tests/fixtures/layer_ops.json, which
the core tests load next to ops_f64.json, so every case also runs through the derivative
matrix, the bf16/f16 rows and the emulated GPU.

Cases: erf; floor, ceil, round and trunc (with round's ties at .5, which go to even, and their
zero derivatives); exact gelu; remainder (NumPy's and JAX's mod) with negative operands; triu
and tril for several diagonals; layer_norm and rms_norm over the last axis, the last two, or
every axis but axis 1 (batch normalisation's); batch_norm and batch_norm_synced (one rank) with
their scale and shift over several channel axes; batch_norm_eval (given statistics, differentiated
in all five inputs);
conv2d (lax.conv_general_dilated: strides, padding, dilation, groups), conv_transpose2d (the
derivative of conv2d in its input), max and average pooling (lax.reduce_window, with a case of
ties, where JAX gives the cotangent to the first maximum of each window, and cases of PyTorch's
ceil_mode, count_include_pad=False, divisor_override and max pooling's dilation, checked against torch where
it is installed); scaled dot-product
attention with and without a boolean mask and the causal mask; cumsum and cumprod (with a
zero inside).

The same run writes core/tests/fixtures/layer_compositions.json: the transform compositions of
ci/gen_fixtures.py (Jacobian, vjp of vjp, jvp of vjp, vjp of jvp, Hessian, vmap of vjp and jvp,
in f64 and f32) for every differentiable case above of at most 200 input elements.

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
        # The last two: batch normalisation's axes (every axis but the channels, axis 1).
        for s, axes in [([4, 5], [-1]), ([2, 3, 4], [-1]), ([2, 3, 4], [-2, -1]), ([6], [-1]),
                        ([3, 2, 2, 2], [0, 2, 3]), ([4, 3, 5], [0, 2])]:
            name = f"{op}/{g.shape_str(s)}_ax{'_'.join(str(a) for a in axes)}"
            eps = 1e-5
            g.add_case(name, op, {"axes": axes, "eps": eps}, [g.uniform(g.rng_for(name), s, -2.0, 2.0)],
                       lambda x, fn=fn, axes=tuple(axes), eps=eps: fn(x, axes, eps))


def gen_batch_norm():
    # Batch normalisation's training output with its scale and shift (Tensor::batch_norm), and
    # the synchronised form, which over one rank (the identity as the cross-rank sum) is the
    # same function: both ops get every row of the matrix (finite differences, JAX, the
    # compositions, bf16/f16, the emulated GPU).
    def batch_norm(x, gamma, beta, axis, eps):
        axes = tuple(a for a in range(x.ndim) if a != axis)
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)
        return (x - mean) / jnp.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)

    for op in ("batch_norm", "batch_norm_synced"):
        for s, axis, eps in [([5, 3], 1, 1e-5), ([3, 2, 2, 2], 1, 1e-5), ([4, 3, 5], 1, 1e-3),
                             ([2, 3, 4], 2, 1e-5), ([4, 3], 0, 1e-5)]:
            name = f"{op}/{g.shape_str(s)}_axis{axis}"
            r = g.rng_for(name)
            c = s[axis]
            g.add_case(name, op, {"axis": axis, "eps": eps},
                       [g.uniform(r, s, -2.0, 2.0), g.uniform(r, [c], 0.5, 1.5), g.uniform(r, [c], -0.5, 0.5)],
                       lambda x, gm, bt, a=axis, e=eps: batch_norm(x, gm, bt, a, e))


def gen_batch_norm_eval():
    # Batch normalisation with given statistics (evaluation), differentiated in all five.
    def batch_norm_eval(x, mean, var, gamma, beta, axis, eps):
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        c = lambda t: t.reshape(shape)
        return (x - c(mean)) / jnp.sqrt(c(var) + eps) * c(gamma) + c(beta)

    for s, axis, eps in [([5, 3], 1, 1e-5), ([3, 2, 2, 2], 1, 1e-5), ([2, 3, 4], 2, 1e-3), ([4, 3], 0, 1e-5)]:
        name = f"batch_norm_eval/{g.shape_str(s)}_axis{axis}"
        r = g.rng_for(name)
        c = s[axis]
        g.add_case(name, "batch_norm_eval", {"axis": axis, "eps": eps},
                   [g.uniform(r, s, -2.0, 2.0), g.uniform(r, [c], -0.5, 0.5), g.uniform(r, [c], 0.5, 2.0),
                    g.uniform(r, [c], 0.5, 1.5), g.uniform(r, [c], -0.5, 0.5)],
                   lambda x, m, v, gm, bt, a=axis, e=eps: batch_norm_eval(x, m, v, gm, bt, a, e))


def conv_ref(x, w, stride, padding, dilation, groups):
    return jax.lax.conv_general_dilated(
        x, w, window_strides=stride, padding=[(padding[0], padding[0]), (padding[1], padding[1])],
        rhs_dilation=dilation, feature_group_count=groups, dimension_numbers=("NCHW", "OIHW", "NCHW"))


CONV_CASES = [
    # x shape, w shape, stride, padding, dilation, groups
    ([1, 1, 5, 5], [1, 1, 3, 3], (1, 1), (0, 0), (1, 1), 1),
    ([2, 3, 6, 5], [4, 3, 3, 2], (1, 1), (1, 0), (1, 1), 1),
    ([2, 2, 7, 7], [3, 2, 3, 3], (2, 2), (1, 1), (1, 1), 1),
    ([1, 2, 7, 6], [2, 2, 2, 2], (1, 2), (0, 1), (2, 1), 1),
    ([2, 4, 5, 5], [6, 2, 3, 3], (1, 1), (1, 1), (1, 1), 2),
    ([1, 4, 4, 4], [4, 1, 3, 3], (2, 1), (1, 1), (1, 1), 4),
]


def gen_conv():
    for xs, ws, stride, padding, dilation, groups in CONV_CASES:
        opts = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": groups}
        name = f"conv2d/{g.shapes_str([xs, ws])}_s{stride[0]}{stride[1]}_p{padding[0]}{padding[1]}_d{dilation[0]}{dilation[1]}_g{groups}"
        r = g.rng_for(name)
        g.add_case(name, "conv2d", opts, [g.uniform(r, xs, -1.0, 1.0), g.uniform(r, ws, -1.0, 1.0)],
                   lambda x, w, a=(stride, padding, dilation, groups): conv_ref(x, w, *a))
    # conv_transpose2d: the derivative of conv2d with respect to its input, as PyTorch defines
    # it (x: [N, C, H, W], w: [C, O / groups, KH, KW]).
    for xs, ws, stride, padding, dilation, groups, out_pad in [
        ([1, 2, 3, 3], [2, 3, 3, 3], (2, 2), (1, 1), (1, 1), 1, (1, 1)),
        ([2, 3, 4, 3], [3, 2, 2, 3], (1, 2), (0, 1), (1, 1), 1, (0, 0)),
        ([1, 4, 3, 3], [4, 1, 3, 3], (1, 1), (1, 1), (2, 2), 2, (0, 0)),
    ]:
        opts = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": groups,
                "output_padding": list(out_pad)}
        name = f"conv_transpose2d/{g.shapes_str([xs, ws])}_s{stride[0]}{stride[1]}_g{groups}_op{out_pad[0]}{out_pad[1]}"
        r = g.rng_for(name)
        n, c, h, wd = xs
        og, kh, kw = ws[1], ws[2], ws[3]
        oh = (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + out_pad[0] + 1
        ow = (wd - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + out_pad[1] + 1

        def tconv(x, w, a=(stride, padding, dilation, groups), shape=(n, og * groups, oh, ow)):
            _, pull = jax.vjp(lambda inp: conv_ref(inp, w, *a), jnp.zeros(shape, dtype=x.dtype))
            return pull(x)[0]

        g.add_case(name, "conv_transpose2d", opts, [g.uniform(r, xs, -1.0, 1.0), g.uniform(r, ws, -1.0, 1.0)], tconv)


def pool_extent(n, pad, k, stride, ceil, dilation=1):
    """Windows along one axis and the padding after the image (PyTorch's pooling_output_shape:
    with ceil_mode a last window that would start past the image and its padding is dropped)."""
    k = dilation * (k - 1) + 1
    room = n + 2 * pad - k
    out = (-(-room // stride) if ceil else room // stride) + 1
    if ceil and (out - 1) * stride >= n + pad:
        out -= 1
    return out, max(pad, (out - 1) * stride + k - n - pad)


def check_against_torch(op, x, k, s, p, ceil, include, want, divisor=None, dilation=(1, 1)):
    """Asserts that torch.nn.functional's pooling agrees with the JAX reference (skipped, with a
    line saying so, where torch is not installed)."""
    try:
        import torch
    except ImportError:
        print(f"{op}: torch not installed, the cross-check of the ceil_mode/count_include_pad reference is skipped")
        return
    t = torch.from_numpy(np.asarray(x))
    if op == "max_pool2d":
        got = torch.nn.functional.max_pool2d(t, k, s, p, dilation=dilation, ceil_mode=ceil)
    else:
        got = torch.nn.functional.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=include,
                                             divisor_override=divisor)
    got = got.numpy()
    assert got.shape == np.shape(want), (op, got.shape, np.shape(want))
    err = float(np.max(np.abs(got - np.asarray(want))))
    assert err < 1e-12, (op, k, s, p, ceil, include, err)


def gen_pool():
    for xs, k, s, p in [([1, 1, 4, 4], (2, 2), (2, 2), (0, 0)), ([2, 3, 5, 6], (3, 2), (2, 1), (1, 0)),
                        ([1, 2, 5, 5], (3, 3), (1, 1), (1, 1))]:
        pads = [(0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])]
        params = {"kernel": list(k), "stride": list(s), "padding": list(p)}
        tag = f"{g.shape_str(xs)}_k{k[0]}{k[1]}_s{s[0]}{s[1]}_p{p[0]}{p[1]}"
        name = f"max_pool2d/{tag}"
        g.add_case(name, "max_pool2d", params, [g.distinct(g.rng_for(name), xs)],
                   lambda x, k=k, s=s, pads=pads: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1) + k, (1, 1) + s, pads))
        name = f"avg_pool2d/{tag}"
        g.add_case(name, "avg_pool2d", params, [g.uniform(g.rng_for(name), xs)],
                   lambda x, k=k, s=s, pads=pads: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1) + k, (1, 1) + s, pads) / (k[0] * k[1]))
    # PyTorch's ceil_mode and count_include_pad=False: reduce_window over asymmetric padding
    # (the ceil_mode windows run into extra padding after the image), averages divided by the
    # window sums of the counted ones; cross-checked against torch.nn.functional where torch is
    # installed.
    for xs, k, s, p, ceil, include in [([1, 2, 5, 5], (2, 2), (2, 2), (0, 0), True, True),
                                       ([2, 1, 6, 7], (3, 3), (2, 2), (1, 1), True, True),
                                       ([1, 1, 5, 5], (2, 2), (2, 2), (1, 1), True, True),
                                       ([1, 2, 5, 6], (3, 2), (2, 1), (1, 1), False, False),
                                       ([2, 1, 6, 5], (3, 3), (2, 2), (1, 0), True, False)]:
        after = [pool_extent(n, pi, ki, si, ceil)[1] for n, pi, ki, si in zip(xs[2:], p, k, s)]
        pads = [(0, 0), (0, 0), (p[0], after[0]), (p[1], after[1])]
        params = {"kernel": list(k), "stride": list(s), "padding": list(p), "ceil_mode": ceil,
                  "count_include_pad": include}
        tag = (f"{g.shape_str(xs)}_k{k[0]}{k[1]}_s{s[0]}{s[1]}_p{p[0]}{p[1]}"
               f"{'_ceil' if ceil else ''}{'' if include else '_exclude_pad'}")

        def max_ref(x, k=k, s=s, pads=pads):
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1) + k, (1, 1) + s, pads)

        def avg_ref(x, k=k, s=s, p=p, pads=pads, include=include):
            sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1) + k, (1, 1) + s, pads)
            h, w = x.shape[2:]
            if include:
                ones = jnp.ones((1, 1, h + 2 * p[0], w + 2 * p[1]), x.dtype)
                ones_pads = [(0, 0), (0, 0), (0, pads[2][1] - p[0]), (0, pads[3][1] - p[1])]
            else:
                ones, ones_pads = jnp.ones((1, 1, h, w), x.dtype), pads
            count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 1) + k, (1, 1) + s, ones_pads)
            return sums / count

        for op, ref, draw in (("max_pool2d", max_ref, g.distinct), ("avg_pool2d", avg_ref, g.uniform)):
            if op == "max_pool2d" and not include:
                continue  # max pooling ignores count_include_pad
            name = f"{op}/{tag}"
            x = draw(g.rng_for(name), xs)
            check_against_torch(op, x, k, s, p, ceil, include, ref(jnp.asarray(x)))
            g.add_case(name, op, params, [x], ref)
    # divisor_override: every window's sum over one number, whatever the window counts.
    for xs, k, s, p, ceil, divisor in [([1, 2, 5, 6], (3, 2), (2, 1), (1, 1), False, 5),
                                       ([2, 1, 6, 5], (3, 3), (2, 2), (1, 0), True, 2)]:
        after = [pool_extent(n, pi, ki, si, ceil)[1] for n, pi, ki, si in zip(xs[2:], p, k, s)]
        pads = [(0, 0), (0, 0), (p[0], after[0]), (p[1], after[1])]
        params = {"kernel": list(k), "stride": list(s), "padding": list(p), "ceil_mode": ceil,
                  "count_include_pad": False, "divisor_override": divisor}
        tag = (f"{g.shape_str(xs)}_k{k[0]}{k[1]}_s{s[0]}{s[1]}_p{p[0]}{p[1]}"
               f"{'_ceil' if ceil else ''}_divisor{divisor}")

        def divided_ref(x, k=k, s=s, pads=pads, divisor=divisor):
            return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1) + k, (1, 1) + s, pads) / divisor

        name = f"avg_pool2d/{tag}"
        x = g.uniform(g.rng_for(name), xs)
        check_against_torch("avg_pool2d", x, k, s, p, ceil, False, divided_ref(jnp.asarray(x)), divisor)
        g.add_case(name, "avg_pool2d", params, [x], divided_ref)
    # Max pooling's dilation: taps `dilation` apart.
    for xs, k, s, p, ceil, d in [([1, 2, 7, 7], (3, 3), (1, 1), (0, 0), False, (2, 2)),
                                 ([2, 1, 9, 8], (2, 3), (2, 1), (1, 1), False, (3, 2)),
                                 ([1, 1, 8, 9], (3, 2), (2, 3), (1, 1), True, (2, 1))]:
        after = [pool_extent(n, pi, ki, si, ceil, di)[1] for n, pi, ki, si, di in zip(xs[2:], p, k, s, d)]
        pads = [(0, 0), (0, 0), (p[0], after[0]), (p[1], after[1])]
        params = {"kernel": list(k), "stride": list(s), "padding": list(p), "dilation": list(d), "ceil_mode": ceil}
        tag = (f"{g.shape_str(xs)}_k{k[0]}{k[1]}_s{s[0]}{s[1]}_p{p[0]}{p[1]}_d{d[0]}{d[1]}"
               f"{'_ceil' if ceil else ''}")

        out = [pool_extent(n, pi, ki, si, ceil, di)[0] for n, pi, ki, si, di in zip(xs[2:], p, k, s, d)]

        # jnp.max over the taps (reduce_window with window_dilation has no VJP in JAX); the
        # inputs are distinct, so no window ties.
        def dilated_ref(x, k=k, s=s, pads=pads, d=d, out=out):
            xp = jnp.pad(x, pads, constant_values=-jnp.inf)
            taps = [xp[:, :, i * d[0]:i * d[0] + (out[0] - 1) * s[0] + 1:s[0],
                       j * d[1]:j * d[1] + (out[1] - 1) * s[1] + 1:s[1]]
                    for i in range(k[0]) for j in range(k[1])]
            return jnp.max(jnp.stack(taps), axis=0)

        name = f"max_pool2d/{tag}"
        x = g.distinct(g.rng_for(name), xs)
        check_against_torch("max_pool2d", x, k, s, p, ceil, True, dilated_ref(jnp.asarray(x)), dilation=d)
        g.add_case(name, "max_pool2d", params, [x], dilated_ref)
    # Ties: equal values in a window; JAX gives the whole cotangent to the first maximum.
    x = np.array([[[[1.0, 1.0, 0.5, 2.0], [1.0, 0.0, 2.0, 2.0], [3.0, 3.0, -1.0, -1.0], [3.0, 3.0, -1.0, -1.0]]]])
    g.add_case("max_pool2d/ties", "max_pool2d", {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0], "kink": True}, [x],
               lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID"))


def sdpa_ref(q, k, v, mask, causal):
    scores = q @ jnp.swapaxes(k, -1, -2) / jnp.sqrt(q.shape[-1])
    keep = None if mask is None else jnp.asarray(mask)
    if causal:
        tri = jnp.tril(jnp.ones((q.shape[-2], k.shape[-2]), dtype=bool))
        keep = tri if keep is None else keep & tri
    if keep is not None:
        scores = jnp.where(keep, scores, -jnp.inf)
    return jax.nn.softmax(scores, axis=-1) @ v


def gen_attention():
    for qs, ks, vs, causal, masked in [
        ([4, 3], [5, 3], [5, 2], False, False),
        ([2, 3, 4, 8], [2, 3, 4, 8], [2, 3, 4, 8], True, False),
        ([2, 5, 4], [2, 6, 4], [2, 6, 3], False, True),
        ([3, 4, 4], [3, 4, 4], [3, 4, 2], True, True),
    ]:
        name = f"sdpa/{g.shapes_str([qs, ks, vs])}_c{int(causal)}_m{int(masked)}"
        r = g.rng_for(name)
        inputs = [g.uniform(r, qs, -1.0, 1.0), g.uniform(r, ks, -1.0, 1.0), g.uniform(r, vs, -1.0, 1.0)]
        if masked:
            # Every query keeps at least key 0 (for a fully masked row this reference gives NaN,
            # nabla-rs 0, as PyTorch does).
            m = r.uniform(size=[qs[-2], ks[-2]]) < 0.7
            m[:, 0] = True
            inputs.append(m)
            fn = lambda q, k, v, m, c=causal: sdpa_ref(q, k, v, m, c)  # noqa: E731
        else:
            fn = lambda q, k, v, c=causal: sdpa_ref(q, k, v, None, c)  # noqa: E731
        g.add_case(name, "sdpa", {"causal": causal}, inputs, fn)
    for s, axis in [([5], 0), ([3, 4], 1), ([3, 4], 0), ([2, 3, 4], -2)]:
        name = f"cumsum/{g.shape_str(s)}_ax{axis}"
        g.add_case(name, "cumsum", {"axis": axis}, [g.uniform(g.rng_for(name), s)], lambda x, a=axis: jnp.cumsum(x, axis=a))
        name = f"cumprod/{g.shape_str(s)}_ax{axis}"
        g.add_case(name, "cumprod", {"axis": axis}, [g.uniform(g.rng_for(name), s, -1.5, 1.5)],
                   lambda x, a=axis: jnp.cumprod(x, axis=a))
    # A zero inside: the products after it are zero, their derivatives are not.
    g.add_case("cumprod/zero", "cumprod", {"axis": 0}, [np.array([1.5, -2.0, 0.0, 0.5, 3.0])],
               lambda x: jnp.cumprod(x, axis=0))


def main():
    for gen in (gen_elementwise, gen_remainder, gen_triangles, gen_norms, gen_batch_norm, gen_batch_norm_eval, gen_conv, gen_pool, gen_attention):
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
    g.COMPOSITIONS_PATH = os.path.join(os.path.dirname(OUT_PATH), "layer_compositions.json")
    # Compositions (Hessians above all) of the large cases take minutes in JAX: keep the
    # cases of at most 200 input elements, which include at least one of every op.
    g.COMPOSABLE[:] = [c for c in g.COMPOSABLE if sum(np.size(x) for x in c[2]) <= 200]
    g.gen_compositions()


if __name__ == "__main__":
    main()
