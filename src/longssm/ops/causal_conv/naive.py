"""Reference causal depthwise convolution with carried history: a loop over time, the specification.

Glossary (symbol -> code name, shape):
    u_t      input at step t                        x[:, t]          (batch, C)
    w_k      tap k of each channel's kernel         weight[:, k]     (C, K), k = 0 .. K-1
    b        bias                                   bias             (C,) or None (zero)
    u_{2-K} .. u_0   the K-1 inputs before the segment (oldest first)
                                                    initial_state    (batch, C, K-1) or None (zeros)
    v_t      output before the activation           (batch, C)
    y_t      output: v_t, or silu(v_t)               y[:, t]          (batch, C)

    v_t = b + Σ_{k=0}^{K-1} w_k ⊙ u_{t-K+1+k},      y_t = v_t  or  v_t σ(v_t)

(tap K-1 multiplies the current input; tap 0 the oldest). The final state is the last K-1 inputs
of history + segment, oldest first: u_{T-K+2} .. u_T. ``weight[:, k]`` is ``nn.Conv1d``'s
``weight[:, 0, k]`` (cross-correlation, as ``F.conv1d`` computes it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longssm.ops._common import check_shapes, compute_dtype

ACTIVATIONS = (None, "silu")
"""The values of ``activation``: none, or the SiLU v σ(v) that follows the convolution in Mamba."""


def check_conv_inputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    activation: str | None = None,
) -> None:
    """Raise a ValueError naming the argument whose shape (or value) does not fit the others."""
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, T, C), got {tuple(x.shape)}")
    batch, _, channels = x.shape
    if weight.dim() != 2 or weight.shape[0] != channels or weight.shape[1] < 1:
        raise ValueError(
            f"weight must have shape (C={channels}, K >= 1), got {tuple(weight.shape)}"
        )
    width = weight.shape[1] - 1
    check_shapes(
        {"bias": (bias, (channels,)), "initial_state": (initial_state, (batch, channels, width))}
    )
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def start_history(x, weight, bias, initial_state) -> tuple[torch.dtype, torch.Tensor]:
    """The compute dtype and the history a segment starts from: initial_state (batch, C, K-1) in
    that dtype, or zeros (the shared start of every form)."""
    dtype = compute_dtype(x, weight, bias, initial_state)
    if initial_state is not None:
        return dtype, initial_state.to(dtype)
    batch, _, channels = x.shape
    return dtype, x.new_zeros(batch, channels, weight.shape[1] - 1, dtype=dtype)


def activate(v: torch.Tensor, activation: str | None) -> torch.Tensor:
    """v, or silu(v) = v σ(v)."""
    return F.silu(v) if activation == "silu" else v


def new_history(x: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """The last K-1 inputs of history (batch, C, K-1) followed by x (batch, T, C), oldest first."""
    width, T = history.shape[-1], x.shape[1]
    if T >= width:
        return x[:, T - width :].transpose(1, 2).contiguous()  # (B, C, K-1)
    return torch.cat([history[..., T:], x.transpose(1, 2)], dim=-1)  # (B, C, K-1)


def causal_conv_naive(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The causal depthwise convolution by its definition (module docstring), one step at a time.

    Args:
        x: (batch, T, C) inputs u_1 .. u_T.
        weight: (C, K) taps, oldest first.
        bias: (C,) or None.
        initial_state: (batch, C, K-1) inputs before the segment, oldest first, or None for zeros.
        output_final_state: also return the last K-1 inputs.
        activation: None or "silu".

    Returns:
        y: (batch, T, C) in x's dtype; final_state: (batch, C, K-1) in the compute dtype, or None.
    """
    check_conv_inputs(x, weight, bias, initial_state, activation)
    batch, T, channels = x.shape
    K = weight.shape[1]
    dtype, hist = start_history(x, weight, bias, initial_state)  # (B, C, K-1)
    u = x.to(dtype)
    w = weight.to(dtype)
    ys = []
    for t in range(T):
        # the K inputs u_{t-K+1} .. u_t: the history's last ones, then the segment's
        taps = [hist[:, :, K - 1 + s] if s < 0 else u[:, s] for s in range(t - K + 1, t + 1)]
        v = sum(w[:, k] * taps[k] for k in range(K))  # (B, C)
        if bias is not None:
            v = v + bias.to(dtype)
        ys.append(activate(v, activation))
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(batch, 0, channels)  # (B, T, C)
    final = new_history(u, hist) if output_final_state else None
    return y.to(x.dtype), final
