"""Fused CPU cross-entropy: the mean next-token loss by numba kernels, one pass each way.

Same results as ``cross_entropy_naive`` up to rounding (the sums run in another order). torch's
form runs log-softmax (keeping a (rows, V) output), a gather, and backward a zero fill of a
(rows, V) gradient, a scatter and the log-softmax backward; here the forward keeps only the
per-row logsumexp and the backward writes ∂L/∂logits in one pass (timings in README.md).

The kernels live in ``_fused_kernels.py``, imported (with numba) on the first call. CPU logits in
float32 or float64 only: ``cross_entropy`` (the dispatcher in ``__init__.py``) runs the naive
form otherwise.
"""

from __future__ import annotations

import torch

from longssm.ops._common import differentiable_once, numba_available, numpy_view, torch_threads_kept
from longssm.ops.cross_entropy.naive import check_cross_entropy_inputs

DTYPES = (torch.float32, torch.float64)


def _kernels():
    """The numba kernels module, imported on first use (importing numba takes about a second)."""
    from longssm.ops.cross_entropy import _fused_kernels

    return _fused_kernels


class _FusedCrossEntropy(torch.autograd.Function):
    """Autograd wrapper; logits (rows, V) contiguous float32 / float64, targets (rows,) int64."""

    @staticmethod
    def forward(ctx, logits, targets):
        rows = logits.shape[0]
        lse = logits.new_empty(rows)  # (rows,)
        loss_rows = logits.new_empty(rows)  # (rows,)
        with torch_threads_kept():
            _kernels().cross_entropy_forward(
                *(numpy_view(t) for t in (logits, targets, lse, loss_rows))
            )
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(logits, targets, lse)
        return (loss_rows.sum(dtype=torch.float64) / rows).to(logits.dtype)

    @staticmethod
    @differentiable_once
    def backward(ctx, gloss):
        logits, targets, lse = ctx.saved_tensors
        scale = float(gloss) / logits.shape[0]
        dlogits = torch.empty_like(logits)  # (rows, V)
        with torch_threads_kept():
            _kernels().cross_entropy_backward(
                numpy_view(logits), numpy_view(targets), numpy_view(lse), scale,
                numpy_view(dlogits),
            )  # fmt: skip
        return dlogits, None


def why_not_fused(logits: torch.Tensor) -> str | None:
    """Why the fused form cannot run on these logits, or None when it can."""
    if not numba_available():
        return "numba is not installed"
    if logits.device.type != "cpu":
        return "it runs on CPU tensors only"
    if logits.dtype not in DTYPES:
        return f"it needs float32 or float64 logits, got {logits.dtype}"
    return None


def cross_entropy_fused(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy by fused numba kernels. Args: logits (rows, V) float32 / float64 on
    the CPU; targets (rows,) integer ids in [0, V). Returns a 0-d tensor of the logits' dtype.

    Raises:
        ValueError: on mismatched shapes, ids out of range, other dtypes or tensors off the CPU.
        ImportError: when numba is not installed.
    """
    check_cross_entropy_inputs(logits, targets)
    if not numba_available():
        raise ImportError("cross_entropy_fused needs numba (pip install numba)")
    reason = why_not_fused(logits)
    if reason:
        raise ValueError(f"cross_entropy_fused cannot run: {reason}; use cross_entropy_naive")
    if logits.shape[0] == 0:
        return logits.sum() / 0  # NaN, as F.cross_entropy's mean over no rows
    return _FusedCrossEntropy.apply(logits.contiguous(), targets.long().contiguous())
