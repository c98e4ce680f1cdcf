"""Per-position loss and per-layer state norm along length-L windows.

A model that fails to extend typically does well up to its training length T and degrades at
positions t > T; these curves show where. Losses are averaged over every scored window, then over
log-spaced position bins; state norms are taken at chunk boundaries, which are placed at powers of
two (and at multiples of ``chunk_size``) so the curve is log-spaced too.

Glossary:
    t               1-based position within a window: the target at t follows t input tokens
    bin             positions [edge_i, edge_{i+1}); edges 1, 2, 4, ... (``bins_per_octave`` = 1)
    state norm      ``longssm.models.state.state_norms``: per layer, the largest absolute entry of
                    the state over the scored rows, averaged over windows
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from longssm.eval.errors import EvalError
from longssm.eval.lengths import token_count
from longssm.eval.scoring import score_plan
from longssm.eval.windows import plan_windows
from longssm.models.state import select_rows, state_norms


def log_bin_edges(length: int, bins_per_octave: int = 1) -> list[int]:
    """Integer edges ``1 = e_0 < e_1 < ... < e_n = length + 1`` spaced ~geometrically."""
    if bins_per_octave < 1:
        raise EvalError(f"bins_per_octave must be >= 1, got {bins_per_octave}")
    n = math.ceil(math.log2(length + 1) * bins_per_octave)
    edges = {int(round(2 ** (i / bins_per_octave))) for i in range(n + 1)}
    edges = sorted(e for e in edges if e <= length)
    return edges + [length + 1]


def position_curve(
    model: torch.nn.Module,
    tokens,
    length: int,
    protocol: str = "reset",
    n_tokens: int = 1 << 16,
    batch_size: int = 8,
    chunk_size: int = 1024,
    bins_per_octave: int = 1,
    progress: bool = True,
    start: int | None = None,
    seed: int = 0,
) -> dict:
    """The loss at each position of length-L windows and the state norms along them.

    Args:
        model: ``SSMLanguageModel``.
        tokens: (N,) token stream.
        length: L.
        protocol: reset, stream or shuffled (as in ``evaluate_lengths``).
        n_tokens, batch_size, chunk_size, start, seed: as in ``evaluate_lengths`` (start defaults
            to L).
        bins_per_octave: resolution of the log-spaced position bins.
        progress: show a tqdm bar.

    Returns:
        dict with ``length``, ``protocol``, ``n_windows``, ``bin_edges`` (n+1,), ``positions`` (n,)
        geometric bin centres, ``loss`` (n,) mean nats per bin, ``count`` (n,) targets per bin
        (``bin width x n_windows``), ``state_positions`` (m,) positions after which the state was
        observed and ``state_norms`` (m, n_layers).
    """
    start = length if start is None else start
    plan = plan_windows(token_count(tokens), length, protocol, n_tokens, batch_size, start, seed)
    edges = log_bin_edges(length, bins_per_octave)
    # chunk boundaries at powers of two so the state is observed at log-spaced positions
    splits = [2**i for i in range(int(math.log2(length)) + 1)]
    sums = torch.zeros(length, dtype=torch.float64)
    norm_sums: dict[int, np.ndarray] = {}
    scored_rows = torch.arange(plan.rows)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=plan.tokens_processed, unit="tok", unit_scale=True, disable=not progress,
                  desc=f"positions L={length}") as bar:
            for chunk in score_plan(model, tokens, plan, chunk_size, splits, bar.update):
                c = chunk.nll.shape[1]
                sums[chunk.offset : chunk.offset + c] += chunk.nll.sum(0).cpu()
                end = chunk.offset + c
                norms = np.array(state_norms(select_rows(chunk.state, scored_rows)))
                norm_sums[end] = norm_sums.get(end, 0.0) + norms
    finally:
        model.train(was_training)
    per_position = sums / plan.n_windows  # (L,)
    lows, highs = edges[:-1], edges[1:]
    loss = [per_position[a - 1 : b - 1].mean().item() for a, b in zip(lows, highs)]
    state_positions = sorted(norm_sums)
    return {
        "length": length,
        "protocol": protocol,
        "n_windows": plan.n_windows,
        "bin_edges": edges,
        "positions": [math.sqrt(a * (b - 1)) for a, b in zip(lows, highs)],
        "loss": loss,
        "count": [(b - a) * plan.n_windows for a, b in zip(lows, highs)],
        "state_positions": state_positions,
        "state_norms": [(norm_sums[p] / plan.windows_per_row).tolist() for p in state_positions],
    }
