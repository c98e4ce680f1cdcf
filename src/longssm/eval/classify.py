"""LongSSM Definition 2.1: does a loss-versus-length curve show length extension?

With lengths L_1 < L_2 < ... < L_n and losses l_i = loss(L_i), and a tolerance ``tol`` (nats)
against evaluation noise, a model has

    strong extension  if some L0 = L_i0 exists with l_{i+1} <  l_i - tol for every i >= i0,
    weak extension    if some L0 exists with          l_{i+1} <= l_i + tol for every i >= i0,
    no extension      if neither L0 exists.

Only a finite curve is observed, so "every L beyond L0" means every measured pair from L0 on, and
at least ``min_pairs`` pairs must lie beyond L0 (otherwise the last point alone would always
qualify). Strong is reported when it holds, else weak, else none. A non-finite loss never
satisfies either condition.

Glossary:
    L0     the smallest length from which the condition holds (None for no extension)
    gap    loss(L_max) - min_L loss(L) >= 0: how far the longest length is above the best one
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from longssm.eval.errors import EvalError

#: Default tolerance in nats per token.
DEFAULT_TOL = 0.005


@dataclass(frozen=True)
class Extension:
    """The verdict on one curve.

    Attributes:
        kind: "strong", "weak" or "none".
        l0: the L0 of ``kind`` (None when kind is "none").
        l0_weak: the smallest L0 for weak extension (None if none exists).
        l0_strong: the smallest L0 for strong extension (None if none exists).
        gap: loss(L_max) - min loss.
        tol: the tolerance used (nats).
        min_pairs: pairs required beyond L0.
    """

    kind: str
    l0: int | None
    l0_weak: int | None
    l0_strong: int | None
    gap: float
    tol: float
    min_pairs: int

    def to_dict(self) -> dict:
        return asdict(self)


def classify_extension(
    lengths: Sequence[int],
    losses: Sequence[float],
    tol: float = DEFAULT_TOL,
    min_pairs: int = 1,
    min_length: int | None = None,
) -> Extension:
    """Classify a loss(L) curve by Definition 2.1 (see the module docstring).

    Args:
        lengths: (n,) evaluation lengths (any order; sorted here).
        losses: (n,) losses in nats per token.
        tol: tolerance >= 0 in nats.
        min_pairs: consecutive pairs that must lie beyond L0 (>= 1).
        min_length: ignore lengths below this (e.g. the training length).

    Returns:
        An ``Extension``.
    """
    if len(lengths) != len(losses):
        raise EvalError(f"got {len(lengths)} lengths but {len(losses)} losses")
    if not tol >= 0:
        raise EvalError(f"tol must be >= 0, got {tol!r}")
    if min_pairs < 1:
        raise EvalError(f"min_pairs must be >= 1, got {min_pairs!r}")
    points = sorted((int(L), float(v)) for L, v in zip(lengths, losses))
    if min_length is not None:
        points = [p for p in points if p[0] >= min_length]
    if len(points) < min_pairs + 1:
        raise EvalError(f"need at least {min_pairs + 1} lengths to classify, got {len(points)}")
    Ls = [p[0] for p in points]
    ls = [p[1] for p in points]

    def strong(a: float, b: float) -> bool:
        return math.isfinite(b) and b < a - tol

    def weak(a: float, b: float) -> bool:
        return math.isfinite(b) and b <= a + tol

    l0_strong = _first_l0(Ls, ls, strong, min_pairs)
    l0_weak = _first_l0(Ls, ls, weak, min_pairs)
    finite = [v for v in ls if math.isfinite(v)]
    gap = ls[-1] - min(finite) if finite and math.isfinite(ls[-1]) else math.inf
    if l0_strong is not None:
        kind, l0 = "strong", l0_strong
    elif l0_weak is not None:
        kind, l0 = "weak", l0_weak
    else:
        kind, l0 = "none", None
    return Extension(kind, l0, l0_weak, l0_strong, gap, float(tol), min_pairs)


def _first_l0(Ls: list[int], ls: list[float], holds, min_pairs: int) -> int | None:
    """The smallest L_i0 such that ``holds(l_i, l_{i+1})`` for every i >= i0, with enough pairs."""
    i0 = len(ls) - 1
    # walk back from the end while the condition keeps holding
    while i0 > 0 and holds(ls[i0 - 1], ls[i0]):
        i0 -= 1
    if len(ls) - 1 - i0 < min_pairs:
        return None
    return Ls[i0]
