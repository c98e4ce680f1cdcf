"""Numba kernels of the fused CPU Longhorn recurrence; imported lazily by ``fused_cpu.py``.

The design is the fused Mamba-1 kernel's (``ops/selective_scan/_fused_kernels.py``; both take
``lane_vector_ops``, ``prefetch`` and the constants from ``ops/_numba.py``): one task per (batch
row, block of ``LANES`` = 16 channels), the block's state held as a small (d_state, LANES) array,
states checkpointed every ``CHECKPOINT`` = 32 steps for the backward, per-task partial sums of the
parameters shared across channels (∂L/∂D summed at the kernel's end); the state update (``_advance``, shared by
the forward and the backward's recomputation) and the reverse step (``_reverse``) over n are LLVM
vector IR (session 8: numba's lane loops compiled to 256-bit and scalar code here). The only
differences: the decay exp(Δ A) becomes 1 - ε k² (no exp), the input Δ x B becomes ε x k, C
becomes q.

Glossary (paper symbol -> code name, shape; one task = one batch row b and one channel block):
    x_t, ε_t (input, step)             x, eps         (batch, T, d_inner)
    k_t, q_t (key, query)              k, q           (batch, T, d_state)
    D (skip)                           Dv             (d_inner,)
    S_t (state of one channel block)   h              (d_state, LANES)
    S at steps 0, K, 2K, ...           ckpt           (batch, ceil(T / K), d_state, d_inner)
    ∂L/∂S_t (adjoint state)            st[:, _LAM]    (d_state, LANES)
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
    lane_intrinsic,
    prefetch,
    stack_array,
    sum_partials,
    wide_vectors,
)

__all__ = ["CHECKPOINT", "LANES", "longhorn_backward", "longhorn_forward"]


# Rows of the forward's per-lane work array (on the stack: see ``ops._numba.stack_array``): D, x_t,
# ε_t, ε_t x_t and the running Σ_n q_n S_n of one step.
_F_D, _F_X, _F_EP, _F_U, _F_ACC, _F_ROWS = range(6)


@intrinsic
def _advance(typingctx, hs0, hs1, es, u, krow, qrow, acc):
    """One step of a block's state, as LLVM vector IR: for n = 0 .. N-1 (16-lane rows)
        hs1[n] = (1 - ε k_n²) hs0[n] + u k_n   (1 - ε k_n² and u k_n rounded, then one fused
                                                multiply-add)
        acc = Σ_n q_n hs1[n]                   (one fused multiply-add per n, in order, 0 + first)
    hs0, hs1 (N, LANES) (the same array in the forward; rows s, s + 1 of the backward's
    recomputation, which passes a scratch row as acc: the same states, bit for bit); es (ε),
    u (ε x), acc (LANES,); krow, qrow (N,). Written as IR because numba's loop over the lanes
    compiled to 256-bit and scalar code here (forward 8.3 -> 2.5 ms at (64, 32, 256, 16), one
    thread), and the sum over n stays in a register."""

    def emit(builder, vec, structs, values):
        h0_a, h_a, e_a, u_a, k_a, q_a, acc_a = structs
        i64 = ir.IntType(64)
        ev = vec.load(e_a.data, i64(0))
        uv = vec.load(u_a.data, i64(0))
        one = vec.splat(ir.Constant(vec.scalar, 1.0))
        acc_slot = cgutils.alloca_once_value(builder, vec.zero)
        n_state = cgutils.unpack_tuple(builder, h_a.shape)[0]
        with cgutils.for_range(builder, n_state) as loop:
            n = loop.index
            row = builder.mul(n, i64(LANES))
            kn = builder.load(builder.gep(k_a.data, [n]))
            kv = vec.splat(kn)
            kk = vec.splat(builder.fmul(kn, kn))
            decay = builder.fsub(one, builder.fmul(ev, kk))
            hv = vec.fma(decay, vec.load(h0_a.data, row), builder.fmul(uv, kv))
            vec.store(hv, h_a.data, row)
            qv = vec.splat(builder.load(builder.gep(q_a.data, [n])))
            builder.store(vec.fma(qv, hv, builder.load(acc_slot)), acc_slot)
        vec.store(builder.load(acc_slot), acc_a.data, i64(0))

    return lane_intrinsic((hs0, hs1, es, u, krow, qrow, acc), (2, 2, 1, 1, 1, 1, 1), emit)


@njit(cache=True, fastmath=FASTMATH)
def _forward_task(x, eps, k, q, Dv, h0, y, hT, ckpt, save, b, d0):
    """Scan batch row b, channels d0 .. d0+LANES-1, over all T steps."""
    wide_vectors()
    T, n_inner = x.shape[1], x.shape[2]
    N = k.shape[2]
    w = min(LANES, n_inner - d0)
    dtype = x.dtype
    h = np.zeros((N, LANES), dtype)  # (N, lanes)
    rows = stack_array(_F_ROWS, LANES, dtype)  # the per-lane rows of one step, on the stack
    dv, xs, es, u, acc = rows[_F_D], rows[_F_X], rows[_F_EP], rows[_F_U], rows[_F_ACC]
    if h0.shape[0] > 0:  # else S_0 = 0 (h is zero-filled): the caller passes a (0, 0, 0) array
        for n in range(N):
            for j in range(w):
                h[n, j] = h0[b, np.uint64(d0 + j), n]
    for j in range(w):
        dv[j] = Dv[np.uint64(d0 + j)]
    for t in range(T):
        if save and t % CHECKPOINT == 0:
            c = t // CHECKPOINT
            for n in range(N):
                for j in range(w):
                    ckpt[b, c, n, np.uint64(d0 + j)] = h[n, j]
        ahead = min(t + PREFETCH, T - 1)
        prefetch(x, b, ahead, d0)
        prefetch(eps, b, ahead, d0)
        prefetch(y, b, ahead, d0)
        for j in range(w):
            xs[j] = x[b, t, np.uint64(d0 + j)]
            es[j] = eps[b, t, np.uint64(d0 + j)]
        for j in range(LANES):
            u[j] = es[j] * xs[j]
        _advance(h, h, es, u, k[b, t], q[b, t], acc)  # S_t; Σ_n q_t,n S_t,n
        for j in range(w):
            y[b, t, np.uint64(d0 + j)] = acc[j] + xs[j] * dv[j]
    for n in range(N):
        for j in range(w):
            hT[b, np.uint64(d0 + j), n] = h[n, j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def longhorn_forward(x, eps, k, q, Dv, h0, y, hT, ckpt, save):
    """Fill y (batch, T, d_inner) and hT (batch, d_inner, d_state); with ``save``, also ckpt."""
    n_batch, n_inner = x.shape[0], x.shape[2]
    n_blocks = (n_inner + LANES - 1) // LANES
    for task in prange(n_batch * n_blocks):
        b = task // n_blocks
        _forward_task(x, eps, k, q, Dv, h0, y, hT, ckpt, save, b, (task % n_blocks) * LANES)


# Rows of the backward's per-lane work arrays. v (_ROWS, LANES), one time step: x, ε, ∂L/∂y, ε x,
# Σ_n λ k_n, Σ_n ∂L/∂a_n k_n², the running Σ_t ∂L/∂y x (for dD). st (N, _ST_ROWS, LANES): λ (the
# reverse step, ``_reverse``, sums dk and dq over the lanes in registers).
_X, _EP, _GY, _U, _GU, _GE, _DD, _ROWS = range(8)
_LAM, _ST_ROWS = range(2)


@intrinsic
def _reverse(typingctx, st, hs0, hs1, v, krow, qrow, dkrow, dqrow):
    """One reverse-time step over every state index n of a block, as LLVM vector IR (16-lane
    rows; the formulas of the numba loop it replaces, each product rounded unless fused below):
        lam = λ_n + gy q_n                      (fused multiply-add: ∂L/∂S_t,n)
        da = lam S_{t-1,n}                      (∂L/∂a, a = 1 - ε k_n²)
        dq_n += Σ_j gy S_t,n;  dk_n += Σ_j (lam u - 2 k_n (da ε))   (``lane_sums_into``)
        Σ_n lam k_n -> v[_GU];  Σ_n da k_n² -> v[_GE]   (in order over n, in registers)
        λ_n = (1 - ε k_n²) lam
    st (N, _ST_ROWS, LANES): rows _LAM read and written; hs0, hs1 (N, LANES): S_{t-1}, S_t;
    v (_ROWS, LANES): rows _EP, _GY, _U read, _GU, _GE written; krow, qrow (N,): k_t, q_t; dkrow,
    dqrow (N,): added to."""

    def emit(builder, vec, structs, values):
        st_a, h0_a, h1_a, v_a, k_a, q_a, dk_a, dq_a = structs
        i64 = ir.IntType(64)
        ep = vec.load(v_a.data, i64(_EP * LANES))
        gy = vec.load(v_a.data, i64(_GY * LANES))
        u = vec.load(v_a.data, i64(_U * LANES))
        one = vec.splat(ir.Constant(vec.scalar, 1.0))
        two = ir.Constant(vec.scalar, 2.0)
        gu_slot = cgutils.alloca_once_value(builder, vec.zero)
        ge_slot = cgutils.alloca_once_value(builder, vec.zero)

        def state(n):
            """The update of state index n; returns the lane products of ∂L/∂q_n, ∂L/∂k_n."""
            row = builder.mul(n, i64(LANES))
            lam_at = builder.mul(n, i64(_ST_ROWS * LANES))  # st[n, _LAM]
            kn = builder.load(builder.gep(k_a.data, [n]))
            kv, kk = vec.splat(kn), vec.splat(builder.fmul(kn, kn))
            qv = vec.splat(builder.load(builder.gep(q_a.data, [n])))
            lam = vec.fma(gy, qv, vec.load(st_a.data, lam_at))
            da = builder.fmul(lam, vec.load(h0_a.data, row))
            pk = builder.fsub(
                builder.fmul(lam, u),
                builder.fmul(vec.splat(builder.fmul(two, kn)), builder.fmul(da, ep)),
            )
            builder.store(vec.fma(lam, kv, builder.load(gu_slot)), gu_slot)
            builder.store(vec.fma(da, kk, builder.load(ge_slot)), ge_slot)
            decay = builder.fsub(one, builder.fmul(ep, kk))
            vec.store(builder.fmul(decay, lam), st_a.data, lam_at)
            return vec.product(gy, vec.load(h1_a.data, row)), pk

        n_state = cgutils.unpack_tuple(builder, h0_a.shape)[0]
        vec.lane_sums_into(n_state, state, dq_a.data, dk_a.data)
        vec.store(builder.load(gu_slot), v_a.data, i64(_GU * LANES))
        vec.store(builder.load(ge_slot), v_a.data, i64(_GE * LANES))

    return lane_intrinsic(
        (st, hs0, hs1, v, krow, qrow, dkrow, dqrow), (3, 2, 2, 2, 1, 1, 1, 1), emit
    )


@njit(cache=True, fastmath=FASTMATH)
def _backward_task(
    x, eps, k, q, Dv, ckpt, gy, gh, dx, deps, dk_part, dq_part, dD_part, dh0, b, blk, grp
):
    """Reverse-time scan of channel block blk of batch row b; states recomputed from the
    checkpoints, K steps at a time. Adds this block's ∂L/∂k, ∂L/∂q to dk_part, dq_part[b, grp]."""
    wide_vectors()
    T, n_inner = x.shape[1], x.shape[2]
    N = k.shape[2]
    d0 = blk * LANES
    w = min(LANES, n_inner - d0)
    dtype = x.dtype
    dv = np.zeros(LANES, dtype)
    st = np.zeros((N, _ST_ROWS, LANES), dtype)
    dD_acc = np.zeros(LANES, np.float64)
    # S_{t0-1} .. S_{t0+K-1} of one block. Not zero-filled (a memset of 34 KB per task,
    # 1024 tasks per call at (64, 32, 256, 16), took a fifth of the backward): every entry read is
    # written first, except the lanes past w of row 0, zeroed here once (they stay zero).
    hbuf = np.empty((CHECKPOINT + 1, N, LANES), dtype)
    hbuf[0] = 0
    v = stack_array(_ROWS, LANES, dtype)  # on the stack: see ``stack_array``
    if gh.shape[0] > 0:  # else ∂L/∂S_T = 0 (st is zero-filled): a (0, 0, 0) array
        for n in range(N):
            for j in range(w):
                st[n, _LAM, j] = gh[b, np.uint64(d0 + j), n]
    for j in range(w):
        dv[j] = Dv[np.uint64(d0 + j)]
    for c in range(ckpt.shape[1] - 1, -1, -1):
        t0 = c * CHECKPOINT
        steps = min(CHECKPOINT, T - t0)
        for n in range(N):
            for j in range(w):
                hbuf[0, n, j] = ckpt[b, c, n, np.uint64(d0 + j)]
        for s in range(steps):
            prefetch(gy, b, t0 + s, d0)
            prefetch(dx, b, t0 + s, d0)
            prefetch(deps, b, t0 + s, d0)
            if t0 > 0:
                prefetch(x, b, t0 - CHECKPOINT + s, d0)
                prefetch(eps, b, t0 - CHECKPOINT + s, d0)
            for j in range(w):
                v[_X, j] = x[b, t0 + s, np.uint64(d0 + j)]
                v[_EP, j] = eps[b, t0 + s, np.uint64(d0 + j)]
            for j in range(LANES):
                v[_U, j] = v[_EP, j] * v[_X, j]
            # S_{t0+s} (the forward's arithmetic: the same bits); v[_GU] is scratch here
            _advance(hbuf[s], hbuf[s + 1], v[_EP], v[_U], k[b, t0 + s], q[b, t0 + s], v[_GU])
        for s in range(steps - 1, -1, -1):
            t = t0 + s
            for j in range(w):
                v[_X, j] = x[b, t, np.uint64(d0 + j)]
                v[_EP, j] = eps[b, t, np.uint64(d0 + j)]
                v[_GY, j] = gy[b, t, np.uint64(d0 + j)]
            for j in range(LANES):
                v[_U, j] = v[_EP, j] * v[_X, j]
                v[_DD, j] += v[_GY, j] * v[_X, j]
            # Over n (``_reverse``): lam = λ + ∂L/∂y q_t,n becomes ∂L/∂S_t (the carried part plus
            # y_t's); ∂L/∂a = lam S_{t-1} (a = 1 - ε k², the decay); ∂L/∂k_n per lane: input path
            # lam ε x, decay path -2 k_n ε ∂L/∂a; ∂L/∂q_n = Σ_j ∂L/∂y S_t; then λ = a lam.
            _reverse(st, hbuf[s], hbuf[s + 1], v, k[b, t], q[b, t], dk_part[b, grp, t],
                     dq_part[b, grp, t])  # fmt: skip
            for j in range(w):
                # u = ε x: ∂L/∂x = ε Σ_n lam k_n + D ∂L/∂y, ∂L/∂ε = x Σ_n lam k_n - Σ_n ∂L/∂a k_n².
                dx[b, t, np.uint64(d0 + j)] = v[_GU, j] * v[_EP, j] + v[_GY, j] * dv[j]
                deps[b, t, np.uint64(d0 + j)] = v[_GU, j] * v[_X, j] - v[_GE, j]
        # dD: summed over the block's steps in the compute dtype, over blocks in float64.
        for j in range(LANES):
            dD_acc[j] += v[_DD, j]
            v[_DD, j] = 0
    if dh0.shape[0] > 0:  # a (0, 0, 0) dh0: S_0 was zero, not an input (no gradient wanted)
        for n in range(N):
            for j in range(w):
                dh0[b, np.uint64(d0 + j), n] = st[n, _LAM, j]
    for j in range(w):
        dD_part[b, np.uint64(d0 + j)] = dD_acc[j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def longhorn_backward(
    x, eps, k, q, Dv, ckpt, gy, gh, dx, deps, dk_part, dq_part, dD_part, dD_sum, dh0
):
    """Gradients given gy = ∂L/∂y (batch, T, d_inner) and gh = ∂L/∂S_T (or a (0, 0, 0) array: 0).

    Writes dx, deps (batch, T, d_inner) and dh0 (batch, d_inner, d_state; or nothing for a
    (0, 0, 0) dh0, when S_0 = 0 was not an input) in full; partial sums for the rest: dD_part
    (batch, d_inner) in float64 per batch row, summed over the rows here into dD_sum (d_inner,)
    (``sum_partials``, rows in order), and dk_part, dq_part (batch, n_groups, T, d_state),
    zero-filled and reduced by the caller. A task is one batch row and
    one group of consecutive channel blocks (as the selective scan's backward): it adds each
    block's ∂L/∂k, ∂L/∂q into its group's rows, in block order.
    """
    n_batch, n_inner = x.shape[0], x.shape[2]
    n_blocks = (n_inner + LANES - 1) // LANES
    n_groups = dk_part.shape[1]
    per_group = (n_blocks + n_groups - 1) // n_groups
    for task in prange(n_batch * n_groups):
        b, grp = task // n_groups, task % n_groups
        for blk in range(grp * per_group, min((grp + 1) * per_group, n_blocks)):
            _backward_task(x, eps, k, q, Dv, ckpt, gy, gh, dx, deps, dk_part, dq_part, dD_part,
                           dh0, b, blk, grp)  # fmt: skip
    sum_partials(dD_part, dD_sum)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
