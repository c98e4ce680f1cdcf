"""Normalisation layers used by the language model."""

from __future__ import annotations

import torch
from torch import nn

from longssm.layers.base import tag_no_weight_decay


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
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        h = x.to(compute)  # (..., D)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """Build the norm named by ``ModelConfig.norm``."""
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    norm = nn.LayerNorm(d_model, eps=eps)
    tag_no_weight_decay(norm.weight)
    tag_no_weight_decay(norm.bias)
    return norm
