"""SSD (Mamba-2) single recurrent step, for token-by-token decoding.

Glossary (paper symbol -> code name, shape):
    x_t   (input, per head)                   x_t    (batch, nheads, headdim)
    Δ_t   (step size, positive)               dt_t   (batch, nheads)
    a_h   (scalar decay rate per head, < 0)   A      (nheads,)
    B_t   (input matrix, shared per group)    B_t    (batch, ngroups, d_state)
    C_t   (output matrix, shared per group)   C_t    (batch, ngroups, d_state)
    D_h   (skip connection)                   D      (nheads,) or None
    h_t   (hidden state)                      state  (batch, nheads, headdim, d_state)

    h_t = exp(Δ_t a_h) h_{t-1} + Δ_t x_t B_tᵀ,   y_t = h_t C_t + D_h x_t
"""

from __future__ import annotations

import torch

from longssm.ops._common import compute_dtype

from .naive import check_ssd_inputs


def ssd_step(
    x_t: torch.Tensor,
    dt_t: torch.Tensor,
    A: torch.Tensor,
    B_t: torch.Tensor,
    C_t: torch.Tensor,
    D: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance the SSD recurrence by one token.

    Args:
        x_t: (batch, nheads, headdim).
        dt_t: (batch, nheads) positive step sizes.
        A: (nheads,) negative decay rates.
        B_t, C_t: (batch, ngroups, d_state).
        D: (nheads,) or None.
        state: (batch, nheads, headdim, d_state) h_{t-1}, or None for zeros.

    Returns:
        y_t: (batch, nheads, headdim) in x_t's dtype.
        new_state: (batch, nheads, headdim, d_state) h_t in the compute dtype.
    """
    batch, nheads, headdim, ngroups, d_state = check_ssd_inputs(
        x_t, dt_t, A, B_t, C_t, D, state, time_dim=False
    )
    dtype = compute_dtype(x_t)
    heads_per_group = nheads // ngroups
    xc, dtc = x_t.to(dtype), dt_t.to(dtype)
    # View heads as (group, head-in-group) so B and C broadcast without copies.
    xg = xc.view(batch, ngroups, heads_per_group, headdim)  # (b, G, R, P)
    dtg = dtc.view(batch, ngroups, heads_per_group)  # (b, G, R)
    Bg = B_t.to(dtype)[:, :, None, None, :]  # (b, G, 1, 1, N)
    Cg = C_t.to(dtype)[:, :, None, :, None]  # (b, G, 1, N, 1)
    decay = torch.exp(dtc * A.to(dtype)).view(batch, ngroups, heads_per_group)  # (b, G, R)
    if state is None:
        h = xc.new_zeros(batch, ngroups, heads_per_group, headdim, d_state)  # (b, G, R, P, N)
    else:
        h = state.to(dtype).view(batch, ngroups, heads_per_group, headdim, d_state)
    h = decay[..., None, None] * h + (dtg[..., None] * xg)[..., None] * Bg  # (b, G, R, P, N)
    y = (h @ Cg).squeeze(-1).reshape(batch, nheads, headdim)  # (b, H, P)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xc  # (b, H, P)
    return y.to(x_t.dtype), h.reshape(batch, nheads, headdim, d_state)
