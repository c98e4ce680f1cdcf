"""Path-signature regression (Cirone et al., *Theoretical Foundations of Deep Selective SSMs*).

A random path in R^d is given by its increments dX_s ~ N(0, σ² I), σ = 0.2 (the model's input at
step s). The label at step t is one signature term of the piecewise-linear path X_0..X_t:

- ``area`` (d = 2): S^{12}_t = ∫∫_{u<v≤t} dX¹_u dX²_v
  = Σ_{s<u≤t} a_s b_u + ½ Σ_{u≤t} a_u b_u                (a = dX¹, b = dX²)
- ``sig3`` (d = 3): S^{123}_t = ∫∫∫ dX¹ dX² dX³
  = Σ_{s<u<v} a_s b_u c_v + ½ Σ_{s<v} a_s b_v c_v + ½ Σ_{s<v} a_s b_s c_v + ⅙ Σ_v a_v b_v c_v

The generator evaluates them in O(n) by Chen's identity (appending one linear segment with
increments (a, b, c) adds S^{12}·c + S^{1}·bc/2 + abc/6 to S^{123}, and S^{1}·b + ab/2 to S^{12});
the tests compare with the direct double and triple sums.
"""

from __future__ import annotations

import numpy as np

SIGMA = 0.2


def area(dx: np.ndarray) -> np.ndarray:
    """dx (B, n, 2) increments -> (B, n) S^{12} at every step."""
    a, b = dx[..., 0], dx[..., 1]
    x1_before = np.cumsum(a, axis=1) - a  # (B, n): X¹_{u-1} - X¹_0
    return np.cumsum((x1_before + 0.5 * a) * b, axis=1)


def level3(dx: np.ndarray) -> np.ndarray:
    """dx (B, n, 3) increments -> (B, n) S^{123} at every step (Chen's identity, one segment at
    a time)."""
    a, b, c = dx[..., 0], dx[..., 1], dx[..., 2]
    s1_before = np.cumsum(a, axis=1) - a  # (B, n) S^1 before segment v
    s12 = area(dx[..., :2])  # (B, n) S^{12} after segment v
    s12_before = s12 - (s1_before * b + 0.5 * a * b)
    return np.cumsum(s12_before * c + s1_before * b * c / 2 + a * b * c / 6, axis=1)


def sample(kind: str, batch: int, n: int, rng: np.random.Generator):
    """(inputs (B, n, d) float32 increments, targets (B, n, 1) float32)."""
    d = 2 if kind == "area" else 3
    dx = rng.normal(0.0, SIGMA, size=(batch, n, d))
    y = area(dx) if kind == "area" else level3(dx)
    return dx.astype(np.float32), y[..., None].astype(np.float32)
