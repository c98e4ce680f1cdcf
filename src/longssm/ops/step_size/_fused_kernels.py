"""Numba kernels of the fused CPU step sizes Δ = softplus(u Wᵀ + b); imported lazily by
``fused_cpu.py``.

Glossary (symbol -> code name, shape; one task = a block of ``ROWS`` rows):
    u (low-rank step input, rows)      low            (rows, R)
    W (projection), transposed         WT             (R, D)
    b (bias)                           bias           (D,)
    z = u Wᵀ + b (before softplus)     raw            (D,): one row, recomputed in the backward
    Δ = softplus(z)                    out            (rows, D)
    ∂L/∂z = ∂L/∂Δ ⊙ softplus'(z)       g              (D,): one row, a task's buffer
    ∂L/∂u = ∂L/∂z W                    dlow           (rows, R)
    ∂L/∂W, ∂L/∂b per task              dWT_part, db_part  (n_tasks, R, D), (n_tasks, D)

Every row is built by streaming passes over its D columns (z = b, then z += u_r W_r for each r):
element-wise loops of constant stride that vectorise, with no sum carried from one column block to
the next (no reassociation: the only fast-math flag is ``contract``: FMAs). The one sum over the
columns, ∂L/∂u = g' W, is LLVM vector IR (``_project_back``: 16-lane partial sums by fused
multiply-adds, then a fixed tree; numba's loop for it stayed scalar). softplus and its slope come
from ``fast_softplus`` and ``softplus_slope`` (``ops/_numba.py``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils
from numba.extending import intrinsic

from longssm.ops._numba import (
    FASTMATH,
    LANES,
    cache_depends_on_primitives,
    fast_softplus,
    lane_intrinsic,
    softplus_slope,
    sum_partials,
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


@intrinsic
def _project_back(typingctx, g, WT, out):
    """out[r] = Σ_c g[c] W[r, c] for every r: g (D,), WT (R, D), out (R,), C-contiguous, of one
    dtype; as LLVM vector IR.

    For each r, lane j of a 16-lane accumulator takes the columns c = j, j + 16, ... below the
    last full block of 16, in order, by fused multiply-adds (g[c] W[r, c] + acc, one rounding);
    the lanes are then summed by ``_tree_sum``'s fixed tree (four rows at a time by ``sum4``: same
    bits), and the columns past the last full block are added one by one, in order, as rounded
    products. Rows go four at a time (four accumulators: the chains of multiply-adds overlap), the
    rest one by one. A fixed order: deterministic, and independent of the thread count.
    """

    def emit(builder, vec, structs, values):
        g_a, w_a, out_a = structs
        i64 = ir.IntType(64)
        n_rows, n_cols = cgutils.unpack_tuple(builder, w_a.shape)
        full = builder.udiv(n_cols, i64(LANES))  # full blocks of 16 columns
        tail_start = builder.mul(full, i64(LANES))

        def lane_partials(r0, count):
            """The 16-lane accumulators of rows r0 .. r0 + count - 1 over the full blocks."""
            slots = [cgutils.alloca_once_value(builder, vec.zero) for _ in range(count)]
            with cgutils.for_range(builder, full) as loop:
                c0 = builder.mul(loop.index, i64(LANES))
                gv = vec.load(g_a.data, c0)
                for k, slot in enumerate(slots):
                    row = builder.mul(builder.add(r0, i64(k)), n_cols)
                    wv = vec.load(w_a.data, builder.add(row, c0))
                    builder.store(vec.fma(gv, wv, builder.load(slot)), slot)
            return [builder.load(slot) for slot in slots]

        def add_tail(r, total):
            """total + Σ_c g[c] W[r, c] over the columns past the full blocks, in order."""
            slot = cgutils.alloca_once_value(builder, total)
            row = builder.mul(r, n_cols)
            with cgutils.for_range(builder, builder.sub(n_cols, tail_start)) as loop:
                c = builder.add(tail_start, loop.index)
                gc = builder.load(builder.gep(g_a.data, [c]))
                wc = builder.load(builder.gep(w_a.data, [builder.add(row, c)]))
                builder.store(builder.fadd(builder.load(slot), builder.fmul(gc, wc)), slot)
            builder.store(builder.load(slot), builder.gep(out_a.data, [r]))

        fours = builder.udiv(n_rows, i64(4))
        with cgutils.for_range(builder, fours) as loop:
            r0 = builder.mul(loop.index, i64(4))
            sums = vec.sum4(lane_partials(r0, 4))  # a 4-lane vector
            for k in range(4):
                total = builder.extract_element(sums, ir.IntType(32)(k))
                add_tail(builder.add(r0, i64(k)), total)
        with cgutils.for_range(builder, builder.sub(n_rows, builder.mul(fours, i64(4)))) as loop:
            r = builder.add(builder.mul(fours, i64(4)), loop.index)
            add_tail(r, vec.sum(lane_partials(r, 1)[0]))

    return lane_intrinsic((g, WT, out), (1, 2, 1), emit)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_task(low, WT, bias, gout, dlow, dWT, db, r0, r1):
    """∂L/∂u = g' W for rows r0 .. r1-1 (into dlow), g' = ∂L/∂Δ ⊙ softplus'(z) (a row buffer),
    and this task's partial sums ∂L/∂W_r = Σ_rows u_r g' (dWT, (R, D)) and ∂L/∂b = Σ_rows g'
    (db, (D,))."""
    wide_vectors()
    R, D = WT.shape
    for r in range(R):
        for c in range(D):
            dWT[r, c] = 0
    for c in range(D):
        db[c] = 0
    g = np.empty(D, WT.dtype)  # g' of one row
    for i in range(r0, r1):
        u, gi = low[i], gout[i]
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
        _project_back(g, WT, dlow[i])


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def step_size_backward(low, WT, bias, gout, dlow, dWT_part, db_part, dWT_sum, db_sum):
    """Given gout = ∂L/∂Δ (rows, D), write dlow = ∂L/∂u (rows, R), the per-task partial sums
    dWT_part (n_tasks, R, D) and db_part (n_tasks, D) of ∂L/∂Wᵀ and ∂L/∂b, and their sums over
    the tasks in float64, dWT_sum (R * D,) and db_sum (D,) (``sum_partials``: a fixed order)."""
    n_tasks = (low.shape[0] + ROWS - 1) // ROWS
    for task in prange(n_tasks):
        r0 = task * ROWS
        r1 = min(r0 + ROWS, low.shape[0])
        _backward_task(low, WT, bias, gout, dlow, dWT_part[task], db_part[task], r0, r1)
    sum_partials(dWT_part.reshape((n_tasks, dWT_sum.shape[0])), dWT_sum)
    sum_partials(db_part, db_sum)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
