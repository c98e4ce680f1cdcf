"""Causal depthwise convolution with carried history: y_t = act(b + Σ_k w_k ⊙ u_{t-K+1+k}).

Forms, one signature ``(x, weight, bias=None, initial_state=None, output_final_state=False,
activation=None)``: ``causal_conv_naive`` (the reference loop), ``causal_conv_torch``
(``F.conv1d``, any device), ``causal_conv_fused`` (numba kernels, CPU only) and
``causal_conv_step`` (one step). ``causal_conv(..., path=...)`` is the one place that picks a form:
``path="auto"`` takes the fused form for CPU tensors when numba is importable, else the torch form
(``conv_path``); ``resolve_path`` says which form a path runs. ``initial_state`` is the history
(batch, C, K-1) of the last K-1 inputs, oldest first; ``activation="silu"`` applies v σ(v) to the
output (fused into the kernels). Derivation and timings in README.md.
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
from longssm.ops.causal_conv.fused_cpu import causal_conv_fused
from longssm.ops.causal_conv.naive import ACTIVATIONS, activate, causal_conv_naive
from longssm.ops.causal_conv.step import causal_conv_step
from longssm.ops.causal_conv.torch_conv import causal_conv_torch

PATHS = ("auto", "fused", "torch", "naive")
"""The values of ``causal_conv(path=...)``."""


def conv_path(*tensors: torch.Tensor | None) -> str:
    """The form ``path="auto"`` runs for these tensors: "fused" when every given tensor is on the
    CPU and numba is importable, else "torch" (also inside ``torch_forms()``)."""
    if kernels_allowed() and device_types(*tensors) == {"cpu"} and numba_available():
        return "fused"
    return "torch"


def resolve_path(path: str, *tensors: torch.Tensor | None) -> str:
    """The form ``causal_conv(..., path=path)`` runs for these tensors: ``conv_path`` for "auto",
    else ``path`` itself once it is known to run here.

    Raises:
        ValueError: ``path`` is not one of ``PATHS``, or is "fused" without numba or with
            tensors off the CPU.
    """
    check_path("causal_conv", path, PATHS)
    if path == "auto":
        return conv_path(*tensors)
    if path == "fused":
        if not numba_available():
            raise path_unavailable("causal_conv", path, "numba is not installed", "torch")
        if device_types(*tensors) - {"cpu"}:
            raise path_unavailable("causal_conv", path, "it runs on CPU tensors only", "torch")
    return path


def causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    activation: str | None = None,
    path: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The causal depthwise convolution by the form ``path`` names (see ``resolve_path``).

    Args and returns as ``causal_conv_naive``: x (batch, T, C); weight (C, K); bias (C,) or None;
    initial_state (batch, C, K-1) or None; returns y (batch, T, C) and final_state
    (batch, C, K-1) or None. ``activation``: None or "silu". ``path``: "auto" (fused on CPU with
    numba, else torch), "fused", "torch" or "naive".
    """
    path = resolve_path(path, x, weight, bias, initial_state)
    forms = {"fused": causal_conv_fused, "torch": causal_conv_torch, "naive": causal_conv_naive}
    return forms[path](x, weight, bias, initial_state, output_final_state, activation)


__all__ = [
    "ACTIVATIONS",
    "activate",
    "PATHS",
    "causal_conv",
    "causal_conv_fused",
    "causal_conv_naive",
    "causal_conv_step",
    "causal_conv_torch",
    "conv_path",
    "resolve_path",
]
