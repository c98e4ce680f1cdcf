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
The backward keeps its per-(n, lane) values in one array ``st`` (d_state, _ST_ROWS, LANES); its
reverse step over n is written as LLVM vector IR (``_reverse_step``: the sums over n stay in
registers, where the numba loop stored and reloaded them per n). Input rows are prefetched ahead of use
(``prefetch``): one task's rows are d_inner floats apart, a stride the hardware does not follow.
Three habits keep the machine code tight (measured at (64, 32, 256, 16), float32, one thread:
forward 12.3 -> 3.7 ms, forward + backward via torch 35.2 -> 17.8 ms): ``wide_vectors()`` lets a 16-lane row be one
512-bit register on AVX-512 CPUs; column indices are unsigned (``np.uint64(d0 + j)``: a signed index
gets numba's negative-index wrap-around, a select per lane that turned the row loads and stores
into gathers and scatters); the small per-lane rows live on the stack (``stack_array``).
See README.md ("Fused CPU kernel") for the backward derivation. ``fast_exp``, ``prefetch``, the
vector IR helpers (``lane_vector_ops``) and the constants are shared with the other kernels
(``ops/_numba.py``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from longssm.ops._numba import (
    CHECKPOINT,
    FASTMATH,
    LANES,
    PREFETCH,
    cache_depends_on_primitives,
    fast_exp,
    lane_intrinsic,
    prefetch,
    stack_array,
    sum_partials,
    wide_vectors,
)

# Rows of the forward's per-lane work array (on the stack: see ``stack_array``): D, x_t, Δ_t, Δ_t x_t
# and the running Σ_n C_n h_n of one step.
_F_D, _F_X, _F_DT, _F_U, _F_ACC, _F_ROWS = range(6)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_task(x, dt, AT, Bm, Cm, Dv, h0, z, y, hT, ckpt, save, gated, neg, b, d0):
    """Scan batch row b, channels d0 .. d0+LANES-1, over all T steps (see the module docstring).

    With ``gated``, y gets the scan's output times silu(z) (the backward recomputes the output
    before the gate from the checkpoints: it is not stored). With ``neg``, the transition is
    2 exp(Δ_t A) - 1 (negative eigenvalues), computed as (e + e) - 1.
    """
    wide_vectors()
    T, n_inner = x.shape[1], x.shape[2]
    N = AT.shape[0]
    w = min(LANES, n_inner - d0)
    dtype = x.dtype
    one = dtype.type(1)
    h = np.zeros((N, LANES), dtype)  # (N, lanes)
    a = np.zeros((N, LANES), dtype)  # (N, lanes) A of the block's channels
    rows = stack_array(_F_ROWS, LANES, dtype)  # the per-lane rows of one step, on the stack
    dv, xs, ds, u, acc = rows[_F_D], rows[_F_X], rows[_F_DT], rows[_F_U], rows[_F_ACC]
    for n in range(N):
        for j in range(w):
            a[n, j] = AT[n, np.uint64(d0 + j)]
    if h0.shape[0] > 0:  # else h_0 = 0 (h is zero-filled): the caller passes a (0, 0, 0) array
        for n in range(N):
            for j in range(w):
                h[n, j] = h0[b, np.uint64(d0 + j), n]
    for j in range(w):
        dv[j] = Dv[np.uint64(d0 + j)]
    for t in range(T):
        if save and t % CHECKPOINT == 0:
            k = t // CHECKPOINT
            for n in range(N):
                for j in range(w):
                    ckpt[b, k, n, np.uint64(d0 + j)] = h[n, j]
        ahead = min(t + PREFETCH, T - 1)
        prefetch(x, b, ahead, d0)
        prefetch(dt, b, ahead, d0)
        prefetch(y, b, ahead, d0)
        for j in range(w):
            xs[j] = x[b, t, np.uint64(d0 + j)]
            ds[j] = dt[b, t, np.uint64(d0 + j)]
        for j in range(LANES):
            u[j] = ds[j] * xs[j]
        if neg:
            for n in range(N):
                bn = Bm[b, t, n]
                for j in range(LANES):
                    e = fast_exp(ds[j] * a[n, j])
                    h[n, j] = ((e + e) - one) * h[n, j] + u[j] * bn
        else:
            for n in range(N):
                bn = Bm[b, t, n]
                for j in range(LANES):
                    h[n, j] = fast_exp(ds[j] * a[n, j]) * h[n, j] + u[j] * bn
        _state_readout(h, Cm[b, t], acc)  # Σ_n C_t,n h_t,n
        if gated:
            prefetch(z, b, ahead, d0)
            for j in range(w):
                col = np.uint64(d0 + j)
                out = acc[j] + xs[j] * dv[j]
                zj = z[b, t, col]
                y[b, t, col] = out * (zj / (one + fast_exp(-zj)))  # y_t silu(z_t)
        else:
            for j in range(w):
                y[b, t, np.uint64(d0 + j)] = acc[j] + xs[j] * dv[j]
    for n in range(N):
        for j in range(w):
            hT[b, np.uint64(d0 + j), n] = h[n, j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def scan_forward(x, dt, AT, Bm, Cm, Dv, h0, z, y, hT, ckpt, save, gated, neg):
    """Fill y (batch, T, d_inner) and hT (batch, d_inner, d_state); with ``save``, also ckpt.
    h0 is (batch, d_inner, d_state), or a (0, 0, 0) array for h_0 = 0 (no zero-filled input).

    With ``gated``, y = scan output ⊙ silu(z) (z: (batch, T, d_inner)); else z is not read.
    With ``neg``, the transition is 2 exp(Δ_t A) - 1 (negative eigenvalues).
    Parallel over the flattened (batch row, channel block) index.
    """
    n_batch, n_inner = x.shape[0], x.shape[2]
    n_blocks = (n_inner + LANES - 1) // LANES
    for task in prange(n_batch * n_blocks):
        b = task // n_blocks
        d0 = (task % n_blocks) * LANES
        _forward_task(x, dt, AT, Bm, Cm, Dv, h0, z, y, hT, ckpt, save, gated, neg, b, d0)


# Rows of the backward's per-lane work arrays. v (_ROWS, LANES), one time step: inputs of step t,
# Δx, Σ_n λ B_n, Σ_n ∂L/∂(ΔA) A, the gate's z_t (the gate's loop runs over all 16 lanes, past w
# on zeros: a fixed trip count, 1 ms of 20 faster than over w lanes; y_t before the gate comes
# from the recomputed ``ybuf``); on the stack (``stack_array``). st (N, _ST_ROWS, LANES), per state
# index n: λ, A, the running Σ_t ∂L/∂(ΔA) Δ of the current checkpoint block. dB and dC are summed
# over the lanes (``_reverse_step``, by ``lane_dot``'s tree) from rows written at least one step
# earlier (summing a row just stored waits for the store).
_X, _DT, _GY, _U, _GU, _GDA, _DD, _Z, _ROWS = range(9)
_LAM, _A, _DA, _ST_ROWS = range(4)


@intrinsic
def _state_readout(typingctx, hs, crow, out):
    """out = Σ_n C_n h_n over the state index (hs (N, LANES), crow (N,), out (LANES,); all
    C-contiguous), as LLVM vector IR: the sum stays in a register, one fused multiply-add per n
    in order (0 + C_0 h_0 first), where numba's loop stored and reloaded it per n, a chain of
    store-to-load latencies that cost about 1 ms of the backward at (64, 32, 256, 16)."""

    def emit(builder, vec, structs, values):
        hs_a, c_a, out_a = structs
        i64 = ir.IntType(64)
        acc = cgutils.alloca_once_value(builder, vec.zero)
        n_state = cgutils.unpack_tuple(builder, hs_a.shape)[0]
        with cgutils.for_range(builder, n_state) as loop:
            n = loop.index
            cn = vec.splat(builder.load(builder.gep(c_a.data, [n])))
            h = vec.load(hs_a.data, builder.mul(n, i64(LANES)))
            builder.store(vec.fma(cn, h, builder.load(acc)), acc)
        vec.store(builder.load(acc), out_a.data, i64(0))

    return lane_intrinsic((hs, crow, out), (2, 1, 1), emit)


@intrinsic
def _reverse_step(typingctx, st, hs, hs1, es, v, brow, crow, dbrow, dcrow, neg):
    """One reverse-time step over every state index n of a channel block, as LLVM vector IR.

    Args (C-contiguous): st (N, _ST_ROWS, LANES); hs, hs1, es (N, LANES): h_{t-1}, h_t and
    exp(Δ_t A) (rows s, s+1, s of hbuf / ebuf); v (_ROWS, LANES), the step's rows (_GY, _U, _DT
    read; _GU, _GDA written); brow, crow (N,): B_t, C_t; dbrow, dcrow (N,): ∂L/∂B_t, ∂L/∂C_t,
    added to. For n = 0 .. N-1, on 16-lane vectors (the formulas of the loop it replaces):
        ∂L/∂C_t,n += Σ_j gy h_t,n               (products rounded, ``lane_dot``'s tree)
        lam = λ_n + gy C_t,n                    (fused multiply-add)
        ∂L/∂B_t,n += Σ_j lam u                  (products rounded, the same tree)
        Σ_n lam B_t,n -> v[_GU]; da = lam h_{t-1,n} e; Σ_n da A_n -> v[_GDA]
        st[n, _DA] += da Δ; λ_n = e lam
    With ``neg`` (negative eigenvalues: the transition is 2e - 1, e = exp(Δ_t A), in es): da =
    lam h_{t-1,n} (e + e) and λ_n = ((e + e) - 1) lam; the loop over n is emitted once for each
    case, the flag tested once a step.
    Written as IR because the numba loop kept the two sums over n in memory (a store and a reload
    per n, on the critical path) and LLVM's vectoriser could not prove the arrays apart: here the
    sums are SSA values in registers and every row is one vector load or store.
    """
    if not isinstance(neg, types.Boolean):
        return None

    def emit(builder, vec, structs, values):
        st_a, hs_a, hs1_a, es_a, v_a, b_a, c_a, db_a, dc_a = structs
        i64 = ir.IntType(64)
        gy = vec.load(v_a.data, i64(_GY * LANES))
        u = vec.load(v_a.data, i64(_U * LANES))
        dt = vec.load(v_a.data, i64(_DT * LANES))
        gu_slot = cgutils.alloca_once_value(builder, vec.zero)
        gda_slot = cgutils.alloca_once_value(builder, vec.zero)

        one = vec.splat(ir.Constant(vec.scalar, 1.0))

        def state(n, negative: bool):
            """The update of state index n; returns the products of ∂L/∂C_t,n and ∂L/∂B_t,n."""
            row = builder.mul(n, i64(LANES))  # row n of hs, hs1, es
            base = builder.mul(n, i64(_ST_ROWS * LANES))  # st[n]
            bn = vec.splat(builder.load(builder.gep(b_a.data, [n])))
            cn = vec.splat(builder.load(builder.gep(c_a.data, [n])))
            dc = vec.product(gy, vec.load(hs1_a.data, row))
            lam = vec.fma(gy, cn, vec.load(st_a.data, builder.add(base, i64(_LAM * LANES))))
            db = vec.product(lam, u)
            builder.store(vec.fma(lam, bn, builder.load(gu_slot)), gu_slot)
            e = vec.load(es_a.data, row)
            factor = builder.fadd(e, e) if negative else e  # ∂(transition)/∂(Δ_t A)
            da = builder.fmul(builder.fmul(lam, vec.load(hs_a.data, row)), factor)
            a = vec.load(st_a.data, builder.add(base, i64(_A * LANES)))
            builder.store(vec.fma(da, a, builder.load(gda_slot)), gda_slot)
            da_at = builder.add(base, i64(_DA * LANES))
            vec.store(vec.fma(da, dt, vec.load(st_a.data, da_at)), st_a.data, da_at)
            transition = builder.fsub(factor, one) if negative else e
            vec.store(builder.fmul(transition, lam), st_a.data,
                      builder.add(base, i64(_LAM * LANES)))  # fmt: skip
            return dc, db

        n_state = cgutils.unpack_tuple(builder, st_a.shape)[0]
        with builder.if_else(values[0]) as (negative, positive):
            with negative:
                vec.lane_sums_into(n_state, lambda n: state(n, True), dc_a.data, db_a.data)
            with positive:
                vec.lane_sums_into(n_state, lambda n: state(n, False), dc_a.data, db_a.data)
        vec.store(builder.load(gu_slot), v_a.data, i64(_GU * LANES))
        vec.store(builder.load(gda_slot), v_a.data, i64(_GDA * LANES))

    return lane_intrinsic(
        (st, hs, hs1, es, v, brow, crow, dbrow, dcrow),
        (3, 2, 2, 2, 2, 1, 1, 1, 1),
        emit,
        extra=(neg,),
    )


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_task(
    x, dt, AT, Bm, Cm, Dv, ckpt, z, gy, gh, dx, ddt, dz, parts, dh0, gated, neg, b, blk, grp
):
    """Reverse-time scan of channel block blk of batch row b; states recomputed from the
    checkpoints, K steps at a time. Adds this block's ∂L/∂B, ∂L/∂C to dB_part, dC_part[b, grp].

    With ``gated``, gy is ∂L/∂(y ⊙ silu(z)): each step first turns it into ∂L/∂y and writes dz.
    With ``neg``, the transition is 2 exp(Δ_t A) - 1 (ebuf keeps exp(Δ_t A)).
    """
    wide_vectors()
    dB_part, dC_part, dA_part, dD_part = parts
    T, n_inner = x.shape[1], x.shape[2]
    N = AT.shape[0]
    d0 = blk * LANES
    w = min(LANES, n_inner - d0)
    dtype = x.dtype
    one = dtype.type(1)
    dv = np.zeros(LANES, dtype)
    st = np.zeros((N, _ST_ROWS, LANES), dtype)
    dA_acc = np.zeros((N, LANES), np.float64)
    dD_acc = np.zeros(LANES, np.float64)
    # h_{t0-1} .. h_{t0+K-1} of one block. Not zero-filled (a memset of 34 KB per task,
    # 1024 tasks per call at (64, 32, 256, 16), took a fifth of the backward): every entry read is
    # written first, except the lanes past w of row 0, zeroed here once (they stay zero).
    hbuf = np.empty((CHECKPOINT + 1, N, LANES), dtype)
    hbuf[0] = 0
    ebuf = np.empty((CHECKPOINT, N, LANES), dtype)  # exp(Δ_t A) of one block (written first)
    v = stack_array(_ROWS, LANES, dtype)  # on the stack: see ``stack_array``
    # y_t before the gate, recomputed with the block's states (gated only; the forward stores
    # only the gated output): Σ_n C_t,n h_t + D x_t, summed in the forward's order
    ybuf = stack_array(CHECKPOINT, LANES, dtype)
    for n in range(N):
        for j in range(w):
            st[n, _A, j] = AT[n, np.uint64(d0 + j)]
    if gh.shape[0] > 0:  # else ∂L/∂h_T = 0 (st is zero-filled): a (0, 0, 0) array
        for n in range(N):
            for j in range(w):
                st[n, _LAM, j] = gh[b, np.uint64(d0 + j), n]
    for j in range(w):
        dv[j] = Dv[np.uint64(d0 + j)]
    for k in range(ckpt.shape[1] - 1, -1, -1):
        t0 = k * CHECKPOINT
        steps = min(CHECKPOINT, T - t0)
        for n in range(N):
            for j in range(w):
                hbuf[0, n, j] = ckpt[b, k, n, np.uint64(d0 + j)]
        # Block 0's own rows of x, Δ are prefetched PREFETCH steps ahead (a later block's come
        # during the block before). Inside a training step these rows are cold (written tens of
        # ms earlier): at (64, 32, 256, 16) after a 24 ms gap, 5.4-5.8 -> 4.8-5.1 ms a call.
        if t0 == 0:
            for s in range(min(PREFETCH, steps)):
                prefetch(x, b, s, d0)
                prefetch(dt, b, s, d0)
        for s in range(steps):
            # Ahead of use: this block's rows of the reverse pass, the previous block's of x, Δ.
            prefetch(gy, b, t0 + s, d0)
            prefetch(dx, b, t0 + s, d0)
            prefetch(ddt, b, t0 + s, d0)
            if gated:
                prefetch(z, b, t0 + s, d0)
                prefetch(dz, b, t0 + s, d0)
            if t0 > 0:
                prefetch(x, b, t0 - CHECKPOINT + s, d0)
                prefetch(dt, b, t0 - CHECKPOINT + s, d0)
            else:
                ahead = min(s + PREFETCH, steps - 1)
                prefetch(x, b, ahead, d0)
                prefetch(dt, b, ahead, d0)
            for j in range(w):
                v[_X, j] = x[b, t0 + s, np.uint64(d0 + j)]
                v[_DT, j] = dt[b, t0 + s, np.uint64(d0 + j)]
            for j in range(LANES):
                v[_U, j] = v[_DT, j] * v[_X, j]
            if neg:
                for n in range(N):
                    bn = Bm[b, t0 + s, n]
                    for j in range(LANES):
                        e = fast_exp(v[_DT, j] * st[n, _A, j])
                        ebuf[s, n, j] = e
                        hbuf[s + 1, n, j] = ((e + e) - one) * hbuf[s, n, j] + v[_U, j] * bn
            else:
                for n in range(N):
                    bn = Bm[b, t0 + s, n]
                    for j in range(LANES):
                        e = fast_exp(v[_DT, j] * st[n, _A, j])
                        ebuf[s, n, j] = e
                        hbuf[s + 1, n, j] = e * hbuf[s, n, j] + v[_U, j] * bn
            if gated:
                yrow = ybuf[s]
                _state_readout(hbuf[s + 1], Cm[b, t0 + s], yrow)  # Σ_n C_t,n h_t,n
                for j in range(LANES):
                    yrow[j] = yrow[j] + v[_X, j] * dv[j]
        for s in range(steps - 1, -1, -1):
            t = t0 + s
            for j in range(w):
                v[_X, j] = x[b, t, np.uint64(d0 + j)]
                v[_DT, j] = dt[b, t, np.uint64(d0 + j)]
                v[_GY, j] = gy[b, t, np.uint64(d0 + j)]
            if gated:
                for j in range(w):
                    v[_Z, j] = z[b, t, np.uint64(d0 + j)]
                for j in range(LANES):
                    # out = y silu(z): ∂L/∂y = g silu(z), ∂L/∂z = g y σ(z) (1 + z (1 - σ(z))).
                    zj = v[_Z, j]
                    den = one + fast_exp(-zj)
                    sg = one / den
                    v[_Z, j] = v[_GY, j] * ybuf[s, j] * (sg * (one + zj * (one - sg)))
                    v[_GY, j] = v[_GY, j] * (zj / den)
                for j in range(w):
                    dz[b, t, np.uint64(d0 + j)] = v[_Z, j]
            for j in range(LANES):
                v[_U, j] = v[_DT, j] * v[_X, j]
                v[_DD, j] += v[_GY, j] * v[_X, j]
            # Over n (``_reverse_step``): lam = λ + ∂L/∂y C_t,n becomes ∂L/∂h_t (the carried part
            # plus y_t's, y_t = Σ_n C_t h_t + D x_t); ∂L/∂C_t,n = Σ_j ∂L/∂y h_t, ∂L/∂B_t,n =
            # Σ_j lam Δx; ∂L/∂(Δ_t A) = lam · h_{t-1} · exp(Δ_t A); then λ = ∂L/∂h_{t-1}.
            _reverse_step(
                st, hbuf[s], hbuf[s + 1], ebuf[s], v, Bm[b, t], Cm[b, t], dB_part[b, grp, t],
                dC_part[b, grp, t], neg,
            )  # fmt: skip
            for j in range(w):
                # u = Δ x: ∂L/∂x = Δ Σ_n lam B_n + D ∂L/∂y, ∂L/∂Δ = x Σ_n lam B_n + Σ_n ∂L/∂(ΔA) A.
                dx[b, t, np.uint64(d0 + j)] = v[_GU, j] * v[_DT, j] + v[_GY, j] * dv[j]
                ddt[b, t, np.uint64(d0 + j)] = v[_GU, j] * v[_X, j] + v[_GDA, j]
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
            dA_part[b, n, np.uint64(d0 + j)] = dA_acc[n, j]
    if dh0.shape[0] > 0:  # a (0, 0, 0) dh0: h_0 was zero, not an input (no gradient wanted)
        for n in range(N):
            for j in range(w):
                dh0[b, np.uint64(d0 + j), n] = st[n, _LAM, j]
    for j in range(w):
        dD_part[b, np.uint64(d0 + j)] = dD_acc[j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def scan_backward(
    x, dt, AT, Bm, Cm, Dv, ckpt, z, gy, gh, dx, ddt, dz, parts, sums, dh0, gated, neg
):
    """Gradients of the scan given gy = ∂L/∂y (batch, T, d_inner) and gh = ∂L/∂h_T; with
    ``gated``, gy = ∂L/∂(y ⊙ silu(z)) and dz (batch, T, d_inner) is written too (y before the
    gate recomputed with the states). ``parts`` = (dB_part, dC_part, dA_part, dD_part) and
    ``sums`` = (dA_sum (d_state * d_inner,), dD_sum (d_inner,)), float64. With ``neg``, the
    transition is 2 exp(Δ_t A) - 1 (negative eigenvalues).

    gh and dh0 may be (0, 0, 0) arrays: ∂L/∂h_T = 0, and no ∂L/∂h_0 wanted (h_0 was zero).
    Writes dx, ddt (batch, T, d_inner) and dh0 (batch, d_inner, d_state) in full; the parameters
    shared across tasks get per-task partial sums: dA_part (batch, d_state, d_inner) and dD_part
    (batch, d_inner), in float64, summed over the batch here into dA_sum and dD_sum
    (``sum_partials``; torch's sum of the partials took 0.13 ms a call at (64, 32, 256, 16)), and
    dB_part, dC_part (batch, n_groups, T, d_state), zero-filled and reduced by the caller. A task
    is one batch row and one group of consecutive channel blocks (n_groups groups, the caller's
    choice); it runs its blocks in order, adding each block's ∂L/∂B, ∂L/∂C into its group's rows:
    with one group per batch row the sums over the channels are complete here, and no (batch,
    n_blocks, T, d_state) partials are written and read back.
    """
    n_batch, n_inner = x.shape[0], x.shape[2]
    n_blocks = (n_inner + LANES - 1) // LANES
    n_groups = parts[0].shape[1]
    per_group = (n_blocks + n_groups - 1) // n_groups
    for task in prange(n_batch * n_groups):
        b, grp = task // n_groups, task % n_groups
        for blk in range(grp * per_group, min((grp + 1) * per_group, n_blocks)):
            _backward_task(x, dt, AT, Bm, Cm, Dv, ckpt, z, gy, gh, dx, ddt, dz, parts, dh0, gated,
                           neg, b, blk, grp)  # fmt: skip
    # dA, dD: the per-row partials summed over the batch rows in float64, b = 0, 1, ... in order
    dA_part, dD_part = parts[2], parts[3]
    dA_sum, dD_sum = sums
    sum_partials(dA_part.reshape((n_batch, dA_sum.shape[0])), dA_sum)
    sum_partials(dD_part, dD_sum)


# Recompile (not load stale machine code) when ops/_numba.py's primitives change.
cache_depends_on_primitives(globals())
