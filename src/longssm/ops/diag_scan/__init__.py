"""diag_scan: the complex diagonal time-invariant recurrence of S4D and S5, plus S4D's FFT form.

Forms of ``h_t = lam * h_{t-1} + v_t``, one signature ``(v, lam, initial_state=None,
output_final_state=False) -> (h_all, final_state)``: ``diag_scan_naive`` (the specification),
``diag_scan_chunk`` (chunked Toeplitz-of-powers form) and ``diag_scan_step`` (one decoding step).
``diag_scan(..., path=...)`` picks a form ("auto" = "chunk", the only fast form). ``s4d_conv`` is
S4D's whole layer response as an FFT convolution with the initial-state response and the final
state. See README.md for derivations.
"""

from __future__ import annotations

import torch

from longssm.ops._common import check_path

from .chunk import diag_scan_chunk
from .conv import matmul_complex_real, matmul_re, s4d_conv
from .naive import diag_scan_naive
from .step import diag_scan_step

DEFAULT_CHUNK_SIZE = 32
PATHS = ("auto", "chunk", "naive")
"""The values of ``diag_scan(path=...)``."""


def resolve_path(path: str, *tensors: torch.Tensor | None) -> str:
    """The form ``diag_scan(..., path=path)`` runs: "chunk" for "auto", else ``path``.

    Raises:
        ValueError: ``path`` is not one of ``PATHS``.
    """
    check_path("diag_scan", path, PATHS)
    return "chunk" if path == "auto" else path


def diag_scan(
    v: torch.Tensor,
    lam: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    path: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``h_t = lam * h_{t-1} + v_t`` by the form ``path`` names: "auto" or "chunk" (chunked,
    ``chunk_size`` long) or "naive". Args and returns as ``diag_scan_chunk``."""
    if resolve_path(path, v, lam, initial_state) == "chunk":
        return diag_scan_chunk(v, lam, initial_state, output_final_state, chunk_size=chunk_size)
    return diag_scan_naive(v, lam, initial_state, output_final_state)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PATHS",
    "diag_scan",
    "diag_scan_chunk",
    "diag_scan_naive",
    "diag_scan_step",
    "matmul_complex_real",
    "matmul_re",
    "resolve_path",
    "s4d_conv",
]
