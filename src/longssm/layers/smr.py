"""SMR, State Memory Replay (Qi et al., 2024): a causal m-tap gate on the input of an SSM.

    ũ_k = u_k ⊙ σ(Σ_{i<m} W_i ⊙ u_{k−i} + b)

The gate looks at the last m inputs ("learnable memories") so that an SSM whose step Δ at test
time differs from training (non-uniform sampling) can damp the resulting state drift. W_i are
per-channel (depthwise) weights: the gate is a sigmoid-gated depthwise short convolution, and the
layer reuses the short convolution of ``conv.py`` for it, with the last m−1 inputs as its carried
history, so a sequence cut into pieces gives the same result as one pass.

Glossary (paper symbol -> code name, shape):
    m          taps (``smr`` option of S4D / S5 / Mamba); 0 = no gate (ũ = u)
    W_i, b     conv1d.weight[:, 0, m-1-i], conv1d.bias      (C, 1, m), (C,)
    u_{k-i}    history (batch, C, m-1), oldest first, then the current input

Init: W ~ N(0, 0.02²) and b = ``bias_init`` (default 3, σ(3) ≈ 0.95: the gate starts almost open,
so an SSM with SMR starts close to the one without it).
"""

from __future__ import annotations

import torch
from torch import nn

from longssm.layers.conv import causal_conv, causal_conv_step


def check_smr(smr, layer: str) -> int:
    """``smr`` as a non-negative int; ValueError otherwise."""
    if not isinstance(smr, int) or isinstance(smr, bool) or smr < 0:
        raise ValueError(f"{layer}: smr must be a non-negative integer (taps), got {smr!r}")
    return smr


class SMRGate(nn.Module):
    """The m-tap SMR gate over ``channels`` channels; ``m = 0`` is the identity."""

    def __init__(self, channels: int, m: int, bias_init: float = 3.0) -> None:
        super().__init__()
        self.channels, self.m = channels, check_smr(m, "SMR")
        self.conv1d = nn.Conv1d(channels, channels, m, groups=channels) if m > 0 else None
        if self.conv1d is not None:
            with torch.no_grad():
                nn.init.normal_(self.conv1d.weight, std=0.02)
                nn.init.constant_(self.conv1d.bias, bias_init)

    @property
    def width(self) -> int:
        """Columns of carried history: m − 1 (0 without a gate)."""
        return max(self.m - 1, 0)

    def forward(
        self, u: torch.Tensor, history: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u (batch, T, C), history (batch, C, m−1) or None -> ũ (batch, T, C), new history."""
        pre, history = causal_conv(self.conv1d, u, history)  # (B, T, C), (B, C, m-1)
        if self.conv1d is None:
            return u, history
        return u * torch.sigmoid(pre), history

    def step(
        self, u_t: torch.Tensor, history: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u_t (batch, C), history (batch, C, m−1) or None (zeros) -> ũ_t (batch, C), history."""
        if history is None:
            history = u_t.new_zeros(u_t.shape[0], self.channels, self.width)
        pre, history = causal_conv_step(self.conv1d, u_t, history)  # (B, C), (B, C, m-1)
        if self.conv1d is None:
            return u_t, history
        return u_t * torch.sigmoid(pre), history
