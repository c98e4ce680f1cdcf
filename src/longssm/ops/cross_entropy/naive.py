"""Cross-entropy of next-token logits in plain torch: the reference form.

    loss = (1 / rows) Σ_r ( logsumexp_v(l_r,v) − l_r,t_r )        logits l (rows, V), targets t (rows,)

(``F.cross_entropy`` with its defaults: mean over the rows, no weights, no ignored index.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_cross_entropy_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise a one-line ValueError unless logits is (rows, V) and targets (rows,) integer ids
    in [0, V) (the range is checked for CPU targets only: see below)."""
    if logits.dim() != 2:
        raise ValueError(f"cross_entropy: logits must be (rows, V), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy: targets must be ({logits.shape[0]},) for logits "
            f"{tuple(logits.shape)}, got shape {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"cross_entropy: targets must be integer ids, got dtype {targets.dtype}")
    # On the CPU only: on a GPU the check would wait for the device every step (F.cross_entropy
    # then stops on its own device-side assertion instead).
    if targets.numel() and targets.device.type == "cpu":
        low, high = (int(v) for v in torch.aminmax(targets))
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(
                f"cross_entropy: target ids must lie in [0, {logits.shape[1]}), got range "
                f"[{low}, {high}]"
            )


def cross_entropy_naive(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy. Args: logits (rows, V); targets (rows,) ids. Returns a 0-d tensor."""
    check_cross_entropy_inputs(logits, targets)
    return F.cross_entropy(logits, targets.long())
