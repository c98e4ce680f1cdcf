"""The short causal depthwise convolution of Mamba-style mixers, with its input history as state.

A kernel of width K needs the last K-1 inputs of the previous segment; carrying them (the ``conv``
field of a layer state) makes a sequence processed in pieces equal to one pass.

Glossary:
    K        kernel width (``d_conv``); history holds K-1 columns
    C        channels convolved (d_inner for Mamba/Longhorn, d_inner + 2*G*N for Mamba-2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_conv(
    conv1d: nn.Conv1d | None, x: torch.Tensor, history: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolve a segment, prepending the carried history.

    Args:
        conv1d: depthwise ``nn.Conv1d`` (C, 1, K) without padding, or None (no convolution).
        x: (batch, time, C) inputs.
        history: (batch, C, K-1) last inputs of the previous segment, or None for zeros.

    Returns:
        y: (batch, time, C) (``x`` itself without a convolution) and the new history
        (batch, C, K-1) (zero-width without a convolution).
    """
    batch, _, channels = x.shape
    if conv1d is None:
        return x, x.new_zeros(batch, channels, 0)
    width = conv1d.kernel_size[0] - 1
    prev = x.new_zeros(batch, channels, width) if history is None else history.to(x.dtype)
    window = torch.cat([prev, x.transpose(1, 2)], dim=-1)  # (B, C, K-1+T)
    y = F.conv1d(window, conv1d.weight, conv1d.bias, groups=channels)  # (B, C, T)
    return y.transpose(1, 2), window[:, :, window.shape[-1] - width :]


def causal_conv_step(
    conv1d: nn.Conv1d | None, x_t: torch.Tensor, history: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``causal_conv``. Args: x_t (batch, C); history (batch, C, K-1).

    Returns: y_t (batch, C) and the new history (batch, C, K-1).
    """
    if conv1d is None:
        return x_t, history
    window = torch.cat([history.to(x_t.dtype), x_t[:, :, None]], dim=-1)  # (B, C, K)
    y_t = (window * conv1d.weight[:, 0, :]).sum(-1)  # (B, C)
    if conv1d.bias is not None:
        y_t = y_t + conv1d.bias
    return y_t, window[:, :, 1:]
