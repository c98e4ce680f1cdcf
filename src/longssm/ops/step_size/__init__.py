"""Step sizes Δ = softplus(u Wᵀ + b): Mamba's Δ from its low-rank input u (..., R).

Forms, one signature ``(low, weight, bias=None)``: ``step_size_naive`` (plain torch: F.linear then
F.softplus; the reference, and the form on GPUs and in half precision) and ``step_size_fused``
(numba kernels, CPU, float32 / float64). ``step_size(..., path=...)`` is the one place that picks a
form: ``path="auto"`` takes the fused form where it runs (``step_size_path``). Timings in README.md.
"""

from __future__ import annotations

import torch

from longssm.ops._common import check_path, kernels_allowed, path_unavailable
from longssm.ops.step_size.fused_cpu import step_size_fused, why_not_fused
from longssm.ops.step_size.naive import step_size_naive

PATHS = ("auto", "fused", "naive")
"""The values of ``step_size(path=...)``."""


def step_size_path(low: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """The form ``path="auto"`` runs: "fused" for CPU tensors in float32 / float64 of one dtype
    when numba is importable, else "naive" (also inside ``torch_forms()``)."""
    return "fused" if kernels_allowed() and not why_not_fused(low, weight, bias) else "naive"


def resolve_path(
    path: str, low: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> str:
    """The form ``step_size(..., path=path)`` runs for these tensors.

    Raises:
        ValueError: ``path`` is not one of ``PATHS``, or is "fused" where it cannot run.
    """
    check_path("step_size", path, PATHS)
    if path == "auto":
        return step_size_path(low, weight, bias)
    if path == "fused":
        reason = why_not_fused(low, weight, bias)
        if reason:
            raise path_unavailable("step_size", path, reason, "naive")
    return path


def step_size(
    low: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    path: str = "auto",
) -> torch.Tensor:
    """Δ = softplus(low Wᵀ + b) by the form ``path`` names (see ``resolve_path``). Args: low
    (..., R); weight (D, R); bias (D,) or None. Returns Δ (..., D)."""
    if resolve_path(path, low, weight, bias) == "fused":
        return step_size_fused(low, weight, bias)
    return step_size_naive(low, weight, bias)


__all__ = [
    "PATHS",
    "resolve_path",
    "step_size",
    "step_size_fused",
    "step_size_naive",
    "step_size_path",
]
