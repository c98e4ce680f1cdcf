"""diag_scan decoding step: one application of ``h_t = lam * h_{t-1} + v_t``.

Glossary as in ``naive.py``: ``v_t`` (batch, *S) complex B̄ u_t, ``lam`` (*S,) complex Ā,
``state`` (batch, *S) complex h_{t-1}.
"""

from __future__ import annotations

import torch

from .naive import check_diag_scan_inputs


def diag_scan_step(
    v_t: torch.Tensor, lam: torch.Tensor, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the complex diagonal recurrence.

    Args:
        v_t: (batch, *S) complex input of this step.
        lam: (*S,) complex transition.
        state: (batch, *S) complex previous state, or None for zeros.
    Returns:
        h_t: (batch, *S) the new state; new_state: the same tensor (the state to carry).
    """
    check_diag_scan_inputs(v_t, lam, state, time_dim=False)
    h = v_t if state is None else lam * state.to(v_t.dtype) + v_t  # (B, *S)
    return h, h
