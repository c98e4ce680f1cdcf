"""Per-position scores, intervals and the per-bin summary.

Accuracy tasks score *positions* (set tasks: every symbol's sigmoid on the correct side of ½;
class tasks: the argmax) and summarise a bin in two units:

- **sequence**: a sequence is right when every scored position is right; k right out of n
  sequences gets the Wilson score interval (Bhattamishra's metric for formal languages).
- **position**: right scored positions / scored positions, pooled over the bin, with a percentile
  bootstrap over sequences (positions of one sequence are not independent). Per-length accuracy of
  a word problem (Merrill et al.) and read accuracy of flip-flop (Liu et al.) are of this kind.

A task names its headline unit (``Task.unit``); both are kept in the record. Tasks scored on
prefixes (``Task.prefix_scored``: the label at position t answers the length-t question) also get
the accuracy at each length k with its Wilson interval.

Regression: nMSE = Σ(ŷ − y)² / Σ y² over the bin, with a percentile bootstrap over sequences.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Z95 = 1.959963984540054
BOOTSTRAP_DRAWS = 1000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def position_scores(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: is each position's prediction right (set: every symbol; class: argmax)."""
    if kind == "set":
        return ((outputs > 0) == (targets > 0.5)).all(-1)
    return outputs.argmax(-1) == targets


def sequence_scores(kind: str, outputs: torch.Tensor, targets: torch.Tensor, score: torch.Tensor):
    """Per-sequence results. Accuracy tasks: (B, 2) with the right and the scored positions of
    each sequence. Regression: (B, 2) with the squared-error sum and the Σ y² of each sequence."""
    if kind in ("set", "class"):
        ok = position_scores(kind, outputs, targets) & score  # (B, L)
        return torch.stack([ok.sum(-1), score.sum(-1)], dim=-1)
    err = ((outputs - targets) ** 2).sum(-1) * score  # (B, L)
    return torch.stack([err.sum(-1), ((targets**2).sum(-1) * score).sum(-1)], dim=-1)


def _ratio_interval(num: np.ndarray, den: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Σnum / Σden with a 95% percentile bootstrap over the rows."""
    n = len(num)
    draws = np.random.default_rng(seed).integers(n, size=(BOOTSTRAP_DRAWS, n))
    boot = num[draws].sum(1) / np.maximum(den[draws].sum(1), 1e-30)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(num.sum() / max(den.sum(), 1e-30)), float(low), float(high)


def per_length(right: np.ndarray, n: int, first: int) -> list[dict]:
    """Accuracy at each length k = first, first + 1, ... from right counts out of n sequences."""
    rows = []
    for i, k_right in enumerate(right.tolist()):
        low, high = wilson(int(k_right), n)
        rows.append({"k": first + i, "value": k_right / max(n, 1), "low": low, "high": high,
                     "right": int(k_right), "n": n})
    return rows


def summarise(kind: str, scores: np.ndarray, seed: int = 0, unit: str = "sequence") -> dict:
    """One bin's value with its 95% interval: accuracy in ``unit`` (both units are kept) or nMSE."""
    n = len(scores)
    if kind == "regression":
        value, low, high = _ratio_interval(scores[:, 0], scores[:, 1], seed)
        return {"metric": "nmse", "value": value, "low": low, "high": high, "n": n}
    right, scored = scores[:, 0].astype(np.int64), scores[:, 1].astype(np.int64)
    k = int(np.sum(right == scored))
    s_low, s_high = wilson(k, n)
    sequence = {"value": k / n, "low": s_low, "high": s_high, "right": k, "n": n}
    p_value, p_low, p_high = _ratio_interval(right.astype(float), scored.astype(float), seed)
    if p_value in (0.0, 1.0):  # the bootstrap collapses to a point: widen to the Wilson interval
        p_low, p_high = min(p_low, s_low), max(p_high, s_high)
    position = {"value": p_value, "low": p_low, "high": p_high, "right": int(right.sum()),
                "n": int(scored.sum())}
    head = sequence if unit == "sequence" else position
    return {"metric": "accuracy", "unit": unit, "value": head["value"], "low": head["low"],
            "high": head["high"], "n": n, "sequence": sequence, "position": position}
