"""Fused CPU S4D scan: the layer's complex diagonal recurrence as numba kernels, with a
hand-written backward; the same results as ``s4d_conv`` without its FFTs and powers.

Per channel h and mode n (N modes, complex, time-invariant), from h_{-1} = h_0 (zeros if none):
    h_t = λ̄ h_{t-1} + B̄ u_t,      y_t = 2 Re(Σ_n C_n h_{t,n}) + D u_t,      t = 0 .. T-1
In real arithmetic, λ̄ = a + ib, B̄ = p + iq, C = c + id, h = r + is:
    r' = a r − b s + p u,   s' = a s + b r + q u,   y += 2 (c r' − d s')
Backward, g_t = ∂L/∂y_t and μ_t = ∂L/∂r_t + i ∂L/∂s_t (torch's convention for a complex tensor
read as (re, im)):
    μ_t = 2 g_t conj(C) + conj(λ̄) μ_{t+1}      (μ_{T-1} also gets ∂L/∂h_T)
    ∂L/∂λ̄ = Σ_t μ_t conj(h_{t-1}),  ∂L/∂B̄ = Σ_t μ_t u_t,  ∂L/∂C = 2 Σ_t g_t conj(h_t)
    ∂L/∂u_t = Σ_n Re(conj(B̄) μ_t) + D g_t,  ∂L/∂D = Σ_t g_t u_t,  ∂L/∂h_0 = conj(λ̄) μ_0

Glossary (symbol -> code name, shape; complex tensors enter the kernels as real views):
    u, y (input, output)             u, y          (batch, T, H) real
    λ̄, B̄, C                          lam, Bb, Cc   (H, N, 2) = view_as_real of (H, N) complex
    D (skip)                         D             (H,)
    h_0, h_T                         h0, hT        (batch, H, N, 2)
    K (checkpoint interval)          CHECKPOINT    (32) states stored every K steps for the backward

Layout: one task per (batch row, block of 16 channels), the channels on the SIMD lanes (u_t and
y_t are contiguous in H: no sums across lanes), the modes the loop inside each step; the block's
state (N, 2, 16) stays in a small local array and (batch, T, H, N) is never formed. The backward
runs time in reverse, recomputing each K-step block's states from its checkpoint; the parameter
gradients come back as per-batch-row float64 partials, summed here over the batch in a fixed
order, so results do not depend on the thread count. Kernels in ``_s4d_fused_kernels.py``,
imported (with numba) on the first call. Timings in README.md ("Fused CPU kernel").
"""

from __future__ import annotations

import torch

from longssm.ops._common import differentiable_once, numba_available, numpy_view, torch_threads_kept

from .conv import _check_conv_inputs

__all__ = ["s4d_scan_fused"]


def _kernels():
    """The numba kernels module, imported on first use (importing numba takes about a second)."""
    from longssm.ops.diag_scan import _s4d_fused_kernels

    return _s4d_fused_kernels


def _unused(u: torch.Tensor) -> torch.Tensor:
    """A (0, 0, 0, 0) array in u's dtype: the kernels' stand-in for h_0, ∂L/∂h_T and ∂L/∂h_0 when
    they are zero or not wanted."""
    return u.new_empty(0, 0, 0, 0)


