"""Reference selective scan (Mamba-1 / S6): a plain loop over time, the specification.

Glossary (paper symbol -> code name):
    x_t  (input, u in some papers)   x[:, t]        (batch, d_inner)
    Δ_t  (step size, already > 0)    dt[:, t]       (batch, d_inner)
    A    (diagonal dynamics, < 0)    A              (d_inner, d_state)
    B_t, C_t (input / output maps)   B[:, t], C[:, t]  (batch, d_state)
    D    (skip connection)           D              (d_inner,)
    h_t  (hidden state)              state          (batch, d_inner, d_state)

Recurrence: h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t,  y_t = C_t · h_t + D x_t.
With ``negative_eigenvalues`` the transition is 2 exp(Δ_t A) - 1 in (-1, 1) (Grazzi et al., 2025,
"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues"); ``transition`` below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longssm.ops._common import check_shapes, compute_dtype


def check_scan_inputs(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise a ValueError naming the argument whose shape does not fit the others."""
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, T, d_inner), got {tuple(x.shape)}")
    batch, T, d_inner = x.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must have shape (d_inner={d_inner}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    check_shapes(
        {
            "dt": (dt, (batch, T, d_inner)),
            "B": (B, (batch, T, d_state)),
            "C": (C, (batch, T, d_state)),
            "D": (D, (d_inner,)),
            "initial_state": (initial_state, (batch, d_inner, d_state)),
        }
    )


def check_gate(gate: torch.Tensor | None, x: torch.Tensor) -> None:
    """Raise a ValueError unless ``gate`` is None or has x's shape (batch, T, d_inner)."""
    if gate is not None and tuple(gate.shape) != tuple(x.shape):
        raise ValueError(f"gate must have the shape of x {tuple(x.shape)}, got {tuple(gate.shape)}")


def apply_gate(y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """Mamba's output gate y ⊙ silu(z) (the reference the fused kernel's ``gate`` is tested
    against); y itself when ``gate`` is None."""
    return y if gate is None else y * F.silu(gate)


def transition(dt_A: torch.Tensor, negative_eigenvalues: bool = False) -> torch.Tensor:
    """The per-step transition from Δ_t A <= 0: exp(Δ_t A) in (0, 1], or 2 exp(Δ_t A) - 1 in
    (-1, 1] with ``negative_eigenvalues``."""
    decay = torch.exp(dt_A)
    return 2 * decay - 1 if negative_eigenvalues else decay


def selective_scan_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    negative_eigenvalues: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selective scan by a sequential loop over time.

    Args:
        x: (batch, T, d_inner) input.
        dt: (batch, T, d_inner) positive step sizes Δ (after softplus and bias).
        A: (d_inner, d_state) real, negative.
        B, C: (batch, T, d_state) input-dependent input and output maps.
        D: (d_inner,) skip weight, or None.
        initial_state: (batch, d_inner, d_state) h_0, or None for zeros.
        output_final_state: also return h_T.
        negative_eigenvalues: transition 2 exp(Δ_t A) - 1 instead of exp(Δ_t A).

    Returns:
        y: (batch, T, d_inner) in x's dtype; final_state: (batch, d_inner, d_state) or None.
    """
    check_scan_inputs(x, dt, A, B, C, D, initial_state)
    batch, T, d_inner = x.shape
    dtype = compute_dtype(x, dt, A, B, C, initial_state)
    xc, dtc, Ac, Bc, Cc = (t.to(dtype) for t in (x, dt, A, B, C))
    if initial_state is None:
        h = x.new_zeros(batch, d_inner, A.shape[1], dtype=dtype)  # (B, D, N)
    else:
        h = initial_state.to(dtype)  # (B, D, N)
    ys = []
    for t in range(T):
        decay = transition(dtc[:, t, :, None] * Ac, negative_eigenvalues)  # (B, D, N)
        inp = (dtc[:, t] * xc[:, t])[:, :, None] * Bc[:, t, None, :]  # (B, D, N)
        h = decay * h + inp  # (B, D, N)
        ys.append(torch.einsum("bdn,bn->bd", h, Cc[:, t]))  # (B, D)
    y = torch.stack(ys, dim=1) if ys else xc.new_zeros(batch, 0, d_inner)  # (B, T, D)
    if D is not None:
        y = y + xc * D.to(dtype)
    return y.to(x.dtype), (h if output_final_state else None)
