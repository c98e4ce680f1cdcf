"""Token reduction inside a trained SSM (after Zhan, Wu, Kong et al. 2024), as an evaluation option.

After chosen blocks the residual stream x (batch, T, D) is shortened to K tokens; later blocks run
on the shorter sequence (their recurrence simply skips the removed tokens); logits exist only at
the kept positions, each still predicting its own next token. Only positions >= ``beyond`` are
candidates (``beyond`` = T applies reduction only past the training length, a length-extension
intervention); of the n candidates ceil(keep · n) stay.

    random   a uniformly random subset of the candidates.
    evit     the candidates of highest importance s_i = Σ_d max(x_{i,d}, 0) (the paper's
             importance; EViT's attention score does not exist in an SSM). Dropped tokens pruned.
    tome     bipartite soft matching: candidates alternate into sets A and B; each a ∈ A is matched
             to its most cosine-similar b ∈ B *later* in the sequence; the n - K best-matched a are
             merged (averaged) into their b.
    hybrid   the paper's method: the n - K least important candidates are the tokens to drop; the
             more similar half of them (cosine to their best later kept token) are merged into that
             token, the rest pruned.

Differences from the paper, for a causal language model: a token is merged only into a *later*
token, so no kept output sees the future; the kept set itself is chosen over the whole window
(as in the paper), so which positions are scored depends on later tokens, but the output at a kept
position depends only on tokens at or before it. The dropped positions are not scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from longssm.adapt.errors import AdaptError

REDUCE_METHODS = ("random", "evit", "tome", "hybrid")


@dataclass(frozen=True)
class ReduceSpec:
    """method, keep ratio in (0, 1], the blocks after which to reduce, and ``beyond``."""

    method: str
    keep: float
    layers: tuple[int, ...] = (0,)
    beyond: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.method not in REDUCE_METHODS:
            raise AdaptError(f"unknown reduction method {self.method!r}; expected one of "
                             f"{', '.join(REDUCE_METHODS)}")
        if not 0 < self.keep <= 1:
            raise AdaptError(f"keep ratio must lie in (0, 1], got {self.keep}")
        if self.beyond < 0:
            raise AdaptError(f"beyond must be >= 0, got {self.beyond}")


def parse_reduce(text: str, beyond: int = 0) -> ReduceSpec:
    """``METHOD:KEEP[:L1,L2,...]`` -> ``ReduceSpec``."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise AdaptError(f"--reduce must be METHOD:KEEP[:LAYERS], got {text!r}")
    try:
        keep = float(parts[1])
        layers = tuple(int(v) for v in parts[2].split(",")) if len(parts) == 3 else (0,)
    except ValueError as exc:
        raise AdaptError(f"--reduce must be METHOD:KEEP[:LAYERS], got {text!r}") from exc
    return ReduceSpec(parts[0], keep, layers, beyond)


def importance(x: torch.Tensor) -> torch.Tensor:
    """s_i = Σ_d max(x_{i,d}, 0), (batch, T)."""
    return x.clamp_min(0).sum(-1)


