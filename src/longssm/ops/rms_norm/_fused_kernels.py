"""Numba kernels of the fused CPU RMSNorm; imported lazily by ``fused_cpu.py``.

Glossary (symbol -> code name, shape; one task = a block of ``ROWS`` rows):
    x (input rows)                     x              (rows, D)
    w (weight)                         w              (D,)
    r = 1 / sqrt(mean(x²) + eps)       rstd           (rows,)
    y = w ⊙ x r                        y              (rows, D)
    s = x + res (the fused residual add) s, res         (rows, D)
    x = y ⊙ silu(z) (the fused gate)   y, z           (rows, D)
    ∂L/∂w per task                     dw_part        (n_tasks, D)
    ∂L/∂w (their sum, float64)         dw_sum         (D,)

Sums over a row run in ``LANES`` = 16 interleaved partial sums (lane j takes columns j, j+16, ...),
then ``lane_sum``'s fixed pairwise tree: deterministic, and the inner loop vectorises without
reassociating anything (the only fast-math flag is ``contract``: FMAs).
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
    sum_partials,
    wide_vectors,
)

ROWS = 64  # rows per task


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _row_sum_of_products(p, q, acc):
    """Σ_c p[c] q[c] over one row: 16 interleaved partial sums in acc (a stack row), then the tree."""
    D = p.shape[0]
    full = D - D % LANES
    for j in range(LANES):
        acc[j] = 0
    for c0 in range(0, full, LANES):
        for j in range(LANES):
            acc[j] += p[c0 + j] * q[c0 + j]
    for j in range(D - full):
        acc[j] += p[full + j] * q[full + j]
    return lane_sum(acc)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_task(x, res, w, eps, y, s, rstd, save, r0, r1):
    wide_vectors()
    D = x.shape[1]
    one = x.dtype.type(1)
    acc = stack_array(1, LANES, x.dtype)[0]
    adding = res.shape[0] > 0
    for i in range(r0, r1):
        row, out = x[i], y[i]
        if adding:  # normalise s = x + res, written out for the caller's residual stream
            row = s[i]
            for c in range(D):
                row[c] = x[i, c] + res[i, c]
        r = one / np.sqrt(_row_sum_of_products(row, row, acc) / D + eps)
        if save:
            rstd[i] = r
        for c in range(D):
            out[c] = w[c] * (row[c] * r)


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def rms_norm_forward(x, res, w, eps, y, s, rstd, save):
    """Fill y (rows, D) and, with ``save``, rstd (rows,); parallel over blocks of ROWS rows.
    With res (rows, D) (not a (0, 0) array), the rows normalised are s = x + res, written to s."""
    n_tasks = (x.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        _forward_task(x, res, w, eps, y, s, rstd, save, r0, min(r0 + ROWS, x.shape[0]))


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_task(x, w, rstd, gy, gs, dx, dw, r0, r1):
    """dx rows r0 .. r1-1 and this task's partial sum dw (D,) of ∂L/∂w = Σ_rows g ⊙ x̂.

    With x̂ = x r and gw = g ⊙ w: ∂L/∂x = r (gw − x̂ Σ_c gw_c x̂_c / D), plus gs (rows, D) when
    it is not a (0, 0) array (the gradient reaching x by another path: the residual stream).
    """
    wide_vectors()
    D = x.shape[1]
    acc = stack_array(1, LANES, x.dtype)[0]
    gw = np.empty(D, x.dtype)
    xh = np.empty(D, x.dtype)
    for c in range(D):
        dw[c] = 0
    for i in range(r0, r1):
        row, g, out = x[i], gy[i], dx[i]
        r = rstd[i]
        for c in range(D):
            xh[c] = row[c] * r
            gw[c] = g[c] * w[c]
            dw[c] += g[c] * xh[c]
        k = _row_sum_of_products(gw, xh, acc) / D
        for c in range(D):
            out[c] = r * (gw[c] - xh[c] * k)
        if gs.shape[0] > 0:
            for c in range(D):
                out[c] = gs[i, c] + out[c]


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def rms_norm_backward(x, w, rstd, gy, gs, dx, dw_part, dw_sum):
    """Given gy = ∂L/∂y (rows, D), write dx (rows, D), the per-task partial sums dw_part
    (n_tasks, D) and their sum dw_sum (D,) in float64 (``sum_partials``: tasks in order); gs
    (rows, D), or a (0, 0) array, is added to dx."""
    n_tasks = (x.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        _backward_task(x, w, rstd, gy, gs, dx, dw_part[task], r0, min(r0 + ROWS, x.shape[0]))
    sum_partials(dw_part, dw_sum)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _gate_row(y, z, h):
    """h = y ⊙ silu(z) over one row, silu(z) = z σ(z), σ(z) = 1 / (1 + exp(-z)) (the backward
    recomputes h with the same operations)."""
    one = h.dtype.type(1)
    for c in range(h.shape[0]):
        h[c] = y[c] * (z[c] * (one / (one + fast_exp(-z[c]))))


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _gated_forward_task(yg, z, w, eps, out, rstd, save, r0, r1):
    wide_vectors()
    D = yg.shape[1]
    one = yg.dtype.type(1)
    acc = stack_array(1, LANES, yg.dtype)[0]
    h = np.empty(D, yg.dtype)
    for i in range(r0, r1):
        _gate_row(yg[i], z[i], h)
        r = one / np.sqrt(_row_sum_of_products(h, h, acc) / D + eps)
        if save:
            rstd[i] = r
        row = out[i]
        for c in range(D):
            row[c] = w[c] * (h[c] * r)


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gated_rms_norm_forward(yg, z, w, eps, out, rstd, save):
    """out = RMSNorm(yg ⊙ silu(z)) ⊙ w (rows, D) and, with ``save``, rstd (rows,) of the gated
    rows; parallel over blocks of ROWS rows. The gated rows are not kept (the backward recomputes
    them from yg and z)."""
    n_tasks = (yg.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        _gated_forward_task(yg, z, w, eps, out, rstd, save, r0, min(r0 + ROWS, yg.shape[0]))


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _gated_backward_task(yg, z, w, rstd, g, dy, dz, dw, r0, r1):
    """dy, dz rows r0 .. r1-1 and this task's partial sum dw (D,).

    With σ = sigmoid(z), x = yg z σ, x̂ = x r, gw = g ⊙ w: ∂L/∂x = r (gw − x̂ Σ_c gw_c x̂_c / D)
    (as ``_backward_task``), ∂L/∂yg = ∂L/∂x z σ, ∂L/∂z = ∂L/∂x yg σ (1 + z (1 − σ)).
    """
    wide_vectors()
    D = yg.shape[1]
    one = yg.dtype.type(1)
    acc = stack_array(1, LANES, yg.dtype)[0]
    sig = np.empty(D, yg.dtype)
    gw = np.empty(D, yg.dtype)
    xh = np.empty(D, yg.dtype)
    for c in range(D):
        dw[c] = 0
    for i in range(r0, r1):
        r = rstd[i]
        for c in range(D):
            sig[c] = one / (one + fast_exp(-z[i, c]))
            xh[c] = (yg[i, c] * (z[i, c] * sig[c])) * r
            gw[c] = g[i, c] * w[c]
            dw[c] += g[i, c] * xh[c]
        k = _row_sum_of_products(gw, xh, acc) / D
        for c in range(D):
            gx = r * (gw[c] - xh[c] * k)
            zc, sc = z[i, c], sig[c]
            dy[i, c] = gx * (zc * sc)
            dz[i, c] = gx * yg[i, c] * (sc * (one + zc * (one - sc)))


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def gated_rms_norm_backward(yg, z, w, rstd, g, dy, dz, dw_part, dw_sum):
    """Given g = ∂L/∂out (rows, D), write dy, dz (rows, D), the per-task partial sums dw_part
    (n_tasks, D) and their sum dw_sum (D,) in float64 (``sum_partials``: tasks in order)."""
    n_tasks = (yg.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        _gated_backward_task(
            yg, z, w, rstd, g, dy, dz, dw_part[task], r0, min(r0 + ROWS, yg.shape[0])
        )
    sum_partials(dw_part, dw_sum)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
