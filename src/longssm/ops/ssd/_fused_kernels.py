"""Numba kernels of the fused CPU SSD scan (Mamba-2); imported lazily by ``fused_cpu.py``.

Importing this module imports numba (about a second); nothing is compiled until a kernel is first
called with a given dtype (float32 or float64), and ``cache=True`` keeps the machine code on disk.

Glossary (paper symbol -> code name, shape; one task = one batch row b, one head hh and one block
of ``LANES`` headdim channels p0 .. p0+LANES-1):
    x_t (input, heads flattened)        x, y, dx      (batch, T, nheads * headdim)
    Δ_t (step size, one per head)       dt            (batch, T, nheads)
    a_h (scalar decay rate)             A             (nheads,)
    B_t, C_t (shared per group)         Bm, Cm        (batch, T, ngroups, d_state)
    D_h (skip)                          Dv            (nheads,)
    h_t (state of one block)            h, hbuf[s]    (d_state, LANES): lanes = headdim channels
    h at steps 0, K, 2K, ...            ckpt          (batch, ceil(T / K), nheads, d_state, headdim)
    ∂L/∂h_t (adjoint state)             lam           (d_state, LANES)
    K (checkpoint interval)             CHECKPOINT

Per step, e_t = exp(Δ_t a_h) is one scalar for the whole task and u_t = Δ_t x_t one row:
    h_t[n, j] = e_t h_{t-1}[n, j] + u_t[j] B_t[n];   y_t[j] = Σ_n C_t[n] h_t[n, j] + D_h x_t[j].
Channels past headdim in the last block are zero lanes (x = 0: the state, the adjoint and every
product stay zero there). Lane loops have a constant trip count (LANES) and sums over the lanes
use ``lane_sum`` / ``lane_dot`` (a fixed pairwise tree), so no sum is reassociated by the
compiler and every result is independent of the thread count.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils
from numba.extending import intrinsic

from longssm.ops._numba import (
    CHECKPOINT,
    FASTMATH,
    LANES,
    PREFETCH,
    cache_depends_on_primitives,
    fast_exp,
    lane_dot,
    lane_intrinsic,
    lane_sum,
    prefetch,
    stack_array,
    wide_vectors,
)

# Rows of the forward's per-lane work array (on the stack): x_t, Δ_t x_t, Σ_n C_t,n h_t,n.
_F_X, _F_U, _F_ACC, _F_ROWS = range(4)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_task(x, dt, A, Bm, Cm, Dv, h0, y, hT, ckpt, save, b, hh, blk):
    """Scan batch row b, head hh, headdim channels blk * LANES .. + LANES - 1 over all T steps."""
    wide_vectors()
    T = x.shape[1]
    n_heads, P = hT.shape[1], hT.shape[2]
    G, N = Bm.shape[2], Bm.shape[3]
    g = hh // (n_heads // G)
    p0 = blk * LANES
    c0 = hh * P + p0  # column of channel p0 in the flattened (heads, headdim) axis
    w = min(LANES, P - p0)
    dtype = x.dtype
    a = A[hh]
    dd = Dv[hh]
    h = np.zeros((N, LANES), dtype)  # (N, lanes)
    rows = stack_array(_F_ROWS, LANES, dtype)
    xs, u, acc = rows[_F_X], rows[_F_U], rows[_F_ACC]
    if h0.shape[0] > 0:  # else h_0 = 0 (h is zero-filled): the caller passes a (0, 0, 0, 0) array
        for n in range(N):
            for j in range(w):
                h[n, j] = h0[b, hh, np.uint64(p0 + j), n]
    for t in range(T):
        if save and t % CHECKPOINT == 0:
            k = t // CHECKPOINT
            for n in range(N):
                for j in range(w):
                    ckpt[b, k, hh, n, np.uint64(p0 + j)] = h[n, j]
        ahead = min(t + PREFETCH, T - 1)
        prefetch(x, b, ahead, c0)
        prefetch(y, b, ahead, c0)
        d = dt[b, t, hh]
        e = fast_exp(d * a)
        for j in range(w):
            xs[j] = x[b, t, np.uint64(c0 + j)]
        for j in range(LANES):
            u[j] = d * xs[j]
        _advance(h, h, u, Bm[b, t, g], Cm[b, t, g], acc, e)  # h_t; Σ_n C_t,n h_t,n
        for j in range(w):
            y[b, t, np.uint64(c0 + j)] = acc[j] + dd * xs[j]
    for n in range(N):
        for j in range(w):
            hT[b, hh, np.uint64(p0 + j), n] = h[n, j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def ssd_forward(x, dt, A, Bm, Cm, Dv, h0, y, hT, ckpt, save):
    """Fill y (batch, T, nheads * headdim) and hT (batch, nheads, headdim, d_state); with
    ``save``, also ckpt (batch, ceil(T / K), nheads, d_state, headdim). h0 is (batch, nheads,
    headdim, d_state), or a (0, 0, 0, 0) array for h_0 = 0. Parallel over the flattened
    (batch row, head, channel block) index."""
    n_batch, n_heads, P = hT.shape[0], hT.shape[1], hT.shape[2]
    n_blocks = (P + LANES - 1) // LANES
    per_row = n_heads * n_blocks
    for task in prange(n_batch * per_row):
        b = task // per_row
        hh = (task % per_row) // n_blocks
        blk = task % n_blocks
        _forward_task(x, dt, A, Bm, Cm, Dv, h0, y, hT, ckpt, save, b, hh, blk)


# Rows of the backward's per-lane work array v (_ROWS, LANES): x_t, ∂L/∂y_t,
# u_t = Δ_t x_t, Σ_n lam B_t,n (∂L/∂u_t), Σ_n lam h_{t-1,n} (lanes of ∂L/∂e_t) and the running
# Σ_t ∂L/∂y x of the current checkpoint block (for ∂L/∂D).
_X, _GY, _U, _GU, _GE, _DD, _ROWS = range(7)


@intrinsic
def _advance(typingctx, hs0, hs1, u, brow, crow, acc, e):
    """One step of a block's state, as LLVM vector IR: for n = 0 .. N-1 (16-lane rows)
        hs1[n] = e hs0[n] + u B_n     (u B_n rounded, then one fused multiply-add)
        acc = Σ_n C_n hs1[n]          (one fused multiply-add per n, in order, 0 + first)
    hs0, hs1 (N, LANES) (may be the same array), u, acc (LANES,), brow, crow (N,); e a scalar.
    Written as IR because numba's loops over the lanes were left scalar here (16 scalar
    multiply-adds per n: LLVM's vectoriser did not take them), and the sum over n stays in a
    register."""
    if e != getattr(hs0, "dtype", None):  # a scalar of the arrays' dtype
        return None

    def emit(builder, vec, structs, values):
        h0_a, h1_a, u_a, b_a, c_a, acc_a = structs
        i64 = ir.IntType(64)
        ev = vec.splat(values[0])
        uv = vec.load(u_a.data, i64(0))
        acc_slot = cgutils.alloca_once_value(builder, vec.zero)
        n_state = cgutils.unpack_tuple(builder, h0_a.shape)[0]
        with cgutils.for_range(builder, n_state) as loop:
            n = loop.index
            row = builder.mul(n, i64(LANES))
            bn = vec.splat(builder.load(builder.gep(b_a.data, [n])))
            cn = vec.splat(builder.load(builder.gep(c_a.data, [n])))
            hv = vec.fma(ev, vec.load(h0_a.data, row), builder.fmul(uv, bn))
            vec.store(hv, h1_a.data, row)
            builder.store(vec.fma(cn, hv, builder.load(acc_slot)), acc_slot)
        vec.store(builder.load(acc_slot), acc_a.data, i64(0))

    return lane_intrinsic((hs0, hs1, u, brow, crow, acc), (2, 2, 1, 1, 1, 1), emit, extra=(e,))


@intrinsic
def _reverse(typingctx, lam, hs0, hs1, v, brow, crow, dbrow, dcrow, e):
    """One reverse step of a block over every state index n, as LLVM vector IR (16-lane rows):
        l = lam[n] + gy C_n                      (∂L/∂h_t,n: fused multiply-add)
        dcrow[n] += Σ_j gy hs1[n];  dbrow[n] += Σ_j l u   (products rounded, ``lane_sum``'s tree)
        gu = Σ_n l B_n;  ge = Σ_n l hs0[n]       (in order over n, in registers)
        lam[n] = e l                              (∂L/∂h_{t-1})
    lam, hs0, hs1 (N, LANES): λ, h_{t-1}, h_t; v (_ROWS, LANES): rows _GY, _U read, _GU, _GE
    written; brow, crow (N,): B_t, C_t; dbrow, dcrow (N,): added to; e = exp(Δ_t a) a scalar."""
    if e != getattr(lam, "dtype", None):  # a scalar of the arrays' dtype
        return None

    def emit(builder, vec, structs, values):
        lam_a, h0_a, h1_a, v_a, b_a, c_a, db_a, dc_a = structs
        i64 = ir.IntType(64)
        ev = vec.splat(values[0])
        gy = vec.load(v_a.data, i64(_GY * LANES))
        u = vec.load(v_a.data, i64(_U * LANES))
        gu_slot = cgutils.alloca_once_value(builder, vec.zero)
        ge_slot = cgutils.alloca_once_value(builder, vec.zero)

        def state(n):
            """The update of state index n; returns the products of ∂L/∂C_t,n and ∂L/∂B_t,n."""
            row = builder.mul(n, i64(LANES))
            bn = vec.splat(builder.load(builder.gep(b_a.data, [n])))
            cn = vec.splat(builder.load(builder.gep(c_a.data, [n])))
            lv = vec.fma(gy, cn, vec.load(lam_a.data, row))
            builder.store(vec.fma(lv, bn, builder.load(gu_slot)), gu_slot)
            builder.store(vec.fma(lv, vec.load(h0_a.data, row), builder.load(ge_slot)), ge_slot)
            vec.store(builder.fmul(ev, lv), lam_a.data, row)
            return vec.product(gy, vec.load(h1_a.data, row)), vec.product(lv, u)

        n_state = cgutils.unpack_tuple(builder, lam_a.shape)[0]
        vec.lane_sums_into(n_state, state, dc_a.data, db_a.data)
        vec.store(builder.load(gu_slot), v_a.data, i64(_GU * LANES))
        vec.store(builder.load(ge_slot), v_a.data, i64(_GE * LANES))

    return lane_intrinsic(
        (lam, hs0, hs1, v, brow, crow, dbrow, dcrow), (2, 2, 2, 2, 1, 1, 1, 1), emit, extra=(e,)
    )


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_task(x, dt, A, Bm, Cm, Dv, ckpt, gy, gh, dx, parts, dh0, b, hh, blk, part):
    """Reverse-time scan of batch row b, head hh, channel block blk; states recomputed from the
    checkpoints, K steps at a time. Adds this block's ∂L/∂B_t, ∂L/∂C_t (summed over its lanes)
    to dB_part, dC_part[b, part, t, g]; writes its lanes of dx, its ∂L/∂Δ_t partial
    ddt_part[b, blk, t, hh] and its ∂L/∂a, ∂L/∂D partials dA_part, dD_part[b, hh, blk]."""
    wide_vectors()
    dB_part, dC_part, ddt_part, dA_part, dD_part = parts
    T = x.shape[1]
    n_heads = dt.shape[2]
    G, N = Bm.shape[2], Bm.shape[3]
    P = ckpt.shape[4]
    g = hh // (n_heads // G)
    p0 = blk * LANES
    c0 = hh * P + p0
    w = min(LANES, P - p0)
    dtype = x.dtype
    a = A[hh]
    dd = Dv[hh]
    lam = np.zeros((N, LANES), dtype)  # ∂L/∂h_t of the block's lanes
    # h_{t0-1} .. h_{t0+K-1} of one checkpoint block; every entry read is written first, except
    # the lanes past w of row 0, zeroed here once (they stay zero).
    hbuf = np.empty((CHECKPOINT + 1, N, LANES), dtype)
    hbuf[0] = 0
    ebuf = np.empty(CHECKPOINT, dtype)  # e_t of one block
    # On the heap, not the stack: with ``stack_array`` here the stores of dA_part and dD_part
    # after the time loop were dropped by the compiler (numba 0.68; not understood).
    v = np.zeros((_ROWS, LANES), dtype)
    dA_acc = 0.0  # float64
    dD_acc = 0.0
    if gh.shape[0] > 0:  # else ∂L/∂h_T = 0 (lam is zero-filled): a (0, 0, 0, 0) array
        for n in range(N):
            for j in range(w):
                lam[n, j] = gh[b, hh, np.uint64(p0 + j), n]
    for k in range(ckpt.shape[1] - 1, -1, -1):
        t0 = k * CHECKPOINT
        steps = min(CHECKPOINT, T - t0)
        for n in range(N):
            for j in range(w):
                hbuf[0, n, j] = ckpt[b, k, hh, n, np.uint64(p0 + j)]
        for s in range(steps):  # recompute h_{t0} .. h_{t0+steps-1}
            t = t0 + s
            if t0 > 0:
                prefetch(x, b, t - CHECKPOINT, c0)
            d = dt[b, t, hh]
            e = fast_exp(d * A[hh])
            ebuf[s] = e
            for j in range(w):
                v[_X, j] = x[b, t, np.uint64(c0 + j)]
            for j in range(LANES):
                v[_U, j] = d * v[_X, j]
            _advance(hbuf[s], hbuf[s + 1], v[_U], Bm[b, t, g], Cm[b, t, g], v[_GU], e)
        for s in range(steps - 1, -1, -1):
            t = t0 + s
            prefetch(gy, b, max(t - 1, 0), c0)
            prefetch(dx, b, max(t - 1, 0), c0)
            d = dt[b, t, hh]
            e = ebuf[s]
            for j in range(w):
                v[_X, j] = x[b, t, np.uint64(c0 + j)]
                v[_GY, j] = gy[b, t, np.uint64(c0 + j)]
            for j in range(LANES):
                v[_U, j] = d * v[_X, j]
                v[_DD, j] += v[_GY, j] * v[_X, j]
            # Over n (``_reverse``): lam = λ + ∂L/∂y_t C_t,n is ∂L/∂h_t (the carried part plus
            # y_t's); ∂L/∂C_t,n = Σ_j ∂L/∂y h_t,n, ∂L/∂B_t,n = Σ_j lam u; ∂L/∂u = Σ_n lam B_t,n,
            # ∂L/∂e_t = Σ_n,j lam h_{t-1}; then λ = e_t lam = ∂L/∂h_{t-1}.
            _reverse(
                lam, hbuf[s], hbuf[s + 1], v, Bm[b, t, g], Cm[b, t, g], dB_part[b, part, t, g],
                dC_part[b, part, t, g], e,
            )  # fmt: skip
            ge = lane_sum(v[_GE])  # ∂L/∂e_t from this block's lanes
            # ∂L/∂Δ_t = Σ_j x ∂L/∂u + ∂L/∂e_t e_t a; ∂L/∂a += ∂L/∂e_t e_t Δ_t
            ddt_part[b, blk, t, hh] = lane_dot(v[_X], v[_GU]) + ge * e * a
            dA_acc += np.float64(ge * e * d)
            for j in range(w):
                dx[b, t, np.uint64(c0 + j)] = d * v[_GU, j] + dd * v[_GY, j]
        dD_acc += np.float64(lane_sum(v[_DD]))  # summed per block in the compute dtype
        for j in range(LANES):
            v[_DD, j] = 0
    dA_part[b, hh, blk] = dA_acc
    dD_part[b, hh, blk] = dD_acc
    if dh0.shape[0] > 0:  # a (0, 0, 0, 0) dh0: no gradient wanted for h_0
        for n in range(N):
            for j in range(w):
                dh0[b, hh, np.uint64(p0 + j), n] = lam[n, j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def ssd_backward(x, dt, A, Bm, Cm, Dv, ckpt, gy, gh, dx, parts, dh0):
    """Gradients of the scan given gy = ∂L/∂y (batch, T, nheads * headdim) and gh = ∂L/∂h_T
    (batch, nheads, headdim, d_state), or a (0, 0, 0, 0) array for ∂L/∂h_T = 0.

    Writes dx in full and dh0 (batch, nheads, headdim, d_state) unless it is a (0, 0, 0, 0) array.
    ``parts`` = (dB_part, dC_part, ddt_part, dA_part, dD_part): per-task partial sums the caller
    reduces in a fixed order: dB_part, dC_part (batch, n_parts, T, ngroups, d_state), zero-filled
    by the caller; ddt_part (batch, n_blocks, T, nheads); dA_part, dD_part (batch, nheads,
    n_blocks) in float64. A task is one batch row, one group and one part of the group's
    (head, channel block) units (n_parts of them, a function of the shapes only); it runs its
    units in order, adding their ∂L/∂B, ∂L/∂C into its part's rows.
    """
    n_batch, n_heads = x.shape[0], dt.shape[2]
    G = Bm.shape[2]
    P = ckpt.shape[4]
    n_blocks = (P + LANES - 1) // LANES
    heads_per_group = n_heads // G
    units = heads_per_group * n_blocks
    n_parts = parts[0].shape[1]
    per_part = (units + n_parts - 1) // n_parts
    for task in prange(n_batch * G * n_parts):
        b = task // (G * n_parts)
        g = (task % (G * n_parts)) // n_parts
        part = task % n_parts
        for unit in range(part * per_part, min((part + 1) * per_part, units)):
            hh = g * heads_per_group + unit // n_blocks
            blk = unit % n_blocks
            _backward_task(x, dt, A, Bm, Cm, Dv, ckpt, gy, gh, dx, parts, dh0, b, hh, blk, part)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
