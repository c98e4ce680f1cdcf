"""Triton kernels of the GPU selective scan (Mamba-1 / S6); imported lazily by ``triton_gpu.py``.

Glossary (paper symbol -> code name, shape; one program = one batch row b and one channel block):
    x_t, Δ_t (input, step size)        x, dt          (batch, T, d_inner)
    A (dynamics)                       A              (d_inner, d_state)
    B_t, C_t                           B, C           (batch, T, d_state)
    D (skip)                           Dv             (d_inner,)
    h_t (state of one channel block)   h              (BLOCK_D, BLOCK_N) in registers
    h at steps 0, K, 2K, ...           ckpt           (batch, ceil(T / K), d_inner, d_state)
    ∂L/∂h_t (adjoint state)            lam            (BLOCK_D, BLOCK_N)
    K (checkpoint interval)            CHUNK

The forward runs time once per program and keeps the state in registers; the backward walks the
K-step blocks in reverse: it recomputes h_{t-1} for the block from its checkpoint into a per-program
scratch area (K, BLOCK_D, BLOCK_N) in global memory (small enough to stay in L2), then runs the
block in reverse. Steps past T read x = Δ = 0, which leaves the state unchanged (exp(0) = 1), so
every block runs K steps with masked loads and stores. Derivation: README.md ("Fused CPU kernel";
the GPU kernels compute the same quantities).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def scan_forward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, y_ptr, hT_ptr, ckpt_ptr,
    T, d_inner, d_state, n_ckpt,
    HAS_D: tl.constexpr, HAS_H0: tl.constexpr, SAVE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (channel blocks, batch): fill y, hT and (with SAVE) ckpt for one (block, row)."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_dn = offs_d[:, None] * d_state + offs_n[None, :]  # (BLOCK_D, BLOCK_N) in a (Di, N) array

    A = tl.load(A_ptr + offs_dn, mask=mask_dn, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_H0:
        h = tl.load(h0_ptr + b * d_inner * d_state + offs_dn, mask=mask_dn, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=A.dtype)
    x_row = x_ptr + b * T * d_inner + offs_d
    dt_row = dt_ptr + b * T * d_inner + offs_d
    y_row = y_ptr + b * T * d_inner + offs_d
    B_row = B_ptr + b * T * d_state + offs_n
    C_row = C_ptr + b * T * d_state + offs_n
    ckpt_row = ckpt_ptr + b * n_ckpt * d_inner * d_state + offs_dn
    for k in range(0, n_ckpt):
        if SAVE:
            tl.store(ckpt_row + k * d_inner * d_state, h, mask=mask_dn)
        for s in range(0, CHUNK):
            t = k * CHUNK + s
            live = t < T
            xt = tl.load(x_row + t * d_inner, mask=mask_d & live, other=0.0)
            dtt = tl.load(dt_row + t * d_inner, mask=mask_d & live, other=0.0)
            Bt = tl.load(B_row + t * d_state, mask=mask_n & live, other=0.0)
            Ct = tl.load(C_row + t * d_state, mask=mask_n & live, other=0.0)
            h = tl.exp(dtt[:, None] * A) * h + (dtt * xt)[:, None] * Bt[None, :]
            yt = tl.sum(h * Ct[None, :], axis=1)
            if HAS_D:
                yt += Dv * xt
            tl.store(y_row + t * d_inner, yt, mask=mask_d & live)
    tl.store(hT_ptr + b * d_inner * d_state + offs_dn, h, mask=mask_dn)


@triton.jit
def scan_backward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, ckpt_ptr, gy_ptr, gh_ptr, scratch_ptr,
    dx_ptr, ddt_ptr, dB_part_ptr, dC_part_ptr, dA_part_ptr, dD_part_ptr, dh0_ptr,
    T, d_inner, d_state, n_ckpt, n_blocks,
    HAS_D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (channel blocks, batch): gradients of one (block, row) given gy = ∂L/∂y, gh = ∂L/∂h_T.

    dx, ddt (batch, T, d_inner) and dh0 (batch, d_inner, d_state) are written in full; dB_part,
    dC_part (batch, n_blocks, T, d_state), dA_part (batch, d_inner, d_state) and dD_part
    (batch, d_inner) hold this program's partial sums, reduced by the caller.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_dn = offs_d[:, None] * d_state + offs_n[None, :]
    # This program's scratch: CHUNK states of (BLOCK_D, BLOCK_N), dense.
    offs_local = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
    scratch = scratch_ptr + (b * n_blocks + pid_d) * CHUNK * BLOCK_D * BLOCK_N + offs_local

    A = tl.load(A_ptr + offs_dn, mask=mask_dn, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    lam = tl.load(gh_ptr + b * d_inner * d_state + offs_dn, mask=mask_dn, other=0.0)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=A.dtype)
    dD_acc = tl.zeros((BLOCK_D,), dtype=A.dtype)
    x_row = x_ptr + b * T * d_inner + offs_d
    dt_row = dt_ptr + b * T * d_inner + offs_d
    gy_row = gy_ptr + b * T * d_inner + offs_d
    dx_row = dx_ptr + b * T * d_inner + offs_d
    ddt_row = ddt_ptr + b * T * d_inner + offs_d
    B_row = B_ptr + b * T * d_state + offs_n
    C_row = C_ptr + b * T * d_state + offs_n
    part_row = (b * n_blocks + pid_d) * T * d_state + offs_n
    ckpt_row = ckpt_ptr + b * n_ckpt * d_inner * d_state + offs_dn
    for kk in range(0, n_ckpt):
        k = n_ckpt - 1 - kk
        # Recompute h_{t-1} for every step t of block k into the scratch area.
        h = tl.load(ckpt_row + k * d_inner * d_state, mask=mask_dn, other=0.0)
        for s in range(0, CHUNK):
            t = k * CHUNK + s
            live = t < T
            tl.store(scratch + s * BLOCK_D * BLOCK_N, h)
            xt = tl.load(x_row + t * d_inner, mask=mask_d & live, other=0.0)
            dtt = tl.load(dt_row + t * d_inner, mask=mask_d & live, other=0.0)
            Bt = tl.load(B_row + t * d_state, mask=mask_n & live, other=0.0)
            h = tl.exp(dtt[:, None] * A) * h + (dtt * xt)[:, None] * Bt[None, :]
        tl.debug_barrier()
        for ss in range(0, CHUNK):
            s = CHUNK - 1 - ss
            t = k * CHUNK + s
            live = t < T
            h_prev = tl.load(scratch + s * BLOCK_D * BLOCK_N)
            xt = tl.load(x_row + t * d_inner, mask=mask_d & live, other=0.0)
            dtt = tl.load(dt_row + t * d_inner, mask=mask_d & live, other=0.0)
            gyt = tl.load(gy_row + t * d_inner, mask=mask_d & live, other=0.0)
            Bt = tl.load(B_row + t * d_state, mask=mask_n & live, other=0.0)
            Ct = tl.load(C_row + t * d_state, mask=mask_n & live, other=0.0)
            decay = tl.exp(dtt[:, None] * A)
            u = dtt * xt
            h_t = decay * h_prev + u[:, None] * Bt[None, :]
            # lam becomes ∂L/∂h_t: the carried part plus y_t's (y_t = Σ_n C_t h_t + D x_t).
            lam += gyt[:, None] * Ct[None, :]
            tl.store(dC_part_ptr + part_row + t * d_state, tl.sum(gyt[:, None] * h_t, axis=0),
                     mask=mask_n & live)  # fmt: skip
            tl.store(dB_part_ptr + part_row + t * d_state, tl.sum(lam * u[:, None], axis=0),
                     mask=mask_n & live)  # fmt: skip
            gu = tl.sum(lam * Bt[None, :], axis=1)  # ∂L/∂u_t, u = Δ x
            da = lam * h_prev * decay  # ∂L/∂(Δ_t A)
            g_dt = gu * xt + tl.sum(da * A, axis=1)
            dA_acc += da * dtt[:, None]
            gx = gu * dtt
            if HAS_D:
                gx += gyt * Dv
            dD_acc += gyt * xt
            tl.store(dx_row + t * d_inner, gx, mask=mask_d & live)
            tl.store(ddt_row + t * d_inner, g_dt, mask=mask_d & live)
            lam = decay * lam  # now ∂L/∂h_{t-1}
        tl.debug_barrier()
    tl.store(dh0_ptr + b * d_inner * d_state + offs_dn, lam, mask=mask_dn)
    tl.store(dA_part_ptr + b * d_inner * d_state + offs_dn, dA_acc, mask=mask_dn)
    tl.store(dD_part_ptr + b * d_inner + offs_d, dD_acc, mask=mask_d)
