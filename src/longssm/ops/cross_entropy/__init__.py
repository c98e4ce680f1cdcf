"""Cross-entropy of next-token logits: loss = mean_r (logsumexp(l_r) − l_r,t_r).

Forms, one signature ``(logits, targets)``: ``cross_entropy_naive`` (``F.cross_entropy``: the
reference, and the form on GPUs and in half precision) and ``cross_entropy_fused`` (numba kernels,
CPU, float32 / float64: one pass each way). ``cross_entropy(..., path=...)`` is the one place
that picks a form: ``path="auto"`` takes the fused form where it runs (``cross_entropy_path``).
The training loop's loss. Timings in README.md.
"""

from __future__ import annotations

import torch

from longssm.ops._common import check_path, kernels_allowed, path_unavailable
from longssm.ops.cross_entropy.fused_cpu import cross_entropy_fused, why_not_fused
from longssm.ops.cross_entropy.naive import cross_entropy_naive

PATHS = ("auto", "fused", "naive")
"""The values of ``cross_entropy(path=...)``."""


def cross_entropy_path(logits: torch.Tensor) -> str:
    """The form ``path="auto"`` runs: "fused" for CPU logits in float32 / float64 when numba is
    importable, else "naive" (also inside ``torch_forms()``)."""
    return "fused" if kernels_allowed() and not why_not_fused(logits) else "naive"


def resolve_path(path: str, logits: torch.Tensor) -> str:
    """The form ``cross_entropy(..., path=path)`` runs for these logits.

    Raises:
        ValueError: ``path`` is not one of ``PATHS``, or is "fused" where it cannot run.
    """
    check_path("cross_entropy", path, PATHS)
    if path == "auto":
        return cross_entropy_path(logits)
    if path == "fused":
        reason = why_not_fused(logits)
        if reason:
            raise path_unavailable("cross_entropy", path, reason, "naive")
    return path


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, path: str = "auto") -> torch.Tensor:
    """Mean cross-entropy by the form ``path`` names (see ``resolve_path``). Args: logits
    (rows, V); targets (rows,) integer ids in [0, V). Returns a 0-d tensor."""
    if resolve_path(path, logits) == "fused":
        return cross_entropy_fused(logits, targets)
    return cross_entropy_naive(logits, targets)


__all__ = [
    "PATHS", "cross_entropy", "cross_entropy_fused", "cross_entropy_naive", "cross_entropy_path",
    "resolve_path",
]  # fmt: skip
