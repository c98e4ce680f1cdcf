"""Perplexity versus evaluation length under the reset, stream and shuffled protocols.

The length-extension test of LongSSM: a model trained at length T is scored on windows of
L = 16 ... 32768 tokens. Under ``reset`` every window starts from the zero state, so a model whose
loss grows with L does not extend; ``stream`` and ``shuffled`` carry a state into every window from
the preceding text or from unrelated text (see ``longssm.eval.windows`` for the exact layout).

Glossary:
    L               evaluation length (input tokens per window)
    loss            mean next-token negative log-likelihood in nats per token
    perplexity      exp(loss)
    bits per byte   loss / ln 2 / bytes_per_token (vocabulary-independent; bytes_per_token = 1
                    for a byte tokenizer)
    n_tokens        the budget of target tokens scored at every L (see ``plan_windows``)
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from longssm.dist import DistContext, assign_plans
from longssm.eval.errors import EvalError
from longssm.eval.intervals import (
    DEFAULT_BLOCKS,
    DEFAULT_CONFIDENCE,
    add_intervals,
    block_grid,
    block_of,
)
from longssm.eval.scoring import ChunkScore, score_plan
from longssm.eval.windows import PROTOCOLS, WindowPlan, check_protocol, plan_windows


def resolve_protocols(protocol: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every protocol; a name or a sequence of names -> that list, validated."""
    if isinstance(protocol, str):
        names = list(PROTOCOLS) if protocol == "all" else [protocol]
    else:
        names = list(protocol)
    if not names:
        raise EvalError("no protocol given; expected reset, stream, shuffled or all")
    return [check_protocol(p) for p in names]


def check_lengths(lengths: Sequence[int]) -> list[int]:
    """Sorted, de-duplicated positive lengths; ``EvalError`` otherwise."""
    out = []
    for value in lengths:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise EvalError(f"lengths must be positive integers, got {value!r}")
        out.append(int(value))
    if not out:
        raise EvalError("no evaluation lengths given")
    return sorted(set(out))


def power_lengths(low: int, high: int) -> list[int]:
    """``low, 2 low, 4 low, ...`` up to ``high``, and ``high`` itself when the doubling misses it."""
    if low < 1 or high < low:
        raise EvalError(f"bad length range {low}:{high}: need 1 <= LOW <= HIGH")
    out, L = [], low
    while L <= high:
        out.append(L)
        L *= 2
    if out[-1] != high:
        out.append(high)
    return out


def parse_lengths(text: str) -> list[int]:
    """``"16,32,100"`` -> those; ``"16:8192"`` -> ``power_lengths(16, 8192)``; items may be mixed.

    Returns the sorted distinct lengths; raises ``EvalError`` (one line) on anything else.
    """
    lengths: list[int] = []
    for item in str(text).replace(" ", "").split(","):
        if re.fullmatch(r"[0-9]+", item):
            lengths.append(int(item))
        elif m := re.fullmatch(r"([0-9]+):([0-9]+)", item):
            lengths.extend(power_lengths(int(m[1]), int(m[2])))
        else:
            raise EvalError(
                f"bad lengths {text!r}: expected a comma list like 16,32,64 or a range like 16:32768"
            )
    return check_lengths(lengths)


def token_count(tokens) -> int:
    if tokens.ndim != 1:
        raise EvalError(f"tokens must be a 1-D stream, got shape {tuple(tokens.shape)}")
    return int(tokens.shape[0])


def make_plans(
    tokens,
    lengths: Sequence[int],
    protocols: Sequence[str],
    n_tokens: int,
    batch_size: int,
    start: int | None = None,
    seed: int = 0,
) -> list[WindowPlan]:
    """One ``WindowPlan`` per (protocol, L), protocol-major. ``start`` defaults to max(lengths)."""
    lengths = check_lengths(lengths)
    start = max(lengths) if start is None else int(start)
    n = token_count(tokens)
    return [
        plan_windows(n, L, p, n_tokens, batch_size, start, seed) for p in protocols for L in lengths
    ]


