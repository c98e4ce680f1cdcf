"""Fused CPU SSD (Mamba-2 scan): numba kernels with a hand-written backward.

Glossary as in ``naive.py`` (x_t -> x, Δ_t -> dt, a_h -> A, B_t -> B, C_t -> C, D, h_t -> state),
plus
    K (checkpoint interval)        CHECKPOINT (32)   states stored every K steps for the backward
    h_0, h_K, h_2K, ...            ckpt              (batch, ceil(T / K), nheads, d_state, headdim)
    ∂L/∂y, ∂L/∂h_T                 gy, gh            like y and the final state

The forward keeps the state of one head's block of 16 headdim channels in a small local array and
runs over time once, parallel over the (batch row, head, channel block) triples; it never
materialises (batch, T, nheads, headdim, d_state). The backward runs time in reverse, recomputing
the states of each K-step block from its checkpoint. The sums that cross tasks (∂L/∂Δ over the
blocks of a head, ∂L/∂B and ∂L/∂C over the blocks and heads of a group, ∂L/∂A, ∂L/∂D) come back
as per-task partials, reduced here in torch in a fixed order: the result does not depend on the
thread count. Kernels in ``_fused_kernels.py``, imported (with numba) on the first call.
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
from longssm.ops.ssd.naive import check_ssd_inputs

__all__ = ["ssd_fused"]


def _kernels():
    """The numba kernels module, imported on first use (importing numba takes about a second)."""
    from longssm.ops.ssd import _fused_kernels

    return _fused_kernels


def _unused(x: torch.Tensor) -> torch.Tensor:
    """A (0, 0, 0, 0) array in x's dtype: the kernels' stand-in for h_0, ∂L/∂h_T and ∂L/∂h_0 when
    they are zero or not wanted."""
    return x.new_empty(0, 0, 0, 0)


def _flat(t: torch.Tensor):
    """A (batch, T, nheads * headdim) numpy view of a contiguous (batch, T, nheads, headdim)."""
    return numpy_view(t.view(t.shape[0], t.shape[1], -1))


def run_forward(x, dt, A, B, C, D, h0, save: bool):
    """The forward kernel on prepared tensors (contiguous, one dtype; h0 a (0, 0, 0, 0) array for
    h_0 = 0): returns y (b, T, H, P), h_T (b, H, P, N) and the checkpoints
    (b, ceil(T / K), H, N, P), empty along axis 1 unless ``save``."""
    kern = _kernels()
    batch, T, nheads, headdim = x.shape
    d_state = B.shape[-1]
    n_ckpt = -(-T // kern.CHECKPOINT) if save else 0
    y = torch.empty_like(x)  # (b, T, H, P)
    hT = torch.empty(batch, nheads, headdim, d_state, dtype=x.dtype)  # (b, H, P, N)
    ckpt = torch.empty(batch, n_ckpt, nheads, d_state, headdim, dtype=x.dtype)  # (b, nK, H, N, P)
    with torch_threads_kept():
        kern.ssd_forward(
            _flat(x), *(numpy_view(t) for t in (dt, A, B, C, D, h0)), _flat(y),
            numpy_view(hT), numpy_view(ckpt), save,
        )  # fmt: skip
    return y, hT, ckpt


def run_backward(x, dt, A, B, C, D, ckpt, gy, gh, want_dh0: bool):
    """The backward kernel given the forward's tensors, its checkpoints, ∂L/∂y and ∂L/∂h_T (None:
    not reaching the loss). Returns ∂L/∂x, ∂L/∂Δ, ∂L/∂A, ∂L/∂B, ∂L/∂C, ∂L/∂D and ∂L/∂h_0 (None
    unless ``want_dh0``), each in the shape of its input."""
    kern = _kernels()
    batch, T, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2], B.shape[-1]
    n_blocks = -(-headdim // kern.LANES)
    n_parts = backward_groups(batch * ngroups, (nheads // ngroups) * n_blocks)
    gy = torch.zeros_like(x) if gy is None else gy.to(x.dtype).contiguous()
    gh = _unused(x) if gh is None else gh.to(x.dtype).contiguous()
    dx = torch.empty_like(x)  # (b, T, H, P)
    dB_part = torch.zeros(batch, n_parts, T, ngroups, d_state, dtype=x.dtype)  # (b, parts, T, G, N)
    dC_part = torch.zeros(batch, n_parts, T, ngroups, d_state, dtype=x.dtype)  # (b, parts, T, G, N)
    ddt_part = torch.empty(batch, n_blocks, T, nheads, dtype=x.dtype)  # (b, blocks, T, H)
    dA_part = torch.empty(batch, nheads, n_blocks, dtype=torch.float64)  # (b, H, blocks)
    dD_part = torch.empty(batch, nheads, n_blocks, dtype=torch.float64)  # (b, H, blocks)
    dh0 = torch.empty(batch, nheads, headdim, d_state, dtype=x.dtype) if want_dh0 else _unused(x)
    parts = tuple(numpy_view(t) for t in (dB_part, dC_part, ddt_part, dA_part, dD_part))
    with torch_threads_kept():
        kern.ssd_backward(
            _flat(x), *(numpy_view(t) for t in (dt, A, B, C, D, ckpt)), _flat(gy),
            numpy_view(gh), _flat(dx), parts, numpy_view(dh0),
        )  # fmt: skip
    dB, dC, ddt = sum_groups(dB_part, dC_part, ddt_part)  # (b, T, G, N), (b, T, G, N), (b, T, H)
    dA = dA_part.sum((0, 2)).to(x.dtype)  # (H,)
    dD = dD_part.sum((0, 2)).to(x.dtype)  # (H,)
    return dx, ddt, dA, dB, dC, dD, (dh0 if want_dh0 else None)


class _FusedSSD(torch.autograd.Function):
    """Autograd wrapper; all inputs contiguous, in one dtype (float32 or float64)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, h0):
        # an output that does not reach the loss (the final state, usually) comes to the backward
        # as None, not as a zero-filled tensor
        ctx.set_materialize_grads(False)
        save = any(ctx.needs_input_grad)
        y, hT, ckpt = run_forward(x, dt, A, B, C, D, h0, save)
        if save:
            ctx.save_for_backward(x, dt, A, B, C, D, ckpt)
        return y, hT

    @staticmethod
    @differentiable_once
    def backward(ctx, gy, gh):
        x, dt, A, B, C, D, ckpt = ctx.saved_tensors
        return run_backward(x, dt, A, B, C, D, ckpt, gy, gh, ctx.needs_input_grad[6])