def run_forward(u, lam, Bb, Cc, D, h0, save: bool):
    """The forward kernel on prepared tensors (contiguous, one real dtype; lam, Bb, Cc (H, N, 2);
    h0 (batch, H, N, 2) or a (0, 0, 0, 0) array for h_0 = 0): returns y (batch, T, H), h_T
    (batch, H, N, 2) and the checkpoints (batch, n_blocks, ceil(T / K), N, 2, 16), empty along
    axis 2 unless ``save``."""
    kern = _kernels()
    batch, T, H = u.shape
    N = lam.shape[1]
    n_blocks = -(-H // kern.LANES)
    n_ckpt = -(-T // kern.CHECKPOINT) if save else 0
    y = torch.empty_like(u)  # (B, T, H)
    hT = torch.empty(batch, H, N, 2, dtype=u.dtype)  # (B, H, N, 2)
    ckpt = torch.empty(batch, n_blocks, n_ckpt, N, 2, kern.LANES, dtype=u.dtype)
    with torch_threads_kept():
        kern.s4d_forward(*(numpy_view(t) for t in (u, lam, Bb, Cc, D, h0, y, hT, ckpt)), save)
    return y, hT, ckpt


def run_backward(u, lam, Bb, Cc, D, ckpt, gy, gh, want_dh0: bool):
    """The backward kernel given the forward's tensors, its checkpoints, ∂L/∂y and ∂L/∂h_T (None:
    not reaching the loss). Returns ∂L/∂u (batch, T, H), ∂L/∂λ̄, ∂L/∂B̄, ∂L/∂C (H, N, 2), ∂L/∂D
    (H,) and ∂L/∂h_0 (batch, H, N, 2) or None (not ``want_dh0``)."""
    kern = _kernels()
    batch, T, H = u.shape
    N = lam.shape[1]
    gy = torch.zeros_like(u) if gy is None else gy.to(u.dtype).contiguous()
    gh = _unused(u) if gh is None else gh.to(u.dtype).contiguous()
    du = torch.empty_like(u)  # (B, T, H)
    prm_part = torch.empty(batch, 6, N, H, dtype=torch.float64)  # ∂a ∂b ∂p ∂q Σgr Σgs
    dD_part = torch.empty(batch, H, dtype=torch.float64)  # (B, H)
    prm_sum = torch.empty(6, N, H, dtype=torch.float64)  # Σ_b prm_part
    dD_sum = torch.empty(H, dtype=torch.float64)  # (H,): Σ_b dD_part
    dh0 = torch.empty(batch, H, N, 2, dtype=u.dtype) if want_dh0 else _unused(u)
    with torch_threads_kept():
        kern.s4d_backward(
            *(numpy_view(t) for t in (u, lam, Bb, Cc, D, ckpt, gy, gh, du, prm_part, dD_part)),
            (numpy_view(prm_sum.reshape(-1)), numpy_view(dD_sum)),
            numpy_view(dh0),
        )
    sums = prm_sum.permute(2, 1, 0)  # (H, N, 6)
    dlam = sums[..., 0:2]  # (H, N, 2)
    dB = sums[..., 2:4]  # (H, N, 2)
    dC = sums[..., 4:6] * sums.new_tensor([2.0, -2.0])  # ∂c = 2 Σ g r, ∂d = −2 Σ g s
    grads = (t.to(u.dtype).contiguous() for t in (dlam, dB, dC))
    dD = dD_sum.to(u.dtype)  # (H,)
    return du, *grads, dD, (dh0 if want_dh0 else None)


class _FusedS4D(torch.autograd.Function):
    """Autograd wrapper; all inputs contiguous real tensors in one dtype (float32 or float64)."""

    @staticmethod
    def forward(ctx, u, lam, Bb, Cc, D, h0):
        # an output that does not reach the loss (the final state, usually) comes to the backward
        # as None, not as a zero-filled tensor
        ctx.set_materialize_grads(False)
        save = any(ctx.needs_input_grad)
        y, hT, ckpt = run_forward(u, lam, Bb, Cc, D, h0, save)
        if save:
            ctx.save_for_backward(u, lam, Bb, Cc, D, ckpt)
        return y, hT

    @staticmethod
    @differentiable_once
    def backward(ctx, gy, gh):
        u, lam, Bb, Cc, D, ckpt = ctx.saved_tensors
        return run_backward(u, lam, Bb, Cc, D, ckpt, gy, gh, ctx.needs_input_grad[5])


def _real_view(z: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """(..., 2) contiguous real view of z in ``cdtype`` (gradients flow back through it)."""
    return torch.view_as_real(z.to(cdtype).resolve_conj()).contiguous()


def s4d_scan_fused(
    u: torch.Tensor,
    lam_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """S4D output ``y_t = 2 Re(Σ_n C h_t) + D u_t`` by the recurrence in fused numba kernels (CPU);
    arguments, returns and errors of ``s4d_conv``.

    Args:
        u: (batch, T, H) real input.
        lam_bar: (H, N) complex discrete eigenvalues.
        B_bar: (H, N) complex discrete input vector.
        C: (H, N) complex output vector (the conjugate half; the output takes 2 Re).
        D: (H,) real skip, or None.
        initial_state: (batch, H, N) complex h_0, or None for zeros.
        output_final_state: also return h_T.
    Returns:
        y: (batch, T, H) in u's real dtype (float32 at least); final_state: (batch, H, N) complex
        (complex64 or complex128), or None.
    Raises:
        ValueError / TypeError: as ``s4d_conv``; ValueError for tensors off the CPU.
        ImportError: when numba is not installed.
    """
    _check_conv_inputs(u, lam_bar, B_bar, C, D, initial_state)
    tensors = [t for t in (u, lam_bar, B_bar, C, D, initial_state) if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("s4d_scan_fused runs on CPU tensors only; use s4d_conv")
    if not numba_available():
        raise ImportError("s4d_scan_fused needs numba (pip install numba)")
    dtype = torch.promote_types(u.dtype, torch.float32)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    batch, T, H = u.shape
    h0 = None if initial_state is None else initial_state.to(cdtype)
    if T == 0:
        final = h0 if h0 is not None else u.new_zeros(batch, *lam_bar.shape, dtype=cdtype)
        return u.new_zeros(batch, 0, H, dtype=dtype), (final if output_final_state else None)
    u = u.to(dtype).contiguous()  # (B, T, H)
    h0 = _unused(u) if h0 is None else _real_view(h0, cdtype)  # (B, H, N, 2)
    Dc = u.new_zeros(H) if D is None else D.to(dtype).contiguous()  # (H,)
    y, hT = _FusedS4D.apply(
        u,
        *(_real_view(t, cdtype) for t in (lam_bar, B_bar, C)),
        Dc,
        h0,
    )
    return y, (torch.view_as_complex(hT) if output_final_state else None)
