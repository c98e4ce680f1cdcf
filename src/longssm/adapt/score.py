"""Held-out loss of a model on fixed windows, per position, with bootstrap intervals.

``adapt`` sits beside ``eval`` and cannot import it; this is the small scorer its commands report
with (the study page uses ``longssm.eval.evaluate_lengths`` as well). Every window starts from
``state=None`` (an adapter's start), so initial-state tuning is visible; windows are evenly spaced
over the token stream, the same for every model scored on that stream, so two models compare
paired (window by window).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from longssm.adapt.errors import AdaptError

RESAMPLES = 2000


def window_starts(n_tokens: int, length: int, n_windows: int) -> np.ndarray:
    """``n_windows`` evenly spaced starts of windows of ``length`` + 1 tokens in a stream of
    ``n_tokens``; AdaptError when the stream is too short."""
    room = n_tokens - length - 1
    if room < 0 or n_windows < 1:
        raise AdaptError(f"a stream of {n_tokens} tokens has no room for {n_windows} windows of "
                         f"{length} tokens")
    return np.linspace(0, room, n_windows).astype(np.int64)


@torch.inference_mode()
def window_nll(model, tokens, length: int, n_windows: int = 16, batch_size: int = 8) -> np.ndarray:
    """Per-target loss (nats) at each position of ``n_windows`` windows of ``length``.

    Returns: (n_windows, length) float64.
    """
    starts = window_starts(len(tokens), length, n_windows)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(0, len(starts), batch_size):
            idx = starts[i : i + batch_size, None] + np.arange(length + 1)  # (b, L+1)
            window = torch.as_tensor(np.asarray(tokens[idx], dtype=np.int64), device=device)
            logits, _ = model(window[:, :-1])  # (b, L, V)
            nll = F.cross_entropy(logits.double().transpose(1, 2), window[:, 1:],
                                  reduction="none")  # (b, L)
            rows.append(nll.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(rows)


def bootstrap(values: np.ndarray, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of the rows of ``values`` (windows resampled)."""
    per_window = values.reshape(len(values), -1).mean(axis=1)  # (W,)
    draws = np.random.default_rng(seed).integers(0, len(per_window), (RESAMPLES, len(per_window)))
    means = per_window[draws].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarise(nll: np.ndarray, seed: int = 0) -> dict:
    """Mean loss with a 95% window-bootstrap interval (``loss``, ``loss_low``, ``loss_high``)."""
    low, high = bootstrap(nll, seed)
    return {"loss": float(nll.mean()), "loss_low": low, "loss_high": high,
            "n_windows": int(nll.shape[0]), "length": int(nll.shape[1])}


def paired_gain(before: np.ndarray, after: np.ndarray, seed: int = 0) -> dict:
    """Loss before minus after (positive = better after), windows resampled in pairs."""
    diff = before - after
    low, high = bootstrap(diff, seed)
    return {"gain": float(diff.mean()), "gain_low": low, "gain_high": high}


def position_gain(before: np.ndarray, after: np.ndarray, edges, seed: int = 0) -> list[dict]:
    """The paired gain per position bin [edges[k], edges[k+1]) (positions from 1)."""
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        g = paired_gain(before[:, a - 1 : b - 1], after[:, a - 1 : b - 1], seed)
        out.append({"start": int(a), "end": int(b - 1), **g})
    return out
