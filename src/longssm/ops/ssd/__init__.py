"""SSD, the Mamba-2 scan: scalar decay per head, heads sharing their group's B and C.

Forms, one signature ``(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False)
-> (y, final_state)``: ``ssd_naive`` (the specification), ``ssd_chunk`` (the chunked matmul form,
any device), ``ssd_fla`` (flash-linear-attention's Triton kernels, CUDA only, optional) and
``ssd_step`` (one decoding step). ``ssd`` dispatches: fla for CUDA tensors when it is importable,
else the chunked form (``ssd_path`` says which). See README.md for the derivation.
"""

from __future__ import annotations

import torch

from .chunk import ssd_chunk
from .fla_gpu import fla_available, fla_backward_supported, ssd_fla
from .naive import ssd_naive
from .step import ssd_step


def ssd_path(*tensors: torch.Tensor | None) -> str:
    """The form ``ssd`` runs for these tensors.

    "fla" when no gradient will be needed (inference: ``torch.no_grad`` / ``inference_mode``, or
    no tensor requires grad), every given tensor is on a CUDA device in float32 or half precision
    and fla is importable; else "chunk". Training keeps the chunked form, whose gradients are
    tested on the GPU; fla's backward is opt-in (``ssd_fla``, ``Mamba2(scan="fla")``) because it
    could not be checked here (fla 0.6 refuses it on Hopper GPUs with Triton < 3.7.1).
    """
    given = [t for t in tensors if t is not None]
    if not given or not all(t.device.type == "cuda" and t.dtype != torch.float64 for t in given):
        return "chunk"
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in given)
    return "fla" if not needs_grad and fla_available() else "chunk"


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fastest available SSD form (see ``ssd_path``); arguments and returns of ``ssd_naive``,
    ``chunk_size`` used by the chunked form only."""
    if ssd_path(x, dt, A, B, C, D, initial_state) == "fla":
        return ssd_fla(x, dt, A, B, C, D, initial_state, output_final_state)
    return ssd_chunk(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size=chunk_size)


__all__ = ["fla_available", "fla_backward_supported", "ssd", "ssd_chunk", "ssd_fla", "ssd_naive", "ssd_path", "ssd_step"]
