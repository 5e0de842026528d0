"""PyTorch's side of ci/gpu-check's benchmark: the cases of cuda/examples/gpu_bench.rs on the
same GPU, one JSON line each (median milliseconds, synchronised around every call)."""
import json
import time

import torch


def median_ms(fn, warm, runs):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[runs // 2]


def row(case, ms):
    print(json.dumps({"case": case, "system": "torch eager", "ms": round(ms, 5)}))


def main():
    dev = torch.device("cuda:0")
    torch.manual_seed(0)

    def layer(i, o):
        w = (torch.randn(i, o, device=dev) / i ** 0.5).requires_grad_()
        return w, torch.zeros(o, device=dev, requires_grad=True)

    params = [layer(784, 512), layer(512, 512), layer(512, 10)]
    flat = [t for p in params for t in p]
    for batch in (128, 4096):
        x = torch.randn(batch, 784, device=dev)
        labels = torch.tensor([(i * 7) % 10 for i in range(batch)], device=dev)
        y = torch.nn.functional.one_hot(labels, 10).float()

        def step():
            (w1, b1), (w2, b2), (w3, b3) = params
            h = torch.tanh(x @ w1 + b1)
            h = torch.relu(h @ w2 + b2)
            logp = torch.log_softmax(h @ w3 + b3, dim=-1)
            loss = -(y * logp).sum(-1).mean()
            return loss, torch.autograd.grad(loss, flat)

        row(f"mlp_step_b{batch}", median_ms(step, 5, 50))
    n = 1 << 28
    a = torch.ones(n, device=dev)
    b = torch.full((n,), 2.0, device=dev)
    row("add_2^28", median_ms(lambda: a + b, 3, 20))
    row("neg_2^28", median_ms(lambda: -a, 3, 20))
    row("copy_2^28", median_ms(lambda: a.clone(), 3, 20))
    # PyTorch's default matmul precision in f32 is full f32 (no TF32), as ours.
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        x = torch.randn(8192, 8192, device=dev).to(dtype)
        w = torch.randn(8192, 8192, device=dev).to(dtype)
        row(f"matmul_8192_{name}", median_ms(lambda: x @ w, 2, 10))
    q, k, v = (torch.randn(16, 8, 1024, 64, device=dev).requires_grad_() for _ in range(3))

    def attention_step():
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        loss = (y ** 2).mean()
        return loss, torch.autograd.grad(loss, (q, k, v))

    row("attention_causal_16x8x1024x64", median_ms(attention_step, 2, 10))
    with torch.no_grad():
        forward_ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), 2, 10)
    print(json.dumps({"case": "attention_causal_16x8x1024x64", "system": "torch forward", "ms": round(forward_ms, 5)}))
    x = torch.randn(32, 64, 56, 56, device=dev).requires_grad_()
    gamma = (1.0 + torch.randn(64, device=dev)).requires_grad_()
    beta = torch.randn(64, device=dev).requires_grad_()
    w = torch.randn(32, 64, 56, 56, device=dev)

    def batch_norm_step():
        y = torch.nn.functional.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)
        loss = (y * w).sum()
        return loss, torch.autograd.grad(loss, (x, gamma, beta))

    row("batch_norm_32x64x56x56", median_ms(batch_norm_step, 3, 20))
    pool_in = torch.randn(32, 64, 112, 112, device=dev).requires_grad_()
    F = torch.nn.functional
    row("max_pool_32x64x112x112", median_ms(
        lambda: torch.autograd.grad(F.max_pool2d(pool_in, 3, 2, 1).sum(), pool_in), 3, 20))
    row("avg_pool_32x64x112x112", median_ms(
        lambda: torch.autograd.grad((F.avg_pool2d(pool_in, 3, 2, 1) ** 2).sum(), pool_in), 3, 20))


if __name__ == "__main__":
    main()