def evaluate_lengths(
    model: torch.nn.Module,
    tokens,
    lengths: Sequence[int],
    protocol: str | Sequence[str] = "reset",
    n_tokens: int = 1 << 16,
    batch_size: int = 8,
    chunk_size: int = 1024,
    bytes_per_token: float = 1.0,
    progress: bool = True,
    start: int | None = None,
    seed: int = 0,
    plan_indices: Sequence[int] | None = None,
    n_blocks: int = DEFAULT_BLOCKS,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[dict]:
    """Loss with its 95% interval, perplexity and bits per byte at each length L and protocol.

    Args:
        model: ``SSMLanguageModel``; put in eval mode for the call, then restored.
        tokens: (N,) token stream: numpy array, memory map or tensor of ids < vocab_size.
        lengths: evaluation lengths L.
        protocol: reset, stream, shuffled, all, or a sequence of those names.
        n_tokens: target tokens scored per (protocol, L), budget permitting (see ``plan_windows``).
        batch_size: scored rows processed together.
        chunk_size: tokens per forward call; any value gives the same result.
        bytes_per_token: UTF-8 bytes per token of the stream, for bits per byte.
        progress: show a tqdm bar over input tokens processed.
        start: offset of the first scored window; default max(lengths) (every protocol and L
            scores the same text, and the warm-up of stream/shuffled has text to read).
        seed: seeds the shuffled permutation.
        plan_indices: score only these (protocol, L) pairs, as indices into the full
            protocol-major order (a rank's share, see ``evaluate_lengths_sharded``); the paired
            interval fields are then left to the caller (``add_intervals`` on all records).
        n_blocks: text blocks of the scored span for the block bootstrap
            (``longssm.eval.intervals``).
        confidence: level of the intervals.

    Returns:
        One dict per (protocol, L) scored, protocol-major, lengths ascending, with keys ``protocol``,
        ``length``, ``loss``, ``loss_low``, ``loss_high`` (95% interval), ``delta_prev``,
        ``delta_prev_low``, ``delta_prev_high`` (paired change from the previous length),
        ``perplexity``, ``bits_per_byte``, ``n_tokens`` (targets scored), ``n_windows``, ``rows``,
        ``windows_per_row``, ``start``, ``block_nll``, ``block_tokens`` (per text block).
    """
    if not bytes_per_token > 0:
        raise EvalError(f"bytes_per_token must be > 0, got {bytes_per_token!r}")
    if chunk_size < 1:
        raise EvalError(f"chunk_size must be >= 1, got {chunk_size!r}")
    plans = make_plans(tokens, lengths, resolve_protocols(protocol), n_tokens, batch_size, start, seed)
    if plan_indices is not None:
        plans = [plans[i] for i in sorted(set(plan_indices))]
    total = sum(p.tokens_processed for p in plans)
    grid = block_grid(plans[0].start, n_tokens, n_blocks) if plans else None
    was_training = model.training
    model.eval()
    records = []
    try:
        with tqdm(
            total=total, unit="tok", unit_scale=True, disable=not progress, desc="eval",
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        ) as bar:
            for plan in plans:
                bar.set_postfix_str(f"{plan.protocol} L={plan.length}")
                block_nll = np.zeros(grid[2])
                block_tokens = np.zeros(grid[2], dtype=np.int64)
                loss_sum = 0.0
                for chunk in score_plan(model, tokens, plan, chunk_size, on_tokens=bar.update):
                    loss_sum += chunk.nll.sum().item()
                    _add_to_blocks(plan, chunk, grid, block_nll, block_tokens)
                record = _record(plan, loss_sum / plan.n_scored, bytes_per_token)
                records.append({**record, "block_nll": block_nll.tolist(),
                                "block_tokens": block_tokens.tolist()})
    finally:
        model.train(was_training)
    return records if plan_indices is not None else add_intervals(records, confidence, seed=seed)


def _add_to_blocks(plan: WindowPlan, chunk: ChunkScore, grid, block_nll, block_tokens) -> None:
    """Add a chunk's per-target losses to the text blocks their positions fall in."""
    nll = chunk.nll.cpu().numpy()  # (rows, c)
    first_target = plan.row_starts(chunk.round)[: plan.rows] + 1 + chunk.offset  # (rows,)
    positions = first_target[:, None] + np.arange(nll.shape[1])  # (rows, c)
    blocks = block_of(positions.ravel(), grid)
    block_nll += np.bincount(blocks, weights=nll.ravel(), minlength=grid[2])
    block_tokens += np.bincount(blocks, minlength=grid[2])


def _record(plan: WindowPlan, loss: float, bytes_per_token: float) -> dict:
    return {
        "protocol": plan.protocol,
        "length": plan.length,
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "bits_per_byte": loss / math.log(2) / bytes_per_token,
        "n_tokens": plan.n_scored,
        "n_windows": plan.n_windows,
        "rows": plan.rows,
        "windows_per_row": plan.windows_per_row,
        "start": plan.start,
    }


def evaluate_lengths_sharded(
    model,
    tokens,
    lengths: Sequence[int],
    ctx: DistContext,
    protocol: str | Sequence[str] = "reset",
    n_tokens: int = 1 << 16,
    batch_size: int = 8,
    start: int | None = None,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    **kwargs,
) -> list[dict]:
    """``longssm.eval.evaluate_lengths`` with its (protocol, L) pairs spread over the ranks.

    Every rank scores its share of the pairs (balanced by tokens processed) on its own copy of
    the model; the records are gathered and returned, in ``evaluate_lengths`` order, on every
    rank. Each pair is scored whole by one rank, so the records equal the single-process ones.

    Args:
        model: the (unwrapped) model, identical on every rank.
        tokens: the (N,) token stream.
        lengths, protocol, n_tokens, batch_size, start, seed, confidence: as for
            ``evaluate_lengths``.
        ctx: this rank's ``DistContext``.
        **kwargs: ``chunk_size``, ``bytes_per_token``, ``progress`` of ``evaluate_lengths``.

    Returns:
        One dict per (protocol, L), as ``evaluate_lengths`` returns them.
    """
    protocols = resolve_protocols(protocol)
    plans = make_plans(tokens, lengths, protocols, n_tokens, batch_size, start, seed)
    mine = assign_plans([p.tokens_processed for p in plans], ctx.world_size)[ctx.rank]
    records = []
    if mine:
        records = evaluate_lengths(
            model, tokens, lengths, protocols, n_tokens, batch_size, start=start, seed=seed,
            plan_indices=mine, **kwargs,
        )
    pairs = [pair for share in ctx.all_gather_object(list(zip(mine, records))) for pair in share]
    records = [record for _, record in sorted(pairs, key=lambda pair: pair[0])]
    return add_intervals(records, confidence, seed=seed)
