"""Selective scan (Mamba-1 / S6): h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t, y_t = C_t·h_t + D x_t.

Forms, one signature ``(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False)``:
``selective_scan_naive`` (the reference loop), ``selective_scan_chunk`` (pure torch, any device),
``selective_scan_fused`` (numba kernels, CPU only), ``selective_scan_triton`` (Triton kernels, CUDA
only, optional) and ``selective_scan_step`` (one step). ``selective_scan(..., path=...)`` is the one
place that picks a form: ``path="auto"`` takes the fused form for CPU tensors when numba is
importable, the Triton form for CUDA tensors when triton is importable, else the chunked form
(``scan_path``); ``resolve_path`` says which form a path runs. Derivations and timings in README.md.
``negative_eigenvalues=True`` (transition 2 exp(Δ_t A) - 1, Grazzi et al. 2025) runs in the fused,
naive, chunk and step forms: "auto" then takes fused where it runs, else chunk; "triton" is a
ValueError.
"""

from __future__ import annotations

import torch

from longssm.ops._common import (
    check_path,
    device_types,
    kernels_allowed,
    numba_available,
    path_unavailable,
    triton_available,
)
from longssm.ops.selective_scan.chunk import DEFAULT_CHUNK_SIZE, selective_scan_chunk
from longssm.ops.selective_scan.fused_cpu import selective_scan_fused
from longssm.ops.selective_scan.naive import apply_gate, check_gate, selective_scan_naive
from longssm.ops.selective_scan.step import selective_scan_step
from longssm.ops.selective_scan.triton_gpu import interpreting, selective_scan_triton

PATHS = ("auto", "fused", "triton", "chunk", "naive")
"""The values of ``selective_scan(path=...)`` (and of the Mamba layer's ``scan`` option)."""


def scan_path(*tensors: torch.Tensor | None) -> str:
    """The form ``path="auto"`` runs for these tensors.

    "fused" when every given tensor is on the CPU and numba is importable, "triton" when every one
    is on a CUDA device and triton is importable, else "chunk" (also inside ``torch_forms()``).
    """
    if not kernels_allowed():
        return "chunk"
    devices = device_types(*tensors)
    if devices == {"cpu"} and numba_available():
        return "fused"
    if devices == {"cuda"} and triton_available():
        return "triton"
    return "chunk"


NEGATIVE_PATHS = ("auto", "fused", "chunk", "naive")
"""The paths that support ``negative_eigenvalues=True``."""


def resolve_path(
    path: str, *tensors: torch.Tensor | None, negative_eigenvalues: bool = False
) -> str:
    """The form ``selective_scan(..., path=path)`` runs for these tensors: ``scan_path`` for
    "auto", else ``path`` itself once it is known to run here.

    Raises:
        ValueError: ``path`` is not one of ``PATHS``, or cannot run here ("fused" without numba
            or on non-CPU tensors, "triton" without triton or on non-CUDA tensors outside
            Triton's interpreter).
    """
    check_path("selective_scan", path, PATHS)
    devices = device_types(*tensors)
    if negative_eigenvalues:
        if path not in NEGATIVE_PATHS:
            raise path_unavailable(
                "selective_scan", path, "negative_eigenvalues needs fused, chunk or naive"
            )
        if path == "auto":  # the fused kernels where they run, else chunk (no Triton form)
            return "fused" if scan_path(*tensors) == "fused" else "chunk"
    if path == "auto":
        return scan_path(*tensors)
    if path == "fused":
        if not numba_available():
            raise path_unavailable("selective_scan", path, "numba is not installed")
        if devices - {"cpu"}:
            raise path_unavailable("selective_scan", path, "it runs on CPU tensors only")
    if path == "triton":
        if not triton_available():
            raise path_unavailable("selective_scan", path, "triton is not installed")
        if devices - {"cuda"} and not (devices == {"cpu"} and interpreting()):
            raise path_unavailable("selective_scan", path, "it runs on CUDA tensors only")
    return path


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    path: str = "auto",
    negative_eigenvalues: bool = False,
    gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The selective scan by the form ``path`` names (see ``resolve_path``).

    Args and returns as ``selective_scan_naive``: x, dt (batch, T, d_inner); A (d_inner, d_state);
    B, C (batch, T, d_state); D (d_inner,) or None; initial_state (batch, d_inner, d_state) or None;
    returns y (batch, T, d_inner) and final_state (batch, d_inner, d_state) or None.
    ``chunk_size`` is used by the chunked form only. ``path``: "auto" (fused on CPU with numba,
    Triton on CUDA with triton, else chunk), "fused", "triton", "chunk" or "naive".
    ``negative_eigenvalues``: transition 2 exp(Δ_t A) - 1 (fused, chunk or naive; "auto" -> fused
    where it runs, else chunk).
    ``gate``: (batch, T, d_inner) z or None; y becomes y ⊙ silu(z) (Mamba's output gate), inside
    the fused kernels, by ``apply_gate`` after the other forms.
    """
    neg = negative_eigenvalues
    check_gate(gate, x)
    path = resolve_path(path, x, dt, A, B, C, D, initial_state, gate, negative_eigenvalues=neg)
    if path == "fused":
        return selective_scan_fused(
            x, dt, A, B, C, D, initial_state, output_final_state, gate, negative_eigenvalues=neg
        )
    if path == "triton":
        y, h = selective_scan_triton(x, dt, A, B, C, D, initial_state, output_final_state)
    elif path == "chunk":
        y, h = selective_scan_chunk(
            x, dt, A, B, C, D, initial_state, output_final_state, chunk_size, neg
        )
    else:
        y, h = selective_scan_naive(x, dt, A, B, C, D, initial_state, output_final_state, neg)
    return apply_gate(y, gate), h


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "NEGATIVE_PATHS",
    "PATHS",
    "apply_gate",
    "numba_available",
    "resolve_path",
    "scan_path",
    "selective_scan",
    "selective_scan_chunk",
    "selective_scan_fused",
    "selective_scan_naive",
    "selective_scan_step",
    "selective_scan_triton",
    "triton_available",
]
