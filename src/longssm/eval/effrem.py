"""Effective Remembrance (Buitrago Ruiz & Gu, 2025): how much the oldest tokens still matter.

``EffRem_T(t) = TV(q(. | x[0:T]), q(. | x[t:T]))``: the total-variation distance between the model's
next-token distribution after the whole context of T tokens and after the same context with its
first t tokens dropped (the shortened context starts from the zero state), averaged over
sequences. EffRem near 0 for small t means the model has forgotten the beginning; a model that
over-weights distant tokens keeps it high.

Glossary:
    T        context length (tokens of each sequence)
    t        tokens dropped from the front, 0 <= t < T (t = 0 gives 0 by definition)
    q(.|x)   softmax of the logits after the last token of x, (vocab_size,)
    TV       total variation, 0.5 * sum_v |p_v - q_v|, in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from longssm.eval.errors import EvalError
from longssm.eval.lengths import token_count
from longssm.eval.scoring import chunk_bounds, model_device, read_tokens


def default_drops(length: int) -> list[int]:
    """t = 1, 2, 4, ... < T, plus T - 1 (only the last token kept)."""
    drops = [2**i for i in range(max(1, length).bit_length()) if 2**i < length]
    return sorted(set(drops + ([length - 1] if length > 1 else [])))


def last_distribution(model, tokens, starts: np.ndarray, length: int, chunk_size: int) -> torch.Tensor:
    """(n, V) float64 next-token distribution after ``tokens[s : s + length]`` for each start s,
    from the zero state, run in chunks so memory does not grow with ``length``."""
    device = model_device(model)
    state = None
    for a, b in chunk_bounds(length, chunk_size):
        x = read_tokens(tokens, starts, a, b, device)  # (n, c)
        logits, state = model(x, state)  # (n, c, V)
    return torch.softmax(logits[:, -1].double(), dim=-1).cpu()  # (n, V)


def effective_remembrance(
    model: torch.nn.Module,
    tokens,
    length: int,
    drops: Sequence[int] | None = None,
    n_sequences: int = 16,
    batch_size: int = 8,
    chunk_size: int = 1024,
    start: int = 0,
    progress: bool = True,
) -> dict:
    """EffRem_T(t) for each t in ``drops``, averaged over ``n_sequences`` windows of T tokens.

    Args:
        model: ``SSMLanguageModel``.
        tokens: (N,) token stream; sequence i is ``tokens[start + i*T : start + (i+1)*T]``.
        length: T.
        drops: the values of t (default ``default_drops(T)``).
        n_sequences: sequences averaged (fewer if the stream is short; at least one must fit).
        batch_size: sequences processed together.
        chunk_size: tokens per forward call.
        start: offset of the first sequence.
        progress: show a tqdm bar.

    Returns:
        dict with ``length``, ``t`` (list), ``effrem`` (list, mean TV per t), ``effrem_std``
        (standard deviation over sequences) and ``n_sequences``.
    """
    if length < 1:
        raise EvalError(f"length must be >= 1, got {length}")
    drops = default_drops(length) if drops is None else sorted({int(t) for t in drops})
    if any(t < 0 or t >= length for t in drops):
        raise EvalError(f"every t must satisfy 0 <= t < T = {length}, got {drops}")
    n = min(n_sequences, (token_count(tokens) - start) // length)
    if n < 1:
        raise EvalError(f"the token stream is too short for one sequence of T={length} at {start}")
    starts = start + length * np.arange(n, dtype=np.int64)  # (n,)
    tv = torch.zeros(len(drops), n, dtype=torch.float64)
    work = n * (length + sum(length - t for t in drops))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=work, unit="tok", unit_scale=True,
                                          disable=not progress, desc=f"effrem T={length}") as bar:
            for i in range(0, n, batch_size):
                rows = starts[i : i + batch_size]
                full = last_distribution(model, tokens, rows, length, chunk_size)  # (b, V)
                bar.update(len(rows) * length)
                for k, t in enumerate(drops):
                    cut = last_distribution(model, tokens, rows + t, length - t, chunk_size)
                    tv[k, i : i + len(rows)] = 0.5 * (full - cut).abs().sum(-1)
                    bar.update(len(rows) * (length - t))
    finally:
        model.train(was_training)
    return {
        "length": length,
        "t": list(drops),
        "effrem": tv.mean(1).tolist(),
        "effrem_std": tv.std(1, unbiased=False).tolist(),
        "n_sequences": n,
    }
