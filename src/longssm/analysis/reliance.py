"""State reliance: how much of each layer's scan output comes from the carried state.

    reliance_l(t) = ‖C_t · exp(A S_t) ⊙ h_0‖ / ‖y_t‖   (norms over the layer's channels)

with y_t the scan output (M x + D x + state term) of layer l at position t of a segment that starts
from the carried state h_0 (the scan view of ``longssm.analysis.layers``). For the LTI layers the
state term is s Re(C (λ̄^{t+1} ⊙ h_0)). A model whose outputs never lean on h_0 has learned nothing to
carry; one that leans on it for thousands of tokens needs the state it was trained with.
"""

from __future__ import annotations

import torch

from longssm.analysis.attention import layer_operators


def state_reliance(model, tokens: torch.Tensor, state, positions=None) -> dict:
    """Per layer and position, ‖state term_t‖ / ‖y_t‖ for ``tokens`` (b, T) from ``state``.

    Args:
        state: the model state the segment starts from (None: zeros, so every ratio is 0).
        positions: 0-based positions to report (default all).
    Returns:
        {"ratio": (n_layers, b, P) float64, "positions": [P]}.
    """
    T = tokens.shape[1]
    pos = torch.arange(T) if positions is None else torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= T):
        raise ValueError(f"positions must lie in [0, {T}), got {pos.tolist()}")
    ops = layer_operators(model, tokens, state, "scan")
    ratios = []
    for k in sorted(ops):
        op = ops[k]
        ratios.append(op.state[:, pos].norm(dim=-1) / op.output[:, pos].norm(dim=-1).clamp(min=1e-30))
    return {"ratio": torch.stack(ratios), "positions": pos.tolist()}
