"""Step sizes Δ = softplus(u Wᵀ + b) in plain torch: the reference form.

Mamba's Δ_t (Gu & Dao 2023, eq. for s_Δ / τ_Δ): a rank-R projection u_t = (x_proj x_t)[:R] of the
input, raised to the d_inner channels by W (d_inner, R) and the bias b, then softplus (torch's
F.softplus: beta 1, z itself above 20).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_step_size_inputs(low: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Raise a one-line ValueError unless low is (..., R), weight (D, R) and bias (D,) or None."""
    if weight.dim() != 2:
        raise ValueError(f"step_size: weight must be (d_inner, R), got shape {tuple(weight.shape)}")
    if low.dim() < 1 or low.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"step_size: the input's last axis must be R = {weight.shape[1]} (weight "
            f"{tuple(weight.shape)}), got shape {tuple(low.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"step_size: bias must be ({weight.shape[0]},), got shape {tuple(bias.shape)}"
        )


def step_size_naive(
    low: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Δ = softplus(low Wᵀ + b). Args: low (..., R); weight (D, R); bias (D,) or None.
    Returns Δ (..., D)."""
    check_step_size_inputs(low, weight, bias)
    return F.softplus(F.linear(low, weight, bias))
