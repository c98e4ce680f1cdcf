"""One Longhorn recurrence step, for token-by-token decoding.

Glossary as in ``naive.py``: x_t -> x_t, β_t -> beta_t, k_t -> k_t, q_t -> q_t, D -> D,
S_{t-1} -> state, S_t -> new_state.
"""

from __future__ import annotations

import torch

from longssm.ops._common import compute_dtype
from longssm.ops.longhorn.naive import longhorn_eps


def longhorn_step(
    x_t: torch.Tensor,
    beta_t: torch.Tensor,
    k_t: torch.Tensor,
    q_t: torch.Tensor,
    D: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_t = (1 - ε_t k_t²) ⊙ S_{t-1} + ε_t x_t k_tᵀ,  y_t = S_t q_t + D x_t.

    Args:
        x_t, beta_t: (batch, d_inner).
        k_t, q_t: (batch, d_state).
        D: (d_inner,) or None.
        state: (batch, d_inner, d_state) S_{t-1}, or None for zeros.

    Returns:
        y_t: (batch, d_inner) in x_t's dtype; new_state: (batch, d_inner, d_state).
    """
    if x_t.dim() != 2 or beta_t.shape != x_t.shape:
        raise ValueError(
            f"x_t and beta_t must both have shape (batch, d_inner), got {tuple(x_t.shape)} "
            f"and {tuple(beta_t.shape)}"
        )
    batch, d_inner = x_t.shape
    if k_t.dim() != 2 or k_t.shape[0] != batch or q_t.shape != k_t.shape:
        raise ValueError(
            f"k_t and q_t must both have shape (batch={batch}, d_state), got {tuple(k_t.shape)} "
            f"and {tuple(q_t.shape)}"
        )
    d_state = k_t.shape[1]
    if state is not None and tuple(state.shape) != (batch, d_inner, d_state):
        raise ValueError(
            f"state must have shape {(batch, d_inner, d_state)}, got {tuple(state.shape)}"
        )
    dtype = compute_dtype(x_t, beta_t, k_t, q_t, state)
    x, beta, k, q = (t.to(dtype) for t in (x_t, beta_t, k_t, q_t))
    eps = longhorn_eps(beta, k)  # (B, D)
    inp = (eps * x)[:, :, None] * k[:, None, :]  # (B, D, N)
    if state is None:
        S = inp  # (B, D, N)
    else:
        decay = 1 - eps[:, :, None] * (k * k)[:, None, :]  # (B, D, N)
        S = decay * state.to(dtype) + inp  # (B, D, N)
    y = torch.einsum("bdn,bn->bd", S, q)  # (B, D)
    if D is not None:
        y = y + x * D.to(dtype)
    return y.to(x_t.dtype), S