def ssd_fused(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSD by fused numba kernels on CPU; arguments and returns of ``ssd_naive``.

    Returns:
        y: (batch, T, nheads, headdim) in x's dtype; final_state: (batch, nheads, headdim,
        d_state) in the compute dtype (float32 or float64), or None.

    Raises:
        ValueError: on mismatched shapes or tensors not on the CPU.
        ImportError: when numba is not installed.
    """
    batch, nheads, headdim, _, d_state = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    tensors = [t for t in (x, dt, A, B, C, D, initial_state) if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("ssd_fused runs on CPU tensors only; use ssd_chunk")
    if not numba_available():
        raise ImportError("ssd_fused needs numba (pip install numba)")
    dtype = compute_dtype(x)  # as ssd_naive and ssd_chunk: x's dtype, at least float32
    if initial_state is not None:
        initial_state = initial_state.to(dtype)
    if x.shape[1] == 0:
        final = (
            initial_state
            if initial_state is not None
            else x.new_zeros(batch, nheads, headdim, d_state, dtype=dtype)
        )
        return x.new_zeros(x.shape), (final if output_final_state else None)
    h0 = x.new_empty(0, 0, 0, 0, dtype=dtype) if initial_state is None else initial_state
    Dc = x.new_zeros(nheads, dtype=dtype) if D is None else D.to(dtype)  # (H,)
    y, hT = _FusedSSD.apply(*(t.to(dtype).contiguous() for t in (x, dt, A, B, C, Dc, h0)))
    return y.to(x.dtype), (hT if output_final_state else None)
