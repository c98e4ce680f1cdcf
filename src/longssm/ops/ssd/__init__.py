"""SSD, the Mamba-2 scan: scalar decay per head, heads sharing their group's B and C.

Forms, one signature ``(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False)
-> (y, final_state)``: ``ssd_naive`` (the specification), ``ssd_chunk`` (the chunked matmul form,
any device), ``ssd_fused`` (numba kernels, CPU only), ``ssd_fla`` (flash-linear-attention's
Triton kernels, CUDA only, optional) and ``ssd_step`` (one decoding step). ``ssd(..., path=...)``
is the one place that picks a form: ``path="auto"`` takes the fused kernels for CPU tensors when
numba is installed, fla for CUDA inference when it is importable, else the chunked form
(``ssd_path``); ``resolve_path`` says which form a path runs. See README.md for the derivation.
"""

from __future__ import annotations

import torch

from longssm.ops._common import check_path, kernels_allowed, numba_available, path_unavailable

from .chunk import ssd_chunk
from .fla_gpu import fla_available, fla_backward_supported, ssd_fla
from .fused_cpu import ssd_fused
from .naive import ssd_naive
from .step import ssd_step

DEFAULT_CHUNK_SIZE = 64
PATHS = ("auto", "chunk", "fused", "fla", "naive")
"""The values of ``ssd(path=...)`` (and of the Mamba-2 layer's ``scan`` option)."""


def ssd_path(*tensors: torch.Tensor | None) -> str:
    """The form ``path="auto"`` runs for these tensors.

    "fused" when every given tensor is on the CPU and numba is installed (training and inference).
    "fla" when no gradient will be needed (inference: ``torch.no_grad`` / ``inference_mode``, or
    no tensor requires grad), every given tensor is on a CUDA device in float32 or half precision
    and fla is importable; else "chunk". Training keeps the chunked form, whose gradients are
    tested on the GPU; fla's backward is opt-in (``path="fla"``, ``Mamba2(scan="fla")``) because it
    could not be checked here (fla 0.6 refuses it on Hopper GPUs with Triton < 3.7.1).
    """
    given = [t for t in tensors if t is not None]
    if not kernels_allowed() or not given:
        return "chunk"
    if all(t.device.type == "cpu" for t in given):
        return "fused" if numba_available() else "chunk"
    if not all(t.device.type == "cuda" and t.dtype != torch.float64 for t in given):
        return "chunk"
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in given)
    return "fla" if not needs_grad and fla_available() else "chunk"


def resolve_path(path: str, *tensors: torch.Tensor | None) -> str:
    """The form ``ssd(..., path=path)`` runs for these tensors: ``ssd_path`` for "auto", else
    ``path`` itself once it is known to run here.

    Raises:
        ValueError: ``path`` is not one of ``PATHS``, or is "fused" without numba or with tensors
            off the CPU, or is "fla" without flash-linear-attention, with tensors off CUDA or with
            float64 tensors.
    """
    check_path("ssd", path, PATHS)
    if path == "auto":
        return ssd_path(*tensors)
    if path == "fused":
        if not numba_available():
            raise path_unavailable("ssd", path, "numba is not installed")
        if any(t is not None and t.device.type != "cpu" for t in tensors):
            raise path_unavailable("ssd", path, "it runs on CPU tensors only")
    if path == "fla":
        given = [t for t in tensors if t is not None]
        if not fla_available():
            raise path_unavailable("ssd", path, "flash-linear-attention is not installed")
        if any(t.device.type != "cuda" for t in given):
            raise path_unavailable("ssd", path, "it runs on CUDA tensors only")
        if any(t.dtype == torch.float64 for t in given):
            raise path_unavailable("ssd", path, "it does not take float64 tensors")
    return path


def ssd(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSD by the form ``path`` names (see ``resolve_path``): "auto" (fused on CPU with numba, fla
    for CUDA inference when fla is importable, else chunk), "chunk", "fused", "fla" or "naive".
    Arguments and returns of ``ssd_naive``; ``chunk_size`` is used by the chunked form only."""
    path = resolve_path(path, x, dt, A, B, C, D, initial_state)
    if path == "fused":
        return ssd_fused(x, dt, A, B, C, D, initial_state, output_final_state)
    if path == "fla":
        return ssd_fla(x, dt, A, B, C, D, initial_state, output_final_state)
    if path == "chunk":
        return ssd_chunk(
            x, dt, A, B, C, D, initial_state, output_final_state, chunk_size=chunk_size
        )
    return ssd_naive(x, dt, A, B, C, D, initial_state, output_final_state)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PATHS",
    "fla_available",
    "fla_backward_supported",
    "resolve_path",
    "ssd",
    "ssd_chunk",
    "ssd_fla",
    "ssd_fused",
    "ssd_naive",
    "ssd_path",
    "ssd_step",
]
