"""PyTorch (eager, CPU) timings of the benchmark cases, for the table that `examples/bench.rs`
prints. Same cases, shapes and functions as the JAX reference script.

Run: python ci/torch_baseline.py --json out.json   (exits 0 with no rows when torch is absent)
"""
import argparse
import json
import statistics
import time

from timing import median_ms


def per_call_us(fn, calls=1000, loops=5):
    for _ in range(20):
        fn()
    reps = []
    for _ in range(loops):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        reps.append((time.perf_counter() - t) / calls)
    return statistics.median(reps) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.manual_seed(0)
        def layer(i, o):
            return (torch.randn(i, o) / i ** 0.5).requires_grad_(), torch.zeros(o, requires_grad=True)
        params = [layer(784, 512), layer(512, 512), layer(512, 10)]
        x = torch.randn(128, 784)
        y = torch.nn.functional.one_hot(torch.randint(0, 10, (128,)), 10).float()

        def step():
            (w1, b1), (w2, b2), (w3, b3) = params
            h = torch.tanh(x @ w1 + b1)
            h = torch.relu(h @ w2 + b2)
            logp = torch.log_softmax(h @ w3 + b3, dim=-1)
            loss = -(y * logp).sum(-1).mean()
            flat = [t for p in params for t in p]
            return torch.autograd.grad(loss, flat)

        rows.append(("mlp_step_b128", "torch eager", "ms", median_ms(step, 10, 200)))
        xs = torch.arange(4, dtype=torch.float32)
        g = torch.func.grad(lambda x: (torch.sin(x) * x + x ** 2).sum())
        rows.append(("tiny_grad", "torch eager", "us/call", per_call_us(lambda: g(xs))))
        n = 256
        W = torch.randn(n, n) / n ** 0.5
        xv = torch.randn(n)
        f = lambda v: torch.tanh(W @ v)
        rows.append(("jacfwd_256", "torch eager", "ms", median_ms(lambda: torch.func.jacfwd(f)(xv), 10, 300)))
        rows.append(("jacrev_256", "torch eager", "ms", median_ms(lambda: torch.func.jacrev(f)(xv), 10, 300)))
        a = torch.randn(1024, 1024)
        b = torch.randn(1024, 1024)
        rows.append(("matmul_1024", "torch eager", "ms", median_ms(lambda: a @ b, 5, 50)))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    else:
        print("torch is not installed: no PyTorch rows")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([dict(case=c, system=s, unit=u, value=v) for c, s, u, v in rows], fh, indent=1)


if __name__ == "__main__":
    main()
