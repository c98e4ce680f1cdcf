"""Longhorn: S_t = (1 - ε_t k_t²) ⊙ S_{t-1} + ε_t x_t k_tᵀ, y_t = S_t q_t + D x_t, ε_t = β_t/(1+β_t||k_t||²).

Forms, one signature ``(x, beta, k, q, D=None, initial_state=None, output_final_state=False)``:
``longhorn_naive`` (the reference loop), ``longhorn_chunk`` (pure torch, any device),
``longhorn_fused`` (numba kernels, CPU only) and ``longhorn_step`` (one step). ``longhorn``
dispatches: the fused form for CPU tensors when numba is importable, else the chunked form
(``longhorn_path`` says which). Derivation and timings in README.md.
"""

from __future__ import annotations

import torch

from longssm.ops.longhorn.chunk import DEFAULT_CHUNK_SIZE, longhorn_chunk, longhorn_log_decay
from longssm.ops.longhorn.fused_cpu import longhorn_fused
from longssm.ops.longhorn.naive import longhorn_eps, longhorn_naive
from longssm.ops.longhorn.step import longhorn_step
from longssm.ops.selective_scan.fused_cpu import numba_available


def longhorn_path(*tensors: torch.Tensor | None) -> str:
    """The form ``longhorn`` runs for these tensors: "fused" when every given tensor is on the CPU
    and numba is importable, else "chunk"."""
    devices = {t.device.type for t in tensors if t is not None}
    if devices == {"cpu"} and numba_available():
        return "fused"
    return "chunk"


def longhorn(
    x: torch.Tensor,
    beta: torch.Tensor,
    k: torch.Tensor,
    q: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fastest available form: fused on CPU with numba, else chunked (``chunk_size`` is used
    by the chunked form only). Args and returns as ``longhorn_naive``."""
    if longhorn_path(x, beta, k, q, D, initial_state) == "fused":
        return longhorn_fused(x, beta, k, q, D, initial_state, output_final_state)
    return longhorn_chunk(
        x, beta, k, q, D, initial_state, output_final_state, chunk_size=chunk_size
    )


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "longhorn",
    "longhorn_chunk",
    "longhorn_eps",
    "longhorn_fused",
    "longhorn_log_decay",
    "longhorn_naive",
    "longhorn_path",
    "longhorn_step",
]
