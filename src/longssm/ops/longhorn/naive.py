"""Reference Longhorn recurrence: a plain loop over time, the specification.

Longhorn (Liu et al., 2024) reads its state update as one step of online learning: S_t is the
closed-form solution of min_S ||S - S_{t-1}||² + β_t ||S k_t - x_t||² (diagonal approximation).

Glossary (paper symbol -> code name):
    x_t   (input to be memorised)     x[:, t]        (batch, d_inner)
    β_t   (per-channel step, (0, 1))  beta[:, t]     (batch, d_inner)
    k_t   (key, "B" in Mamba terms)   k[:, t]        (batch, d_state)
    q_t   (query, "C")                q[:, t]        (batch, d_state)
    ε_t = β_t / (1 + β_t ||k_t||²)    eps            (batch, d_inner)
    D     (skip connection)           D              (d_inner,)
    S_t   (state)                     state          (batch, d_inner, d_state)

Recurrence: S_t = (1 - ε_t k_t²) ⊙ S_{t-1} + ε_t x_t k_tᵀ,  y_t = S_t q_t + D x_t
(k_t² is elementwise; the decay 1 - ε_t k_t² lies in (0, 1] because ε_t k_t[n]² < 1).
"""

from __future__ import annotations

import torch

from longssm.ops._common import check_shapes, compute_dtype


def check_longhorn_inputs(
    x: torch.Tensor,
    beta: torch.Tensor,
    k: torch.Tensor,
    q: torch.Tensor,
    D: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise a ValueError naming the argument whose shape does not fit the others."""
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, T, d_inner), got {tuple(x.shape)}")
    batch, T, d_inner = x.shape
    if k.dim() != 3 or k.shape[:2] != (batch, T):
        raise ValueError(f"k must have shape (batch={batch}, T={T}, d_state), got {tuple(k.shape)}")
    d_state = k.shape[2]
    check_shapes(
        {
            "beta": (beta, (batch, T, d_inner)),
            "q": (q, (batch, T, d_state)),
            "D": (D, (d_inner,)),
            "initial_state": (initial_state, (batch, d_inner, d_state)),
        }
    )


def longhorn_eps(beta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """ε = β / (1 + β ||k||²); beta (..., d_inner), k (..., d_state) -> (..., d_inner)."""
    k_norm2 = (k * k).sum(-1, keepdim=True)  # (..., 1)
    return beta / (1 + beta * k_norm2)


def longhorn_naive(
    x: torch.Tensor,
    beta: torch.Tensor,
    k: torch.Tensor,
    q: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Longhorn recurrence by a sequential loop over time.

    Args:
        x: (batch, T, d_inner) input.
        beta: (batch, T, d_inner) step sizes β in [0, 1] (after the sigmoid).
        k, q: (batch, T, d_state) keys and queries.
        D: (d_inner,) skip weight, or None.
        initial_state: (batch, d_inner, d_state) S_0, or None for zeros.
        output_final_state: also return S_T.

    Returns:
        y: (batch, T, d_inner) in x's dtype; final_state: (batch, d_inner, d_state) or None.
    """
    check_longhorn_inputs(x, beta, k, q, D, initial_state)
    batch, T, d_inner = x.shape
    d_state = k.shape[2]
    dtype = compute_dtype(x, beta, k, q, initial_state)
    xc, bc, kc, qc = (t.to(dtype) for t in (x, beta, k, q))
    if initial_state is None:
        S = xc.new_zeros(batch, d_inner, d_state)  # (B, D, N)
    else:
        S = initial_state.to(dtype)  # (B, D, N)
    ys = []
    for t in range(T):
        eps = longhorn_eps(bc[:, t], kc[:, t])  # (B, D)
        decay = 1 - eps[:, :, None] * (kc[:, t] ** 2)[:, None, :]  # (B, D, N)
        inp = (eps * xc[:, t])[:, :, None] * kc[:, t, None, :]  # (B, D, N)
        S = decay * S + inp  # (B, D, N)
        ys.append(torch.einsum("bdn,bn->bd", S, qc[:, t]))  # (B, D)
    y = torch.stack(ys, dim=1) if ys else xc.new_zeros(batch, 0, d_inner)  # (B, T, D)
    if D is not None:
        y = y + xc * D.to(dtype)
    return y.to(x.dtype), (S if output_final_state else None)
