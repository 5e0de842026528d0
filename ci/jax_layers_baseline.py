"""JAX jit and PyTorch eager (when installed) timings of examples/bench_layers.rs's cases: conv2d
forward and forward+backward at a ResNet layer shape (batch 32, 64 -> 64 channels, 56x56, 3x3,
padding 1) and with stride 2 and 128 filters, a 7x7 stride-2 stem over 8 RGB 224x224 images, the
max pooling after it (value and gradient), attention [16, 8, 256, 64] forward and backward
(causal, and with a key padding mask), batch norm in training mode over the conv2d input (forward
and the gradients of x, scale and shift) and at evaluation (forward alone), and one pre-norm
transformer block step, value and gradients (batch 16, sequence 256, width 512, 8 heads, causal,
exact GELU MLP of width 2048), and one Adam update of 2^24 elements, and the value and gradient of
the mean cross-entropy of [2048, 32000] logits against integer labels (a language model's head).
float32, CPU. Writes rows {case, system, unit, value} as JSON to --json.
"""
import argparse
import json

import numpy as np

from timing import median_ms


def jax_rows(runs):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_platforms", "cpu")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, 64, 56, 56), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((64, 64, 3, 3), dtype=np.float32) * 0.05)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NCHW", "OIHW", "NCHW"))

    fwd = jax.jit(conv)
    bwd = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
    rows = [("conv2d_fwd", "jax.jit", "ms", median_ms(lambda: fwd(x, w).block_until_ready(), 1, runs)),
            ("conv2d_fwd_bwd", "jax.jit", "ms", median_ms(lambda: jax.block_until_ready(bwd(x, w)), 1, runs))]

    def conv_s(x, w, pad):
        return jax.lax.conv_general_dilated(x, w, (2, 2), [(pad, pad), (pad, pad)], dimension_numbers=("NCHW", "OIHW", "NCHW"))

    w2 = jnp.asarray(rng.standard_normal((128, 64, 3, 3), dtype=np.float32) * 0.05)
    fwd2 = jax.jit(lambda x, w: conv_s(x, w, 1))
    bwd2 = jax.jit(jax.grad(lambda x, w: jnp.sum(conv_s(x, w, 1) ** 2), argnums=(0, 1)))
    images, stem_w = stem_inputs(rng)
    stem = jax.jit(lambda x, w: conv_s(x, w, 3))
    images, stem_w = jnp.asarray(images), jnp.asarray(stem_w)
    rows += [("conv2d_s2_fwd", "jax.jit", "ms", median_ms(lambda: fwd2(x, w2).block_until_ready(), 1, runs)),
             ("conv2d_s2_fwd_bwd", "jax.jit", "ms", median_ms(lambda: jax.block_until_ready(bwd2(x, w2)), 1, runs)),
             ("conv2d_stem_fwd", "jax.jit", "ms", median_ms(lambda: stem(images, stem_w).block_until_ready(), 1, runs))]
    pool_in = jnp.asarray(pool_input())
    pool_grad = jax.jit(jax.grad(lambda x: jnp.sum(jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), ((0, 0), (0, 0), (1, 1), (1, 1))))))
    rows.append(("max_pool_fwd_bwd", "jax.jit", "ms",
                 median_ms(lambda: pool_grad(pool_in).block_until_ready(), 1, runs)))
    avg_grad = jax.jit(jax.grad(lambda x: jnp.sum((jax.lax.reduce_window(
        x, 0.0, jax.lax.add, (1, 1, 3, 3), (1, 1, 2, 2), ((0, 0), (0, 0), (1, 1), (1, 1))) / 9.0) ** 2)))
    rows.append(("avg_pool_fwd_bwd", "jax.jit", "ms",
                 median_ms(lambda: avg_grad(pool_in).block_until_ready(), 1, runs)))

    q, k, v = (jnp.asarray(t) for t in attention_inputs(rng))
    padding = jnp.asarray(key_padding())
    for case, causal, mask in (("attention_causal_fwd_bwd", True, None), ("attention_padded_fwd_bwd", False, padding)):
        def loss(q, k, v, causal=causal, mask=mask):
            return jnp.sum(jax.nn.dot_product_attention(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
                                                        v.transpose(0, 2, 1, 3), mask=mask, is_causal=causal) ** 2)
        g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        rows.append((case, "jax.jit", "ms", median_ms(lambda g=g: jax.block_until_ready(g(q, k, v)), 1, runs)))

    def bn(x, g, b):
        mean = jnp.mean(x, axis=(0, 2, 3), keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=(0, 2, 3), keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-5) * g[None, :, None, None] + b[None, :, None, None]

    bn_grad = jax.jit(jax.grad(lambda x, g, b: jnp.sum(bn(x, g, b) ** 2), argnums=(0, 1, 2)))
    gamma, beta = jnp.ones((64,), jnp.float32), jnp.zeros((64,), jnp.float32)
    rows.append(("batch_norm_fwd_bwd", "jax.jit", "ms",
                 median_ms(lambda: jax.block_until_ready(bn_grad(x, gamma, beta)), 1, runs)))

    bn_eval = jax.jit(lambda x, m, v, g, b: (x - m[None, :, None, None]) / jnp.sqrt(v[None, :, None, None] + 1e-5)
                      * g[None, :, None, None] + b[None, :, None, None])
    run_mean, run_var = jnp.zeros((64,), jnp.float32), jnp.ones((64,), jnp.float32)
    rows.append(("batch_norm_eval_fwd", "jax.jit", "ms",
                 median_ms(lambda: jax.block_until_ready(bn_eval(x, run_mean, run_var, gamma, beta)), 1, runs)))

    b, l, d, h = 16, 256, 512, 8
    def lin(i, o):
        return (jnp.asarray(rng.standard_normal((i, o), dtype=np.float32) / np.sqrt(i)), jnp.zeros((o,), jnp.float32))
    params = {"q": lin(d, d), "k": lin(d, d), "v": lin(d, d), "o": lin(d, d), "up": lin(d, 4 * d), "down": lin(4 * d, d),
              "g1": jnp.ones(d), "b1": jnp.zeros(d), "g2": jnp.ones(d), "b2": jnp.zeros(d)}
    xs = jnp.asarray(rng.standard_normal((b, l, d), dtype=np.float32))

    def ln(x, g, bb):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / jnp.sqrt(v + 1e-5) * g + bb

    def block(p, x):
        a = ln(x, p["g1"], p["b1"])
        split = lambda t: t.reshape(b, l, h, d // h).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(a @ p[n][0] + p[n][1]) for n in ("q", "k", "v"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // h)
        s = jnp.where(jnp.tril(jnp.ones((l, l), bool)), s, -jnp.inf)
        o = (jax.nn.softmax(s, -1) @ v).transpose(0, 2, 1, 3).reshape(b, l, d)
        x = x + o @ p["o"][0] + p["o"][1]
        m = jax.nn.gelu(ln(x, p["g2"], p["b2"]) @ p["up"][0] + p["up"][1], approximate=False)
        return x + m @ p["down"][0] + p["down"][1]

    step = jax.jit(jax.value_and_grad(lambda p: jnp.mean(block(p, xs) ** 2)))
    rows.append(("transformer_block_step", "jax.jit", "ms", median_ms(lambda: jax.block_until_ready(step(params)), 1, runs)))

    # Adam (as optax.adam computes it, defaults b1 0.9, b2 0.999, eps 1e-8) on 2^24 elements.
    n = 1 << 24
    p, g = (jnp.asarray(rng.standard_normal(n, dtype=np.float32)) for _ in range(2))
    m, v = jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.float32)

    @jax.jit
    def adam(p, g, m, v):
        m1 = 0.9 * m + 0.1 * g
        v1 = 0.999 * v + 0.001 * g * g
        return p - 1e-3 * (m1 / 0.1) / (jnp.sqrt(v1 / 0.001) + 1e-8), m1, v1

    rows.append(("adam_update_16M", "jax.jit", "ms", median_ms(lambda: jax.block_until_ready(adam(p, g, m, v)), 1, runs)))

    # SGD with Nesterov momentum 0.9 and weight decay 5e-4 (optax.sgd's formula with an L2 term).
    @jax.jit
    def sgd(p, g, v):
        g = g + 5e-4 * p
        v1 = 0.9 * v + g
        return p - 0.1 * (g + 0.9 * v1), v1

    rows.append(("sgd_nesterov_update_16M", "jax.jit", "ms",
                 median_ms(lambda: jax.block_until_ready(sgd(p, g, m)), 1, runs)))

    logits, labels = ce_inputs(rng)
    ce = jax.jit(jax.value_and_grad(
        lambda z, y: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z, -1), y[:, None], -1))))
    z, y = jnp.asarray(logits), jnp.asarray(labels)
    rows.append(("cross_entropy_32k", "jax.jit", "ms", median_ms(lambda: jax.block_until_ready(ce(z, y)), 1, runs)))
    return rows


