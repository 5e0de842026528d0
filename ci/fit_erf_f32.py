#!/usr/bin/env python3
"""Fits the rational approximations behind the CPU's f32 erf and erfc
(core/src/backend/cpu/fast_math.rs) and prints them as the Rust constants written there.

- erf(a) = a P(a^2) / Q(a^2) on [0, 0.84], P and Q of degree 2;
- erfc(a) e^(a^2) = P(a) / Q(a) on [0.84, 10], P of degree 3, Q of degree 4.

Each is a least-squares fit of the relative error, linearised as P - f Q = 0 with Q's constant
term 1, on Chebyshev-spaced points, reweighted by the previous iterate's Q (so that the
linearisation measures f - P/Q) and by Lawson's rule (which drives the fit towards the minimax
one). Prints the largest relative error in exact arithmetic; the Rust tests measure the f32
evaluation. Needs numpy and scipy (`.venv-jax/bin/python ci/fit_erf_f32.py`).
"""
import numpy as np
from scipy.special import erf, erfcx

SPLIT = 0.84
POINTS = 3000


def chebyshev_points(lo, hi):
    k = np.arange(POINTS)
    return lo + (hi - lo) * (0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / POINTS))


def fit(f, basis_p, basis_q, iterations=40):
    """P/Q (coefficients, Q[0] = 1) minimising max |P/Q - f| / |f| over the points."""
    q = np.ones_like(f)
    lawson = np.ones_like(f)
    n_p = basis_p.shape[1]
    for _ in range(iterations):
        a = np.hstack([basis_p, -f[:, None] * basis_q[:, 1:]])
        w = lawson / (np.abs(q) * np.abs(f))
        sol, *_ = np.linalg.lstsq(a * w[:, None], f * w, rcond=None)
        p, qc = sol[:n_p], np.concatenate([[1.0], sol[n_p:]])
        q = basis_q @ qc
        err = np.abs(basis_p @ p / q - f) / np.abs(f)
        lawson = lawson * (err / err.max()) ** 0.3 + 1e-14
        lawson /= lawson.max()
    return p, qc, err.max()


def rust(name, coefficients):
    # The shortest decimal that reads back as the same f32.
    values = ", ".join(np.format_float_positional(np.float32(c), unique=True) for c in coefficients)
    return f"const {name}: [f32; {len(coefficients)}] = [{values}];"


a = chebyshev_points(0.0, SPLIT)
t = a * a
p, q, err = fit(erf(a) / a, np.vander(t, 3, increasing=True), np.vander(t, 3, increasing=True))
print(f"// erf small form: max relative error {err:.2e}")
print(rust("ERF_SMALL_P", p))
print(rust("ERF_SMALL_Q", q))
a = chebyshev_points(SPLIT, 10.0)
p, q, err = fit(erfcx(a), np.vander(a, 4, increasing=True), np.vander(a, 5, increasing=True))
print(f"// erfc tail form: max relative error {err:.2e}")
print(rust("ERFC_TAIL_P", p))
print(rust("ERFC_TAIL_Q", q))
