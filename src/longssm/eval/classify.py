"""Does a loss-versus-length curve extend? LongSSM Definition 2.1, decided with paired intervals.

The paper's definition (S. Wang, *On the Length Extension of State-space Models in Language
Modelling*, Definition 2.1), for a model trained at length T with loss(L) at evaluation length L:

    "strong length extension: there exists L0 such that loss(L) is monotonically decreasing for
     L > L0; weak length extension: there exists L0 such that loss(L) is bounded for L > L0;
     no length extension: the model has neither."

Only finitely many lengths are measured, each with noise, so "monotonically decreasing" and
"bounded" must be read from a finite noisy curve. The rule used here, on the lengths L >= L0 =
the first measured length >= ``min_length`` (the training length T; shorter lengths say nothing
about extension) up to L_max, the longest:

    none    some loss is not finite, or L_max is significantly worse than an earlier length
            L0 <= L < L_max: the paired interval of loss(L_max) - loss(L) lies above 0 for some L.
            The m - 1 comparisons are made at the Bonferroni level 1 - (1 - confidence)/(m - 1),
            so a flat noisy curve is called "none" with probability at most 1 - confidence. This
            is "not bounded" as far as a finite curve can show it: the loss at the longest length
            has climbed away from where it was, whatever the last pair does.
    strong  not none, and the total change loss(L_max) - loss(L0) is significantly negative (its
            interval lies below 0): from L0 on the loss goes down overall and never climbs back
            significantly, even when each consecutive step is too small to resolve.
    weak    neither: bounded (no significant rise), but no significant decrease either.

Every verdict carries its evidence: L0; the total change loss(L_max) - loss(L0) with its
interval; the slope of loss against log2 L over the last half of the lengths (nats per doubling of
L) with its interval; and the gap loss(L_max) - min loss with its interval and L_best, the length
of the minimum. Intervals come from paired bootstrap replicates (``longssm.eval.intervals``):
row i of ``replicates`` holds the resampled losses of length i, and every row uses the same
resampled text, so differences of rows are paired. Without replicates every interval shrinks to
its point estimate (the curve is taken as exact).

Glossary:
    L0         the first length >= min_length (the training length T)
    L_best     the length of the lowest loss among L0 ... L_max
    change     loss(L_max) - loss(L0)                  (< 0: the curve went down)
    gap        loss(L_max) - loss(L_best) >= 0          (> 0: L_max is above the best)
    slope      least-squares d loss / d log2 L over the last half of the lengths
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from longssm.eval.errors import EvalError
from longssm.eval.intervals import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    bootstrap_indices,
    percentile_interval,
    record_replicates,
)

KINDS = ("none", "weak", "strong")


@dataclass(frozen=True)
class Extension:
    """The verdict on one curve and its evidence (see the module docstring).

    Attributes:
        kind: "strong", "weak" or "none".
        reason: one sentence saying which condition decided the kind.
        l0, l_max, l_best: L0, the longest length, the length of the lowest loss.
        change, change_low, change_high: loss(L_max) - loss(L0) and its interval.
        gap, gap_low, gap_high: loss(L_max) - loss(L_best) and its interval.
        slope, slope_low, slope_high: nats per doubling of L over the last half of the lengths.
        worse_than: the earlier length L_max is significantly worse than (None if none).
        confidence: the confidence level of the intervals.
        n_lengths: lengths classified (those >= min_length).
    """

    kind: str
    reason: str
    l0: int
    l_max: int
    l_best: int
    change: float
    change_low: float
    change_high: float
    gap: float
    gap_low: float
    gap_high: float
    slope: float
    slope_low: float
    slope_high: float
    worse_than: int | None
    confidence: float
    n_lengths: int

    def to_dict(self) -> dict:
        return asdict(self)


def classify_extension(
    lengths: Sequence[int],
    losses: Sequence[float],
    replicates: np.ndarray | None = None,
    min_length: int | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Extension:
    """Classify a loss(L) curve (see the module docstring for the rule).

    Args:
        lengths: (n,) evaluation lengths (any order; sorted here).
        losses: (n,) losses in nats per token.
        replicates: (n, R) paired bootstrap replicates of the losses, or None (exact curve).
        min_length: only lengths >= min_length count (the training length T).
        confidence: level of every interval, in (0, 1).

    Returns:
        An ``Extension``. Raises ``EvalError`` when fewer than two lengths remain.
    """
    if len(lengths) != len(losses):
        raise EvalError(f"got {len(lengths)} lengths but {len(losses)} losses")
    if not 0 < confidence < 1:
        raise EvalError(f"confidence must lie in (0, 1), got {confidence!r}")
    Ls = np.asarray([int(L) for L in lengths])
    ys = np.asarray(losses, dtype=np.float64)
    reps = ys[:, None] if replicates is None else np.asarray(replicates, dtype=np.float64)
    if reps.ndim != 2 or reps.shape[0] != len(Ls):
        raise EvalError(f"replicates must have shape ({len(Ls)}, R), got {reps.shape}")
    order = np.argsort(Ls, kind="stable")
    keep = order[Ls[order] >= (min_length or 0)]
    if len(keep) < 2:
        below = f" >= {min_length} (the training length)" if min_length else ""
        raise EvalError(
            f"need at least 2 evaluation lengths{below} to classify extension, got {len(keep)}"
        )
    Ls, ys, reps = Ls[keep], ys[keep], reps[keep]
    return _verdict(Ls, ys, reps, confidence)


def _verdict(Ls: np.ndarray, ys: np.ndarray, reps: np.ndarray, confidence: float) -> Extension:
    """The rule of the module docstring on sorted lengths >= L0."""
    m = len(Ls)
    finite = bool(np.isfinite(ys).all())
    best = int(np.nanargmin(np.where(np.isfinite(ys), ys, np.nan))) if np.isfinite(ys).any() else 0
    change = _difference(ys, reps, -1, 0, confidence)
    gap = _difference(ys, reps, -1, best, confidence)
    slope = _slope(Ls, ys, reps, confidence)
    evidence = dict(
        l0=int(Ls[0]), l_max=int(Ls[-1]), l_best=int(Ls[best]),
        change=change[0], change_low=change[1], change_high=change[2],
        gap=gap[0], gap_low=gap[1], gap_high=gap[2],
        slope=slope[0], slope_low=slope[1], slope_high=slope[2],
        confidence=confidence, n_lengths=m,
    )
    if not finite:
        bad = int(Ls[~np.isfinite(ys)][0])
        return Extension("none", f"the loss at L={bad} is not finite", worse_than=None, **evidence)
    # Bonferroni over the m - 1 earlier lengths L_max is compared with
    family = 1 - (1 - confidence) / (m - 1)
    for i in range(m - 1):
        low = _difference(ys, reps, -1, i, family)[1]
        if low > 0:
            reason = (
                f"loss(L_max={Ls[-1]}) is significantly above loss(L={Ls[i]}) "
                f"(paired {family:.1%} interval of the rise starts at {low:+.4f} nats)"
            )
            return Extension("none", reason, worse_than=int(Ls[i]), **evidence)
    if change[2] < 0:
        reason = (
            f"loss fell from L0={Ls[0]} to L_max={Ls[-1]} by {-change[0]:.4f} nats "
            f"(interval {change[1]:+.4f} .. {change[2]:+.4f}) and never rose significantly"
        )
        return Extension("strong", reason, worse_than=None, **evidence)
    reason = (
        f"no significant rise or fall from L0={Ls[0]} to L_max={Ls[-1]} "
        f"(change {change[0]:+.4f}, interval {change[1]:+.4f} .. {change[2]:+.4f} nats)"
    )
    return Extension("weak", reason, worse_than=None, **evidence)


def _difference(ys, reps, a: int, b: int, confidence: float) -> tuple[float, float, float]:
    """loss[a] - loss[b] with its paired interval (a degenerate one without replicates)."""
    point = float(ys[a] - ys[b])
    if not math.isfinite(point):
        return point, point, point
    if reps.shape[1] == 1:
        return point, point, point
    low, high = percentile_interval(reps[a] - reps[b], confidence)
    return point, low, high


def _slope(Ls, ys, reps, confidence: float) -> tuple[float, float, float]:
    """Least-squares slope of loss on log2 L over the last half of the lengths (>= 2 points)."""
    k = max(2, math.ceil(len(Ls) / 2))
    x = np.log2(Ls[-k:].astype(np.float64))
    weights = (x - x.mean()) / ((x - x.mean()) ** 2).sum()  # slope = weights . y
    point = float(weights @ ys[-k:])
    if not math.isfinite(point) or reps.shape[1] == 1:
        return point, point, point
    low, high = percentile_interval(weights @ reps[-k:], confidence)
    return point, low, high


def classify_records(
    records: Sequence[dict],
    min_length: int | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Extension:
    """Classify the records of one protocol, with paired replicates from their block data.

    Records without ``block_nll``/``block_tokens`` (results written before intervals existed) are
    classified as an exact curve.
    """
    rows = sorted(records, key=lambda r: r["length"])
    lengths, losses = [r["length"] for r in rows], [r["loss"] for r in rows]
    replicates = None
    if rows and all(r.get("block_tokens") for r in rows):
        indices = bootstrap_indices(len(rows[0]["block_tokens"]), n_resamples, seed)
        replicates = np.stack([record_replicates(r, indices) for r in rows])
    return classify_extension(lengths, losses, replicates, min_length, confidence)
