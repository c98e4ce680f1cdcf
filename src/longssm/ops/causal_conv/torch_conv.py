"""Causal depthwise convolution by ``F.conv1d`` (torch's generic grouped convolution; any device).

Glossary as in ``naive.py``. The history is prepended to the segment along time and one grouped
``F.conv1d`` without padding gives the T outputs; autograd gives every gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longssm.ops.causal_conv.naive import activate, check_conv_inputs, start_history


def causal_conv_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same arguments and results as ``causal_conv_naive``, by one ``F.conv1d``."""
    check_conv_inputs(x, weight, bias, initial_state, activation)
    batch, T, channels = x.shape
    width = weight.shape[1] - 1
    dtype, prev = start_history(x, weight, bias, initial_state)  # (B, C, K-1)
    if T == 0:
        return x.new_zeros(batch, 0, channels), (prev if output_final_state else None)
    window = torch.cat([prev, x.to(dtype).transpose(1, 2)], dim=-1)  # (B, C, K-1+T)
    b = None if bias is None else bias.to(dtype)
    v = F.conv1d(window, weight.to(dtype)[:, None, :], b, groups=channels)  # (B, C, T)
    y = activate(v.transpose(1, 2), activation)  # (B, T, C)
    final = window[:, :, window.shape[-1] - width :] if output_final_state else None
    return y.to(x.dtype), final
