"""One recurrent step of the selective scan (Mamba-1 / S6), for token-by-token decoding.

Glossary as in ``naive.py``: x_t -> x_t, Δ_t -> dt_t, A -> A, B_t -> B_t, C_t -> C_t, D -> D,
h_{t-1} -> state, h_t -> new_state.
"""

from __future__ import annotations

import torch

from longssm.ops._common import compute_dtype
from longssm.ops.selective_scan.naive import transition


def selective_scan_step(
    x_t: torch.Tensor,
    dt_t: torch.Tensor,
    A: torch.Tensor,
    B_t: torch.Tensor,
    C_t: torch.Tensor,
    D: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    negative_eigenvalues: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t,  y_t = C_t · h_t + D x_t
    (transition 2 exp(Δ_t A) - 1 with ``negative_eigenvalues``).

    Args:
        x_t, dt_t: (batch, d_inner); dt_t positive.
        A: (d_inner, d_state), negative.
        B_t, C_t: (batch, d_state).
        D: (d_inner,) or None.
        state: (batch, d_inner, d_state) h_{t-1}, or None for zeros.

    Returns:
        y_t: (batch, d_inner) in x_t's dtype; new_state: (batch, d_inner, d_state).
    """
    if x_t.dim() != 2 or dt_t.shape != x_t.shape:
        raise ValueError(
            f"x_t and dt_t must both have shape (batch, d_inner), got {tuple(x_t.shape)} "
            f"and {tuple(dt_t.shape)}"
        )
    batch, d_inner = x_t.shape
    d_state = A.shape[-1]
    if state is not None and tuple(state.shape) != (batch, d_inner, d_state):
        raise ValueError(
            f"state must have shape {(batch, d_inner, d_state)}, got {tuple(state.shape)}"
        )
    dtype = compute_dtype(x_t, dt_t, A, B_t, C_t, state)
    x, dt, Ac, Bc, Cc = (t.to(dtype) for t in (x_t, dt_t, A, B_t, C_t))
    decay = transition(dt[:, :, None] * Ac, negative_eigenvalues)  # (B, D, N)
    inp = (dt * x)[:, :, None] * Bc[:, None, :]  # (B, D, N)
    if state is None:
        state = inp.new_zeros(batch, d_inner, d_state)
    h = decay * state.to(dtype) + inp  # (B, D, N)
    y = torch.einsum("bdn,bn->bd", h, Cc)  # (B, D)
    if D is not None:
        y = y + x * D.to(dtype)
    return y.to(x_t.dtype), h
