"""The short causal depthwise convolution of Mamba-style mixers, with its input history as state.

A kernel of width K needs the last K-1 inputs of the previous segment; carrying them (the ``conv``
field of a layer state) makes a sequence processed in pieces equal to one pass. The arithmetic is
the ``causal_conv`` op (``ops/causal_conv``): by default (``path="auto"``) fused numba kernels on
CPU when numba is installed, ``F.conv1d`` otherwise; ``activation="silu"`` fuses the SiLU that
follows the convolution in Mamba, Longhorn and Mamba-2 into those kernels.

Glossary:
    K        kernel width (``d_conv``); history holds K-1 columns
    C        channels convolved (d_inner for Mamba/Longhorn, d_inner + 2*G*N for Mamba-2)
"""

from __future__ import annotations

import torch
from torch import nn

from longssm.layers.base import has_hooks
from longssm.ops.causal_conv import activate
from longssm.ops.causal_conv import causal_conv as conv_op
from longssm.ops.causal_conv import causal_conv_step as conv_step_op


def causal_conv(
    conv1d: nn.Conv1d | None,
    x: torch.Tensor,
    history: torch.Tensor | None,
    activation: str | None = None,
    path: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolve a segment, prepending the carried history. A ``conv1d`` with hooks, or in place
    of a plain ``nn.Conv1d`` (a wrapper, a parametrisation), is called as a module.

    Args:
        conv1d: depthwise ``nn.Conv1d`` (C, 1, K) without padding, or None (no convolution).
        x: (batch, time, C) inputs.
        history: (batch, C, K-1) last inputs of the previous segment, or None for zeros.
        activation: None, or "silu" applied to the output.
        path: the op's form (``ops.causal_conv.PATHS``): "auto", "fused", "torch" or "naive".

    Returns:
        y: (batch, time, C) (``activation(x)`` without a convolution) and the new history
        (batch, C, K-1) in x's dtype (zero-width without a convolution).
    """
    batch, _, channels = x.shape
    if conv1d is None:
        return activate(x, activation), x.new_zeros(batch, channels, 0)
    if has_hooks(conv1d) or type(conv1d) is not nn.Conv1d:
        return _call_module(conv1d, x, history, activation)
    y, final = conv_op(
        x,
        conv1d.weight[:, 0, :],  # (C, K)
        conv1d.bias,
        None if history is None else history.to(x.dtype),
        output_final_state=True,
        activation=activation,
        path=path,
    )
    return y, final.to(x.dtype)


def _call_module(conv1d: nn.Module, x: torch.Tensor, history: torch.Tensor | None, activation):
    """``causal_conv`` by calling ``conv1d`` itself, so that its hooks (a user's, or a FLOP
    counter's global ones) see the convolution, and a wrapper or parametrisation runs. The module
    gets the history and x side by side, (batch, C, K-1+T); with left padding P (Mamba-2's conv1d
    has P = K-1, as in the checkpoints it loads; ``_left_padding`` reads string paddings too),
    output t + P is position t's causal window."""
    batch, time, channels = x.shape
    width = conv1d.weight.shape[-1] - 1
    if history is None:
        history = x.new_zeros(batch, channels, width)
    joined = torch.cat([history.to(x.dtype), x.transpose(1, 2)], dim=2)  # (B, C, K-1+T)
    pad = _left_padding(conv1d, width)
    y = conv1d(joined)[..., pad : pad + time].transpose(1, 2)  # (B, T, C)
    final = joined[..., joined.shape[2] - width :]  # (B, C, K-1)
    return activate(y, activation), final.contiguous()


def _left_padding(conv1d: nn.Module, width: int) -> int:
    """Zeros ``conv1d`` puts before its input: its integer padding P, 0 for ``"valid"``, and
    torch's left share ``width // 2`` of ``"same"`` (width = K-1: the right side gets the rest)."""
    padding = getattr(conv1d, "padding", (0,))
    if padding == "valid":
        return 0
    if padding == "same":
        return width // 2
    return int(padding[0] if isinstance(padding, (tuple, list)) else padding)


def causal_conv_step(
    conv1d: nn.Conv1d | None, x_t: torch.Tensor, history: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``causal_conv``. Args: x_t (batch, C); history (batch, C, K-1).

    Returns: y_t (batch, C) and the new history (batch, C, K-1).
    """
    if conv1d is None:
        return x_t, history
    return conv_step_op(x_t, conv1d.weight[:, 0, :], conv1d.bias, history)
