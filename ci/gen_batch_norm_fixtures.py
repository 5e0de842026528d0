"""PyTorch reference fixtures for nb::nn::BatchNorm: writes nn/tests/fixtures/batch_norm.json.

Each case runs torch.nn.functional.batch_norm in float64 on a seeded input: one training step
(the output, the running mean and unbiased variance after it, and the gradients of
sum(y * c) with respect to x, the scale and the shift), then evaluation on a second input
with the updated running statistics. Cases: [N, C] features, [N, C, H, W] images, another
momentum and eps, and a batch of two.

Run from the repository root (seconds):
    python3 -m venv /tmp/vt && /tmp/vt/bin/pip install torch numpy
    /tmp/vt/bin/python ci/gen_batch_norm_fixtures.py
"""

import json
import os

import numpy as np
import torch

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nn", "tests", "fixtures",
                        "batch_norm.json")


def tensor_json(t):
    t = t.detach().cpu().numpy()
    return {"shape": list(t.shape), "data": [float(v) for v in t.reshape(-1)]}


def case(name, shape, momentum, eps, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = torch.tensor(rng.normal(0.7, 1.5, shape), dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor(rng.uniform(0.5, 1.5, c), dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(rng.normal(0.0, 0.5, c), dtype=torch.float64, requires_grad=True)
    running_mean = torch.tensor(rng.normal(0.0, 0.3, c), dtype=torch.float64)
    running_var = torch.tensor(rng.uniform(0.5, 2.0, c), dtype=torch.float64)
    weights = torch.tensor(rng.normal(0.0, 1.0, shape), dtype=torch.float64)
    x_eval = torch.tensor(rng.normal(0.0, 1.0, shape), dtype=torch.float64)
    inputs = {
        "x": tensor_json(x), "gamma": tensor_json(gamma), "beta": tensor_json(beta),
        "running_mean": tensor_json(running_mean), "running_var": tensor_json(running_var),
        "weights": tensor_json(weights), "x_eval": tensor_json(x_eval),
    }
    y = torch.nn.functional.batch_norm(x, running_mean, running_var, gamma, beta, training=True,
                                       momentum=momentum, eps=eps)
    (y * weights).sum().backward()
    y_eval = torch.nn.functional.batch_norm(x_eval, running_mean, running_var, gamma, beta,
                                            training=False, eps=eps)
    outputs = {
        "y": tensor_json(y), "new_mean": tensor_json(running_mean), "new_var": tensor_json(running_var),
        "grad_x": tensor_json(x.grad), "grad_gamma": tensor_json(gamma.grad),
        "grad_beta": tensor_json(beta.grad), "y_eval": tensor_json(y_eval),
    }
    return {"name": name, "momentum": momentum, "eps": eps, "inputs": inputs, "outputs": outputs}


def main():
    cases = [
        case("features_6x4", [6, 4], 0.1, 1e-5, 1),
        case("images_4x3x5x5", [4, 3, 5, 5], 0.1, 1e-5, 2),
        case("images_momentum_eps", [3, 2, 4, 3], 0.3, 1e-3, 3),
        case("batch_of_two", [2, 5], 0.1, 1e-5, 4),
    ]
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w") as f:
        json.dump({"torch_version": torch.__version__, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases -> {os.path.normpath(OUT_PATH)} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
