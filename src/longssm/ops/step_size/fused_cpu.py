"""Fused CPU step sizes: Δ = softplus(u Wᵀ + b) by numba kernels with a hand-written backward.

Same results as ``step_size_naive`` up to rounding. Where torch runs a matmul with K = R (8 at
d_model 128: far from the machine's matmul rate), a bias add and softplus, each a pass over the
(rows, D) output, the forward here writes Δ in one pass; the backward recomputes u Wᵀ + b row by row
(R multiply-adds per element: cheaper than keeping it), forms g' = ∂L/∂(u Wᵀ + b) a row at a time
and writes ∂L/∂u = g' W (16-lane partial sums, a fixed order), with per-task partial sums of ∂L/∂W
and ∂L/∂b summed in the kernel in float64. Timings in README.md.

The kernels live in ``_fused_kernels.py``, imported (with numba) on the first call. CPU tensors in
float32 or float64 only, all of one dtype: ``step_size`` (the dispatcher in ``__init__.py``) runs
the naive form otherwise.
"""

from __future__ import annotations

import torch

from longssm.ops._common import differentiable_once, numba_available, numpy_view, torch_threads_kept
from longssm.ops.step_size.naive import check_step_size_inputs

DTYPES = (torch.float32, torch.float64)


def _kernels():
    """The numba kernels module, imported on first use (importing numba takes about a second)."""
    from longssm.ops.step_size import _fused_kernels

    return _fused_kernels


def run_forward(low, WT, bias):
    """The forward kernel: Δ (rows, D) from low (rows, R), WT (R, D), bias (D,), contiguous, of
    one dtype."""
    out = low.new_empty(low.shape[0], WT.shape[1])  # (rows, D)
    with torch_threads_kept():
        _kernels().step_size_forward(*(numpy_view(t) for t in (low, WT, bias, out)))
    return out


def run_backward(low, WT, bias, gout):
    """The backward kernel given ∂L/∂Δ (rows, D): returns ∂L/∂low (rows, R), ∂L/∂WT (R, D) and
    ∂L/∂b (D,)."""
    kern = _kernels()
    gout = gout.to(low.dtype).contiguous()
    n_tasks = -(-low.shape[0] // kern.ROWS)
    dlow = torch.empty_like(low)  # (rows, R)
    dWT_part = low.new_empty(n_tasks, *WT.shape)  # (tasks, R, D)
    db_part = low.new_empty(n_tasks, WT.shape[1])  # (tasks, D)
    dWT_sum = torch.empty(WT.numel(), dtype=torch.float64)  # (R * D,): Σ over the tasks
    db_sum = torch.empty(WT.shape[1], dtype=torch.float64)  # (D,)
    tensors = (low, WT, bias, gout, dlow, dWT_part, db_part, dWT_sum, db_sum)
    with torch_threads_kept():
        kern.step_size_backward(*(numpy_view(t) for t in tensors))
    dWT = dWT_sum.to(low.dtype).reshape(WT.shape)  # (R, D)
    db = db_sum.to(low.dtype)  # (D,)
    return dlow, dWT, db


class _FusedStepSize(torch.autograd.Function):
    """Autograd wrapper; low (rows, R), WT (R, D), bias (D,) contiguous, of one dtype."""

    @staticmethod
    def forward(ctx, low, WT, bias):
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(low, WT, bias)
        return run_forward(low, WT, bias)

    @staticmethod
    @differentiable_once
    def backward(ctx, gout):
        low, WT, bias = ctx.saved_tensors
        return run_backward(low, WT, bias, gout)  # ∂L/∂low (rows, R), ∂L/∂WT, ∂L/∂b


def why_not_fused(low: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why the fused form cannot run on these tensors, or None when it can."""
    if not numba_available():
        return "numba is not installed"
    tensors = [t for t in (low, weight, bias) if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        return "it runs on CPU tensors only"
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or low.dtype not in DTYPES:
        names = ", ".join(str(t.dtype) for t in tensors)
        return f"it needs its inputs all float32 or all float64, got {names}"
    return None


def step_size_fused(
    low: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Δ = softplus(low Wᵀ + b) by fused numba kernels. Args: low (..., R); weight (D, R); bias
    (D,) or None; all of one dtype (float32 or float64), on the CPU. Returns Δ (..., D).

    Raises:
        ValueError: on mismatched shapes, other dtypes or tensors off the CPU (``why_not_fused``).
        ImportError: when numba is not installed.
    """
    check_step_size_inputs(low, weight, bias)
    if not numba_available():
        raise ImportError("step_size_fused needs numba (pip install numba)")
    reason = why_not_fused(low, weight, bias)
    if reason:
        raise ValueError(f"step_size_fused cannot run: {reason}; use step_size_naive")
    D = weight.shape[0]
    if bias is None:
        bias = weight.new_zeros(D)
    if low.numel() == 0:
        return low.new_zeros(*low.shape[:-1], D) + bias * 0  # keeps the autograd graph
    out = _FusedStepSize.apply(
        low.reshape(-1, low.shape[-1]).contiguous(),
        weight.t().contiguous(),  # (R, D)
        bias.contiguous(),
    )
    return out.reshape(*low.shape[:-1], D)
