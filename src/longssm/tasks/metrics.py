"""Per-sequence scores, intervals and the per-bin summary.

Accuracy: a sequence is right when every scored position is right (set tasks: every symbol's
sigmoid on the correct side of ½; class tasks: the argmax). k right out of n sequences gets the
Wilson score interval. Regression: nMSE = Σ(ŷ − y)² / Σ y² over the bin, with a percentile
bootstrap over sequences (1,000 draws).
"""

from __future__ import annotations

import math

import numpy as np
import torch

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sequence_scores(kind: str, outputs: torch.Tensor, targets: torch.Tensor, score: torch.Tensor):
    """Per-sequence results. Accuracy tasks: (B,) bool right/wrong. Regression: (B, 2) with the
    squared-error sum and the Σ y² of each sequence."""
    if kind == "set":
        ok = ((outputs > 0) == (targets > 0.5)).all(-1) | ~score  # (B, L)
        return ok.all(-1)
    if kind == "class":
        ok = (outputs.argmax(-1) == targets) | ~score  # (B, L)
        return ok.all(-1)
    err = ((outputs - targets) ** 2).sum(-1) * score  # (B, L)
    return torch.stack([err.sum(-1), ((targets**2).sum(-1) * score).sum(-1)], dim=-1)


def summarise(kind: str, scores: np.ndarray, seed: int = 0) -> dict:
    """One bin's value with its 95% interval: accuracy (Wilson) or nMSE (bootstrap)."""
    n = len(scores)
    if kind != "regression":
        k = int(np.sum(scores))
        low, high = wilson(k, n)
        return {"metric": "accuracy", "value": k / n, "low": low, "high": high, "n": n, "right": k}
    err, ref = scores[:, 0], scores[:, 1]
    rng = np.random.default_rng(seed)
    draws = rng.integers(n, size=(1000, n))
    boot = err[draws].sum(1) / np.maximum(ref[draws].sum(1), 1e-30)
    low, high = np.percentile(boot, [2.5, 97.5])
    value = float(err.sum() / max(ref.sum(), 1e-30))
    return {"metric": "nmse", "value": value, "low": float(low), "high": float(high), "n": n}
