"""Fused CPU Longhorn recurrence: numba kernels with a hand-written backward.

Glossary as in ``naive.py`` (x_t -> x, β_t -> beta, k_t -> k, q_t -> q, ε_t -> eps, D, S_t -> state),
plus
    K (checkpoint interval)          CHECKPOINT (32)   states stored every K steps for the backward
    S_0, S_K, S_2K, ...              ckpt              (batch, ceil(T / K), d_state, d_inner)
    ∂L/∂y, ∂L/∂S_T                   gy, gh            (batch, T, d_inner), (batch, d_inner, d_state)

ε = longhorn_eps(β, k) is computed in torch (autograd takes β and the ε -> k path); the kernels
(``_fused_kernels.py``, the fused Mamba-1 kernel's design with the decay 1 - ε k² in place of
exp(Δ A)) take (x, ε, k, q, D, S_0) and return y, S_T, with gradients for all six. The kernels
are imported (with numba) on the first call; numba compiles each dtype (float32, float64) on its
first use and caches the machine code on disk. Half-precision inputs run in float32. CPU tensors
only: ``longhorn`` (the dispatcher in ``__init__.py``) falls back to the chunked form elsewhere.
"""

from __future__ import annotations

import torch

from longssm.ops._common import (
    backward_groups,
    compute_dtype,
    differentiable_once,
    numba_available,
    numpy_view,
    sum_groups,
    torch_threads_kept,
)
from longssm.ops.longhorn.naive import check_longhorn_inputs, longhorn_eps


def _kernels():
    """The numba kernels module, imported on first use (importing numba takes about a second)."""
    from longssm.ops.longhorn import _fused_kernels

    return _fused_kernels


class _FusedLonghorn(torch.autograd.Function):
    """Autograd wrapper; all inputs contiguous, in one dtype (float32 or float64)."""

    @staticmethod
    def forward(ctx, x, eps, k, q, D, h0):
        # an output that does not reach the loss (the final state, usually) comes to the backward
        # as None, not as a zero-filled tensor that autograd would allocate for it
        ctx.set_materialize_grads(False)
        # x, eps: (B, T, Di); k, q: (B, T, N); D: (Di,); h0: (B, Di, N) or a (0, 0, 0) array (zeros)
        kern = _kernels()
        batch, T, d_inner = x.shape
        d_state = k.shape[2]
        save = any(ctx.needs_input_grad)
        n_ckpt = -(-T // kern.CHECKPOINT) if save else 0
        y = torch.empty_like(x)  # (B, T, Di)
        hT = torch.empty(batch, d_inner, d_state, dtype=x.dtype)  # (B, Di, N)
        ckpt = torch.empty(batch, n_ckpt, d_state, d_inner, dtype=x.dtype)  # (B, nK, N, Di)
        with torch_threads_kept():
            kern.longhorn_forward(
                *(numpy_view(t) for t in (x, eps, k, q, D, h0, y, hT, ckpt)), save
            )
        if save:
            ctx.save_for_backward(x, eps, k, q, D, ckpt)
        return y, hT

    @staticmethod
    @differentiable_once
    def backward(ctx, gy, gh):
        kern = _kernels()
        x, eps, k, q, D, ckpt = ctx.saved_tensors
        batch, T, d_inner = x.shape
        d_state = k.shape[2]
        n_groups = backward_groups(batch, -(-d_inner // kern.LANES))
        # ∂L/∂S_T = 0 when S_T does not reach the loss (the usual case) and no ∂L/∂S_0 when S_0 = 0
        # was not an input: (0, 0, 0) arrays, not zero-filled or unused (B, Di, N) ones
        gy = torch.zeros_like(x) if gy is None else gy.to(x.dtype).contiguous()
        gh = x.new_empty(0, 0, 0) if gh is None else gh.to(x.dtype).contiguous()
        want_dh0 = ctx.needs_input_grad[5]
        dx = torch.empty_like(x)  # (B, T, Di)
        deps = torch.empty_like(x)  # (B, T, Di)
        dk_part = torch.zeros(batch, n_groups, T, d_state, dtype=x.dtype)  # (B, groups, T, N)
        dq_part = torch.zeros(batch, n_groups, T, d_state, dtype=x.dtype)  # (B, groups, T, N)
        dD_part = torch.empty(batch, d_inner, dtype=torch.float64)  # (B, Di)
        dD_sum = torch.empty(d_inner, dtype=torch.float64)  # (Di,): Σ_b dD_part
        dh0 = (
            torch.empty(batch, d_inner, d_state, dtype=x.dtype)
            if want_dh0
            else x.new_empty(0, 0, 0)
        )
        with torch_threads_kept():
            kern.longhorn_backward(
                *(
                    numpy_view(t)
                    for t in (x, eps, k, q, D, ckpt, gy, gh, dx, deps)
                    + (dk_part, dq_part, dD_part, dD_sum, dh0)
                )
            )
        dD = dD_sum.to(x.dtype)  # (Di,)
        dk, dq = sum_groups(dk_part, dq_part)  # (B, T, N) each
        return dx, deps, dk, dq, dD, (dh0 if want_dh0 else None)


def longhorn_fused(
    x: torch.Tensor,
    beta: torch.Tensor,
    k: torch.Tensor,
    q: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Longhorn recurrence by fused numba kernels on CPU; same results as ``longhorn_naive``.

    Args:
        x: (batch, T, d_inner) input.
        beta: (batch, T, d_inner) step sizes β in [0, 1] (after the sigmoid).
        k, q: (batch, T, d_state) keys and queries.
        D: (d_inner,) skip weight, or None.
        initial_state: (batch, d_inner, d_state) S_0, or None for zeros.
        output_final_state: also return S_T.

    Returns:
        y: (batch, T, d_inner) in x's dtype; final_state: (batch, d_inner, d_state) in the compute
        dtype (float32 or float64), or None.

    Raises:
        ValueError: on mismatched shapes or tensors not on the CPU.
        ImportError: when numba is not installed.
    """
    check_longhorn_inputs(x, beta, k, q, D, initial_state)
    tensors = [t for t in (x, beta, k, q, D, initial_state) if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("longhorn_fused runs on CPU tensors only; use longhorn_chunk")
    if not numba_available():
        raise ImportError("longhorn_fused needs numba (pip install numba)")
    batch, T, d_inner = x.shape
    d_state = k.shape[2]
    dtype = compute_dtype(x, beta, k, q, initial_state)
    if initial_state is not None:
        initial_state = initial_state.to(dtype)
    if T == 0:
        final = (
            initial_state
            if initial_state is not None
            else x.new_zeros(batch, d_inner, d_state, dtype=dtype)
        )
        return x.new_zeros(batch, 0, d_inner), (final if output_final_state else None)

    kc = k.to(dtype)
    eps = longhorn_eps(beta.to(dtype), kc)  # (B, T, Di)
    # (B, Di, N); S_0 = 0 goes in as a (0, 0, 0) array: the kernel starts from zeros unread
    h0 = x.new_empty(0, 0, 0, dtype=dtype) if initial_state is None else initial_state.contiguous()
    Dc = x.new_zeros(d_inner, dtype=dtype) if D is None else D.to(dtype).contiguous()  # (Di,)
    y, hT = _FusedLonghorn.apply(
        x.to(dtype).contiguous(),
        eps.contiguous(),
        kc.contiguous(),
        q.to(dtype).contiguous(),
        Dc,
        h0,
    )
    return y.to(x.dtype), (hT if output_final_state else None)
