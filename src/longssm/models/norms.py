"""Normalisation layers used by the language model."""

from __future__ import annotations

import torch
from torch import nn

from longssm.layers.base import tag_no_weight_decay
from longssm.ops.rms_norm import rms_norm


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x², -1) + eps) * weight``, computed in float32 (float64 stays float64).

    Args:
        d_model: width of the last dimension.
        eps: added to the mean square.
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = tag_no_weight_decay(nn.Parameter(torch.ones(d_model)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D); fused numba kernels on CPU (``longssm.ops.rms_norm``)."""
        return rms_norm(x, self.weight, self.eps)


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """Build the norm named by ``ModelConfig.norm``."""
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    norm = nn.LayerNorm(d_model, eps=eps)
    tag_no_weight_decay(norm.weight)
    tag_no_weight_decay(norm.bias)
    return norm
