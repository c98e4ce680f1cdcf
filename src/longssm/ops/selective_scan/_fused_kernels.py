"""Numba kernels of the fused CPU selective scan (Mamba-1 / S6); imported lazily by ``fused_cpu.py``.

Importing this module imports numba (about a second); nothing is compiled until a kernel is first
called with a given dtype (float32 or float64), and ``cache=True`` keeps the machine code on disk.

Glossary (paper symbol -> code name, shape; one task = one batch row b and one channel block):
    x_t, Δ_t (input, step size)        x, dt          (batch, T, d_inner)
    A (dynamics, transposed)           AT             (d_state, d_inner)
    B_t, C_t                           Bm, Cm         (batch, T, d_state)
    D (skip)                           Dv             (d_inner,)
    h_t (state of one channel block)   h              (d_state, LANES): lanes = channels of the block
    h at steps 0, K, 2K, ...           ckpt           (batch, ceil(T / K), d_state, d_inner)
    ∂L/∂h_t (adjoint state)            lam, st[:, _LAM]  (d_state, LANES)
    K (checkpoint interval)            CHECKPOINT

Layout: a task keeps the state of ``LANES`` consecutive channels as a small (d_state, LANES) array;
every inner loop runs over the lanes, is element-wise and has a constant trip count, so LLVM
vectorises it without reassociating any sum (the only fast-math flag is ``contract``: FMAs).
Channels past d_inner in the last block are zero lanes (Δ = 0, x = 0: they stay zero).
The backward keeps its per-(n, lane) values in one array ``st`` (d_state, _ST_ROWS, LANES) so that
its reverse step vectorises behind few runtime alias checks. Input rows are prefetched ahead of use
(``_prefetch``): one task's rows are d_inner floats apart, a stride the hardware does not follow.
See README.md ("Fused CPU kernel") for the backward derivation.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

LANES = 16  # _lane_sum is written out for 16 lanes
CHECKPOINT = 32
PREFETCH = 4  # the forward asks for the input rows this many steps ahead
# The one fast-math flag: a * b + c may become one fused multiply-add (one rounding instead of
# two). No reassociation, no assumptions about NaN or inf: every sum keeps its order.
_FASTMATH = {"contract"}

# exp(x) = 2^k · exp(r) with k = round(x / ln 2), r = x − k ln 2 (ln 2 split in a high part exact
# in few bits and a low correction), |r| <= ln(2) / 2; exp(r) by its Taylor series, long enough
# that the truncation is below one ulp (degree 7 for float32, 13 for float64); 2^k is built from
# its exponent bits. Unlike math.exp (a scalar libm call), this vectorises.
_LOG2E = 1.4426950408889634
_LN2_HI_32, _LN2_LO_32 = 0.693359375, -2.12194440e-4
_LN2_HI_64, _LN2_LO_64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
# Adding then subtracting 1.5 · 2^(mantissa bits) rounds to the nearest integer.
_ROUND_32, _ROUND_64 = 12582912.0, 6755399441055744.0


@intrinsic
def _bits_to_float(typingctx, bits):
    """Reinterpret an int32 (int64) as a float32 (float64): the exponent-bits trick for 2^k."""
    if bits == types.int32:
        sig, llty = types.float32(types.int32), ir.FloatType()
    elif bits == types.int64:
        sig, llty = types.float64(types.int64), ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llty)

    return sig, codegen


@intrinsic
def _prefetch(typingctx, ary, i, j, k):
    """Ask the CPU to load the cache line of ary[i, j, k] (3-d array) ahead of use; no result.

    A task reads one 16-float row per time step, d_inner floats apart: the hardware prefetcher
    does not follow that stride, so each row would be a cache miss waited for in the time loop.
    """
    if not (isinstance(ary, types.Array) and ary.ndim == 3):
        return None
    sig = types.void(ary, i, j, k)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        arr = context.make_array(aryty)(context, builder, args[0])
        inds = [
            context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:])
        ]
        ptr = cgutils.get_item_pointer(context, builder, aryty, arr, inds, wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read, high temporal locality, data cache
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def _exp32(x):
    # x is first clamped to [lo, hi] = [-88, 89], where k = -127 at lo gives exponent bits 0
    # (the result is +0: also below about -87.7, past the smallest normal) and k = 128 at hi gives
    # the bits of +inf (the result is inf from about 88.4 on). Both selects let a NaN through
    # (as max/min with the NaN-propagating operand order): it propagates through r and p.
    lo, hi = np.float32(-88.0), np.float32(89.0)
    xc = lo if x < lo else x
    xc = hi if xc > hi else xc
    k = (xc * np.float32(_LOG2E) + np.float32(_ROUND_32)) - np.float32(_ROUND_32)
    r = (xc - k * np.float32(_LN2_HI_32)) - k * np.float32(_LN2_LO_32)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    # numba widens int32 arithmetic to int64: narrow the exponent bits back before the cast.
    return p * _bits_to_float(np.int32((np.int32(k) + 127) << 23))


def _exp64(x):
    # As _exp32: k = -1023 at lo gives +0, k = 1024 at hi gives +inf.
    lo, hi = -709.0, 710.0
    xc = lo if x < lo else x
    xc = hi if xc > hi else xc
    k = (xc * _LOG2E + _ROUND_64) - _ROUND_64
    r = (xc - k * _LN2_HI_64) - k * _LN2_LO_64
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _bits_to_float((np.int64(k) + np.int64(1023)) << np.int64(52))


def fast_exp(x):
    """exp(x) for float32 or float64 scalars inside the kernels (see the comment above _exp32)."""
    raise NotImplementedError("fast_exp runs inside numba kernels only")


@overload(fast_exp, jit_options={"fastmath": _FASTMATH})
def _fast_exp_overload(x):
    if x == types.float32:
        return _exp32
    if x == types.float64:
        return _exp64
    return None


@njit(cache=True, fastmath=_FASTMATH)
def _lane_sum(p):
    """Σ_j p[j] over the 16 lanes as a fixed pairwise tree (deterministic); p is only read.

    Written out for LANES = 16: the sums stay in registers (a loop over halving widths stored
    every level back into p and reloaded it).
    """
    q0, q1, q2, q3 = p[0] + p[8], p[1] + p[9], p[2] + p[10], p[3] + p[11]
    q4, q5, q6, q7 = p[4] + p[12], p[5] + p[13], p[6] + p[14], p[7] + p[15]
    r0, r1, r2, r3 = q0 + q4, q1 + q5, q2 + q6, q3 + q7
    return (r0 + r2) + (r1 + r3)


@njit(cache=True, fastmath=_FASTMATH)
def _forward_task(x, dt, AT, Bm, Cm, Dv, h0, y, hT, ckpt, save, b, d0):
    """Scan batch row b, channels d0 .. d0+LANES-1, over all T steps (see the module docstring)."""
    T, n_inner = x.shape[1], x.shape[2]
    N = AT.shape[0]
    w = min(LANES, n_inner - d0)
    dtype = x.dtype
    h = np.zeros((N, LANES), dtype)  # (N, lanes)
    a = np.zeros((N, LANES), dtype)  # (N, lanes) A of the block's channels
    dv = np.zeros(LANES, dtype)
    xs = np.zeros(LANES, dtype)
    ds = np.zeros(LANES, dtype)
    u = np.zeros(LANES, dtype)
    acc = np.zeros(LANES, dtype)
    for n in range(N):
        for j in range(w):
            h[n, j] = h0[b, d0 + j, n]
            a[n, j] = AT[n, d0 + j]
    for j in range(w):
        dv[j] = Dv[d0 + j]
    for t in range(T):
        if save and t % CHECKPOINT == 0:
            k = t // CHECKPOINT
            for n in range(N):
                for j in range(w):
                    ckpt[b, k, n, d0 + j] = h[n, j]
        ahead = min(t + PREFETCH, T - 1)
        _prefetch(x, b, ahead, d0)
        _prefetch(dt, b, ahead, d0)
        _prefetch(y, b, ahead, d0)
        for j in range(w):
            xs[j] = x[b, t, d0 + j]
            ds[j] = dt[b, t, d0 + j]
        for j in range(LANES):
            u[j] = ds[j] * xs[j]
            acc[j] = 0
        for n in range(N):
            bn = Bm[b, t, n]
            cn = Cm[b, t, n]
            for j in range(LANES):
                hv = fast_exp(ds[j] * a[n, j]) * h[n, j] + u[j] * bn
                h[n, j] = hv
                acc[j] += cn * hv
        for j in range(w):
            y[b, t, d0 + j] = acc[j] + xs[j] * dv[j]
    for n in range(N):
        for j in range(w):
            hT[b, d0 + j, n] = h[n, j]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def scan_forward(x, dt, AT, Bm, Cm, Dv, h0, y, hT, ckpt, save):
    """Fill y (batch, T, d_inner) and hT (batch, d_inner, d_state); with ``save``, also ckpt.

    Parallel over the flattened (batch row, channel block) index.
    """
    n_batch, n_inner = x.shape[0], x.shape[2]
    n_blocks = (n_inner + LANES - 1) // LANES
    for task in prange(n_batch * n_blocks):
        b = task // n_blocks
        _forward_task(x, dt, AT, Bm, Cm, Dv, h0, y, hT, ckpt, save, b, (task % n_blocks) * LANES)


# Rows of the backward's per-lane work arrays. v (_ROWS, LANES), one time step: inputs of step t,
# Δx, Σ_n λ B_n, Σ_n ∂L/∂(ΔA) A. st (N, _ST_ROWS, LANES), per state index n: λ, A, the running
# Σ_t ∂L/∂(ΔA) Δ of the current checkpoint block, and the products summed over lanes for dB, dC.
# Keeping the per-(n, lane) values of one n side by side in one array lets LLVM vectorise the
# reverse step with few runtime alias checks (a loop over many distinct arrays stays scalar).
_X, _DT, _GY, _U, _GU, _GDA, _DD, _ROWS = range(8)
_LAM, _A, _DA, _PB, _PC, _ST_ROWS = range(6)


@njit(cache=True, fastmath=_FASTMATH)
def _backward_task(
    x, dt, AT, Bm, Cm, Dv, ckpt, gy, gh, dx, ddt, dB_part, dC_part, dA_part, dD_part, dh0, b, blk
):
    """Reverse-time scan of one task; states recomputed from the checkpoints, K steps at a time."""
    T, n_inner = x.shape[1], x.shape[2]
    N = AT.shape[0]
    d0 = blk * LANES
    w = min(LANES, n_inner - d0)
    dtype = x.dtype
    dv = np.zeros(LANES, dtype)
    st = np.zeros((N, _ST_ROWS, LANES), dtype)
    dA_acc = np.zeros((N, LANES), np.float64)
    dD_acc = np.zeros(LANES, np.float64)
    hbuf = np.zeros((CHECKPOINT + 1, N, LANES), dtype)  # h_{t0-1} .. h_{t0+K-1} of one block
    ebuf = np.zeros((CHECKPOINT, N, LANES), dtype)  # exp(Δ_t A) of one block
    v = np.zeros((_ROWS, LANES), dtype)
    for n in range(N):
        for j in range(w):
            st[n, _A, j] = AT[n, d0 + j]
            st[n, _LAM, j] = gh[b, d0 + j, n]
    for j in range(w):
        dv[j] = Dv[d0 + j]
    for k in range(ckpt.shape[1] - 1, -1, -1):
        t0 = k * CHECKPOINT
        steps = min(CHECKPOINT, T - t0)
        for n in range(N):
            for j in range(w):
                hbuf[0, n, j] = ckpt[b, k, n, d0 + j]
        for s in range(steps):
            # Ahead of use: this block's rows of the reverse pass, the previous block's of x, Δ.
            _prefetch(gy, b, t0 + s, d0)
            _prefetch(dx, b, t0 + s, d0)
            _prefetch(ddt, b, t0 + s, d0)
            if t0 > 0:
                _prefetch(x, b, t0 - CHECKPOINT + s, d0)
                _prefetch(dt, b, t0 - CHECKPOINT + s, d0)
            for j in range(w):
                v[_X, j] = x[b, t0 + s, d0 + j]
                v[_DT, j] = dt[b, t0 + s, d0 + j]
            for j in range(LANES):
                v[_U, j] = v[_DT, j] * v[_X, j]
            for n in range(N):
                bn = Bm[b, t0 + s, n]
                for j in range(LANES):
                    e = fast_exp(v[_DT, j] * st[n, _A, j])
                    ebuf[s, n, j] = e
                    hbuf[s + 1, n, j] = e * hbuf[s, n, j] + v[_U, j] * bn
        for s in range(steps - 1, -1, -1):
            t = t0 + s
            for j in range(w):
                v[_X, j] = x[b, t, d0 + j]
                v[_DT, j] = dt[b, t, d0 + j]
                v[_GY, j] = gy[b, t, d0 + j]
            for j in range(LANES):
                v[_U, j] = v[_DT, j] * v[_X, j]
                v[_GU, j] = 0
                v[_GDA, j] = 0
                v[_DD, j] += v[_GY, j] * v[_X, j]
            for n in range(N):
                bn = Bm[b, t, n]
                cn = Cm[b, t, n]
                for j in range(LANES):
                    # lam becomes ∂L/∂h_t: the carried part plus y_t's (y_t = Σ_n C_t h_t + D x_t).
                    lam = st[n, _LAM, j] + v[_GY, j] * cn
                    st[n, _PC, j] = v[_GY, j] * hbuf[s + 1, n, j]
                    st[n, _PB, j] = lam * v[_U, j]
                    v[_GU, j] += lam * bn
                    # ∂L/∂(Δ_t A) = lam · h_{t-1} · exp(Δ_t A); then lam becomes ∂L/∂h_{t-1}.
                    e = ebuf[s, n, j]
                    da = lam * hbuf[s, n, j] * e
                    v[_GDA, j] += da * st[n, _A, j]
                    st[n, _DA, j] += da * v[_DT, j]
                    st[n, _LAM, j] = e * lam
                dC_part[b, blk, t, n] = _lane_sum(st[n, _PC])
                dB_part[b, blk, t, n] = _lane_sum(st[n, _PB])
            for j in range(w):
                # u = Δ x: ∂L/∂x = Δ Σ_n lam B_n + D ∂L/∂y, ∂L/∂Δ = x Σ_n lam B_n + Σ_n ∂L/∂(ΔA) A.
                dx[b, t, d0 + j] = v[_GU, j] * v[_DT, j] + v[_GY, j] * dv[j]
                ddt[b, t, d0 + j] = v[_GU, j] * v[_X, j] + v[_GDA, j]
        # dA, dD: summed over the block's steps in the compute dtype, over blocks in float64.
        for n in range(N):
            for j in range(LANES):
                dA_acc[n, j] += st[n, _DA, j]
                st[n, _DA, j] = 0
        for j in range(LANES):
            dD_acc[j] += v[_DD, j]
            v[_DD, j] = 0
    for n in range(N):
        for j in range(w):
            dh0[b, d0 + j, n] = st[n, _LAM, j]
            dA_part[b, n, d0 + j] = dA_acc[n, j]
    for j in range(w):
        dD_part[b, d0 + j] = dD_acc[j]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def scan_backward(
    x, dt, AT, Bm, Cm, Dv, ckpt, gy, gh, dx, ddt, dB_part, dC_part, dA_part, dD_part, dh0
):
    """Gradients of the scan given gy = ∂L/∂y (batch, T, d_inner) and gh = ∂L/∂h_T.

    Writes dx, ddt (batch, T, d_inner) and dh0 (batch, d_inner, d_state) in full; the parameters
    shared across tasks get per-task partial sums, reduced by the caller: dB_part, dC_part
    (batch, n_blocks, T, d_state), dA_part (batch, d_state, d_inner) and dD_part (batch, d_inner),
    the last two in float64.
    """
    n_batch, n_inner = x.shape[0], x.shape[2]
    n_blocks = (n_inner + LANES - 1) // LANES
    for task in prange(n_batch * n_blocks):
        _backward_task(
            x,
            dt,
            AT,
            Bm,
            Cm,
            Dv,
            ckpt,
            gy,
            gh,
            dx,
            ddt,
            dB_part,
            dC_part,
            dA_part,
            dD_part,
            dh0,
            task // n_blocks,
            task % n_blocks,
        )
