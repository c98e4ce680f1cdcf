"""Numba kernels of the fused CPU causal depthwise convolution; imported lazily by ``fused_cpu.py``.

Importing this module imports numba (about a second); nothing is compiled until a kernel is first
called with a given dtype (float32 or float64), and ``cache=True`` keeps the machine code on disk.

Glossary (symbol -> code name, shape; one task = one batch row b and a block of ``ROWS`` steps):
    u_t (input)                        x              (batch, T, C)
    w_k (taps, transposed)             wT             (K, C)
    b (bias; zeros when absent)        bias           (C,)
    u_{2-K} .. u_0 (history, transposed)  hist        (batch, K-1, C)
    v_t (pre-activation), y_t          y              (batch, T, C)
    g_t = ∂L/∂v_t                      g              (ROWS + K-1, C) per task
    ∂L/∂w, ∂L/∂b per task              dw_part, db_part  (n_tasks, K, C), (n_tasks, C)

Layout: channels are the innermost (contiguous) axis of every array, so each inner loop runs over
the C channels of one time row, element-wise, with unit stride: LLVM vectorises it without
reassociating any sum (the only fast-math flag is ``contract``: FMAs). A row at time s < 0 is a
history row (``_row``). The SiLU and its derivative use ``fast_exp`` (vectorisable); the backward
recomputes v_t (K FMAs per element) instead of storing it. ``error_model="numpy"``: a Python-style
division (the SiLU's) checks for a zero divisor, a branch that keeps the loop scalar.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from longssm.ops._numba import (
    FASTMATH,
    cache_depends_on_primitives,
    fast_exp,
    sum_partials,
    wide_vectors,
)

ROWS = 32  # time steps per task


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _row(x, hist, b, s):
    """Input row u_s (C,): x[b, s] for s >= 0, the history's row K-1+s before the segment."""
    if s >= 0:
        return x[b, s]
    return hist[b, hist.shape[1] + s]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _preact(x, wT, bias, hist, b, t, v):
    """v (C,) = b + Σ_k w_k ⊙ u_{t-K+1+k}."""
    wide_vectors()
    K, C = wT.shape
    for c in range(C):
        v[c] = bias[c]
    for k in range(K):
        src = _row(x, hist, b, t - K + 1 + k)
        w = wT[k]
        for c in range(C):
            v[c] += w[c] * src[c]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_task(x, wT, bias, hist, y, silu, b, t0, t1):
    C = x.shape[2]
    one = x.dtype.type(1)
    v = np.empty(C, x.dtype)
    for t in range(t0, t1):
        _preact(x, wT, bias, hist, b, t, v)
        out = y[b, t]
        if silu:
            for c in range(C):
                out[c] = v[c] / (one + fast_exp(-v[c]))
        else:
            for c in range(C):
                out[c] = v[c]


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def conv_forward(x, wT, bias, hist, y, silu):
    """Fill y (batch, T, C) with act(v_t); parallel over (batch row, block of ROWS steps)."""
    wide_vectors()
    n_batch, T = x.shape[0], x.shape[1]
    n_chunks = (T + ROWS - 1) // ROWS
    for task in prange(n_batch * n_chunks):
        b = task // n_chunks
        t0 = (task % n_chunks) * ROWS
        _forward_task(x, wT, bias, hist, y, silu, b, t0, min(t0 + ROWS, T))


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _grad_rows(x, wT, bias, hist, gy, silu, b, t0, n, g):
    """g[r] = ∂L/∂v_{t0+r} for r < n: gy, times silu'(v) = σ(v) (1 + v (1 − σ(v))) with ``silu``."""
    wide_vectors()
    C = x.shape[2]
    one = x.dtype.type(1)
    v = np.empty(C, x.dtype)
    for r in range(n):
        src = gy[b, t0 + r]
        out = g[r]
        if silu:
            _preact(x, wT, bias, hist, b, t0 + r, v)
            for c in range(C):
                sig = one / (one + fast_exp(-v[c]))
                out[c] = src[c] * (sig * (one + v[c] * (one - sig)))
        else:
            for c in range(C):
                out[c] = src[c]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_task(x, wT, bias, hist, gy, silu, dx, dhist, dw, db, b, t0, t1):
    """Gradients of one task: dx rows t0 .. t1-1, its partial sums dw (K, C), db (C,), and dhist
    (batch row b) when t0 = 0."""
    wide_vectors()
    T, C = x.shape[1], x.shape[2]
    K = wT.shape[0]
    # g_{t0} .. g_{t1+K-2}: dx_t needs g_t .. g_{t+K-1}
    n = min(t1 + K - 1, T) - t0
    g = np.empty((t1 - t0 + K - 1, C), x.dtype)
    _grad_rows(x, wT, bias, hist, gy, silu, b, t0, n, g)
    for k in range(K):
        dw[k, :] = 0
    db[:] = 0
    for t in range(t0, t1):
        gt = g[t - t0]
        for c in range(C):
            db[c] += gt[c]
        for k in range(K):
            src = _row(x, hist, b, t - K + 1 + k)
            acc = dw[k]
            for c in range(C):
                acc[c] += gt[c] * src[c]
        # ∂L/∂u_t = Σ_k w_k ⊙ g_{t+K-1-k}, over the steps that exist
        out = dx[b, t]
        out[:] = 0
        for k in range(K):
            s = t + K - 1 - k
            if s < T:
                w, gs = wT[k], g[s - t0]
                for c in range(C):
                    out[c] += w[c] * gs[c]
    if t0 == 0:
        # ∂L/∂u_m of the history row m - (K-1) (m < K-1) = Σ_{k <= m} w_k ⊙ g_{m-k}
        for m in range(K - 1):
            out = dhist[b, m]
            out[:] = 0
            for k in range(m + 1):
                if m - k < n:
                    w, gs = wT[k], g[m - k]
                    for c in range(C):
                        out[c] += w[c] * gs[c]


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def conv_backward(x, wT, bias, hist, gy, silu, dx, dhist, dw_part, db_part, dw_sum, db_sum):
    """Given gy = ∂L/∂y (batch, T, C), write dx (batch, T, C), dhist (batch, K-1, C), the
    per-task partial sums dw_part (n_tasks, K, C), db_part (n_tasks, C) and their sums over the
    tasks in float64, dw_sum (K * C,) and db_sum (C,) (``sum_partials``: a fixed order)."""
    n_batch, T = x.shape[0], x.shape[1]
    n_chunks = (T + ROWS - 1) // ROWS
    for task in prange(n_batch * n_chunks):
        b = task // n_chunks
        t0 = (task % n_chunks) * ROWS
        _backward_task(
            x,
            wT,
            bias,
            hist,
            gy,
            silu,
            dx,
            dhist,
            dw_part[task],
            db_part[task],
            b,
            t0,
            min(t0 + ROWS, T),
        )
    n_tasks = dw_part.shape[0]
    sum_partials(dw_part.reshape((n_tasks, dw_sum.shape[0])), dw_sum)
    sum_partials(db_part, db_sum)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