def _best_later(x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor):
    """For each src position, the most cosine-similar dst position after it: (sim, dst) (B, S)."""
    xn = F.normalize(x.double(), dim=-1)
    a = torch.gather(xn, 1, src[..., None].expand(-1, -1, x.shape[-1]))  # (B, S, D)
    b = torch.gather(xn, 1, dst[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)
    sim = a @ b.transpose(1, 2)  # (B, S, K)
    sim = sim.masked_fill(dst[:, None, :] <= src[:, :, None], -math.inf)
    best, j = sim.max(-1)
    return best, torch.gather(dst, 1, j)


def reduce_plan(x: torch.Tensor, spec: ReduceSpec, first: int | None = None):
    """Which tokens stay and which merge where.

    Args: x (batch, T, D) the stream after a block; first: index of the first candidate (default
    spec.beyond: tokens before it always stay).

    Returns: kept (B, K) sorted indices into T; merge_src, merge_dst (B, M) indices (dst > src).
    """
    B, T, _ = x.shape
    first = min(T, spec.beyond if first is None else first)
    n = T - first
    n_drop = n - math.ceil(spec.keep * n)
    empty = torch.zeros(B, 0, dtype=torch.long, device=x.device)
    all_idx = torch.arange(T, device=x.device).expand(B, T)
    if n_drop == 0:
        return all_idx, empty, empty
    cand = all_idx[:, first:]  # (B, n)
    if spec.method == "tome":
        return _tome(x, cand, all_idx[:, :first], n_drop)
    if spec.method == "random":
        g = torch.Generator().manual_seed(spec.seed)
        score = torch.rand(B, n, generator=g).to(x.device)
    else:
        score = importance(x[:, first:]).double()
    order = torch.argsort(score, dim=1, descending=True, stable=True)
    keep_c, drop = order[:, : n - n_drop] + first, order[:, n - n_drop :] + first
    kept = torch.sort(torch.cat([all_idx[:, :first], keep_c], 1), 1).values
    if spec.method != "hybrid":
        return kept, empty, empty
    sim, dst = _best_later(x, drop, kept)
    n_merge = n_drop // 2
    top = torch.argsort(sim, dim=1, descending=True, stable=True)[:, :n_merge]
    ok = torch.gather(sim, 1, top) > -math.inf
    src, dst = torch.gather(drop, 1, top), torch.gather(dst, 1, top)
    # a token with no later kept token cannot merge causally: marked -1, it is pruned
    return kept, torch.where(ok, src, -1), torch.where(ok, dst, -1)


def _tome(x, cand, fixed, n_drop):
    """Bipartite matching of alternate candidates, each a merged into its best later b."""
    A, Bset = cand[:, 0::2], cand[:, 1::2]
    if n_drop > A.shape[1]:
        raise AdaptError(f"tome removes at most half of the candidates, asked for {n_drop} of "
                         f"{cand.shape[1]}")
    sim, dst = _best_later(x, A, Bset)
    order = torch.argsort(sim, dim=1, descending=True, stable=True)
    merge, stay = order[:, :n_drop], order[:, n_drop:]
    kept = torch.sort(torch.cat([fixed, torch.gather(A, 1, stay), Bset], 1), 1).values
    ok = torch.gather(sim, 1, merge) > -math.inf
    src, dst = torch.gather(A, 1, merge), torch.gather(dst, 1, merge)
    return kept, torch.where(ok, src, -1), torch.where(ok, dst, -1)


def apply_plan(x: torch.Tensor, kept, src, dst) -> torch.Tensor:
    """The reduced stream (B, K, D): kept tokens, each averaged with the tokens merged into it."""
    B, T, D = x.shape
    total, count = x.clone(), torch.ones(B, T, 1, dtype=x.dtype, device=x.device)
    if src.numel():
        valid = (src >= 0)[..., None].to(x.dtype)  # (B, M, 1)
        s, d = src.clamp_min(0), dst.clamp_min(0)
        moved = torch.gather(x, 1, s[..., None].expand(-1, -1, D)) * valid
        total = total.scatter_add(1, d[..., None].expand(-1, -1, D), moved)
        count = count.scatter_add(1, d[..., None], valid)
    avg = total / count
    return torch.gather(avg, 1, kept[..., None].expand(-1, -1, D))


def reduced_pass(model, tokens: torch.Tensor, spec: ReduceSpec, state=None, offset: int = 0):
    """One piece of a sequence through an ``SSMLanguageModel`` with token reduction after
    ``spec.layers``, every block starting from its part of ``state`` (None: the model's start).

    Args: tokens (B, c) the piece's input ids; offset: position of its first token in the
    window (candidates are positions >= ``spec.beyond``).

    Returns: logits (B, K, V) at the kept positions, those positions (B, K), and the state after
    the piece (each block's recurrence has run over the tokens that reached it).
    """
    if max(spec.layers) >= len(model.blocks) or min(spec.layers) < 0:
        raise AdaptError(f"reduction layers {spec.layers} outside 0..{len(model.blocks) - 1}")
    x = model.embedding(tokens.long())  # (B, c, D)
    pos = offset + torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
    new_state = []
    for i, block in enumerate(model.blocks):
        x, layer_state = block(x, None if state is None else state[i])
        new_state.append(layer_state)
        if i in spec.layers:
            # candidates: original positions >= beyond (a suffix, since pos stays sorted)
            first = int((pos[0] < spec.beyond).sum())
            kept, src, dst = reduce_plan(x, replace(spec, seed=spec.seed + offset), first)
            x = apply_plan(x, kept, src, dst)
            pos = torch.gather(pos, 1, kept)
    return model.lm_head(model.norm_f(x)), pos, tuple(new_state)


def reduced_forward(model, tokens: torch.Tensor, spec: ReduceSpec):
    """``reduced_pass`` of a whole sequence from the model's start: logits (B, K, V), positions."""
    logits, pos, _ = reduced_pass(model, tokens, spec)
    return logits, pos


def reduced_nll(model, tokens: torch.Tensor, spec: ReduceSpec,
                chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target loss at the kept positions: tokens (B, T+1) -> nll (B, K), positions (B, K).

    ``chunk_size`` None runs the window in one pass; otherwise it runs in pieces of
    ``chunk_size`` tokens with every block's state carried from piece to piece (memory set by
    the piece, not by T), and the reduction acts inside each piece: of the n candidates of a
    piece, ceil(keep · n) stay, and a token merges only into a later token of its own piece.
    """
    T = tokens.shape[1] - 1
    step = T if chunk_size is None else chunk_size
    if step < 1:
        raise AdaptError(f"chunk_size must be >= 1, got {chunk_size}")
    state, nlls, positions = None, [], []
    for a in range(0, T, step):
        b = min(T, a + step)
        logits, pos, state = reduced_pass(model, tokens[:, a:b], spec, state, a)  # (B, K, V)
        targets = torch.gather(tokens[:, 1:], 1, pos)  # (B, K)
        nlls.append(F.cross_entropy(logits.double().transpose(1, 2), targets, reduction="none"))
        positions.append(pos)
    return torch.cat(nlls, 1), torch.cat(positions, 1)
