"""Numba kernels of the fused CPU cross-entropy; imported lazily by ``fused_cpu.py``.

Glossary (symbol -> code name, shape; one task = a block of ``ROWS`` rows):
    l (logits)                          logits         (rows, V)
    t (target ids)                      targets        (rows,) int64
    logsumexp_v l_r,v                   lse            (rows,)
    lse_r − l_r,t_r                     loss_rows      (rows,)
    ∂L/∂l                               dlogits        (rows, V)

Per row: the maximum m, Σ_v exp(l_v − m) in ``LANES`` interleaved partial sums then
``lane_sum``'s fixed pairwise tree (deterministic; the loop vectorises without reassociating),
lse = m + log(Σ). The backward writes scale · softmax(l) − scale · onehot(t) in one pass, with
softmax(l) = exp(l − lse) as torch's log-softmax backward forms it (exp of the rounded l − lse).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from longssm.ops._numba import (
    FASTMATH,
    LANES,
    cache_depends_on_primitives,
    fast_exp,
    lane_sum,
    stack_array,
    wide_vectors,
)

ROWS = 64  # rows per task


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_task(logits, targets, lse, loss_rows, r0, r1):
    """lse and the loss of rows r0 .. r1-1: per row the maximum m, e = exp(row − m) (V,),
    Σ e in LANES interleaved partial sums then ``lane_sum``, lse = m + log Σ. The exp pass
    vectorises (the vectorisation guard counts it); the partial maxima and sums, written to
    vectorise the same way, stay scalar in LLVM's hands (cheap beside the exps: the forward
    took 1.07 ms at (2048, 257) with one running maximum and the exp inside the sum loop,
    0.25 ms now)."""
    wide_vectors()
    V = logits.shape[1]
    full = V - V % LANES
    dtype = logits.dtype
    acc = stack_array(1, LANES, dtype)[0]
    e = np.empty(V, dtype)
    for r in range(r0, r1):
        row = logits[r]
        for j in range(LANES):
            acc[j] = row[0]
        for v0 in range(0, full, LANES):  # LANES partial maxima; a NaN is skipped here, and
            for j in range(LANES):  # reaches the sum below
                x = row[np.uint64(v0 + j)]
                acc[j] = x if x > acc[j] else acc[j]
        m = acc[0]
        for j in range(1, LANES):
            m = acc[j] if acc[j] > m else m
        for j in range(V - full):
            m = row[full + j] if row[full + j] > m else m
        for v in range(V):
            e[v] = fast_exp(row[v] - m)
        for j in range(LANES):
            acc[j] = 0
        for v0 in range(0, full, LANES):
            for j in range(LANES):
                acc[j] += e[np.uint64(v0 + j)]
        for j in range(V - full):
            acc[j] += e[full + j]
        lse[r] = m + np.log(lane_sum(acc))
        loss_rows[r] = lse[r] - row[targets[r]]


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def cross_entropy_forward(logits, targets, lse, loss_rows):
    """Fill lse (rows,) and loss_rows (rows,); parallel over blocks of ROWS rows."""
    n_tasks = (logits.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        _forward_task(logits, targets, lse, loss_rows, r0, min(r0 + ROWS, logits.shape[0]))


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_task(logits, targets, lse, scale, dlogits, r0, r1):
    wide_vectors()
    V = logits.shape[1]
    scale = logits.dtype.type(scale)  # rounded to the logits' dtype, as torch's gradient is
    for r in range(r0, r1):
        row, out, m = logits[r], dlogits[r], lse[r]
        for v in range(V):
            out[v] = fast_exp(row[v] - m) * scale
        out[targets[r]] -= scale


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def cross_entropy_backward(logits, targets, lse, scale, dlogits):
    """Write dlogits (rows, V) = scale · (softmax(l) − onehot(t)) (scale = ∂L/∂loss / rows)."""
    n_tasks = (logits.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        _backward_task(logits, targets, lse, scale, dlogits, r0, min(r0 + ROWS, logits.shape[0]))


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
