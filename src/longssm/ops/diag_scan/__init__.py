"""diag_scan: the complex diagonal time-invariant recurrence of S4D and S5, plus S4D's FFT form.

Forms of ``h_t = lam * h_{t-1} + v_t``, one signature ``(v, lam, initial_state=None,
output_final_state=False) -> (h_all, final_state)``: ``diag_scan_naive`` (the specification),
``diag_scan_chunk`` (chunked Toeplitz-of-powers form) and ``diag_scan_step`` (one decoding step).
``diag_scan(..., path=...)`` picks a form ("auto" = "chunk", the only fast form). S4D's whole
layer response (y = 2 Re(C h) + D u and the final state) has two forms of its own, one signature
``(u, lam_bar, B_bar, C, D=None, initial_state=None, output_final_state=False) -> (y,
final_state)``: ``s4d_conv`` (an FFT convolution plus the initial-state response, any device) and
``s4d_scan_fused`` (the recurrence in numba kernels, CPU only); ``s4d_scan(..., path=...)`` picks
one ("auto": fused for CPU float32/float64 tensors with numba, else conv). See README.md for
derivations.
"""

from __future__ import annotations

import torch

from longssm.ops._common import check_path, kernels_allowed, numba_available, path_unavailable

from .chunk import diag_scan_chunk
from .conv import matmul_complex_real, matmul_re, s4d_conv
from .naive import diag_scan_naive
from .s4d_fused_cpu import s4d_scan_fused
from .step import diag_scan_step

DEFAULT_CHUNK_SIZE = 32
PATHS = ("auto", "chunk", "naive")
"""The values of ``diag_scan(path=...)``."""
S4D_PATHS = ("auto", "fused", "conv")
"""The values of ``s4d_scan(path=...)``."""
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


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


def s4d_path(*tensors: torch.Tensor | None) -> str:
    """The form ``s4d_scan(path="auto")`` runs for these tensors: "fused" when every given tensor
    is on the CPU in float32 / float64 (complex64 / complex128), numba is installed and
    ``kernels_allowed()`` (not inside ``torch_forms()``); else "conv"."""
    given = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not kernels_allowed() or not given or not numba_available():
        return "conv"
    if all(t.device.type == "cpu" and t.dtype in _KERNEL_DTYPES for t in given):
        return "fused"
    return "conv"


def resolve_s4d_path(path: str, *tensors: torch.Tensor | None) -> str:
    """The form ``s4d_scan(..., path=path)`` runs: ``s4d_path`` for "auto", else ``path`` once it
    is known to run here.

    Raises:
        ValueError: ``path`` is not one of ``S4D_PATHS``, or is "fused" without numba or with
            tensors off the CPU.
    """
    check_path("s4d_scan", path, S4D_PATHS)
    if path == "auto":
        return s4d_path(*tensors)
    if path == "fused":
        if not numba_available():
            raise path_unavailable("s4d_scan", path, "numba is not installed", fallback="conv")
        if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tensors):
            raise path_unavailable("s4d_scan", path, "it runs on CPU tensors only", fallback="conv")
    return path


def s4d_scan(
    u: torch.Tensor,
    lam_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    path: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """S4D's response ``y_t = 2 Re(Σ_n C h_t) + D u_t`` (and h_T) by the form ``path`` names (see
    ``resolve_s4d_path``): "auto", "fused" (``s4d_scan_fused``) or "conv" (``s4d_conv``).
    Arguments and returns of ``s4d_conv``."""
    if resolve_s4d_path(path, u, lam_bar, B_bar, C, D, initial_state) == "fused":
        return s4d_scan_fused(u, lam_bar, B_bar, C, D, initial_state, output_final_state)
    return s4d_conv(u, lam_bar, B_bar, C, D, initial_state, output_final_state)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PATHS",
    "S4D_PATHS",
    "diag_scan",
    "diag_scan_chunk",
    "diag_scan_naive",
    "diag_scan_step",
    "matmul_complex_real",
    "matmul_re",
    "resolve_path",
    "resolve_s4d_path",
    "s4d_conv",
    "s4d_path",
    "s4d_scan",
    "s4d_scan_fused",
]
