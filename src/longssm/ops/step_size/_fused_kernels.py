"""Numba kernels of the fused CPU step sizes Δ = softplus(u Wᵀ + b); imported lazily by
``fused_cpu.py``.

Glossary (symbol -> code name, shape; one task = a block of ``ROWS`` rows):
    u (low-rank step input, rows)      low            (rows, R)
    W (projection), transposed         WT             (R, D)
    b (bias)                           bias           (D,)
    z = u Wᵀ + b (before softplus)     raw            (D,): one row, recomputed in the backward
    Δ = softplus(z)                    out            (rows, D)
    ∂L/∂z = ∂L/∂Δ ⊙ softplus'(z)       gpre           (rows, D)
    ∂L/∂W, ∂L/∂b per task              dWT_part, db_part  (n_tasks, R, D), (n_tasks, D)

Every row is built by streaming passes over its D columns (z = b, then z += u_r W_r for each r):
element-wise loops of constant stride that vectorise, with no sum carried from one column block to
the next (no reassociation: the only fast-math flag is ``contract``: FMAs). The one sum over the
columns, ∂L/∂u = g' W, is left to the caller's matmul: the kernel writes g' = ∂L/∂z.
softplus and its slope come from ``fast_softplus`` and ``softplus_slope`` (``ops/_numba.py``).
"""

from __future__ import annotations

from numba import njit, prange

from longssm.ops._numba import (
    FASTMATH,
    cache_depends_on_primitives,
    fast_softplus,
    softplus_slope,
    wide_vectors,
)

ROWS = 64  # rows per task


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _project_row(u, WT, bias, raw):
    """raw = u Wᵀ + b for one row u (R,): D-column passes, b first, then r = 0 .. R-1 in order."""
    R, D = WT.shape
    for c in range(D):
        raw[c] = bias[c]
    for r in range(R):
        ur = u[r]
        w = WT[r]
        for c in range(D):
            raw[c] += ur * w[c]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_task(low, WT, bias, out, r0, r1):
    wide_vectors()
    D = WT.shape[1]
    for i in range(r0, r1):
        row = out[i]
        _project_row(low[i], WT, bias, row)
        for c in range(D):
            row[c] = fast_softplus(row[c])


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def step_size_forward(low, WT, bias, out):
    """Fill out (rows, D) with softplus(low WT + bias); parallel over blocks of ROWS rows."""
    n_tasks = (low.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        _forward_task(low, WT, bias, out, r0, min(r0 + ROWS, low.shape[0]))


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_task(low, WT, bias, gout, gpre, dWT, db, r0, r1):
    """g' = ∂L/∂Δ ⊙ softplus'(z) for rows r0 .. r1-1 (into gpre) and this task's partial sums
    ∂L/∂W_r = Σ_rows u_r g' (dWT, (R, D)) and ∂L/∂b = Σ_rows g' (db, (D,))."""
    wide_vectors()
    R, D = WT.shape
    for r in range(R):
        for c in range(D):
            dWT[r, c] = 0
    for c in range(D):
        db[c] = 0
    for i in range(r0, r1):
        u, gi, g = low[i], gout[i], gpre[i]
        _project_row(u, WT, bias, g)
        for c in range(D):
            g[c] = gi[c] * softplus_slope(g[c])
        for c in range(D):
            db[c] += g[c]
        for r in range(R):
            ur = u[r]
            dw = dWT[r]
            for c in range(D):
                dw[c] += ur * g[c]


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def step_size_backward(low, WT, bias, gout, gpre, dWT_part, db_part):
    """Given gout = ∂L/∂Δ (rows, D), write gpre = ∂L/∂z (rows, D) (z = u Wᵀ + b, before softplus)
    and the per-task partial sums dWT_part (n_tasks, R, D) and db_part (n_tasks, D), reduced by
    the caller, who also forms ∂L/∂u = gpre W (a matmul)."""
    n_tasks = (low.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        r1 = min(r0 + ROWS, low.shape[0])
        _backward_task(low, WT, bias, gout, gpre, dWT_part[task], db_part[task], r0, r1)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
