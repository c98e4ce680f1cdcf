"""One step of the causal depthwise convolution (decoding). Glossary as in ``naive.py``."""

from __future__ import annotations

import torch

from longssm.ops.causal_conv.naive import activate


def causal_conv_step(
    x_t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    history: torch.Tensor,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = act(b + Σ_k w_k ⊙ u_{t-K+1+k}) for one new input.

    Args:
        x_t: (batch, C) the input u_t.
        weight: (C, K); bias: (C,) or None.
        history: (batch, C, K-1) the previous K-1 inputs, oldest first.
        activation: None or "silu".

    Returns:
        y_t (batch, C) and the new history (batch, C, K-1).
    """
    window = torch.cat([history.to(x_t.dtype), x_t[:, :, None]], dim=-1)  # (B, C, K)
    v = (window * weight).sum(-1)  # (B, C)
    if bias is not None:
        v = v + bias
    return activate(v, activation), window[:, :, 1:]
