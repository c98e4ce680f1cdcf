"""RMSNorm in plain torch: the reference form (and the form for GPUs and half precision).

    y = w ⊙ x̂,   x̂ = x · r,   r = 1 / sqrt(mean_c(x_c²) + eps)      over the last axis of x

computed in float32 (float64 stays float64), then cast back to x's dtype before the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_rms_norm_inputs(x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """Raise a ValueError unless weight is (D,) for x (..., D) and eps is a non-negative number."""
    if x.ndim < 1 or weight.shape != (x.shape[-1],):
        raise ValueError(
            f"rms_norm: weight must have shape ({x.shape[-1] if x.ndim else '?'},) for x of shape "
            f"{tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"rms_norm: eps must be a non-negative number, got {eps!r}")


def rms_norm_naive(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis. Args: x (..., D); weight (D,); eps. Returns y (..., D)."""
    check_rms_norm_inputs(x, weight, eps)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = x.to(compute)  # (..., D)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def check_add_inputs(x: torch.Tensor, residual: torch.Tensor) -> None:
    """Raise a ValueError unless residual has x's shape and dtype (the residual add's inputs)."""
    if not isinstance(residual, torch.Tensor) or residual.shape != x.shape:
        got = tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual)
        raise ValueError(f"add_rms_norm: residual must have x's shape {tuple(x.shape)}, got {got}")
    if residual.dtype != x.dtype:
        raise ValueError(
            f"add_rms_norm: residual must have x's dtype {x.dtype}, got {residual.dtype}"
        )


def add_rms_norm_naive(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add then RMSNorm: s = x + residual (..., D), returns (s, rms_norm_naive(s))."""
    check_add_inputs(x, residual)
    s = x + residual
    return s, rms_norm_naive(s, weight, eps)


def check_gate_inputs(y: torch.Tensor, z: torch.Tensor) -> None:
    """Raise a ValueError unless the gate z has y's shape and dtype."""
    if not isinstance(z, torch.Tensor) or z.shape != y.shape:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z)
        raise ValueError(f"gated_rms_norm: z must have y's shape {tuple(y.shape)}, got {got}")
    if z.dtype != y.dtype:
        raise ValueError(f"gated_rms_norm: z must have y's dtype {y.dtype}, got {z.dtype}")


def gated_rms_norm_naive(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """Mamba-2's gated norm with one group: RMSNorm(y ⊙ silu(z)) ⊙ w over the last axis, the
    gate in float32 (float64 stays float64). Args: y, z (..., D); weight (D,); eps. Returns
    (..., D) in the compute dtype."""
    check_gate_inputs(y, z)
    compute = torch.float64 if y.dtype == torch.float64 else torch.float32
    return rms_norm_naive(y.to(compute) * F.silu(z.to(compute)), weight, eps)
