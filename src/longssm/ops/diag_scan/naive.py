"""diag_scan reference: the complex diagonal recurrence written as a plain loop over time.

The specification the chunked form is tested against; slow (one step per token).

Glossary (paper symbol -> code name, shape); ``*S`` is any trailing state shape, e.g. (H, N/2):
    Ā   (diagonal transition, |Ā| <= 1)   lam            (*S,) complex
    B̄ u_t (already-projected input)       v              (batch, T, *S) complex
    h_t (hidden state after step t)        h_all[:, t]    (batch, T, *S) complex
    h_0 (state before the first step)      initial_state  (batch, *S) complex

Recurrence: ``h_t = lam ⊙ h_{t-1} + v_t``; ``final_state = h_{T-1}``.
"""

from __future__ import annotations

import torch


def check_diag_scan_inputs(
    v: torch.Tensor, lam: torch.Tensor, initial_state: torch.Tensor | None, time_dim: bool = True
) -> None:
    """Raise a clear error unless v, lam and initial_state are complex with matching shapes."""
    lead = "(batch, T, *S)" if time_dim else "(batch, *S)"
    for name, t in (("v", v), ("lam", lam)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"diag_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_complex():
            raise TypeError(f"diag_scan: {name} must be complex, got {t.dtype}")
    n_lead = 2 if time_dim else 1
    if v.dim() < n_lead + lam.dim() or tuple(v.shape[n_lead:]) != tuple(lam.shape):
        raise ValueError(
            f"diag_scan: v must have shape {lead} with S = lam.shape = {tuple(lam.shape)}, "
            f"got {tuple(v.shape)}"
        )
    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor) or not initial_state.is_complex():
            got = getattr(initial_state, "dtype", type(initial_state).__name__)
            raise TypeError(f"diag_scan: initial_state must be a complex tensor, got {got}")
        want = (v.shape[0], *lam.shape)
        if tuple(initial_state.shape) != want:
            raise ValueError(
                f"diag_scan: initial_state must have shape (batch, *S) = {want}, "
                f"got {tuple(initial_state.shape)}"
            )


def diag_scan_naive(
    v: torch.Tensor,
    lam: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sequential reference of ``h_t = lam * h_{t-1} + v_t``.

    Args:
        v: (batch, T, *S) complex inputs.
        lam: (*S,) complex transition.
        initial_state: (batch, *S) complex h_0, or None for zeros.
        output_final_state: also return h_{T-1}.
    Returns:
        h_all: (batch, T, *S) complex, every state; final_state: (batch, *S) or None.
    """
    check_diag_scan_inputs(v, lam, initial_state)
    h = torch.zeros_like(v[:, 0]) if initial_state is None else initial_state.to(v.dtype)
    states = []
    for t in range(v.shape[1]):
        h = lam * h + v[:, t]  # (B, *S)
        states.append(h)
    h_all = torch.stack(states, dim=1) if states else v.clone()  # (B, T, *S)
    return h_all, (h if output_final_state else None)
