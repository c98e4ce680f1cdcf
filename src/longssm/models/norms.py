"""Normalisation layers used by the language model."""

from __future__ import annotations

import torch
from torch import nn

from longssm.layers.base import has_hooks, tag_no_weight_decay
from longssm.ops.rms_norm import add_rms_norm, rms_norm


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


def add_and_norm(norm: nn.Module, x: torch.Tensor, residual: torch.Tensor | None):
    """The residual add that ends a pre-norm block and the norm that starts the next:
    returns (s, norm(s)) with s = x + residual (s = x when residual is None), x (..., D).

    A plain ``RMSNorm`` (no subclass, no hooks) does both in the fused ``add_rms_norm`` op (one
    kernel pass each way instead of an add, the norm and autograd's add of the two gradients of
    s); any other norm is called as a module on x + residual. Same bits either way."""
    if residual is None:
        return x, norm(x)
    if type(norm) is RMSNorm and not has_hooks(norm):
        return add_rms_norm(x, residual, norm.weight, norm.eps)
    s = x + residual
    return s, norm(s)


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """Build the norm named by ``ModelConfig.norm``."""
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    norm = nn.LayerNorm(d_model, eps=eps)
    tag_no_weight_decay(norm.weight)
    tag_no_weight_decay(norm.bias)
    return norm
