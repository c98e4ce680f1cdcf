"""Numba kernels of the fused CPU S4D scan; imported lazily by ``s4d_fused_cpu.py``.

Importing this module imports numba (about a second); nothing is compiled until a kernel is first
called with a given dtype (float32 or float64), and ``cache=True`` keeps the machine code on disk.

Glossary (paper symbol -> code name, shape; one task = one batch row b and one block of ``LANES``
channels h0 .. h0+LANES-1; complex tensors come as real views with a trailing (re, im) axis):
    u_t, y_t (input, output)            u, y, du        (batch, T, H)
    λ̄ = a + ib, B̄ = p + iq, C = c + id  lam, Bb, Cc     (H, N, 2)
    D (skip)                            Dv              (H,)
    h_t = r + is (state of one block)   st, hbuf[s]     (N, 2, LANES): lanes = channels
    h at steps 0, K, 2K, ... (h_{-1})   ckpt            (batch, n_blocks, ceil(T / K), N, 2, LANES)
    ∂L/∂h_{t} carried from t+1          kap             (N, 2, LANES): conj(λ̄) μ_{t+1}
    K (checkpoint interval)             CHECKPOINT
The per-lane parameters of a task are one array prm (N, _P_ROWS, LANES): a, b, p, q, 2c, 2d.

Per step and mode (real arithmetic, all lanes at once):
    r' = a r − b s + p u;   s' = a s + b r + q u;   y += 2c r' − 2d s'
Reverse step, with g = ∂L/∂y_t and μ = ∂L/∂h_t = 2 g conj(C) + conj(λ̄) μ_{t+1}:
    μr = κr + 2c g,  μi = κi − 2d g;   κ ← (a μr + b μi, a μi − b μr)
    ∂a += μr r_{t-1} + μi s_{t-1},  ∂b += μi r_{t-1} − μr s_{t-1},  ∂p += μr u,  ∂q += μi u,
    Σ g r_t, Σ g s_t (∂c = 2 Σ g r, ∂d = −2 Σ g s),  ∂u += p μr + q μi.
Channels past H in the last block are zero lanes (zero parameters: state and adjoint stay zero).
Every loop over lanes is element-wise with a constant trip count; sums over modes run in order n =
0 .. N-1: results do not depend on the thread count.
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

# Rows of the per-lane parameter array prm (N, _P_ROWS, LANES) and of the gradient sums.
_A, _B, _P, _Q, _C2, _D2, _P_ROWS = range(7)
# Rows of the per-step work array (on the stack): u_t, ∂L/∂y_t, y_t or ∂L/∂u_t, Σ_t g u (for ∂D).
_U, _G, _OUT, _GD, _ROWS = range(5)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _load_params(lam, Bb, Cc, h_lo, w, dtype):
    """prm (N, _P_ROWS, LANES): a, b, p, q, 2c, 2d of channels h_lo .. h_lo+w-1, zero past w."""
    N = lam.shape[1]
    prm = np.zeros((N, _P_ROWS, LANES), dtype)
    for n in range(N):
        for j in range(w):
            h = np.uint64(h_lo + j)
            prm[n, _A, j] = lam[h, n, 0]
            prm[n, _B, j] = lam[h, n, 1]
            prm[n, _P, j] = Bb[h, n, 0]
            prm[n, _Q, j] = Bb[h, n, 1]
            prm[n, _C2, j] = 2 * Cc[h, n, 0]
            prm[n, _D2, j] = 2 * Cc[h, n, 1]
    return prm


@intrinsic
def _advance(typingctx, prm, hs0, hs1, rows):
    """One step of a block over every mode, as LLVM vector IR (16-lane rows): for n = 0 .. N-1
        r' = a r − b s + p u,  s' = a s + b r + q u    (h_t = hs1[n] from h_{t-1} = hs0[n])
        rows[_OUT] = Σ_n 2c r' − Σ_n 2d s'             (two sums in registers, in order over n)
    prm (N, _P_ROWS, LANES); hs0, hs1 (N, 2, LANES), may be the same array; rows (_ROWS, LANES):
    _U read, _OUT written. IR because numba's loop kept the sum over n in memory (a store and a
    reload per mode on the critical path)."""

    def emit(builder, vec, structs, values):
        prm_a, h0_a, h1_a, rows_a = structs
        b = builder
        i64 = ir.IntType(64)
        uv = vec.load(rows_a.data, i64(_U * LANES))
        acc_r = cgutils.alloca_once_value(b, vec.zero)
        acc_i = cgutils.alloca_once_value(b, vec.zero)
        n_modes = cgutils.unpack_tuple(b, prm_a.shape)[0]
        with cgutils.for_range(b, n_modes) as loop:
            base = b.mul(loop.index, i64(_P_ROWS * LANES))
            a, bb, p, q, c2, d2 = (
                vec.load(prm_a.data, b.add(base, i64(row * LANES))) for row in range(_P_ROWS)
            )
            row = b.mul(loop.index, i64(2 * LANES))
            r = vec.load(h0_a.data, row)
            s = vec.load(h0_a.data, b.add(row, i64(LANES)))
            r1 = vec.fma(a, r, vec.fma(b.fneg(bb), s, b.fmul(p, uv)))
            s1 = vec.fma(a, s, vec.fma(bb, r, b.fmul(q, uv)))
            vec.store(r1, h1_a.data, row)
            vec.store(s1, h1_a.data, b.add(row, i64(LANES)))
            b.store(vec.fma(c2, r1, b.load(acc_r)), acc_r)
            b.store(vec.fma(d2, s1, b.load(acc_i)), acc_i)
        vec.store(b.fsub(b.load(acc_r), b.load(acc_i)), rows_a.data, i64(_OUT * LANES))

    return lane_intrinsic((prm, hs0, hs1, rows), (3, 3, 3, 2), emit)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_task(u, lam, Bb, Cc, Dv, h0, y, hT, ckpt, save, b, blk):
    """Scan batch row b, channels blk * LANES .. + LANES - 1, over all T steps."""
    wide_vectors()
    T, H = u.shape[1], u.shape[2]
    N = lam.shape[1]
    h_lo = blk * LANES
    w = min(LANES, H - h_lo)
    dtype = u.dtype
    prm = _load_params(lam, Bb, Cc, h_lo, w, dtype)
    st = np.zeros((N, 2, LANES), dtype)  # (N, re/im, lanes)
    rows = stack_array(_ROWS, LANES, dtype)
    dv = stack_array(1, LANES, dtype)
    for j in range(w):
        dv[0, j] = Dv[np.uint64(h_lo + j)]
    if h0.shape[0] > 0:  # else h_0 = 0 (st is zero-filled): the caller passes a (0, 0, 0, 0) array
        for n in range(N):
            for j in range(w):
                st[n, 0, j] = h0[b, np.uint64(h_lo + j), n, 0]
                st[n, 1, j] = h0[b, np.uint64(h_lo + j), n, 1]
    for t in range(T):
        if save and t % CHECKPOINT == 0:
            k = t // CHECKPOINT
            for n in range(N):
                for i in range(2):
                    for j in range(LANES):
                        ckpt[b, blk, k, n, i, j] = st[n, i, j]
        ahead = min(t + PREFETCH, T - 1)
        prefetch(u, b, ahead, h_lo)
        prefetch(y, b, ahead, h_lo)
        for j in range(w):
            rows[_U, j] = u[b, t, np.uint64(h_lo + j)]
        _advance(prm, st, st, rows)
        for j in range(w):
            y[b, t, np.uint64(h_lo + j)] = rows[_OUT, j] + dv[0, j] * rows[_U, j]
    for n in range(N):
        for j in range(w):
            hT[b, np.uint64(h_lo + j), n, 0] = st[n, 0, j]
            hT[b, np.uint64(h_lo + j), n, 1] = st[n, 1, j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def s4d_forward(u, lam, Bb, Cc, Dv, h0, y, hT, ckpt, save):
    """Fill y (batch, T, H) and hT (batch, H, N, 2); with ``save``, also ckpt (batch, n_blocks,
    ceil(T / K), N, 2, LANES). h0 is (batch, H, N, 2), or a (0, 0, 0, 0) array for h_0 = 0.
    Parallel over the flattened (batch row, channel block) index."""
    n_batch, H = u.shape[0], u.shape[2]
    n_blocks = (H + LANES - 1) // LANES
    for task in prange(n_batch * n_blocks):
        b = task // n_blocks
        blk = task % n_blocks
        _forward_task(u, lam, Bb, Cc, Dv, h0, y, hT, ckpt, save, b, blk)


@intrinsic
def _reverse(typingctx, prm, kap, hs0, hs1, gacc, rows):
    """One reverse step of a block over every mode, as LLVM vector IR (16-lane rows): for n = 0 ..
    N-1, with g = rows[_G], u = rows[_U]:
        μr = κr + 2c g,  μi = κi − 2d g                         (μ = ∂L/∂h_t)
        gacc[n] += (μr r0 + μi s0, μi r0 − μr s0, μr u, μi u, g r1, g s1)
        rows[_OUT] = Σ_n p μr + q μi                            (in a register, in order over n)
        κ = (a μr + b μi, a μi − b μr)                          (conj(λ̄) μ = ∂L/∂h_{t-1})
    prm, gacc (N, _P_ROWS, LANES); kap, hs0 (h_{t-1} = r0 + i s0), hs1 (h_t = r1 + i s1)
    (N, 2, LANES); rows (_ROWS, LANES)."""

    def emit(builder, vec, structs, values):
        prm_a, kap_a, h0_a, h1_a, gacc_a, rows_a = structs
        b = builder
        i64 = ir.IntType(64)
        gv = vec.load(rows_a.data, i64(_G * LANES))
        uv = vec.load(rows_a.data, i64(_U * LANES))
        du = cgutils.alloca_once_value(b, vec.zero)
        n_modes = cgutils.unpack_tuple(b, prm_a.shape)[0]
        with cgutils.for_range(b, n_modes) as loop:
            base = b.mul(loop.index, i64(_P_ROWS * LANES))
            offsets = [b.add(base, i64(row * LANES)) for row in range(_P_ROWS)]
            a, bb, p, q, c2, d2 = (vec.load(prm_a.data, at) for at in offsets)
            row = b.mul(loop.index, i64(2 * LANES))
            row_i = b.add(row, i64(LANES))
            mr = vec.fma(c2, gv, vec.load(kap_a.data, row))
            mi = vec.fma(b.fneg(d2), gv, vec.load(kap_a.data, row_i))
            r0, s0 = vec.load(h0_a.data, row), vec.load(h0_a.data, row_i)
            r1, s1 = vec.load(h1_a.data, row), vec.load(h1_a.data, row_i)
            terms = (
                vec.fma(mr, r0, b.fmul(mi, s0)),
                vec.fma(mi, r0, b.fneg(b.fmul(mr, s0))),
                b.fmul(mr, uv),
                b.fmul(mi, uv),
                b.fmul(gv, r1),
                b.fmul(gv, s1),
            )
            for at, term in zip(offsets, terms):
                vec.store(b.fadd(vec.load(gacc_a.data, at), term), gacc_a.data, at)
            b.store(vec.fma(p, mr, vec.fma(q, mi, b.load(du))), du)
            vec.store(vec.fma(a, mr, b.fmul(bb, mi)), kap_a.data, row)
            vec.store(vec.fma(a, mi, b.fneg(b.fmul(bb, mr))), kap_a.data, row_i)
        vec.store(b.load(du), rows_a.data, i64(_OUT * LANES))

    return lane_intrinsic((prm, kap, hs0, hs1, gacc, rows), (3, 3, 3, 3, 3, 2), emit)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _add_into(total, part):
    """total += part (in total's float64), then part = 0; 1-d arrays of one size."""
    for i in range(part.shape[0]):
        total[i] += np.float64(part[i])
    for i in range(part.shape[0]):
        part[i] = 0


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_task(u, lam, Bb, Cc, Dv, ckpt, gy, gh, du, prm_part, dD_part, dh0, b, blk):
    """Reverse-time scan of batch row b, channel block blk; states recomputed from the
    checkpoints, K steps at a time. Writes its lanes of du, of the float64 partials
    prm_part[b] (_P_ROWS, N, H) and dD_part[b] (H,), and of dh0 (unless a (0, 0, 0, 0) array)."""
    wide_vectors()
    T, H = u.shape[1], u.shape[2]
    N = lam.shape[1]
    h_lo = blk * LANES
    w = min(LANES, H - h_lo)
    dtype = u.dtype
    prm = _load_params(lam, Bb, Cc, h_lo, w, dtype)
    kap = np.zeros((N, 2, LANES), dtype)  # ∂L/∂h_t from the steps after t
    hbuf = np.empty((CHECKPOINT + 1, N, 2, LANES), dtype)  # h_{t0-1} .. h_{t0+K-1}
    gacc = np.zeros((N, _P_ROWS, LANES), dtype)  # gradient sums of one checkpoint block
    gsum = np.zeros((N, _P_ROWS, LANES), np.float64)  # and of all blocks
    gacc_flat, gsum_flat = gacc.reshape(gacc.size), gsum.reshape(gsum.size)
    rows = stack_array(_ROWS, LANES, dtype)
    dv = stack_array(1, LANES, dtype)
    for j in range(w):
        dv[0, j] = Dv[np.uint64(h_lo + j)]
    dD_acc = stack_array(1, LANES, np.float64)
    if gh.shape[0] > 0:  # else ∂L/∂h_T = 0 (kap is zero-filled): a (0, 0, 0, 0) array
        for n in range(N):
            for j in range(w):
                kap[n, 0, j] = gh[b, np.uint64(h_lo + j), n, 0]
                kap[n, 1, j] = gh[b, np.uint64(h_lo + j), n, 1]
    for k in range(ckpt.shape[2] - 1, -1, -1):
        t0 = k * CHECKPOINT
        steps = min(CHECKPOINT, T - t0)
        for n in range(N):
            for i in range(2):
                for j in range(LANES):
                    hbuf[0, n, i, j] = ckpt[b, blk, k, n, i, j]
        for s in range(steps):  # recompute h_{t0} .. h_{t0+steps-1}
            for j in range(w):
                rows[_U, j] = u[b, t0 + s, np.uint64(h_lo + j)]
            _advance(prm, hbuf[s], hbuf[s + 1], rows)
        for s in range(steps - 1, -1, -1):
            t = t0 + s
            prefetch(gy, b, max(t - 1, 0), h_lo)
            prefetch(du, b, max(t - 1, 0), h_lo)
            for j in range(w):
                rows[_U, j] = u[b, t, np.uint64(h_lo + j)]
                rows[_G, j] = gy[b, t, np.uint64(h_lo + j)]
            for j in range(LANES):
                rows[_GD, j] += rows[_G, j] * rows[_U, j]
            _reverse(prm, kap, hbuf[s], hbuf[s + 1], gacc, rows)
            for j in range(w):
                du[b, t, np.uint64(h_lo + j)] = rows[_OUT, j] + dv[0, j] * rows[_G, j]
        _add_into(gsum_flat, gacc_flat)
        for j in range(LANES):
            dD_acc[0, j] += np.float64(rows[_GD, j])
            rows[_GD, j] = 0
    for n in range(N):
        for i in range(_P_ROWS):
            for j in range(w):
                prm_part[b, i, n, np.uint64(h_lo + j)] = gsum[n, i, j]
    for j in range(w):
        dD_part[b, np.uint64(h_lo + j)] = dD_acc[0, j]
    if dh0.shape[0] > 0:  # a (0, 0, 0, 0) dh0: no gradient wanted for h_0
        for n in range(N):
            for j in range(w):
                dh0[b, np.uint64(h_lo + j), n, 0] = kap[n, 0, j]
                dh0[b, np.uint64(h_lo + j), n, 1] = kap[n, 1, j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def s4d_backward(u, lam, Bb, Cc, Dv, ckpt, gy, gh, du, prm_part, dD_part, sums, dh0):
    """Gradients of the scan given gy = ∂L/∂y (batch, T, H) and gh = ∂L/∂h_T (batch, H, N, 2),
    or a (0, 0, 0, 0) array for ∂L/∂h_T = 0.

    Writes du in full, dh0 (batch, H, N, 2) unless it is a (0, 0, 0, 0) array, and the per-row
    float64 partials prm_part (batch, _P_ROWS, N, H) (∂a, ∂b, ∂p, ∂q, Σ g r, Σ g s) and dD_part
    (batch, H), summed over the batch here (``sum_partials``, rows in order) into ``sums`` =
    (prm_sum (_P_ROWS * N * H,), dD_sum (H,)), float64. Parallel over (batch row, channel block).
    """
    n_batch, H = u.shape[0], u.shape[2]
    n_blocks = (H + LANES - 1) // LANES
    for task in prange(n_batch * n_blocks):
        b = task // n_blocks
        blk = task % n_blocks
        _backward_task(u, lam, Bb, Cc, Dv, ckpt, gy, gh, du, prm_part, dD_part, dh0, b, blk)
    prm_sum, dD_sum = sums
    sum_partials(prm_part.reshape((n_batch, prm_sum.shape[0])), prm_sum)
    sum_partials(dD_part, dD_sum)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
