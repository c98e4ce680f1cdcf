"""RMSNorm over the last axis: y = w ⊙ x / sqrt(mean(x²) + eps).

Forms, one signature ``(x, weight, eps)``: ``rms_norm_naive`` (plain torch: the reference, and the
form on GPUs and in half precision) and ``rms_norm_fused`` (numba kernels, CPU, float32 / float64).
``rms_norm(..., path=...)`` is the one place that picks a form: ``path="auto"`` takes the fused
form where it runs (``norm_path``). ``add_rms_norm`` (forms ``add_rms_norm_naive`` /
``add_rms_norm_fused``) also does the residual add before the norm: s = x + residual, RMSNorm(s);
``gated_rms_norm`` (forms ``gated_rms_norm_naive`` / ``gated_rms_norm_fused``) is Mamba-2's gated
norm with one group, RMSNorm(y ⊙ silu(z)).
Timings in README.md.
"""

from __future__ import annotations

import torch

from longssm.ops._common import check_path, kernels_allowed, path_unavailable
from longssm.ops.rms_norm.fused_cpu import (
    add_rms_norm_fused,
    gated_rms_norm_fused,
    rms_norm_fused,
    why_not_fused,
)
from longssm.ops.rms_norm.naive import add_rms_norm_naive, gated_rms_norm_naive, rms_norm_naive

PATHS = ("auto", "fused", "naive")
"""The values of ``rms_norm(path=...)``."""


def norm_path(x: torch.Tensor, weight: torch.Tensor) -> str:
    """The form ``path="auto"`` runs: "fused" for CPU tensors in float32 / float64 of one dtype
    when numba is importable, else "naive" (also inside ``torch_forms()``)."""
    return "fused" if kernels_allowed() and not why_not_fused(x, weight) else "naive"


def resolve_path(path: str, x: torch.Tensor, weight: torch.Tensor) -> str:
    """The form ``rms_norm(..., path=path)`` runs for these tensors.

    Raises:
        ValueError: ``path`` is not one of ``PATHS``, or is "fused" where it cannot run.
    """
    check_path("rms_norm", path, PATHS)
    if path == "auto":
        return norm_path(x, weight)
    if path == "fused":
        reason = why_not_fused(x, weight)
        if reason:
            raise path_unavailable("rms_norm", path, reason, "naive")
    return path


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, path: str = "auto") -> torch.Tensor:
    """RMSNorm by the form ``path`` names (see ``resolve_path``). Args: x (..., D); weight (D,);
    eps. Returns y (..., D)."""
    if resolve_path(path, x, weight) == "fused":
        return rms_norm_fused(x, weight, eps)
    return rms_norm_naive(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, path: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm block's residual add and the next norm: s = x + residual, y = RMSNorm(s).
    Args: x, residual (..., D) of one shape and dtype; weight (D,); eps. Returns (s, y). The
    fused form (``path`` as in ``rms_norm``) adds inside the norm's kernels, both ways; its
    results have the bits of the add followed by ``rms_norm_fused``."""
    if resolve_path(path, x, weight) == "fused":
        return add_rms_norm_fused(x, residual, weight, eps)
    return add_rms_norm_naive(x, residual, weight, eps)


def gated_rms_norm(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, path: str = "auto"
) -> torch.Tensor:
    """Mamba-2's gated norm with one group: RMSNorm(y ⊙ silu(z)) ⊙ w. Args: y, z (..., D) of one
    shape and dtype; weight (D,); eps; ``path`` as in ``rms_norm``. Returns (..., D)."""
    if resolve_path(path, y, weight) == "fused":
        return gated_rms_norm_fused(y, z, weight, eps)
    return gated_rms_norm_naive(y, z, weight, eps)


__all__ = [
    "PATHS", "add_rms_norm", "add_rms_norm_fused", "add_rms_norm_naive", "gated_rms_norm",
    "gated_rms_norm_fused", "gated_rms_norm_naive", "norm_path", "resolve_path", "rms_norm",
    "rms_norm_fused", "rms_norm_naive",
]  # fmt: skip