def pool_input():
    """The stem's output shape [8, 64, 112, 112], as bench_layers' max pooling."""
    return np.random.default_rng(11).standard_normal((8, 64, 112, 112), dtype=np.float32)


def stem_inputs(rng):
    """8 RGB 224x224 images and 64 filters 7x7, as bench_layers' stride-2 stem."""
    return (rng.standard_normal((8, 3, 224, 224), dtype=np.float32),
            rng.standard_normal((64, 3, 7, 7), dtype=np.float32) * 0.05)


def attention_inputs(rng):
    """q, k and v [16, 8, 256, 64] (batch, heads, sequence, head width), standard normal."""
    return [rng.standard_normal((16, 8, 256, 64), dtype=np.float32) for _ in range(3)]


def key_padding():
    """The bool key padding mask [16, 1, 1, 256]: sequence b keeps its first 256 - 8 b keys."""
    return (np.arange(256)[None, :] < (256 - 8 * np.arange(16))[:, None]).reshape(16, 1, 1, 256)


def ce_inputs(rng):
    """Logits [2048, 32000] (standard normal) and labels (i * 7 mod 32000), as bench_layers."""
    rows, classes = 2048, 32000
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    labels = (np.arange(rows, dtype=np.int64) * 7) % classes
    return logits, labels


