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
from numba import njit, prange

from longssm.ops._numba import (
    CHECKPOINT,
    FASTMATH,
    LANES,
    PREFETCH,
    cache_depends_on_primitives,
    prefetch,
    stack_array,
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


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _advance(prm, hs0, hs1, rows):
    """h_t (hs1) from h_{t-1} (hs0) and u_t (rows[_U]); rows[_OUT] = Σ_n 2c r_t − 2d s_t.
    hs0, hs1 (N, 2, LANES), may be the same array."""
    N = prm.shape[0]
    for j in range(LANES):
        rows[_OUT, j] = 0
    for n in range(N):
        for j in range(LANES):
            r = hs0[n, 0, j]
            s = hs0[n, 1, j]
            uj = rows[_U, j]
            r1 = prm[n, _A, j] * r - prm[n, _B, j] * s + prm[n, _P, j] * uj
            s1 = prm[n, _A, j] * s + prm[n, _B, j] * r + prm[n, _Q, j] * uj
            hs1[n, 0, j] = r1
            hs1[n, 1, j] = s1
            rows[_OUT, j] += prm[n, _C2, j] * r1 - prm[n, _D2, j] * s1


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


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _reverse(prm, kap, hs0, hs1, gacc, rows):
    """One reverse step over every mode: μ = κ + 2 g conj(C); the gradient sums gacc (N, _P_ROWS,
    LANES) += (∂a, ∂b, ∂p, ∂q, Σ g r_t, Σ g s_t) terms; rows[_OUT] = Σ_n p μr + q μi; κ = conj(λ̄)
    μ. hs0, hs1 (N, 2, LANES): h_{t-1}, h_t; rows[_U], rows[_G]: u_t, ∂L/∂y_t."""
    N = prm.shape[0]
    for j in range(LANES):
        rows[_OUT, j] = 0
    for n in range(N):
        for j in range(LANES):
            g = rows[_G, j]
            uj = rows[_U, j]
            a = prm[n, _A, j]
            bb = prm[n, _B, j]
            mr = kap[n, 0, j] + prm[n, _C2, j] * g
            mi = kap[n, 1, j] - prm[n, _D2, j] * g
            r0 = hs0[n, 0, j]
            s0 = hs0[n, 1, j]
            gacc[n, _A, j] += mr * r0 + mi * s0
            gacc[n, _B, j] += mi * r0 - mr * s0
            gacc[n, _P, j] += mr * uj
            gacc[n, _Q, j] += mi * uj
            gacc[n, _C2, j] += g * hs1[n, 0, j]
            gacc[n, _D2, j] += g * hs1[n, 1, j]
            rows[_OUT, j] += prm[n, _P, j] * mr + prm[n, _Q, j] * mi
            kap[n, 0, j] = a * mr + bb * mi
            kap[n, 1, j] = a * mi - bb * mr


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
        for n in range(N):
            for i in range(_P_ROWS):
                for j in range(LANES):
                    gsum[n, i, j] += np.float64(gacc[n, i, j])
                    gacc[n, i, j] = 0
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
def s4d_backward(u, lam, Bb, Cc, Dv, ckpt, gy, gh, du, prm_part, dD_part, dh0):
    """Gradients of the scan given gy = ∂L/∂y (batch, T, H) and gh = ∂L/∂h_T (batch, H, N, 2),
    or a (0, 0, 0, 0) array for ∂L/∂h_T = 0.

    Writes du in full, dh0 (batch, H, N, 2) unless it is a (0, 0, 0, 0) array, and the per-row
    float64 partials the caller sums over the batch: prm_part (batch, _P_ROWS, N, H) (∂a, ∂b, ∂p,
    ∂q, Σ g r, Σ g s) and dD_part (batch, H). Parallel over (batch row, channel block).
    """
    n_batch, H = u.shape[0], u.shape[2]
    n_blocks = (H + LANES - 1) // LANES
    for task in prange(n_batch * n_blocks):
        b = task // n_blocks
        blk = task % n_blocks
        _backward_task(u, lam, Bb, Cc, Dv, ckpt, gy, gh, du, prm_part, dD_part, dh0, b, blk)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
