"""Longhorn: S_t = (1 - ε_t k_t²) ⊙ S_{t-1} + ε_t x_t k_tᵀ, y_t = S_t q_t + D x_t, ε_t = β_t/(1+β_t||k_t||²).

Forms, one signature ``(x, beta, k, q, D=None, initial_state=None, output_final_state=False)``:
``longhorn_naive`` (the reference loop), ``longhorn_chunk`` (pure torch, any device),
``longhorn_fused`` (numba kernels, CPU only) and ``longhorn_step`` (one step).
``longhorn(..., path=...)`` is the one place that picks a form: ``path="auto"`` takes the fused form
for CPU tensors when numba is importable, else the chunked form (``longhorn_path``);
``resolve_path`` says which form a path runs. Derivation and timings in README.md.
"""

from __future__ import annotations

import torch

from longssm.ops._common import (
    check_path,
    device_types,
    kernels_allowed,
    numba_available,
    path_unavailable,
)
from longssm.ops.longhorn.chunk import DEFAULT_CHUNK_SIZE, longhorn_chunk, longhorn_log_decay
from longssm.ops.longhorn.fused_cpu import longhorn_fused
from longssm.ops.longhorn.naive import longhorn_eps, longhorn_naive
from longssm.ops.longhorn.step import longhorn_step

PATHS = ("auto", "fused", "chunk", "naive")
"""The values of ``longhorn(path=...)`` (and of the Longhorn layer's ``scan`` option)."""


def longhorn_path(*tensors: torch.Tensor | None) -> str:
    """The form ``path="auto"`` runs for these tensors: "fused" when every given tensor is on the
    CPU and numba is importable, else "chunk" (also inside ``torch_forms()``)."""
    if kernels_allowed() and device_types(*tensors) == {"cpu"} and numba_available():
        return "fused"
    return "chunk"


def resolve_path(path: str, *tensors: torch.Tensor | None) -> str:
    """The form ``longhorn(..., path=path)`` runs for these tensors: ``longhorn_path`` for "auto",
    else ``path`` itself once it is known to run here.

    Raises:
        ValueError: ``path`` is not one of ``PATHS``, or is "fused" without numba or with
            tensors off the CPU.
    """
    check_path("longhorn", path, PATHS)
    if path == "auto":
        return longhorn_path(*tensors)
    if path == "fused":
        if not numba_available():
            raise path_unavailable("longhorn", path, "numba is not installed")
        if device_types(*tensors) - {"cpu"}:
            raise path_unavailable("longhorn", path, "it runs on CPU tensors only")
    return path


def longhorn(
    x: torch.Tensor,
    beta: torch.Tensor,
    k: torch.Tensor,
    q: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    path: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Longhorn by the form ``path`` names (see ``resolve_path``): "auto" (fused on CPU with
    numba, else chunk), "fused", "chunk" or "naive". ``chunk_size`` is used by the chunked form
    only. Args and returns as ``longhorn_naive``."""
    path = resolve_path(path, x, beta, k, q, D, initial_state)
    if path == "fused":
        return longhorn_fused(x, beta, k, q, D, initial_state, output_final_state)
    if path == "chunk":
        return longhorn_chunk(
            x, beta, k, q, D, initial_state, output_final_state, chunk_size=chunk_size
        )
    return longhorn_naive(x, beta, k, q, D, initial_state, output_final_state)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PATHS",
    "longhorn",
    "longhorn_chunk",
    "longhorn_eps",
    "longhorn_fused",
    "longhorn_log_decay",
    "longhorn_naive",
    "longhorn_path",
    "longhorn_step",
    "resolve_path",
]
