"""95% intervals for losses measured on correlated text: a paired block bootstrap.

Method. The target tokens scored at every length L of one evaluation lie in one span of the test
stream, ``[start + 1, start + 1 + n_tokens)`` (``longssm.eval.windows``). That span is cut into
``n_blocks`` contiguous text blocks of equal size, the same blocks for every L and protocol, and an
evaluation keeps, per (protocol, L), the summed loss and the token count of each block
(``block_nll``, ``block_tokens``). A bootstrap replicate draws ``n_blocks`` blocks with replacement
and takes the token-weighted mean loss over them, sum(nll) / sum(tokens). Because every record is
resampled with the **same** block draws (one index matrix from ``seed``), replicates of two lengths
are paired: the replicate of a difference loss(L2) - loss(L1) is the difference of their replicates,
so text that is hard at every L (most of the variance) cancels. Intervals are the percentile
intervals of the replicates (``DEFAULT_RESAMPLES`` = 2000 draws, ``DEFAULT_BLOCKS`` = 32 blocks).

Why blocks: neighbouring tokens' losses are correlated (a hard paragraph is hard throughout), so
resampling single tokens would give intervals far too narrow; a block of n_tokens / 32 tokens
(256 tokens for the quick demo) is long against that correlation and leaves enough blocks to
resample. What the interval covers: the sampling variability of the test text, for this trained
model. It does not cover training randomness (another seed gives another model); compare seeds for
that.

Glossary:
    block_nll     (n_blocks,) summed loss in nats of the targets of each block
    block_tokens  (n_blocks,) targets scored in each block (0 where a length scored none there)
    replicates    (R,) bootstrap replicates of a mean loss, R = n_resamples
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from longssm.eval.errors import EvalError

DEFAULT_BLOCKS = 32
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


def block_grid(start: int, n_tokens: int, n_blocks: int = DEFAULT_BLOCKS) -> tuple[int, int, int]:
    """(first target position, block size, number of blocks) of an evaluation's scored span."""
    if n_tokens < 1 or n_blocks < 1:
        raise EvalError(f"need n_tokens >= 1 and n_blocks >= 1, got {n_tokens}, {n_blocks}")
    n_blocks = min(n_blocks, n_tokens)
    size = math.ceil(n_tokens / n_blocks)
    return start + 1, size, math.ceil(n_tokens / size)


def block_of(positions: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """Block index of absolute target positions (positions past the span go to the last block)."""
    first, size, n_blocks = grid
    return np.clip((positions - first) // size, 0, n_blocks - 1)


def bootstrap_indices(n_blocks: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_blocks) block indices drawn with replacement; the same for every record."""
    return np.random.default_rng(seed).integers(0, n_blocks, size=(n_resamples, n_blocks))


def replicates(block_nll: Sequence[float], block_tokens: Sequence[int], indices: np.ndarray) -> np.ndarray:
    """(R,) token-weighted mean loss of each resample: sum(nll[idx]) / sum(tokens[idx])."""
    nll = np.asarray(block_nll, dtype=np.float64)
    count = np.asarray(block_tokens, dtype=np.float64)
    totals = count[indices].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # a resample that drew only empty blocks has no mean: it is left out (nan)
        return np.where(totals > 0, nll[indices].sum(axis=1) / np.maximum(totals, 1), np.nan)


def percentile_interval(values: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of finite replicates; (nan, nan) if none."""
    if not 0 < confidence < 1:
        raise EvalError(f"confidence must lie in (0, 1), got {confidence!r}")
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all() or np.isinf(values).any():
        bad = math.inf if np.isinf(values).any() else math.nan
        return bad, bad
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def record_replicates(record: dict, indices: np.ndarray) -> np.ndarray:
    """(R,) replicates of one record's loss; a non-finite loss gives non-finite replicates."""
    if not math.isfinite(record["loss"]):
        return np.full(indices.shape[0], record["loss"], dtype=np.float64)
    return replicates(record["block_nll"], record["block_tokens"], indices)


def add_intervals(
    records: list[dict],
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[dict]:
    """Fill ``loss_low``/``loss_high`` and the paired change from the previous length.

    Per protocol, lengths ascending, each record gets ``delta_prev`` = loss(L) - loss(L_prev) with
    its paired interval ``delta_prev_low``/``delta_prev_high`` (None for the shortest length).
    Records without block data (older results) get no interval fields. Returns ``records``.
    """
    with_blocks = [r for r in records if r.get("block_tokens")]
    if not with_blocks:
        return records
    n_blocks = len(with_blocks[0]["block_tokens"])
    indices = bootstrap_indices(n_blocks, n_resamples, seed)
    by_protocol: dict[str, list[dict]] = {}
    for r in with_blocks:
        by_protocol.setdefault(r["protocol"], []).append(r)
    for rows in by_protocol.values():
        rows.sort(key=lambda r: r["length"])
        previous = None
        for r in rows:
            reps = record_replicates(r, indices)
            r["loss_low"], r["loss_high"] = percentile_interval(reps, confidence)
            r["delta_prev"] = r["delta_prev_low"] = r["delta_prev_high"] = None
            if previous is not None:
                prev_r, prev_reps = previous
                r["delta_prev"] = r["loss"] - prev_r["loss"]
                r["delta_prev_low"], r["delta_prev_high"] = percentile_interval(
                    reps - prev_reps, confidence
                )
            previous = (r, reps)
    return records


def half_width(record: dict) -> float | None:
    """Half the width of a record's loss interval (None without one)."""
    if record.get("loss_low") is None or record.get("loss_high") is None:
        return None
    return (record["loss_high"] - record["loss_low"]) / 2
