"""PyTorch reference values for cross_entropy_with's options (ignore_index, label_smoothing,
reduction), which JAX has no single function for: writes
core/tests/fixtures/cross_entropy_options.json, which core/tests/cross_entropy_options.rs loads.

Each case: float64 logits (classes on the last axis; PyTorch's class axis is 1, so logits of
rank 3 are permuted for it), integer labels or probability labels, the options, PyTorch's loss,
and the gradient of sum(loss * weight) in the logits (weight: ones for a scalar loss, fixed
values per example for reduction "none").

Run from the repository root (seconds):
    python3 -m venv .venv-jax && .venv-jax/bin/pip install torch numpy
    .venv-jax/bin/python ci/gen_cross_entropy_fixtures.py
"""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F


def case(name, logits, labels, ignore_index, smoothing, reduction):
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    probabilities = labels.dtype.kind == "f"
    y = torch.tensor(labels, dtype=torch.float64 if probabilities else torch.int64)
    if x.dim() == 3:
        xt, yt = x.permute(0, 2, 1), (y.permute(0, 2, 1) if probabilities else y)
    else:
        xt, yt = x, y
    kwargs = {"label_smoothing": smoothing, "reduction": reduction}
    if ignore_index is not None:
        kwargs["ignore_index"] = ignore_index
    loss = F.cross_entropy(xt, yt, **kwargs)
    if reduction == "none":
        if x.dim() == 3 and probabilities:
            loss = loss  # [N, L] already
        weight = torch.arange(1, loss.numel() + 1, dtype=torch.float64).reshape(loss.shape) / 4.0
    else:
        weight = torch.ones((), dtype=torch.float64)
    (grad,) = torch.autograd.grad((loss * weight).sum(), x)
    return {
        "name": name,
        "logits": {"shape": list(x.shape), "data": x.detach().flatten().tolist()},
        "labels": {
            "shape": list(labels.shape),
            "dtype": "f64" if probabilities else "i64",
            "data": labels.flatten().tolist(),
        },
        "ignore_index": ignore_index,
        "label_smoothing": smoothing,
        "reduction": reduction,
        "loss": {"shape": list(loss.shape), "data": [v if np.isfinite(v) else None for v in loss.detach().flatten().tolist()]},
        "weight": weight.flatten().tolist(),
        "grad": [v if np.isfinite(v) else None for v in grad.flatten().tolist()],
    }


def main():
    rng = np.random.default_rng(12)
    x2 = rng.standard_normal((6, 5)) * 2.0
    y2 = np.array([0, 4, -100, 2, 1, -100], dtype=np.int64)
    x3 = rng.standard_normal((2, 3, 4)) * 2.0
    y3 = np.array([[3, -100, 0], [1, 2, -100]], dtype=np.int64)
    p2 = rng.random((6, 5))
    p2 = p2 / p2.sum(-1, keepdims=True)
    cases = [
        case("ignore_mean", x2, y2, -100, 0.0, "mean"),
        case("ignore_smooth_mean", x2, y2, -100, 0.1, "mean"),
        case("ignore_smooth_sum", x2, y2, -100, 0.25, "sum"),
        case("ignore_smooth_none", x2, y2, -100, 0.1, "none"),
        case("smooth_mean", x2, np.array([0, 4, 3, 2, 1, 0], dtype=np.int64), None, 0.3, "mean"),
        case("plain_none", x2, np.array([0, 4, 3, 2, 1, 0], dtype=np.int64), None, 0.0, "none"),
        case("rank3_ignore_smooth_mean", x3, y3, -100, 0.1, "mean"),
        case("ignore_other_index", x2, np.array([0, 4, 3, 2, 3, 3], dtype=np.int64), 3, 0.0, "mean"),
        case("all_ignored_mean_is_nan", x2, np.full(6, -100, dtype=np.int64), -100, 0.0, "mean"),
        case("probabilities_smooth_mean", x2, p2, None, 0.2, "mean"),
        case("probabilities_none", x2, p2, None, 0.0, "none"),
    ]
    out = os.path.join("core", "tests", "fixtures", "cross_entropy_options.json")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"generator": "ci/gen_cross_entropy_fixtures.py", "torch": torch.__version__, "cases": cases}, f, indent=1)
    os.replace(tmp, out)
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
