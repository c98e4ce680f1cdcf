"""Chunked, constant-memory scoring of planned windows: per-token losses with the state carried.

A window of any length L is run through the model in chunks of ``chunk_size`` tokens, the final
state of one chunk being the initial state of the next, under ``torch.inference_mode``. Memory is
set by the chunk (rows x chunk x vocab logits), not by L, and the result equals one pass over the
window up to floating-point rounding (tested in float64).

Glossary:
    plan       a ``WindowPlan`` (see ``longssm.eval.windows``): rows, rounds, donors
    round j    window j of every row, processed as one batch; round -1 is the warm-up
    nll        (rows, c) negative log-likelihood in nats of each target token of a chunk, float64
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from longssm.eval.windows import WindowPlan
from longssm.models.state import ModelState, select_rows


@dataclass
class ChunkScore:
    """The scored part of one chunk of one round.

    Attributes:
        round: window index j within each row (>= 0; warm-up rounds are not reported).
        offset: position of the chunk's first input token within the window (0-based).
        nll: (rows, c) float64 losses of the scored rows' targets.
        state: the model state after the chunk, all rows (scored and donor) included.
    """

    round: int
    offset: int
    nll: torch.Tensor
    state: ModelState


def chunk_bounds(length: int, chunk_size: int, splits: Sequence[int] = ()) -> list[tuple[int, int]]:
    """``[(a, b), ...]`` cutting ``[0, length)`` at multiples of ``chunk_size`` and at ``splits``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cuts = set(range(0, length, chunk_size)) | {s for s in splits if 0 < s < length}
    cuts = sorted(cuts | {0, length})
    return list(zip(cuts[:-1], cuts[1:]))


def read_tokens(tokens, starts: np.ndarray, a: int, b: int, device) -> torch.Tensor:
    """(rows, b - a) long tensor ``tokens[start + a : start + b]`` for every start.

    ``tokens`` is a 1-D numpy array (a memory map is fine) or a 1-D tensor; only this slice is read.
    """
    if isinstance(tokens, torch.Tensor):
        rows = torch.stack([tokens[s + a : s + b] for s in starts.tolist()])
    else:
        rows = torch.from_numpy(np.stack([np.asarray(tokens[s + a : s + b]) for s in starts]).astype(np.int64))
    return rows.to(device=device, dtype=torch.long)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def score_plan(
    model: torch.nn.Module,
    tokens,
    plan: WindowPlan,
    chunk_size: int = 1024,
    splits: Sequence[int] = (),
    on_tokens: Callable[[int], None] | None = None,
) -> Iterator[ChunkScore]:
    """Run every round of ``plan`` in chunks and yield the scored chunks in order.

    Args:
        model: an ``SSMLanguageModel`` (or anything with ``forward(tokens, state) -> (logits, state)``),
            already in eval mode.
        tokens: 1-D token stream (numpy array, memory map or tensor) the plan was made for.
        plan: the windows to run.
        chunk_size: tokens per forward call.
        splits: extra chunk boundaries within a window (e.g. powers of two for state norms).
        on_tokens: called with the number of input tokens after each chunk (progress).

    Yields:
        ``ChunkScore`` for each chunk of each scored round (round 0 first).
    """
    device = model_device(model)
    bounds = chunk_bounds(plan.length, chunk_size, splits)
    first_round = -1 if plan.warmup else 0
    donors = torch.tensor(plan.donor_of_row, dtype=torch.long) if plan.donor_of_row else None
    state = None
    with torch.inference_mode():
        for j in range(first_round, plan.windows_per_row):
            starts = plan.row_starts(j)  # (R,)
            if plan.protocol == "reset":
                state = None
            elif plan.protocol == "shuffled" and state is not None:
                # each row takes the final state of an unrelated row (stream keeps its own)
                state = select_rows(state, donors)
            for a, b in bounds:
                window = read_tokens(tokens, starts, a, b + 1, device)  # (R, c + 1)
                logits, state = model(window[:, :-1], state)  # (R, c, V)
                if on_tokens is not None:
                    on_tokens(window.shape[0] * (b - a))
                if j < 0:
                    continue
                scored = logits[: plan.rows].double()  # (b, c, V)
                nll = F.cross_entropy(
                    scored.reshape(-1, scored.shape[-1]),
                    window[: plan.rows, 1:].reshape(-1),
                    reduction="none",
                ).view(plan.rows, b - a)  # (b, c)
                yield ChunkScore(j, a, nll, state)