def torch_rows(runs):
    try:
        import torch
    except ImportError:
        return []
    torch.manual_seed(0)
    x = torch.randn(32, 64, 56, 56)
    w = (torch.randn(64, 64, 3, 3) * 0.05).requires_grad_()
    xg = x.clone().requires_grad_()
    rows = [("conv2d_fwd", "torch eager", "ms", median_ms(lambda: torch.nn.functional.conv2d(x, w.detach(), padding=1), 1, runs))]

    def fb():
        y = torch.nn.functional.conv2d(xg, w, padding=1)
        return torch.autograd.grad((y ** 2).sum(), (xg, w))

    rows.append(("conv2d_fwd_bwd", "torch eager", "ms", median_ms(fb, 1, runs)))
    w2 = (torch.randn(128, 64, 3, 3) * 0.05).requires_grad_()
    rows.append(("conv2d_s2_fwd", "torch eager", "ms",
                 median_ms(lambda: torch.nn.functional.conv2d(x, w2.detach(), stride=2, padding=1), 1, runs)))

    def fb2():
        y = torch.nn.functional.conv2d(xg, w2, stride=2, padding=1)
        return torch.autograd.grad((y ** 2).sum(), (xg, w2))

    rows.append(("conv2d_s2_fwd_bwd", "torch eager", "ms", median_ms(fb2, 1, runs)))
    images, stem_w = (torch.from_numpy(t) for t in stem_inputs(np.random.default_rng(0)))
    rows.append(("conv2d_stem_fwd", "torch eager", "ms",
                 median_ms(lambda: torch.nn.functional.conv2d(images, stem_w, stride=2, padding=3), 1, runs)))
    pool_in = torch.from_numpy(pool_input()).requires_grad_()
    rows.append(("max_pool_fwd_bwd", "torch eager", "ms", median_ms(
        lambda: torch.autograd.grad(torch.nn.functional.max_pool2d(pool_in, 3, 2, 1).sum(), pool_in), 1, runs)))
    rows.append(("avg_pool_fwd_bwd", "torch eager", "ms", median_ms(
        lambda: torch.autograd.grad((torch.nn.functional.avg_pool2d(pool_in, 3, 2, 1) ** 2).sum(), pool_in), 1, runs)))
    qkv = [torch.from_numpy(t).requires_grad_() for t in attention_inputs(np.random.default_rng(0))]
    padding = torch.from_numpy(key_padding())
    for case, causal, mask in (("attention_causal_fwd_bwd", True, None), ("attention_padded_fwd_bwd", False, padding)):
        def attn(causal=causal, mask=mask):
            o = torch.nn.functional.scaled_dot_product_attention(*qkv, attn_mask=mask, is_causal=causal)
            return torch.autograd.grad((o ** 2).sum(), qkv)

        rows.append((case, "torch eager", "ms", median_ms(attn, 1, runs)))
    bn_w, bn_b = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    running_mean, running_var = torch.zeros(64), torch.ones(64)

    def bn():
        y = torch.nn.functional.batch_norm(xg, running_mean, running_var, bn_w, bn_b, training=True)
        return torch.autograd.grad((y ** 2).sum(), (xg, bn_w, bn_b))

    rows.append(("batch_norm_fwd_bwd", "torch eager", "ms", median_ms(bn, 1, runs)))

    def bn_eval():
        with torch.no_grad():
            return torch.nn.functional.batch_norm(xg, running_mean, running_var, bn_w, bn_b, training=False)

    rows.append(("batch_norm_eval_fwd", "torch eager", "ms", median_ms(bn_eval, 1, runs)))
    layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    xs = torch.randn(16, 256, 512)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(256)

    def step():
        y = layer(xs, src_mask=mask, is_causal=True)
        return torch.autograd.grad((y ** 2).mean(), list(layer.parameters()))

    rows.append(("transformer_block_step", "torch eager", "ms", median_ms(step, 1, runs)))
    p = torch.randn(1 << 24).requires_grad_()
    p.grad = torch.randn(1 << 24)
    opt = torch.optim.Adam([p], lr=1e-3)
    rows.append(("adam_update_16M", "torch eager", "ms", median_ms(opt.step, 1, runs)))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sgd.step()  # the first step creates the momentum buffer
    rows.append(("sgd_nesterov_update_16M", "torch eager", "ms", median_ms(sgd.step, 1, runs)))
    logits, labels = ce_inputs(np.random.default_rng(0))
    z, y = torch.from_numpy(logits).requires_grad_(), torch.from_numpy(labels)

    def ce():
        loss = torch.nn.functional.cross_entropy(z, y)
        return loss, torch.autograd.grad(loss, z)

    rows.append(("cross_entropy_32k", "torch eager", "ms", median_ms(ce, 1, runs)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    rows = jax_rows(a.runs) + torch_rows(a.runs)
    with open(a.json, "w") as f:
        json.dump([{"case": c, "system": s, "unit": u, "value": v} for c, s, u, v in rows], f)


if __name__ == "__main__":
    main()
